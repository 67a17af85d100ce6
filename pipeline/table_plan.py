"""Point time series jobs, the plan: which images, pixels and groups a `table:` config asks for.

`prepare_table_job` checks the source, the times and the regions and plans every pixel and
group on the launcher, sending no pixel request (an Earth Engine collection is listed with one
metadata request). pipeline/table_graph.py builds and runs the Beam graph from the TableJob.
"""

from __future__ import annotations

import dataclasses
import math
import os

from pipeline.config import Config, ConfigError, EarthEngineSourceConfig, RasterSourceConfig
from transforms.point_table import TableError, TableGrid, TableImage, group_pixels, plan_pixels, time_ms
from transforms.regions import RegionError, load_regions
from transforms.sources import SourceError, SourceInfo, patch_parts

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
                "min_seconds_at_quota": math.ceil(requests / self.config.fetch.max_requests_per_second)}


def image_id(uri: str) -> str:
    return os.path.splitext(os.path.basename(uri))[0]


def prepare_table_job(config: Config) -> TableJob:
    """Checks the source, times and regions, and plans every pixel and group; sends no pixel request."""
    from pipeline.plan import check_output_path
    table = config.table
    check_output_path(config.output.path)
    src = config.source
    if isinstance(src, EarthEngineSourceConfig):
        raise ConfigError("table: Earth Engine collections are not supported yet; use a list of dated raster files")
    if isinstance(src, RasterSourceConfig):
        uris = src.uris
        if getattr(src, "collection_mode", None) or getattr(src, "composite", None):
            raise ConfigError("table: writes one row per image; remove source.collection_mode / source.composite")
        if getattr(src, "images", None) is not None:  # dated images (source.images: uri, time)
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
        from transforms.raster_source import RasterSource
        from transforms.table_source import RasterTableSource
        raster = RasterSource(uris=uris, bands=tuple(src.bands) if src.bands else None, resampling=src.resampling,
                              mask_nodata=config.mask.mask_nodata, mask_alpha=config.mask.mask_alpha)
        source = RasterTableSource(raster, images)
    try:
        base = source.raster.describe()
        info = source.describe()
        regions = load_regions(config.regions)
    except (SourceError, RegionError) as e:
        raise ConfigError(str(e)) from None
    grid = table_grid(table, base)
    try:
        pixels = plan_pixels(regions, grid, table.point_id_property, table.max_pixels_per_region)
    except TableError as e:
        raise ConfigError(str(e)) from None
    if not pixels:
        raise ConfigError("regions: no point or pixel to sample; give points or polygons")
    groups = group_pixels(pixels, grid, table.group_size)
    return TableJob(config=config, source=source, info=info, bands=base.band_names, dtype=base.dtype,
                    images=images, grid=grid, groups=groups, regions=len(regions))


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
        scale = (float(table.scale),) * 2
    origin = (info.transform[2], info.transform[5]) if native else (0.0, 0.0)
    return TableGrid(crs=crs, scale=scale, origin=origin)
