"""The plan staged as files (Dataflow: under --temp_location) instead of inside the job graph:
the same outputs as an embedded plan, a graph that does not grow with the points, and the
files read back from Cloud Storage."""

import glob
import json
import os

import apache_beam as beam
import numpy as np
import pytest
import yaml

from pixelbeam.pipeline.runner import pipeline_options
from pixelbeam.pipeline.config import load_config
from pixelbeam.pipeline.graph import build_pipeline
from pixelbeam.pipeline.runner import fetch_settings
from pixelbeam.transforms.planning.staged import StageTo
from pixelbeam.pipeline.plan import prepare_job
from pixelbeam.pipeline.tables.graph import build_table_pipeline
from pixelbeam.pipeline.tables.plan import prepare_table_job
from pixelbeam.transforms.planning import staged
from tests.test_gcs import gcs  # noqa: F401  (the Cloud Storage emulator fixture)
from tests.test_point_table import read_table, write_collection, write_config, write_points

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")


def points_file(tmp_path, n, seed=0):
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(-78.2, -77.4, n), rng.uniform(24.2, 24.9, n)
    feats = [{"type": "Feature", "properties": {"name": f"p{i}", "label": i % 5},
              "geometry": {"type": "Point", "coordinates": [float(x), float(y)]}} for i, (x, y) in enumerate(zip(lon, lat))]
    path = tmp_path / f"points-{n}.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return str(path)


def patch_job(tmp_path, regions, name):
    doc = {"source": {"uri": LANDSAT}, "regions": regions, "grid": {"patch_size": 16},
           "sample": {"centered_on_points": True, "label_property": "label"},
           "output": {"path": str(tmp_path / name), "formats": ["npy"]}}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return prepare_job(load_config(str(tmp_path / f"{name}.yaml")))


def graph_bytes(pipeline):
    return len(pipeline.to_runner_api().SerializeToString())


def test_a_staged_plan_writes_the_same_patches(tmp_path):
    regions = points_file(tmp_path, 300)
    outputs = {}
    for name, stage_to in (("embedded", None), ("staged", StageTo(str(tmp_path / "plan")))):
        job = patch_job(tmp_path, regions, name)
        build_pipeline(job, beam.Pipeline(options=pipeline_options([])), stage_to=stage_to).run().wait_until_finish()
        rows = [json.loads(line) for line in open(tmp_path / name / "manifest.jsonl")]
        outputs[name] = {r["patch_id"]: (r["status"], r.get("label")) for r in rows}
        for r in rows:
            if r["status"] == "written":
                outputs[name][r["patch_id"] + ".npy"] = np.load(tmp_path / name / "npy" / f"{r['patch_id']}.npy").tobytes()
    assert len(outputs["embedded"]) > 300 and outputs["staged"] == outputs["embedded"]
    names = sorted(os.path.basename(p).split("-")[0] for p in glob.glob(str(tmp_path / "plan" / "*.pkl.gz")))
    assert names == ["cells", "regions", "sample"]


def test_a_staged_table_writes_the_same_rows(tmp_path):
    files, profile = write_collection(tmp_path, 3)
    cells = [(r, c) for r in range(0, 50, 7) for c in range(0, 60, 9)]
    cfg, _ = write_config(tmp_path, files, write_points(tmp_path, profile, cells), group_size=8)
    job = prepare_table_job(load_config(cfg))
    options = pipeline_options([])
    rows = {}
    for name, stage_to in (("embedded", None), ("staged", StageTo(str(tmp_path / "plan"), write=True))):
        out = tmp_path / name
        job = prepare_table_job(load_config(cfg).model_copy(update={"output": load_config(cfg).output.model_copy(
            update={"path": str(out)})}))
        build_table_pipeline(job, beam.Pipeline(options=options), fetch_settings(job, options), run_id="r1",
                             stage_to=stage_to).run().wait_until_finish()
        rows[name] = sorted(read_table(str(out)), key=lambda r: (r["point_id"], r["id"]))
    assert len(rows["embedded"]) == len(cells) * 3 and rows["staged"] == rows["embedded"]
    assert glob.glob(str(tmp_path / "plan" / "groups-*.pkl.gz"))


def test_a_staged_graph_does_not_grow_with_the_points(tmp_path):
    sizes = {}
    for n in (200, 4000):
        job = patch_job(tmp_path, points_file(tmp_path, n, seed=n), f"p{n}")
        sizes[n] = (graph_bytes(build_pipeline(job, beam.Pipeline())),
                    graph_bytes(build_pipeline(job, beam.Pipeline(), stage_to=StageTo(str(tmp_path / "x"), False))))
    (small_embedded, small_staged), (big_embedded, big_staged) = sizes[200], sizes[4000]
    assert big_embedded > small_embedded + 50_000  # the embedded plan grows with the points (held as columns)
    assert abs(big_staged - small_staged) < 2_000 and big_staged < big_embedded - 50_000
    assert not os.path.exists(tmp_path / "x")  # write=False: only named


def test_staged_files_on_cloud_storage_read_back(gcs):
    from tests.test_gcs import BUCKET
    value = {"cells": list(range(50_001)), "text": "é"}
    handle = staged.stage(value, f"gs://{BUCKET}/tmp/pixelbeam-plan-r1", "plan")
    staged._load.cache_clear()
    assert staged.resolve(handle) == value
    chunks = staged.stage_chunks(list(range(45_000)), f"gs://{BUCKET}/tmp/pixelbeam-plan-r1", "cells")
    assert len(chunks) == 3 and [x for c in chunks for x in staged.unstage_items(c)] == list(range(45_000))
    from pixelbeam.pipeline.dataflow import remove_staging
    remove_staging(StageTo(f"gs://{BUCKET}/tmp/pixelbeam-plan-r1"))
    assert not list(gcs.list_blobs(BUCKET, prefix="tmp/pixelbeam-plan-r1/"))


def test_a_staged_table_graph_does_not_grow_with_the_points(tmp_path):
    options = pipeline_options([])
    sizes = []
    for n in (100, 3000):
        doc = {"source": {"uri": [LANDSAT]}, "regions": points_file(tmp_path, n, seed=n),
               "table": {"times": ["2020-01-01"], "point_id_property": "name"}, "output": {"path": str(tmp_path / f"t{n}")}}
        (tmp_path / f"t{n}.yaml").write_text(yaml.safe_dump(doc))
        job = prepare_table_job(load_config(str(tmp_path / f"t{n}.yaml")))
        named = StageTo(str(tmp_path / "x"), write=False)
        sizes.append((graph_bytes(build_table_pipeline(job, beam.Pipeline(), fetch_settings(job, options))),
                      graph_bytes(build_table_pipeline(job, beam.Pipeline(), fetch_settings(job, options), stage_to=named))))
    (small_embedded, small_staged), (big_embedded, big_staged) = sizes
    assert big_embedded > small_embedded + 100_000
    assert abs(big_staged - small_staged) < 2_000  # no closure carries the job's groups into the graph
