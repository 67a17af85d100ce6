"""Building blocks for one's own Beam pipeline: the PTransforms `pixelbeam run` is made of, the
pixel sources they fetch from and the data that flows between them (docs/beam.md).

    PBegin --TilePatches--> PatchSpec --FetchPatches--> Patch (+ FailedPatch on `failed`)
          --your steps--> Patch --WritePatches--> manifest rows (+ FailedPatch)
          --WriteReports--> manifest.jsonl, failed.jsonl

- `TilePatches(cells, regions, grid, sample=None)`: planned cells -> `PatchSpec`s, spread over
  workers. `plan_cells(regions, grid)` plans the cells; `load_regions(path_or_bbox)` reads
  regions; `GridSpec` is the global pixel grid (CRS units, pixels).
- `FetchPatches(source, info, FetchSettings(...))`: PatchSpecs -> `Patch`es (`.patches`) and
  `FailedPatch`es (`.failed`), throttled and retried; `info = source.describe()`.
  `FetchSettings` limits are per worker process.
- `JudgePatches(max_masked_ratio, keep_empty=False)`: a DoFn whose main output keeps patches
  and whose `FILTERED` output holds the manifest rows of patches with too many masked pixels
  (and, unless `keep_empty`, of patches with no valid pixel).
- `WritePatches(output_path, formats)`: Patches -> files (TFRecord shards, NPY, GeoTIFF,
  PNG, JPEG); returns (manifest rows, FailedPatches).
- `WriteReports(output_path)`: `(rows, failed)` -> manifest.jsonl and failed.jsonl.
- Sources: `RasterSource(uris=(...), bands=(...))` (any GDAL raster), `earthengine_source`
  (needs earthengine-api), `make_source(config)` (the source a pixelbeam `Config` names); any
  object with `describe()` and `open()` (`PixelSource`) works.
- From a `pixelbeam.plan(config)`: `tile_patches(plan)`, `fetch_patches(plan)`,
  `write_patches(plan)`, `write_reports(plan)` build the same steps with the config's settings.

A `Patch` holds `data` (C, H, W) (or (T, C, H, W)), a `mask` (H, W), `band_names` and its
`spec`; a step of yours may replace them (`dataclasses.replace`) before WritePatches.
"""

from __future__ import annotations

from typing import Optional

from apache_beam.options.pipeline_options import PipelineOptions

from pixelbeam.pipeline.api import Plan
from pixelbeam.pipeline.outputs import job_file_options
from pixelbeam.pipeline.shards import job_shard_naming
from pixelbeam.pipeline.plan import make_source
from pixelbeam.pipeline.runner import fetch_layers, fetch_settings
from pixelbeam.transforms.fetch import FetchLayer, FetchLayers, FetchPatches, FetchSettings, fetch_patch
from pixelbeam.transforms.formats.files import PatchFileOptions
from pixelbeam.transforms.patch import FAILED, FILTERED, WRITTEN, FailedPatch, Patch, PatchSpec
from pixelbeam.transforms.pixels.masking import PixelRules
from pixelbeam.transforms.planning.cells import Cell, plan_cells
from pixelbeam.transforms.planning.grid import GridSpec
from pixelbeam.transforms.planning.regions import Region, load_regions
from pixelbeam.transforms.planning.sampling import Sample
from pixelbeam.transforms.sinks import JudgePatches, WritePatches, WriteReports
from pixelbeam.transforms.skip_done import SkipDonePatches
from pixelbeam.transforms.sources.base import PixelReader, PixelSource, SourceInfo
from pixelbeam.transforms.sources.raster import RasterSource
from pixelbeam.transforms.tiling import TilePatches


def earthengine_source(cfg, timeout_s: float = 120.0, bounds=None):
    """An Earth Engine source from a validated `source:` section (`Config.source`); imports
    earthengine-api when the source is first used."""
    from pixelbeam.transforms.sources.earthengine import earthengine_source as make
    return make(cfg, timeout_s=timeout_s, bounds=bounds)


def _patch_job(plan: Plan):
    if plan.unit != "patches":
        raise ValueError("pixelbeam.beam: a point-table plan has no patch steps; plan a config without `table:`")
    return plan.job


def tile_patches(plan: Plan) -> TilePatches:
    """TilePatches of the plan's cells, regions, grid and sample."""
    job = _patch_job(plan)
    return TilePatches(job.cells, job.regions, job.grid, job.sample)


def fetch_patches(plan: Plan, options: Optional[PipelineOptions] = None):
    """FetchPatches from the plan's source (FetchLayers for a `layers:` config, every layer under
    its own limits), with its limits divided over the worker processes `options` describe
    (default: one local process)."""
    job = _patch_job(plan)
    options = options or PipelineOptions([])
    if job.layered:
        return FetchLayers(fetch_layers(job, options))
    return FetchPatches(job.source, job.info, fetch_settings(job, options))


def write_patches(plan: Plan, run_id: str = "") -> WritePatches:
    """WritePatches with the plan's `output:` formats, layout and pictures."""
    job = _patch_job(plan)
    out = job.config.output
    return WritePatches(out.path, tuple(out.formats), out.tfrecord_shards, run_id=run_id,
                        file_options=job_file_options(job), splits=job.split_names,
                        layers=tuple(layer.name for layer in job.layers) if job.layered else (),
                        shards=job_shard_naming(job, run_id))


def write_reports(plan: Plan, run_id: str = "") -> WriteReports:
    """WriteReports into the plan's output folder."""
    return WriteReports(_patch_job(plan).config.output.path, run_id)


__all__ = [
    "TilePatches", "SkipDonePatches", "FetchPatches", "FetchLayers", "FetchLayer", "FetchSettings", "JudgePatches", "WritePatches", "WriteReports",
    "PatchSpec", "Patch", "FailedPatch", "WRITTEN", "FILTERED", "FAILED", "PatchFileOptions", "PixelRules",
    "GridSpec", "Region", "Cell", "Sample", "load_regions", "plan_cells", "fetch_patch",
    "PixelSource", "PixelReader", "SourceInfo", "RasterSource", "earthengine_source", "make_source",
    "tile_patches", "fetch_patches", "write_patches", "write_reports",
]
