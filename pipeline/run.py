"""Running a planned patch job: resume, the Beam graph on the chosen runner, the summary and
dataset.json, and the Dataflow dry run. The CLI (and the Python API) call `run_job`."""

from __future__ import annotations

import sys
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from pixelbeam.pipeline import resume
from pixelbeam.pipeline.dataflow import (check_runner, graph_size_problem, is_dry_run, plan_staging, remove_staging,
                                         sdk_processes, submission_problems)
from pixelbeam.pipeline.graph import build_pipeline
from pixelbeam.pipeline.preview import try_write_previews
from pixelbeam.pipeline.progress import is_local, progress_bar
from pixelbeam.pipeline.runner import describe_process_limits, pipeline_options
from pixelbeam.pipeline.summary import summarize, write_dataset_json


def run_job(job, beam_args: Sequence[str], max_failed_fraction: float, overwrite: bool = False) -> int:
    """Runs the job, resuming what an earlier run of the same config left undone."""
    out = job.config.output.path
    options = pipeline_options(beam_args)
    check_runner(job, options, lambda p: build_pipeline(job, p, stage_to=plan_staging(options, write=False)))
    if is_dry_run(options):
        return dry_run(job, options)
    fingerprint = resume.check_fingerprint(job.config, out, overwrite)
    state = resume.plan_resume(job, resume.new_run_id(), overwrite)
    if state.nothing_to_do:
        print(f"nothing to do: all {job.planned} planned patches are done in {out} (--overwrite redoes them)")
        return 0
    started = time.monotonic()
    resume.clean_leftovers(out, state.completed_runs, overwrite)
    resume.mark_running(out, state.run_id, fingerprint)
    local = is_local(options.view_as(StandardOptions).runner)
    stage_to = plan_staging(options, state.run_id)  # Dataflow: the plan as files, not in the job graph
    with progress_bar(max(job.planned - state.done_before, 0), enabled=None if local else False) as progress_dir:
        pipeline = build_pipeline(job, beam.Pipeline(options=options), state, progress_dir, stage_to)
        result = pipeline.run()
        result.wait_until_finish()
    remove_staging(stage_to)
    write_dataset_json(job, fingerprint, state.completed_runs + [state.run_id], resume.plan_digest(job))
    resume.clear_running(out)
    summary = summarize(job, result, time.monotonic() - started)
    for line in summary.lines():
        print(line)
    try_write_previews(out)  # preview.png + footprints.png; a failure only warns
    failed = summary.counts.get("failed", 0)
    if not summary.complete:
        return 1
    if failed > max_failed_fraction * summary.planned:
        print(f"pixelbeam: {failed} patches failed (see failed.jsonl); rerun to retry them", file=sys.stderr)
        return 1
    return 0


def dry_run(job, options) -> int:
    """Translate the whole graph for DataflowRunner (it pickles every transform and builds the
    worker package) without submitting it, reading or writing the output (the plan is named
    where a real run would stage it, not written)."""
    pipeline = build_pipeline(job, beam.Pipeline(options=options), stage_to=plan_staging(options, write=False))
    pipeline.run().wait_until_finish()
    print(f"dry run: DataflowRunner translated the job ({job.planned} planned patches; {sdk_processes(options)} SDK "
          f"processes x {describe_process_limits(job, options)} each); nothing was submitted or written")
    for problem in submission_problems(job) + [p for p in [graph_size_problem(pipeline)] if p]:
        print(f"note: a real run would stop here: {problem}")
    return 0
