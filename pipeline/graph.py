"""Assembles the Beam graph for a prepared Job: tile -> fetch -> judge -> write -> report."""

from __future__ import annotations

import dataclasses
from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, DirectOptions

from pipeline.outputs import patch_file_options
from pipeline.plan import Job
from pipeline.resume import ResumeState
from transforms.fetch import FAILED, FetchPatches, FetchSettings
from transforms import staged
from transforms.sinks import FILTERED, JudgePatches, WritePatches, WriteReports
from transforms.throttle import per_worker_limits
from transforms.skip_done import SkipDonePatches
from transforms.tiling import TilePatches

# Fetch threads per worker process never exceed this, whatever the quota.
MAX_THREADS_PER_WORKER = 64


def worker_count(options: PipelineOptions) -> int:
    """How many worker processes share the job's quota (Dataflow: max_num_workers x SDK processes per VM)."""
    runner = (options.view_as(StandardOptions).runner or "").lower()
    if "dataflow" in runner:
        from pipeline.dataflow import sdk_processes  # one process per vCPU; ConfigError if it cannot be known
        return sdk_processes(options)
    direct = options.view_as(DirectOptions)
    if (direct.direct_running_mode or "in_memory") == "in_memory":
        return 1
    return max(1, direct.direct_num_workers or 1)


@dataclasses.dataclass(frozen=True)
class StageTo:
    """Where the launcher stages the plan (transforms/staged.py): `folder`, and whether to write
    the files (False: a dry run or a size check, which only translate the graph)."""

    folder: str
    write: bool = True


def stage_folder(options: PipelineOptions, run_id: str) -> str:
    """`<--temp_location>/pixelbeam-plan-<run_id>`: Dataflow needs a temp_location anyway."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    temp = options.view_as(GoogleCloudOptions).temp_location
    if not temp:
        from pipeline.config import ConfigError
        raise ConfigError("--temp_location: Dataflow runs stage the plan there; give gs://BUCKET/tmp")
    return FileSystems.join(temp, f"pixelbeam-plan-{run_id or 'check'}")


def fetch_settings(job: Job, options: PipelineOptions, progress_dir: Optional[str] = None) -> FetchSettings:
    fetch = job.config.fetch
    concurrent, rate = per_worker_limits(fetch.max_concurrent_requests, fetch.max_requests_per_second,
                                         worker_count(options))
    return FetchSettings(max_concurrent=concurrent, max_requests_per_second=rate,
                         max_attempts=fetch.max_attempts, timeout_s=fetch.timeout_s,
                         threads=fetch_threads(concurrent), progress_dir=progress_dir)


def fetch_threads(max_concurrent: int) -> int:
    """Fetch threads per worker: a quarter more than the concurrency cap (at least 2 more), so
    a patch sleeping in retry backoff does not leave a request slot idle; the throttler still
    holds requests in flight to `max_concurrent`."""
    return min(max_concurrent + max(2, max_concurrent // 4), MAX_THREADS_PER_WORKER)


def build_pipeline(job: Job, pipeline: beam.Pipeline, resume: Optional[ResumeState] = None,
                   progress_dir: Optional[str] = None, stage_to: Optional[StageTo] = None) -> beam.Pipeline:
    """Adds every step of the job to `pipeline` and returns it. With `resume` naming a previous
    manifest, the patches it records as done are carried over instead of fetched. With
    `stage_to`, the plan (cells, regions, sample) goes to files there instead of into the graph."""
    out = job.config.output
    resume = resume or ResumeState(run_id="")
    cells, regions, sample = job.cells, job.regions, job.sample
    if stage_to is not None:
        cells = staged.stage_chunks(job.cells, stage_to.folder, "cells", stage_to.write)
        regions = staged.stage(job.regions, stage_to.folder, "regions", stage_to.write)
        sample = staged.stage(job.sample, stage_to.folder, "sample", stage_to.write)
    specs = pipeline | "TilePatches" >> TilePatches(cells, regions, job.grid, sample)
    if resume.previous_manifest:
        specs, carried = specs | "SkipDonePatches" >> SkipDonePatches(
            resume.previous_manifest, tuple(resume.completed_runs), out.path)
    else:
        carried = pipeline | "NothingCarried" >> beam.Create([])
    fetched = specs | "FetchPatches" >> FetchPatches(job.source, job.info, fetch_settings(job, pipeline.options, progress_dir))
    patches = fetched.patches
    if not job.rules.is_identity:  # unmask, scaling, fill_value: one place for every source
        patches = patches | "MaskAndScale" >> beam.Map(job.rules)
    judged = patches | "JudgePatches" >> beam.ParDo(JudgePatches(out.max_masked_ratio)).with_outputs(
        FILTERED, main="keep")
    written_rows, write_failures = judged.keep | "WritePatches" >> WritePatches(
        out.path, tuple(out.formats), out.tfrecord_shards, run_id=resume.run_id,
        file_options=patch_file_options(out, job.output_info, mask_npy=job.config.mask.npy))
    rows = (written_rows, judged[FILTERED]) | "KeptAndFilteredRows" >> beam.Flatten()
    failures = (fetched[FAILED], write_failures) | "AllFailures" >> beam.Flatten()
    _ = (rows, failures, carried) | "WriteReports" >> WriteReports(out.path, resume.run_id)
    return pipeline
