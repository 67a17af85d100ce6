"""Load a written pixelbeam output into a training loop: `tf.data` and PyTorch.

Everything is driven by the output's `dataset.json` (bands, feature spec, `bands_axis`) and
`manifest.jsonl` (which patches were written), so a loader never guesses shapes. This module
imports neither TensorFlow nor PyTorch at import time:

- `tf_dataset(output_path, ...)` imports TensorFlow when called and returns a
  `tf.data.Dataset` of `(H, W, C)` float32 images (TensorFlow's channels-last convention),
  optionally with labels and the mask.
- `NpyPatchDataset` and `TFRecordPatchDataset` are PyTorch datasets (defined in
  `transforms.torch_datasets`, which imports torch; resolved here on first access) yielding
  `(C, H, W)` float32 tensors (PyTorch's channels-first convention), whatever `bands_axis`
  the NPY files were written with.

    ds = tf_dataset("out/demo", batch_size=8, with_mask=True)      # (image, mask) batches
    loader = torch.utils.data.DataLoader(NpyPatchDataset("out/demo"), batch_size=8)

Pixel values are the source values cast to float32 (no scaling). Images cover the stored
window, i.e. the patch plus `margin` px on every side, unless `crop_margin=True`.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Optional, Sequence, Union

import numpy as np

__all__ = [
    "tf_dataset", "NpyPatchDataset", "TFRecordPatchDataset", "read_dataset_json", "band_features",
    "label_entry", "written_npy_files", "tfrecord_files", "to_chw", "load_npy",
]

_TORCH_NAMES = ("NpyPatchDataset", "TFRecordPatchDataset")
AUTO = "auto"


def __getattr__(name: str):
    """`NpyPatchDataset` / `TFRecordPatchDataset` import torch only when first used."""
    if name in _TORCH_NAMES:
        from transforms import torch_datasets
        return getattr(torch_datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- files --------------------------------------------------------------------------------------

def join_path(base: str, relpath: str) -> str:
    if "://" in base:
        return base.rstrip("/") + "/" + relpath
    return os.path.join(base, *relpath.split("/"))


def read_bytes(path: str) -> bytes:
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.open(path) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def read_dataset_json(output_path: str) -> dict:
    """The output's dataset.json; FileNotFoundError says what to do when it is missing."""
    path = join_path(output_path, "dataset.json")
    try:
        return json.loads(read_bytes(path).decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no dataset.json; give the output.path of a finished "
                                "`pixelbeam run`") from None


def read_manifest_rows(output_path: str) -> list[dict]:
    """manifest.jsonl's rows, the last row of each patch id kept (a resumed run may repeat ids)."""
    path = join_path(output_path, "manifest.jsonl")
    try:
        text = read_bytes(path).decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no manifest; give the output.path of a finished `pixelbeam run`") from None
    rows = {}
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["patch_id"]] = row
    return list(rows.values())


def written_npy_files(output_path: str) -> list[tuple[str, str]]:
    """[(patch_id, path)] of the NPY files the manifest lists as written, sorted by patch id."""
    out = []
    for row in read_manifest_rows(output_path):
        if row.get("status") != "written":
            continue
        npy = [f for f in row.get("files") or [] if f.endswith(".npy") and not f.endswith(".mask.npy")]
        if npy:
            out.append((row["patch_id"], join_path(output_path, npy[0])))
    return sorted(out)


def _glob(pattern: str) -> list[str]:
    if "://" in pattern:
        from apache_beam.io.filesystems import FileSystems
        return [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
    import glob
    return glob.glob(pattern)


def tfrecord_files(output_path: str, meta: Optional[dict] = None) -> list[str]:
    """The TFRecord shards of the output, sorted: those of the completed runs dataset.json
    lists (`runs`: each run writes `patches-<run>-*`, so shards of a killed run are left
    out), else every shard matching its `tfrecord.files` pattern."""
    meta = meta or read_dataset_json(output_path)
    pattern = join_path(output_path, meta["tfrecord"]["files"])
    files = sorted({f for run in meta.get("runs") or [] for f in _glob(pattern.replace("*", f"{run}-*", 1))})
    if not files:
        files = _glob(pattern)
    if not files:
        raise FileNotFoundError(f"{pattern}: no TFRecord files; was the job run with output.formats "
                                "including tfrecord?")
    return sorted(files)


def tfrecord_patch_count(output_path: str) -> Optional[int]:
    """How many records the TFRecords hold, from the manifest (written rows with a TFRecord
    file), or None when the manifest cannot tell."""
    try:
        rows = read_manifest_rows(output_path)
    except FileNotFoundError:
        return None
    return sum(1 for r in rows if r.get("status") == "written" and any("tfrecord" in f for f in r.get("files") or []))


def load_npy(path: str) -> np.ndarray:
    if "://" in path:
        return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
    return np.load(path, allow_pickle=False)


# -- layout -------------------------------------------------------------------------------------

def to_chw(array: np.ndarray, bands_axis: int = 0) -> np.ndarray:
    """An NPY patch as `(C, H, W)` (or `(T, C, H, W)`): `bands_axis` 0 means it already is;
    -1 means `(H, W, C)` (or `(T, H, W, C)`) and the band axis is moved before H and W."""
    if bands_axis == 0:
        return array
    if bands_axis == -1:
        return np.moveaxis(array, -1, -3)
    raise ValueError(f"bands_axis {bands_axis!r}: expected 0 (C, H, W) or -1 (H, W, C)")


def band_features(meta: dict) -> list[str]:
    """Names of the band features in record order (dataset.json band order; for a time stack
    step by step), i.e. the channel order of the loaders' images."""
    spec = meta["tfrecord"]["features"]
    names = [k for k, v in spec.items() if v.get("role") == "band"]
    if not names:
        raise ValueError("dataset.json: the feature spec lists no band feature")
    return names


def label_entry(meta: dict, label_feature: Union[str, None], label_spec: Optional[dict] = None):
    """(name, {"dtype", "shape"}) of the label feature, or None.

    `label_feature="auto"`: the one feature whose role is "label" in dataset.json, if any (none
    today: records carry labels only when a job adds them); a name: that feature, described
    by `label_spec` or else by dataset.json; None: no labels.
    """
    spec = meta["tfrecord"]["features"]
    if label_feature is None:
        return None
    if label_feature == AUTO:
        labels = [k for k, v in spec.items() if v.get("role") == "label"]
        if len(labels) > 1:
            raise ValueError(f"dataset.json lists several label features {labels}; pass label_feature=NAME")
        if not labels:
            return None
        label_feature = labels[0]
    entry = label_spec or spec.get(label_feature)
    if entry is None:
        raise ValueError(f"label_feature {label_feature!r} is not in dataset.json's feature spec; pass "
                         "label_spec={'dtype': 'float32' | 'int64' | 'string', 'shape': [...]}")
    if entry.get("dtype") not in ("float32", "int64", "string") or "shape" not in entry:
        raise ValueError(f"label_spec {entry!r}: give dtype float32, int64 or string and a shape list")
    return label_feature, {"dtype": entry["dtype"], "shape": list(entry["shape"])}


# -- TensorFlow ---------------------------------------------------------------------------------

def tf_dataset(output_path: str, batch_size: Optional[int] = None, with_mask: bool = False,
               label_feature: Union[str, None] = AUTO, label_spec: Optional[dict] = None,
               crop_margin: bool = False, shuffle_buffer: int = 0, seed: Optional[int] = None,
               drop_remainder: bool = False, as_dict: bool = False,
               files: Optional[Sequence[str]] = None):
    """A `tf.data.Dataset` over the output's TFRecords, parsed with dataset.json's spec.

    Elements (batched along a leading axis when `batch_size` is given):
      image                  float32 `(H, W, C)`, bands stacked in dataset.json order
      (image, label)         when a label feature is present (see `label_entry`)
      (image, mask)          with `with_mask`: float32 `(H, W)`, 1.0 where every band is valid
      (image, label, mask)   both: Keras reads this as (x, y, sample_weight)
    `as_dict=True` gives `{"image", "label"?, "mask"?, "patch_id"}` instead. `crop_margin`
    drops the `margin` px fetched around each patch. `shuffle_buffer` > 0 shuffles records
    (seeded by `seed`). `files` overrides the shards (e.g. a split).
    """
    import tensorflow as tf

    meta = read_dataset_json(output_path)
    spec = meta["tfrecord"]["features"]
    bands = band_features(meta)
    label = label_entry(meta, label_feature, label_spec)
    dtypes = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}
    wanted = list(bands) + (["mask"] if with_mask else []) + (["patch_id"] if as_dict else [])
    features = {k: tf.io.FixedLenFeature(spec[k]["shape"], dtypes[spec[k]["dtype"]]) for k in wanted}
    if label:
        features[label[0]] = tf.io.FixedLenFeature(label[1]["shape"], dtypes[label[1]["dtype"]])
    m = int(meta.get("margin", 0)) if crop_margin else 0

    def crop(x, channels_last):
        if not m:
            return x
        return x[..., m:-m, m:-m, :] if channels_last else x[..., m:-m, m:-m]

    def to_element(parsed):
        image = crop(tf.stack([parsed[b] for b in bands], axis=-1), True)
        out = {"image": image}
        if label:
            out["label"] = parsed[label[0]]
        if with_mask:
            out["mask"] = crop(parsed["mask"], False)
        if as_dict:
            out["patch_id"] = parsed["patch_id"]
            return out
        values = tuple(out.values())
        return values[0] if len(values) == 1 else values

    count = None
    if files is None:
        files = tfrecord_files(output_path, meta)
        count = tfrecord_patch_count(output_path)
    compression = meta["tfrecord"].get("compression", "GZIP")
    ds = tf.data.TFRecordDataset(list(files), compression_type=compression, num_parallel_reads=tf.data.AUTOTUNE)
    if count is not None:  # a known length: len(ds) works and Keras knows where an epoch ends
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        ds = ds.map(lambda raw: to_element(tf.io.parse_example(raw, features)), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda raw: to_element(tf.io.parse_single_example(raw, features)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def example_arrays(example: dict, meta: dict, with_mask: bool = False) -> dict[str, Any]:
    """A record parsed by `transforms.records.parse_example` as arrays: `image` float32
    `(C, H, W)` in band order, `mask` `(H, W)` when asked, and `patch_id`."""
    spec = meta["tfrecord"]["features"]
    bands = band_features(meta)
    h, w = spec[bands[0]]["shape"]
    out = {"image": np.stack([np.asarray(example[b], np.float32).reshape(h, w) for b in bands]),
           "patch_id": example["patch_id"][0].decode("utf-8")}
    if with_mask:
        out["mask"] = np.asarray(example["mask"], np.float32).reshape(h, w)
    return out
