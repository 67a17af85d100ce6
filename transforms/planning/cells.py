"""Plans that scale: coarse cells on the launcher, patches on the workers. Pure, Beam-free.

A cell is a block of up to `CELL_PATCHES` x `CELL_PATCHES` patch indices of one grid; cells
partition each CRS's (row, col) index space, so a patch lies in exactly one cell. The launcher
lists only the cells that touch a region (a country at 10 m with 256 px patches is thousands of
cells, not millions of patches); a worker expands a cell into its patches by the same rule as
`grid.plan_patches` (kept by a region's coverage; owner the smallest region id that keeps it),
so patch ids are identical to the direct plan, and no shuffle is needed to deduplicate.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import shapely

from pixelbeam.transforms.planning.grid import (GridSpec, _point_cells, kept_patches, make_spec, patch_id, project_lonlat, region_crs)
from pixelbeam.transforms.planning.orientation import NotNorthUp, north_up
from pixelbeam.transforms.patch import PatchSpec
from pixelbeam.transforms.planning.point_regions import ProjectedPoints, point_cells, project_point_columns, project_points
from pixelbeam.transforms.planning.point_set import PointRegions
from pixelbeam.transforms.planning.regions import Region
from pixelbeam.transforms.planning.sampling import Sample
from pixelbeam.transforms.planning.splits import SplitRule, assign_block_splits, assign_region_splits, overlap_reach

CELL_PATCHES = 32  # patches per cell side: 1,024 patches a cell at most
BULK_POINTS = True  # point regions planned together (point_regions.py); False: one by one (tests compare both)


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """Patch indices rows [row0, row0 + size) x cols [col0, col0 + size) of the grid in `crs`."""

    crs: str
    row0: int
    col0: int
    size: int = CELL_PATCHES


@dataclasses.dataclass(frozen=True)
class ProjectedRegion:
    region_id: str
    geometry: object  # shapely, in the cell's CRS
    is_points: bool


def project_regions(regions: Iterable[Region], grid: GridSpec) -> dict[str, list]:
    """Regions by the CRS they are planned in, projected, sorted by id (the owner rule): the
    polygons one by one (ProjectedRegion), the points of a CRS all together, last
    (transforms/planning/point_regions.py ProjectedPoints, which keeps the same owner rule)."""
    if isinstance(regions, PointRegions) and BULK_POINTS and grid.crs.lower() != "utm":  # columns: no Region per point
        return {grid.crs: [project_point_columns(regions.ids, regions.lon, regions.lat, grid.crs, grid)]} if len(regions) else {}
    out: dict[str, list] = {}
    points: dict[str, tuple[list, list]] = {}
    for region in sorted(regions, key=lambda r: r.region_id):
        crs = region_crs(grid, region)
        if region.is_points and BULK_POINTS:
            ids, geoms = points.setdefault(crs, ([], []))
            ids.append(region.region_id)
            geoms.append(region.geometry)
            continue
        geom = project_lonlat(region.geometry, crs, grid.lon_west)
        shapely.prepare(geom)
        out.setdefault(crs, []).append(ProjectedRegion(region.region_id, geom, region.is_points))
    for crs, (ids, geoms) in points.items():
        out.setdefault(crs, []).append(project_points(ids, geoms, crs, grid))
    return out


def cell_box(grid: GridSpec, cell: Cell):
    """The union of the cell's patch footprints, as one box (CRS units)."""
    sx, sy = grid.scale
    (w, h), (swx, swy), (x0, y0) = grid.patch_size, grid.stride, grid.origin
    left = x0 + cell.col0 * swx * sx
    right = x0 + (cell.col0 + cell.size - 1) * swx * sx + w * sx
    top = y0 - cell.row0 * swy * sy
    bottom = y0 - (cell.row0 + cell.size - 1) * swy * sy - h * sy
    return shapely.box(left, bottom, right, top)


def plan_cells(regions: Iterable[Region], grid: GridSpec, size: int = CELL_PATCHES,
               projected: Optional[dict] = None) -> list[Cell]:
    """The cells whose patches may be kept by some region; memory O(cells), not O(patches);
    `projected`: `project_regions(regions, grid)` when the caller has it already."""
    cells: set[Cell] = set()
    projected_by_crs = projected if projected is not None else project_regions(regions, grid)
    for crs, projected in projected_by_crs.items():
        for region in projected:
            cells.update(_region_cells(grid, crs, region, size))
    return sorted(cells)


def _region_cells(grid: GridSpec, crs: str, region, size: int) -> Iterator[Cell]:
    if isinstance(region, ProjectedPoints):
        for r, c in point_cells(region, size):
            yield Cell(crs, r, c, size)
        return
    if region.is_points:
        rows, cols, _ = _point_cells(grid, region.geometry)
        for r, c in zip(rows.tolist(), cols.tolist()):
            yield Cell(crs, r // size * size, c // size * size, size)
        return
    from pixelbeam.transforms.planning.grid import _candidate_indices
    rows, cols = _candidate_indices(grid, region.geometry.bounds)
    if rows.size == 0 or cols.size == 0:
        return
    crows = np.arange(math.floor(rows[0] / size), math.floor(rows[-1] / size) + 1) * size
    ccols = np.arange(math.floor(cols[0] / size), math.floor(cols[-1] / size) + 1) * size
    rr, cc = (a.ravel() for a in np.meshgrid(crows, ccols, indexing="ij"))
    boxes = np.array([cell_box(grid, Cell(crs, int(r), int(c), size)) for r, c in zip(rr, cc)])
    touching = shapely.intersects(region.geometry, boxes) & ~shapely.touches(region.geometry, boxes)
    for r, c in zip(rr[touching].tolist(), cc[touching].tolist()):
        yield Cell(crs, r, c, size)


def cell_patch_indices(cell: Cell, regions: Sequence[ProjectedRegion], grid: GridSpec):
    """(rows, cols, owner region ids) of the patches of `cell` that some region keeps."""
    owner = np.full((cell.size, cell.size), None, dtype=object)
    box = cell_box(grid, cell)
    rr, cc = (a.ravel() for a in np.meshgrid(np.arange(cell.row0, cell.row0 + cell.size),
                                             np.arange(cell.col0, cell.col0 + cell.size), indexing="ij"))
    points = [r for r in regions if isinstance(r, ProjectedPoints)]
    for region in regions:  # sorted by id: the first region keeping a patch owns it
        if isinstance(region, ProjectedPoints):
            continue  # below: the smallest id of the polygons' and the points' owners
        if region.is_points:
            rows, cols, _ = _point_cells(grid, region.geometry)
            inside = (rows >= cell.row0) & (rows < cell.row0 + cell.size) & (cols >= cell.col0) & (cols < cell.col0 + cell.size)
            rows, cols = rows[inside], cols[inside]
        elif shapely.contains_properly(region.geometry, box):
            rows, cols = rr, cc  # every patch of the cell lies inside: coverage 1
        elif shapely.intersects(region.geometry, box):  # clip first: one intersection with the
            rows, cols, _ = kept_patches(grid, shapely.intersection(region.geometry, box), rr, cc)  # whole region per cell
        else:
            continue
        block = owner[rows - cell.row0, cols - cell.col0]
        free = block == None  # noqa: E711 - element-wise on an object array
        owner[rows[free] - cell.row0, cols[free] - cell.col0] = region.region_id
    for group in points:
        rows, cols, owners = group.in_block(cell.row0, cell.col0, cell.size)
        for r, c, o in zip((rows - cell.row0).tolist(), (cols - cell.col0).tolist(), owners.tolist()):
            if owner[r, c] is None or o < owner[r, c]:
                owner[r, c] = o
    kept_r, kept_c = np.nonzero(owner != None)  # noqa: E711
    return kept_r + cell.row0, kept_c + cell.col0, owner[kept_r, kept_c]


def split_cell_patches(cell: Cell, regions: Sequence[ProjectedRegion], grid: GridSpec,
                       rule: Optional[SplitRule] = None):
    """(rows, cols, owners, splits, left out) of the cell's patches: `cell_patch_indices` with
    each patch's split and the split guard applied (transforms/planning/splits.py); splits is None
    without a rule. By region, the guard looks `overlap_reach` patches past the cell's edge."""
    rows, cols, owners = cell_patch_indices(cell, regions, grid)
    if rule is None:
        return rows, cols, owners, None, 0
    if rule.by is None:
        index, kept = assign_block_splits(rule, grid, cell.crs, rows, cols)
    else:
        reach = max(overlap_reach(grid))
        around = cell_patch_indices(Cell(cell.crs, cell.row0 - reach, cell.col0 - reach, cell.size + 2 * reach),
                                    regions, grid) if reach and rows.size else (rows, cols, owners)
        index, kept = assign_region_splits(rule, grid, rows, cols, owners, around)
    names = np.array(rule.names, dtype=object)[index] if index.size else np.zeros(0, object)
    return rows[kept], cols[kept], owners[kept], names[kept], int(rows.size - kept.sum())


def expand_cell(cell: Cell, regions: Sequence[ProjectedRegion], grid: GridSpec,
                sample: Optional[Sample] = None) -> list[PatchSpec]:
    """The PatchSpecs of one cell (what a worker does with a cell), kept, labelled and split by
    `sample` (transforms/planning/sampling.py, splits.py) when given."""
    rule = sample.split if sample is not None else None
    rows, cols, owners, splits, _ = split_cell_patches(cell, regions, grid, rule)
    specs = [make_spec(grid, cell.crs, r, c, o) for r, c, o in zip(rows.tolist(), cols.tolist(), owners.tolist())]
    if sample is None:
        return specs
    if splits is not None:
        specs = [dataclasses.replace(s, split=name) for s, name in zip(specs, splits.tolist())]
    return [dataclasses.replace(s, label=sample.label(s.region_id)) for s in specs
            if sample.keeps(s.patch_id, s.region_id)]


def owned_patch_ids(cells: Iterable[Cell], projected: dict[str, list[ProjectedRegion]],
                    grid: GridSpec, rule: Optional[SplitRule] = None) -> Iterator[tuple[str, str]]:
    """(patch id, owner region id) of every patch of the cells (the split guard applied with
    `rule`), one cell in memory at a time."""
    for cell in cells:
        rows, cols, owners, _, _ = split_cell_patches(cell, projected[cell.crs], grid, rule)
        for r, c, o in zip(rows.tolist(), cols.tolist(), owners.tolist()):
            yield patch_id(cell.crs, r, c), o


def count_patches(cells: Iterable[Cell], projected: dict[str, list[ProjectedRegion]], grid: GridSpec,
                  sample: Optional[Sample] = None) -> int:
    """How many patches the cells hold (kept by `sample`), without building them (launcher
    memory O(one cell))."""
    return sum(count_by_split(cells, projected, grid, sample)[0].values())


def count_by_split(cells: Iterable[Cell], projected: dict[str, list[ProjectedRegion]], grid: GridSpec,
                   sample: Optional[Sample] = None) -> tuple[dict, int]:
    """({split or None: patches kept by `sample`}, patches the split guard left out), one cell
    in memory at a time. Raises NotNorthUp (transforms/planning/orientation.py) when some patch
    would be written flipped or mirrored, naming every region concerned."""
    rule = sample.split if sample is not None else None
    counts: dict = {}
    left_out = 0
    flipped: dict[str, set] = {}
    for cell in cells:
        rows, cols, owners, splits, dropped = split_cell_patches(cell, projected[cell.crs], grid, rule)
        left_out += dropped
        wrong = ~north_up(grid, cell.crs, rows, cols)
        if wrong.any():
            flipped.setdefault(cell.crs, set()).update(owners[wrong].tolist())
        kept = np.ones(rows.size, bool)
        if sample is not None and sample.thresholds:
            kept = np.array([sample.keeps(patch_id(cell.crs, r, c), o)
                             for r, c, o in zip(rows.tolist(), cols.tolist(), owners.tolist())], bool)
        if splits is None:
            counts[None] = counts.get(None, 0) + int(kept.sum())
            continue
        names, numbers = np.unique(splits[kept].astype(str), return_counts=True)
        for name, number in zip(names.tolist(), numbers.tolist()):
            counts[name] = counts.get(name, 0) + number
    for crs, regions in sorted(flipped.items()):
        raise NotNorthUp(crs, regions)
    return counts, left_out


def plan_by_cells(regions: Iterable[Region], grid: GridSpec, size: int = CELL_PATCHES,
                  sample: Optional[Sample] = None) -> list[PatchSpec]:
    """Every patch, expanded cell by cell; equals `grid.plan_patches` (tested)."""
    regions = list(regions)
    projected = project_regions(regions, grid)
    specs = [s for cell in plan_cells(regions, grid, size)
             for s in expand_cell(cell, projected[cell.crs], grid, sample)]
    return sorted(specs, key=lambda s: (s.crs, s.row, s.col))
