"""After a run: read the manifest back, count outcomes, collect request metrics, write dataset.json."""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from pipeline.plan import Job
from transforms.encode import feature_spec
from transforms.outputs import npy_shape
from transforms.patch import FAILED, FILTERED, WRITTEN
from transforms.sinks import join, write_atomically


@dataclasses.dataclass
class RunSummary:
    planned: int
    counts: dict
    elapsed_s: float
    metrics: dict
    duplicates: int = 0
    carried: int = 0  # patches done by earlier runs and not fetched again

    @property
    def accounted(self) -> int:
        return sum(self.counts.values())

    @property
    def complete(self) -> bool:
        """Every planned patch has exactly one manifest row."""
        return self.accounted == self.planned and self.duplicates == 0

    def lines(self) -> list[str]:
        c = self.counts
        fetched = self.accounted - self.carried
        rate = fetched / self.elapsed_s if self.elapsed_s > 0 else 0.0
        table = {"planned": self.planned, "written": c.get(WRITTEN, 0), "filtered": c.get(FILTERED, 0),
                 "failed": c.get(FAILED, 0), "seconds": f"{self.elapsed_s:.1f}", "patches/s": f"{rate:.1f}"}
        widths = [max(len(k), len(str(v))) for k, v in table.items()]
        out = ["  ".join(k.rjust(w) for k, w in zip(table, widths)),
               "  ".join(str(v).rjust(w) for v, w in zip(table.values(), widths))]
        if self.carried:
            out.append(f"resumed: {self.carried} patches done by earlier runs, {fetched} fetched in this run")
        m = self.metrics
        if m:
            retries = sum(v for k, v in m.items() if k.startswith("retries_"))
            out.append(f"requests {m.get('requests', 0)} | retries {retries} | 429s {m.get('quota_errors', 0)} | "
                       f"throttled {m.get('throttling-msecs', 0) / 1000:.1f} thread-s | bytes {m.get('bytes', 0)}")
        if not self.complete:
            out.append(f"INCOMPLETE: {self.accounted} manifest rows ({self.duplicates} duplicated) for "
                       f"{self.planned} planned patches")
        return out


def read_manifest(output_path: str) -> list[dict]:
    path = join(output_path, "manifest.jsonl")
    if not FileSystems.exists(path):
        return []
    with FileSystems.open(path) as f:
        return [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]


def count_outcomes(rows: list[dict]) -> tuple[dict, int]:
    """Statuses counted once per patch id, and how many ids appear more than once."""
    by_id = collections.Counter(r["patch_id"] for r in rows)
    statuses = collections.Counter(r["status"] for r in {r["patch_id"]: r for r in rows}.values())
    return dict(statuses), sum(n - 1 for n in by_id.values() if n > 1)


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
        "tfrecord": {"files": "tfrecord/patches-*.tfrecord.gz", "compression": "GZIP",
                     "shards_of_run": "tfrecord/patches-<run>-*.tfrecord.gz, for each run in runs",
                     "features": feature_spec(job.info.band_names, height, width, time_steps=job.time_steps,
                                              label_dtype=job.label_dtype)},
        "config": job.config.model_dump(mode="json"),
        **({"times": list(job.info.collection.step_times)} if job.time_steps else {}),  # a stack's steps
    }


def write_dataset_json(job: Job, fingerprint: str = "", runs: Sequence[str] = (), plan_digest: str = "") -> str:
    path = join(job.config.output.path, "dataset.json")
    doc = dataset_description(job, fingerprint, runs, plan_digest)
    write_atomically(path, json.dumps(doc, indent=2).encode("utf-8"))
    return path


def summarize(job: Job, result, elapsed_s: float) -> RunSummary:
    counts, duplicates = count_outcomes(read_manifest(job.config.output.path))
    metrics = beam_metrics(result)
    return RunSummary(planned=job.planned, counts=counts, elapsed_s=elapsed_s, metrics=metrics,
                      duplicates=duplicates, carried=metrics.get("patches_carried", 0))
