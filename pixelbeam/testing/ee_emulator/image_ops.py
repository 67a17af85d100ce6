"""Earth Engine image algebra on lazy bands: select, masks, casts, comparisons, reducers.

Dtype choices (EE's exact type inference is range-based; this follows it loosely):
- ``mask()`` bands are uint8 0/1, valid everywhere (EE returns 0..1 floats).
- ``constant(v)``: ints use the smallest numpy type holding v, floats float64.
- comparisons (gt, lt, ...) give uint8 0/1; add/subtract/multiply give int64
  for integer inputs else float64; divide gives float64 (x/0 is masked).
- median/mean reducers give float64 (median of an even count averages the
  middle two); min/max/mosaic/first keep the (promoted) input dtype.
- ``toFloat`` is float32, ``toDouble`` float64; integer casts clamp to the range.
- bitwise ops and shifts need integers and keep the promoted integer type; ``and``/``or``/
  ``not`` give uint8 0/1; ``normalizedDifference`` is float32 ``nd``, masked where a band is
  negative or the sum is 0 (as EE's docs say); ``remap`` gives one band ``remapped`` of the
  smallest type holding ``to`` (and ``defaultValue``), masked where unmatched without one.

Properties: per-pixel math (arithmetic, comparisons, bitwise, logical, normalizedDifference)
returns an image without the inputs' properties, as Earth Engine does (copy them back with
``copyProperties`` / ``set``); select, rename, masks, casts, addBands (dst's), clip, where,
remap and resample keep them; ``Collection.map`` keeps each image's ``system:index``.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable

import numpy as np
from shapely.ops import unary_union

from .pixels import Band, BandPixels, Grid, Image, invalid


def _ones(grid: Grid) -> np.ndarray:
    return np.ones((grid.height, grid.width), bool)


def _derive(band: Band, name: str, dtype: Any, fn: Callable[[BandPixels], BandPixels]) -> Band:
    return Band(name, dtype, lambda grid: fn(band.pixels(grid)))


def _with_bands(image: Image, bands: list[Band]) -> Image:
    """Same metadata (properties, footprint), new bands."""
    return Image(bands, dict(image.properties), image.footprint_wgs84)


def select(image: Image, selectors: list[Any], new_names: list[str] | None = None) -> Image:
    """EE select: ints index bands; strings match band names as full regexes, in order."""
    if not isinstance(selectors, list):
        selectors = [selectors]
    chosen: list[Band] = []
    for selector in selectors:
        if isinstance(selector, int) and not isinstance(selector, bool):
            if not -len(image.bands) <= selector < len(image.bands):
                raise invalid(f"Image.select: Band index {selector} out of range "
                              f"(image has {len(image.bands)} bands).")
            matches = [image.bands[selector]]
        elif isinstance(selector, str):
            matches = [b for b in image.bands if b.name == selector or _full_match(selector, b.name)]
        else:
            raise invalid(f"Image.select: Invalid band selector {selector!r}.")
        if not matches:
            raise invalid(f"Image.select: Pattern '{selector}' did not match any bands. "
                          f"Available bands: {image.band_names}.")
        chosen += [b for b in matches if b not in chosen]
    result = _with_bands(image, chosen)
    return rename(result, new_names) if new_names else result


def _full_match(pattern: str, name: str) -> bool:
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def rename(image: Image, names: list[str]) -> Image:
    if isinstance(names, str):
        names = [names]
    if len(names) != len(image.bands):
        raise invalid(f"Image.rename: Can't rename {len(image.bands)} bands to {len(names)} "
                      f"names: {names}.")
    return _with_bands(image, [b.renamed(n) for b, n in zip(image.bands, names)])


def _pair(image1: Image, image2: Image, what: str) -> list[tuple[Band, Band, str]]:
    """Band pairs for a two-image op: equal counts pair up, a single band broadcasts."""
    n1, n2 = len(image1.bands), len(image2.bands)
    if n1 == n2:
        return [(a, b, a.name) for a, b in zip(image1.bands, image2.bands)]
    if n2 == 1:
        return [(a, image2.bands[0], a.name) for a in image1.bands]
    if n1 == 1:
        return [(image1.bands[0], b, b.name) for b in image2.bands]
    raise invalid(f"{what}: Images must contain the same number of bands or only 1 band. "
                  f"Got {n1} and {n2}.")


def resample(image: Image, mode: str = "bilinear") -> Image:
    """``Image.resample``: bands of an asset interpolated bilinearly or bicubically (GDAL's
    cubic) when warped to a request grid; other bands have no native projection (EE's docs:
    resample the images, not their composite), which the emulator refuses."""
    if mode not in ("bilinear", "bicubic"):
        raise invalid(f"Image.resample: mode must be 'bilinear' or 'bicubic', got {mode!r}.")
    computed = [b.name for b in image.bands if b.resampled is None]
    if computed:
        raise invalid(f"Image.resample: band {computed[0]!r} is computed, not read from an asset; "
                      "resample the images before compositing them.")
    return _with_bands(image, [b.resampled(mode) for b in image.bands])


def mask_of(image: Image) -> Image:
    """``image.mask()``: each band's validity as uint8 0/1, itself valid everywhere."""
    def to_mask(p: BandPixels) -> BandPixels:
        return BandPixels(p.valid.astype(np.uint8), np.ones_like(p.valid), p.footprint)
    return _with_bands(image, [_derive(b, b.name, np.uint8, to_mask) for b in image.bands])


def update_mask(image: Image, mask: Image, replace: bool = False) -> Image:
    """``updateMask`` (valid &= mask != 0 and mask valid); ``replace`` gives ``mask(m)``."""
    def band(b: Band, m: Band, name: str) -> Band:
        def compute(grid: Grid) -> BandPixels:
            p, q = b.pixels(grid), m.pixels(grid)
            keep = q.valid & (q.data != 0)
            return BandPixels(p.data, keep & p.footprint if replace else keep & p.valid, p.footprint)
        return Band(b.name, b.dtype, compute)
    if len(mask.bands) not in (1, len(image.bands)):
        raise invalid(f"Image.updateMask: mask has {len(mask.bands)} bands, image has "
                      f"{len(image.bands)}; need 1 or the same number.")
    return _with_bands(image, [band(b, m, n) for b, m, n in _pair(image, mask, "updateMask")])


def unmask(image: Image, value: Image | None, same_footprint: bool = True) -> Image:
    """Masked pixels take ``value``'s pixels (default 0); outside the footprint stays masked."""
    value = value if value is not None else constant(0)
    if len(value.bands) not in (1, len(image.bands)):
        raise invalid("Image.unmask: value must have 1 band or as many bands as the input.")

    def band(b: Band, v: Band) -> Band:
        dtype = np.result_type(b.dtype, v.dtype)

        def compute(grid: Grid) -> BandPixels:
            p, q = b.pixels(grid), v.pixels(grid)
            data = np.where(p.valid, p.data, q.data).astype(dtype, copy=False)
            valid = p.valid | q.valid
            return BandPixels(data, valid & p.footprint if same_footprint else valid,
                              p.footprint if same_footprint else p.footprint | q.footprint)
        return Band(b.name, dtype, compute)
    values = value.bands * len(image.bands) if len(value.bands) == 1 else value.bands
    return _with_bands(image, [band(b, v) for b, v in zip(image.bands, values)])


def add_bands(dst: Image, src: Image, names: list[str] | None = None,
              overwrite: bool = False) -> Image:
    """Appends src's bands (optionally only ``names``); overwritten bands keep their place."""
    if names:
        src = select(src, list(names))
    bands = list(dst.bands)
    for band in src.bands:
        index = next((i for i, b in enumerate(bands) if b.name == band.name), None)
        if index is None:
            bands.append(band)
        elif overwrite:
            bands[index] = band
        else:
            raise invalid(f"Image.addBands: Image already has a band named '{band.name}'; "
                          "rename it or pass overwrite=True.")
    return _with_bands(dst, bands)


def constant(value: Any) -> Image:
    """``ee.Image.constant``: one band per value, named constant / constant_i."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, (int, float)) for v in values):
        raise invalid(f"Image.constant: value must be a number or list of numbers: {value!r}.")
    bands = []
    for i, v in enumerate(values):
        dtype = np.dtype(np.float64) if isinstance(v, float) else np.min_scalar_type(int(v))
        name = "constant" if not isinstance(value, list) else f"constant_{i}"
        bands.append(Band(name, dtype, lambda grid, v=v, dtype=dtype: BandPixels(
            np.full((grid.height, grid.width), v, dtype), _ones(grid), _ones(grid))))
    return Image(bands)


def cast(image: Image, dtype: Any) -> Image:
    """Casts every band; integer targets clamp to their range first."""
    dtype = np.dtype(dtype)

    def convert(p: BandPixels) -> BandPixels:
        data = p.data
        if dtype.kind in "iu" and data.dtype.kind in "iuf":
            target = np.iinfo(dtype)
            source = np.iinfo(data.dtype) if data.dtype.kind in "iu" else None
            low = target.min if source is None else max(target.min, source.min)
            high = target.max if source is None else min(target.max, source.max)
            data = np.clip(data, low, high)
        return BandPixels(data.astype(dtype), p.valid, p.footprint)
    return _with_bands(image, [_derive(b, b.name, dtype, convert) for b in image.bands])


_COMPARISONS = {"gt": np.greater, "lt": np.less, "gte": np.greater_equal,
                "lte": np.less_equal, "eq": np.equal, "neq": np.not_equal}
_ARITHMETIC = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply,
               "divide": np.divide}
_LOGICAL = {"and": np.logical_and, "or": np.logical_or}
_BITWISE = {"bitwiseAnd": np.bitwise_and, "bitwiseOr": np.bitwise_or, "bitwiseXor": np.bitwise_xor,
            "leftShift": np.left_shift, "rightShift": np.right_shift}
BINARY_OPS = (*_COMPARISONS, *_ARITHMETIC, *_LOGICAL, *_BITWISE)


def _binary_dtype(op: str, a: Band, b: Band) -> np.dtype:
    if op in _COMPARISONS or op in _LOGICAL:
        return np.dtype(np.uint8)
    if op in _BITWISE:
        if a.dtype.kind not in "iu" or b.dtype.kind not in "iu":
            raise invalid(f"Image.{op}: bitwise operands must be integer images, got {a.dtype} and {b.dtype}.")
        return np.dtype(a.dtype if op.endswith("Shift") else np.result_type(a.dtype, b.dtype))
    if op == "divide" or a.dtype.kind == "f" or b.dtype.kind == "f":
        return np.dtype(np.float64)
    return np.dtype(np.int64)


def binary(op: str, image1: Image, image2: Image) -> Image:
    """Pixel-wise comparison, arithmetic, logical or bitwise op; valid where both inputs are
    valid (and, for divide, where the divisor is not 0). No properties (module doc)."""
    def band(a: Band, b: Band, name: str) -> Band:
        dtype = _binary_dtype(op, a, b)

        def compute(grid: Grid) -> BandPixels:
            p, q = a.pixels(grid), b.pixels(grid)
            valid = p.valid & q.valid
            if op in _COMPARISONS:
                data = _COMPARISONS[op](p.data, q.data).astype(np.uint8)
            elif op in _LOGICAL:
                data = _LOGICAL[op](p.data != 0, q.data != 0).astype(np.uint8)
            elif op in _BITWISE:
                data = _BITWISE[op](p.data.astype(np.int64), q.data.astype(np.int64)).astype(dtype)
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    data = _ARITHMETIC[op](p.data.astype(dtype), q.data.astype(dtype))
                if op == "divide":
                    valid &= q.data != 0
                    data[~valid] = 0
            return BandPixels(data, valid, p.footprint & q.footprint)
        return Band(name, dtype, compute)
    return Image([band(a, b, n) for a, b, n in _pair(image1, image2, f"Image.{op}")], {}, image1.footprint_wgs84)


def logical_not(image: Image) -> Image:
    """``Image.not``: uint8 1 where a band is 0, else 0; no properties."""
    def to_not(p: BandPixels) -> BandPixels:
        return BandPixels((p.data == 0).astype(np.uint8), p.valid, p.footprint)
    return Image([_derive(b, b.name, np.uint8, to_not) for b in image.bands], {}, image.footprint_wgs84)


def normalized_difference(image: Image, band_names: list[str] | None = None) -> Image:
    """``(first - second) / (first + second)`` as float32 ``nd``; masked where either band is
    negative or the sum is 0; no properties."""
    pair = select(image, list(band_names)) if band_names else _with_bands(image, image.bands[:2])
    if len(pair.bands) != 2:
        raise invalid(f"Image.normalizedDifference: needs 2 bands, got {pair.band_names}.")
    first, second = pair.bands

    def compute(grid: Grid) -> BandPixels:
        p, q = first.pixels(grid), second.pixels(grid)
        a, b = p.data.astype(np.float64), q.data.astype(np.float64)
        total = a + b
        valid = p.valid & q.valid & (a >= 0) & (b >= 0) & (total != 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            data = np.where(valid, (a - b) / np.where(total == 0, 1, total), 0).astype(np.float32)
        return BandPixels(data, valid, p.footprint & q.footprint)
    return Image([Band("nd", np.float32, compute)], {}, image.footprint_wgs84)


def where(image: Image, test: Image, value: Image) -> Image:
    """``Image.where``: each band takes ``value`` where ``test`` is nonzero, unless test or
    value is masked there (then the input stays); the input's mask is kept."""
    tests = test.bands * len(image.bands) if len(test.bands) == 1 else test.bands
    values = value.bands * len(image.bands) if len(value.bands) == 1 else value.bands
    if len(tests) != len(image.bands) or len(values) != len(image.bands):
        raise invalid("Image.where: test and value must have 1 band or as many bands as the input.")

    def band(b: Band, t: Band, v: Band) -> Band:
        dtype = np.result_type(b.dtype, v.dtype)

        def compute(grid: Grid) -> BandPixels:
            p, q, r = b.pixels(grid), t.pixels(grid), v.pixels(grid)
            replace = q.valid & (q.data != 0) & r.valid
            return BandPixels(np.where(replace, r.data, p.data).astype(dtype, copy=False), p.valid, p.footprint)
        return Band(b.name, dtype, compute)
    return _with_bands(image, [band(b, t, v) for b, t, v in zip(image.bands, tests, values)])


def remap(image: Image, from_values: list, to_values: list, default: Any = None,
          band_name: str | None = None) -> Image:
    """``Image.remap``: one band ``remapped``, ``from[i] -> to[i]``; other values take
    ``default``, or are masked without one."""
    if not isinstance(from_values, list) or not isinstance(to_values, list) or len(from_values) != len(to_values):
        raise invalid("Image.remap: from and to must be lists of the same length.")
    numbers = to_values + ([default] if default is not None else [])
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers + from_values):
        raise invalid("Image.remap: from, to and defaultValue must be numbers.")
    source = image.band(band_name) if band_name else image.bands[0]
    if all(isinstance(v, int) for v in numbers):
        dtype = np.result_type(*[np.min_scalar_type(v) for v in numbers])
    else:
        dtype = np.dtype(np.float64)

    def compute(grid: Grid) -> BandPixels:
        p = source.pixels(grid)
        data = np.zeros(p.data.shape, dtype)
        matched = np.zeros(p.data.shape, bool)
        for f, t in zip(from_values, to_values):
            hit = (p.data == f) & ~matched
            data[hit], matched = t, matched | hit
        if default is not None:
            data[~matched] = default
            matched[:] = True
        valid = p.valid & matched
        data[~valid] = 0
        return BandPixels(data, valid, p.footprint)
    return _with_bands(image, [Band("remapped", dtype, compute)])


def clip(image: Image, geometry: Any) -> Image:
    """``Image.clip``: pixels whose centre lies outside ``geometry`` (lon/lat) are masked and
    outside the footprint."""
    import shapely
    from rasterio.warp import transform as warp_points

    def inside(grid: Grid) -> np.ndarray:
        cols, rows = np.meshgrid(np.arange(grid.width) + 0.5, np.arange(grid.height) + 0.5)
        xs, ys = grid.transform * (cols.ravel(), rows.ravel())
        lons, lats = warp_points(grid.crs, "EPSG:4326", list(xs), list(ys))
        return shapely.contains_xy(geometry, np.array(lons), np.array(lats)).reshape(grid.height, grid.width)

    masks: dict[int, tuple[Grid, np.ndarray]] = {}  # one mask per request grid, shared by the bands

    def mask_on(grid: Grid) -> np.ndarray:
        if id(grid) not in masks:
            masks[id(grid)] = (grid, inside(grid))
        return masks[id(grid)][1]

    def band(b: Band) -> Band:
        def compute(grid: Grid) -> BandPixels:
            p, keep = b.pixels(grid), mask_on(grid)
            return BandPixels(p.data, p.valid & keep, p.footprint & keep)
        return Band(b.name, b.dtype, compute)
    footprint = geometry if image.footprint_wgs84 is None else image.footprint_wgs84.intersection(geometry)
    return Image([band(b) for b in image.bands], dict(image.properties), footprint)


# -- collections ---------------------------------------------------------
def _members_by_band(images: list[Image]) -> dict[str, list[Band]]:
    """Bands grouped by name across images, names in order of first appearance."""
    grouped: dict[str, list[Band]] = {}
    for image in images:
        for band in image.bands:
            grouped.setdefault(band.name, []).append(band)
    return grouped


def _stack(pxs: list[BandPixels], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([p.data.astype(dtype, copy=False) for p in pxs]), np.stack([p.valid for p in pxs])


def _reduce_mosaic(pxs: list[BandPixels], dtype: np.dtype) -> np.ndarray:
    out = np.zeros(pxs[0].data.shape, dtype)
    for p in pxs:  # later images win where they are valid
        out = np.where(p.valid, p.data, out).astype(dtype, copy=False)
    return out


def _reduce_extreme(which: str) -> Callable[[list[BandPixels], np.dtype], np.ndarray]:
    def reduce(pxs: list[BandPixels], dtype: np.dtype) -> np.ndarray:
        data, valid = _stack(pxs, dtype)
        masked = np.ma.masked_array(data, ~valid)
        return getattr(masked, which)(axis=0).filled(0).astype(dtype, copy=False)
    return reduce


def _reduce_nan(fn: Callable[..., np.ndarray]) -> Callable[[list[BandPixels], np.dtype], np.ndarray]:
    def reduce(pxs: list[BandPixels], dtype: np.dtype) -> np.ndarray:
        data, valid = _stack(pxs, np.float64)
        data[~valid] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-masked pixels
            return np.nan_to_num(fn(data, axis=0), nan=0.0)
    return reduce


REDUCERS = {"mosaic": _reduce_mosaic, "min": _reduce_extreme("min"),
            "max": _reduce_extreme("max"), "mean": _reduce_nan(np.nanmean),
            "median": _reduce_nan(np.nanmedian)}


def reduce_collection(images: list[Image], reducer: str, suffix: bool = False) -> Image:
    """Per-band reduction over valid pixels; a pixel is valid if any input is valid.

    Output names are the input names, or ``{band}_{reducer}`` with ``suffix``
    (``ImageCollection.reduce``; ``reduce.median`` etc. keep the names).
    """
    how = REDUCERS[reducer]
    bands = []
    for name, members in _members_by_band(images).items():
        dtype = np.dtype(np.float64) if reducer in ("mean", "median") else \
            np.result_type(*[m.dtype for m in members])

        def compute(grid: Grid, members=members, dtype=dtype) -> BandPixels:
            pxs = [m.pixels(grid) for m in members]
            return BandPixels(how(pxs, dtype), np.any([p.valid for p in pxs], axis=0),
                              np.any([p.footprint for p in pxs], axis=0))
        bands.append(Band(f"{name}_{reducer}" if suffix else name, dtype, compute))
    footprints = [i.footprint_wgs84 for i in images]
    footprint = None
    if footprints and all(f is not None for f in footprints):
        footprint = unary_union(footprints)
    return Image(bands, {}, footprint)


def to_bands(images: list[Image]) -> Image:
    """``ImageCollection.toBands``: bands named ``{system:index}_{band}``."""
    bands = []
    for position, image in enumerate(images):
        prefix = image.properties.get("system:index", str(position))
        bands += [b.renamed(f"{prefix}_{b.name}") for b in image.bands]
    return Image(bands)
