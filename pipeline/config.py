"""The job's YAML config: schema, validation and path resolution, before anything runs.

One frozen `Config` object (pydantic models with unknown keys forbidden). Every problem is a
`ConfigError` whose message is one line naming the field and saying what to do. Relative
paths in a config resolve against the config file's own folder.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.table_config import TableConfig
from transforms.resampling import ee_resampling, raster_resampling

HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
FORMATS = ("tfrecord", "npy", "geotiff", "png", "jpeg")
REMOTE = re.compile(r"^(/vsi|[a-z][a-z0-9+.-]*://)", re.IGNORECASE)


class ConfigError(ValueError):
    """A config that cannot run; `str()` is one line naming the field and the fix."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RasterImageConfig(Strict):
    """One image of a raster collection: a file, its time (ISO date or time, UTC) and properties."""

    uri: str
    time: Optional[str] = None
    properties: dict[str, Union[float, int, str, bool]] = {}

    @field_validator("time")
    @classmethod
    def _iso(cls, v):
        if v is not None:
            from transforms.collections import iso_time
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
    """An Earth Engine image asset (getPixels) or a computed image (computePixels)."""

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

    @field_validator("resampling")
    @classmethod
    def _ee_resampling(cls, v):
        ee_resampling(v)
        return v

    @model_validator(mode="after")
    def _one_image(self, info: ValidationInfo):
        if bool(self.asset) == bool(self.collection):
            raise ValueError("give exactly one of asset (getPixels) or collection (computePixels)")
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
                                   self.filter_coverage, bool(self.collection), True)
        if problem:
            raise ValueError(problem)
        return self


SourceConfig = Annotated[Union[RasterSourceConfig, EarthEngineSourceConfig], Field(discriminator="kind")]


class GridConfig(Strict):
    """The patch grid. Units: `scale` in CRS units per pixel; sizes in pixels."""

    crs: str = "native"
    scale: Union[float, tuple[float, float], Literal["native"]] = "native"
    origin: Optional[Union[tuple[float, float], Literal["native"]]] = None
    patch_size: Union[int, tuple[int, int]] = 256
    overlap: int = Field(0, ge=0)
    margin: int = Field(0, ge=0)
    min_coverage: float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("patch_size")
    @classmethod
    def _positive_size(cls, v):
        sizes = (v, v) if isinstance(v, int) else v
        if min(sizes) < 1:
            raise ValueError("patch sizes must be at least 1 px")
        return v

    @field_validator("scale")
    @classmethod
    def _positive_scale(cls, v):
        if v != "native" and min((v, v) if isinstance(v, (int, float)) else v) <= 0:
            raise ValueError("the pixel size must be positive (CRS units)")
        return v

    @model_validator(mode="after")
    def _overlap_below_size(self):
        if self.overlap >= min(self.patch_sizes):
            raise ValueError(f"overlap ({self.overlap} px) must be smaller than patch_size {self.patch_size}")
        return self

    @property
    def patch_sizes(self) -> tuple[int, int]:
        return (self.patch_size, self.patch_size) if isinstance(self.patch_size, int) else tuple(self.patch_size)


class VisualizationConfig(Strict):
    """Earth Engine's visualization parameters for png/jpeg (see transforms/visualize.py);
    band names and per-band lengths are checked against the source when the job is planned."""

    bands: Optional[list[str]] = None
    min: Optional[Union[float, list[float]]] = None
    max: Optional[Union[float, list[float]]] = None
    gamma: Optional[Union[float, list[float]]] = None
    palette: Optional[list[str]] = None

    @model_validator(mode="after")
    def _consistent(self):
        from transforms.visualize import check_vis_config
        check_vis_config(self)
        return self


class OutputConfig(Strict):
    """Where and how patches are written; `max_masked_ratio` filters mostly masked patches."""

    path: str
    formats: list[Literal["tfrecord", "npy", "geotiff", "png", "jpeg"]] = ["tfrecord", "npy"]
    max_masked_ratio: float = Field(1.0, ge=0.0, le=1.0)
    tfrecord_shards: int = Field(0, ge=0)
    bands_axis: Literal[0, -1] = 0  # NPY layout: 0 (C, H, W) or -1 (H, W, C)
    visualization: Optional[VisualizationConfig] = None  # for png / jpeg
    scaling: Optional[Union[str, list[Any], dict[str, Any]]] = None  # Descartes Labs' scaling (transforms/scaling.py)
    data_type: Optional[str] = None  # output type: Byte, UInt16, Int16, UInt32, Int32, Float32, Float64
    band_ranges: Optional[dict[str, dict[str, tuple[float, float]]]] = None  # per band: data_range, default_range, physical_range

    @field_validator("formats")
    @classmethod
    def _some_format(cls, v):
        if not v:
            raise ValueError(f"give at least one of {', '.join(FORMATS)}")
        return v

    @model_validator(mode="after")
    def _visualization_for_pictures(self):
        if self.visualization is not None and not {"png", "jpeg"} & set(self.formats):
            raise ValueError("visualization applies to png and jpeg; add one to output.formats or remove it")
        return self


class MaskConfig(Strict):
    """Mask semantics (transforms/masking.py): which pixels are masked and what masked pixels hold."""

    mask_nodata: bool = True  # raster: pixels equal to the file's nodata value are masked (Descartes Labs' mask_nodata)
    mask_alpha: bool = True  # raster: the alpha band masks (Descartes Labs' mask_alpha)
    unmask: Optional[float] = None  # Earth Engine's unmask(value): masked pixels become valid with this value
    fill_value: Optional[float] = None  # masked pixels are written with this value (default: as the source gives them)
    npy: bool = False  # also write npy/<patch_id>.mask.npy (uint8 (H, W), 1 = valid)

    @model_validator(mode="after")
    def _unmask_or_fill(self):
        if self.unmask is not None and self.fill_value is not None:
            raise ValueError("unmask leaves no masked pixel for fill_value to fill; give one of them")
        return self


class SampleConfig(Strict):
    """Which patches of the grid are planned (transforms/sampling.py)."""

    per_region: Optional[int] = Field(None, ge=1)  # exactly min(N, patches) patches of each region
    seed: int = 0
    centered_on_points: bool = False  # a point keeps the grid patch whose centre is nearest to it
    label_property: Optional[str] = None  # a region property carried as each patch's label


class FetchConfig(Strict):
    """Request control for the whole job (divided over workers)."""

    max_concurrent_requests: int = Field(40, ge=1)
    max_requests_per_second: float = Field(100.0, gt=0)
    max_attempts: int = Field(6, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    batch_size: int = Field(64, ge=1)


class Config(Strict):
    source: SourceConfig
    regions: Union[str, list[float]]
    grid: GridConfig = GridConfig()
    output: OutputConfig
    fetch: FetchConfig = FetchConfig()
    mask: MaskConfig = MaskConfig()
    sample: SampleConfig = SampleConfig()
    table: Optional[TableConfig] = None  # point time series instead of patches (pipeline/table_graph.py)

    @model_validator(mode="before")
    @classmethod
    def _raster_by_default(cls, data: Any):
        if isinstance(data, dict) and isinstance(data.get("source"), dict) and "kind" not in data["source"]:
            data = {**data, "source": {"kind": "raster", **data["source"]}}
        return data


def load_config(path: str) -> Config:
    """Read, validate and resolve a YAML config; raises ConfigError (one line)."""
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file; give the path to a YAML config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{name}: not valid YAML{where}: {problem}; fix the syntax") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{name}: expected a YAML mapping with source, regions, grid, output, fetch")
    return parse_config(doc, base_dir=os.path.dirname(os.path.abspath(path)), name=name)


def parse_config(doc: dict, base_dir: str = ".", name: str = "config") -> Config:
    """Validate a config mapping and resolve its relative paths against `base_dir`."""
    try:
        config = Config.model_validate(doc, context={"table": doc.get("table") is not None})
    except ValidationError as e:
        raise ConfigError(f"{name}: {describe_validation_error(e)}") from None
    return resolve_paths(config, base_dir)


# What a field of several accepted shapes takes, for type errors (pydantic would name only the
# first shape it tried).
SHAPE_HINTS = {
    "regions": "give a GeoJSON path or a [min_lon, min_lat, max_lon, max_lat] bbox",
    "grid.patch_size": "give pixels as an int or [width, height]",
    "grid.scale": "give a pixel size in CRS units (a number or [x, y]) or native",
    "grid.origin": "give [x, y] in CRS units or native",
    "source.uri": "give a path or URL, or a list of them",
    "source.bands": "give a list of 1-based band indexes or band names",
}


def describe_validation_error(e: ValidationError) -> str:
    """The first pydantic error as 'field.path: what is wrong (got …)'."""
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"] if not str(p) in ("raster", "earthengine")]
    loc = [p for p in loc if not p.startswith(("function-", "literal[", "tuple[", "list[", "str", "int", "float"))]
    field = ".".join(loc) or "config"
    if field in SHAPE_HINTS and err["type"].endswith(("_type", "_parsing", "literal_error", "too_long", "too_short")):
        return f"{field}: {SHAPE_HINTS[field]} (got {err.get('input')!r})"
    if err["type"] == "extra_forbidden":
        return f"{field}: unknown key; remove it or check its spelling against the config reference"
    if err["type"] == "union_tag_invalid":
        tag = (err.get("ctx") or {}).get("tag")
        return f"{field}.kind: {tag!r} is not a source kind; use raster or earthengine"
    if err["type"] == "missing":
        return f"{field}: required key is missing; add it"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{field}: {msg}{shown}"


def resolve(path: str, base_dir: str) -> str:
    """A config path made absolute against the config's folder; URLs and /vsi paths untouched."""
    if REMOTE.match(path) or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))


def resolve_paths(config: Config, base_dir: str) -> Config:
    updates: dict[str, Any] = {"output": config.output.model_copy(update={"path": resolve(config.output.path, base_dir)})}
    if isinstance(config.regions, str):
        updates["regions"] = resolve(config.regions, base_dir)
    if isinstance(config.source, RasterSourceConfig) and config.source.images is not None:
        images = [i.model_copy(update={"uri": resolve(i.uri, base_dir)}) for i in config.source.images]
        updates["source"] = config.source.model_copy(update={"images": images})
    elif isinstance(config.source, RasterSourceConfig):
        uris = [resolve(u, base_dir) for u in config.source.uris]
        updates["source"] = config.source.model_copy(update={"uri": uris[0] if isinstance(config.source.uri, str) else uris})
    return config.model_copy(update=updates)
