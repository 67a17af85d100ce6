"""Point time series jobs, the plan: which images, pixels and groups a `table:` config asks for.

`prepare_table_job` checks the source, the times and the regions and plans every pixel and
group on the launcher, sending no pixel request (an Earth Engine collection is listed with one
metadata request). pipeline/tables/graph.py builds and runs the Beam graph from the TableJob.
"""

from __future__ import annotations

import dataclasses
import math
import os

from pixelbeam.pipeline.config import Config, ConfigError, EarthEngineSourceConfig, StacSourceConfig
from pixelbeam.transforms.tables.points import TableError, TableGrid, TableImage, group_pixels, plan_pixels, time_ms
from pixelbeam.transforms.planning.regions import RegionError, load_regions
from pixelbeam.transforms.sources.base import SourceError, SourceInfo, patch_parts

ROWS_PER_SHARD = 2_000_000


@dataclasses.dataclass
class TableJob:
    config: Config
    source: object
    info: SourceInfo  # the stacked layout: per image its bands and a validity band
    bands: tuple[str, ...]  # the collection's bands (table columns)
    dtype: str
    images: tuple[TableImage, ...]
    grid: TableGrid
    groups: list  # (PatchSpec, pixels)
    regions: int

    @property
    def pixels(self) -> int:
        return sum(len(p) for _, p in self.groups)

    @property
    def rows(self) -> int:
        return self.pixels * len(self.images)

    @property
    def shards(self) -> int:
        return max(1, math.ceil(self.rows / ROWS_PER_SHARD))

    def summary(self) -> dict:
        requests = sum(len(patch_parts(spec, self.info)) for spec, _ in self.groups)
        return {"mode": "table", "regions": self.regions, "pixels": self.pixels, "images": len(self.images),
                "bands": list(self.bands), "rows": self.rows, "values": self.rows * len(self.bands),
                "groups": len(self.groups), "requests": requests, "crs": self.grid.crs,
                "scale": list(self.grid.scale), "formats": list(self.config.table.formats),
                "min_seconds_at_quota": math.ceil(requests / (self.limits.max_requests_per_second or math.inf)),
                "limits": {"source": self.limits.describe()}}

    @property
    def limits(self):
        """The source's request limits (pipeline/limits.py)."""
        from pixelbeam.pipeline.limits import layer_limits
        return layer_limits(self.config, self.config.source)


def image_id(uri: str) -> str:
    return os.path.splitext(os.path.basename(uri))[0]


def prepare_table_job(config: Config) -> TableJob:
    """Checks the source, times and regions, and plans every pixel and group; sends no pixel
    request (an Earth Engine collection: one listing and one 1x1 px probe)."""
    from pixelbeam.pipeline.output_folder import check_output_path
    table = config.table
    check_output_path(config.output.path)
    src = config.source
    if src.collection_mode or src.composite or src.filter_coverage:
        raise ConfigError("table: writes one row per image; remove source.collection_mode, composite and "
                          "filter_coverage")
    try:
        regions = load_regions(config.regions)
        if isinstance(src, EarthEngineSourceConfig):
            source, base, grid = earthengine_table_source(config, regions)
        elif isinstance(src, StacSourceConfig):
            source, base, grid = stac_table_source(config, regions)
        else:
            if table.images_per_request:
                raise ConfigError("table.images_per_request: applies to Earth Engine (a raster file is read "
                                  "whole, no request limits); remove it")
            source = raster_table_source(config)
            base = source.raster.describe()
            grid = table_grid(table, base)
        info = source.describe()
    except (SourceError, RegionError) as e:
        raise ConfigError(str(e)) from None
    if isinstance(src, EarthEngineSourceConfig):
        from pixelbeam.pipeline.config.expression import record_expression
        config = record_expression(config, source.ee)  # the expression it ran, fingerprinted
    try:
        pixels = plan_pixels(regions, grid, table.point_id_property, table.max_pixels_per_region)
    except TableError as e:
        raise ConfigError(str(e)) from None
    if not pixels:
        raise ConfigError("regions: no point or pixel to sample; give points or polygons")
    groups = group_pixels(pixels, grid, table.group_size)
    return TableJob(config=config, source=source, info=info, bands=base.band_names, dtype=base.dtype,
                    images=source.images, grid=grid, groups=groups, regions=len(regions))


def raster_table_source(config: Config):
    """Dated raster files: times from source.images or table.times, ids from the file names."""
    from pixelbeam.transforms.sources.raster import RasterSource
    from pixelbeam.transforms.sources.table import RasterTableSource
    src, table = config.source, config.table
    uris = src.uris
    if src.images is not None:  # dated images (source.images: uri, time)
        if table.times is not None:
            raise ConfigError("table.times: source.images already gives each image's time; remove table.times")
        if not all(i.time for i in src.images):
            raise ConfigError("source.images: table needs a time for every image")
        table = table.model_copy(update={"times": [i.time for i in src.images]})
    if table.times is None or len(table.times) != len(uris):
        raise ConfigError(f"table.times: give one date per file of source.uri ({len(uris)} files, "
                          f"{0 if table.times is None else len(table.times)} times)")
    try:
        times = [time_ms(t) for t in table.times]
    except ValueError as e:
        raise ConfigError(f"table.times: not an ISO date ({e}); write e.g. 2020-01-31") from None
    ids = [image_id(u) for u in uris]
    if len(set(ids)) != len(ids):
        raise ConfigError("source.uri: two files share a name; the id column needs distinct file names")
    images = tuple(TableImage(i, t, u) for i, t, u in zip(ids, times, uris))
    raster = RasterSource(uris=uris, bands=tuple(src.bands) if src.bands else None, resampling=src.resampling,
                          mask_nodata=config.mask.mask_nodata, mask_alpha=config.mask.mask_alpha)
    return RasterTableSource(raster, images)


def earthengine_table_source(config: Config, regions):
    """(source, base info, grid) for an Earth Engine collection: the collection is listed (one
    value:compute, filterBounds to the regions) and its first image probed for bands and types.
    Images are in time order (the listing's order breaking ties); ids are system:index."""
    from pixelbeam.transforms.sources.earthengine import earthengine_source
    from pixelbeam.transforms.planning.grid import GridSpec, lonlat_extent
    from pixelbeam.transforms.sources.table import EarthEngineTableSource
    table = config.table
    if table.times is not None:
        raise ConfigError("table.times: an Earth Engine collection gives each image's time; remove table.times")
    if "native" in (table.crs.lower(), table.scale):
        raise ConfigError("table.crs: an Earth Engine collection has no single native grid here; give table.crs "
                          "and table.scale (e.g. EPSG:32618 and 10, as getRegion's crs and scale)")
    grid = table_grid(table, SourceInfo(band_names=(), dtypes=()))
    bounds = lonlat_extent(regions, GridSpec(crs=grid.crs, scale=grid.scale, patch_size=(1, 1)))
    ee_src = earthengine_source(config.source, timeout_s=config.fetch.timeout, bounds=bounds)
    ee_src.initialize()
    if not ee_src.is_collection:
        raise SourceError(f"{ee_src.expression_field}: gives an ee.Image; table: needs an ee.ImageCollection "
                          "(one row per image)")
    listed = ee_src.list_collection()
    images = tuple(sorted((TableImage(index, t) for index, t, _ in listed), key=lambda i: i.time_ms))
    base = ee_src.probe(ee_src.member_id(images[0].image_id))
    return EarthEngineTableSource(ee_src, images, base, table.images_per_request), base, grid


def stac_table_source(config: Config, regions):
    """(source, base info, grid) for STAC items: listed once within the regions' extent on the
    table's grid; ids are the item ids, times their datetime, in time order."""
    from pixelbeam.transforms.planning.grid import GridSpec, lonlat_extent, regions_lonlat_box
    from pixelbeam.transforms.sources.stac import StacTableSource, stac_source
    table = config.table
    if table.times is not None:
        raise ConfigError("table.times: STAC items give each image's time; remove table.times")
    if table.images_per_request:
        raise ConfigError("table.images_per_request: applies to Earth Engine (STAC assets are read item by item); "
                          "remove it")

    def extent(info):
        grid = table_grid(table, info or SourceInfo(band_names=(), dtypes=()))
        return lonlat_extent(regions, GridSpec(crs=grid.crs, scale=grid.scale, patch_size=(1, 1)))

    stac = stac_source(config.source, config.fetch.timeout, regions_lonlat_box(regions), extent)
    images = tuple(TableImage(item.item_id, time_ms(item.time)) for item in stac.items)
    source = StacTableSource(stac, images)
    base = source.base()
    return source, base, table_grid(table, base)


def table_grid(table, info: SourceInfo) -> TableGrid:
    import pyproj
    crs = info.crs if table.crs.lower() == "native" else table.crs
    if not crs:
        raise ConfigError("table.crs: the source has no grid of its own; give a CRS such as EPSG:4326")
    try:
        pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError:
        raise ConfigError(f"table.crs: {crs!r} is not a CRS; use e.g. EPSG:32618 or native") from None
    native = info.crs and info.transform and pyproj.CRS(crs) == pyproj.CRS(info.crs)
    if table.scale == "native":
        if not native or info.transform[1] or info.transform[3]:
            raise ConfigError("table.scale: native needs the source's own, unrotated CRS; give a pixel size in CRS units")
        scale = (abs(info.transform[0]), abs(info.transform[4]))
    else:
        scale = (float(table.scale),) * 2 if isinstance(table.scale, (int, float)) else tuple(map(float, table.scale))
    if table.origin is not None:
        origin = tuple(map(float, table.origin))
    else:
        origin = (info.transform[2], info.transform[5]) if native else (0.0, 0.0)
    return TableGrid(crs=crs, scale=scale, origin=origin)
