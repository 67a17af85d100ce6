"""Stored patches: a written patch read back from its NPY files, to write formats a later run
adds (`output.formats: [npy]` then `[npy, tfrecord]`) without fetching its pixels again.
Pure and Beam-free; the sinks encode the Patch it returns exactly as they encode a fetched one.

A written patch's `npy/<patch_id>.npy` holds its pixels exactly as written (after masking and
scaling, in the source dtype, in the `bands_axis` layout, margin included), so the TFRecord
example, GeoTIFF, PNG/JPEG and WebDataset sample encoded from it are the bytes a fresh run
writes. The mask comes from `npy/<patch_id>.mask.npy` (`mask.npy: true`), or is all valid when
the manifest row says every pixel is (`valid_fraction` 1.0, exact below 2,000,000 pixels); a
patch with neither cannot be restored and is fetched again. Provenance (requests, attempts,
fetched bytes, times, images) is the manifest row's, so the patch's new row says what its fetch
said.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from pixelbeam.transforms.formats.encode import npy_array
from pixelbeam.transforms.formats.files import mask_npy_relpath, relpath
from pixelbeam.transforms.formats.webdataset import SHARD_FOLDER
from pixelbeam.transforms.patch import WRITTEN, Patch, PatchSpec

EXACT_FRACTION_PIXELS = 2_000_000  # below this many pixels a valid_fraction rounded to 6 digits of 1.0 means all valid


class StoredPatchError(ValueError):
    """A stored NPY file that does not hold the patch its manifest row describes."""


@dataclasses.dataclass(frozen=True)
class StoredLayout:
    """What a run expects every written patch to have, and how its stored NPY files read back:
    `templates` the per-patch files (with `{patch_id}`), `tfrecord` / `webdataset` whether the
    run writes those shared formats, `band_names` and `bands_axis` of the NPY files."""

    templates: tuple[str, ...]
    tfrecord: bool
    webdataset: bool
    band_names: tuple[str, ...]
    bands_axis: int = 0

    def lacks(self, row: dict) -> list[str]:
        """The formats (per-patch file paths, "tfrecord", "webdataset") a written patch's
        manifest row does not list; [] when it has all this run writes."""
        files = row.get("files") or []
        pid = row["patch_id"]
        out = [t.format(patch_id=pid) for t in self.templates if t.format(patch_id=pid) not in files]
        if self.tfrecord and not any("*" in f for f in files):
            out.append("tfrecord")
        if self.webdataset and not any(f.startswith(SHARD_FOLDER + "/") for f in files):
            out.append("webdataset")
        return out


def restorable(row: dict) -> bool:
    """Whether a written patch's row lists what reading it back needs: its NPY file, and its
    mask file or a valid fraction that is exactly 1."""
    if row.get("status") != WRITTEN:
        return False
    files = row.get("files") or []
    pid = row["patch_id"]
    return relpath("npy", pid) in files and (mask_npy_relpath(pid) in files or all_valid(row))


def all_valid(row: dict) -> bool:
    """The row says every pixel of a single-image patch is valid, and its rounded valid_fraction
    can say so exactly (a time stack's mask shape is not in the row: it needs its mask file)."""
    pixels = (row.get("width", 0) + 2 * row.get("margin", 0)) * (row.get("height", 0) + 2 * row.get("margin", 0))
    return row.get("valid_fraction") == 1.0 and not row.get("times") and pixels < EXACT_FRACTION_PIXELS


def stored_patch(spec: PatchSpec, row: dict, layout: StoredLayout, read: Callable[[str], bytes]) -> Patch:
    """The Patch a stored, written patch holds: `read(relpath)` gives a file's bytes (relative to
    the output folder). Raises StoredPatchError when the files do not match the row."""
    pid = spec.patch_id
    pixels = npy_array(read(relpath("npy", pid)))
    if layout.bands_axis == -1:
        pixels = np.moveaxis(pixels, -1, -3)
    height, width = spec.fetch_height, spec.fetch_width
    if pixels.ndim not in (3, 4) or pixels.shape[-2:] != (height, width) or pixels.shape[-3] != len(layout.band_names):
        raise StoredPatchError(f"{relpath('npy', pid)}: shape {list(pixels.shape)}, not {len(layout.band_names)} bands "
                               f"of {height} x {width} pixels as the manifest says")
    if mask_npy_relpath(pid) in (row.get("files") or ()):
        mask = npy_array(read(mask_npy_relpath(pid))).astype(bool)
    elif all_valid(row):
        mask = np.ones((height, width), dtype=bool)
    else:
        raise StoredPatchError(f"{pid}: no mask stored (mask.npy was off) and not every pixel is valid")
    if mask.shape[-2:] != (height, width):
        raise StoredPatchError(f"{mask_npy_relpath(pid)}: shape {list(mask.shape)}, not {height} x {width}")
    requests = int(row.get("requests") or 0)
    times = tuple(row.get("times") or ())
    image_ids = tuple(row["image_ids"]) if row.get("image_ids") is not None else None
    return Patch(spec, pixels, mask, tuple(layout.band_names), requests=requests,
                 retries=max(0, int(row.get("attempts") or 0) - requests), bytes=int(row.get("bytes") or 0),
                 times=times, image_ids=image_ids)


def restored_spec(spec: PatchSpec, row: dict) -> PatchSpec:
    """The planned spec of a written patch that a completed run wrote: which TFRecord shards
    and WebDataset shard already hold it and which per-patch files it has (none is written
    again), from its row."""
    files = row.get("files") or []
    held_by = tuple(f for f in files if "*" in f)
    shard = next((f for f in files if f.startswith(SHARD_FOLDER + "/")), None)
    kept = tuple(f for f in files if "*" not in f and not f.startswith(SHARD_FOLDER + "/"))
    return dataclasses.replace(spec, written_before=True, in_tfrecord=bool(held_by), tfrecord_files=held_by,
                               shard=shard, kept_files=kept)

