"""Image collections (stack, mosaic, composite, flatten) and filter_coverage: three dated 2x2 px
files read as raster files and as an Earth Engine collection through the emulator must give the
same hand-worked answers."""

import json
import os

import numpy as np
import pytest
import rasterio
import yaml
from pyproj import Transformer
from rasterio.transform import from_origin

from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.config import ConfigError, load_config
from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
from pixelbeam.pipeline.plan import prepare_job
from pixelbeam.transforms.pixels.collections import CollectionImage, combine, plan_collection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTION = "DEMO/TINY_SERIES"
X0, Y0 = 500000.0, 2700000.0  # UTM 18N, 10 m pixels; nodata 0
# A: 2020-01-01, (0, 1) masked; B: 2020-01-03, (0, 0) and (1, 0) masked; C: 2020-01-03 12:00, only (0, 0) valid
IMAGES = {"A": ("2020-01-01", [[10, 0], [30, 40]]),
          "B": ("2020-01-03", [[0, 20], [0, 60]]),
          "C": ("2020-01-03T12:00:00Z", [[5, 0], [0, 0]])}
TIMES = ["2020-01-01", "2020-01-03", "2020-01-03T12:00:00Z"]
ORBITS = {"A": 7, "B": 8, "C": 7}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("series")
    out = {}
    for name, (_, values) in IMAGES.items():
        path = tmp / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=2, height=2, count=1, dtype="uint16", nodata=0,
                           crs="EPSG:32618", transform=from_origin(X0, Y0, 10, 10)) as dst:
            dst.write(np.array(values, dtype=np.uint16), 1)
            dst.set_band_description(1, "B1")
        out[name] = str(path)
    return out


@pytest.fixture(scope="module")
def emulator(files):
    # listed out of time order on purpose: both sources sort by time
    members = [{"id": f"{COLLECTION}/{n}", "path": files[n], "bands": ["B1"], "time_start": IMAGES[n][0],
                "properties": {"ORBIT": ORBITS[n]}} for n in ("C", "A", "B")]
    with EmulatorServer({"collections": {COLLECTION: members}}, EmulatorConfig()) as server:
        yield server


def bbox():
    t = Transformer.from_crs("EPSG:32618", "EPSG:4326", always_xy=True)
    (lon0, lon1), (lat0, lat1) = t.transform([X0 + 5, X0 + 15], [Y0 - 15, Y0 - 5])
    return [lon0, lat0, lon1, lat1]


def write_config(tmp_path, kind, files, url=None, collection=None, output=None):
    if kind == "raster":
        source = {"kind": "raster", "images": [{"uri": files[n], "time": IMAGES[n][0], "properties": {"ORBIT": ORBITS[n]}}
                                               for n in ("B", "C", "A")]}
    else:
        source = {"kind": "earthengine", "collection": COLLECTION, "url": url, "credentials": "anonymous",
                  "project": "demo"}
    doc = {"source": {**source, **(collection or {})}, "regions": bbox(),
           "grid": {"crs": "EPSG:32618", "scale": 10, "origin": [X0, Y0], "patch_size": 2},
           "output": {"path": str(tmp_path / kind), "formats": ["tfrecord", "npy"], **(output or {})},
           "fetch": {"max_concurrent_requests": 2}}
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def run_both(tmp_path, files, emulator, collection, output=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind in ("raster", "earthengine"):
        cfg = write_config(tmp_path, kind, files, emulator.url, collection, output)
        assert main(["run", cfg]) == 0, kind
        folder = tmp_path / kind
        (row,) = [json.loads(line) for line in open(folder / "manifest.jsonl")]
        arr = np.load(folder / "npy" / f"{row['patch_id']}.npy")
        out[kind] = (row, arr, folder, json.load(open(folder / "dataset.json")))
    return out


def ids(row):
    return [os.path.basename(i).removesuffix(".tif") for i in row["image_ids"]]


def test_stack_same_on_both_sources_and_parses_in_tensorflow(tmp_path, files, emulator):
    runs = run_both(tmp_path, files, emulator, {"collection_mode": "stack"})
    expected = np.array([IMAGES[n][1] for n in "ABC"], dtype=np.uint16)[:, None]
    for kind, (row, arr, folder, meta) in runs.items():
        assert arr.shape == (3, 1, 2, 2) and arr.dtype == np.uint16, kind
        np.testing.assert_array_equal(arr, expected, err_msg=kind)
        assert row["times"] == TIMES and meta["times"] == TIMES and meta["npy_shape"] == [3, 1, 2, 2]
        assert row["images"] == 3 and ids(row) == ["A", "B", "C"]
        assert row["valid_fraction"] == 6 / 12
        spec = meta["tfrecord"]["features"]
        assert {"0_B1", "1_B1", "2_B1", "0_mask", "2_mask", "times"} <= set(spec)
    tf = pytest.importorskip("tensorflow")
    folder = runs["earthengine"][2]
    spec = runs["earthengine"][3]["tfrecord"]["features"]
    parse = {k: tf.io.FixedLenFeature(v["shape"], getattr(tf, v["dtype"])) for k, v in spec.items()}
    files_ = [str(p) for p in (folder / "tfrecord").glob("*.tfrecord.gz")]
    (raw,) = list(tf.data.TFRecordDataset(files_, compression_type="GZIP"))
    ex = tf.io.parse_single_example(raw, parse)
    np.testing.assert_array_equal(ex["1_B1"].numpy(), [[0, 20], [0, 60]])
    np.testing.assert_array_equal(ex["1_mask"].numpy(), [[0, 1], [0, 1]])
    assert [t.decode() for t in ex["times"].numpy()] == TIMES


@pytest.mark.parametrize("mode, expected, dtype", [
    ({"collection_mode": "mosaic"}, [[5, 20], [30, 60]], np.uint16),  # later (in time) wins where valid
    ({"composite": "median"}, [[7.5, 20], [30, 50]], np.float64),
    ({"composite": "mean"}, [[7.5, 20], [30, 50]], np.float64),
    ({"composite": "min"}, [[5, 20], [30, 40]], np.uint16),
    ({"composite": "max"}, [[10, 20], [30, 60]], np.uint16),
    ({"composite": "first"}, [[10, 20], [30, 40]], np.uint16),
])
def test_mosaic_and_composites_same_on_both_sources(tmp_path, files, emulator, mode, expected, dtype):
    if "composite" in mode:
        mode = {"collection_mode": "composite", **mode}
    runs = run_both(tmp_path, files, emulator, mode)
    for kind, (row, arr, folder, meta) in runs.items():
        assert arr.dtype == dtype and meta["dtype"] == np.dtype(dtype).name, kind
        np.testing.assert_array_equal(arr, np.array(expected, dtype=dtype)[None], err_msg=kind)
        assert row["valid_fraction"] == 1.0 and "times" not in row and row["images"] == 3


def test_flatten_mosaics_same_day_images_into_one_step(tmp_path, files, emulator):
    runs = run_both(tmp_path, files, emulator, {"collection_mode": "flatten"}, output={"formats": ["npy", "geotiff"]})
    for kind, (row, arr, folder, meta) in runs.items():
        np.testing.assert_array_equal(arr, np.array([[[[10, 0], [30, 40]]], [[[5, 20], [0, 60]]]]), err_msg=kind)
        assert row["times"] == ["2020-01-01", "2020-01-03"] and meta["npy_shape"] == [2, 1, 2, 2]
        with rasterio.open(folder / "geotiff" / f"{row['patch_id']}.tif") as ds:
            assert ds.descriptions == ("0_B1", "1_B1")
            np.testing.assert_array_equal(ds.read(2), [[5, 20], [0, 60]])


def test_flatten_by_a_property_same_on_both_sources(tmp_path, files, emulator):
    # ORBIT 7: A and C (C wins where valid), ORBIT 8: B; each step is timed by its first image
    runs = run_both(tmp_path, files, emulator, {"collection_mode": "flatten", "flatten_by": "ORBIT"})
    for kind, (row, arr, folder, meta) in runs.items():
        np.testing.assert_array_equal(arr, np.array([[[[5, 0], [30, 40]]], [[[0, 20], [0, 60]]]]), err_msg=kind)
        assert row["times"] == ["2020-01-01", "2020-01-03"] and meta["npy_shape"] == [2, 1, 2, 2], kind


def test_earth_engine_listing_is_bounded_retried_and_checked(files):
    """The listing (one value:compute) keeps the images that can touch the regions, survives
    429s, and names images lacking the flatten_by property."""
    from pixelbeam.testing.ee_emulator import EmulatorConfig
    from pixelbeam.transforms.sources.earthengine import EarthEngineSource
    from pixelbeam.transforms.sources.base import SourceError
    far = {"id": f"{COLLECTION}/FAR", "path": files["A"], "bands": ["B1"], "time_start": "2020-01-02"}
    members = [{"id": f"{COLLECTION}/{n}", "path": files[n], "bands": ["B1"], "time_start": IMAGES[n][0],
                "properties": {"ORBIT": ORBITS[n]}} for n in "AB"]
    with rasterio.open(files["A"]) as ds:  # FAR: image A moved 100 km east
        far_path = os.path.join(os.path.dirname(files["A"]), "far.tif")
        with rasterio.open(far_path, "w", **{**ds.profile, "transform": from_origin(X0 + 100_000, Y0, 10, 10)}) as dst:
            dst.write(ds.read())
    far["path"] = far_path
    flaky = EmulatorConfig(fault_429=0.6, seed=1)
    with EmulatorServer({"collections": {COLLECTION: members + [far]}}, flaky) as server:
        src = EarthEngineSource(collection=COLLECTION, url=server.url, credentials="anonymous", project="demo",
                                mode="stack", timeout_s=120)
        src.initialize()
        assert [i.image_id.rsplit("/", 1)[1] for i in src.list_images()] == ["A", "B", "FAR"]  # listing order
        lon0, lat0, lon1, lat1 = bbox()
        bounded = EarthEngineSource(**{**src.__dict__, "bounds": (lon0, lat0, lon1, lat1)})
        assert [i.image_id.rsplit("/", 1)[1] for i in bounded.list_images()] == ["A", "B"]
        assert server.stats()["rejected_429"]["injected"] > 0  # answered only after retries
        server.set_config(EmulatorConfig())
        orbit = EarthEngineSource(**{**src.__dict__, "mode": "flatten", "flatten_by": "ORBIT"})
        with pytest.raises(SourceError, match=r"source.flatten_by: 1 of 3 images have no property 'ORBIT'") as e:
            orbit.describe()
        assert "\n" not in str(e.value)


def test_filter_coverage_drops_small_images_and_reports_the_kept(tmp_path, files, emulator):
    # coverage of the patch by valid pixels: A 3/4, B 2/4 (kept at 0.5), C 1/4 (dropped)
    runs = run_both(tmp_path, files, emulator, {"collection_mode": "mosaic", "filter_coverage": 0.5})
    for kind, (row, arr, folder, meta) in runs.items():
        np.testing.assert_array_equal(arr, [[[10, 20], [30, 60]]], err_msg=kind)
        assert row["images"] == 2 and ids(row) == ["A", "B"], kind
    stack = run_both(tmp_path / "stack", files, emulator, {"collection_mode": "stack", "filter_coverage": 0.5})
    for kind, (row, arr, folder, meta) in stack.items():
        np.testing.assert_array_equal(arr[2], 0, err_msg=kind)  # C's step is masked, T stays 3
        assert arr.shape == (3, 1, 2, 2) and row["images"] == 2


def test_flatten_by_property_and_mask_rules_on_a_stack():
    images = [CollectionImage("a", "2020-01-01", (("orbit", 1),)), CollectionImage("b", "2020-01-02", (("orbit", 2),)),
              CollectionImage("c", "2020-01-03", (("orbit", 1),))]
    plan = plan_collection(images, "flatten", flatten_by="orbit")
    assert plan.groups == ((0, 2), (1,)) and plan.step_times == ("2020-01-01", "2020-01-02")
    data = [np.full((1, 1, 2), v) for v in (1, 2, 3)]
    masks = [np.array([[True, False]]), np.array([[True, True]]), np.array([[False, False]])]
    out, mask, kept = combine(plan, data, masks, "int64")
    np.testing.assert_array_equal(out[:, 0], [[[1, 1]], [[2, 2]]])  # c is masked: a stays
    np.testing.assert_array_equal(mask, [[[True, False]], [[True, True]]])
    from pixelbeam.transforms.pixels.masking import PixelRules
    from pixelbeam.transforms.patch import Patch, PatchSpec
    spec = PatchSpec("p", "r", "EPSG:32618", (10, 0, 0, 0, -10, 0), 2, 1)
    patch = PixelRules(fill_value=9)(Patch(spec, out, mask, ("B1",)))
    np.testing.assert_array_equal(patch.data[:, 0], [[[1, 9]], [[2, 2]]])


def test_plan_time_errors_are_one_line(tmp_path, files, emulator):
    cfg = write_config(tmp_path, "raster", files, collection={"collection_mode": "stack"},
                       output={"formats": ["png"]})
    with pytest.raises(ConfigError, match=r"png cannot show a time stack") as e:
        prepare_job(load_config(cfg))
    assert "\n" not in str(e.value)
    doc = yaml.safe_load(open(cfg))
    doc["source"] = {"uri": [files["A"], files["B"]], "collection_mode": "stack"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"collection_mode stack needs a time per image"):
        load_config(str(tmp_path / "bad.yaml"))
    ee = write_config(tmp_path, "earthengine", files, emulator.url, {"collection_mode": "composite"})
    with pytest.raises(ConfigError, match=r"collection_mode composite needs composite"):
        load_config(ee)


def test_a_rerun_whose_collection_lists_other_images_is_refused(tmp_path, files, capsys):
    """An Earth Engine collection that gained an image since the folder was written (same config)."""
    members = [{"id": f"{COLLECTION}/{n}", "path": files[n], "bands": ["B1"], "time_start": IMAGES[n][0]} for n in "AB"]
    with EmulatorServer({"collections": {COLLECTION: members}}, EmulatorConfig()) as server:
        cfg = write_config(tmp_path, "earthengine", files, server.url, {"collection_mode": "stack"})
        assert main(["run", cfg]) == 0
    assert json.load(open(tmp_path / "earthengine" / "dataset.json"))["images"] == [f"{COLLECTION}/{n}" for n in "AB"]
    later = members + [{"id": f"{COLLECTION}/C", "path": files["C"], "bands": ["B1"], "time_start": IMAGES["C"][0]}]
    with EmulatorServer({"collections": {COLLECTION: later}}, EmulatorConfig()) as server:
        cfg = write_config(tmp_path, "earthengine", files, server.url, {"collection_mode": "stack"})
        capsys.readouterr()
        assert main(["run", cfg]) == 2
        err = capsys.readouterr().err
        assert f"source: the collection now lists 3 images (new '{COLLECTION}/C'), 2 when" in err
        assert err.count("\n") == 1
        assert main(["run", cfg, "--overwrite"]) == 0
    assert np.load(next((tmp_path / "earthengine" / "npy").glob("*.npy"))).shape == (3, 1, 2, 2)
