"""Earth Engine source: resampling (`image.resample`) through the real `ee` client and the local
emulator, and the per-patch outputs (GeoTIFF, PNG rendered locally) of an Earth Engine job."""

import json
import os
import warnings

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from PIL import Image
from rasterio.enums import Resampling
from rasterio.warp import reproject

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.config import ConfigError, parse_config
from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
from pixelbeam.testing.ee_emulator import expressions, pixels
from pixelbeam.testing.ee_emulator.catalog import Catalog
from pixelbeam.testing.ee_emulator.pixels import EmulatorError
from pixelbeam.transforms.sources.earthengine import EarthEngineSource
from pixelbeam.transforms.formats.visualize import render_rgb, resolve_vis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")
ASSET = "projects/demo/assets/landsat"
COLLECTION = "DEMO/TWO_DATES"


def catalog():
    return {"images": {ASSET: {"path": LANDSAT, "bands": ["B1", "B2", "B3"]}},
            "collections": {COLLECTION: [
                {"id": f"{COLLECTION}/{i}", "path": LANDSAT, "bands": ["B1", "B2", "B3"],
                 "time_start": f"2020-01-0{i + 1}"} for i in range(2)]}}


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(catalog(), EmulatorConfig(max_concurrent=8)) as server:
        yield server


def ee_job(tmp_path, url, source=None, grid=None, output=None):
    doc = {"source": {"kind": "earthengine", "asset": ASSET, "url": url, "credentials": "anonymous",
                      "project": "demo", **(source or {})},
           "regions": REGIONS,
           "grid": {"crs": "EPSG:32618", "scale": 250, "patch_size": 40, **(grid or {})},
           "output": {"path": str(tmp_path / "out"), "formats": ["npy"], "keep_empty": True, **(output or {})},
           "fetch": {"max_concurrent_requests": 8}}
    path = tmp_path / "ee.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def written_rows(out):
    rows = [json.loads(line) for line in open(os.path.join(out, "manifest.jsonl"))]
    assert rows and {r["status"] for r in rows} == {"written"}
    return rows


def gdal_reference(row, crs, resampling):
    """GDAL's warp of the whole file onto the patch grid, band by band, as the emulator
    interpolates (nodata 0 excluded from the kernel), with its nearest-neighbour mask."""
    h, w = row["height"] + 2 * row["margin"], row["width"] + 2 * row["margin"]
    transform = Affine(*row["transform"]) * Affine.translation(-row["margin"], -row["margin"])
    data = np.zeros((3, h, w), np.uint8)
    valid = np.zeros((3, h, w), np.uint8)
    with rasterio.open(LANDSAT) as ds, warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # plain arrays, georeferenced here
        for i in range(3):
            reproject(rasterio.band(ds, i + 1), data[i], dst_transform=transform, dst_crs=crs,
                      resampling=resampling, src_nodata=0, dst_nodata=0)
            reproject(ds.read_masks(i + 1), valid[i], src_transform=ds.transform, src_crs=ds.crs,
                      dst_transform=transform, dst_crs=crs, resampling=Resampling.nearest,
                      src_nodata=None, dst_nodata=None)
    valid = valid > 0
    return np.where(valid, data, 0), valid.all(axis=0)


# -- config and source ---------------------------------------------------------------------

@pytest.mark.parametrize("name, mode", [("nearest", None), ("near", None), ("bilinear", "bilinear"),
                                        ("cubic", "bicubic"), ("bicubic", "bicubic")])
def test_ee_resampling_names_map_to_image_resample_modes(name, mode):
    doc = {"source": {"kind": "earthengine", "asset": ASSET, "resampling": name}, "regions": REGIONS,
           "output": {"path": "out"}}
    config = parse_config(doc)
    from pixelbeam.transforms.sources.earthengine import earthengine_source
    source = earthengine_source(config.source, timeout_s=10)
    assert source.resampling == mode


@pytest.mark.parametrize("name", ["average", "mode", "lanczos", "q1"])
def test_ee_rejects_resampling_it_does_not_have(name):
    doc = {"source": {"kind": "earthengine", "asset": ASSET, "resampling": name}, "regions": REGIONS,
           "output": {"path": "out"}}
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    assert str(e.value) == (f"config: source.resampling: {name!r} is not available in Earth Engine, which resamples "
                            f"with nearest (default), bilinear or cubic (bicubic) only; use one of those (got {name!r})")


def test_interpolation_needs_compute_pixels_even_without_mask():
    assert EarthEngineSource(asset=ASSET, mask="none").uses_get_pixels
    assert not EarthEngineSource(asset=ASSET, mask="none", resampling="bilinear").uses_get_pixels


# -- the emulator's Image.resample -----------------------------------------------------------

def call(name, **args):
    return {"functionInvocationValue": {"functionName": name, "arguments": args}}


def test_emulator_resample_interpolates_asset_bands_like_gdal():
    load = call("Image.load", id={"constantValue": ASSET})
    expression = {"result": "0", "values": {"0": call("Image.select", input=call(
        "Image.resample", image=load, mode={"constantValue": "bicubic"}), bandSelectors={"constantValue": ["B2"]})}}
    image = expressions.evaluate_image(expression, Catalog(catalog()))
    grid = pixels.Grid(rasterio.crs.CRS.from_epsg(32618), Affine(170.0, 0, 200000.0, 0, -170.0, 2750000.0), 60, 50)
    (band,) = image.bands
    got = band.pixels(grid)
    expected = np.zeros((50, 60), np.uint8)
    with rasterio.open(LANDSAT) as ds:
        reproject(rasterio.band(ds, 2), expected, dst_transform=grid.transform, dst_crs=grid.crs,
                  resampling=Resampling.cubic, src_nodata=0, dst_nodata=0)
    assert got.valid.mean() > 0.9
    np.testing.assert_array_equal(got.data[got.valid], expected[got.valid])
    nearest = expressions.evaluate_image({"result": "0", "values": {"0": load}}, Catalog(catalog())).bands[1]
    assert (nearest.pixels(grid).data != got.data).mean() > 0.3  # it did interpolate


def test_emulator_refuses_resample_of_a_composite_and_unknown_modes():
    coll = call("ImageCollection.load", id={"constantValue": COLLECTION})
    composite = call("reduce.median", collection=coll)
    with pytest.raises(EmulatorError, match="resample the images before compositing"):
        expressions.evaluate_image({"result": "0", "values": {"0": call("Image.resample", image=composite)}},
                                   Catalog(catalog()))
    load = call("Image.load", id={"constantValue": ASSET})
    with pytest.raises(EmulatorError, match="mode must be 'bilinear' or 'bicubic'"):
        expressions.evaluate_image({"result": "0", "values": {"0": call(
            "Image.resample", image=load, mode={"constantValue": "average"})}}, Catalog(catalog()))


# -- whole jobs through the ee client and the emulator ------------------------------------------

@pytest.mark.parametrize("name, resampling, mask", [("bilinear", Resampling.bilinear, "source"),
                                                    ("cubic", Resampling.cubic, "none")])
def test_ee_job_resamples_like_gdal(tmp_path, emulator, name, resampling, mask):
    cfg = ee_job(tmp_path, emulator.url, source={"resampling": name, "mask": mask}, grid={"margin": 2})
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    rows = written_rows(out)
    interpolated = 0
    for row in rows:
        arr = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
        expected, valid = gdal_reference(row, "EPSG:32618", resampling)
        np.testing.assert_array_equal(arr, expected)
        nearest, _ = gdal_reference(row, "EPSG:32618", Resampling.nearest)
        interpolated += int((arr != nearest).sum())
    assert interpolated > 1000  # not nearest neighbour (which getPixels would have given)


def test_ee_collection_composite_resamples_each_image(tmp_path, emulator):
    cfg = ee_job(tmp_path, emulator.url, source={"asset": None, "collection": COLLECTION, "composite": "max",
                                                 "resampling": "bilinear"}, grid={"crs": "EPSG:4326", "scale": 0.004})
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    for row in written_rows(out):
        arr = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
        expected, _ = gdal_reference(row, "EPSG:4326", Resampling.bilinear)  # max of two equal images
        np.testing.assert_array_equal(arr, expected)


def test_ee_job_writes_geotiff_and_png_rendered_locally(tmp_path, emulator):
    vis = {"bands": ["B1", "B2", "B3"], "min": 0, "max": 120, "gamma": 1.1}
    cfg = ee_job(tmp_path, emulator.url, grid={"crs": "EPSG:32618", "scale": 300, "patch_size": 48},
                 output={"formats": ["npy", "geotiff", "png"], "visualization": vis})
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    resolved = resolve_vis(("B1", "B2", "B3"), "uint8", **vis)
    masked = 0
    for row in written_rows(out):
        pid = row["patch_id"]
        arr = np.load(os.path.join(out, "npy", f"{pid}.npy"))
        with rasterio.open(os.path.join(out, "geotiff", f"{pid}.tif")) as ds:
            np.testing.assert_array_equal(ds.read(), arr)
            mask = ds.dataset_mask() > 0
            assert ds.crs.to_string() == "EPSG:32618" and ds.descriptions == ("B1", "B2", "B3")
        _, valid = gdal_reference(row, "EPSG:32618", Resampling.nearest)
        np.testing.assert_array_equal(mask, valid)  # the validity band of the request
        png = np.asarray(Image.open(os.path.join(out, "png", f"{pid}.png")))
        np.testing.assert_array_equal(png, render_rgb(arr, mask, resolved, ("B1", "B2", "B3")))
        np.testing.assert_array_equal(png[..., 3] == 0, ~mask)
        masked += int((~mask).sum())
    assert masked
