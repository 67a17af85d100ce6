"""Running a planned patch job: resume, the Beam graph on the chosen runner, the summary and
dataset.json, and the Dataflow dry run. `pixelbeam.run` (pipeline/api.py) calls `run_job`, and
the CLI prints the `RunResult` it returns."""

from __future__ import annotations

import time
from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from pixelbeam.pipeline import resume
from pixelbeam.pipeline.dataflow import (check_runner, graph_size_problem, is_dry_run, plan_staging, remove_staging,
                                         sdk_processes, submission_problems)
from pixelbeam.pipeline.graph import build_pipeline
from pixelbeam.pipeline.preview import write_previews_quietly
from pixelbeam.pipeline.progress import is_local, progress_bar
from pixelbeam.pipeline.results import Requests, RunResult
from pixelbeam.pipeline.runner import describe_process_limits, pipeline_options
from pixelbeam.pipeline.summary import manifest_outcomes, summarize, write_dataset_json
from pixelbeam.transforms.patch import FAILED, FILTERED, WRITTEN


def run_job(job, beam_args: Sequence[str], max_failed_fraction: float, overwrite: bool = False) -> RunResult:
    """Runs the job, resuming what an earlier run of the same config left undone; raises
    ConfigError (a Beam option or the output folder) before anything is written."""
    out = job.config.output.path
    options = pipeline_options(beam_args)
    check_runner(job, options, lambda p: build_pipeline(job, p, stage_to=plan_staging(options, write=False)))
    if is_dry_run(options):
        return dry_run(job, options)
    fingerprint = resume.check_fingerprint(job.config, out, overwrite)
    state = resume.plan_resume(job, resume.new_run_id(), overwrite)
    if state.nothing_to_do:
        counts, _ = manifest_outcomes(out)
        return RunResult(output_path=out, planned=job.planned, written=counts.get(WRITTEN, 0),
                         filtered=counts.get(FILTERED, 0), failed=counts.get(FAILED, 0), carried=job.planned,
                         lines=(f"nothing to do: all {job.planned} planned patches are done in {out} "
                                "(--overwrite redoes them)",))
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
    pictures = write_previews_quietly(out)  # preview.png + footprints.png; a failure only warns
    failed = summary.counts.get(FAILED, 0)
    problem = None
    if summary.complete and failed > max_failed_fraction * summary.planned:
        problem = f"pixelbeam: {failed} patches failed (see failed.jsonl); rerun to retry them"
    return RunResult(output_path=out, planned=job.planned, written=summary.counts.get(WRITTEN, 0),
                     filtered=summary.counts.get(FILTERED, 0), failed=failed, seconds=summary.elapsed_s,
                     requests=Requests.from_counters(summary.metrics), carried=summary.carried,
                     complete=summary.complete, counters=summary.metrics,
                     lines=tuple(summary.lines()) + ((pictures,) if pictures else ()), problem=problem)


def dry_run(job, options) -> RunResult:
    """Translate the whole graph for DataflowRunner (it pickles every transform and builds the
    worker package) without submitting it, reading or writing the output (the plan is named
    where a real run would stage it, not written)."""
    pipeline = build_pipeline(job, beam.Pipeline(options=options), stage_to=plan_staging(options, write=False))
    pipeline.run().wait_until_finish()
    lines = [f"dry run: DataflowRunner translated the job ({job.planned} planned patches; {sdk_processes(options)} SDK "
             f"processes x {describe_process_limits(job, options)} each); nothing was submitted or written"]
    lines += [f"note: a real run would stop here: {p}" for p in submission_problems(job) + [graph_size_problem(pipeline)] if p]
    return RunResult(output_path=job.config.output.path, planned=job.planned, submitted=False, lines=tuple(lines))
