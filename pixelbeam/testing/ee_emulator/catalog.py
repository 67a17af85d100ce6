"""Catalog of local rasters that the emulator serves as Earth Engine assets.

Catalog dict (or a JSON file holding it); relative paths in a file are
resolved against the file's directory::

    {"images": {"projects/demo/assets/landsat":
                   {"path": "/abs/RGB.byte.tif", "bands": ["B4", "B3", "B2"],
                    "properties": {...}, "time_start": "2020-01-01"}},
     "collections": {"COPERNICUS/S2_SR_HARMONIZED":
                   [{"id": "COPERNICUS/S2_SR_HARMONIZED/20200101", "path": "...",
                     "bands": [...], "time_start": "2020-01-01",
                     "properties": {"CLOUDY_PIXEL_PERCENTAGE": 12}}]}}

``bands`` names the raster's bands in order (default ``b1..bN``) and must
name every band. An image may also gather bands from several rasters (as Earth
Engine images hold bands of several resolutions): ``"files": [{"path": ...,
"bands": [...]}, ...]`` instead of ``path`` and ``bands``; the first file gives the
native grid and the footprint, each band is warped from its own file.
Images inside collections are also addressable by their id.
Ids are compared without the ``projects/earthengine-public/assets/`` and
``projects/earthengine-legacy/assets/`` prefixes the client adds to public ids.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

_IMPLICIT_PREFIXES = (
    "projects/earthengine-public/assets/",
    "projects/earthengine-legacy/assets/",
)


def canonical_asset_id(asset_id: str) -> str:
    """Strips the resource-name prefixes the ee client adds to public/legacy ids."""
    asset_id = asset_id.strip("/")
    for prefix in _IMPLICIT_PREFIXES:
        if asset_id.startswith(prefix):
            return asset_id[len(prefix):]
    return asset_id


def parse_time_ms(value: Any) -> int | None:
    """Milliseconds since the Unix epoch (UTC) from an int (ms) or ISO date string."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return int(parsed.timestamp() * 1000)


@dataclasses.dataclass(frozen=True)
class CatalogImage:
    """One local raster exposed as an EE image asset."""

    asset_id: str  # canonical id
    path: str
    band_names: tuple[str, ...]
    band_dtypes: tuple[np.dtype, ...]
    crs: CRS
    transform: Affine
    width: int
    height: int
    footprint_wgs84: BaseGeometry  # raster bounds in EPSG:4326 (lon, lat)
    properties: dict[str, Any]  # includes system:index, system:time_start
    band_files: tuple[tuple[str, int], ...] = ()  # (path, 1-based band in it) of each band; default path's

    @property
    def system_index(self) -> str:
        return self.properties["system:index"]


def _file_bands(asset_id: str, spec: dict[str, Any], base_dir: str | None) -> list[tuple[str, str, int, Any]]:
    """(band name, path, 1-based index, dtype) of every band of an image spec."""
    files = spec.get("files") or [{"path": spec["path"], "bands": spec.get("bands")}]
    bands = []
    for entry in files:
        path = entry["path"]
        if base_dir and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        with rasterio.open(path) as ds:
            names = entry.get("bands") or [f"b{i}" for i in range(len(bands) + 1, len(bands) + ds.count + 1)]
            if len(names) != ds.count:
                raise ValueError(f"{asset_id}: {len(names)} band names for {ds.count} bands in {path}")
            bands += [(n, path, i, np.dtype(d)) for i, (n, d) in enumerate(zip(names, ds.dtypes), start=1)]
    return bands


def _load_image(asset_id: str, spec: dict[str, Any], base_dir: str | None) -> CatalogImage:
    bands = _file_bands(asset_id, spec, base_dir)
    path = bands[0][1]
    with rasterio.open(path) as ds:
        names = tuple(b[0] for b in bands)
        if len(set(names)) != len(names):
            raise ValueError(f"{asset_id}: duplicate band names {names}")
        footprint = shape(transform_geom(ds.crs, "EPSG:4326", box(*ds.bounds).__geo_interface__))
        canonical = canonical_asset_id(asset_id)
        properties = dict(spec.get("properties") or {})
        properties["system:index"] = spec.get("system_index") or canonical.rsplit("/", 1)[-1]
        properties["system:id"] = canonical
        for key, prop in (("time_start", "system:time_start"), ("time_end", "system:time_end")):
            if spec.get(key) is not None:
                properties[prop] = parse_time_ms(spec[key])
        return CatalogImage(
            asset_id=canonical, path=path, band_names=names,
            band_dtypes=tuple(b[3] for b in bands), crs=ds.crs,
            transform=ds.transform, width=ds.width, height=ds.height,
            footprint_wgs84=footprint, properties=properties,
            band_files=tuple((b[1], b[2]) for b in bands))


class Catalog:
    """Lookup of image assets and image collections by (canonical) id."""

    def __init__(self, spec: dict[str, Any] | None = None, base_dir: str | None = None):
        spec = spec or {}
        self.images: dict[str, CatalogImage] = {}
        self.collections: dict[str, list[CatalogImage]] = {}
        for asset_id, image_spec in (spec.get("images") or {}).items():
            image = _load_image(asset_id, image_spec, base_dir)
            self.images[image.asset_id] = image
        for collection_id, members in (spec.get("collections") or {}).items():
            loaded = [_load_image(m["id"], m, base_dir) for m in members]
            self.collections[canonical_asset_id(collection_id)] = loaded
            for image in loaded:
                self.images.setdefault(image.asset_id, image)

    @classmethod
    def from_file(cls, path: str) -> "Catalog":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f), base_dir=os.path.dirname(os.path.abspath(path)))

    def image(self, asset_id: str) -> CatalogImage | None:
        return self.images.get(canonical_asset_id(asset_id))

    def collection(self, collection_id: str) -> list[CatalogImage] | None:
        return self.collections.get(canonical_asset_id(collection_id))
