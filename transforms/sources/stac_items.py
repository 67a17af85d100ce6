"""STAC items as a job keeps them, and the launcher's checks of them. Beam-free.

`stac_items(dicts, bands, quality_asset)` keeps of each listed item what reading needs: its
id, time (`datetime`, else `start_datetime`), scalar properties, footprint (WKB, lon/lat)
and bbox, and for each asset used its href (absolute), `raster:bands` (scale, offset, nodata
per band), `proj:code` / `proj:epsg`, `proj:transform` and `proj:shape` (asset level, else
item level). An item without a named asset is refused with one line naming `source.bands`
(or `source.mask.asset`). `probe_bands` opens the first item's assets (headers only) for band
counts and types; `native_grid` is an asset's grid from `proj:*`, or from its header.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from typing import Optional, Sequence

from pixelbeam.transforms.pixels.collections import CollectionError, iso_time
from pixelbeam.transforms.pixels.quality import QualityMask
from pixelbeam.transforms.sources.base import SourceError, SourceInfo
from pixelbeam.transforms.sources.remote import Secret, Signer, hide_secrets

SCALAR = (str, int, float, bool)


@dataclasses.dataclass(frozen=True)
class BandRef:
    """An output band: `name`, read from band `index` (1-based) of asset `asset`."""

    name: str
    asset: str
    index: int = 1


@dataclasses.dataclass(frozen=True)
class StacAsset:
    href: str
    raster_bands: tuple = ()  # per band of the file: (scale, offset, nodata)
    crs: Optional[str] = None
    transform: Optional[tuple] = None  # proj:transform, 6 numbers
    shape: Optional[tuple] = None  # proj:shape, (rows, cols)


@dataclasses.dataclass(frozen=True)
class StacItem:
    item_id: str
    time: str  # iso_time
    properties: tuple = ()  # ((key, scalar), ...)
    footprint: Optional[bytes] = None  # WKB, lon/lat
    bbox: Optional[tuple] = None  # lon/lat
    assets: tuple = ()  # ((key, StacAsset), ...): the assets a job reads
    collection: Optional[str] = None

    def asset(self, key: str) -> StacAsset:
        return dict(self.assets)[key]

    def scale_offset(self, ref: BandRef) -> tuple[float, float]:
        meta = self.asset(ref.asset).raster_bands
        if len(meta) >= ref.index:
            scale, offset, _ = meta[ref.index - 1]
            return float(scale), float(offset)
        return 1.0, 0.0

    def nodata(self, refs: Sequence[BandRef]) -> Optional[float]:
        """The `raster:bands` nodata the bands share (None when it is not given or differs)."""
        values = set()
        for ref in refs:
            meta = self.asset(ref.asset).raster_bands
            values.add(meta[ref.index - 1][2] if len(meta) >= ref.index else None)
        return values.pop() if len(values) == 1 else None


def parse_band(spec: str, keys) -> tuple[str, Optional[int]]:
    """(asset key, band index or None for every band) of a `source.bands` entry."""
    if spec in keys:
        return spec, None
    key, _, index = spec.rpartition(":")
    if key in keys and index.isdigit() and int(index) >= 1:
        return key, int(index)
    return spec, None


def stac_items(found: Sequence[dict], bands: Sequence[str], quality_asset: Optional[str],
               where: str = "") -> tuple[StacItem, ...]:
    """The listed items (dicts) as StacItems, in time order (listing order breaking ties)."""
    keys = [parse_band(b, _asset_keys(found[0]))[0] for b in bands]
    needed = list(dict.fromkeys(keys + ([quality_asset] if quality_asset else [])))
    for key in needed:
        missing = [i for i in found if key not in (i.get("assets") or {})]
        if missing:
            field = "source.mask.asset" if key == quality_asset and key not in keys else "source.bands"
            example = missing[0]
            raise SourceError(f"{field}: {len(missing)} of {len(found)} items have no asset {key!r} (e.g. item "
                              f"{example.get('id')!r}, whose assets are {', '.join(sorted(_asset_keys(example)))}); "
                              "use asset keys of the collection")
    ids = [i.get("id") for i in found]
    duplicated = {x for x in ids if ids.count(x) > 1}
    items = [_item(d, needed, duplicated) for d in found]
    return tuple(sorted(items, key=lambda i: i.time))


def _item(doc: dict, keys: Sequence[str], duplicated: set) -> StacItem:
    import shapely
    from shapely.geometry import shape
    props = doc.get("properties") or {}
    item_id = str(doc.get("id"))
    when = props.get("datetime") or props.get("start_datetime")
    if not when:
        raise SourceError(f"source: item {item_id!r} has neither datetime nor start_datetime; a collection image needs a time")
    try:
        time = iso_time(when)
    except CollectionError as e:
        raise SourceError(f"source: item {item_id!r}: datetime {e}") from None
    geometry = doc.get("geometry")
    footprint = shape(geometry).wkb if geometry else None
    raw = doc.get("bbox") or ()
    if len(raw) in (4, 6):  # 3D: minx, miny, minz, maxx, maxy, maxz
        bbox = tuple(float(raw[i]) for i in ((0, 1, 2, 3) if len(raw) == 4 else (0, 1, 3, 4)))
    else:
        bbox = tuple(float(v) for v in shapely.bounds(shape(geometry))) if geometry else None
    base = next((link.get("href") for link in doc.get("links") or () if link.get("rel") == "self"), None)
    assets = tuple((key, _asset(doc["assets"][key], props, base)) for key in keys)
    collection = doc.get("collection")
    return StacItem(item_id=f"{collection}/{item_id}" if item_id in duplicated and collection else item_id,
                    time=time, properties=tuple(sorted((k, v) for k, v in props.items() if isinstance(v, SCALAR))),
                    footprint=footprint, bbox=bbox, assets=assets, collection=collection)


def _asset(asset: dict, props: dict, base: Optional[str]) -> StacAsset:
    href = asset.get("href") or ""
    if base and "://" not in href and not os.path.isabs(href) and not href.startswith("/vsi"):
        href = urllib.parse.urljoin(base, href) if "://" in base else os.path.normpath(
            os.path.join(os.path.dirname(base), href))
    meta = tuple((float(b.get("scale", 1.0) if b.get("scale") is not None else 1.0),
                  float(b.get("offset", 0.0) if b.get("offset") is not None else 0.0),
                  None if b.get("nodata") is None else float(b["nodata"])) for b in asset.get("raster:bands") or ())
    code = asset.get("proj:code") or props.get("proj:code")
    epsg = asset.get("proj:epsg", props.get("proj:epsg"))
    crs = code or (f"EPSG:{int(epsg)}" if epsg else None)
    transform = asset.get("proj:transform") or props.get("proj:transform")
    shape = asset.get("proj:shape") or props.get("proj:shape")
    return StacAsset(href=href, raster_bands=meta, crs=crs,
                     transform=tuple(float(v) for v in transform[:6]) if transform and len(transform) >= 6 else None,
                     shape=tuple(int(v) for v in shape) if shape else None)


def _asset_keys(doc: dict):
    return list((doc.get("assets") or {}).keys())


def probe_bands(item: StacItem, bands: Sequence[str], quality: Optional[QualityMask], signer: Signer,
                options: dict) -> tuple[tuple[BandRef, ...], tuple[str, ...]]:
    """The output bands and their types, from the headers of `item`'s assets."""
    import rasterio
    keys = [k for k, _ in item.assets]
    headers: dict = {}

    def header(key: str, field: str):
        if key not in headers:
            href = item.asset(key).href
            try:
                with rasterio.Env(**options), rasterio.open(signer.sign(href)) as ds:
                    headers[key] = (ds.count, ds.dtypes)
            except Exception as e:  # noqa: BLE001 - RasterioIOError, a signing service down
                detail = hide_secrets(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__,
                                      signer.secrets)
                raise SourceError(f"{field}: cannot open asset {key!r} of item {item.item_id!r} "
                                  f"({hide_secrets(href)}): {detail}; check the asset, the signing (source.sign) "
                                  "and the network") from None
        return headers[key]

    refs, dtypes = [], []
    for spec in bands:
        key, index = parse_band(spec, keys)
        count, types = header(key, "source.bands")
        if index is not None and index > count:
            raise SourceError(f"source.bands: {spec!r}: asset {key!r} has bands 1..{count}")
        for i in ([index] if index else range(1, count + 1)):
            refs.append(BandRef(name=key if count == 1 else f"{key}_{i}", asset=key, index=i))
            dtypes.append(types[i - 1])
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise SourceError(f"source.bands: a band is named twice ({', '.join(names)}); list each once")
    if quality is not None:
        _, types = header(quality.asset, "source.mask.asset")
        if quality.bits is not None and not types[0].startswith(("uint", "int")):
            raise SourceError(f"source.mask.bits: asset {quality.asset!r} is {types[0]}; bits need an integer band")
    return tuple(refs), tuple(dtypes)


def native_grid(item, key: str, signer: Signer, options: dict) -> SourceInfo:
    """The grid of `item`'s asset `key` (an item dict or a StacItem): `proj:*`, else its header."""
    if isinstance(item, dict):
        parsed = parse_band(key, _asset_keys(item))[0]
        asset = _asset((item.get("assets") or {}).get(parsed) or {"href": ""}, item.get("properties") or {}, None)
    else:
        asset = item.asset(key)
    crs, transform = asset.crs, asset.transform
    if not (crs and transform) and asset.href:
        import rasterio
        try:
            with rasterio.Env(**options), rasterio.open(signer.sign(asset.href)) as ds:
                crs = ds.crs.to_string() if ds.crs else None
                transform = tuple(ds.transform)[:6]
        except Exception:  # noqa: BLE001 - the probe of the bands says why, with context
            crs, transform = None, None
    return SourceInfo(band_names=(), dtypes=(), crs=crs, transform=transform)


def signer_of(sign) -> Signer:
    """The Signer of `source.sign`: None / "none", "planetary_computer", or {query | query_env | hook}."""
    if sign is None or sign == "none":
        return Signer()
    if isinstance(sign, str):
        return Signer(kind=sign)
    if getattr(sign, "hook", None):
        return Signer(kind="hook", hook=sign.hook)
    if getattr(sign, "query_env", None):
        value = os.environ.get(sign.query_env)
        if not value:
            raise SourceError(f"source.sign.query_env: the environment variable {sign.query_env} is not set; "
                              "export it (the SAS token or signed query string)")
        return Signer(kind="query", query=Secret(value))
    query = sign.query.get_secret_value() if hasattr(sign.query, "get_secret_value") else sign.query
    if set(query) == {"*"}:  # a config read back from dataset.json, where the token is not kept
        raise SourceError("source.sign.query: the token is not kept in dataset.json; give it again in the config, "
                          "or as sign.query_env (an environment variable)")
    return Signer(kind="query", query=Secret(query))


def quality_of(mask) -> Optional[QualityMask]:
    if mask is None:
        return None
    t = (lambda v: tuple(int(x) for x in v) if v is not None else None)
    return QualityMask(asset=mask.asset, invalid=t(mask.invalid), valid=t(mask.valid), bits=t(mask.bits))
