"""WebDataset tar shards (`output.formats: [webdataset]`), read back by the real `webdataset`
package and by pixelbeam's streaming PyTorch loader; a killed run and its rerun leave every
patch in exactly one shard of a completed run."""

import glob
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.config import load_config
from pixelbeam.pipeline.plan import prepare_job
from pixelbeam.transforms.formats.webdataset import ShardNaming, shard_count, shard_run_id

wds = pytest.importorskip("webdataset")
torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")
SHARD_NAME = re.compile(r"^(patches|train|val|test)-\d{8}T\d{6}-[0-9a-f]{4}-\d{6}\.tar$")


def write_config(tmp_path, patch_size=40, shard_size_mb=0.05, formats=("npy", "webdataset"), margin=2, **extra):
    doc = {"source": {"uri": LANDSAT, "bands": [1, 2, 3]}, "regions": REGIONS,
           "grid": {"crs": "native", "scale": "native", "patch_size": patch_size, "margin": margin},
           "output": {"path": str(tmp_path / "out"), "formats": list(formats), "max_masked_ratio": 0.9,
                      "shard_size_mb": shard_size_mb},
           "mask": {"npy": True}, "fetch": {"max_concurrent_requests": 2}, **extra}
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return str(cfg)


def manifest(out):
    with open(os.path.join(out, "manifest.jsonl")) as f:
        return {r["patch_id"]: r for r in map(json.loads, f)}


def shard_files(out):
    return sorted(glob.glob(os.path.join(out, "shards", "*")))


def audit_shards(cfg):
    """Every planned patch has one row; every written patch is in exactly one shard, the one
    its row names, of a completed run; nothing else is in shards/. Returns (rows, samples)."""
    config = load_config(cfg)
    out = config.output.path
    rows = manifest(out)
    assert sorted(rows) == sorted(s.patch_id for s in prepare_job(config).specs)
    runs = json.load(open(os.path.join(out, "dataset.json")))["runs"]
    names = [os.path.basename(p) for p in shard_files(out)]
    assert names and all(SHARD_NAME.match(n) and shard_run_id(n) in runs for n in names), names
    written = {pid for pid, r in rows.items() if r["status"] == "written"}
    named = {f for r in rows.values() for f in r["files"] if f.startswith("shards/")}
    assert named == {f"shards/{n}" for n in names}
    dataset = wds.WebDataset(shard_files(out), shardshuffle=False).decode()
    samples = {}
    for sample in dataset:
        assert sample["__key__"] not in samples, f"{sample['__key__']} twice"
        samples[sample["__key__"]] = sample
        shard = "shards/" + os.path.basename(sample["__url__"])
        assert shard in rows[sample["__key__"]]["files"]
    assert set(samples) == written
    return rows, samples


def test_shards_hold_every_written_patch_as_the_npy_files_and_manifest_do(tmp_path):
    cfg = write_config(tmp_path)
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    rows, samples = audit_shards(cfg)
    assert len(shard_files(out)) > 1 and not glob.glob(os.path.join(out, "shards", ".tmp-*"))
    for pid, sample in samples.items():
        assert sorted(k for k in sample if not k.startswith("__")) == ["json", "mask.npy", "npy"]
        np.testing.assert_array_equal(sample["npy"], np.load(os.path.join(out, "npy", f"{pid}.npy")))
        np.testing.assert_array_equal(sample["mask.npy"], np.load(os.path.join(out, "npy", f"{pid}.mask.npy")))
        assert sample["npy"].shape == (3, 44, 44) and sample["mask.npy"].dtype == np.uint8
        assert sample["json"] == rows[pid]  # the manifest row, naming this shard
    meta = json.load(open(os.path.join(out, "dataset.json")))
    assert meta["webdataset"]["members"] == ["{patch_id}.npy", "{patch_id}.mask.npy", "{patch_id}.json"]


def test_the_torch_loader_streams_every_patch_once_shuffled_across_shards(tmp_path):
    from pixelbeam import NpyPatchDataset, WebDatasetPatchDataset
    cfg = write_config(tmp_path, patch_size=32, margin=0, split={"train": 0.6, "val": 0.4, "block": 3, "seed": 1})
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    rows, _ = audit_shards(cfg)
    assert {os.path.basename(p).split("-")[0] for p in shard_files(out)} == {"train", "val"}
    reference = {s["patch_id"]: s for s in NpyPatchDataset(out)}
    plain = WebDatasetPatchDataset(out, shuffle=False)
    in_order = [s["patch_id"] for s in plain]
    assert sorted(in_order) == sorted(reference) and len(plain) == len(reference)
    for sample in plain:
        ref = reference[sample["patch_id"]]
        torch.testing.assert_close(sample["image"], ref["image"])
        torch.testing.assert_close(sample["mask"], ref["mask"])
        assert sample["split"] == ref["split"]
    shuffled = WebDatasetPatchDataset(out, shuffle=True, buffer_size=8, seed=1)
    first = [s["patch_id"] for s in shuffled]
    shuffled.set_epoch(1)
    second = [s["patch_id"] for s in shuffled]
    assert sorted(first) == sorted(second) == sorted(in_order)
    assert first != in_order and second != first  # another order, seeded, per epoch
    loader = torch.utils.data.DataLoader(WebDatasetPatchDataset(out, split="val"), batch_size=4, num_workers=2)
    seen = [pid for batch in loader for pid in batch["patch_id"]]
    assert sorted(seen) == sorted(pid for pid, r in rows.items() if r["status"] == "written" and r["split"] == "val")


def test_a_patch_refetched_for_a_missing_npy_stays_in_its_old_shard_only(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    before = {p: os.stat(p).st_mtime_ns for p in shard_files(out)}
    lost = sorted(glob.glob(os.path.join(out, "npy", "*[0-9].npy")))[:2]
    for path in lost:
        os.remove(path)
    capsys.readouterr()
    assert main(["run", cfg]) == 0
    assert "2 fetched in this run" in capsys.readouterr().out
    assert all(os.path.exists(p) for p in lost)
    assert {p: os.stat(p).st_mtime_ns for p in shard_files(out)} == before  # no new shard, none rewritten
    audit_shards(cfg)


def test_a_deleted_shard_is_written_again_by_the_rerun(tmp_path):
    cfg = write_config(tmp_path)
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    gone = shard_files(out)[0]
    os.remove(gone)
    assert main(["run", cfg]) == 0
    assert not os.path.exists(gone)  # its patches are in a shard of the new run
    audit_shards(cfg)


def run_and_kill(cmd, out_dir, pattern, cwd=ROOT):
    """Start `cmd`, SIGKILL it once a file matches `pattern` under `out_dir`; True if it was killed mid-way."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None and not glob.glob(os.path.join(out_dir, pattern)):
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed


@pytest.mark.parametrize("when", ["npy/*.npy", "shards/*"])
def test_killed_run_then_rerun_leaves_every_patch_in_one_shard(tmp_path, when):
    cfg = write_config(tmp_path, patch_size=12, shard_size_mb=0.02)  # ~670 small patches, ~30 shards
    out = str(tmp_path / "out")
    assert run_and_kill([sys.executable, "-m", "pixelbeam", "run", cfg], out, when)
    assert not os.path.exists(os.path.join(out, "manifest.jsonl"))  # killed before the manifest
    assert main(["run", cfg]) == 0
    rows, _ = audit_shards(cfg)
    assert len(rows) > 500


def test_shard_names_depend_on_the_patch_id_alone():
    naming = ShardNaming("20260101T000000-abcd", (("train", 7), ("val", 1)))
    assert naming.relpath("epsg32618_r3_c6", "train") == naming.relpath("epsg32618_r3_c6", "train")
    assert naming.relpath("epsg32618_r3_c6", "val") == "shards/val-20260101T000000-abcd-000000.tar"
    spread = {naming.relpath(f"epsg32618_r{i}_c0", "train") for i in range(200)}
    assert len(spread) == 7
    assert shard_run_id("train-20260101T000000-abcd-000003.tar") == "20260101T000000-abcd"
    assert shard_run_id(".tmp-0a1b-train-20260101T000000-abcd-000003.tar") is None
    assert shard_count(1000, 10_000, 1.0) == 14  # 1000 x (10,000 + 3,072 bytes of tar headers) in 1 MB shards


def test_layered_shards_hold_every_layer_and_load_as_the_npy_files_do(tmp_path):
    from pixelbeam import NpyPatchDataset, WebDatasetPatchDataset
    doc = yaml.safe_load(open(os.path.join(ROOT, "configs", "segmentation.yaml")))
    doc["layers"]["image"]["uri"] = LANDSAT
    labels = os.path.join(ROOT, "configs", "segmentation_labels.geojson")
    doc["layers"]["labels"]["path"] = doc["regions"] = labels
    doc["output"] = {"path": str(tmp_path / "out"), "formats": ["npy", "webdataset"], "shard_size_mb": 0.05}
    doc["mask"] = {"npy": True}
    cfg = tmp_path / "seg.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["run", str(cfg)]) == 0
    out = str(tmp_path / "out")
    _, samples = audit_shards(str(cfg))
    for pid, sample in samples.items():
        assert {"image.npy", "image.mask.npy", "labels.npy", "labels.mask.npy", "json"} <= set(sample)
        np.testing.assert_array_equal(sample["labels.npy"], np.load(os.path.join(out, "npy", "labels", f"{pid}.npy")))
    reference = {s["patch_id"]: s for s in NpyPatchDataset(out)}
    streamed = {s["patch_id"]: s for s in WebDatasetPatchDataset(out, split="train")}
    assert streamed and set(streamed) == {p for p, s in reference.items() if s["split"] == "train"}
    for pid, sample in streamed.items():
        torch.testing.assert_close(sample["image"], reference[pid]["image"])
        torch.testing.assert_close(sample["target"], reference[pid]["target"])
