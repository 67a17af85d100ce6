"""Image collections: stack, mosaic, composite and flatten, once for every source. Pure, Beam-free.

A collection is an ordered list of images (sorted by time, listing order breaking ties), each
with an id, an ISO time and properties. The launcher turns it into a `CollectionPlan` (which
images, which output steps); each image of a patch is fetched as its own request(s), and
`combine` reduces the images' `(C, H, W)` pixels and `(H, W)` masks (True = valid):

- `mosaic`: one `(C, H, W)` image; the last image valid at a pixel wins (Descartes Labs'
  `mosaic`); a pixel is valid if any image is; where none is, the first image's value stays.
- `composite`: one `(C, H, W)` image reduced over the valid pixels only: `median`, `mean`
  (float64, as Earth Engine's reducers give), `min`, `max`, `first` (the first valid image
  at each pixel; source type); valid where any image is valid, 0 where none is.
- `stack`: `(T, C, H, W)` and a `(T, H, W)` mask, one step per image, in time order.
- `flatten`: as stack, but the images of one group (same UTC day, or the same value of a
  property, `flatten_by`) are first mosaicked into one step (later wins).

The steps are fixed at plan time (the images the collection lists), so every patch of a job
has the same T and the same `times`; an image that does not cover a patch gives a masked step.

`filter_coverage` (Descartes Labs): an image whose valid pixels cover less than that fraction
of the patch's fetched window is left out for that patch (a masked step in a stack; not used
in a mosaic, a composite or a flatten group). The manifest reports per patch `images` (how
many images were kept) and `image_ids`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import warnings
from typing import Optional, Sequence

import numpy as np

MODES = ("stack", "mosaic", "composite", "flatten")
REDUCERS = ("median", "mean", "min", "max", "first")


class CollectionError(ValueError):
    """A collection that cannot be planned; one line naming the field and the fix."""


def iso_time(value) -> str:
    """An ISO 8601 time in UTC: `YYYY-MM-DD` at midnight, else `YYYY-MM-DDTHH:MM:SSZ`; from an
    ISO string, a date/datetime, or milliseconds since the epoch (Earth Engine's time_start)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        t = dt.datetime.fromtimestamp(value / 1000.0, tz=dt.timezone.utc)
    elif isinstance(value, dt.datetime):
        t = value
    elif isinstance(value, dt.date):
        t = dt.datetime(value.year, value.month, value.day)
    else:
        try:
            t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise CollectionError(f"{value!r} is not an ISO date or time; use e.g. 2020-01-05 or "
                                  "2020-01-05T10:30:00Z") from None
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if t.time() == dt.time(0):
        return t.date().isoformat()
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class CollectionImage:
    image_id: str
    time: str  # iso_time
    properties: tuple = ()  # ((key, value), ...)
    footprint: Optional[bytes] = None  # lon/lat WKB (a STAC item's geometry): not requested where it cannot reach


@dataclasses.dataclass(frozen=True)
class CollectionPlan:
    """The images of a job's collection, in order, and how they become a patch."""

    images: tuple[CollectionImage, ...]
    mode: str = "mosaic"
    reducer: Optional[str] = None  # composite
    groups: tuple[tuple[int, ...], ...] = ()  # stack/flatten: image indexes of each step
    min_coverage: float = 0.0  # filter_coverage
    flatten_by: str = "day"

    @property
    def is_stack(self) -> bool:
        return self.mode in ("stack", "flatten")

    @property
    def time_steps(self) -> Optional[int]:
        return len(self.groups) if self.is_stack else None

    @property
    def step_times(self) -> tuple[str, ...]:
        """The time of each step: its first image's time (flatten by day: the day, YYYY-MM-DD)."""
        if not self.is_stack:
            return ()
        by_day = self.mode == "flatten" and self.flatten_by == "day"
        return tuple(self.images[g[0]].time[:10] if by_day else self.images[g[0]].time for g in self.groups)

    def output_dtype(self, dtype: str) -> str:
        return "float64" if self.mode == "composite" and self.reducer in ("median", "mean") else dtype


def plan_collection(images: Sequence[CollectionImage], mode: str, reducer: Optional[str] = None,
                    flatten_by: str = "day", min_coverage: float = 0.0) -> CollectionPlan:
    """Images sorted by time (stable) and grouped into steps for `mode`."""
    if not images:
        raise CollectionError("source: the collection has no image; widen the dates or filters")
    if mode not in MODES:
        raise CollectionError(f"source.collection_mode: {mode!r}; use one of {', '.join(MODES)}")
    if mode == "composite" and reducer not in REDUCERS:
        raise CollectionError(f"source.composite: {reducer!r}; use one of {', '.join(REDUCERS)}")
    ordered = tuple(sorted(images, key=lambda im: im.time))
    groups: tuple = ()
    if mode == "stack":
        groups = tuple((i,) for i in range(len(ordered)))
    elif mode == "flatten":
        keys: dict = {}
        for i, im in enumerate(ordered):
            if flatten_by == "day":
                key = im.time[:10]
            else:
                props = dict(im.properties)
                if flatten_by not in props:
                    raise CollectionError(f"source.flatten_by: image {im.image_id!r} has no property "
                                          f"{flatten_by!r}; give it to every image or flatten by day")
                key = repr(props[flatten_by])
            keys.setdefault(key, []).append(i)
        groups = tuple(tuple(v) for v in keys.values())
    return CollectionPlan(images=ordered, mode=mode, reducer=reducer, groups=groups, min_coverage=min_coverage,
                          flatten_by=flatten_by)


def coverage(mask: np.ndarray) -> float:
    """The fraction of the window an image's valid pixels cover."""
    return float(np.asarray(mask).mean()) if np.asarray(mask).size else 0.0


def mosaic(data: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W), (N, H, W) -> the last valid image wins; valid where any image is."""
    out = data[0].copy()
    for d, m in zip(data[1:], mask[1:]):
        out = np.where(m[None], d, out)
    return out, mask.any(axis=0)


def composite(data: np.ndarray, mask: np.ndarray, reducer: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W), (N, H, W) -> one image reduced over valid pixels only (module doc)."""
    valid = mask.any(axis=0)
    m = np.broadcast_to(mask[:, None], data.shape)
    if reducer == "first":
        first = np.argmax(mask, axis=0)  # the first valid image (0 where none is)
        out = np.take_along_axis(data, first[None, None].repeat(data.shape[1], axis=1), axis=0)[0]
        return np.where(valid[None], out, 0).astype(data.dtype), valid
    if reducer in ("min", "max"):
        masked = np.ma.masked_array(data, ~m)
        out = (masked.min(axis=0) if reducer == "min" else masked.max(axis=0)).filled(0)
        return np.asarray(out, dtype=data.dtype), valid
    # pixels valid in no image hold 0 in every image: no all-NaN slice, so no RuntimeWarning
    # (warnings.catch_warnings is not thread-safe, and fetch threads composite concurrently)
    values = np.where(m, data.astype(np.float64), np.where(valid[None, None], np.nan, 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-masked pixels
        out = np.nanmedian(values, axis=0) if reducer == "median" else np.nanmean(values, axis=0)
    return np.nan_to_num(out, nan=0.0), valid


def combine(plan: CollectionPlan, data: Sequence[np.ndarray], masks: Sequence[np.ndarray],
            dtype: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The images' pixels ((C, H, W) and (H, W) each, in plan order) -> (data, mask, indexes of
    the images kept by filter_coverage): `(C, H, W)`/`(H, W)` or `(T, C, H, W)`/`(T, H, W)`."""
    d = np.stack([np.asarray(x) for x in data])
    m = np.stack([np.asarray(x, dtype=bool) for x in masks])
    kept = tuple(i for i in range(len(d)) if plan.min_coverage <= 0 or coverage(m[i]) >= plan.min_coverage)
    out_dtype = plan.output_dtype(dtype)
    if plan.is_stack:
        steps_d, steps_m = [], []
        for group in plan.groups:
            members = [i for i in group if i in kept]
            if not members:  # no image kept: a masked step
                steps_d.append(np.zeros(d.shape[1:], d.dtype))
                steps_m.append(np.zeros(m.shape[1:], bool))
                continue
            sd, sm = mosaic(d[members], m[members])
            steps_d.append(sd)
            steps_m.append(sm)
        return np.stack(steps_d).astype(out_dtype, copy=False), np.stack(steps_m), kept
    if not kept:
        return np.zeros(d.shape[1:], out_dtype), np.zeros(m.shape[1:], bool), kept
    if plan.mode == "mosaic":
        out, valid = mosaic(d[list(kept)], m[list(kept)])
    else:
        out, valid = composite(d[list(kept)], m[list(kept)], plan.reducer)
    return out.astype(out_dtype, copy=False), valid, kept
