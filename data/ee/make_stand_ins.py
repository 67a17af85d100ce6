"""Writes the small synthetic rasters the Earth Engine emulator serves in place of Sentinel-2 SR
(B8, QA60, SCL), ESA WorldCover (Map) and Landsat 8 Collection 2 Level 2 (SR_B2..SR_B5,
QA_PIXEL) bands, derived from data/RGB.byte.tif (see data/README.md). Deterministic: rerunning
it writes the same files.

    .venv/bin/python data/ee/make_stand_ins.py
"""

from __future__ import annotations

import os

import numpy as np
import rasterio
from rasterio.windows import Window

HERE = os.path.dirname(os.path.abspath(__file__))
SCENE = os.path.join(os.path.dirname(HERE), "RGB.byte.tif")
WINDOW = Window(272, 336, 160, 160)  # px of RGB.byte.tif: around Andros (lon -77.95..-77.90, lat 24.40..24.45)
S2_DATES = ("20200105", "20200115", "20200125")
LANDSAT_DATES = ("20200108", "20200124", "20200209")
WORLDCOVER_CLASSES = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)


def disks(shape, rng, count: int, radius: tuple[int, int]) -> np.ndarray:
    """`count` filled disks at random places (a cloud field), as a bool (H, W) array."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    out = np.zeros(shape, bool)
    for _ in range(count):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        out |= (rows - r) ** 2 + (cols - c) ** 2 <= rng.integers(*radius) ** 2
    return out


def shifted(mask: np.ndarray, drow: int, dcol: int) -> np.ndarray:
    out = np.zeros_like(mask)
    out[drow:, dcol:] = mask[:mask.shape[0] - drow, :mask.shape[1] - dcol]
    return out


def scene():
    with rasterio.open(SCENE) as ds:
        rgb = ds.read(window=WINDOW).astype(np.int32)
        profile = {**ds.profile, "width": WINDOW.width, "height": WINDOW.height,
                   "transform": ds.window_transform(WINDOW), "compress": "deflate", "tiled": False}
    for key in ("blockxsize", "blockysize", "photometric", "interleave"):
        profile.pop(key, None)
    red, green, blue = rgb
    valid = (rgb != 0).all(axis=0)
    water = valid & (blue > green) & (blue > red)
    nir = np.where(valid, np.clip(2 * green - red - (blue - green) + 30, 1, 255), 0)
    nir = np.where(water, np.clip(nir // 4, 1, 255), nir)
    return profile, red, green, blue, valid, water, nir


def write(path: str, profile: dict, bands: list[np.ndarray], dtype: str, nodata=None) -> None:
    with rasterio.open(path, "w", **{**profile, "count": len(bands), "dtype": dtype, "nodata": nodata}) as dst:
        dst.write(np.stack(bands).astype(dtype))


def sentinel2(profile, red, valid, water, nir) -> None:
    """Per date [B8, QA60, SCL] (uint16; B8 on the 0..255 scale of the B4, B3, B2 it sits beside,
    which are RGB.byte.tif's own bands on every date): opaque clouds (QA60 bit 10, SCL 8/9) and cirrus (bit
    11, SCL 10) are bright in B8, their shadows (SCL 3) dark."""
    for k, date in enumerate(S2_DATES):
        rng = np.random.default_rng(100 + k)
        cloud = disks(red.shape, rng, 4, (6, 16)) & valid
        cirrus = disks(red.shape, rng, 2, (8, 20)) & valid & ~cloud
        shadow = shifted(cloud, 6, 8) & valid & ~cloud & ~cirrus
        b8 = (nir + 8 * k).astype(np.int32)  # on the scale of RGB.byte.tif's B4, a little brighter each date
        b8 = np.where(cloud, 400, np.where(cirrus, b8 + 120, np.where(shadow, b8 // 3, b8)))
        b8 = np.where(valid, b8, 0)
        qa60 = np.where(cloud, 1 << 10, 0) | np.where(cirrus, 1 << 11, 0)
        scl = np.where(water, 6, np.where(nir > red * 1.2, 4, 5))
        core = cloud & shifted(cloud, 2, 2)
        scl = np.where(cloud, np.where(core, 9, 8), np.where(cirrus, 10, np.where(shadow, 3, scl)))
        scl = np.where(valid, scl, 0)
        write(os.path.join(HERE, f"s2_{date}.tif"), profile, [b8, qa60, scl], "uint16")


def worldcover(profile, red, green, blue, valid, water, nir) -> None:
    """[Map] (uint8, 0 = no data): water 80, mangroves 95 beside it, trees 10, grass 30,
    cropland 40, built-up 50 (bright grey), bare 60."""
    near_water = (shifted(water, 1, 1) | shifted(water, 2, 0) | shifted(water, 0, 2)) & ~water
    grey = (abs(red - green) < 8) & (abs(green - blue) < 8) & (red > 120)
    classes = np.select([water, near_water, grey, nir > red * 1.4, nir > red * 1.15, nir > red],
                        [80, 95, 50, 10, 30, 40], 60)
    write(os.path.join(HERE, "worldcover_2021.tif"), profile, [np.where(valid, classes, 0)], "uint8", nodata=0)


def landsat(profile, red, green, blue, valid, water, nir) -> None:
    """Per date [SR_B2, SR_B3, SR_B4, SR_B5, QA_PIXEL] (uint16, 0 = fill): DN =
    (reflectance + 0.2) / 0.0000275; QA_PIXEL bit 0 fill, 1 dilated cloud, 3 cloud, 4 shadow,
    6 clear, 7 water."""
    def dn(reflectance):
        return np.round((np.clip(reflectance, -0.2, 1.6) + 0.2) / 0.0000275)
    for k, date in enumerate(LANDSAT_DATES):
        rng = np.random.default_rng(200 + k)
        cloud = disks(red.shape, rng, 3, (6, 14)) & valid
        dilated = (shifted(cloud, 2, 0) | shifted(cloud, 0, 2)) & valid & ~cloud
        shadow = shifted(cloud, 7, 5) & valid & ~cloud & ~dilated
        bands = []
        for value in (blue, green, red, nir):
            reflectance = value / 255.0 * 0.4 + 0.01 * k
            reflectance = np.where(cloud, 0.7, np.where(shadow, reflectance / 3, reflectance))
            bands.append(np.where(valid, dn(reflectance), 0))
        qa = (np.where(cloud, (1 << 3) | (1 << 1), 0) | np.where(dilated, 1 << 1, 0) | np.where(shadow, 1 << 4, 0)
              | np.where(~cloud & ~dilated & ~shadow, 1 << 6, 0) | np.where(water, 1 << 7, 0) | (1 << 8))
        qa = np.where(valid, qa, 1)  # fill
        write(os.path.join(HERE, f"lc08_{date}.tif"), profile, bands + [qa], "uint16", nodata=0)


def main() -> None:
    profile, red, green, blue, valid, water, nir = scene()
    sentinel2(profile, red, valid, water, nir)
    worldcover(profile, red, green, blue, valid, water, nir)
    landsat(profile, red, green, blue, valid, water, nir)


if __name__ == "__main__":
    main()
