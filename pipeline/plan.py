"""Everything decided before the pipeline runs: source checked, grid resolved, patches planned.

`prepare_job` turns a validated Config into a `Job` or raises a one-line `ConfigError`; no pixel
request is sent and nothing is written. `pixelbeam plan` prints `plan_summary(job)`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import numpy as np
import pyproj
import shapely
import shapely.affinity

from pixelbeam.pipeline.config import SOURCE_LAYER, Config, ConfigError, GridConfig, MaskConfig
from pixelbeam.pipeline.config.expression import record_expressions
from pixelbeam.pipeline.layers import (JobLayer, Reach, check_mask_options, describe_layer, primary_layer,
                                      scaled_info, with_pixel_rules)
from pixelbeam.pipeline.layers import make_source as layer_source
from pixelbeam.pipeline.limits import job_limits
from pixelbeam.pipeline.output_folder import check_output_path
from pixelbeam.pipeline.outputs import check_outputs
from pixelbeam.pipeline.sizes import check_grid_units, check_patch_memory, check_plan_size
from pixelbeam.transforms.planning.cells import Cell, count_by_split, owned_patch_ids, plan_by_cells, plan_cells, project_regions
from pixelbeam.transforms.planning.grid import GridSpec, is_geographic, lonlat_extent, regions_lonlat_box
from pixelbeam.transforms.planning.orientation import NotNorthUp
from pixelbeam.transforms.planning.point_plan import PlannedPoints
from pixelbeam.transforms.planning.point_set import PointRegions
from pixelbeam.transforms.patch import INPUT, PatchSpec
from pixelbeam.transforms.pixels.masking import LayerRules, PixelRules
from pixelbeam.transforms.planning.regions import LISTED_PROBLEMS, Region, RegionError, SkippedRegion, load_regions
from pixelbeam.transforms.planning.sampling import (Sample, SampleError, class_thresholds, label_dtype, region_labels,
                                                    region_thresholds)
from pixelbeam.transforms.planning.splits import SplitError, SplitRule, region_split_values
from pixelbeam.transforms.fetching.sizing import RequestTooLarge
from pixelbeam.transforms.sources.base import PixelSource, SourceInfo


@dataclasses.dataclass
class Job:
    """A checked, planned job. The launcher holds the coarse `cells` and the patch count, never
    the list of patches (`specs` computes it, for small jobs, tests and footprints).

    `layers` are every layer of the job in config order (a `source:` job has one, `image`);
    `source`, `info` and `rules` are those of the first input layer."""

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
    layers: tuple[JobLayer, ...] = ()
    skipped_regions: Optional[tuple[SkippedRegion, ...]] = None  # regions_outside: skip; else None
    projected: Optional[dict] = dataclasses.field(default=None, repr=False)  # point columns: project_regions' (for a run)

    @functools.cached_property
    def specs(self) -> list[PatchSpec]:
        if isinstance(self.regions, PlannedPoints):  # a run's points (pipeline/point_run.py)
            return self.regions.specs(self.grid, self.sample)
        return plan_by_cells(self.regions, self.grid, sample=self.sample)

    @property
    def split_names(self) -> tuple[str, ...]:
        """The splits' names (config split:), () without splits."""
        return self.sample.split.names if self.sample is not None and self.sample.split is not None else ()

    @property
    def layered(self) -> bool:
        """The config has `layers:` (outputs kept apart per layer), not a single `source:`."""
        return self.config.layers is not None

    @property
    def output_info(self) -> SourceInfo:
        """What the written patches hold: the source's bands in the output dtype (scaling)."""
        return scaled_info(self.info, self.rules)

    @property
    def patch_rules(self):
        """What MaskAndScale applies to a fetched patch: the source's rules, or each layer's."""
        if not self.layered:
            return self.rules
        return LayerRules(tuple((layer.name, layer.rules) for layer in self.layers))

    @property
    def picture_layer(self) -> Optional[JobLayer]:
        """The layer png/jpeg show: output.visualization.layer, else the first input layer."""
        vis = self.config.output.visualization
        name = vis.layer if vis is not None else None
        if name is None:
            return primary_layer(self.layers) if self.layers else None
        return next(layer for layer in self.layers if layer.name == name)

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
        """Requests of every layer of one patch (a vector layer sends none)."""
        return sum(layer.requests_per_patch(self.fetch_shape) for layer in self.layers)

    @property
    def bytes_per_patch(self) -> int:
        return sum(layer.bytes_per_patch(self.fetch_shape) for layer in self.layers)

    @property
    def images_per_patch(self) -> int:
        """A collection's images are fetched one by one (transforms/pixels/collections.py)."""
        return primary_layer(self.layers).images_per_patch

    @property
    def time_steps(self) -> Optional[int]:
        """T of `(T, C, H, W)` patches (collection_mode stack or flatten), else None."""
        return self.info.time_steps


def make_source(config: Config, regions: Sequence[Region] = ()) -> PixelSource:
    """The job's pixel source (its `source:` section); an Earth Engine collection with
    collection_mode is listed only where the regions' patches can reach (`lonlat_extent`, when
    the grid is known up front)."""
    timeout = job_limits(config)[SOURCE_LAYER].timeout_s
    return layer_source(config.source, config.mask, timeout, regions_reach(config, regions))


def regions_reach(config: Config, regions: Sequence[Region]) -> Reach:
    """Where the regions' patches can reach (pipeline/layers.py Reach): the lon/lat box on the
    grid when it needs no source to be known (an Earth Engine collection is listed within it),
    the regions' own box, and the box on a grid resolved from a source (STAC)."""
    if not regions:
        return Reach()
    try:  # an Earth Engine image has no native grid here, so the grid is explicit
        bounds = lonlat_extent(regions, resolve_grid(config.grid, SourceInfo(band_names=(), dtypes=())))
    except ConfigError:
        bounds = None  # the same error is raised with context once the source is described
    return Reach(bounds, regions_lonlat_box(regions),
                 lambda info: lonlat_extent(regions, resolve_grid(config.grid, info or SourceInfo((), ()))))


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
                    margin=cfg.margin, min_coverage=cfg.min_coverage, lon_west=raster_lon_west(crs, info))


def raster_lon_west(crs: str, info: SourceInfo) -> float:
    """Where a geographic grid's longitudes start (degrees): -180, or the source's west edge
    when it is stored past 180 (a global raster of longitudes 0..360)."""
    box = info.footprint_lonlat
    if crs.lower() == "utm" or not box or box[2] <= 180 or not is_geographic(crs):
        return -180.0
    return float(box[0])


def regions_inside(regions: list[Region], info: SourceInfo, skipped: Optional[Sequence[SkippedRegion]] = None):
    """(the regions that meet the source's lon/lat footprint, the skipped regions as a tuple or
    None). Without a `skipped` list (regions_outside: error) every region wholly outside is
    named in one line; with it (regions_outside: skip, holding the regions the loader skipped)
    they are skipped too. Either way at least one region must remain."""
    if isinstance(regions, PointRegions):
        return points_inside(regions, info, skipped)
    outside = [] if not info.footprint_lonlat else [r for r in regions if not meets_footprint(r, info.footprint_lonlat)]
    fp = ", ".join(f"{v:.4f}" for v in info.footprint_lonlat or ())
    if outside and skipped is None:
        raise ConfigError(regions_outside_message([r.region_id for r in outside], fp))
    if skipped is None:
        return regions, None
    skipped = list(skipped) + [SkippedRegion(r.region_id, f"outside the source's footprint (lon/lat {fp})")
                               for r in outside]
    gone = {id(r) for r in outside}
    kept = [r for r in regions if id(r) not in gone]
    if not kept:
        raise ConfigError(no_region_left(skipped))
    return kept, tuple(skipped)


def points_inside(points: PointRegions, info: SourceInfo, skipped: Optional[Sequence[SkippedRegion]] = None):
    """`regions_inside` of point regions held as columns, with one array test instead of one
    shapely test per point (a point meets a box when it lies inside or on its edge)."""
    if not info.footprint_lonlat:
        return points, (None if skipped is None else tuple(skipped))
    west, south, east, north = info.footprint_lonlat
    inside = np.zeros(len(points), bool)
    for turn in (0.0, -360.0, 360.0):  # as meets_footprint: the box moved by a turn either way
        inside |= (west + turn <= points.lon) & (points.lon <= east + turn) & (south <= points.lat) & (points.lat <= north)
    if inside.all():
        return points, (None if skipped is None else tuple(skipped))
    outside_ids = points.ids.take(np.flatnonzero(~inside)).slice(0, int((~inside).sum()))
    fp = ", ".join(f"{v:.4f}" for v in info.footprint_lonlat)
    if skipped is None:
        raise ConfigError(regions_outside_message(outside_ids, fp))
    skipped = list(skipped) + [SkippedRegion(r, f"outside the source's footprint (lon/lat {fp})") for r in outside_ids]
    if not inside.any():
        raise ConfigError(no_region_left(skipped))
    return points.take(inside), tuple(skipped)


def no_region_left(skipped: Optional[Sequence[SkippedRegion]]) -> str:
    """The refusal of a plan that skipped every region."""
    if not skipped:
        return "regions: the file holds no region; add at least one polygon or point"
    return (f"regions_outside: skip left no region ({len(skipped)} skipped, e.g. {skipped[0].region_id!r}: "
            f"{skipped[0].reason}); give regions inside the source")


def regions_outside_message(outside: Sequence[str], fp: str) -> str:
    """One line naming every region outside the source's lon/lat footprint `fp`."""
    if len(outside) == 1:
        return (f"regions: region {outside[0]!r} lies outside the source's footprint (lon/lat {fp}); move the "
                "region, use another source, or set regions_outside: skip")
    names = ", ".join(repr(r) for r in outside[:LISTED_PROBLEMS])
    more = f" and {len(outside) - LISTED_PROBLEMS} more" if len(outside) > LISTED_PROBLEMS else ""
    return (f"regions: {len(outside)} regions lie outside the source's footprint (lon/lat {fp}): {names}{more}; "
            "move them, use another source, or set regions_outside: skip to plan without them")


def meets_footprint(region: Region, footprint: tuple[float, float, float, float]) -> bool:
    """The region meets the lon/lat box, also a region across the antimeridian (lon up to 360)."""
    box = shapely.box(*footprint)
    return any(region.geometry.intersects(shapely.affinity.translate(box, xoff=turn)) for turn in (0.0, -360.0, 360.0))


def prepare_job(config: Config) -> Job:
    """Check the sources, regions, grid and output, and plan every patch; sends no pixel request
    (an Earth Engine layer: a 1x1 px probe)."""
    check_output_path(config.output.path)
    skip = config.regions_outside == "skip"
    outside_lonlat: Optional[list[SkippedRegion]] = [] if skip else None  # else refused with every bad feature
    try:
        regions = load_regions(config.regions, skipped=outside_lonlat)
    except RegionError as e:
        raise ConfigError(str(e)) from None
    if not regions:  # before a source is asked anything
        raise ConfigError(no_region_left(outside_lonlat))
    layers = describe_layers(config, regions)
    info = primary_layer(layers).info
    config = record_expressions(config, layers)  # Earth Engine expressions: the ones they ran, fingerprinted
    grid = resolve_grid(config.grid, info)
    grid = dataclasses.replace(grid, center_points=config.sample.centered_on_points)
    check_grid_units(grid)
    layers = tuple(checked_layer(config, layer, grid) for layer in layers)
    primary = primary_layer(layers)
    regions, skipped = regions_inside(regions, info, outside_lonlat)
    projected = project_regions(regions, grid)
    check_plan_size(projected, grid)
    cells = plan_cells(regions, grid, projected=projected)
    sample, label_type = make_sample(config, regions, cells, projected, grid)
    try:
        by_split, guarded = count_by_split(cells, projected, grid, sample)
    except NotNorthUp as e:
        raise ConfigError(str(e)) from None
    planned = sum(by_split.values())
    if not planned:
        raise ConfigError(f"grid: the regions yield no patch (min_coverage {grid.min_coverage}); lower grid.min_coverage")
    job = Job(config=config, source=primary.source, info=info, regions=regions, grid=grid, cells=cells,
              planned=planned, sample=sample, rules=primary.rules, label_dtype=label_type, layers=layers,
              split_guard=guarded, split_counts={name: by_split.get(name, 0) for name in sample.split.names}
              if sample is not None and sample.split is not None else None, skipped_regions=skipped,
              projected=projected if isinstance(regions, PointRegions) else None)
    check_pictures(job)
    try:
        job.requests_per_patch
    except RequestTooLarge as e:
        raise ConfigError(f"grid.patch_size: {e}") from None
    check_patch_memory(layers, job.fetch_shape, config.fetch)
    return job


def describe_layers(config: Config, regions: Sequence[Region]) -> tuple[JobLayer, ...]:
    """Every layer made and described, in config order (`source:`: the one layer `image`)."""
    limits = job_limits(config)
    reach = regions_reach(config, regions)
    if config.layers is None:
        return (describe_layer(SOURCE_LAYER, INPUT, config.source, config.mask, limits[SOURCE_LAYER], reach),)
    return tuple(describe_layer(layer.name, layer.role, layer, pixel_mask(layer), limits[layer.name], reach,
                                f"layers.{layer.name}") for layer in config.layers)


def pixel_mask(layer) -> MaskConfig:
    """A layer's pixel mask rules (a STAC layer's `mask` is its quality mask: default rules)."""
    return layer.mask if isinstance(layer.mask, MaskConfig) else MaskConfig()


def checked_layer(config: Config, layer: JobLayer, grid: GridSpec) -> JobLayer:
    """A described layer checked against the grid, with its pixel rules."""
    if config.layers is None:
        check_mask_options(layer, config.mask, grid)
        out = config.output
        return with_pixel_rules(layer, out.scaling, out.data_type, out.band_ranges, config.mask, "output", "mask")
    cfg = layer.config
    if layer.kind == "vector":
        return layer
    mask = pixel_mask(cfg)
    check_mask_options(layer, mask, grid, f"{layer.where}.mask")
    return with_pixel_rules(layer, cfg.scaling, cfg.data_type, cfg.band_ranges, mask, layer.where,
                            f"{layer.where}.mask")


def check_pictures(job: Job) -> None:
    """png/jpeg: the visualization's layer and bands exist, and the layer is no time stack."""
    config = job.config
    vis = config.output.visualization
    if vis is not None and vis.layer is not None:
        if not job.layered:
            raise ConfigError("output.visualization.layer: applies to layers:; remove it")
        if vis.layer not in [layer.name for layer in job.layers]:
            raise ConfigError(f"output.visualization.layer: {vis.layer!r} is not a layer; use one of "
                              f"{', '.join(layer.name for layer in job.layers)}")
    shown = job.picture_layer
    check_outputs(config.output, shown.output_info)  # visualization bands against the source's
    if shown.info.time_steps is not None:
        pictures = [f for f in config.output.formats if f in ("png", "jpeg")]
        if pictures:
            raise ConfigError(f"output.formats: {pictures[0]} cannot show a time stack (collection_mode "
                              f"{shown.info.collection.mode}); use npy, tfrecord or geotiff")


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
    columns = None
    if s.label_property and isinstance(regions, PointRegions):  # the labels of the regions owning a patch
        columns = regions.labels_of({o for _, o in owned_patch_ids(cells, projected, grid, split)}, s.label_property)
    if columns is not None:
        labels, dtype = columns
    elif s.label_property:
        try:
            labels = region_labels(regions, s.label_property)
            dtype = label_dtype(labels)
        except SampleError as e:
            raise ConfigError(str(e)) from None
    if s.label_property and dtype == "float32":
        labels = tuple((r, float(v)) for r, v in labels)
    thresholds = ()
    if s.per_region is not None:
        thresholds = region_thresholds(owned_patch_ids(cells, projected, grid, split), s.per_region, s.seed)
    elif s.per_class is not None:
        thresholds = class_thresholds(owned_patch_ids(cells, projected, grid, split), s.per_class, s.seed, labels)
    return Sample(seed=s.seed, thresholds=thresholds, labels=labels, split=split,
                  by_class=s.per_class is not None), dtype


def patches_per_request(job: Job) -> int:
    """Neighbouring patches fetched in one request (transforms/fetching/merging.py): the
    source's `fetch.patches_per_request` for a job of one Earth Engine image, else 1."""
    if job.layered or not job.layers:
        return 1
    layer = job.layers[0]
    limits = layer.limits
    if limits is None or limits.patches_per_request <= 1 or layer.info.collection is not None:
        return 1
    return limits.patches_per_request if getattr(layer.source, "merges_windows", False) else 1


def plan_summary(job: Job) -> dict:
    """Counts for `pixelbeam plan`: patches, requests, output bytes (the patches' pixels as
    written, before compression), the least time at the request rates (s), and the limits of
    each layer. (A run reports `fetched bytes`: the pixel bytes its requests received.)"""
    n = job.planned
    requests = n * job.requests_per_patch
    out = {
        "patches": n,
        "regions": len(job.regions),
        **({"regions_skipped": [s.to_record() for s in job.skipped_regions]} if job.skipped_regions is not None else {}),
        "requests": requests,
        "requests_per_patch": job.requests_per_patch,
        "output_bytes": n * job.bytes_per_patch,
        "output_bytes_per_patch": job.bytes_per_patch,
        "bands": list(job.info.band_names),
        "dtype": job.output_info.dtype,
        "patch_shape": ([job.time_steps] if job.time_steps else []) + [len(job.info.band_names), *job.fetch_shape],
        "crs": job.crs_list,
        "cells": len(job.cells),
        "min_seconds_at_quota": min_seconds(job),
        **({"times": list(job.info.collection.step_times)} if job.time_steps else {}),
        **({"splits": dict(job.split_counts), "split_guard": job.split_guard} if job.split_counts is not None else {}),
        "limits": {layer.name: layer.limits.describe() if layer.limits else "none: rasterized locally, no request"
                   for layer in job.layers},
    }
    merged = patches_per_request(job)
    if merged > 1:  # neighbouring patches share requests: `requests` is one per patch, the most it can be
        out["patches_per_request"] = merged
        out["requests_at_least"] = -(-requests // merged)
    if job.layered:
        out["layers"] = [{"name": layer.name, "role": layer.role, "kind": layer.source_kind_name,
                          "bands": list(layer.info.band_names), "dtype": layer.output_info.dtype,
                          "requests_per_patch": layer.requests_per_patch(job.fetch_shape)} for layer in job.layers]
        for key in ("bands", "dtype", "patch_shape"):
            out.pop(key)
    return out


def min_seconds(job: Job) -> int:
    """The least time the job's requests take at each layer's rate (layers fetch side by side),
    in s; with merged requests, at the fewest requests they can be (`requests_at_least`)."""
    merged = patches_per_request(job)
    seconds = 0.0
    for layer in job.layers:
        rate = layer.limits.max_requests_per_second if layer.limits else None
        if rate:
            seconds = max(seconds, -(-job.planned * layer.requests_per_patch(job.fetch_shape) // merged) / rate)
    return math.ceil(seconds)
