"""The job's layers: each source made, described and checked, with its pixel rules and limits.

A job's `source:` is one input layer named `image`; `layers:` names several (pipeline/config/
layers.py). Each becomes a `JobLayer`: its pixel source (raster, Earth Engine, vector), what it
yields (`SourceInfo`, from one `describe()` on the launcher), its post-fetch pixel rules
(unmask, scaling, fill_value) and its request limits (pipeline/limits.py). Errors are one-line
ConfigErrors naming `source.<field>` or `layers.<name>.<field>`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import numpy as np
import pyproj

from pixelbeam.pipeline.config import (ConfigError, EarthEngineSourceConfig, MaskConfig, RasterSourceConfig,
                                       StacSourceConfig, VectorLayerConfig)
from pixelbeam.pipeline.limits import Limits, source_kind
from pixelbeam.transforms.fetching.sizing import plan_parts, request_bytes
from pixelbeam.transforms.patch import INPUT
from pixelbeam.transforms.pixels.masking import PixelRules, check_fill_value
from pixelbeam.transforms.pixels.scaling import ScalingError, resolve_scaling
from pixelbeam.transforms.planning.grid import GridSpec
from pixelbeam.transforms.sources.base import PixelSource, SourceError, SourceInfo


@dataclasses.dataclass(frozen=True)
class JobLayer:
    """One described layer of a job. `where` is its config field (`source` or `layers.<name>`)."""

    name: str
    role: str
    kind: str  # earthengine | local | remote | vector (pipeline/limits.py source_kind)
    source: PixelSource
    info: SourceInfo
    rules: PixelRules = PixelRules()
    limits: Optional[Limits] = None  # None: no request (a vector file)
    config: Any = None
    where: str = "source"

    @property
    def output_info(self) -> SourceInfo:
        """What the written layer holds: its bands in the output dtype (scaling)."""
        return scaled_info(self.info, self.rules)

    @property
    def images_per_patch(self) -> int:
        """A collection's images are fetched one by one (transforms/pixels/collections.py)."""
        return len(self.info.collection.images) if self.info.collection else 1

    def requests_per_patch(self, fetch_shape: tuple[int, int]) -> int:
        if self.limits is None:
            return 0
        h, w = fetch_shape
        return len(plan_parts(w, h, self.info.band_bytes, self.info.limits)) * self.images_per_patch

    def bytes_per_patch(self, fetch_shape: tuple[int, int]) -> int:
        if self.limits is None:
            return 0
        h, w = fetch_shape
        return request_bytes(w, h, self.info.band_bytes) * self.images_per_patch

    def memory_bytes(self, fetch_shape: tuple[int, int]) -> int:
        """Bytes the layer's pixels and validity masks take in memory for one patch as fetched:
        every image of a collection (held until combined) and the margin (fetch_shape)."""
        h, w = fetch_shape
        return h * w * self.images_per_patch * (sum(self.info.band_bytes) + 1)

    @property
    def source_kind_name(self) -> str:
        """raster, earthengine or vector (dataset.json `kind`)."""
        return {"local": "raster", "remote": "raster"}.get(self.kind, self.kind)


def scaled_info(info: SourceInfo, rules: PixelRules) -> SourceInfo:
    """`info` with the output dtype of `rules.scaling` for every band (unchanged without scaling)."""
    if rules.scaling is None:
        return info
    return dataclasses.replace(info, dtypes=(rules.scaling.dtype,) * len(info.band_names))


def relabel(message: str, where: str) -> str:
    """A source's message ('source.bands: ...') for the layer at `where` ('layers.dem.bands: ...')."""
    if where == "source":
        return message
    for prefix in ("source.", "source:"):
        if message.startswith(prefix):
            return where + message[len("source"):]
    return f"{where}: {message}"


@dataclasses.dataclass(frozen=True)
class Reach:
    """Where the regions' patches can reach, in lon/lat degrees, for sources that list images
    before the plan exists: `bounds` (the box on an explicit grid, or None when the grid needs
    the source), `regions_box` (the regions' own box) and `extent_of(info)` (the box on the grid
    resolved from a source's info; a STAC source calls it once an item gives the native grid)."""

    bounds: Optional[tuple[float, float, float, float]] = None
    regions_box: Optional[tuple[float, float, float, float]] = None
    extent_of: Optional[Callable[[Optional[SourceInfo]], tuple]] = None


def make_source(src, mask: MaskConfig, timeout_s: float, reach: Reach = Reach(), where: str = "source") -> PixelSource:
    """The pixel source of a `source:` section or a layer; Earth Engine collections and
    expressions and STAC searches are listed only within `reach`, when known."""
    if isinstance(src, VectorLayerConfig):
        from pixelbeam.transforms.sources.vector import VectorSource
        order = src.burn_order
        return VectorSource(path=src.path, property=src.property, band=src.band_name, layer=src.layer,
                            classes=tuple(src.classes.items()) if src.classes is not None else None,
                            all_touched=src.all_touched, background=src.background, ignore_value=src.ignore_value,
                            ignore_buffer=src.ignore_buffer, burn_order=order if isinstance(order, str) else "property",
                            burn_property=None if isinstance(order, str) else order.property,
                            descending=False if isinstance(order, str) else order.descending,
                            dtype=_numpy_type(src.data_type, f"{where}.data_type"), where=where)
    if isinstance(src, RasterSourceConfig):
        from pixelbeam.transforms.sources.raster import RasterSource
        images = src.images or ()
        return RasterSource(uris=src.uris, bands=tuple(src.bands) if src.bands else None, resampling=src.resampling,
                            mask_nodata=mask.mask_nodata, mask_alpha=mask.mask_alpha, mode=src.mode,
                            times=tuple(i.time for i in images),
                            properties=tuple(tuple(sorted(i.properties.items())) for i in images),
                            reducer=src.composite, flatten_by=src.flatten_by, min_coverage=src.filter_coverage)
    if isinstance(src, EarthEngineSourceConfig):
        from pixelbeam.transforms.sources.earthengine import earthengine_source
        listed = src.collection_mode or src.expression or src.expression_json is not None
        return earthengine_source(src, timeout_s=timeout_s, bounds=reach.bounds if listed else None)
    if isinstance(src, StacSourceConfig):  # searched once here, within the regions' reach on the job's grid
        from pixelbeam.transforms.sources.stac import stac_source
        return stac_source(src, timeout_s, reach.regions_box, reach.extent_of)
    raise ConfigError(f"{where}.kind: {src.kind!r} is not supported")  # unreachable: validated


def _numpy_type(data_type: Optional[str], field: str) -> Optional[str]:
    if data_type is None:
        return None
    from pixelbeam.transforms.pixels.scaling import NUMPY, data_type_name
    try:
        return NUMPY[data_type_name(data_type)]
    except (ScalingError, KeyError):
        raise ConfigError(f"{field}: {data_type!r} is not a data type; use Byte, UInt16, Int16, UInt32, Int32, "
                          "Float32 or Float64") from None


def describe_layer(name: str, role: str, src, mask: MaskConfig, limits: Optional[Limits], reach: Reach = Reach(),
                   where: str = "source") -> JobLayer:
    """A layer's source made and described (one describe(): an Earth Engine probe, a file read)."""
    timeout = limits.timeout_s if limits is not None else 120.0
    try:  # making a source may list images already (a STAC search, an Earth Engine expression)
        source = make_source(src, mask, timeout, reach, where)
        info = source.describe()
    except SourceError as e:
        raise ConfigError(relabel(str(e), where)) from None
    return JobLayer(name=name, role=role, kind=source_kind(src), source=source, info=info, limits=limits,
                    config=src, where=where)


def with_pixel_rules(layer: JobLayer, scaling, data_type, band_ranges, mask: MaskConfig,
                     output_where: str, mask_where: str) -> JobLayer:
    """The layer with its post-fetch pixel rules (unmask, scaling, fill_value), checked against
    its source; `output_where` / `mask_where` prefix the fields in messages."""
    info = layer.info
    resolved = None
    if scaling is not None or data_type is not None:
        try:
            resolved = resolve_scaling(info.band_names, info.dtypes, scaling, data_type, band_ranges)
        except ScalingError as e:
            raise ConfigError(f"{output_where}.{e}") from None
        if scaling is None and np.dtype(resolved.dtype) == np.dtype(info.dtype):
            resolved = None  # data_type equal to the source's: nothing to do
    for field, value, dtype in ((f"{mask_where}.unmask", mask.unmask, info.dtype),
                                (f"{mask_where}.fill_value", mask.fill_value,
                                 resolved.dtype if resolved else info.dtype)):
        problem = check_fill_value(value, dtype, field)
        if problem:
            raise ConfigError(problem)
    return dataclasses.replace(layer, rules=PixelRules(unmask=mask.unmask, scaling=resolved, fill_value=mask.fill_value))


def check_mask_options(layer: JobLayer, mask: MaskConfig, grid: GridSpec, where: str = "mask") -> None:
    """mask_nodata / mask_alpha false: raster sources read on the file's own grid only (a warp
    would still let GDAL mask nodata and alpha)."""
    off = [k for k in ("mask_nodata", "mask_alpha") if not getattr(mask, k)]
    if not off:
        return
    if not isinstance(layer.config, RasterSourceConfig):
        raise ConfigError(f"{where}.{off[0]}: applies to raster sources (Earth Engine sends its own mask); remove it")
    info = layer.info
    a, b, c, d, e, f = info.transform
    native = (grid.crs.lower() != "utm" and pyproj.CRS(grid.crs) == pyproj.CRS(info.crs) and not b and not d
              and math.isclose(grid.scale[0], abs(a)) and math.isclose(grid.scale[1], abs(e))
              and _aligned(grid.origin[0] - c, abs(a)) and _aligned(grid.origin[1] - f, abs(e)))
    if not native:
        raise ConfigError(f"{where}.{off[0]}: false works on the source's own grid only; use grid crs, scale and "
                          "origin native, or keep it true")


def _aligned(offset: float, step: float) -> bool:
    k = offset / step
    return abs(k - round(k)) < 1e-6


def primary_layer(layers) -> JobLayer:
    """The first input layer: the Patch's `data`, the grid's `native`, the regions' footprint."""
    return next(layer for layer in layers if layer.role == INPUT)
