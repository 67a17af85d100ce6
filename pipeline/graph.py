"""Assembles the Beam graph for a prepared Job: tile -> fetch -> judge -> write -> report."""

from __future__ import annotations

from typing import Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, WorkerOptions, DirectOptions

from pipeline.outputs import patch_file_options
from pipeline.plan import Job
from pipeline.resume import ResumeState
from transforms.fetch import FAILED, FetchPatches, FetchSettings
from transforms.sinks import FILTERED, JudgePatches, WritePatches, WriteReports
from transforms.throttle import per_worker_limits
from transforms.tiling import TilePatches

# Fetch threads per worker process never exceed this, whatever the quota.
MAX_THREADS_PER_WORKER = 64


def worker_count(options: PipelineOptions) -> int:
    """How many worker processes share the job's quota (Dataflow: max_num_workers)."""
    runner = (options.view_as(StandardOptions).runner or "").lower()
    if "dataflow" in runner:
        workers = options.view_as(WorkerOptions)
        return max(1, workers.max_num_workers or workers.num_workers or 1)
    direct = options.view_as(DirectOptions)
    if (direct.direct_running_mode or "in_memory") == "in_memory":
        return 1
    return max(1, direct.direct_num_workers or 1)


def fetch_settings(job: Job, options: PipelineOptions) -> FetchSettings:
    fetch = job.config.fetch
    concurrent, rate = per_worker_limits(fetch.max_concurrent_requests, fetch.max_requests_per_second,
                                         worker_count(options))
    return FetchSettings(max_concurrent=concurrent, max_requests_per_second=rate,
                         max_attempts=fetch.max_attempts, timeout_s=fetch.timeout_s,
                         threads=fetch_threads(concurrent))


def fetch_threads(max_concurrent: int) -> int:
    """Fetch threads per worker: a quarter more than the concurrency cap (at least 2 more), so
    a patch sleeping in retry backoff does not leave a request slot idle; the throttler still
    holds requests in flight to `max_concurrent`."""
    return min(max_concurrent + max(2, max_concurrent // 4), MAX_THREADS_PER_WORKER)


def build_pipeline(job: Job, pipeline: beam.Pipeline, resume: Optional[ResumeState] = None) -> beam.Pipeline:
    """Adds every step of the job to `pipeline` and returns it. With `resume`, only its
    `to_fetch` patches are fetched and the rows of the done ones are carried over."""
    out = job.config.output
    resume = resume or ResumeState(run_id="", completed_runs=[], carried_rows=[], to_fetch=job.specs)
    specs = pipeline | "TilePatches" >> TilePatches(resume.to_fetch)
    fetched = specs | "FetchPatches" >> FetchPatches(job.source, job.info, fetch_settings(job, pipeline.options))
    judged = fetched.patches | "JudgePatches" >> beam.ParDo(JudgePatches(out.max_masked_ratio)).with_outputs(
        FILTERED, main="keep")
    written_rows, write_failures = judged.keep | "WritePatches" >> WritePatches(
        out.path, tuple(out.formats), out.tfrecord_shards, run_id=resume.run_id, in_tfrecord=resume.in_tfrecord,
        file_options=patch_file_options(out, job.info))
    rows = (written_rows, judged[FILTERED]) | "KeptAndFilteredRows" >> beam.Flatten()
    failures = (fetched[FAILED], write_failures) | "AllFailures" >> beam.Flatten()
    _ = (rows, failures) | "WriteReports" >> WriteReports(out.path, resume.run_id, tuple(resume.carried_rows))
    return pipeline
