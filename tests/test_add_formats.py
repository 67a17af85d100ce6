"""Adding output formats to a finished output (issue 15 item 12): the new formats are written from
the stored NPY patches, not fetched, and equal what a fresh run with every format writes; where
the stored patches cannot give them, a one-line refusal says why."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import rasterio
import yaml

from pixelbeam.pipeline.cli import main
from tests.outputs_compare import RUN_IN_SHARD, dataset_description, examples_by_id, manifest_by_id, per_patch_files
from tests.test_resume import LANDSAT, REGIONS, audit

wds = pytest.importorskip("webdataset")


def write_config(tmp_path, raster, out, formats, bands_axis=0, mask_npy=True, margin=2):
    doc = {"source": {"uri": str(raster)}, "regions": REGIONS,
           "grid": {"crs": "native", "scale": "native", "patch_size": 40, "margin": margin},
           "output": {"path": str(tmp_path / out), "formats": list(formats), "max_masked_ratio": 0.9,
                      "bands_axis": bands_axis, "shard_size_mb": 0.05},
           "mask": {"npy": mask_npy}, "fetch": {"max_concurrent_requests": 2}}
    cfg = tmp_path / f"{out}.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return str(cfg)


def set_formats(cfg, formats):
    with open(cfg) as f:
        doc = yaml.safe_load(f)
    doc["output"]["formats"] = list(formats)
    with open(cfg, "w") as f:
        f.write(yaml.safe_dump(doc))


def replace_pixels(path):
    """The raster at `path` with other pixels (255 - value) and the same georeferencing: a
    rerun that fetched would write other data than the stored patches hold."""
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(255 - data)


def samples_by_key(out):
    """{patch_id: (shard name, {member: bytes or row})} of every WebDataset sample (the real package)."""
    shards = sorted(glob.glob(os.path.join(out, "shards", "*.tar")))
    found = {}
    for sample in wds.WebDataset(shards, shardshuffle=False):
        key = sample["__key__"]
        assert key not in found, f"{key} is in the shards twice"
        row = json.loads(sample["json"])
        row.pop("run_id")
        row["files"] = [RUN_IN_SHARD.sub("patches-RUN-", f) for f in row["files"]]
        found[key] = (os.path.basename(sample["__url__"]), {"npy": sample["npy"], "mask.npy": sample["mask.npy"],
                                                             "json": row})
    return found


def rows(out):
    with open(os.path.join(out, "manifest.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("bands_axis", [0, -1])
def test_added_formats_are_written_from_the_stored_npy_as_a_fresh_run_writes_them(tmp_path, capsys, bands_axis):
    raster = tmp_path / "source.tif"
    shutil.copy(LANDSAT, raster)
    all_formats = ["npy", "tfrecord", "geotiff", "webdataset"]
    cfg = write_config(tmp_path, raster, "added", ["npy"], bands_axis)
    assert main(["run", cfg]) == 0
    fresh = write_config(tmp_path, raster, "fresh", all_formats, bands_axis)
    assert main(["run", fresh]) == 0
    replace_pixels(raster)  # from here on a fetch would give other pixels
    stored = per_patch_files(str(tmp_path / "added"), "npy")
    stamps = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(tmp_path / "added" / "npy" / "*"))}
    set_formats(cfg, all_formats)
    capsys.readouterr()
    assert main(["run", cfg]) == 0
    out = capsys.readouterr().out
    written = sum(r["status"] == "written" for r in rows(str(tmp_path / "added")))
    assert f"{written} written patches read back from their NPY files (not fetched), 0 fetched" in out, out
    assert "requests 0 " in out, out
    a, b = str(tmp_path / "added"), str(tmp_path / "fresh")
    assert per_patch_files(a, "npy") == stored == per_patch_files(b, "npy")
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps  # read, not written again
    assert per_patch_files(a, "geotiff") == per_patch_files(b, "geotiff")  # byte for byte
    with rasterio.open(glob.glob(os.path.join(a, "geotiff", "*.tif"))[0]) as src:
        assert src.read().shape[0] == 3 and src.read_masks(1).any()
    ex_a, ex_b = examples_by_id(a), examples_by_id(b)
    assert sorted(ex_a) == sorted(ex_b) and len(ex_a) == written
    for pid, features in ex_a.items():
        assert sorted(features) == sorted(ex_b[pid])
        for name, value in features.items():
            np.testing.assert_array_equal(np.asarray(value), np.asarray(ex_b[pid][name]), err_msg=f"{pid} {name}")
    samples_a, samples_b = samples_by_key(a), samples_by_key(b)
    assert sorted(samples_a) == sorted(samples_b) and len(samples_a) == written
    for key, (shard, members) in samples_a.items():
        other = samples_b[key][1]
        assert members["npy"] == other["npy"] and members["mask.npy"] == other["mask.npy"], key
        for row in (members["json"], other["json"]):
            row.pop("requests"), row.pop("attempts"), row.pop("bytes")  # the fresh run fetched once more
        assert members["json"] == other["json"], key
    manifest_a, manifest_b = manifest_by_id(a), manifest_by_id(b)
    assert manifest_a == manifest_b  # every row names its files and shards as a fresh run's does
    assert dataset_description(a) == dataset_description(b)  # statistics counted once
    check_rows_point_at_real_shards(a)
    audit(cfg)
    capsys.readouterr()
    assert main(["run", cfg]) == 0 and "nothing to do" in capsys.readouterr().out


def check_rows_point_at_real_shards(out):
    """Each written row's TFRecord pattern matches the one shard holding its example, and its
    WebDataset shard (if any) is the one holding its sample."""
    import fnmatch
    import tensorflow as tf
    held = {}
    for shard in glob.glob(os.path.join(out, "tfrecord", "*.tfrecord.gz")):
        for raw in tf.data.TFRecordDataset([shard], compression_type="GZIP"):
            pid = tf.train.Example.FromString(raw.numpy()).features.feature["patch_id"].bytes_list.value[0].decode()
            assert pid not in held, f"{pid} is in two TFRecord examples"
            held[pid] = os.path.relpath(shard, out)
    tars = [f for r in rows(out) for f in r["files"] if f.startswith("shards/")]
    samples = samples_by_key(out) if tars else {}
    for row in rows(out):
        if row["status"] != "written":
            continue
        (pattern,) = [f for f in row["files"] if "*" in f]
        assert fnmatch.fnmatch(held[row["patch_id"]], pattern), (row["patch_id"], pattern)
        if tars:
            (tar,) = [f for f in row["files"] if f.startswith("shards/")]
            assert samples[row["patch_id"]][0] == os.path.basename(tar)


def test_adding_geotiff_keeps_each_row_on_the_tfrecord_shard_of_the_run_that_wrote_it(tmp_path, capsys):
    """An output with NPY and TFRecord gains GeoTIFF: the TFRecords are not written again, and
    every row still names the first run's shards (issue 15 item 7's rule)."""
    raster = tmp_path / "source.tif"
    shutil.copy(LANDSAT, raster)
    cfg = write_config(tmp_path, raster, "out", ["npy", "tfrecord"])
    assert main(["run", cfg]) == 0
    first = per_patch_files(str(tmp_path / "out"), "tfrecord")
    replace_pixels(raster)
    set_formats(cfg, ["npy", "tfrecord", "geotiff"])
    capsys.readouterr()
    assert main(["run", cfg]) == 0
    assert "0 fetched in this run" in capsys.readouterr().out
    now = per_patch_files(str(tmp_path / "out"), "tfrecord")
    assert {name: now[name] for name in first} == first  # the first run's shards as they were
    import tensorflow as tf
    for name in set(now) - set(first):  # Beam's sink leaves this run an empty shard, as on any resume
        assert not list(tf.data.TFRecordDataset([str(tmp_path / "out" / "tfrecord" / name)], compression_type="GZIP"))
    written = [r for r in rows(str(tmp_path / "out")) if r["status"] == "written"]
    assert all(os.path.exists(tmp_path / "out" / f"geotiff/{r['patch_id']}.tif") for r in written)
    (pattern,) = {f for r in written for f in r["files"] if "*" in f}
    assert sorted(glob.glob(str(tmp_path / "out" / pattern))) == sorted(str(tmp_path / "out" / "tfrecord" / n) for n in first)
    audit(cfg)


def test_without_stored_masks_only_fully_valid_patches_are_restored(tmp_path, capsys):
    """mask.npy off: a patch whose every pixel is valid has its mask in its row (valid_fraction 1);
    the others are fetched again (and written whole) rather than written with a guessed mask."""
    raster = tmp_path / "source.tif"
    shutil.copy(LANDSAT, raster)
    cfg = write_config(tmp_path, raster, "out", ["npy"], mask_npy=False, margin=0)
    assert main(["run", cfg]) == 0
    written = [r for r in rows(str(tmp_path / "out")) if r["status"] == "written"]
    full = sum(r["valid_fraction"] == 1.0 for r in written)
    assert 0 < full < len(written)
    set_formats(cfg, ["npy", "tfrecord"])
    capsys.readouterr()
    assert main(["run", cfg]) == 0
    out = capsys.readouterr().out
    assert f"{full} written patches read back from their NPY files (not fetched), {len(written) - full} fetched" in out
    audit(cfg)


def test_adding_a_format_without_stored_npy_is_refused_in_one_line(tmp_path, capsys):
    raster = tmp_path / "source.tif"
    shutil.copy(LANDSAT, raster)
    cfg = write_config(tmp_path, raster, "out", ["tfrecord"])
    assert main(["run", cfg]) == 0
    before = sorted(glob.glob(str(tmp_path / "out" / "**"), recursive=True))
    set_formats(cfg, ["tfrecord", "geotiff"])
    capsys.readouterr()
    assert main(["run", cfg]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds patches without geotiff" in err, err
    assert "formats ['tfrecord'] stored none" in err and "--overwrite" in err, err
    assert sorted(glob.glob(str(tmp_path / "out" / "**"), recursive=True)) == before


def test_a_killed_run_that_adds_formats_then_its_rerun_leave_every_patch_once(tmp_path):
    """Killed while writing the added formats: the rerun cleans what the killed run left (its
    shards) and writes every added format once, still from the stored patches."""
    import signal
    import subprocess
    import sys
    import time
    from tests.test_resume import ROOT
    raster = tmp_path / "source.tif"
    shutil.copy(LANDSAT, raster)
    cfg = write_config(tmp_path, raster, "out", ["npy"], margin=0)
    set_patch_size(cfg, 8)  # ~4,000 small patches
    assert main(["run", cfg]) == 0
    set_formats(cfg, ["npy", "tfrecord", "geotiff"])
    proc = subprocess.Popen([sys.executable, "-m", "pixelbeam", "run", cfg], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(glob.glob(str(tmp_path / "out" / "geotiff" / "*.tif"))) >= 5:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=300)
    if not killed:
        pytest.skip("the run finished before it could be killed")
    replace_pixels(raster)
    assert main(["run", cfg]) == 0
    written = audit(cfg)
    written = [r for r in written if r["status"] == "written"]
    assert len(written) > 1000
    assert all(os.path.exists(tmp_path / "out" / f"geotiff/{r['patch_id']}.tif") for r in written)
    check_rows_point_at_real_shards(str(tmp_path / "out"))


def set_patch_size(cfg, size):
    with open(cfg) as f:
        doc = yaml.safe_load(f)
    doc["grid"]["patch_size"] = size
    with open(cfg, "w") as f:
        f.write(yaml.safe_dump(doc))


def test_a_stored_patch_reads_back_as_written():
    """The Beam-free core: a patch's NPY and mask bytes, in either layout, read back into the
    Patch they were encoded from; a row without a stored mask is restorable only when all valid."""
    from pixelbeam.transforms.formats.encode import npy_bytes
    from pixelbeam.transforms.formats.files import npy_layout
    from pixelbeam.transforms.formats.stored import StoredLayout, StoredPatchError, restorable, stored_patch
    from pixelbeam.transforms.patch import PatchSpec
    spec = PatchSpec("p1", "r", "EPSG:32618", (30.0, 0, 0, 0, -30.0, 0), 4, 3, margin=1)
    data = np.arange(2 * 5 * 6, dtype=np.uint16).reshape(2, 5, 6)
    mask = np.ones((5, 6), dtype=bool)
    mask[0, 0] = False
    row = {"patch_id": "p1", "status": "written", "width": 4, "height": 3, "margin": 1, "valid_fraction": 0.966667,
           "files": ["npy/p1.npy", "npy/p1.mask.npy"], "requests": 2, "attempts": 3, "bytes": 120}
    for axis in (0, -1):
        files = {"npy/p1.npy": npy_bytes(npy_layout(data, axis)), "npy/p1.mask.npy": npy_bytes(mask.astype(np.uint8))}
        layout = StoredLayout(("npy/{patch_id}.npy",), tfrecord=True, webdataset=False, band_names=("a", "b"),
                              bands_axis=axis)
        patch = stored_patch(spec, row, layout, files.__getitem__)
        np.testing.assert_array_equal(patch.data, data)
        np.testing.assert_array_equal(patch.mask, mask)
        assert (patch.requests, patch.retries, patch.bytes, patch.band_names) == (2, 1, 120, ("a", "b"))
        assert layout.lacks(row) == ["tfrecord"]
    assert restorable(row)
    no_mask = {**row, "files": ["npy/p1.npy"]}
    assert not restorable(no_mask) and restorable({**no_mask, "valid_fraction": 1.0})
    assert not restorable({**no_mask, "valid_fraction": 1.0, "times": ["2020-01-01"]})  # a stack's mask shape is unknown
    with pytest.raises(StoredPatchError, match="not 3 bands"):
        stored_patch(spec, row, StoredLayout((), False, False, ("a", "b", "c")), files.__getitem__)
