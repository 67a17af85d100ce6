"""Regions across the antimeridian, and the guard that no patch is written flipped or mirrored.

Issue 15.1: a MultiPolygon cut at +-180 (RFC 7946) got the UTM zone of its parts' average,
179 degrees away (patches upside down, written as valid); a polygon drawn 170 -> -170 on a
native EPSG:4326 raster planned patches at lon 180..192, off the raster.
"""

import json
import os

import numpy as np
import pyproj
import pytest
import rasterio
import yaml
from hypothesis import example, given, settings, strategies as st
from rasterio.transform import from_origin

from pixelbeam.pipeline.cli import main
from pixelbeam.transforms.planning.cells import count_by_split, plan_by_cells, plan_cells, project_regions
from pixelbeam.transforms.planning.grid import GridSpec, region_crs
from pixelbeam.transforms.planning.orientation import NotNorthUp, north_up
from pixelbeam.transforms.planning.regions import regions_from_geojson


def box_ring(west, south, east, north):
    return [[west, south], [east, south], [east, north], [west, north], [west, south]]


def split_at_antimeridian(west, south, east, north):
    """An RFC 7946 MultiPolygon of a box from `west` (> 0) across 180 to `east` (< 0)."""
    return {"type": "MultiPolygon", "coordinates": [[box_ring(west, south, 180, north)],
                                                    [box_ring(-180, south, east, north)]]}


def feature(geometry, rid="r"):
    return {"type": "FeatureCollection", "features": [{"type": "Feature", "id": rid, "properties": {},
                                                       "geometry": geometry}]}


def global_raster(path, west=-180.0, step=0.5, north=90.0, south=-90.0):
    """An EPSG:4326 raster all around the Earth (between latitudes `south` and `north`) whose
    band 1 holds each pixel's centre latitude and band 2 its longitude (degrees), so that a
    patch's orientation can be read off its pixels."""
    width, height = round(360 / step), round((north - south) / step)
    lon = west + (np.arange(width) + 0.5) * step
    lat = north - (np.arange(height) + 0.5) * step
    data = np.stack([np.repeat(lat[:, None], width, 1), np.repeat(lon[None, :], height, 0)]).astype("float32")
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=2, dtype="float32",
                       crs="EPSG:4326", transform=from_origin(west, north, step, step)) as ds:
        ds.write(data)
    return str(path)


def write_job(tmp_path, raster, regions_doc, grid, name="job"):
    regions = tmp_path / f"{name}.geojson"
    regions.write_text(json.dumps(regions_doc))
    cfg = {"source": {"uri": raster, "bands": [1, 2]}, "regions": str(regions), "grid": grid,
           "output": {"path": str(tmp_path / f"out-{name}"), "formats": ["npy"]}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path), tmp_path / f"out-{name}"


def test_a_multipolygon_cut_at_180_gets_the_zone_where_it_lies():
    region, = regions_from_geojson(feature(split_at_antimeridian(178, -20, -178, -18)))
    crs = region_crs(GridSpec("utm", (100.0, 100.0)), region)
    assert crs in ("EPSG:32760", "EPSG:32701"), crs  # zone 60S or 1S, not 30S (EPSG:32730)
    assert region.geometry.geom_type == "Polygon"  # the two halves joined across 180
    assert region.geometry.bounds == (178.0, -20.0, 182.0, -18.0)


def test_a_multipoint_cut_at_180_gets_the_zone_where_it_lies():
    region, = regions_from_geojson(feature({"type": "MultiPoint", "coordinates": [[179.5, 40.0], [-179.5, 40.5]]}))
    assert region_crs(GridSpec("utm", (100.0, 100.0)), region) in ("EPSG:32660", "EPSG:32601")


def test_only_parts_wholly_west_of_0_move():
    region, = regions_from_geojson(feature({"type": "MultiPoint", "coordinates": [[-170, 0], [0, 0], [170, 0]]}))
    assert sorted(p.x for p in region.geometry.geoms) == [0.0, 170.0, 190.0]


def test_parts_far_apart_on_one_side_stay_where_they_are():
    two = {"type": "MultiPolygon", "coordinates": [[box_ring(-10, 0, -9, 1)], [box_ring(9, 0, 10, 1)]]}
    region, = regions_from_geojson(feature(two))
    assert region.geometry.bounds == (-10.0, 0.0, 10.0, 1.0)


def test_utm_patches_of_a_cut_multipolygon_are_north_up_pixels(tmp_path):
    """Read back: in every written patch latitude falls down the rows and longitude grows
    along the columns (across 180 too); before the fix the patches were upside down."""
    raster = global_raster(tmp_path / "global.tif", step=0.1, north=-10.0, south=-30.0)
    job, out = write_job(tmp_path, raster, feature(split_at_antimeridian(179.0, -20.0, -179.0, -19.0)),
                         {"crs": "utm", "scale": 5000, "patch_size": 8})
    assert main(["run", job]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert rows and {r["crs"] for r in rows} <= {"EPSG:32760", "EPSG:32701"}
    for row in rows:  # pixels of 5 km from pixels of 0.1 degree (about 11 km): steps, never back
        lat, lon = np.load(out / "npy" / f"{row['patch_id']}.npy").astype(float)
        down, right = np.diff(lat, axis=0), (np.diff(lon, axis=1) + 180) % 360 - 180
        assert (down <= 0).all() and lat[0].mean() > lat[-1].mean(), row["patch_id"]
        assert (right >= 0).all() and right.sum(axis=1).min() > 0, row["patch_id"]


def test_a_polygon_drawn_across_180_plans_both_edges_of_a_geographic_raster(tmp_path):
    raster = global_raster(tmp_path / "global.tif", step=1.0)
    drawn = {"type": "Polygon", "coordinates": [[[170, -20], [-170, -20], [-170, -10], [170, -10], [170, -20]]]}
    job, out = write_job(tmp_path, raster, feature(drawn), {"crs": "native", "scale": "native", "patch_size": 4})
    assert main(["run", job]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    lefts = sorted({r["transform"][2] for r in rows})
    assert lefts == [-180.0, -176.0, -172.0, 168.0, 172.0, 176.0]  # not 180..192, off the raster
    for row in rows:  # each patch holds the raster's own pixels there
        lat, lon = np.load(out / "npy" / f"{row['patch_id']}.npy").astype(float)
        assert lon[0, 0] == row["transform"][2] + 0.5 and row["valid_fraction"] == 1.0


def test_a_raster_stored_0_to_360_gets_western_regions_at_their_longitude(tmp_path):
    raster = global_raster(tmp_path / "global360.tif", west=0.0, step=1.0)
    west = feature({"type": "Polygon", "coordinates": [box_ring(-100, -20, -92, -12)]})
    job, out = write_job(tmp_path, raster, west, {"crs": "native", "scale": "native", "patch_size": 4})
    assert main(["run", job]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted({r["transform"][2] for r in rows}) == [260.0, 264.0]
    assert all(r["valid_fraction"] == 1.0 for r in rows)


def test_a_crs_far_from_the_region_is_refused_naming_it(tmp_path, capsys):
    raster = global_raster(tmp_path / "global.tif", step=1.0)
    regions = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": name, "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
        for name, ring in (("fiji", box_ring(178, -19, 179, -18)), ("samoa", box_ring(-172, -14, -171, -13)))]}
    job, out = write_job(tmp_path, raster, regions, {"crs": "EPSG:32730", "scale": 5000, "patch_size": 8})
    assert main(["run", job]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "grid.crs: EPSG:32730 would write the patches of regions 'fiji', 'samoa' " \
                                    "upside down" in err, err
    assert not out.exists()


def test_a_polar_crs_may_put_north_down_inside_its_own_area():
    """Polar stereographic turns patches on the far side of the pole by design: not refused."""
    region, = regions_from_geojson(feature({"type": "Polygon", "coordinates": [box_ring(170, -80, 179, -75)]}))
    grid = GridSpec("EPSG:3031", (5000.0, 5000.0), patch_size=(16, 16))
    specs = plan_by_cells([region], grid)
    assert specs and all(patch_north_vector(s)[0] < 0 for s in specs)  # north at the bottom: the far side
    cells = plan_cells([region], grid)
    assert sum(count_by_split(cells, project_regions([region], grid), grid)[0].values()) == len(specs)


def test_a_band_all_around_the_earth_is_not_taken_for_a_crossing():
    region, = regions_from_geojson(feature({"type": "Polygon", "coordinates": [box_ring(-180, -89, 180, -85)]}))
    assert region.geometry.bounds == (-180.0, -89.0, 180.0, -85.0)


def patch_north_vector(spec):
    """(north, east) at the patch's centre, by an independent route: lon/lat of the centre
    pixel and the pixel above and to the right of it (degrees)."""
    a, _, c, _, e, f = spec.transform
    cx, cy = c + a * spec.width / 2, f + e * spec.height / 2
    t = pyproj.Transformer.from_crs(spec.crs, "EPSG:4326", always_xy=True)
    lon, lat = t.transform([cx, cx, cx + a], [cy, cy - e, cy])
    return lat[1] - lat[0], (lon[2] - lon[0] + 180) % 360 - 180


@settings(max_examples=60, deadline=None, derandomize=True)
@given(lon=st.floats(-180, 179.9), lat=st.floats(-79.0, 83.0), width=st.floats(0.05, 3.0),
       scale=st.sampled_from([2000.0, 10000.0]))
@example(lon=179.0, lat=-19.0, width=2.0, scale=2000.0)  # the trial's region: 178E to 178W, south
@example(lon=-180.0, lat=0.0, width=0.5, scale=2000.0)  # on the antimeridian at the equator
@example(lon=177.5, lat=70.0, width=3.0, scale=10000.0)  # cut at 180, far north
@example(lon=0.0, lat=-1.0, width=1.0, scale=2000.0)  # found: the far zone folded the region (GEOSException)
def test_utm_plans_every_zone_and_hemisphere_north_up(lon, lat, width, scale):
    """Over zones and hemispheres, boxes given as RFC 7946 cuts them: the zone lies where the
    region is (its central meridian within 3 degrees plus the box's width), the hemisphere is
    the region's, every planned patch is north up, and a zone on the other side of the Earth is
    refused by the guard."""
    west, east = lon, lon + width
    geometry = (split_at_antimeridian(west, lat, east - 360, lat + 1) if east > 180
                else {"type": "Polygon", "coordinates": [box_ring(west, lat, east, lat + 1)]})
    region, = regions_from_geojson(feature(geometry))
    grid = GridSpec("utm", (scale, scale), patch_size=(8, 8))
    crs = region_crs(grid, region)
    code = pyproj.CRS(crs).to_epsg()
    zone = code % 100
    assert code // 100 == (326 if lat + 0.5 >= 0 else 327)
    centre = (lon + width / 2 + 180) % 360 - 180
    meridian = -183 + 6 * zone
    assert abs((centre - meridian + 180) % 360 - 180) <= 3 + width
    specs = plan_by_cells([region], grid)
    assert specs
    for spec in specs:
        north, east_step = patch_north_vector(spec)
        assert north > 0 and east_step > 0, spec.patch_id
    rows = np.array([s.row for s in specs])
    cols = np.array([s.col for s in specs])
    assert north_up(grid, crs, rows, cols).all()
    opposite = f"EPSG:{code // 100 * 100 + (zone + 29) % 60 + 1}"  # 30 zones (180 degrees) away
    far = GridSpec(opposite, (scale, scale), patch_size=(8, 8))
    with pytest.raises(NotNorthUp):
        count_by_split(plan_cells([region], far), project_regions([region], far), far)
