"""FetchPatches on its own, through Beam's TestPipeline with a fake pixel source."""

import threading

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pixelbeam.pipeline.runner import fetch_settings, worker_count
from pixelbeam.transforms.fetch import FAILED, FetchPatches, FetchSettings
from pixelbeam.transforms.planning.grid import GridSpec, make_spec
from pixelbeam.transforms.fetching.retry import PermanentError, QuotaError
from pixelbeam.transforms.fetching.sizing import RequestLimits
from pixelbeam.transforms.sources.base import PartResult, SourceInfo

# Shared between the fake source's pickled copies within this process (FnApiRunner in memory).
CALLS: dict = {}
LOCK = threading.Lock()


class FakeSource:
    """Pixels = patch column; col 1 answers 429 once, col 2 is refused (400)."""

    def __init__(self, info):
        self.info = info

    def describe(self):
        return self.info

    def open(self, info=None):
        return FakeReader(info or self.info)


class FakeReader:
    def __init__(self, info):
        self.info, self.limits = info, info.limits

    def fetch(self, spec, part):
        with LOCK:
            n = CALLS[(spec.patch_id, part)] = CALLS.get((spec.patch_id, part), 0) + 1
        if spec.col == 1 and n == 1:
            raise QuotaError("slow down", cause="429", retry_after_s=0.0)
        if spec.col == 2:
            raise PermanentError("no such pixels", cause="400")
        data = np.full((len(part.bands), part.height, part.width), spec.col, dtype=np.uint16)
        data += np.array(part.bands, dtype=np.uint16)[:, None, None] * 100
        return PartResult(data=data, mask=np.ones((part.height, part.width), bool), nbytes=data.nbytes)

    def close(self):
        pass


def specs(n):
    grid = GridSpec("EPSG:32618", (10.0, 10.0), patch_size=(8, 8))
    return [make_spec(grid, "EPSG:32618", 0, col, "r") for col in range(n)]


def test_fetch_patches_outputs_and_metrics():
    CALLS.clear()
    # 3 uint16 bands of 8x8 px = 384 bytes; a 200-byte limit splits every patch into 3 one-band parts
    info = SourceInfo(band_names=("a", "b", "c"), dtypes=("uint16",) * 3, limits=RequestLimits(max_bytes=200))
    settings = FetchSettings(max_concurrent=3, max_requests_per_second=1000, max_attempts=3, threads=3)
    pipeline = TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    with pipeline as p:
        out = p | beam.Create(specs(6)) | FetchPatches(FakeSource(info), info, settings)
        summary = out.patches | beam.Map(lambda patch: (
            patch.spec.col, patch.data.shape, int(patch.data[0, 0, 0]), int(patch.data[2, 7, 7]), patch.requests,
            patch.retries))
        assert_that(summary, equal_to([
            (col, (3, 8, 8), col, col + 200, 3, 3 if col == 1 else 0) for col in (0, 1, 3, 4, 5)]), label="patches")
        failed = out[FAILED] | beam.Map(lambda f: (f.spec.col, f.stage, f.error_class, f.attempts))
        assert_that(failed, equal_to([(2, "fetch", "PermanentError:400", 1)]), label="failed")
    counters = {c.key.metric.name: c.committed for c in pipeline.result.metrics().query()["counters"]}
    assert counters["patches_fetched"] == 5 and counters["patches_failed"] == 1
    # 5 patches x 3 parts, + a 429 on each part of col 1, + the refused first part of col 2
    assert counters["requests"] == 19 and counters["successes"] == 15 and counters["quota_errors"] == 3
    assert counters["retries_429"] == 3
    dists = {d.key.metric.name: d.committed for d in pipeline.result.metrics().query()["distributions"]}
    assert dists["request_latency_ms"].count == 15


def test_job_limits_are_divided_over_workers():
    class FakeJob:
        class config:
            class fetch:
                max_concurrent_requests, max_requests_per_second, max_attempts, timeout_s = 40, 100.0, 6, 120.0
    dataflow = PipelineOptions(["--runner=DataflowRunner", "--max_num_workers=8",
                                "--experiments=no_use_multiple_sdk_containers"])  # one SDK process per VM
    assert worker_count(dataflow) == 8
    s = fetch_settings(FakeJob, dataflow)
    assert (s.max_concurrent, s.max_requests_per_second, s.threads) == (5, 12.5, 7)
    multi = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert worker_count(multi) == 2 and fetch_settings(FakeJob, multi).max_concurrent == 20
    assert worker_count(PipelineOptions([])) == 1


def test_request_counters_add_up_when_reported_in_batches():
    """Issue 16: request stats reach Beam's counters every REPORT_EVERY patches and at the end of
    a bundle, not per patch; the totals are the same (a count that is not a multiple of it)."""
    from pixelbeam.transforms.fetch import REPORT_EVERY
    CALLS.clear()
    n = 2 * REPORT_EVERY + 7
    grid = GridSpec("EPSG:32618", (10.0, 10.0), patch_size=(8, 8))
    many = [make_spec(grid, "EPSG:32618", row, 3, "r") for row in range(n)]  # col 3: no fault
    info = SourceInfo(band_names=("a",), dtypes=("uint16",), limits=RequestLimits(max_bytes=1 << 20))
    settings = FetchSettings(max_concurrent=2, max_requests_per_second=None, max_attempts=3, threads=2)
    pipeline = TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    with pipeline as p:
        out = p | beam.Create(many) | FetchPatches(FakeSource(info), info, settings)
        assert_that(out.patches | beam.combiners.Count.Globally(), equal_to([n]))
    counters = {c.key.metric.name: c.committed for c in pipeline.result.metrics().query()["counters"]}
    assert counters["requests"] == n and counters["successes"] == n and counters["patches_fetched"] == n
    dists = {d.key.metric.name: d.committed for d in pipeline.result.metrics().query()["distributions"]}
    assert dists["request_latency_ms"].count == n
