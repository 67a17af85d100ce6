"""SkipDonePatches: on a rerun, drop the planned patches an earlier completed run already did.

A worker-side anti-join of the planned PatchSpecs with the previous manifest by patch id, so the
launcher never holds either in memory. A patch is done when a completed run's manifest row says
`written` or `filtered` and, for a written patch, every per-patch file the row lists (NPY,
GeoTIFF, PNG, JPEG, and its WebDataset shard) still exists (checked on the worker just before
fetching would start). Done patches keep their manifest rows; a written patch with a missing file
is fetched again but not added to the TFRecords, which already hold it (its new row names the
shards of the run that wrote its example, issue 15 item 7, not this run's), nor to a new
WebDataset shard while its old one is there (`spec.shard`). On a rerun that adds output formats
(`layout`), a written patch whose row lacks one of them goes to RESTORE: it is read back from its
stored NPY files (transforms/restore.py) instead of fetched.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pixelbeam.transforms.formats.stored import StoredLayout, restorable, restored_spec
from pixelbeam.transforms.formats.webdataset import SHARD_FOLDER
from pixelbeam.transforms.patch import FILTERED, WRITTEN, PatchSpec

CARRIED = "carried"
RESTORE = "restore"


def per_patch_files(row: dict) -> list[str]:
    """The files of one patch a manifest row lists (not the TFRecord shard pattern)."""
    return [f for f in row.get("files", ()) if "*" not in f]


def decide(spec: PatchSpec, row: Optional[dict], output_path: str, exists=FileSystems.exists,
           layout: Optional[StoredLayout] = None):
    """(spec to fetch or None, row to carry or None, spec to restore or None) for one planned
    patch. With `layout` (a rerun that adds formats, pipeline/add_formats.py), a written patch
    whose row lacks a format this run writes is restored from its stored NPY files when they
    are there and say enough (transforms/formats/stored.py), else fetched again."""
    if row is None or row["status"] not in (WRITTEN, FILTERED):
        return spec, None, None
    if row["status"] == WRITTEN:
        missing = [f for f in per_patch_files(row) if not exists(FileSystems.join(output_path, *f.split("/")))]
        lacking = layout.lacks(row) if layout is not None and row["status"] == WRITTEN else []
        if not missing and lacking and restorable(row):
            return None, None, restored_spec(spec, row)
        if missing or lacking:  # write it again, but not into the shards that hold the patch
            held_by = tuple(f for f in row.get("files", ()) if "*" in f)  # the TFRecord shards of the run that wrote it
            shard = next((f for f in per_patch_files(row) if f.startswith(SHARD_FOLDER + "/") and f not in missing), None)
            return dataclasses.replace(spec, in_tfrecord=bool(held_by), tfrecord_files=held_by, shard=shard,
                                       written_before=True), None, None
    return None, row, None


class SplitDone(beam.DoFn):
    """(patch_id, {"planned": [spec], "done": [row]}) -> spec to fetch, CARRIED row, or
    RESTORE (spec, row) of a patch to write again from its stored files."""

    def __init__(self, output_path: str, layout: Optional[StoredLayout] = None):
        self.output_path, self.layout = output_path, layout

    def setup(self):
        self.carried = Metrics.counter("pixelbeam", "patches_carried")

    def process(self, keyed):
        patch_id, groups = keyed
        planned, done = list(groups["planned"]), list(groups["done"])
        if not planned:  # a row of a patch that is no longer planned (the regions changed)
            return
        row = done[0] if done else None
        spec, carried, restore = decide(planned[0], row, self.output_path, layout=self.layout)
        if carried is not None:
            self.carried.inc()
            yield beam.pvalue.TaggedOutput(CARRIED, carried)
        elif restore is not None:
            yield beam.pvalue.TaggedOutput(RESTORE, (restore, row))
        else:
            yield spec


def done_row(line: str, completed_runs: Sequence[str]) -> list:
    row = json.loads(line)
    return [(row["patch_id"], row)] if row.get("run_id") in completed_runs and row["status"] in (WRITTEN, FILTERED) else []


@dataclasses.dataclass
class SkipDonePatches(beam.PTransform):
    """PCollection[PatchSpec] -> (specs to fetch, rows carried over) given the previous manifest;
    after expand, `restore` is the PCollection of (spec, row) of the patches to write again from
    their stored files (empty without `layout`)."""

    manifest_path: str
    completed_runs: tuple
    output_path: str
    layout: Optional[StoredLayout] = None  # a rerun that adds formats (pipeline/add_formats.py)

    def __post_init__(self):
        super().__init__()
        self.restore = None

    def expand(self, specs):
        planned = specs | "KeyPlanned" >> beam.Map(lambda s: (s.patch_id, s))
        done = (specs.pipeline
                | "ReadPreviousManifest" >> beam.io.ReadFromText(self.manifest_path)
                | "DoneRows" >> beam.FlatMap(done_row, self.completed_runs))
        split = ({"planned": planned, "done": done}
                 | "JoinWithManifest" >> beam.CoGroupByKey()
                 | "SplitDone" >> beam.ParDo(SplitDone(self.output_path, self.layout)).with_outputs(
                     CARRIED, RESTORE, main="todo"))
        self.restore = split[RESTORE]
        return split.todo, split[CARRIED]
