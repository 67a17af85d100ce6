"""Point time series, the pure core: which pixels a table holds, how they are grouped into
requests, and the rows (Earth Engine's `ImageCollection.getRegion` columns) of a fetched group.

A pixel is on a grid of `crs`, `scale` (CRS units per pixel) and `origin`: a point gives the
pixel that contains it, a polygon every pixel whose centre lies inside it. Pixels in the same
`group_size` x `group_size` px block form one group, fetched as one window (the block's pixels'
bounding box) for every image, so nearby points share requests and a far point costs a 1x1 px
window. A group's pixels are stacked per image as bands `<image>_<band>...` plus
`<image>_valid` (1 where every band is valid), so a collection is one (or a few) requests.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Optional, Sequence

import numpy as np
import pyproj
import shapely

from pixelbeam.transforms.planning.grid import project_lonlat
from pixelbeam.transforms.patch import PatchSpec

VALID_SUFFIX = "valid"
FIXED_COLUMNS = ("id", "longitude", "latitude", "time", "point_id")


class TableError(ValueError):
    """A table job that cannot run; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class TableImage:
    """One image of the collection: `image_id` (the `id` column: a file's stem or Earth Engine's
    `system:index`), `time_ms` (ms since the Unix epoch, UTC, or None) and, for rasters, `uri`."""

    image_id: str
    time_ms: Optional[int] = None
    uri: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class TableGrid:
    crs: str
    scale: tuple[float, float]  # (x, y) CRS units per pixel, both positive
    origin: tuple[float, float]  # (x, y) of the pixel grid's top-left corner

    def transform(self, row: int, col: int) -> tuple[float, ...]:
        (sx, sy), (ox, oy) = self.scale, self.origin
        return (sx, 0.0, ox + col * sx, 0.0, -sy, oy - row * sy)


@dataclasses.dataclass(frozen=True)
class TablePixel:
    point_id: str
    row: int
    col: int
    lon: float  # pixel centre, degrees
    lat: float


def time_ms(text: str) -> int:
    """ms since the epoch from an ISO date or datetime (UTC unless it names a zone)."""
    parsed = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return int(round(parsed.timestamp() * 1000))


def plan_pixels(regions, grid: TableGrid, id_property: Optional[str] = None,
                max_pixels_per_region: int = 10_000) -> list[TablePixel]:
    """The table's pixels, region by region: points their pixel, polygons every pixel centre inside."""
    (sx, sy), (ox, oy) = grid.scale, grid.origin
    to_lonlat = pyproj.Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    rows_out: list[tuple[str, int, int]] = []
    for region in regions:
        pid = str(region.properties.get(id_property, region.region_id)) if id_property else region.region_id
        if id_property and id_property not in region.properties:
            raise TableError(f"table.point_id_property: region {region.region_id!r} has no property {id_property!r}; "
                             "add it or remove table.point_id_property")
        geom = project_lonlat(region.geometry, grid.crs)
        if geom.geom_type in ("Point", "MultiPoint"):
            xy = shapely.get_coordinates(geom)
            cols = np.floor((xy[:, 0] - ox) / sx).astype(np.int64)
            rows = np.floor((oy - xy[:, 1]) / sy).astype(np.int64)
        else:
            minx, miny, maxx, maxy = geom.bounds
            c0, c1 = math.floor((minx - ox) / sx), math.floor((maxx - ox) / sx)
            r0, r1 = math.floor((oy - maxy) / sy), math.floor((oy - miny) / sy)
            if (c1 - c0 + 1) * (r1 - r0 + 1) > 50 * max_pixels_per_region:
                raise TableError(f"regions: region {region.region_id!r} covers more than {max_pixels_per_region} px; "
                                 "use points or smaller polygons, or raise table.max_pixels_per_region")
            rr, cc = np.mgrid[r0:r1 + 1, c0:c1 + 1]
            rr, cc = rr.ravel(), cc.ravel()
            inside = shapely.contains_xy(geom, ox + (cc + 0.5) * sx, oy - (rr + 0.5) * sy)
            rows, cols = rr[inside], cc[inside]
            if len(rows) > max_pixels_per_region:
                raise TableError(f"regions: region {region.region_id!r} holds {len(rows)} px, over "
                                 f"table.max_pixels_per_region ({max_pixels_per_region}); raise it or use smaller polygons")
        rows_out += [(pid, int(r), int(c)) for r, c in zip(rows, cols)]
    if not rows_out:
        return []
    r = np.array([p[1] for p in rows_out], dtype=float)
    c = np.array([p[2] for p in rows_out], dtype=float)
    lon, lat = to_lonlat.transform(ox + (c + 0.5) * sx, oy - (r + 0.5) * sy)
    return [TablePixel(pid, row, col, float(x), float(y)) for (pid, row, col), x, y in zip(rows_out, lon, lat)]


def group_pixels(pixels: Sequence[TablePixel], grid: TableGrid, group_size: int) -> list[tuple[PatchSpec, tuple]]:
    """(window spec, pixels) per block of `group_size` px: the window is the pixels' bounding box."""
    blocks: dict[tuple[int, int], list[TablePixel]] = {}
    for p in pixels:
        blocks.setdefault((p.row // group_size, p.col // group_size), []).append(p)
    groups = []
    for (br, bc), members in sorted(blocks.items()):
        r0, c0 = min(p.row for p in members), min(p.col for p in members)
        r1, c1 = max(p.row for p in members), max(p.col for p in members)
        spec = PatchSpec(patch_id=f"g{br}_{bc}", region_id=members[0].point_id, crs=grid.crs,
                         transform=grid.transform(r0, c0), width=c1 - c0 + 1, height=r1 - r0 + 1,
                         row=r0, col=c0)
        groups.append((spec, tuple(members)))
    return groups


def stacked_band_names(images: Sequence[TableImage], bands: Sequence[str]) -> tuple[str, ...]:
    """The fetched layout: per image its bands then its validity band, `<image>_<band>`."""
    return tuple(f"{img.image_id}_{b}" for img in images for b in (*bands, VALID_SUFFIX))


def group_columns(spec: PatchSpec, pixels: Sequence[TablePixel], data: np.ndarray,
                  images: Sequence[TableImage], bands: Sequence[str]) -> dict:
    """The rows of one fetched group as columns (numpy arrays; a band's masked values are
    given by `<band>` with a `None`-able mask in `masks`): one row per (pixel, image), images
    in collection order for each pixel."""
    n_img, n_band = len(images), len(bands)
    rows = np.array([p.row - spec.row for p in pixels], dtype=np.int64)
    cols = np.array([p.col - spec.col for p in pixels], dtype=np.int64)
    stack = data.reshape(n_img, n_band + 1, spec.fetch_height, spec.fetch_width)[:, :, rows, cols]  # (T, C+1, P)
    values = stack[:, :n_band].transpose(2, 0, 1).reshape(-1, n_band)  # (P*T, C)
    valid = (stack[:, n_band] > 0).T.reshape(-1)
    n = len(pixels)
    return {
        "id": np.tile(np.array([i.image_id for i in images], dtype=object), n),
        "longitude": np.repeat([p.lon for p in pixels], n_img),
        "latitude": np.repeat([p.lat for p in pixels], n_img),
        "time": np.tile(np.array([i.time_ms for i in images], dtype=object), n),
        "point_id": np.repeat(np.array([p.point_id for p in pixels], dtype=object), n_img),
        "values": values,
        "valid": valid,
    }
