"""Reruns finish exactly what is missing; a killed run leaves nothing twice or half-written."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.config import load_config
from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
from pixelbeam.pipeline.plan import prepare_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")
ASSET = "projects/pixelbeam-test/assets/landsat"


def raster_config(tmp_path, patch_size=48, out="out", **fetch):
    doc = {"source": {"uri": LANDSAT},
           "regions": REGIONS,
           "grid": {"crs": "native", "scale": "native", "patch_size": patch_size},
           "output": {"path": str(tmp_path / out), "max_masked_ratio": 0.9},
           "fetch": {"max_concurrent_requests": 4, **fetch}}
    path = tmp_path / f"job-{patch_size}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def ee_config(tmp_path, url, patch_size=16):
    with open(raster_config(tmp_path)) as f:
        doc = yaml.safe_load(f)
    doc["source"] = {"kind": "earthengine", "asset": ASSET, "url": url, "credentials": "anonymous",
                     "project": "pixelbeam-test"}
    doc["grid"] = {"crs": "EPSG:32618", "scale": 300.0, "patch_size": patch_size}
    doc["fetch"] = {"max_concurrent_requests": 4}
    path = tmp_path / "ee.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def audit(cfg):
    """Every planned patch exactly once: manifest rows, NPY files that load, unique TFRecord
    examples equal to the written set, no temporary files. Returns the manifest rows."""
    tf = pytest.importorskip("tensorflow")
    config = load_config(cfg)
    out = config.output.path
    planned = sorted(s.patch_id for s in prepare_job(config).specs)
    with open(os.path.join(out, "manifest.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert sorted(r["patch_id"] for r in rows) == planned
    written = {r["patch_id"] for r in rows if r["status"] == "written"}
    assert {r["status"] for r in rows} <= {"written", "filtered"}
    npys = glob.glob(os.path.join(out, "npy", "*"))
    if config.mask.npy:  # each written patch's mask beside it
        masks = sorted(os.path.basename(p)[:-len(".mask.npy")] for p in npys if p.endswith(".mask.npy"))
        assert masks == sorted(written)
        npys = [p for p in npys if not p.endswith(".mask.npy")]
    assert sorted(os.path.basename(p)[:-4] for p in npys) == sorted(written)  # nothing extra, no .tmp-*
    for path in npys:
        assert np.load(path).ndim == 3
    ids = []
    shards = glob.glob(os.path.join(out, "tfrecord", "*"))
    assert all(os.path.basename(s).startswith("patches-") for s in shards)  # no beam-temp leftovers
    for raw in tf.data.TFRecordDataset(shards, compression_type="GZIP"):
        ids.append(tf.train.Example.FromString(raw.numpy()).features.feature["patch_id"].bytes_list.value[0].decode())
    assert len(ids) == len(set(ids)) and set(ids) == written
    assert not glob.glob(os.path.join(out, "beam-temp-*")) and not os.path.exists(os.path.join(out, "_running.json"))
    return rows


def test_a_rerun_of_a_finished_job_does_nothing(tmp_path, capsys):
    cfg = raster_config(tmp_path)
    assert main(["run", cfg]) == 0
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(tmp_path / "out" / "**" / "*"), recursive=True)}
    assert main(["run", cfg]) == 0
    assert "nothing to do" in capsys.readouterr().out
    after = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(tmp_path / "out" / "**" / "*"), recursive=True)}
    assert after == before
    audit(cfg)


def test_a_rerun_fetches_only_missing_files(tmp_path, capsys):
    cfg = raster_config(tmp_path)
    assert main(["run", cfg]) == 0
    npys = sorted(glob.glob(str(tmp_path / "out" / "npy" / "*.npy")))
    missing = npys[:3]
    for path in missing:
        os.remove(path)
    capsys.readouterr()
    stale = tmp_path / "out" / ".tmp-0123-dataset.json"  # an atomic write a killed run left half done
    stale.write_text('{"fingerp')
    assert main(["run", cfg]) == 0
    out = capsys.readouterr().out
    assert "fetched in this run" in out and "requests 3 " in out
    assert all(os.path.exists(p) for p in missing) and not stale.exists()
    audit(cfg)  # the refetched patches are not added to the TFRecords a second time


def test_a_deleted_npy_is_refetched_beside_mask_files(tmp_path, capsys):
    """npy/ also holds <id>.mask.npy: the launcher counts each kind of file on its own, so one
    missing patch file is not hidden by the mask files (it was, when files were counted per folder)."""
    cfg = raster_config(tmp_path)
    doc = yaml.safe_load(open(cfg))
    doc["mask"] = {"npy": True}
    open(cfg, "w").write(yaml.safe_dump(doc))
    assert main(["run", cfg]) == 0
    lost = sorted(glob.glob(str(tmp_path / "out" / "npy" / "*[0-9].npy")))[0]
    os.remove(lost)
    capsys.readouterr()
    assert main(["run", cfg]) == 0
    out = capsys.readouterr().out
    assert "1 fetched in this run" in out and os.path.exists(lost), out


def test_adding_a_format_with_another_change_is_refused_as_a_changed_config(tmp_path, capsys):
    """Issue 15 item 12: an added format alone is written from the stored patches
    (tests/test_add_formats.py); with another change too the refusal names the changed keys."""
    cfg = raster_config(tmp_path, patch_size=48)
    assert main(["run", cfg]) == 0
    doc = yaml.safe_load(open(cfg))
    doc["output"]["formats"] = ["tfrecord", "npy", "geotiff"]
    doc["grid"]["patch_size"] = 32
    open(cfg, "w").write(yaml.safe_dump(doc))
    capsys.readouterr()
    assert main(["run", cfg]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "grid.patch_size 48 -> 32" in err, err
    assert 'output.formats ["tfrecord", "npy"] -> ["tfrecord", "npy", "geotiff"]' in err, err
    assert "stored" not in err, err


def test_a_changed_config_is_refused_unless_overwrite(tmp_path, capsys):
    cfg = raster_config(tmp_path, patch_size=48)
    assert main(["run", cfg]) == 0
    changed = raster_config(tmp_path, patch_size=32)  # same output folder, other grid
    assert main(["run", changed]) == 2
    err = capsys.readouterr().err
    assert "holds patches made with a different config (grid.patch_size 48 -> 32); use a new output.path" in err
    assert err.count("\n") == 1
    assert main(["run", changed, "--overwrite"]) == 0
    rows = audit(changed)
    assert all(r["width"] == 32 for r in rows)


def test_fetch_settings_do_not_change_the_fingerprint(tmp_path):
    cfg = raster_config(tmp_path)
    assert main(["run", cfg]) == 0
    faster = raster_config(tmp_path, max_concurrent_requests=8)
    assert main(["run", faster]) == 0  # nothing to do, not refused


def test_retry_failed_reattempts_only_the_dead_letters(tmp_path):
    catalog = {"images": {ASSET: {"path": LANDSAT, "bands": ["B1", "B2", "B3"]}}}
    with EmulatorServer(catalog, EmulatorConfig(fault_400=0.1, seed=11)) as server:
        cfg = ee_config(tmp_path, server.url)
        assert main(["run", cfg]) == 1
        out = str(tmp_path / "out")
        with open(os.path.join(out, "manifest.jsonl")) as f:
            failed = [json.loads(line)["patch_id"] for line in f if '"failed"' in line]
        assert failed
        # the server recovers: only the dead letters are fetched again
        server.set_config(EmulatorConfig())
        server.reset_stats()
        assert main(["retry-failed", out]) == 0
        # the band-type probe, then the dead letters: one request each, or fewer where neighbours
        # share one (merged requests, fetch.patches_per_request); never a patch that was written
        assert 1 < server.stats()["requests_received"] <= len(failed) + 1
        server.reset_stats()
        assert main(["retry-failed", out]) == 0  # nothing left to retry: the probe only
        assert server.stats()["requests_received"] <= 1
    audit(cfg)


def run_and_kill(cmd, out_dir, cwd):
    """Start `cmd`, SIGKILL it once some patches are on disk; True if it was killed mid-way."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(glob.glob(os.path.join(out_dir, "npy", "*.npy"))) >= 5:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=120)
    return killed


def test_killed_raster_run_then_rerun_leaves_every_patch_once(tmp_path):
    cfg = raster_config(tmp_path, patch_size=8, max_concurrent_requests=2)  # ~4,000 small patches
    out = str(tmp_path / "out")
    assert run_and_kill([sys.executable, "-m", "pixelbeam", "run", cfg], out, ROOT)
    assert not os.path.exists(os.path.join(out, "manifest.jsonl"))  # killed before the manifest
    assert main(["run", cfg]) == 0
    rows = audit(cfg)
    assert len(rows) > 1000


def test_killed_earth_engine_run_then_rerun_leaves_every_patch_once(tmp_path):
    catalog_path = tmp_path / "catalog.json"
    catalog_path.write_text(json.dumps({"images": {ASSET: {"path": LANDSAT, "bands": ["B1", "B2", "B3"]}}}))
    server = subprocess.Popen([sys.executable, "-m", "pixelbeam.testing.ee_emulator", "--port", "0", "--catalog",
                               str(catalog_path), "--latency-s", "0.02", "--max-concurrent", "4"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip().split("=", 1)[1]
        cfg = ee_config(tmp_path, url)
        out = str(tmp_path / "out")
        assert run_and_kill([sys.executable, "-m", "pixelbeam", "run", cfg], out, ROOT)
        assert main(["run", cfg]) == 0
        audit(cfg)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_missing_png_is_written_again_without_a_second_tfrecord_example(tmp_path, capsys):
    cfg_path = raster_config(tmp_path)
    with open(cfg_path) as f:
        doc = yaml.safe_load(f)
    doc["output"]["formats"] = ["png", "tfrecord"]
    doc["output"]["visualization"] = {"bands": ["B1", "B2", "B3"], "min": 0, "max": 255}
    with open(cfg_path, "w") as f:
        yaml.safe_dump(doc, f)
    assert main(["run", cfg_path]) == 0
    pngs = sorted(glob.glob(str(tmp_path / "out" / "png" / "*.png")))
    os.remove(pngs[0])
    capsys.readouterr()
    assert main(["run", cfg_path]) == 0
    assert "requests 1 " in capsys.readouterr().out and os.path.exists(pngs[0])
    tf = pytest.importorskip("tensorflow")
    ids = [tf.train.Example.FromString(r.numpy()).features.feature["patch_id"].bytes_list.value[0]
           for r in tf.data.TFRecordDataset(glob.glob(str(tmp_path / "out" / "tfrecord" / "*")), compression_type="GZIP")]
    assert len(ids) == len(set(ids)) == len(pngs)


def test_a_refetched_patch_names_the_shard_that_holds_its_record(tmp_path):
    """Issue 15 item 7: a patch refetched because its NPY file was deleted keeps its TFRecord
    example in the first run's shard, and its new manifest row says so."""
    tf = pytest.importorskip("tensorflow")
    cfg = raster_config(tmp_path)
    out = str(tmp_path / "out")
    assert main(["run", cfg]) == 0
    lost = sorted(glob.glob(os.path.join(out, "npy", "*.npy")))[:2]
    for path in lost:
        os.remove(path)
    assert main(["run", cfg]) == 0
    rows = {r["patch_id"]: r for r in audit(cfg)}
    refetched = [os.path.basename(p)[:-4] for p in lost]
    runs = json.load(open(os.path.join(out, "dataset.json")))["runs"]
    assert len(runs) == 2 and all(rows[i]["run_id"] == runs[1] for i in refetched)
    for row in rows.values():
        if row["status"] != "written":
            continue
        (pattern,) = [f for f in row["files"] if "*" in f]
        shards = glob.glob(os.path.join(out, pattern))
        ids = {tf.train.Example.FromString(raw.numpy()).features.feature["patch_id"].bytes_list.value[0].decode()
               for raw in tf.data.TFRecordDataset(shards, compression_type="GZIP")}
        assert row["patch_id"] in ids, (row["patch_id"], pattern)
