"""8-bit renderings of patches with Earth Engine's visualization parameters. Pure and Beam-free.

Parameters as `ee.Image.visualize` / the REST `VisualizationOptions` take them:

- `bands`: 1 or 3 band names (default: the first 3 bands, or the only band);
- `min`, `max`: the values mapped to 0 and 255, one for all bands or one per band (default:
  the dtype's range for integers, 0..1 for floats); values outside are clamped;
- `gamma`: one for all bands or one per band (default 1);
- `palette`: colours (hex `RRGGBB`, `#RRGGBB`, `RGB` or CSS names such as `red`) for a single
  band: the stretched value 0..1 runs through the colours, evenly spaced, interpolated
  linearly in RGB between neighbours (Earth Engine's default colour space).

Per band: `x = clip((v - min) / (max - min), 0, 1) ** (1 / gamma)` (gamma > 1 brightens),
then `round(255 * x)` or the palette colour at `x`, rounded to 8 bits. A single band without
palette is grey (R = G = B).

Rendered locally from the raw pixels, for raster and Earth Engine sources alike, rather than
by asking Earth Engine for `visualizationOptions` + PNG: one request per patch yields both
the training data and the picture (no second request against the quota), the two sources
render with identical semantics, the picture shows exactly the stored (resampled, masked)
pixels, and the mask comes from pixelbeam's validity band (a server-side PNG would carry
Earth Engine's own mask in its alpha instead).

Masked pixels (the patch mask False) are transparent in PNG (alpha 0, else 255; RGBA, or LA
for grey renderings) and black in JPEG, which has no alpha channel.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Optional, Sequence, Union

import numpy as np

Number = Union[int, float]


class VisualizationError(ValueError):
    """Visualization parameters that cannot apply; `str()` is one line naming the field."""


@dataclasses.dataclass(frozen=True)
class VisParams:
    """Resolved parameters: band names and one min, max and gamma per band; RGB palette."""

    bands: tuple[str, ...]
    min: tuple[float, ...]
    max: tuple[float, ...]
    gamma: tuple[float, ...]
    palette: Optional[tuple[tuple[int, int, int], ...]] = None


def parse_color(color: str) -> tuple[int, int, int]:
    """A CSS-style colour as (r, g, b): 'RRGGBB', '#RRGGBB', 'RGB', '#RGB' or a CSS name."""
    from PIL import ImageColor
    text = str(color).strip()
    hexdigits = text.lstrip("#")
    if len(hexdigits) in (3, 6) and all(c in "0123456789abcdefABCDEF" for c in hexdigits):
        text = "#" + hexdigits
    try:
        rgb = ImageColor.getrgb(text)
    except ValueError:
        raise VisualizationError(f"palette colour {color!r} is not a colour; use hex RRGGBB or a CSS "
                                 "colour name") from None
    return tuple(int(c) for c in rgb[:3])


def check_vis_config(vis) -> None:
    """Checks that need no source (`vis` has bands, min, max, gamma, palette attributes);
    ValueError with a message naming the key, e.g. a palette with 3 bands."""
    n = len(vis.bands) if vis.bands else None
    if n is not None and n not in (1, 3):
        raise ValueError(f"bands must list 1 or 3 bands, got {n}")
    for key in ("min", "max", "gamma"):
        value = getattr(vis, key)
        if isinstance(value, list) and (not value or (n is not None and len(value) != n)):
            raise ValueError(f"{key} has {len(value)} values for {n if n is not None else 'the'} bands; "
                             "give one value or one per band")
    if vis.palette is not None:
        if n is not None and n != 1:
            raise ValueError(f"palette needs exactly one band, got {n} bands; give one band or drop the palette")
        if not vis.palette:
            raise ValueError("palette is empty; give at least one colour")
        for color in vis.palette:
            parse_color(color)
    gammas = vis.gamma if isinstance(vis.gamma, list) else [vis.gamma] if vis.gamma is not None else []
    if any(not g > 0 for g in gammas):
        raise ValueError(f"gamma must be positive, got {vis.gamma}")
    if isinstance(vis.min, (int, float)) and isinstance(vis.max, (int, float)) and vis.min == vis.max:
        raise ValueError(f"min and max are both {vis.min}; they must differ")


def _per_band(value, n: int, field: str, default: Sequence[float]) -> tuple[float, ...]:
    if value is None:
        return tuple(float(v) for v in default)
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise VisualizationError(f"output.visualization.{field}: {len(values)} values for {n} bands; "
                                 "give one value or one per band")
    return tuple(float(v) for v in values)


def dtype_range(dtype) -> tuple[float, float]:
    """Default min/max: an integer dtype's full range, 0..1 for floats."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if dtype.kind == "b":
        return 0.0, 1.0
    return 0.0, 1.0


def resolve_vis(band_names: Sequence[str], dtype, bands: Optional[Sequence[str]] = None,
                min: Union[None, Number, Sequence[Number]] = None,
                max: Union[None, Number, Sequence[Number]] = None,
                gamma: Union[None, Number, Sequence[Number]] = None,
                palette: Optional[Sequence[str]] = None) -> VisParams:
    """Checks visualization parameters against the source's bands; VisualizationError if wrong."""
    names = list(band_names)
    chosen = list(bands) if bands else names[:3] if len(names) >= 3 else names[:1]
    if len(chosen) not in (1, 3):
        raise VisualizationError(f"output.visualization.bands: give 1 or 3 bands, got {len(chosen)}")
    unknown = [b for b in chosen if b not in names]
    if unknown:
        raise VisualizationError(f"output.visualization.bands: {unknown[0]!r} is not a band of the source; "
                                 f"known bands: {', '.join(names)}")
    n = len(chosen)
    low, high = dtype_range(dtype)
    mins = _per_band(min, n, "min", [low] * n)
    maxs = _per_band(max, n, "max", [high] * n)
    gammas = _per_band(gamma, n, "gamma", [1.0] * n)
    for lo, hi in zip(mins, maxs):
        if lo == hi:
            raise VisualizationError(f"output.visualization.max: must differ from min ({lo})")
    if any(not g > 0 for g in gammas):
        raise VisualizationError(f"output.visualization.gamma: must be positive, got {list(gammas)}")
    colors = None
    if palette:
        if n != 1:
            raise VisualizationError(f"output.visualization.palette: applies to one band, not {n}; "
                                     "give a single band or drop the palette")
        try:
            colors = tuple(parse_color(c) for c in palette)
        except VisualizationError as e:
            raise VisualizationError(f"output.visualization: {e}") from None
    return VisParams(bands=tuple(chosen), min=mins, max=maxs, gamma=gammas, palette=colors)


def stretch(values: np.ndarray, vmin: float, vmax: float, gamma: float) -> np.ndarray:
    """EE's stretch of one band to 0..1 (float64): clamp((v - min) / (max - min)) ** (1 / gamma).

    NaN becomes 0 (such pixels are masked in any case)."""
    x = (np.asarray(values, dtype=np.float64) - vmin) / (vmax - vmin)
    x = np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0)
    return x if gamma == 1.0 else x ** (1.0 / gamma)


def apply_palette(x: np.ndarray, palette: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Stretched values 0..1 -> (H, W, 3) float 0..255, the colours evenly spaced over 0..1."""
    colors = np.asarray(palette, dtype=np.float64)
    if len(colors) == 1:
        return np.broadcast_to(colors[0], x.shape + (3,)).copy()
    stops = np.linspace(0.0, 1.0, len(colors))
    return np.stack([np.interp(x, stops, colors[:, k]) for k in range(3)], axis=-1)


def _to_byte(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5).astype(np.uint8)  # round half up, as 8-bit quantization


def render_rgb(data: np.ndarray, mask: np.ndarray, vis: VisParams, band_names: Sequence[str],
               alpha: bool = True) -> np.ndarray:
    """A patch `(C, H, W)` -> uint8 `(H, W, 4)` RGBA (alpha 255 where `mask`, else 0), or
    `(H, W, 3)` RGB with masked pixels black when `alpha` is False."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"a rendering needs a (C, H, W) patch, got shape {data.shape}")
    names = list(band_names)
    planes = [stretch(data[names.index(b)], lo, hi, g)
              for b, lo, hi, g in zip(vis.bands, vis.min, vis.max, vis.gamma)]
    if vis.palette:
        rgb = _to_byte(apply_palette(planes[0], vis.palette))
    elif len(planes) == 1:
        rgb = np.repeat(_to_byte(planes[0] * 255.0)[..., None], 3, axis=-1)
    else:
        rgb = np.stack([_to_byte(p * 255.0) for p in planes], axis=-1)
    valid = np.asarray(mask, dtype=bool)
    if not alpha:
        return np.where(valid[..., None], rgb, 0).astype(np.uint8)
    return np.concatenate([rgb, np.where(valid, 255, 0).astype(np.uint8)[..., None]], axis=-1)


def png_bytes(rgba: np.ndarray, grey: bool = False) -> bytes:
    """An (H, W, 4) RGBA rendering as PNG: RGBA, or LA when `grey` (R = G = B)."""
    from PIL import Image
    img = Image.fromarray(np.ascontiguousarray(rgba[..., [0, 3]] if grey else rgba))  # LA or RGBA
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def jpeg_bytes(rgb: np.ndarray, grey: bool = False, quality: int = 90) -> bytes:
    """An (H, W, 3) RGB rendering as JPEG (no alpha: masked pixels are black); L when `grey`."""
    from PIL import Image
    img = Image.fromarray(np.ascontiguousarray(rgb[..., 0] if grey else rgb))  # L or RGB
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def is_grey(vis: VisParams) -> bool:
    return len(vis.bands) == 1 and not vis.palette


def patch_to_png_bytes(data: np.ndarray, mask: np.ndarray, vis: VisParams, band_names: Sequence[str]) -> bytes:
    return png_bytes(render_rgb(data, mask, vis, band_names, alpha=True), grey=is_grey(vis))


def patch_to_jpeg_bytes(data: np.ndarray, mask: np.ndarray, vis: VisParams, band_names: Sequence[str]) -> bytes:
    return jpeg_bytes(render_rgb(data, mask, vis, band_names, alpha=False), grey=is_grey(vis))


# Colours of class values drawn over a picture (value v takes CLASS_COLORS[v % 10]): distinct
# hues that stay visible over imagery (grey for 0, no white: clouds are white).
CLASS_COLORS = ("#7f7f7f", "#1f77b4", "#2ca02c", "#e377c2", "#ff7f0e", "#d62728", "#9467bd", "#8c564b",
                "#bcbd22", "#17becf")


def class_color(value: int) -> tuple[int, int, int]:
    """The overlay colour of a class value (CLASS_COLORS)."""
    return parse_color(CLASS_COLORS[int(value) % len(CLASS_COLORS)])


def overlay_classes(rgb: np.ndarray, classes: np.ndarray, painted: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """`rgb` (H, W, 3) uint8 with each `painted` pixel blended with its class colour (`classes`
    (H, W) integers) at opacity `alpha`: a segmentation target drawn over its image."""
    out = rgb.astype(np.float64)
    for value in np.unique(classes[painted]):
        here = painted & (classes == value)
        out[here] = (1 - alpha) * out[here] + alpha * np.asarray(class_color(value), np.float64)
    return np.round(out).astype(np.uint8)
