"""The loaders return what the output carries: the region label, the split, normalization by
dataset.json's stats, and the README's example runs on a labelled output (issue 14, item 7).

The split and the stats come from real runs (config `split:`; dataset.json `stats`)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pixelbeam.pipeline.cli import main
from pixelbeam.transforms.loaders import NpyPatchDataset, TFRecordPatchDataset, tf_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")
SIZE = 32


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A real run whose patches carry their region's name as label (sample.label_property)."""
    tmp = tmp_path_factory.mktemp("labelled")
    doc = {"source": {"uri": LANDSAT, "bands": [1, 2, 3]}, "regions": REGIONS,
           "grid": {"crs": "native", "scale": "native", "patch_size": SIZE},
           "output": {"path": str(tmp / "out"), "formats": ["tfrecord", "npy"], "max_masked_ratio": 0.5},
           "sample": {"label_property": "name"}}
    (tmp / "job.yaml").write_text(yaml.safe_dump(doc))
    assert main(["run", str(tmp / "job.yaml")]) == 0
    return str(tmp / "out")


def rows_of(out):
    return [json.loads(line) for line in open(os.path.join(out, "manifest.jsonl"))]


def test_the_readme_example_runs_on_a_labelled_output(labelled):
    readme = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"Loading it for training.*?```python\n(.*?)```", readme, re.S).group(1)
    assert "out/demo" in block
    proc = subprocess.run([sys.executable, "-c", block.replace('"out/demo"', repr(labelled))], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(8, 3, 32, 32) (8, 32, 32, 3) (8, 32, 32)" in proc.stdout, proc.stdout


def test_torch_samples_carry_the_region_label(labelled):
    torch = pytest.importorskip("torch")
    labels = {r["patch_id"]: r["label"] for r in rows_of(labelled) if r["status"] == "written"}
    assert len(set(labels.values())) >= 2
    npy = {s["patch_id"]: s for s in NpyPatchDataset(labelled)}
    records = {s["patch_id"]: s for s in TFRecordPatchDataset(labelled)}
    assert set(npy) == set(records) == set(labels)
    for pid, label in labels.items():
        assert npy[pid]["label"] == records[pid]["label"] == label
        assert torch.equal(npy[pid]["image"], records[pid]["image"])
        assert "split" not in npy[pid]
    batch = next(iter(torch.utils.data.DataLoader(NpyPatchDataset(labelled), batch_size=4)))
    assert len(batch["label"]) == 4 and tuple(batch["image"].shape) == (4, 3, SIZE, SIZE)


def test_tf_dataset_keeps_labels_and_masks(labelled):
    pytest.importorskip("tensorflow")
    labels = {r["patch_id"]: r["label"] for r in rows_of(labelled) if r["status"] == "written"}
    image, label, mask = next(iter(tf_dataset(labelled, batch_size=4, with_mask=True)))  # (x, y, sample_weight)
    assert image.shape[1:] == (SIZE, SIZE, 3) and label.shape == (4,) and mask.shape[1:] == (SIZE, SIZE)
    got = {e["patch_id"].numpy().decode(): e["label"].numpy().decode() for e in tf_dataset(labelled, as_dict=True)}
    assert got == labels


@pytest.fixture(scope="module")
def split_output(tmp_path_factory):
    """A real run of the labelled job with a split (and so per-split statistics)."""
    tmp = tmp_path_factory.mktemp("split")
    doc = {"source": {"uri": LANDSAT, "bands": [1, 2, 3]}, "regions": REGIONS,
           "grid": {"crs": "native", "scale": "native", "patch_size": SIZE},
           "output": {"path": str(tmp / "out"), "formats": ["tfrecord", "npy"], "max_masked_ratio": 0.5},
           "sample": {"label_property": "name"}, "split": {"train": 0.6, "val": 0.4, "block": 1, "seed": 0}}
    (tmp / "job.yaml").write_text(yaml.safe_dump(doc))
    assert main(["run", str(tmp / "job.yaml")]) == 0
    return str(tmp / "out")


def band_stats(out, split):
    """(mean, std) of dataset.json's stats of `split`, (C, 1, 1) float32."""
    meta = json.load(open(os.path.join(out, "dataset.json")))
    stats = meta["stats"][split]["image"]
    mean = np.array([stats[b]["mean"] for b in meta["bands"]], np.float32)[:, None, None]
    std = np.array([stats[b]["std"] for b in meta["bands"]], np.float32)[:, None, None]
    return mean, std


def test_split_selects_the_patches_of_one_split_in_every_loader(split_output):
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    written = [r for r in rows_of(split_output) if r["status"] == "written"]
    val = {r["patch_id"] for r in written if r["split"] == "val"}
    assert val and len(val) < len(written)
    npy = NpyPatchDataset(split_output, split="val")
    assert {s["patch_id"] for s in npy} == val and {s["split"] for s in npy} == {"val"}
    assert {s["patch_id"] for s in TFRecordPatchDataset(split_output, split="val")} == val
    assert {s["split"] for s in TFRecordPatchDataset(split_output)} == {"train", "val"}
    ds = tf_dataset(split_output, split="val", as_dict=True)
    assert {e["patch_id"].numpy().decode() for e in ds} == val and len(ds) == len(val)
    images = [b[0] for b in tf_dataset(split_output, split="train", batch_size=5)]
    assert sum(int(i.shape[0]) for i in images) == len(written) - len(val)
    with pytest.raises(ValueError, match="split='test': not a split of this output; its splits are train, val"):
        NpyPatchDataset(split_output, split="test")


def test_normalize_uses_the_train_stats(split_output, labelled):
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    mean, std = band_stats(split_output, "train")
    raw = NpyPatchDataset(split_output)[0]
    norm = NpyPatchDataset(split_output, normalize=True)[0]
    np.testing.assert_allclose(norm["image"].numpy(), (raw["image"].numpy() - mean) / std, rtol=1e-5)
    mean_all, std_all = band_stats(split_output, "all")
    every = NpyPatchDataset(split_output, normalize="all")[0]
    np.testing.assert_allclose(every["image"].numpy(), (raw["image"].numpy() - mean_all) / std_all, rtol=1e-5)
    record = next(iter(TFRecordPatchDataset(split_output, normalize=True)))
    plain = next(iter(TFRecordPatchDataset(split_output)))
    np.testing.assert_allclose(record["image"].numpy(), (plain["image"].numpy() - mean) / std, rtol=1e-5)
    image = next(iter(tf_dataset(split_output, normalize=True, label_feature=None)))
    image0 = next(iter(tf_dataset(split_output, label_feature=None)))
    np.testing.assert_allclose(image.numpy(), (image0.numpy() - mean[:, 0, 0]) / std[:, 0, 0], rtol=1e-5)
    # an unsplit output normalizes with the statistics of all its patches
    mean_l, std_l = band_stats(labelled, "all")
    np.testing.assert_allclose(NpyPatchDataset(labelled, normalize=True)[0]["image"].numpy(),
                               (NpyPatchDataset(labelled)[0]["image"].numpy() - mean_l) / std_l, rtol=1e-5)
    with pytest.raises(ValueError, match="it has no splits"):
        NpyPatchDataset(labelled, split="train")
