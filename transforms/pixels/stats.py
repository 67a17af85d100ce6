"""Mergeable per-band statistics of patch pixels: count, mean, std, min, max, p2/p98 and class
counts. Pure numpy, Beam-free (transforms/statistics.py combines them inside the pipeline).

`BandStats` accumulates the valid values of one band: count, mean and the sum of squared
deviations `m2` merged by Chan et al.'s parallel algorithm (numerically stable; no sum of
squares that cancels), exact min and max, and a quantile sketch:

- integer bands of at most 16 bits (uint8, int8, uint16, int16, bool): one bin per value, so
  every percentile is exact (equal to `numpy.percentile`, linear interpolation);
- other bands (floats, 32/64-bit integers): DDSketch's logarithmic buckets (Masson, Rim and
  Lee, VLDB 2019) with relative accuracy `ALPHA` = 0.1%: bucket i holds |x| in
  (gamma^(i-1), gamma^i], gamma = (1 + ALPHA) / (1 - ALPHA), and stands for
  2 gamma^i / (gamma + 1), within ALPHA of every value in it. A percentile interpolates, as
  numpy's linear method does, between the values at ranks floor(q(n-1)) and ceil(q(n-1)), each
  replaced by its bucket's value, so it is within ALPHA * max(|x_lo|, |x_hi|) of
  `numpy.percentile` (|x| below `TINY` = 1.2e-38 counts as 0). Buckets are counts: merging adds
  them, exactly, in any order.

Non-finite values (NaN, inf) of valid pixels are left out of every statistic (`count` says how
many values were used). `std` is the population standard deviation (ddof 0, as `numpy.std`);
for exact bins the mean and std come from integer sums over the histogram, so they are exact
and the same whatever order bundles and runs were merged in.

Why not a library: `ddsketch` adds one value per Python call (65,536 per band of a 256 px
patch) and Apache DataSketches' KLL bounds the rank, not the value, and is randomized; the
bucket mapping above is a few vectorized numpy lines.

States serialize to JSON-safe dicts (`to_state` / `from_state`) so each run can keep its partial
statistics in a file and later runs merge them.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Iterable, Optional, Sequence

import numpy as np

ALPHA = 0.001  # relative accuracy of float percentiles (0.1%)
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LOG_GAMMA = math.log(GAMMA)
TINY = float(np.finfo(np.float32).tiny)  # smaller magnitudes count as 0 in the sketch
EXACT_MAX_BITS = 16  # integer types up to this size get one bin per value
PERCENTILES = (("p2", 0.02), ("p98", 0.98))


@dataclasses.dataclass
class Buckets:
    """Counts of consecutive integer bucket indices starting at `offset` (dense, grown on demand)."""

    offset: int = 0
    counts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add_indices(self, index: np.ndarray) -> None:
        if index.size:
            lo = int(index.min())
            self.add_counts(lo, np.bincount(index - lo).astype(np.int64))

    def add_counts(self, offset: int, counts: np.ndarray) -> None:
        if not len(counts):
            return
        if not len(self.counts):
            self.offset, self.counts = offset, counts.astype(np.int64).copy()
            return
        lo, hi = min(self.offset, offset), max(self.offset + len(self.counts), offset + len(counts))
        if (lo, hi) != (self.offset, self.offset + len(self.counts)):
            grown = np.zeros(hi - lo, np.int64)
            grown[self.offset - lo:self.offset - lo + len(self.counts)] = self.counts
            self.offset, self.counts = lo, grown
        self.counts[offset - lo:offset - lo + len(counts)] += counts

    def to_state(self) -> list:
        nz = np.nonzero(self.counts)[0]
        if not nz.size:
            return [0, []]
        return [self.offset + int(nz[0]), self.counts[nz[0]:nz[-1] + 1].tolist()]

    @classmethod
    def from_state(cls, state: Sequence) -> "Buckets":
        return cls(int(state[0]), np.asarray(state[1], np.int64))


def exact_kind(dtype) -> bool:
    """True for the integer (and bool) types whose every value gets its own bin."""
    dtype = np.dtype(dtype)
    return dtype.kind == "b" or (dtype.kind in "iu" and dtype.itemsize * 8 <= EXACT_MAX_BITS)


def log_index(magnitudes: np.ndarray) -> np.ndarray:
    """DDSketch bucket indices of positive magnitudes (>= TINY)."""
    return np.ceil(np.log(magnitudes) / LOG_GAMMA).astype(np.int64)


def bucket_value(index: np.ndarray) -> np.ndarray:
    """The value a log bucket stands for: within ALPHA (relative) of any magnitude in it."""
    return 2.0 * np.exp(index * LOG_GAMMA) / (GAMMA + 1.0)


@dataclasses.dataclass
class BandStats:
    """Mergeable statistics of one band's valid values (see the module docstring)."""

    exact: bool
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: Optional[float] = None
    max: Optional[float] = None
    values: Buckets = dataclasses.field(default_factory=Buckets)  # exact: bins by value
    positive: Buckets = dataclasses.field(default_factory=Buckets)  # sketch: log buckets of x > 0
    negative: Buckets = dataclasses.field(default_factory=Buckets)  # sketch: log buckets of -x, x < 0
    zeros: int = 0  # sketch: |x| < TINY

    @classmethod
    def for_dtype(cls, dtype) -> "BandStats":
        return cls(exact=exact_kind(dtype))

    def add(self, values: np.ndarray) -> None:
        """Add a 1-D array of valid values."""
        values = np.asarray(values).ravel()
        if values.dtype.kind == "b":
            values = values.astype(np.uint8)
        if self.exact and values.dtype.kind in "iu":
            self._add_exact(values)
            return
        if values.dtype.kind == "f":
            values = values[np.isfinite(values)]
        if not values.size:
            return
        x = values.astype(np.float64)
        mean = float(x.mean())
        self._merge_moments(values.size, mean, float(np.square(x - mean).sum()))
        lo, hi = values.min().item(), values.max().item()
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)
        if self.exact:
            self.values.add_indices(values.astype(np.int64))
        else:
            mag = np.abs(x)
            small = mag < TINY
            self.zeros += int(small.sum())
            self.positive.add_indices(log_index(mag[(x > 0) & ~small]))
            self.negative.add_indices(log_index(mag[(x < 0) & ~small]))

    def _add_exact(self, values: np.ndarray) -> None:
        """`add` for integers of at most 16 bits, from one histogram (a bincount, no float copy
        of the values): count, min, max and the bins as `add` gives them; mean and m2 exactly
        from integer sums (sum x / n; (n sum x^2 - (sum x)^2) / n), correctly rounded."""
        if not values.size:
            return
        if values.dtype.kind == "u":
            offset, counts = 0, np.bincount(values)
        else:
            offset = int(values.min())
            counts = np.bincount(values.astype(np.int64) - offset)
        nz = np.flatnonzero(counts)
        first, last = int(nz[0]), int(nz[-1])
        counts, offset = counts[first:last + 1].astype(np.int64), offset + first
        n, top = int(values.size), max(abs(offset), abs(offset + last - first))
        v = np.arange(offset, offset + len(counts), dtype=np.int64 if n * top * top < 2 ** 62 else object)
        s1, s2 = int(counts @ v), int(counts @ (v * v))
        self._merge_moments(n, s1 / n, (n * s2 - s1 * s1) / n)
        lo, hi = offset, offset + last - first
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)
        self.values.add_counts(offset, counts)

    def _merge_moments(self, n: int, mean: float, m2: float) -> None:
        """Chan, Golub and LeVeque's pairwise update of (count, mean, m2)."""
        if not n:
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def merge(self, other: "BandStats") -> "BandStats":
        if other.exact != self.exact:
            raise ValueError("cannot merge exact and sketched statistics (different dtypes)")
        self._merge_moments(other.count, other.mean, other.m2)
        for mine, theirs in ((self.values, other.values), (self.positive, other.positive),
                             (self.negative, other.negative)):
            mine.add_counts(theirs.offset, theirs.counts)
        self.zeros += other.zeros
        if other.min is not None:
            self.min = other.min if self.min is None else min(self.min, other.min)
            self.max = other.max if self.max is None else max(self.max, other.max)
        return self

    @property
    def std(self) -> Optional[float]:
        return self.moments()[1]

    def moments(self) -> tuple[Optional[float], Optional[float]]:
        """(mean, std). Exact bins give both from integer sums over the histogram (exact, so
        the same in any merge order); the sketch from Chan's running mean and m2."""
        if not self.count:
            return None, None
        if not self.exact:
            return float(self.mean), math.sqrt(max(self.m2, 0.0) / self.count)
        nz = np.nonzero(self.values.counts)[0]
        values = [int(v) + self.values.offset for v in nz.tolist()]
        counts = self.values.counts[nz].tolist()
        n = sum(counts)
        s1 = sum(v * c for v, c in zip(values, counts))
        s2 = sum(v * v * c for v, c in zip(values, counts))
        return float(Fraction(s1, n)), math.sqrt(Fraction(n * s2 - s1 * s1, n * n))

    def value_at_ranks(self, ranks: np.ndarray) -> np.ndarray:
        """The value (exact bins) or bucket value (sketch) of the k-th smallest value, 0-based."""
        if self.exact:
            values = np.arange(len(self.values.counts)) + self.values.offset
            counts = self.values.counts
        else:  # ascending: negatives from the largest magnitude down, zeros, positives up
            neg, pos = self.negative, self.positive
            values = np.concatenate([-bucket_value(np.arange(len(neg.counts))[::-1] + neg.offset), [0.0],
                                     bucket_value(np.arange(len(pos.counts)) + pos.offset)])
            counts = np.concatenate([neg.counts[::-1], [self.zeros], pos.counts])
        where = np.searchsorted(np.cumsum(counts), ranks, side="right")
        return np.clip(values[where].astype(np.float64), self.min, self.max)

    def quantile(self, q: float) -> Optional[float]:
        """numpy.percentile(values, 100 q) (linear): exact for exact bins, else within the
        sketch's bound."""
        if not self.count:
            return None
        pos = q * (self.count - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        v_lo, v_hi = self.value_at_ranks(np.array([lo, hi]))
        return float(v_lo + (v_hi - v_lo) * (pos - lo))

    def summary(self) -> dict:
        """dataset.json's entry: count, mean, std, min, max, p2, p98 (None when count is 0)."""
        mean, std = self.moments()
        out = {"count": int(self.count), "mean": mean, "std": std, "min": self.min, "max": self.max}
        out.update({name: self.quantile(q) for name, q in PERCENTILES})
        return out

    def to_state(self) -> dict:
        state = {"exact": self.exact, "count": self.count, "mean": self.mean, "m2": self.m2,
                 "min": self.min, "max": self.max}
        if self.exact:
            state["values"] = self.values.to_state()
        else:
            state.update(positive=self.positive.to_state(), negative=self.negative.to_state(), zeros=self.zeros)
        return state

    @classmethod
    def from_state(cls, state: dict) -> "BandStats":
        out = cls(exact=bool(state["exact"]), count=int(state["count"]), mean=float(state["mean"]),
                  m2=float(state["m2"]), min=state["min"], max=state["max"])
        if out.exact:
            out.values = Buckets.from_state(state["values"])
        else:
            out.positive, out.negative = Buckets.from_state(state["positive"]), Buckets.from_state(state["negative"])
            out.zeros = int(state["zeros"])
        return out


@dataclasses.dataclass
class ClassCounts:
    """Pixel counts per class value of an integer band (a target layer's classes)."""

    counts: dict = dataclasses.field(default_factory=dict)  # int value -> pixel count

    def add(self, values: np.ndarray) -> None:
        classes, counts = np.unique(np.asarray(values).ravel(), return_counts=True)
        for value, count in zip(classes.tolist(), counts.tolist()):
            self.counts[int(value)] = self.counts.get(int(value), 0) + int(count)

    def merge(self, other: "ClassCounts") -> "ClassCounts":
        for value, count in other.counts.items():
            self.counts[value] = self.counts.get(value, 0) + count
        return self

    def to_state(self) -> dict:
        """{"<class value>": count}, classes in numeric order (JSON keys are strings)."""
        return {str(v): self.counts[v] for v in sorted(self.counts)}

    @classmethod
    def from_state(cls, state: dict) -> "ClassCounts":
        return cls({int(k): int(v) for k, v in state.items()})


def counts_classes(dtype) -> bool:
    """Class counts are kept for integer bands (a float target is a regression target)."""
    return np.dtype(dtype).kind in "iub"


@dataclasses.dataclass
class LayerStats:
    """Statistics of every band of one layer (`bands` in order) and, for a target layer with
    integer bands, pixel counts per class."""

    bands: tuple[str, ...]
    stats: list[BandStats]
    classes: Optional[list[ClassCounts]] = None

    @classmethod
    def empty(cls, bands: Sequence[str], dtype, target: bool = False) -> "LayerStats":
        return cls(tuple(bands), [BandStats.for_dtype(dtype) for _ in bands],
                   [ClassCounts() for _ in bands] if target and counts_classes(dtype) else None)

    def add(self, data: np.ndarray, mask: np.ndarray) -> None:
        """Add a patch layer: `data` (C, H, W) or (T, C, H, W), `mask` (H, W) or (T, H, W),
        True where the pixel is valid. Only valid pixels count."""
        data, mask = np.asarray(data), np.asarray(mask, bool)
        if data.shape[-3] != len(self.bands) or data.shape[:-3] + data.shape[-2:] != mask.shape:
            raise ValueError(f"pixels {data.shape} and mask {mask.shape} do not match bands {self.bands}")
        every = bool(mask.all())  # the common case: no boolean-index copy per band
        for c, band in enumerate(self.stats):
            values = data[..., c, :, :] if every else data[..., c, :, :][mask]
            band.add(values)
            if self.classes is not None:
                self.classes[c].add(values)

    def merge(self, other: "LayerStats") -> "LayerStats":
        if other.bands != self.bands:
            raise ValueError(f"cannot merge statistics of bands {other.bands} into {self.bands}")
        for mine, theirs in zip(self.stats, other.stats):
            mine.merge(theirs)
        if (self.classes is None) != (other.classes is None):
            raise ValueError("cannot merge a target layer's statistics with an input layer's")
        if self.classes is not None:
            for mine, theirs in zip(self.classes, other.classes):
                mine.merge(theirs)
        return self

    def summary(self) -> dict:
        """{band: {count, mean, std, min, max, p2, p98}}."""
        return {band: s.summary() for band, s in zip(self.bands, self.stats)}

    def class_summary(self) -> Optional[dict]:
        """{band: {"<class value>": pixels}}, or None for a layer without class counts."""
        if self.classes is None:
            return None
        return {band: c.to_state() for band, c in zip(self.bands, self.classes)}

    def to_state(self) -> dict:
        state = {"bands": list(self.bands), "stats": [s.to_state() for s in self.stats]}
        if self.classes is not None:
            state["classes"] = [c.to_state() for c in self.classes]
        return state

    @classmethod
    def from_state(cls, state: dict) -> "LayerStats":
        classes = state.get("classes")
        return cls(tuple(state["bands"]), [BandStats.from_state(s) for s in state["stats"]],
                   [ClassCounts.from_state(c) for c in classes] if classes is not None else None)


def merge_all(parts: Iterable[Optional[LayerStats]]) -> Optional[LayerStats]:
    """One LayerStats from several (None entries skipped); None when there is none."""
    out = None
    for part in parts:
        if part is None:
            continue
        out = LayerStats.from_state(part.to_state()) if out is None else out.merge(part)
    return out
