"""Many point regions held as columns, not as one Region object per point. Pure, Beam-free.

A file of 10^6 points loaded as Regions took about 1 GB on the launcher (a dataclass, a shapely
Point and a properties dict per point). `PointRegions` keeps the same regions as arrays: ids as
one `Strings` column (UTF-8 bytes and offsets), lon/lat as float64 arrays, and properties as one
column per key (numbers and booleans as numpy arrays, text as Strings; anything else as a list)
when every point
has the same keys in the same order, else as one dict per point. It is a Sequence of Region
(built on access, equal to the Regions the feature-by-feature loader gives), so every consumer
that iterates regions still works; the planning steps that matter at scale (extent, footprint
check, projection) read the arrays directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import shapely

from pixelbeam.transforms.planning.region import Region

ITER_CHUNK = 65_536  # points made into Regions at a time when iterating


@dataclasses.dataclass(frozen=True, eq=False)
class Strings:
    """Many strings in two numpy arrays: their UTF-8 bytes end to end and where each ends (no
    Python object per string; pyarrow would do, but its first array imports pandas: +50 MB)."""

    data: np.ndarray  # uint8
    ends: np.ndarray  # int64, ends[i] is where string i's bytes end

    @classmethod
    def of(cls, values: Sequence[str]) -> "Strings":
        encoded = [v.encode("utf-8") for v in values]
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        return cls(data, np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded))))

    @classmethod
    def concat(cls, parts: Sequence["Strings"]) -> "Strings":
        if not parts:
            return cls(np.zeros(0, np.uint8), np.zeros(0, np.int64))
        shift = np.cumsum([0] + [p.data.size for p in parts[:-1]])
        return cls(np.concatenate([p.data for p in parts]), np.concatenate([p.ends + k for p, k in zip(parts, shift)]))

    def __len__(self) -> int:
        return self.ends.size

    def starts(self) -> np.ndarray:
        return np.concatenate([[0], self.ends[:-1]]).astype(np.int64) if self.ends.size else self.ends

    def __getitem__(self, i: int) -> str:
        start = int(self.ends[i - 1]) if i > 0 else 0
        return self.data[start:int(self.ends[i])].tobytes().decode("utf-8")

    def slice(self, start: int, stop: int) -> list[str]:
        """Strings start .. stop - 1 as str."""
        base = int(self.ends[start - 1]) if start > 0 else 0
        blob, ends = self.data[base:int(self.ends[stop - 1]) if stop > start else base].tobytes(), self.ends[start:stop] - base
        return [blob[a:b].decode("utf-8") for a, b in zip([0] + ends[:-1].tolist(), ends.tolist())]

    def take(self, index: np.ndarray) -> "Strings":
        """The strings at positions `index`, in that order (built a chunk at a time)."""
        starts_all = self.starts()
        parts = []
        for k in range(0, len(index), ITER_CHUNK):
            part = index[k:k + ITER_CHUNK]
            starts, lengths = starts_all[part], self.ends[part] - starts_all[part]
            ends = np.cumsum(lengths)
            pos = np.repeat(starts - (ends - lengths), lengths) + np.arange(int(ends[-1]) if ends.size else 0)
            parts.append(Strings(self.data[pos], ends))
        return Strings.concat(parts)

    def fixed(self) -> np.ndarray:
        """The strings as a numpy bytes array ('S<longest>'): they sort as str does (UTF-8 bytes
        in code point order; no id holds a NUL, regions.py refuses control characters)."""
        starts = self.starts()
        lengths = self.ends - starts
        width = max(int(lengths.max()) if lengths.size else 1, 1)
        out = np.zeros((len(self), width), np.uint8)
        for k in range(0, len(self), ITER_CHUNK):  # a chunk at a time: the index arrays are 8 bytes a byte
            n, first = lengths[k:k + ITER_CHUNK], int(starts[k]) if k < len(self) else 0
            rows = np.repeat(np.arange(k, k + n.size), n)
            cols = np.arange(int(n.sum())) - np.repeat(starts[k:k + ITER_CHUNK] - first, n)
            out[rows, cols] = self.data[first:first + int(n.sum())]
        return out.view(f"S{width}").ravel()


@dataclasses.dataclass(frozen=True, eq=False)
class PointRegions(Sequence):
    """Point regions as columns (module doc): `ids[i]` is the id of the point `(lon[i], lat[i])`
    (degrees); `columns` (key, values) or `rows` (one dict per point) hold the properties."""

    ids: Strings
    lon: np.ndarray
    lat: np.ndarray
    columns: Optional[tuple[tuple[str, Any], ...]] = ()
    rows: Optional[list] = None

    def __len__(self) -> int:
        return len(self.lon)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return Region(self.ids[i], shapely.Point(self.lon[i], self.lat[i]), self.properties(i))

    def __iter__(self) -> Iterator[Region]:
        for start in range(0, len(self), ITER_CHUNK):
            stop = min(start + ITER_CHUNK, len(self))
            ids = self.ids.slice(start, stop)
            points = shapely.points(self.lon[start:stop], self.lat[start:stop]).tolist()
            for k, (rid, point) in enumerate(zip(ids, points)):
                yield Region(rid, point, self.properties(start + k))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    __hash__ = None

    def properties(self, i: int) -> dict:
        """Point i's properties (a new dict each call)."""
        if self.rows is not None:
            return dict(self.rows[i])
        return {key: column_value(values, i) for key, values in self.columns}

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(min lon, min lat, max lon, max lat) of the points, degrees."""
        return (float(self.lon.min()), float(self.lat.min()), float(self.lon.max()), float(self.lat.max()))

    def labels_of(self, owners: Sequence[str], key: str) -> Optional[tuple[tuple, str]]:
        """(((owner id, label), ...) sorted, the labels' dtype) of property `key` for the region
        ids `owners`, read from its column; None when `key` is no int, float or text column (the
        Region-by-Region `sampling.region_labels` then checks every point and names a bad one)."""
        values = dict(self.columns or ()).get(key)
        if isinstance(values, np.ndarray) and values.dtype.kind in "if":
            dtype = "int64" if values.dtype.kind == "i" else "float32"
        elif isinstance(values, Strings):
            dtype = "string"
        else:
            return None
        owners = sorted(owners)
        fixed = self.ids.fixed()
        order = np.argsort(fixed, kind="stable")
        wanted = np.array([o.encode("utf-8") for o in owners], dtype=fixed.dtype) if owners else fixed[:0]
        index = order[np.searchsorted(fixed[order], wanted)] if owners else np.zeros(0, np.int64)
        picked = values.take(index).slice(0, index.size) if dtype == "string" else values[index].tolist()
        return tuple(zip(owners, picked)), dtype

    def take(self, index: np.ndarray) -> "PointRegions":
        """The points at `index` (positions or a boolean mask), in that order."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, dtype=np.int64)
        columns = None if self.columns is None else tuple((k, take_column(v, index)) for k, v in self.columns)
        rows = None if self.rows is None else [self.rows[i] for i in index.tolist()]
        return PointRegions(self.ids.take(index), self.lon[index], self.lat[index], columns, rows)


def column_value(values, i: int):
    if isinstance(values, np.ndarray):
        return values[i].item()
    return values[i]


def take_column(values, index: np.ndarray):
    if isinstance(values, np.ndarray):
        return values[index]
    if isinstance(values, Strings):
        return values.take(index)
    return [values[i] for i in index.tolist()]


INT64 = (-(2**63), 2**63 - 1)


class ColumnBuilder:
    """Collects points' ids, coordinates and properties chunk by chunk (`add`), turning each full
    chunk into arrays, so the Python objects of at most one chunk are alive at a time."""

    CHUNK = 65_536

    def __init__(self):
        self.id_chunks: list[Strings] = []
        self.ids: list[str] = []
        self.keys: Optional[tuple] = None
        self.values: list[list] = []
        self.done: list[list] = []  # per key: finished chunks
        self.rows: Optional[list] = None  # properties kept per point once the keys differ

    def add(self, rid: str, props: dict) -> None:
        self.ids.append(rid)
        if self.rows is not None:
            self.rows.append(props)
            return
        keys = tuple(props)
        if self.keys is None:
            self.keys = keys
            self.values = [[] for _ in keys]
            self.done = [[] for _ in keys]
        if keys != self.keys:
            self.to_rows()
            self.rows.append(props)
            return
        for column, key in zip(self.values, keys):
            column.append(props[key])
        if len(self.ids) >= self.CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.ids:
            self.id_chunks.append(Strings.of(self.ids))
            self.ids = []
        if self.rows is None and self.keys is not None:
            for column, done in zip(self.values, self.done):
                if column:
                    done.append(compact(column))
                    column.clear()

    def to_rows(self) -> None:
        """From now on, one dict per point: rebuild the earlier points' dicts from the columns."""
        count = sum(len(c) for c in self.id_chunks) + len(self.ids) - 1  # the point being added is not in the columns
        self.flush()
        columns = [(k, merge(done)) for k, done in zip(self.keys or (), self.done)]
        self.rows = [{k: column_value(v, i) for k, v in columns} for i in range(count)]
        self.values, self.done = [], []

    def build(self, lon: np.ndarray, lat: np.ndarray) -> PointRegions:
        """The PointRegions; the builder lets go of its chunks as each column is joined (so a
        column is never held twice once it is built)."""
        self.flush()
        ids = Strings.concat(self.id_chunks)
        self.id_chunks = []
        if self.rows is not None:
            return PointRegions(ids, lon, lat, None, self.rows)
        columns = []
        for k in range(len(self.done)):
            columns.append((self.keys[k], merge(self.done[k])))
            self.done[k] = []
        return PointRegions(ids, lon, lat, tuple(columns))


def compact(values: list):
    """A chunk of one property's values as a numpy array (all int64-range ints, all floats or all
    bools), Strings (all str), else the list itself."""
    kinds = {type(v) for v in values}
    if kinds == {int}:
        if INT64[0] <= min(values) and max(values) <= INT64[1]:
            return np.array(values, dtype=np.int64)
    elif kinds == {float}:
        return np.array(values, dtype=np.float64)
    elif kinds == {bool}:
        return np.array(values, dtype=bool)
    elif kinds == {str}:
        return Strings.of(values)
    return list(values)


def merge(chunks: list):
    """One column from its chunks: joined when every chunk has the same kind, else a list."""
    if not chunks:
        return []
    if all(isinstance(c, np.ndarray) for c in chunks) and len({c.dtype for c in chunks}) == 1:
        return np.concatenate(chunks)
    if all(isinstance(c, Strings) for c in chunks):
        return Strings.concat(chunks)
    out: list = []
    for c in chunks:
        out.extend(c.tolist() if isinstance(c, np.ndarray) else c.slice(0, len(c)) if isinstance(c, Strings) else c)
    return out


def ids_unique_and_printable(ids: Strings) -> bool:
    """No id repeats and none holds a control character (regions.py refuses both, by name)."""
    data = ids.data
    if ((data < 0x20) | (data == 0x7F)).any():  # UTF-8: these bytes are only ever these characters
        return False
    fixed = np.sort(ids.fixed())
    return not (fixed[1:] == fixed[:-1]).any()


def sorted_owner_index(ids: Strings, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Positions sorting the points by (row, col, id); ids compare as str does (Strings.fixed)."""
    return np.lexsort((ids.fixed(), cols, rows))


def as_point_regions(regions: Sequence) -> Optional[PointRegions]:
    """`regions` itself when it is a PointRegions, else None."""
    return regions if isinstance(regions, PointRegions) else None
