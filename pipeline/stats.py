"""dataset.json's `stats` and `class_counts`: the mergeable statistics each completed run wrote
(`stats/<run_id>.json`, transforms/statistics.py) merged on the launcher.

`stats[<split or "all">][<layer>][<band>]` holds count, mean, std, min, max, p2 and p98 of the
valid pixels (patch mask, margin included) of every written patch; `class_counts` the pixel
count per class value of target layers' integer bands. "all" merges every split. If a
completed run left no stats file (an output written before statistics existed), the merged
numbers would miss its patches, so neither key is written (a warning says so).
"""

from __future__ import annotations

import json
import logging
from typing import Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from pixelbeam.transforms.pixels.stats import LayerStats
from pixelbeam.transforms.patch import INPUT, SOURCE_LAYER
from pixelbeam.transforms.statistics import stats_relpath
from pixelbeam.transforms.storage import join

log = logging.getLogger(__name__)
ALL = "all"


def layer_roles(job) -> dict[str, str]:
    """{layer: "input" | "target"} of the job's layers: a single `source:` is the input layer
    `image` (target layers get class counts)."""
    if not job.layers:
        return {SOURCE_LAYER: INPUT}
    return {layer.name: layer.role for layer in job.layers}


def read_run_stats(output_path: str, run_id: str) -> Optional[list]:
    """The entries of a run's stats file, or None when it has none."""
    path = join(output_path, stats_relpath(run_id))
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))["entries"]


def merged_layer_stats(output_path: str, runs: Sequence[str]) -> Optional[dict]:
    """{(split, layer): LayerStats} merged over the runs' files; None if a run has no file."""
    merged: dict = {}
    for run in runs:
        entries = read_run_stats(output_path, run)
        if entries is None:
            log.warning("%s: run %s left no statistics (stats/%s.json); dataset.json has no stats: "
                        "rerun with --overwrite to compute them", output_path, run, run)
            return None
        for e in entries:
            part = LayerStats.from_state(e["state"])
            key = (e["split"], e["layer"])
            merged[key] = merged[key].merge(part) if key in merged else part
    return merged


def stats_entries(merged: dict, splits: Sequence[str] = ()) -> dict:
    """{"stats": {split: {layer: {band: summary}}}, "class_counts": ...} with "all" first and
    every split in `splits` (count 0 where nothing of it was written)."""
    by_split: dict = {ALL: {}, **{s: {} for s in splits}}
    for (split, layer), part in sorted(merged.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        whole = by_split[ALL]
        whole[layer] = LayerStats.from_state(part.to_state()) if layer not in whole else whole[layer].merge(part)
        if split is not None:
            by_split.setdefault(split, {})[layer] = part
    for layers in list(by_split.values())[1:]:  # a split with no written patch: zero counts
        for layer, whole in by_split[ALL].items():
            target = whole.classes is not None
            layers.setdefault(layer, LayerStats.empty(whole.bands, "int64" if target else "float64", target))
    stats = {s: {layer: st.summary() for layer, st in layers.items()} for s, layers in by_split.items()}
    classes = {s: {layer: st.class_summary() for layer, st in layers.items() if st.classes is not None}
               for s, layers in by_split.items()}
    out = {"stats": stats}
    if any(classes.values()):
        out["class_counts"] = {s: c for s, c in classes.items() if c}
    return out


def recorded_stats(output_path: str, runs: Sequence[str], splits: Sequence[str] = ()) -> dict:
    """dataset.json's `stats` (and `class_counts`) over the completed runs, or {}."""
    merged = merged_layer_stats(output_path, runs)
    return {} if merged is None else stats_entries(merged, splits)


def with_recorded_stats(output_path: str, splits: Sequence[str], doc: dict, runs: Sequence[str]) -> dict:
    """dataset.json `doc` with the statistics merged over `runs` (a run's last stage completes
    the document it was given with this, pipeline/records.py)."""
    return {**doc, **recorded_stats(output_path, runs, splits)}
