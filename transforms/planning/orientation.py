"""The guard that no patch is written flipped or mirrored against north-up. Pure, Beam-free.

A patch's rows run top to bottom and its columns left to right in its grid CRS. That is north
up and east right wherever the CRS is meant to be used, but a projection used far from its
area (a UTM zone 179 degrees away from the region, as a wrong zone choice once did) turns the
picture 180 degrees, and a CRS with a left-handed axis order mirrors it. `north_up` tells, per
patch, that neither happens: at the patch's centre, one pixel up must go north and one pixel
right east (degrees), unless the patch lies in the CRS's own area of use (a polar
stereographic CRS puts north at the bottom on the far side of the pole, by design); and the
picture must never be mirrored.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import pyproj

from pixelbeam.transforms.planning.grid import GridSpec, _transformer, is_geographic


class NotNorthUp(ValueError):
    """Patches of `regions` would be written flipped or mirrored in `crs`."""

    def __init__(self, crs: str, regions):
        self.crs, self.regions = crs, tuple(sorted(set(regions)))
        shown = ", ".join(repr(r) for r in self.regions[:5]) + (" and more" if len(self.regions) > 5 else "")
        one = len(self.regions) == 1
        super().__init__(f"grid.crs: {crs} would write the patches of region{'' if one else 's'} {shown} upside "
                         f"down or mirrored ({'it lies' if one else 'they lie'} far outside the area the CRS is made "
                         "for); use crs: utm, or a CRS made for these regions")


@functools.lru_cache(maxsize=64)
def area_of_use(crs: str) -> Optional[tuple[float, float, float, float]]:
    """(west, south, east, north) in degrees where the CRS is meant to be used, or None; west
    may exceed east for an area across the antimeridian."""
    area = pyproj.CRS.from_user_input(crs).area_of_use
    return tuple(area.bounds) if area is not None else None


def inside_area(crs: str, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Whether each lon/lat point (degrees) lies in the CRS's area of use (False without one)."""
    area = area_of_use(crs)
    if area is None:
        return np.zeros(lon.shape, bool)
    west, south, east, north = area
    lon = (lon + 180.0) % 360.0 - 180.0
    across = (lon >= west) | (lon <= east) if west > east else (lon >= west) & (lon <= east)
    return across & (lat >= south) & (lat <= north)


def north_up(grid: GridSpec, crs: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Per patch (rows[i], cols[i]) of `grid` in `crs`: True when it is written north up (see
    the module's docstring); a point the CRS cannot take back to lon/lat counts as north up."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    if rows.size == 0 or is_geographic(crs):  # pixels are lon/lat: north up by construction
        return np.ones(rows.shape, bool)
    sx, sy = grid.scale
    (w, h), (swx, swy), (x0, y0) = grid.patch_size, grid.stride, grid.origin
    cx = x0 + (cols * swx + w / 2) * sx
    cy = y0 - (rows * swy + h / 2) * sy
    to_lonlat = _transformer(crs, "EPSG:4326")
    lon, lat = to_lonlat.transform(np.concatenate([cx, cx, cx + sx]), np.concatenate([cy, cy + sy, cy]))
    n = rows.size
    (lon0, lon_up, lon_right), (lat0, lat_up, lat_right) = lon.reshape(3, n), lat.reshape(3, n)
    with np.errstate(invalid="ignore", over="ignore"):  # inf where a point is outside the CRS
        east_up, north_of_up = _wrap(lon_up - lon0), lat_up - lat0
        east_of_right, north_right = _wrap(lon_right - lon0), lat_right - lat0
        mirrored = east_of_right * north_of_up - east_up * north_right < 0
        turned = (north_of_up <= 0) | (east_of_right <= 0)
        flipped = mirrored | (turned & ~inside_area(crs, lon0, lat0))
    unknown = ~np.isfinite(lon).reshape(3, n).all(axis=0) | ~np.isfinite(lat).reshape(3, n).all(axis=0)
    return ~flipped | unknown


def _wrap(dlon: np.ndarray) -> np.ndarray:
    """Longitude differences folded into [-180, 180) degrees."""
    return (dlon + 180.0) % 360.0 - 180.0
