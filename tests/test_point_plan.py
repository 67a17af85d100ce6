"""A run's point regions planned and freed on the launcher, expanded on the workers from each
cell's own points (transforms/planning/point_plan.py, pipeline/point_run.py, issue 17.3): the same
patches, labels, splits and pixels as the whole point set in the graph (the former way), staged
or embedded; the columns really are freed; a rerun resumes (the digest is the same)."""

import gc
import glob
import json
import os
import weakref

import apache_beam as beam
import numpy as np
import pytest

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.graph import build_pipeline
from pixelbeam.pipeline.plan import prepare_job
from pixelbeam.pipeline.point_run import lean_point_job
from pixelbeam.pipeline.resume import plan_digest
from pixelbeam.pipeline.runner import pipeline_options
from pixelbeam.transforms.planning import staged
from pixelbeam.transforms.planning.point_plan import PlannedPoints, PointCell
from pixelbeam.transforms.planning.point_set import PointRegions
from pixelbeam.transforms.planning.staged import StageTo
from tests.test_point_columns import config, points, write

SAMPLES = {"centered": {"centered_on_points": True},
           "per_region": {"per_region": 1, "seed": 3, "label_property": "n"},
           "per_class": {"per_class": 12, "label_property": "cls", "seed": 5, "centered_on_points": True},
           "float_label_block_split": {"label_property": "x"}}


def outputs(folder):
    """{patch id: (status, region, label, split, npy bytes)} of an output folder."""
    rows = [json.loads(line) for line in open(os.path.join(folder, "manifest.jsonl"))]
    out = {}
    for r in rows:
        npy = os.path.join(folder, "npy", f"{r['patch_id']}.npy")
        out[r["patch_id"]] = (r["status"], r["region_id"], r.get("label"), r.get("split"),
                              np.load(npy).tobytes() if r["status"] == "written" else None)
    return out


def former_way(tmp_path, cfg):
    """The whole point set in the graph, each worker projecting it (what a run did before)."""
    job = prepare_job(cfg)
    assert isinstance(job.regions, PointRegions)
    build_pipeline(job, beam.Pipeline(options=pipeline_options([]))).run().wait_until_finish()
    return job, outputs(cfg.output.path)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_point_cells_give_the_patches_of_the_whole_point_set(tmp_path, name):
    sample = dict(SAMPLES[name])
    split = {"train": 0.5, "val": 0.5, "block": 2, "seed": 1} if name.startswith("float") else None
    regions = write(tmp_path, "geojson", points(seed=4, n=1200))
    before_dir, after_dir = tmp_path / "before", tmp_path / "after"
    before_dir.mkdir(), after_dir.mkdir()
    job, before = former_way(before_dir, config(before_dir, regions, split=split, **dict(sample)))
    lean = lean_point_job(job)
    assert isinstance(lean.regions, PlannedPoints) and isinstance(job.regions, PointRegions)  # a copy: job kept
    assert plan_digest(lean) == plan_digest(job) and len(lean.regions) == len(job.regions)
    assert [s.patch_id for s in lean.specs] == [s.patch_id for s in job.specs]
    cfg = config(after_dir, regions, split=split, **dict(sample))
    lean = lean_point_job(prepare_job(cfg))
    plan_dir = tmp_path / "plan"
    build_pipeline(lean, beam.Pipeline(options=pipeline_options([])),
                   stage_to=StageTo(str(plan_dir))).run().wait_until_finish()
    after = outputs(cfg.output.path)
    assert after == before and len(before) == job.planned >= 36
    if "label_property" in sample:
        assert all(v[2] is not None for v in after.values())
    if split:
        assert {v[3] for v in after.values()} == {"train", "val"}
    chunks = glob.glob(str(plan_dir / "cells-*.pkl.gz"))
    assert chunks and all(isinstance(item, PointCell) for c in chunks for item in staged.resolve(staged.Staged(c)))
    assert [staged.resolve(staged.Staged(p)) for p in glob.glob(str(plan_dir / "regions-*"))] == [()]  # no point


def test_the_launcher_frees_the_point_columns(tmp_path):
    cfg = config(tmp_path, write(tmp_path, "geojson", points(seed=2, n=800)), per_class=5, label_property="cls")
    job = prepare_job(cfg)
    columns, labels = weakref.ref(job.regions), len(job.sample.labels)
    assert labels > 100
    lean_point_job(job, in_place=True)
    gc.collect()
    assert columns() is None and isinstance(job.regions, PlannedPoints) and job.projected is None
    assert job.sample.labels == () and job.sample.thresholds  # labels travel with the cells, thresholds stay
    assert sum(len(c.owners()) for c in job.regions.cells) == labels


def test_a_point_run_resumes_and_matches_the_former_way(tmp_path, capsys):
    regions = write(tmp_path, "csv", points(seed=7, n=900))
    before_dir, after_dir = tmp_path / "before", tmp_path / "after"
    before_dir.mkdir(), after_dir.mkdir()
    sample = {"per_class": 20, "label_property": "cls", "seed": 2}
    _, before = former_way(before_dir, config(before_dir, regions, **dict(sample)))
    config(after_dir, regions, **dict(sample))
    for _ in range(2):
        assert main(["run", str(after_dir / "job.yaml")]) == 0
    assert "nothing to do" in capsys.readouterr().out  # the second run: the digest of the freed columns matches
    assert outputs(str(after_dir / "out")) == before
