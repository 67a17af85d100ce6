"""The `source:` section: a raster file or collection, or an Earth Engine asset or collection."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pixelbeam.pipeline.config.base import Strict
from pixelbeam.pipeline.config.stac import StacSourceConfig
from pixelbeam.transforms.pixels.resampling import ee_resampling, raster_resampling

HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"


class RasterImageConfig(Strict):
    """One image of a raster collection: a file, its time (ISO date or time, UTC) and properties."""

    uri: str
    time: Optional[str] = None
    properties: dict[str, Union[float, int, str, bool]] = {}

    @field_validator("time")
    @classmethod
    def _iso(cls, v):
        if v is not None:
            from pixelbeam.transforms.pixels.collections import iso_time
            iso_time(v)
        return v


COLLECTION_MODES = ("stack", "mosaic", "composite", "flatten")
Reducer = Literal["median", "mean", "min", "max", "first"]


def check_collection(mode, composite, filter_coverage, is_collection: bool, times_known: bool) -> Optional[str]:
    """Why a collection's options do not fit together, or None (shared by both source kinds)."""
    if mode == "composite" and composite is None:
        return "collection_mode composite needs composite: median, mean, min, max or first"
    if composite is not None and mode not in (None, "composite"):
        return f"composite applies to collection_mode composite, not {mode}; remove one of them"
    if mode in ("stack", "flatten") and not times_known:
        return f"collection_mode {mode} needs a time per image; give source.images with uri and time"
    if (mode or filter_coverage) and not is_collection:
        return "collection_mode and filter_coverage apply to a collection (source.images or a list of uris)"
    return None


class RasterSourceConfig(Strict):
    """Any GDAL-readable raster; a list of them mosaicked in order (later wins); or a collection
    of dated images (`images`) stacked, mosaicked, composited or flattened (`collection_mode`)."""

    kind: Literal["raster"] = "raster"
    uri: Optional[Union[str, list[str]]]  # required unless images are given (see _images_replace_uri)
    images: Optional[list[RasterImageConfig]] = None
    collection_mode: Optional[Literal["stack", "mosaic", "composite", "flatten"]] = None
    composite: Optional[Reducer] = None
    flatten_by: str = "day"  # flatten: images of the same UTC day, or of the same value of this property
    filter_coverage: float = Field(0.0, ge=0.0, le=1.0)  # keep images whose valid pixels cover this fraction of a patch
    bands: Optional[list[Union[int, str]]] = None
    resampling: str = "nearest"

    @field_validator("bands")
    @classmethod
    def _some_bands(cls, v):
        if v is not None and not v:
            raise ValueError("an empty list selects no band; give 1-based indexes or names, or leave bands out for all")
        return v

    @property
    def uris(self) -> tuple[str, ...]:
        if self.images is not None:
            return tuple(i.uri for i in self.images)
        return (self.uri,) if isinstance(self.uri, str) else tuple(self.uri)

    @property
    def mode(self) -> Optional[str]:
        """The collection mode (composite implies composite, images default to mosaic), or None
        for a single file or a plain list of files mosaicked in the reader."""
        if self.collection_mode or self.composite:
            return self.collection_mode or "composite"
        return "mosaic" if self.images is not None else None

    @model_validator(mode="before")
    @classmethod
    def _images_replace_uri(cls, data: Any):
        if isinstance(data, dict) and "images" in data and "uri" not in data:
            data = {**data, "uri": None}
        return data

    @field_validator("uri")
    @classmethod
    def _nonempty(cls, v):
        if v is not None and not v:
            raise ValueError("give a raster path or URL, or a non-empty list of them")
        return v

    @field_validator("images")
    @classmethod
    def _some_images(cls, v):
        if v is not None and not v:
            raise ValueError("give at least one image (uri, time, properties)")
        return v

    @field_validator("resampling")
    @classmethod
    def _gdal_resampling(cls, v):
        raster_resampling(v)
        return v

    @model_validator(mode="after")
    def _uri_or_images(self):
        if (self.uri is None) == (self.images is None):
            raise ValueError("give exactly one of uri (a file or a list of files) or images (dated files)")
        times_known = self.images is not None and all(i.time for i in self.images)
        problem = check_collection(self.collection_mode or ("composite" if self.composite else None),
                                   self.composite, self.filter_coverage,
                                   self.images is not None or isinstance(self.uri, list), times_known)
        if problem:
            raise ValueError(problem)
        return self


class EarthEngineFilter(Strict):
    """A metadata filter on a collection: `property op value`, op one of eq, neq, lt, lte, gt, gte."""

    property: str
    op: Literal["eq", "neq", "lt", "lte", "gt", "gte"] = "eq"
    value: Union[float, int, str]


class EarthEngineSourceConfig(Strict):
    """An Earth Engine image asset (getPixels), a collection filtered and reduced, or any
    computed image as an expression (computePixels)."""

    kind: Literal["earthengine"]
    asset: Optional[str] = None
    collection: Optional[str] = None
    start: Optional[str] = None
    end: Optional[str] = None
    filters: list[EarthEngineFilter] = []
    composite: Optional[Literal["median", "mean", "min", "max", "first", "mosaic"]] = None
    collection_mode: Optional[Literal["stack", "mosaic", "composite", "flatten"]] = None  # per-image requests
    flatten_by: str = "day"  # flatten: images of the same UTC day, or of the same value of this property
    filter_coverage: float = Field(0.0, ge=0.0, le=1.0)
    bands: list[str] = Field(default_factory=list)
    mask: Optional[Literal["source", "none"]] = "source"
    project: Optional[str] = None
    url: str = HIGH_VOLUME_URL
    credentials: str = "default"
    resampling: str = "nearest"  # nearest (EE's default) | bilinear | cubic (EE's bicubic)
    # Any computed image (transforms/sources/ee_expression.py): a Python function run on the launcher
    expression: Optional[str] = None  # path/to/file.py:function returning an ee.Image or ee.ImageCollection
    expression_args: dict[str, Any] = {}  # keyword arguments of that function
    # ... or a serialized expression: a JSON file (what image.serialize() writes), or the expression
    # inline (a mapping; pixelbeam records the one it ran here, beside `expression`, in dataset.json)
    expression_json: Optional[Union[str, dict[str, Any]]] = None

    @field_validator("bands")
    @classmethod
    def _some_bands(cls, v, info: ValidationInfo):  # runs only on a given list: left out, every band
        if not v and not (info.context or {}).get("recorded"):  # a recorded config lists the default []
            raise ValueError("an empty list selects no band; give band names, or leave bands out for all")
        return v

    @field_validator("resampling")
    @classmethod
    def _ee_resampling(cls, v):
        ee_resampling(v)
        return v

    @model_validator(mode="after")
    def _one_image(self, info: ValidationInfo):
        if self.expression is not None and isinstance(self.expression_json, str):
            raise ValueError("give one of expression (a Python function) or expression_json (a JSON file), not both")
        if self.expression_args and self.expression is None:
            raise ValueError("expression_args are the keyword arguments of source.expression; give expression too")
        computed = self.expression is not None or self.expression_json is not None
        if sum(map(bool, (self.asset, self.collection, computed))) != 1:
            raise ValueError("give exactly one of asset (getPixels), collection (computePixels), expression "
                             "(path/to/file.py:function) or expression_json (a serialized ee.Image)")
        if computed and self.resampling != "nearest":
            raise ValueError("resampling applies to asset and collection images; with an expression, resample "
                             "inside it (image.resample('bilinear') before compositing)")
        for_table = bool((info.context or {}).get("table"))  # a table reads every image: no composite needed
        if for_table and self.asset:
            raise ValueError("table: needs a collection (one row per image); give source.collection")
        if self.collection and not (self.composite or self.collection_mode or for_table):
            raise ValueError("a collection needs composite (median, mean, min, max, first or mosaic) or collection_mode")
        if self.asset and (self.start or self.end or self.filters or self.composite or self.collection_mode):
            raise ValueError("start, end, filters, composite and collection_mode apply to a collection, not to an asset")
        if self.collection_mode and self.composite == "mosaic":
            raise ValueError("with collection_mode, use collection_mode mosaic rather than composite: mosaic")
        problem = check_collection(self.collection_mode, self.composite if self.collection_mode else None,
                                   self.filter_coverage, bool(self.collection) or computed, True)
        if problem:
            raise ValueError(problem)
        return self


SourceConfig = Annotated[Union[RasterSourceConfig, EarthEngineSourceConfig, StacSourceConfig], Field(discriminator="kind")]
