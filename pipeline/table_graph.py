"""Point time series jobs (a `table:` section): plan, Beam graph, run.

groups of pixels -> FetchPatches (a group is a small window stacked over the collection's
images; the same throttled, retried fetch as patches) -> rows per (pixel, image) -> sharded
Parquet / CSV under `output.path/table/`, `failed.jsonl` (one record per failed group naming
its points and images), `table.json` (columns, images, counts, config). Every run rewrites the
table (no resume). Called from the cli when the config has a `table:` section.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Optional, Sequence

import apache_beam as beam

from pipeline.config import Config, ConfigError, EarthEngineSourceConfig, RasterSourceConfig
from transforms.patch import FAILED
from transforms.point_table import TableError, TableGrid, TableImage, group_columns, group_pixels, plan_pixels, time_ms
from transforms.regions import RegionError, load_regions
from transforms.sinks import join, to_json_line, write_atomically
from transforms.sources import SourceError, SourceInfo, patch_parts
from transforms import table_sink

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


class GroupRows(beam.DoFn):
    """(group id, {'patch': [Patch], 'pixels': [pixels]}) -> (shard, Arrow table)."""

    def __init__(self, images, bands, dtype, shards):
        self.images, self.bands, self.dtype, self.shards = images, bands, dtype, shards

    def process(self, element):
        key, joined = element
        for patch in joined["patch"]:  # none for a failed group: FailedGroups writes its dead letter
            columns = group_columns(patch.spec, joined["pixels"][0], patch.data, self.images, self.bands)
            yield table_sink.shard_of(key, self.shards), table_sink.columns_to_table(columns, self.bands, self.dtype)


def failed_group_record(element, images) -> dict:
    key, joined = element
    failure, pixels = joined["failed"][0], joined["pixels"][0]
    rec = failure.to_record()
    rec.update(group=key, values_lost=len(pixels) * len(images), images=[i.image_id for i in images],
               pixels=[{"point_id": p.point_id, "longitude": p.lon, "latitude": p.lat} for p in pixels])
    return rec


def build_table_pipeline(job: TableJob, pipeline: beam.Pipeline, settings) -> beam.Pipeline:
    from transforms.fetch import FetchPatches
    out = job.config.output.path
    schema = table_sink.arrow_schema(job.bands, job.dtype)
    groups = pipeline | "PlanGroups" >> beam.Create([(spec.patch_id, spec, pixels) for spec, pixels in job.groups])
    keyed_pixels = groups | "PixelsByGroup" >> beam.Map(lambda g: (g[0], g[2]))
    fetched = (groups | "Specs" >> beam.Map(lambda g: g[1]) | beam.Reshuffle()
               | "FetchGroups" >> FetchPatches(job.source, job.info, settings))
    patches = fetched.patches | "PatchByGroup" >> beam.Map(lambda p: (p.spec.patch_id, p))
    failures = fetched[FAILED] | "FailureByGroup" >> beam.Map(lambda f: (f.spec.patch_id, f))
    joined = {"patch": patches, "failed": failures, "pixels": keyed_pixels} | "JoinPixels" >> beam.CoGroupByKey()
    formats, shards = tuple(job.config.table.formats), job.shards
    _ = (joined | "Rows" >> beam.ParDo(GroupRows(job.images, job.bands, job.dtype, shards))
         | "ByShard" >> beam.GroupByKey()
         | "WriteShards" >> beam.Map(lambda kv: table_sink.write_shard(out, kv[0], shards, kv[1], formats, schema)))
    _ = (joined | "FailedGroups" >> beam.Filter(lambda kv: bool(kv[1]["failed"]))
         | "DeadLetter" >> beam.Map(lambda kv: to_json_line(failed_group_record(kv, job.images)))
         | "WriteDeadLetters" >> beam.io.WriteToText(join(out, "failed.jsonl"), shard_name_template=""))
    return pipeline


def clear_table(out: str) -> None:
    from apache_beam.io.filesystems import FileSystems
    found = FileSystems.match([join(out, "table/*")])[0].metadata_list
    if found:
        FileSystems.delete([m.path for m in found])


def count_outputs(job: TableJob) -> tuple[int, int, list[str]]:
    """(rows written, values lost in failed groups, files), read back from the outputs."""
    from apache_beam.io.filesystems import FileSystems
    out = job.config.output.path
    files = sorted(m.path for m in FileSystems.match([join(out, "table/part-*")])[0].metadata_list)
    rows = 0
    fmt = job.config.table.formats[0]
    for path in files:
        if fmt == "parquet" and path.endswith(".parquet"):
            import pyarrow.parquet as pq
            with FileSystems.open(path) as f:
                rows += pq.ParquetFile(f).metadata.num_rows
        elif fmt == "csv" and path.endswith(".csv"):
            with FileSystems.open(path) as f:
                rows += max(sum(1 for _ in f) - 1, 0)
    lost = 0
    failed = join(out, "failed.jsonl")
    if FileSystems.exists(failed):
        with FileSystems.open(failed) as f:
            lost = sum(json.loads(line)["values_lost"] for line in f if line.strip())
    return rows, lost, [os.path.relpath(p, out) if "://" not in out else p for p in files]


def table_description(job: TableJob, rows: int, lost_rows: int, files: Sequence[str]) -> dict:
    schema = table_sink.arrow_schema(job.bands, job.dtype)
    meaning = {"id": "image id (file stem / Earth Engine system:index)", "longitude": "pixel centre, degrees",
               "latitude": "pixel centre, degrees", "time": "image start, ms since 1970-01-01 UTC",
               "point_id": "the point or polygon the pixel belongs to"}
    return {"mode": "table",
            "columns": [{"name": f.name, "type": str(f.type),
                         "meaning": meaning.get(f.name, "band value; null where masked")} for f in schema],
            "images": [{"id": i.image_id, "time": i.time_ms} for i in job.images],
            "crs": job.grid.crs, "scale": list(job.grid.scale), "planned_rows": job.rows, "rows": rows,
            "failed_rows": lost_rows, "files": list(files), "config": job.config.model_dump(mode="json")}


def table_main(command: str, config: Config, beam_args: Sequence[str], as_json: bool = False,
               max_failed_fraction: float = 0.0) -> int:
    """`pixelbeam plan` / `run` for a config with a `table:` section."""
    try:
        job = prepare_table_job(config)
    except ConfigError as e:
        print(f"pixelbeam: error: {e}", file=sys.stderr)
        return 2
    if command == "plan":
        summary = job.summary()
        print(json.dumps(summary, indent=2) if as_json else "\n".join(f"{k:>22}: {v}" for k, v in summary.items()))
        return 0
    from pipeline.cli import pipeline_options
    from pipeline.graph import fetch_settings
    options = pipeline_options(beam_args)
    out = config.output.path
    from pipeline.dataflow import is_dry_run
    if is_dry_run(options):  # DataflowRunner translates the graph; nothing is submitted or written
        build_table_pipeline(job, beam.Pipeline(options=options), fetch_settings(job, options)).run().wait_until_finish()
        print(f"dry run: DataflowRunner translated the job ({job.rows} planned rows); nothing was submitted or written")
        return 0
    started = time.monotonic()
    clear_table(out)
    failed = join(out, "failed.jsonl")
    pipeline = build_table_pipeline(job, beam.Pipeline(options=options), fetch_settings(job, options))
    pipeline.run().wait_until_finish()
    rows, lost, files = count_outputs(job)
    write_atomically(join(out, "table.json"),
                     json.dumps(table_description(job, rows, lost, files), indent=2).encode())
    print(f"rows {rows} of {job.rows} planned | failed {lost} | images {len(job.images)} | pixels {job.pixels} | "
          f"values {rows * len(job.bands)} | {time.monotonic() - started:.1f} s")
    if rows + lost != job.rows:
        print(f"pixelbeam: INCOMPLETE: {rows} rows + {lost} failed for {job.rows} planned", file=sys.stderr)
        return 1
    if lost > max_failed_fraction * job.rows:
        print(f"pixelbeam: {lost} rows failed (see {failed}); rerun to retry them", file=sys.stderr)
        return 1
    return 0
