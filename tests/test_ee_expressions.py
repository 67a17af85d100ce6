"""Any Earth Engine image: expressions from a Python function, a serialized JSON, or an ee.Image
passed from Python, run through the real `ee` client and pixelbeam's pipeline against the local
emulator serving configs/emulator_catalog.json; pixels checked against numpy on the same files,
and every algorithm sent checked against the catalog inside earthengine-api."""

import glob
import json
import os

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.warp import transform as warp_points
from rasterio.windows import Window

ee = pytest.importorskip("ee")

import pixelbeam  # noqa: E402
from pixelbeam.pipeline.cli import main  # noqa: E402
from pixelbeam.pipeline.config import ConfigError, load_config, parse_config  # noqa: E402
from pixelbeam.pipeline.config.expression import with_expression  # noqa: E402
from pixelbeam.pipeline.plan import prepare_job  # noqa: E402
from pixelbeam.testing.ee_emulator import Catalog, EmulatorConfig, EmulatorServer  # noqa: E402
from pixelbeam.testing.ee_emulator.expressions import FUNCTIONS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
RGB = os.path.join(ROOT, "data", "RGB.byte.tif")
S2_DATES = ("20200105", "20200115", "20200125")
LANDSAT_DATES = ("20200108", "20200124", "20200209")
with rasterio.open(RGB) as _ds:
    NATIVE = {"crs": "EPSG:32618", "scale": [_ds.transform.a, -_ds.transform.e],
              "origin": [_ds.transform.c, _ds.transform.f]}
    _corners = [_ds.transform * (c, r) for c, r in ((300, 364), (355, 419))]  # inside data/ee's window
_lons, _lats = warp_points("EPSG:32618", "EPSG:4326", [x for x, _ in _corners], [y for _, y in _corners])
REGION = [min(_lons), min(_lats), max(_lons), max(_lats)]


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(Catalog.from_file(os.path.join(CONFIGS, "emulator_catalog.json")),
                        EmulatorConfig(max_concurrent=8), record=True) as server:
        yield server


def example(tmp_path, name, url, source=None, grid=None, out="out", **sections):
    """configs/<name>.yaml on the data/ee grid, against the emulator, written to tmp_path."""
    doc = yaml.safe_load(open(os.path.join(CONFIGS, f"{name}.yaml")))
    src = doc["source"]
    if "expression" in src:
        src["expression"] = os.path.join(CONFIGS, src["expression"])
    src.update(url=url, credentials="anonymous", **(source or {}))
    doc.update(regions=REGION, grid={**NATIVE, "patch_size": 32, **(grid or {})},
               output={"path": str(tmp_path / out), "formats": ["npy"]}, **sections)
    path = tmp_path / f"{name}-{out}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def rows_of(out):
    with open(os.path.join(out, "manifest.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def read(path, row):
    """(data float64 (C, H, W), valid (C, H, W)) of a file under a manifest row's patch."""
    with rasterio.open(path) as ds:
        col0, row0 = (round(v) for v in ~ds.transform * (row["transform"][2], row["transform"][5]))
        data = np.zeros((ds.count, row["height"], row["width"]))
        valid = np.zeros(data.shape, bool)
        c0, r0 = max(col0, 0), max(row0, 0)
        c1, r1 = min(col0 + row["width"], ds.width), min(row0 + row["height"], ds.height)
        if c1 > c0 and r1 > r0:
            window = Window(c0, r0, c1 - c0, r1 - r0)
            inside = (slice(None), slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0))
            data[inside] = ds.read(window=window)
            valid[inside] = ds.read_masks(window=window) > 0
    return data, valid


def median(values, valid):
    """Median over valid pixels only (float64), 0 where none is, and where any is valid."""
    data = np.where(valid, values, np.nan)
    with np.errstate(all="ignore"), np.testing.suppress_warnings() as sup:
        sup.filter(RuntimeWarning)
        out = np.nanmedian(data, axis=0)
    return np.nan_to_num(out, nan=0.0), valid.any(axis=0)


def s2_expected(row, cloud_mask="qa60", use_masks=True):
    """numpy of configs/ee_s2_cloudmasked.py on the same files: (bands (6, H, W), mask (H, W))."""
    rgb, rgb_ok = read(RGB, row)
    b2_b3_b4_b8, ok = [], []
    for date in S2_DATES:
        extra, extra_ok = read(os.path.join(ROOT, "data", "ee", f"s2_{date}.tif"), row)
        qa, scl = extra[1].astype(np.int64), extra[2]
        if cloud_mask == "qa60":
            clear = extra_ok[1] & ((qa & (1 << 10)) == 0) & ((qa & (1 << 11)) == 0)
        else:
            clear = extra_ok[2] & ~np.isin(scl, [3, 8, 9, 10])
        clear = clear if use_masks else np.ones_like(clear)
        b2_b3_b4_b8.append([rgb[2], rgb[1], rgb[0], extra[0]])
        ok.append([rgb_ok[2] & clear, rgb_ok[1] & clear, rgb_ok[0] & clear, extra_ok[0] & clear])
    values, ok = np.array(b2_b3_b4_b8), np.array(ok)  # (T, 4, H, W)
    composite, valid = zip(*(median(values[:, b], ok[:, b]) for b in range(4)))
    (b2, b3, b4, b8), (v2, v3, v4, v8) = composite, valid
    nd_ok = v8 & v4 & (b8 >= 0) & (b4 >= 0) & (b8 + b4 != 0)
    with np.errstate(all="ignore"):
        ndvi = np.where(nd_ok, (b8 - b4) / np.where(b8 + b4 == 0, 1, b8 + b4), 0).astype(np.float32)
    classes, classes_ok = read(os.path.join(ROOT, "data", "ee", "worldcover_2021.tif"), row)
    lookup = {c: i for i, c in enumerate([10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100])}
    landcover = np.vectorize(lambda c: lookup.get(int(c), -1))(classes[0])
    lc_ok = classes_ok[0] & (landcover >= 0)
    bands = [b4, b3, b2, b8, ndvi.astype(np.float64), landcover]
    masks = [v4, v3, v2, v8, nd_ok, lc_ok]
    return np.array([np.where(m, b, 0) for b, m in zip(bands, masks)]), np.logical_and.reduce(masks)


@pytest.mark.parametrize("cloud_mask", ["qa60", "scl"])
def test_sentinel2_cloud_masked_median_ndvi_and_label_equal_numpy(tmp_path, emulator, cloud_mask):
    cfg = example(tmp_path, "ee_s2_cloudmasked", emulator.url,
                  source={"expression_args": {"start": "2020-01-01", "end": "2020-02-01", "cloud_mask": cloud_mask}})
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    rows = rows_of(out)
    assert len(rows) >= 4 and {r["status"] for r in rows} == {"written"}
    doc = json.load(open(os.path.join(out, "dataset.json")))
    assert doc["bands"] == ["B4", "B3", "B2", "B8", "NDVI", "landcover"] and doc["dtype"] == "float64"
    recorded = doc["config"]["source"]["expression_json"]
    assert recorded["values"] and doc["config"]["source"]["expression"].endswith("ee_s2_cloudmasked.py:s2_cloudmasked")
    changed = 0
    for row in rows:
        arr = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
        expected, mask = s2_expected(row, cloud_mask)
        assert arr.shape == (6, 32, 32)
        np.testing.assert_array_equal(arr, expected)
        assert row["valid_fraction"] == pytest.approx(mask.mean(), abs=1e-6)
        unmasked, _ = s2_expected(row, cloud_mask, use_masks=False)
        changed += int((unmasked[4] != expected[4]).sum())  # NDVI without the cloud mask
    assert changed > 50  # the masks visibly change pixels


def landsat_expected(row):
    """numpy of configs/ee_landsat_c2.py on the same files: (T, 4, H, W) values, (T, H, W) mask."""
    steps, masks = [], []
    for date in LANDSAT_DATES:
        dn, ok = read(os.path.join(ROOT, "data", "ee", f"lc08_{date}.tif"), row)
        qa = dn[4].astype(np.int64)
        clear = ok[4] & ((qa & 0b11111) == 0)
        valid = ok[:4] & clear
        steps.append(np.where(valid, dn[:4] * 2.75e-05 + -0.2, 0))
        masks.append(valid.all(axis=0))
    return np.array(steps), np.array(masks)


def test_landsat_c2_scaled_qa_masked_stack_equals_numpy(tmp_path, emulator):
    cfg = example(tmp_path, "ee_landsat_c2_stack", emulator.url)
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    doc = json.load(open(os.path.join(out, "dataset.json")))
    assert doc["times"] == ["2020-01-08", "2020-01-24", "2020-02-09"] and doc["npy_shape"] == [3, 4, 32, 32]
    assert doc["images"] == [f"LC08_012043_{d}" for d in LANDSAT_DATES]  # picked by system:index
    masked = 0
    for row in rows_of(out):
        arr = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
        expected, mask = landsat_expected(row)
        np.testing.assert_array_equal(arr, expected)
        assert row["valid_fraction"] == pytest.approx(mask.mean(), abs=1e-6)
        masked += int((~mask).sum())
    assert masked > 100  # clouds, their edges and shadows


def test_an_expression_collection_fills_a_point_table(tmp_path, emulator):
    pq = pytest.importorskip("pyarrow.parquet")
    with rasterio.open(RGB) as ds:
        pixels = [(310, 370), (330, 400), (350, 415)]  # (col, row) of RGB.byte.tif, in data/ee's window
        xy = [ds.transform * (c + 0.5, r + 0.5) for c, r in pixels]
    lons, lats = warp_points("EPSG:32618", "EPSG:4326", [x for x, _ in xy], [y for _, y in xy])
    points = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": f"p{i}"}, "geometry": {"type": "Point", "coordinates": [lo, la]}}
        for i, (lo, la) in enumerate(zip(lons, lats))]}
    (tmp_path / "points.geojson").write_text(json.dumps(points))
    cfg = example(tmp_path, "ee_landsat_c2_stack", emulator.url, source={"collection_mode": None},
                  table={"crs": "EPSG:32618", "scale": NATIVE["scale"], "origin": NATIVE["origin"],
                         "formats": ["parquet"], "point_id_property": "name"})
    doc = yaml.safe_load(open(cfg))
    doc["regions"] = str(tmp_path / "points.geojson")
    doc.pop("grid")
    open(cfg, "w").write(yaml.safe_dump(doc))
    assert main(["run", cfg]) == 0
    table = pq.read_table(str(tmp_path / "out" / "table")).to_pylist()
    assert len(table) == 9
    for i, (c, r) in enumerate(pixels):
        row = {"transform": [0, 0, NATIVE["origin"][0] + c * NATIVE["scale"][0], 0, 0,
                             NATIVE["origin"][1] - r * NATIVE["scale"][1]], "width": 1, "height": 1}
        expected, mask = landsat_expected(row)
        for t, date in enumerate(LANDSAT_DATES):
            (got,) = [x for x in table if x["point_id"] == f"p{i}" and x["id"] == f"LC08_012043_{date}"]
            want = [float(v) if mask[t, 0, 0] else None for v in expected[t, :, 0, 0]]
            assert [got[b] for b in ("SR_B2", "SR_B3", "SR_B4", "SR_B5")] == want


def test_a_changed_expression_is_refused_on_rerun(tmp_path, emulator, capsys):
    cfg = example(tmp_path, "ee_s2_cloudmasked", emulator.url, grid={"patch_size": 64})
    assert main(["run", cfg]) == 0
    assert main(["run", cfg]) == 0 and "nothing to do" in capsys.readouterr().out
    doc = yaml.safe_load(open(cfg))
    doc["source"]["expression_args"]["max_cloud"] = 10  # another image: one date fewer
    open(cfg, "w").write(yaml.safe_dump(doc))
    capsys.readouterr()
    assert main(["run", cfg]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "source.expression" in err and "--overwrite" in err
    # retry-failed reruns the recorded expression, whatever the function builds now
    assert main(["retry-failed", str(tmp_path / "out"), "--ee_emulator", emulator.url]) == 0


def test_expression_json_file_and_with_expression_from_python(tmp_path, emulator, capsys):
    cfg = example(tmp_path, "ee_s2_cloudmasked", emulator.url, out="from_yaml")
    assert main(["run", cfg]) == 0
    recorded = json.load(open(tmp_path / "from_yaml" / "dataset.json"))["config"]["source"]["expression_json"]
    # the same expression from a JSON file
    (tmp_path / "image.json").write_text(json.dumps(recorded))
    doc = yaml.safe_load(open(cfg))
    doc["source"] = {k: v for k, v in doc["source"].items() if not k.startswith("expression")}
    doc["source"]["expression_json"] = str(tmp_path / "image.json")
    doc["output"]["path"] = str(tmp_path / "from_json")
    path = tmp_path / "from_json.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["run", str(path)]) == 0
    # an ee.Image built in Python (the client is initialized by the runs above)
    import importlib.util
    spec = importlib.util.spec_from_file_location("s2_example", os.path.join(CONFIGS, "ee_s2_cloudmasked.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    image = module.s2_cloudmasked("2020-01-01", "2020-02-01", bounds=None, max_cloud=70)
    doc["source"].pop("expression_json")
    doc["output"]["path"] = str(tmp_path / "from_python")
    job = prepare_job(parse_config(with_expression(doc, image)))
    assert job.info.band_names == ("B4", "B3", "B2", "B8", "NDVI", "landcover")
    assert pixelbeam.plan(doc, image=image).bands == list(job.info.band_names)  # the public API
    assert pixelbeam.run(doc, image=image).ok
    with pytest.raises(ConfigError, match="pass an ee.Image"):
        with_expression(doc, {"not": "an image"}.keys())
    with pytest.raises(ConfigError, match="image: got ImageCollection.*use collection="):
        pixelbeam.plan(doc, image=ee.ImageCollection([image]))
    with pytest.raises(ConfigError, match="not both"):
        pixelbeam.plan(doc, image=image, collection=ee.ImageCollection([image]))
    for name in ("from_json", "from_python"):
        for f in glob.glob(str(tmp_path / "from_yaml" / "npy" / "*.npy")):
            np.testing.assert_array_equal(np.load(f), np.load(str(tmp_path / name / "npy" / os.path.basename(f))))
    # a changed JSON is refused naming its field
    changed = with_expression(load_config(str(path)), json.loads(ee.Image.constant(1).rename("B4").serialize()))
    assert changed.source.expression_json and changed.source.asset is None
    doc2 = dict(doc, source={**doc["source"], "expression_json": str(tmp_path / "other.json"), "bands": ["B4"]})
    doc2["output"]["path"] = str(tmp_path / "from_json")
    (tmp_path / "other.json").write_text(ee.Image.constant(1).rename("B4").serialize())
    path2 = tmp_path / "other.yaml"
    path2.write_text(yaml.safe_dump(doc2))
    capsys.readouterr()
    assert main(["run", str(path2)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "source.expression_json" in err


def test_each_request_expression_is_serialized_once_per_process(tmp_path, emulator, monkeypatch):
    job = prepare_job(load_config(example(tmp_path, "ee_landsat_c2_stack", emulator.url)))
    reader = job.source.open(job.info)
    calls = []
    real = ee.serializer.Serializer._encode
    monkeypatch.setattr(ee.serializer.Serializer, "_encode", lambda self, obj: calls.append(1) or real(self, obj))
    from pixelbeam.transforms.sources.base import patch_parts
    spec = job.specs[0]
    for part in patch_parts(spec, job.info) * 2:
        reader.fetch(spec, part)
    assert calls == [] and len(reader.expressions) == 3


def test_request_splitting_and_the_validity_band_work_on_an_expression(tmp_path, emulator):
    # float64 bands: 3 x 8 bytes + the 1-byte validity band per pixel, 1,500 x 1,500 px > 48 MiB
    image = ee.Image("COPERNICUS/S2_SR_HARMONIZED/20200105T154549_20200105T154543_T18RTM").select(
        ["B4", "B3", "B2"]).toDouble()
    doc = yaml.safe_load(open(example(tmp_path, "ee_s2_cloudmasked", emulator.url, grid={"patch_size": 1500})))
    doc["source"] = {k: v for k, v in doc["source"].items() if not k.startswith("expression") and k != "bands"}
    job = prepare_job(parse_config(with_expression(doc, image)))
    assert job.planned == 1 and job.requests_per_patch > 1
    assert pixelbeam.run(doc, image=image).ok
    (row,) = rows_of(str(tmp_path / "out"))
    arr = np.load(os.path.join(str(tmp_path / "out"), "npy", f"{row['patch_id']}.npy"))
    values, ok = read(RGB, row)
    assert arr.dtype == np.float64 and row["requests"] == job.requests_per_patch
    np.testing.assert_array_equal(arr, np.where(ok, values, 0))
    assert row["valid_fraction"] == pytest.approx(ok.all(axis=0).mean(), abs=1e-6)


# -- every algorithm and argument name against earthengine-api's own catalog ------------------

def algorithm_catalog() -> dict:
    path = os.path.join(os.path.dirname(ee.__file__), "tests", "algorithms.json")
    with open(path) as f:
        return {a["name"].removeprefix("algorithms/"): {x["argumentName"] for x in a.get("arguments", [])}
                for a in json.load(f)["algorithms"]}


def invocations(node):
    """(functionName, argument names) of every invocation in a serialized graph."""
    if isinstance(node, dict):
        call = node.get("functionInvocationValue")
        if isinstance(call, dict) and "functionName" in call:
            yield call["functionName"], set(call.get("arguments") or {})
        for value in node.values():
            yield from invocations(value)
    elif isinstance(node, list):
        for value in node:
            yield from invocations(value)


def test_the_emulator_implements_only_real_algorithms_with_their_argument_names():
    import inspect
    catalog = algorithm_catalog()
    for name, fn in FUNCTIONS.items():
        assert name in catalog, name
        params = inspect.signature(fn).parameters
        names = {p.rstrip("_") for p, v in params.items() if v.kind != v.VAR_KEYWORD and p != "ev"}
        assert names <= catalog[name], (name, names - catalog[name])
    for required in ("Image.load", "Image.select", "Image.rename", "Image.addBands", "Image.cat", "Image.updateMask",
                     "Image.mask", "Image.unmask", "Image.bitwiseAnd", "Image.rightShift", "Image.eq", "Image.neq",
                     "Image.lt", "Image.lte", "Image.gt", "Image.gte", "Image.and", "Image.or", "Image.not",
                     "Image.add", "Image.subtract", "Image.multiply", "Image.divide", "Image.normalizedDifference",
                     "Image.where", "Image.remap", "Image.toFloat", "Image.toUint16", "Image.clip", "Image.resample",
                     "ImageCollection.load", "Collection.filter", "Collection.map", "Collection.first",
                     "reduce.median", "reduce.mean", "reduce.min", "reduce.max", "ImageCollection.mosaic",
                     "Filter.dateRangeContains", "Filter.intersects"):
        assert required in FUNCTIONS, required


def test_every_algorithm_pixelbeam_and_the_examples_send_is_in_the_catalog(tmp_path, emulator):
    """Plans every Earth Engine config (listing, probe) and builds its readers' request
    expressions, then walks every graph the emulator received and every one built."""
    catalog = algorithm_catalog()
    graphs = []
    for path in sorted(glob.glob(os.path.join(CONFIGS, "ee_*.yaml"))) + [os.path.join(CONFIGS, "composite.yaml")]:
        doc = yaml.safe_load(open(path))
        if "expression" in doc["source"]:
            doc["source"]["expression"] = os.path.join(CONFIGS, doc["source"]["expression"])
        doc["source"].update(url=emulator.url, credentials="anonymous")
        doc["output"] = {"path": str(tmp_path / os.path.basename(path)), "formats": ["npy"]}
        config = parse_config(doc, base_dir=CONFIGS)
        if config.table is not None:
            from pixelbeam.pipeline.tables.plan import prepare_table_job
            job = prepare_table_job(config)
            reader = job.source.open(job.info)
            graphs.append(reader.stacked_expression((0, 1)))
        else:
            job = prepare_job(config)
            reader = job.source.open(job.info)
            graphs += [reader.expression] + list(reader.expressions or [])
    graphs += [body.get("expression") for _, body in emulator.recorded]
    sent = {}
    for graph in graphs:
        for name, args in invocations(graph):
            sent.setdefault(name, set()).update(args)
    assert {"Image.bitwiseAnd", "Image.normalizedDifference", "Image.remap", "Collection.map",
            "Collection.filter", "Collection.size", "AggregateFeatureCollection.array"} <= set(sent)
    for name, args in sent.items():
        assert name in catalog, name
        assert args <= catalog[name], (name, args - catalog[name])


def test_an_unknown_algorithm_is_a_400_naming_it(emulator):
    from pixelbeam.testing.ee_emulator import initialize_ee_client
    initialize_ee_client(emulator.url)
    ee.data.setMaxRetries(0)
    graph = {"result": "0", "values": {"0": {"functionInvocationValue": {
        "functionName": "Image.pixelLonLat", "arguments": {}}}}}
    from pixelbeam.transforms.sources.ee_client import post_compute_pixels
    grid = {"dimensions": {"width": 1, "height": 1}, "crsCode": "EPSG:4326",
            "affineTransform": {"scaleX": 1e-4, "scaleY": -1e-4, "translateX": -77.9, "translateY": 24.4}}
    from pixelbeam.transforms.fetching.retry import PermanentError
    with pytest.raises(PermanentError, match="HTTP 400: Function 'Image.pixelLonLat' is not supported") as err:
        post_compute_pixels({"expression": graph, "fileFormat": "NPY", "grid": grid})
    assert err.value.status == 400


# -- bad input: one line naming the field, exit 2, no patch request, nothing written ----------

BAD_FUNCTIONS = '''
import ee
def raises(start, end, max_cloud):
    raise ValueError("no such season")
def not_an_image(start, end, max_cloud):
    return {"image": 1}
def no_time(start, end, max_cloud):
    return ee.ImageCollection("LANDSAT/LC08/C02/T1_L2").map(lambda i: i.multiply(2))
'''


@pytest.mark.parametrize("source,field,words", [
    ({"expression": "missing.py:landsat_c2"}, "source.expression", "no file"),
    ({"expression": "bad.py:nothing_here"}, "source.expression", "has no function 'nothing_here'"),
    ({"expression": "bad.py:raises"}, "source.expression", "raised ValueError: no such season"),
    ({"expression": "bad.py:not_an_image"}, "source.expression", "returned dict, not an ee.Image"),
    ({"expression": "bad.py:no_time", "collection_mode": "stack", "bands": None}, "source.expression",
     "no system:time_start"),
    ({"expression_json": "missing.json"}, "source.expression_json", "no file"),
    ({"expression_json": "notjson.json"}, "source.expression_json", "not JSON"),
    ({"expression_json": "notexpr.json"}, "source.expression_json", "not a serialized Earth Engine expression"),
    ({"expression_json": {"result": "0", "values": {"0": {"functionInvocationValue": {
        "functionName": "Image.noSuchThing", "arguments": {}}}}}}, "source.expression_json",
     "not a serialized Earth Engine expression"),
    ({"bands": ["SR_B2", "B99"]}, "source.bands", "has no band 'B99'"),
    ({"expression_args": {"start": "2020-01-01", "end": "2020-03-01", "nope": 1}}, "source.expression",
     "unexpected keyword argument"),
])
def test_bad_expressions_are_one_line_before_any_patch_request(tmp_path, emulator, capsys, source, field, words):
    (tmp_path / "bad.py").write_text(BAD_FUNCTIONS)
    (tmp_path / "notjson.json").write_text("{not json")
    (tmp_path / "notexpr.json").write_text(json.dumps({"type": "Image", "id": "x"}))
    cfg = example(tmp_path, "ee_landsat_c2_stack", emulator.url)
    doc = yaml.safe_load(open(cfg))
    if "expression_json" in source:
        doc["source"] = {k: v for k, v in doc["source"].items() if not k.startswith("expression")}
    for key, value in source.items():
        doc["source"][key] = os.path.join(str(tmp_path), value) if key in ("expression", "expression_json") and \
            isinstance(value, str) else value
    for key in [k for k, v in source.items() if v is None]:  # left out: its default
        doc["source"].pop(key)
    open(cfg, "w").write(yaml.safe_dump(doc))
    before = len(emulator.recorded)
    capsys.readouterr()
    assert main(["run", cfg]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pixelbeam: error: {field}:") and words in err and err.count("\n") == 1, err
    assert not os.path.exists(tmp_path / "out")
    patch_requests = [body for method, body in emulator.recorded[before:]
                      if method == "computePixels" and body["grid"]["dimensions"] != {"width": 1, "height": 1}]
    assert patch_requests == []
