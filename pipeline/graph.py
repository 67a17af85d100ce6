"""Assembles the Beam graph for a prepared Job: tile -> fetch -> judge -> write -> report."""

from __future__ import annotations

from typing import Optional

import apache_beam as beam

from pixelbeam.pipeline.outputs import job_file_options
from pixelbeam.pipeline.plan import Job
from pixelbeam.pipeline.resume import ResumeState
from pixelbeam.pipeline.shards import job_shard_naming
from pixelbeam.pipeline.runner import fetch_layers, fetch_settings
from pixelbeam.pipeline.stats import layer_roles
from pixelbeam.transforms.fetch import FAILED, FetchLayers, FetchPatches
from pixelbeam.transforms.planning import staged
from pixelbeam.transforms.planning.staged import StageTo
from pixelbeam.transforms.sinks import FILTERED, JudgePatches, WritePatches, WriteReports
from pixelbeam.transforms.skip_done import SkipDonePatches
from pixelbeam.transforms.statistics import PatchStatistics
from pixelbeam.transforms.tiling import TilePatches


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
    if job.layered:  # every layer of a patch in one DoFn, each under its own limits
        fetched = specs | "FetchLayers" >> FetchLayers(fetch_layers(job, pipeline.options, progress_dir),
                                                       progress_dir=progress_dir)
    else:
        fetched = specs | "FetchPatches" >> FetchPatches(job.source, job.info,
                                                         fetch_settings(job, pipeline.options, progress_dir))
    patches = fetched.patches
    rules = job.patch_rules
    if not rules.is_identity:  # unmask, scaling, fill_value: one place for every source
        patches = patches | "MaskAndScale" >> beam.Map(rules)
    judged = patches | "JudgePatches" >> beam.ParDo(JudgePatches(out.max_masked_ratio)).with_outputs(
        FILTERED, main="keep")
    written_rows, write_failures, written = judged.keep | "WritePatches" >> WritePatches(
        out.path, tuple(out.formats), out.tfrecord_shards, run_id=resume.run_id, file_options=job_file_options(job),
        splits=job.split_names, layers=tuple(layer.name for layer in job.layers) if job.layered else (),
        with_written=True, shards=job_shard_naming(job, resume.run_id))
    _ = written | "PatchStatistics" >> PatchStatistics(out.path, resume.run_id, layer_roles(job))  # stats/<run>.json (issue 14)
    rows = (written_rows, judged[FILTERED]) | "KeptAndFilteredRows" >> beam.Flatten()
    failures = (fetched[FAILED], write_failures) | "AllFailures" >> beam.Flatten()
    _ = (rows, failures, carried) | "WriteReports" >> WriteReports(out.path, resume.run_id)
    return pipeline
