"""Reading vector files (regions, vector label layers) in any OGR format and any CRS. Pure, Beam-free.

`read_vector(path)` returns a `VectorTable`: shapely geometries, attribute columns and the
file's CRS. GeoJSON, GeoPackage, Shapefile, FlatGeobuf and every other format GDAL's OGR reads
go through pyogrio (vectorized: one call returns every feature as WKB plus numpy columns);
GeoParquet (`.parquet`, `.geoparquet`) is read with pyarrow and decoded from its WKB column
following the GeoParquet metadata (`geo`: primary column, encoding, PROJJSON CRS, CRS84 when
absent), because GDAL builds without Arrow (pyogrio's wheels among them) have no Parquet driver.
Errors are `VectorFileError`s with a one-line message naming the file and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np
import pyproj
import shapely

PARQUET_SUFFIXES = (".parquet", ".geoparquet")
CRS84 = "OGC:CRS84"


class VectorFileError(ValueError):
    """A vector file that cannot be read; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class VectorTable:
    """Features of a vector file: `geometries` (object array of shapely geometries, None where a
    feature has none), `columns` {name: values, one per feature} and `crs` (a string pyproj
    reads, or None when the file declares none)."""

    geometries: np.ndarray
    columns: dict
    crs: Optional[str]

    def __len__(self) -> int:
        return len(self.geometries)

    def properties(self, index: int) -> dict:
        """The attributes of feature `index` as plain Python values (JSON-friendly)."""
        return {name: _plain(values[index]) for name, values in self.columns.items()}


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:  # NaN: a missing number
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def read_vector(path: str, layer: Optional[str] = None, columns: Optional[Sequence[str]] = None,
                where: str = "") -> VectorTable:
    """Every feature of `path` (a local path, /vsi path or URL GDAL reads); `layer` names one
    layer of a multi-layer file (GeoPackage), default its first; `columns` limits the
    attributes read; `where` prefixes error messages (e.g. the config field)."""
    label = f"{where}: " if where else ""
    if "://" not in path and not path.startswith("/vsi") and not os.path.exists(path):
        raise VectorFileError(f"{label}file {path!r} does not exist; give the path of a vector file "
                              "(GeoJSON, GeoPackage, Shapefile, FlatGeobuf, GeoParquet)")
    if path.lower().endswith(PARQUET_SUFFIXES):
        return _read_geoparquet(path, columns, label)
    return _read_ogr(path, layer, columns, label)


def _read_ogr(path: str, layer: Optional[str], columns, label: str) -> VectorTable:
    import pyogrio
    from pyogrio.raw import read
    try:
        meta, _, wkb, values = read(path, layer=layer, columns=list(columns) if columns is not None else None)
    except pyogrio.errors.DataLayerError as e:
        raise VectorFileError(f"{label}{path!r}: {_one_line(e)}; give an existing layer name") from None
    except (pyogrio.errors.DataSourceError, pyogrio.errors.FieldError, OSError) as e:
        raise VectorFileError(f"{label}{path!r} is not a vector file OGR can read ({_one_line(e)}); check the "
                              "path and format") from None
    geometries = _from_wkb(wkb, path, label)
    return VectorTable(geometries, dict(zip(list(meta["fields"]), values)), meta.get("crs"))


def _read_geoparquet(path: str, columns, label: str) -> VectorTable:
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise VectorFileError(f"{label}{path!r} is not a readable Parquet file ({_one_line(e)}); check the path") from None
    geo = json.loads((table.schema.metadata or {}).get(b"geo", b"null") or "null")
    if not geo:
        raise VectorFileError(f"{label}{path!r} has no GeoParquet 'geo' metadata; write it as GeoParquet "
                              "(e.g. geopandas to_parquet)")
    primary = geo.get("primary_column", "geometry")
    spec = geo.get("columns", {}).get(primary, {})
    if spec.get("encoding", "WKB").upper() != "WKB":
        raise VectorFileError(f"{label}{path!r}: geometry encoding {spec.get('encoding')!r} is not supported; "
                              "write the geometry column as WKB")
    crs = spec.get("crs", CRS84)  # GeoParquet: an absent crs means OGC:CRS84, null means unknown
    crs = json.dumps(crs) if isinstance(crs, dict) else crs
    geometries = _from_wkb(table.column(primary).to_pylist(), path, label)
    names = [n for n in table.column_names if n != primary and (columns is None or n in columns)]
    return VectorTable(geometries, {n: np.asarray(table.column(n).to_pylist(), dtype=object) for n in names}, crs)


def _from_wkb(wkb, path: str, label: str) -> np.ndarray:
    try:
        return shapely.from_wkb(np.asarray(wkb, dtype=object))
    except shapely.errors.GEOSException as e:
        raise VectorFileError(f"{label}{path!r} holds a malformed geometry ({_one_line(e)}); fix the file") from None


def to_crs(geometries: np.ndarray, src: Optional[str], dst: str) -> np.ndarray:
    """Geometries reprojected from `src` to `dst` (axis order x/lon first). Edges are first cut
    into segments of at most 1/1000 of the features' extent, so that a straight edge in `src`
    follows its curve in `dst`."""
    src_crs, dst_crs = pyproj.CRS.from_user_input(src), pyproj.CRS.from_user_input(dst)
    if src_crs == dst_crs:
        return geometries
    present = geometries[~shapely.is_missing(geometries)]
    if present.size:
        minx, miny, maxx, maxy = shapely.total_bounds(present)
        step = max(maxx - minx, maxy - miny) / 1000.0
        if step > 0:
            geometries = shapely.segmentize(geometries, step)
    transformer = pyproj.Transformer.from_crs(src_crs, dst_crs, always_xy=True)
    return shapely.transform(geometries, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))


def is_lonlat(crs: Optional[str]) -> bool:
    """True when `crs` is WGS 84 longitude/latitude (EPSG:4326 or OGC:CRS84), or absent."""
    if crs is None:
        return True
    parsed = pyproj.CRS.from_user_input(crs)
    return parsed.is_geographic and parsed.equals(pyproj.CRS.from_user_input(CRS84), ignore_axis_order=True)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__
