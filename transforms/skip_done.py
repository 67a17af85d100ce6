"""SkipDonePatches: on a rerun, drop the planned patches an earlier completed run already did.

A worker-side anti-join of the planned PatchSpecs with the previous manifest by patch id, so the
launcher never holds either in memory. A patch is done when a completed run's manifest row says
`written` or `filtered` and, for a written patch, every per-patch file the row lists (NPY,
GeoTIFF, PNG, JPEG, and its WebDataset shard) still exists (checked on the worker just before
fetching would start). Done patches keep their manifest rows; a written patch with a missing file
is fetched again but not added to the TFRecords, which already hold it (its new row names the
shards of the run that wrote its example, issue 15 item 7, not this run's), nor to a new
WebDataset shard while its old one is there (`spec.shard`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pixelbeam.transforms.formats.webdataset import SHARD_FOLDER
from pixelbeam.transforms.patch import FILTERED, WRITTEN, PatchSpec

CARRIED = "carried"


def per_patch_files(row: dict) -> list[str]:
    """The files of one patch a manifest row lists (not the TFRecord shard pattern)."""
    return [f for f in row.get("files", ()) if "*" not in f]


def decide(spec: PatchSpec, row: Optional[dict], output_path: str, exists=FileSystems.exists):
    """(spec to fetch or None, row to carry or None) for one planned patch."""
    if row is None or row["status"] not in (WRITTEN, FILTERED):
        return spec, None
    if row["status"] == WRITTEN:
        missing = [f for f in per_patch_files(row) if not exists(FileSystems.join(output_path, *f.split("/")))]
        if missing:  # a file went missing: write it again, but not into the shards that hold the patch
            held_by = tuple(f for f in row.get("files", ()) if "*" in f)  # the TFRecord shards of the run that wrote it
            shard = next((f for f in per_patch_files(row) if f.startswith(SHARD_FOLDER + "/") and f not in missing), None)
            return dataclasses.replace(spec, in_tfrecord=True, tfrecord_files=held_by, shard=shard), None
    return None, row


class SplitDone(beam.DoFn):
    """(patch_id, {"planned": [spec], "done": [row]}) -> spec to fetch, or CARRIED row."""

    def __init__(self, output_path: str):
        self.output_path = output_path

    def setup(self):
        self.carried = Metrics.counter("pixelbeam", "patches_carried")

    def process(self, keyed):
        patch_id, groups = keyed
        planned, done = list(groups["planned"]), list(groups["done"])
        if not planned:  # a row of a patch that is no longer planned (the regions changed)
            return
        spec, row = decide(planned[0], done[0] if done else None, self.output_path)
        if row is not None:
            self.carried.inc()
            yield beam.pvalue.TaggedOutput(CARRIED, row)
        else:
            yield spec


def done_row(line: str, completed_runs: Sequence[str]) -> list:
    row = json.loads(line)
    return [(row["patch_id"], row)] if row.get("run_id") in completed_runs and row["status"] in (WRITTEN, FILTERED) else []


@dataclasses.dataclass
class SkipDonePatches(beam.PTransform):
    """PCollection[PatchSpec] -> (specs to fetch, rows carried over) given the previous manifest."""

    manifest_path: str
    completed_runs: tuple
    output_path: str

    def __post_init__(self):
        super().__init__()

    def expand(self, specs):
        planned = specs | "KeyPlanned" >> beam.Map(lambda s: (s.patch_id, s))
        done = (specs.pipeline
                | "ReadPreviousManifest" >> beam.io.ReadFromText(self.manifest_path)
                | "DoneRows" >> beam.FlatMap(done_row, self.completed_runs))
        split = ({"planned": planned, "done": done}
                 | "JoinWithManifest" >> beam.CoGroupByKey()
                 | "SplitDone" >> beam.ParDo(SplitDone(self.output_path)).with_outputs(
                     CARRIED, main="todo"))
        return split.todo, split[CARRIED]
