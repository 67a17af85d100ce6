"""Point time series jobs (a `table:` section): Beam graph and run (the plan: pipeline/table_plan.py).

groups of pixels -> FetchPatches (a group is a small window stacked over the collection's
images; the same throttled, retried fetch as patches) -> rows per (pixel, image) -> sharded
Parquet under `output.path/table/`, CSV under `table_csv/` (each run its own shards, `part-<run>-*`),
`failed.jsonl` (one record per group failed in the latest run, naming its points and images),
`table.json` (columns, images, counts over every run's shards, config, and the resume state).
A rerun of the same config fetches only the groups no completed run wrote
(pipeline/table_resume.py). Called from the cli when the config has a `table:` section.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional, Sequence

import apache_beam as beam

from pipeline import resume, table_plan
from pipeline.config import Config, ConfigError
from pipeline.table_plan import TableJob, prepare_table_job
from pipeline.table_resume import TableResume, delete_doomed, plan_table_resume
from transforms.patch import FAILED
from transforms.point_table import group_columns
from transforms.sinks import join, to_json_line, write_atomically
from transforms import staged, table_sink
from transforms.table_sink import FOLDERS


class GroupRows(beam.DoFn):
    """(group id, {'patch': [Patch], 'pixels': [pixels]}) -> (shard, (group id, Arrow table))."""

    def __init__(self, images, bands, dtype, shards):
        self.images, self.bands, self.dtype, self.shards = images, bands, dtype, shards

    def process(self, element):
        key, joined = element
        for patch in joined["patch"]:  # none for a failed group: FailedGroups writes its dead letter
            columns = group_columns(patch.spec, joined["pixels"][0], patch.data, self.images, self.bands)
            table = table_sink.columns_to_table(columns, self.bands, self.dtype)
            yield table_sink.shard_of(key, self.shards), (key, table)


def failed_group_record(element, images) -> dict:
    key, joined = element
    failure, pixels = joined["failed"][0], joined["pixels"][0]
    rec = failure.to_record()
    rec.update(group=key, rows_lost=len(pixels) * len(images), images=[i.image_id for i in images],
               pixels=[{"point_id": p.point_id, "longitude": p.lon, "latitude": p.lat} for p in pixels])
    return rec


def shard_count(job: TableJob, groups: list) -> int:
    """Shards for the rows of `groups`: about ROWS_PER_SHARD (2,000,000) rows each."""
    rows = sum(len(pixels) for _, pixels in groups) * len(job.images)
    return max(1, math.ceil(rows / table_plan.ROWS_PER_SHARD))


def write_shard(out, shard, shards, keyed_tables, formats, schema, run_id) -> list[str]:
    keyed_tables = list(keyed_tables)
    return table_sink.write_shard(out, shard, shards, [t for _, t in keyed_tables], formats, schema,
                                  run_id=run_id, groups=[g for g, _ in keyed_tables])


def build_table_pipeline(job: TableJob, pipeline: beam.Pipeline, settings, groups: Optional[list] = None,
                         run_id: str = "", stage_to=None) -> beam.Pipeline:
    """Fetches `groups` (default every planned group) and writes them as shards of run `run_id`;
    with `stage_to` (pipeline/graph.StageTo) the groups go to files there, not into the graph."""
    from transforms.fetch import FetchPatches
    out = job.config.output.path
    schema = table_sink.arrow_schema(job.bands, job.dtype)
    todo = job.groups if groups is None else groups
    planned = [(spec.patch_id, spec, pixels) for spec, pixels in todo]
    if stage_to is not None:
        planned = staged.stage_chunks(planned, stage_to.folder, "groups", stage_to.write)
    groups = (pipeline | "PlanGroups" >> beam.Create(planned, reshuffle=False)
              | "UnstageGroups" >> beam.FlatMap(staged.unstage_items))
    keyed_pixels = groups | "PixelsByGroup" >> beam.Map(lambda g: (g[0], g[2]))
    fetched = (groups | "Specs" >> beam.Map(lambda g: g[1]) | beam.Reshuffle()
               | "FetchGroups" >> FetchPatches(job.source, job.info, settings))
    patches = fetched.patches | "PatchByGroup" >> beam.Map(lambda p: (p.spec.patch_id, p))
    failures = fetched[FAILED] | "FailureByGroup" >> beam.Map(lambda f: (f.spec.patch_id, f))
    joined = {"patch": patches, "failed": failures, "pixels": keyed_pixels} | "JoinPixels" >> beam.CoGroupByKey()
    formats, shards = tuple(job.config.table.formats), shard_count(job, todo)
    images = job.images  # what the lambdas below need, not the whole job (the graph pickles it)
    _ = (joined | "Rows" >> beam.ParDo(GroupRows(job.images, job.bands, job.dtype, shards))
         | "ByShard" >> beam.GroupByKey()
         | "WriteShards" >> beam.Map(lambda kv: write_shard(out, kv[0], shards, kv[1], formats, schema, run_id)))
    _ = (joined | "FailedGroups" >> beam.Filter(lambda kv: bool(kv[1]["failed"]))
         | "DeadLetter" >> beam.Map(lambda kv: to_json_line(failed_group_record(kv, images)))
         | "WriteDeadLetters" >> beam.io.WriteToText(join(out, "failed.jsonl"), shard_name_template=""))
    return pipeline


def count_outputs(job: TableJob) -> tuple[int, int, list[str]]:
    """(rows written, values lost in failed groups, files), read back from the outputs."""
    from apache_beam.io.filesystems import FileSystems
    out = job.config.output.path
    files = sorted(m.path for result in FileSystems.match([join(out, f"{folder}/part-*") for folder in FOLDERS.values()])
                   for m in result.metadata_list)
    rows = 0
    fmt = job.config.table.formats[0]
    for path in files:
        if fmt == "parquet" and path.endswith(".parquet"):
            import pyarrow.parquet as pq
            with FileSystems.open(path) as f:
                rows += pq.ParquetFile(f).metadata.num_rows
        elif fmt == "csv" and path.endswith(".csv"):  # parsed: a quoted point id may hold a newline
            import pyarrow.csv as pcsv
            with FileSystems.open(path) as f:
                rows += sum(batch.num_rows for batch in pcsv.open_csv(f))
    lost = 0
    failed = join(out, "failed.jsonl")
    if FileSystems.exists(failed):
        with FileSystems.open(failed) as f:
            lost = sum(json.loads(line)["rows_lost"] for line in f if line.strip())
    return rows, lost, [os.path.relpath(p, out) if "://" not in out else p for p in files]


def table_description(job: TableJob, rows: int, lost_rows: int, files: Sequence[str],
                      state: Optional[TableResume] = None) -> dict:
    """table.json: columns, images, counts over every run's shards, the config and, after a run,
    the resume state (fingerprint, plan digest, completed runs including this one)."""
    schema = table_sink.arrow_schema(job.bands, job.dtype)
    meaning = {"id": "image id (file stem / Earth Engine system:index)", "longitude": "pixel centre, degrees",
               "latitude": "pixel centre, degrees", "time": "image start, ms since 1970-01-01 UTC",
               "point_id": "the point or polygon the pixel belongs to"}
    doc = {"mode": "table",
           "columns": [{"name": f.name, "type": str(f.type),
                        "meaning": meaning.get(f.name, "band value; null where masked")} for f in schema],
           "images": [{"id": i.image_id, "time": i.time_ms} for i in job.images],
           "crs": job.grid.crs, "scale": list(job.grid.scale), "planned_rows": job.rows, "rows": rows,
           "failed_rows": lost_rows, "files": list(files), "config": job.config.model_dump(mode="json")}
    if state is not None:
        doc.update(fingerprint=state.fingerprint, plan_digest=state.plan_digest,
                   runs=state.completed_runs + [state.run_id])
    return doc


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
    from pipeline.cli import pipeline_options
    from pipeline.graph import fetch_settings
    options = pipeline_options(beam_args)
    out = config.output.path
    from pipeline.dataflow import (check_runner, graph_size_problem, is_dry_run, plan_staging, remove_staging,
                                   submission_problems)
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
    from apache_beam.options.pipeline_options import StandardOptions
    from pipeline.progress import is_local, progress_bar
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
