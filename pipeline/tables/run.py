"""Running a planned point-table job (a `table:` section): resume, the Beam graph
(pipeline/tables/graph.py), table.json and the `RunResult`. `pixelbeam.run` calls
`run_table_job` (pipeline/api.py); the CLI prints what it returns."""

from __future__ import annotations

import functools
import json
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions

from pixelbeam.pipeline import resume
from pixelbeam.pipeline.dataflow import (check_runner, graph_size_problem, is_dataflow, is_dry_run, job_info,
                                         launch_lines, plan_staging, submission_problems)
from pixelbeam.pipeline.progress import is_local, progress_bar
from pixelbeam.pipeline.results import ROWS, Requests, RunResult
from pixelbeam.pipeline.runner import fetch_settings, pipeline_options
from pixelbeam.pipeline.summary import beam_metrics
from pixelbeam.pipeline.records import RunEnd
from pixelbeam.pipeline.tables.graph import build_table_pipeline, count_outputs, table_description, with_table_counts
from pixelbeam.pipeline.tables.plan import TableJob
from pixelbeam.pipeline.tables.resume import TableResume, delete_doomed, plan_table_resume
from pixelbeam.transforms.planning.staged import stage
from pixelbeam.transforms.secrets import hide_secrets_in
from pixelbeam.transforms.storage import join, write_atomically


def run_table_job(job: TableJob, beam_args: Sequence[str], max_failed_fraction: float = 0.0,
                  overwrite: bool = False, wait: bool = False, stage_to=None, leave: bool = False) -> RunResult:
    """Runs the table job, fetching only the groups no completed run wrote; raises ConfigError
    (Dataflow options, the output folder) before anything is written. The job records its own
    completion (runs/<run_id>.json and table.json, pipeline/records.py); on DataflowRunner this
    returns once it is submitted unless `wait`. `stage_to` overrides where the plan is staged
    and `leave` returns right after the job ran, as a killed launcher would (tests)."""
    options = pipeline_options(beam_args)
    out = job.config.output.path
    # Dataflow: worker count against the quota, gs:// paths, graph size; before anything is written
    check_staging = plan_staging(options, write=False)
    check_runner(job, options, lambda p: build_table_pipeline(job, p, fetch_settings(job, options),
                                                              stage_to=check_staging))
    if is_dry_run(options):  # DataflowRunner translates the graph; nothing is submitted or written
        end = table_run_end(job, TableResume("dry-run", resume.config_fingerprint(job.config), ""), check_staging)
        pipeline = build_table_pipeline(job, beam.Pipeline(options=options), fetch_settings(job, options),
                                        stage_to=check_staging, end=end)
        pipeline.run().wait_until_finish()
        lines = [f"dry run: DataflowRunner translated the job ({job.rows} planned rows); nothing was submitted or written"]
        lines += [f"note: a real run would stop here: {p}" for p in submission_problems(job) + [graph_size_problem(pipeline)] if p]
        return RunResult(output_path=out, planned=job.rows, unit=ROWS, submitted=False, lines=tuple(lines))
    state = plan_table_resume(job, overwrite)
    todo = state.todo(job.groups)
    details = {"images": len(job.images), "pixels": job.pixels, "groups": len(job.groups), "groups_fetched": len(todo)}
    if not todo:
        rows, lost, files = count_outputs(job)
        if state.completed_runs and not FileSystems.exists(join(out, resume.TABLE_STATE_FILE)):
            # a job that recorded itself, then died before table.json
            write_atomically(join(out, resume.TABLE_STATE_FILE), json.dumps(hide_secrets_in(
                {**table_description(job, rows, lost, files, state), "runs": state.completed_runs}), indent=2).encode())
        return RunResult(output_path=out, planned=job.rows, written=rows, failed=lost, unit=ROWS, carried=job.rows,
                         details=details,
                         lines=(f"nothing to do: all {job.rows} planned rows are in {out} (--overwrite redoes them)",))
    started = time.monotonic()
    delete_doomed(state.doomed)
    resume.mark_running(out, state.run_id, state.fingerprint)
    local = is_local(options.view_as(StandardOptions).runner)
    if stage_to is None:
        stage_to = plan_staging(options, state.run_id)  # Dataflow: the groups as files, not in the job graph
    end = table_run_end(job, state, stage_to)
    with progress_bar(len(todo), enabled=None if local else False, unit="groups") as progress_dir:
        pipeline = build_table_pipeline(job, beam.Pipeline(options=options),
                                        fetch_settings(job, options, progress_dir), todo, state.run_id, stage_to, end)
        result = pipeline.run()  # a local runner returns once the job is done
    if leave:
        return RunResult(output_path=out, planned=job.rows, unit=ROWS, complete=False, lines=("left",))
    if is_dataflow(options) and not wait:
        lines = launch_lines(options, result, out, state.run_id, f"{job.rows} planned rows")
        resume.note_submitted_job(out, state.run_id, state.fingerprint, job_info(options, result))
        return RunResult(output_path=out, planned=job.rows, unit=ROWS, complete=False, details=details,
                         lines=tuple(lines))
    result.wait_until_finish()
    rows, lost, files = count_outputs(job)
    seconds = time.monotonic() - started
    lines = (f"rows {rows} of {job.rows} planned | failed {lost} | images {len(job.images)} | pixels {job.pixels} | "
             f"values {rows * len(job.bands)} | {seconds:.1f} s",
             f"groups fetched in this run {len(todo)} of {len(job.groups)} (done before: {len(job.groups) - len(todo)})")
    problem = None
    if rows + lost != job.rows:
        problem = f"pixelbeam: INCOMPLETE: {rows} rows + {lost} failed for {job.rows} planned"
    elif lost > max_failed_fraction * job.rows:
        problem = f"pixelbeam: {lost} rows failed (see {join(out, 'failed.jsonl')}); rerun to retry them"
    counters = beam_metrics(result)
    carried = (job.pixels - sum(len(pixels) for _, pixels in todo)) * len(job.images)
    return RunResult(output_path=out, planned=job.rows, written=rows, failed=lost, seconds=seconds,
                     requests=Requests.from_counters(counters), unit=ROWS, carried=carried,
                     complete=rows + lost == job.rows, counters=counters,
                     details={**details, "values": rows * len(job.bands)}, lines=lines, problem=problem)


def table_run_end(job: TableJob, state, stage_to=None) -> RunEnd:
    """What the table run's last stage writes (pipeline/records.py): its record, table.json with
    the completed runs and the rows counted over the outputs, and which staged plan to delete."""
    out = job.config.output.path
    doc = hide_secrets_in(table_description(job, 0, 0, (), state))  # staged and written: no credential
    folder = stage_to.folder if stage_to is not None and stage_to.write else None
    if stage_to is not None:
        doc = stage(doc, stage_to.folder, "table", stage_to.write)
    return RunEnd(out, state.run_id, state.fingerprint, state.plan_digest, resume.TABLE_STATE_FILE, doc,
                  tuple(state.completed_runs), folder,
                  functools.partial(with_table_counts, out, job.config.table.formats[0]), manifest=None)
