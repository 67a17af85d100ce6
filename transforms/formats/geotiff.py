"""One patch as a GeoTIFF (a Cloud Optimized GeoTIFF), built in memory. Pure and Beam-free.

`patch_to_geotiff_bytes(patch)` returns the bytes of `geotiff/<patch_id>.tif`:

- the stored window, margin included, exactly as in the NPY file (same pixels, same dtype),
  georeferenced with the patch's CRS and `PatchSpec.fetch_transform` (pixel (0, 0) is the
  fetch window's top-left corner, as for the TFRecord's `transform_f64`);
- the validity mask as an internal GDAL mask band (per dataset, 255 valid / 0 masked), not a
  nodata value: a nodata value would be ambiguous wherever a valid pixel happens to equal it
  (0 is a real value in most data), and masked pixels keep whatever value the source gave
  them. rasterio (`read_masks`, `dataset_mask`, `read(masked=True)`), GDAL and QGIS honour it;
- internally tiled (256 px tiles; 128 px, one tile, for patches under 128 px), DEFLATE with the predictor suited to the dtype (horizontal differencing, 2, for
  integers; floating point, 3, for floats);
- band descriptions = band names; dataset tags `patch_id`, `region_id`, `margin`, and
  `times` for time stacks;
- a Cloud Optimized GeoTIFF (IFDs first, data of the smallest overview first, GDAL's
  `LAYOUT=COG` structural metadata) written by GDAL's COG driver (GDAL >= 3.1). Patches of
  `OVERVIEW_MIN_SIZE` px or more on a side get internal overviews (halving until they fit
  in one tile, nearest-neighbour so that values stay exact values of the patch, also for
  class labels); smaller ones need none. Without the COG driver the same layout comes from
  GTiff with `COPY_SRC_OVERVIEWS=YES`.

A time stack `(T, C, H, W)` is written as T*C bands named `<t>_<band>` (the TFRecord
feature names) with one mask: valid where the pixel is valid at every step.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.io import MemoryFile

from pixelbeam.transforms.formats.encode import band_feature_names
from pixelbeam.transforms.patch import Patch

OVERVIEW_MIN_SIZE = 512  # px on the larger side: from here on a patch gets internal overviews
TILE_SIZE = 256  # px
MIN_TILE_SIZE = 128  # px


def geotiff_relpath(patch_id: str) -> str:
    return f"geotiff/{patch_id}.tif"


def has_cog_driver() -> bool:
    """GDAL's COG driver is there (GDAL >= 3.1)."""
    with rasterio.Env() as env:
        return "COG" in env.drivers()


def tile_size(height: int, width: int) -> int:
    """256 px tiles, or 128 px for patches under 256 px (the COG driver's smallest tile)."""
    return TILE_SIZE if max(height, width) >= TILE_SIZE else MIN_TILE_SIZE


def patch_to_geotiff_bytes(patch: Patch, driver: Optional[str] = None) -> bytes:
    """The patch as the bytes of a tiled, compressed, Cloud Optimized GeoTIFF (module doc).

    `driver`: "COG" or "GTiff" (GTiff + COPY_SRC_OVERVIEWS); default COG where GDAL has it.
    """
    data, mask, names = _bands_and_mask(patch)
    count, height, width = data.shape
    spec = patch.spec
    block = tile_size(height, width)
    overviews = max(height, width) >= OVERVIEW_MIN_SIZE
    driver = driver or ("COG" if has_cog_driver() else "GTiff")
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name,
                   crs=spec.crs, transform=Affine(*spec.fetch_transform), tiled=True,
                   blockxsize=block, blockysize=block)
    tags = {"patch_id": spec.patch_id, "region_id": spec.region_id, "margin": str(spec.margin)}
    if patch.times:
        tags["times"] = ",".join(str(t) for t in patch.times)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), MemoryFile() as staging:
        with staging.open(**profile) as src:
            src.write(data)
            src.write_mask(np.where(mask, 255, 0).astype(np.uint8))
            for i, name in enumerate(names, start=1):
                src.set_band_description(i, name)
            src.update_tags(**tags)
            if driver == "GTiff" and overviews:
                src.build_overviews(_overview_factors(height, width, block), rasterio.enums.Resampling.nearest)
        with staging.open() as src, MemoryFile() as out:
            rasterio.shutil.copy(src, out.name, **_creation_options(driver, data.dtype, block, overviews))
            return out.read()


def _bands_and_mask(patch: Patch) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(bands (N, H, W), mask (H, W) bool, band names) of a patch or a flattened time stack."""
    data = np.asarray(patch.data)
    mask = np.asarray(patch.mask, dtype=bool)
    if data.ndim == 3:
        return data, mask, list(patch.band_names)
    if data.ndim == 4:
        steps = data.shape[0]
        if mask.ndim == 3:
            mask = mask.all(axis=0)
        return data.reshape((-1,) + data.shape[2:]), mask, band_feature_names(patch.band_names, steps)
    raise ValueError(f"patch data must be (C, H, W) or (T, C, H, W), got shape {data.shape}")


def _overview_factors(height: int, width: int, block: int) -> list[int]:
    """2, 4, 8, ... until the overview fits in one tile (as the COG driver's OVERVIEWS=AUTO)."""
    factors, f = [], 2
    while max(height, width) / (f // 2) > block:
        factors.append(f)
        f *= 2
    return factors


def _creation_options(driver: str, dtype: np.dtype, block: int, overviews: bool) -> dict:
    compress = dict(COMPRESS="DEFLATE")
    if driver == "COG":
        return dict(driver="COG", BLOCKSIZE=block, PREDICTOR="YES", OVERVIEWS="AUTO" if overviews else "NONE",
                    OVERVIEW_RESAMPLING="NEAREST", **compress)
    predictor = 3 if np.dtype(dtype).kind == "f" else 2
    return dict(driver="GTiff", TILED="YES", BLOCKXSIZE=block, BLOCKYSIZE=block, PREDICTOR=predictor,
                COPY_SRC_OVERVIEWS="YES", **compress)
