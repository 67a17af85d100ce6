"""Sinks: NPY files, TFRecord shards, manifest and dead letters, through Beam's filesystems
(so a local folder and gs://bucket/prefix work alike).

Per-patch files (NPY, GeoTIFF, PNG, JPEG) appear whole or not at all (`storage.open_once`: on
Cloud Storage one upload straight to the final name, locally a temporary name and a rename);
TFRecord shards, the manifest and the dead letters use Beam's file sinks, which finalize by
renaming whole files; WebDataset shards are written by transforms/shards.py.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from pixelbeam.transforms.formats.encode import layers_to_example, patch_to_example
from pixelbeam.transforms.formats.files import PatchFileOptions, encode_patch_files, per_patch_formats
from pixelbeam.transforms.formats.webdataset import ShardNaming
from pixelbeam.transforms.outcomes import filter_reason, filtered_row, failed_row, written_row
from pixelbeam.transforms.patch import FAILED, FILTERED, FailedPatch, Patch, PatchSpec
from pixelbeam.transforms.shards import WriteShards
from pixelbeam.transforms.storage import is_object_store, join, to_json_line, write_atomically
from pixelbeam.transforms.tfrecord_sink import DEFAULT_LEVEL, WriteTFRecordShards
from pixelbeam.transforms.uploads import UPLOAD_THREADS, UploadPool

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


@dataclasses.dataclass(frozen=True)
class SharedFiles:
    """The files many patches share that a patch's manifest row lists: TFRecord shard patterns
    (`templates`; for a patch refetched only for a missing per-patch file, those of the run that
    wrote its example) and, with `shards`, the one WebDataset shard holding the patch (the completed
    run's `spec.shard` when a rerun refetched it for another missing file)."""

    templates: tuple[str, ...] = ()
    shards: Optional[ShardNaming] = None

    def __call__(self, spec: PatchSpec) -> list[str]:
        if spec.in_tfrecord:  # refetched for a missing per-patch file: the shards of the run that wrote it
            out = list(spec.tfrecord_files)
        else:
            out = patch_files(self.templates, spec.patch_id, spec.split)
        if self.shards is not None:
            out.append(spec.shard or self.shards.relpath(spec.patch_id, spec.split))
        return out


@dataclasses.dataclass(frozen=True)
class ShardRow:
    """The manifest row (as WriteReports writes it) stored in a patch's shard sample."""

    per_patch: tuple[str, ...]  # per-patch file templates with {patch_id}
    shared: SharedFiles
    run_id: str = ""

    def __call__(self, patch: Patch) -> dict:
        files = [t.format(patch_id=patch.spec.patch_id) for t in self.per_patch] + self.shared(patch.spec)
        return {**written_row(patch, files), "run_id": self.run_id}


class JudgePatches(beam.DoFn):
    """Main output: patches to write; FILTERED: manifest rows of patches filtered out (masked
    fraction above `max_masked_ratio`, or no valid pixel at all unless `keep_empty`)."""

    def __init__(self, max_masked_ratio: float = 1.0, keep_empty: bool = False):
        self.max_masked_ratio, self.keep_empty = max_masked_ratio, keep_empty

    def process(self, patch: Patch):
        reason = filter_reason(patch, self.max_masked_ratio, self.keep_empty)
        if reason is None:
            yield patch
        else:
            yield beam.pvalue.TaggedOutput(FILTERED, filtered_row(patch, reason))


class WritePatchFiles(beam.DoFn):
    """Writes each per-patch file (NPY, GeoTIFF, PNG, JPEG; see transforms/formats/files.py)
    whole or not at all; main output the patch's manifest row listing them and then `shared`
    (e.g. the TFRecord shards), FAILED the FailedPatch of an encoding or write that raised,
    WRITTEN_PATCHES the patch itself once its files are written. On an object store (gs://) each
    file is one upload to its final name, from a bounded pool (transforms/uploads.py), so the
    worker encodes the next patch while the last ones upload."""

    def __init__(self, output_path: str, options: PatchFileOptions, shared: SharedFiles = SharedFiles(),
                 upload_threads: int = UPLOAD_THREADS):
        self.output_path, self.options, self.shared = output_path, options, shared
        self.upload_threads = upload_threads

    def setup(self):
        self.pool = UploadPool(self.upload_threads) if is_object_store(self.output_path) else None

    def start_bundle(self):
        if self.pool is not None:  # a bundle that failed and is retried leaves nothing for the next one to emit
            self.pool.pending.clear()

    def teardown(self):
        if getattr(self, "pool", None) is not None:
            self.pool.close()

    def process(self, patch: Patch, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        kept = patch.spec.kept_files  # a rerun adding formats: the stored files, not written again
        try:
            encoded = [(join(self.output_path, relpath), relpath, data)
                       for relpath, data in encode_patch_files(patch, self.options, kept)]
            if self.pool is None:
                for path, _, data in encoded:
                    write_atomically(path, data)
        except Exception as e:  # e.g. a full disk or a permission error: dead-letter the patch
            yield self._failed(patch, e)
            return
        listed = [relpath for _, relpath, _ in encoded]
        if kept:
            listed = [path for _, _, path in self.options.files(patch.spec.patch_id)]
        if self.pool is None:
            yield from self._outputs(patch, listed)
            return
        finished = self.pool.submit((patch, listed, window, timestamp),
                                    [(path, data) for path, _, data in encoded])
        for (done, files, _, _), error in finished:
            yield from ([self._failed(done, error)] if error is not None else self._outputs(done, files))

    def finish_bundle(self):
        if self.pool is None:
            return
        for (patch, files, window, timestamp), error in self.pool.drain():
            outputs = [self._failed(patch, error)] if error is not None else self._outputs(patch, files)
            for out in outputs:
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, WindowedValue(out.value, timestamp, [window]))
                else:
                    yield WindowedValue(out, timestamp, [window])

    def _outputs(self, patch: Patch, files: list[str]) -> list:
        return [written_row(patch, files + self.shared(patch.spec)), beam.pvalue.TaggedOutput(WRITTEN_PATCHES, patch)]

    @staticmethod
    def _failed(patch: Patch, e: BaseException):
        return beam.pvalue.TaggedOutput(FAILED, FailedPatch(patch.spec, "write", type(e).__name__, str(e)))


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
    tfrecord_level: int = DEFAULT_LEVEL  # gzip level of the TFRecord shards (output.tfrecord_compression_level)
    shards: Optional[ShardNaming] = None  # with "webdataset" in formats: which shard each patch goes to

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
        if "webdataset" in self.formats and self.shards is None:
            raise ValueError("the webdataset format needs `shards` (which shard each patch goes to)")
        shared = SharedFiles(tuple(files), self.shards if "webdataset" in self.formats else None)
        if options.formats:
            written = patches | "WritePatchFiles" >> beam.ParDo(
                WritePatchFiles(self.output_path, options, shared)).with_outputs(FAILED, WRITTEN_PATCHES, main="rows")
            rows, failures, done = written.rows, written[FAILED], written[WRITTEN_PATCHES]
        else:
            rows = patches | "ManifestRows" >> beam.Map(lambda p, listed=shared: written_row(p, listed(p.spec)))
            failures, done = pipeline | "NoWriteFailures" >> beam.Create([]), patches
        if shared.shards is not None:  # after the per-patch files: a shard holds only written patches
            self.finalized.append(done | "WriteShards" >> WriteShards(
                self.output_path, shared.shards, ShardRow(options.templates, shared, self.run_id),
                options.layers, options.bands_axis))
        return (rows, failures) + ((done,) if self.with_written else ())

    def _write_tfrecord(self, patches, prefix: str, label: str = ""):
        self.finalized.append(patches
             | f"EncodeExamples{label}" >> beam.Map(encode_record, self.layers)
             | f"WriteTFRecord{label}" >> WriteTFRecordShards(
                 join(self.output_path, prefix), TFRECORD_SUFFIX, self.tfrecord_shards,
                 self.tfrecord_level))  # -> the shard names


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
