"""The `layers:` section: several sources fetched onto the same patch grid.

Each layer is a raster, Earth Engine or STAC source (the same keys as `source:`) or a `kind: vector`
file rasterized per patch, plus a `role` (`input` or `target`) and its own `mask`, `scaling`,
`data_type`, `band_ranges` and `fetch` overrides. `layers:` is a mapping of names to layers
(or a list of layers with `name`); `source:` is one input layer named `image`.

Checks that span fields (`check_layers`) raise one-line `ConfigError`s naming
`layers.<name>.<field>`: a target is resampled by nearest neighbour (or mode) and keeps its
values (no scaling, no mean or median composite).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from pixelbeam.pipeline.config.base import ConfigError, Strict
from pixelbeam.pipeline.config.sections import FetchConfig, MaskConfig
from pixelbeam.pipeline.config.sources import EarthEngineSourceConfig, RasterSourceConfig
from pixelbeam.pipeline.config.stac import StacMaskConfig, StacSourceConfig

ROLES = ("input", "target")
LAYER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
SOURCE_LAYER = "image"  # the layer `source:` stands for
TARGET_RESAMPLING = ("nearest", "near", "mode")
AVERAGING_COMPOSITES = ("mean", "median")


class LayerOptions(Strict):
    """What every layer adds to its source: a name, a role and per-layer pixel and fetch rules."""

    name: str
    role: Literal["input", "target"]
    mask: Optional[MaskConfig] = None  # mask_nodata, mask_alpha, unmask, fill_value (mask.npy is output-wide)
    scaling: Optional[Union[str, list[Any], dict[str, Any]]] = None  # as output.scaling
    data_type: Optional[str] = None  # as output.data_type
    band_ranges: Optional[dict[str, dict[str, tuple[float, float]]]] = None  # as output.band_ranges
    fetch: Optional[FetchConfig] = None  # overrides of the top-level fetch: for this layer

    @field_validator("name")
    @classmethod
    def _file_safe(cls, v):
        if not LAYER_NAME.match(v):
            raise ValueError("a layer name starts with a letter and holds letters, digits, _ and - only "
                             "(it names folders and TFRecord features)")
        return v


class RasterLayerConfig(LayerOptions, RasterSourceConfig):
    """A raster file or collection on the patch grid (the keys of a raster `source:`)."""


class EarthEngineLayerConfig(LayerOptions, EarthEngineSourceConfig):
    """An Earth Engine image on the patch grid (the keys of an earthengine `source:`)."""


class StacLayerConfig(LayerOptions, StacSourceConfig):
    """STAC items on the patch grid (the keys of a stac `source:`). Its `mask` is the STAC
    quality mask (`{asset, invalid | valid | bits}`), as in `source:`; nodata comes from each
    asset's `raster:bands`."""

    mask: Optional[StacMaskConfig] = None


class BurnByProperty(Strict):
    """Features burnt in the order of a numeric property: the largest value ends on top
    (`descending: true` puts the smallest on top)."""

    property: str
    descending: bool = False


class VectorLayerConfig(LayerOptions):
    """Features of a vector file rasterized onto each patch's grid (rasterio.features.rasterize).
    Units: `ignore_buffer` in pixels."""

    kind: Literal["vector"]
    path: str  # any OGR format or GeoParquet, any CRS
    layer: Optional[str] = None  # a layer of a multi-layer file (GeoPackage); default its first
    property: str  # the attribute holding each feature's value (a number, or a class name with classes)
    classes: Optional[dict[str, int]] = None  # class name -> value burnt
    all_touched: bool = False  # burn every pixel a feature touches, not only those whose centre it covers
    background: Union[int, float] = 0  # pixels no feature covers
    ignore_value: Optional[Union[int, float]] = None  # pixels within ignore_buffer px of a feature edge (and masked)
    ignore_buffer: int = Field(0, ge=0)
    burn_order: Union[Literal["file", "area"], BurnByProperty] = "file"  # area: largest first, small on top
    band: Optional[str] = None  # the band's name (default: the property's)

    @model_validator(mode="after")
    def _ignore_needs_value(self):
        if self.ignore_buffer and self.ignore_value is None:
            raise ValueError("ignore_buffer needs ignore_value (the value edge pixels take); add it")
        return self

    @property
    def band_name(self) -> str:
        return self.band or self.property


LayerConfig = Annotated[Union[RasterLayerConfig, EarthEngineLayerConfig, StacLayerConfig, VectorLayerConfig],
                        Field(discriminator="kind")]


def layers_as_list(value: Any) -> Any:
    """`layers:` given as {name: layer} becomes [{name, ...}] (order kept); kind raster by default."""
    if isinstance(value, dict):
        value = [({"name": name, **layer} if isinstance(layer, dict) else layer) for name, layer in value.items()]
    if isinstance(value, list):
        value = [({"kind": "raster", **layer} if isinstance(layer, dict) and "kind" not in layer else layer)
                 for layer in value]
    return value


def check_layers(layers) -> None:
    """Checks across fields of `layers` (module doc); raises a one-line ConfigError."""
    if not layers:
        raise ConfigError("layers: give at least one layer (name: {kind, role, ...})")
    seen = set()
    for layer in layers:
        if layer.name in seen:
            raise ConfigError(f"layers: two layers are named {layer.name!r}; give each layer its own name")
        seen.add(layer.name)
        check_layer(layer)
    if not any(layer.role == "input" for layer in layers):
        raise ConfigError("layers: no layer has role input; a training example needs at least one input layer")


def check_layer(layer) -> None:
    where = f"layers.{layer.name}"
    if isinstance(layer.mask, MaskConfig) and layer.mask.npy:
        raise ConfigError(f"{where}.mask.npy: mask files are an output option for every layer; set the top-level "
                          "mask.npy instead")
    if layer.fetch is not None and layer.fetch.max_patch_bytes is not None:
        raise ConfigError(f"{where}.fetch.max_patch_bytes: a patch holds every layer in one worker's memory; "
                          "give it in the top-level fetch:")
    if isinstance(layer, VectorLayerConfig):
        for key in ("scaling", "band_ranges", "mask"):
            if getattr(layer, key) is not None:
                raise ConfigError(f"{where}.{key}: a vector layer burns the values it is given; remove {key} "
                                  "(use data_type for the burnt type)")
        if layer.fetch is not None:
            raise ConfigError(f"{where}.fetch: a vector layer is rasterized locally and sends no request; remove it")
        return
    if layer.role != "target":
        return
    if layer.resampling.lower() not in TARGET_RESAMPLING:
        raise ConfigError(f"{where}.resampling: a target keeps its class values, so it is resampled by nearest "
                          f"neighbour (or mode), not {layer.resampling!r}; use nearest or mode")
    for key in ("scaling", "data_type", "band_ranges"):
        if getattr(layer, key) is not None:
            raise ConfigError(f"{where}.{key}: a target keeps its values and type (scaling never touches it); "
                              f"remove {key} or make the layer an input")
    if layer.composite in AVERAGING_COMPOSITES:
        raise ConfigError(f"{where}.composite: {layer.composite} would average class values of a target; "
                          "use first, min, max or mosaic")
    if isinstance(layer, EarthEngineLayerConfig) and layer.resampling.lower() == "mode":
        raise ConfigError(f"{where}.resampling: Earth Engine resamples a target by nearest neighbour only; "
                          "use nearest")


def top_level_conflicts(config) -> None:
    """With `layers:`, pixel rules live per layer: refuse the top-level keys that would be ambiguous."""
    if config.source is not None:
        raise ConfigError("layers: give either source (one input layer) or layers, not both")
    out = config.output
    for key in ("scaling", "data_type", "band_ranges"):
        if getattr(out, key) is not None:
            raise ConfigError(f"output.{key}: with layers:, give it per layer (layers.<name>.{key})")
    mask = config.mask
    for key in ("unmask", "fill_value"):
        if getattr(mask, key) is not None:
            raise ConfigError(f"mask.{key}: with layers:, give it per layer (layers.<name>.mask.{key})")
    for key in ("mask_nodata", "mask_alpha"):
        if not getattr(mask, key):
            raise ConfigError(f"mask.{key}: with layers:, give it per layer (layers.<name>.mask.{key})")
    if config.table is not None:
        raise ConfigError("table: a point table reads one source; use source: instead of layers:")
