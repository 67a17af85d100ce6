"""The global patch grid and patch planning: pure, vectorised with shapely 2, Beam-free.

One grid per CRS: pixel (0, 0) has its top-left corner at `origin` (CRS units, default the CRS
origin), pixels are `scale` CRS units wide/high, north up. Patch (row, col) has its top-left
pixel at (row * stride_y, col * stride_x) where stride = patch_size - overlap, so a patch id
always names the same pixels whatever region asked for it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
from typing import Iterable, Optional, Sequence

import numpy as np
import pyproj
import shapely
import shapely.affinity
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info

from pixelbeam.transforms.patch import PatchSpec
from pixelbeam.transforms.planning.regions import Region
from pixelbeam.transforms.planning.point_set import PointRegions

# Longest segment (degrees) of a region's outline before projecting, so that edges that are
# straight in lon/lat follow the right curve in the grid's CRS.
DENSIFY_DEGREES = 0.05


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """A resolved grid: `crs` is a CRS string or "utm" (each region's own UTM zone).

    `scale` is (x, y) pixel size in CRS units (both positive); `origin` the grid anchor in
    CRS units; `patch_size` (width, height), `overlap` and `margin` in pixels;
    `min_coverage` the fraction of a patch that must lie inside its region (0..1). On a
    geographic CRS, regions are wrapped onto longitudes [lon_west, lon_west + 360) (degrees; a
    raster stored 0..360 has lon_west 0).
    """

    crs: str
    scale: tuple[float, float]
    origin: tuple[float, float] = (0.0, 0.0)
    patch_size: tuple[int, int] = (256, 256)
    overlap: int = 0
    margin: int = 0
    min_coverage: float = 0.0
    center_points: bool = False  # a point keeps the patch whose centre is nearest (else its stride cell's)
    lon_west: float = -180.0  # a geographic grid's longitudes lie in [lon_west, lon_west + 360) (degrees)

    @property
    def stride(self) -> tuple[int, int]:
        return (self.patch_size[0] - self.overlap, self.patch_size[1] - self.overlap)

    def __post_init__(self):
        w, h = self.patch_size
        if min(w, h) < 1 or self.overlap < 0 or self.overlap >= min(w, h) or self.margin < 0:
            raise ValueError(f"invalid grid: patch_size {self.patch_size}, overlap {self.overlap}, margin {self.margin}")
        if min(self.scale) <= 0:
            raise ValueError(f"invalid grid: scale {self.scale} must be positive")


def crs_tag(crs: str) -> str:
    """A short file-name-safe name for a CRS: 'epsg32618', or a hash-like tag for others."""
    code = _epsg_code(crs)
    if code is not None:
        return f"epsg{code}"
    wkt = pyproj.CRS.from_user_input(crs).to_wkt()
    return "crs" + hashlib.sha1(wkt.encode()).hexdigest()[:8]


def patch_id(crs: str, row: int, col: int) -> str:
    """The stable id of patch (row, col) of the grid in `crs`."""
    return f"{crs_tag(crs)}_r{row}_c{col}"


UTM_EDGE_MARGIN_DEG = 0.05  # nearer than this to a zone's edge, the equator or UTM's latitude limits, ask PROJ


def utm_crs_for(lon: float, lat: float) -> str:
    """The WGS 84 UTM zone (e.g. 'EPSG:32618') containing a lon/lat point (degrees): the first
    zone whose EPSG area of use holds it. Inside a zone (6° bands from -180°, 0..84°N or
    80°S..0) that is arithmetic; near an edge, where areas of use overlap (EPSG:32629 reaches
    -12.01°), PROJ's database is asked, as it was for every point (~55 ms a query)."""
    offset = lon + 180.0
    band = math.floor(offset / 6.0)
    edge = min(offset - 6.0 * band, 6.0 * (band + 1) - offset)
    if (edge > UTM_EDGE_MARGIN_DEG and abs(lat) > UTM_EDGE_MARGIN_DEG and 0 <= band < 60
            and -80.0 + UTM_EDGE_MARGIN_DEG < lat < 84.0 - UTM_EDGE_MARGIN_DEG):
        return f"EPSG:{(32600 if lat > 0 else 32700) + band + 1}"
    return _utm_crs_from_database(lon, lat)


@functools.lru_cache(maxsize=4096)
def _utm_crs_from_database(lon: float, lat: float) -> str:
    infos = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    if not infos:
        raise ValueError(f"no UTM zone for lon {lon}, lat {lat}")
    return f"{infos[0].auth_name}:{infos[0].code}"


def region_crs(grid: GridSpec, region: Region) -> str:
    if grid.crs.lower() != "utm":
        return grid.crs
    c = region.geometry.centroid
    return utm_crs_for((c.x + 180.0) % 360.0 - 180.0, c.y)  # an unwrapped antimeridian region may reach 360


@functools.lru_cache(maxsize=64)
def _epsg_code(crs: str):
    m = re.fullmatch(r"(?i)epsg:(\d+)", crs.strip())
    return int(m.group(1)) if m else pyproj.CRS.from_user_input(crs).to_epsg()


@functools.lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(src, dst, always_xy=True)


def project_lonlat(geometry, crs: str, lon_west: float = -180.0):
    """A lon/lat geometry in `crs`, densified first so its edges bend as they should.

    On a geographic CRS the longitudes are wrapped into [lon_west, lon_west + 360), so a region
    across the antimeridian plans patches at both edges of a global raster, not past its edge.
    Elsewhere a region unwrapped across the antimeridian (longitudes past 180) is also projected
    cut at 180 degrees into two parts; of the two results the smaller is right: a zone-local CRS
    such as UTM is continuous across the cut, a world CRS (Web Mercator) puts the parts at both ends.
    """
    if is_geographic(crs):
        return _project(wrap_longitudes(geometry, lon_west), crs)
    whole = _project(geometry, crs)
    if geometry.bounds[2] <= 180:
        return _repaired(whole)
    west = shapely.intersection(geometry, shapely.box(-180, -90, 180, 90))
    east = shapely.affinity.translate(shapely.intersection(geometry, shapely.box(180, -90, 540, 90)), xoff=-360)
    cut = _repaired(shapely.union(_project(west, crs), _project(east, crs)))
    return cut if not whole.is_valid or shapely.area(cut) < shapely.area(whole) else whole


def _repaired(projected):
    """A projected polygon made valid where the projection folded it (a CRS used far from its
    area; the orientation guard then refuses its patches), else as it is."""
    if projected.geom_type not in ("Polygon", "MultiPolygon") or projected.is_valid:
        return projected
    fixed = shapely.make_valid(projected)
    parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


@functools.lru_cache(maxsize=64)
def is_geographic(crs: str) -> bool:
    """The CRS's coordinates are longitude and latitude (degrees), e.g. EPSG:4326."""
    return _epsg_code(crs) == 4326 or pyproj.CRS.from_user_input(crs).is_geographic


def wrap_longitudes(geometry, lon_west: float = -180.0):
    """A lon/lat geometry with every part moved by multiples of 360 degrees into longitudes
    [lon_west, lon_west + 360]; a polygon crossing that range's edge is cut there."""
    minx, _, maxx, _ = geometry.bounds
    if geometry.is_empty or (lon_west <= minx and maxx <= lon_west + 360):
        return geometry
    if geometry.geom_type in ("Point", "MultiPoint"):
        return shapely.transform(geometry, lambda xy: np.column_stack([(xy[:, 0] - lon_west) % 360 + lon_west,
                                                                      xy[:, 1]]))
    pieces = []
    for turn in range(math.floor((minx - lon_west) / 360), math.floor((maxx - lon_west) / 360) + 1):
        west = lon_west + 360 * turn
        piece = shapely.intersection(geometry, shapely.box(west, -90, west + 360, 90))
        pieces += [shapely.affinity.translate(p, xoff=-360 * turn) for p in getattr(piece, "geoms", [piece])
                   if p.geom_type in ("Polygon", "MultiPolygon") and not p.is_empty]
    return shapely.union_all(pieces)


def _project(geometry, crs: str):
    if geometry.is_empty or _epsg_code(crs) == 4326:
        return geometry
    dense = shapely.segmentize(geometry, DENSIFY_DEGREES) if geometry.geom_type not in ("Point", "MultiPoint") else geometry
    t = _transformer("EPSG:4326", crs)
    return shapely.transform(dense, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def bounds_to_lonlat(crs: str, bounds: Sequence[float]) -> tuple[float, float, float, float]:
    """(min_lon, min_lat, max_lon, max_lat) of CRS bounds, edges densified (21 points a side)."""
    if _epsg_code(crs) == 4326:
        return tuple(bounds)
    return _transformer(crs, "EPSG:4326").transform_bounds(*bounds, densify_pts=21)


def lonlat_extent(regions: Iterable[Region], grid: GridSpec) -> Optional[tuple[float, float, float, float]]:
    """A lon/lat box holding every pixel the regions can plan: each region's box in its grid
    CRS grown by one fetch window (a patch and its margins) on every side; None when there is
    no region or the box would cross the antimeridian. Point regions held as columns
    (point_set.py) on one CRS give the box of their union, grown and turned to lon/lat once."""
    if isinstance(regions, PointRegions) and grid.crs.lower() != "utm":
        regions = [Region("points", shapely.MultiPoint(np.column_stack([regions.lon, regions.lat])))] if len(regions) else []
    boxes = []
    for region in regions:
        if region.geometry.bounds[0] < -180 or region.geometry.bounds[2] > 180:
            return None
        crs = region_crs(grid, region)
        minx, miny, maxx, maxy = project_lonlat(region.geometry, crs, grid.lon_west).bounds
        gx = (grid.patch_size[0] + 2 * grid.margin) * grid.scale[0]
        gy = (grid.patch_size[1] + 2 * grid.margin) * grid.scale[1]
        boxes.append(bounds_to_lonlat(crs, (minx - gx, miny - gy, maxx + gx, maxy + gy)))
    if not boxes:
        return None
    west, south = min(b[0] for b in boxes), max(-90.0, min(b[1] for b in boxes))
    east, north = max(b[2] for b in boxes), min(90.0, max(b[3] for b in boxes))
    if not np.isfinite([west, south, east, north]).all() or west < -180 or east > 180 or west >= east:
        return None  # e.g. a region far outside a projected CRS's area of use
    return (west, south, east, north)


def regions_lonlat_box(regions: Iterable[Region]) -> Optional[tuple[float, float, float, float]]:
    """The regions' own lon/lat bounding box (degrees), or None when there is no region."""
    if isinstance(regions, PointRegions):
        return regions.bounds if len(regions) else None
    bounds = [region.geometry.bounds for region in regions]
    if not bounds:
        return None
    return (min(b[0] for b in bounds), min(b[1] for b in bounds), max(b[2] for b in bounds), max(b[3] for b in bounds))


def patch_transform(grid: GridSpec, row: int, col: int) -> tuple[float, ...]:
    """The affine transform (a, b, c, d, e, f) of patch (row, col)'s top-left pixel."""
    sx, sy = grid.scale
    (swx, swy), (x0, y0) = grid.stride, grid.origin
    return (sx, 0.0, x0 + col * swx * sx, 0.0, -sy, y0 - row * swy * sy)


def _candidate_indices(grid: GridSpec, bounds) -> tuple[np.ndarray, np.ndarray]:
    """Row and col ranges of patches whose footprint may intersect `bounds` (CRS units)."""
    minx, miny, maxx, maxy = bounds
    sx, sy = grid.scale
    (w, h), (swx, swy), (x0, y0) = grid.patch_size, grid.stride, grid.origin
    col_lo = math.floor((minx - x0 - w * sx) / (swx * sx)) + 1
    col_hi = math.ceil((maxx - x0) / (swx * sx)) - 1
    row_lo = math.floor((y0 - maxy - h * sy) / (swy * sy)) + 1
    row_hi = math.ceil((y0 - miny) / (swy * sy)) - 1
    return np.arange(row_lo, row_hi + 1), np.arange(col_lo, col_hi + 1)


def patch_boxes(grid: GridSpec, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Shapely boxes (CRS units) of the patches (rows[i], cols[i]), without margin."""
    sx, sy = grid.scale
    (w, h), (swx, swy), (x0, y0) = grid.patch_size, grid.stride, grid.origin
    left = x0 + cols * swx * sx
    top = y0 - rows * swy * sy
    return shapely.box(left, top - h * sy, left + w * sx, top)


def region_cells(grid: GridSpec, geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, coverage) of the patches kept for one region given in the grid's CRS.

    Polygons keep patches whose area inside the region is > 0 and >= `min_coverage` of the
    patch; each point keeps the one patch whose stride cell contains it (coverage 1), or with
    `center_points` the grid patch whose centre is nearest to it (see `_point_cells`).
    """
    if geometry.geom_type in ("Point", "MultiPoint"):
        return _point_cells(grid, geometry)
    rows, cols = _candidate_indices(grid, geometry.bounds)
    rr, cc = (a.ravel() for a in np.meshgrid(rows, cols, indexing="ij"))
    return kept_patches(grid, geometry, rr, cc)


def kept_patches(grid: GridSpec, geometry, rows: np.ndarray, cols: np.ndarray):
    """Of candidate patches (rows[i], cols[i]), the (rows, cols, coverage) a polygonal region
    keeps: area inside > 0 and >= min_coverage of the patch."""
    if rows.size == 0:
        return rows.astype(int), cols.astype(int), np.empty(0)
    boxes = patch_boxes(grid, rows, cols)
    shapely.prepare(geometry)
    inside = shapely.contains_properly(geometry, boxes)
    coverage = inside.astype(float)
    edge = ~inside & shapely.intersects(geometry, boxes)
    if edge.any():
        coverage[edge] = shapely.area(shapely.intersection(boxes[edge], geometry)) / shapely.area(boxes[edge])
    keep = (coverage > 0) & (coverage >= grid.min_coverage)
    return rows[keep], cols[keep], coverage[keep]


def _point_cells(grid: GridSpec, geometry):
    """(rows, cols, coverage) of the patch each point keeps. The default: the patch whose stride
    cell (its top-left stride x stride px) contains the point. With `center_points`: the patch of
    the global grid whose centre is nearest, so the point lies within stride/2 px of the patch
    centre on each axis; with stride 1 (overlap = patch_size - 1) and an odd patch size it lies
    in the centre pixel exactly. Patch centres sit at origin + (col * stride + w / 2) px."""
    pts = shapely.get_coordinates(geometry)
    sx, sy = grid.scale
    (swx, swy), (x0, y0) = grid.stride, grid.origin
    u, v = (pts[:, 0] - x0) / sx, (y0 - pts[:, 1]) / sy  # pixels right of / below the origin
    if grid.center_points:
        w, h = grid.patch_size
        cols = np.floor((u - w / 2) / swx + 0.5).astype(int)
        rows = np.floor((v - h / 2) / swy + 0.5).astype(int)
    else:
        cols = np.floor(u / swx).astype(int)
        rows = np.floor(v / swy).astype(int)
    return rows, cols, np.ones(len(pts))


def plan_patches(regions: Iterable[Region], grid: GridSpec) -> list[PatchSpec]:
    """Every patch of every region, each patch once, sorted by id.

    A patch kept by several regions is planned once and credited to the smallest region id,
    so the plan does not depend on the order of the regions.
    """
    owner: dict[tuple[str, int, int], str] = {}
    for region in sorted(regions, key=lambda r: r.region_id):
        crs = region_crs(grid, region)
        rows, cols, _ = region_cells(grid, project_lonlat(region.geometry, crs, grid.lon_west))
        for row, col in zip(rows.tolist(), cols.tolist()):
            owner.setdefault((crs, row, col), region.region_id)
    specs = [make_spec(grid, crs, row, col, rid) for (crs, row, col), rid in owner.items()]
    return sorted(specs, key=lambda s: (s.crs, s.row, s.col))


def make_spec(grid: GridSpec, crs: str, row: int, col: int, region_id: str) -> PatchSpec:
    w, h = grid.patch_size
    return PatchSpec(
        patch_id=patch_id(crs, row, col), region_id=region_id, crs=crs,
        transform=patch_transform(grid, row, col), width=w, height=h,
        row=row, col=col, margin=grid.margin)
