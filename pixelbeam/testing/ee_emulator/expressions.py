"""Evaluates the ee client's serialized expression graph (``ee.serializer``, cloud
format ``{"result": key, "values": {key: ValueNode}}``) into lazy images.

A small recursive interpreter: value nodes (constantValue, integerValue,
valueReference, arrayValue, dictionaryValue, functionInvocationValue,
functionDefinitionValue, argumentReference) are evaluated eagerly; images stay
lazy (``pixels.Image``) until the server renders them on the request grid.
Functions are looked up by their EE name in ``FUNCTIONS``; names and argument
names are those the installed client (earthengine-api 1.7) sends.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import keyword
from typing import Any, Callable

import numpy as np
from rasterio.warp import transform_geom
from shapely.geometry import shape

from . import image_ops
from .catalog import Catalog, parse_time_ms
from .pixels import EmulatorError, Image, asset_image, invalid, not_found


@dataclasses.dataclass
class Collection:
    """An image collection: images in order, each with its properties."""

    images: list[Image]


@dataclasses.dataclass
class Reducer:
    name: str  # "median", "mean", "min", "max"


@dataclasses.dataclass
class Function:
    """A ``functionDefinitionValue`` closed over the evaluator (e.g. for map)."""

    evaluator: "_Evaluator"
    argument_names: list[str]
    body: str
    scope: dict[str, Any]

    def __call__(self, *args: Any) -> Any:
        scope = dict(self.scope, **dict(zip(self.argument_names, args)))
        return self.evaluator.reference(self.body, scope)


Filter = Callable[[Image], bool]


def evaluate(expression: Any, catalog: Catalog) -> Any:
    """Evaluates an expression graph; raises EmulatorError(400) if malformed."""
    if not isinstance(expression, dict) or not isinstance(expression.get("values"), dict) \
            or "result" not in expression:
        raise invalid("Malformed expression: expected {'result': ..., 'values': {...}}.")
    return _Evaluator(catalog, expression["values"]).reference(expression["result"], {})


def to_json_value(value: Any) -> Any:
    """A computed value as getInfo() returns it: numbers, strings, lists, dicts (no images)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    raise invalid(f"value:compute: the emulator cannot return a {type(value).__name__}; "
                  "ask for numbers, strings, lists or dictionaries.")


def evaluate_image(expression: Any, catalog: Catalog) -> Image:
    value = evaluate(expression, catalog)
    if not isinstance(value, Image):
        raise invalid(f"computePixels: expression must be an Image, got {type(value).__name__}.")
    return value


class _Evaluator:
    def __init__(self, catalog: Catalog, values: dict[str, Any]):
        self.catalog, self.values = catalog, values
        self._memo: dict[tuple[str, int], Any] = {}
        self._scopes: list[dict[str, Any]] = []  # keeps scope ids unique while memoized

    def reference(self, key: str, scope: dict[str, Any]) -> Any:
        memo_key = (key, id(scope))
        if memo_key not in self._memo:
            if key not in self.values:
                raise invalid(f"Malformed expression: unknown valueReference {key!r}.")
            self._scopes.append(scope)
            self._memo[memo_key] = self.value(self.values[key], scope)
        return self._memo[memo_key]

    def value(self, node: Any, scope: dict[str, Any]) -> Any:
        if not isinstance(node, dict) or len(node) != 1:
            raise invalid(f"Malformed expression: bad value node {str(node)[:200]}.")
        (kind, body), = node.items()
        if kind == "constantValue":
            return body
        if kind == "integerValue":
            return int(body)
        if kind == "valueReference":
            return self.reference(body, scope)
        if kind == "argumentReference":
            if body not in scope:
                raise invalid(f"Malformed expression: unbound argument {body!r}.")
            return scope[body]
        if kind == "arrayValue":
            return [self.value(v, scope) for v in body.get("values", [])]
        if kind == "dictionaryValue":
            return {k: self.value(v, scope) for k, v in body.get("values", {}).items()}
        if kind == "functionDefinitionValue":
            return Function(self, list(body.get("argumentNames", [])), body["body"], scope)
        if kind == "functionInvocationValue":
            return self.invoke(body, scope)
        raise invalid(f"Malformed expression: unsupported value kind {kind!r}.")

    def invoke(self, call: dict[str, Any], scope: dict[str, Any]) -> Any:
        # an argument named after a Python keyword ("from") is the parameter with a trailing "_"
        args = {(f"{k}_" if keyword.iskeyword(k) else k): self.value(v, scope)
                for k, v in (call.get("arguments") or {}).items()}
        if "functionReference" in call:
            function = self.reference(call["functionReference"], scope)
            return function(*args.values())
        name = call.get("functionName")
        fn = FUNCTIONS.get(name)
        if fn is None:
            raise invalid(f"Function {name!r} is not supported by the EE emulator.")
        names, required = _parameters(fn)
        unknown, missing = set(args) - names, required - set(args)
        if unknown or missing:
            what = f"unexpected argument {sorted(unknown)[0]!r}" if unknown else f"missing argument {sorted(missing)[0]!r}"
            raise invalid(f"{name}: bad arguments {sorted(args)}: {what}")
        return fn(self, **args)


@functools.lru_cache(maxsize=None)
def _parameters(fn: Callable[..., Any]) -> tuple[frozenset, frozenset]:
    """(accepted, required) argument names of an algorithm (its first parameter is the evaluator)."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    names = frozenset(p.name for p in params)
    return names, frozenset(p.name for p in params if p.default is inspect.Parameter.empty)


# -- argument coercion ---------------------------------------------------
def _image(value: Any, what: str) -> Image:
    if isinstance(value, Image):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return image_ops.constant(value)
    raise invalid(f"{what}: expected an Image, got {type(value).__name__}.")


def _images(value: Any, what: str) -> list[Image]:
    if isinstance(value, Collection):
        return value.images
    raise invalid(f"{what}: expected an ImageCollection, got {type(value).__name__}.")


def _time_ms(value: Any) -> int:
    try:
        return parse_time_ms(value)
    except (TypeError, ValueError):
        raise invalid(f"Invalid date {value!r}.") from None


# -- images --------------------------------------------------------------
def image_load(ev: _Evaluator, id: str, version: Any = None) -> Image:
    asset = ev.catalog.image(id)
    if asset is None:
        raise not_found(f"Image.load: Image asset '{id}' not found (does not exist or caller "
                        "does not have access).")
    return asset_image(asset)


def image_select(ev, input, bandSelectors, newNames=None):
    return image_ops.select(_image(input, "Image.select"), bandSelectors, newNames)


def image_rename(ev, input, names):
    return image_ops.rename(_image(input, "Image.rename"), names)


def image_resample(ev, image, mode="bilinear"):
    return image_ops.resample(_image(image, "Image.resample"), mode)


def image_mask(ev, image, mask=None):
    image = _image(image, "Image.mask")
    if mask is None:
        return image_ops.mask_of(image)
    return image_ops.update_mask(image, _image(mask, "Image.mask"), replace=True)


def image_update_mask(ev, image, mask):
    return image_ops.update_mask(_image(image, "Image.updateMask"), _image(mask, "Image.updateMask"))


def image_unmask(ev, input, value=None, sameFootprint=True):
    value = None if value is None else _image(value, "Image.unmask")
    return image_ops.unmask(_image(input, "Image.unmask"), value, bool(sameFootprint))


def image_add_bands(ev, dstImg, srcImg, names=None, overwrite=False):
    return image_ops.add_bands(_image(dstImg, "Image.addBands"), _image(srcImg, "Image.addBands"),
                               names, bool(overwrite))


def image_constant(ev, value):
    return image_ops.constant(value)


def _caster(dtype: Any) -> Callable[..., Image]:
    return lambda ev, value: image_ops.cast(_image(value, "Image cast"), dtype)


def _binary(op: str) -> Callable[..., Image]:
    return lambda ev, image1, image2: image_ops.binary(
        op, _image(image1, f"Image.{op}"), _image(image2, f"Image.{op}"))


# -- collections ---------------------------------------------------------
def collection_load(ev: _Evaluator, id: str, version: Any = None) -> Collection:
    members = ev.catalog.collection(id)
    if members is None:
        raise not_found(f"ImageCollection.load: ImageCollection asset '{id}' not found (does "
                        "not exist or caller does not have access).")
    return Collection([asset_image(m) for m in members])


def from_images(ev, images):
    images = [_image(i, "ImageCollection.fromImages") for i in images]
    indexed = []
    for position, image in enumerate(images):
        properties = dict(image.properties, **{"system:index": str(position)})
        indexed.append(Image(image.bands, properties, image.footprint_wgs84))
    return Collection(indexed)


def collection_filter(ev, collection, filter):
    if not callable(filter):
        raise invalid("Collection.filter: filter must be a Filter.")
    return Collection([i for i in _images(collection, "Collection.filter") if filter(i)])


def collection_limit(ev, collection, limit=None, key=None, ascending=True):
    images = list(_images(collection, "Collection.limit"))
    if key is not None:
        present = [i for i in images if i.properties.get(key) is not None]
        missing = [i for i in images if i.properties.get(key) is None]
        try:
            present.sort(key=lambda i: i.properties[key], reverse=not ascending)
        except TypeError:
            raise invalid(f"Collection.limit: property {key!r} is not comparable.") from None
        images = present + missing
    return Collection(images if limit is None else images[: int(limit)])


def collection_first(ev, collection):
    images = _images(collection, "Collection.first")
    if not images:
        raise invalid("Collection.first: Empty collection.")
    return images[0]


def collection_map(ev, collection, baseAlgorithm, dropNulls=False):
    """Each image through the function; an image result keeps its input's ``system:index``."""
    results = []
    for image in _images(collection, "Collection.map"):
        result = baseAlgorithm(image)
        if isinstance(result, Image) and "system:index" in image.properties:
            result = Image(result.bands, {**result.properties, "system:index": image.properties["system:index"]},
                           result.footprint_wgs84)
        results.append(result)
    return Collection([r for r in results if not (dropNulls and r is None)])


def collection_to_list(ev, collection, count, offset=0):
    images = _images(collection, "Collection.toList")
    return list(images[int(offset): int(offset) + int(count)])


def list_get(ev, list, index):
    if not isinstance(list, (tuple, type([]))):
        raise invalid("List.get: list must be a List.")
    index = int(index)
    if not -len(list) <= index < len(list):
        raise invalid(f"List.get: List index must be between {-len(list)} and {len(list) - 1}: {index}.")
    return list[index]


def element_set(ev, object, key, value=None):
    image = _image(object, "Element.set")
    return Image(image.bands, {**image.properties, key: value}, image.footprint_wgs84)


def element_set_multi(ev, object, properties):
    image = _image(object, "Element.setMulti")
    return Image(image.bands, {**image.properties, **dict(properties)}, image.footprint_wgs84)


def copy_properties(ev, destination=None, source=None, properties=None, exclude=None):
    """``copyProperties``: the named properties of ``source`` (all but system ones without a
    list, less ``exclude``) set on ``destination``."""
    destination, source = _image(destination, "copyProperties"), _image(source, "copyProperties")
    if properties is None:
        keys = [k for k in source.properties if not k.startswith("system:") and k not in (exclude or [])]
    else:
        keys = [k for k in properties if k in source.properties]
    copied = {k: source.properties[k] for k in keys}
    return Image(destination.bands, {**destination.properties, **copied}, destination.footprint_wgs84)


def image_cat(ev, images):
    images = [_image(i, "Image.cat") for i in images]
    if not images:
        raise invalid("Image.cat: give at least one image.")
    result = images[0]
    for image in images[1:]:
        result = image_ops.add_bands(result, image)
    return result


def _reduce(reducer: str, suffix: bool = False) -> Callable[..., Image]:
    return lambda ev, collection: image_ops.reduce_collection(
        _images(collection, f"reduce.{reducer}"), reducer, suffix)


def collection_reduce(ev, collection, reducer, parallelScale=None):
    if not isinstance(reducer, Reducer):
        raise invalid("ImageCollection.reduce: reducer must be a Reducer.")
    return image_ops.reduce_collection(_images(collection, "ImageCollection.reduce"),
                                       reducer.name, suffix=True)


def aggregate_array(ev, collection, property):
    """``aggregate_array``: the property of each image that has it, in collection order."""
    images = _images(collection, "AggregateFeatureCollection.array")
    return [i.properties[property] for i in images if i.properties.get(property) is not None]


def to_bands(ev, collection):
    return image_ops.to_bands(_images(collection, "ImageCollection.toBands"))


# -- filters, dates, geometry --------------------------------------------
def _comparison(test: Callable[[Any, Any], bool]) -> Callable[..., Filter]:
    def make(ev, leftField=None, rightValue=None, rightField=None, leftValue=None):
        def matches(image: Image) -> bool:
            left = image.properties.get(leftField) if leftField is not None else leftValue
            right = image.properties.get(rightField) if rightField is not None else rightValue
            if left is None or right is None:
                return False
            try:
                return bool(test(left, right))
            except TypeError:
                return False
        return matches
    return make


def filter_date_range_contains(ev, leftField=None, rightValue=None, rightField=None,
                               leftValue=None):
    def matches(image: Image) -> bool:
        date_range = image.properties.get(leftField) if leftField else leftValue
        when = image.properties.get(rightField) if rightField else rightValue
        if date_range is None or when is None:
            return False
        start, end = date_range
        return start <= _time_ms(when) < end
    return matches


def filter_intersects(ev, leftField=None, rightValue=None, rightField=None, leftValue=None,
                      maxError=None):
    geometry = rightValue if leftField in (".all", ".geo") else leftValue
    if geometry is None:
        raise invalid("Filter.intersects: only filterBounds-style filters are supported.")
    return lambda image: image.footprint_wgs84 is None or image.footprint_wgs84.intersects(geometry)


def date(ev, value, timeZone=None):
    return _time_ms(value)


def date_range(ev, start, end=None, timeZone=None):
    start_ms = _time_ms(start)
    return start_ms, (_time_ms(end) if end is not None else start_ms + 1)


def _geometry(kind: str) -> Callable[..., Any]:
    """A GeometryConstructors function with exactly the catalog's arguments for its kind."""
    def build(coordinates, crs):
        geometry = {"type": kind, "coordinates": coordinates}
        if crs and crs != "EPSG:4326":
            geometry = transform_geom(crs, "EPSG:4326", geometry)
        return shape(geometry)

    if kind.endswith("Point"):
        return lambda ev, coordinates, crs=None: build(coordinates, crs)
    if kind.endswith("LineString"):
        return lambda ev, coordinates, crs=None, geodesic=None, maxError=None: build(coordinates, crs)
    return lambda ev, coordinates, crs=None, geodesic=None, maxError=None, evenOdd=None: build(coordinates, crs)


def _geometry_value(value: Any) -> Any:
    """A geometry argument (a Geometry, or a Feature's geometry) as shapely, lon/lat."""
    if hasattr(value, "geom_type"):
        return value
    raise invalid(f"Image.clip: geometry must be a Geometry, got {type(value).__name__}.")


def bbox(ev, west, south, east, north):
    return shape({"type": "Polygon", "coordinates": [[
        [west, south], [east, south], [east, north], [west, north], [west, south]]]})


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "Image.load": image_load,
    "Image.select": image_select,
    "Image.rename": image_rename,
    "Image.mask": image_mask,
    "Image.resample": image_resample,
    "Image.updateMask": image_update_mask,
    "Image.unmask": image_unmask,
    "Image.addBands": image_add_bands,
    "Image.constant": image_constant,
    "Image.cat": image_cat,
    "Image.not": lambda ev, value: image_ops.logical_not(_image(value, "Image.not")),
    "Image.normalizedDifference": lambda ev, input, bandNames=None: image_ops.normalized_difference(
        _image(input, "Image.normalizedDifference"), bandNames),
    "Image.where": lambda ev, input, test, value: image_ops.where(
        _image(input, "Image.where"), _image(test, "Image.where"), _image(value, "Image.where")),
    "Image.remap": lambda ev, image, from_, to, defaultValue=None, bandName=None: image_ops.remap(
        _image(image, "Image.remap"), from_, to, defaultValue, bandName),
    "Image.clip": lambda ev, input, geometry: image_ops.clip(_image(input, "Image.clip"), _geometry_value(geometry)),
    "Image.copyProperties": copy_properties,
    "Element.copyProperties": copy_properties,
    "Element.set": element_set,
    "Element.setMulti": element_set_multi,
    "Collection.size": lambda ev, collection: len(_images(collection, "Collection.size")),
    "Collection.toList": collection_to_list,
    "List.get": list_get,
    "ImageCollection.load": collection_load,
    "ImageCollection.fromImages": from_images,
    "ImageCollection.mosaic": _reduce("mosaic"),
    "ImageCollection.toBands": to_bands,
    "AggregateFeatureCollection.array": aggregate_array,
    "ImageCollection.reduce": collection_reduce,
    "Collection.filter": collection_filter,
    "Collection.limit": collection_limit,
    "Collection.first": collection_first,
    "Collection.map": collection_map,
    "Element.get": lambda ev, object, property: _image(object, "Element.get").properties.get(property),
    "Filter.lessThan": _comparison(lambda a, b: a < b),
    "Filter.greaterThan": _comparison(lambda a, b: a > b),
    "Filter.lessThanOrEquals": _comparison(lambda a, b: a <= b),
    "Filter.greaterThanOrEquals": _comparison(lambda a, b: a >= b),
    "Filter.equals": _comparison(lambda a, b: a == b),
    "Filter.notEquals": _comparison(lambda a, b: a != b),
    "Filter.not": lambda ev, filter: (lambda image: not filter(image)),
    "Filter.and": lambda ev, filters: (lambda image: all(f(image) for f in filters)),
    "Filter.or": lambda ev, filters: (lambda image: any(f(image) for f in filters)),
    "Filter.dateRangeContains": filter_date_range_contains,
    "Filter.intersects": filter_intersects,
    "Date": date,
    "DateRange": date_range,
    "Feature": lambda ev, geometry=None, metadata=None: geometry,
    "GeometryConstructors.BBox": bbox,
    **{f"GeometryConstructors.{k}": _geometry(k) for k in (
        "Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")},
    **{f"reduce.{r}": _reduce(r) for r in ("median", "mean", "min", "max")},
    "Reducer.median": lambda ev, maxBuckets=None, minBucketWidth=None, maxRaw=None: Reducer("median"),
    "Reducer.mean": lambda ev: Reducer("mean"),
    "Reducer.min": lambda ev, numInputs=1: Reducer("min"),
    "Reducer.max": lambda ev, numInputs=1: Reducer("max"),
    **{f"Image.{op}": _binary(op) for op in image_ops.BINARY_OPS},
    **{f"Image.to{name}": _caster(dtype) for name, dtype in {
        "Float": np.float32, "Double": np.float64, "Byte": np.uint8, "Uint8": np.uint8,
        "Int8": np.int8, "Uint16": np.uint16, "Int16": np.int16, "Short": np.int16,
        "Uint32": np.uint32, "Int32": np.int32, "Int": np.int32, "Int64": np.int64,
        "Long": np.int64}.items()},
    **{f"Image.{name}": _caster(dtype) for name, dtype in {
        "float": np.float32, "double": np.float64, "byte": np.uint8, "uint8": np.uint8, "int8": np.int8,
        "uint16": np.uint16, "int16": np.int16, "uint32": np.uint32, "int32": np.int32, "int": np.int32,
        "int64": np.int64, "long": np.int64}.items()},
}

__all__ = ["Collection", "EmulatorError", "FUNCTIONS", "evaluate", "evaluate_image"]
