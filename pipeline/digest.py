"""The plan digest a resumed run compares: what decides the set of planned patch ids. Beam-free,
so a launcher computes it for point regions before it frees their columns and imports Beam
(pipeline/point_run.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys

import numpy as np
import shapely

from pixelbeam.transforms.planning.point_plan import PlannedPoints
from pixelbeam.transforms.planning.point_set import PointRegions


def plan_digest(job) -> str:
    """Hash of what decides the set of planned patch ids: the grid and the regions (point
    regions held as columns: the same hash, fed a chunk of points at a time)."""
    grid = dataclasses.asdict(job.grid)
    if grid["lon_west"] == -180.0:  # the default: digests as before the field existed
        del grid["lon_west"]
    if isinstance(job.regions, PlannedPoints):  # a run's points, planned and freed (transforms/planning/point_plan.py)
        return job.regions.digest
    if isinstance(job.regions, PointRegions):
        digest = hashlib.sha256()
        for text in point_digest_text(grid, job.regions):
            digest.update(text.encode())
        return digest.hexdigest()[:16]
    regions = sorted((r.region_id, r.geometry.wkb_hex) for r in job.regions)
    doc = json.dumps([grid, regions], sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def point_digest_text(grid: dict, points: PointRegions, chunk: int = 65_536):
    """The text `json.dumps([grid, sorted (id, wkb hex) pairs], sort_keys=True)` is, in pieces."""
    head = json.dumps([grid, []], sort_keys=True, default=str)
    yield head[:-2]  # ends with ", [": the pairs follow
    order = np.argsort(points.ids.fixed(), kind="stable")  # as str sorts (point_set.Strings.fixed)
    for k in range(0, order.size, chunk):
        index = order[k:k + chunk]  # (ids and coordinates only: no property column is copied)
        hexes = point_wkb_hex(points.lon[index], points.lat[index])
        ids = points.ids.take(index).slice(0, index.size)
        yield (", " if k else "") + json.dumps(list(zip(ids, hexes)))[1:-1]  # the pairs, without the list's brackets
    yield "]]"


WKB_POINT = np.dtype([("order", "u1"), ("type", "<u4"), ("x", "<f8"), ("y", "<f8")])  # 21 bytes, unpadded


def point_wkb_hex(lon: np.ndarray, lat: np.ndarray) -> list[str]:
    """Each point's `wkb_hex` (shapely's: 2-D, machine byte order), from the arrays at once."""
    if sys.byteorder != "little":
        return shapely.to_wkb(shapely.points(lon, lat), hex=True).tolist()
    rec = np.empty(lon.size, WKB_POINT)
    rec["order"], rec["type"], rec["x"], rec["y"] = 1, 1, lon, lat  # little-endian, Point
    text = rec.tobytes().hex().upper()
    return [text[i:i + 42] for i in range(0, len(text), 42)]
