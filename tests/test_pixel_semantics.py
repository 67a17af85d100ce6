"""Masks, scaling and sampling on small arrays whose answers are worked out by hand (pure core)."""

import random

import numpy as np
import pytest
import shapely

from pixelbeam.transforms.planning.cells import count_patches, owned_patch_ids, plan_by_cells, plan_cells, project_regions
from pixelbeam.transforms.planning.grid import GridSpec, _point_cells
from pixelbeam.transforms.pixels.masking import PixelRules, apply_pixel_rules, check_fill_value
from pixelbeam.transforms.patch import Patch, PatchSpec
from pixelbeam.transforms.planning.regions import Region
from pixelbeam.transforms.planning.sampling import Sample, SampleError, label_dtype, patch_rank, region_labels, region_thresholds
from pixelbeam.transforms.pixels.scaling import ScalingError, apply_scaling, common_data_type, resolve_scaling

# ---- scaling: Descartes Labs' scaling_parameters ----


def test_display_mode_uses_default_range_and_gives_byte():
    s = resolve_scaling(["red"], ["uint16"], "display", band_ranges={"red": {"default_range": (0, 4000)}})
    assert s.data_type == "Byte" and s.scales == ((0, 4000, 0, 255),)
    v = np.array([[[0, 1000, 2000, 3000, 4000, 5000, 500, 400]]], dtype=np.uint16)
    out = apply_scaling(v, np.ones(v.shape[1:], bool), s)
    # v * 255 / 4000: 0, 63.75, 127.5, 191.25, 255, 318.75 (saturates), 31.875, 25.5; rounded to nearest
    assert out.dtype == np.uint8 and out.tolist() == [[[0, 64, 128, 191, 255, 255, 32, 26]]]


def test_physical_mode_maps_data_range_to_physical_range_as_float64():
    s = resolve_scaling(["red"], ["uint16"], "physical",
                        band_ranges={"red": {"data_range": (0, 10000), "physical_range": (0.0, 1.0)}})
    assert s.data_type == "Float64" and s.scales == ((0, 10000, 0.0, 1.0),)
    out = apply_scaling(np.array([[[2500, 10000]]], np.uint16), np.ones((1, 2), bool), s)
    assert out.dtype == np.float64 and out.tolist() == [[[0.25, 1.0]]]


def test_raw_mode_keeps_values_and_promotes_by_the_table():
    s = resolve_scaling(["a", "b"], ["uint8", "int16"], "raw")
    assert s.scales == (None, None) and s.data_type == "Int16"
    assert common_data_type(["UInt16", "Int16"]) == "Int32"  # no 16-bit type holds both
    assert common_data_type(["Byte", "UInt16"]) == "UInt16"
    assert common_data_type(["UInt32", "Int16"]) == "Float64"
    assert common_data_type(["Float32", "Float64"]) == "Float64"
    assert resolve_scaling(["a", "b"], ["float32", "uint8"]).data_type == "Float32"  # no scaling


def test_two_tuple_implies_display_and_rounds_like_gdal():
    s = resolve_scaling(["b"], ["uint8"], [(100, 200)])
    # (in_min, in_max) -> display: out range 0.0..255.99, integers for a Byte output
    assert s.data_type == "Byte" and s.scales == ((100, 200, 0, 255),)
    out = apply_scaling(np.array([[[50, 100, 150, 200, 250]]], np.uint8), np.ones((1, 5), bool), s)
    assert out.tolist() == [[[0, 0, 128, 255, 255]]]  # 150 -> 127.5 -> 128; below/above saturate


def test_percentages_of_the_band_range():
    s = resolve_scaling(["b"], ["uint8"], [("10%", "90%")])
    # 10% and 90% of 0..255 are 25.5 and 229.5, truncated to integers for an integer band
    assert s.scales == ((25, 229, 0, 255),)
    out = apply_scaling(np.array([[[127]]], np.uint8), np.ones((1, 1), bool), s)
    assert out.tolist() == [[[128]]]  # (127 - 25) * 255 / 204 = 127.5


def test_four_tuples_imply_physical_or_raw():
    s = resolve_scaling(["b"], ["uint8"], [(0, 100, 0.0, 1.0)])
    assert s.data_type == "Float64" and s.scales == ((0, 100, 0.0, 1.0),)
    assert apply_scaling(np.array([[[25]]], np.uint8), np.ones((1, 1), bool), s).tolist() == [[[0.25]]]
    s = resolve_scaling(["b"], ["uint8"], [(0, 100, -1000, 1000)])  # output below 0: raw, source type
    assert s.data_type == "Byte" and s.scales == ((0, 100, -1000, 1000),)
    out = apply_scaling(np.array([[[50, 60, 100]]], np.uint8), np.ones((1, 3), bool), s)
    assert out.tolist() == [[[0, 200, 255]]]  # 0, 200, 1000 saturated to Byte


def test_auto_uses_the_patch_valid_min_and_max():
    s = resolve_scaling(["b"], ["uint16"], "auto")
    assert s.data_type == "Byte" and s.scales == ((),)
    data = np.array([[[10, 20, 30, 0]]], np.uint16)
    mask = np.array([[True, True, True, False]])
    # valid min 10, max 30 -> 0..255: 20 -> 127.5 -> 128; the masked 0 saturates to 0
    assert apply_scaling(data, mask, s).tolist() == [[[0, 128, 255, 0]]]


def test_dict_with_default_and_explicit_none():
    s = resolve_scaling(["r", "g", "mask"], ["uint8"] * 3, {"mask": None, "default_": "display"})
    assert s.scales == ((0, 255, 0, 255), (0, 255, 0, 255), None) and s.data_type == "Byte"


def test_auto_and_display_combine_other_modes_conflict():
    assert resolve_scaling(["a", "b"], ["uint8"] * 2, ["auto", "display"]).data_type == "Byte"
    with pytest.raises(ScalingError, match="conflicting modes 'raw' and 'physical'"):
        resolve_scaling(["a", "b"], ["uint8"] * 2, {"a": "raw", "b": "physical"})


def test_data_type_given_decides_the_mode():
    s = resolve_scaling(["b"], ["uint8"], [(0, 10)], data_type="Float32")
    # Float32 -> physical: output range is the band's physical range (default its data range 0..255)
    assert s.data_type == "Float32" and s.scales == ((0, 10, 0, 255),)
    assert apply_scaling(np.array([[[5]]], np.uint8), np.ones((1, 1), bool), s).tolist() == [[[127.5]]]


@pytest.mark.parametrize("scaling,data_type,match", [
    ([("0%", "100%", "0%", "100%")], None, "cannot tell the output data type"),
    ("bright", None, "is not a mode"),
    ([(1, 2, 3)], None, r"\[in_min, in_max\]"),
    ([(1, "x")], None, "neither a number nor a percentage"),
    ({"nope": "display"}, None, "'nope' is not a band"),
    (["display", "display"], None, "2 entries for 1 bands"),
    ("display", "Byte16", "is not a data type"),
])
def test_bad_scaling_is_one_line(scaling, data_type, match):
    with pytest.raises(ScalingError, match=match) as e:
        resolve_scaling(["b"], ["uint8"], scaling, data_type)
    assert "\n" not in str(e.value)


# ---- masks: Earth Engine unmask, fill_value ----

def patch_of(data, mask):
    spec = PatchSpec("p", "r", "EPSG:32618", (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), data.shape[2], data.shape[1])
    return Patch(spec=spec, data=data, mask=mask, band_names=tuple(f"B{i + 1}" for i in range(data.shape[0])))


DATA = np.array([[[1, 2], [3, 0]], [[5, 6], [0, 8]]], dtype=np.uint8)
MASK = np.array([[True, True], [False, False]])  # a pixel is valid only where every band is


def test_unmask_gives_masked_pixels_the_value_and_makes_them_valid():
    out = apply_pixel_rules(patch_of(DATA, MASK), PixelRules(unmask=9))
    assert out.data.tolist() == [[[1, 2], [9, 9]], [[5, 6], [9, 9]]]
    assert out.mask.all() and out.valid_fraction == 1.0


def test_fill_value_replaces_masked_pixels_only():
    out = apply_pixel_rules(patch_of(DATA, MASK), PixelRules(fill_value=7))
    assert out.data.tolist() == [[[1, 2], [7, 7]], [[5, 6], [7, 7]]]
    assert out.mask.tolist() == MASK.tolist() and out.valid_fraction == 0.5


def test_fill_after_scaling_in_the_output_type():
    rules = PixelRules(scaling=resolve_scaling(["B1", "B2"], ["uint8"] * 2, [(0, 10, 0.0, 1.0)] * 2), fill_value=-1)
    out = apply_pixel_rules(patch_of(DATA, MASK), rules)
    assert out.data.dtype == np.float64
    assert out.data.tolist() == [[[0.1, 0.2], [-1, -1]], [[0.5, 0.6], [-1, -1]]]


def test_no_rules_is_the_same_patch():
    p = patch_of(DATA, MASK)
    assert apply_pixel_rules(p, PixelRules()) is p


def test_fill_value_must_fit_the_output_type():
    assert "does not fit the output type uint8" in check_fill_value(-1, "uint8", "mask.fill_value")
    assert check_fill_value(-1, "float64", "mask.fill_value") is None and check_fill_value(255, "uint8", "x") is None


# ---- sampling ----

def test_region_thresholds_keep_exactly_the_n_smallest_ranks_in_any_order():
    owned = [(f"p{i}", "a") for i in range(10)] + [(f"q{i}", "b") for i in range(2)]
    thresholds = dict(region_thresholds(owned, 3, seed=5))
    kept_a = sorted((f"p{i}" for i in range(10)), key=lambda p: patch_rank(5, p))[:3]
    sample = Sample(seed=5, thresholds=tuple(thresholds.items()))
    assert sorted(p for p, r in owned if r == "a" and sample.keeps(p, r)) == sorted(kept_a)
    assert all(sample.keeps(p, "b") for p in ("q0", "q1"))  # fewer than N: all kept
    shuffled = owned[:]
    random.Random(1).shuffle(shuffled)
    assert dict(region_thresholds(shuffled, 3, seed=5)) == thresholds
    assert dict(region_thresholds(owned, 3, seed=6)) != thresholds


def test_per_region_sample_through_cells_is_exact_and_consistent_with_the_count():
    grid = GridSpec("EPSG:4326", (0.01, 0.01), patch_size=(4, 4))
    regions = [Region("big", shapely.box(0, 0, 1, 1)), Region("small", shapely.box(2, 2, 2.03, 2.03))]
    projected = project_regions(regions, grid)
    cells = plan_cells(regions, grid, size=4)  # small cells: the sample spans many of them
    full = plan_by_cells(regions, grid, size=4)
    sample = Sample(seed=1, thresholds=region_thresholds(owned_patch_ids(cells, projected, grid), 7, seed=1))
    specs = plan_by_cells(regions, grid, size=4, sample=sample)
    by_region = {r: [s for s in specs if s.region_id == r] for r in ("big", "small")}
    assert len(by_region["big"]) == 7 and len(by_region["small"]) == len([s for s in full if s.region_id == "small"])
    assert count_patches(cells, projected, grid, sample) == len(specs)
    expected = sorted((s.patch_id for s in full if s.region_id == "big"), key=lambda p: patch_rank(1, p))[:7]
    assert sorted(s.patch_id for s in by_region["big"]) == sorted(expected)
    # cell size (how work is split) does not change the sample
    assert [s.patch_id for s in plan_by_cells(regions, grid, size=32, sample=sample)] == [s.patch_id for s in specs]


def test_centered_points_take_the_grid_patch_whose_centre_is_nearest():
    # stride 1 (overlap 4), 5 px patches: the point lies in the centre pixel (index 2) exactly
    grid = GridSpec("EPSG:32618", (1.0, 1.0), patch_size=(5, 5), overlap=4, center_points=True)
    rows, cols, _ = _point_cells(grid, shapely.Point(12.3, -7.6))
    assert (rows[0], cols[0]) == (5, 10)  # x 10..15 (centre pixel 12), y rows 5..10 (centre row 7)
    # stride 4, 8 px patches: nearest centre at 12 (patch col 2), 1 px from x = 13; the default
    # rule takes the patch whose stride cell holds the point (col 3, centre 16)
    centred = GridSpec("EPSG:32618", (1.0, 1.0), patch_size=(8, 8), overlap=4, center_points=True)
    plain = GridSpec("EPSG:32618", (1.0, 1.0), patch_size=(8, 8), overlap=4)
    assert _point_cells(centred, shapely.Point(13.0, -1.0))[1][0] == 2
    assert _point_cells(plain, shapely.Point(13.0, -1.0))[1][0] == 3


def test_labels_come_from_every_region_and_have_one_type():
    regions = [Region("a", shapely.Point(0, 0), {"class": 2}), Region("b", shapely.Point(1, 1), {"class": 5})]
    labels = region_labels(regions, "class")
    assert labels == (("a", 2), ("b", 5)) and label_dtype(labels) == "int64"
    assert label_dtype((("a", 1), ("b", 0.5))) == "float32" and label_dtype((("a", "x"),)) == "string"
    with pytest.raises(SampleError, match="region 'c' has no property 'class'"):
        region_labels(regions + [Region("c", shapely.Point(2, 2))], "class")
    with pytest.raises(SampleError, match="mix numbers and strings"):
        label_dtype((("a", 1), ("b", "x")))
