"""The `table:` section: point time series (Earth Engine's `ImageCollection.getRegion`).

With a `table:` section, `pixelbeam run` writes one row per (pixel, image) of the regions'
points (or every pixel of small polygons) instead of patches; see pipeline/tables/graph.py.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TableConfig(BaseModel):
    """Units: `scale` and `origin` in CRS units; `group_size` in pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crs: str = "native"  # an EPSG code / CRS string, or native (a raster's own)
    scale: Union[float, tuple[float, float], Literal["native"]] = "native"  # pixel size in CRS units, or [x, y]
    origin: Optional[tuple[float, float]] = None  # grid anchor [x, y] in CRS units (default: native's, else 0, 0)
    times: Optional[list[str]] = None  # raster: one ISO date (or datetime, UTC) per file of source.uri
    formats: list[Literal["parquet", "csv"]] = ["parquet"]
    point_id_property: Optional[str] = None  # a region property naming each point (default: the region id)
    group_size: int = Field(64, ge=1, le=4096)  # nearby pixels within one group_size x group_size px block share requests
    max_pixels_per_region: int = Field(10_000, ge=1)  # polygons: at most this many pixels each
    # Earth Engine: at most this many images per computePixels (default: as many as 1,024 bands hold)
    images_per_request: Optional[int] = Field(None, ge=1)

    @field_validator("formats")
    @classmethod
    def _some_format(cls, v):
        if not v:
            raise ValueError("give parquet, csv or both")
        return v

    @field_validator("scale")
    @classmethod
    def _positive(cls, v):
        if v != "native" and min((v, v) if isinstance(v, (int, float)) else v) <= 0:
            raise ValueError("the pixel size must be positive (CRS units)")
        return v
