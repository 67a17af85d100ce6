"""STAC pixel source: the items of a STAC API search or a static catalog, read as (Cloud
Optimized) GeoTIFFs with rasterio, each item one image of a collection. Beam-free.

On the launcher, `stac_source(config, ...)` lists the items once (transforms/sources/stac_listing.py)
within the regions' lon/lat extent, keeps what reading needs of each (asset hrefs, time,
scalar properties, footprint, `raster:bands` scale / offset / nodata, `proj:code` /
`proj:epsg`, `proj:transform`, `proj:shape`) and opens the first item's assets to learn band
counts and types; no pixel is read. Bands are asset keys (`red`, `B04`; a multi-band asset
gives `<key>_1..n`, or `<key>:<n>` one of them).

On a worker, each patch requests every item whose footprint reaches it (the others are not
requested: transforms/sources/reach.py), one request per item: every band asset and the
quality asset read onto the patch grid with the raster reader's `read_onto_grid` (a window
read on the asset's own grid, else GDAL's warp), under `rasterio.Env` with GDAL's HTTP options
(transforms/sources/remote.py) and through URLs signed where they are opened. Per item, before
the images are combined (transforms/pixels/collections.py): nodata from `raster:bands` masks,
the quality mask (transforms/pixels/quality.py) masks, and `rescale` turns digital numbers into
physical values (`dn * scale + offset`, float32) with that item's own scale and offset (Sentinel-2
changed its offset in 2022, so a composite across the change is right only this way).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError

from pixelbeam.transforms.fetching.retry import FetchError, TransientError, classify_exception
from pixelbeam.transforms.fetching.sizing import RequestPart
from pixelbeam.transforms.patch import PatchSpec
from pixelbeam.transforms.pixels.collections import CollectionError, CollectionImage, plan_collection
from pixelbeam.transforms.pixels.quality import QualityMask
from pixelbeam.transforms.sources.base import PartResult, SourceError, SourceInfo
from pixelbeam.transforms.sources.handles import ThreadHandles
from pixelbeam.transforms.sources.raster import read_onto_grid, resampling_method
from pixelbeam.transforms.sources.reach import reaches
from pixelbeam.transforms.sources.remote import (Signer, SigningError, forget_remote_file, forget_remote_files,
                                                  hide_secrets, hide_secrets_in_logs, is_remote)
from pixelbeam.transforms.sources.stac_items import BandRef, StacItem, stac_items

log = logging.getLogger(__name__)
MAX_OPEN_PER_THREAD = 64  # dataset handles a fetch thread keeps open (least recently used closed first)


@dataclasses.dataclass(frozen=True)
class StacSource:
    """Listed items (time order) and how to read them; picklable, built on the launcher."""

    items: tuple[StacItem, ...]
    bands: tuple[BandRef, ...]
    dtypes: tuple[str, ...]  # per band, as read (before rescale)
    quality: Optional[QualityMask] = None
    rescale: bool = True
    resampling: str = "nearest"
    mode: str = "mosaic"
    reducer: Optional[str] = None
    flatten_by: str = "day"
    min_coverage: float = 0.0
    signer: Signer = Signer()
    gdal_options: tuple = ()  # ((name, value), ...)
    native: Optional[tuple] = None  # (crs, transform) of the first item's first band asset
    where: str = ""  # the listing, secrets hidden, for messages

    @property
    def rescaled(self) -> tuple[bool, ...]:
        """Per band: does rescale change it (some item has a scale or offset for it)?"""
        return tuple(self.rescale and any(item.scale_offset(ref) != (1.0, 0.0) for item in self.items)
                     for ref in self.bands)

    def describe(self) -> SourceInfo:
        resampling_method(self.resampling)
        dtypes = tuple("float32" if r else d for r, d in zip(self.rescaled, self.dtypes))
        images = [CollectionImage(i.item_id, i.time, i.properties, i.footprint) for i in self.items]
        try:
            plan = plan_collection(images, self.mode, self.reducer, self.flatten_by, self.min_coverage)
        except CollectionError as e:
            raise SourceError(str(e)) from None
        boxes = [i.bbox for i in self.items if i.bbox]
        footprint = ((min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                      max(b[3] for b in boxes)) if len(boxes) == len(self.items) else None)
        crs, transform = self.native or (None, None)
        return SourceInfo(band_names=tuple(b.name for b in self.bands),
                          dtypes=tuple(plan.output_dtype(d) for d in dtypes), crs=crs, transform=transform,
                          footprint_lonlat=footprint, collection=plan)

    def open(self, info: Optional[SourceInfo] = None) -> "StacReader":
        forget_remote_files()  # a new run asks the servers again (remote.py)
        return StacReader(self, info or self.describe())


class StacReader:
    """Reads items onto patch windows (module doc); safe to share between threads."""

    limits = None  # a COG window read has no server-side size limit

    def __init__(self, source: StacSource, info: SourceInfo):
        hide_secrets_in_logs()
        self.source, self.info = source, info
        self.resampling = resampling_method(source.resampling)
        self.env = dict(source.gdal_options)
        self.by_id = {item.item_id: item for item in source.items}
        self.rescaled = source.rescaled
        self.handles = ThreadHandles(self._open, max_open=MAX_OPEN_PER_THREAD)
        self._signed: dict[str, str] = {}  # href -> the URL last opened for it

    def _open(self, href: str):
        url = self._signed[href] = self.source.signer.sign(href)
        return rasterio.open(url)

    def fetch(self, spec: PatchSpec, part: RequestPart) -> PartResult:
        return self.fetch_item(spec, part, self.by_id[self.info.collection.images[part.image].image_id])

    def fetch_item(self, spec: PatchSpec, part: RequestPart, item: StacItem) -> PartResult:
        """The part's bands of one item, masked (nodata, quality) and rescaled; nothing is
        requested when the item's footprint does not reach the part."""
        h, w = part.height, part.width
        data = np.zeros((len(part.bands), h, w), dtype=self.info.dtype)
        if not reaches(item.footprint, spec, row_off=part.row_off, col_off=part.col_off, width=w, height=h):
            return PartResult(data=data, mask=np.zeros((h, w), dtype=bool), nbytes=0)
        mask = np.ones((h, w), dtype=bool)
        nbytes = 0
        with rasterio.Env(**self.env):
            for key, positions in _by_asset(self.source.bands, part.bands):
                refs = [self.source.bands[b] for b in positions]
                d, m = self._read(item, key, [r.index for r in refs], spec, part, self.resampling,
                                  item.nodata(refs))
                nbytes += d.nbytes
                for k, (b, ref) in enumerate(zip(positions, refs)):
                    data[part.bands.index(b)] = self._rescale(d[k], item, ref, b)
                mask &= m
            quality = self.source.quality
            if quality is not None:
                q, qm = self._read(item, quality.asset, [1], spec, part, Resampling.nearest, None)
                nbytes += q.nbytes
                mask &= qm & quality.keep(q[0])
        return PartResult(data=data, mask=mask, nbytes=nbytes)

    def _rescale(self, band: np.ndarray, item: StacItem, ref: BandRef, b: int) -> np.ndarray:
        if not self.rescaled[b]:
            return band
        scale, offset = item.scale_offset(ref)
        return band.astype(np.float32) * np.float32(scale) + np.float32(offset)

    def _read(self, item: StacItem, key: str, indexes, spec, part, resampling, nodata):
        href = item.asset(key).href
        try:
            ds = self.handles.get(href)
            return read_onto_grid(ds, indexes, spec, part, resampling, nodata=nodata)
        except (RasterioIOError, SigningError, OSError) as e:
            self.handles.evict(href)  # the next attempt reopens (and re-signs) it...
            forget_remote_file(self._signed.get(href, href))  # ...and GDAL asks the server again
            raise remote_read_error(e, f"item {item.item_id!r} asset {key!r}", href, self.source.signer) from None

    def close(self) -> None:
        self.handles.close()


def remote_read_error(exc: BaseException, what: str, href: str, signer: Signer) -> FetchError:
    """A read failure as a classified FetchError whose message holds no secret: an HTTP status
    or libcurl failure as retry.py classifies it; a remote read that failed without one (GDAL
    reports a failed tile read as 'IReadBlock failed') transient; a local one permanent."""
    error = classify_exception(exc)
    text = hide_secrets(f"{what} ({hide_secrets(href)}): {error.message}", signer.secrets)
    if isinstance(exc, SigningError):
        return TransientError(text, "sign")
    if error.cause == type(exc).__name__ and is_remote(href):
        return TransientError(text, "read")
    return type(error)(text, error.cause, error.retry_after_s, error.status)


def _by_asset(refs: tuple[BandRef, ...], bands: tuple[int, ...]) -> list[tuple[str, list[int]]]:
    """The part's band positions grouped by asset, in order of first use (one read per asset)."""
    groups: dict[str, list[int]] = {}
    for b in bands:
        groups.setdefault(refs[b].asset, []).append(b)
    return list(groups.items())


def stac_source(cfg, timeout_s: float = 60.0, bbox: Optional[tuple] = None,
                extent_of: Optional[Callable] = None) -> StacSource:
    """The STAC source of a `source:` config (duck-typed: pipeline/config/stac.py): lists the
    items within the search box and probes the first item's assets (module doc).

    `bbox` is the regions' own lon/lat box; `extent_of(info)` the box holding every pixel the
    job can plan on the grid resolved against `info` (None: before the source is known), which
    raises ValueError when the grid is the source's own (`native`): then one first item, found
    within `bbox`, tells the native grid, and the search uses the box it gives."""
    from pixelbeam.transforms.sources.stac_items import native_grid, probe_bands, quality_of, signer_of
    from pixelbeam.transforms.sources.stac_listing import StacQuery, list_items
    from pixelbeam.transforms.sources.remote import gdal_http_options
    import importlib.util
    missing = [m for m in ("pystac", "pystac_client", "cql2") if importlib.util.find_spec(m) is None]
    if missing:
        raise SourceError(f"source.kind: stac needs pystac, pystac-client and cql2 ({missing[0]} is missing); "
                          "pip install 'pixelbeam[stac]'")
    hide_secrets_in_logs()
    signer = signer_of(cfg.sign)
    signer.check()
    options = gdal_http_options(cfg.gdal, timeout_s)
    query = StacQuery(url=cfg.url, catalog=cfg.catalog, collections=tuple(cfg.collections), datetime=cfg.datetime,
                      query=cfg.query, filter=cfg.filter, max_items=cfg.max_items, limit=cfg.limit,
                      timeout_s=timeout_s)
    box = bbox
    if extent_of is not None:
        try:
            box = extent_of(None) or bbox
        except ValueError:  # a native grid: the first item tells it
            first = list_items(query, bbox, max_items=1)
            if first:
                box = extent_of(native_grid(first[0], cfg.bands[0], signer, options)) or bbox
    found = list_items(query, box)
    if not found:
        raise SourceError(f"source: the search of {query.where} found no item (collections "
                          f"{list(query.collections) or 'any'}, datetime {query.datetime or 'any'}, within lon/lat "
                          f"{_box(box)}); widen source.datetime, source.query / filter, or the regions")
    if cfg.max_items and len(found) >= cfg.max_items:
        log.warning("source.max_items: the search stopped at %d items; more may match", len(found))
    quality = quality_of(cfg.mask)
    items = stac_items(found, cfg.bands, quality.asset if quality else None, query.where)
    refs, dtypes = probe_bands(items[0], cfg.bands, quality, signer, options)
    native = native_grid(items[0], refs[0].asset, signer, options)
    return StacSource(items=items, bands=refs, dtypes=dtypes, quality=quality, rescale=cfg.rescale,
                      resampling=cfg.resampling, mode=cfg.mode, reducer=cfg.composite, flatten_by=cfg.flatten_by,
                      min_coverage=cfg.filter_coverage, signer=signer, gdal_options=tuple(sorted(options.items())),
                      native=(native.crs, native.transform), where=query.where)


def _box(box) -> str:
    return "anywhere" if not box else "(" + ", ".join(f"{v:.4f}" for v in box) + ")"


@dataclasses.dataclass(frozen=True)
class StacTableSource:
    """A point table's STAC source: each listed item (time order) is one image of `images`; a
    group's window is read item by item into the stacked layout of transforms/sources/table.py."""

    stac: StacSource
    images: tuple  # TableImage, one per item of `stac`, same order

    def base(self) -> SourceInfo:
        return dataclasses.replace(self.stac.describe(), collection=None)

    def describe(self) -> SourceInfo:
        from pixelbeam.transforms.sources.table import stacked_info
        return stacked_info(self.base(), self.images)

    def data_bands(self, info: SourceInfo) -> tuple[str, ...]:
        from pixelbeam.transforms.sources.table import data_bands
        return data_bands(info, self.images)

    def open(self, info: Optional[SourceInfo] = None) -> "StacTableReader":
        forget_remote_files()  # a new run asks the servers again (remote.py)
        return StacTableReader(self, info or self.describe())


class StacTableReader:
    limits = None

    def __init__(self, source: StacTableSource, info: SourceInfo):
        self.info, self.items = info, source.stac.items
        self.n_bands = len(info.band_names) // len(source.images)
        self.reader = StacReader(source.stac, source.base())

    def fetch(self, spec: PatchSpec, part: RequestPart) -> PartResult:
        from pixelbeam.transforms.sources.table import fetch_stacked
        return fetch_stacked(part, self.n_bands, self.info.dtype,
                             lambda t, p: self.reader.fetch_item(spec, p, self.items[t]))

    def close(self) -> None:
        self.reader.close()
