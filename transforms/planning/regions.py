"""Regions of interest: loaded from a vector file or a bbox, validated.

Beam-free. A region is a shapely geometry in lon/lat with a stable id. GeoJSON (`.geojson`,
`.json`) is read as RFC 7946 lon/lat degrees (a legacy `crs` member naming another CRS is
reprojected); any other vector format OGR reads (GeoPackage, Shapefile, FlatGeobuf, ...) and
GeoParquet, in any CRS, goes through `pixelbeam.transforms.formats.vector_files` and is
reprojected to lon/lat before the same validation. Errors are `RegionError`s whose one-line
message names the feature and says what to do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Sequence

import numpy as np
import shapely
from shapely.errors import GEOSException
from shapely.geometry import box, shape
from shapely.validation import explain_validity, make_valid

from pixelbeam.transforms.formats.vector_files import VectorFileError, is_lonlat, read_vector, to_crs

log = logging.getLogger(__name__)

AREAL = ("Polygon", "MultiPolygon")
PUNCTUAL = ("Point", "MultiPoint")


class RegionError(ValueError):
    """A region file or bbox that cannot be used; the message says which feature and why."""


@dataclasses.dataclass(frozen=True)
class Region:
    """One region: `geometry` in lon/lat degrees (shapely), `region_id` unique in the job."""

    region_id: str
    geometry: Any
    properties: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def is_points(self) -> bool:
        return self.geometry.geom_type in PUNCTUAL


GEOJSON_SUFFIXES = (".geojson", ".json")


def load_regions(regions: str | Sequence[float], where: str = "regions") -> list[Region]:
    """Regions from a vector file (GeoJSON FeatureCollection, Feature or bare geometry; or any
    OGR format or GeoParquet, in any CRS) or a `[min_lon, min_lat, max_lon, max_lat]` bbox."""
    if isinstance(regions, (list, tuple)):
        return [Region("bbox", _bbox_geometry(regions, where))]
    is_url = "://" in regions or regions.startswith("/vsi")
    if not is_url and not os.path.exists(regions):
        raise RegionError(f"{where}: file {regions!r} does not exist; give a vector file (GeoJSON, GeoPackage, "
                          "Shapefile, FlatGeobuf, GeoParquet) or a bbox")
    if is_url or not regions.lower().endswith(GEOJSON_SUFFIXES):
        return regions_from_vector_file(regions, where)
    try:
        with open(regions, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegionError(f"{where}: {regions!r} is not readable GeoJSON ({one_line(e)}); fix the file") from None
    return regions_from_geojson(doc, where=f"{where} ({os.path.basename(regions)})")


def regions_from_vector_file(path: str, where: str = "regions") -> list[Region]:
    """Regions from any vector file OGR (or, for GeoParquet, pyarrow) reads, reprojected from the
    file's CRS to lon/lat, then validated as GeoJSON features are."""
    label = f"{where} ({os.path.basename(path.rstrip('/'))})"
    try:
        table = read_vector(path, where=where)
    except VectorFileError as e:
        raise RegionError(str(e)) from None
    if table.crs is None:
        raise RegionError(f"{label}: the file declares no CRS; give it one (e.g. ogr2ogr -a_srs EPSG:4326)")
    geometries = table.geometries if is_lonlat(table.crs) else to_crs(table.geometries, table.crs, "EPSG:4326")
    features = [{"type": "Feature", "properties": table.properties(i),
                 "geometry": None if g is None else shapely.geometry.mapping(g)} for i, g in enumerate(geometries)]
    return regions_from_geojson({"type": "FeatureCollection", "features": features}, where=label)


def regions_from_geojson(doc: Any, where: str = "regions") -> list[Region]:
    """Regions from a parsed GeoJSON object; one per feature, ids from `id` or a property."""
    if not isinstance(doc, dict) or "type" not in doc:
        raise RegionError(f"{where}: not a GeoJSON object; expected a FeatureCollection")
    crs = _legacy_crs(doc, where)
    if doc["type"] == "FeatureCollection":
        features = doc.get("features") or []
        if not isinstance(features, list):
            raise RegionError(f"{where}: the FeatureCollection's features is {type(features).__name__}, not a list "
                              "of Features; fix the file")
    elif doc["type"] == "Feature":
        features = [doc]
    else:
        features = [{"type": "Feature", "geometry": doc, "properties": {}}]
    if not features:
        raise RegionError(f"{where}: the FeatureCollection has no features; add at least one polygon or point")
    out, seen = [], set()
    for index, feature in enumerate(features):
        region = _region_from_feature(feature, index, where, crs)
        if region.region_id in seen:
            raise RegionError(f"{where}: feature {index}: duplicate region id {region.region_id!r}; ids must be unique")
        seen.add(region.region_id)
        out.append(region)
    return out


def _legacy_crs(doc: dict, where: str):
    """The CRS a GeoJSON's legacy (2008) `crs` member names, or None for lon/lat (RFC 7946)."""
    member = doc.get("crs")
    if not isinstance(member, dict):
        return None
    name = (member.get("properties") or {}).get("name")
    try:
        return None if not name or is_lonlat(name) else str(name)
    except Exception:  # pyproj raises CRSError and others for unknown names
        raise RegionError(f"{where}: crs {name!r} is not a CRS pyproj knows; give an EPSG code or remove the "
                          "member (lon/lat)") from None


def _region_from_feature(feature: Any, index: int, where: str, crs=None) -> Region:
    if not isinstance(feature, dict):
        raise RegionError(f"{where}: feature {index} is {type(feature).__name__}, not a GeoJSON Feature object; fix the file")
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        raise RegionError(f"{where}: feature {index}: properties is {type(props).__name__}, not an object; fix the file")
    rid = feature.get("id", props.get("id", props.get("name"))) if isinstance(feature, dict) else None
    region_id = str(rid) if rid is not None else f"region-{index:04d}"
    label = f"{where}: feature {index} ({region_id!r})"
    geom_doc = feature.get("geometry") if isinstance(feature, dict) else None
    if not geom_doc:
        raise RegionError(f"{label}: has no geometry; give a Polygon, MultiPolygon, Point or MultiPoint")
    try:
        geom = shape(geom_doc)
    except Exception as e:  # shapely raises several types for malformed coordinates
        raise RegionError(f"{label}: malformed geometry ({one_line(e)}); fix its coordinates") from None
    if crs is not None and not geom.is_empty:
        geom = to_crs(np.array([geom], dtype=object), crs, "EPSG:4326")[0]
    if geom.geom_type not in AREAL + PUNCTUAL:
        raise RegionError(f"{label}: geometry type {geom.geom_type} is not supported; use polygons or points")
    if geom.is_empty:
        raise RegionError(f"{label}: geometry is empty; remove the feature or give coordinates")
    _check_lonlat(geom, label)
    geom = unwrap_antimeridian(geom)
    if not geom.is_valid:
        reason = explain_validity(geom)
        try:
            geom = _polygonal_part(make_valid(geom))
        except GEOSException as e:  # e.g. a degenerate exterior ring around a hole
            raise RegionError(f"{label}: invalid geometry ({reason}) cannot be repaired ({one_line(e)}); "
                              "fix the polygon") from None
        if geom.is_empty:
            raise RegionError(f"{label}: invalid geometry ({reason}) has no area once repaired; fix the polygon")
        log.warning("%s: invalid geometry (%s) repaired with make_valid", label, reason)
    return Region(region_id, geom, dict(props))


def _polygonal_part(geom):
    """The areal part of a repaired geometry (make_valid may return a GeometryCollection)."""
    if geom.geom_type in AREAL:
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type in AREAL]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def one_line(e: Exception) -> str:
    """An exception's text folded to one line."""
    return " ".join(str(e).split()) or type(e).__name__


def unwrap_antimeridian(geom):
    """A polygon whose edges jump more than 180 degrees of longitude crosses the antimeridian
    (RFC 7946 asks for such polygons to be cut, but many files are not): shift its western
    longitudes by +360 so it is one contiguous shape (longitudes up to 360; pyproj wraps them)."""
    if geom.geom_type not in AREAL:
        return geom
    polygons = getattr(geom, "geoms", [geom])
    rings = [p.exterior for p in polygons] + [r for p in polygons for r in p.interiors]
    jumps = [np.abs(np.diff(np.asarray(r.coords)[:, 0])).max() for r in rings if len(r.coords) > 1]
    if not jumps or max(jumps) <= 180:
        return geom
    return shapely.transform(geom, lambda xy: np.column_stack([np.where(xy[:, 0] < 0, xy[:, 0] + 360, xy[:, 0]),
                                                              xy[:, 1]]))


def _check_lonlat(geom, label: str) -> None:
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        hint = " (latitude and longitude swapped?)" if -90 <= minx and maxx <= 90 else ""
        raise RegionError(
            f"{label}: coordinates {geom.bounds} are outside lon [-180, 180] / lat [-90, 90]{hint}; "
            "GeoJSON must be longitude, latitude in degrees (RFC 7946)")


def _bbox_geometry(bbox: Sequence[float], where: str):
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        raise RegionError(f"{where}: a bbox is [min_lon, min_lat, max_lon, max_lat]; got {list(bbox)!r}")
    minx, miny, maxx, maxy = bbox
    if minx >= maxx or miny >= maxy:
        raise RegionError(f"{where}: bbox {list(bbox)} has min >= max; order is [min_lon, min_lat, max_lon, max_lat]")
    geom = box(minx, miny, maxx, maxy)
    _check_lonlat(geom, where)
    return geom
