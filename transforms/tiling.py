"""TilePatches: planned cells -> PatchSpecs on the global grid, spread over workers.

The launcher plans coarse cells (transforms/cells.py); workers expand each cell into its
patches behind a Reshuffle, and a second Reshuffle spreads the patches of a cell over workers
before fetching. A patch lies in exactly one cell, so no deduplication step is needed.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.cells import Cell, expand_cell, project_regions
from transforms.grid import GridSpec
from transforms.regions import Region
from transforms.sampling import Sample


class ExpandCells(beam.DoFn):
    """Cell -> its PatchSpecs; regions are projected once per worker, in setup."""

    def __init__(self, regions: Sequence[Region], grid: GridSpec, sample: Optional[Sample] = None):
        self.regions, self.grid, self.sample = list(regions), grid, sample

    def setup(self):
        self.projected = project_regions(self.regions, self.grid)
        self.planned = Metrics.counter("pixelbeam", "patches_planned")

    def process(self, cell: Cell):
        specs = expand_cell(cell, self.projected[cell.crs], self.grid, self.sample)
        self.planned.inc(len(specs))
        yield from specs


@dataclasses.dataclass
class TilePatches(beam.PTransform):
    """PBegin -> PCollection[PatchSpec] of the cells' patches."""

    cells: Sequence[Cell]
    regions: Sequence[Region]
    grid: GridSpec
    sample: Optional[Sample] = None  # per-region subset and labels (transforms/sampling.py)

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin):
        return (pbegin
                | "PlannedCells" >> beam.Create(list(self.cells), reshuffle=False)
                | "SpreadCells" >> beam.Reshuffle()
                | "ExpandCells" >> beam.ParDo(ExpandCells(self.regions, self.grid, self.sample))
                | "SpreadPatches" >> beam.Reshuffle())
