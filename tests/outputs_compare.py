"""Compares two pixelbeam output folders read back by their real consumers: NPY files byte for
byte, TFRecord examples parsed by TensorFlow per patch id, manifests and dataset.json modulo the
run ids and the output path (the only things that may differ between two runs of one job)."""

import glob
import json
import os
import re

import numpy as np

RUN_IN_SHARD = re.compile(r"patches-\d{8}T\d{6}-[0-9a-f]{4}-")


def per_patch_files(out, folder):
    """{file name: bytes} of a per-patch folder (npy, geotiff, png, jpeg)."""
    files = {}
    for path in sorted(glob.glob(os.path.join(out, folder, "*"))):
        with open(path, "rb") as f:
            files[os.path.basename(path)] = f.read()
    return files


def examples_by_id(out):
    """{patch_id: {feature: numpy array or bytes}} of every TFRecord example; a patch id seen twice fails."""
    import tensorflow as tf
    shards = sorted(glob.glob(os.path.join(out, "tfrecord", "*.tfrecord.gz")))
    assert shards, f"no TFRecord shards in {out}"
    examples = {}
    for raw in tf.data.TFRecordDataset(shards, compression_type="GZIP"):
        feats = tf.train.Example.FromString(raw.numpy()).features.feature
        ex = {}
        for name, feat in feats.items():
            kind = feat.WhichOneof("kind")
            values = getattr(feat, kind).value
            ex[name] = list(values) if kind == "bytes_list" else np.asarray(values)
        patch_id = ex["patch_id"][0].decode()
        assert patch_id not in examples, f"{patch_id} is in the TFRecords twice"
        examples[patch_id] = ex
    return examples


def manifest_by_id(out):
    """{patch_id: row} with the run id dropped from the row and from the shard names it lists."""
    rows = {}
    with open(os.path.join(out, "manifest.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            row.pop("run_id", None)
            row["files"] = [RUN_IN_SHARD.sub("patches-RUN-", p) for p in row.get("files", [])]
            assert row["patch_id"] not in rows, f"{row['patch_id']} has two manifest rows"
            rows[row["patch_id"]] = row
    return rows


def dataset_description(out):
    with open(os.path.join(out, "dataset.json")) as f:
        doc = json.load(f)
    doc.pop("runs")
    doc["config"]["output"].pop("path")
    return doc


def assert_same_outputs(a, b, folders=("npy",)):
    """Both output folders hold the same patches, byte for byte where the bytes are the data."""
    for folder in folders:
        files_a, files_b = per_patch_files(a, folder), per_patch_files(b, folder)
        assert files_a and sorted(files_a) == sorted(files_b), folder
        different = [name for name in files_a if files_a[name] != files_b[name]]
        assert not different, f"{folder}: {len(different)} files differ, e.g. {different[:3]}"
    ex_a, ex_b = examples_by_id(a), examples_by_id(b)
    assert sorted(ex_a) == sorted(ex_b)
    for patch_id, features in ex_a.items():
        other = ex_b[patch_id]
        assert sorted(features) == sorted(other), patch_id
        for name, value in features.items():
            if isinstance(value, list):
                assert value == other[name], (patch_id, name)
            else:
                np.testing.assert_array_equal(value, other[name], err_msg=f"{patch_id} {name}")
    assert manifest_by_id(a) == manifest_by_id(b)
    assert dataset_description(a) == dataset_description(b)
    with open(os.path.join(a, "failed.jsonl")) as fa, open(os.path.join(b, "failed.jsonl")) as fb:
        assert sorted(fa.read().splitlines()) == sorted(fb.read().splitlines())
