"""Plan footprints (GeoJSON) and the pictures (preview.png, footprints.png) of real runs."""

import json
import math
import os

import numpy as np
import pyproj
import pytest
import shapely
import yaml
from PIL import Image
from shapely.geometry import shape

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.config import load_config
from pixelbeam.pipeline.plan import prepare_job
from pixelbeam.pipeline.preview import (FIGURE_DPI, FIGURE_IN, HEADER_H, LABEL_H, MASK_COLORS, PAD, STATUS_COLORS,
                              sample_ids, tile_scale, write_previews)
from pixelbeam.transforms.planning.grid import bounds_to_lonlat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")
SIZE, MARGIN = 40, 2


def write_config(tmp_path, formats=("tfrecord", "npy"), grid=None, name="job.yaml"):
    doc = {"source": {"uri": LANDSAT, "bands": [1, 2, 3]}, "regions": REGIONS,
           "grid": {"crs": "native", "scale": "native", "patch_size": SIZE, "overlap": 0, "margin": MARGIN,
                    **(grid or {})},
           "output": {"path": str(tmp_path / "out"), "formats": list(formats), "max_masked_ratio": 0.9},
           "fetch": {"max_concurrent_requests": 4}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preview")
    assert main(["run", write_config(tmp)]) == 0
    return str(tmp / "out")


def rows_of(out):
    with open(os.path.join(out, "manifest.jsonl")) as f:
        return [json.loads(line) for line in f]


def colors_in(path, top=0):
    """The RGB colours of a picture (below row `top`)."""
    with Image.open(path) as img:
        return {tuple(int(v) for v in c) for c in np.asarray(img.convert("RGB"))[top:].reshape(-1, 3)}


def hex_rgb(color):
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


def expected_sheet_size(n):
    fetch = SIZE + 2 * MARGIN
    zoom, step = tile_scale(fetch)
    tile = math.ceil(fetch / step) * zoom
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return max(PAD + cols * (tile + PAD), 520), HEADER_H + rows * (tile + LABEL_H + PAD) + PAD


def test_plan_writes_lonlat_footprints(tmp_path):
    cfg = write_config(tmp_path, grid={"crs": "EPSG:32618", "scale": 600, "origin": [0, 0], "margin": 0})
    path = tmp_path / "plan" / "footprints.geojson"
    assert main(["plan", cfg, "--footprints", str(path)]) == 0
    doc = json.loads(path.read_text())
    specs = prepare_job(load_config(cfg)).specs
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(specs)
    by_id = {s.patch_id: s for s in specs}
    for feature in doc["features"]:
        props = feature["properties"]
        spec = by_id[props["patch_id"]]
        assert (props["region_id"], props["crs"]) == (spec.region_id, "EPSG:32618")
        ring = feature["geometry"]["coordinates"][0]
        assert len(ring) >= 9 and ring[0] == ring[-1]  # densified: at least 2 segments a side
        polygon = shape(feature["geometry"])
        assert polygon.is_valid and polygon.exterior.is_ccw  # RFC 7946 winding
        np.testing.assert_allclose(polygon.bounds, bounds_to_lonlat(spec.crs, spec.bounds), atol=1e-7)
        # the densified edge follows the projected grid line: a point inside an edge maps back onto it
        back = pyproj.Transformer.from_crs("EPSG:4326", spec.crs, always_xy=True).transform(*ring[1])
        assert shapely.box(*spec.bounds).exterior.distance(shapely.Point(back)) < 1e-3


def test_run_writes_both_pictures(run_output):
    for name in ("preview.png", "footprints.png"):
        with Image.open(os.path.join(run_output, name)) as img:
            img.verify()
    with Image.open(os.path.join(run_output, "footprints.png")) as img:
        assert img.size == (FIGURE_IN * FIGURE_DPI,) * 2


def test_preview_command_sample_is_reproducible(run_output, tmp_path):
    assert main(["preview", run_output, "--sample", "4", "--seed", "3"]) == 0
    path = os.path.join(run_output, "preview.png")
    first = open(path, "rb").read()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == expected_sheet_size(4)
    again = write_previews(run_output, sample=4, seed=3)
    assert open(path, "rb").read() == first
    other = write_previews(run_output, sample=4, seed=4)
    assert len(again["sample"]) == 4 and again["sample"] != other["sample"]
    # the sample depends on the ids only, not on the manifest's row order
    written = [r["patch_id"] for r in rows_of(run_output) if r["status"] == "written"]
    assert sample_ids(written[::-1], 4, 3) == sample_ids(written, 4, 3) == again["sample"]


def test_masked_pixels_and_statuses_are_visible(run_output):
    result = write_previews(run_output, sample=1000, seed=0)
    written = [r for r in rows_of(run_output) if r["status"] == "written"]
    assert len(result["sample"]) == len(written)
    assert any(r["valid_fraction"] < 1 for r in written)
    assert MASK_COLORS[0] in colors_in(result["preview"], top=HEADER_H)  # checkerboard where masked
    footprints = colors_in(result["footprints"])
    statuses = {r["status"] for r in rows_of(run_output)}
    assert statuses == {"written", "filtered"}
    for status in statuses:
        assert hex_rgb(STATUS_COLORS[status]) in footprints  # outline colours


def test_preview_with_bands_palette_and_gamma(run_output):
    assert main(["preview", run_output, "--bands", "B2", "--palette", "000000", "00ff00", "--min", "0", "--max",
                 "120", "--gamma", "1.5", "--sample", "2"]) == 0
    colors = colors_in(os.path.join(run_output, "preview.png"))
    assert any(g > 100 and r == 0 and b == 0 for r, g, b in colors)  # the palette's greens


def test_preview_errors_are_one_line(run_output, tmp_path, capsys):
    assert main(["preview", run_output, "--bands", "B7"]) == 2
    assert "--bands: 'B7' is not a band" in capsys.readouterr().err
    assert main(["preview", str(tmp_path / "nothing")]) == 2
    assert "no dataset.json" in capsys.readouterr().err


@pytest.mark.parametrize("formats", [("npy",), ("tfrecord",)])
def test_preview_from_one_format(tmp_path, formats):
    assert main(["run", write_config(tmp_path, formats)]) == 0
    out = str(tmp_path / "out")
    result = write_previews(out, sample=100)
    with Image.open(result["preview"]) as img:
        assert img.size == expected_sheet_size(len(result["sample"]))
    # the mask comes from the TFRecords: without them, masked pixels cannot be marked
    assert (MASK_COLORS[0] in colors_in(result["preview"], top=HEADER_H)) == ("tfrecord" in formats)


def test_earth_engine_output_pictures(tmp_path):
    from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
    asset = "projects/demo/assets/landsat"
    with EmulatorServer({"images": {asset: {"path": LANDSAT, "bands": ["B1", "B2", "B3"]}}},
                        EmulatorConfig(max_concurrent=8)) as server:
        doc = {"source": {"kind": "earthengine", "asset": asset, "url": server.url, "credentials": "anonymous",
                          "project": "demo"},
               "regions": [-77.5, 23.55, -77.3, 23.75],  # across the scene's southern edge
               "grid": {"crs": "EPSG:32618", "scale": 300, "patch_size": 32},
               "output": {"path": str(tmp_path / "out")}, "fetch": {"max_concurrent_requests": 4}}
        cfg = tmp_path / "ee.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        assert main(["run", str(cfg)]) == 0
    out = str(tmp_path / "out")
    for name in ("preview.png", "footprints.png"):
        with Image.open(os.path.join(out, name)) as img:
            img.verify()
    assert MASK_COLORS[0] in colors_in(os.path.join(out, "preview.png"), top=HEADER_H)


def test_run_hook_only_warns_and_skips_large_outputs(run_output, tmp_path, monkeypatch, capsys, caplog):
    import pixelbeam.pipeline.preview as preview
    os.makedirs(tmp_path / "broken")
    open(tmp_path / "broken" / "manifest.jsonl", "w").write("{}\n")
    preview.try_write_previews(str(tmp_path / "broken"))  # no dataset.json: a warning, no exception
    assert "pictures not written" in caplog.text
    monkeypatch.setattr(preview, "RUN_HOOK_MAX_PATCHES", 3)
    os.remove(os.path.join(run_output, "preview.png"))
    preview.try_write_previews(run_output)
    assert "pictures: skipped" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(run_output, "preview.png"))
    assert main(["preview", run_output]) == 0 and os.path.exists(os.path.join(run_output, "preview.png"))
