"""Pixel source for point tables: a raster collection read as one stacked image per group window.

It implements the PixelSource interface (transforms/sources.py), so the table reuses
FetchPatches (throttle, retries, dead letters) unchanged. Bands are laid out per image as
`<image>_<band>...`, `<image>_valid` (transforms/point_table.py); one request reads the window
from every file (local reads need no splitting). Earth Engine collections are not supported for
tables yet (the config refuses them with one line).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from transforms.patch import PatchSpec
from transforms.point_table import TableImage, stacked_band_names
from transforms.raster_source import RasterReader, RasterSource
from transforms.sizing import RequestLimits, RequestPart
from transforms.sources import PartResult, SourceInfo


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
        images = sorted({b // self.n_bands for b in part.bands})
        out = np.zeros((len(part.bands), part.height, part.width), dtype=self.info.dtype)
        nbytes = 0
        index = {b: i for i, b in enumerate(part.bands)}
        data_part = dataclasses.replace(part, bands=tuple(range(self.n_bands - 1)))
        for t in images:
            result = self.readers[t].fetch(spec, data_part)
            nbytes += result.nbytes
            for c in range(self.n_bands):
                band = t * self.n_bands + c
                if band in index:
                    out[index[band]] = result.mask if c == self.n_bands - 1 else result.data[c]
        return PartResult(data=out, mask=np.ones((part.height, part.width), dtype=bool), nbytes=nbytes)

    def close(self) -> None:
        for r in self.readers:
            r.close()
