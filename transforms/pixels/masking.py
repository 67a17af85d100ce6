"""Mask semantics applied to every fetched patch, whatever the source. Pure, Beam-free.

A patch's mask is Earth Engine's validity reduced to a boolean: True where every band's mask
is > 0 (`updateMask` of the bands' masks; a raster's nodata, alpha and mask band, a request's
validity band). After the fetch, for both sources alike:

1. `unmask` (Earth Engine's `image.unmask(value, false)`): masked pixels get `value` in every
   band and become valid; the mask is then all True. (Earth Engine keeps pixels outside an
   image's footprint masked with `sameFootprint` true; pixelbeam does not tell them apart.)
2. scaling (transforms/pixels/scaling.py), on every pixel.
3. `fill_value`: pixels still masked are written with this value in every band (in the output
   data type); None keeps what the source gave (a raster's nodata value, else 0; Earth
   Engine's 0).

The mask itself is written beside the data: the TFRecord `mask` feature, the GeoTIFF's
internal mask, PNG transparency, and with `mask.npy: true` `npy/<patch_id>.mask.npy`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from pixelbeam.transforms.patch import Patch
from pixelbeam.transforms.pixels.scaling import Scaling, apply_scaling


@dataclasses.dataclass(frozen=True)
class PixelRules:
    """What happens to a fetched patch's pixels: `unmask`, `scaling`, `fill_value` (module doc)."""

    unmask: Optional[float] = None
    scaling: Optional[Scaling] = None
    fill_value: Optional[float] = None

    @property
    def is_identity(self) -> bool:
        return self.unmask is None and self.scaling is None and self.fill_value is None

    def __call__(self, patch: Patch) -> Patch:
        return apply_pixel_rules(patch, self)


@dataclasses.dataclass(frozen=True)
class LayerRules:
    """PixelRules per layer of a patch (`layers:`): `rules` is ((layer name, PixelRules), ...)."""

    rules: tuple[tuple[str, PixelRules], ...] = ()

    @property
    def is_identity(self) -> bool:
        return all(r.is_identity for _, r in self.rules)

    def __call__(self, patch: Patch) -> Patch:
        by_name = dict(self.rules)
        primary = by_name.get(patch.layer)
        if primary is not None and not primary.is_identity:
            patch = apply_pixel_rules(patch, primary)
        more = []
        for layer in patch.more:
            rules = by_name.get(layer.name)
            if rules is not None and not rules.is_identity:
                data, mask = apply_to_pixels(layer.data, layer.mask, rules)
                layer = dataclasses.replace(layer, data=data, mask=mask)
            more.append(layer)
        return dataclasses.replace(patch, more=tuple(more))


def unmask(data: np.ndarray, mask: np.ndarray, value: float) -> tuple[np.ndarray, np.ndarray]:
    """Earth Engine's `unmask(value, false)`: masked pixels take `value`; all become valid."""
    out = np.where(mask[None], data, np.asarray(value).astype(data.dtype))
    return out, np.ones_like(mask)


def fill_masked(data: np.ndarray, mask: np.ndarray, value: float) -> np.ndarray:
    """Masked pixels set to `value` in every band; valid pixels untouched."""
    return np.where(mask[None], data, np.asarray(value).astype(data.dtype))


def apply_pixel_rules(patch: Patch, rules: PixelRules) -> Patch:
    """The patch after unmask, scaling and fill (module doc); a `(T, C, H, W)` stack step by
    step (scaling's `()` takes each step's own min and max)."""
    if rules.is_identity:
        return patch
    data, mask = apply_to_pixels(patch.data, patch.mask, rules)
    return dataclasses.replace(patch, data=data, mask=mask)


def apply_to_pixels(data: np.ndarray, mask: np.ndarray, rules: PixelRules) -> tuple[np.ndarray, np.ndarray]:
    """`(data, mask)` after the rules; `(T, C, H, W)` step by step."""
    if data.ndim == 4:
        steps = [_apply(d, m, rules) for d, m in zip(data, mask)]
        return np.stack([d for d, _ in steps]), np.stack([m for _, m in steps])
    return _apply(data, mask, rules)


def _apply(data: np.ndarray, mask: np.ndarray, rules: PixelRules) -> tuple[np.ndarray, np.ndarray]:
    if rules.unmask is not None:
        data, mask = unmask(data, mask, rules.unmask)
    if rules.scaling is not None:
        data = apply_scaling(data, mask, rules.scaling)
    if rules.fill_value is not None:
        data = fill_masked(data, mask, rules.fill_value)
    return data, mask


def check_fill_value(value: Optional[float], dtype: str, field: str) -> Optional[str]:
    """Why `value` cannot be written in `dtype`, or None if it can."""
    if value is None:
        return None
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if float(value) != int(value) or not info.min <= value <= info.max:
            return f"{field}: {value:g} does not fit the output type {dt.name} ({info.min}..{info.max}); choose another value"
    return None
