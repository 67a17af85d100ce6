"""RestorePatches: on a rerun that adds output formats, written patches read back from their
stored NPY files (transforms/formats/stored.py) instead of fetched, so `WritePatches` writes
the new formats from them exactly as from fetched patches. Nothing here makes a pixel request.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pixelbeam.transforms.formats.stored import StoredLayout, stored_patch
from pixelbeam.transforms.patch import FAILED, FailedPatch
from pixelbeam.transforms.storage import join

RESTORED_COUNTER = "patches_restored"


class RestoreStoredPatch(beam.DoFn):
    """(spec, manifest row) -> the stored Patch; FAILED the FailedPatch of files that cannot be
    read back (stage "restore")."""

    def __init__(self, output_path: str, layout: StoredLayout):
        self.output_path, self.layout = output_path, layout

    def setup(self):
        self.restored = Metrics.counter("pixelbeam", RESTORED_COUNTER)

    def read(self, relpath: str) -> bytes:
        with FileSystems.open(join(self.output_path, relpath), compression_type="uncompressed") as f:
            return f.read()

    def process(self, item):
        spec, row = item
        try:
            patch = stored_patch(spec, row, self.layout, self.read)
        except Exception as e:  # a stored file gone or not the patch its row describes
            yield beam.pvalue.TaggedOutput(FAILED, FailedPatch(spec, "restore", type(e).__name__, str(e)))
            return
        self.restored.inc()
        yield patch


@dataclasses.dataclass
class RestorePatches(beam.PTransform):
    """PCollection[(PatchSpec, row)] -> (stored Patches, FailedPatches)."""

    output_path: str
    layout: StoredLayout

    def __post_init__(self):
        super().__init__()

    def expand(self, items):
        out = items | "ReadStoredNpy" >> beam.ParDo(RestoreStoredPatch(self.output_path, self.layout)).with_outputs(
            FAILED, main="patches")
        return out.patches, out[FAILED]
