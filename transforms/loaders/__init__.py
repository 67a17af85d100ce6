"""Load a written pixelbeam output into a training loop: `tf.data` and PyTorch.

Everything is driven by the output's `dataset.json` (bands, feature spec, `bands_axis`) and
`manifest.jsonl` (which patches were written), so a loader never guesses shapes. This package
imports neither TensorFlow nor PyTorch at import time:

- `tf_dataset(output_path, ...)` (`tf_data.py`) imports TensorFlow when called and returns a
  `tf.data.Dataset` of `(H, W, C)` float32 images (TensorFlow's channels-last convention),
  optionally with labels and the mask; for several layers `(inputs, targets)` by role.
- `NpyPatchDataset` and `TFRecordPatchDataset` are PyTorch datasets (`torch_datasets.py`,
  which imports torch; resolved here on first access), and `WebDatasetPatchDataset` streams the
  WebDataset tar shards, shuffled across shards (`shard_datasets.py`), all yielding sample dicts with TorchGeo's key
  names: `image` `(C, H, W)` float32 (PyTorch's channels-first convention, whatever
  `bands_axis` the NPY files were written with), `mask`, `target`, `label`, `patch_id`, `split`.
- `samples.py` assembles those samples and `common.py` reads dataset.json, the manifest, NPY
  files and TFRecord shards, with numpy only.

    ds = tf_dataset("out/demo", batch_size=8, with_mask=True, as_dict=True)  # {"image", "mask", ...}
    loader = torch.utils.data.DataLoader(NpyPatchDataset("out/demo"), batch_size=8)  # {"image", ...}

Pixel values are the stored values cast to float32 (no scaling unless `normalize=True`). Images cover the stored
window, i.e. the patch plus `margin` px on every side, unless `crop_margin=True`.
"""

from __future__ import annotations

from pixelbeam.transforms.loaders.common import (band_features, example_arrays, label_entry, load_npy,
                                                 read_dataset_json, tfrecord_files, to_chw, written_npy_files)
from pixelbeam.transforms.loaders.samples import layer_table
from pixelbeam.transforms.loaders.tf_data import tf_dataset

__all__ = [
    "tf_dataset", "NpyPatchDataset", "TFRecordPatchDataset", "WebDatasetPatchDataset", "read_dataset_json", "band_features",
    "label_entry", "written_npy_files", "tfrecord_files", "to_chw", "load_npy", "example_arrays", "layer_table",
]

_TORCH_NAMES = ("NpyPatchDataset", "TFRecordPatchDataset")
_SHARD_NAMES = ("WebDatasetPatchDataset",)


def __getattr__(name: str):
    """`NpyPatchDataset` / `TFRecordPatchDataset` import torch only when first used."""
    if name in _TORCH_NAMES:
        from pixelbeam.transforms.loaders import torch_datasets
        return getattr(torch_datasets, name)
    if name in _SHARD_NAMES:
        from pixelbeam.transforms.loaders import shard_datasets
        return getattr(shard_datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
