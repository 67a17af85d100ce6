"""Point regions in bulk: every point region of one CRS as arrays, planned with numpy instead
of one shapely geometry and one projection per point. Pure, Beam-free.

`project_points` projects all points of a CRS with one pyproj call and computes, once, the patch
each point keeps (the same rule as `grid._point_cells`: its stride cell, or with
`center_points` the patch whose centre is nearest) and, for each such patch, its owner: the
smallest region id among the points that keep it, which is what the one-region-at-a-time loop
in order of ids gives. A cell then takes its point patches with a binary search.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import shapely

from pixelbeam.transforms.planning.grid import GridSpec, _epsg_code, _transformer, is_geographic


@dataclasses.dataclass(frozen=True, eq=False)
class ProjectedPoints:
    """The distinct patches the points of one CRS keep, sorted by (row, col), with their owners."""

    rows: np.ndarray  # int64
    cols: np.ndarray  # int64
    owners: np.ndarray  # object: the smallest region id keeping each patch
    is_points: bool = True

    def in_block(self, row0: int, col0: int, size: int):
        """(rows, cols, owners) of the patches in rows [row0, row0 + size) x cols [col0, col0 + size)."""
        lo, hi = np.searchsorted(self.rows, [row0, row0 + size])
        cols = self.cols[lo:hi]
        inside = (cols >= col0) & (cols < col0 + size)
        return self.rows[lo:hi][inside], cols[inside], self.owners[lo:hi][inside]


def project_points(region_ids: Sequence[str], geometries: Sequence, crs: str, grid: GridSpec) -> ProjectedPoints:
    """ProjectedPoints of point (or multipoint) lon/lat geometries, `region_ids[i]` owning `geometries[i]`."""
    coords, index = shapely.get_coordinates(np.asarray(geometries, dtype=object), return_index=True)
    ids = np.asarray(region_ids, dtype=object)[index]
    rows, cols = project_lonlat_points(coords[:, 0], coords[:, 1], crs, grid)
    order = np.lexsort((ids.astype(str), cols, rows))  # by row, col, then id: the first of a patch owns it
    return first_of_each_patch(rows[order], cols[order], ids[order])


def project_point_columns(ids, lon: np.ndarray, lat: np.ndarray, crs: str, grid: GridSpec) -> ProjectedPoints:
    """`project_points` of point_set.PointRegions' columns (`ids` point_set.Strings), with no
    Python object per point: the same patches and owners."""
    from pixelbeam.transforms.planning.point_set import sorted_owner_index
    rows, cols = project_lonlat_points(lon, lat, crs, grid)
    order = sorted_owner_index(ids, rows, cols)
    rows, cols = rows[order], cols[order]
    first = patch_starts(rows, cols)
    owners = np.array(ids.take(order[first]).slice(0, int(first.sum())) or [], dtype=object)
    return ProjectedPoints(rows[first], cols[first], owners)


def project_lonlat_points(x: np.ndarray, y: np.ndarray, crs: str, grid: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the patch each lon/lat point (degrees) keeps on `grid` in `crs`."""
    if is_geographic(crs):  # onto the raster's longitudes [lon_west, lon_west + 360), as project_lonlat does
        west = grid.lon_west
        x = np.where((x < west) | (x > west + 360), (x - west) % 360 + west, x)
    if _epsg_code(crs) != 4326:
        x, y = _transformer("EPSG:4326", crs).transform(x, y)
    return point_patches(grid, np.asarray(x), np.asarray(y))


def patch_starts(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """True where a (row, col) run of sorted points starts."""
    first = np.ones(rows.size, bool)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    return first


def first_of_each_patch(rows: np.ndarray, cols: np.ndarray, ids: np.ndarray) -> ProjectedPoints:
    first = patch_starts(rows, cols)
    return ProjectedPoints(rows[first], cols[first], ids[first])


def point_patches(grid: GridSpec, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the patch each point (CRS units) keeps; `grid._point_cells` on arrays."""
    sx, sy = grid.scale
    (swx, swy), (x0, y0) = grid.stride, grid.origin
    u, v = (x - x0) / sx, (y0 - y) / sy  # pixels right of / below the origin
    if grid.center_points:
        w, h = grid.patch_size
        return (np.floor((v - h / 2) / swy + 0.5).astype(np.int64), np.floor((u - w / 2) / swx + 0.5).astype(np.int64))
    return np.floor(v / swy).astype(np.int64), np.floor(u / swx).astype(np.int64)


def point_cells(points: ProjectedPoints, size: int) -> set[tuple[int, int]]:
    """The (row0, col0) of every cell of `size` patches that holds a point patch."""
    keys = np.unique(np.stack([points.rows // size * size, points.cols // size * size]), axis=1)
    return set(zip(keys[0].tolist(), keys[1].tolist()))
