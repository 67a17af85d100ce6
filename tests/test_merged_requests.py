"""Merged Earth Engine requests (transforms/fetching/merging.py): neighbouring patches fetched in
one request for their union window give every output byte that one request per patch gives,
in fewer requests; a merged request that fails permanently falls back to one request per patch."""

import glob
import json
import os

import numpy as np
import pytest
import yaml

from pixelbeam.pipeline.cli import main
from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer
from pixelbeam.transforms.fetching import merging
from pixelbeam.transforms.fetching.sizing import RequestLimits
from pixelbeam.transforms.patch import PatchSpec
from tests.outputs_compare import examples_by_id, manifest_by_id, per_patch_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
ASSET = "projects/demo/assets/landsat"
BBOX = [-78.65, 25.3, -78.35, 25.6]  # lon/lat: the scene's top corner, with nodata and the outside
GRIDS = {  # the scene is EPSG:32618: a grid in its CRS, and one across CRSs (the emulator's exact warp)
    "utm": {"crs": "EPSG:32618", "scale": 700, "patch_size": 8, "overlap": 2, "margin": 1},
    "lonlat": {"crs": "EPSG:4326", "scale": 0.004, "patch_size": 6},
}


@pytest.fixture()
def emulator():
    catalog = {"images": {ASSET: {"path": LANDSAT, "bands": ["B1", "B2", "B3"]}}}
    with EmulatorServer(catalog, EmulatorConfig(max_concurrent=8), record=True) as server:
        yield server


def job(tmp_path, url, name, grid, per_request, formats=("npy", "tfrecord")):
    doc = {"source": {"kind": "earthengine", "asset": ASSET, "url": url, "credentials": "anonymous",
                      "project": "demo"},
           "regions": BBOX, "grid": grid,
           "output": {"path": str(tmp_path / name), "formats": list(formats), "keep_empty": True},
           "fetch": {"max_concurrent_requests": 8, "patches_per_request": per_request, "max_attempts": 2}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def block_of(row, cap=16):
    """The grid block of a manifest row (its patch id names the grid row and column)."""
    grid_row, grid_col = row["patch_id"].split("_r")[-1].split("_c")
    spec = PatchSpec(row["patch_id"], "", row["crs"], tuple(row["transform"]), row["width"], row["height"],
                     row=int(grid_row), col=int(grid_col))
    return merging.block_key(spec, cap)


def pixel_requests(server):
    return [body for method, body in server.recorded if method in ("getPixels", "computePixels")]


def run(server, cfg):
    before = len(pixel_requests(server))
    assert main(["run", cfg]) == 0
    return len(pixel_requests(server)) - before


def raw_examples(out):
    """Every TFRecord example's serialized bytes, sorted (the shards' order is the runner's)."""
    import tensorflow as tf
    shards = sorted(glob.glob(os.path.join(out, "tfrecord", "*.tfrecord.gz")))
    return sorted(raw.numpy() for raw in tf.data.TFRecordDataset(shards, compression_type="GZIP"))


def dataset_doc(out):
    doc = json.load(open(os.path.join(out, "dataset.json")))
    doc.pop("runs")
    doc["config"]["output"].pop("path")
    doc["config"].pop("fetch")  # patches_per_request: the one setting that differs
    return doc


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_merged_requests_write_the_same_bytes_in_fewer_requests(tmp_path, emulator, grid):
    single = run(emulator, job(tmp_path, emulator.url, "single", GRIDS[grid], 1))
    merged = run(emulator, job(tmp_path, emulator.url, "merged", GRIDS[grid], 16))
    a, b = str(tmp_path / "single"), str(tmp_path / "merged")
    rows = manifest_by_id(a)
    patches = len(rows)
    assert patches > 60 and {r["status"] for r in rows.values()} == {"written"}
    assert any(r["valid_fraction"] < 1 for r in rows.values())  # the scene's nodata edge is in it
    assert single == patches + 1  # the band probe, then one request per patch
    # 4 x 4 blocks of the grid: a full block is one request, a block cut by the region's edge one
    # for the patches it holds; expected from the plan, per block
    blocks = {block_of(r) for r in rows.values()}
    assert merged == len(blocks) + 1
    assert (merged - 1) * 6 <= single - 1  # blocks cut by the edges too: 8x fewer here, 16x for full ones
    npy_a, npy_b = per_patch_files(a, "npy"), per_patch_files(b, "npy")
    assert sorted(npy_a) == sorted(npy_b) and all(npy_a[k] == npy_b[k] for k in npy_a)
    assert raw_examples(a) == raw_examples(b)
    assert rows == manifest_by_id(b)  # requests 1 per patch in both: each patch came in one request
    assert dataset_doc(a) == dataset_doc(b)


def test_block_requests_are_union_windows_of_whole_pixels(tmp_path, emulator):
    run(emulator, job(tmp_path, emulator.url, "merged", GRIDS["utm"], 16, formats=("npy",)))
    sizes = {(b["grid"]["dimensions"]["width"], b["grid"]["dimensions"]["height"])
             for b in pixel_requests(emulator)[1:]}
    # stride 6 px, 8 px patches and a 1 px margin: 4 patches a side are 3 * 6 + 10 = 28 px
    assert (28, 28) in sizes and max(w * h for w, h in sizes) == 28 * 28


def test_a_failing_merged_request_falls_back_to_one_request_per_patch(tmp_path, emulator, capsys):
    single = job(tmp_path, emulator.url, "single", GRIDS["utm"], 1, formats=("npy",))
    run(emulator, single)
    expected = per_patch_files(str(tmp_path / "single"), "npy")
    emulator.set_config(EmulatorConfig(max_concurrent=8, fault_400=0.3, seed=7))
    emulator.reset_stats()
    before = len(pixel_requests(emulator))
    cfg = job(tmp_path, emulator.url, "merged", GRIDS["utm"], 16, formats=("npy",))
    capsys.readouterr()
    assert main(["run", cfg]) == 1  # some patches failed (failed.jsonl)
    printed = capsys.readouterr().out
    bodies = pixel_requests(emulator)[before:]
    out = str(tmp_path / "merged")
    rows = manifest_by_id(out)
    assert set(rows) == set(manifest_by_id(str(tmp_path / "single")))  # every planned patch has its row
    failed = [r for r in rows.values() if r["status"] == "failed"]
    written = [r for r in rows.values() if r["status"] == "written"]
    assert failed and written and len(failed) + len(written) == len(rows)
    # each failed patch failed its own single request (the 400 names no other patch's window)
    assert all("Injected permanent error 400" in r["reason"] and "merged:" not in r["reason"] for r in failed)
    singles = [b for b in bodies if b["grid"]["dimensions"]["width"] == 10]
    merged = [b for b in bodies if b["grid"]["dimensions"]["width"] > 10]
    stats = emulator.stats()
    refused = stats["errors_by_code"]["400"]
    # every refused merged window was fetched again patch by patch: the singles sent are the
    # patches of refused windows (and of blocks of one patch), and written patches are exact
    assert merged and len(singles) > len(failed) and refused >= len(failed) + 1
    got = per_patch_files(out, "npy")
    assert sorted(got) == sorted(f"{r['patch_id']}.npy" for r in written)
    assert all(got[name] == expected[name] for name in got)
    assert stats["requests_received"] == len(bodies) + refused  # the recorded bodies are the answered ones
    # the run's own count (Beam counters, the summary) is the requests the server saw, less the probe
    assert f"requests {stats['requests_received'] - 1} |" in printed, printed


def test_a_merged_request_retried_as_a_whole(tmp_path, emulator):
    emulator.set_config(EmulatorConfig(max_concurrent=8, fault_503=0.3, seed=3))
    cfg = job(tmp_path, emulator.url, "merged", GRIDS["utm"], 16, formats=("npy",))
    cfg_doc = yaml.safe_load(open(cfg))
    cfg_doc["fetch"]["max_attempts"] = 8
    open(cfg, "w").write(yaml.safe_dump(cfg_doc))
    assert main(["run", cfg]) == 0
    rows = manifest_by_id(str(tmp_path / "merged"))
    assert {r["status"] for r in rows.values()} == {"written"}
    retried = [r for r in rows.values() if r["attempts"] > 1]
    assert retried and emulator.stats()["errors_by_code"]["503"] > 0
    # one request per block, retried as a whole: every patch of a block has its attempts
    by_block = {}
    for r in rows.values():
        by_block.setdefault(block_of(r), set()).add(r["attempts"])
    assert all(len(attempts) == 1 for attempts in by_block.values())
    assert len({a for attempts in by_block.values() for a in attempts}) > 1
    assert all(r["requests"] == 1 for r in rows.values())


# -- the pure planning ------------------------------------------------------------------------

def spec(row, col, size=4, stride=4, margin=0, scale=10.0):
    t = (scale, 0.0, col * stride * scale, 0.0, -scale, -row * stride * scale)
    return PatchSpec(f"p_{row}_{col}", "r", "EPSG:32618", t, size, size, row=row, col=col, margin=margin)


def test_block_shape():
    assert [merging.block_shape(n) for n in (1, 2, 3, 4, 8, 16, 17)] == [
        (1, 1), (2, 1), (3, 1), (2, 2), (4, 2), (4, 4), (4, 4)]


def test_plan_windows_full_block_one_window_and_cut_windows():
    specs = [spec(r, c) for r in range(4) for c in range(4)]
    (window,) = merging.plan_windows(specs, (1, 1, 1, 1), RequestLimits(), 16)
    assert (window.spec.width, window.spec.height) == (16, 16) and len(window.members) == 16
    assert window.spec.transform == specs[0].transform
    assert dict(zip([m.patch_id for m in window.members], window.offsets))["p_2_3"] == (8, 12)
    data = np.arange(4 * 16 * 16).reshape(4, 16, 16)
    d, m = merging.cut(data, data[0] > 5, window, window.members.index(specs[9]))
    np.testing.assert_array_equal(d, data[:, 8:12, 4:8])
    assert d.flags.c_contiguous and m.shape == (4, 4)


def test_plan_windows_margin_and_limits_split_rows_then_patches():
    specs = [spec(r, c, size=8, stride=6, margin=1) for r in range(4) for c in range(4)]
    (window,) = merging.plan_windows(specs, (1,), RequestLimits(), 16)
    assert (window.spec.width, window.spec.height) == (28, 28)
    assert window.spec.transform == specs[0].fetch_transform  # the window's grid is a member's own
    rows = merging.plan_windows(specs, (1,), RequestLimits(max_bytes=28 * 10), 16)  # one row of a block fits
    assert [len(w.members) for w in rows] == [4, 4, 4, 4]
    tiny = merging.plan_windows(specs, (1,), RequestLimits(max_bytes=100), 16)
    assert all(isinstance(w, PatchSpec) for w in tiny) and len(tiny) == 16
    assert merging.plan_windows(specs, (1,), RequestLimits(), 1) == specs


def test_plan_windows_sparse_and_other_grids_stay_single():
    sparse = [spec(0, 0), spec(3, 3)]  # the window would be 8x the pixels asked for
    assert merging.plan_windows(sparse, (1,), RequestLimits(), 16) == sparse
    other = [spec(0, 0), spec(0, 1, scale=20.0)]  # another pixel size: another grid
    assert all(isinstance(w, PatchSpec) for w in merging.plan_windows(other, (1,), RequestLimits(), 16))
    blocks = merging.plan_windows([spec(0, c) for c in range(8)], (1,), RequestLimits(), 16)
    assert [len(w.members) for w in blocks] == [4, 4]  # two blocks of the grid, never across


# -- FetchPatches with a fake source that merges -----------------------------------------------

FAKE_CALLS: list = []  # (window width, height) of each fetch, shared by the pickled copies in this process


class MergingSource:
    """Pixels = 1000 * global row + global col of the pixel (so a cut in the wrong place shows);
    a window holding patch (1, 1) is refused (400), and so is that patch alone."""

    merges_windows = True

    def __init__(self, info):
        self.info = info

    def describe(self):
        return self.info

    def open(self, info=None):
        return MergingReader(info or self.info)


class MergingReader:
    def __init__(self, info):
        self.info, self.limits = info, info.limits

    def fetch(self, spec, part):
        from pixelbeam.transforms.fetching.retry import PermanentError
        from pixelbeam.transforms.sources.base import PartResult
        FAKE_CALLS.append((part.width, part.height))
        a, _, c, _, e, f = spec.fetch_transform
        col0, row0 = round(c / a), round(f / e)
        if spec.patch_id == "p_1_1" or (spec.patch_id.startswith("merged:") and col0 <= 4 < col0 + part.width
                                        and row0 <= 4 < row0 + part.height):
            raise PermanentError("refused", cause="400")
        rows, cols = np.mgrid[row0:row0 + part.height, col0:col0 + part.width]
        data = np.stack([1000 * rows + cols] * len(part.bands)).astype(np.int32)
        return PartResult(data, np.ones(data.shape[1:], bool), data.nbytes)

    def close(self):
        pass


def test_fetch_patches_merges_blocks_falls_back_and_counts_requests():
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to
    from pixelbeam.transforms.fetch import FAILED, FetchPatches, FetchSettings
    from pixelbeam.transforms.sources.base import SourceInfo
    FAKE_CALLS.clear()
    info = SourceInfo(band_names=("a", "b"), dtypes=("int32",) * 2, limits=RequestLimits())
    settings = FetchSettings(max_concurrent=2, max_requests_per_second=1000, max_attempts=2, threads=2,
                             patches_per_request=16)
    grid = [spec(r, c, scale=1.0) for r in range(8) for c in range(4)]  # two 4 x 4 blocks
    pipeline = TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    with pipeline as p:
        out = p | beam.Create(grid) | FetchPatches(MergingSource(info), info, settings)
        # each patch's pixels are its own global pixels: row 0 of patch (r, c) is global row 4r
        ok = out.patches | beam.Map(lambda pt: (pt.spec.patch_id, bool(
            (pt.data[1] == 1000 * np.arange(4 * pt.spec.row, 4 * pt.spec.row + 4)[:, None]
             + np.arange(4 * pt.spec.col, 4 * pt.spec.col + 4)).all()), pt.data.shape, pt.requests, pt.bytes))
        assert_that(ok, equal_to([(s.patch_id, True, (2, 4, 4), 1, 4 * 4 * 8) for s in grid if s.patch_id != "p_1_1"]),
                    label="patches")
        failed = out[FAILED] | beam.Map(lambda f: (f.spec.patch_id, f.error_class, "merged" in f.message))
        assert_that(failed, equal_to([("p_1_1", "PermanentError:400", False)]), label="failed")
    counters = {c.key.metric.name: c.committed for c in pipeline.result.metrics().query()["counters"]}
    # block 1: one window of 16; block 0: a refused window of 16, then 16 single patches
    assert sorted(FAKE_CALLS) == sorted([(16, 16)] * 2 + [(4, 4)] * 16)
    assert counters["requests"] == 18 and counters["patches_fetched"] == 31 and counters["patches_failed"] == 1


def test_plan_says_how_many_patches_share_a_request(tmp_path, emulator, capsys):
    for per_request, expected in ((16, 16), (1, None)):
        capsys.readouterr()
        cfg = job(tmp_path, emulator.url, f"plan{per_request}", GRIDS["utm"], per_request)
        doc = yaml.safe_load(open(cfg))
        doc["fetch"]["max_requests_per_second"] = 1  # the least time in s is then the least number of requests
        open(cfg, "w").write(yaml.safe_dump(doc))
        assert main(["plan", cfg, "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert plan.get("patches_per_request") == expected and plan["requests"] == plan["patches"]
        if expected:
            assert plan["requests_at_least"] == -(-plan["patches"] // 16) < plan["patches"]
            assert plan["min_seconds_at_quota"] == plan["requests_at_least"]  # not one request per patch
        else:
            assert plan["min_seconds_at_quota"] == plan["patches"]
