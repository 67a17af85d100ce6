"""TilePatches: planned cells -> PatchSpecs on the global grid, spread over workers.

The launcher plans coarse cells (transforms/planning/cells.py; on Dataflow staged as files with the
regions and sample, transforms/planning/staged.py); workers expand each cell into its patches behind a
Reshuffle, and a second Reshuffle spreads the patches of a cell over workers
before fetching. A patch lies in exactly one cell, so no deduplication step is needed.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import apache_beam as beam
from apache_beam.metrics import Metrics

from pixelbeam.transforms.planning.cells import Cell, expand_cell, project_regions
from pixelbeam.transforms.planning.grid import GridSpec
from pixelbeam.transforms.planning.regions import Region
from pixelbeam.transforms.planning.point_plan import PointCell, expand_point_cell
from pixelbeam.transforms.planning.point_set import PointRegions
from pixelbeam.transforms.planning.sampling import Sample
from pixelbeam.transforms.planning.staged import Staged, resolve, unstage_items


class ExpandCells(beam.DoFn):
    """Cell -> its PatchSpecs; regions (and sample) are loaded and projected once per worker. A
    PointCell brings its own points (a run's point regions: no regions are given)."""

    def __init__(self, regions: Union[Sequence[Region], Staged], grid: GridSpec,
                 sample: Union[Sample, Staged, None] = None):
        self.regions = regions if isinstance(regions, (Staged, PointRegions)) else list(regions)  # columns stay columns
        self.grid, self.sample = grid, sample

    def setup(self):
        self.projected = project_regions(resolve(self.regions), self.grid)
        self.resolved_sample = resolve(self.sample)
        self.planned = Metrics.counter("pixelbeam", "patches_planned")

    def process(self, cell: Union[Cell, PointCell]):
        if isinstance(cell, PointCell):  # a cell with its own points (transforms/planning/point_plan.py)
            specs = expand_point_cell(cell, self.grid, self.resolved_sample)
        else:
            specs = expand_cell(cell, self.projected[cell.crs], self.grid, self.resolved_sample)
        self.planned.inc(len(specs))
        yield from specs


@dataclasses.dataclass
class TilePatches(beam.PTransform):
    """PBegin -> PCollection[PatchSpec] of the cells' patches. Each input may be staged
    (transforms/planning/staged.py): `cells` as chunks, `regions` and `sample` whole."""

    cells: Sequence[Union[Cell, PointCell, Staged]]
    regions: Union[Sequence[Region], Staged]
    grid: GridSpec
    sample: Union[Sample, Staged, None] = None  # per-region subset and labels (transforms/planning/sampling.py)

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin):
        return (pbegin
                | "PlannedCells" >> beam.Create(list(self.cells), reshuffle=False)
                | "UnstageCells" >> beam.FlatMap(unstage_items)
                | "SpreadCells" >> beam.Reshuffle()
                | "ExpandCells" >> beam.ParDo(ExpandCells(self.regions, self.grid, self.sample))
                | "SpreadPatches" >> beam.Reshuffle())
