"""configs/segmentation.yaml (the ready layered config) runs as shipped, its hand-drawn labels land
on the scene's real water, land and clouds, the preview draws the target over the image, and
docs/outputs.md names every key a layered output carries."""

import json
import os
import shutil

import numpy as np
import pytest
import rasterio

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.preview import render_tile
from pixelbeam.transforms.formats import visualize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory):
    """configs/ copied beside a link to data/, as the tour runs it: out/segmentation."""
    box = tmp_path_factory.mktemp("repo")
    shutil.copytree(os.path.join(ROOT, "configs"), box / "configs")
    os.symlink(os.path.join(ROOT, "data"), box / "data")
    assert main(["run", str(box / "configs" / "segmentation.yaml")]) == 0
    return str(box / "out" / "segmentation")


def rows_of(out):
    return [json.loads(line) for line in open(os.path.join(out, "manifest.jsonl"))]


def test_the_ready_config_writes_an_image_and_its_labels(segmentation):
    rows = rows_of(segmentation)
    assert len(rows) >= 30 and {r["status"] for r in rows} == {"written"}
    meta = json.load(open(os.path.join(segmentation, "dataset.json")))
    labels = next(layer for layer in meta["layers"] if layer["name"] == "labels")
    assert labels["classes"] == {"water": 1, "land": 2, "cloud": 3} and labels["role"] == "target"
    counts = np.zeros(4, int)
    brightness = {1: [], 2: [], 3: []}
    for row in rows:
        target = np.load(os.path.join(segmentation, "npy", "labels", f"{row['patch_id']}.npy"))[0]
        image = np.load(os.path.join(segmentation, "npy", "image", f"{row['patch_id']}.npy")).astype(float)
        counts += np.bincount(target.ravel(), minlength=4)
        for value in (1, 2, 3):
            brightness[value].extend(image[:, target == value].mean(axis=0).tolist())
    assert (counts[1:] > 1000).all()  # every class has pixels
    # the polygons lie on real features of the scene: clouds are bright, water and land dark
    cloud, water, land = (np.median(brightness[v]) for v in (3, 1, 2))
    assert cloud > 150 and water < 90 and land < 90
    with rasterio.open(os.path.join(segmentation, "geotiff", "labels", f"{rows[0]['patch_id']}.tif")) as ds, \
            rasterio.open(os.path.join(segmentation, "geotiff", "image", f"{rows[0]['patch_id']}.tif")) as img:
        assert ds.transform == img.transform and ds.crs == img.crs and ds.dtypes == ("uint8",)
    assert os.path.exists(os.path.join(segmentation, "preview.png"))


def test_the_preview_draws_the_target_over_the_image():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 16, 16)).astype(np.uint8)
    target = np.zeros((16, 16), np.uint8)
    target[2:8, 2:8], target[9:14, 3:12] = 1, 3
    vis = visualize.resolve_vis(["B1", "B2", "B3"], "uint8")
    plain = render_tile({"data": data, "mask": None}, vis, ["B1", "B2", "B3"])
    drawn = render_tile({"data": data, "mask": None, "target": target}, vis, ["B1", "B2", "B3"],
                        {"dtype": "uint8", "background": 0, "ignore_value": 0})
    assert (drawn[target == 0] == plain[target == 0]).all()  # unlabelled pixels untouched
    for value in (1, 3):
        color = np.array(visualize.class_color(value), float)
        expected = np.round((1 - 0.45) * plain[target == value].astype(float) + 0.45 * color)
        np.testing.assert_array_equal(drawn[target == value], expected.astype(np.uint8))
    assert visualize.class_color(1) != visualize.class_color(3)


def test_outputs_reference_names_every_layered_key(segmentation):
    meta = json.load(open(os.path.join(segmentation, "dataset.json")))
    row = rows_of(segmentation)[0]
    text = open(os.path.join(ROOT, "docs", "outputs.md"), encoding="utf-8").read()
    keys = [*meta, *row, *(k for layer in meta["layers"] for k in layer), *row["layers"]["image"]]
    features = {k for k, v in meta["tfrecord"]["features"].items() if v["role"] not in ("band",)}
    keys += [k for k in features if "/" not in k]
    missing = sorted({k for k in keys if f"`{k}`" not in text})
    assert not missing, f"docs/outputs.md does not describe {missing}"
    assert "`<layer>/<band>`" in text and "`<layer>/mask`" in text
