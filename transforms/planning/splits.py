"""Train/val/test splits of the planned patches, with no pixel in two splits. Pure, Beam-free.

Two rules (config `split:`):

- **Blocks** (`{train: 0.8, val: 0.1, test: 0.1, block: 8, seed: 0}`): the grid of each CRS is
  cut into blocks of `block` x `block` patches (block (i, j) holds patch rows
  [i*block, (i+1)*block) and cols likewise, i.e. pixels [i*block*stride, (i+1)*block*stride)).
  A block's split comes from a stable hash, `sha256(f"{seed}:{crs_tag}:{i}:{j}")` (first 8
  bytes, big-endian, / 2**64 = u in [0, 1)), against the cumulative fractions in config order:
  the first split whose cumulative fraction exceeds u. A patch takes the split of the block
  holding its top-left pixel. It depends on nothing but the patch's (crs, row, col), the block
  and the seed: not on the regions, the sampling, the worker count or the run.
- **By region** (`{by: <property>}`): a patch takes its owner region's property value.

**The guard.** With overlap or margin, neighbouring patches share pixels, and blocks alone do
not keep them apart: the last patch of a block overlaps the first of the next. So a patch whose
stored window (the patch plus `margin` px on every side: the pixels a model sees) would share a
pixel with a patch of another split is left out of the plan: with blocks, a patch is kept iff
every block its window reaches into has its split (then two kept patches sharing a pixel share
that pixel's block, hence a split); by region, a patch is kept iff no planned patch whose window
overlaps its own has another split (both sides of a border give way). With `overlap: 0` and
`margin: 0` the block rule leaves nothing out. `pixelbeam plan` counts what the guard left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from typing import Iterable, Optional, Sequence

import numpy as np

from pixelbeam.transforms.planning.grid import GridSpec, crs_tag

SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")
RESERVED = ("all",)  # dataset.json's stats use "all" for the whole dataset


class SplitError(ValueError):
    """A split setting that cannot be used; one line naming the field and the fix."""


@dataclasses.dataclass(frozen=True)
class SplitRule:
    """A resolved `split:`: `fractions` ((name, fraction > 0), ...) in config order with `block`
    and `seed`, or `by` a region property with `region_splits` ((region id, split), ...)."""

    fractions: tuple[tuple[str, float], ...] = ()
    block: int = 8
    seed: int = 0
    by: Optional[str] = None
    region_splits: tuple[tuple[str, str], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Split names: the fractions' order, or the region values sorted."""
        if self.by is not None:
            return tuple(sorted({s for _, s in self.region_splits}))
        return tuple(name for name, _ in self.fractions)

    @property
    def by_region(self) -> dict[str, str]:
        return dict(self.region_splits)


def check_split_name(name: str, field: str) -> str:
    if not SPLIT_NAME.match(name) or name in RESERVED:
        raise SplitError(f"{field}: {name!r} cannot name a split (it names TFRecord shards and dataset.json keys); "
                         f"use letters, digits and '_', not {', '.join(RESERVED)}")
    return name


def region_split_values(regions: Iterable, prop: str) -> tuple[tuple[str, str], ...]:
    """((region id, split), ...) from each region's `prop` (a string or an integer)."""
    out = []
    for region in regions:
        value = region.properties.get(prop)
        if value is None:
            raise SplitError(f"split.by: region {region.region_id!r} has no property {prop!r}; add it to every "
                             "feature (e.g. train, val, test) or split by fractions")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise SplitError(f"split.by: region {region.region_id!r} has {prop}={value!r}; split values must be "
                             "strings or integers")
        out.append((region.region_id, check_split_name(str(value), "split.by")))
    return tuple(sorted(out))


def block_unit(seed: int, crs: str, block_row: int, block_col: int) -> float:
    """A block's stable pseudo-random number in [0, 1): the same on every machine."""
    digest = hashlib.sha256(f"{seed}:{crs_tag(crs)}:{block_row}:{block_col}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_of_unit(fractions: Sequence[tuple[str, float]], u: float) -> int:
    """Index of the split whose cumulative fraction first exceeds u (the last one for rounding)."""
    total = 0.0
    for i, (_, fraction) in enumerate(fractions):
        total += fraction
        if u < total:
            return i
    return len(fractions) - 1


def block_splits(rule: SplitRule, crs: str, block_rows: np.ndarray, block_cols: np.ndarray) -> np.ndarray:
    """Split indices of the blocks (block_rows[i], block_cols[i]); each distinct block hashed once."""
    pairs = np.stack([np.asarray(block_rows, np.int64).ravel(), np.asarray(block_cols, np.int64).ravel()], axis=1)
    if not len(pairs):
        return np.zeros(np.shape(block_rows), np.int64)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    fractions = rule.fractions
    index = np.array([split_of_unit(fractions, block_unit(rule.seed, crs, r, c)) for r, c in unique.tolist()])
    return index[inverse.ravel()].reshape(np.shape(block_rows))


def window_blocks(grid: GridSpec, block: int, rows: np.ndarray, cols: np.ndarray):
    """(first block row, last block row, first block col, last block col) each patch's stored
    window reaches into, and its home block (row, col): the block of its top-left pixel."""
    (w, h), (sx, sy), m = grid.patch_size, grid.stride, grid.margin
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    top, left = rows * sy, cols * sx  # pixels from the grid origin
    r0, r1 = (top - m) // (block * sy), (top + h + m - 1) // (block * sy)
    c0, c1 = (left - m) // (block * sx), (left + w + m - 1) // (block * sx)
    return (r0, r1, c0, c1), (rows // block, cols // block)


def rectangle_sums(prefix: np.ndarray, r0, r1, c0, c1) -> np.ndarray:
    """Sums over [r0..r1] x [c0..c1] (inclusive, indices into the table) of a 2-D prefix-sum table
    padded with a leading row and column of zeros."""
    return prefix[r1 + 1, c1 + 1] - prefix[r0, c1 + 1] - prefix[r1 + 1, c0] + prefix[r0, c0]


def padded_prefix(indicator: np.ndarray) -> np.ndarray:
    out = np.zeros((indicator.shape[0] + 1, indicator.shape[1] + 1), np.int64)
    out[1:, 1:] = indicator.cumsum(0).cumsum(1)
    return out


def assign_block_splits(rule: SplitRule, grid: GridSpec, crs: str, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """(split index, kept) of patches (rows[i], cols[i]) by the block rule and its guard."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if not rows.size:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    (r0, r1, c0, c1), (hr, hc) = window_blocks(grid, rule.block, rows, cols)
    home = block_splits(rule, crs, hr, hc)
    if (r0 == r1).all() and (c0 == c1).all():  # no window reaches past its block (no overlap, no margin)
        return home, np.ones(rows.size, bool)
    br, bc = int(r0.min()), int(c0.min())
    nr, nc = int(r1.max()) - br + 1, int(c1.max()) - bc + 1
    grid_r, grid_c = np.meshgrid(np.arange(br, br + nr), np.arange(bc, bc + nc), indexing="ij")
    table = block_splits(rule, crs, grid_r, grid_c)
    same = np.zeros(rows.size, np.int64)
    for k in np.unique(home).tolist():
        prefix = padded_prefix((table == k).astype(np.int64))
        mine = home == k
        same[mine] = rectangle_sums(prefix, r0[mine] - br, r1[mine] - br, c0[mine] - bc, c1[mine] - bc)
    return home, same == (r1 - r0 + 1) * (c1 - c0 + 1)


def overlap_reach(grid: GridSpec) -> tuple[int, int]:
    """(rows, cols): how many patches away a stored window can still share a pixel."""
    (w, h), (sx, sy), m = grid.patch_size, grid.stride, grid.margin
    return math.ceil((h + 2 * m) / sy) - 1, math.ceil((w + 2 * m) / sx) - 1


def assign_region_splits(rule: SplitRule, grid: GridSpec, rows, cols, owners, around) -> tuple[np.ndarray, np.ndarray]:
    """(split index, kept) of patches (rows, cols, owners) by owner region, with the guard
    against `around`: (rows, cols, owners) of every planned patch within `overlap_reach` of them
    (they may include the patches themselves)."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    names = {name: i for i, name in enumerate(rule.names)}
    by_region = rule.by_region
    home = np.array([names[by_region[o]] for o in owners], np.int64)
    if not rows.size:
        return home, np.zeros(0, bool)
    reach_r, reach_c = overlap_reach(grid)
    if not reach_r and not reach_c:
        return home, np.ones(rows.size, bool)
    ar, ac, ao = (np.asarray(a) for a in around)
    all_r = np.concatenate([rows, ar.astype(np.int64)])
    all_c = np.concatenate([cols, ac.astype(np.int64)])
    r_lo, c_lo = int(all_r.min()) - reach_r, int(all_c.min()) - reach_c
    table = np.full((int(all_r.max()) + reach_r - r_lo + 1, int(all_c.max()) + reach_c - c_lo + 1), -1, np.int64)
    table[all_r - r_lo, all_c - c_lo] = np.concatenate([home, [names[by_region[o]] for o in ao.tolist()]]).astype(np.int64)
    planned = padded_prefix((table >= 0).astype(np.int64))
    r0, r1, c0, c1 = rows - r_lo - reach_r, rows - r_lo + reach_r, cols - c_lo - reach_c, cols - c_lo + reach_c
    same = np.zeros(rows.size, np.int64)
    for k in np.unique(home).tolist():
        mine = home == k
        prefix = padded_prefix((table == k).astype(np.int64))
        same[mine] = rectangle_sums(prefix, r0[mine], r1[mine], c0[mine], c1[mine])
    return home, same == rectangle_sums(planned, r0, r1, c0, c1)


def windows_overlap(grid: GridSpec, a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether the stored windows of patches a = (row, col) and b share a pixel."""
    (w, h), (sx, sy), m = grid.patch_size, grid.stride, grid.margin
    return abs(a[0] - b[0]) * sy < h + 2 * m and abs(a[1] - b[1]) * sx < w + 2 * m
