"""Everything decided before the pipeline runs: source checked, grid resolved, patches planned.

`prepare_job` turns a validated Config into a `Job` or raises a one-line `ConfigError`; no pixel
request is sent and nothing is written. `pixelbeam plan` prints `plan_summary(job)`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

from typing import Optional, Sequence

import numpy as np
import pyproj
import shapely

from pixelbeam.pipeline.config import (Config, ConfigError, EarthEngineSourceConfig, GridConfig, RasterSourceConfig,
                                       StacSourceConfig)
from pixelbeam.pipeline.config.expression import record_expression
from pixelbeam.pipeline.outputs import check_outputs
from pixelbeam.transforms.planning.cells import Cell, count_by_split, owned_patch_ids, plan_by_cells, plan_cells, project_regions
from pixelbeam.transforms.planning.grid import GridSpec, lonlat_extent, regions_lonlat_box
from pixelbeam.transforms.patch import PatchSpec
from pixelbeam.transforms.pixels.masking import PixelRules, check_fill_value
from pixelbeam.transforms.planning.regions import Region, RegionError, load_regions
from pixelbeam.transforms.planning.sampling import (Sample, SampleError, class_thresholds, label_dtype, region_labels,
                                                    region_thresholds)
from pixelbeam.transforms.planning.splits import SplitError, SplitRule, region_split_values
from pixelbeam.transforms.pixels.scaling import ScalingError, resolve_scaling
from pixelbeam.transforms.fetching.sizing import RequestTooLarge, plan_parts, request_bytes
from pixelbeam.transforms.sources.base import PixelSource, SourceError, SourceInfo


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
    sample: Optional[Sample] = None  # per-region subset and labels
    rules: PixelRules = PixelRules()  # unmask, scaling, fill_value after the fetch
    label_dtype: Optional[str] = None  # TFRecord dtype of the labels, if any
    split_counts: Optional[dict] = None  # planned patches per split (config split:), else None
    split_guard: int = 0  # patches the split guard left out of the plan (transforms/planning/splits.py)

    @functools.cached_property
    def specs(self) -> list[PatchSpec]:
        return plan_by_cells(self.regions, self.grid, sample=self.sample)

    @property
    def split_names(self) -> tuple[str, ...]:
        """The splits' names (config split:), () without splits."""
        return self.sample.split.names if self.sample is not None and self.sample.split is not None else ()

    @property
    def output_info(self) -> SourceInfo:
        """What the written patches hold: the source's bands in the output dtype (scaling)."""
        if self.rules.scaling is None:
            return self.info
        return dataclasses.replace(self.info, dtypes=(self.rules.scaling.dtype,) * len(self.info.band_names))

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
        return len(plan_parts(w, h, self.info.band_bytes, self.info.limits)) * self.images_per_patch

    @property
    def bytes_per_patch(self) -> int:
        h, w = self.fetch_shape
        return request_bytes(w, h, self.info.band_bytes) * self.images_per_patch

    @property
    def images_per_patch(self) -> int:
        """A collection's images are fetched one by one (transforms/pixels/collections.py)."""
        return len(self.info.collection.images) if self.info.collection else 1

    @property
    def time_steps(self) -> Optional[int]:
        """T of `(T, C, H, W)` patches (collection_mode stack or flatten), else None."""
        return self.info.time_steps


def make_source(config: Config, regions: Sequence[Region] = ()) -> PixelSource:
    """The job's pixel source; an Earth Engine collection with collection_mode is listed only
    where the regions' patches can reach (`lonlat_extent`, when the grid is known up front)."""
    src = config.source
    if isinstance(src, RasterSourceConfig):
        from pixelbeam.transforms.sources.raster import RasterSource
        images = src.images or ()
        return RasterSource(uris=src.uris, bands=tuple(src.bands) if src.bands else None, resampling=src.resampling,
                            mask_nodata=config.mask.mask_nodata, mask_alpha=config.mask.mask_alpha, mode=src.mode,
                            times=tuple(i.time for i in images),
                            properties=tuple(tuple(sorted(i.properties.items())) for i in images),
                            reducer=src.composite, flatten_by=src.flatten_by, min_coverage=src.filter_coverage)
    if isinstance(src, EarthEngineSourceConfig):
        from pixelbeam.transforms.sources.earthengine import earthengine_source
        bounds = None
        if (src.collection_mode or src.expression or src.expression_json is not None) and regions:
            try:  # an Earth Engine image has no native grid here, so the grid is explicit
                bounds = lonlat_extent(regions, resolve_grid(config.grid, SourceInfo(band_names=(), dtypes=())))
            except ConfigError:
                pass  # the same error is raised with context once the source is described
        return earthengine_source(src, timeout_s=config.fetch.timeout_s, bounds=bounds)
    if isinstance(src, StacSourceConfig):  # listed once here, within the regions' extent on the job's grid
        from pixelbeam.transforms.sources.stac import stac_source
        return stac_source(src, config.fetch.timeout_s, regions_lonlat_box(regions),
                           lambda info: lonlat_extent(regions, resolve_grid(config.grid, info or SourceInfo((), ()))))
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
    try:
        regions = load_regions(config.regions)
        source = make_source(config, regions)
        info = source.describe()
    except (SourceError, RegionError) as e:
        raise ConfigError(str(e)) from None
    config = record_expression(config, source)  # an Earth Engine expression: the one it ran, fingerprinted
    grid = resolve_grid(config.grid, info)
    grid = dataclasses.replace(grid, center_points=config.sample.centered_on_points)
    check_mask_options(config, info, grid)
    rules = pixel_rules(config, info)
    check_regions_inside(regions, info)
    cells = plan_cells(regions, grid)
    projected = project_regions(regions, grid)
    sample, label_type = make_sample(config, regions, cells, projected, grid)
    by_split, guarded = count_by_split(cells, projected, grid, sample)
    planned = sum(by_split.values())
    if not planned:
        raise ConfigError(f"grid: the regions yield no patch (min_coverage {grid.min_coverage}); lower grid.min_coverage")
    job = Job(config=config, source=source, info=info, regions=regions, grid=grid, cells=cells, planned=planned,
              sample=sample, rules=rules, label_dtype=label_type, split_guard=guarded,
              split_counts={name: by_split.get(name, 0) for name in sample.split.names}
              if sample is not None and sample.split is not None else None)
    check_outputs(config.output, job.output_info)  # visualization bands against the source's
    if job.time_steps is not None:
        pictures = [f for f in config.output.formats if f in ("png", "jpeg")]
        if pictures:
            raise ConfigError(f"output.formats: {pictures[0]} cannot show a time stack (collection_mode "
                              f"{info.collection.mode}); use npy, tfrecord or geotiff")
    try:
        job.requests_per_patch
    except RequestTooLarge as e:
        raise ConfigError(f"grid.patch_size: {e}") from None
    return job


def check_mask_options(config: Config, info: SourceInfo, grid: GridSpec) -> None:
    """mask_nodata / mask_alpha false: raster sources read on the file's own grid only (a warp
    would still let GDAL mask nodata and alpha)."""
    m = config.mask
    off = [k for k in ("mask_nodata", "mask_alpha") if not getattr(m, k)]
    if not off:
        return
    if not isinstance(config.source, RasterSourceConfig):
        raise ConfigError(f"mask.{off[0]}: applies to raster sources (Earth Engine sends its own mask); remove it")
    a, b, c, d, e, f = info.transform
    native = (grid.crs.lower() != "utm" and pyproj.CRS(grid.crs) == pyproj.CRS(info.crs) and not b and not d
              and math.isclose(grid.scale[0], abs(a)) and math.isclose(grid.scale[1], abs(e))
              and _aligned(grid.origin[0] - c, abs(a)) and _aligned(grid.origin[1] - f, abs(e)))
    if not native:
        raise ConfigError(f"mask.{off[0]}: false works on the source's own grid only; use grid crs, scale and "
                          "origin native, or keep it true")


def _aligned(offset: float, step: float) -> bool:
    k = offset / step
    return abs(k - round(k)) < 1e-6


def pixel_rules(config: Config, info: SourceInfo) -> PixelRules:
    """The post-fetch pixel rules (unmask, scaling, fill_value), checked against the source."""
    out, m = config.output, config.mask
    scaling = None
    if out.scaling is not None or out.data_type is not None:
        try:
            scaling = resolve_scaling(info.band_names, info.dtypes, out.scaling, out.data_type, out.band_ranges)
        except ScalingError as e:
            raise ConfigError(f"output.{e}") from None
        if out.scaling is None and np.dtype(scaling.dtype) == np.dtype(info.dtype):
            scaling = None  # data_type equal to the source's: nothing to do
    for field, value, dtype in (("mask.unmask", m.unmask, info.dtype),
                                ("mask.fill_value", m.fill_value, scaling.dtype if scaling else info.dtype)):
        problem = check_fill_value(value, dtype, field)
        if problem:
            raise ConfigError(problem)
    return PixelRules(unmask=m.unmask, scaling=scaling, fill_value=m.fill_value)


def make_split(config: Config, regions) -> Optional[SplitRule]:
    """The resolved `split:` rule (fractions or a region property), or None."""
    cfg = config.split
    if cfg is None:
        return None
    if cfg.by is None:
        return SplitRule(fractions=cfg.fractions, block=cfg.block, seed=cfg.seed)
    try:
        return SplitRule(by=cfg.by, region_splits=region_split_values(regions, cfg.by))
    except SplitError as e:
        raise ConfigError(str(e)) from None


def make_sample(config: Config, regions, cells, projected, grid) -> tuple[Optional[Sample], Optional[str]]:
    """The per-region (or per-class) thresholds, region labels and split rule of `sample:` and
    `split:`, and the labels' dtype."""
    s = config.sample
    split = make_split(config, regions)
    if s.per_region is None and s.label_property is None and split is None:
        return None, None
    labels, dtype = (), None
    if s.label_property:
        try:
            labels = region_labels(regions, s.label_property)
            dtype = label_dtype(labels)
        except SampleError as e:
            raise ConfigError(str(e)) from None
        if dtype == "float32":
            labels = tuple((r, float(v)) for r, v in labels)
    thresholds = ()
    if s.per_region is not None:
        thresholds = region_thresholds(owned_patch_ids(cells, projected, grid, split), s.per_region, s.seed)
    elif s.per_class is not None:
        thresholds = class_thresholds(owned_patch_ids(cells, projected, grid, split), s.per_class, s.seed, labels)
    return Sample(seed=s.seed, thresholds=thresholds, labels=labels, split=split,
                  by_class=s.per_class is not None), dtype


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
        "dtype": job.output_info.dtype,
        "patch_shape": ([job.time_steps] if job.time_steps else []) + [len(job.info.band_names), *job.fetch_shape],
        "crs": job.crs_list,
        "cells": len(job.cells),
        "min_seconds_at_quota": math.ceil(requests / fetch.max_requests_per_second),
        **({"times": list(job.info.collection.step_times)} if job.time_steps else {}),
        **({"splits": dict(job.split_counts), "split_guard": job.split_guard} if job.split_counts is not None else {}),
    }
