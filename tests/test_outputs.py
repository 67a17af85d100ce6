"""Layout and type options: `bands_axis` through NPY and dataset.json, the per-patch file options,
and every GDAL resampling name of the raster source (config validation and pixels)."""

import json
import os

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.config import ConfigError, parse_config
from pixelbeam.transforms.formats.files import PatchFileOptions, encode_patch_files, npy_layout, npy_shape
from pixelbeam.transforms.patch import Patch, PatchSpec
from pixelbeam.transforms.sources.raster import RasterSource
from pixelbeam.transforms.fetching.sizing import RequestPart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")


def run_config(tmp_path, **output):
    doc = {"source": {"uri": LANDSAT}, "regions": REGIONS,
           "grid": {"crs": "native", "scale": "native", "patch_size": 40, "overlap": 0, "margin": 3},
           "output": {"path": str(tmp_path / "out"), "max_masked_ratio": 0.9, **output},
           "fetch": {"max_concurrent_requests": 4}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


# -- bands_axis ----------------------------------------------------------------------------

def test_npy_layout_and_shape():
    data = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert npy_layout(data[0], 0) is data[0] or (npy_layout(data[0], 0) == data[0]).all()
    np.testing.assert_array_equal(npy_layout(data[0], -1), data[0].transpose(1, 2, 0))
    np.testing.assert_array_equal(npy_layout(data, -1), data.transpose(0, 2, 3, 1))  # time stacks: (T, H, W, C)
    assert npy_layout(data[0], -1).flags.c_contiguous
    assert npy_shape(3, 4, 5, 0) == [3, 4, 5] and npy_shape(3, 4, 5, -1) == [4, 5, 3]
    assert npy_shape(3, 4, 5, -1, time_steps=2) == [2, 4, 5, 3]


def test_bands_axis_last_round_trips_through_npy_and_dataset_json(tmp_path):
    assert main(["run", run_config(tmp_path / "first", formats=["npy"])]) == 0
    assert main(["run", run_config(tmp_path / "last", formats=["npy", "tfrecord"], bands_axis=-1)]) == 0
    first, last = tmp_path / "first" / "out", tmp_path / "last" / "out"
    meta = json.loads((last / "dataset.json").read_text())
    assert meta["bands_axis"] == -1 and meta["npy_shape"] == [46, 46, 3]
    assert meta["config"]["output"]["bands_axis"] == -1
    assert meta["tfrecord"]["features"]["B1"]["shape"] == [46, 46]  # TFRecord keeps one feature per band
    meta0 = json.loads((first / "dataset.json").read_text())
    assert meta0["bands_axis"] == 0 and meta0["npy_shape"] == [3, 46, 46]
    names = sorted(os.listdir(last / "npy"))
    assert names and names == sorted(os.listdir(first / "npy"))
    for name in names:
        hwc, chw = np.load(last / "npy" / name), np.load(first / "npy" / name)
        assert list(hwc.shape) == meta["npy_shape"] and hwc.dtype == np.uint8
        # a reader that honours dataset.json gets the same (C, H, W) array back
        np.testing.assert_array_equal(np.moveaxis(hwc, meta["bands_axis"], 0), chw)


def test_patch_file_options_check_their_arguments():
    with pytest.raises(ValueError, match="bands_axis must be 0"):
        PatchFileOptions(bands_axis=2)
    with pytest.raises(ValueError, match="not a per-patch format"):
        PatchFileOptions(formats=("tfrecord",))
    with pytest.raises(ValueError, match="png and jpeg need visualization"):
        PatchFileOptions(formats=("png",))
    assert PatchFileOptions(formats=("npy", "geotiff")).templates == ("npy/{patch_id}.npy", "geotiff/{patch_id}.tif")


def test_encode_patch_files_in_format_order():
    spec = PatchSpec("p_r0_c0", "r", "EPSG:32618", (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), 8, 8)
    patch = Patch(spec, np.ones((2, 8, 8), np.int16), np.ones((8, 8), bool), ("a", "b"))
    files = encode_patch_files(patch, PatchFileOptions(formats=("geotiff", "npy"), bands_axis=-1))
    assert [f for f, _ in files] == ["geotiff/p_r0_c0.tif", "npy/p_r0_c0.npy"]
    assert files[0][1][:4] == b"II*\x00" and files[1][1][:6] == b"\x93NUMPY"


# -- resampling names of the raster source ----------------------------------------------------

NAMES = {"near": Resampling.nearest, "nearest": Resampling.nearest, "bilinear": Resampling.bilinear,
         "cubic": Resampling.cubic, "average": Resampling.average, "mode": Resampling.mode,
         "min": Resampling.min, "max": Resampling.max, "med": Resampling.med, "q1": Resampling.q1,
         "q3": Resampling.q3, "lanczos": Resampling.lanczos, "cubic_spline": Resampling.cubic_spline}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_every_gdal_resampling_name_is_accepted_and_matches_gdal_warp(name):
    config = parse_config({"source": {"uri": LANDSAT, "resampling": name}, "regions": REGIONS,
                           "output": {"path": "out"}})
    assert config.source.resampling == name
    # a 40 x 40 px patch at 700 m (the file is ~300 m): a downsampling warp with `name`
    spec = PatchSpec("p", "r", "EPSG:32618", (700.0, 0.0, 200200.0, 0.0, -700.0, 2760200.0), 40, 40)
    source = RasterSource(uris=(LANDSAT,), resampling=name)
    reader = source.open()
    try:
        got = reader.fetch(spec, RequestPart(bands=(0, 1, 2), col_off=0, row_off=0, width=40, height=40))
    finally:
        reader.close()
    expected = np.zeros((3, 40, 40), np.uint8)
    with rasterio.open(LANDSAT) as ds:
        reproject(rasterio.band(ds, [1, 2, 3]), expected, dst_transform=Affine(*spec.transform),
                  dst_crs="EPSG:32618", resampling=NAMES[name], src_nodata=0, dst_nodata=0)
    np.testing.assert_array_equal(got.data, expected)
    assert got.mask.mean() > 0.5


@pytest.mark.parametrize("name", ["gauss", "bicubic", "nearest-neighbour"])
def test_unknown_raster_resampling_is_a_one_line_config_error(name):
    with pytest.raises(ConfigError) as e:
        parse_config({"source": {"uri": LANDSAT, "resampling": name}, "regions": REGIONS, "output": {"path": "out"}})
    assert str(e.value).startswith(f"config: source.resampling: {name!r} is not a GDAL warp resampling; use one of near, "
                                   "bilinear, cubic")
    assert "\n" not in str(e.value)
