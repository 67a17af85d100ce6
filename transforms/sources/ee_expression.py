"""Earth Engine expressions: any computed `ee.Image` (or `ee.ImageCollection`) as the source.

An expression is the client's serialized graph (cloud format `{"result": key, "values":
{key: ValueNode}}`, what `image.serialize()` writes). It comes from

- `source.expression: path/to/file.py:function`: the function is run on the launcher, after
  the client is initialized, with `source.expression_args` as keyword arguments and, if it
  has a `bounds` parameter, the job's lon/lat extent `(west, south, east, north)` in degrees
  (None when the grid is not known up front);
- `source.expression_json`: a JSON file holding a serialized expression, or the serialized
  expression inline (a mapping), as `with_expression` writes it for `pixelbeam.run(image=…)`.

The launcher keeps the serialized text in the picklable source description; a worker decodes
it once (`decode`, the client's own `ee.deserializer`), composes it with pixelbeam's own ops
(band selection, validity band, one image of a collection) and serializes each request
expression once per process (`serialize_each`), so no request re-serializes the graph.
Every problem is a `SourceError` of one line naming `source.expression` or `expression_json`.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

from pixelbeam.transforms.sources.base import SourceError

IMAGE, COLLECTION = "image", "collection"
VALUE_KINDS = {"constantValue", "integerValue", "bytesValue", "arrayValue", "dictionaryValue", "functionDefinitionValue",
               "functionInvocationValue", "argumentReference", "valueReference"}
PLACEHOLDER = "pixelbeam-image-7f3c9a"  # stands for an image id in a serialized template (serialize_each)


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:limit]


def split_spec(spec: str) -> tuple[str, str]:
    """`path/to/file.py:function` as (path, function)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise SourceError(f"source.expression: {spec!r} is not path/to/file.py:function; name the Python file "
                          "and the function in it that returns the ee.Image")
    return path, name


def load_function(spec: str) -> Callable:
    """The function named by `path.py:function`, imported from its file (not from sys.path)."""
    path, name = split_spec(spec)
    field = "source.expression"
    if not os.path.isfile(path):
        raise SourceError(f"{field}: no file {path!r}; give path/to/file.py:function (relative to the config)")
    module_name = f"pixelbeam_expression_{abs(hash(os.path.abspath(path)))}"
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError("not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
        module_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(module_name, None)
        raise SourceError(f"{field}: importing {path!r} raised {type(e).__name__}: {_first_line(e)}; fix the "
                          "file") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise SourceError(f"{field}: {path!r} has no function {name!r}; name a function defined in the file")
    return function


def call_expression(spec: str, args: dict, bounds: Optional[Sequence[float]]):
    """Run the `source.expression` function (client initialized); the ee.Image or
    ee.ImageCollection it returns."""
    import ee
    function = load_function(spec)
    kwargs = dict(args)
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        parameters = {}
    if "bounds" in parameters and "bounds" not in kwargs:
        kwargs["bounds"] = tuple(bounds) if bounds is not None else None
    try:
        result = function(**kwargs)
    except Exception as e:
        raise SourceError(f"source.expression: {spec.rpartition(':')[2]}() raised {type(e).__name__}: "
                          f"{_first_line(e)}; fix the function or source.expression_args") from None
    if not isinstance(result, (ee.Image, ee.ImageCollection)):
        raise SourceError(f"source.expression: {spec.rpartition(':')[2]}() returned {type(result).__name__}, not "
                          "an ee.Image or ee.ImageCollection; return the image to fetch")
    return result


def serialize(obj) -> str:
    """The compact serialized graph of an ee object, as `obj.serialize()` writes it."""
    import ee
    return ee.serializer.toJSON(obj)


def check_serialized(doc: Any, field: str) -> dict:
    """`doc` if it has the shape of a serialized expression, else a one-line SourceError."""
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except ValueError as e:
            raise SourceError(f"{field}: not JSON ({_first_line(e)}); give what image.serialize() writes") from None
    problem = None
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), dict) or not isinstance(doc.get("result"), str):
        problem = "expected {\"result\": key, \"values\": {key: node}}"
    elif doc["result"] not in doc["values"]:
        problem = f"result {doc['result']!r} is not one of its values"
    else:
        for key, node in doc["values"].items():
            if not isinstance(node, dict) or len(node) != 1 or next(iter(node)) not in VALUE_KINDS:
                problem = f"value {key!r} is not an expression node"
                break
    if problem:
        raise SourceError(f"{field}: not a serialized Earth Engine expression ({problem}); give what "
                          "image.serialize() writes")
    return doc


def decode(text_or_doc, field: str = "source.expression_json"):
    """The ee object of a serialized expression (the client initialized)."""
    import ee
    doc = check_serialized(text_or_doc, field)
    try:
        return ee.deserializer.decode(doc)
    except Exception as e:  # e.g. an unknown algorithm name, a dangling reference
        raise SourceError(f"{field}: not a serialized Earth Engine expression ({type(e).__name__}: "
                          f"{_first_line(e)}); give what image.serialize() writes") from None


def kind_of(obj, field: str) -> str:
    """IMAGE or COLLECTION; an element of a collection (e.g. `first()`) counts as an image."""
    import ee
    if isinstance(obj, ee.ImageCollection):
        return COLLECTION
    if isinstance(obj, ee.Image):
        return IMAGE
    if type(obj) in (ee.Element, ee.ComputedObject):  # a generic return type: the probe checks it is an image
        return IMAGE
    raise SourceError(f"{field}: the expression is a {type(obj).__name__}, not an ee.Image or ee.ImageCollection; "
                      "serialize the image to fetch")


def resolve(expression: Optional[str], args: dict, expression_json, bounds) -> tuple[str, str, str]:
    """(serialized text, IMAGE or COLLECTION, the config field it came from) of a config's
    expression; `expression_json` (inline, e.g. recorded in dataset.json) wins over running
    the function again."""
    if expression_json is not None:
        field = "source.expression_json"
        doc = expression_json
        if isinstance(doc, str) and not doc.lstrip().startswith("{"):
            doc = read_json_file(doc)
        obj = decode(doc, field)
        text = json.dumps(check_serialized(doc, field), separators=(",", ":"))
        return text, kind_of(obj, field), "source.expression" if expression else field
    obj = call_expression(expression, args, bounds)
    return serialize(obj), kind_of(obj, "source.expression"), "source.expression"


def read_json_file(path: str):
    field = "source.expression_json"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SourceError(f"{field}: no file {path!r}; give the JSON file image.serialize() wrote") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SourceError(f"{field}: {path!r} is not JSON ({type(e).__name__}: {_first_line(e)}); give what "
                          "image.serialize() writes") from None


_decoded: dict[str, Any] = {}


def decoded(text: str):
    """`decode(text)`, once per process (the client initialized)."""
    if text not in _decoded:
        _decoded[text] = decode(text)
    return _decoded[text]


def serialize_each(build: Callable[[str], Any], ids: Sequence[str]) -> list[dict]:
    """The serialized graph of `build(i)` for each id, serializing once: `build` is called with
    a placeholder id and the placeholder is replaced in the text (the graphs differ only there)."""
    if not ids:
        return []
    text = serialize(build(PLACEHOLDER))
    out = []
    for image_id in ids:
        escaped = json.dumps(image_id)[1:-1]
        out.append(json.loads(text.replace(PLACEHOLDER, escaped)))
    return out
