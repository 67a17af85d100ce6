"""Layers from an Earth Engine source (through the local emulator and the real `ee` client), a
raster file and a vector file in one job, and limits that fit each source (issue 16): Earth
Engine's quota for Earth Engine, none for a local file, each layer under its own throttler."""

import json
import os
import threading
import time

import apache_beam as beam
import numpy as np
import pytest
import rasterio
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from rasterio.windows import Window

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.config import ConfigError, parse_config
from pixelbeam.pipeline.limits import REMOTE_CONCURRENT, job_limits, local_concurrency, quota_fetch, source_kind
from pixelbeam.pipeline.runner import layer_fetch_settings
from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
from pixelbeam.transforms.fetch import FAILED, FetchLayer, FetchLayers, FetchSettings, _WorkerFetcher
from pixelbeam.transforms.planning.grid import GridSpec, make_spec
from pixelbeam.transforms.sources.base import PartResult, SourceInfo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
LABELS = os.path.join(ROOT, "configs", "segmentation_labels.geojson")
ASSET = "projects/demo/assets/landsat"
with rasterio.open(LANDSAT) as _ds:
    NATIVE = {"crs": "EPSG:32618", "scale": [_ds.transform.a, -_ds.transform.e],
              "origin": [_ds.transform.c, _ds.transform.f]}


@pytest.fixture(scope="module")
def emulator():
    config = EmulatorConfig(max_concurrent=2, latency_s=0.2)  # a 3rd request in flight would get a 429
    with EmulatorServer({"images": {ASSET: {"path": LANDSAT, "bands": ["B1", "B2", "B3"]}}}, config) as server:
        yield server


def mixed_config(tmp_path, url):
    doc = {"layers": {
        "ee": {"kind": "earthengine", "role": "input", "asset": ASSET, "url": url, "credentials": "anonymous",
               "project": "demo", "fetch": {"max_concurrent_requests": 2}},
        "scene": {"kind": "raster", "role": "input", "uri": LANDSAT},
        "labels": {"kind": "vector", "role": "target", "path": LABELS, "property": "class",
                   "classes": {"water": 1, "land": 2, "cloud": 3}}},
        "regions": [-77.95, 24.55, -77.7, 24.8],
        "grid": {**NATIVE, "patch_size": 32},
        "output": {"path": str(tmp_path / "out"), "formats": ["npy"]},
        "fetch": {"timeout_s": 20}}
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_earth_engine_raster_and_vector_layers_in_one_job(tmp_path, emulator, capsys):
    cfg = mixed_config(tmp_path, emulator.url)
    assert main(["plan", cfg]) == 0
    plan = capsys.readouterr().out
    assert "ee: 2 concurrent for the whole job (layers.ee.fetch.max_concurrent_requests), 100 requests/s" in plan
    assert f"scene: {local_concurrency()} concurrent per machine (local file: the CPU count), no rate limit" in plan
    assert "labels: none: rasterized locally, no request" in plan
    emulator.reset_stats()
    assert main(["run", cfg]) == 0
    stats = emulator.stats()
    out = str(tmp_path / "out")
    rows = [json.loads(line) for line in open(os.path.join(out, "manifest.jsonl"))]
    assert len(rows) >= 6 and {r["status"] for r in rows} == {"written"}
    assert sum(stats["rejected_429"].values()) == 0 and stats["peak_in_flight"] == 2  # the ee layer's own limit
    assert stats["answered_200"] == len(rows) + 1  # the launcher's probe, then one per patch for ee alone
    with rasterio.open(LANDSAT) as ds:
        for row in rows:
            pid = row["patch_id"]
            ee, scene = (np.load(os.path.join(out, "npy", name, f"{pid}.npy")) for name in ("ee", "scene"))
            col, r = ~ds.transform * (row["transform"][2], row["transform"][5])
            expected = ds.read(window=Window(round(col), round(r), 32, 32), boundless=True, fill_value=0)
            np.testing.assert_array_equal(ee, expected)  # the emulator serves the same file
            np.testing.assert_array_equal(scene, expected)
            assert np.load(os.path.join(out, "npy", "labels", f"{pid}.npy")).shape == (1, 32, 32)
            assert row["layers"]["ee"]["requests"] == 1 and row["layers"]["scene"]["requests"] == 1


def test_limits_fit_each_source_and_combine_with_the_top_level_fetch(tmp_path):
    doc = yaml.safe_load(open(mixed_config(tmp_path, "http://127.0.0.1:9")))
    doc["layers"]["cog"] = {"kind": "raster", "role": "input", "uri": "/vsicurl/https://example.com/a.tif"}
    doc["layers"]["ee"].pop("fetch")
    limits = job_limits(parse_config(doc))
    ee, scene, cog = limits["ee"], limits["scene"], limits["cog"]
    assert (ee.max_concurrent, ee.shared_by, ee.max_requests_per_second) == (40, "job", 100.0)  # EE's quota
    assert (scene.max_concurrent, scene.shared_by, scene.max_requests_per_second) == (local_concurrency(), "machine",
                                                                                      None)
    assert (cog.max_concurrent, cog.shared_by, cog.max_requests_per_second) == (REMOTE_CONCURRENT, "process", None)
    assert limits["labels"] is None and all(l.timeout_s == 20 for l in (ee, scene, cog))
    dataflow = PipelineOptions(["--runner=DataflowRunner", "--max_num_workers=4",
                                "--experiments=no_use_multiple_sdk_containers"])
    per_process = layer_fetch_settings(type("J", (), {"config": parse_config(doc)}), dataflow)
    assert (per_process["ee"].max_concurrent, per_process["ee"].max_requests_per_second) == (10, 25.0)
    assert per_process["cog"].max_concurrent == REMOTE_CONCURRENT and per_process["cog"].max_requests_per_second is None
    assert per_process["labels"] is None
    # a top-level value applies to every layer (for the whole job), a layer's own value wins
    doc["fetch"] = {"max_concurrent_requests": 8, "max_requests_per_second": 50}
    doc["layers"]["cog"]["fetch"] = {"max_requests_per_second": "unlimited", "max_attempts": 3}
    limits = job_limits(parse_config(doc))
    assert (limits["scene"].max_concurrent, limits["scene"].shared_by, limits["scene"].max_requests_per_second) == (
        8, "job", 50.0)
    assert (limits["cog"].max_concurrent, limits["cog"].max_requests_per_second, limits["cog"].max_attempts) == (
        8, None, 3)
    assert quota_fetch(parse_config(doc)).max_concurrent_requests == 8  # Dataflow sizes its pool by the tightest


def test_earth_engine_layers_of_one_project_share_one_quota(tmp_path):
    doc = yaml.safe_load(open(mixed_config(tmp_path, "http://127.0.0.1:9")))
    doc["layers"]["ee2"] = {**doc["layers"]["ee"], "role": "target", "fetch": {"max_concurrent_requests": 5}}
    with pytest.raises(ConfigError, match=r"^layers.ee2.fetch: layers 'ee' and 'ee2' share one Earth Engine project"):
        job_limits(parse_config(doc))
    doc["layers"]["ee2"]["fetch"] = {"max_concurrent_requests": 2}
    settings = layer_fetch_settings(type("J", (), {"config": parse_config(doc)}), PipelineOptions([]))
    assert settings["ee"].quota_pool == settings["ee2"].quota_pool != "" and settings["scene"].quota_pool == ""


@pytest.mark.parametrize("uri, kind", [("/data/a.tif", "local"), ("/vsimem/a.tif", "local"),
                                       ("/vsizip//data/a.zip/a.tif", "local"), ("/vsicurl/https://h/a.tif", "remote"),
                                       ("/vsigs/bucket/a.tif", "remote"), ("https://h/a.tif", "remote"),
                                       ("gs://bucket/a.tif", "remote"), ("/vsizip//vsis3/b/a.zip/a.tif", "remote")])
def test_a_raster_is_local_or_remote_by_its_path(uri, kind):
    config = parse_config({"source": {"uri": uri}, "regions": [0, 0, 1, 1], "output": {"path": "/tmp/x"}})
    assert source_kind(config.source) == kind


def test_a_local_file_is_no_longer_throttled_by_the_earth_engine_quota():
    config = parse_config({"source": {"uri": LANDSAT}, "regions": [0, 0, 1, 1], "output": {"path": "/tmp/x"}})
    settings = layer_fetch_settings(type("J", (), {"config": config}), PipelineOptions([]))["image"]
    assert settings.max_requests_per_second is None and settings.max_concurrent == local_concurrency()


# -- each layer under its own throttler (FetchLayers on fakes) ----------------------------------

IN_FLIGHT: dict = {}
LOCK = threading.Lock()


class CountingSource:
    """Pixels = the patch column; records the most requests of its layer in flight at once."""

    def __init__(self, name, fail_col=None):
        self.name, self.fail_col = name, fail_col

    def open(self, info=None):
        return self

    limits = None

    def fetch(self, spec, part):
        with LOCK:
            now, peak = IN_FLIGHT.get(self.name, (0, 0))
            IN_FLIGHT[self.name] = (now + 1, max(peak, now + 1))
        time.sleep(0.02)
        with LOCK:
            now, peak = IN_FLIGHT[self.name]
            IN_FLIGHT[self.name] = (now - 1, peak)
        if spec.col == self.fail_col:
            from pixelbeam.transforms.fetching.retry import PermanentError
            raise PermanentError("no pixels here", cause="400")
        data = np.full((1, part.height, part.width), spec.col, dtype=np.uint8)
        return PartResult(data=data, mask=np.ones((part.height, part.width), bool), nbytes=data.nbytes)

    def close(self):
        pass


def test_each_layer_keeps_its_own_limit_and_a_failing_layer_names_itself():
    IN_FLIGHT.clear()
    info = SourceInfo(band_names=("v",), dtypes=("uint8",))
    layers = (FetchLayer("slow", "input", CountingSource("slow"), info,
                         FetchSettings(max_concurrent=2, max_requests_per_second=None, threads=4)),
              FetchLayer("wide", "target", CountingSource("wide", fail_col=3), info,
                         FetchSettings(max_concurrent=6, max_requests_per_second=None, threads=8)))
    grid = GridSpec("EPSG:32618", (10.0, 10.0), patch_size=(4, 4))
    specs = [make_spec(grid, "EPSG:32618", 0, col, "r") for col in range(24)]
    pipeline = TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    with pipeline as p:
        out = p | beam.Create(specs) | FetchLayers(layers)
        got = out.patches | beam.Map(lambda patch: (patch.spec.col, patch.layer, int(patch.data[0, 0, 0]),
                                                    [(m.name, m.role, int(m.data[0, 0, 0])) for m in patch.more]))
        assert_that(got, equal_to([(c, "slow", c, [("wide", "target", c)]) for c in range(24) if c != 3]),
                    label="patches")
        failed = out[FAILED] | beam.Map(lambda f: (f.spec.col, f.message.split(":")[0]))
        assert_that(failed, equal_to([(3, "layer wide")]), label="failed")
    assert IN_FLIGHT["slow"][1] <= 2 and IN_FLIGHT["wide"][1] <= 6
    # each layer has its own throttler with its own limit; layers of one quota pool share one
    worker = _WorkerFetcher(layers + (FetchLayer("same", "target", CountingSource("same"), info, FetchSettings(
        max_concurrent=2, max_requests_per_second=None, threads=4, quota_pool="p")),
        FetchLayer("pooled", "target", CountingSource("pooled"), info, FetchSettings(
            max_concurrent=2, max_requests_per_second=None, threads=4, quota_pool="p"))), threads=4)
    throttlers = {layer.name: runner.throttler for layer, _, runner in worker.layers}
    assert (throttlers["slow"].max_concurrent, throttlers["wide"].max_concurrent) == (2, 6)
    assert throttlers["slow"] is not throttlers["wide"] and throttlers["same"] is throttlers["pooled"]
    worker.pool.shutdown()


def test_local_files_are_read_without_a_hand_off_per_call_and_remote_ones_keep_it(tmp_path):
    """Issue 16: a local read runs on the fetch thread itself (no helper thread per call to
    abandon a hung HTTP request), with as many threads as reads at once; Earth Engine and remote
    rasters keep the helper thread and spare threads for retry backoffs."""
    doc = yaml.safe_load(open(mixed_config(tmp_path, "http://127.0.0.1:9")))
    doc["layers"]["cog"] = {"kind": "raster", "role": "input", "uri": "/vsicurl/https://example.com/a.tif"}
    doc["layers"]["ee"].pop("fetch")
    settings = layer_fetch_settings(type("J", (), {"config": parse_config(doc)}), PipelineOptions([]))
    scene, ee, cog = settings["scene"], settings["ee"], settings["cog"]
    assert not scene.abandon_hung_calls and scene.threads == scene.max_concurrent == local_concurrency()
    assert ee.abandon_hung_calls and ee.threads > ee.max_concurrent
    assert cog.abandon_hung_calls and cog.threads > cog.max_concurrent
