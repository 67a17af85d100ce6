"""The whole path on the real Landsat scene, read back by numpy, rasterio and TensorFlow."""

import glob
import json
import os

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.config import load_config
from pixelbeam.pipeline.plan import prepare_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")


def write_config(tmp_path, **sections):
    doc = {
        "source": {"kind": "raster", "uri": LANDSAT, "bands": [1, 2, 3]},
        "regions": REGIONS,
        "grid": {"crs": "native", "scale": "native", "patch_size": 48, "overlap": 4, "margin": 2},
        "output": {"path": str(tmp_path / "out"), "formats": ["tfrecord", "npy"]},
        "fetch": {"max_concurrent_requests": 4},
    }
    for key, value in sections.items():
        doc[key] = {**doc[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def parse_tfrecords(out_dir):
    tf = pytest.importorskip("tensorflow")
    with open(os.path.join(out_dir, "dataset.json")) as f:
        spec = json.load(f)["tfrecord"]["features"]
    dtypes = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}
    features = {k: tf.io.FixedLenFeature(v["shape"], dtypes[v["dtype"]]) for k, v in spec.items()}
    files = sorted(glob.glob(os.path.join(out_dir, "tfrecord", "*.tfrecord.gz")))
    assert files, "no TFRecord shards written"
    records = {}
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.io.parse_single_example(raw, features)
        records[ex["patch_id"].numpy().decode()] = {k: v.numpy() for k, v in ex.items()}
    return records


@pytest.fixture(scope="module")
def native_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("native")
    cfg = write_config(tmp, output={"max_masked_ratio": 0.9})
    assert main(["run", cfg]) == 0
    return cfg, str(tmp / "out")


def test_native_grid_pixels_equal_a_direct_window_read(native_run):
    cfg, out = native_run
    rows = [r for r in read_jsonl(os.path.join(out, "manifest.jsonl")) if r["status"] == "written"]
    assert rows
    with rasterio.open(LANDSAT) as ds:
        for row in rows:
            arr = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
            a, b, c, d, e, f = row["transform"]
            col0, row0 = ~ds.transform * (c, f)
            m = row["margin"]
            window = Window(round(col0) - m, round(row0) - m, row["width"] + 2 * m, row["height"] + 2 * m)
            expected = ds.read([1, 2, 3], window=window, boundless=True, fill_value=0)
            assert arr.dtype == np.uint8 and arr.shape == (3, 52, 52)
            np.testing.assert_array_equal(arr, expected)


def test_manifest_accounts_for_every_planned_patch(native_run):
    cfg, out = native_run
    planned = {s.patch_id for s in prepare_job(load_config(cfg)).specs}
    rows = read_jsonl(os.path.join(out, "manifest.jsonl"))
    assert sorted(r["patch_id"] for r in rows) == sorted(planned)
    statuses = {r["status"] for r in rows}
    assert statuses <= {"written", "filtered", "failed"} and "written" in statuses and "filtered" in statuses
    for r in rows:
        if r["status"] == "filtered":
            assert (r["valid_fraction"] < 0.1 and "max_masked_ratio" in r["reason"]
                    or r["valid_fraction"] == 0 and r["reason"].startswith("no valid pixel")), r
            assert not os.path.exists(os.path.join(out, "npy", f"{r['patch_id']}.npy"))
        lon0, lat0, lon1, lat1 = r["bounds_lonlat"]
        assert -79.5 < lon0 < lon1 < -76 and 23 < lat0 < lat1 < 26
    assert read_jsonl(os.path.join(out, "failed.jsonl")) == []
    written = {r["patch_id"] for r in rows if r["status"] == "written"}
    assert {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(out, "npy", "*.npy"))} == written
    assert not glob.glob(os.path.join(out, "npy", ".tmp-*"))


@pytest.mark.parametrize("keep_empty", [False, True])
def test_patches_without_a_valid_pixel_are_filtered_by_default(tmp_path, keep_empty):
    """The default max_masked_ratio (1.0, Earth Engine's meaning: masked fraction above it) keeps
    every patch with a valid pixel; a patch with none is written only with output.keep_empty."""
    output = {"keep_empty": True} if keep_empty else {}
    cfg = write_config(tmp_path, output=output, grid={"overlap": 0, "margin": 0})
    assert main(["run", cfg]) == 0
    rows = read_jsonl(os.path.join(str(tmp_path / "out"), "manifest.jsonl"))
    empty = [r for r in rows if r["valid_fraction"] == 0]
    assert empty and any(0 < r["valid_fraction"] < 1 for r in rows)  # the scene's edge: both kinds
    assert all(r["status"] == "written" for r in rows if r["valid_fraction"] > 0)
    for r in empty:
        path = os.path.join(str(tmp_path / "out"), "npy", f"{r['patch_id']}.npy")
        if keep_empty:
            assert r["status"] == "written" and not np.load(path).any()
        else:
            assert r["status"] == "filtered" and r["reason"].startswith("no valid pixel") and not os.path.exists(path)


def test_tfrecords_parse_with_tensorflow_and_match_npy(native_run):
    cfg, out = native_run
    records = parse_tfrecords(out)
    written = [r for r in read_jsonl(os.path.join(out, "manifest.jsonl")) if r["status"] == "written"]
    assert set(records) == {r["patch_id"] for r in written}
    with rasterio.open(LANDSAT) as ds:
        for row in written:
            rec = records[row["patch_id"]]
            arr = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
            for i, band in enumerate(["B1", "B2", "B3"]):
                np.testing.assert_array_equal(rec[band], arr[i].astype(np.float32))
            # mask: 1 where every band is valid (RGB.byte.tif: nodata 0)
            np.testing.assert_array_equal(rec["mask"], (arr != 0).all(axis=0).astype(np.float32))
            exact = np.frombuffer(rec["transform_f64"], "<f8")
            m = row["margin"]
            expected = Affine(*row["transform"]) * Affine.translation(-m, -m)
            np.testing.assert_allclose(exact, tuple(expected)[:6], rtol=0, atol=1e-9)
            assert rec["crs"].decode() == "EPSG:32618"
            # the transform names the same pixels in the source file
            col0, row0 = ~ds.transform * (exact[2], exact[5])
            assert abs(col0 - round(col0)) < 1e-6 and abs(row0 - round(row0)) < 1e-6


def test_dataset_json_describes_the_output(native_run):
    cfg, out = native_run
    with open(os.path.join(out, "dataset.json")) as f:
        meta = json.load(f)
    assert meta["bands"] == ["B1", "B2", "B3"] and meta["dtype"] == "uint8"
    assert meta["npy_shape"] == [3, 52, 52]
    assert meta["config"]["grid"]["patch_size"] == 48


def test_reprojected_grid_matches_gdal_warp(tmp_path):
    cfg = write_config(tmp_path, grid={"crs": "EPSG:32618", "scale": 250, "patch_size": 40, "overlap": 0,
                                       "margin": 0}, output={"formats": ["npy"]})
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    rows = [r for r in read_jsonl(os.path.join(out, "manifest.jsonl")) if r["status"] == "written"]
    assert len(rows) > 20
    with rasterio.open(LANDSAT) as ds:
        for row in rows:
            arr = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
            expected = np.zeros_like(arr)
            reproject(rasterio.band(ds, [1, 2, 3]), expected, dst_transform=Affine(*row["transform"]),
                      dst_crs="EPSG:32618", resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
            np.testing.assert_array_equal(arr, expected)


def test_other_crs_and_bilinear_resampling_match_gdal_warp(tmp_path):
    cfg = write_config(tmp_path, source={"resampling": "bilinear"},
                       grid={"crs": "EPSG:4326", "scale": 0.005, "patch_size": 32, "overlap": 0, "margin": 0},
                       output={"formats": ["npy"]})
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    rows = [r for r in read_jsonl(os.path.join(out, "manifest.jsonl")) if r["status"] == "written"]
    assert rows and all(r["crs"] == "EPSG:4326" for r in rows)
    with rasterio.open(LANDSAT) as ds:
        for row in rows:
            arr = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
            expected = np.zeros_like(arr)
            reproject(rasterio.band(ds, [1, 2, 3]), expected, dst_transform=Affine(*row["transform"]),
                      dst_crs="EPSG:4326", resampling=Resampling.bilinear, src_nodata=0, dst_nodata=0)
            np.testing.assert_array_equal(arr, expected)


def test_mosaic_of_two_files_later_wins_where_valid(tmp_path):
    with rasterio.open(LANDSAT) as ds:
        profile, data = ds.profile, ds.read()
    second = data.copy()
    second[:, :, : data.shape[2] // 2] = 0  # left half nodata: the first file shows through
    second[second != 0] = np.clip(second[second != 0].astype(int) + 7, 1, 255).astype(np.uint8)
    path = tmp_path / "second.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(second)
    cfg = write_config(tmp_path, source={"uri": [LANDSAT, str(path)]}, grid={"margin": 0},
                       output={"formats": ["npy"]})
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    with rasterio.open(LANDSAT) as ds:
        for row in read_jsonl(os.path.join(out, "manifest.jsonl")):
            if row["status"] != "written":
                continue
            arr = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
            col0, row0 = ~ds.transform * (row["transform"][2], row["transform"][5])
            w = Window(round(col0), round(row0), 48, 48)
            a = ds.read(window=w, boundless=True, fill_value=0)
            with rasterio.open(path) as ds2:
                b = ds2.read(window=w, boundless=True, fill_value=0)
            valid_b = (b != 0).all(axis=0)
            np.testing.assert_array_equal(arr, np.where(valid_b[None], b, a))
