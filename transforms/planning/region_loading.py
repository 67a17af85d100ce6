"""Point regions loaded in bulk: a file of many points becomes Regions with one vectorized
shapely call and one range check, not one `shape()` and one validation per feature. Pure,
Beam-free.

`point_features_to_regions` takes the features of a GeoJSON FeatureCollection (or of any vector
file, as GeoJSON-like dicts) and returns each Region's (id, shapely Point, properties), or None unless every feature is a plain 2-D Point with
numeric lon/lat in range and the ids are unique; the caller then takes the feature-by-feature
path, which gives the exact one-line error for the first bad feature. So a file either loads
here to the very Regions the slow path gives, or is handled exactly as before.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import shapely

NUMBER = (int, float)  # not bool, not str: those are the slow path's to refuse or accept
MIN_BULK = 64  # fewer features: the feature-by-feature path is as fast


def point_features_to_regions(features: Sequence[Any]) -> Optional[list[tuple[str, Any, dict]]]:
    """(id, point, properties) of all-Point features (module doc), or None to take the feature-by-feature path."""
    n = len(features)
    if n < MIN_BULK:
        return None
    coords = np.empty((n, 2), dtype=np.float64)
    ids: list[str] = [""] * n
    props_of: list[dict] = [None] * n  # type: ignore[list-item]
    for i, feature in enumerate(features):
        if not isinstance(feature, dict):
            return None
        geometry = feature.get("geometry")
        if not isinstance(geometry, dict) or geometry.get("type") != "Point":
            return None
        xy = geometry.get("coordinates")
        if not isinstance(xy, (list, tuple)) or len(xy) != 2 or type(xy[0]) not in NUMBER or type(xy[1]) not in NUMBER:
            return None
        coords[i] = xy
        props = feature.get("properties") or {}
        if not isinstance(props, dict):
            return None
        rid = feature.get("id", props.get("id", props.get("name")))
        ids[i] = str(rid) if rid is not None else f"region-{i:04d}"
        props_of[i] = props
    lon, lat = coords[:, 0], coords[:, 1]
    if not (np.isfinite(coords).all() and (np.abs(lon) <= 180).all() and (np.abs(lat) <= 90).all()):
        return None
    if len(set(ids)) != n:
        return None
    points = shapely.points(coords)
    return [(rid, point, dict(props)) for rid, point, props in zip(ids, points.tolist(), props_of)]


def point_table_to_regions(geometries: np.ndarray, properties) -> Optional[list[tuple[str, Any, dict]]]:
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
