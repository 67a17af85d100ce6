"""The Earth Engine source end to end: the real `ee` client, pixelbeam's pipeline, and a local
Earth Engine REST emulator serving the real Landsat scene."""

import glob
import json
import os

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.windows import Window

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.config import load_config
from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
from pixelbeam.pipeline.plan import plan_summary, prepare_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")
ASSET = "projects/demo/assets/landsat"
COLLECTION = "DEMO/LANDSAT_TIMES"

with rasterio.open(LANDSAT) as _ds:
    NATIVE = {"crs": "EPSG:32618", "scale": [_ds.transform.a, -_ds.transform.e],
              "origin": [_ds.transform.c, _ds.transform.f]}


@pytest.fixture(scope="module")
def collection_files(tmp_path_factory):
    """Three dated copies of the scene: +0, +20 with the west third nodata, +40 with the north half nodata."""
    tmp = tmp_path_factory.mktemp("collection")
    with rasterio.open(LANDSAT) as ds:
        profile, data = ds.profile, ds.read()
    valid = data != 0
    files = []
    for i, (shift, blank) in enumerate([(0, None), (20, (slice(None), slice(0, 264))),
                                        (40, (slice(0, 359), slice(None)))]):
        img = np.where(valid, np.clip(data.astype(int) + shift, 1, 255), 0).astype(np.uint8)
        if blank is not None:
            img[(slice(None),) + blank] = 0
        path = tmp / f"scene_{i}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(img)
        files.append(str(path))
    return files


def catalog(collection_files):
    return {
        "images": {ASSET: {"path": LANDSAT, "bands": ["B1", "B2", "B3"]}},
        "collections": {COLLECTION: [
            {"id": f"{COLLECTION}/2020010{i + 1}", "path": p, "bands": ["B1", "B2", "B3"],
             "time_start": f"2020-01-0{i + 1}", "properties": {"CLOUD": 10 * i}}
            for i, p in enumerate(collection_files)]},
    }


@pytest.fixture(scope="module")
def emulator(collection_files):
    with EmulatorServer(catalog(collection_files), EmulatorConfig(max_concurrent=8)) as server:
        yield server


def ee_config(tmp_path, url, source=None, grid=None, fetch=None, output=None):
    doc = {
        "source": {"kind": "earthengine", "asset": ASSET, "url": url, "credentials": "anonymous",
                   "project": "demo", **(source or {})},
        "regions": REGIONS,
        "grid": {**NATIVE, "patch_size": 64, **(grid or {})},
        "output": {"path": str(tmp_path / "out"), "keep_empty": True, **(output or {})},  # every patch, empty ones too
        "fetch": {"max_concurrent_requests": 8, **(fetch or {})},
    }
    path = tmp_path / "ee.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def rows_of(out):
    with open(os.path.join(out, "manifest.jsonl")) as f:
        return [json.loads(line) for line in f]


def window_of(ds, row):
    col0, row0 = ~ds.transform * (row["transform"][2], row["transform"][5])
    m = row["margin"]
    return Window(round(col0) - m, round(row0) - m, row["width"] + 2 * m, row["height"] + 2 * m)


def tf_masks(out):
    tf = pytest.importorskip("tensorflow")
    masks = {}
    files = glob.glob(os.path.join(out, "tfrecord", "*.tfrecord.gz"))
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.train.Example.FromString(raw.numpy())
        f = ex.features.feature
        h = w = int(np.sqrt(len(f["mask"].float_list.value)))
        masks[f["patch_id"].bytes_list.value[0].decode()] = np.array(f["mask"].float_list.value).reshape(h, w)
    return masks


@pytest.mark.parametrize("mask", ["none", "source"])
def test_asset_pixels_equal_the_source_exactly(tmp_path, emulator, mask):
    """mask none -> getPixels; mask source -> computePixels with a validity band."""
    cfg = ee_config(tmp_path, emulator.url, source={"mask": mask}, grid={"margin": 3})
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    rows = rows_of(out)
    assert rows and {r["status"] for r in rows} == {"written"}
    masks = tf_masks(out)
    with rasterio.open(LANDSAT) as ds:
        for row in rows:
            arr = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
            expected = ds.read(window=window_of(ds, row), boundless=True, fill_value=0)
            assert arr.dtype == np.uint8 and arr.shape == (3, 70, 70)
            np.testing.assert_array_equal(arr, expected)
            valid = (expected != 0).all(axis=0) if mask == "source" else np.ones((70, 70), bool)
            np.testing.assert_array_equal(masks[row["patch_id"]], valid.astype(np.float32))
            assert row["valid_fraction"] == pytest.approx(valid.mean(), abs=1e-6)


def test_collection_median_composite(tmp_path, emulator, collection_files):
    cfg = ee_config(tmp_path, emulator.url, source={
        "asset": None, "collection": COLLECTION, "start": "2020-01-01", "end": "2020-02-01",
        "filters": [{"property": "CLOUD", "op": "lte", "value": 20}], "composite": "median"},
        output={"formats": ["npy"]})
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    stacks = []
    for path in collection_files:
        with rasterio.open(path) as ds:
            stacks.append(ds)
    with rasterio.open(collection_files[0]) as ds0:
        readers = [rasterio.open(p) for p in collection_files]
        for row in rows_of(out):
            arr = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
            window = window_of(ds0, row)
            values = np.stack([r.read(window=window, boundless=True, fill_value=0) for r in readers]).astype(float)
            expected = np.nanmedian(np.where(values != 0, values, np.nan), axis=0)
            expected = np.nan_to_num(expected, nan=0.0)
            assert arr.dtype == np.float64
            np.testing.assert_array_equal(arr, expected)
        for r in readers:
            r.close()


def test_patch_over_48_mib_is_split_and_reassembled(tmp_path, emulator):
    # one 4100 x 4100 px patch: 3 uint8 bands + the validity band = 67 MB > 48 MiB
    cfg = ee_config(tmp_path, emulator.url, grid={"patch_size": 4100},
                    output={"formats": ["npy"]})
    job = prepare_job(load_config(cfg))
    plan = plan_summary(job)
    assert plan["patches"] == 1 and plan["requests_per_patch"] > 1
    before = emulator.stats()["requests_received"]
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    (row,) = rows_of(out)
    assert row["requests"] == plan["requests_per_patch"]
    # the launcher's 1x1 px band-type probe, then the patch's requests
    assert emulator.stats()["requests_received"] - before == 1 + plan["requests_per_patch"]
    arr = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
    with rasterio.open(LANDSAT) as ds:
        np.testing.assert_array_equal(arr, ds.read(window=window_of(ds, row), boundless=True, fill_value=0))


def test_transient_faults_are_survived(tmp_path, collection_files):
    faults = EmulatorConfig(max_concurrent=6, fault_429=0.10, fault_500=0.02, fault_503=0.02, fault_hang=0.01,
                            hang_s=30.0, fault_reset=0.01, fault_truncate=0.01, seed=7)
    with EmulatorServer(catalog(collection_files), faults) as server:
        cfg = ee_config(tmp_path, server.url, grid={"patch_size": 32},
                        fetch={"max_concurrent_requests": 6, "timeout_s": 8, "max_attempts": 10,
                               "patches_per_request": 1},  # a request per patch (merged: test_merged_requests)
                        output={"formats": ["npy"]})
        assert main(["run", cfg]) == 0
        stats = server.stats()
    rows = rows_of(str(tmp_path / "out"))
    assert len(rows) > 100 and {r["status"] for r in rows} == {"written"}
    assert sum(stats["faults"].values()) + stats["rejected_429"]["injected"] > 10
    assert any(r["attempts"] > r["requests"] for r in rows)
    assert stats["peak_in_flight"] <= 6
    with rasterio.open(LANDSAT) as ds:
        for row in rows:
            arr = np.load(os.path.join(str(tmp_path / "out"), "npy", f"{row['patch_id']}.npy"))
            np.testing.assert_array_equal(arr, ds.read(window=window_of(ds, row), boundless=True, fill_value=0))


def test_unknown_asset_is_a_config_error_before_any_pixel_request(tmp_path, emulator, capsys):
    cfg = ee_config(tmp_path, emulator.url, source={"asset": "projects/demo/assets/missing"})
    assert main(["run", cfg]) == 2
    err = capsys.readouterr().err
    assert "Earth Engine refused asset 'projects/demo/assets/missing'" in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "out")


def test_anonymous_credentials_need_a_loopback_url(tmp_path, capsys):
    cfg = ee_config(tmp_path, "https://earthengine-highvolume.googleapis.com")
    assert main(["plan", cfg]) == 2
    assert "anonymous is only allowed for a loopback url" in capsys.readouterr().err


def test_permanent_errors_are_dead_lettered_and_the_rest_written(tmp_path, collection_files):
    faults = EmulatorConfig(max_concurrent=6, fault_400=0.05, fault_429=0.05, fault_503=0.02, seed=3)
    with EmulatorServer(catalog(collection_files), faults) as server:
        cfg = ee_config(tmp_path, server.url, grid={"patch_size": 32},
                        fetch={"max_concurrent_requests": 6, "max_attempts": 10, "patches_per_request": 1},
                        output={"formats": ["npy"]})  # a request per patch, so each fault hits one patch
        assert main(["run", cfg]) == 1  # some patches failed: exit status 1 (max_failed_fraction 0)
        injected_400 = server.stats()["errors_by_code"].get("400", 0)
    out = str(tmp_path / "out")
    rows = rows_of(out)
    failed = [r for r in rows if r["status"] == "failed"]
    assert injected_400 > 0 and len(failed) == injected_400
    # a permanent error is not retried: at most the transient errors before it were
    assert all("Injected permanent error 400" in r["reason"] and r["attempts"] >= 1 for r in failed)
    with open(os.path.join(out, "failed.jsonl")) as f:
        dead = [json.loads(line) for line in f]
    assert sorted(d["patch_id"] for d in dead) == sorted(r["patch_id"] for r in failed)
    assert all(d["stage"] == "fetch" and "PermanentError" in d["error_class"] for d in dead)
    written = [r for r in rows if r["status"] == "written"]
    assert len(written) + len(failed) == len(rows)
    assert {p[:-4] for p in os.listdir(os.path.join(out, "npy")) if p.endswith(".npy")} == {
        r["patch_id"] for r in written}


def test_a_patch_that_can_never_fit_is_a_plan_error(tmp_path, emulator, capsys):
    # one 200,000 px patch of 3 uint8 bands needs ~5,500 requests of <= 48 MiB: a config error
    cfg = ee_config(tmp_path, emulator.url, grid={"patch_size": 200000})
    before = emulator.stats()["requests_received"]
    assert main(["plan", cfg]) == 2
    err = capsys.readouterr().err
    assert "grid.patch_size:" in err and "use a smaller patch_size or fewer bands" in err and err.count("\n") == 1
    assert emulator.stats()["requests_received"] - before == 1  # the band-type probe only


def test_get_pixels_sends_the_configured_bands(tmp_path, collection_files):
    """mask none on an asset is getPixels: the probe and every request carry bandIds, so only
    source.bands are fetched, written and listed in dataset.json."""
    with EmulatorServer(catalog(collection_files), record=True) as server:
        cfg = ee_config(tmp_path, server.url, source={"mask": "none", "bands": ["B3", "B1"]},
                        output={"formats": ["npy"]})
        assert main(["run", cfg]) == 0
        bodies = [body for method, body in server.recorded if method == "getPixels"]
    assert bodies and all(body["bandIds"] == ["B3", "B1"] for body in bodies)
    out = str(tmp_path / "out")
    with open(os.path.join(out, "dataset.json")) as f:
        assert json.load(f)["bands"] == ["B3", "B1"]
    with rasterio.open(LANDSAT) as ds:
        for row in rows_of(out):
            arr = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
            expected = ds.read([3, 1], window=window_of(ds, row), boundless=True, fill_value=0)
            np.testing.assert_array_equal(arr, expected)


def test_an_interpreter_glitch_while_parsing_an_npy_answer_is_not_a_dead_letter(monkeypatch):
    """CI saw numpy's header parse fail with "SystemError: AST constructor recursion depth
    mismatch" (CPython 3.11, threads), which turned whole groups into dead letters: the same bytes
    are parsed again, and a truly broken answer is still a permanent error."""
    import io
    from pixelbeam.transforms.fetching.retry import PermanentError
    from pixelbeam.transforms.sources import earthengine
    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype="<f4").reshape(2, 3))
    real, calls = earthengine._NPY_HEADER_READERS[(1, 0)], []

    def glitchy(*args, **kwargs):  # numpy's header parse (ast.literal_eval), failing once
        calls.append(1)
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=42, after=37)")
        return real(*args, **kwargs)
    monkeypatch.setitem(earthengine._NPY_HEADER_READERS, (1, 0), glitchy)
    np.testing.assert_array_equal(earthengine.decode_npy(buf.getvalue()), np.arange(6, dtype="<f4").reshape(2, 3))
    assert len(calls) == 2
    with pytest.raises(PermanentError, match="undecodable NPY answer"):
        earthengine.decode_npy(b"\x93NUMPY not an array")
