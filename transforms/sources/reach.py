"""Does an image reach a patch? An image's lon/lat footprint against a fetch window. Pure.

A collection image may carry its footprint (a STAC item's `geometry`, as WKB in lon/lat
degrees). A patch whose fetch window (margins included) the footprint does not touch is not
requested from that image: its step is masked, as an image that does not cover a patch. The
window's lon/lat box is drawn with densified edges (transforms/planning/grid.py), so the test
errs on the side of reading: an image is skipped only when it cannot hold a pixel of the window.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import shapely
import shapely.wkb

from pixelbeam.transforms.patch import PatchSpec
from pixelbeam.transforms.planning.grid import bounds_to_lonlat


@functools.lru_cache(maxsize=4096)
def footprint_geometry(wkb: bytes):
    """A footprint parsed once per process (prepared for repeated intersection tests)."""
    geom = shapely.wkb.loads(wkb)
    shapely.prepare(geom)
    return geom


def window_lonlat_box(spec: PatchSpec, row_off: int = 0, col_off: int = 0, width: Optional[int] = None,
                      height: Optional[int] = None) -> Optional[tuple[float, float, float, float]]:
    """(west, south, east, north) degrees of a patch's fetch window (or of a part of it)."""
    a, b, c, d, e, f = spec.fetch_transform
    w = spec.fetch_width if width is None else width
    h = spec.fetch_height if height is None else height
    xs = [c + a * (col_off + i) + b * (row_off + j) for i in (0, w) for j in (0, h)]
    ys = [f + d * (col_off + i) + e * (row_off + j) for i in (0, w) for j in (0, h)]
    box = bounds_to_lonlat(spec.crs, (min(xs), min(ys), max(xs), max(ys)))
    return box if all(math.isfinite(v) for v in box) and box[0] < box[2] else None


def reaches(footprint: Optional[bytes], spec: PatchSpec, **part) -> bool:
    """False only when the footprint (WKB, lon/lat) cannot touch the window; True without one."""
    if footprint is None:
        return True
    box = window_lonlat_box(spec, **part)
    if box is None:  # e.g. a window across the antimeridian: read, do not guess
        return True
    return bool(footprint_geometry(footprint).intersects(shapely.box(*box)))
