"""Many point regions are loaded and planned in bulk (transforms/planning/region_loading.py,
point_regions.py); the patches, owners, labels and splits are exactly those of the former
one-region-at-a-time path, for plain points, `centered_on_points`, `per_region` and `per_class`."""

import json
import os

import numpy as np
import pytest
import yaml

from pixelbeam.pipeline.config import load_config
from pixelbeam.pipeline.plan import prepare_job
from pixelbeam.transforms.planning import cells, region_loading
from pixelbeam.transforms.planning.point_regions import ProjectedPoints
from pixelbeam.transforms.planning.regions import RegionError, load_regions, regions_from_geojson, regions_from_vector_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
SCENE = (-78.9, 23.6, -76.6, 25.5)  # lon/lat inside the bundled scene


def point_file(tmp_path, n=3000, seed=0, name="points.geojson", duplicate_every=7):
    """Random points over the scene, some sharing a patch; ids out of lexicographic order."""
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(SCENE[0], SCENE[2], n), rng.uniform(SCENE[1], SCENE[3], n)
    twins = np.arange(0, n - 1, duplicate_every)
    lon[twins], lat[twins] = lon[twins + 1], lat[twins + 1]  # two points in one patch: the owner rule matters
    features = [{"type": "Feature", "id": f"p{rng.integers(10**6)}-{i}", "properties": {"cls": f"c{i % 4}", "n": i},
                 "geometry": {"type": "Point", "coordinates": [round(float(x), 6), round(float(y), 6)]}}
                for i, (x, y) in enumerate(zip(lon, lat))]
    path = tmp_path / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return str(path)


def config(tmp_path, regions, **sample):
    doc = {"source": {"uri": LANDSAT}, "regions": regions,
           "grid": {"crs": "native", "scale": "native", "patch_size": 24, "overlap": 8},
           "output": {"path": str(tmp_path / "out")}, "sample": sample}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(str(path))


def planned(cfg):
    job = prepare_job(cfg)
    return job.planned, [(s.patch_id, s.region_id, s.label, s.split) for s in job.specs]


@pytest.mark.parametrize("sample", [{}, {"centered_on_points": True}, {"per_region": 1, "seed": 3},
                                    {"per_class": 40, "label_property": "cls", "seed": 5},
                                    {"centered_on_points": True, "label_property": "cls"}])
def test_bulk_points_plan_exactly_the_former_patches(tmp_path, monkeypatch, sample):
    cfg = config(tmp_path, point_file(tmp_path), **sample)
    bulk = planned(cfg)
    job = prepare_job(cfg)
    assert isinstance(cells.project_regions(job.regions, job.grid)[job.grid.crs][-1], ProjectedPoints)  # in bulk
    with monkeypatch.context() as m:
        m.setattr(cells, "BULK_POINTS", False)
        m.setattr(region_loading, "MIN_BULK", 10**9)  # the feature-by-feature loader too
        former = planned(cfg)
    assert bulk == former and bulk[0] >= 160  # per_class: 40 of each of 4 classes


def test_bulk_points_with_splits_and_polygons_keep_the_smallest_owner(tmp_path, monkeypatch):
    doc = json.load(open(point_file(tmp_path)))
    doc["features"].append({"type": "Feature", "id": "p5", "properties": {"cls": "c0"},  # owns what it covers
                            "geometry": {"type": "Polygon", "coordinates": [[[-78, 24], [-77.5, 24], [-77.5, 24.5],
                                                                             [-78, 24.5], [-78, 24]]]}})
    path = tmp_path / "mixed.geojson"
    path.write_text(json.dumps(doc))
    cfg = config(tmp_path, str(path))
    cfg = cfg.model_copy(update={"split": type(cfg).model_fields["split"].annotation.__args__[0](
        train=0.7, val=0.3, block=2, seed=1)})
    bulk = planned(cfg)
    with monkeypatch.context() as m:
        m.setattr(cells, "BULK_POINTS", False)
        former = planned(cfg)
    assert bulk == former
    assert {owner for _, owner, _, _ in bulk[1]} & {"p5"}


def test_bulk_loading_gives_the_same_regions_and_refuses_the_same_input(tmp_path, monkeypatch):
    path = point_file(tmp_path, n=500)
    bulk = load_regions(path)
    assert region_loading.point_features_to_regions(json.load(open(path))["features"]) is not None  # in bulk
    with monkeypatch.context() as m:
        m.setattr(region_loading, "MIN_BULK", 10**9)
        former = load_regions(path)
    assert [(r.region_id, r.geometry.wkb, r.properties) for r in bulk] == \
        [(r.region_id, r.geometry.wkb, r.properties) for r in former]
    doc = json.load(open(path))
    doc["features"][123]["geometry"]["coordinates"] = [200.0, 24.0]
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps(doc))
    with pytest.raises(RegionError, match="feature 123 .*outside lon"):  # the former one-line message
        load_regions(str(bad))
    doc["features"][123]["geometry"]["coordinates"] = [-77.0, 24.0]
    doc["features"][124]["id"] = doc["features"][3]["id"]
    bad.write_text(json.dumps(doc))
    with pytest.raises(RegionError, match="feature 124: duplicate region id"):
        load_regions(str(bad))


def test_a_vector_file_of_points_loads_in_bulk_as_geojson_does(tmp_path):
    pyogrio = pytest.importorskip("pyogrio")
    path = point_file(tmp_path, n=300)
    gpkg = str(tmp_path / "points.gpkg")
    import shapely
    regions = load_regions(path)
    pyogrio.raw.write(gpkg, np.array([shapely.to_wkb(r.geometry) for r in regions], dtype=object),
                      field_data=[np.array([r.region_id for r in regions], dtype=object)], fields=["id"],
                      geometry_type="Point", crs="EPSG:4326", driver="GPKG")
    again = regions_from_vector_file(gpkg)
    assert [(r.region_id, r.geometry.wkb) for r in again] == [(r.region_id, r.geometry.wkb) for r in regions]


def test_streamed_geojson_falls_back_for_anything_it_does_not_read_plainly(tmp_path, monkeypatch):
    """A legacy crs member after the features, members in another order, malformed JSON: the
    whole-file path reads them (or refuses them with its own message), as before."""
    from pixelbeam.transforms.planning.region_loading import NotPlain, stream_features
    path = point_file(tmp_path, n=200)
    doc = json.load(open(path))
    monkeypatch.setattr(region_loading, "CHUNK", 1000)  # many reads, features split across them
    assert list(stream_features(path)) == doc["features"]
    features_first = tmp_path / "first.geojson"
    features_first.write_text(json.dumps({"features": doc["features"], "type": "FeatureCollection"}))
    assert list(stream_features(str(features_first))) == doc["features"]
    legacy = tmp_path / "legacy.geojson"
    legacy.write_text(json.dumps({"type": "FeatureCollection", "features": doc["features"],
                                  "crs": {"type": "name", "properties": {"name": "EPSG:3857"}}}))
    with pytest.raises(NotPlain):
        list(stream_features(str(legacy)))
    reprojected = load_regions(str(legacy))  # the whole-file path: coordinates in EPSG:3857 metres
    assert abs(reprojected[0].geometry.x) < 0.01
    broken = tmp_path / "broken.geojson"
    broken.write_text(json.dumps(doc)[:-500])
    with pytest.raises(RegionError, match="is not readable GeoJSON"):
        load_regions(str(broken))
    loaded = load_regions(path)
    assert [(r.region_id, r.geometry.wkb, r.properties) for r in loaded] == \
        [(r.region_id, r.geometry.wkb, r.properties) for r in regions_from_geojson(doc)]


def test_a_csv_of_lon_lat_points_plans_as_the_same_points_in_geojson_do(tmp_path):
    path = point_file(tmp_path, n=400)
    doc = json.load(open(path))
    rows = ["id,cls,n,longitude,latitude"] + [
        f"{f['id']},{f['properties']['cls']},{f['properties']['n']},{f['geometry']['coordinates'][0]!r},"
        f"{f['geometry']['coordinates'][1]!r}" for f in doc["features"]]
    csv_path = tmp_path / "points.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    from_csv, from_json = load_regions(str(csv_path)), load_regions(path)
    assert [(r.region_id, r.geometry.wkb, r.properties) for r in from_csv] == \
        [(r.region_id, r.geometry.wkb, {"id": r.region_id, **r.properties}) for r in from_json]
    sample = {"per_class": 20, "label_property": "cls", "seed": 2}
    assert planned(config(tmp_path, str(csv_path), **sample)) == planned(config(tmp_path, path, **sample))
    csv_path.write_text("id,lon,lat\na,-77.5,24.5\nb,east,24.5\n")
    with pytest.raises(RegionError, match="line 3: lon='east'"):
        load_regions(str(csv_path))
    csv_path.write_text("id,x_coord,lat\na,-77.5,24.5\n")
    with pytest.raises(RegionError, match="needs a header with a longitude column"):
        load_regions(str(csv_path))
