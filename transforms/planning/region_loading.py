"""Point regions loaded in bulk: a file of many points becomes Regions with one vectorized
shapely call and one range check, not one `shape()` and one validation per feature. Pure,
Beam-free.

`point_features_to_regions` takes the features of a GeoJSON FeatureCollection (or of any vector
file, as GeoJSON-like dicts) and returns each Region's (id, shapely Point, properties), or None unless every feature is a plain 2-D Point with
numeric lon/lat in range and the ids are unique and printable; the caller then takes the feature-by-feature
path, which gives the exact one-line error for the first bad feature. So a file either loads
here to the very Regions the slow path gives, or is handled exactly as before.

`stream_point_regions(path)` does the same for a GeoJSON file without loading the document:
features are decoded one at a time (`stream_features`), so a file of 10^6 points never holds
its ~1 GB of parsed JSON at once, only the Regions.
"""

from __future__ import annotations

import json
import re
from array import array
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import shapely

NUMBER = (int, float)  # not bool, not str: those are the slow path's to refuse or accept
MIN_BULK = 64  # fewer features: the feature-by-feature path is as fast
CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # refused in region ids (regions.py)


def point_features_to_regions(features: Sequence[Any]):
    """(id, point, properties) of all-Point features (module doc), or None to take the
    feature-by-feature path."""
    if len(features) < MIN_BULK:
        return None
    return points_in_bulk(features, copy=True)


def points_in_bulk(features: Iterable[Any], copy: bool = False, min_count: Optional[int] = None):
    """`point_features_to_regions` over any iterable of features (e.g. `stream_features`), as a
    PointRegions (point_set.py: columns, not one Region per point); `copy`: properties kept per
    point are copies (the caller's dicts stay theirs)."""
    from pixelbeam.transforms.planning.point_set import ColumnBuilder, ids_unique_and_printable
    xs, ys = array("d"), array("d")
    columns = ColumnBuilder()
    for i, feature in enumerate(features):
        if not isinstance(feature, dict):
            return None
        geometry = feature.get("geometry")
        if not isinstance(geometry, dict) or geometry.get("type") != "Point":
            return None
        xy = geometry.get("coordinates")
        if not isinstance(xy, (list, tuple)) or len(xy) != 2 or type(xy[0]) not in NUMBER or type(xy[1]) not in NUMBER:
            return None
        xs.append(xy[0])
        ys.append(xy[1])
        props = feature.get("properties") or {}
        if not isinstance(props, dict):
            return None
        rid = feature.get("id", props.get("id", props.get("name")))
        columns.add(str(rid) if rid is not None else f"region-{i:04d}", dict(props) if copy else props)
    if len(xs) < (MIN_BULK if min_count is None else min_count):
        return None
    lon, lat = np.frombuffer(xs, dtype=np.float64).copy(), np.frombuffer(ys, dtype=np.float64).copy()
    del xs, ys  # (the copies are exact: no spare capacity)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all() and (np.abs(lon) <= 180).all()
            and (np.abs(lat) <= 90).all()):
        return None
    points = columns.build(lon, lat)
    if not ids_unique_and_printable(points.ids):
        return None  # the feature-by-feature path names the duplicate or the control character
    return points


class NotPlain(Exception):
    """A GeoJSON file `stream_features` does not read (the whole-file path reads it, or says why not)."""


# A FeatureCollection whose first members are ("type", then) "features": what writers emit
HEAD = re.compile(r'\s*\{\s*(?:"type"\s*:\s*"FeatureCollection"\s*,\s*)?"features"\s*:\s*\[')
WHITESPACE = re.compile(r"[\s,]*")
CHUNK = 1 << 20  # characters read at a time


def stream_features(path: str) -> Iterator[dict]:
    """The features of a GeoJSON FeatureCollection file, decoded one at a time from 1 MB reads,
    so the whole document is never in memory; raises NotPlain for any file it cannot stream
    (another layout, a legacy `crs` member, malformed JSON), before or while yielding."""
    decoder = json.JSONDecoder()
    try:
        with open(path, encoding="utf-8") as f:
            buf = f.read(CHUNK)
            head = HEAD.match(buf)
            if head is None:
                raise NotPlain(path)
            typed, pos, eof, want = '"type"' in head.group(0), head.end(), False, CHUNK
            while True:
                pos = WHITESPACE.match(buf, pos).end()
                if pos < len(buf) and buf[pos] == "]":
                    check_tail(buf[pos + 1:] + f.read(), typed, path)
                    return
                try:
                    if pos >= len(buf):
                        raise json.JSONDecodeError("more", buf, pos)
                    feature, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError:
                    if eof:
                        raise NotPlain(path) from None
                    more = f.read(want)
                    eof, want = not more, want * 2  # a big feature: read twice as much each time
                    buf, pos = buf[pos:] + more, 0
                    continue
                want = CHUNK
                yield feature
                if end > CHUNK:
                    buf, pos = buf[end:], 0
                else:
                    pos = end
    except (OSError, UnicodeDecodeError):
        raise NotPlain(path) from None


def check_tail(tail: str, typed: bool, path: str) -> None:
    """The members after `features` must be plain: no legacy `crs`, a FeatureCollection type."""
    try:
        rest = json.loads('{"_": 0' + tail)
    except json.JSONDecodeError:
        raise NotPlain(path) from None
    if "crs" in rest or "features" in rest or (not typed and rest.get("type") != "FeatureCollection") or (
            typed and "type" in rest):
        raise NotPlain(path)


def stream_point_regions(path: str):
    """(id, point, properties) of a GeoJSON file of many points, read streaming (module doc),
    or None to read it whole."""
    try:
        return points_in_bulk(stream_features(path))
    except NotPlain:
        return None


def point_table_to_regions(geometries: np.ndarray, properties):
    """(id, point, properties) of a vector file's lon/lat geometries when all are 2-D points (`properties(i)`:
    feature i's properties), else None."""
    if len(geometries) < MIN_BULK or any(g is None for g in geometries):
        return None
    geometries = np.asarray(geometries, dtype=object)
    if not (shapely.get_type_id(geometries) == 0).all() or shapely.has_z(geometries).any():
        return None
    coords = shapely.get_coordinates(geometries)
    features = [{"type": "Feature", "properties": properties(i),
                 "geometry": {"type": "Point", "coordinates": (float(x), float(y))}}
                for i, (x, y) in enumerate(coords.tolist())]
    return point_features_to_regions(features)


LON_NAMES = ("lon", "longitude", "lng", "x")
LAT_NAMES = ("lat", "latitude", "y")


def csv_point_regions(path: str, where: str = "regions"):
    """(id, point, properties) of a CSV of points in lon/lat degrees (WGS 84), read row by row:
    a header naming a longitude column (lon, longitude, lng or x) and a latitude column (lat,
    latitude or y); the other columns become properties (integers and decimals as numbers, the
    rest as text); the id from an `id` or `name` column, else `region-NNNN`. Raises ValueError
    with a one-line message naming the row for anything else."""
    import csv
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            names = {name.strip().lower(): name for name in reader.fieldnames or ()}
            lon_col = next((names[n] for n in LON_NAMES if n in names), None)
            lat_col = next((names[n] for n in LAT_NAMES if n in names), None)
            if lon_col is None or lat_col is None:
                raise ValueError(f"{where}: {path!r} needs a header with a longitude column ({', '.join(LON_NAMES)}) "
                                 f"and a latitude column ({', '.join(LAT_NAMES)}); found {reader.fieldnames}")
            features = (csv_feature(row, lon_col, lat_col, where, line)
                        for line, row in enumerate(reader, start=2))
            out = points_in_bulk(features, min_count=1)
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: {path!r} is not UTF-8 text ({e.reason}); save the CSV as UTF-8") from None
    if out is None:
        raise ValueError(f"{where}: {path!r} has no usable rows (coordinates outside lon [-180, 180] / lat [-90, 90], "
                         "or repeated ids); check its lon/lat columns and ids")
    return out


def csv_feature(row: dict, lon_col: str, lat_col: str, where: str, line: int) -> dict:
    try:
        lon, lat = float(row[lon_col]), float(row[lat_col])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: line {line}: {lon_col}={row.get(lon_col)!r}, {lat_col}={row.get(lat_col)!r} are "
                         "not numbers; give longitude and latitude in degrees") from None
    props = {k: csv_value(v) for k, v in row.items() if k not in (lon_col, lat_col) and k is not None}
    return {"type": "Feature", "properties": props, "geometry": {"type": "Point", "coordinates": [lon, lat]}}


def csv_value(text):
    """A CSV cell as the number it spells (int, then float), else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            pass
    return text
