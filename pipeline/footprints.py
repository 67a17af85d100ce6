"""Patch footprints as lon/lat polygons: `pixelbeam plan --footprints FILE.geojson` and the
footprints picture.

A footprint is the patch proper (without margin) on its own grid, its outline densified in
pixel space and reprojected to lon/lat (EPSG:4326, degrees) with pyproj, so that an edge that
is straight in the grid's CRS follows the right curve in lon/lat: every side is cut into at
least 2 segments, and into as many more as keep each segment under `DENSIFY_DEGREES` (the
same bound used when regions are projected onto the grid). Rings are counter-clockwise as
RFC 7946 asks. Patches straddling the antimeridian are not split.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Sequence

import numpy as np
import pyproj

from pixelbeam.transforms.planning.grid import DENSIFY_DEGREES
from pixelbeam.transforms.patch import PatchSpec

MIN_SEGMENTS_PER_SIDE = 2
MAX_SEGMENTS_PER_SIDE = 64


@functools.lru_cache(maxsize=64)
def _to_lonlat(crs: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def _ring_fractions(k: int) -> np.ndarray:
    """(4k + 1, 2) pixel-space fractions (u of width, v of height) around the unit square,
    starting at the top-left corner and going down the left side first."""
    t = np.arange(k) / k
    left = np.column_stack([np.zeros(k), t])
    bottom = np.column_stack([t, np.ones(k)])
    right = np.column_stack([np.ones(k), 1 - t])
    top = np.column_stack([1 - t, np.zeros(k)])
    return np.vstack([left, bottom, right, top, [[0.0, 0.0]]])


def _lonlat(crs: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lon, lat = _to_lonlat(crs).transform(x, y)
    return np.asarray(lon, float), np.asarray(lat, float)


def patch_rings_lonlat(crs: str, transforms: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Lon/lat outlines `(N, 4k + 1, 2)` (degrees) of N patches of one CRS, given their affine
    transforms `(N, 6)` (GDAL order, CRS units) and sizes in pixels."""
    t = np.asarray(transforms, float).reshape(-1, 6)
    w = np.asarray(widths, float).reshape(-1, 1)
    h = np.asarray(heights, float).reshape(-1, 1)

    def project(frac):
        u, v = frac[None, :, 0] * w, frac[None, :, 1] * h
        x = t[:, 0:1] * u + t[:, 1:2] * v + t[:, 2:3]
        y = t[:, 3:4] * u + t[:, 4:5] * v + t[:, 5:6]
        lon, lat = _lonlat(crs, x.ravel(), y.ravel())
        return np.stack([lon.reshape(x.shape), lat.reshape(x.shape)], axis=-1)

    corners = project(_ring_fractions(1))
    side_deg = float(np.nanmax(np.hypot(*np.moveaxis(np.diff(corners, axis=1), -1, 0)))) if len(t) else 0.0
    k = min(MAX_SEGMENTS_PER_SIDE, max(MIN_SEGMENTS_PER_SIDE, math.ceil(side_deg / DENSIFY_DEGREES)))
    rings = project(_ring_fractions(k))
    x, y = rings[..., 0], rings[..., 1]
    area2 = np.sum(x[:, :-1] * y[:, 1:] - x[:, 1:] * y[:, :-1], axis=1)  # shoelace, > 0 = counter-clockwise
    rings[area2 < 0] = rings[area2 < 0, ::-1]
    return rings


def rings_by_crs(items: Sequence, crs_of, transform_of, size_of) -> list[np.ndarray]:
    """Lon/lat rings of `items` (specs or manifest rows), in the items' order, computed one CRS
    at a time."""
    rings: list = [None] * len(items)
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(crs_of(item), []).append(i)
    for crs, index in groups.items():
        sizes = np.array([size_of(items[i]) for i in index], float).reshape(-1, 2)
        done = patch_rings_lonlat(crs, np.array([transform_of(items[i]) for i in index], float),
                                  sizes[:, 0], sizes[:, 1])
        for i, ring in zip(index, done):
            rings[i] = ring
    return rings


def spec_rings(specs: Sequence[PatchSpec]) -> list[np.ndarray]:
    return rings_by_crs(specs, lambda s: s.crs, lambda s: s.transform, lambda s: (s.width, s.height))


def row_rings(rows: Sequence[dict]) -> list[np.ndarray]:
    """Lon/lat rings of manifest rows (their crs, transform, width and height)."""
    return rings_by_crs(rows, lambda r: r["crs"], lambda r: r["transform"], lambda r: (r["width"], r["height"]))


def footprint_collection(specs: Sequence[PatchSpec], digits: int = 9) -> dict:
    """A GeoJSON FeatureCollection (lon/lat) of the planned patches, one Polygon each, with
    properties patch_id, region_id, crs, row, col, width, height and margin (px)."""
    features = []
    for spec, ring in zip(specs, spec_rings(specs)):
        features.append({
            "type": "Feature",
            "id": spec.patch_id,
            "geometry": {"type": "Polygon", "coordinates": [np.round(ring, digits).tolist()]},
            "properties": {"patch_id": spec.patch_id, "region_id": spec.region_id, "crs": spec.crs,
                           "row": spec.row, "col": spec.col, "width": spec.width, "height": spec.height,
                           "margin": spec.margin},
        })
    return {"type": "FeatureCollection", "features": features}


def write_footprints(job, path: str) -> str:
    """Write the job's planned patch footprints to `path` (GeoJSON, whole or not at all)."""
    doc = footprint_collection(job.specs)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(tmp, path)
    return path
