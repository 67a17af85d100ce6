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
from typing import Any, Optional, Sequence

import numpy as np
import shapely
import shapely.affinity
from shapely.errors import GEOSException
from shapely.geometry import box, shape
from shapely.validation import explain_validity, make_valid

from pixelbeam.transforms.planning.region import PUNCTUAL, Region  # noqa: F401 (re-exported)
from pixelbeam.transforms.formats.vector_files import VectorFileError, is_lonlat, read_vector, to_crs

log = logging.getLogger(__name__)

AREAL = ("Polygon", "MultiPolygon")


class RegionError(ValueError):
    """A region file or bbox that cannot be used; the message says which feature and why."""


class OutsideLonLat(RegionError):
    """A region whose coordinates leave lon [-180, 180] / lat [-90, 90] (`regions_outside:
    skip` skips it); `region_id` and `reason` say which and why."""

    def __init__(self, message: str, region_id: str = "", reason: str = ""):
        super().__init__(message)
        self.region_id, self.reason = region_id, reason


@dataclasses.dataclass(frozen=True)
class SkippedRegion:
    """A region left out of the plan (`regions_outside: skip`), and why."""

    region_id: str
    reason: str
    message: str = dataclasses.field(default="", compare=False)  # the one-line error it would have been

    def to_record(self) -> dict:
        return {"region": self.region_id, "reason": self.reason}


# A message listing bad regions names at most this many; the rest are counted.
LISTED_PROBLEMS = 20


def combined_error(where: str, problems: Sequence[RegionError]) -> RegionError:
    """One RegionError for every bad feature of a file (each message starts with `where: `)."""
    hint = ("; or set regions_outside: skip to plan without the regions outside lon/lat"
            if any(isinstance(p, OutsideLonLat) for p in problems) else "")
    if len(problems) == 1:
        return RegionError(f"{problems[0]}{hint}")
    shown = [str(p).removeprefix(f"{where}: ") for p in problems[:LISTED_PROBLEMS]]
    more = f"; and {len(problems) - LISTED_PROBLEMS} more" if len(problems) > LISTED_PROBLEMS else ""
    return RegionError(f"{where}: {len(problems)} bad regions: " + "; ".join(shown) + more + hint)


GEOJSON_SUFFIXES = (".geojson", ".json")


def load_regions(regions: str | Sequence[float], where: str = "regions",
                 skipped: Optional[list] = None) -> Sequence[Region]:
    """Regions from a vector file (GeoJSON FeatureCollection, Feature or bare geometry; or any
    OGR format or GeoParquet, in any CRS) or a `[min_lon, min_lat, max_lon, max_lat]` bbox: a
    list, or for a file of many points a point_set.PointRegions (a Sequence of Region held as
    columns; `list(...)` makes it a list).
    Every bad feature is reported in one RegionError; given a `skipped` list, features outside
    lon/lat are appended to it (SkippedRegion) instead."""
    if isinstance(regions, (list, tuple)):
        return [Region("bbox", _bbox_geometry(regions, where))]
    is_url = "://" in regions or regions.startswith("/vsi")
    if not is_url and not os.path.exists(regions):
        raise RegionError(f"{where}: file {regions!r} does not exist; give a vector file (GeoJSON, GeoPackage, "
                          "Shapefile, FlatGeobuf, GeoParquet) or a bbox")
    if not is_url and regions.lower().endswith(".csv"):  # points as lon,lat columns (region_loading.py)
        from pixelbeam.transforms.planning.region_loading import csv_point_regions
        try:
            return csv_point_regions(regions, where)
        except ValueError as e:
            raise RegionError(str(e)) from None
    if is_url or not regions.lower().endswith(GEOJSON_SUFFIXES):
        return regions_from_vector_file(regions, where, skipped)
    from pixelbeam.transforms.planning.region_loading import stream_point_regions
    bulk = stream_point_regions(regions)  # many points: streamed and in bulk, the same Regions
    if bulk is not None:
        return bulk
    try:
        with open(regions, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegionError(f"{where}: {regions!r} is not readable GeoJSON ({one_line(e)}); fix the file") from None
    return regions_from_geojson(doc, where=f"{where} ({os.path.basename(regions)})", skipped=skipped)


def regions_from_vector_file(path: str, where: str = "regions", skipped: Optional[list] = None) -> list[Region]:
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
    from pixelbeam.transforms.planning.region_loading import point_table_to_regions
    bulk = point_table_to_regions(geometries, table.properties)  # many points: in bulk, same Regions
    if bulk is not None:
        return bulk
    features = [{"type": "Feature", "properties": table.properties(i),
                 "geometry": None if g is None else shapely.geometry.mapping(g)} for i, g in enumerate(geometries)]
    return regions_from_geojson({"type": "FeatureCollection", "features": features}, where=label, skipped=skipped)


def regions_from_geojson(doc: Any, where: str = "regions", skipped: Optional[list] = None) -> list[Region]:
    """Regions from a parsed GeoJSON object; one per feature, ids from `id` or a property.
    Every bad feature is reported in one RegionError; features outside lon/lat go to
    `skipped` (SkippedRegion) when it is given."""
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
    if crs is None and isinstance(features, list):  # many points: in bulk (region_loading.py), same Regions
        from pixelbeam.transforms.planning.region_loading import point_features_to_regions
        bulk = point_features_to_regions(features)
        if bulk is not None:
            return bulk
    out, seen, problems = [], set(), []
    for index, feature in enumerate(features):
        try:
            region = _region_from_feature(feature, index, where, crs)
        except OutsideLonLat as e:
            if skipped is None:
                problems.append(e)
            else:
                skipped.append(SkippedRegion(e.region_id, e.reason, str(e)))
            continue
        except RegionError as e:
            problems.append(e)
            continue
        if region.region_id in seen:
            problems.append(RegionError(f"{where}: feature {index}: duplicate region id {region.region_id!r}; "
                                        "ids must be unique"))
            continue
        seen.add(region.region_id)
        out.append(region)
    if problems:
        raise combined_error(where, problems)
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
    control = next((ch for ch in region_id if ord(ch) < 32 or ord(ch) == 127), None)
    if control is not None:
        raise RegionError(f"{label}: the region id holds a control character ({control!r}); give ids of "
                          "printable characters (they name the region in the manifest and in messages)")
    if not geom_doc:
        raise RegionError(f"{label}: has no geometry; give a Polygon, MultiPolygon, Point or MultiPoint")
    not_number = first_non_number(geom_doc.get("coordinates") if isinstance(geom_doc, dict) else None)
    if not_number is not None:
        raise RegionError(f"{label}: coordinates must be numbers, not {type(not_number).__name__} "
                          f"{not_number!r}; write them without quotes (RFC 7946)")
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
    _check_lonlat(geom, label, region_id)
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


def first_non_number(coordinates) -> Any:
    """The first value in nested GeoJSON coordinate lists that is not an int or float (strings
    and booleans, which shapely would turn into numbers quietly), else None."""
    stack = [coordinates]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            if item and type(item[0]) in (int, float) and all(type(v) in (int, float) for v in item):
                continue  # a position: the common case, checked in one pass
            stack.extend(reversed(item))
        elif item is not None and type(item) not in (int, float):
            return item
    return None


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
    """A region that crosses the antimeridian as one contiguous shape, longitudes up to 360
    (pyproj wraps them; `grid.project_lonlat` wraps them back onto a geographic grid).

    Two ways a file draws such a region: a polygon whose edges jump more than 180 degrees of
    longitude (drawn 170 -> -170, not cut as RFC 7946 asks), whose western longitudes shift
    by +360; and a MultiPolygon or MultiPoint cut at +-180 as RFC 7946 asks, whose parts wholly
    west of 0 shift by +360 (polygons joined) when that narrows a span of over 180 degrees.
    """
    if geom.geom_type in ("MultiPolygon", "MultiPoint"):
        joined = join_across_antimeridian(geom)
        if joined is not None:
            return joined
    if geom.geom_type not in AREAL:
        return geom
    polygons = getattr(geom, "geoms", [geom])
    rings = [p.exterior for p in polygons] + [r for p in polygons for r in p.interiors]
    jumps = [np.abs(np.diff(np.asarray(r.coords)[:, 0])).max() for r in rings if len(r.coords) > 1]
    if not jumps or max(jumps) <= 180:
        return geom
    moved = shapely.transform(geom, lambda xy: np.column_stack([np.where(xy[:, 0] < 0, xy[:, 0] + 360, xy[:, 0]),
                                                               xy[:, 1]]))
    return geom if geom.is_valid and not moved.is_valid else moved  # e.g. a band all around: -180 to 180


def join_across_antimeridian(geom):
    """A multi-part geometry spanning over 180 degrees of longitude with its western parts
    (wholly at lon < 0) moved by +360 when that makes it narrower, polygons merged where they
    meet at 180 degrees; None when it does not cross the antimeridian."""
    minx, _, maxx, _ = geom.bounds
    if maxx - minx <= 180:
        return None
    parts = list(geom.geoms)
    moved = [shapely.affinity.translate(p, xoff=360) if p.bounds[2] < 0 else p for p in parts]
    lows, highs = [p.bounds[0] for p in moved], [p.bounds[2] for p in moved]
    if max(highs) - min(lows) >= maxx - minx:
        return None
    if geom.geom_type == "MultiPoint":
        return shapely.MultiPoint(moved)
    return shapely.union_all(moved) if all(p.is_valid for p in moved) else shapely.MultiPolygon(moved)


def _check_lonlat(geom, label: str, region_id: str = "") -> None:
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        hint = " (latitude and longitude swapped?)" if -90 <= minx and maxx <= 90 else ""
        bounds = tuple(float(v) for v in geom.bounds)
        raise OutsideLonLat(
            f"{label}: coordinates {bounds} are outside lon [-180, 180] / lat [-90, 90]{hint}; "
            "GeoJSON must be longitude, latitude in degrees (RFC 7946)", region_id,
            f"coordinates {bounds} outside lon [-180, 180] / lat [-90, 90]{hint}")


def _bbox_geometry(bbox: Sequence[float], where: str):
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        raise RegionError(f"{where}: a bbox is [min_lon, min_lat, max_lon, max_lat]; got {list(bbox)!r}")
    minx, miny, maxx, maxy = bbox
    if minx >= maxx or miny >= maxy:
        raise RegionError(f"{where}: bbox {list(bbox)} has min >= max; order is [min_lon, min_lat, max_lon, max_lat]")
    geom = box(minx, miny, maxx, maxy)
    _check_lonlat(geom, where)
    return geom
