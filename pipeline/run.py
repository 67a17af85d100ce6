"""Running a planned patch job: resume, the Beam graph on the chosen runner (whose last stage
records the run: runs/<run_id>.json and dataset.json, pipeline/records.py), the summary, and the
Dataflow dry run. On DataflowRunner `run_job` returns once the job is submitted unless asked to
wait. `pixelbeam.run` (pipeline/api.py) calls `run_job`, and the CLI prints the `RunResult` it
returns."""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions

from pixelbeam.pipeline import resume
from pixelbeam.pipeline.dataflow import (check_runner, graph_size_problem, is_dataflow, is_dry_run, job_info,
                                         launch_lines, plan_staging, sdk_processes, submission_problems)
from pixelbeam.pipeline.graph import build_pipeline
from pixelbeam.pipeline.preview import RUN_HOOK_MAX_PATCHES, write_previews_quietly
from pixelbeam.pipeline.progress import is_local, progress_bar
from pixelbeam.pipeline.records import RunEnd
from pixelbeam.pipeline.results import Requests, RunResult
from pixelbeam.pipeline.runner import describe_process_limits, pipeline_options
from pixelbeam.pipeline.warm_up import warm_up_pictures
from pixelbeam.pipeline.stats import with_recorded_stats
from pixelbeam.pipeline.summary import dataset_description, manifest_outcomes, summarize, write_dataset_json
from pixelbeam.transforms.planning.staged import stage
from pixelbeam.transforms.secrets import hide_secrets_in
from pixelbeam.transforms.storage import join
from pixelbeam.transforms.patch import FAILED, FILTERED, WRITTEN


@dataclasses.dataclass
class Launch:
    """A submitted run: what `run_job` needs to wait for it and summarize it."""

    job: object
    options: object
    state: resume.ResumeState
    result: object  # Beam's PipelineResult
    started: float  # time.monotonic() at submission
    pictures_warm_up: Optional[threading.Thread] = None  # warm_up.warm_up_pictures, for a local run


def run_job(job, beam_args: Sequence[str], max_failed_fraction: float, overwrite: bool = False,
            wait: bool = False) -> RunResult:
    """Runs the job, resuming what an earlier run of the same config left undone; raises
    ConfigError (a Beam option or the output folder) before anything is written. On
    DataflowRunner it returns once the job is submitted (the job records its own completion),
    unless `wait`."""
    out = job.config.output.path
    options = pipeline_options(beam_args)
    check_runner(job, options, lambda p: build_pipeline(job, p, stage_to=plan_staging(options, write=False)))
    if is_dry_run(options):
        return dry_run(job, options)
    launch = submit(job, options, overwrite)
    if isinstance(launch, RunResult):
        return launch
    if is_dataflow(options) and not wait:
        return submitted(job, options, launch)
    launch.result.wait_until_finish()
    return finished(launch, max_failed_fraction)


def submit(job, options, overwrite: bool = False, stage_to=None):
    """Everything a run needs up to the submitted job (which records its own completion in
    runs/<run_id>.json, pipeline/records.py): a `Launch`, or the `RunResult` of a run with
    nothing to do. `stage_to` overrides where the plan is staged (tests stage a local run's)."""
    out = job.config.output.path
    fingerprint = resume.check_fingerprint(job.config, out, overwrite)
    state = resume.plan_resume(job, resume.new_run_id(), overwrite)
    if state.nothing_to_do:
        counts = state.manifest_counts or manifest_outcomes(out)[0]
        if not FileSystems.exists(join(out, resume.STATE_FILE)):  # a job that recorded itself, then died
            write_dataset_json(job, fingerprint, state.completed_runs, resume.plan_digest(job))
        return RunResult(output_path=out, planned=job.planned, written=counts.get(WRITTEN, 0),
                         filtered=counts.get(FILTERED, 0), failed=counts.get(FAILED, 0), carried=job.planned,
                         lines=(f"nothing to do: all {job.planned} planned patches are done in {out} "
                                "(--overwrite redoes them)",))
    started = time.monotonic()
    resume.clean_leftovers(out, state.completed_runs, overwrite)
    resume.mark_running(out, state.run_id, fingerprint)
    local = is_local(options.view_as(StandardOptions).runner)
    if stage_to is None:
        stage_to = plan_staging(options, state.run_id)  # Dataflow: the plan as files, not in the job graph
    end = run_end(job, state, fingerprint, stage_to)
    with progress_bar(max(job.planned - state.done_before, 0), enabled=None if local else False) as progress_dir:
        pipeline = build_pipeline(job, beam.Pipeline(options=options), state, progress_dir, stage_to, end)
        warm_up = warm_up_pictures() if local and job.planned <= RUN_HOOK_MAX_PATCHES else None
        result = pipeline.run()  # a local runner returns once the job is done
    return Launch(job, options, state, result, started, warm_up)


def run_end(job, state: resume.ResumeState, fingerprint: str, stage_to=None) -> RunEnd:
    """What the run's last stage writes (pipeline/records.py): its record, dataset.json with
    the completed runs and the statistics merged over them, and which staged plan to delete."""
    out = job.config.output.path
    digest = resume.plan_digest(job)
    doc = hide_secrets_in(dataset_description(job, fingerprint, (), digest))  # staged and written: no credential
    folder = stage_to.folder if stage_to is not None and stage_to.write else None
    if stage_to is not None:  # the config (inline regions) stays out of the job graph too
        doc = stage(doc, stage_to.folder, "dataset", stage_to.write)
    return RunEnd(out, state.run_id, fingerprint, digest, resume.STATE_FILE, doc, tuple(state.completed_runs),
                  folder, functools.partial(with_recorded_stats, out, tuple(job.split_names)))


def submitted(job, options, launch: Launch) -> RunResult:
    """Launch and leave (Dataflow): the job id, its console page and the command that shows
    progress; the job records its own completion."""
    out = job.config.output.path
    lines = launch_lines(options, launch.result, out, launch.state.run_id, f"{job.planned} planned patches")
    resume.note_submitted_job(out, launch.state.run_id, resume.config_fingerprint(job.config),
                              job_info(options, launch.result))
    return RunResult(output_path=out, planned=job.planned, carried=launch.state.done_before, complete=False,
                     lines=tuple(lines))


def finished(launch: Launch, max_failed_fraction: float) -> RunResult:
    """The summary of a run that finished (a local run, or Dataflow with --wait)."""
    job, state = launch.job, launch.state
    out = job.config.output.path
    summary = summarize(job, launch.result, time.monotonic() - launch.started)
    pictures = write_previews_quietly(out, launch.pictures_warm_up)  # preview.png + footprints.png; a failure only warns
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
    stage_to = plan_staging(options, write=False)
    end = run_end(job, resume.ResumeState("dry-run"), resume.config_fingerprint(job.config), stage_to)
    pipeline = build_pipeline(job, beam.Pipeline(options=options), stage_to=stage_to, end=end)
    pipeline.run().wait_until_finish()
    lines = [f"dry run: DataflowRunner translated the job ({job.planned} planned patches; {sdk_processes(options)} SDK "
             f"processes x {describe_process_limits(job, options)} each); nothing was submitted or written"]
    lines += [f"note: a real run would stop here: {p}" for p in submission_problems(job) + [graph_size_problem(pipeline)] if p]
    return RunResult(output_path=job.config.output.path, planned=job.planned, submitted=False, lines=tuple(lines))
