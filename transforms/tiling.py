"""TilePatches: regions -> PatchSpecs on the global grid, spread over workers.

The plan is made by the pure `plan_patches` (grid.py); this transform only puts it into the
pipeline and breaks fusion with a Reshuffle so that fetching is spread over all workers.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import apache_beam as beam

from transforms.patch import PatchSpec


@dataclasses.dataclass
class TilePatches(beam.PTransform):
    """PBegin -> PCollection[PatchSpec] of a plan made on the launcher."""

    specs: Sequence[PatchSpec]

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin):
        return (pbegin
                | "PlannedPatches" >> beam.Create(list(self.specs), reshuffle=False)
                | "SpreadOverWorkers" >> beam.Reshuffle())
