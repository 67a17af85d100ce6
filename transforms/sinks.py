"""Sinks: NPY files, TFRecord shards, manifest and dead letters, through Beam's filesystems
(so a local folder and gs://bucket/prefix work alike).

Per-patch files (NPY, GeoTIFF, PNG, JPEG) are written atomically (a temporary name, then a rename); TFRecord shards, the
manifest and the dead letters use Beam's file sinks, which finalize by renaming whole files.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes

from pixelbeam.transforms.formats.encode import layers_to_example, patch_to_example
from pixelbeam.transforms.formats.files import PatchFileOptions, encode_patch_files, per_patch_formats
from pixelbeam.transforms.outcomes import filter_reason, filtered_row, failed_row, written_row
from pixelbeam.transforms.patch import FAILED, FILTERED, FailedPatch, Patch
from pixelbeam.transforms.storage import join, to_json_line, write_atomically

TFRECORD_PREFIX = "tfrecord/patches"
TFRECORD_SUFFIX = ".tfrecord.gz"
WRITTEN_PATCHES = "written_patches"  # the patches whose files were written (for statistics)


def tfrecord_prefix(run_id: str = "", split: Optional[str] = None) -> str:
    """Shard prefix relative to the output path: `tfrecord/patches-<run>`, or with a split
    `tfrecord/<split>-<run>` (shards add `-SSSSS-of-NNNNN.tfrecord.gz`)."""
    head = f"tfrecord/{split}" if split is not None else TFRECORD_PREFIX
    return f"{head}-{run_id}" if run_id else head


def patch_files(templates, patch_id: str, split: Optional[str] = None) -> list[str]:
    """The files a patch was written to, relative to the output path."""
    return [t.format(patch_id=patch_id, split=split) for t in templates]


def shared_files(patch: Patch, templates) -> list[str]:
    """The shared files (TFRecord shards) that hold a patch's record: this run's, or for a patch
    refetched only for a missing per-patch file, those of the run that wrote its example."""
    if patch.spec.in_tfrecord:
        return list(patch.spec.tfrecord_files)
    return patch_files(templates, patch.spec.patch_id, patch.spec.split)


class JudgePatches(beam.DoFn):
    """Main output: patches to write; FILTERED: manifest rows of patches filtered out."""

    def __init__(self, max_masked_ratio: float):
        self.max_masked_ratio = max_masked_ratio

    def process(self, patch: Patch):
        reason = filter_reason(patch, self.max_masked_ratio)
        if reason is None:
            yield patch
        else:
            yield beam.pvalue.TaggedOutput(FILTERED, filtered_row(patch, reason))


class WritePatchFiles(beam.DoFn):
    """Writes each per-patch file (NPY, GeoTIFF, PNG, JPEG; see transforms/formats/files.py)
    atomically; main output the patch's manifest row listing them and then `shared` (e.g. the
    TFRecord shards), FAILED the FailedPatch of an encoding or write that raised, WRITTEN_PATCHES
    the patch itself once its files are written."""

    def __init__(self, output_path: str, options: PatchFileOptions, shared: tuple[str, ...] = ()):
        self.output_path, self.options, self.shared = output_path, options, shared

    def process(self, patch: Patch):
        files = []
        try:
            for relpath, data in encode_patch_files(patch, self.options):
                write_atomically(join(self.output_path, relpath), data)
                files.append(relpath)
        except Exception as e:  # e.g. a full disk or a permission error: dead-letter the patch
            yield beam.pvalue.TaggedOutput(FAILED, FailedPatch(patch.spec, "write", type(e).__name__, str(e)))
            return
        yield written_row(patch, files + shared_files(patch, self.shared))
        yield beam.pvalue.TaggedOutput(WRITTEN_PATCHES, patch)


@dataclasses.dataclass
class WritePatches(beam.PTransform):
    """Patches -> files; returns (manifest rows of written patches, FailedPatches, the written
    Patches)."""

    output_path: str
    formats: tuple[str, ...]
    tfrecord_shards: int = 0
    run_id: str = ""  # each run writes its own shards: patches-<run_id>-SSSSS-of-NNNNN
    file_options: Optional[PatchFileOptions] = None  # per-patch files; default: NPY (C, H, W) if in formats
    splits: tuple[str, ...] = ()  # split names: shards <split>-<run_id>-SSSSS-of-NNNNN per split
    layers: tuple[str, ...] = ()  # with layers: their order in each TFRecord example (`<layer>/<band>` features)
    with_written: bool = False  # also return the written Patches (e.g. for PatchStatistics)

    def __post_init__(self):
        super().__init__()
        self.finalized = []  # after expand: PCollections of the shard files once finalized (a run's last stage waits on them)

    def expand(self, patches):
        pipeline = patches.pipeline
        files = []  # shared by many patches
        if "tfrecord" in self.formats:
            new = patches | "NotYetInTFRecord" >> beam.Filter(lambda p: not p.spec.in_tfrecord)
            if self.splits:  # issue 14: one set of shards per split
                files.append(f"{tfrecord_prefix(self.run_id, '{split}')}-*{TFRECORD_SUFFIX}")
                by_split = new | "BySplit" >> beam.Partition(
                    lambda p, n, names=self.splits: names.index(p.spec.split), len(self.splits))
                for name, part in zip(self.splits, by_split):
                    self._write_tfrecord(part, tfrecord_prefix(self.run_id, name), f"[{name}]")
            else:
                files.append(f"{tfrecord_prefix(self.run_id)}-*{TFRECORD_SUFFIX}")
                self._write_tfrecord(new, tfrecord_prefix(self.run_id))
        options = self.file_options or PatchFileOptions(formats=per_patch_formats(self.formats))
        if options.formats:
            written = patches | "WritePatchFiles" >> beam.ParDo(
                WritePatchFiles(self.output_path, options, tuple(files))).with_outputs(
                    FAILED, WRITTEN_PATCHES, main="rows")
            return (written.rows, written[FAILED]) + ((written[WRITTEN_PATCHES],) if self.with_written else ())
        rows = patches | "ManifestRows" >> beam.Map(
            lambda p, t=tuple(files): written_row(p, shared_files(p, t)))
        return (rows, pipeline | "NoWriteFailures" >> beam.Create([])) + ((patches,) if self.with_written else ())

    def _write_tfrecord(self, patches, prefix: str, label: str = ""):
        shard_names = (patches
                       | f"EncodeExamples{label}" >> beam.Map(encode_record, self.layers)
                       | f"WriteTFRecord{label}" >> beam.io.WriteToTFRecord(
                           join(self.output_path, prefix), file_name_suffix=TFRECORD_SUFFIX,
                           compression_type=CompressionTypes.GZIP, num_shards=self.tfrecord_shards))
        self.finalized.append(shard_names)


def encode_record(patch: Patch, layers: tuple[str, ...] = ()) -> bytes:
    """A patch's TFRecord example: Earth Engine's layout for one source, `<layer>/` features with layers."""
    return layers_to_example(patch, layers) if layers else patch_to_example(patch)


@dataclasses.dataclass
class WriteReports(beam.PTransform):
    """`(rows, failed)` -> `manifest.jsonl` and `failed.jsonl` (one file each): manifest rows
    and FailedPatches, and optionally, third, the rows of patches carried from earlier runs."""

    output_path: str
    run_id: str = ""

    def __post_init__(self):
        super().__init__()
        self.finalized = []  # after expand: PCollections of manifest.jsonl and failed.jsonl's names once finalized

    def expand(self, inputs):
        rows, failed, *carried = inputs  # carried: rows of patches done by earlier runs, kept as they were
        failed_rows = failed | "FailedRows" >> beam.Map(failed_row)
        new_rows = ((rows, failed_rows) | "NewRows" >> beam.Flatten()
                    | "StampRunId" >> beam.Map(lambda row, run=self.run_id: {**row, "run_id": run}))
        all_rows = (new_rows, *carried) | "AllRows" >> beam.Flatten()
        manifest = (all_rows
                    | "ManifestJson" >> beam.Map(to_json_line)
                    | "WriteManifest" >> beam.io.WriteToText(join(self.output_path, "manifest.jsonl"),
                                                            shard_name_template="", num_shards=1))
        dead_letters = (failed
                        | "DeadLetterJson" >> beam.Map(lambda f: to_json_line(f.to_record()))
                        | "WriteDeadLetters" >> beam.io.WriteToText(join(self.output_path, "failed.jsonl"),
                                                                   shard_name_template="", num_shards=1))
        self.finalized += [manifest, dead_letters]
        return all_rows
