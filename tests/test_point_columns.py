"""Point regions held as columns (transforms/planning/point_set.py PointRegions) plan exactly the
patches the same points give as a list of Region objects (the launcher's former in-memory form):
GeoJSON, GeoJSON sequence, GeoParquet and CSV; plain, `centered_on_points`, `per_region`,
`per_class`, splits, and regions outside the source skipped."""

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
import yaml

from pixelbeam.pipeline import plan as plan_module
from pixelbeam.pipeline.config import load_config
from pixelbeam.pipeline.plan import prepare_job
from pixelbeam.transforms.planning.point_set import PointRegions
from pixelbeam.transforms.planning.regions import Region, load_regions
from tests.test_point_regions import LANDSAT, SCENE

N = 2000


def points(seed=0, n=N, outside=0):
    """(id, lon, lat, cls, n) rows over the scene, some sharing a patch; `outside` of them far off."""
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(SCENE[0], SCENE[2], n).round(6), rng.uniform(SCENE[1], SCENE[3], n).round(6)
    twins = np.arange(0, n - 1, 5)
    lon[twins], lat[twins] = lon[twins + 1], lat[twins + 1]  # two points in one patch: the owner rule matters
    lon[:outside] = 10.0
    return [(f"p{rng.integers(10**6)}-{i}", float(x), float(y), f"c{i % 3}", i) for i, (x, y) in enumerate(zip(lon, lat))]


def write(tmp_path, kind, rows):
    feats = [{"type": "Feature", "id": rid, "properties": {"cls": cls, "n": n, "x": n / 7},
              "geometry": {"type": "Point", "coordinates": [x, y]}} for rid, x, y, cls, n in rows]
    if kind == "geojson":
        path = tmp_path / "pts.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    elif kind == "geojsonseq":
        path = tmp_path / "pts.geojsonl"
        path.write_text("".join(json.dumps(f) + "\n" for f in feats))
    elif kind == "parquet":
        path = tmp_path / "pts.parquet"
        geo = {"version": "1.0.0", "primary_column": "geometry",
               "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Point"]}}}
        table = pa.table({"id": [r[0] for r in rows], "cls": [r[3] for r in rows], "n": [r[4] for r in rows],
                          "x": [r[4] / 7 for r in rows],
                          "geometry": [shapely.to_wkb(shapely.Point(r[1], r[2])) for r in rows]})
        pq.write_table(table.replace_schema_metadata({b"geo": json.dumps(geo).encode()}), path)
    else:
        path = tmp_path / "pts.csv"
        with open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["id", "lon", "lat", "cls", "n", "x"])
            out.writerows([(rid, repr(x), repr(y), cls, n, repr(n / 7)) for rid, x, y, cls, n in rows])
    return str(path)


def config(tmp_path, regions, split=None, **sample):
    doc = {"source": {"uri": LANDSAT}, "regions": regions,
           "grid": {"crs": "native", "scale": "native", "patch_size": 24, "overlap": 8},
           "output": {"path": str(tmp_path / "out")}, "sample": sample}
    if split:
        doc["split"] = split
    if sample.pop("skip", False):
        doc["regions_outside"] = "skip"
        doc["sample"] = sample
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(str(path))


def plan(cfg):
    job = prepare_job(cfg)
    return (job.planned, job.split_counts, [(s.patch_id, s.region_id, s.label, s.split, s.transform, s.width,
                                            s.height, s.crs) for s in job.specs],
            [(s.region_id, s.reason) for s in job.skipped_regions or ()], job.label_dtype), job


SAMPLES = [{}, {"centered_on_points": True}, {"per_region": 1, "seed": 3},
           {"per_class": 30, "label_property": "cls", "seed": 5},
           {"centered_on_points": True, "label_property": "cls", "per_region": 1, "skip": True},
           {"label_property": "n", "per_class": 2, "seed": 2}, {"label_property": "x"}]


@pytest.mark.parametrize("kind", ["geojson", "geojsonseq", "parquet", "csv"])
@pytest.mark.parametrize("sample", SAMPLES, ids=["plain", "centered", "per_region", "per_class", "skip", "int_label",
                                                 "float_label"])
def test_columns_plan_exactly_the_patches_of_region_objects(tmp_path, monkeypatch, kind, sample):
    rows = points(seed=len(kind), outside=7 if sample.get("skip") else 0)
    cfg = config(tmp_path, write(tmp_path, kind, rows),
                 split={"train": 0.6, "val": 0.4, "block": 2, "seed": 1} if "per_region" in sample else None, **sample)
    columns, job = plan(cfg)
    assert isinstance(job.regions, PointRegions)
    if "label_property" in sample and kind != "geojsonseq":  # the labels of the regions owning a patch only
        assert 0 < len(job.sample.labels) < len(job.regions)
    loader = plan_module.load_regions
    monkeypatch.setattr(plan_module, "load_regions", lambda *a, **k: list(loader(*a, **k)))
    objects, job = plan(cfg)
    assert isinstance(job.regions, list) and not isinstance(job.regions[0], PointRegions)
    assert columns == objects and columns[0] > 0
    if sample.get("skip"):
        assert len(columns[3]) == 7


def test_columns_give_the_regions_properties_as_they_were(tmp_path):
    """Keys that differ between points, mixed kinds, nested values, big ints: as decoded."""
    feats = [{"type": "Feature", "id": i, "properties": {"a": i, "b": 0.5 * i, "s": f"x{i}", "t": i % 2 == 0}}
             for i in range(200)]
    feats[150]["properties"] = {"b": 1, "a": None, "deep": [1, {"k": "v"}], "big": 2**70}
    feats[10]["properties"]["b"] = 3  # an int among floats
    for i, f in enumerate(feats):
        f["geometry"] = {"type": "Point", "coordinates": [-77.0 + i * 1e-3, 24.0]}
    path = tmp_path / "mixed.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    regions = load_regions(str(path))
    assert isinstance(regions, PointRegions) and regions.rows is not None  # one dict per point: the keys differ
    assert [(r.region_id, r.properties) for r in regions] == [(str(f["id"]), f["properties"]) for f in feats]
    assert all(type(r.properties["b"]) is type(f["properties"]["b"]) for r, f in zip(regions, feats))
    uniform = [dict(f, properties={"a": i, "b": 0.5 * i if i != 10 else 3, "s": f"x{i}", "deep": [i]})
               for i, f in enumerate(feats)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": uniform}))
    regions = load_regions(str(path))
    assert regions.rows is None and [k for k, _ in regions.columns] == ["a", "b", "s", "deep"]
    assert [r.properties for r in regions] == [f["properties"] for f in uniform]
    assert type(regions[10].properties["b"]) is int and type(regions[11].properties["b"]) is float
    assert regions[5] == Region("5", shapely.Point(-77.0 + 5e-3, 24.0)) and regions[-1].region_id == "199"
    assert list(regions[10:13]) == list(regions)[10:13]


def test_a_resumed_run_finds_the_same_plan_digest_for_columns(tmp_path, monkeypatch):
    """pipeline/resume.py plan_digest of point regions as columns is the digest of the Regions."""
    from pixelbeam.pipeline.resume import plan_digest
    from pixelbeam.transforms.planning import point_set
    monkeypatch.setattr(point_set, "ITER_CHUNK", 7)  # Strings built and taken across many chunks
    cfg = config(tmp_path, write(tmp_path, "geojson", points(n=300)))
    job = prepare_job(cfg)
    assert isinstance(job.regions, PointRegions)
    columns = plan_digest(job)
    job.regions = list(job.regions)
    assert plan_digest(job) == columns


def test_strings_across_chunks(monkeypatch):
    from pixelbeam.transforms.planning import point_set
    monkeypatch.setattr(point_set, "ITER_CHUNK", 3)
    values = ["b", "", "ä€x", "a", "zz", "é" * 9, "a0", "", "q"]
    strings = point_set.Strings.concat([point_set.Strings.of(values[:4]), point_set.Strings.of(values[4:])])
    assert [strings[i] for i in range(len(values))] == values == strings.slice(0, len(values))
    index = np.array([8, 2, 0, 5, 5, 1])
    assert strings.take(index).slice(0, index.size) == [values[i] for i in index]
    assert [b.decode() for b in strings.fixed()] == values
    assert np.argsort(strings.fixed(), kind="stable").tolist() == sorted(range(len(values)), key=values.__getitem__)
    assert not point_set.ids_unique_and_printable(strings)  # "" twice
    assert point_set.ids_unique_and_printable(point_set.Strings.of(["a", "b", "ab"]))
    assert not point_set.ids_unique_and_printable(point_set.Strings.of(["a", "b\tc"]))


@pytest.mark.parametrize("grid, split", [({"crs": "EPSG:32618", "scale": 250, "patch_size": 16}, {"by": "cls"}),
                                         ({"crs": "EPSG:4326", "scale": 0.002, "patch_size": 16, "overlap": 4},
                                          {"train": 0.5, "val": 0.5, "block": 3})],
                         ids=["projected_split_by_property", "geographic_block_split"])
def test_columns_on_other_grids_and_splits(tmp_path, monkeypatch, grid, split):
    """A projected grid other than the source's with a split by property (the points visited one by
    one for it), and a geographic grid. (`crs: utm` also visits them one by one, for their zone.)"""
    path = write(tmp_path, "geojson", points(seed=9, n=600))
    body = {"source": {"uri": LANDSAT}, "regions": path, "grid": grid, "split": split,
            "output": {"path": str(tmp_path / "out")}, "sample": {"per_region": 1, "label_property": "n", "seed": 4}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(body))
    cfg = load_config(str(tmp_path / "g.yaml"))
    columns, job = plan(cfg)
    assert isinstance(job.regions, PointRegions) and columns[0] > 0
    loader = plan_module.load_regions
    monkeypatch.setattr(plan_module, "load_regions", lambda *a, **k: list(loader(*a, **k)))
    assert plan(cfg)[0] == columns
