"""An Earth Engine image given from Python: the config side of `pixelbeam.run(config, image=…)`.

`with_expression(config, image)` puts the serialized expression of an `ee.Image` or
`ee.ImageCollection` (or an already serialized one) inline into `source.expression_json`, so
the job is planned, fingerprinted, recorded in dataset.json and resumed exactly as one whose
YAML names a JSON file. `record_expression(config, source)` is what the planner does after
running a `source.expression` function: the config then holds the expression it ran (which
the fingerprint and dataset.json carry, and which `retry-failed` reuses).
"""

from __future__ import annotations

import json
from typing import Any, Union

from pixelbeam.pipeline.config.base import ConfigError

_REPLACED = ("asset", "collection", "expression", "expression_args", "expression_json")


def serialized(image_or_collection) -> dict:
    """The serialized expression (a dict) of an ee.Image / ee.ImageCollection, of its
    `serialize()` text, or of a serialized dict."""
    if isinstance(image_or_collection, dict):
        return image_or_collection
    if isinstance(image_or_collection, (str, bytes)):
        try:
            return json.loads(image_or_collection)
        except ValueError:
            raise ConfigError("image: not a serialized expression (not JSON); pass an ee.Image, an "
                              "ee.ImageCollection or what image.serialize() returns") from None
    try:
        import ee
    except ImportError:
        raise ConfigError("image: needs the Earth Engine client; pip install 'pixelbeam[ee]'") from None
    if not isinstance(image_or_collection, (ee.Image, ee.ImageCollection)):
        raise ConfigError(f"image: got {type(image_or_collection).__name__}; pass an ee.Image or ee.ImageCollection")
    return json.loads(image_or_collection.serialize())


def check_kind(image_or_collection, keyword: str) -> None:
    """`image=` takes an ee.Image and `collection=` an ee.ImageCollection (serialized ones are
    taken as they are: their kind is checked when the job is planned)."""
    if isinstance(image_or_collection, (dict, str, bytes)):
        return
    try:
        import ee
    except ImportError:
        raise ConfigError(f"{keyword}: needs the Earth Engine client; pip install 'pixelbeam[ee]'") from None
    wanted, other = (ee.Image, "collection") if keyword == "image" else (ee.ImageCollection, "image")
    if not isinstance(image_or_collection, wanted):
        raise ConfigError(f"{keyword}: got {type(image_or_collection).__name__}; pass an ee.{wanted.__name__}, "
                          f"or use {other}=")


def with_expression(config: Union[Any, dict], image_or_collection):
    """`config` (a Config, or a config mapping before validation) whose source is
    `image_or_collection`, serialized inline as `source.expression_json`; the source's other
    keys (bands, mask, collection_mode, composite, filters, project, url, ...) are kept."""
    expression = serialized(image_or_collection)
    if isinstance(config, dict):
        source = {k: v for k, v in (config.get("source") or {}).items() if k not in _REPLACED}
        return {**config, "source": {**source, "kind": "earthengine", "expression_json": expression}}
    from pixelbeam.pipeline.config import EarthEngineSourceConfig, parse_config
    if not isinstance(config.source, EarthEngineSourceConfig):
        raise ConfigError("source.kind: an image from Python needs an earthengine source; set source.kind: earthengine")
    doc = config.model_dump(mode="json", exclude_defaults=True)
    return parse_config(with_expression(doc, expression), name="config")


def record_expressions(config, layers):
    """`config` holding, for each Earth Engine layer (`source:` or `layers:`), the expression
    its source ran (record_expression), so that the fingerprint and dataset.json carry it."""
    if config.layers is None:
        return record_expression(config, layers[0].source)
    by_name = {layer.name: layer.source for layer in layers}
    recorded = [_recorded(cfg, by_name[cfg.name]) for cfg in config.layers]
    if all(new is old for new, old in zip(recorded, config.layers)):
        return config
    return config.model_copy(update={"layers": recorded})


def _recorded(source_config, source):
    """A source section with the expression `source` ran inline (unchanged if none)."""
    text = getattr(source, "expression", None)
    if not text or source_config.expression_json == json.loads(text):
        return source_config
    return source_config.model_copy(update={"expression_json": json.loads(text)})


def record_expression(config, source):
    """`config` holding the expression `source` (an EarthEngineSource) ran, inline in
    `source.expression_json` (its `expression` key kept, naming where it came from)."""
    text = getattr(source, "expression", None)
    if not text:
        return config
    recorded = json.loads(text)
    if config.source.expression_json == recorded:
        return config
    return config.model_copy(update={"source": config.source.model_copy(update={"expression_json": recorded})})
