"""The `source:` section of kind `stac`: items found in a STAC API or a static catalog.

A self-contained source model (it needs nothing from the other source kinds), so a layer can
use it as its source. Its secrets stay out of what pixelbeam writes: `sign.query` is a
`SecretStr`, dumped as `**********` in dataset.json and the config fingerprint.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any, Literal, Optional, Union

from pydantic import Field, SecretStr, field_validator, model_validator

from pixelbeam.pipeline.config.base import Strict
from pixelbeam.transforms.pixels.resampling import raster_resampling

GDAL_OPTION = re.compile(r"^[A-Z][A-Z0-9_]*$")


class StacMaskConfig(Strict):
    """A quality asset and which of its values mask: `invalid` classes (Sentinel-2 SCL
    `[0, 1, 3, 8, 9, 10]`), `valid` classes, or QA `bits` (Landsat qa_pixel `[0, 1, 2, 3, 4]`)."""

    asset: str
    invalid: Optional[list[int]] = None
    valid: Optional[list[int]] = None
    bits: Optional[list[int]] = None

    @model_validator(mode="after")
    def _one_rule(self):
        given = [k for k in ("invalid", "valid", "bits") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of invalid (class values that mask), valid (class values kept) "
                             "or bits (QA bit positions that mask when set)")
        if self.bits is not None and any(not 0 <= b <= 63 for b in self.bits):
            raise ValueError(f"bits are positions 0..63, 0 the least significant (got {self.bits})")
        return self


class StacSignConfig(Strict):
    """How asset hrefs are signed, besides `planetary_computer`: a SAS token or signed query
    string (`query`, or the environment variable `query_env` holding it), or `hook`, a
    function `module:function` from an href to a signed URL."""

    query: Optional[SecretStr] = None
    query_env: Optional[str] = None
    hook: Optional[str] = None

    @model_validator(mode="after")
    def _one_way(self):
        if sum(v is not None for v in (self.query, self.query_env, self.hook)) != 1:
            raise ValueError("give exactly one of query (a SAS token), query_env (the variable holding it) "
                             "or hook (module:function)")
        if self.hook is not None and not re.match(r"^[\w.]+:\w+$", self.hook):
            raise ValueError(f"hook: {self.hook!r} is not module:function")
        return self


class StacSourceConfig(Strict):
    """STAC items as a collection: found by `url` (a STAC API, searched) or `catalog` (a
    static catalog, collection or ItemCollection file), then read like `source.images`."""

    kind: Literal["stac"]
    url: Optional[str] = None  # a STAC API root, e.g. https://earth-search.aws.element84.com/v1
    catalog: Optional[str] = None  # a static catalog.json / collection.json / ItemCollection file
    collections: list[str] = []
    datetime: Optional[str] = None  # 2023-06-01/2023-06-30, 2023-06, ../2023-06-30
    query: Optional[Union[dict[str, dict[str, Any]], list[str]]] = None  # {"eo:cloud_cover": {"lt": 20}}
    filter: Optional[Union[str, dict[str, Any]]] = None  # CQL2 text or JSON: "eo:cloud_cover < 20"
    max_items: Optional[int] = Field(1000, ge=1)
    limit: int = Field(100, ge=1, le=10000)  # items per page of the search
    bands: list[str] = Field(min_length=1)  # asset keys; "<key>:<n>" one band of a multi-band asset
    mask: Optional[StacMaskConfig] = None
    rescale: bool = True  # dn * raster:bands scale + offset, as float32
    resampling: str = "nearest"
    collection_mode: Optional[Literal["stack", "mosaic", "composite", "flatten"]] = None  # default: mosaic
    composite: Optional[Literal["median", "mean", "min", "max", "first"]] = None
    flatten_by: str = "day"
    filter_coverage: float = Field(0.0, ge=0.0, le=1.0)
    sign: Optional[Union[Literal["none", "planetary_computer"], StacSignConfig]] = None
    gdal: dict[str, Union[str, int, float, bool]] = {}  # GDAL config options for every worker

    @property
    def mode(self) -> str:
        """The collection mode: given, composite when a reducer is given, else mosaic."""
        return self.collection_mode or ("composite" if self.composite else "mosaic")

    @field_validator("url")
    @classmethod
    def _http(cls, v):
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("give the http(s) url of a STAC API (for a catalog file use source.catalog)")
        return v.rstrip("/") if v else v

    @field_validator("resampling")
    @classmethod
    def _gdal_resampling(cls, v):
        raster_resampling(v)
        return v

    @field_validator("gdal")
    @classmethod
    def _gdal_names(cls, v):
        for key in v:
            if not GDAL_OPTION.match(key):
                raise ValueError(f"{key!r} is not a GDAL config option name (e.g. GDAL_HTTP_MAX_RETRY)")
        return v

    @field_validator("sign")
    @classmethod
    def _signing_package(cls, v):
        if v == "planetary_computer" and importlib.util.find_spec("planetary_computer") is None:
            raise ValueError("planetary_computer needs the planetary-computer package; pip install planetary-computer")
        return v

    @model_validator(mode="after")
    def _where_and_how(self):
        if (self.url is None) == (self.catalog is None):
            raise ValueError("give exactly one of url (a STAC API) or catalog (a static catalog or ItemCollection file)")
        if self.collection_mode == "composite" and self.composite is None:
            raise ValueError("collection_mode composite needs composite: median, mean, min, max or first")
        if self.composite is not None and self.collection_mode not in (None, "composite"):
            raise ValueError(f"composite applies to collection_mode composite, not {self.collection_mode}; "
                             "remove one of them")
        return self
