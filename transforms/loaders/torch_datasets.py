"""PyTorch datasets over a written pixelbeam output (imports torch; see `pixelbeam.transforms.loaders`).

Both yield float32 `(C, H, W)` tensors (PyTorch's channels-first convention) plus the patch id:

- `NpyPatchDataset`: map-style, over the NPY files manifest.jsonl lists as written (sorted by
  patch id), whatever `bands_axis` dataset.json says they were written with.
- Both take `split="train"` (or any split of config `split:`) to read one split.
- `TFRecordPatchDataset`: iterable, over the TFRecord shards, decoded without TensorFlow
  (`pixelbeam.transforms.formats.records`); with `DataLoader(num_workers=n)` each worker reads its own shards.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from pixelbeam.transforms.loaders.common import (check_split, example_arrays, load_npy, read_dataset_json,
                                                 tfrecord_files, to_chw, written_npy_files)
from pixelbeam.transforms.formats.records import iter_examples

__all__ = ["NpyPatchDataset", "TFRecordPatchDataset"]


class NpyPatchDataset(Dataset):
    """`ds[i]` is `(image, patch_id)`: image a float32 tensor `(C, H, W)` (`(T, C, H, W)` for a
    time stack), `transform(image)` applied when given; the patch id a str."""

    def __init__(self, output_path: str, transform: Optional[Callable] = None, split: Optional[str] = None):
        self.output_path = output_path
        self.transform = transform
        meta = read_dataset_json(output_path)
        check_split(meta, split)
        self.bands = list(meta.get("bands", []))
        self.bands_axis = int(meta.get("bands_axis", 0))
        self.items = written_npy_files(output_path, split)
        if not self.items:
            raise FileNotFoundError(f"{output_path}: the manifest lists no written NPY file; was the job run "
                                    "with output.formats including npy?")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        patch_id, path = self.items[index]
        array = to_chw(load_npy(path), self.bands_axis)
        image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if self.transform is not None:
            image = self.transform(image)
        return image, patch_id


class TFRecordPatchDataset(IterableDataset):
    """Yields `(image, patch_id)`, or `(image, mask, patch_id)` with `with_mask`: image float32
    `(C, H, W)` (bands in dataset.json order; a time stack's steps flattened into C), mask
    float32 `(H, W)`, 1.0 where every band is valid."""

    def __init__(self, output_path: str, transform: Optional[Callable] = None, with_mask: bool = False,
                 split: Optional[str] = None):
        self.output_path = output_path
        self.transform = transform
        self.with_mask = with_mask
        self.meta = read_dataset_json(output_path)
        self.files = tfrecord_files(output_path, self.meta, split)

    def __iter__(self):
        worker = get_worker_info()
        files = self.files if worker is None else self.files[worker.id::worker.num_workers]
        for example in iter_examples(files, self.meta["tfrecord"].get("compression", "GZIP")):
            arrays = example_arrays(example, self.meta, self.with_mask)
            image = torch.from_numpy(arrays["image"])
            if self.transform is not None:
                image = self.transform(image)
            if self.with_mask:
                yield image, torch.from_numpy(arrays["mask"]), arrays["patch_id"]
            else:
                yield image, arrays["patch_id"]
