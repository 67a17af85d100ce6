"""Sampling the planned patches: a reproducible subset per region, and labels. Pure, Beam-free.

`per_region: N, seed: S` keeps exactly min(N, patches of the region) patches of each region:
the N whose rank `sha256(f"{seed}:{patch_id}")` (first 8 bytes, big-endian) is smallest among
the patches the region owns. The launcher already visits every patch index once to count the
plan (cells.count_patches), so it finds each region's N-th smallest rank with a heap of N per
region and hands the thresholds to the workers; a worker expanding a cell keeps a patch iff
its rank <= its owner's threshold. The subset depends only on the seed and the patch ids (not
on the worker count, bundle order or runner), the planned count is exact, and no global Beam
step is needed. (An expected-N hash threshold would need no launcher pass but give N only on
average; exact N is what users of `per_region` ask for.)

`per_class: N` (with `label_property`) is Earth Engine's `stratifiedSample` for patches: the
same ranks and launcher pass, keyed by the owner region's label instead of the region, so each
class keeps exactly min(N, its patches) patches, whichever regions they come from.

Labels: with `label_property`, every region must carry that property; each patch carries its
owner region's value (manifest `label`, TFRecord feature `label`, dataset.json role "label").
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
from typing import Any, Iterable, Optional

import numpy as np

from pixelbeam.transforms.planning.regions import Region
from pixelbeam.transforms.planning.splits import SplitRule

MAX_RANK = 2 ** 64 - 1


class SampleError(ValueError):
    """A sampling setting that cannot be used; one line naming the field and the fix."""


def patch_rank(seed: int, patch_id: str) -> int:
    """A patch's pseudo-random rank in [0, 2**64) for `seed`: the same on every machine."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{patch_id}".encode()).digest()[:8], "big")


@dataclasses.dataclass(frozen=True)
class Sample:
    """Which planned patches are kept and what they carry: `thresholds` (key, max rank) where
    the key is the owner region's id, or its label with `by_class` (empty: keep every patch),
    `labels` (region id, label), and the `split` rule (transforms/planning/splits.py)."""

    seed: int = 0
    thresholds: tuple = ()
    labels: tuple = ()
    split: Optional[SplitRule] = None
    by_class: bool = False  # thresholds are per label (sample.per_class), not per region

    @functools.cached_property
    def _thresholds(self) -> dict:
        return dict(self.thresholds)

    @functools.cached_property
    def _labels(self) -> dict:
        return dict(self.labels)

    def keeps(self, patch_id: str, region_id: str) -> bool:
        if not self.thresholds:
            return True
        key = self.label(region_id) if self.by_class else region_id
        return patch_rank(self.seed, patch_id) <= self._thresholds.get(key, MAX_RANK)

    def label(self, region_id: str) -> Any:
        return self._labels.get(region_id) if self.labels else None


def region_thresholds(owned: Iterable[tuple[str, str]], per_region: int, seed: int) -> tuple:
    """((region id, threshold rank), ...) keeping the `per_region` smallest-ranked patches of
    each region, from (patch id, owner region id) pairs visited once in any order."""
    heaps: dict[str, list[int]] = {}
    for pid, region in owned:
        heap = heaps.setdefault(region, [])
        rank = -patch_rank(seed, pid)  # a max-heap of the N smallest ranks
        if len(heap) < per_region:
            heapq.heappush(heap, rank)
        elif rank > heap[0]:
            heapq.heapreplace(heap, rank)
    return tuple(sorted((r, -heap[0] if len(heap) == per_region else MAX_RANK) for r, heap in heaps.items()))


def class_thresholds(owned: Iterable[tuple[str, str]], per_class: int, seed: int, labels: tuple) -> tuple:
    """((label, threshold rank), ...) keeping the `per_class` smallest-ranked patches of each
    class (the owner region's label), from (patch id, owner region id) pairs."""
    label_of = dict(labels)
    return region_thresholds(((pid, label_of[owner]) for pid, owner in owned), per_class, seed)


def region_labels(regions: Iterable[Region], label_property: str) -> tuple:
    """((region id, label), ...): every region's `label_property` (int, float or string)."""
    out = []
    for region in regions:
        if label_property not in region.properties or region.properties[label_property] is None:
            raise SampleError(f"sample.label_property: region {region.region_id!r} has no property "
                              f"{label_property!r}; add it to every feature or remove label_property")
        value = region.properties[label_property]
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SampleError(f"sample.label_property: region {region.region_id!r} has {label_property}="
                              f"{value!r}; labels must be numbers or strings")
        out.append((region.region_id, value))
    return tuple(sorted(out))


def label_dtype(labels: tuple) -> Optional[str]:
    """The TFRecord dtype of the labels: int64, float32 or string; mixed kinds are an error."""
    if not labels:
        return None
    kinds = {"string" if isinstance(v, str) else "int64" if isinstance(v, (int, np.integer)) else "float32"
             for _, v in labels}
    if kinds == {"int64", "float32"}:
        return "float32"
    if len(kinds) > 1:
        raise SampleError("sample.label_property: labels mix numbers and strings; use one kind")
    return kinds.pop()
