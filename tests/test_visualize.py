"""PNG/JPEG renderings with Earth Engine's visualization parameters: the pure core, the config
checks, and the pipeline's pictures compared with its NPY patches."""

import io
import json
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.config import ConfigError, parse_config
from pixelbeam.transforms.formats.visualize import (VisualizationError, apply_palette, jpeg_bytes, parse_color, patch_to_jpeg_bytes,
                                  patch_to_png_bytes, render_rgb, resolve_vis, stretch)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")
BANDS = ("B1", "B2", "B3")


def decode(raw):
    return np.asarray(Image.open(io.BytesIO(raw)))


# -- Earth Engine's semantics ----------------------------------------------------------

def test_stretch_maps_min_to_0_max_to_1_clamps_and_applies_one_over_gamma():
    v = np.array([-10.0, 0.0, 25.0, 50.0, 100.0, 200.0, np.nan])
    np.testing.assert_allclose(stretch(v, 0, 100, 1.0), [0, 0, 0.25, 0.5, 1, 1, 0])
    np.testing.assert_allclose(stretch(v, 0, 100, 2.0), [0, 0, 0.5, np.sqrt(0.5), 1, 1, 0])  # gamma > 1 brightens
    np.testing.assert_allclose(stretch(v, 100, 0, 1.0), [1, 1, 0.75, 0.5, 0, 0, 0])  # min > max inverts; NaN -> 0


def test_rgb_rendering_per_band_min_max_gamma_to_8_bits():
    data = np.array([[[0, 50, 100, 255]], [[10, 20, 30, 40]], [[0, 64, 128, 255]]], dtype=np.uint8)
    vis = resolve_vis(BANDS, "uint8", bands=["B1", "B2", "B3"], min=[0, 10, 0], max=[100, 40, 255], gamma=[1, 1, 2])
    rgba = render_rgb(data, np.ones((1, 4), bool), vis, BANDS)
    assert rgba.dtype == np.uint8 and rgba.shape == (1, 4, 4)
    np.testing.assert_array_equal(rgba[0, :, 0], [0, 128, 255, 255])  # 127.5 rounds up
    np.testing.assert_array_equal(rgba[0, :, 1], [0, 85, 170, 255])
    expected_b = np.floor(255 * (np.array([0, 64, 128, 255]) / 255) ** 0.5 + 0.5)
    np.testing.assert_array_equal(rgba[0, :, 2], expected_b)
    np.testing.assert_array_equal(rgba[0, :, 3], 255)


def test_band_order_follows_vis_bands():
    data = np.stack([np.full((2, 2), v, np.uint8) for v in (10, 20, 30)])
    vis = resolve_vis(BANDS, "uint8", bands=["B3", "B2", "B1"], min=0, max=255)
    np.testing.assert_array_equal(render_rgb(data, np.ones((2, 2), bool), vis, BANDS)[0, 0, :3], [30, 20, 10])


def test_palette_colours_evenly_spaced_and_interpolated_linearly_in_rgb():
    colours = [parse_color(c) for c in ("000000", "#ff0000", "00f")]
    assert colours == [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    x = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(apply_palette(x, colours), [[0, 0, 0], [127.5, 0, 0], [255, 0, 0],
                                                         [127.5, 0, 127.5], [0, 0, 255]])
    vis = resolve_vis(["elev"], "int16", min=0, max=400, palette=["black", "red", "blue"])
    data = np.array([[[0, 100, 200, 300, 400, 999]]], dtype=np.int16)
    rgba = render_rgb(data, np.ones((1, 6), bool), vis, ["elev"])
    np.testing.assert_array_equal(rgba[0, :, :3], [[0, 0, 0], [128, 0, 0], [255, 0, 0], [128, 0, 128],
                                                 [0, 0, 255], [0, 0, 255]])
    single = resolve_vis(["elev"], "int16", palette=["00ff00"])
    assert (render_rgb(data, np.ones((1, 6), bool), single, ["elev"])[0, :, :3] == [0, 255, 0]).all()


def test_defaults_are_the_first_three_bands_and_the_dtype_range():
    vis = resolve_vis(("a", "b", "c", "d"), "uint16")
    assert vis.bands == ("a", "b", "c") and vis.min == (0.0,) * 3 and vis.max == (65535.0,) * 3
    assert vis.gamma == (1.0,) * 3 and vis.palette is None
    assert resolve_vis(("ndvi",), "float32").max == (1.0,)
    assert resolve_vis(("a", "b"), "int8").bands == ("a",) and resolve_vis(("a", "b"), "int8").min == (-128.0,)


@pytest.mark.parametrize("kwargs, message", [
    ({"bands": ["B1", "B2"]}, "output.visualization.bands: give 1 or 3 bands, got 2"),
    ({"bands": ["B1", "B9", "B3"]}, "output.visualization.bands: 'B9' is not a band of the source; known bands: B1, B2, B3"),
    ({"min": [0, 1]}, "output.visualization.min: 2 values for 3 bands"),
    ({"palette": ["red", "blue"]}, "output.visualization.palette: applies to one band, not 3"),
    ({"bands": ["B1"], "palette": ["red", "nocolour"]}, "output.visualization: palette colour 'nocolour' is not a colour"),
    ({"min": 5, "max": 5}, "output.visualization.max: must differ from min"),
    ({"gamma": 0}, "output.visualization.gamma: must be positive"),
])
def test_bad_parameters_are_one_line_errors_naming_the_field(kwargs, message):
    with pytest.raises(VisualizationError) as e:
        resolve_vis(BANDS, "uint8", **kwargs)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


# -- masks and encodings ---------------------------------------------------------------

def patch_data(seed=1):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (3, 33, 47)).astype(np.uint8)
    mask = rng.random((33, 47)) > 0.3
    return data, mask


def test_png_alpha_is_zero_exactly_where_the_mask_is_false():
    data, mask = patch_data()
    vis = resolve_vis(BANDS, "uint8", min=10, max=200, gamma=1.4)
    png = decode(patch_to_png_bytes(data, mask, vis, BANDS))
    assert png.shape == (33, 47, 4) and png.dtype == np.uint8
    np.testing.assert_array_equal(png[..., 3] == 0, ~mask)
    np.testing.assert_array_equal(png[..., 3][mask], 255)
    np.testing.assert_array_equal(png, render_rgb(data, mask, vis, BANDS))  # PNG is lossless


def test_grey_png_is_la_and_palette_png_is_rgba():
    data, mask = patch_data()
    grey = resolve_vis(BANDS, "uint8", bands=["B2"])
    img = Image.open(io.BytesIO(patch_to_png_bytes(data, mask, grey, BANDS)))
    assert img.mode == "LA"
    la = np.asarray(img)
    np.testing.assert_array_equal(la[..., 0], data[1])
    np.testing.assert_array_equal(la[..., 1] == 0, ~mask)
    pal = resolve_vis(BANDS, "uint8", bands=["B2"], palette=["blue", "yellow"])
    assert Image.open(io.BytesIO(patch_to_png_bytes(data, mask, pal, BANDS))).mode == "RGBA"


def test_jpeg_has_no_alpha_and_masked_pixels_are_black():
    data = np.full((3, 64, 64), 200, np.uint8)
    mask = np.ones((64, 64), bool)
    mask[:, :32] = False  # a masked half: black, away from JPEG's 8x8 block ringing
    vis = resolve_vis(BANDS, "uint8")
    img = Image.open(io.BytesIO(patch_to_jpeg_bytes(data, mask, vis, BANDS)))
    assert img.format == "JPEG" and img.mode == "RGB"
    rgb = np.asarray(img).astype(int)
    assert rgb[:, :24].max() <= 2 and abs(rgb[:, 40:] - 200).max() <= 2
    assert Image.open(io.BytesIO(jpeg_bytes(np.zeros((8, 8, 3), np.uint8), grey=True))).mode == "L"


# -- config ----------------------------------------------------------------------------

def config_doc(**output):
    return {"source": {"uri": LANDSAT}, "regions": REGIONS,
            "output": {"path": "out", "formats": ["png"], **output}}


@pytest.mark.parametrize("output, message", [
    ({"visualization": {"bands": ["B1", "B2", "B3"], "palette": ["red", "blue"]}},
     "output.visualization: palette needs exactly one band, got 3 bands"),
    ({"visualization": {"bands": ["B1", "B2", "B3"], "min": [0, 1]}}, "output.visualization: min has 2 values for 3 bands"),
    ({"visualization": {"bands": ["B1", "B2"]}}, "output.visualization: bands must list 1 or 3 bands, got 2"),
    ({"visualization": {"bands": ["B1"], "palette": ["zzz"]}}, "output.visualization: palette colour 'zzz' is not a colour"),
    ({"visualization": {"gamma": -1}}, "output.visualization: gamma must be positive"),
    ({"visualization": {"min": 3, "max": 3}}, "output.visualization: min and max are both 3"),
    ({"formats": ["npy"], "visualization": {"min": 0}}, "output: visualization applies to png and jpeg"),
    ({"visualization": {"bands": ["B1"], "opacity": 1}}, "output.visualization.opacity: unknown key"),
    ({"formats": ["gif"]}, "output.formats.0: Input should be 'tfrecord', 'npy', 'geotiff', 'png', 'jpeg' or 'webdataset'"),
    ({"bands_axis": 1}, "output.bands_axis: Input should be 0 or -1"),
])
def test_config_errors_are_one_line_and_name_the_field(output, message):
    with pytest.raises(ConfigError) as e:
        parse_config(config_doc(**output))
    text = str(e.value)
    assert text.startswith("config: " + message), text
    assert "\n" not in text


def test_unknown_visualization_band_fails_at_plan_time_with_exit_2(tmp_path, capsys):
    doc = config_doc(visualization={"bands": ["B3", "B2", "B9"]})
    doc["output"]["path"] = str(tmp_path / "out")
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["plan", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("pixelbeam: error: output.visualization.bands: 'B9' is not a band of the source; "
                   "known bands: B1, B2, B3")
    assert not (tmp_path / "out").exists()


# -- through the pipeline ----------------------------------------------------------------

def test_pipeline_pngs_and_jpegs_render_the_npy_patches(tmp_path):
    vis = {"bands": ["B1", "B2", "B3"], "min": [5, 10, 15], "max": [110, 110, 110], "gamma": 1.2}
    doc = config_doc(formats=["npy", "png", "jpeg"], visualization=vis, max_masked_ratio=0.9)
    doc["output"]["path"] = str(tmp_path / "out")
    doc["grid"] = {"crs": "native", "scale": "native", "patch_size": 48, "overlap": 0, "margin": 2}
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["run", str(cfg)]) == 0
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    written = [r for r in rows if r["status"] == "written"]
    assert written
    resolved = resolve_vis(BANDS, "uint8", **vis)
    partly_masked = 0
    for row in written:
        pid = row["patch_id"]
        assert row["files"] == [f"npy/{pid}.npy", f"png/{pid}.png", f"jpeg/{pid}.jpg"]
        arr = np.load(out / "npy" / f"{pid}.npy")
        mask = (arr != 0).all(axis=0)  # RGB.byte.tif: nodata 0 in each band
        png = decode((out / "png" / f"{pid}.png").read_bytes())
        assert png.shape == (52, 52, 4)
        np.testing.assert_array_equal(png[..., 3] == 0, ~mask)
        np.testing.assert_array_equal(png, render_rgb(arr, mask, resolved, BANDS))
        jpg = decode((out / "jpeg" / f"{pid}.jpg").read_bytes())
        assert jpg.shape == (52, 52, 3)
        partly_masked += bool((~mask).any())
    assert partly_masked  # the scene's nodata borders show up as transparency
