"""PyTorch datasets over a written pixelbeam output (imports torch; see `pixelbeam.transforms.loaders`).

Both yield samples as dicts of tensors with TorchGeo's key names (`pixelbeam.transforms.loaders.
samples`): `image` float32 `(C, H, W)` (PyTorch's channels-first convention, whatever
`bands_axis` the NPY files were written with), `mask` float32 `(H, W)` (the inputs' validity),
`target` (int64 for integer targets), `label`, `patch_id`, `split`, each present when the output
has it:

- `NpyPatchDataset`: map-style, over the NPY files manifest.jsonl lists as written (sorted by
  patch id); `mask` only when the job wrote mask files (`mask.npy: true`).
- `TFRecordPatchDataset`: iterable, over the TFRecord shards, decoded without TensorFlow
  (`pixelbeam.transforms.formats.records`); with `DataLoader(num_workers=n)` each worker reads its own shards.

`split="train"` keeps the patches of one split (the manifest's `split`); `normalize=True`
standardizes `image` with dataset.json's stats; `layers=[...]` picks layers; `transform(image)`
is applied to the image tensor, `transforms(sample)` (TorchGeo's convention) to the whole dict.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from pixelbeam.transforms.formats.records import iter_examples
from pixelbeam.transforms.loaders.common import check_split, read_dataset_json, tfrecord_files
from pixelbeam.transforms.loaders.samples import (example_sample, normalization, npy_sample, select_layers,
                                                  written_rows)

__all__ = ["NpyPatchDataset", "TFRecordPatchDataset"]


class _Samples:
    """What both datasets share: the layers, the normalization and the tensor conversion."""

    def _configure(self, output_path: str, transform, transforms, split, normalize, layers):
        self.output_path = output_path
        self.transform, self.transforms = transform, transforms
        self.meta = read_dataset_json(output_path)
        check_split(self.meta, split)
        self.layers = select_layers(self.meta, layers)
        self.split = split
        self.norm = normalization(self.meta, self.layers, normalize) if normalize else None

    def _to_torch(self, sample: dict) -> dict:
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
               for k, v in sample.items()}
        if self.transform is not None and "image" in out:
            out["image"] = self.transform(out["image"])
        if self.transforms is not None:
            out = self.transforms(out)
        return out


class NpyPatchDataset(_Samples, Dataset):
    """`ds[i]` is the sample dict of the i-th written patch (sorted by patch id; module doc)."""

    def __init__(self, output_path: str, transform: Optional[Callable] = None, split: Optional[str] = None,
                 normalize: Union[bool, str] = False, layers: Optional[Sequence[str]] = None,
                 transforms: Optional[Callable] = None):
        self._configure(output_path, transform, transforms, split, normalize, layers)
        self.bands_axis = int(self.meta.get("bands_axis", 0))
        first = self.layers[0]["npy"]
        self.rows = [r for r in written_rows(output_path, split)
                     if first.format(patch_id=r["patch_id"]) in (r.get("files") or ())]
        if not self.rows:
            raise FileNotFoundError(f"{output_path}: the manifest lists no written NPY file"
                                    f"{f' in split {split!r}' if split else ''}; was the job run with output.formats "
                                    "including npy?")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self._to_torch(npy_sample(self.output_path, self.rows[index], self.layers, self.bands_axis, self.norm))


class TFRecordPatchDataset(_Samples, IterableDataset):
    """Yields the sample dict of every record (module doc); the TFRecords hold every mask, so
    `mask` is always there (`with_mask` is accepted for compatibility and changes nothing)."""

    def __init__(self, output_path: str, transform: Optional[Callable] = None, with_mask: bool = False,
                 split: Optional[str] = None, normalize: Union[bool, str] = False,
                 layers: Optional[Sequence[str]] = None, transforms: Optional[Callable] = None):
        self._configure(output_path, transform, transforms, split, normalize, layers)
        self.files = tfrecord_files(output_path, self.meta, split)  # a split's own shards
        rows = written_rows(output_path)
        self.splits = {r["patch_id"]: r["split"] for r in rows if r.get("split") is not None}
        self.labels = {r["patch_id"]: r["label"] for r in rows if r.get("label") is not None}
        if split is not None:
            self.keep = {r["patch_id"] for r in written_rows(output_path, split)}

    def __iter__(self):
        worker = get_worker_info()
        files = self.files if worker is None else self.files[worker.id::worker.num_workers]
        for example in iter_examples(files, self.meta["tfrecord"].get("compression", "GZIP")):
            pid = example["patch_id"][0].decode("utf-8")
            if self.split is not None and pid not in self.keep:
                continue
            sample = example_sample(example, self.layers, self.meta, self.norm)
            if pid in self.labels and "label" not in sample:
                sample["label"] = self.labels[pid]
            if pid in self.splits:
                sample["split"] = self.splits[pid]
            yield self._to_torch(sample)
