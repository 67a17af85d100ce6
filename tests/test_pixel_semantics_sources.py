"""Masks, scaling and sampling end to end: one hand-made 4x4 px raster read as a file and as an
Earth Engine asset through the emulator must give the same, hand-worked, outputs."""

import json
import os

import numpy as np
import pytest
import rasterio
import yaml
from pyproj import Transformer
from rasterio.transform import from_origin

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.config import load_config
from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
from pixelbeam.pipeline.plan import prepare_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSET = "projects/demo/assets/tiny"
X0, Y0 = 500000.0, 2700000.0  # UTM 18N, 10 m pixels
# nodata 0 at (0, 0) and (1, 2): 2 of 16 pixels masked
TINY = np.array([[0, 1000, 2000, 3000],
                 [4000, 5000, 0, 500],
                 [100, 200, 300, 400],
                 [1, 2, 3, 4]], dtype=np.uint16)
MASK = TINY != 0
# display with default_range 0..4000: round(v * 255 / 4000), saturated at 255
DISPLAY = np.array([[0, 64, 128, 191],
                    [255, 255, 0, 32],
                    [6, 13, 19, 26],
                    [0, 0, 0, 0]], dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint16", nodata=0,
                       crs="EPSG:32618", transform=from_origin(X0, Y0, 10, 10)) as dst:
        dst.write(TINY, 1)
    return str(path)


@pytest.fixture(scope="module")
def emulator(tiny):
    with EmulatorServer({"images": {ASSET: {"path": tiny, "bands": ["B1"]}}}, EmulatorConfig()) as server:
        yield server


def bbox():
    """A lon/lat box inside the file's 40 m square: plans the one patch (0, 0)."""
    t = Transformer.from_crs("EPSG:32618", "EPSG:4326", always_xy=True)
    (lon0, lon1), (lat0, lat1) = t.transform([X0 + 15, X0 + 25], [Y0 - 25, Y0 - 15])
    return [lon0, lat0, lon1, lat1]


def write_config(tmp_path, kind, tiny, url=None, **sections):
    source = ({"kind": "raster", "uri": tiny} if kind == "raster" else
              {"kind": "earthengine", "asset": ASSET, "url": url, "credentials": "anonymous", "project": "demo"})
    doc = {"source": source, "regions": bbox(),
           "grid": {"crs": "EPSG:32618", "scale": 10, "origin": [X0, Y0], "patch_size": 4},
           "output": {"path": str(tmp_path / kind), "formats": ["tfrecord", "npy"]},
           "fetch": {"max_concurrent_requests": 2}}
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def run_both(tmp_path, tiny, emulator, **sections):
    """Runs the same job on both sources; returns {kind: (manifest row, npy array or None, folder, meta)}."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind in ("raster", "earthengine"):
        cfg = write_config(tmp_path, kind, tiny, emulator.url, **sections)
        assert main(["run", cfg]) == 0
        folder = tmp_path / kind
        (row,) = [json.loads(line) for line in open(folder / "manifest.jsonl")]
        npy = folder / "npy" / f"{row['patch_id']}.npy"
        meta = json.load(open(folder / "dataset.json"))
        out[kind] = (row, np.load(npy) if npy.exists() else None, folder, meta)
    return out


def tf_example(folder):
    tf = pytest.importorskip("tensorflow")
    files = [str(p) for p in (folder / "tfrecord").glob("*.tfrecord.gz")]
    (raw,) = list(tf.data.TFRecordDataset(files, compression_type="GZIP"))
    return tf.train.Example.FromString(raw.numpy()).features.feature


def test_display_scaling_and_fill_value_same_on_both_sources(tmp_path, tiny, emulator):
    runs = run_both(tmp_path, tiny, emulator,
                    output={"scaling": "display", "band_ranges": {"B1": {"default_range": [0, 4000]}}},
                    mask={"fill_value": 255})
    expected = np.where(MASK, DISPLAY, 255)[None]
    for kind, (row, arr, folder, meta) in runs.items():
        assert arr.dtype == np.uint8, kind
        np.testing.assert_array_equal(arr, expected, err_msg=kind)
        assert meta["dtype"] == "uint8" and row["valid_fraction"] == 14 / 16
        f = tf_example(folder)
        assert list(f["B1"].float_list.value) == expected.ravel().astype(float).tolist()
        assert list(f["mask"].float_list.value) == MASK.ravel().astype(float).tolist()


def test_unmask_and_physical_scaling_same_on_both_sources(tmp_path, tiny, emulator):
    runs = run_both(tmp_path, tiny, emulator, output={"scaling": [[0, 5000, 0.0, 1.0]]}, mask={"unmask": 50})
    expected = (np.where(MASK, TINY, 50) / 5000.0)[None]  # e.g. 1000 -> 0.2, unmasked 50 -> 0.01
    for kind, (row, arr, folder, meta) in runs.items():
        assert arr.dtype == np.float64 and meta["dtype"] == "float64"
        np.testing.assert_allclose(arr, expected, rtol=0, atol=1e-15, err_msg=kind)
        assert row["valid_fraction"] == 1.0


def test_max_masked_ratio_filters_with_the_ratio_on_both_sources(tmp_path, tiny, emulator):
    runs = run_both(tmp_path, tiny, emulator, output={"max_masked_ratio": 0.1}, mask={"npy": True})
    for kind, (row, arr, folder, meta) in runs.items():
        assert row["status"] == "filtered" and arr is None, kind
        assert row["reason"] == "masked ratio 0.1250 > max_masked_ratio 0.1"
    # Earth Engine's maxMaskedRatio drops a patch whose masked ratio EXCEEDS it: 0.125 is kept
    runs = run_both(tmp_path / "kept", tiny, emulator, output={"max_masked_ratio": 0.125})
    assert {kind: r[0]["status"] for kind, r in runs.items()} == {"raster": "written", "earthengine": "written"}


def test_mask_npy_beside_the_data(tmp_path, tiny, emulator):
    runs = run_both(tmp_path, tiny, emulator, mask={"npy": True})
    for kind, (row, arr, folder, meta) in runs.items():
        np.testing.assert_array_equal(arr, TINY[None])
        mask = np.load(folder / "npy" / f"{row['patch_id']}.mask.npy")
        assert mask.dtype == np.uint8 and mask.tolist() == MASK.astype(np.uint8).tolist()
        assert f"npy/{row['patch_id']}.mask.npy" in row["files"]


def test_raster_mask_nodata_false_keeps_nodata_pixels_valid(tmp_path, tiny):
    cfg = write_config(tmp_path, "raster", tiny, mask={"mask_nodata": False})
    assert main(["run", cfg]) == 0
    (row,) = [json.loads(line) for line in open(tmp_path / "raster" / "manifest.jsonl")]
    assert row["valid_fraction"] == 1.0


def test_raster_mask_alpha(tmp_path):
    path = tmp_path / "alpha.tif"
    alpha = np.full((4, 4), 255, np.uint8)
    alpha[0, :2] = 0  # 2 of 16 pixels transparent
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=2, dtype="uint8",
                       crs="EPSG:32618", transform=from_origin(X0, Y0, 10, 10), photometric="MINISBLACK",
                       alpha="UNSPECIFIED") as dst:
        dst.write(np.full((4, 4), 9, np.uint8), 1)
        dst.write(alpha, 2)
        dst.colorinterp = [rasterio.enums.ColorInterp.gray, rasterio.enums.ColorInterp.alpha]
    for mask_alpha, fraction in ((True, 14 / 16), (False, 1.0)):
        out = tmp_path / f"out{mask_alpha}"
        cfg = write_config(tmp_path, "raster", str(path), source={"bands": [1]},
                           output={"path": str(out)}, mask={"mask_alpha": mask_alpha})
        assert main(["run", cfg]) == 0
        (row,) = [json.loads(line) for line in open(out / "manifest.jsonl")]
        assert row["valid_fraction"] == fraction


def test_mask_options_are_checked(tmp_path, tiny, emulator, capsys):
    cfg = write_config(tmp_path, "earthengine", tiny, emulator.url, mask={"mask_nodata": False})
    assert main(["plan", cfg]) == 2
    assert "mask.mask_nodata: applies to raster sources" in capsys.readouterr().err
    cfg = write_config(tmp_path, "raster", tiny, grid={"scale": 5}, mask={"mask_nodata": False})
    assert main(["plan", cfg]) == 2
    assert "mask.mask_nodata: false works on the source's own grid only" in capsys.readouterr().err
    cfg = write_config(tmp_path, "raster", tiny, output={"scaling": "display"}, mask={"fill_value": 300})
    assert main(["plan", cfg]) == 2
    assert "mask.fill_value: 300 does not fit the output type uint8" in capsys.readouterr().err
    cfg = write_config(tmp_path, "raster", tiny, output={"scaling": {"B1": "raw", "default_": "physical", "B9": 1}})
    assert main(["plan", cfg]) == 2
    err = capsys.readouterr().err
    assert "output.scaling: 'B9' is not a band" in err and err.count("\n") == 1


LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")


def test_labelled_points_centred_and_per_region_sample(tmp_path):
    regions = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "sites", "properties": {"class": 3},
         "geometry": {"type": "MultiPoint", "coordinates": [[-77.10, 24.90], [-76.90, 23.90]]}},
        {"type": "Feature", "id": "andros", "properties": {"class": 1},
         "geometry": {"type": "Polygon", "coordinates": [[[-78.05, 24.15], [-77.55, 24.15], [-77.55, 24.70],
                                                          [-78.05, 24.70], [-78.05, 24.15]]]}}]}
    (tmp_path / "regions.geojson").write_text(json.dumps(regions))
    doc = {"source": {"uri": LANDSAT}, "regions": "regions.geojson",
           "grid": {"crs": "native", "scale": "native", "patch_size": 9, "overlap": 6},
           "output": {"path": "out", "formats": ["tfrecord", "npy"]},
           "sample": {"per_region": 5, "seed": 3, "centered_on_points": True, "label_property": "class"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    cfg = str(tmp_path / "job.yaml")
    job = prepare_job(load_config(cfg))
    assert job.planned == 5 + 2  # exactly 5 of andros' patches, both points' patches
    assert main(["run", cfg]) == 0
    out = tmp_path / "out"
    rows = [json.loads(line) for line in open(out / "manifest.jsonl")]
    assert sorted(r["patch_id"] for r in rows) == sorted(s.patch_id for s in job.specs)
    assert {r["region_id"]: r["label"] for r in rows} == {"sites": 3, "andros": 1}
    assert prepare_job(load_config(cfg)).specs == job.specs  # reproducible
    # each point lies within stride / 2 = 1.5 px of its patch's centre
    t = Transformer.from_crs("EPSG:4326", "EPSG:32618", always_xy=True)
    for lon, lat in regions["features"][0]["geometry"]["coordinates"]:
        x, y = t.transform(lon, lat)
        (spec,) = [s for s in job.specs if s.region_id == "sites" and s.bounds[0] <= x <= s.bounds[2]
                   and s.bounds[1] <= y <= s.bounds[3] and abs((s.bounds[0] + s.bounds[2]) / 2 - x) <= 1.5 * s.transform[0]]
        assert abs((spec.bounds[1] + spec.bounds[3]) / 2 - y) <= 1.5 * -spec.transform[4]
    meta = json.load(open(out / "dataset.json"))
    assert meta["tfrecord"]["features"]["label"] == {
        "dtype": "int64", "shape": [], "role": "label",
        "description": "the label of the patch's region (sample.label_property)"}
    tf = pytest.importorskip("tensorflow")
    from pixelbeam.transforms.loaders import label_entry
    name, spec = label_entry(meta, "auto")
    files = [str(p) for p in (out / "tfrecord").glob("*.tfrecord.gz")]
    feats = {name: tf.io.FixedLenFeature(spec["shape"], tf.int64), "region_id": tf.io.FixedLenFeature([], tf.string)}
    labels = {}
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.io.parse_single_example(raw, feats)
        labels.setdefault(ex["region_id"].numpy().decode(), set()).add(int(ex[name]))
    written = {r["region_id"] for r in rows if r["status"] == "written"}
    assert labels == {r: {3 if r == "sites" else 1} for r in written}
