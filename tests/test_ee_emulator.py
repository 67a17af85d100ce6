"""The EE REST emulator against the real earthengine-api client (loopback only)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, transform_bounds
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

ee = pytest.importorskip("ee")

from pixelbeam.testing.ee_emulator import (  # noqa: E402
    MAX_REQUEST_BYTES, EmulatorConfig, EmulatorServer, initialize_ee_client)
from pixelbeam.testing.ee_emulator import pixels  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RGB = os.path.join(REPO, "data", "RGB.byte.tif")
SHADE = os.path.join(REPO, "data", "shade.tif")
LANDSAT = "projects/demo/assets/landsat"
STACK = "DEMO/STACK"  # a public-style collection id
BANDS = ["B4", "B3", "B2"]
# (rows, cols) where each stack member gets an extra nodata hole
HOLES = [None, (slice(100, 200), slice(100, 300)), (slice(150, 250), slice(200, 400))]


def _stack_member(data: np.ndarray, k: int) -> np.ndarray:
    """Member k of the test collection: RGB transformed, nodata (0) kept, plus a hole."""
    valid = data != 0
    out = [data, np.minimum(data.astype(int) + 10, 255), data // 2 + 1][k].astype(np.uint8)
    out = np.where(valid, out, 0).astype(np.uint8)
    if HOLES[k] is not None:
        out[(slice(None),) + HOLES[k]] = 0
    return out


@pytest.fixture(scope="module")
def stack_arrays() -> np.ndarray:
    with rasterio.open(RGB) as ds:
        data = ds.read()
    return np.stack([_stack_member(data, k) for k in range(3)])  # (3, bands, H, W)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, stack_arrays) -> dict:
    folder = tmp_path_factory.mktemp("stack")
    with rasterio.open(RGB) as ds:
        profile = ds.profile
    members = []
    for k, (date, cloud) in enumerate([("2020-01-01", 5), ("2020-02-01", 50), ("2020-03-01", 20)]):
        path = str(folder / f"c{k}.tif")
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(stack_arrays[k])
        members.append({"id": f"{STACK}/c{k}", "path": path, "bands": BANDS, "time_start": date,
                        "properties": {"CLOUD": cloud}})
    return {"images": {LANDSAT: {"path": RGB, "bands": BANDS},
                       "projects/pixelbeam-demo/assets/rgb": {"path": RGB},
                       "projects/demo/assets/shade": {"path": SHADE, "bands": ["shade"]}},
            "collections": {STACK: members}}


@pytest.fixture(scope="module")
def emulator(catalog):
    with EmulatorServer(catalog) as server:
        initialize_ee_client(server.url)
        ee.data.setMaxRetries(0)
        yield server
        ee.Reset()


@pytest.fixture(autouse=True)
def clean_emulator(request):
    """Default config and zeroed stats per test; waits out hangs of earlier tests."""
    if "emulator" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("emulator")
    server.set_config(EmulatorConfig())
    deadline = time.monotonic() + 30
    while server.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    server.reset_stats()
    yield


def native_grid(col: int, row: int, width: int, height: int, path: str = RGB) -> dict:
    """A PixelGrid on the file's own pixel grid, offset by (col, row) pixels."""
    with rasterio.open(path) as ds:
        t, crs = ds.transform, ds.crs.to_string()
    x, y = t * (col, row)
    return {"dimensions": {"width": width, "height": height}, "crsCode": crs,
            "affineTransform": {"scaleX": t.a, "shearX": t.b, "translateX": x,
                                "shearY": t.d, "scaleY": t.e, "translateY": y}}


def grid_json(crs: str, transform: Affine, width: int, height: int) -> dict:
    return {"dimensions": {"width": width, "height": height}, "crsCode": crs,
            "affineTransform": dict(zip(("scaleX", "shearX", "translateX", "shearY", "scaleY",
                                         "translateY"), transform[:6]))}


def compute(expression, grid, band_ids=None):
    params = {"expression": expression, "fileFormat": "NUMPY_NDARRAY", "grid": grid}
    if band_ids:
        params["bandIds"] = band_ids
    return ee.data.computePixels(params)


def get(asset_id, grid, band_ids=None, file_format="NUMPY_NDARRAY"):
    params = {"assetId": asset_id, "fileFormat": file_format, "grid": grid}
    if band_ids:
        params["bandIds"] = band_ids
    return ee.data.getPixels(params)


def http_status(exc: ee.EEException) -> int:
    return exc.__context__.resp.status


WINDOW = (slice(90, 190), slice(0, 120))  # rows, cols: overlaps the nodata border and a hole


def window_grid() -> dict:
    return native_grid(WINDOW[1].start, WINDOW[0].start, 120, 100)


# -- getPixels -----------------------------------------------------------
def test_get_pixels_native_grid_equals_window_read(emulator):
    out = get(LANDSAT, window_grid())
    assert out.dtype == np.dtype([("B4", "u1"), ("B3", "u1"), ("B2", "u1")])
    with rasterio.open(RGB) as ds:
        expected = ds.read(window=WINDOW)
    for i, band in enumerate(BANDS):
        np.testing.assert_array_equal(out[band], expected[i])
    assert (expected == 0).any() and (expected != 0).any()


def test_get_pixels_raw_npy_bytes_band_subset_and_outside(emulator):
    raw = get(LANDSAT, native_grid(-10, -5, 30, 20), ["B2", "B4"], file_format="NPY")
    out = np.load(io.BytesIO(raw))
    assert out.dtype.names == ("B2", "B4") and out.shape == (20, 30)
    assert (out["B4"][:5] == 0).all() and (out["B4"][:, :10] == 0).all()  # outside the raster


def test_get_pixels_masked_pixels_are_zero_not_nodata(emulator):
    out = get("projects/demo/assets/shade", native_grid(0, 0, 256, 256, SHADE))
    with rasterio.open(SHADE) as ds:
        data, mask = ds.read(1, window=((0, 256), (0, 256))), ds.read_masks(1, window=((0, 256), (0, 256)))
    assert (data == 255).any()
    np.testing.assert_array_equal(out["shade"], np.where(mask > 0, data, 0))


@pytest.mark.parametrize("path,dst_crs", [(RGB, "EPSG:4326"), (SHADE, "EPSG:32613")])
def test_get_pixels_reprojected_equals_rasterio_nearest(emulator, path, dst_crs):
    asset = LANDSAT if path == RGB else "projects/demo/assets/shade"
    with rasterio.open(path) as ds:
        left, bottom, right, top = transform_bounds(ds.crs, dst_crs, *ds.bounds)
        width, height = 160, 120
        transform = Affine((right - left) / 140, 0, left - (right - left) / 20,
                           0, -(top - bottom) / 100, top + (top - bottom) / 20)
        # GDAL's warp with (almost) no approximation error, as Earth Engine computes each pixel
        # on its own (reproject's fixed 0.125 px approximation depends on the window)
        with WarpedVRT(ds, crs=dst_crs, transform=transform, width=width, height=height,
                       resampling=Resampling.nearest, tolerance=1e-9) as vrt:
            expected, masks = vrt.read(), vrt.read_masks()
    grid = grid_json(dst_crs, transform, width, height)
    out = get(asset, grid)
    for i, band in enumerate(out.dtype.names):
        np.testing.assert_array_equal(out[band], np.where(masks[i] > 0, expected[i], 0))
    assert (masks == 0).any() and (masks > 0).any()
    grid["crsWkt"] = rasterio.crs.CRS.from_user_input(grid.pop("crsCode")).to_wkt()
    np.testing.assert_array_equal(get(asset, grid), out)


def test_public_ids_and_unknown_assets(emulator, stack_arrays):
    out = get(f"{STACK}/c1", window_grid(), ["B3"])  # -> projects/earthengine-public/assets/...
    np.testing.assert_array_equal(out["B3"], stack_arrays[1, 1][WINDOW])
    # "demo" is too short for a project id, so the client sends
    # projects/earthengine-legacy/assets/projects/demo/assets/landsat; a real id is sent as is
    out = get("projects/pixelbeam-demo/assets/rgb", window_grid(), ["b2"])  # default band names
    np.testing.assert_array_equal(out["b2"], get(LANDSAT, window_grid(), ["B3"])["B3"])
    out = compute(ee.Image("projects/pixelbeam-demo/assets/rgb").select("b1"), window_grid())
    assert out.dtype.names == ("b1",)
    with pytest.raises(ee.EEException, match="not found") as err:
        get("projects/demo/assets/nope", window_grid())
    assert http_status(err.value) == 404
    with pytest.raises(ee.EEException, match="not found") as err:
        compute(ee.Image("projects/demo/assets/nope"), window_grid())
    assert http_status(err.value) == 404
    with pytest.raises(ee.EEException, match="B9") as err:
        get(LANDSAT, window_grid(), ["B9"])
    assert http_status(err.value) == 400
    assert emulator.stats()["errors_by_code"] == {"404": 2, "400": 1}


# -- computePixels -------------------------------------------------------
def test_compute_select_rename_and_add_bands(emulator):
    with rasterio.open(RGB) as ds:
        data = ds.read(window=WINDOW)
    image = ee.Image(LANDSAT)
    out = compute(image.select(["B4", "B2"], ["red", "blue"]).addBands(image.select("B3")),
                  window_grid())
    assert out.dtype.names == ("red", "blue", "B3")
    for name, i in (("red", 0), ("blue", 2), ("B3", 1)):
        np.testing.assert_array_equal(out[name], data[i])
    out = compute(image.select("B.*").rename(["a", "b", "c"]).toFloat(), window_grid(), ["c"])
    assert out.dtype == np.dtype([("c", "f4")])
    np.testing.assert_array_equal(out["c"], data[2].astype(np.float32))


def test_compute_mask_update_mask_unmask(emulator):
    with rasterio.open(RGB) as ds:
        data = ds.read(window=WINDOW)
    image = ee.Image(LANDSAT)
    out = compute(image.mask(), window_grid())
    assert out.dtype["B4"] == np.uint8
    np.testing.assert_array_equal(out["B4"], (data[0] != 0).astype(np.uint8))
    bright = image.select("B4").gt(40)
    out = compute(image.updateMask(bright), window_grid())
    for i, band in enumerate(BANDS):
        np.testing.assert_array_equal(out[band], np.where(data[0] > 40, data[i], 0))
    out = compute(image.updateMask(bright).unmask(7), window_grid())
    np.testing.assert_array_equal(out["B3"], np.where(data[0] > 40, data[1], 7))
    out = compute(image.unmask(), window_grid())
    np.testing.assert_array_equal(out["B2"], data[2])
    outside = native_grid(-20, 90, 40, 10)  # half the grid lies west of the raster
    out = compute(image.unmask(7), outside)
    assert (out["B4"][:, :20] == 0).all() and (out["B4"][:, 20:] != 0).all()
    out = compute(image.unmask(7, False), outside)
    assert (out["B4"][:, :20] == 7).all()


def _expected(stack: np.ndarray, how: str) -> np.ndarray:
    """numpy answer for a reducer over the valid (non-zero) pixels of ``stack``."""
    valid = stack != 0
    if how == "mosaic":
        out = np.zeros(stack.shape[1:], stack.dtype)
        for member, ok in zip(stack, valid):
            out = np.where(ok, member, out)
        return out
    if how in ("min", "max"):
        masked = np.ma.masked_array(stack, ~valid)
        return getattr(masked, how)(axis=0).filled(0)
    values = np.where(valid, stack.astype(float), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-masked pixels
        result = np.nanmedian(values, axis=0) if how == "median" else np.nanmean(values, axis=0)
    return np.nan_to_num(result, nan=0.0)


@pytest.mark.parametrize("how,dtype", [("median", "f8"), ("mean", "f8"), ("mosaic", "u1"),
                                       ("min", "u1"), ("max", "u1")])
def test_compute_collection_reducers(emulator, stack_arrays, how, dtype):
    stack = stack_arrays[(slice(None), slice(None)) + WINDOW]  # (3, bands, h, w)
    collection = ee.ImageCollection(STACK)
    out = compute(getattr(collection, how)(), window_grid())
    assert out.dtype == np.dtype([(b, dtype) for b in BANDS])
    expected = _expected(stack, how)
    for i, band in enumerate(BANDS):
        np.testing.assert_array_equal(out[band], expected[i].astype(dtype))


def test_compute_collection_hole_overlap(emulator, stack_arrays):
    """Where members 1 and 2 both have holes only member 0 counts; median == member 0."""
    grid = native_grid(200, 150, 100, 50)  # rows 150:200, cols 200:300 lie in both holes
    out = compute(ee.ImageCollection(STACK).median(), grid)
    np.testing.assert_array_equal(out["B4"], stack_arrays[0, 0, 150:200, 200:300].astype(float))
    out = compute(ee.ImageCollection(STACK).reduce(ee.Reducer.max()), grid)
    assert out.dtype.names == ("B4_max", "B3_max", "B2_max")


def test_compute_collection_filters_first_and_to_bands(emulator, stack_arrays):
    collection = ee.ImageCollection(STACK)
    window = stack_arrays[(slice(None), slice(None)) + WINDOW]
    cases = [
        (collection.filterDate("2020-01-15", "2020-12-31").filter(ee.Filter.lt("CLOUD", 30)), 2),
        (collection.filter(ee.Filter.gte("CLOUD", 50)), 1),
        (collection.filter(ee.Filter.eq("CLOUD", 5)), 0),
        (collection.sort("CLOUD", False), 1),
        (collection.filterBounds(ee.Geometry.Point([-77.5, 24.0])), 0),
    ]
    for filtered, member in cases:
        out = compute(filtered.first(), window_grid(), ["B4"])
        np.testing.assert_array_equal(out["B4"], window[member, 0])
    out = compute(collection.toBands(), window_grid())
    assert out.dtype.names == tuple(f"c{k}_{b}" for k in range(3) for b in BANDS)
    np.testing.assert_array_equal(out["c2_B3"], window[2, 1])
    far_away = collection.filterBounds(ee.Geometry.Point([10.0, 50.0]))
    with pytest.raises(ee.EEException, match="no bands") as err:
        compute(far_away.mosaic(), window_grid())
    assert http_status(err.value) == 400


def test_collection_map_over_images(emulator, stack_arrays):
    collection = ee.ImageCollection(STACK).map(lambda image: image.toFloat())
    out = compute(collection.max(), window_grid(), ["B2"])
    assert out.dtype == np.dtype([("B2", "f4")])
    expected = _expected(stack_arrays[(slice(None), 2) + WINDOW], "max")
    np.testing.assert_array_equal(out["B2"], expected.astype(np.float32))


# -- request limits and malformed requests ---------------------------------
def test_request_limits_are_400(emulator):
    big = native_grid(0, 0, 4097, 4096)  # 4097 * 4096 * 3 bytes > 48 MiB
    with pytest.raises(ee.EEException) as err:
        get(LANDSAT, big)
    assert http_status(err.value) == 400
    assert str(err.value) == (f"Total request size ({4097 * 4096 * 3} bytes) must be less "
                              f"than or equal to {MAX_REQUEST_BYTES} bytes.")
    with pytest.raises(ee.EEException, match="32768") as err:
        get(LANDSAT, native_grid(0, 0, 32769, 1))
    assert http_status(err.value) == 400
    many = ee.ImageCollection.fromImages([ee.Image(LANDSAT)] * 342).toBands()  # 1026 bands
    with pytest.raises(ee.EEException, match="Too many bands") as err:
        compute(many, native_grid(0, 0, 1, 1))
    assert http_status(err.value) == 400
    stats = emulator.stats()
    assert stats["errors_by_code"] == {"400": 3} and stats["answered_200"] == 0


def test_request_size_boundary_is_inclusive():
    band = pixels.Band("b", np.uint8, lambda grid: None)
    grid = pixels.Grid(None, Affine.identity(), 4096, 4096)
    pixels.check_request_size([band] * 3, grid)  # exactly 50331648 bytes is allowed
    with pytest.raises(pixels.EmulatorError):
        pixels.check_request_size([band] * 4, grid)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_malformed_requests_are_400(emulator):
    url = f"{emulator.url}/v1/projects/demo/image:computePixels"
    grid = window_grid()
    for expression in ({"values": {}}, {"result": "0", "values": {"0": {"bogus": 1}}},
                       {"result": "0", "values": {"0": {"functionInvocationValue": {
                           "functionName": "Image.frobnicate", "arguments": {}}}}}):
        code, error = _post(url, json.dumps({"expression": expression, "fileFormat": "NPY",
                                             "grid": grid}).encode())
        assert code == 400 and error["error"]["status"] == "INVALID_ARGUMENT", error
    code, error = _post(url, b"{not json")
    assert code == 400 and error["error"]["code"] == 400


# -- quota and faults ------------------------------------------------------
def _call_collecting(results: list, lock: threading.Lock) -> None:
    try:
        get(LANDSAT, native_grid(200, 200, 4, 4))
        outcome = 200
    except ee.EEException as exc:
        outcome = http_status(exc)
    with lock:
        results.append(outcome)


def test_concurrency_quota_rejects_and_caps_in_flight(emulator):
    emulator.set_config(EmulatorConfig(max_concurrent=2, latency_s=1.5))
    results, lock = [], threading.Lock()
    threads = [threading.Thread(target=_call_collecting, args=(results, lock)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stats = emulator.stats()
    assert sorted(set(results)) == [200, 429]
    assert stats["peak_in_flight"] == 2
    assert stats["rejected_429"]["concurrency"] == results.count(429)
    assert stats["answered_200"] == results.count(200)
    assert max(int(k) for k in stats["in_flight_histogram"]) == 2


def test_rate_quota_rejects_above_limit(emulator):
    emulator.set_config(EmulatorConfig(max_rps=2))
    results, lock = [], threading.Lock()
    for _ in range(8):
        _call_collecting(results, lock)
    stats = emulator.stats()
    assert results.count(429) == stats["rejected_429"]["rate"] >= 1
    assert results[:2] == [200, 200]


def _fault_sequence(emulator, seed: int, n: int) -> list:
    emulator.set_config(EmulatorConfig(fault_429=0.1, fault_500=0.2, fault_503=0.1, seed=seed))
    results, lock = [], threading.Lock()
    for _ in range(n):
        _call_collecting(results, lock)
    return results


def test_injected_faults_rates_and_determinism(emulator):
    first = _fault_sequence(emulator, seed=3, n=150)
    stats = emulator.stats()
    assert stats["rejected_429"]["injected"] == first.count(429)
    assert stats["faults"]["500"] == first.count(500) and stats["faults"]["503"] == first.count(503)
    assert 3 <= first.count(429) <= 35 and 12 <= first.count(500) <= 50
    assert 3 <= first.count(503) <= 35 and first.count(200) >= 60
    emulator.reset_stats()
    assert _fault_sequence(emulator, seed=3, n=150) == first
    assert _fault_sequence(emulator, seed=4, n=150) != first


def test_injected_429_carries_retry_after(emulator):
    emulator.set_config(EmulatorConfig(fault_429=1.0, retry_after_s=7))
    with pytest.raises(ee.EEException) as err:
        get(LANDSAT, native_grid(0, 0, 2, 2))
    http_error = err.value.__context__
    from googleapiclient.errors import HttpError
    assert isinstance(http_error, HttpError)
    assert http_error.resp.status == 429 and http_error.resp["retry-after"] == "7"
    assert json.loads(http_error.content)["error"]["status"] == "RESOURCE_EXHAUSTED"


@pytest.mark.parametrize("kind", ["reset", "truncate"])
def test_reset_and_truncate_are_client_errors(emulator, kind):
    emulator.set_config(EmulatorConfig(**{f"fault_{kind}": 1.0}))
    with pytest.raises(ConnectionError):  # ee's requests transport re-raises builtin errors
        get(LANDSAT, native_grid(100, 100, 64, 64))
    emulator.set_config(EmulatorConfig())
    assert get(LANDSAT, native_grid(100, 100, 4, 4)).shape == (4, 4)  # server still fine
    assert emulator.stats()["faults"][kind] == 1


def test_hang_times_out_client(emulator):
    emulator.set_config(EmulatorConfig(fault_hang=1.0, hang_s=30.0))
    ee.data.setDeadline(200)  # ms
    try:
        with pytest.raises(TimeoutError):
            get(LANDSAT, native_grid(0, 0, 2, 2))
    finally:
        ee.data.setDeadline(0)
    assert emulator.stats()["faults"]["hang"] == 1


def test_refuses_non_loopback_host():
    with pytest.raises(ValueError, match="loopback"):
        EmulatorServer({}, host="0.0.0.0")


# -- the process entry point -----------------------------------------------
def test_module_runs_as_process(tmp_path, catalog):
    catalog_path = tmp_path / "catalog.json"
    catalog_path.write_text(json.dumps(catalog))
    process = subprocess.Popen(
        [sys.executable, "-m", "pixelbeam.testing.ee_emulator", "--port", "0", "--catalog",
         str(catalog_path), "--fault-500", "1.0", "--seed", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("EMULATOR_URL=http://127.0.0.1:"), process.stderr.read()
        url = line.split("=", 1)[1]
        with urllib.request.urlopen(f"{url}/$discovery/rest?version=v1", timeout=120) as response:
            assert json.loads(response.read())["rootUrl"] == url + "/"
        code, error = _post(f"{url}/v1/projects/demo/assets/{LANDSAT}:getPixels",
                            json.dumps({"fileFormat": "NPY", "grid": window_grid()}).encode())
        assert code == 500 and error["error"]["status"] == "INTERNAL"
        with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=120) as response:
            stats = json.loads(response.read())
        assert stats["requests_received"] == 1 and stats["faults"]["500"] == 1
        assert _post(f"{url}/_emulator/reset", b"")[0] == 200
        with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=120) as response:
            assert json.loads(response.read())["requests_received"] == 0
    finally:
        process.terminate()
        process.wait(timeout=120)
    assert process.returncode == 0  # SIGTERM exits cleanly


# -- the algorithms of cloud masks, indices and label bands ---------------------------------
def test_where_bitwise_logical_cat_and_clip_equal_numpy(emulator):
    with rasterio.open(RGB) as ds:
        data = ds.read(window=WINDOW).astype(np.int64)
        transform = ds.window_transform(Window(WINDOW[1].start, WINDOW[0].start, 120, 100))
    b4, b3 = ee.Image(LANDSAT).select("B4"), ee.Image(LANDSAT).select("B3")
    ok = data != 0
    out = compute(b4.where(b3.gt(100), 7), window_grid())
    np.testing.assert_array_equal(out["B4"], np.where(ok[0], np.where(ok[1] & (data[1] > 100), 7, data[0]), 0))
    out = compute(b4.rightShift(2).addBands(b3.bitwiseAnd(12)), window_grid())
    np.testing.assert_array_equal(out["B4"], np.where(ok[0], data[0] >> 2, 0))
    np.testing.assert_array_equal(out["B3"], np.where(ok[1], data[1] & 12, 0))
    out = compute(b4.gt(50).Or(b3.gt(80)).Not(), window_grid())
    np.testing.assert_array_equal(out["B4"], np.where(ok[0] & ok[1], ~((data[0] > 50) | (data[1] > 80)), 0))
    out = compute(ee.ApiFunction.call_("Image.cat", [b4.rename("a"), b3.rename("b")]), window_grid())
    assert out.dtype.names == ("a", "b")
    # clip: pixels whose centre lies in the box stay; the others are masked (0)
    cols, rows = np.meshgrid(np.arange(120) + 0.5, np.arange(100) + 0.5)
    xs, ys = transform * (cols, rows)
    x0, x1, y0, y1 = np.percentile(xs, 30), np.percentile(xs, 70), np.percentile(ys, 30), np.percentile(ys, 70)
    lons, lats = rasterio.warp.transform("EPSG:32618", "EPSG:4326", [x0, x1], [y0, y1])
    out = compute(b4.clip(ee.Geometry.BBox(lons[0], lats[0], lons[1], lats[1])), window_grid())
    plon, plat = rasterio.warp.transform("EPSG:32618", "EPSG:4326", xs.ravel(), ys.ravel())
    inside = ((np.array(plon) > lons[0]) & (np.array(plon) < lons[1]) & (np.array(plat) > lats[0])
              & (np.array(plat) < lats[1])).reshape(100, 120)
    assert 0.05 < inside.mean() < 0.5
    np.testing.assert_array_equal(out["B4"], np.where(inside & ok[0], data[0], 0))


def test_collection_to_list_properties_and_band_math(emulator, stack_arrays):
    collection = ee.ImageCollection(STACK)
    out = compute(ee.Image(collection.toList(1, 2).get(0)), window_grid(), ["B3"])
    np.testing.assert_array_equal(out["B3"], stack_arrays[(2, 1) + WINDOW])
    doubled = collection.map(lambda i: i.multiply(2))  # band math drops the properties, as in EE ...
    assert doubled.aggregate_array("system:time_start").getInfo() == []
    assert doubled.aggregate_array("system:index").getInfo() == ["c0", "c1", "c2"]  # ... map keeps the index
    kept = collection.map(lambda i: i.multiply(2).copyProperties(i, ["system:time_start"]).set("k", 1))
    assert len(kept.aggregate_array("system:time_start").getInfo()) == 3
    assert kept.aggregate_array("k").getInfo() == [1, 1, 1] and kept.size().getInfo() == 3
    image = ee.Image(LANDSAT)
    out = compute(image.normalizedDifference(["B4", "B3"]).addBands(image.select("B4").remap([0, 96], [5, 6])),
                  window_grid())
    with rasterio.open(RGB) as ds:
        data = ds.read(window=WINDOW).astype(np.float64)
    total = data[0] + data[1]
    valid = (data[0] != 0) & (data[1] != 0) & (total != 0)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(out["nd"], np.where(valid, (data[0] - data[1]) / total, 0).astype(np.float32))
    remapped = np.where(data[0] == 96, 6, 0)  # 0 is masked in the source: unmatched values are masked
    np.testing.assert_array_equal(out["remapped"], remapped)
