"""Pixel sources for point tables: a collection read as one stacked image per group window.

They implement the PixelSource interface (transforms/sources.py), so the table reuses
FetchPatches (throttle, retries, dead letters) unchanged. Bands are laid out per image as
`<image>_<band>...`, `<image>_valid` (transforms/tables/points.py).

- Raster files: one request reads the window from every file (local reads need no splitting).
- Earth Engine: the images listed at plan time are requested as one computePixels of their
  bands side by side (each image's bands renamed `<system:index>_<band>`, plus its validity
  band), so a group costs ceil(T / floor(1024 / (C + 1))) requests (more under the 48 MiB cap,
  or with `table.images_per_request`) rather than T; getRegion's 1,048,576-value ceiling does not
  apply to pixel requests.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Optional

import numpy as np

from pixelbeam.transforms.sources.earthengine import decode_npy, part_pixel_grid, valid_band
from pixelbeam.transforms.sources.ee_client import initialize_earth_engine, post_compute_pixels
from pixelbeam.transforms.sources.ee_expression import serialize
from pixelbeam.transforms.patch import PatchSpec
from pixelbeam.transforms.tables.points import TableImage, stacked_band_names
from pixelbeam.transforms.sources.raster import RasterReader, RasterSource
from pixelbeam.transforms.fetching.sizing import EE_MAX_BANDS, EE_MAX_BYTES, RequestLimits, RequestPart
from pixelbeam.transforms.sources.base import PartResult, SourceInfo


@dataclasses.dataclass(frozen=True)
class RasterTableSource:
    """Dated raster files: each file of `raster` (a RasterSource) is one image of `images`."""

    raster: RasterSource
    images: tuple[TableImage, ...]

    def describe(self) -> SourceInfo:
        info = self.raster.describe()  # checks every file has the same bands and dtypes
        return stacked_info(info, self.images)

    def data_bands(self, info: SourceInfo) -> tuple[str, ...]:
        return data_bands(info, self.images)

    def open(self, info: Optional[SourceInfo] = None) -> "RasterTableReader":
        return RasterTableReader(self, info or self.describe())


def stacked_info(info: SourceInfo, images, limits: Optional[RequestLimits] = None) -> SourceInfo:
    names = stacked_band_names(images, info.band_names)
    dtype = np.result_type(info.dtype, np.uint8).name
    return dataclasses.replace(info, band_names=names, dtypes=(dtype,) * len(names), limits=limits)


def data_bands(info: SourceInfo, images) -> tuple[str, ...]:
    """The collection's own band names, from a stacked SourceInfo."""
    per_image = len(info.band_names) // len(images)
    prefix = f"{images[0].image_id}_"
    return tuple(n[len(prefix):] for n in info.band_names[:per_image - 1])


def fetch_stacked(part: RequestPart, n_bands: int, dtype: str, fetch_image) -> PartResult:
    """A stacked request part read image by image: `fetch_image(t, data_part)` gives image t's
    bands (a PartResult); its mask becomes the image's validity band."""
    out = np.zeros((len(part.bands), part.height, part.width), dtype=dtype)
    nbytes = 0
    index = {b: i for i, b in enumerate(part.bands)}
    data_part = dataclasses.replace(part, bands=tuple(range(n_bands - 1)))
    for t in sorted({b // n_bands for b in part.bands}):
        result = fetch_image(t, data_part)
        nbytes += result.nbytes
        for c in range(n_bands):
            band = t * n_bands + c
            if band in index:
                out[index[band]] = result.mask if c == n_bands - 1 else result.data[c]
    return PartResult(data=out, mask=np.ones((part.height, part.width), dtype=bool), nbytes=nbytes)


class RasterTableReader:
    limits = None

    def __init__(self, source: RasterTableSource, info: SourceInfo):
        self.info = info
        self.n_bands = len(info.band_names) // len(source.images)
        self.readers = [RasterReader(dataclasses.replace(source.raster, uris=(img.uri,)),
                                     dataclasses.replace(info, band_names=info.band_names[:self.n_bands - 1],
                                                         dtypes=info.dtypes[:self.n_bands - 1]))
                        for img in source.images]

    def fetch(self, spec: PatchSpec, part: RequestPart) -> PartResult:
        return fetch_stacked(part, self.n_bands, self.info.dtype, lambda t, p: self.readers[t].fetch(spec, p))

    def close(self) -> None:
        for r in self.readers:
            r.close()


@dataclasses.dataclass(frozen=True)
class EarthEngineTableSource:
    """The listed images (`images`, ids = system:index) of an Earth Engine collection (`ee`, an
    EarthEngineSource); `base` holds the collection's own bands and dtypes (a probe's answer)."""

    ee: object
    images: tuple[TableImage, ...]
    base: SourceInfo
    images_per_request: Optional[int] = None  # default: as many as 1,024 bands hold

    def describe(self) -> SourceInfo:
        """The stacked layout; a request holds whole images (bands a multiple of C + 1)."""
        per_image = len(self.base.band_names) + 1
        images = EE_MAX_BANDS // per_image
        if self.images_per_request:
            images = min(images, self.images_per_request)
        limits = RequestLimits(max_bytes=EE_MAX_BYTES, max_bands=max(1, images) * per_image)
        return stacked_info(self.base, self.images, limits)

    def data_bands(self, info: SourceInfo) -> tuple[str, ...]:
        return data_bands(info, self.images)

    def open(self, info: Optional[SourceInfo] = None) -> "EarthEngineTableReader":
        src = self.ee
        initialize_earth_engine(src.url, src.project, src.credentials, src.timeout_s)
        return EarthEngineTableReader(self, info or self.describe())


class EarthEngineTableReader:
    """Requests a group window's bands of the images a request part touches, as one image."""

    def __init__(self, source: EarthEngineTableSource, info: SourceInfo):
        import ee
        self.ee, self.source, self.info = ee, source, info
        self.limits = info.limits
        self.n_bands = len(source.base.band_names) + 1
        self._images: dict[int, object] = {}
        self._stacks: dict[tuple, dict] = {}  # serialized stacked expression by images touched
        self._lock = threading.Lock()

    def image(self, t: int):
        """Image t of the listing: its bands and validity band, renamed `<system:index>_...`."""
        if t not in self._images:
            src, bands = self.source.ee, self.source.base.band_names
            img = src.image(src.member_id(self.source.images[t].image_id)).select(list(bands))
            valid = (self.ee.Image.constant(1).toByte() if src.mask == "none" else valid_band(self.ee, img, bands))
            names = self.info.band_names[t * self.n_bands:(t + 1) * self.n_bands]
            self._images[t] = img.addBands(valid).rename(list(names))
        return self._images[t]

    def stacked_expression(self, touched: tuple) -> dict:
        """The serialized stack of images `touched`, serialized once per process."""
        with self._lock:
            if touched not in self._stacks:
                stacked = self.image(touched[0])
                for t in touched[1:]:
                    stacked = stacked.addBands(self.image(t))
                self._stacks[touched] = json.loads(serialize(stacked))
            return self._stacks[touched]

    def fetch(self, spec: PatchSpec, part: RequestPart) -> PartResult:
        touched = tuple(sorted({b // self.n_bands for b in part.bands}))
        names = [self.info.band_names[b] for b in part.bands]
        payload = post_compute_pixels({"expression": self.stacked_expression(touched), "fileFormat": "NPY",
                                       "bandIds": names, "grid": part_pixel_grid(spec, part)})
        fields = decode_npy(payload)
        data = np.empty((len(names),) + fields.shape, dtype=self.info.dtype)
        for i, name in enumerate(names):
            data[i] = fields[name]
        return PartResult(data=data, mask=np.ones(fields.shape, dtype=bool), nbytes=fields.nbytes)

    def close(self) -> None:
        pass
