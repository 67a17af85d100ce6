"""After a run: read the manifest back, count outcomes, collect request metrics, write dataset.json."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
from typing import Iterable, Iterator, Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems

from pixelbeam.pipeline.plan import Job
from pixelbeam.pipeline.outputs import job_file_options
from pixelbeam.pipeline.results import Requests
from pixelbeam.pipeline.stats import recorded_stats
from pixelbeam.transforms.formats.encode import LAYER_SEPARATOR, feature_spec, layers_feature_spec
from pixelbeam.transforms.formats.files import npy_shape
from pixelbeam.transforms.patch import FAILED, FILTERED, WRITTEN
from pixelbeam.pipeline.shards import webdataset_entry
from pixelbeam.transforms.sinks import TFRECORD_SUFFIX, tfrecord_prefix
from pixelbeam.transforms.secrets import hide_secrets_in
from pixelbeam.transforms.storage import join, write_atomically


@dataclasses.dataclass
class RunSummary:
    planned: int
    counts: dict
    elapsed_s: float
    metrics: dict
    duplicates: int = 0
    carried: int = 0  # patches done by earlier runs and not fetched again
    restored: int = 0  # written patches read back from their NPY files to write the formats this run adds

    @property
    def accounted(self) -> int:
        return sum(self.counts.values())

    @property
    def complete(self) -> bool:
        """Every planned patch has exactly one manifest row."""
        return self.accounted == self.planned and self.duplicates == 0

    def lines(self) -> list[str]:
        c = self.counts
        fetched = self.accounted - self.carried - self.restored
        rate = fetched / self.elapsed_s if self.elapsed_s > 0 else 0.0
        table = {"planned": self.planned, "written": c.get(WRITTEN, 0), "filtered": c.get(FILTERED, 0),
                 "failed": c.get(FAILED, 0), "seconds": f"{self.elapsed_s:.1f}", "patches/s": f"{rate:.1f}"}
        widths = [max(len(k), len(str(v))) for k, v in table.items()]
        out = ["  ".join(k.rjust(w) for k, w in zip(table, widths)),
               "  ".join(str(v).rjust(w) for v, w in zip(table.values(), widths))]
        if self.restored:
            out.append(f"added formats: {self.restored} written patches read back from their NPY files "
                       f"(not fetched), {fetched} fetched in this run")
        elif self.carried:
            out.append(f"resumed: {self.carried} patches done by earlier runs, {fetched} fetched in this run")
        if self.metrics:
            r = Requests.from_counters(self.metrics)
            out.append(f"requests {r.requests} | retries {r.retries} | 429s {r.quota_errors} | "
                       f"throttled {r.throttled_s:.1f} thread-s | fetched bytes {r.bytes}")
        if not self.complete:
            out.append(f"INCOMPLETE: {self.accounted} manifest rows ({self.duplicates} duplicated) for "
                       f"{self.planned} planned patches")
        return out


MANIFEST_CHUNK_BYTES = 8 << 20  # manifest.jsonl is read this many bytes at a time

# A line as `to_json_line(manifest_row(...))` writes it: `{"patch_id":"…",…,"status":"…"` with
# only top-level scalar pairs (no escapes) before "status". Everything the pattern consumes is
# then provably top level, so the two values it captures are exactly what json.loads would give.
# Any other line (blank, spaced, escaped, reordered, nested first) goes through json.loads.
_SCALAR = rb'(?:"[^"\\]*"|-?[0-9][0-9.eE+-]*|null|true|false)'
_PAIRS = rb'(?:"[^"\\]*":' + _SCALAR + rb',)*?'
_FAST_ROW = re.compile(rb'[ \t\r]*\{' + _PAIRS + rb'"patch_id":"([^"\\]*)",' + _PAIRS + rb'"status":"([^"\\]*)"[,}]')


def manifest_keys(path: str, chunk_bytes: int = MANIFEST_CHUNK_BYTES) -> Iterator[tuple[bytes, bytes]]:
    """(patch_id, status) of each non-blank line of a manifest.jsonl (local or gs://), as UTF-8
    bytes, read `chunk_bytes` at a time: memory does not grow with the file. Only these two
    values are extracted from a line in the usual layout; the rest of it is not validated."""
    with FileSystems.open(path) as f:
        number, rest = 0, b""
        while True:
            chunk = f.read(chunk_bytes)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop() if chunk else b""  # the last piece may continue in the next chunk
            for line in lines:
                number += 1
                fast = _FAST_ROW.match(line)
                if fast:
                    yield fast[1], fast[2]
                elif line.strip():
                    yield _parse_keys(line, path, number)
            if not chunk:
                return


def _parse_keys(line: bytes, path: str, number: int) -> tuple[bytes, bytes]:
    """(patch_id, status) of one manifest line by a full JSON parse (the unusual layouts)."""
    try:
        row = json.loads(line)
        patch_id, status = row["patch_id"], row["status"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: line {number} is not a manifest row with patch_id and status "
                         f"({type(e).__name__}: {e}); the file is damaged: rerun with --overwrite") from e
    if not isinstance(patch_id, str) or not isinstance(status, str):
        raise ValueError(f"{path}: line {number}: patch_id and status must be strings, got "
                         f"{patch_id!r} and {status!r}; the file is damaged: rerun with --overwrite")
    return patch_id.encode("utf-8"), status.encode("utf-8")


def count_outcomes(keys: Iterable[tuple[bytes | str, bytes | str]]) -> tuple[dict, int]:
    """Statuses counted once per patch id (its last row wins, as a rerun appends rows), and how
    many rows repeat an id seen before; `keys` are (patch_id, status) in manifest order.

    Streams: per row it keeps only a 64-bit BLAKE2b hash of the id and a 1-byte status code
    (~18 bytes per row at the peak, while sorting: 180 MB for 10^7 rows), then a stable sort by
    hash groups each id's rows in manifest order. Two ids sharing a hash count as one id with a
    repeat: probability ~n^2/2^65 for n ids (~3e-6 at 10^7). A collision can thus only report a
    complete run as incomplete (a duplicate), never hide a missing or repeated patch."""
    hashes, codes, table = bytearray(), bytearray(), {}
    for patch_id, status in keys:
        if isinstance(patch_id, str):
            patch_id = patch_id.encode("utf-8")
        if isinstance(status, str):
            status = status.encode("utf-8")
        code = table.get(status)
        if code is None:
            if len(table) == 256:
                raise ValueError(f"more than 256 distinct statuses in the manifest (e.g. {status!r}); "
                                 f"expected {WRITTEN}, {FILTERED} or {FAILED}: the file is damaged")
            code = table[status] = len(table)
        hashes += hashlib.blake2b(patch_id, digest_size=8).digest()
        codes.append(code)
    if not codes:
        return {}, 0
    by_hash = np.frombuffer(hashes, dtype="<u8")  # a writable view: sorted in place below
    order = np.argsort(by_hash, kind="stable")  # each id's rows stay in manifest order
    status_codes = np.frombuffer(codes, dtype=np.uint8)[order]
    del order, codes
    by_hash.sort()
    last = np.ones(len(by_hash), dtype=bool)  # the last row of each id
    np.not_equal(by_hash[1:], by_hash[:-1], out=last[:-1])
    tally = np.bincount(status_codes[last], minlength=len(table))
    counts = {status.decode("utf-8"): int(tally[code]) for status, code in table.items() if tally[code]}
    return counts, int(len(last) - np.count_nonzero(last))


def manifest_outcomes(output_path: str) -> tuple[dict, int]:
    """count_outcomes of `<output_path>/manifest.jsonl`, streamed; ({}, 0) if there is none."""
    path = join(output_path, "manifest.jsonl")
    if not FileSystems.exists(path):
        return {}, 0
    return count_outcomes(manifest_keys(path))


def beam_metrics(result) -> dict:
    """Counter totals by name (pixelbeam and throttling namespaces); {} where unsupported."""
    try:
        counters = result.metrics().query()["counters"]
    except Exception:  # e.g. a dry run, or a runner without metrics
        return {}
    totals: dict = collections.defaultdict(int)
    for c in counters:
        if c.key.metric.namespace in ("pixelbeam", "beam-throttling-metrics"):
            totals[c.key.metric.name] += c.committed or c.attempted or 0
    return dict(totals)


def dataset_description(job: Job, fingerprint: str = "", runs: Sequence[str] = (), plan_digest: str = "") -> dict:
    """dataset.json: bands, dtype, shapes, the TFRecord feature spec, the config used, its
    fingerprint and the completed runs whose TFRecord shards hold the written patches."""
    if job.layered:
        return layered_description(job, fingerprint, runs, plan_digest)
    height, width = job.fetch_shape
    return {
        "fingerprint": fingerprint,
        "plan_digest": plan_digest,
        "runs": list(runs),
        "bands": list(job.info.band_names),
        "dtype": job.output_info.dtype,  # after output.scaling / data_type
        "npy_shape": npy_shape(len(job.info.band_names), height, width, job.config.output.bands_axis,
                               time_steps=job.time_steps),
        "bands_axis": job.config.output.bands_axis,
        "patch_size": list(job.grid.patch_size),
        "margin": job.grid.margin,
        "patches_planned": job.planned,
        "crs": job.crs_list,
        "tfrecord": {**tfrecord_files(job),
                     "features": feature_spec(job.info.band_names, height, width, time_steps=job.time_steps,
                                              label_dtype=job.label_dtype)},
        "config": job.config.model_dump(mode="json"),
        **({"times": list(job.info.collection.step_times)} if job.time_steps else {}),  # a stack's steps
        **({"images": [im.image_id for im in job.info.collection.images]} if job.info.collection else {}),
        **split_entries(job),
        **skipped_entries(job),
        **webdataset_entry(job),
    }


def split_shards(job: Job) -> dict:
    """With splits (issue 14), the TFRecord entries name the shards of each split."""
    if not job.split_names:
        return {}
    return {"files": f"tfrecord/*{TFRECORD_SUFFIX}",
            "shards_of_run": f"{tfrecord_prefix('<run>', '<split>')}-*{TFRECORD_SUFFIX}, for each run in runs",
            "splits": {name: f"{tfrecord_prefix('', name)}-*{TFRECORD_SUFFIX}" for name in job.split_names}}


def tfrecord_files(job: Job) -> dict:
    """dataset.json `tfrecord`'s file entries: the shards' names (each run its own; with
    splits, each split its own, issue 14)."""
    return {"files": f"tfrecord/patches-*{TFRECORD_SUFFIX}", "compression": "GZIP",
            "shards_of_run": f"tfrecord/patches-<run>-*{TFRECORD_SUFFIX}, for each run in runs", **split_shards(job)}


def split_entries(job: Job) -> dict:
    """dataset.json's `split` (the config echo) and `patches_planned_per_split`, with splits."""
    if job.split_counts is None:
        return {}
    return {"split": job.config.split.echo(), "patches_planned_per_split": dict(job.split_counts)}


def skipped_entries(job: Job) -> dict:
    """dataset.json's `regions_skipped` with `regions_outside: skip`: each skipped region and why."""
    if job.skipped_regions is None:
        return {}
    return {"regions_skipped": [s.to_record() for s in job.skipped_regions]}


def layered_description(job: Job, fingerprint: str = "", runs: Sequence[str] = (), plan_digest: str = "") -> dict:
    """dataset.json of a `layers:` job: each layer (name, role, kind, bands, dtype, NPY shape
    and files) instead of one `bands`/`dtype`/`npy_shape`, and the `<layer>/` TFRecord features."""
    height, width = job.fetch_shape
    files = job_file_options(job).files("{patch_id}")
    spec = layers_feature_spec([(layer.name, layer.info.band_names, layer.info.time_steps,
                                 layer.info.time_steps or 0) for layer in job.layers], height, width,
                               label_dtype=job.label_dtype)
    return {
        "fingerprint": fingerprint,
        "plan_digest": plan_digest,
        "runs": list(runs),
        "layers": [layer_description(job, layer, [(f, p) for f, name, p in files if name == layer.name])
                   for layer in job.layers],
        "bands_axis": job.config.output.bands_axis,
        "patch_size": list(job.grid.patch_size),
        "margin": job.grid.margin,
        "patches_planned": job.planned,
        "crs": job.crs_list,
        "tfrecord": {**tfrecord_files(job), "features": spec},
        "config": job.config.model_dump(mode="json"),
        **split_entries(job),
        **skipped_entries(job),
        **webdataset_entry(job),
    }


def layer_description(job: Job, layer, files: Sequence[tuple[str, str]]) -> dict:
    """One layer's entry in dataset.json `layers` (docs/outputs.md)."""
    height, width = job.fetch_shape
    info, out = layer.info, layer.output_info
    entry = {"name": layer.name, "role": layer.role, "kind": layer.source_kind_name,
             "bands": list(info.band_names), "dtype": out.dtype, "dtypes": list(out.dtypes),
             "npy_shape": npy_shape(len(info.band_names), height, width, job.config.output.bands_axis,
                                    time_steps=info.time_steps),
             "files": {fmt: path for fmt, path in files},
             "tfrecord_prefix": f"{layer.name}{LAYER_SEPARATOR}"}
    if info.time_steps:
        entry["times"] = list(info.collection.step_times)
    if info.collection:
        entry["images"] = [im.image_id for im in info.collection.images]
    cfg = layer.config
    if layer.kind == "vector":
        entry.update(property=cfg.property, classes=dict(cfg.classes) if cfg.classes is not None else None,
                     background=cfg.background, ignore_value=cfg.ignore_value)
    return entry


def write_dataset_json(job: Job, fingerprint: str = "", runs: Sequence[str] = (), plan_digest: str = "") -> str:
    path = join(job.config.output.path, "dataset.json")
    doc = dataset_description(job, fingerprint, runs, plan_digest)
    doc.update(recorded_stats(job.config.output.path, runs, job.split_names))  # stats, class_counts (issue 14)
    write_atomically(path, json.dumps(hide_secrets_in(doc), indent=2).encode("utf-8"))  # no credential
    return path


def summarize(job: Job, result, elapsed_s: float) -> RunSummary:
    counts, duplicates = manifest_outcomes(job.config.output.path)
    metrics = beam_metrics(result)
    return RunSummary(planned=job.planned, counts=counts, elapsed_s=elapsed_s, metrics=metrics,
                      duplicates=duplicates, carried=metrics.get("patches_carried", 0),
                      restored=metrics.get("patches_restored", 0))
