"""The files written per patch (NPY, GeoTIFF, PNG, JPEG): paths and bytes. Pure and Beam-free.

`encode_patch_files(patch, options)` returns `[(relative path, bytes)]` in format order; the
sink writes each atomically and lists the paths in the patch's manifest row. TFRecord is not
per patch (shards) and is not handled here.

Layout (`bands_axis`): NPY files hold `(C, H, W)` with `bands_axis: 0` (the default) or
`(H, W, C)` with `bands_axis: -1` (Descartes Labs' `ndarray` convention; a time stack
`(T, C, H, W)` becomes `(T, H, W, C)`). dataset.json records `bands_axis` and `npy_shape`.
The TFRecord keeps Earth Engine's layout (one feature per band) whatever `bands_axis` says,
GeoTIFF is band-sequential by nature, and PNG/JPEG are pictures.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from pixelbeam.transforms.formats.encode import npy_bytes
from pixelbeam.transforms.formats.geotiff import geotiff_relpath, patch_to_geotiff_bytes
from pixelbeam.transforms.outcomes import npy_relpath
from pixelbeam.transforms.patch import Patch
from pixelbeam.transforms.formats.visualize import VisParams, patch_to_jpeg_bytes, patch_to_png_bytes

PER_PATCH_FORMATS = ("npy", "geotiff", "png", "jpeg")
VISUAL_FORMATS = ("png", "jpeg")
BANDS_AXES = (0, -1)


@dataclasses.dataclass(frozen=True)
class PatchFileOptions:
    """What to write per patch: `formats` (of PER_PATCH_FORMATS, in order), the NPY
    `bands_axis`, and the resolved visualization for png/jpeg."""

    formats: tuple[str, ...] = ("npy",)
    bands_axis: int = 0
    vis: Optional[VisParams] = None
    mask_npy: bool = False  # npy/<patch_id>.mask.npy: uint8 (H, W), 1 = valid

    def __post_init__(self):
        unknown = [f for f in self.formats if f not in PER_PATCH_FORMATS]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a per-patch format; use {', '.join(PER_PATCH_FORMATS)}")
        if self.bands_axis not in BANDS_AXES:
            raise ValueError(f"bands_axis must be 0 (C, H, W) or -1 (H, W, C), got {self.bands_axis!r}")
        if any(f in VISUAL_FORMATS for f in self.formats) and self.vis is None:
            raise ValueError("png and jpeg need visualization parameters")

    @property
    def templates(self) -> tuple[str, ...]:
        """Relative path templates with `{patch_id}`, in format order."""
        paths = [relpath(f, "{patch_id}") for f in self.formats]
        return tuple(paths + ([mask_npy_relpath("{patch_id}")] if self.mask_npy else []))


def relpath(fmt: str, patch_id: str) -> str:
    """The file of `patch_id` in format `fmt`, relative to the output path."""
    if fmt == "npy":
        return npy_relpath(patch_id)
    if fmt == "geotiff":
        return geotiff_relpath(patch_id)
    if fmt == "png":
        return f"png/{patch_id}.png"
    if fmt == "jpeg":
        return f"jpeg/{patch_id}.jpg"
    raise ValueError(f"{fmt!r} is not a per-patch format")


def mask_npy_relpath(patch_id: str) -> str:
    return f"npy/{patch_id}.mask.npy"


def npy_layout(data: np.ndarray, bands_axis: int = 0) -> np.ndarray:
    """Patch pixels `(C, H, W)` / `(T, C, H, W)` in the NPY layout of `bands_axis`."""
    data = np.asarray(data)
    if bands_axis == 0:
        return data
    return np.ascontiguousarray(np.moveaxis(data, -3, -1))


def npy_shape(bands: int, height: int, width: int, bands_axis: int = 0,
              time_steps: Optional[int] = None) -> list[int]:
    """The shape of the NPY files (dataset.json `npy_shape`)."""
    shape = [bands, height, width] if bands_axis == 0 else [height, width, bands]
    return ([time_steps] if time_steps else []) + shape


def encode_patch_files(patch: Patch, options: PatchFileOptions) -> list[tuple[str, bytes]]:
    """[(relative path, file bytes)] for every per-patch format in `options`, in order."""
    pid = patch.spec.patch_id
    out = []
    for fmt in options.formats:
        if fmt == "npy":
            data = npy_bytes(npy_layout(patch.data, options.bands_axis))
        elif fmt == "geotiff":
            data = patch_to_geotiff_bytes(patch)
        elif fmt == "png":
            data = patch_to_png_bytes(patch.data, patch.mask, options.vis, patch.band_names)
        else:
            data = patch_to_jpeg_bytes(patch.data, patch.mask, options.vis, patch.band_names)
        out.append((relpath(fmt, pid), data))
    if options.mask_npy:
        out.append((mask_npy_relpath(pid), npy_bytes(np.asarray(patch.mask, dtype=np.uint8))))
    return out


def per_patch_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The per-patch formats among `formats`, in PER_PATCH_FORMATS order."""
    return tuple(f for f in PER_PATCH_FORMATS if f in formats)
