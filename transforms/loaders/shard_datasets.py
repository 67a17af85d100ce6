"""`WebDatasetPatchDataset`: a streaming PyTorch dataset over an output's WebDataset tar shards
(`output.formats: [webdataset]`, transforms/formats/webdataset.py). Imports torch.

Samples are the dicts the other loaders yield (`image`, `mask`, `target`, `label`, `patch_id`,
`split`; see `pixelbeam.transforms.loaders.samples`). Shards are read one after another as
streams (a local folder or gs://), never loaded whole, so memory stays at one sample plus the
shuffle buffer. With `shuffle=True` each epoch visits the shards in a new order (seeded by `seed`
and `set_epoch(n)`) and mixes samples in a buffer of `buffer_size`, the way WebDataset's own
`shardshuffle` + `shuffle` do; with `DataLoader(num_workers=n)` each worker reads its own
shards. The manifest decides what is there: a sample is yielded only from the shard its manifest
row names (so a patch a killed run left in a shard of its own is never seen twice).
"""

from __future__ import annotations

import json
import random
from typing import Callable, Iterator, Optional, Sequence, Union

from torch.utils.data import IterableDataset, get_worker_info

from pixelbeam.transforms.formats.encode import npy_array
from pixelbeam.transforms.formats.webdataset import SHARD_FOLDER, read_tar
from pixelbeam.transforms.loaders.common import join_path, to_chw
from pixelbeam.transforms.loaders.samples import assemble, row_keys, written_rows
from pixelbeam.transforms.loaders.torch_datasets import _Samples

__all__ = ["WebDatasetPatchDataset"]


def shard_of(row: dict) -> Optional[str]:
    """The WebDataset shard (relative path) a manifest row names, else None."""
    return next((f for f in row.get("files") or () if f.startswith(SHARD_FOLDER + "/")), None)


def open_stream(path: str):
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems
        return FileSystems.open(path)
    return open(path, "rb")


class WebDatasetPatchDataset(_Samples, IterableDataset):
    """Yields the sample dict of every written patch, shard by shard (module doc)."""

    def __init__(self, output_path: str, transform: Optional[Callable] = None, split: Optional[str] = None,
                 normalize: Union[bool, str] = False, layers: Optional[Sequence[str]] = None,
                 transforms: Optional[Callable] = None, shuffle: bool = True, buffer_size: int = 256, seed: int = 0):
        self._configure(output_path, transform, transforms, split, normalize, layers)
        self.bands_axis = int(self.meta.get("bands_axis", 0))
        self.layered = "layers" in self.meta
        self.holder = {}  # patch id -> the shard its manifest row names
        for row in written_rows(output_path, split):
            shard = shard_of(row)
            if shard is not None:
                self.holder[row["patch_id"]] = shard
        self.shards = sorted(set(self.holder.values()))
        if not self.shards:
            raise FileNotFoundError(f"{output_path}: the manifest lists no WebDataset shard"
                                    f"{f' in split {split!r}' if split else ''}; was the job run with output.formats "
                                    "including webdataset?")
        self.shuffle, self.buffer_size, self.seed, self.epoch = shuffle, max(1, buffer_size), seed, 0

    def __len__(self) -> int:
        return len(self.holder)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle the next pass in another order (as DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        shards = list(self.shards)
        if self.shuffle:
            rng.shuffle(shards)  # the same order in every worker: each then takes its own share
        worker = get_worker_info()
        if worker is not None:
            shards = shards[worker.id::worker.num_workers]
            rng = random.Random(rng.random() + worker.id)
        samples = self._samples(shards)
        if not self.shuffle:
            yield from samples
            return
        buffer = []
        for sample in samples:
            if len(buffer) < self.buffer_size:
                buffer.append(sample)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], sample = sample, buffer[i]
            yield sample
        rng.shuffle(buffer)
        yield from buffer

    def _samples(self, shards: Sequence[str]) -> Iterator[dict]:
        for shard in shards:
            with open_stream(join_path(self.output_path, shard)) as f:
                for pid, members in read_tar(f):
                    if self.holder.get(pid) == shard:
                        yield self._to_torch(self.sample(members))

    def sample(self, members: dict[str, bytes]) -> dict:
        """The sample dict of one shard sample's members (`npy`, `mask.npy`, `json`, per layer)."""
        row = json.loads(members["json"].decode("utf-8"))
        arrays, masks = {}, {}
        for layer in self.layers:
            stem = f"{layer['name']}." if self.layered else ""
            arrays[layer["name"]] = to_chw(npy_array(members[f"{stem}npy"]), self.bands_axis)
            if f"{stem}mask.npy" in members:
                masks[layer["name"]] = npy_array(members[f"{stem}mask.npy"]) > 0
        return {**assemble(arrays, masks, self.layers, self.norm), **row_keys(row)}
