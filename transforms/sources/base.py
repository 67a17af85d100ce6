"""The one small interface every pixel source implements (raster files, Earth Engine). Pure.

A `PixelSource` is a picklable description built on the launcher; `describe()` checks it
(files exist, bands exist) and says what it yields. On a worker, `open(info)` (called once in
`DoFn.setup`, with the launcher's `describe()` result) returns a `PixelReader` that is safe to share between threads. Fetching a
patch is: `plan_parts` splits it into requests that fit `reader.limits`, the fetch layer runs
`reader.fetch(spec, part)` for each under its throttler and retry policy, and
`assemble_patch` puts the parts back together.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Protocol, Sequence

import numpy as np

from pixelbeam.transforms.pixels.collections import CollectionPlan, combine
from pixelbeam.transforms.patch import Patch, PatchSpec
from pixelbeam.transforms.fetching.sizing import RequestLimits, RequestPart, plan_parts
from pixelbeam.transforms.sources.reach import reaches


class SourceError(ValueError):
    """A source that cannot be used as configured; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What a source yields: band names and numpy dtypes (one per band, in output order), its
    native grid when it has one (crs, affine transform), and its footprint in lon/lat."""

    band_names: tuple[str, ...]
    dtypes: tuple[str, ...]
    crs: Optional[str] = None
    transform: Optional[tuple[float, ...]] = None
    footprint_lonlat: Optional[tuple[float, float, float, float]] = None
    limits: Optional[RequestLimits] = None
    collection: Optional[CollectionPlan] = None  # each image fetched on its own, then combined

    @property
    def time_steps(self) -> Optional[int]:
        """T of a `(T, C, H, W)` stack, None for `(C, H, W)` patches."""
        return self.collection.time_steps if self.collection else None

    @property
    def band_bytes(self) -> tuple[int, ...]:
        return tuple(np.dtype(d).itemsize for d in self.dtypes)

    @property
    def dtype(self) -> str:
        """The patch's dtype: the bands' common numpy type (promoted if they differ)."""
        return np.result_type(*self.dtypes).name


@dataclasses.dataclass
class PartResult:
    """The pixels of one request: data `(len(part.bands), h, w)`, mask `(h, w)` (True = valid
    in every requested band), and the bytes transferred or read."""

    data: np.ndarray
    mask: np.ndarray
    nbytes: int


class PixelReader(Protocol):
    limits: Optional[RequestLimits]

    def fetch(self, spec: PatchSpec, part: RequestPart) -> PartResult: ...

    def close(self) -> None: ...


class PixelSource(Protocol):
    def describe(self) -> SourceInfo: ...

    def open(self, info: Optional[SourceInfo] = None) -> PixelReader: ...


def patch_parts(spec: PatchSpec, info: SourceInfo) -> list[RequestPart]:
    """The requests needed for one patch's fetch window; for a collection, those of each image
    whose footprint (if it has one) reaches the window (transforms/sources/reach.py)."""
    parts = plan_parts(spec.fetch_width, spec.fetch_height, info.band_bytes, info.limits)
    if info.collection is None:
        return parts
    return [dataclasses.replace(p, image=i) for i, image in enumerate(info.collection.images)
            if reaches(image.footprint, spec) for p in parts]


def assemble_patch(spec: PatchSpec, info: SourceInfo, parts: Sequence[RequestPart],
                   results: Sequence[PartResult], retries: int = 0) -> Patch:
    """One `(C, H, W)` patch from its parts; a pixel is valid if valid in every part. For a
    collection, each image's parts are assembled, then `combine`d (transforms/pixels/collections.py)."""
    requests, nbytes = len(parts), sum(r.nbytes for r in results)
    plan = info.collection
    if plan is not None:
        datas, masks = [], []
        for i in range(len(plan.images)):
            mine = [(p, r) for p, r in zip(parts, results) if p.image == i]
            d, m = _assemble(spec, info, [p for p, _ in mine], [r for _, r in mine])
            datas.append(d)
            masks.append(m)
        data, mask, kept = combine(plan, datas, masks, info.dtype)
        return Patch(spec=spec, data=data, mask=mask, band_names=info.band_names, requests=requests,
                     retries=retries, bytes=nbytes, times=plan.step_times,
                     image_ids=tuple(plan.images[i].image_id for i in kept))
    data, mask = _assemble(spec, info, parts, results)
    return Patch(spec=spec, data=data, mask=mask, band_names=info.band_names,
                 requests=requests, retries=retries, bytes=nbytes)


def _assemble(spec: PatchSpec, info: SourceInfo, parts: Sequence[RequestPart],
              results: Sequence[PartResult]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:  # a collection image that does not reach the patch: not requested, masked
        return (np.zeros((len(info.band_names), spec.fetch_height, spec.fetch_width), dtype=info.dtype),
                np.zeros((spec.fetch_height, spec.fetch_width), dtype=bool))
    if len(parts) == 1 and len(parts[0].bands) == len(info.band_names):
        data, mask = results[0].data, results[0].mask
    else:
        data = np.zeros((len(info.band_names), spec.fetch_height, spec.fetch_width), dtype=info.dtype)
        mask = np.ones((spec.fetch_height, spec.fetch_width), dtype=bool)
        for part, result in zip(parts, results):
            rows = slice(part.row_off, part.row_off + part.height)
            cols = slice(part.col_off, part.col_off + part.width)
            data[list(part.bands), rows, cols] = result.data
            mask[rows, cols] &= result.mask
    return data, mask
