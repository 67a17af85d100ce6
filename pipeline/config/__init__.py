"""The job's YAML config: schema, validation and path resolution, before anything runs.

One frozen `Config` object (pydantic models with unknown keys forbidden). Every problem is a
`ConfigError` whose message is one line naming the field and saying what to do. Relative
paths in a config resolve against the config file's own folder.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Optional, Sequence, Union

import yaml
from pydantic import StrictFloat, StrictInt, ValidationError, model_validator

from pixelbeam.pipeline.config.base import REMOTE, ConfigError, Strict, leading_field, resolve
from pixelbeam.pipeline.config.layers import (SOURCE_LAYER, EarthEngineLayerConfig, LayerConfig, RasterLayerConfig,
                                              StacLayerConfig, VectorLayerConfig, check_layers, layers_as_list,
                                              top_level_conflicts)
from pixelbeam.pipeline.config.sections import (FORMATS, FetchConfig, GridConfig, MaskConfig, OutputConfig,
                                                SampleConfig, SplitConfig, VisualizationConfig)
from pixelbeam.pipeline.config.sources import (COLLECTION_MODES, HIGH_VOLUME_URL, EarthEngineFilter,
                                               EarthEngineSourceConfig, RasterImageConfig, RasterSourceConfig,
                                               Reducer, SourceConfig, check_collection)
from pixelbeam.pipeline.config.stac import StacSourceConfig
from pixelbeam.pipeline.config.table import TableConfig
from pixelbeam.pipeline.config.yaml_limits import alias_bomb

__all__ = [
    "Config", "ConfigError", "load_config", "parse_config", "describe_validation_error", "resolve", "resolve_paths",
    "Strict", "REMOTE", "FORMATS", "FetchConfig", "GridConfig", "MaskConfig", "OutputConfig", "SampleConfig", "SplitConfig",
    "VisualizationConfig", "COLLECTION_MODES", "HIGH_VOLUME_URL", "EarthEngineFilter", "EarthEngineSourceConfig",
    "RasterImageConfig", "RasterSourceConfig", "Reducer", "SourceConfig", "check_collection", "TableConfig",
    "StacSourceConfig",
    "LayerConfig", "RasterLayerConfig", "EarthEngineLayerConfig", "StacLayerConfig", "VectorLayerConfig", "SOURCE_LAYER",
]


class Config(Strict):
    source: Optional[SourceConfig] = None  # one input layer named `image`; or layers:
    layers: Optional[list[LayerConfig]] = None  # several sources on one grid (pipeline/config/layers.py)
    regions: Union[str, list[Union[StrictInt, StrictFloat]]]  # a bbox of numbers: "24.5" is refused, not read
    regions_outside: Literal["error", "skip"] = "error"  # skip: plan without regions outside the source or lon/lat
    grid: GridConfig = GridConfig()
    output: OutputConfig
    fetch: FetchConfig = FetchConfig()
    mask: MaskConfig = MaskConfig()
    sample: SampleConfig = SampleConfig()
    split: Optional[SplitConfig] = None  # train/val/test (transforms/planning/splits.py)
    table: Optional[TableConfig] = None  # point time series instead of patches (pipeline/tables/graph.py)

    @model_validator(mode="before")
    @classmethod
    def _raster_by_default(cls, data: Any):
        if isinstance(data, dict) and isinstance(data.get("source"), dict) and "kind" not in data["source"]:
            data = {**data, "source": {"kind": "raster", **data["source"]}}
        if isinstance(data, dict) and "layers" in data:
            data = {**data, "layers": layers_as_list(data["layers"])}
        return data


def load_config(path: str, rewrite=None) -> Config:
    """Read, validate and resolve a YAML config; raises ConfigError (one line). `rewrite`
    (mapping -> mapping) changes the document before it is validated (e.g. an image from Python)."""
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        doc = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file; give the path to a YAML config", field=None) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name}: not UTF-8 text (byte {e.start}); save the config as UTF-8", field=None) from None
    except OSError as e:  # a folder, no permission
        raise ConfigError(f"{path}: cannot read the config ({e.strerror}); give the path to a YAML file", field=None) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{name}: not valid YAML{where}: {problem}; fix the syntax", field=None) from None
    except RecursionError:  # e.g. [[[[... thousands deep: a resource bomb, not a config
        raise ConfigError(f"{name}: the YAML nests lists or mappings thousands deep; a config needs a few levels",
                          field=None) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{name}: expected a YAML mapping with source, regions, grid, output, fetch", field=None)
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    duplicate = alias_bomb(root) or duplicate_key(root)  # an alias bomb first: the key check walks it
    if duplicate:
        raise ConfigError(f"{name}: {duplicate}", field=leading_field(duplicate))
    doc = rewrite(doc) if rewrite else doc
    return parse_config(doc, base_dir=os.path.dirname(os.path.abspath(path)), name=name)


def parse_config(doc: dict, base_dir: str = ".", name: str = "config", recorded: bool = False) -> Config:
    """Validate a config mapping and resolve its relative paths against `base_dir`; `recorded`:
    a config an output folder recorded (every key, defaults included, e.g. `bands: []`)."""
    try:
        config = Config.model_validate(doc, context={"table": doc.get("table") is not None, "recorded": recorded})
    except ValidationError as e:
        problem = describe_validation_error(e, layer_names(doc))
        raise ConfigError(f"{name}: {problem}", field=leading_field(problem)) from None
    try:
        if config.layers is None and config.source is None:
            raise ConfigError("source: required key is missing; add it (or layers:, several sources on one grid)")
        if config.table is not None and config.regions_outside == "skip":
            raise ConfigError("regions_outside: skip applies to patches; a table: job reads every region (remove it)")
        if config.layers is not None:
            top_level_conflicts(config)
            check_layers(config.layers)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}", field=leading_field(str(e))) from None
    return resolve_paths(config, base_dir)


def duplicate_key(node, path: str = "") -> Optional[str]:
    """'field: duplicate key ...' for the first mapping of a composed YAML document that gives a
    key twice (YAML loaders keep the last silently, e.g. two layers of one name), else None."""
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            here = f"{path}.{name}" if path else str(name)
            if name is not None and name in seen:
                what = "two layers are named" if path == "layers" else "the key is given twice:"
                return (f"{path or 'config'}: {what} {name!r} (line {key.start_mark.line + 1}); "
                        "give each key once" + (" (each layer its own name)" if path == "layers" else ""))
            seen.add(name)
            found = duplicate_key(value, here)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = duplicate_key(item, f"{path}.{i}")
            if found:
                return found
    return None


def layer_names(doc: dict) -> list[str]:
    """The layer names of a raw config, by position (to name layers in validation errors)."""
    layers = layers_as_list(doc.get("layers")) if isinstance(doc, dict) else None
    if not isinstance(layers, list):
        return []
    return [str(layer.get("name", i)) if isinstance(layer, dict) else str(i) for i, layer in enumerate(layers)]


# What a field of several accepted shapes takes, for type errors (pydantic would name only the
# first shape it tried).
SHAPE_HINTS = {
    "regions": "give a GeoJSON path or a [min_lon, min_lat, max_lon, max_lat] bbox",
    "grid.patch_size": "give pixels as an int or [width, height]",
    "grid.scale": "give a pixel size in CRS units (a number or [x, y]) or native",
    "grid.origin": "give [x, y] in CRS units or native",
    "source.uri": "give a path or URL, or a list of them",
    "source.bands": "give a list of 1-based band indexes or band names (stac: asset keys)",
    "source.sign": ("give planetary_computer, none, or one of {query: <SAS token>}, {query_env: <variable>}, "
                    "{hook: <module:function>}"),
}


def describe_validation_error(e: ValidationError, layers: Sequence[str] = ()) -> str:
    """The first pydantic error as 'field.path: what is wrong (got …)'; `layers` names the
    layers by position, so that an error says `layers.<name>.<field>`."""
    err = e.errors()[0]
    raw = list(err["loc"])
    if len(raw) > 1 and raw[0] == "layers" and isinstance(raw[1], int) and raw[1] < len(layers):
        raw[1] = layers[raw[1]]
    loc = [str(p) for p in raw if not str(p) in ("raster", "earthengine", "stac", "vector")]
    loc = [p for p in loc if not p.startswith(("function-", "literal[", "tuple[", "list[", "str", "int", "float",
                                               "constrained-"))]
    field = ".".join(loc) or "config"
    secret = field.startswith("source.sign") or (field.startswith("layers.") and ".sign" in field)  # may hold a token
    if field in SHAPE_HINTS and err["type"].endswith(("_type", "_parsing", "literal_error", "too_long", "too_short")):
        return f"{field}: {SHAPE_HINTS[field]}" + ("" if secret else f" (got {err.get('input')!r})")
    if err["type"] == "extra_forbidden":
        return f"{field}: unknown key; remove it or check its spelling against the config reference"
    if err["type"] == "union_tag_invalid":
        tag = (err.get("ctx") or {}).get("tag")
        kinds = "raster, earthengine, stac or vector" if field.startswith("layers") else "raster, earthengine or stac"
        return f"{field}.kind: {tag!r} is not a source kind; use {kinds}"
    if err["type"] == "missing":
        return f"{field}: required key is missing; add it"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) or secret else f" (got {got!r})"
    return f"{field}: {msg}{shown}"


def resolve_paths(config: Config, base_dir: str) -> Config:
    updates: dict[str, Any] = {"output": config.output.model_copy(update={"path": resolve(config.output.path, base_dir)})}
    if isinstance(config.regions, str):
        updates["regions"] = resolve(config.regions, base_dir)
    if config.source is not None:
        updates["source"] = resolve_source_paths(config.source, base_dir)
    if config.layers is not None:
        updates["layers"] = [resolve_source_paths(layer, base_dir) for layer in config.layers]
    return config.model_copy(update=updates)


def resolve_source_paths(src, base_dir: str):
    """A source (or layer) with its files made absolute against `base_dir`."""
    if isinstance(src, VectorLayerConfig):
        return src.model_copy(update={"path": resolve(src.path, base_dir)})
    if isinstance(src, RasterSourceConfig) and src.images is not None:
        images = [i.model_copy(update={"uri": resolve(i.uri, base_dir)}) for i in src.images]
        return src.model_copy(update={"images": images})
    if isinstance(src, RasterSourceConfig):
        uris = [resolve(u, base_dir) for u in src.uris]
        return src.model_copy(update={"uri": uris[0] if isinstance(src.uri, str) else uris})
    if isinstance(src, StacSourceConfig) and src.catalog:
        return src.model_copy(update={"catalog": resolve(src.catalog, base_dir)})
    if isinstance(src, EarthEngineSourceConfig):
        return resolve_expression_paths(src, base_dir)
    return src


def resolve_expression_paths(source: EarthEngineSourceConfig, base_dir: str) -> EarthEngineSourceConfig:
    """`expression: file.py:function` and an `expression_json` file, against the config's folder."""
    update: dict[str, Any] = {}
    if source.expression and ":" in source.expression:
        path, _, name = source.expression.rpartition(":")
        update["expression"] = f"{resolve(path, base_dir)}:{name}"
    if isinstance(source.expression_json, str) and not source.expression_json.lstrip().startswith("{"):
        update["expression_json"] = resolve(source.expression_json, base_dir)
    return source.model_copy(update=update) if update else source
