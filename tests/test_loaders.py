"""Training loaders over a real extraction of the Landsat scene, read with real TensorFlow and
real PyTorch (CPU), for NPY files written channels-first (bands_axis 0) and channels-last (-1)."""

import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pixelbeam.pipeline.cli import main
from pixelbeam.transforms.formats.encode import patch_to_example
from pixelbeam.transforms.loaders import (NpyPatchDataset, TFRecordPatchDataset, band_features, label_entry, read_dataset_json,
                                tf_dataset, tfrecord_files, written_npy_files)
from pixelbeam.transforms.patch import Patch, PatchSpec
from pixelbeam.transforms.formats.records import RecordError, _masked_crc, iter_records, parse_example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")
MARGIN = 2
SIZE = 40


def extract(tmp_path, bands_axis: int) -> str:
    """A real `pixelbeam run` (two TFRecord shards, NPY in the `bands_axis` layout)."""
    doc = {"source": {"uri": LANDSAT, "bands": [1, 2, 3]}, "regions": REGIONS,
           "grid": {"crs": "native", "scale": "native", "patch_size": SIZE, "overlap": 0, "margin": MARGIN},
           "output": {"path": str(tmp_path / "out"), "formats": ["tfrecord", "npy"], "max_masked_ratio": 0.9,
                      "tfrecord_shards": 2, "bands_axis": bands_axis},
           "fetch": {"max_concurrent_requests": 4}}
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["run", str(cfg)]) == 0
    return str(tmp_path / "out")


@pytest.fixture(scope="module", params=[0, -1], ids=["chw", "hwc"])
def output(request, tmp_path_factory):
    return extract(tmp_path_factory.mktemp(f"axis{request.param}"), request.param)


def reference(out):
    """{patch_id: (C, H, W) array} from the NPY files, whatever their layout."""
    axis = read_dataset_json(out).get("bands_axis", 0)
    arrays = {}
    for pid, path in written_npy_files(out):
        a = np.load(path)
        arrays[pid] = a if axis == 0 else np.moveaxis(a, -1, 0)
    return arrays


def test_npy_files_are_in_the_declared_layout(output):
    meta = read_dataset_json(output)
    shape = np.load(written_npy_files(output)[0][1]).shape
    fetch = SIZE + 2 * MARGIN
    assert shape == ((3, fetch, fetch) if meta.get("bands_axis", 0) == 0 else (fetch, fetch, 3))
    assert len(tfrecord_files(output)) == 2


def test_tf_dataset_yields_hwc_images_equal_to_the_npy_files(output):
    tf = pytest.importorskip("tensorflow")
    ref = reference(output)
    seen = set()
    for element in tf_dataset(output, with_mask=True, as_dict=True):
        pid = element["patch_id"].numpy().decode()
        image, mask = element["image"].numpy(), element["mask"].numpy()
        assert image.dtype == np.float32 and image.shape == (SIZE + 2 * MARGIN,) * 2 + (3,)
        np.testing.assert_array_equal(image, np.moveaxis(ref[pid], 0, -1).astype(np.float32))
        np.testing.assert_array_equal(mask, (ref[pid] != 0).all(axis=0).astype(np.float32))  # nodata 0
        seen.add(pid)
    assert seen == set(ref)
    # batched tuples, margin cropped
    batches = list(tf_dataset(output, batch_size=4, with_mask=True, crop_margin=True))
    assert sum(int(b[0].shape[0]) for b in batches) == len(ref)
    image, mask = batches[0]
    assert image.shape[1:] == (SIZE, SIZE, 3) and mask.shape[1:] == (SIZE, SIZE)
    assert tf_dataset(output).element_spec.shape == (SIZE + 2 * MARGIN,) * 2 + (3,)
    assert len(tf_dataset(output)) == len(ref) and len(tf_dataset(output, batch_size=4)) == math.ceil(len(ref) / 4)


def test_tf_dataset_feeds_a_training_step(output):
    tf = pytest.importorskip("tensorflow")
    kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, 1], seed=[1, 2]) * 0.01)
    ds = tf_dataset(output, batch_size=8, with_mask=True, shuffle_buffer=64, seed=0)
    losses = []
    for image, mask in ds.take(2):
        with tf.GradientTape() as tape:
            pred = tf.nn.conv2d(image / 255.0, kernel, strides=1, padding="SAME")[..., 0]
            loss = tf.reduce_mean(mask * (pred - tf.reduce_mean(image / 255.0, axis=-1)) ** 2)
        grad = tape.gradient(loss, kernel)
        kernel.assign_sub(0.1 * grad)
        losses.append(float(loss))
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_npy_dataset_gives_chw_tensors_and_trains_a_conv(output):
    torch = pytest.importorskip("torch")
    ref = reference(output)
    ds = NpyPatchDataset(output)
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == len(ref)
    assert set(ds[0]) == {"image", "patch_id"}  # no mask files, no targets, labels or splits in this output
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)
    seen = []
    for batch in loader:  # samples are dicts with TorchGeo's key names (issue 14)
        images, ids = batch["image"], batch["patch_id"]
        assert images.dtype == torch.float32 and tuple(images.shape[1:]) == (3, SIZE + 2 * MARGIN, SIZE + 2 * MARGIN)
        for image, pid in zip(images, ids):
            np.testing.assert_array_equal(image.numpy(), ref[pid].astype(np.float32))
            seen.append(pid)
    assert sorted(seen) == sorted(ref)

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, kernel_size=3, padding=1)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    shuffled = torch.utils.data.DataLoader(NpyPatchDataset(output, transform=lambda x: x / 255.0),
                                           batch_size=8, shuffle=True)
    images = next(iter(shuffled))["image"]
    loss = torch.nn.functional.mse_loss(model(images), images.mean(dim=1, keepdim=True))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.weight)


def test_tfrecord_torch_dataset_shards_files_over_workers(output):
    torch = pytest.importorskip("torch")
    ref = reference(output)
    ds = TFRecordPatchDataset(output, with_mask=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    seen = []
    for batch in loader:
        for image, mask, pid in zip(batch["image"], batch["mask"], batch["patch_id"]):
            np.testing.assert_array_equal(image.numpy(), ref[pid].astype(np.float32))
            np.testing.assert_array_equal(mask.numpy(), (ref[pid] != 0).all(axis=0).astype(np.float32))
            seen.append(pid)
    assert sorted(seen) == sorted(ref)  # each patch once, though two workers read


def relabelled_output(src: str, dst, label_role: bool) -> str:
    """A copy of an output whose one shard is written by TensorFlow's own TFRecordWriter, each
    record carrying an int64 `label` (through patch_to_example's `extra`)."""
    tf = pytest.importorskip("tensorflow")
    meta = read_dataset_json(src)
    rows = {r["patch_id"]: r for r in map(json.loads, open(os.path.join(src, "manifest.jsonl")))}
    os.makedirs(dst / "tfrecord")
    labels = {}
    with tf.io.TFRecordWriter(str(dst / "tfrecord" / "patches-00000-of-00001.tfrecord.gz"), options="GZIP") as w:
        for i, (pid, data) in enumerate(sorted(reference(src).items())):
            r = rows[pid]
            spec = PatchSpec(pid, r["region_id"], r["crs"], tuple(r["transform"]), r["width"], r["height"],
                             margin=r["margin"])
            labels[pid] = i % 5
            w.write(patch_to_example(Patch(spec, data, (data != 0).all(axis=0), tuple(meta["bands"])),
                                     extra={"label": np.array([labels[pid]], np.int64)}))
    meta.pop("runs", None)
    if label_role:
        meta["tfrecord"]["features"]["label"] = {"dtype": "int64", "shape": [1], "role": "label",
                                                 "description": "class id"}
    (dst / "dataset.json").write_text(json.dumps(meta))
    return str(dst), labels


@pytest.mark.parametrize("label_role", [True, False], ids=["in-dataset-json", "named"])
def test_tf_dataset_yields_labels(output, tmp_path, label_role):
    pytest.importorskip("tensorflow")
    out, labels = relabelled_output(output, tmp_path / "labelled", label_role)
    kwargs = {} if label_role else {"label_feature": "label", "label_spec": {"dtype": "int64", "shape": [1]}}
    ds = tf_dataset(out, with_mask=True, **kwargs)
    assert len(ds.element_spec) == 3  # (image, label, mask): Keras' (x, y, sample_weight)
    got = sorted(int(label[0]) for _, label, _ in ds)
    assert got == sorted(labels.values())
    by_id = {e["patch_id"].numpy().decode(): int(e["label"][0]) for e in tf_dataset(out, as_dict=True, **kwargs)}
    assert by_id == labels
    if not label_role:  # without a label_spec, a feature dataset.json does not describe is an error
        with pytest.raises(ValueError, match="label_spec"):
            tf_dataset(out, label_feature="label")
        assert tf_dataset(out).element_spec.shape.rank == 3  # no label feature in dataset.json: images only


def test_label_entry_auto_and_errors():
    meta = {"tfrecord": {"features": {"B1": {"dtype": "float32", "shape": [2, 2], "role": "band"}}}}
    assert label_entry(meta, "auto") is None and label_entry(meta, None) is None
    assert band_features(meta) == ["B1"]
    meta["tfrecord"]["features"]["y"] = {"dtype": "float32", "shape": [2, 2], "role": "label"}
    assert label_entry(meta, "auto") == ("y", {"dtype": "float32", "shape": [2, 2]})
    with pytest.raises(ValueError, match="dtype"):
        label_entry(meta, "z", {"dtype": "uint8", "shape": []})


def test_pure_reader_matches_tensorflow(output):
    tf = pytest.importorskip("tensorflow")
    for path in tfrecord_files(output):
        ours = list(iter_records(path))
        theirs = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
        assert ours == theirs
        for raw in ours:
            mine, example = parse_example(raw), tf.train.Example.FromString(raw).features.feature
            assert set(mine) == set(example)
            for key, value in mine.items():
                kind = example[key].WhichOneof("kind")
                expected = list(getattr(example[key], kind).value)
                assert (list(value) == expected) if kind == "bytes_list" else np.array_equal(value, expected)


def test_pure_reader_accepts_unpacked_fields_and_rejects_corruption(tmp_path):
    # Example{features{feature{key:"x" value{float_list{value: 1.5 (fixed32, unpacked)}}}},
    #                  feature{key:"n" value{int64_list{value: -2 (varint, unpacked)}}}}
    def ld(tag, payload):
        return bytes([tag]) + bytes([len(payload)]) + payload
    x = ld(0x0A, ld(0x0A, b"x") + ld(0x12, ld(0x12, b"\x0d" + np.float32(1.5).tobytes())))
    n = ld(0x0A, ld(0x0A, b"n") + ld(0x12, ld(0x1A, b"\x08" + b"\xfe" + b"\xff" * 8 + b"\x01")))
    parsed = parse_example(ld(0x0A, x + n))
    assert parsed["x"].tolist() == [1.5] and parsed["n"].tolist() == [-2]
    bad = tmp_path / "bad.tfrecord"
    body = b"hello"
    head = struct.pack("<Q", len(body))
    bad.write_bytes(head + struct.pack("<I", _masked_crc(head)) + body + struct.pack("<I", _masked_crc(body) ^ 1))
    with pytest.raises(RecordError, match="CRC"):
        list(iter_records(str(bad)))


def test_loaders_import_without_tensorflow_or_torch():
    code = ("import sys, pixelbeam.transforms.loaders, pixelbeam.transforms.formats.records, pixelbeam.pipeline.preview; "
            "print('tensorflow' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
