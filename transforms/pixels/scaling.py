"""Scaling and output data types with Descartes Labs' `scaling_parameters` semantics. Pure.

`resolve_scaling(bands, dtypes, scaling, data_type)` turns a user spec into one GDAL-style
scale per band (None: no scaling; `()`: the band's own min..max -> 0..255; a 4-tuple
`(in_min, in_max, out_min, out_max)`) and the output data type, exactly as DL decides them:

- `scaling` is None (no scaling), a mode for every band (`raw`, `auto`, `display`,
  `physical`), a list with one entry per band, or a dict keyed by band name with `default_`
  for the others. A band entry is None, a mode, `()`, `(in_min, in_max)` or
  `(in_min, in_max, out_min, out_max)`; a value may be a percentage string ("2%") of the
  default input range (`in_*`) or output range (`out_*`).
- The mode is the one named explicitly (`auto` and `display` combine to `display`; any other
  two modes are an error), else implied by the tuples (`()` auto, 2-tuple display, a float
  output bound physical, an output below 0 or above 255 raw), else taken from `data_type`.
  The data type is the one given, else from the mode: raw -> the bands' common type (DL's
  promotion table: Byte -> UInt16, Int16, ...; Float32 -> Float64), physical -> Float64,
  auto/display -> Byte; with neither, the smallest type holding the tuples' output ranges.
- Band properties as DL's catalog has them (`data_range`, `default_range`,
  `physical_range`) default to the band dtype's range (floats: 0..1, DL's convention);
  `band_ranges` overrides them per band.

`apply_scaling` applies the scales as GDAL does: `out = (v - in_min) * (out_max - out_min) /
(in_max - in_min) + out_min`, unclipped for float outputs; integer outputs are rounded to
nearest (halves up) and saturated to the type's range (GDALCopyWords). `()` uses the min and max of the
band's valid pixels in the patch (GDAL computes them over the requested window).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np

MODES = ("raw", "auto", "display", "physical")
DATA_TYPES = ("Byte", "UInt16", "Int16", "UInt32", "Int32", "Float32", "Float64")
# DL's upcasts: each type and the larger types it converts to without loss.
CASTS = {
    "Byte": ("UInt16", "Int16", "UInt32", "Int32", "Float32", "Float64"),
    "UInt16": ("UInt32", "Int32", "Float32", "Float64"),
    "Int16": ("Int32", "Float32", "Float64"),
    "UInt32": ("Float64",),
    "Int32": ("Float32", "Float64"),
    "Float32": ("Float64",),
    "Float64": (),
}
RANGES = {"Byte": [0, 255], "UInt16": [0, 65535], "Int16": [-32768, 32767], "UInt32": [0, 4294967295],
          "Int32": [-2147483648, 2147483647], "Float32": [0.0, 1.0], "Float64": [0.0, 1.0]}
NUMPY = {"Byte": "uint8", "UInt16": "uint16", "Int16": "int16", "UInt32": "uint32", "Int32": "int32",
         "Float32": "float32", "Float64": "float64"}
GDAL = {v: k for k, v in NUMPY.items()}


class ScalingError(ValueError):
    """A scaling spec that cannot be resolved; one line naming the band and the fix."""


@dataclasses.dataclass(frozen=True)
class Scaling:
    """Resolved scaling: one scale per band (None, () or a 4-tuple) and the output data type."""

    scales: Optional[tuple]
    data_type: str

    @property
    def dtype(self) -> str:
        return NUMPY[self.data_type]


def gdal_type(numpy_dtype: str) -> str:
    name = np.dtype(numpy_dtype).name
    if name not in GDAL:
        raise ScalingError(f"scaling: band dtype {name} has no Descartes Labs data type; use one of "
                           f"{', '.join(GDAL)}")
    return GDAL[name]


def data_type_name(data_type: str) -> str:
    """A DL data type from its name in any case ('byte', 'Float64') or a numpy name ('uint8')."""
    for t in DATA_TYPES:
        if data_type.lower() == t.lower():
            return t
    if data_type in GDAL:
        return GDAL[data_type]
    raise ScalingError(f"data_type: {data_type!r} is not a data type; use one of {', '.join(DATA_TYPES)}")


def common_data_type(types: Sequence[str]) -> Optional[str]:
    """The smallest DL type every type in `types` converts to (DL's table), or None."""
    common = types[0]
    for t in types[1:]:
        if t == common or common in CASTS[t]:
            continue
        if t in CASTS[common]:
            common = t
            continue
        common = next((c for c in CASTS[t] if c in CASTS[common]), None)
        if common is None:
            return None
    return common


@dataclasses.dataclass(frozen=True)
class _Band:
    """One band's parsed scale: `kind` none | mode | tuple; `mode` explicit or implied."""

    name: str
    dtype: str  # DL type
    kind: str
    value: Any
    mode: Optional[str]
    implied: bool
    data_range: tuple
    default_range: tuple
    physical_range: tuple

    def output_range(self):
        if self.kind == "none":
            return list(self.data_range)
        if self.kind == "mode":
            return {"raw": list(self.data_range), "physical": list(self.physical_range)}.get(self.mode, [0, 255])
        if len(self.value) == 4:
            return [None if _is_pct(v) else v for v in self.value[2:]]
        return [0, 255]

    def scale(self, mode: str, data_type: str):
        out_float = data_type.startswith("Float")
        if self.kind == "none":
            return None
        if self.kind == "mode":
            if self.mode == "raw":
                return None
            if self.mode == "auto":
                return ()
            if self.mode == "display":
                return (*self.default_range, 0, 255.99 if out_float else 255)
            return (*self.data_range, *self.physical_range)
        if not self.value:
            return ()
        if mode == "raw":
            irange, orange = RANGES[self.dtype], RANGES[data_type]
        elif mode == "physical":
            irange, orange = self.data_range, self.physical_range
        else:
            irange, orange = self.default_range, (0.0, 255.99)
        full = self.value if len(self.value) == 4 else (*self.value, *orange)
        in_float = self.dtype.startswith("Float")
        return tuple(_pct(v, r, f) for v, r, f in zip(full, (irange, irange, orange, orange),
                                                          (in_float, in_float, out_float, out_float)))


def _is_pct(v) -> bool:
    return isinstance(v, str)


def _pct(value, bounds, is_float):
    if isinstance(value, str):
        value = float(value[:-1]) * (bounds[1] - bounds[0]) / 100.0 + bounds[0]
    return value if is_float else int(value)


def _parse_band(name: str, dtype: str, value, ranges: Mapping) -> _Band:
    base = RANGES[dtype]
    r = dict(ranges.get(name) or {})
    data_range = tuple(r.get("data_range") or base)
    props = dict(data_range=data_range, default_range=tuple(r.get("default_range") or data_range),
                 physical_range=tuple(r.get("physical_range") or data_range))
    if value is None:
        return _Band(name, dtype, "none", None, None, True, **props)
    if isinstance(value, str):
        if value not in MODES:
            raise ScalingError(f"scaling: {value!r} for band {name!r} is not a mode; use {', '.join(MODES)}, "
                               "a tuple or null")
        return _Band(name, dtype, "mode", value, value, False, **props)
    if not isinstance(value, (list, tuple)) or len(value) not in (0, 2, 4):
        raise ScalingError(f"scaling: {value!r} for band {name!r}; give null, a mode, [], [in_min, in_max] "
                           "or [in_min, in_max, out_min, out_max]")
    for v in value:
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
            isinstance(v, str) and v.endswith("%") and _is_number(v[:-1]))
        if not ok:
            raise ScalingError(f"scaling: {v!r} in {list(value)} for band {name!r} is neither a number nor a "
                               "percentage such as '2%'")
    value = tuple(value)
    if len(value) == 0:
        mode = "auto"
    elif len(value) == 2:
        mode = "display"
    elif isinstance(value[2], float) or isinstance(value[3], float):
        mode = "physical"
    elif (not _is_pct(value[2]) and value[2] < 0) or (not _is_pct(value[3]) and value[3] > 255):
        mode = "raw"
    else:
        mode = None
    return _Band(name, dtype, "tuple", value, mode, True, **props)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _combined_mode(bands: Sequence[_Band], implied: bool) -> Optional[str]:
    mode = None
    for b in bands:
        if b.mode is None or b.implied != implied:
            continue
        if mode is None or b.mode == mode:
            mode = b.mode
        elif {b.mode, mode} <= {"auto", "display"}:
            mode = "display"
        elif implied:
            return None
        else:
            raise ScalingError(f"scaling: conflicting modes {mode!r} and {b.mode!r} (band {b.name!r}); "
                               "use one mode, or auto with display")
    return mode


def _type_for_range(lo, hi, is_float: bool) -> str:
    if is_float or (lo is not None and lo < RANGES["Int32"][0]) or (hi is not None and hi > RANGES["Int32"][1]):
        return "Float64"
    for t in DATA_TYPES:
        tlo, thi = RANGES[t]
        if (lo is None or lo >= tlo) and (hi is not None and hi <= thi):
            return t
    return "Float64"


def resolve_scaling(band_names: Sequence[str], dtypes: Sequence[str], scaling=None,
                    data_type: Optional[str] = None, band_ranges: Optional[Mapping] = None) -> Scaling:
    """DL's `scaling_parameters`: (scales per band, output data type). See the module doc."""
    types = [gdal_type(d) for d in dtypes]
    data_type = data_type_name(data_type) if data_type else None
    ranges = dict(band_ranges or {})
    unknown = sorted(set(ranges) - set(band_names))
    if unknown:
        raise ScalingError(f"band_ranges: {unknown[0]!r} is not a band; known bands: {', '.join(band_names)}")
    if scaling is None:
        common = data_type or common_data_type(types)
        if common is None:
            raise ScalingError(f"data_type: the bands' types {types} have no common type; give data_type")
        return Scaling(None, common)
    if isinstance(scaling, str):
        specs = [scaling] * len(band_names)
    elif isinstance(scaling, Mapping):
        extra = sorted(set(scaling) - set(band_names) - {"default_"})
        if extra:
            raise ScalingError(f"scaling: {extra[0]!r} is not a band; use band names or default_")
        specs = [scaling[b] if b in scaling else scaling.get("default_") for b in band_names]
    elif isinstance(scaling, (list, tuple)):
        if len(scaling) != len(band_names):
            raise ScalingError(f"scaling: {len(scaling)} entries for {len(band_names)} bands; give one per band "
                               "or a dict keyed by band")
        specs = list(scaling)
    else:
        raise ScalingError(f"scaling: {scaling!r}; give a mode, a list with one entry per band, or a dict")
    bands = [_parse_band(n, t, s, ranges) for n, t, s in zip(band_names, types, specs)]
    mode = _combined_mode(bands, implied=False)
    if mode is None and data_type is None:
        mode = _combined_mode(bands, implied=True)
        if mode is None:
            lows, highs = zip(*[b.output_range() for b in bands])
            lows = [v for v in lows if v is not None]
            highs = [v for v in highs if v is not None]
            if not lows and not highs:
                raise ScalingError("scaling: cannot tell the output data type or mode from percentages alone; "
                                   "give data_type or a mode")
            is_float = any(isinstance(v, float) for v in lows + highs)
            data_type = _type_for_range(min(lows) if lows else None, max(highs) if highs else None, is_float)
    if mode is None:
        mode = "display" if data_type == "Byte" else "physical" if data_type.startswith("Float") else "raw"
    elif data_type is None:
        if mode == "raw":
            data_type = common_data_type(types)
            if data_type is None:
                raise ScalingError(f"data_type: the bands' types {types} have no common type; give data_type")
        else:
            data_type = "Float64" if mode == "physical" else "Byte"
    return Scaling(tuple(b.scale(mode, data_type) for b in bands), data_type)


def apply_scaling(data: np.ndarray, mask: np.ndarray, scaling: Scaling) -> np.ndarray:
    """`data` (C, H, W) scaled band by band and converted to `scaling.dtype` (module doc);
    `mask` (H, W), True = valid, chooses the pixels `()` takes its min and max from."""
    out_dtype = np.dtype(scaling.dtype)
    scales = scaling.scales or (None,) * data.shape[0]
    out = np.empty(data.shape, dtype=out_dtype)
    for i, scale in enumerate(scales):
        band = data[i].astype(np.float64)
        if scale is not None:
            if len(scale) == 0:
                valid = band[mask] if mask.any() else band.ravel()
                lo, hi = (float(valid.min()), float(valid.max())) if valid.size else (0.0, 0.0)
                scale = (lo, hi, 0, 255)
            in_min, in_max, out_min, out_max = (float(v) for v in scale)
            if in_max == in_min:
                band = np.full_like(band, out_min)
            else:  # multiply before dividing: exact halves (50 * 255 / 100 = 127.5, not 127.4999...)
                band = (band - in_min) * (out_max - out_min) / (in_max - in_min) + out_min
        out[i] = _convert(band, out_dtype)
    return out


def _convert(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """GDAL's conversion of float64 values: floats as is, integers rounded and saturated."""
    if dtype.kind == "f":
        return values.astype(dtype)
    info = np.iinfo(dtype)
    with np.errstate(invalid="ignore"):
        return np.clip(np.floor(values + 0.5), info.min, info.max).astype(dtype)
