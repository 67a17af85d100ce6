"""Running a point-table job (a `table:` section): plan, resume, the Beam graph
(pipeline/tables/graph.py), table.json and the summary. Called by the CLI."""

from __future__ import annotations

import json
import sys
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from pixelbeam.pipeline import resume
from pixelbeam.pipeline.config import Config, ConfigError
from pixelbeam.pipeline.dataflow import (check_runner, graph_size_problem, is_dry_run, plan_staging, remove_staging,
                                         submission_problems)
from pixelbeam.pipeline.progress import is_local, progress_bar
from pixelbeam.pipeline.runner import fetch_settings, pipeline_options
from pixelbeam.pipeline.tables.graph import build_table_pipeline, count_outputs, table_description
from pixelbeam.pipeline.tables.plan import prepare_table_job
from pixelbeam.pipeline.tables.resume import delete_doomed, plan_table_resume
from pixelbeam.transforms.storage import join, write_atomically


def table_main(command: str, config: Config, beam_args: Sequence[str], as_json: bool = False,
               max_failed_fraction: float = 0.0, overwrite: bool = False) -> int:
    """`pixelbeam plan` / `run` / `retry-failed` for a config with a `table:` section."""
    try:
        job = prepare_table_job(config)
    except ConfigError as e:
        print(f"pixelbeam: error: {e}", file=sys.stderr)
        return 2
    if command == "plan":
        summary = job.summary()
        print(json.dumps(summary, indent=2) if as_json else "\n".join(f"{k:>22}: {v}" for k, v in summary.items()))
        return 0
    options = pipeline_options(beam_args)
    out = config.output.path
    try:  # Dataflow: worker count against the quota, gs:// paths, graph size; before anything is written
        check_staging = plan_staging(options, write=False)
        check_runner(job, options, lambda p: build_table_pipeline(job, p, fetch_settings(job, options),
                                                                  stage_to=check_staging))
    except ConfigError as e:
        print(f"pixelbeam: error: {e}", file=sys.stderr)
        return 2
    if is_dry_run(options):  # DataflowRunner translates the graph; nothing is submitted or written
        pipeline = build_table_pipeline(job, beam.Pipeline(options=options), fetch_settings(job, options),
                                        stage_to=check_staging)
        pipeline.run().wait_until_finish()
        print(f"dry run: DataflowRunner translated the job ({job.rows} planned rows); nothing was submitted or written")
        for problem in submission_problems(job) + [p for p in [graph_size_problem(pipeline)] if p]:
            print(f"note: a real run would stop here: {problem}")
        return 0
    try:
        state = plan_table_resume(job, overwrite)
    except ConfigError as e:
        print(f"pixelbeam: error: {e}", file=sys.stderr)
        return 2
    todo = state.todo(job.groups)
    if not todo:
        print(f"nothing to do: all {job.rows} planned rows are in {out} (--overwrite redoes them)")
        return 0
    started = time.monotonic()
    delete_doomed(state.doomed)
    resume.mark_running(out, state.run_id, state.fingerprint)
    local = is_local(options.view_as(StandardOptions).runner)
    stage_to = plan_staging(options, state.run_id)  # Dataflow: the groups as files, not in the job graph
    with progress_bar(len(todo), enabled=None if local else False, unit="groups") as progress_dir:
        pipeline = build_table_pipeline(job, beam.Pipeline(options=options),
                                        fetch_settings(job, options, progress_dir), todo, state.run_id, stage_to)
        pipeline.run().wait_until_finish()
    remove_staging(stage_to)
    rows, lost, files = count_outputs(job)
    write_atomically(join(out, resume.TABLE_STATE_FILE),
                     json.dumps(table_description(job, rows, lost, files, state), indent=2).encode())
    resume.clear_running(out)
    failed = join(out, "failed.jsonl")
    print(f"rows {rows} of {job.rows} planned | failed {lost} | images {len(job.images)} | pixels {job.pixels} | "
          f"values {rows * len(job.bands)} | {time.monotonic() - started:.1f} s")
    print(f"groups fetched in this run {len(todo)} of {len(job.groups)} (done before: {len(job.groups) - len(todo)})")
    if rows + lost != job.rows:
        print(f"pixelbeam: INCOMPLETE: {rows} rows + {lost} failed for {job.rows} planned", file=sys.stderr)
        return 1
    if lost > max_failed_fraction * job.rows:
        print(f"pixelbeam: {lost} rows failed (see {failed}); rerun to retry them", file=sys.stderr)
        return 1
    return 0
