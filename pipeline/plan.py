"""Everything decided before the pipeline runs: source checked, grid resolved, patches planned.

`prepare_job` turns a validated Config into a `Job` or raises a one-line `ConfigError`; no pixel
request is sent and nothing is written. `pixelbeam plan` prints `plan_summary(job)`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import pyproj
import shapely

from pipeline.config import Config, ConfigError, EarthEngineSourceConfig, GridConfig, RasterSourceConfig
from pipeline.outputs import check_outputs
from transforms.cells import Cell, count_patches, plan_by_cells, plan_cells, project_regions
from transforms.grid import GridSpec
from transforms.patch import PatchSpec
from transforms.regions import Region, RegionError, load_regions
from transforms.sizing import RequestTooLarge, plan_parts, request_bytes
from transforms.sources import PixelSource, SourceError, SourceInfo


@dataclasses.dataclass
class Job:
    """A checked, planned job. The launcher holds the coarse `cells` and the patch count, never
    the list of patches (`specs` computes it, for small jobs, tests and footprints)."""

    config: Config
    source: PixelSource
    info: SourceInfo
    regions: list[Region]
    grid: GridSpec
    cells: list[Cell]
    planned: int

    @functools.cached_property
    def specs(self) -> list[PatchSpec]:
        return plan_by_cells(self.regions, self.grid)

    @property
    def fetch_shape(self) -> tuple[int, int]:
        """(height, width) of a patch's fetch window, margin included (pixels)."""
        (w, h), m = self.grid.patch_size, self.grid.margin
        return h + 2 * m, w + 2 * m

    @property
    def crs_list(self) -> list[str]:
        return sorted({c.crs for c in self.cells})

    @property
    def requests_per_patch(self) -> int:
        h, w = self.fetch_shape
        return len(plan_parts(w, h, self.info.band_bytes, self.info.limits))

    @property
    def bytes_per_patch(self) -> int:
        h, w = self.fetch_shape
        return request_bytes(w, h, self.info.band_bytes)


def make_source(config: Config) -> PixelSource:
    src = config.source
    if isinstance(src, RasterSourceConfig):
        from transforms.raster_source import RasterSource
        return RasterSource(uris=src.uris, bands=tuple(src.bands) if src.bands else None, resampling=src.resampling)
    if isinstance(src, EarthEngineSourceConfig):
        from transforms.ee_source import earthengine_source
        return earthengine_source(src, timeout_s=config.fetch.timeout_s)
    raise ConfigError(f"source.kind: {src.kind!r} is not supported")  # unreachable: validated


def resolve_grid(cfg: GridConfig, info: SourceInfo) -> GridSpec:
    """A concrete GridSpec: 'native' crs/scale/origin taken from the source's own grid."""
    crs = cfg.crs
    if crs.lower() == "native":
        if not info.crs:
            raise ConfigError("grid.crs: native needs a source with its own grid; give a CRS such as EPSG:32618 or utm")
        crs = info.crs
    elif crs.lower() != "utm":
        try:
            pyproj.CRS.from_user_input(crs)
        except pyproj.exceptions.CRSError:
            raise ConfigError(f"grid.crs: {crs!r} is not a CRS; use e.g. EPSG:32618, utm or native") from None
    native_grid = bool(info.crs and info.transform) and crs.lower() != "utm" and pyproj.CRS(crs) == pyproj.CRS(info.crs)
    if cfg.scale == "native":
        if not native_grid:
            raise ConfigError("grid.scale: native needs the source's own CRS (grid.crs: native); give a pixel size in CRS units")
        a, b, _, d, e, _ = info.transform
        if b or d:
            raise ConfigError("grid.scale: the source's grid is rotated; give grid.crs and grid.scale explicitly")
        scale = (abs(a), abs(e))
    else:
        scale = (float(cfg.scale),) * 2 if isinstance(cfg.scale, (int, float)) else tuple(map(float, cfg.scale))
    origin = cfg.origin
    if origin == "native" or (origin is None and cfg.crs.lower() == "native"):
        if not native_grid:
            raise ConfigError("grid.origin: native needs the source's own CRS; give [x, y] in CRS units")
        origin = (info.transform[2], info.transform[5])
    origin = tuple(map(float, origin)) if origin is not None else (0.0, 0.0)
    return GridSpec(crs=crs, scale=scale, origin=origin, patch_size=cfg.patch_sizes, overlap=cfg.overlap,
                    margin=cfg.margin, min_coverage=cfg.min_coverage)


def check_regions_inside(regions: list[Region], info: SourceInfo) -> None:
    """Refuse regions that lie wholly outside the source's lon/lat footprint."""
    if not info.footprint_lonlat:
        return
    footprint = shapely.box(*info.footprint_lonlat)
    for region in regions:
        if not region.geometry.intersects(footprint):
            fp = ", ".join(f"{v:.4f}" for v in info.footprint_lonlat)
            raise ConfigError(f"regions: region {region.region_id!r} lies outside the source's footprint "
                              f"(lon/lat {fp}); move the region or use another source")


def check_output_path(path: str) -> None:
    """A local output folder must be creatable and writable; remote paths are checked by Beam."""
    if "://" in path:
        scheme = path.split("://", 1)[0]
        if scheme == "gs":
            try:
                import apache_beam.io.gcp.gcsfilesystem  # noqa: F401
                import google.cloud.storage  # noqa: F401
            except ImportError:
                raise ConfigError("output.path: gs:// needs the GCP extra; pip install 'pixelbeam[gcp]'") from None
        return
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "."
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
        raise ConfigError(f"output.path: {path!r} cannot be written ({probe!r} is not a writable folder); choose another path")


def prepare_job(config: Config) -> Job:
    """Check the source, regions, grid and output, and plan every patch; sends no pixel request."""
    check_output_path(config.output.path)
    source = make_source(config)
    try:
        info = source.describe()
        regions = load_regions(config.regions)
    except (SourceError, RegionError) as e:
        raise ConfigError(str(e)) from None
    grid = resolve_grid(config.grid, info)
    check_regions_inside(regions, info)
    check_outputs(config.output, info)  # visualization bands against the source's
    cells = plan_cells(regions, grid)
    planned = count_patches(cells, project_regions(regions, grid), grid)
    if not planned:
        raise ConfigError(f"grid: the regions yield no patch (min_coverage {grid.min_coverage}); lower grid.min_coverage")
    job = Job(config=config, source=source, info=info, regions=regions, grid=grid, cells=cells, planned=planned)
    try:
        job.requests_per_patch
    except RequestTooLarge as e:
        raise ConfigError(f"grid.patch_size: {e}") from None
    return job


def plan_summary(job: Job) -> dict:
    """Counts for `pixelbeam plan`: patches, requests, bytes, and the time at the quota (s)."""
    fetch = job.config.fetch
    n = job.planned
    requests = n * job.requests_per_patch
    return {
        "patches": n,
        "regions": len(job.regions),
        "requests": requests,
        "requests_per_patch": job.requests_per_patch,
        "bytes": n * job.bytes_per_patch,
        "bytes_per_patch": job.bytes_per_patch,
        "bands": list(job.info.band_names),
        "dtype": job.info.dtype,
        "patch_shape": [len(job.info.band_names), *job.fetch_shape],
        "crs": job.crs_list,
        "cells": len(job.cells),
        "min_seconds_at_quota": math.ceil(requests / fetch.max_requests_per_second),
    }
