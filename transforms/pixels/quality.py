"""Masks from quality assets: classification values (Sentinel-2's SCL) or QA bits (Landsat's
`qa_pixel`). Pure, Beam-free.

`QualityMask` says which pixels of a quality band are invalid, in one of three ways:

- `invalid`: class values that mask, e.g. SCL `[0, 1, 3, 8, 9, 10]` (no data, saturated,
  cloud shadow, medium and high probability cloud, cirrus);
- `valid`: the class values kept (every other value masks), e.g. SCL `[4, 5, 6, 7, 11]`;
- `bits`: bit positions (0 = least significant) any of which, when set, masks, e.g. Landsat
  Collection 2 `qa_pixel` `[0, 1, 2, 3, 4]` (fill, dilated cloud, cirrus, cloud, shadow).

The quality band is read onto the patch grid with nearest resampling (classes and bit fields
must not be interpolated) and its result ANDed into the image's mask before the images of a
collection are stacked, mosaicked or composited, as Earth Engine's `updateMask` would be.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class QualityMask:
    asset: str  # the quality band (a STAC asset key)
    invalid: Optional[tuple[int, ...]] = None
    valid: Optional[tuple[int, ...]] = None
    bits: Optional[tuple[int, ...]] = None

    def __post_init__(self):
        given = [k for k in ("invalid", "valid", "bits") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of invalid (classes), valid (classes) or bits (QA bit positions)")
        if self.bits is not None and any(not 0 <= b <= 63 for b in self.bits):
            raise ValueError(f"bits are positions 0..63 (got {list(self.bits)})")

    def keep(self, values: np.ndarray) -> np.ndarray:
        """True where a pixel of the quality band `values` stays valid."""
        values = np.asarray(values)
        if self.invalid is not None:
            return ~np.isin(values, self.invalid)
        if self.valid is not None:
            return np.isin(values, self.valid)
        bitmask = sum(1 << b for b in self.bits)
        return (values.astype(np.uint64) & np.uint64(bitmask)) == 0
