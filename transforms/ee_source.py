"""Earth Engine pixel source: `getPixels` on an image asset, `computePixels` on a computed image.

Requests carry the patch's PixelGrid and ask for NPY (a structured array, one field per band).
Earth Engine returns masked pixels as 0, so unless `mask: none` the request adds one uint8 band,
`pixelbeam_valid`, that is 1 where every requested band is valid; with `mask: none` an asset is
read with `getPixels` (no computation) and every pixel counts as valid.

A collection with `collection_mode` (stack, mosaic, composite, flatten) is listed once when the
job is planned: one 1x1 px computePixels of the filtered collection's `toBands()` whose bands
name each image (`<system:index>_...`) and carry its `system:time_start` as a constant band.
Each patch then requests every listed image on its own (`<collection>/<system:index>`, one
request of C x H x W per image, which fits the request limits as a single image does, where a
`toBands()` stack of T images would hit the 1024-band and 48 MiB caps), and the images are
combined by transforms/collections.py exactly as for raster files. Without `collection_mode`,
`composite` is reduced by Earth Engine (one request per patch). The `ee` client is
initialized once per worker process, with its own retries off (pixelbeam's request runner is
the only one deciding) and its HTTP deadline set to `timeout_s`.
"""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import threading
import urllib.parse
from typing import Optional

import numpy as np

from transforms.collections import CollectionError, CollectionImage, iso_time, plan_collection
from transforms.patch import PatchSpec
from transforms.resampling import ee_resampling
from transforms.retry import PermanentError
from transforms.sizing import EE_MAX_BANDS, EE_MAX_BYTES, RequestLimits, RequestPart
from transforms.sources import PartResult, SourceError, SourceInfo

VALID_BAND = "pixelbeam_valid"
TIME_BAND = "pixelbeam_time"
EE_SCOPES = ("https://www.googleapis.com/auth/earthengine", "https://www.googleapis.com/auth/cloud-platform")
FILTER_OPS = {"eq": "eq", "neq": "neq", "lt": "lt", "lte": "lte", "gt": "gt", "gte": "gte"}

_init_lock = threading.Lock()
_initialized_for: Optional[tuple] = None


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_credentials(credentials: str, url: str):
    """`default` (application default credentials), `anonymous` (a loopback url only, e.g. the
    emulator), or the path of a service-account key file."""
    if credentials == "anonymous":
        if not is_loopback(url):
            raise SourceError(f"source.credentials: anonymous is only allowed for a loopback url (got {url!r}); "
                              "use default credentials or a service-account key file")
        import google.auth.credentials
        return google.auth.credentials.AnonymousCredentials()
    if credentials == "default":
        import google.auth
        try:
            creds, _ = google.auth.default(scopes=list(EE_SCOPES))
        except google.auth.exceptions.DefaultCredentialsError:
            raise SourceError("source.credentials: no Google application default credentials; run "
                              "'gcloud auth application-default login' or give a service-account key file") from None
        return creds
    from google.oauth2 import service_account
    try:
        return service_account.Credentials.from_service_account_file(credentials, scopes=list(EE_SCOPES))
    except (OSError, ValueError) as e:
        raise SourceError(f"source.credentials: cannot read the service-account key file ({type(e).__name__}); "
                          "give a readable JSON key, default, or anonymous for a local emulator") from None


def initialize_earth_engine(url: str, project: Optional[str], credentials: str, timeout_s: float) -> None:
    """Initialize the `ee` client once per process for (url, project, credentials)."""
    global _initialized_for
    key = (url, project, credentials, timeout_s)
    with _init_lock:
        if _initialized_for == key:
            return
        import ee
        creds = load_credentials(credentials, url)
        if is_loopback(url):
            _initialize_offline(ee, creds, url, project)
        else:
            ee.Initialize(credentials=creds, url=url, project=project)
        ee.data.setMaxRetries(0)
        ee.data.setDeadline(int(timeout_s * 1000))
        _widen_connection_pool(ee)
        _initialized_for = key


def _widen_connection_pool(ee, connections: int = 128) -> None:
    """Keep a connection per fetch thread: `requests` keeps 10 per host by default, so with
    40 requests in flight 30 would open a new TLS connection each time."""
    from requests.adapters import HTTPAdapter
    session = ee.data._get_state().requests_session  # the session every ee call goes through
    for prefix in ("https://", "http://"):
        session.mount(prefix, HTTPAdapter(pool_connections=4, pool_maxsize=connections))


def _initialize_offline(ee, creds, url: str, project: Optional[str]) -> None:
    """ee.Initialize against a local server: skip the client's download of the public data
    catalog (used only to warn about deprecated assets), which needs the internet."""
    import ee.deprecation
    fetch = ee.deprecation._FetchDataCatalogStac
    ee.deprecation._FetchDataCatalogStac = lambda: {}
    try:
        ee.Initialize(credentials=creds, url=url, project=project or "pixelbeam-local")
    finally:
        ee.deprecation._FetchDataCatalogStac = fetch


@dataclasses.dataclass(frozen=True)
class EarthEngineSource:
    """An Earth Engine image: `asset`, or `collection` filtered and composited."""

    asset: Optional[str] = None
    collection: Optional[str] = None
    start: Optional[str] = None
    end: Optional[str] = None
    filters: tuple = ()  # (property, op, value)
    composite: Optional[str] = None
    bands: tuple[str, ...] = ()
    mask: str = "source"
    project: Optional[str] = None
    url: str = "https://earthengine-highvolume.googleapis.com"
    credentials: str = "default"
    timeout_s: float = 120.0
    resampling: Optional[str] = None  # ee.Image.resample mode: None (nearest), bilinear, bicubic
    mode: Optional[str] = None  # collection_mode: each image requested, combined locally
    flatten_by: str = "day"
    min_coverage: float = 0.0  # filter_coverage

    @property
    def uses_get_pixels(self) -> bool:
        return bool(self.asset) and self.mask == "none" and not self.resampling

    def filtered_collection(self):
        import ee
        coll = ee.ImageCollection(self.collection)
        if self.start or self.end:
            coll = coll.filterDate(self.start or "1970-01-01", self.end or "2100-01-01")
        for prop, op, value in self.filters:
            coll = coll.filter(getattr(ee.Filter, FILTER_OPS[op])(prop, value))
        return coll

    def image(self, image_id: Optional[str] = None):
        """The ee.Image to request (data bands only): the asset, one image of a collection
        (`image_id`), or the composite. Needs an initialized client."""
        import ee
        if self.asset or image_id:
            img = ee.Image(image_id or self.asset)
            img = img.resample(self.resampling) if self.resampling else img
        else:
            coll = self.filtered_collection()
            if self.resampling:  # resample each image: a composite has no native projection to interpolate in
                coll = coll.map(lambda i, mode=self.resampling: ee.Image(i).resample(mode))
            img = getattr(coll, self.composite)()
        return img.select(list(self.bands)) if self.bands else img

    def list_images(self) -> list[CollectionImage]:
        """The filtered collection's images (id, time) from one 1x1 px request (module doc)."""
        import ee
        first = self.bands[0] if self.bands else 0
        coll = self.filtered_collection().map(lambda i: ee.Image(i).select([first]).addBands(
            ee.Image.constant(ee.Image(i).get("system:time_start")).toDouble().rename([TIME_BAND])))
        grid = PatchSpec("list", "list", "EPSG:4326", (1e-4, 0.0, 0.0, 0.0, -1e-4, 0.0), 1, 1).pixel_grid()
        fields = np.load(io.BytesIO(ee.data.computePixels({"expression": coll.toBands(), "fileFormat": "NPY",
                                                            "grid": grid})), allow_pickle=False)
        suffix = f"_{TIME_BAND}"
        return [CollectionImage(f"{self.collection}/{name[:-len(suffix)]}", iso_time(float(fields[name].ravel()[0])))
                for name in fields.dtype.names if name.endswith(suffix)]

    def describe(self) -> SourceInfo:
        """Band names and dtypes, learnt from a 1x1 px request (Earth Engine's NPY header)."""
        try:
            initialize_earth_engine(self.url, self.project, self.credentials, self.timeout_s)
        except SourceError:
            raise
        except Exception as e:  # e.g. a token that cannot be refreshed, an unreachable url
            raise SourceError(f"source: cannot initialize Earth Engine at {self.url} ({type(e).__name__}: "
                              f"{_first_line(e)}); check url, project and credentials") from None
        plan = None
        if self.mode:
            try:
                images = self.list_images()
                plan = plan_collection(images, self.mode, self.composite, self.flatten_by, self.min_coverage)
            except CollectionError as e:
                raise SourceError(str(e)) from None
            except Exception as e:
                from transforms.retry import classify_exception
                raise SourceError(f"source: Earth Engine could not list collection {self.collection!r} "
                                  f"({classify_exception(e)}); check the id, dates and filters") from None
        reader = EarthEngineReader(self, None, plan.images[0].image_id if plan else None)
        probe = PatchSpec("probe", "probe", "EPSG:4326", (1e-4, 0.0, 0.0, 0.0, -1e-4, 0.0), 1, 1)
        try:
            fields = reader.request_structured(probe, None)
        except Exception as e:
            from transforms.retry import classify_exception
            err = classify_exception(e)
            what = f"asset {self.asset!r}" if self.asset else f"collection {self.collection!r}"
            raise SourceError(f"source: Earth Engine refused {what} ({err}); check the id, bands and credentials") from None
        names = tuple(n for n in fields.dtype.names if n != VALID_BAND)
        dtypes = tuple(fields.dtype[n].name for n in names)
        data_bytes = max(1, min(np.dtype(d).itemsize for d in dtypes))
        # each request also carries the 1-byte valid band: keep data bytes within the share left
        max_bytes = EE_MAX_BYTES if self.mask == "none" else EE_MAX_BYTES * data_bytes // (data_bytes + 1)
        return SourceInfo(band_names=names, dtypes=tuple(plan.output_dtype(d) for d in dtypes) if plan else dtypes,
                          limits=RequestLimits(max_bytes=max_bytes, max_bands=EE_MAX_BANDS - 1), collection=plan)

    def open(self, info: Optional[SourceInfo] = None) -> "EarthEngineReader":
        """A reader for a worker; `info` from the launcher's describe() saves a probe request."""
        initialize_earth_engine(self.url, self.project, self.credentials, self.timeout_s)
        return EarthEngineReader(self, info or self.describe())


def valid_band(ee, img, band_names):
    """A uint8 band, 1 where every band in `band_names` is valid, else 0: a constant masked by
    each band's mask in turn, then unmasked to 0 (only ops every Earth Engine server has)."""
    valid = ee.Image.constant(1).toByte()
    for name in band_names:
        valid = valid.updateMask(img.select([name]).mask())
    return valid.unmask(0, False).rename([VALID_BAND])


def part_pixel_grid(spec: PatchSpec, part: Optional[RequestPart]) -> dict:
    """The PixelGrid of one request: the patch's fetch window, or a sub-window of it."""
    grid = spec.pixel_grid()
    if part is None:
        return grid
    t = grid["affineTransform"]
    t = {**t, "translateX": t["translateX"] + part.col_off * t["scaleX"] + part.row_off * t["shearX"],
         "translateY": t["translateY"] + part.col_off * t["shearY"] + part.row_off * t["scaleY"]}
    return {**grid, "affineTransform": t, "dimensions": {"width": part.width, "height": part.height}}


class EarthEngineReader:
    """Fetches patch requests from Earth Engine; one per worker process, shared by threads."""

    def __init__(self, source: EarthEngineSource, info: Optional[SourceInfo], image_id: Optional[str] = None):
        import ee
        self.ee, self.source, self.info = ee, source, info
        self.limits = info.limits if info else None
        plan = info.collection if info else None
        image_id = image_id or (plan.images[0].image_id if plan else None)
        self.image = self._with_valid_band(source.image(image_id))
        self.images = [self._with_valid_band(source.image(im.image_id)) for im in plan.images] if plan else []

    def _with_valid_band(self, img):
        if self.source.mask != "none" and self.info is not None:  # (the describe probe needs data bands only)
            img = img.addBands(valid_band(self.ee, img, self.info.band_names))
        return img

    def request_structured(self, spec: PatchSpec, part: Optional[RequestPart]) -> np.ndarray:
        """The raw NPY structured array (H, W) of one request."""
        band_ids = None
        if part is not None:
            band_ids = [self.info.band_names[b] for b in part.bands]
            if self.source.mask != "none":
                band_ids.append(VALID_BAND)
        params = {"fileFormat": "NPY", "grid": part_pixel_grid(spec, part)}
        if band_ids:
            params["bandIds"] = band_ids
        if self.source.uses_get_pixels:
            payload = self.ee.data.getPixels({"assetId": self.source.asset, **params})
        else:
            image = self.image if part is None or part.image is None else self.images[part.image]
            payload = self.ee.data.computePixels({"expression": image, **params})
        try:
            return np.load(io.BytesIO(payload), allow_pickle=False)
        except Exception as e:  # an answer that is not a whole NPY: permanent (the server sent it so)
            raise PermanentError(f"undecodable NPY answer ({len(payload)} bytes): {e}", cause="decode") from e

    def fetch(self, spec: PatchSpec, part: RequestPart) -> PartResult:
        fields = self.request_structured(spec, part)
        names = [self.info.band_names[b] for b in part.bands]
        data = np.empty((len(names),) + fields.shape, dtype=self.info.dtype)
        for i, name in enumerate(names):
            data[i] = fields[name]
        if self.source.mask != "none":
            mask = fields[VALID_BAND] > 0
        else:
            mask = np.ones(fields.shape, dtype=bool)
        return PartResult(data=data, mask=mask, nbytes=fields.nbytes)

    def close(self) -> None:
        pass


def _first_line(e: Exception, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:limit]


def earthengine_source(cfg, timeout_s: float) -> EarthEngineSource:
    """An EarthEngineSource from the validated `source:` config section."""
    return EarthEngineSource(
        asset=cfg.asset, collection=cfg.collection, start=cfg.start, end=cfg.end,
        filters=tuple((f.property, f.op, f.value) for f in cfg.filters), composite=cfg.composite,
        bands=tuple(cfg.bands), mask=cfg.mask or "source", project=cfg.project, url=cfg.url,
        credentials=cfg.credentials, timeout_s=timeout_s, resampling=ee_resampling(cfg.resampling),
        mode=cfg.collection_mode, flatten_by=cfg.flatten_by, min_coverage=cfg.filter_coverage)
