"""Vector files in any OGR format (and GeoParquet) and any CRS, for regions and vector label
layers, read with pyogrio (GDAL's OGR) and pyarrow, checked against the GeoJSON they were made from."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyproj
import pytest
import shapely
from pyogrio.raw import write as write_vector

from pixelbeam.pipeline.config import parse_config
from pixelbeam.pipeline.plan import prepare_job
from pixelbeam.transforms.formats.vector_files import VectorFileError, read_vector, to_crs
from pixelbeam.transforms.planning.regions import RegionError, load_regions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")
LABELS = os.path.join(ROOT, "configs", "segmentation_labels.geojson")


def geojson_features(path=REGIONS):
    doc = json.load(open(path))
    return [(f.get("id", f["properties"].get("name")), f["properties"], shapely.geometry.shape(f["geometry"]))
            for f in doc["features"]]


def write(path, features, crs, driver=None, polygons_only=False):
    """`features` [(id, properties, lon/lat geometry)] written in `crs` (reprojected) as `path`."""
    feats = [f for f in features if not polygons_only or f[2].geom_type in ("Polygon", "MultiPolygon")]
    geoms = np.array([g for _, _, g in feats], dtype=object)
    geoms = to_crs(geoms, "EPSG:4326", crs) if crs != "EPSG:4326" else geoms
    ids = np.array([i for i, _, _ in feats], dtype=object)
    names = np.array([p.get("name", "") for _, p, _ in feats], dtype=object)
    if str(path).endswith(".parquet"):
        geo = {"version": "1.0.0", "primary_column": "geometry",
               "columns": {"geometry": {"encoding": "WKB", "geometry_types": [],
                                        "crs": pyproj.CRS.from_user_input(crs).to_json_dict()}}}
        table = pa.table({"id": ids.tolist(), "name": names.tolist(),
                          "geometry": [shapely.to_wkb(g) for g in geoms]})
        pq.write_table(table.replace_schema_metadata({b"geo": json.dumps(geo).encode()}), path)
        return str(path)
    write_vector(str(path), np.array([shapely.to_wkb(g) for g in geoms], dtype=object), [ids, names],
                 fields=["id", "name"], geometry_type="Unknown" if not polygons_only else "MultiPolygon",
                 crs=crs, driver=driver,
                 **({"promote_to_multi": True} if polygons_only else {}))
    return str(path)


FORMATS = [("regions.gpkg", "GPKG", False), ("regions.fgb", "FlatGeobuf", False),
           ("regions.shp", "ESRI Shapefile", True), ("regions.parquet", None, False)]


@pytest.mark.parametrize("name, driver, polygons_only", FORMATS, ids=[f[0] for f in FORMATS])
def test_regions_from_any_format_in_lonlat_equal_the_geojson(tmp_path, name, driver, polygons_only):
    reference = {r.region_id: r for r in load_regions(REGIONS)}
    path = write(tmp_path / name, geojson_features(), "EPSG:4326", driver, polygons_only)
    regions = load_regions(path)
    assert regions and all(r.region_id in reference for r in regions)
    for region in regions:
        expected = reference[region.region_id].geometry
        assert shapely.equals_exact(shapely.normalize(shapely.force_2d(region.geometry)),
                                    shapely.normalize(expected), tolerance=1e-12) or \
            region.geometry.symmetric_difference(expected).area < 1e-12
        assert region.properties["name"] == reference[region.region_id].properties["name"]


@pytest.mark.parametrize("name, driver, polygons_only", FORMATS, ids=[f[0] for f in FORMATS])
def test_regions_in_a_projected_crs_are_reprojected_to_lonlat(tmp_path, name, driver, polygons_only):
    reference = {r.region_id: r for r in load_regions(REGIONS)}
    path = write(tmp_path / name, geojson_features(), "EPSG:32618", driver, polygons_only)
    for region in load_regions(path):
        # straight UTM edges vs straight lon/lat edges: well under one 300 m pixel (0.003 degrees)
        assert region.geometry.hausdorff_distance(reference[region.region_id].geometry) < 3e-4


def test_a_job_plans_the_same_patches_from_a_geopackage(tmp_path):
    def planned(regions):
        config = parse_config({"source": {"uri": LANDSAT}, "regions": regions,
                               "grid": {"crs": "native", "scale": "native", "patch_size": 64},
                               "output": {"path": str(tmp_path / "out")}})
        return sorted(s.patch_id for s in prepare_job(config).specs)
    gpkg = write(tmp_path / "regions.gpkg", geojson_features(), "EPSG:4326", "GPKG")
    assert planned(gpkg) == planned(REGIONS) and len(planned(REGIONS)) == 43


def test_a_geojson_with_a_legacy_crs_member_is_reprojected(tmp_path):
    doc = json.load(open(REGIONS))
    transformer = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32618", always_xy=True)
    for feature in doc["features"]:
        geom = shapely.transform(shapely.geometry.shape(feature["geometry"]),
                                 lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
        feature["geometry"] = shapely.geometry.mapping(geom)
    doc["crs"] = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32618"}}
    path = tmp_path / "utm.geojson"
    path.write_text(json.dumps(doc))
    reference = {r.region_id: r for r in load_regions(REGIONS)}
    regions = load_regions(str(path))
    assert [r.region_id for r in regions] == list(reference)
    for region in regions:
        assert region.geometry.hausdorff_distance(reference[region.region_id].geometry) < 3e-4


def test_unreadable_vector_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "regions.gpkg"
    bad.write_text("not a geopackage")
    with pytest.raises(RegionError, match=r"^regions: .* is not a vector file OGR can read"):
        load_regions(str(bad))
    parquet = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1]}), parquet)
    with pytest.raises(RegionError, match="has no GeoParquet 'geo' metadata"):
        load_regions(str(parquet))
    with pytest.raises(VectorFileError, match="give an existing layer name"):
        read_vector(write(tmp_path / "r.gpkg", geojson_features(), "EPSG:4326", "GPKG"), layer="nope")


def test_a_label_layer_in_lonlat_burns_as_the_same_labels_in_utm(tmp_path):
    """The hand-drawn labels (lon/lat GeoJSON) and the same polygons in a UTM GeoPackage burn
    (nearly) the same pixels on the scene's grid: the vector layer reprojects to the patch CRS."""
    from pixelbeam.pipeline.layers import make_source
    from pixelbeam.pipeline.config import MaskConfig
    from pixelbeam.transforms.fetching.sizing import RequestPart
    from pixelbeam.transforms.planning.grid import GridSpec, make_spec
    feats = [(f["properties"]["class"], f["properties"], shapely.geometry.shape(f["geometry"]))
             for f in json.load(open(LABELS))["features"]]
    utm = tmp_path / "labels.gpkg"
    geoms = to_crs(np.array([g for *_, g in feats], dtype=object), "EPSG:4326", "EPSG:32618")
    write_vector(str(utm), np.array([shapely.to_wkb(g) for g in geoms], dtype=object),
                 [np.array([c for c, *_ in feats], dtype=object)], fields=["class"], geometry_type="Polygon",
                 crs="EPSG:32618", driver="GPKG")
    burnt = []
    for path in (LABELS, str(utm)):
        config = parse_config({"layers": {"image": {"uri": LANDSAT, "role": "input"}, "labels": {
            "kind": "vector", "role": "target", "path": path, "property": "class",
            "classes": {"water": 1, "land": 2, "cloud": 3}}}, "regions": LABELS, "output": {"path": "/tmp/x"}})
        source = make_source(config.layers[1], MaskConfig(), 10.0)
        reader = source.open()
        grid = GridSpec("EPSG:32618", (300.0379266750948, 300.041782729805), origin=(101985.0, 2826915.0),
                        patch_size=(791, 718))
        spec = make_spec(grid, "EPSG:32618", 0, 0, "all")
        burnt.append(reader.fetch(spec, RequestPart(bands=(0,), col_off=0, row_off=0, width=791, height=718)).data[0])
    assert set(np.unique(burnt[0])) == {0, 1, 2, 3}
    assert (burnt[0] == burnt[1]).mean() > 0.999
