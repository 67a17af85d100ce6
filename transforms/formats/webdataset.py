"""WebDataset tar shards (`output.formats: [webdataset]`): names, members and the tar stream.
Pure and Beam-free.

A shard is `shards/<split>-<run>-NNNNNN.tar` (`shards/patches-<run>-NNNNNN.tar` without splits)
holding, for each patch, the files of one WebDataset sample (key `<patch_id>`):

- `<patch_id>.npy`: the pixels as in `npy/<patch_id>.npy` (`bands_axis` layout, source dtype);
  with `layers:` one `<patch_id>.<layer>.npy` per layer;
- `<patch_id>.mask.npy` (`<patch_id>.<layer>.mask.npy`): uint8, 1 = valid, `(H, W)` (`(T, H, W)`);
- `<patch_id>.json`: the patch's manifest row (UTF-8 JSON), which names this shard in `files`.

Which shard a patch goes to is decided by its id alone (a stable hash modulo the split's shard
count), so the manifest row can name the shard before the shard is written, and the shard count
comes from the plan: the split's planned patches times the bytes of a sample over
`output.shard_size_mb`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import tarfile
from typing import BinaryIO, Iterable, Optional

import numpy as np

from pixelbeam.transforms.formats.encode import npy_bytes
from pixelbeam.transforms.formats.files import npy_layout
from pixelbeam.transforms.patch import Patch

SHARD_FOLDER = "shards"
SHARD_SUFFIX = ".tar"
NO_SPLIT = "patches"  # the shard prefix of a job without splits
TAR_OVERHEAD = 3 * 1024  # bytes per sample for tar headers and padding (three members), about


def shard_count(patches: int, bytes_per_sample: int, shard_size_mb: float) -> int:
    """Shards for `patches` samples of about `bytes_per_sample` bytes each, at most
    `shard_size_mb` MB (10^6 bytes) each on average; at least 1."""
    total = patches * (bytes_per_sample + TAR_OVERHEAD)
    return max(1, math.ceil(total / (shard_size_mb * 1e6)))


def shard_index(patch_id: str, shards: int) -> int:
    """The shard of `patch_id` among `shards` (the same in every process: not Python's hash)."""
    digest = hashlib.blake2b(patch_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


@dataclasses.dataclass(frozen=True)
class ShardNaming:
    """The shard of each patch in one run: `counts` is ((split or None, shard count), ...)."""

    run_id: str
    counts: tuple[tuple[Optional[str], int], ...]

    def relpath(self, patch_id: str, split: Optional[str] = None) -> str:
        """`shards/<split>-<run>-NNNNNN.tar` of a patch, relative to the output path."""
        shards = dict(self.counts).get(split)
        if shards is None:
            raise ValueError(f"patch {patch_id}: split {split!r} has no shards in this run")
        head = f"{split or NO_SPLIT}-{self.run_id}" if self.run_id else (split or NO_SPLIT)
        return f"{SHARD_FOLDER}/{head}-{shard_index(patch_id, shards):06d}{SHARD_SUFFIX}"


def shard_run_id(name: str) -> Optional[str]:
    """The run id in a shard name `<split>-<run_id>-NNNNNN.tar` (the run id is
    `YYYYMMDDTHHMMSS-hhhh`), else None (e.g. a temporary file)."""
    if not name.endswith(SHARD_SUFFIX) or name.startswith("."):
        return None
    parts = name[:-len(SHARD_SUFFIX)].split("-")
    if len(parts) < 4 or not parts[-1].isdigit():
        return None
    return f"{parts[-3]}-{parts[-2]}"


def sample_members(patch: Patch, row: dict, layers: tuple[str, ...] = (), bands_axis: int = 0) -> list[tuple[str, bytes]]:
    """[(member name, bytes)] of one patch's sample (module doc), in writing order."""
    pid = patch.spec.patch_id
    out = []
    for name in layers or (None,):
        one = patch if name is None else patch.layer_patch(name)
        stem = pid if name is None else f"{pid}.{name}"
        out.append((f"{stem}.npy", npy_bytes(npy_layout(one.data, bands_axis))))
        out.append((f"{stem}.mask.npy", npy_bytes(np.asarray(one.mask, dtype=np.uint8))))
    out.append((f"{pid}.json", json.dumps(row, separators=(",", ":")).encode("utf-8")))
    return out


def write_tar(fileobj: BinaryIO, samples: Iterable[list[tuple[str, bytes]]]) -> int:
    """Stream samples (each a list of members) into a POSIX tar on `fileobj`; returns the count.
    Members have mtime 0, mode 0644 and no owner, so equal samples give equal bytes."""
    count = 0
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for members in samples:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
            count += 1
    return count


def read_tar(fileobj: BinaryIO) -> Iterable[tuple[str, dict[str, bytes]]]:
    """(patch_id, {extension: bytes}) of each sample of a shard, streamed in order; the
    extension is what follows the patch id (`npy`, `mask.npy`, `<layer>.npy`, `json`)."""
    key, members = None, {}
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            pid, ext = info.name.rsplit("/", 1)[-1].split(".", 1)
            if key is not None and pid != key:
                yield key, members
                members = {}
            key = pid
            members[ext] = tar.extractfile(info).read()
    if key is not None:
        yield key, members
