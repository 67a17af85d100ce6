"""Splits: block-hashed or by region, with no pixel in two splits; per split in the plan,
manifest, TFRecord shard names and loaders (issue 14)."""

import collections
import glob
import hashlib
import json
import os

import numpy as np
import pytest
import shapely
import yaml
from hypothesis import given, settings, strategies as st

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.config import load_config
from pixelbeam.pipeline.plan import plan_summary, prepare_job
from pixelbeam.pipeline.resume import tfrecord_shard_run_id
from pixelbeam.transforms.outcomes import failed_row
from pixelbeam.transforms.patch import FailedPatch
from pixelbeam.transforms.planning.cells import count_by_split, plan_by_cells, plan_cells, project_regions
from pixelbeam.transforms.planning.grid import GridSpec, make_spec
from pixelbeam.transforms.planning.regions import Region
from pixelbeam.transforms.planning.sampling import Sample
from pixelbeam.transforms.planning.splits import (SplitError, SplitRule, assign_block_splits, block_unit,
                                                  region_split_values, windows_overlap)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")
RULE = SplitRule(fractions=(("train", 0.6), ("val", 0.2), ("test", 0.2)), block=2, seed=3)


def overlapping_pairs_in_different_splits(grid, rows, cols, splits):
    """Every pair of patches whose stored windows share a pixel but whose splits differ."""
    rows, cols, splits = np.asarray(rows), np.asarray(cols), np.asarray(splits, dtype=object)
    (w, h), (sx, sy), m = grid.patch_size, grid.stride, grid.margin
    dr = np.abs(rows[:, None] - rows[None, :]) * sy < h + 2 * m
    dc = np.abs(cols[:, None] - cols[None, :]) * sx < w + 2 * m
    bad = dr & dc & (splits[:, None] != splits[None, :])
    return [((rows[i], cols[i]), (rows[j], cols[j])) for i, j in zip(*np.nonzero(np.triu(bad)))]


@settings(max_examples=120, deadline=None, derandomize=True)
@given(w=st.integers(1, 12), h=st.integers(1, 12), overlap_frac=st.floats(0, 0.99), margin=st.integers(0, 3),
       block=st.integers(1, 6), seed=st.integers(0, 2 ** 31), train=st.floats(0.05, 0.9))
def test_no_two_overlapping_patches_are_in_different_splits(w, h, overlap_frac, margin, block, seed, train):
    overlap = int(overlap_frac * min(w, h))
    grid = GridSpec("EPSG:32618", (10.0, 10.0), patch_size=(w, h), overlap=overlap, margin=margin)
    rule = SplitRule(fractions=(("train", train), ("val", (1 - train) / 2), ("test", (1 - train) / 2)),
                     block=block, seed=seed)
    rr, cc = (a.ravel() for a in np.meshgrid(np.arange(-9, 9), np.arange(-9, 9), indexing="ij"))
    index, kept = assign_block_splits(rule, grid, grid.crs, rr, cc)
    assert overlapping_pairs_in_different_splits(grid, rr[kept], cc[kept], index[kept]) == []
    # a patch's split and guard depend on the patch alone, not on which patches are computed with it
    some = np.arange(0, rr.size, 7)
    again_index, again_kept = assign_block_splits(rule, grid, grid.crs, rr[some], cc[some])
    assert (again_index == index[some]).all() and (again_kept == kept[some]).all()
    if overlap == 0 and margin == 0:
        assert kept.all()  # nothing to guard against


@settings(max_examples=25, deadline=None, derandomize=True)
@given(size=st.integers(3, 8), overlap=st.integers(0, 5), margin=st.integers(0, 2), block=st.integers(1, 4),
       cell=st.integers(2, 6))
def test_planned_patches_through_cells_never_overlap_across_splits(size, overlap, margin, block, cell):
    overlap = min(overlap, size - 1)
    grid = GridSpec("EPSG:4326", (0.01, 0.01), patch_size=(size, size), overlap=overlap, margin=margin)
    regions = [Region("a", shapely.box(0, 0, 0.2, 0.15)), Region("b", shapely.Point(0.25, 0.25).buffer(0.08))]
    sample = Sample(split=RULE)
    specs = plan_by_cells(regions, grid, size=cell, sample=sample)  # small cells: neighbours in other cells
    assert overlapping_pairs_in_different_splits(grid, [s.row for s in specs], [s.col for s in specs],
                                                 [s.split for s in specs]) == []
    counts, left_out = count_by_split(plan_cells(regions, grid, cell), project_regions(regions, grid), grid, sample)
    assert counts == dict(collections.Counter(s.split for s in specs))
    assert left_out + len(specs) == len(plan_by_cells(regions, grid, size=cell))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(size=st.integers(3, 8), overlap=st.integers(0, 5), margin=st.integers(0, 2), gap=st.floats(-0.03, 0.03),
       cell=st.integers(2, 6))
def test_splits_by_region_keep_neighbouring_regions_apart(size, overlap, margin, gap, cell):
    overlap = min(overlap, size - 1)
    grid = GridSpec("EPSG:4326", (0.01, 0.01), patch_size=(size, size), overlap=overlap, margin=margin)
    regions = [Region("a", shapely.box(0, 0, 0.15, 0.15), {"fold": "train"}),
               Region("b", shapely.box(0.15 + gap, 0, 0.3, 0.15), {"fold": "test"}),
               Region("c", shapely.box(0, 0.15 + gap, 0.15, 0.25), {"fold": "train"})]
    rule = SplitRule(by="fold", region_splits=region_split_values(regions, "fold"))
    specs = plan_by_cells(regions, grid, size=cell, sample=Sample(split=rule))
    assert overlapping_pairs_in_different_splits(grid, [s.row for s in specs], [s.col for s in specs],
                                                 [s.split for s in specs]) == []
    assert all(s.split == {"a": "train", "b": "test", "c": "train"}[s.region_id] for s in specs)
    assert {s.split for s in specs} == {"train", "test"}


def test_found_case_margin_reaches_the_block_above():
    # kept by the home block's split alone, the patch at row 2 would share margin pixels with row 1 (block 0)
    grid = GridSpec("EPSG:32618", (10.0, 10.0), patch_size=(4, 4), overlap=0, margin=1)
    rule = SplitRule(fractions=(("train", 0.5), ("test", 0.5)), block=2, seed=0)
    rows = np.repeat(np.arange(0, 8), 8)
    cols = np.tile(np.arange(0, 8), 8)
    index, kept = assign_block_splits(rule, grid, grid.crs, rows, cols)
    assert not kept.all() and overlapping_pairs_in_different_splits(grid, rows[kept], cols[kept], index[kept]) == []
    assert windows_overlap(grid, (1, 0), (2, 0)) and not windows_overlap(grid, (0, 0), (2, 0))


def test_block_fractions_are_honoured_on_a_large_grid():
    grid = GridSpec("EPSG:32618", (10.0, 10.0), patch_size=(8, 8))
    rule = SplitRule(fractions=(("train", 0.7), ("val", 0.2), ("test", 0.1)), block=1, seed=0)
    rr, cc = (a.ravel() for a in np.meshgrid(np.arange(300), np.arange(300), indexing="ij"))
    index, kept = assign_block_splits(rule, grid, grid.crs, rr, cc)
    share = np.bincount(index, minlength=3) / index.size
    assert kept.all() and np.allclose(share, [0.7, 0.2, 0.1], atol=0.006), share  # 90,000 blocks: sd < 0.0016
    # block x block patches share their split
    rule8 = SplitRule(fractions=rule.fractions, block=8, seed=0)
    index8, _ = assign_block_splits(rule8, grid, grid.crs, rr, cc)
    blocks = collections.defaultdict(set)
    for r, c, k in zip(rr.tolist(), cc.tolist(), index8.tolist()):
        blocks[(r // 8, c // 8)].add(k)
    assert all(len(v) == 1 for v in blocks.values())
    assert np.allclose(np.bincount(index8, minlength=3) / index8.size, [0.7, 0.2, 0.1], atol=0.06)


def test_block_hash_is_stable_sha256_not_python_hash():
    digest = hashlib.sha256(b"7:epsg32618:-3:12").digest()
    assert block_unit(7, "EPSG:32618", -3, 12) == int.from_bytes(digest[:8], "big") / 2 ** 64
    assert block_unit(7, "EPSG:32618", -3, 12) != block_unit(8, "EPSG:32618", -3, 12)


def test_region_split_values_name_the_region_without_the_property():
    regions = [Region("a", shapely.box(0, 0, 1, 1), {"fold": "train"}), Region("b", shapely.box(2, 2, 3, 3), {})]
    with pytest.raises(SplitError, match="split.by: region 'b' has no property 'fold'"):
        region_split_values(regions, "fold")
    with pytest.raises(SplitError, match="cannot name a split"):
        region_split_values([Region("a", shapely.box(0, 0, 1, 1), {"fold": "my split"})], "fold")
    assert region_split_values([Region("a", shapely.box(0, 0, 1, 1), {"fold": 2})], "fold") == (("a", "2"),)


def test_failed_and_filtered_rows_carry_the_split():
    grid = GridSpec("EPSG:32618", (10.0, 10.0), patch_size=(4, 4))
    spec = make_spec(grid, grid.crs, 1, 2, "r")
    import dataclasses
    row = failed_row(FailedPatch(dataclasses.replace(spec, split="val"), "fetch", "HTTPError", "400"))
    assert row["split"] == "val" and row["status"] == "failed"
    assert "split" not in failed_row(FailedPatch(spec, "fetch", "HTTPError", "400"))


def test_shard_names_with_a_split_keep_their_run_id():
    assert tfrecord_shard_run_id("train-20200101T000000-ab12-00003-of-00008.tfrecord.gz") == "20200101T000000-ab12"
    assert tfrecord_shard_run_id("patches-20200101T000000-ab12-00000-of-00001.tfrecord.gz") == "20200101T000000-ab12"
    assert tfrecord_shard_run_id("patches-00000-of-00001.tfrecord.gz") is None


# ---- end to end ----

def split_config(tmp_path, regions=REGIONS, out="out", **extra):
    doc = {"source": {"uri": LANDSAT},
           "regions": regions,
           "grid": {"crs": "native", "scale": "native", "patch_size": 32, "overlap": 8},
           "output": {"path": str(tmp_path / out), "max_masked_ratio": 0.5},
           "mask": {"npy": True},
           "split": {"train": 0.6, "val": 0.2, "test": 0.2, "block": 3, "seed": 1},
           "fetch": {"max_concurrent_requests": 4, "max_requests_per_second": 10000}}
    doc.update(extra)
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def tfrecord_ids_by_split(out):
    from pixelbeam.transforms.formats.records import iter_examples
    by_split = collections.defaultdict(list)
    for shard in glob.glob(os.path.join(out, "tfrecord", "*.tfrecord.gz")):
        name = os.path.basename(shard).split("-")[0]
        for example in iter_examples([shard]):
            by_split[name].append(example["patch_id"][0].decode())
    return by_split


def test_split_run_writes_splits_everywhere_and_a_rerun_keeps_them(tmp_path, capsys):
    half = tmp_path / "half.geojson"
    doc = json.loads(open(REGIONS).read())
    half.write_text(json.dumps({**doc, "features": doc["features"][:2]}))
    cfg = split_config(tmp_path, regions=str(half))
    assert main(["plan", cfg, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert sum(plan["splits"].values()) == plan["patches"] and set(plan["splits"]) == {"train", "val", "test"}
    assert main(["run", cfg]) == 0
    full = split_config(tmp_path)  # more regions, same output: the rerun adds patches
    assert main(["run", full]) == 0
    out = str(tmp_path / "out")
    job = prepare_job(load_config(full))
    planned = {s.patch_id: s.split for s in job.specs}
    rows = [json.loads(line) for line in open(os.path.join(out, "manifest.jsonl"))]
    assert sorted(r["patch_id"] for r in rows) == sorted(planned)
    assert all(r["split"] == planned[r["patch_id"]] for r in rows)  # written and filtered rows alike
    assert {r["status"] for r in rows} == {"written", "filtered"}
    assert len({r["run_id"] for r in rows}) == 2
    written = {r["patch_id"]: r["split"] for r in rows if r["status"] == "written"}
    by_split = tfrecord_ids_by_split(out)  # both runs' shards survived the rerun
    assert set(by_split) <= {"train", "val", "test"}
    assert sorted(i for ids in by_split.values() for i in ids) == sorted(written)  # each patch once
    assert all(written[i] == name for name, ids in by_split.items() for i in ids)
    meta = json.load(open(os.path.join(out, "dataset.json")))
    assert meta["split"] == {"train": 0.6, "val": 0.2, "test": 0.2, "block": 3, "seed": 1}
    assert meta["patches_planned_per_split"] == plan_summary(job)["splits"] == dict(
        collections.Counter(planned.values()))
    # the loaders read one split
    from pixelbeam.transforms.loaders import NpyPatchDataset, TFRecordPatchDataset
    for name in ("train", "val", "test"):
        npy = NpyPatchDataset(out, split=name)
        samples = [npy[i] for i in range(len(npy))]
        assert sorted(x["patch_id"] for x in samples) == sorted(i for i, s in written.items() if s == name)
        assert {x["split"] for x in samples} == {name}
        records = list(TFRecordPatchDataset(out, split=name))
        assert sorted(x["patch_id"] for x in records) == sorted(by_split.get(name, []))
        assert {x["split"] for x in records} <= {name}
    assert len(NpyPatchDataset(out)) == len(written)
    with pytest.raises(ValueError, match="split='holdout': not a split of this output; its splits are test, train, val"):
        NpyPatchDataset(out, split="holdout")
    try:
        from pixelbeam.transforms.loaders import tf_dataset
        import tensorflow  # noqa: F401
    except ImportError:
        return
    train = sorted(i for i, s in written.items() if s == "train")
    ds = tf_dataset(out, split="train", as_dict=True)
    assert len(ds) == len(train) and sorted(e["patch_id"].numpy().decode() for e in ds) == train


def test_unsplit_outputs_keep_their_names(tmp_path):
    cfg = split_config(tmp_path)
    with open(cfg) as f:
        doc = yaml.safe_load(f)
    del doc["split"]
    with open(cfg, "w") as f:
        yaml.safe_dump(doc, f)
    assert main(["run", cfg]) == 0
    out = tmp_path / "out"
    assert all(os.path.basename(p).startswith("patches-") for p in glob.glob(str(out / "tfrecord" / "*")))
    rows = [json.loads(line) for line in open(out / "manifest.jsonl")]
    assert not any("split" in r for r in rows)
    meta = json.load(open(out / "dataset.json"))
    assert "split" not in meta and "splits" not in meta["tfrecord"] and list(meta["stats"]) == ["all"]
    with pytest.raises(ValueError, match="it has no splits"):
        from pixelbeam.transforms.loaders import NpyPatchDataset
        NpyPatchDataset(str(out), split="train")
