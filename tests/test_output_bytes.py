"""Output bytes pinned: the NPY files, GeoTIFF files and TFRecord examples of demo-like jobs hash
to what the code wrote before issue 16's speed work, so an optimisation of the fetch or write path
cannot change a byte. TFRecord examples are compared as their serialized protos (the gzip framing
around them may change, e.g. with the compression level), read with the TFRecord framing
(length, CRCs) checked.

If a change is meant to alter outputs, the issue says so; then update the hashes below and say
why in the commit."""

import glob
import gzip
import hashlib
import os
import struct

import pytest
import yaml

from pixelbeam.pipeline.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")
CONFIGS = os.path.join(ROOT, "configs")


def tfrecord_payloads(path):
    """Every record of a gzip TFRecord file (framing checked by length, not by CRC, which
    needs no TF: the CRCs are checked by TensorFlow's reader in tests/test_outputs.py)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    records, at = [], 0
    while at < len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        start = at + 12
        records.append(data[start:start + length])
        at = start + length + 4
    assert at == len(data), f"{path}: truncated record"
    return records


def output_hashes(out):
    """{kind: sha256} of a job's output folder: per-patch files by name, TFRecord examples sorted."""
    hashes = {}
    for folder in ("npy", "geotiff", "png"):
        digest = hashlib.sha256()
        paths = sorted(glob.glob(os.path.join(out, folder, "**", "*.*"), recursive=True))
        for path in paths:
            digest.update(os.path.relpath(path, out).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
        hashes[folder] = (len(paths), digest.hexdigest())
    examples = sorted(r for p in glob.glob(os.path.join(out, "tfrecord", "*.tfrecord.gz"))
                      for r in tfrecord_payloads(p))
    digest = hashlib.sha256()
    for record in examples:
        digest.update(hashlib.sha256(record).digest())
    hashes["tfrecord"] = (len(examples), digest.hexdigest())
    return hashes


def demo_like(tmp_path, **changes):
    """configs/demo.yaml with absolute paths, its outputs in tmp_path, and `changes` per section."""
    with open(os.path.join(CONFIGS, "demo.yaml")) as f:
        doc = yaml.safe_load(f)
    doc["source"]["uri"] = os.path.join(DATA, "RGB.byte.tif")
    doc["regions"] = os.path.join(DATA, "regions.geojson")
    doc["output"]["path"] = str(tmp_path / "out")
    for section, values in changes.items():
        doc[section] = {**doc.get(section, {}), **values}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def segmentation(tmp_path):
    """configs/segmentation.yaml (two layers: a raster and rasterized polygons, splits)."""
    with open(os.path.join(CONFIGS, "segmentation.yaml")) as f:
        doc = yaml.safe_load(f)
    doc["layers"]["image"]["uri"] = os.path.join(DATA, "RGB.byte.tif")
    doc["layers"]["labels"]["path"] = os.path.join(CONFIGS, "segmentation_labels.geojson")
    doc["regions"] = os.path.join(CONFIGS, "segmentation_labels.geojson")
    doc["output"]["path"] = str(tmp_path / "out")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


# (count, sha256) per kind, written by the code as of commit 91c5d9e (before issue 16's speed work)
EMPTY = hashlib.sha256().hexdigest()  # no file of that kind
PINNED = {
    "demo": {"npy": (49, "a2346bf806ee8e3e938c8efb72dbf8ecc2fcc2b1094c2d4c7d95c4747cb83a49"),
             "geotiff": (49, "9a6a2e170f97675e145df0f2530733bc03ea4cb3c9ea113742dedfa0b4b8bb9a"),
             "png": (0, EMPTY),
             "tfrecord": (49, "42b8ada4720b72a525b87f93b9ebcbd2102a8e5fc402149cd9e11876c4e5a53a")},
    "demo_scaled": {"npy": (90, "5ad5f4debe3668674bd8bb3c580f91148dfafffe76b8affbca1e5d826b21e1cb"),
                    "geotiff": (0, EMPTY),
                    "png": (45, "f797bff27ebc91be6d6424103dd5c16a7f9268901bcd905bfabb07d6bfee07e4"),
                    "tfrecord": (45, "2b5d7cb2ccdf20d22ba01d67817abd649a2e754877bb4e1f5aa1e0d8e4cf2948")},
    "segmentation": {"npy": (78, "d9fd85f514f12c8656bdeb2141d9cc3439a5f58111028670f198993180cbcadd"),
                     "geotiff": (78, "777fb0cefda0f9b1ef9c7d8a9a12944782c5e8ce9a06d6e86b7379886866b95a"),
                     "png": (0, EMPTY),
                     "tfrecord": (39, "a5079fbfc8abece7fcfabf35ce61cbefa7b5fe4edd9e844e0be26eed5a28e0f5")},
}

JOBS = {
    "demo": lambda tmp: demo_like(tmp, output={"formats": ["tfrecord", "npy", "geotiff"]}),
    # scaling, a fill value and bands last: the per-patch rules and the NPY layout in the hot path
    "demo_scaled": lambda tmp: demo_like(
        tmp, output={"formats": ["tfrecord", "npy", "png"], "bands_axis": -1, "max_masked_ratio": 0.5,
                     "scaling": {"B1": [20, 120], "default_": ["5%", "50%"]}},
        mask={"fill_value": 0, "npy": True}),
    "segmentation": segmentation,
}


def test_tfrecord_examples_are_the_same_at_every_gzip_level(tmp_path):
    """output.tfrecord_compression_level changes the gzip stream, never an example."""
    sizes = {}
    for level in (0, 9):
        config = demo_like(tmp_path / str(level), output={"formats": ["tfrecord"], "tfrecord_compression_level": level})
        assert main(["run", config]) == 0
        out = str(tmp_path / str(level) / "out")
        assert output_hashes(out)["tfrecord"] == PINNED["demo"]["tfrecord"]
        sizes[level] = sum(os.path.getsize(p) for p in glob.glob(os.path.join(out, "tfrecord", "*.gz")))
    assert sizes[9] < sizes[0] / 3


def test_a_gzip_level_out_of_range_is_one_line_naming_the_field(tmp_path, capsys):
    config = demo_like(tmp_path, output={"tfrecord_compression_level": 10})
    assert main(["run", config]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "output.tfrecord_compression_level" in err
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("name", sorted(JOBS))
def test_output_bytes_are_what_they_were(tmp_path, name):
    assert main(["run", JOBS[name](tmp_path)]) == 0
    got = output_hashes(str(tmp_path / "out"))
    assert got["npy"][0] > 0 and got["tfrecord"][0] > 0, got
    assert got == PINNED[name], f"{name}: outputs changed: {got}"
