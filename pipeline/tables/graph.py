"""Point time series jobs (a `table:` section): Beam graph and run (the plan: pipeline/tables/plan.py).

groups of pixels -> FetchPatches (a group is a small window stacked over the collection's
images; the same throttled, retried fetch as patches) -> rows per (pixel, image) -> sharded
Parquet under `output.path/table/`, CSV under `table_csv/` (each run its own shards, `part-<run>-*`),
`failed.jsonl` (one record per group failed in the latest run, naming its points and images),
`table.json` (columns, images, counts over every run's shards, config, and the resume state).
A rerun of the same config fetches only the groups no completed run wrote
(pipeline/tables/resume.py). Called from the cli when the config has a `table:` section.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional, Sequence

import apache_beam as beam


from pixelbeam.pipeline.tables import plan as table_plan
from pixelbeam.pipeline.tables.plan import TableJob
from pixelbeam.pipeline.tables.resume import TableResume
from pixelbeam.transforms.patch import FAILED
from pixelbeam.transforms.loaders.common import arrow_source
from pixelbeam.transforms.tables.points import group_columns
from pixelbeam.transforms.storage import join, to_json_line
from pixelbeam.transforms.planning import staged
from pixelbeam.transforms.tables import sink as table_sink
from pixelbeam.transforms.tables.sink import FOLDERS


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
                         run_id: str = "", stage_to=None, end=None) -> beam.Pipeline:
    """Fetches `groups` (default every planned group) and writes them as shards of run `run_id`;
    with `stage_to` (pipeline/graph.StageTo) the groups go to files there, not into the graph;
    with `end` (pipeline/records.RunEnd) the last stage records the run once every shard and
    the dead letters are written."""
    from pixelbeam.transforms.fetch import FetchPatches
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
    shard_files = (joined | "Rows" >> beam.ParDo(GroupRows(job.images, job.bands, job.dtype, shards))
                   | "ByShard" >> beam.GroupByKey()
                   | "WriteShards" >> beam.Map(lambda kv: write_shard(out, kv[0], shards, kv[1], formats, schema, run_id)))
    dead_letters = (joined | "FailedGroups" >> beam.Filter(lambda kv: bool(kv[1]["failed"]))
                    | "DeadLetter" >> beam.Map(lambda kv: to_json_line(failed_group_record(kv, images)))
                    | "WriteDeadLetters" >> beam.io.WriteToText(join(out, "failed.jsonl"), shard_name_template=""))
    if end is not None:
        from pixelbeam.pipeline.records import RecordRun
        counts = ((fetched.patches | "CountWritten" >> beam.Map(lambda _: ("this_run.groups_written", 1)),
                   fetched[FAILED] | "CountFailed" >> beam.Map(lambda _: ("this_run.groups_failed", 1)))
                  | "Counts" >> beam.Flatten())
        _ = ({"counts": counts, "shards": shard_files | "ShardFiles" >> beam.FlatMap(list), "reports": dead_letters}
             | "RecordRun" >> RecordRun(end))
    return pipeline


def count_outputs(job: TableJob) -> tuple[int, int, list[str]]:
    """(rows written, values lost in failed groups, files), read back from the outputs."""
    return count_table_files(job.config.output.path, job.config.table.formats[0])


def with_table_counts(out: str, fmt: str, doc: dict, runs: Sequence[str]) -> dict:
    """table.json `doc` with the rows, failed rows and files counted over the outputs (a table
    run's last stage completes the document it was given with this, pipeline/records.py)."""
    rows, lost, files = count_table_files(out, fmt)
    return {**doc, "rows": rows, "failed_rows": lost, "files": files}


def count_table_files(out: str, fmt: str) -> tuple[int, int, list[str]]:
    """`count_outputs` of the output folder `out` whose table's first format is `fmt`."""
    from apache_beam.io.filesystems import FileSystems
    files = sorted(m.path for result in FileSystems.match([join(out, f"{folder}/part-*") for folder in FOLDERS.values()])
                   for m in result.metadata_list)
    rows = 0
    for path in files:
        if fmt == "parquet" and path.endswith(".parquet"):  # not a Python file: see arrow_buffer
            import pyarrow.parquet as pq
            rows += pq.ParquetFile(arrow_source(path)).metadata.num_rows
        elif fmt == "csv" and path.endswith(".csv"):  # parsed: a quoted point id may hold a newline
            import pyarrow.csv as pcsv
            rows += sum(batch.num_rows for batch in pcsv.open_csv(arrow_source(path)))
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
