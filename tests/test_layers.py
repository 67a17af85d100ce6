"""`layers:` end to end: a raster input, a raster target and a vector target on one grid, through
`pixelbeam run`, every output read back by its real consumer (numpy, rasterio, TensorFlow's
parser, torch), pixel-exact against rasterio's own window read and `features.rasterize`."""

import json
import os
import struct

import numpy as np
import pytest
import rasterio
import rasterio.warp
import shapely
import yaml
from affine import Affine
from pyogrio.raw import write as write_vector
from rasterio.features import rasterize
from rasterio.windows import Window

from pixelbeam.pipeline.cli import main

PIXEL = 10.0  # m
ORIGIN = (500000.0, 4100000.0)  # EPSG:32618, top-left corner
WIDTH, HEIGHT = 128, 96
CLASSES = {"water": 1, "forest": 2, "field": 3, "road": 4, "well": 5}
SIZE, MARGIN = 32, 2


def to_world(col, row):
    return ORIGIN[0] + col * PIXEL, ORIGIN[1] - row * PIXEL


def label_features():
    """Overlapping polygons (one with a hole), a line and a point, in EPSG:32618, with classes."""
    def poly(*cols_rows, holes=()):
        return shapely.Polygon([to_world(c, r) for c, r in cols_rows], [[to_world(c, r) for c, r in h] for h in holes])
    return [
        ("forest", poly((5, 5), (80, 8), (70, 60), (10, 70), holes=[[(30, 30), (40, 30), (40, 40), (30, 40)]])),
        ("water", poly((40.3, 20.7), (60.2, 20.1), (58.9, 45.5), (41.1, 44.4))),  # inside the forest: burnt on top
        ("field", poly((60, 40), (127, 42), (125, 95), (66, 90))),
        ("road", shapely.LineString([to_world(0, 80.5), to_world(127.5, 60.2)])),
        ("well", shapely.Point(to_world(100.5, 20.5))),
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """scene.tif (3 x uint16), classes.tif (int16, nodata -1) on one 10 m grid, labels.gpkg."""
    tmp = tmp_path_factory.mktemp("layers")
    rng = np.random.default_rng(0)
    transform = Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1])
    profile = dict(driver="GTiff", width=WIDTH, height=HEIGHT, crs="EPSG:32618", transform=transform)
    scene = rng.integers(1, 4000, (3, HEIGHT, WIDTH)).astype(np.uint16)
    scene[:, :8, :8] = 0  # nodata corner
    with rasterio.open(tmp / "scene.tif", "w", count=3, dtype="uint16", nodata=0, **profile) as ds:
        ds.write(scene)
    classes = (np.arange(WIDTH)[None, :] // 20 + np.arange(HEIGHT)[:, None] // 30).astype(np.int16)
    classes[50:60, 50:60] = -1
    with rasterio.open(tmp / "classes.tif", "w", count=1, dtype="int16", nodata=-1, **profile) as ds:
        ds.write(classes[None])
    feats = label_features()
    write_vector(str(tmp / "labels.gpkg"), np.array([shapely.to_wkb(g) for _, g in feats], dtype=object),
                 [np.array([c for c, _ in feats], dtype=object)], fields=["kind"], geometry_type="Unknown",
                 crs="EPSG:32618", driver="GPKG")
    return tmp


def layers_config(files, out, **labels):
    lon_lat = rasterio.warp.transform_bounds("EPSG:32618", "EPSG:4326", *to_world(0, HEIGHT), *to_world(WIDTH, 0))
    return {
        "layers": {
            "image": {"kind": "raster", "role": "input", "uri": str(files / "scene.tif")},
            "classes": {"kind": "raster", "role": "target", "uri": str(files / "classes.tif")},
            "labels": {"kind": "vector", "role": "target", "path": str(files / "labels.gpkg"), "property": "kind",
                       "classes": CLASSES, "all_touched": True, "burn_order": "area", "ignore_value": 255,
                       "ignore_buffer": 1, **labels},
        },
        "regions": list(lon_lat),
        "grid": {"crs": "native", "scale": "native", "patch_size": SIZE, "margin": MARGIN},
        "output": {"path": str(out), "formats": ["tfrecord", "npy", "geotiff"]},
        "mask": {"npy": True},
    }


def run(files, tmp, **labels):
    out = tmp / "out"
    cfg = tmp / "job.yaml"
    cfg.write_text(yaml.safe_dump(layers_config(files, out, **labels), sort_keys=False))  # layer order kept
    assert main(["run", str(cfg)]) == 0
    return str(out)


@pytest.fixture(scope="module")
def output(files, tmp_path_factory):
    return run(files, tmp_path_factory.mktemp("run"))


def written(out):
    rows = [json.loads(line) for line in open(os.path.join(out, "manifest.jsonl"))]
    assert rows and {r["status"] for r in rows} == {"written"}
    return rows


def fetch_transform(row):
    return Affine(*row["transform"]) * Affine.translation(-row["margin"], -row["margin"])


def expected_labels(row, all_touched=True, ignore=(255, 1)):
    """rasterio.features.rasterize of every feature (not only those the index finds), largest
    first, then the 1 px edges with the ignore value: the layer's documented semantics."""
    feats = sorted(label_features(), key=lambda f: -f[1].area)  # stable: equal areas keep file order
    shape = (SIZE + 2 * MARGIN,) * 2
    transform = fetch_transform(row)
    out = rasterize([(g, CLASSES[c]) for c, g in feats], out_shape=shape, transform=transform, fill=0,
                    all_touched=all_touched, dtype="uint8")
    if ignore:
        edges = [g.boundary.buffer(ignore[1] * PIXEL) for _, g in feats if g.geom_type == "Polygon"]
        rasterize([(e, ignore[0]) for e in edges], out=out, transform=transform, all_touched=all_touched)
    return out


def test_vector_layer_equals_rasterize_of_the_same_features(output):
    rows = written(output)
    burnt = set()
    for row in rows:
        labels = np.load(os.path.join(output, "npy", "labels", f"{row['patch_id']}.npy"))
        assert labels.dtype == np.uint8 and labels.shape == (1, SIZE + 2 * MARGIN, SIZE + 2 * MARGIN)
        np.testing.assert_array_equal(labels[0], expected_labels(row))
        mask = np.load(os.path.join(output, "npy", "labels", f"{row['patch_id']}.mask.npy"))
        np.testing.assert_array_equal(mask, (labels[0] != 255).astype(np.uint8))  # ignore pixels are masked
        burnt |= set(np.unique(labels).tolist())
    assert burnt == {0, 1, 2, 3, 4, 5, 255}  # every class, the background and the edges appear


def test_vector_layer_without_all_touched_or_ignore(files, tmp_path):
    out = run(files, tmp_path, all_touched=False, ignore_value=None, ignore_buffer=0, burn_order="file")
    for row in written(out):
        labels = np.load(os.path.join(out, "npy", "labels", f"{row['patch_id']}.npy"))[0]
        shape, transform = labels.shape, fetch_transform(row)
        expected = rasterize([(g, CLASSES[c]) for c, g in label_features()], out_shape=shape, transform=transform,
                             fill=0, all_touched=False, dtype="uint8")  # file order: the field over the forest
        np.testing.assert_array_equal(labels, expected)


def test_raster_target_equals_its_window_read_and_keeps_its_type(output, files):
    meta = json.load(open(os.path.join(output, "dataset.json")))
    assert [(l["name"], l["role"], l["kind"], l["dtype"]) for l in meta["layers"]] == [
        ("image", "input", "raster", "uint16"), ("classes", "target", "raster", "int16"),
        ("labels", "target", "vector", "uint8")]
    with rasterio.open(files / "classes.tif") as classes, rasterio.open(files / "scene.tif") as scene:
        for row in written(output):
            t = fetch_transform(row)
            col, r = ~classes.transform * (t.c, t.f)
            window = Window(round(col), round(r), SIZE + 2 * MARGIN, SIZE + 2 * MARGIN)
            got = np.load(os.path.join(output, "npy", "classes", f"{row['patch_id']}.npy"))
            assert got.dtype == np.int16
            np.testing.assert_array_equal(got, classes.read(window=window, boundless=True, fill_value=-1))
            image = np.load(os.path.join(output, "npy", "image", f"{row['patch_id']}.npy"))
            np.testing.assert_array_equal(image, scene.read(window=window, boundless=True, fill_value=0))
            mask = np.load(os.path.join(output, "npy", "classes", f"{row['patch_id']}.mask.npy"))
            np.testing.assert_array_equal(mask, (got[0] != -1).astype(np.uint8))


def test_every_layer_of_a_patch_has_the_same_grid(output):
    for row in written(output):
        transforms = set()
        for layer in ("image", "classes", "labels"):
            with rasterio.open(os.path.join(output, "geotiff", layer, f"{row['patch_id']}.tif")) as ds:
                assert ds.crs.to_string() == row["crs"] and ds.shape == (SIZE + 2 * MARGIN,) * 2
                np.testing.assert_array_equal(ds.read(), np.load(os.path.join(output, "npy", layer,
                                                                              f"{row['patch_id']}.npy")))
                transforms.add(tuple(ds.transform)[:6])
        assert transforms == {tuple(fetch_transform(row))[:6]}
        assert set(row["layers"]) == {"image", "classes", "labels"}
        assert row["layers"]["labels"]["requests"] == 0 and row["layers"]["image"]["requests"] == 1
        assert len(row["files"]) == 3 * 2 + 3 + 1  # npy + mask per layer, geotiff per layer, the shards


def test_tfrecord_features_are_prefixed_by_layer_and_parse_with_tensorflow(output):
    tf = pytest.importorskip("tensorflow")
    meta = json.load(open(os.path.join(output, "dataset.json")))
    spec = meta["tfrecord"]["features"]
    assert {"image/B1", "image/mask", "classes/B1", "labels/kind", "labels/mask", "patch_id", "transform_f64"} <= set(spec)
    assert "mask" not in spec and "B1" not in spec
    types = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}
    features = {k: tf.io.FixedLenFeature(v["shape"], types[v["dtype"]]) for k, v in spec.items()}
    files = sorted(os.path.join(output, "tfrecord", f) for f in os.listdir(os.path.join(output, "tfrecord")))
    rows = {r["patch_id"]: r for r in written(output)}
    n = 0
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.io.parse_single_example(raw, features)
        pid = ex["patch_id"].numpy().decode()
        for layer, bands in (("image", ("B1", "B2", "B3")), ("classes", ("B1",)), ("labels", ("kind",))):
            stored = np.load(os.path.join(output, "npy", layer, f"{pid}.npy"))
            for i, band in enumerate(bands):
                np.testing.assert_array_equal(ex[f"{layer}/{band}"].numpy(), stored[i].astype(np.float32))
            mask = np.load(os.path.join(output, "npy", layer, f"{pid}.mask.npy"))
            np.testing.assert_array_equal(ex[f"{layer}/mask"].numpy(), mask.astype(np.float32))
        assert struct.unpack("<6d", ex["transform_f64"].numpy()) == tuple(fetch_transform(rows[pid]))[:6]
        n += 1
    assert n == len(rows)


def test_torch_samples_hold_every_layer(output):
    torch = pytest.importorskip("torch")
    from pixelbeam.transforms.loaders import NpyPatchDataset, TFRecordPatchDataset
    ds = NpyPatchDataset(output)
    records = {s["patch_id"]: s for s in TFRecordPatchDataset(output)}
    assert len(ds) == len(records) == len(written(output))
    for sample in ds:
        pid = sample["patch_id"]
        image = np.load(os.path.join(output, "npy", "image", f"{pid}.npy"))
        classes = np.load(os.path.join(output, "npy", "classes", f"{pid}.npy"))
        labels = np.load(os.path.join(output, "npy", "labels", f"{pid}.npy"))
        valid = np.load(os.path.join(output, "npy", "image", f"{pid}.mask.npy"))
        assert sample["image"].dtype == torch.float32 and sample["target"].dtype == torch.int64
        np.testing.assert_array_equal(sample["image"].numpy(), image.astype(np.float32))
        np.testing.assert_array_equal(sample["target"].numpy(), np.concatenate([classes, labels]).astype(np.int64))
        np.testing.assert_array_equal(sample["mask"].numpy(), valid.astype(np.float32))
        for key in ("image", "target", "mask"):
            assert torch.equal(records[pid][key], sample[key])
    one = NpyPatchDataset(output, layers=["image", "labels"])[0]
    assert tuple(one["target"].shape) == (SIZE + 2 * MARGIN,) * 2  # one integer band: (H, W), CrossEntropyLoss's
    batch = next(iter(torch.utils.data.DataLoader(NpyPatchDataset(output, layers=["image", "labels"]), batch_size=4)))
    logits = torch.nn.Conv2d(3, 256, 1)(batch["image"] / 4000.0)
    loss = torch.nn.functional.cross_entropy(logits, batch["target"], ignore_index=255)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="'dem' is not a layer"):
        NpyPatchDataset(output, layers=["dem"])


def test_tf_dataset_yields_inputs_and_targets_by_role(output):
    tf = pytest.importorskip("tensorflow")
    from pixelbeam.transforms.loaders import tf_dataset
    ds = tf_dataset(output, layers=["image", "labels"], batch_size=4, with_mask=True)
    image, target, mask = next(iter(ds))
    assert image.shape[1:] == (SIZE + 2 * MARGIN, SIZE + 2 * MARGIN, 3) and image.dtype == tf.float32
    assert target.shape[1:] == (SIZE + 2 * MARGIN,) * 2 and target.dtype == tf.int64
    assert mask.shape[1:] == (SIZE + 2 * MARGIN,) * 2
    for element in tf_dataset(output, as_dict=True, crop_margin=True):
        pid = element["patch_id"].numpy().decode()
        image = np.load(os.path.join(output, "npy", "image", f"{pid}.npy"))[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
        classes = np.load(os.path.join(output, "npy", "classes", f"{pid}.npy"))[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
        labels = np.load(os.path.join(output, "npy", "labels", f"{pid}.npy"))[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
        np.testing.assert_array_equal(element["image"].numpy(), np.moveaxis(image, 0, -1).astype(np.float32))
        np.testing.assert_array_equal(element["target"].numpy(), np.moveaxis(np.concatenate([classes, labels]), 0, -1))


def test_a_rerun_refetches_only_a_deleted_layer_file(files, tmp_path, capsys):
    out = run(files, tmp_path)
    cfg = str(tmp_path / "job.yaml")
    assert main(["run", cfg]) == 0
    assert "nothing to do" in capsys.readouterr().out
    row = written(out)[0]
    lost = os.path.join(out, "npy", "labels", f"{row['patch_id']}.npy")
    before = open(lost, "rb").read()
    os.remove(lost)
    assert main(["run", cfg]) == 0
    printed = capsys.readouterr().out
    assert "1 fetched in this run" in printed, printed
    assert open(lost, "rb").read() == before
    rows = {}
    for line in open(os.path.join(out, "manifest.jsonl")):
        rows[json.loads(line)["patch_id"]] = json.loads(line)
    assert len(rows) == len(written(out)) and all(r["status"] == "written" for r in rows.values())


def test_pictures_show_one_layer_in_its_folder(files, tmp_path):
    from PIL import Image
    doc = layers_config(files, tmp_path / "out")
    doc["output"] = {"path": str(tmp_path / "out"), "formats": ["npy", "png"],
                     "visualization": {"layer": "labels", "min": 0, "max": 5, "palette": ["black", "white"]}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert main(["run", str(tmp_path / "job.yaml")]) == 0
    for row in written(str(tmp_path / "out")):
        pictures = [f for f in row["files"] if f.startswith("png/")]
        assert pictures == [f"png/labels/{row['patch_id']}.png"]
        labels = np.load(tmp_path / "out" / "npy" / "labels" / f"{row['patch_id']}.npy")[0]
        picture = np.asarray(Image.open(tmp_path / "out" / pictures[0]).convert("RGBA"))
        assert picture.shape == labels.shape + (4,)
        np.testing.assert_array_equal(picture[..., 3] > 0, labels != 255)  # ignored pixels are transparent
        valid = labels != 255
        np.testing.assert_array_equal(picture[..., 0][valid], np.round(np.minimum(labels[valid], 5) / 5 * 255))
