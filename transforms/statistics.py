"""PatchStatistics: per (split, layer) band statistics of the written patches, combined inside
the pipeline and written to `stats/<run_id>.json` (pure core: transforms/pixels/stats.py).

Each written patch is cut into its layers (today one, `image`: the source) and keyed by
(split, layer); `CombinePerKey` merges `LayerStats` accumulators (combiner lifting: partial
statistics per bundle before the shuffle, never a patch), and one small JSON file records the
run's mergeable states. The launcher merges the files of the completed runs into dataset.json
(pipeline/stats.py), so a rerun that fetches only what is missing still reports statistics of
every written patch: patches carried over are counted by the run that wrote them, and a patch
fetched again because one of its files went missing, or written again in a format a rerun adds
(`written_before`), is not counted twice.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Iterator, Optional

import apache_beam as beam
import numpy as np

from pixelbeam.transforms.patch import INPUT, TARGET, Patch
from pixelbeam.transforms.pixels.stats import LayerStats
from pixelbeam.transforms.storage import join, write_atomically

STATS_FOLDER = "stats"


def stats_relpath(run_id: str) -> str:
    return f"{STATS_FOLDER}/{run_id or 'run'}.json"


@dataclasses.dataclass(frozen=True)
class LayerValues:
    """One layer of one patch: `data` (C, H, W) or (T, C, H, W), `mask` True where valid."""

    layer: str
    bands: tuple[str, ...]
    data: np.ndarray
    mask: np.ndarray
    target: bool = False


def patch_layers(patch: Patch, roles: dict[str, str]) -> list[LayerValues]:
    """The layers of a written patch (a single-source patch is the layer `image`), each with
    its own mask; target layers (`roles`) also get class counts."""
    return [LayerValues(name, tuple(layer.band_names), layer.data, layer.mask, roles.get(name, INPUT) == TARGET)
            for name, layer in patch.layers.items()]


def keyed_layers(patch: Patch, roles: dict[str, str]) -> Iterator[tuple[tuple, LayerValues]]:
    """((split, layer), pixels) for each layer of a patch this run adds to the dataset; a
    patch refetched only to rewrite a missing file is counted by the run that first wrote it."""
    if patch.spec.written_before:
        return
    for layer in patch_layers(patch, roles):
        yield (patch.spec.split, layer.layer), layer


class LayerStatsFn(beam.CombineFn):
    """LayerValues -> LayerStats; the accumulator is made from the first input (bands, dtype)."""

    def create_accumulator(self) -> Optional[LayerStats]:
        return None

    def add_input(self, acc: Optional[LayerStats], px: LayerValues) -> LayerStats:
        if acc is None:
            acc = LayerStats.empty(px.bands, px.data.dtype, px.target)
        acc.add(px.data, px.mask)
        return acc

    def merge_accumulators(self, accs) -> Optional[LayerStats]:
        out = None
        for i, acc in enumerate(accs):
            if acc is None:
                continue
            if out is None:  # only the first accumulator may be modified
                out = acc if i == 0 else LayerStats.from_state(acc.to_state())
            else:
                out.merge(acc)
        return out

    def extract_output(self, acc: Optional[LayerStats]) -> Optional[dict]:
        return acc.to_state() if acc is not None else None


def stats_document(entries, run_id: str) -> bytes:
    """The run's stats file: {"run_id", "entries": [{"split", "layer", "state"}]}."""
    rows = sorted(({"split": split, "layer": layer, "state": state} for (split, layer), state in entries
                   if state is not None), key=lambda e: (e["split"] or "", e["layer"]))
    return json.dumps({"run_id": run_id, "entries": rows}, separators=(",", ":")).encode("utf-8")


def write_stats_file(entries, output_path: str, run_id: str) -> str:
    path = join(output_path, stats_relpath(run_id))
    write_atomically(path, stats_document(entries, run_id))
    return path


@dataclasses.dataclass
class PatchStatistics(beam.PTransform):
    """Written Patches -> `stats/<run_id>.json` (the run's mergeable statistics); returns the
    path written (one element)."""

    output_path: str
    run_id: str
    roles: dict = dataclasses.field(default_factory=dict)  # layer -> input | target

    def __post_init__(self):
        super().__init__()

    def expand(self, patches):
        return (patches
                | "KeyBySplitAndLayer" >> beam.FlatMap(keyed_layers, self.roles)
                | "CombineLayerStats" >> beam.CombinePerKey(LayerStatsFn())
                | "CollectStats" >> beam.combiners.ToList()
                | "WriteStatsFile" >> beam.Map(write_stats_file, self.output_path, self.run_id))
