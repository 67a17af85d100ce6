"""The lean REST transport of Earth Engine pixel requests (transforms/sources/ee_rest.py) against
the `ee` client's own path, on the local emulator and a recording server on 127.0.0.1: the same
bytes and arrays, the same bodies, the same error classes, the token sent and refreshed."""

import datetime
import http.server
import io
import json
import os
import threading

import ee
import numpy as np
import pytest
import rasterio
from google.auth import credentials as ga_credentials

from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
from pixelbeam.transforms.fetching.retry import PermanentError, QuotaError, TransientError, classify_exception
from pixelbeam.transforms.fetching.sizing import RequestPart
from pixelbeam.transforms.patch import PatchSpec
from pixelbeam.transforms.sources import ee_client, ee_rest
from pixelbeam.transforms.sources.earthengine import VALID_BAND, EarthEngineSource, decode_npy, part_pixel_grid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
ASSET = "projects/demo/assets/landsat"
COLLECTION = "DEMO/LANDSAT_TIMES"
BANDS = ["B1", "B2", "B3"]

with rasterio.open(LANDSAT) as _ds:
    T, CRS = _ds.transform, _ds.crs.to_string()


def spec_at(row: int, col: int, size: int = 48) -> PatchSpec:
    """A patch of the scene at pixel (row, col); near the edges part of it is nodata (masked)."""
    return PatchSpec(f"p{row}_{col}", "r", CRS, (T.a, 0.0, T.c + col * T.a, 0.0, T.e, T.f + row * T.e), size, size)


SPECS = [spec_at(0, 300), spec_at(300, 400), spec_at(700, 10, 32)]


@pytest.fixture(scope="module")
def server():
    images = {"images": {ASSET: {"path": LANDSAT, "bands": BANDS}},
              "collections": {COLLECTION: [{"id": f"{COLLECTION}/2020010{i}", "path": LANDSAT, "bands": BANDS,
                                            "time_start": f"2020-01-0{i}"} for i in (1, 2)]}}
    with EmulatorServer(images, record=True) as s:
        ee_client.initialize_earth_engine(s.url, "demo", "anonymous", 60.0)
        yield s


def old_compute_pixels(body: dict) -> bytes:
    """The former transport: the `ee` client's discovery resource (what ee.data.computePixels sends)."""
    from ee import data
    body = dict(body)
    data._maybe_populate_workload_tag(body)
    call = data._get_cloud_projects_raw().image().computePixels(project=data._get_projects_path(), body=body)
    return data._execute_cloud_call(call)


def old_request(reader, spec, part) -> bytes:
    """The answer of what the reader sent through the `ee` client before."""
    band_ids = list(reader.source.bands) if reader.source.uses_get_pixels and reader.source.bands else None
    if part is not None:
        band_ids = [reader.info.band_names[b] for b in part.bands]
        band_ids += [] if reader.source.mask == "none" else [VALID_BAND]
    params = {"fileFormat": "NPY", "grid": part_pixel_grid(spec, part), **({"bandIds": band_ids} if band_ids else {})}
    if reader.source.uses_get_pixels:
        return ee.data.getPixels({"assetId": reader.source.asset, **params})
    expr = reader.expression if part is None or part.image is None else reader.expressions[part.image]
    return old_compute_pixels({"expression": expr, **params})


SOURCES = {
    "getPixels, three bands": dict(asset=ASSET, mask="none"),
    "getPixels, two bands reordered": dict(asset=ASSET, mask="none", bands=("B3", "B1")),
    "computePixels, with the valid band": dict(asset=ASSET, mask="source"),
    "computePixels, resampled": dict(asset=ASSET, mask="source", resampling="bilinear"),
    "collection, each image": dict(collection=COLLECTION, mode="stack", mask="source"),
    "collection, median": dict(collection=COLLECTION, composite="median", mask="source"),
}


def open_reader(server, **source):
    return EarthEngineSource(url=server.url, project="demo", credentials="anonymous", timeout_s=60.0,
                             **source).open()


@pytest.mark.parametrize("name", list(SOURCES))
def test_the_rest_path_sends_the_same_bodies_and_gets_the_same_arrays_as_the_ee_client(server, name):
    reader = open_reader(server, **SOURCES[name])
    n_bands = len(reader.info.band_names)
    parts = [None, RequestPart(tuple(range(n_bands)), 0, 0, 32, 32), RequestPart((n_bands - 1,), 8, 4, 20, 24)]
    if reader.info.collection is not None:
        parts.append(RequestPart(tuple(range(n_bands)), 0, 0, 32, 32, image=1))
    method = "getPixels" if reader.source.uses_get_pixels else "computePixels"
    for spec in SPECS:
        for part in parts:
            del server.recorded[:]
            new = reader.request_structured(spec, part)
            old = np.load(io.BytesIO(old_request(reader, spec, part)), allow_pickle=False)
            (m_new, body_new), (m_old, body_old) = server.recorded
            assert m_new == m_old == method
            assert body_new == body_old  # the same JSON body, field for field
            assert new.dtype == old.dtype and new.shape == old.shape
            assert new.tobytes() == old.tobytes()
    if reader.source.mask != "none":  # some pixels of the first patch are masked: the valid band is compared
        assert 0 < reader.request_structured(SPECS[0], None)[VALID_BAND].mean() < 1


def test_decode_npy_is_a_view_of_the_answer_bytes():
    arr = np.zeros((5, 7), dtype=[("B1", "<u2"), (VALID_BAND, "u1")])
    arr["B1"] = np.arange(35).reshape(5, 7)
    for layout in (arr, np.asfortranarray(arr)):
        buf = io.BytesIO()
        np.save(buf, layout)
        payload = buf.getvalue()
        got = decode_npy(payload)
        np.testing.assert_array_equal(got, arr)
        assert np.shares_memory(got, np.frombuffer(payload, np.uint8))
    with pytest.raises(PermanentError, match="undecodable NPY answer"):
        decode_npy(payload[:-3])  # short of its data


def test_body_template_encodes_the_fixed_fields_once():
    expr = {"result": "0", "values": {"0": {"constantValue": "é\"x"}}}
    template = ee_rest.BodyTemplate({"expression": expr, "fileFormat": "NPY"})
    grid = {"dimensions": {"width": 2, "height": 3}, "crsCode": "EPSG:4326"}
    assert json.loads(template.body(grid, ["B1"])) == {"expression": expr, "fileFormat": "NPY", "grid": grid,
                                                        "bandIds": ["B1"]}
    assert json.loads(template.body(grid)) == {"expression": expr, "fileFormat": "NPY", "grid": grid}


def errors_of_both_paths(server, reader, config):
    """(new, old): the classified errors of one request through each path under `config`."""
    server.set_config(config)
    try:
        with pytest.raises(Exception) as new:
            reader.request_structured(SPECS[1], None)
        with pytest.raises(Exception) as old:
            decode_npy(old_request(reader, SPECS[1], None))
        return classify_exception(new.value), classify_exception(old.value)
    finally:
        server.set_config(EmulatorConfig())


FAULTS = {"429": (QuotaError, "429"), "500": (TransientError, "500"), "503": (TransientError, "503"),
          "400": (PermanentError, "400"), "reset": (TransientError, "reset"), "truncate": (TransientError, "truncated")}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_errors_are_classified_as_the_ee_client_path_classified_them(server, fault):
    reader = open_reader(server, asset=ASSET, mask="source")
    new, old = errors_of_both_paths(server, reader, EmulatorConfig(**{f"fault_{fault}": 1.0}))
    kind, cause = FAULTS[fault]
    assert type(new) is type(old) is kind
    if fault in ("reset", "truncate"):  # requests wrapped both in its ConnectionError: "connection" before
        assert (new.cause, old.cause) == (cause, "connection")
    else:
        assert new.cause == old.cause == cause
        assert new.message == old.message and new.status == old.status  # the server's message, as before


def test_a_server_message_and_retry_after_are_kept(server):
    reader = open_reader(server, asset=ASSET, mask="none")
    new, old = errors_of_both_paths(server, reader, EmulatorConfig(fault_429=1.0, retry_after_s=7))
    assert new.retry_after_s == old.retry_after_s == 7
    new, old = errors_of_both_paths(server, reader, EmulatorConfig(fault_400=1.0))
    assert new.message == old.message == "HTTP 400: Injected permanent error 400."


def test_a_request_longer_than_the_timeout_is_a_transient_timeout(server):
    transport = ee_rest.EERest(server.url, "projects/demo", None, {}, timeout_s=1.0)
    server.set_config(EmulatorConfig(fault_hang=1.0, hang_s=20.0))
    try:
        with pytest.raises(Exception) as info:
            transport.post(transport.get_pixels_url(ASSET),
                           transport.template({"fileFormat": "NPY"}).body(SPECS[1].pixel_grid()))
    finally:
        server.set_config(EmulatorConfig())
    error = classify_exception(info.value)
    assert isinstance(error, TransientError) and error.cause == "timeout"


def test_the_transport_sends_what_ee_sends(server):
    """The headers of ee's own requests (client version, user project) and its urls."""
    transport = ee_client.rest()
    expected = {k.lower(): v for k, v in (ee.data._make_request_headers() or {}).items()}
    assert expected and expected.items() <= {k.lower(): v for k, v in transport.headers.items()}.items()
    assert transport.compute_pixels_url() == f"{server.url}/v1/projects/demo/image:computePixels"
    assert transport.get_pixels_url("USGS/X") == f"{server.url}/v1/projects/earthengine-public/assets/USGS/X:getPixels"


# -- the token -----------------------------------------------------------------------------------

class CountingCredentials(ga_credentials.Credentials):
    """google-auth credentials whose refresh hands out tok-1, tok-2, ...; expired at first."""

    def __init__(self):
        super().__init__()
        self.refreshes = 0
        self.expiry = datetime.datetime(2000, 1, 1)

    def refresh(self, request):
        self.refreshes += 1
        self.token = f"tok-{self.refreshes}"
        self.expiry = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + datetime.timedelta(hours=1)


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the server's `answer` (status, body); records (path, headers, body)."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.path, dict(self.headers), body))
        status, payload = self.server.answer
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def recorder():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    httpd.seen, httpd.answer = [], (200, b"ok")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def auth(headers: dict):
    return {k.lower(): v for k, v in headers.items()}.get("authorization")


def test_the_token_is_sent_and_refreshed_when_expired(recorder):
    creds = CountingCredentials()
    url = f"http://127.0.0.1:{recorder.server_address[1]}"
    transport = ee_rest.EERest(url, "projects/p", creds, {"X-Goog-User-Project": "p"}, timeout_s=60.0)
    body = transport.template({"fileFormat": "NPY"}).body({"crsCode": "EPSG:4326"})
    assert transport.post(transport.compute_pixels_url(), body) == b"ok"
    assert transport.post(transport.get_pixels_url("projects/pixelbeam-test/assets/a"), body) == b"ok"
    creds.expiry = datetime.datetime(2000, 1, 1)  # the hour is over
    transport.post(transport.compute_pixels_url(), body)
    assert [p for p, _, _ in recorder.seen] == ["/v1/projects/p/image:computePixels",
                                                 "/v1/projects/pixelbeam-test/assets/a:getPixels",
                                                 "/v1/projects/p/image:computePixels"]
    assert [auth(h) for _, h, _ in recorder.seen] == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
    assert creds.refreshes == 2
    assert all(h["X-Goog-User-Project"] == "p" and h["Content-Type"] == "application/json"
               for _, h, _ in recorder.seen)
    assert [json.loads(b) for _, _, b in recorder.seen] == [{"fileFormat": "NPY", "grid": {"crsCode": "EPSG:4326"}}] * 3


def test_an_error_message_never_carries_the_token(recorder):
    creds = CountingCredentials()
    recorder.answer = (403, json.dumps({"error": {"code": 403, "message": "Permission denied."}}).encode())
    transport = ee_rest.EERest(f"http://127.0.0.1:{recorder.server_address[1]}", "projects/p", creds, {}, 60.0)
    with pytest.raises(PermanentError) as info:
        transport.post(transport.compute_pixels_url(), b"{}")
    assert info.value.message == "HTTP 403: Permission denied." and "tok-" not in repr(info.value)
    assert [auth(h) for _, h, _ in recorder.seen] == ["Bearer tok-1"]
