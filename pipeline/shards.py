"""The WebDataset shards of a planned job (`output.formats: [webdataset]`): how many per split
and which holds each patch (transforms/formats/webdataset.py)."""

from __future__ import annotations

import re
from typing import Iterable, Optional

from apache_beam.io.filesystems import FileSystems

from pixelbeam.transforms.formats.webdataset import ShardNaming, shard_count


def job_shard_naming(job, run_id: str) -> Optional[ShardNaming]:
    """This run's ShardNaming: each split's (or the job's) planned patches at `job.bytes_per_patch`
    plus a mask byte per pixel, over `output.shard_size_mb`; None without webdataset output."""
    out = job.config.output
    if "webdataset" not in out.formats:
        return None
    height, width = job.fetch_shape
    layers = max(1, len(job.layers))
    per_sample = job.bytes_per_patch + layers * height * width * (job.time_steps or 1) + 1024  # + masks, JSON row
    counts = (tuple((name, count) for name, count in job.split_counts.items()) if job.split_counts is not None
              else ((None, job.planned),))
    return ShardNaming(run_id, tuple((name, shard_count(n, per_sample, out.shard_size_mb)) for name, n in counts))


def webdataset_entry(job) -> dict:
    """dataset.json's `webdataset` entry (docs/outputs.md), {} without webdataset output."""
    out = job.config.output
    if "webdataset" not in out.formats:
        return {}
    layers = [layer.name for layer in job.layers] if job.layered else []
    stems = [f"{{patch_id}}.{name}" for name in layers] or ["{patch_id}"]
    members = [m for stem in stems for m in (f"{stem}.npy", f"{stem}.mask.npy")] + ["{patch_id}.json"]
    return {"webdataset": {"files": "shards/*.tar", "shards_of_run": "shards/<split>-<run>-NNNNNN.tar, for each run in runs "
                                                                    "(<split> is `patches` without splits)",
                           "members": members, "key": "{patch_id}", "shard_size_mb": out.shard_size_mb}}


SHARD_IN_ROW = re.compile(rb'"(shards/[^"/]+\.tar)"')


def shards_missing(job, manifest: str, present: Iterable[str]) -> bool:
    """True when a shard that a row of `manifest` names is not `present` (the file names in
    shards/): a rerun must write its patches again; False without webdataset output. Scans lines
    for the names, no JSON parsing."""
    out = job.config.output
    if "webdataset" not in out.formats:
        return False
    named = set()
    with FileSystems.open(manifest) as f:
        for line in f:
            named.update(SHARD_IN_ROW.findall(line))
    return not named <= {f"shards/{name}".encode() for name in present}
