"""The data model that crosses pipeline stages: PatchSpec, Patch and FailedPatch.

Everything here is plain, picklable and Beam-free. Units: pixel counts are ints, the affine
transform is in CRS units per pixel, in GDAL/rasterio order (a, b, c, d, e, f) where
x = a*col + b*row + c and y = d*col + e*row + f. That is also Earth Engine's
`affineTransform` order (scaleX, shearX, translateX, shearY, scaleY, translateY).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Union

import numpy as np

WRITTEN = "written"
FILTERED = "filtered"
FAILED = "failed"
STATUSES = (WRITTEN, FILTERED, FAILED)


class PositionalPickle:
    """Pickled as its class and its field values in field order, without the field names a
    dataclass's default pickle repeats in every element: a PatchSpec's pickle is about 180 bytes
    instead of 360, a tiny Patch's 475 instead of 757. Beam pickles these between stages (its
    coder for an unknown type), so every shuffle, and the in-memory runner's buffers, hold less."""

    __slots__ = ()

    def __reduce__(self):
        return type(self), tuple(getattr(self, name) for name in field_names(type(self)))


@functools.cache
def field_names(cls) -> tuple[str, ...]:
    """The init fields of dataclass `cls`, in order (cached per class)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


@dataclasses.dataclass(frozen=True)
class PatchSpec(PositionalPickle):
    """One planned patch on the global grid: which pixels to fetch, not the pixels.

    `transform`, `width` and `height` describe the patch proper (pixels). `margin` extra
    pixels are fetched on every side (Earth Engine's kernelSize), so the fetched window is
    `fetch_width` x `fetch_height` with origin `fetch_transform`.
    """

    patch_id: str
    region_id: str
    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int
    row: int = 0
    col: int = 0
    margin: int = 0
    start: Optional[str] = None  # ISO date, inclusive (collections)
    end: Optional[str] = None  # ISO date, exclusive (collections)
    in_tfrecord: bool = False  # a rerun writing again a patch whose TFRecord example a completed run wrote
    tfrecord_files: tuple[str, ...] = ()  # with in_tfrecord: the earlier row's entries naming the shards that hold it
    label: Optional[Union[int, float, str]] = None  # the owner region's label (sample.label_property)
    split: Optional[str] = None  # train / val / test ... (config split:, transforms/planning/splits.py)
    shard: Optional[str] = None  # a rerun refetching a patch that this completed run's WebDataset shard holds
    written_before: bool = False  # a rerun writing again (missing file, added format) a patch a completed run wrote
    kept_files: tuple[str, ...] = ()  # a rerun adding formats: the patch's stored per-patch files, kept as they are

    @property
    def fetch_width(self) -> int:
        return self.width + 2 * self.margin

    @property
    def fetch_height(self) -> int:
        return self.height + 2 * self.margin

    @property
    def fetch_transform(self) -> tuple[float, float, float, float, float, float]:
        """The transform of the fetched window: the patch origin moved `margin` px up-left."""
        a, b, c, d, e, f = self.transform
        m = self.margin
        return (a, b, c - m * (a + b), d, e, f - m * (d + e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the patch proper, in CRS units."""
        a, b, c, d, e, f = self.transform
        xs = [c + a * i + b * j for i in (0, self.width) for j in (0, self.height)]
        ys = [f + d * i + e * j for i in (0, self.width) for j in (0, self.height)]
        return (min(xs), min(ys), max(xs), max(ys))

    def pixel_grid(self) -> dict:
        """The fetched window as an Earth Engine REST `PixelGrid`."""
        a, b, c, d, e, f = self.fetch_transform
        return {
            "dimensions": {"width": self.fetch_width, "height": self.fetch_height},
            "affineTransform": {
                "scaleX": a, "shearX": b, "translateX": c,
                "shearY": d, "scaleY": e, "translateY": f,
            },
            "crsCode": self.crs,
        }


INPUT, TARGET = "input", "target"  # layer roles
SOURCE_LAYER = "image"  # the layer a job's single `source:` is


@dataclasses.dataclass
class LayerPixels(PositionalPickle):
    """One layer of a fetched patch: pixels and mask as in `Patch` (same fetch window)."""

    name: str
    role: str
    data: np.ndarray
    mask: np.ndarray
    band_names: tuple[str, ...]
    times: tuple[str, ...] = ()
    image_ids: Optional[tuple[str, ...]] = None
    requests: int = 0
    bytes: int = 0

    @property
    def valid_fraction(self) -> float:
        return valid_fraction(self.mask)


@dataclasses.dataclass
class Patch(PositionalPickle):
    """A fetched patch: pixels `(C, H, W)` (or `(T, C, H, W)` for time stacks) of the fetch
    window, and `mask`, True where every band of a pixel is valid, of shape `(H, W)`
    (or `(T, H, W)`).

    `data`, `mask` and `band_names` are the layer named `layer` (a job's `source:`, or its first
    input layer); `more` holds the job's other layers (`layers:`), in layer order. `requests`,
    `retries` and `bytes` count every layer."""

    spec: PatchSpec
    data: np.ndarray
    mask: np.ndarray
    band_names: tuple[str, ...]
    requests: int = 1
    retries: int = 0
    bytes: int = 0
    times: tuple[str, ...] = ()
    image_ids: Optional[tuple[str, ...]] = None  # a collection's images kept for this patch (filter_coverage)
    layer: str = SOURCE_LAYER
    more: tuple[LayerPixels, ...] = ()

    @property
    def primary(self) -> LayerPixels:
        """The layer `data`, `mask` and `band_names` hold, as a LayerPixels."""
        others = sum(m.requests for m in self.more), sum(m.bytes for m in self.more)
        return LayerPixels(self.layer, INPUT, self.data, self.mask, self.band_names, self.times, self.image_ids,
                           self.requests - others[0], self.bytes - others[1])

    @property
    def layers(self) -> dict[str, LayerPixels]:
        """Every layer by name: the primary first, then `more`."""
        return {self.layer: self.primary, **{m.name: m for m in self.more}}

    def layer_patch(self, name: str) -> "Patch":
        """A Patch holding only layer `name` (to encode one layer with the one-layer writers)."""
        if name == self.layer:
            return dataclasses.replace(self, more=())
        layer = self.layers[name]
        return Patch(self.spec, layer.data, layer.mask, layer.band_names, layer.requests, 0, layer.bytes,
                     layer.times, layer.image_ids, layer=name)

    @property
    def input_mask(self) -> np.ndarray:
        """Valid where every input layer is valid, `(H, W)` (`(T, H, W)` for a lone time stack)."""
        inputs = [m.mask for m in self.more if m.role == INPUT]
        if not inputs:
            return self.mask
        masks = [np.asarray(m).reshape((-1,) + np.shape(m)[-2:]).all(axis=0) for m in [self.mask, *inputs]]
        return np.logical_and.reduce(masks)

    @property
    def valid_fraction(self) -> float:
        """The valid fraction of the input layers' pixels (0..1)."""
        return valid_fraction(self.input_mask)


def valid_fraction(mask: np.ndarray) -> float:
    """The fraction (0..1) of True in a boolean mask; the same float as `mask.mean()` (a count of
    ones is exact in float64), without mean's conversion of every pixel to float."""
    mask = np.asarray(mask)
    if not mask.size:
        return 0.0
    return np.count_nonzero(mask) / mask.size if mask.dtype == bool else float(mask.mean())


@dataclasses.dataclass(frozen=True)
class FailedPatch(PositionalPickle):
    """A patch that could not be produced; it goes to the dead-letter output."""

    spec: PatchSpec
    stage: str  # "fetch", "encode", "write"
    error_class: str
    message: str
    attempts: int = 1

    def to_record(self) -> dict:
        return {
            "patch_id": self.spec.patch_id,
            "region_id": self.spec.region_id,
            "stage": self.stage,
            "error_class": self.error_class,
            "message": self.message,
            "attempts": self.attempts,
        }
