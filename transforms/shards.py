"""WriteShards: written patches -> WebDataset tar shards (transforms/formats/webdataset.py).

Patches are grouped by the shard their id names (`ShardNaming`), and each group is streamed into
one tar that appears whole or not at all (`open_once`: straight to its final name on Cloud
Storage, temp + rename locally; a failed write leaves nothing). A patch that a completed run's
shard already holds (`spec.shard`, set on a rerun that refetches a patch because another of its
files went missing) is not written again.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from typing import Callable

import apache_beam as beam
from apache_beam.metrics import Metrics

from pixelbeam.transforms.formats.webdataset import ShardNaming, sample_members, write_tar
from pixelbeam.transforms.patch import Patch
from pixelbeam.transforms.storage import is_object_store, join, open_once

SPOOL_BYTES = 64 * 1024 * 1024  # a shard bound for an object store is spooled in memory up to this, then on disk


class WriteShardFile(beam.DoFn):
    """(shard relpath, patches) -> the shard written; yields the relpath."""

    def __init__(self, output_path: str, row_of: Callable[[Patch], dict], layers: tuple[str, ...], bands_axis: int):
        self.output_path, self.row_of, self.layers, self.bands_axis = output_path, row_of, layers, bands_axis

    def setup(self):
        self.shards = Metrics.counter("pixelbeam", "shards_written")
        self.samples = Metrics.counter("pixelbeam", "shard_samples_written")

    def process(self, keyed):
        relpath, patches = keyed
        path = join(self.output_path, relpath)
        samples = (sample_members(p, self.row_of(p), self.layers, self.bands_axis) for p in patches)
        if is_object_store(path):  # stream the tar to a spool, then upload it in one write
            with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
                count = write_tar(spool, samples)
                spool.seek(0)
                with open_once(path) as f:
                    shutil.copyfileobj(spool, f, 1024 * 1024)
        else:
            with open_once(path) as f:
                count = write_tar(f, samples)
        self.shards.inc()
        self.samples.inc(count)
        yield relpath


@dataclasses.dataclass
class WriteShards(beam.PTransform):
    """PCollection[Patch] -> PCollection[str] (the shards written, relative paths)."""

    output_path: str
    naming: ShardNaming
    row_of: Callable[[Patch], dict]  # the manifest row of a written patch (stored as <patch_id>.json)
    layers: tuple[str, ...] = ()
    bands_axis: int = 0

    def __post_init__(self):
        super().__init__()

    def expand(self, patches):
        naming = self.naming
        return (patches
                | "NotYetInAShard" >> beam.Filter(lambda p: p.spec.shard is None)
                | "KeyByShard" >> beam.Map(lambda p: (naming.relpath(p.spec.patch_id, p.spec.split), p))
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShardFiles" >> beam.ParDo(WriteShardFile(self.output_path, self.row_of, self.layers,
                                                                 self.bands_axis)))
