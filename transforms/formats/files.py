"""The files written per patch (NPY, GeoTIFF, PNG, JPEG): paths and bytes. Pure and Beam-free.

`encode_patch_files(patch, options)` returns `[(relative path, bytes)]` in format order; the
sink writes each atomically and lists the paths in the patch's manifest row. TFRecord is not
per patch (shards) and is not handled here.

With `layers:` every layer has its own folder: `npy/<layer>/<patch_id>.npy` (and
`.mask.npy`), `geotiff/<layer>/<patch_id>.tif`, and the pictured layer's
`png/<layer>/<patch_id>.png`, `jpeg/<layer>/<patch_id>.jpg`.

Layout (`bands_axis`): NPY files hold `(C, H, W)` with `bands_axis: 0` (the default) or
`(H, W, C)` with `bands_axis: -1` (Descartes Labs' `ndarray` convention; a time stack
`(T, C, H, W)` becomes `(T, H, W, C)`). dataset.json records `bands_axis` and `npy_shape`.
The TFRecord keeps Earth Engine's layout (one feature per band) whatever `bands_axis` says,
GeoTIFF is band-sequential by nature, and PNG/JPEG are pictures.
"""

from __future__ import annotations

import dataclasses
from typing import Collection, Optional, Sequence

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
    layers: tuple[str, ...] = ()  # with layers: every layer in its own folder (npy/<layer>/...); () one source
    picture_layer: str = ""  # with layers: the layer png/jpeg show

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
        return tuple(path for _, _, path in self.files("{patch_id}"))

    def files(self, patch_id: str) -> list[tuple[str, Optional[str], str]]:
        """[(format or "mask", layer or None, relative path)] of one patch, in writing order."""
        if not self.layers:
            out = [(f, None, relpath(f, patch_id)) for f in self.formats]
            return out + ([("mask", None, mask_npy_relpath(patch_id))] if self.mask_npy else [])
        out = []
        for fmt in self.formats:
            shown = (self.picture_layer or self.layers[0],) if fmt in VISUAL_FORMATS else self.layers
            for layer in shown:
                out.append((fmt, layer, relpath(fmt, patch_id, layer)))
                if fmt == "npy" and self.mask_npy:
                    out.append(("mask", layer, mask_npy_relpath(patch_id, layer)))
        return out


def relpath(fmt: str, patch_id: str, layer: Optional[str] = None) -> str:
    """The file of `patch_id` in format `fmt` (of `layer`, with layers:), relative to the output path."""
    folder = f"{layer}/" if layer else ""
    if fmt == "npy":
        return f"npy/{folder}{patch_id}.npy" if layer else npy_relpath(patch_id)
    if fmt == "geotiff":
        return f"geotiff/{folder}{patch_id}.tif" if layer else geotiff_relpath(patch_id)
    if fmt == "png":
        return f"png/{folder}{patch_id}.png"
    if fmt == "jpeg":
        return f"jpeg/{folder}{patch_id}.jpg"
    raise ValueError(f"{fmt!r} is not a per-patch format")


def mask_npy_relpath(patch_id: str, layer: Optional[str] = None) -> str:
    return f"npy/{layer}/{patch_id}.mask.npy" if layer else f"npy/{patch_id}.mask.npy"


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


def encode_patch_files(patch: Patch, options: PatchFileOptions, skip: Collection[str] = ()) -> list[tuple[str, bytes]]:
    """[(relative path, file bytes)] for every per-patch format in `options`, in order, but the
    paths in `skip` (files already there: a rerun adding formats keeps the stored NPY files)."""
    out = []
    for fmt, layer, path in options.files(patch.spec.patch_id):
        if path in skip:
            continue
        one = patch if layer is None else patch.layer_patch(layer)
        if fmt == "npy":
            data = npy_bytes(npy_layout(one.data, options.bands_axis))
        elif fmt == "mask":
            data = npy_bytes(np.asarray(one.mask, dtype=np.uint8))
        elif fmt == "geotiff":
            data = patch_to_geotiff_bytes(one)
        elif fmt == "png":
            data = patch_to_png_bytes(one.data, one.mask, options.vis, one.band_names)
        else:
            data = patch_to_jpeg_bytes(one.data, one.mask, options.vis, one.band_names)
        out.append((path, data))
    return out


def per_patch_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The per-patch formats among `formats`, in PER_PATCH_FORMATS order."""
    return tuple(f for f in PER_PATCH_FORMATS if f in formats)
