"""Reading a written pixelbeam output without TensorFlow or PyTorch: dataset.json, the
manifest, the NPY files and TFRecord shards, and the feature layout they share. numpy only;
local folders and any path Beam's FileSystems opens (gs://...)."""

from __future__ import annotations

import io
import json
import os
from typing import Any, Optional, Union

import numpy as np

AUTO = "auto"


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


def arrow_buffer(data: bytes):
    """`data` copied into memory Arrow owns (a pyarrow.Buffer). Arrow objects made from it (a
    Parquet fragment, a CSV reader) hold no Python object, so their destructors, which may run on
    Arrow's threads while the interpreter exits, need not take the GIL; taking it then aborts the
    process ("terminate called without an active exception", from ~PyBuffer)."""
    import pyarrow as pa
    buffer = pa.allocate_buffer(len(data))
    memoryview(buffer).cast("B")[:] = data
    return buffer


def arrow_source(path: str):
    """What pyarrow's readers should read `path` from: a local path as it is (Arrow opens it
    itself), a remote one (gs://...) as a BufferReader over `arrow_buffer` of its bytes."""
    if "://" not in path:
        return path
    import pyarrow as pa
    return pa.BufferReader(arrow_buffer(read_bytes(path)))


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


def check_split(meta: dict, split: Optional[str]) -> Optional[str]:
    """`split` if the output has it (dataset.json `tfrecord.splits`); None passes (all patches)."""
    if split is None:
        return None
    names = sorted((meta.get("tfrecord") or {}).get("splits") or {})
    if split not in names:
        have = f"its splits are {', '.join(names)}" if names else "it has no splits (config split:)"
        raise ValueError(f"split={split!r}: not a split of this output; {have}")
    return split


def written_npy_files(output_path: str, split: Optional[str] = None) -> list[tuple[str, str]]:
    """[(patch_id, path)] of the NPY files the manifest lists as written (of `split` when
    given: the rows' `split`), sorted by patch id."""
    out = []
    for row in read_manifest_rows(output_path):
        if row.get("status") != "written" or (split is not None and row.get("split") != split):
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


def tfrecord_files(output_path: str, meta: Optional[dict] = None, split: Optional[str] = None) -> list[str]:
    """The TFRecord shards of the output, sorted: those of the completed runs dataset.json
    lists (`runs`: each run writes `patches-<run>-*`, or `<split>-<run>-*` per split, so
    shards of a killed run are left out), else every shard matching its `tfrecord.files`
    pattern (of `split` when given: `tfrecord.splits[split]`)."""
    meta = meta or read_dataset_json(output_path)
    splits = meta["tfrecord"].get("splits") or {}
    if split is None and splits:
        return sorted(f for name in sorted(splits) for f in tfrecord_files(output_path, meta, name))
    pattern = join_path(output_path, splits[check_split(meta, split)] if split else meta["tfrecord"]["files"])
    files = sorted({f for run in meta.get("runs") or [] for f in _glob(pattern.replace("*", f"{run}-*", 1))})
    if not files:
        files = _glob(pattern)
    if not files:
        raise FileNotFoundError(f"{pattern}: no TFRecord files; was the job run with output.formats "
                                "including tfrecord?")
    return sorted(files)


def tfrecord_patch_count(output_path: str, split: Optional[str] = None) -> Optional[int]:
    """How many records the TFRecords (of `split`) hold, from the manifest (written rows with a
    TFRecord file), or None when the manifest cannot tell."""
    try:
        rows = read_manifest_rows(output_path)
    except FileNotFoundError:
        return None
    return sum(1 for r in rows if r.get("status") == "written" and any("tfrecord" in f for f in r.get("files") or [])
               and (split is None or r.get("split") == split))


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

def example_arrays(example: dict, meta: dict, with_mask: bool = False) -> dict[str, Any]:
    """A record parsed by `pixelbeam.transforms.formats.records.parse_example` as arrays: `image` float32
    `(C, H, W)` in band order, `mask` `(H, W)` when asked, and `patch_id`."""
    spec = meta["tfrecord"]["features"]
    bands = band_features(meta)
    h, w = spec[bands[0]]["shape"]
    out = {"image": np.stack([np.asarray(example[b], np.float32).reshape(h, w) for b in bands]),
           "patch_id": example["patch_id"][0].decode("utf-8")}
    if with_mask:
        out["mask"] = np.asarray(example["mask"], np.float32).reshape(h, w)
    return out
