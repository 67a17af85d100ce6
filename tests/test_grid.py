"""Grid math and patch planning: worked examples and hypothesis properties."""

import numpy as np
import pytest
import shapely
from hypothesis import given, settings, strategies as st
from shapely.geometry import MultiPoint, Point, box

from pixelbeam.transforms.planning.grid import (GridSpec, patch_boxes, patch_id, patch_transform, plan_patches, project_lonlat,
                             region_cells, utm_crs_for)
from pixelbeam.transforms.planning.cells import plan_by_cells
from pixelbeam.transforms.planning.regions import Region


def test_patch_transform_and_bounds_by_hand():
    grid = GridSpec("EPSG:32618", (10.0, 10.0), origin=(0.0, 0.0), patch_size=(4, 4), overlap=1)
    # stride 3 px = 30 m; region [35, 65] x [-65, -35] m -> cols/rows 1..2 (patches start at 30, 60)
    rows, cols, cov = region_cells(grid, box(35, -65, 65, -35))
    cells = sorted(zip(rows.tolist(), cols.tolist()))
    # patch col c spans [30c, 30c + 40]: c=0 [0,40] overlaps x>35, c=1 [30,70], c=2 [60,100]
    assert cells == [(r, c) for r in (0, 1, 2) for c in (0, 1, 2)]
    assert patch_transform(grid, 1, 2) == (10.0, 0.0, 60.0, 0.0, -10.0, -30.0)


def test_min_coverage_keeps_only_covered_patches():
    grid = GridSpec("EPSG:32618", (1.0, 1.0), patch_size=(10, 10), min_coverage=0.5)
    rows, cols, cov = region_cells(grid, box(0, -10, 15, 0))  # patch 0 fully, patch 1 half
    assert sorted(zip(cols.tolist(), cov.round(6).tolist())) == [(0, 1.0), (1, 0.5)]
    grid = GridSpec("EPSG:32618", (1.0, 1.0), patch_size=(10, 10), min_coverage=0.51)
    assert region_cells(grid, box(0, -10, 15, 0))[1].tolist() == [0]


def test_touching_only_is_not_kept():
    grid = GridSpec("EPSG:32618", (1.0, 1.0), patch_size=(10, 10))
    rows, cols, _ = region_cells(grid, box(0, -10, 10, 0))
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0)]


def test_point_gets_the_patch_of_its_stride_cell():
    grid = GridSpec("EPSG:32618", (1.0, 1.0), patch_size=(10, 10), overlap=2)
    rows, cols, _ = region_cells(grid, MultiPoint([(7.5, -0.5), (8.5, -17.0)]))
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0), (2, 1)]
    box0 = patch_boxes(grid, rows, cols)
    assert shapely.contains(box0, shapely.points([(7.5, -0.5), (8.5, -17.0)])).all()


def test_overlapping_regions_plan_a_patch_once_for_the_smallest_id():
    grid = GridSpec("EPSG:32618", (300.0, 300.0), patch_size=(16, 16))
    a = Region("b-second", box(-78.0, 24.0, -77.8, 24.2))
    b = Region("a-first", box(-77.9, 24.1, -77.7, 24.3))
    specs = plan_patches([a, b], grid)
    ids = [s.patch_id for s in specs]
    assert len(ids) == len(set(ids))
    both = {s.patch_id for s in plan_patches([a], grid)} & {s.patch_id for s in plan_patches([b], grid)}
    assert both and all(s.region_id == "a-first" for s in specs if s.patch_id in both)


def test_utm_zone_arithmetic_agrees_with_projs_database():
    """The arithmetic zone equals PROJ's first zone by area of use, inside zones, beside their
    edges (either side of the margin), at the equator, UTM's latitude limits, the antimeridian and
    EPSG:32629's wider area (-12.01°W, 84.01°N); points PROJ has no zone for raise."""
    from pixelbeam.transforms.planning.grid import UTM_EDGE_MARGIN_DEG, _utm_crs_from_database
    ask_proj = _utm_crs_from_database.__wrapped__
    m = UTM_EDGE_MARGIN_DEG
    lons = [-180.0, -179.9, -12.005, -12.0, -11.99, -9.0, 0.0, 3.0, 6.0 - m + 0.001, 6.0 + m + 0.001,
            17.9, 179.99, 180.0] + [-180.0 + 6.0 * z + d for z in (7, 30, 59) for d in (-m - 0.01, -m + 0.01, m + 0.01)]
    lats = [-80.0, -80.0 + m + 0.01, -33.0, -m - 0.01, -0.01, 0.0, 0.01, m + 0.01, 45.0, 83.99, 84.0, 84.005]
    checked = 0
    for lon in lons:
        for lat in lats:
            try:
                expected = ask_proj(lon, lat)
            except ValueError:
                with pytest.raises(ValueError):
                    utm_crs_for(lon, lat)
                continue
            assert utm_crs_for(lon, lat) == expected, (lon, lat)
            checked += 1
    assert checked > 200


def test_utm_picks_each_regions_zone():
    assert utm_crs_for(-77.5, 24.0) == "EPSG:32618"
    assert utm_crs_for(10.0, -33.0) == "EPSG:32732"
    grid = GridSpec("utm", (100.0, 100.0), patch_size=(8, 8))
    specs = plan_patches([Region("bahamas", box(-77.6, 24.0, -77.5, 24.1)),
                          Region("cape", box(18.4, -34.0, 18.5, -33.9))], grid)
    assert {s.crs for s in specs} == {"EPSG:32618", "EPSG:32734"}
    assert all(s.patch_id.startswith(("epsg32618_", "epsg32734_")) for s in specs)


def test_projection_is_pyproj():
    geom = project_lonlat(Point(-75.0, 0.0), "EPSG:32618")  # central meridian of zone 18
    assert geom.x == pytest.approx(500000.0) and geom.y == pytest.approx(0.0, abs=1e-6)


def test_patch_id_is_a_pure_function_of_grid_cell():
    assert patch_id("EPSG:32618", -3, 7) == "epsg32618_r-3_c7"
    assert patch_id("epsg:4326", 0, 0) == "epsg4326_r0_c0"


# ---- properties -------------------------------------------------------------------------

lon = st.floats(-78.5, -76.5)
lat = st.floats(23.6, 25.4)
size_deg = st.floats(0.005, 0.1)


@st.composite
def regions(draw):
    n = draw(st.integers(1, 4))
    out = []
    for i in range(n):
        x, y, w, h = draw(lon), draw(lat), draw(size_deg), draw(size_deg)
        geom = box(x, y, x + w, y + h)
        if draw(st.booleans()):  # a triangle: not axis-aligned
            geom = shapely.Polygon([(x, y), (x + w, y), (x, y + h)])
        out.append(Region(f"r{i}", geom))
    return out


@st.composite
def grids(draw):
    size = draw(st.integers(8, 64))
    overlap = draw(st.integers(0, size - 1))
    scale = draw(st.sampled_from([30.0, 100.0, 250.0, 300.0379]))
    origin = (draw(st.floats(-1e4, 1e4)), draw(st.floats(-1e4, 1e4)))
    return GridSpec("EPSG:32618", (scale, scale), origin=origin, patch_size=(size, size), overlap=overlap,
                    min_coverage=draw(st.sampled_from([0.0, 0.0, 0.3, 1.0])))


@settings(max_examples=60, deadline=None)
@given(regions(), grids(), st.randoms())
def test_plan_properties(regs, grid, rnd):
    specs = plan_patches(regs, grid)
    # workers expanding coarse cells plan exactly the same patches (ids, owners, transforms)
    assert plan_by_cells(regs, grid, size=rnd.choice([1, 3, 32])) == specs
    ids = [s.patch_id for s in specs]
    # ids unique, and stable under region order
    assert len(ids) == len(set(ids))
    shuffled = list(regs)
    rnd.shuffle(shuffled)
    assert plan_patches(shuffled, grid) == specs
    by_id = {r.region_id: project_lonlat(r.geometry, "EPSG:32618") for r in regs}
    boxes = patch_boxes(grid, np.array([s.row for s in specs], int), np.array([s.col for s in specs], int))
    for spec, b in zip(specs, boxes):
        # origin on the grid: a whole number of strides from the anchor
        sx, sy = grid.scale
        kx = (spec.transform[2] - grid.origin[0]) / (grid.stride[0] * sx)
        ky = (grid.origin[1] - spec.transform[5]) / (grid.stride[1] * sy)
        assert abs(kx - round(kx)) < 1e-6 and abs(ky - round(ky)) < 1e-6
        # every kept patch intersects its region with at least min_coverage of its area
        region = by_id[spec.region_id]
        inside = shapely.area(shapely.intersection(b, region)) / shapely.area(b)
        assert inside > 0 and inside >= grid.min_coverage - 1e-9
    if grid.min_coverage == 0.0:
        # the kept patches cover every region
        union = shapely.union_all(boxes) if len(boxes) else shapely.Polygon()
        for region in by_id.values():
            assert shapely.area(shapely.difference(region, union)) <= 1e-6 * shapely.area(region)


def test_planning_100k_patches_is_vectorised():
    grid = GridSpec("EPSG:32618", (10.0, 10.0), patch_size=(32, 32), min_coverage=0.2)
    region = Region("big", shapely.Point(-77.5, 24.5).buffer(0.6))
    specs = plan_patches([region], grid)
    assert len(specs) > 100_000


@pytest.mark.parametrize("crs, scale", [("EPSG:32618", 30.0), ("utm", 30.0), ("EPSG:4326", 0.0003), ("EPSG:3857", 40.0)])
def test_the_listing_extent_holds_every_pixel_a_plan_can_fetch(crs, scale):
    """An Earth Engine collection is listed inside lonlat_extent: every planned patch's fetched
    window (margins included), corners and edges, must lie inside it."""
    from pixelbeam.transforms.planning.grid import bounds_to_lonlat, lonlat_extent
    regions = [Region("a", box(-77.9, 24.3, -77.83, 24.36)), Region("b", Point(-77.5, 24.9))]
    grid = GridSpec(crs=crs, scale=(scale, scale), patch_size=(64, 48), overlap=8, margin=5)
    west, south, east, north = lonlat_extent(regions, grid)
    specs = plan_patches(regions, grid)
    assert len(specs) > 10
    for spec in specs:
        a, _, c, _, e, f = spec.fetch_transform
        bounds = (c, f + e * spec.fetch_height, c + a * spec.fetch_width, f)
        lon0, lat0, lon1, lat1 = bounds_to_lonlat(spec.crs, bounds)
        assert west <= lon0 and lon1 <= east and south <= lat0 and lat1 <= north, spec.patch_id
    assert east - west < 1.0 and north - south < 1.0  # and it is a box around the regions, not the world
