"""The `grid:`, `output:`, `mask:`, `sample:` and `fetch:` sections."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pixelbeam.pipeline.config.base import Strict
from pixelbeam.transforms.formats.gzip_stream import DEFAULT_LEVEL as TFRECORD_GZIP_LEVEL  # README: TFRecord compression

FORMATS = ("tfrecord", "npy", "geotiff", "png", "jpeg", "webdataset")


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
    """Earth Engine's visualization parameters for png/jpeg (see transforms/formats/visualize.py);
    band names and per-band lengths are checked against the source when the job is planned."""

    bands: Optional[list[str]] = None
    layer: Optional[str] = None  # with layers: the layer pictured (default: the first input layer)
    min: Optional[Union[float, list[float]]] = None
    max: Optional[Union[float, list[float]]] = None
    gamma: Optional[Union[float, list[float]]] = None
    palette: Optional[list[str]] = None

    @model_validator(mode="after")
    def _consistent(self):
        from pixelbeam.transforms.formats.visualize import check_vis_config
        check_vis_config(self)
        return self


class OutputConfig(Strict):
    """Where and how patches are written; `max_masked_ratio` filters mostly masked patches (Earth
    Engine's maxMaskedRatio: masked fraction above it), and a patch with no valid pixel is
    filtered unless `keep_empty`."""

    path: str
    formats: list[Literal["tfrecord", "npy", "geotiff", "png", "jpeg", "webdataset"]] = ["tfrecord", "npy"]
    max_masked_ratio: float = Field(1.0, ge=0.0, le=1.0)
    keep_empty: bool = False  # also write patches with no valid pixel at all
    tfrecord_shards: int = Field(0, ge=0)
    tfrecord_compression_level: int = Field(TFRECORD_GZIP_LEVEL, ge=0, le=9)  # gzip level, 1 fastest .. 9 smallest
    shard_size_mb: float = Field(256.0, gt=0)  # webdataset: the target size of a tar shard (MB, 10^6 bytes)
    bands_axis: Literal[0, -1] = 0  # NPY layout: 0 (C, H, W) or -1 (H, W, C)
    visualization: Optional[VisualizationConfig] = None  # for png / jpeg
    scaling: Optional[Union[str, list[Any], dict[str, Any]]] = None  # Descartes Labs' scaling (transforms/pixels/scaling.py)
    data_type: Optional[str] = None  # output type: Byte, UInt16, Int16, UInt32, Int32, Float32, Float64
    band_ranges: Optional[dict[str, dict[str, tuple[float, float]]]] = None  # per band: data_range, default_range, physical_range

    @field_validator("path")
    @classmethod
    def _a_folder(cls, v):
        if not v.strip():  # '' would be the config's own folder
            raise ValueError("is empty; give a folder for the outputs (e.g. out/my_job)")
        return v

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
    """Mask semantics (transforms/pixels/masking.py): which pixels are masked and what masked pixels hold."""

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
    """Which patches of the grid are planned (transforms/planning/sampling.py)."""

    per_region: Optional[int] = Field(None, ge=1)  # exactly min(N, patches) patches of each region
    per_class: Optional[int] = Field(None, ge=1)  # exactly min(N, patches) patches of each label_property value
    seed: int = 0
    centered_on_points: bool = False  # a point keeps the grid patch whose centre is nearest to it
    label_property: Optional[str] = None  # a region property carried as each patch's label

    @model_validator(mode="after")
    def _per_class_needs_labels(self):
        if self.per_class is not None and self.label_property is None:
            raise ValueError("per_class needs label_property (the region property that names each patch's class)")
        if self.per_class is not None and self.per_region is not None:
            raise ValueError("give per_region or per_class, not both (a class spans regions)")
        return self


SPLIT_FRACTIONS = ("train", "val", "test")


class SplitConfig(Strict):
    """Train/val/test splits (transforms/planning/splits.py): fractions of spatial blocks of
    `block` x `block` patches, hashed with `seed`; or `by` a region property."""

    train: Optional[float] = Field(None, ge=0.0, le=1.0)
    val: Optional[float] = Field(None, ge=0.0, le=1.0)
    test: Optional[float] = Field(None, ge=0.0, le=1.0)
    block: int = Field(8, ge=1)  # patches per block side
    seed: int = 0
    by: Optional[str] = None  # a region property whose value names the split

    @model_validator(mode="after")
    def _fractions_or_by(self, info: ValidationInfo):
        if (info.context or {}).get("table"):
            raise ValueError("applies to patches; a table: job writes rows (remove split or table)")
        given = [k for k in SPLIT_FRACTIONS if getattr(self, k) is not None]
        if self.by is not None:
            extra = given + [k for k in ("block", "seed") if k in self.model_fields_set]
            if extra:
                raise ValueError(f"by: the region property decides each patch's split; remove split.{extra[0]}")
            return self
        if not given:
            raise ValueError("give fractions (e.g. train: 0.8, val: 0.1, test: 0.1) or by: <region property>")
        total = sum(getattr(self, k) for k in given)
        if abs(total - 1.0) > 1e-6:
            terms = " + ".join(f"{k} {getattr(self, k):g}" for k in given)
            raise ValueError(f"{terms} = {total:g}; the fractions must sum to 1")
        return self

    @property
    def fractions(self) -> tuple[tuple[str, float], ...]:
        """((name, fraction), ...) of the splits with a fraction above 0, in train, val, test order."""
        return tuple((k, float(getattr(self, k))) for k in SPLIT_FRACTIONS if getattr(self, k))

    def echo(self) -> dict:
        """dataset.json's `split`: the config as given, block and seed filled in."""
        if self.by is not None:
            return {"by": self.by}
        return {**{k: getattr(self, k) for k in SPLIT_FRACTIONS if getattr(self, k) is not None},
                "block": self.block, "seed": self.seed}


class FetchConfig(Strict):
    """Request limits and retries. At the top level they apply to every layer; a layer's own
    `fetch:` overrides them for that layer. A limit left unset takes the default of the layer's
    source (pipeline/limits.py: Earth Engine's quota, none for a local file, HTTP-friendly
    concurrency for a remote raster). Limits given here are for the whole job (divided over
    the worker processes)."""

    max_concurrent_requests: Optional[int] = Field(None, ge=1)
    max_requests_per_second: Optional[Union[Annotated[float, Field(gt=0)], Literal["unlimited"]]] = None
    max_attempts: Optional[int] = Field(None, ge=1)  # default 6
    timeout_s: Optional[float] = Field(None, gt=0)  # default 120 s
    batch_size: int = Field(64, ge=1)
    max_patch_bytes: Optional[int] = Field(None, ge=1)  # a worker's memory for one patch; default 512 MiB
    # neighbouring patches per pixel request (Earth Engine layers; default 16, 1 = one request
    # per patch; transforms/fetching/merging.py); other sources fetch patch by patch
    patches_per_request: Optional[int] = Field(None, ge=1, le=1024)

    @property
    def patch_bytes(self) -> int:
        """The most bytes one patch may hold in a worker's memory (DEFAULT_MAX_PATCH_BYTES)."""
        return self.max_patch_bytes or DEFAULT_MAX_PATCH_BYTES

    @property
    def attempts(self) -> int:
        return self.max_attempts or DEFAULT_MAX_ATTEMPTS

    @property
    def timeout(self) -> float:
        """The per-request deadline in seconds (default DEFAULT_TIMEOUT_S)."""
        return self.timeout_s or DEFAULT_TIMEOUT_S


DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_PATCH_BYTES = 512 * 2**20  # a patch's pixels and masks as fetched, every layer and image
