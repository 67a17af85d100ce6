"""Earth Engine pixel source: `getPixels` on an image asset, `computePixels` on a computed image.

Requests carry the patch's PixelGrid and ask for NPY (a structured array, one field per band).
Earth Engine returns masked pixels as 0, so unless `mask: none` the request adds one uint8 band,
`pixelbeam_valid`, that is 1 where every requested band is valid; with `mask: none` an asset is
read with `getPixels` (no computation; `bandIds` are the configured bands) and every pixel
counts as valid.

The image is an asset, a collection filtered and reduced, or any computed image given as an
expression (transforms/sources/ee_expression.py: a Python function, a serialized JSON, or an
`ee.Image` passed to the API); bands and dtypes come from a 1x1 px probe of it. A collection
(an asset id, or an expression returning an `ee.ImageCollection`) with `collection_mode`
(stack, mosaic, composite, flatten) is listed once when the job is planned: one `value:compute`
(what `getInfo()` sends) of the filtered collection's size and `aggregate_array` of
`system:index`, `system:time_start` and, for `flatten_by` a property, that property. With
`bounds` (the job's lon/lat extent) the collection is first `filterBounds`-ed, so only images
that can touch a patch are listed. Each patch then requests every listed image on its own
(`<collection>/<system:index>` for an asset collection; for a computed collection the image
whose `system:index` it is, `filter(eq('system:index', i)).first()`; one request of C x H x W
per image, which fits the request limits as a single image does, where a `toBands()` stack of
T images would hit the 1024-band and 48 MiB caps), and the images are combined by
transforms/pixels/collections.py exactly as for raster files. Without `collection_mode`,
`composite` is reduced by Earth Engine (one request per patch).

Each request expression is serialized once per worker process (the reader's), its request
body encoded once to bytes but for the grid and band ids, and posted through the lean REST
transport (transforms/sources/ee_rest.py: google-auth's AuthorizedHttp over a urllib3 pool,
with the credentials, url and headers `ee` was initialized with); the answer's NPY is decoded
as a view of the received bytes. The `ee` client is initialized once per worker process, with
its own retries off (pixelbeam's request runner is the only one deciding) and its HTTP
deadline set to `timeout_s` (the REST transport's too); the launcher's listing and band probe
are retried by `call_with_retries`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from typing import Optional

import numpy as np

from pixelbeam.transforms.pixels.collections import CollectionError, CollectionImage, iso_time, plan_collection
from pixelbeam.transforms.patch import PatchSpec
from pixelbeam.transforms.pixels.resampling import ee_resampling
from pixelbeam.transforms.fetching.retry import PermanentError, RetryPolicy, call_with_retries, classify_exception
from pixelbeam.transforms.fetching.sizing import EE_MAX_BANDS, EE_MAX_BYTES, RequestLimits, RequestPart
from pixelbeam.transforms.sources import ee_expression
from pixelbeam.transforms.sources.base import PartResult, SourceError, SourceInfo
from pixelbeam.transforms.sources.ee_client import (EE_SCOPES, initialize_earth_engine, is_loopback,  # noqa: F401
                                                    load_credentials, rest)

VALID_BAND = "pixelbeam_valid"
NPY_MAX_HEADER = 1 << 20  # bytes of an NPY header (a dtype of up to 1,024 fields; no pickle either way)
LAUNCH_POLICY = RetryPolicy(max_attempts=6, base_delay_s=0.5, max_delay_s=10.0)  # listing and probe
FILTER_OPS = {"eq": "eq", "neq": "neq", "lt": "lt", "lte": "lte", "gt": "gt", "gte": "gte"}


@dataclasses.dataclass(frozen=True)
class EarthEngineSource:
    """An Earth Engine image: `asset`, `collection` filtered and composited, or a computed
    `expression` (serialized JSON text; `expression_kind` image or collection)."""

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
    bounds: Optional[tuple[float, float, float, float]] = None  # lon/lat: list only images touching it
    expression: Optional[str] = None  # the serialized graph (ee_expression), decoded once per process
    expression_kind: Optional[str] = None  # ee_expression.IMAGE or COLLECTION
    expression_field: str = "source.expression"  # the config field it came from, for messages

    @property
    def uses_get_pixels(self) -> bool:
        return bool(self.asset) and self.mask == "none" and not self.resampling

    @property
    def merges_windows(self) -> bool:
        """Whether neighbouring patches may be fetched in one request for their union window
        (transforms/fetching/merging.py). Earth Engine computes each pixel of a request's grid
        on its own, so a window's answer is each patch's; pixelbeam's emulator is shown to be
        exact so for nearest-neighbour images, not for interpolated ones (its GDAL warp of a
        resampled image differs in a few values with the window), so a resampled image
        (`resampling`, or `Image.resample` in the expression) is fetched patch by patch."""
        return not self.resampling and not (self.expression and '"Image.resample"' in self.expression)

    @property
    def is_collection(self) -> bool:
        return bool(self.collection) or self.expression_kind == ee_expression.COLLECTION

    @property
    def what(self) -> str:
        """The image named for messages."""
        if self.expression:
            return f"the image of {self.expression_field}"
        return f"asset {self.asset!r}" if self.asset else f"collection {self.collection!r}"

    def filtered_collection(self):
        import ee
        if self.expression:
            coll = ee.ImageCollection(ee_expression.decoded(self.expression))
        else:
            coll = ee.ImageCollection(self.collection)
        if self.start or self.end:
            coll = coll.filterDate(self.start or "1970-01-01", self.end or "2100-01-01")
        for prop, op, value in self.filters:
            coll = coll.filter(getattr(ee.Filter, FILTER_OPS[op])(prop, value))
        if self.bounds:
            coll = coll.filterBounds(ee.Geometry.BBox(*self.bounds))
        return coll

    def member_id(self, index: str) -> str:
        """The image id of a listed `system:index`: `<collection>/<index>` for an asset
        collection; the index itself for a computed collection (picked from it by index)."""
        return index if self.expression else f"{self.collection}/{index}"

    def image(self, image_id: Optional[str] = None, select: bool = True):
        """The ee.Image to request (data bands only): the asset, the expression's image, one
        image of a collection (`image_id`, see member_id), or the composite. Needs an
        initialized client."""
        import ee
        if self.expression and image_id:
            img = ee.Image(self.filtered_collection().filter(ee.Filter.eq("system:index", image_id)).first())
        elif self.expression and self.expression_kind == ee_expression.IMAGE:
            img = ee.Image(ee_expression.decoded(self.expression))
        elif self.asset or image_id:
            img = ee.Image(image_id or self.asset)
            img = img.resample(self.resampling) if self.resampling else img
        else:
            coll = self.filtered_collection()
            if self.resampling:  # resample each image: a composite has no native projection to interpolate in
                coll = coll.map(lambda i, mode=self.resampling: ee.Image(i).resample(mode))
            img = getattr(coll, self.composite)()
        return img.select(list(self.bands)) if self.bands and select else img

    def initialize(self) -> None:
        try:
            initialize_earth_engine(self.url, self.project, self.credentials, self.timeout_s)
        except SourceError:
            raise
        except Exception as e:  # e.g. a token that cannot be refreshed, an unreachable url
            raise SourceError(f"source: cannot initialize Earth Engine at {self.url} ({type(e).__name__}: "
                              f"{_first_line(e)}); check url, project and credentials") from None

    def list_collection(self, prop: Optional[str] = None) -> list[tuple[str, int, tuple]]:
        """(system:index, system:time_start in ms, ((prop, value),) or ()) of each image of the
        filtered collection, in listing order: one value:compute request (module doc)."""
        import ee
        coll = self.filtered_collection()
        columns = {"size": coll.size(), "index": coll.aggregate_array("system:index"),
                   "time": coll.aggregate_array("system:time_start")}
        if prop:
            columns["property"] = coll.aggregate_array(prop)
        field = self.expression_field if self.expression else "source"
        try:
            listing = call_with_retries(lambda: ee.data.computeValue(ee.Dictionary(columns)), LAUNCH_POLICY)
        except Exception as e:
            raise SourceError(f"{field}: Earth Engine could not list {self.what.replace('the image', 'the collection')} "
                              f"({classify_exception(e)}); check the id, dates and filters") from None
        size, index, times = int(listing["size"]), listing["index"], listing["time"]
        what = "the collection of " + self.expression_field if self.expression else repr(self.collection)
        if not size:
            raise SourceError(f"{field}: {what} has no image in the dates, filters and regions; widen them")
        if len(index) != size or len(set(index)) != size:
            raise SourceError(f"{field}: {size - len(set(index))} of {size} images of {what} have no distinct "
                              "system:index; set one on each image (image.set('system:index', …))")
        if len(times) != size:
            raise SourceError(f"{field}: {size - len(times)} of {size} images of {what} have no "
                              "system:time_start (band math drops properties: copy it with "
                              "image.copyProperties(source, ['system:time_start'])), or filter them out")
        values = listing.get("property", [])
        if prop and len(values) != size:
            raise SourceError(f"source.flatten_by: {size - len(values)} of {size} images have no "
                              f"property {prop!r}; filter them out or flatten by day")
        return [(i, int(t), ((prop, values[k]),) if prop else ()) for k, (i, t) in enumerate(zip(index, times))]

    def list_images(self) -> list[CollectionImage]:
        """The filtered collection's images (member id, ISO time, the flatten_by property)."""
        prop = self.flatten_by if self.mode == "flatten" and self.flatten_by != "day" else None
        return [CollectionImage(self.member_id(index), iso_time(t), props)
                for index, t, props in self.list_collection(prop)]

    def probe(self, image_id: Optional[str] = None) -> SourceInfo:
        """Band names and dtypes of the image (or of the collection's `image_id`), learnt from a
        1x1 px request (Earth Engine's NPY header); no limits, no collection plan. An
        expression is probed whole, then its bands checked against `bands`."""
        reader = EarthEngineReader(self, None, image_id, select=not self.expression)
        probe = PatchSpec("probe", "probe", "EPSG:4326", (1e-4, 0.0, 0.0, 0.0, -1e-4, 0.0), 1, 1)
        try:
            fields = call_with_retries(lambda: reader.request_structured(probe, None), LAUNCH_POLICY)
        except Exception as e:
            field = self.expression_field if self.expression else "source"
            raise SourceError(f"{field}: Earth Engine refused {self.what} ({classify_exception(e)}); "
                              "check the id, bands and credentials") from None
        names = tuple(n for n in fields.dtype.names if n != VALID_BAND)
        if self.expression and self.bands:
            missing = [b for b in self.bands if b not in names]
            if missing:
                raise SourceError(f"source.bands: {self.what} has no band {missing[0]!r} (it has "
                                  f"{', '.join(names)}); choose among them or change {self.expression_field}")
            names = tuple(self.bands)
        return SourceInfo(band_names=names, dtypes=tuple(fields.dtype[n].name for n in names))

    def check_kind(self) -> None:
        """An expression's kind fits the collection options (a one-line SourceError if not)."""
        if not self.expression:
            return
        field = self.expression_field
        if self.expression_kind == ee_expression.IMAGE and (self.mode or self.composite or self.start or self.end
                                                           or self.filters):
            raise SourceError(f"{field}: gives an ee.Image; collection_mode, composite, start, end and filters "
                              "need an ee.ImageCollection (return the collection, or remove them)")
        if self.expression_kind == ee_expression.COLLECTION and not (self.mode or self.composite):
            raise SourceError(f"{field}: gives an ee.ImageCollection; add composite (median, mean, min, max, "
                              "first or mosaic) or collection_mode, or return one ee.Image")

    def describe(self) -> SourceInfo:
        """Band names, dtypes and request limits (and, with collection_mode, the listed images)."""
        self.initialize()
        self.check_kind()
        plan = None
        if self.mode:
            try:
                plan = plan_collection(self.list_images(), self.mode, self.composite, self.flatten_by,
                                       self.min_coverage)
            except CollectionError as e:
                raise SourceError(str(e)) from None
        base = self.probe(plan.images[0].image_id if plan else None)
        data_bytes = max(1, min(np.dtype(d).itemsize for d in base.dtypes))
        # each request also carries the 1-byte valid band: keep data bytes within the share left
        max_bytes = EE_MAX_BYTES if self.mask == "none" else EE_MAX_BYTES * data_bytes // (data_bytes + 1)
        dtypes = tuple(plan.output_dtype(d) for d in base.dtypes) if plan else base.dtypes
        return dataclasses.replace(base, dtypes=dtypes, collection=plan,
                                   limits=RequestLimits(max_bytes=max_bytes, max_bands=EE_MAX_BANDS - 1))

    def open(self, info: Optional[SourceInfo] = None) -> "EarthEngineReader":
        """A reader for a worker; `info` from the launcher's describe() saves a probe request."""
        initialize_earth_engine(self.url, self.project, self.credentials, self.timeout_s)
        return EarthEngineReader(self, info or self.describe())


# numpy parses an NPY header with ast.literal_eval; on CPython 3.11 two threads parsing at once can
# fail with "SystemError: AST constructor recursion depth mismatch" (seen in CI as dead letters of
# whole point-table groups, not reproduced on demand). One header at a time, microseconds against
# a request's seconds, and a SystemError parses the same bytes once more.
NPY_HEADER_LOCK = threading.Lock()


def decode_npy(payload: bytes) -> np.ndarray:
    """An NPY answer as a structured (H, W) array, a read-only view of `payload` (no copy of the
    pixels: the header parsed by numpy.lib.format, the data by np.frombuffer); a partial answer
    is a permanent error (the server sent it so; a cut connection fails in the transport first)."""
    try:
        with NPY_HEADER_LOCK:
            try:
                header = _npy_header(payload)
            except SystemError:  # the interpreter's glitch (above), not the answer's: parse it again
                header = _npy_header(payload)
        if header is None:  # another NPY version: numpy's own reader (one copy)
            with NPY_HEADER_LOCK:
                return np.load(io.BytesIO(payload), allow_pickle=False, max_header_size=NPY_MAX_HEADER)
        shape, fortran_order, dtype, offset = header
        if dtype.hasobject:
            raise ValueError("object arrays cannot be loaded without pickle")
        count = int(np.prod(shape, dtype=np.int64))
        if len(payload) - offset < count * dtype.itemsize:
            raise ValueError(f"expected {count * dtype.itemsize} bytes of data, got {len(payload) - offset}")
        data = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
        return data.reshape(shape[::-1]).transpose() if fortran_order else data.reshape(shape)
    except Exception as e:
        raise PermanentError(f"undecodable NPY answer ({len(payload)} bytes): {e}", cause="decode") from e


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npy_header(payload: bytes):
    """(shape, fortran_order, dtype, data offset) of an NPY payload, or None for a version other
    than 1.0 and 2.0; numpy refuses headers over 10 kB by default, 1,024 named fields take
    about 25 kB."""
    length = 2 if tuple(payload[6:8]) == (1, 0) else 4  # bytes of the header's length field
    size = 8 + length + int.from_bytes(payload[8:8 + length], "little")
    head = io.BytesIO(memoryview(payload)[:min(size, NPY_MAX_HEADER + 12)])  # copies the header only
    read = _NPY_HEADER_READERS.get(np.lib.format.read_magic(head))
    if read is None:
        return None
    shape, fortran_order, dtype = read(head, max_header_size=NPY_MAX_HEADER)
    return shape, fortran_order, dtype, head.tell()


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
    """Fetches patch requests from Earth Engine; one per worker process, shared by threads.
    Each request expression (the image, or each listed image of a collection) is serialized
    here, once, and sent as is."""

    def __init__(self, source: EarthEngineSource, info: Optional[SourceInfo], image_id: Optional[str] = None,
                 select: bool = True):
        import ee
        self.ee, self.source, self.info = ee, source, info
        self.limits = info.limits if info else None
        plan = info.collection if info else None
        self.expression = self.expressions = None
        transport = rest()
        if source.uses_get_pixels:
            self.url = transport.get_pixels_url(source.asset)
            self.templates = [transport.template({"fileFormat": "NPY"})]
            return
        if plan and image_id is None:
            self.expressions = ee_expression.serialize_each(
                lambda i: self._with_valid_band(source.image(i)), [im.image_id for im in plan.images])
            self.expression = self.expressions[0]
        else:
            self.expression = json.loads(ee_expression.serialize(self._with_valid_band(source.image(image_id, select))))
        # the bodies' fixed part, the expression with it, encoded once (ee_rest.BodyTemplate)
        self.url = transport.compute_pixels_url()
        self.templates = [transport.template({"expression": e, "fileFormat": "NPY"})
                          for e in (self.expressions or [self.expression])]

    def _with_valid_band(self, img):
        if self.source.mask != "none" and self.info is not None:  # (the describe probe needs data bands only)
            img = img.addBands(valid_band(self.ee, img, self.info.band_names))
        return img

    def request_structured(self, spec: PatchSpec, part: Optional[RequestPart]) -> np.ndarray:
        """The raw NPY structured array (H, W) of one request."""
        band_ids = list(self.source.bands) if self.source.uses_get_pixels and self.source.bands else None
        if part is not None:
            band_ids = [self.info.band_names[b] for b in part.bands]
            if self.source.mask != "none":
                band_ids.append(VALID_BAND)
        template = self.templates[0 if part is None or part.image is None else part.image]
        payload = rest().post(self.url, template.body(part_pixel_grid(spec, part), band_ids))
        return decode_npy(payload)

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


_first_line = ee_expression._first_line


def earthengine_source(cfg, timeout_s: float, bounds=None) -> EarthEngineSource:
    """An EarthEngineSource from the validated `source:` config section; `bounds` (lon/lat) as
    in EarthEngineSource. An expression is resolved here (the client initialized, the
    function run; see ee_expression.resolve)."""
    source = EarthEngineSource(
        asset=cfg.asset, collection=cfg.collection, start=cfg.start, end=cfg.end,
        filters=tuple((f.property, f.op, f.value) for f in cfg.filters), composite=cfg.composite,
        bands=tuple(cfg.bands), mask=cfg.mask if isinstance(cfg.mask, str) else "source",  # a layer's mask: is its MaskConfig
        project=cfg.project, url=cfg.url,
        credentials=cfg.credentials, timeout_s=timeout_s, resampling=ee_resampling(cfg.resampling),
        mode=cfg.collection_mode, flatten_by=cfg.flatten_by, min_coverage=cfg.filter_coverage, bounds=bounds)
    if cfg.expression is None and cfg.expression_json is None:
        return source
    source.initialize()
    text, kind, field = ee_expression.resolve(cfg.expression, cfg.expression_args, cfg.expression_json, bounds)
    return dataclasses.replace(source, expression=text, expression_kind=kind, expression_field=field)
