"""One region of a job: an id, a lon/lat geometry and its properties. A leaf module (no
pixelbeam import), so the region loaders and `point_set` can share it without a cycle."""

from __future__ import annotations

import dataclasses
from typing import Any

PUNCTUAL = ("Point", "MultiPoint")


@dataclasses.dataclass(frozen=True)
class Region:
    """One region: `geometry` in lon/lat degrees (shapely), `region_id` unique in the job."""

    region_id: str
    geometry: Any
    properties: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def is_points(self) -> bool:
        return self.geometry.geom_type in PUNCTUAL
