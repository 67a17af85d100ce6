"""Point time series (issue 4 item 2, Earth Engine's getRegion): rows against direct rasterio reads."""

import csv
import glob
import json
import os
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import yaml
from pyproj import Transformer
from rasterio.transform import xy
from rasterio.windows import Window

from pixelbeam.pipeline.cli import main
from pixelbeam.transforms.tables.points import time_ms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")


def write_collection(tmp_path, n, window=Window(300, 300, 60, 50)):
    """n dated copies of a scene window: image i is the data + i (clipped), rows < 2*(i % 5) nodata."""
    with rasterio.open(LANDSAT) as ds:
        profile, data, transform = ds.profile, ds.read(window=window), ds.window_transform(window)
    profile.update(width=int(window.width), height=int(window.height), transform=transform)
    files = []
    for i in range(n):
        img = np.where(data != 0, np.clip(data.astype(int) + i, 1, 255), 0).astype(np.uint8)
        img[:, : 2 * (i % 5)] = 0
        path = str(tmp_path / f"img{i:03d}.tif")
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(img)
        files.append(path)
    return files, profile


def write_points(tmp_path, profile, cells):
    to_lonlat = Transformer.from_crs(profile["crs"], "EPSG:4326", always_xy=True)
    feats = []
    for k, (r, c) in enumerate(cells):
        lon, lat = to_lonlat.transform(*xy(profile["transform"], r, c))
        feats.append({"type": "Feature", "properties": {"name": f"p{k}"},
                      "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    path = tmp_path / "points.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return str(path)


def write_config(tmp_path, files, regions, **table):
    times = [f"2020-01-{i + 1:02d}" if i < 31 else f"2021-{1 + i // 28 % 12:02d}-{1 + i % 28:02d}T{i // 336:02d}:00:00"
             for i in range(len(files))]
    doc = {"source": {"uri": files}, "regions": regions, "output": {"path": str(tmp_path / "out")},
           "table": {"times": times, "point_id_property": "name", **table}}
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path), times


def expected_rows(files, times, cells):
    """Rows read directly with rasterio: {(point, image id): (B1, B2, B3) or None if masked}."""
    out = {}
    for f, t in zip(files, times):
        with rasterio.open(f) as ds:
            data = ds.read()
        for k, (r, c) in enumerate(cells):
            v = data[:, r, c]
            out[(f"p{k}", os.path.basename(f)[:-4])] = (time_ms(t), None if (v == 0).any() else tuple(int(x) for x in v))
    return out


def read_table(out, fmt="parquet"):
    files = sorted(glob.glob(os.path.join(out, "table" if fmt == "parquet" else "table_csv", f"*.{fmt}")))
    if fmt == "parquet":
        return [row for f in files for row in pq.read_table(f).to_pylist()]
    rows = []
    for f in files:
        with open(f, newline="") as fh:
            rows += list(csv.DictReader(fh))
    return rows


def test_three_points_by_three_dated_files_match_rasterio(tmp_path, capsys):
    files, profile = write_collection(tmp_path, 3)
    cells = [(1, 3), (30, 40), (49, 59)]  # p0 in image 1's and 2's nodata rows
    cfg, times = write_config(tmp_path, files, write_points(tmp_path, profile, cells), formats=["parquet", "csv"])
    assert main(["plan", cfg, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["pixels"], plan["images"], plan["rows"], plan["values"], plan["requests"]) == (3, 3, 9, 27, 1)
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out")
    expected = expected_rows(files, times, cells)
    rows = read_table(out)
    assert len(rows) == 9
    to_lonlat = Transformer.from_crs(profile["crs"], "EPSG:4326", always_xy=True)
    for row in rows:
        t, values = expected[(row["point_id"], row["id"])]
        assert row["time"] == t
        got = None if row["B1"] is None else (row["B1"], row["B2"], row["B3"])
        assert got == values
        k = int(row["point_id"][1:])
        lon, lat = to_lonlat.transform(*xy(profile["transform"], *cells[k]))  # the pixel centre
        assert row["longitude"] == pytest.approx(lon, abs=1e-9) and row["latitude"] == pytest.approx(lat, abs=1e-9)
    assert sum(v is None for _, v in expected.values()) == 2  # masked -> null, checked above
    csv_rows = read_table(out, "csv")
    assert [(r["id"], r["point_id"], r["B1"]) for r in csv_rows] == [
        (r["id"], r["point_id"], "" if r["B1"] is None else str(r["B1"])) for r in rows]
    desc = json.load(open(os.path.join(out, "table.json")))
    assert desc["rows"] == 9 and desc["failed_rows"] == 0
    assert [c["name"] for c in desc["columns"]] == ["id", "longitude", "latitude", "time", "point_id", "B1", "B2", "B3"]


def test_polygon_gives_every_pixel_inside(tmp_path):
    files, profile = write_collection(tmp_path, 2)
    to_lonlat = Transformer.from_crs(profile["crs"], "EPSG:4326", always_xy=True)
    t = profile["transform"]
    # a box from pixel edges (10, 20) to (13, 24): 3 rows x 4 cols of centres inside
    ring = [to_lonlat.transform(*(t * (c, r))) for c, r in [(20.2, 10.2), (23.8, 10.2), (23.8, 12.8), (20.2, 12.8), (20.2, 10.2)]]
    path = tmp_path / "poly.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {"name": "field"},
                                "geometry": {"type": "Polygon", "coordinates": [ring]}}))
    cfg, times = write_config(tmp_path, files, str(path))
    assert main(["run", cfg]) == 0
    rows = read_table(str(tmp_path / "out"))
    assert len(rows) == 3 * 4 * 2 and {r["point_id"] for r in rows} == {"field"}


def test_table_config_errors_are_one_line(tmp_path, capsys):
    files, profile = write_collection(tmp_path, 2)
    cfg, _ = write_config(tmp_path, files, write_points(tmp_path, profile, [(1, 1)]))
    doc = yaml.safe_load(open(cfg))
    doc["table"]["times"] = ["2020-01-01"]
    open(cfg, "w").write(yaml.safe_dump(doc))
    assert main(["plan", cfg]) == 2
    err = capsys.readouterr().err
    assert "table.times: give one date per file of source.uri (2 files, 1 times)" in err and err.count("\n") == 1


@pytest.mark.parametrize("kind", ["raster", "earthengine"])
def test_two_million_values_match_a_direct_read(tmp_path, capsys, kind):  # SLOW: the 2.1M-value run
    """getRegion's ceiling is 1,048,576 values; 100 images x 7,000 points x 3 bands = 2.1M values,
    from the files and from the same files served as an Earth Engine collection."""
    from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
    files, profile = write_collection(tmp_path, 100, window=Window(200, 200, 120, 100))
    rng = np.random.default_rng(0)
    flat = rng.choice(120 * 100, size=7000, replace=False)
    cells = [(int(i // 120), int(i % 120)) for i in flat]
    points = write_points(tmp_path, profile, cells)
    cfg, times = write_config(tmp_path, files, points, group_size=32)
    out = str(tmp_path / "out")
    started = time.monotonic()
    if kind == "raster":
        assert main(["run", cfg]) == 0
    else:
        with EmulatorServer(ee_catalog(files, times), EmulatorConfig(max_concurrent=8)) as server:
            assert main(["run", ee_table_config(tmp_path, server.url, profile, points, group_size=32)]) == 0
        out = str(tmp_path / "ee")
    elapsed = time.monotonic() - started
    import pyarrow as pa
    table = pa.concat_tables([pq.read_table(f) for f in glob.glob(os.path.join(out, "table", "*.parquet"))])
    assert table.num_rows == 700_000 and table.num_rows * 3 >= 2_000_000
    # direct read: every file's pixels at the points, compared column by column
    k = np.array([int(p[1:]) for p in table.column("point_id").to_pylist()])
    img = np.array([int(i[3:]) for i in table.column("id").to_pylist()])
    rows = np.array([cells[i][0] for i in range(len(cells))])[k]
    cols = np.array([cells[i][1] for i in range(len(cells))])[k]
    stack = np.stack([rasterio.open(f).read() for f in files])  # (T, C, H, W)
    for b, name in enumerate(("B1", "B2", "B3")):
        values = stack[img, b, rows, cols]
        col = table.column(name)
        expected_valid = (stack[img, :, rows, cols] != 0).all(axis=1)
        np.testing.assert_array_equal(col.is_valid().to_numpy(zero_copy_only=False), expected_valid)
        np.testing.assert_array_equal(col.fill_null(0).to_numpy(), np.where(expected_valid, values, 0))
    assert sorted(set(zip(k.tolist(), img.tolist()))) == [(p, i) for p in range(7000) for i in range(100)]
    times_ms = np.array([time_ms(t) for t in times])
    np.testing.assert_array_equal(table.column("time").to_numpy(), times_ms[img])
    print(f"2.1M-value table from {kind}: {elapsed:.1f} s")


def test_a_failed_group_is_a_dead_letter_naming_its_points(tmp_path, monkeypatch):
    from pixelbeam.transforms.sources import table as table_source
    from pixelbeam.transforms.fetching.retry import PermanentError
    files, profile = write_collection(tmp_path, 3)
    cells = [(1, 3), (2, 4), (45, 55)]  # two groups of 32 px: g0_0 (p0, p1) and g1_1 (p2)
    cfg, times = write_config(tmp_path, files, write_points(tmp_path, profile, cells), group_size=32)
    real = table_source.RasterTableReader.fetch

    def fetch(self, spec, part):
        if spec.patch_id == "g0_0":
            raise PermanentError("injected", cause="test")
        return real(self, spec, part)
    monkeypatch.setattr(table_source.RasterTableReader, "fetch", fetch)
    assert main(["run", cfg]) == 1
    out = str(tmp_path / "out")
    assert {r["point_id"] for r in read_table(out)} == {"p2"} and len(read_table(out)) == 3
    (dead,) = [json.loads(line) for line in open(os.path.join(out, "failed.jsonl"))]
    assert dead["group"] == "g0_0" and dead["rows_lost"] == 6 and dead["images"] == ["img000", "img001", "img002"]
    assert sorted(p["point_id"] for p in dead["pixels"]) == ["p0", "p1"]
    assert json.load(open(os.path.join(out, "table.json")))["failed_rows"] == 6


def ee_table_config(tmp_path, url, profile, regions, collection="DEMO/SERIES", **table):
    t = profile["transform"]
    doc = {"source": {"kind": "earthengine", "collection": collection, "url": url, "credentials": "anonymous",
                      "project": "demo"},
           "regions": regions, "output": {"path": str(tmp_path / "ee")},
           "table": {"crs": profile["crs"].to_string(), "scale": [t.a, -t.e], "origin": [t.c, t.f],
                     "point_id_property": "name", **table},
           "fetch": {"max_concurrent_requests": 4}}
    path = tmp_path / "ee_table.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def ee_catalog(files, times, collection="DEMO/SERIES"):
    return {"collections": {collection: [
        {"id": f"{collection}/{os.path.basename(f)[:-4]}", "path": f, "bands": ["B1", "B2", "B3"], "time_start": t}
        for f, t in zip(files, times)]}}


def sorted_rows(rows):
    return sorted(rows, key=lambda r: (r["point_id"], r["time"], r["id"]))


def test_earth_engine_collection_table_equals_the_raster_table(tmp_path, capsys):
    """The same dated files as raster files and as an emulated Earth Engine collection give the
    same rows (ids: file stem = system:index; times: system:time_start)."""
    from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
    files, profile = write_collection(tmp_path, 40)
    rng = np.random.default_rng(1)
    flat = rng.choice(60 * 50, size=300, replace=False)
    cells = [(int(i // 60), int(i % 60)) for i in flat]
    points = write_points(tmp_path, profile, cells)
    cfg, times = write_config(tmp_path, files, points, group_size=16)
    assert main(["run", cfg]) == 0
    raster_rows = sorted_rows(read_table(str(tmp_path / "out")))
    capsys.readouterr()
    with EmulatorServer(ee_catalog(files, times), EmulatorConfig(max_concurrent=4, fault_429=0.25, seed=2)) as server:
        ee_cfg = ee_table_config(tmp_path, server.url, profile, points, group_size=16)
        assert main(["plan", ee_cfg, "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert main(["run", ee_cfg]) == 0
        stats = server.stats()
    ee_rows = sorted_rows(read_table(str(tmp_path / "ee")))
    assert len(ee_rows) == 300 * 40 and ee_rows == raster_rows
    assert sum(r["B1"] is None for r in ee_rows) > 0  # masked pixels are null in both
    # 40 images x (3 bands + valid) = 160 bands: one request per group, not one per image
    assert plan["requests"] == plan["groups"] and plan["images"] == 40
    assert stats["answered_200"] == 2 + 2 + plan["groups"]  # plan: listing + probe; run: the same + the groups
    assert stats["rejected_429"]["injected"] > 0  # retried, none lost
    with EmulatorServer(ee_catalog(files, times), EmulatorConfig()) as server:
        ee_cfg = ee_table_config(tmp_path, server.url, profile, points, group_size=16, images_per_request=15)
        capsys.readouterr()
        assert main(["plan", ee_cfg, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["requests"] == 3 * plan["groups"]  # 15 + 15 + 10 images
        assert main(["run", ee_cfg, "--overwrite"]) == 0
    assert sorted_rows(read_table(str(tmp_path / "ee"))) == raster_rows


def test_earth_engine_table_splits_past_1024_bands_and_checks_its_config(tmp_path, capsys):
    from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
    files, profile = write_collection(tmp_path, 300, window=Window(300, 300, 4, 4))  # 300 x 4 bands = 1200 > 1024
    cells = [(0, 0), (3, 3)]
    points = write_points(tmp_path, profile, cells)
    times = [f"{2000 + i // 12}-{1 + i % 12:02d}-01" for i in range(300)]
    with EmulatorServer(ee_catalog(files, times), EmulatorConfig()) as server:
        cfg = ee_table_config(tmp_path, server.url, profile, points)
        assert main(["plan", cfg, "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert plan["groups"] == 1 and plan["requests"] == 2
        assert main(["run", cfg]) == 0
        rows = read_table(str(tmp_path / "ee"))
        assert len(rows) == 600 and sorted({r["id"] for r in rows}) == sorted(os.path.basename(f)[:-4] for f in files)
        expected = expected_rows(files, [f"{t}" for t in times], cells)
        for row in rows:
            t, values = expected[(row["point_id"], row["id"])]
            assert row["time"] == t and (None if row["B1"] is None else (row["B1"], row["B2"], row["B3"])) == values
        doc = yaml.safe_load(open(cfg))
        doc["table"].pop("scale")
        open(cfg, "w").write(yaml.safe_dump(doc))
        assert main(["plan", cfg]) == 2
        err = capsys.readouterr().err
        assert "table.crs: an Earth Engine collection has no single native grid here" in err and err.count("\n") == 1


def test_the_earth_engine_point_table_config_runs_offline(tmp_path):
    """configs/ee_point_table.yaml against the emulator serving configs/emulator_catalog.json:
    the two low-cloud images, each row the scene's value at the pixel centre (nearest)."""
    from pixelbeam.testing.ee_emulator import EmulatorServer
    from pixelbeam.testing.ee_emulator.catalog import Catalog
    doc = yaml.safe_load(open(os.path.join(ROOT, "configs", "ee_point_table.yaml")))
    doc["regions"] = os.path.join(ROOT, "configs", "point_table_points.geojson")
    doc["output"]["path"] = str(tmp_path / "out")
    cfg = tmp_path / "ee_point_table.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    with EmulatorServer(Catalog.from_file(os.path.join(ROOT, "configs", "emulator_catalog.json"))) as server:
        assert main(["run", str(cfg), "--ee_emulator", server.url]) == 0
    rows = read_table(str(tmp_path / "out"))
    assert {(r["id"][:8], r["time"]) for r in rows} == {("20200105", time_ms("2020-01-05")),
                                                         ("20200125", time_ms("2020-01-25"))}
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32618", always_xy=True)
    with rasterio.open(LANDSAT) as ds:
        xy_ = [to_utm.transform(r["longitude"], r["latitude"]) for r in rows]
        expected = list(ds.sample(xy_))
    assert len(rows) > 1000 and sum(r["B4"] is not None for r in rows) > 1000
    for row, v in zip(rows, expected):
        assert (None if row["B4"] is None else (row["B4"], row["B3"], row["B2"])) == (
            None if (v == 0).any() else tuple(int(x) for x in v))


def test_retry_failed_refetches_the_refused_groups_through_the_emulator(tmp_path, capsys):
    from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
    files, profile = write_collection(tmp_path, 4)
    rng = np.random.default_rng(3)
    cells = [(int(i // 60), int(i % 60)) for i in rng.choice(60 * 50, size=200, replace=False)]
    points = write_points(tmp_path, profile, cells)
    times = [f"2020-02-{i + 1:02d}" for i in range(4)]
    with EmulatorServer(ee_catalog(files, times), EmulatorConfig()) as server:
        cfg = ee_table_config(tmp_path, server.url, profile, points, group_size=8)
        server.set_config(EmulatorConfig(fault_400=0.3, seed=5))  # after the plan: listing and probe answered
        assert main(["run", cfg]) == 1
        lost = json.load(open(tmp_path / "ee" / "table.json"))["failed_rows"]
        failed_groups = {json.loads(x)["group"] for x in open(tmp_path / "ee" / "failed.jsonl")}
        server.set_config(EmulatorConfig())
        before = server.stats()["answered_200"]
        assert main(["retry-failed", str(tmp_path / "ee"), "--ee_emulator", server.url]) == 0
        refetched = server.stats()["answered_200"] - before - 2  # minus the listing and the probe
    assert lost > 0 and refetched == len(failed_groups) > 0  # exactly the refused groups, once each
    assert open(tmp_path / "ee" / "failed.jsonl").read() == ""
    rows = read_table(str(tmp_path / "ee"))
    assert len(rows) == 200 * 4 and len({(r["point_id"], r["id"]) for r in rows}) == 800


def test_earth_engine_mask_none_gives_values_where_the_image_is_masked(tmp_path):
    """mask: none asks for no validity band: no nulls, and Earth Engine's 0 where masked."""
    from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
    files, profile = write_collection(tmp_path, 3)
    cells = [(1, 3), (30, 40)]  # (1, 3) is in image 1's and 2's nodata rows
    points = write_points(tmp_path, profile, cells)
    times = ["2020-03-01", "2020-03-02", "2020-03-03"]
    with EmulatorServer(ee_catalog(files, times), EmulatorConfig()) as server:
        cfg = ee_table_config(tmp_path, server.url, profile, points)
        doc = yaml.safe_load(open(cfg))
        doc["source"]["mask"] = "none"
        open(cfg, "w").write(yaml.safe_dump(doc))
        assert main(["run", cfg]) == 0
    rows = {(r["point_id"], r["id"]): r for r in read_table(str(tmp_path / "ee"))}
    assert len(rows) == 6 and all(r["B1"] is not None for r in rows.values())
    assert (rows[("p0", "img001")]["B1"], rows[("p0", "img002")]["B2"]) == (0, 0)
    expected = expected_rows(files, times, cells)
    assert (rows[("p1", "img002")]["B1"], rows[("p1", "img002")]["B3"]) == (expected[("p1", "img002")][1][0],
                                                                          expected[("p1", "img002")][1][2])


def test_a_point_id_with_commas_and_quotes_survives_csv_and_one_with_a_newline_is_refused(tmp_path, capsys):
    """CSV quoting round-trips an id with a comma, quotes and non-ASCII; ids with control
    characters (a newline, NUL) are refused before anything is written (issue 15 item 11)."""
    files, profile = write_collection(tmp_path, 2)
    points = write_points(tmp_path, profile, [(1, 3), (30, 40)])
    doc = json.load(open(points))
    name = 'comma, "quoted"; caf\u00e9'
    doc["features"][0]["properties"]["name"] = name
    open(points, "w").write(json.dumps(doc))
    cfg, _ = write_config(tmp_path, files, points, formats=["csv"])
    assert main(["run", cfg]) == 0  # the row count read back from the CSV matches the plan
    rows = read_table(str(tmp_path / "out"), "csv")
    assert [r["point_id"] for r in rows].count(name) == 2 and len(rows) == 4
    doc["features"][0]["properties"]["name"] = "line\nbreak"
    open(points, "w").write(json.dumps(doc))
    capsys.readouterr()
    assert main(["run", cfg, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the region id holds a control character ('\\n')" in err, err
