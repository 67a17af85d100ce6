"""What a run keeps of point regions once they are planned: each cell with its own point patches
(`PointCell`), not the points. Pure, Beam-free.

A `pixelbeam run` launcher plans point regions held as columns (point_set.PointRegions) as
`pixelbeam plan` does: every point is read and checked (bad input refused before any request),
projected, and its patch's owner found (the smallest id). The workers then need, for a cell, only
the distinct patches the points keep in it, their owners and (with `label_property`) the owners'
labels: `plan_point_cells` cuts the launcher's projected points into one `PointCell` per cell
(arrays and UTF-8 bytes, no Python object per point). `PlannedPoints` takes the columns' place in
the job (its count and the resume digest computed while they were there), so the launcher frees
the columns before it imports Beam, and the plan's chunks are staged with the cells
(pipeline/graph.py); a worker expands a PointCell with exactly the rule it applied to the whole
set (cells.expand_cell), so the patches are the same.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from pixelbeam.transforms.planning.cells import Cell, expand_cell, project_regions
from pixelbeam.transforms.planning.point_regions import ProjectedPoints
from pixelbeam.transforms.planning.point_set import PointRegions, Strings, compact
from pixelbeam.transforms.planning.sampling import MAX_RANK, Sample


@dataclasses.dataclass(frozen=True, eq=False)
class PointCell:
    """A planned cell and the point patches in it: `rows`, `cols` (sorted by row, then col), the
    owner region ids as UTF-8 bytes and ends, and the owners' labels or None (point_set.compact:
    an array, Strings, or a list holding None where the split guard left an owner's patch out)."""

    cell: Cell
    rows: np.ndarray
    cols: np.ndarray
    owner_bytes: bytes
    owner_ends: np.ndarray
    labels: object = None  # np.ndarray, Strings, list or None

    def owners(self) -> list[str]:
        return Strings(np.frombuffer(self.owner_bytes, np.uint8), self.owner_ends).slice(0, self.owner_ends.size)

    def projected(self) -> ProjectedPoints:
        """The cell's points as cells.expand_cell takes them."""
        return ProjectedPoints(self.rows, self.cols, np.array(self.owners() or [], dtype=object))

    def sample(self, sample: Optional[Sample]) -> Optional[Sample]:
        """`sample` with the labels of this cell's owners (the job's sample carries none)."""
        if sample is None or self.labels is None:
            return sample
        labels = self.labels.slice(0, len(self.labels)) if isinstance(self.labels, Strings) else (
            self.labels.tolist() if isinstance(self.labels, np.ndarray) else self.labels)
        return dataclasses.replace(sample, labels=tuple((o, v) for o, v in zip(self.owners(), labels) if v is not None))


@dataclasses.dataclass(frozen=True, eq=False)
class PlannedPoints:
    """The point regions of a planned run without the points (module doc): how many there
    were, the plan digest (pipeline/resume.py), and one PointCell per planned cell."""

    count: int
    digest: str
    cells: tuple[PointCell, ...]

    def __len__(self) -> int:
        return self.count

    def specs(self, grid, sample: Optional[Sample] = None) -> list:
        """Every planned PatchSpec, sorted as cells.plan_by_cells sorts them (tests, small jobs)."""
        specs = [s for item in self.cells for s in expand_point_cell(item, grid, sample)]
        return sorted(specs, key=lambda s: (s.crs, s.row, s.col))


def expand_point_cell(item: PointCell, grid, sample: Optional[Sample] = None) -> list:
    """The PatchSpecs of a PointCell (what a worker does with one): cells.expand_cell of its
    cell and its points, with its owners' labels."""
    return expand_cell(item.cell, [item.projected()], grid, item.sample(sample))


def runs_on_point_cells(job) -> bool:
    """The job's regions are point columns planned together in one CRS (cells.project_regions'
    bulk path) and no split is by a region property (whose rule reads every region): the ones
    `plan_point_cells` handles."""
    from pixelbeam.transforms.planning import cells
    sample = job.sample
    split = sample.split if sample is not None else None
    return (isinstance(job.regions, PointRegions) and cells.BULK_POINTS and job.grid.crs.lower() != "utm"
            and (split is None or split.by is None))


def plan_point_cells(regions: PointRegions, grid, cells: Sequence[Cell], labels: Optional[Sample] = None,
                     projected: Optional[dict] = None) -> tuple[PointCell, ...]:
    """One PointCell per cell of `cells` (the job's, in order), with the owners' labels from
    `labels` (the job's sample: Sample.label) when given; `projected`:
    cells.project_regions(regions, grid) when the caller has it."""
    by_crs = projected if projected is not None else project_regions(regions, grid)
    out = []
    for cell in cells:
        rows, cols, owners = by_crs[cell.crs][0].in_block(cell.row0, cell.col0, cell.size)
        owners = owners.tolist()
        ids = Strings.of(owners)
        out.append(PointCell(cell, rows, cols, ids.data.tobytes(), ids.ends, None if labels is None else
                             compact([labels.label(o) for o in owners])))
    return tuple(out)


def lean_sample(sample: Optional[Sample]) -> Optional[Sample]:
    """The job's sample as the workers of PointCells take it: no labels (each PointCell brings
    its owners'), and no threshold that keeps every patch (`Sample.keeps` defaults to keeping:
    per_region of points, whose regions own one patch each, has only those)."""
    if sample is None:
        return None
    return dataclasses.replace(sample, labels=(), thresholds=tuple(t for t in sample.thresholds if t[1] != MAX_RANK))
