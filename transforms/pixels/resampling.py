"""Resampling names per source, as rasterio/GDAL and Earth Engine name them. Pure.

Raster sources warp with GDAL, which knows: near (nearest), bilinear, cubic, cubic_spline
(cubicspline), lanczos, average, rms, mode, min, max, med, q1, q3, sum (GDAL's warper; its
`gauss` is for overviews only). Earth Engine interpolates with nearest neighbour (its default),
or `image.resample('bilinear' | 'bicubic')`; for other reductions it needs
`reduceResolution`, which pixelbeam does not build.
"""

from __future__ import annotations

from typing import Optional

RASTER_ALIASES = {"near": "nearest", "cubicspline": "cubic_spline"}
RASTER_RESAMPLING = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "rms", "mode",
                     "min", "max", "med", "q1", "q3", "sum")
EE_RESAMPLING = {"nearest": None, "near": None, "bilinear": "bilinear", "cubic": "bicubic", "bicubic": "bicubic"}


def raster_resampling(name: str) -> str:
    """The rasterio `Resampling` member name for a GDAL resampling name; ValueError if unknown."""
    key = RASTER_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in RASTER_RESAMPLING:
        raise ValueError(f"{name!r} is not a GDAL warp resampling; use one of near, "
                         f"{', '.join(RASTER_RESAMPLING[1:])}")
    return key


def ee_resampling(name: str) -> Optional[str]:
    """The `ee.Image.resample` mode for a name (None: nearest, EE's default); ValueError if EE
    has no such interpolation."""
    key = str(name).lower()
    if key not in EE_RESAMPLING:
        raise ValueError(f"{name!r} is not available in Earth Engine, which resamples with nearest (default), "
                         "bilinear or cubic (bicubic) only; use one of those")
    return EE_RESAMPLING[key]
