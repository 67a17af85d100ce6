"""Assembles the Beam graph for a prepared Job: tile -> fetch -> judge -> write -> report."""

from __future__ import annotations

from typing import Optional

import apache_beam as beam

from pixelbeam.pipeline.outputs import job_file_options
from pixelbeam.pipeline.plan import Job
from pixelbeam.pipeline.records import RecordRun, RunEnd
from pixelbeam.pipeline.resume import ResumeState
from pixelbeam.pipeline.shards import job_shard_naming
from pixelbeam.pipeline.runner import fetch_layers, fetch_settings
from pixelbeam.pipeline.stats import layer_roles
from pixelbeam.transforms.fetch import FAILED, FetchLayers, FetchPatches
from pixelbeam.transforms.planning import staged
from pixelbeam.transforms.planning.point_plan import PlannedPoints
from pixelbeam.transforms.planning.staged import StageTo
from pixelbeam.transforms.restore import RestorePatches
from pixelbeam.transforms.sinks import FILTERED, JudgePatches, WritePatches, WriteReports
from pixelbeam.transforms.skip_done import SkipDonePatches
from pixelbeam.transforms.statistics import PatchStatistics
from pixelbeam.transforms.tiling import TilePatches


def build_pipeline(job: Job, pipeline: beam.Pipeline, resume: Optional[ResumeState] = None,
                   progress_dir: Optional[str] = None, stage_to: Optional[StageTo] = None,
                   end: Optional[RunEnd] = None) -> beam.Pipeline:
    """Adds every step of the job to `pipeline` and returns it. With `resume` naming a previous
    manifest, the patches it records as done are carried over instead of fetched. With
    `stage_to`, the plan (cells, regions, sample) goes to files there instead of into the graph;
    a job's PlannedPoints go as their PointCells, in the cells' chunks.
    With `end`, the last stage records the run's completion once every sink has finalized
    (pipeline/records.py)."""
    out = job.config.output
    resume = resume or ResumeState(run_id="")
    cells, regions, sample = job.cells, job.regions, job.sample
    if isinstance(regions, PlannedPoints):  # a run's point regions: each cell with its own points (pipeline/point_run.py)
        cells, regions = list(regions.cells), ()
    if stage_to is not None:
        cells = staged.stage_chunks(cells, stage_to.folder, "cells", stage_to.write)
        regions = staged.stage(regions, stage_to.folder, "regions", stage_to.write)
        sample = staged.stage(job.sample, stage_to.folder, "sample", stage_to.write)
    specs = pipeline | "TilePatches" >> TilePatches(cells, regions, job.grid, sample)
    restored = None
    if resume.previous_manifest:
        skip = SkipDonePatches(resume.previous_manifest, tuple(resume.completed_runs), out.path, resume.restore)
        specs, carried = specs | "SkipDonePatches" >> skip
        if resume.restore is not None:  # formats added: written patches read back from their NPY files, not fetched
            restored = skip.restore | "RestorePatches" >> RestorePatches(out.path, resume.restore)
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
    judged = patches | "JudgePatches" >> beam.ParDo(JudgePatches(out.max_masked_ratio, out.keep_empty)).with_outputs(
        FILTERED, main="keep")
    kept = judged.keep
    if restored is not None:
        kept = (judged.keep, restored[0]) | "KeptAndRestored" >> beam.Flatten()
    writer = WritePatches(
        out.path, tuple(out.formats), out.tfrecord_shards, run_id=resume.run_id, file_options=job_file_options(job),
        splits=job.split_names, layers=tuple(layer.name for layer in job.layers) if job.layered else (),
        with_written=True, tfrecord_level=out.tfrecord_compression_level, shards=job_shard_naming(job, resume.run_id))
    written_rows, write_failures, written = kept | "WritePatches" >> writer
    stats = written | "PatchStatistics" >> PatchStatistics(out.path, resume.run_id, layer_roles(job))  # stats/<run>.json (issue 14)
    rows = (written_rows, judged[FILTERED]) | "KeptAndFilteredRows" >> beam.Flatten()
    failures = (fetched[FAILED], write_failures, *([restored[1]] if restored is not None else [])) \
        | "AllFailures" >> beam.Flatten()
    reports = WriteReports(out.path, resume.run_id)
    manifest_rows = (rows, failures, carried) | "WriteReports" >> reports
    if end is not None:
        finalized = {"shards": writer.finalized, "reports": reports.finalized, "stats": [stats]}
        waits = {name: tuple(pcolls) | f"Finalized{name.title()}" >> beam.Flatten()
                 for name, pcolls in finalized.items() if pcolls}
        counts = manifest_rows | "CountRows" >> beam.FlatMap(row_counts, end.run_id)
        _ = {"counts": counts, **waits} | "RecordRun" >> RecordRun(end)
    return pipeline


def row_counts(row: dict, run_id: str):
    """("manifest.<status>", 1) for every manifest row, and ("this_run.<status>" or
    "this_run.carried", 1): the counts a run records (pipeline/records.py)."""
    yield f"manifest.{row['status']}", 1
    yield (f"this_run.{row['status']}" if row.get("run_id") == run_id else "this_run.carried"), 1
