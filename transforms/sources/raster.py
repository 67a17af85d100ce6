"""Raster pixel source: any GDAL-readable raster (path, URL, /vsicurl/, /vsigs/) via rasterio.

A patch on the file's own grid is a plain window read (exact pixels); on any other grid the
file is warped onto the patch grid by GDAL (`WarpedVRT`) with the configured resampling. The
validity mask comes from GDAL's masks (nodata, alpha, internal mask band); pixels outside the
file are invalid. A list of files is a mosaic: a later file wins wherever it is valid. A
collection (`mode` set) reads each image as its own request and combines them in
transforms/pixels/collections.py (stack, mosaic, composite, flatten). Each
thread opens its own dataset handles once (GDAL handles are not thread-safe).
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Optional, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from pixelbeam.transforms.pixels.collections import CollectionError, CollectionImage, iso_time, plan_collection
from pixelbeam.transforms.planning.grid import bounds_to_lonlat
from pixelbeam.transforms.patch import PatchSpec
from pixelbeam.transforms.fetching.sizing import RequestPart
from pixelbeam.transforms.sources.base import PartResult, SourceError, SourceInfo
from pixelbeam.transforms.secrets import hide_secrets_in_logs
from pixelbeam.transforms.sources.handles import ThreadHandles

# Names users know from GDAL/rasterio and Earth Engine, mapped to rasterio's Resampling.
RESAMPLING_ALIASES = {"near": "nearest", "cubicspline": "cubic_spline", "med": "med"}
RESAMPLING_NAMES = tuple(sorted(set(Resampling.__members__) | set(RESAMPLING_ALIASES)))


def resampling_method(name: str) -> Resampling:
    name = RESAMPLING_ALIASES.get(name.lower(), name.lower())
    if name not in Resampling.__members__:
        raise SourceError(f"source.resampling: {name!r} is not known; use one of {', '.join(RESAMPLING_NAMES)}")
    return Resampling[name]


@dataclasses.dataclass(frozen=True)
class RasterSource:
    """Files in `uris` (one, or several mosaicked in order); `bands` 1-based indices or band
    descriptions (None: all bands); `resampling` a GDAL resampling name."""

    uris: tuple[str, ...]
    bands: Optional[tuple] = None
    resampling: str = "nearest"
    mask_nodata: bool = True  # pixels equal to the nodata value are masked (Descartes Labs' mask_nodata)
    mask_alpha: bool = True  # the alpha band masks (Descartes Labs' mask_alpha); both False: on the file's grid only
    mode: Optional[str] = None  # collection_mode; None: one file, or `uris` mosaicked in the reader
    times: tuple = ()  # per uri: an ISO time or None
    properties: tuple = ()  # per uri: ((key, value), ...)
    reducer: Optional[str] = None
    flatten_by: str = "day"
    min_coverage: float = 0.0  # filter_coverage

    def describe(self) -> SourceInfo:
        info = self._describe_files()
        if self.mode is None:
            return info
        times = self.times or (None,) * len(self.uris)
        props = self.properties or ((),) * len(self.uris)
        try:
            images = [CollectionImage(uri, iso_time(t) if t else "", tuple(p)) for uri, t, p in zip(self.uris, times, props)]
            plan = plan_collection(images, self.mode, self.reducer, self.flatten_by, self.min_coverage)
        except CollectionError as e:
            raise SourceError(str(e)) from None
        return dataclasses.replace(info, collection=plan, dtypes=tuple(plan.output_dtype(d) for d in info.dtypes))

    def _describe_files(self) -> SourceInfo:
        resampling_method(self.resampling)
        infos = [self._describe_one(uri) for uri in self.uris]
        first = infos[0]
        for uri, info in zip(self.uris[1:], infos[1:]):
            if info.band_names != first.band_names or info.dtypes != first.dtypes:
                raise SourceError(f"source.uri: {uri!r} has bands {info.band_names} {info.dtypes}, the first file "
                                  f"{first.band_names} {first.dtypes}; a collection needs the same bands in every file")
        boxes = np.array([i.footprint_lonlat for i in infos])
        footprint = (*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0))
        return dataclasses.replace(first, footprint_lonlat=tuple(float(v) for v in footprint))

    def _describe_one(self, uri: str) -> SourceInfo:
        try:
            with rasterio.open(uri) as ds:
                indexes = band_indexes(ds, self.bands, uri)
                names = tuple(ds.descriptions[i - 1] or f"B{i}" for i in indexes)
                crs = ds.crs.to_string() if ds.crs else None
                if crs is None:
                    raise SourceError(f"source.uri: {uri!r} has no CRS; georeference it (e.g. gdal_edit.py -a_srs)")
                return SourceInfo(
                    band_names=names, dtypes=tuple(ds.dtypes[i - 1] for i in indexes), crs=crs,
                    transform=tuple(ds.transform)[:6], footprint_lonlat=bounds_to_lonlat(crs, tuple(ds.bounds)))
        except RasterioIOError as e:
            raise SourceError(f"source.uri: cannot open {uri!r} ({_first_line(e)}); check the path or URL") from None

    def open(self, info: Optional[SourceInfo] = None) -> "RasterReader":
        return RasterReader(self, info or self.describe())


def band_indexes(ds, bands: Optional[Sequence], uri: str) -> tuple[int, ...]:
    """1-based band indexes for `bands` given as indexes or band descriptions."""
    if not bands:
        return tuple(range(1, ds.count + 1))
    out = []
    for band in bands:
        if isinstance(band, int) and not isinstance(band, bool):
            if not 1 <= band <= ds.count:
                raise SourceError(f"source.bands: band {band} does not exist in {uri!r}, which has bands 1..{ds.count}")
            out.append(band)
        elif isinstance(band, str) and band in ds.descriptions:
            out.append(ds.descriptions.index(band) + 1)
        else:
            known = [d for d in ds.descriptions if d] or [f"1..{ds.count} (no band descriptions)"]
            raise SourceError(f"source.bands: band {band!r} does not exist in {uri!r}; known bands: {', '.join(known)}")
    return tuple(out)


class RasterReader:
    """Reads patch windows from the source's files; safe to share between threads."""

    limits = None  # local reads need no splitting

    def __init__(self, source: RasterSource, info: SourceInfo):
        self.source, self.info = source, info
        self.resampling = resampling_method(source.resampling)
        hide_secrets_in_logs()  # GDAL's log lines name the URLs it reads (on every worker)
        self._handles = ThreadHandles(self._open)

    def _open(self, uri: str):
        ds = rasterio.open(uri)
        return ds, band_indexes(ds, self.source.bands, uri)

    def _dataset(self, uri: str):
        """This thread's handle on `uri` and the file's band indexes, opened on first use."""
        return self._handles.get(uri)

    def fetch(self, spec: PatchSpec, part: RequestPart) -> PartResult:
        data = mask = None
        nbytes = 0
        uris = self.source.uris if part.image is None else (self.info.collection.images[part.image].image_id,)
        for uri in uris:
            ds, file_indexes = self._dataset(uri)
            indexes = [file_indexes[b] for b in part.bands]
            d, m = read_onto_grid(ds, indexes, spec, part, self.resampling,
                                  ignore=ignored_masks(self.source.mask_nodata, self.source.mask_alpha))
            nbytes += d.nbytes
            if data is None:
                data, mask = d, m
            else:  # mosaic: a later file wins where it is valid
                data = np.where(m[None], d, data)
                mask = mask | m
        return PartResult(data=data.astype(self.info.dtype, copy=False), mask=mask, nbytes=nbytes)

    def close(self) -> None:
        self._handles.close()


def ignored_masks(mask_nodata: bool, mask_alpha: bool) -> frozenset:
    """The GDAL mask kinds ('nodata', 'alpha') that do not mask pixels."""
    return frozenset(k for k, used in (("nodata", mask_nodata), ("alpha", mask_alpha)) if not used)


def read_onto_grid(ds, indexes: Sequence[int], spec: PatchSpec, part: RequestPart,
                   resampling: Resampling, ignore: frozenset = frozenset(),
                   nodata: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """(data (C, h, w), mask (h, w)) of one part of a patch's fetch window, read from `ds`;
    `ignore` names GDAL mask kinds that do not mask (on the file's own grid only, checked
    when the job is planned); `nodata` a nodata value the file does not declare (e.g. a STAC
    asset's `raster:bands` nodata), masked as if it did."""
    if nodata is not None and ds.nodata is not None and float(ds.nodata) == float(nodata):
        nodata = None  # the file says so already
    a, b, c, d, e, f = spec.fetch_transform
    col, row = part.col_off, part.row_off  # the part's origin: Affine(...) * translation(col, row), without Affine
    part_transform = (a, b, a * col + b * row + c, d, e, d * col + e * row + f) if col or row else (a, b, c, d, e, f)
    offset = aligned_offset(ds, spec.crs, part_transform)
    if offset is not None:
        data, mask = _window_read(ds, indexes, Window(offset[1], offset[0], part.width, part.height), ignore)
        if nodata is not None:
            mask &= np.all(~np.isnan(data) if np.isnan(nodata) else data != nodata, axis=0)
        return data, mask
    extra = {"src_nodata": nodata, "nodata": nodata} if nodata is not None else {}
    with WarpedVRT(ds, crs=spec.crs, transform=Affine(*part_transform), width=part.width, height=part.height,
                   resampling=resampling, add_alpha=ds.nodata is None and nodata is None and not _has_mask(ds),
                   **extra) as vrt:
        if resampling == Resampling.nearest:
            data, masks = vrt.read(indexes), vrt.read_masks(indexes)
        else:  # one band at a time: a multi-band warp would treat nodata as unified across bands
            data = np.stack([vrt.read(i) for i in indexes])
            masks = np.stack([vrt.read_masks(i) for i in indexes])
        mask = np.all(masks > 0, axis=0)
    return data, mask


def aligned_offset(ds, crs: str, transform: Sequence[float], tol: float = 1e-6) -> Optional[tuple[int, int]]:
    """(row, col) of `transform`'s origin in `ds` pixels if the two grids coincide, else None;
    `transform` an Affine or its first six numbers (a, b, c, d, e, f)."""
    ta, tb, tc, td, te, tf = _grid_facts(ds, crs)
    if ta is None:  # another CRS
        return None
    a, b, c, d, e, f = tuple(transform)[:6]
    if abs(tb) > 0 or abs(td) > 0 or abs(b) > 0 or abs(d) > 0:
        return None
    if abs(ta - a) > tol * abs(ta) or abs(te - e) > tol * abs(te):
        return None
    col, row = (c - tc) / ta, (f - tf) / te
    if abs(col - round(col)) > tol or abs(row - round(row)) > tol:
        return None
    return int(round(row)), int(round(col))


_GRIDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # dataset -> {crs: its transform or Nones}


def _grid_facts(ds, crs: str) -> tuple:
    """The dataset's transform (a, b, c, d, e, f) if its CRS is `crs`, else six Nones: the CRS
    comparison (a PROJ call) made once per open dataset and CRS, not once per patch."""
    per_ds = _GRIDS.setdefault(ds, {})
    if crs not in per_ds:
        same = ds.crs is not None and ds.crs == rasterio.crs.CRS.from_user_input(crs)
        per_ds[crs] = tuple(ds.transform)[:6] if same else (None,) * 6
    return per_ds[crs]


def _has_mask(ds) -> bool:
    from rasterio.enums import MaskFlags
    return any(MaskFlags.all_valid not in flags for flags in ds.mask_flag_enums)


def _band_masks(ds, indexes, window: Window, ignore: frozenset) -> np.ndarray:
    """GDAL's per-band masks (0 = masked), a band's all 255 where its mask kind is ignored."""
    from rasterio.enums import MaskFlags
    masks = ds.read_masks(indexes, window=window)
    for k, i in enumerate(indexes):
        flags = ds.mask_flag_enums[i - 1]
        if ("nodata" in ignore and MaskFlags.nodata in flags) or ("alpha" in ignore and MaskFlags.alpha in flags):
            masks[k] = 255
    return masks


def _window_read(ds, indexes, window: Window, ignore: frozenset = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """A window read that may reach past the file's edges: outside pixels are nodata/0, masked."""
    h, w = int(window.height), int(window.width)
    dtype, fill, nodata = _read_facts(ds, tuple(indexes), ignore)
    row_off, col_off = int(window.row_off), int(window.col_off)
    r0, c0 = max(row_off, 0), max(col_off, 0)
    r1, c1 = min(row_off + h, ds.height), min(col_off + w, ds.width)
    if (r0, c0, r1, c1) == (row_off, col_off, row_off + h, col_off + w):  # inside the file: no padding
        data = ds.read(indexes, window=Window(c0, r0, w, h)).astype(dtype, copy=False)
        mask = (np.all(data != nodata, axis=0) if nodata is not None
                else np.all(_band_masks(ds, indexes, Window(c0, r0, w, h), ignore) > 0, axis=0))
        return data, mask
    data = np.full((len(indexes), h, w), fill, dtype=dtype)
    mask = np.zeros((h, w), dtype=bool)
    if r0 < r1 and c0 < c1:
        inner = Window(c0, r0, c1 - c0, r1 - r0)
        rows, cols = slice(r0 - row_off, r1 - row_off), slice(c0 - col_off, c1 - col_off)
        inside = ds.read(indexes, window=inner)
        data[:, rows, cols] = inside
        if nodata is not None:  # GDAL's nodata mask is `value != nodata`: computed here, not read again
            mask[rows, cols] = np.all(inside != nodata, axis=0)
        else:
            mask[rows, cols] = np.all(_band_masks(ds, indexes, inner, ignore) > 0, axis=0)
    return data, mask


_FACTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # dataset -> {(indexes, ignore): facts}


def _read_facts(ds, indexes: tuple[int, ...], ignore: frozenset):
    """(dtype of the read, fill value past the edges, nodata value of the mask or None), asked of
    GDAL once per open dataset and bands rather than once per patch."""
    per_ds = _FACTS.setdefault(ds, {})
    key = (indexes, ignore)
    if key not in per_ds:
        dtype = np.result_type(*[ds.dtypes[i - 1] for i in indexes])
        per_ds[key] = (dtype, ds.nodata if ds.nodata is not None else 0, _nodata_mask_value(ds, indexes, ignore))
    return per_ds[key]


def _nodata_mask_value(ds, indexes, ignore: frozenset):
    """The nodata value when every read band of an integer file is masked by exactly that nodata
    value (GDAL's nodata mask: valid where `value != nodata`, exact for integers), else None."""
    from rasterio.enums import MaskFlags
    if "nodata" in ignore or ds.nodata is None:
        return None
    dtypes = {ds.dtypes[i - 1] for i in indexes}
    if len(dtypes) != 1 or np.dtype(next(iter(dtypes))).kind not in "iu":
        return None
    info, nodata = np.iinfo(next(iter(dtypes))), float(ds.nodata)
    if not nodata.is_integer() or not info.min <= nodata <= info.max:
        return None
    if any(list(ds.mask_flag_enums[i - 1]) != [MaskFlags.nodata] for i in indexes):
        return None
    return int(nodata)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
