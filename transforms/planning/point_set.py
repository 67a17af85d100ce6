"""Many point regions held as columns, not as one Region object per point. Pure, Beam-free.

A file of 10^6 points loaded as Regions took about 1 GB on the launcher (a dataclass, a shapely
Point and a properties dict per point). `PointRegions` keeps the same regions as arrays: ids as
one Arrow string array, lon/lat as float64 arrays, and properties as one column per key (numbers
and booleans as numpy arrays, text as Arrow strings; anything else as a list) when every point
has the same keys in the same order, else as one dict per point. It is a Sequence of Region
(built on access, equal to the Regions the feature-by-feature loader gives), so every consumer
that iterates regions still works; the planning steps that matter at scale (extent, footprint
check, projection) read the arrays directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from pixelbeam.transforms.planning.regions import Region

ITER_CHUNK = 65_536  # points made into Regions at a time when iterating


@dataclasses.dataclass(frozen=True, eq=False)
class PointRegions(Sequence):
    """Point regions as columns (module doc): `ids[i]` is the id of the point `(lon[i], lat[i])`
    (degrees); `columns` (key, values) or `rows` (one dict per point) hold the properties."""

    ids: pa.Array
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
        return Region(self.ids[i].as_py(), shapely.Point(self.lon[i], self.lat[i]), self.properties(i))

    def __iter__(self) -> Iterator[Region]:
        for start in range(0, len(self), ITER_CHUNK):
            stop = min(start + ITER_CHUNK, len(self))
            ids = self.ids.slice(start, stop - start).to_pylist()
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

    def take(self, index: np.ndarray) -> "PointRegions":
        """The points at `index` (positions or a boolean mask), in that order."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, dtype=np.int64)
        columns = None if self.columns is None else tuple((k, take_column(v, index)) for k, v in self.columns)
        rows = None if self.rows is None else [self.rows[i] for i in index.tolist()]
        return PointRegions(self.ids.take(pa.array(index)), self.lon[index], self.lat[index], columns, rows)


def column_value(values, i: int):
    if isinstance(values, np.ndarray):
        return values[i].item()
    if isinstance(values, pa.Array):
        return values[i].as_py()
    return values[i]


def take_column(values, index: np.ndarray):
    if isinstance(values, np.ndarray):
        return values[index]
    if isinstance(values, pa.Array):
        return values.take(pa.array(index))
    return [values[i] for i in index.tolist()]


INT64 = (-(2**63), 2**63 - 1)


class ColumnBuilder:
    """Collects points' ids, coordinates and properties chunk by chunk (`add`), turning each full
    chunk into arrays, so the Python objects of at most one chunk are alive at a time."""

    CHUNK = 65_536

    def __init__(self):
        self.id_chunks: list[pa.Array] = []
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
            self.id_chunks.append(pa.array(self.ids, type=pa.string()))
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
        self.flush()
        ids = pa.concat_arrays(self.id_chunks) if self.id_chunks else pa.array([], pa.string())
        if self.rows is not None:
            return PointRegions(ids, lon, lat, None, self.rows)
        columns = tuple((k, merge(done)) for k, done in zip(self.keys or (), self.done))
        return PointRegions(ids, lon, lat, columns)


def compact(values: list):
    """A chunk of one property's values as a numpy array (all int64-range ints, all floats or all
    bools), an Arrow string array (all str), else the list itself."""
    kinds = {type(v) for v in values}
    if kinds == {int}:
        if INT64[0] <= min(values) and max(values) <= INT64[1]:
            return np.array(values, dtype=np.int64)
    elif kinds == {float}:
        return np.array(values, dtype=np.float64)
    elif kinds == {bool}:
        return np.array(values, dtype=bool)
    elif kinds == {str}:
        return pa.array(values, type=pa.string())
    return list(values)


def merge(chunks: list):
    """One column from its chunks: joined when every chunk has the same kind, else a list."""
    if not chunks:
        return []
    if all(isinstance(c, np.ndarray) for c in chunks) and len({c.dtype for c in chunks}) == 1:
        return np.concatenate(chunks)
    if all(isinstance(c, pa.Array) for c in chunks):
        return pa.concat_arrays(chunks)
    out: list = []
    for c in chunks:
        out.extend(c.tolist() if isinstance(c, np.ndarray) else c.to_pylist() if isinstance(c, pa.Array) else c)
    return out


def ids_unique_and_printable(ids: pa.Array) -> bool:
    """No id repeats and none holds a control character (regions.py refuses both, by name)."""
    if len(pc.unique(ids)) != len(ids):
        return False
    return not pc.any(pc.match_substring_regex(ids, r"[\x00-\x1f\x7f]")).as_py()


def sorted_owner_index(ids: pa.Array, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Positions sorting the points by (row, col, id); ids compare by code point, as str does."""
    table = pa.table({"r": rows, "c": cols, "id": ids})
    return pc.sort_indices(table, sort_keys=[("r", "ascending"), ("c", "ascending"), ("id", "ascending")]).to_numpy()


def as_point_regions(regions: Sequence) -> Optional[PointRegions]:
    """`regions` itself when it is a PointRegions, else None."""
    return regions if isinstance(regions, PointRegions) else None
