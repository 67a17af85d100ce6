"""GeoTIFF per patch: the pure writer read back by rasterio, the COG layout checked the way GDAL's
own validator does (and by that validator where GDAL's Python utilities are installed), and the
pipeline's GeoTIFFs equal to its NPY files."""

import json
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.io import MemoryFile

from pixelbeam.pipeline.cli import main
from pixelbeam.transforms.formats.geotiff import has_cog_driver, patch_to_geotiff_bytes
from pixelbeam.transforms.patch import Patch, PatchSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")


def make_patch(size=40, margin=3, bands=3, dtype="uint8", steps=None, seed=0):
    rng = np.random.default_rng(seed)
    spec = PatchSpec("epsg32618_r4_c-7", "region-a", "EPSG:32618", (30.0, 0.0, 500010.0, 0.0, -30.0, 2800020.0),
                     size, size, row=4, col=-7, margin=margin)
    shape = (bands, spec.fetch_height, spec.fetch_width)
    if steps:
        shape = (steps,) + shape
    if np.dtype(dtype).kind == "f":
        data = rng.normal(100, 50, shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    mask = rng.random((spec.fetch_height, spec.fetch_width)) > 0.2
    mask[:5, :] = False
    return Patch(spec, data, mask, tuple(f"band_{i}" for i in range(bands)),
                 times=tuple(f"2020-01-0{t + 1}" for t in range(steps)) if steps else ())


def open_bytes(raw):
    mf = MemoryFile(raw)
    return mf, mf.open()


# -- a port of the checks of GDAL's validate_cloud_optimized_geotiff.py ------------------

def cog_layout_errors(raw: bytes) -> list[str]:
    """The structural checks GDAL's COG validator makes, on the bytes of a GeoTIFF: the main
    IFD right after the header and GDAL's ghost area (LAYOUT=IFDS_BEFORE_DATA, BLOCK_ORDER=
    ROW_MAJOR), tiled, overview IFDs after the main IFD in decreasing size, the data of the
    smallest overview first and of the full resolution last, every block's leader (its size
    as uint32) and trailer (its last 4 bytes repeated) as the ghost area promises."""
    errors = []
    bigtiff = raw[:4] in (b"II+\x00", b"MM\x00+")
    header = 16 if bigtiff else 8
    first_ifd = struct.unpack("<Q" if bigtiff else "<I", raw[8:16] if bigtiff else raw[4:8])[0]
    pattern = b"GDAL_STRUCTURAL_METADATA_SIZE="
    if raw[header:header + len(pattern)] != pattern:
        return ["no GDAL structural metadata (ghost area) after the header"]
    size = int(raw[header + len(pattern):header + len(pattern) + 6])
    ghost = raw[header + len(pattern) + 13:header + len(pattern) + 13 + size].decode("latin1")
    for needed in ("LAYOUT=IFDS_BEFORE_DATA", "BLOCK_ORDER=ROW_MAJOR"):
        if needed not in ghost:
            errors.append(f"ghost area lacks {needed}")
    expected = header + len(pattern) + 13 + size
    expected += expected % 2
    if first_ifd != expected:
        errors.append(f"main IFD at {first_ifd}, expected {expected}")
    leader = "BLOCK_LEADER=SIZE_AS_UINT4" in ghost
    trailer = "BLOCK_TRAILER=LAST_4_BYTES_REPEATED" in ghost
    with MemoryFile(raw) as mf, mf.open() as ds:
        if ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            errors.append("GDAL does not report LAYOUT=COG")
        if not ds.profile.get("tiled"):
            errors.append("not tiled")
        levels = [None] + list(range(len(ds.overviews(1))))
        ifds = [int(ds.get_tag_item("IFD_OFFSET", "TIFF", bidx=1, ovr=o)) for o in levels]
        if ifds[0] != first_ifd:
            errors.append("band 1 IFD is not the first IFD")
        if ifds != sorted(ifds):
            errors.append(f"IFDs not in increasing offsets main -> smallest overview: {ifds}")
        firsts = []
        for o in levels:
            offsets = []
            w, h = (ds.width, ds.height) if o is None else _overview_size(ds, o)
            bw, bh = ds.block_shapes[0][1], ds.block_shapes[0][0]
            for y in range(-(-h // bh)):
                for x in range(-(-w // bw)):
                    for b in range(1, ds.count + 1):
                        off = int(ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=b, ovr=o) or 0)
                        n = int(ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=b, ovr=o) or 0)
                        if off:
                            offsets.append(off)
                            if leader and struct.unpack("<I", raw[off - 4:off])[0] != n:
                                errors.append(f"block {x},{y} of level {o}: bad leader")
                            if trailer and n >= 4 and raw[off + n - 4:off + n] != raw[off + n:off + n + 4]:
                                errors.append(f"block {x},{y} of level {o}: bad trailer")
            if offsets != sorted(offsets):
                errors.append(f"blocks of level {o} are not in row-major order")
            firsts.append(min(offsets) if offsets else 0)
        if firsts[-1] and firsts[-1] < ifds[-1]:
            errors.append("data of the smallest level start before its IFD")
        if firsts != sorted(firsts, reverse=True):
            errors.append(f"data not ordered smallest overview first, full resolution last: {firsts}")
    return errors


def _overview_size(ds, index):
    factor = ds.overviews(1)[index]
    return -(-ds.width // factor), -(-ds.height // factor)


GDAL_VALIDATOR = ("/usr/bin/python3", "-m", "osgeo_utils.samples.validate_cloud_optimized_geotiff")


def gdal_validator_available() -> bool:
    if not shutil.which(GDAL_VALIDATOR[0]):
        return False
    probe = subprocess.run([GDAL_VALIDATOR[0], "-c", "import osgeo_utils.samples.validate_cloud_optimized_geotiff"],
                           capture_output=True)
    return probe.returncode == 0


# -- the pure writer -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "float32", "float64"])
def test_geotiff_round_trips_pixels_mask_georeference_and_metadata(dtype):
    patch = make_patch(dtype=dtype)
    if np.dtype(dtype).kind == "f":
        patch.data[0, 7, 7] = np.nan
    mf, ds = open_bytes(patch_to_geotiff_bytes(patch))
    with mf, ds:
        np.testing.assert_array_equal(ds.read(), patch.data)
        assert ds.dtypes[0] == dtype
        assert ds.crs.to_string() == "EPSG:32618"
        assert tuple(ds.transform)[:6] == patch.spec.fetch_transform
        assert ds.transform * (3, 3) == (500010.0, 2800020.0)  # the patch proper starts after the margin
        assert ds.nodata is None  # the mask is an internal mask band, not a nodata value
        assert all(flags == [rasterio.enums.MaskFlags.per_dataset] for flags in ds.mask_flag_enums)
        np.testing.assert_array_equal(ds.dataset_mask() > 0, patch.mask)
        np.testing.assert_array_equal(ds.read_masks(2) > 0, patch.mask)
        assert ds.descriptions == ("band_0", "band_1", "band_2")
        tags = ds.tags()
        assert tags["patch_id"] == "epsg32618_r4_c-7" and tags["region_id"] == "region-a" and tags["margin"] == "3"
        structure = ds.tags(ns="IMAGE_STRUCTURE")
        assert structure["COMPRESSION"] == "DEFLATE"
        assert structure["PREDICTOR"] == ("3" if np.dtype(dtype).kind == "f" else "2")
        assert ds.profile["tiled"] and ds.block_shapes[0] == (128, 128)
        assert ds.overviews(1) == []  # 46 px: no overviews needed


def test_time_stack_is_written_as_step_band_layers_with_one_mask():
    patch = make_patch(bands=2, steps=3)
    mf, ds = open_bytes(patch_to_geotiff_bytes(patch))
    with mf, ds:
        assert ds.count == 6 and ds.descriptions == ("0_band_0", "0_band_1", "1_band_0", "1_band_1", "2_band_0", "2_band_1")
        np.testing.assert_array_equal(ds.read(), patch.data.reshape(6, *patch.data.shape[2:]))
        assert ds.tags()["times"] == "2020-01-01,2020-01-02,2020-01-03"


@pytest.mark.parametrize("driver", ["COG", "GTiff"])
def test_large_patch_is_a_cloud_optimized_geotiff_with_overviews(driver, tmp_path):
    if driver == "COG" and not has_cog_driver():
        pytest.skip("GDAL without the COG driver")
    patch = make_patch(size=600, margin=4, dtype="uint16", seed=3)
    raw = patch_to_geotiff_bytes(patch, driver=driver)
    mf, ds = open_bytes(raw)
    with mf, ds:
        np.testing.assert_array_equal(ds.read(), patch.data)
        np.testing.assert_array_equal(ds.dataset_mask() > 0, patch.mask)
        assert ds.overviews(1) == [2, 4] and ds.block_shapes[0] == (256, 256)
        assert ds.tags()["patch_id"] == patch.spec.patch_id
        # nearest-neighbour overviews: every overview value is a value of the patch
        overview = ds.read(1, out_shape=(76, 76))
        assert np.isin(overview, patch.data[0]).all()
    assert cog_layout_errors(raw) == []
    if gdal_validator_available():
        path = tmp_path / "patch.tif"
        path.write_bytes(raw)
        done = subprocess.run([*GDAL_VALIDATOR, "--full-check=yes", str(path)], capture_output=True, text=True)
        assert done.returncode == 0 and "is a valid cloud optimized GeoTIFF" in done.stdout, done.stdout + done.stderr


def test_layout_check_rejects_a_plain_striped_geotiff():
    with open(LANDSAT, "rb") as f:
        assert cog_layout_errors(f.read()) == ["no GDAL structural metadata (ghost area) after the header"]
    with MemoryFile() as mf:
        with mf.open(driver="GTiff", width=600, height=600, count=1, dtype="uint8", tiled=True,
                     blockxsize=256, blockysize=256, crs="EPSG:4326", transform=Affine(0.1, 0, 10, 0, -0.1, 50)) as ds:
            ds.write(np.ones((1, 600, 600), np.uint8))
            ds.build_overviews([2, 4])
        errors = cog_layout_errors(mf.read())
    assert errors  # overviews added after the data: not a COG


@pytest.mark.skipif(not gdal_validator_available(), reason="GDAL's Python utilities (python3-gdal) not installed")
def test_gdal_validator_accepts_small_patches_and_rejects_the_source_file(tmp_path):
    path = tmp_path / "small.tif"
    path.write_bytes(patch_to_geotiff_bytes(make_patch()))
    ok = subprocess.run([*GDAL_VALIDATOR, "--full-check=yes", str(path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([*GDAL_VALIDATOR, LANDSAT], capture_output=True, text=True)
    assert bad.returncode == 1 and "NOT a valid cloud optimized GeoTIFF" in bad.stdout


# -- through the pipeline ----------------------------------------------------------------

def test_pipeline_geotiffs_equal_npy_pixels_crs_transform_and_mask(tmp_path):
    import yaml
    doc = {"source": {"uri": LANDSAT}, "regions": REGIONS,
           "grid": {"crs": "native", "scale": "native", "patch_size": 48, "overlap": 4, "margin": 2},
           "output": {"path": str(tmp_path / "out"), "formats": ["npy", "geotiff", "tfrecord"],
                      "max_masked_ratio": 0.9},
           "fetch": {"max_concurrent_requests": 4}}
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["run", str(cfg)]) == 0
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    written = [r for r in rows if r["status"] == "written"]
    assert written
    for row in written:
        pid = row["patch_id"]
        assert row["files"][:2] == [f"npy/{pid}.npy", f"geotiff/{pid}.tif"]
        assert row["files"][2].startswith("tfrecord/") and len(row["files"]) == 3
        arr = np.load(out / "npy" / f"{pid}.npy")
        with rasterio.open(out / "geotiff" / f"{pid}.tif") as ds:
            np.testing.assert_array_equal(ds.read(), arr)
            assert ds.crs.to_string() == row["crs"] == "EPSG:32618"
            expected = Affine(*row["transform"]) * Affine.translation(-row["margin"], -row["margin"])
            assert ds.transform.almost_equals(expected, precision=1e-9)
            np.testing.assert_array_equal(ds.dataset_mask() > 0, (arr != 0).all(axis=0))  # RGB.byte.tif: nodata 0
            assert ds.descriptions == ("B1", "B2", "B3") and ds.tags()["patch_id"] == pid
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    filtered = [r for r in rows if r["status"] == "filtered"]
    assert all(not (out / "geotiff" / f"{r['patch_id']}.tif").exists() for r in filtered)
    assert not [p for p in os.listdir(out / "geotiff") if p.startswith(".tmp-")]


def test_geotiff_is_written_atomically_to_gcs(monkeypatch):
    """The same Beam FileSystems path as NPY: to gs:// (a local Cloud Storage emulator)."""
    pytest.importorskip("google.cloud.storage")
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    import socket

    from apache_beam.io.filesystems import FileSystems

    from pixelbeam.transforms.storage import write_atomically
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="patches")
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    from apache_beam.internal.gcp import auth
    monkeypatch.setattr(auth, "get_service_credentials", lambda options: None)  # anonymous: no credential lookups
    try:
        patch = make_patch()
        raw = patch_to_geotiff_bytes(patch)
        write_atomically("gs://patches/out/geotiff/p.tif", raw)
        listed = [m.path for m in FileSystems.match(["gs://patches/out/**"])[0].metadata_list]
        assert listed == ["gs://patches/out/geotiff/p.tif"]  # no temporary file left
        with FileSystems.open("gs://patches/out/geotiff/p.tif") as f:
            back = f.read()
    finally:
        server.stop()
    mf, ds = open_bytes(back)
    with mf, ds:
        np.testing.assert_array_equal(ds.read(), patch.data)
        np.testing.assert_array_equal(ds.dataset_mask() > 0, patch.mask)
