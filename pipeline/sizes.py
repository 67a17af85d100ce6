"""Size checks at plan time: a patch must fit a worker's memory, and a plan must be countable.

A patch of 30,000 px or 10^6 px on a side, or a pixel of 1e-9 CRS units (metres given as
kilometres' millionths), used to pass `plan` (or crash in it) and die in a MemoryError after
minutes of work. Both are one-line ConfigErrors before anything is fetched or written.
"""

from __future__ import annotations

import logging
import math
from typing import Iterable, Mapping

from pixelbeam.pipeline.config import ConfigError, FetchConfig
from pixelbeam.transforms.planning.grid import GridSpec, is_geographic
from pixelbeam.transforms.planning.point_regions import ProjectedPoints

log = logging.getLogger(__name__)

METRES_PER_DEGREE = 111_320.0  # along the equator; what "30 m is about 0.00027 degrees" uses

# Patches whose footprints may meet the regions (their bounding boxes) beyond which the plan
# is refused: a billion patches is more than the whole Earth at 10 m in 256 px patches (8e7).
MAX_CANDIDATE_PATCHES = 10**9


def human_bytes(n: float) -> str:
    """`n` bytes as '2.5 GiB' (binary units)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} bytes" if unit == "bytes" else f"{n:,.1f}".removesuffix(".0") + f" {unit}"
        n /= 1024
    return f"{n} bytes"  # unreachable


def check_patch_memory(layers, fetch_shape: tuple[int, int], fetch: FetchConfig) -> None:
    """Refuse a patch whose pixels and masks (every layer, every image of a collection, the
    margin; see JobLayer.memory_bytes) exceed `fetch.max_patch_bytes`."""
    needed = {layer.name: layer.memory_bytes(fetch_shape) for layer in layers}
    total = sum(needed.values())
    if total <= fetch.patch_bytes:
        return
    h, w = fetch_shape
    biggest = max(needed, key=needed.get)
    parts = f"; layer {biggest!r} {human_bytes(needed[biggest])}" if len(needed) > 1 else ""
    raise ConfigError(f"grid.patch_size: a {w}x{h} px patch (margin included) takes {human_bytes(total)} of a "
                      f"worker's memory{parts}, over fetch.max_patch_bytes ({human_bytes(fetch.patch_bytes)}); use "
                      "a smaller patch_size, or raise fetch.max_patch_bytes if the workers have the memory")


def candidate_patches(grid: GridSpec, bounds) -> int:
    """How many patches of `grid` may meet a box (CRS units): the plan's upper bound for it."""
    minx, miny, maxx, maxy = bounds
    (swx, swy), (sx, sy) = grid.stride, grid.scale
    cols = (maxx - minx) / (swx * sx) + 2
    rows = (maxy - miny) / (swy * sy) + 2
    return math.inf if not math.isfinite(cols * rows) else math.ceil(cols) * math.ceil(rows)


def check_plan_size(projected: Mapping[str, Iterable], grid: GridSpec) -> None:
    """Refuse a plan of over MAX_CANDIDATE_PATCHES candidate patches (e.g. grid.scale given in
    the wrong unit) before it is listed; `projected` are the regions by CRS (cells.project_regions)."""
    total, largest, largest_id = 0, 0, None
    for crs, regions in projected.items():
        for region in regions:
            if isinstance(region, ProjectedPoints):  # the points of a CRS in bulk
                n, region_id = len(region.rows), "the point regions"
            elif region.is_points:
                n, region_id = len(getattr(region.geometry, "geoms", [region.geometry])), region.region_id
            else:
                n, region_id = candidate_patches(grid, region.geometry.bounds), region.region_id
            total += n
            if n > largest:
                largest, largest_id = n, region_id
    if total <= MAX_CANDIDATE_PATCHES:
        return
    sx, sy = grid.scale
    scale = f"{sx:g}" if sx == sy else f"[{sx:g}, {sy:g}]"
    raise ConfigError(f"grid.scale: pixels of {scale} CRS units make about {float(total):.2g} patches (region "
                      f"{largest_id!r} alone {float(largest):.2g}; the plan stops at {MAX_CANDIDATE_PATCHES:,}); "
                      "give grid.scale in the CRS's units (metres for UTM, degrees for EPSG:4326) or a larger "
                      "patch_size")


def check_grid_units(grid: GridSpec) -> None:
    """grid.scale in the CRS's units: on a geographic CRS (degrees) a patch wider than the Earth
    is refused and a pixel over 1 degree warned about, both saying the unit is degrees (`scale:
    30` meant as metres); on a projected CRS a pixel under 1 cm is warned about (degrees given
    as metres)."""
    (sx, sy), (w, h) = grid.scale, grid.patch_size
    shown = f"{sx:g}" if sx == sy else f"[{sx:g}, {sy:g}]"
    if grid.crs.lower() != "utm" and is_geographic(grid.crs):
        as_degrees = f"{sx / METRES_PER_DEGREE:.2g}"
        hint = (f"grid.scale: {shown} is in degrees in {grid.crs} (a geographic CRS: its unit is degrees), so a "
                f"{w}x{h} px patch spans {w * sx:g} x {h * sy:g} degrees; for {shown} m pixels give about "
                f"{as_degrees} degrees, or crs: utm")
        if w * sx > 360 or h * sy > 180:
            raise ConfigError(hint)
        if max(sx, sy) > 1:
            log.warning("%s", hint)
    elif min(sx, sy) < 0.01:
        log.warning("grid.scale: %s is in the units of %s (metres for UTM): pixels under 1 cm; degrees belong to "
                    "a geographic CRS such as EPSG:4326", shown, grid.crs)
