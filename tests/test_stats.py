"""Statistics: mergeable accumulators against numpy, the Beam combiner, and dataset.json's
`stats` after runs and reruns, compared with numpy over every written NPY file (issue 14)."""

import glob
import json
import os

import numpy as np
import pytest
import yaml
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from pixelbeam.pipeline.cli import main
from pixelbeam.transforms.pixels.stats import ALPHA, BandStats, ClassCounts, LayerStats, merge_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")


def merged(parts, dtype):
    """Stats of each part, serialized and merged back (as runs and bundles are)."""
    out = BandStats.for_dtype(dtype)
    for part in parts:
        s = BandStats.for_dtype(dtype)
        s.add(part)
        out.merge(BandStats.from_state(json.loads(json.dumps(s.to_state()))))
    return out


def cut(values, points):
    points = sorted({min(p, len(values)) for p in points})
    return np.split(values, points)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(dtype=st.sampled_from(["uint8", "int8", "uint16", "int16", "bool"]), data=st.data())
def test_exact_dtypes_equal_numpy_after_any_merge(dtype, data):
    values = data.draw(hnp.arrays(dtype, st.integers(1, 400)))
    points = data.draw(st.lists(st.integers(0, 400), max_size=5))
    s = merged(cut(values, points), dtype)
    x = values.astype(np.float64)
    assert s.count == x.size and s.min == x.min() and s.max == x.max()
    assert np.isclose(s.mean, x.mean(), rtol=1e-12, atol=1e-12) and np.isclose(s.std, x.std(), rtol=1e-9, atol=1e-9)
    for q in (0.02, 0.5, 0.98):
        assert np.isclose(s.quantile(q), np.percentile(x, 100 * q), rtol=1e-12, atol=1e-12)


def quantile_bound_holds(s, x, q):
    """The float sketch's bound: within ALPHA * max(|x_lo|, |x_hi|) of numpy.percentile."""
    xs = np.sort(x)
    pos = q * (len(xs) - 1)
    lo, hi = xs[int(np.floor(pos))], xs[int(np.ceil(pos))]
    bound = ALPHA * max(abs(lo), abs(hi)) * (1 + 1e-9) + 1.2e-38
    return abs(s.quantile(q) - np.percentile(x, 100 * q)) <= bound


@settings(max_examples=80, deadline=None, derandomize=True)
@given(dtype=st.sampled_from(["float32", "float64", "int32", "uint32"]), data=st.data())
def test_sketched_dtypes_are_within_the_stated_bound(dtype, data):
    elements = (st.floats(-1e6, 1e6, width=32 if dtype == "float32" else 64) if dtype.startswith("float")
                else st.integers(*( (-2 ** 31, 2 ** 31 - 1) if dtype == "int32" else (0, 2 ** 32 - 1))))
    values = data.draw(hnp.arrays(dtype, st.integers(1, 300), elements=elements))
    points = data.draw(st.lists(st.integers(0, 300), max_size=4))
    s = merged(cut(values, points), dtype)
    x = values.astype(np.float64)
    assert s.count == x.size and s.min == x.min() and s.max == x.max()
    assert np.isclose(s.mean, x.mean(), rtol=1e-9, atol=1e-6 * max(1.0, np.abs(x).max()))
    for q in (0.02, 0.5, 0.98):
        assert quantile_bound_holds(s, x, q), (q, s.quantile(q), np.percentile(x, 100 * q))


def test_sketch_on_real_shapes_of_data():
    rng = np.random.default_rng(0)
    for x in (rng.lognormal(0, 4, 50_000), rng.normal(280.0, 15.0, 50_000),  # e.g. kelvins: far from 0
              np.concatenate([rng.normal(0, 1e-3, 10_000), np.zeros(500), -rng.exponential(5, 3000)])):
        s = merged(np.array_split(x.astype(np.float32), 9), "float32")
        x32 = x.astype(np.float32).astype(np.float64)
        assert all(quantile_bound_holds(s, x32, q) for q in (0.02, 0.98))
        assert np.isclose(s.std, x32.std(), rtol=1e-9)


def test_non_finite_values_are_left_out_and_empty_stats_are_null():
    s = BandStats.for_dtype("float32")
    s.add(np.array([1.0, np.nan, 3.0, np.inf, -np.inf], np.float32))
    assert (s.count, s.mean, s.min, s.max) == (2, 2.0, 1.0, 3.0)
    empty = BandStats.for_dtype("uint8").summary()
    assert empty == {"count": 0, "mean": None, "std": None, "min": None, "max": None, "p2": None, "p98": None}


def test_merge_order_does_not_change_counts_extremes_or_percentiles():
    rng = np.random.default_rng(1)
    parts = [rng.normal(0, 10, rng.integers(1, 2000)).astype(np.float32) for _ in range(8)]
    a, b = merged(parts, "float32"), merged(parts[::-1], "float32")
    assert a.to_state()["positive"] == b.to_state()["positive"] and a.to_state()["negative"] == b.to_state()["negative"]
    assert (a.count, a.min, a.max, a.quantile(0.02), a.quantile(0.98)) == (b.count, b.min, b.max, b.quantile(0.02),
                                                                          b.quantile(0.98))
    assert np.isclose(a.mean, b.mean, rtol=1e-12) and np.isclose(a.m2, b.m2, rtol=1e-12)


def test_class_counts_and_target_layers():
    rng = np.random.default_rng(2)
    classes = rng.integers(0, 5, size=(3, 1, 8, 8)).astype(np.uint8)  # three patches of a one-band target
    masks = rng.random((3, 8, 8)) > 0.3
    parts = []
    for data, mask in zip(classes, masks):
        layer = LayerStats.empty(("landcover",), "uint8", target=True)
        layer.add(data, mask)
        parts.append(LayerStats.from_state(json.loads(json.dumps(layer.to_state()))))
    whole = merge_all(parts)
    values, counts = np.unique(classes[:, 0][masks], return_counts=True)
    assert whole.class_summary() == {"landcover": {str(v): int(c) for v, c in zip(values, counts)}}
    assert whole.summary()["landcover"]["count"] == masks.sum()
    assert LayerStats.empty(("b",), "float32", target=True).classes is None  # a float target: regression
    assert LayerStats.empty(("b",), "uint8").class_summary() is None  # an input layer
    c = ClassCounts()
    c.add(np.array([-1, 3, 3]))
    assert ClassCounts.from_state(c.to_state()).counts == {-1: 1, 3: 2}


def test_time_stacks_use_every_steps_valid_pixels():
    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, size=(4, 2, 5, 5)).astype(np.uint8)  # (T, C, H, W)
    mask = rng.random((4, 5, 5)) > 0.5
    layer = LayerStats.empty(("a", "b"), "uint8")
    layer.add(data, mask)
    assert layer.summary()["b"]["max"] == data[:, 1][mask].max()
    assert layer.summary()["a"]["count"] == mask.sum()


def test_combiner_in_a_pipeline_writes_the_runs_stats_file(tmp_path):
    import apache_beam as beam
    from pixelbeam.transforms.patch import Patch, PatchSpec
    from pixelbeam.transforms.statistics import PatchStatistics
    rng = np.random.default_rng(4)
    patches = []
    for i in range(12):
        spec = PatchSpec(f"p{i}", "r", "EPSG:32618", (1, 0, 0, 0, -1, 0), 6, 6, split=["train", "val"][i % 2],
                         written_before=i == 11)  # p11 was counted by the run that first wrote it
        patches.append(Patch(spec, rng.integers(0, 2 ** 16, size=(2, 6, 6)).astype(np.uint16), rng.random((6, 6)) > 0.2,
                             ("x", "y")))
    with beam.Pipeline() as p:
        _ = p | beam.Create(patches) | PatchStatistics(str(tmp_path), "20200101T000000-abcd")
    doc = json.load(open(tmp_path / "stats" / "20200101T000000-abcd.json"))
    for entry in doc["entries"]:
        got = LayerStats.from_state(entry["state"]).summary()["y"]
        values = np.concatenate([p.data[1][p.mask] for p in patches[:11] if p.spec.split == entry["split"]])
        assert got["count"] == values.size and got["p98"] == np.percentile(values, 98) and got["max"] == values.max()
        assert np.isclose(got["std"], values.std(), rtol=1e-12)
    assert sorted(e["split"] for e in doc["entries"]) == ["train", "val"]


def test_a_target_layer_gets_class_counts_per_split(tmp_path):
    import apache_beam as beam
    from pixelbeam.pipeline.stats import recorded_stats
    from pixelbeam.transforms.patch import Patch, PatchSpec
    from pixelbeam.transforms.statistics import PatchStatistics
    rng = np.random.default_rng(5)
    patches = [Patch(PatchSpec(f"p{i}", "r", "EPSG:32618", (1, 0, 0, 0, -1, 0), 4, 4, split=["train", "test"][i % 2]),
                     rng.integers(0, 4, size=(1, 4, 4)).astype(np.uint8), rng.random((4, 4)) > 0.25, ("class",))
               for i in range(6)]
    for run, part in (("20200101T000000-aaaa", patches[:4]), ("20200102T000000-bbbb", patches[4:])):
        with beam.Pipeline() as p:
            _ = p | beam.Create(part) | PatchStatistics(str(tmp_path), run, {"image": "target"})
    got = recorded_stats(str(tmp_path), ["20200101T000000-aaaa", "20200102T000000-bbbb"], ("train", "val", "test"))
    for split in ("all", "train", "test"):
        values = np.concatenate([p.data[0][p.mask] for p in patches if split in ("all", p.spec.split)])
        classes, counts = np.unique(values, return_counts=True)
        assert got["class_counts"][split] == {"image": {"class": {str(c): int(n) for c, n in zip(classes, counts)}}}
        assert got["stats"][split]["image"]["class"]["count"] == values.size
    assert got["class_counts"]["val"] == {"image": {"class": {}}} and got["stats"]["val"]["image"]["class"]["count"] == 0


# ---- end to end: dataset.json against numpy over every NPY file ----

def stats_config(tmp_path, regions, **split):
    doc = {"source": {"uri": LANDSAT},
           "regions": regions,
           "grid": {"crs": "native", "scale": "native", "patch_size": 32, "overlap": 8, "margin": 2},
           "output": {"path": str(tmp_path / "out"), "max_masked_ratio": 0.6, "formats": ["npy", "tfrecord"]},
           "mask": {"npy": True},
           "fetch": {"max_concurrent_requests": 4, "max_requests_per_second": 10000}}
    if split:
        doc["split"] = split
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def numpy_stats(out):
    """{split or "all": {band index: valid values}} over every NPY file in npy/ (with its mask)."""
    rows = {json.loads(line)["patch_id"]: json.loads(line) for line in open(os.path.join(out, "manifest.jsonl"))}
    values: dict = {}
    for path in sorted(glob.glob(os.path.join(out, "npy", "*.npy"))):
        if path.endswith(".mask.npy"):
            continue
        pid = os.path.basename(path)[:-4]
        data, mask = np.load(path), np.load(path[:-4] + ".mask.npy").astype(bool)
        for key in ("all", rows[pid].get("split")):
            if key is not None:
                for band in range(data.shape[0]):
                    values.setdefault(key, {}).setdefault(band, []).append(data[band][mask])
    return {k: {b: np.concatenate(v) for b, v in bands.items()} for k, bands in values.items()}


def assert_stats_equal_numpy(out):
    meta = json.load(open(os.path.join(out, "dataset.json")))
    expected = numpy_stats(out)
    assert set(expected) <= set(meta["stats"]) == {"all", *meta.get("patches_planned_per_split", ())}
    for key in set(meta["stats"]) - set(expected):  # a split with nothing written
        assert all(b["count"] == 0 for b in meta["stats"][key]["image"].values())
    for key, bands in expected.items():
        got = meta["stats"][key]["image"]
        for band, x in bands.items():
            g = got[meta["bands"][band]]
            x = x.astype(np.float64)
            assert (g["count"], g["min"], g["max"]) == (x.size, x.min(), x.max()), (key, band)
            assert np.isclose(g["mean"], x.mean(), rtol=1e-12) and np.isclose(g["std"], x.std(), rtol=1e-10)
            assert (g["p2"], g["p98"]) == (np.percentile(x, 2), np.percentile(x, 98)), (key, band)  # uint8: exact
    return meta


def first_region(tmp_path):
    doc = json.loads(open(REGIONS).read())
    first = tmp_path / "first.geojson"
    first.write_text(json.dumps({**doc, "features": doc["features"][:1]}))
    return str(first)


def test_stats_equal_numpy_over_every_npy_file_after_reruns(tmp_path):
    split = {"train": 0.5, "val": 0.25, "test": 0.25, "block": 4}
    assert main(["run", stats_config(tmp_path, first_region(tmp_path), **split)]) == 0
    out = str(tmp_path / "out")
    assert_stats_equal_numpy(out)
    [run1] = glob.glob(os.path.join(out, "stats", "*.json"))
    # files of written patches go missing: refetched, written again, not counted twice
    for path in sorted(glob.glob(os.path.join(out, "npy", "*.mask.npy")))[:3]:
        os.remove(path)
    # a killed run left its statistics behind: deleted, not merged
    dead = os.path.join(out, "stats", "20000101T000000-dead.json")
    with open(dead, "w") as f:
        json.dump({"run_id": "20000101T000000-dead", "entries": json.load(open(run1))["entries"]}, f)
    cfg = stats_config(tmp_path, REGIONS, **split)  # more regions: a rerun that adds patches
    assert main(["run", cfg]) == 0
    meta = assert_stats_equal_numpy(out)
    assert len(meta["runs"]) == 2 and len(os.listdir(os.path.join(out, "stats"))) == 2 and not os.path.exists(dead)
    assert "class_counts" not in meta  # a single source is an input layer


def test_an_output_from_before_statistics_gets_none_rather_than_wrong_ones(tmp_path, caplog):
    assert main(["run", stats_config(tmp_path, first_region(tmp_path))]) == 0
    out = tmp_path / "out"
    for path in glob.glob(str(out / "stats" / "*")):
        os.remove(path)  # as if written by a pixelbeam without statistics
    assert main(["run", stats_config(tmp_path, REGIONS)]) == 0
    assert "stats" not in json.load(open(out / "dataset.json"))
    assert any("left no statistics" in r.message for r in caplog.records)
