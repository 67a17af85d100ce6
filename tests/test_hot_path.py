"""Issue 16's per-patch shortcuts give what the long way gave: masks computed from the nodata
value equal GDAL's masks, the valid fraction equals `mask.mean()`, and local atomic writes make
a missing folder and leave no temporary file."""

import os

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from pixelbeam.transforms.patch import valid_fraction
from pixelbeam.transforms.sources import raster
from pixelbeam.transforms.storage import write_atomically


def make_raster(path, dtype, nodata=None, alpha=False, internal_mask=False):
    rng = np.random.default_rng(5)
    count = 4 if alpha else 3
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    lo, hi = (info.min, min(info.max, 1000)) if info else (-5, 5)
    data = rng.integers(lo, hi, size=(count, 37, 45)).astype(dtype)
    if nodata is not None:
        data[:, rng.random((37, 45)) < 0.3] = nodata  # every band, and some bands alone
        data[1, rng.random((37, 45)) < 0.2] = nodata
    if alpha:
        data[3] = np.where(rng.random((37, 45)) < 0.25, 0, 255)
    profile = dict(driver="GTiff", width=45, height=37, count=count, dtype=dtype, crs="EPSG:32618",
                   transform=Affine(30, 0, 1000, 0, -30, 5000), nodata=nodata)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data)
            if alpha:
                ds.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                                  rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
            if internal_mask:
                ds.write_mask(np.where(rng.random((37, 45)) < 0.4, 0, 255).astype(np.uint8))
    return path


def gdal_window_read(ds, indexes, window, ignore=frozenset()):
    """The long way: a zero-filled (nodata-filled) window, GDAL's masks read for the inside."""
    h, w = int(window.height), int(window.width)
    data = np.full((len(indexes), h, w), ds.nodata if ds.nodata is not None else 0,
                   dtype=np.result_type(*[ds.dtypes[i - 1] for i in indexes]))
    mask = np.zeros((h, w), dtype=bool)
    r0, c0 = max(int(window.row_off), 0), max(int(window.col_off), 0)
    r1, c1 = min(int(window.row_off) + h, ds.height), min(int(window.col_off) + w, ds.width)
    if r0 < r1 and c0 < c1:
        inner = Window(c0, r0, c1 - c0, r1 - r0)
        rows = slice(r0 - int(window.row_off), r1 - int(window.row_off))
        cols = slice(c0 - int(window.col_off), c1 - int(window.col_off))
        data[:, rows, cols] = ds.read(indexes, window=inner)
        masks = ds.read_masks(indexes, window=inner)
        for k, i in enumerate(indexes):
            flags = ds.mask_flag_enums[i - 1]
            if ("nodata" in ignore and rasterio.enums.MaskFlags.nodata in flags) or (
                    "alpha" in ignore and rasterio.enums.MaskFlags.alpha in flags):
                masks[k] = 255
        mask[rows, cols] = np.all(masks > 0, axis=0)
    return data, mask


WINDOWS = [Window(0, 0, 45, 37), Window(3, 5, 16, 16), Window(-7, -3, 16, 16), Window(38, 30, 16, 16),
           Window(-20, 10, 16, 16), Window(100, 100, 16, 16), Window(-5, -5, 60, 50)]


@pytest.mark.parametrize("kind,fast", [
    (dict(dtype="uint8", nodata=0), True), (dict(dtype="int16", nodata=-9999), True),
    (dict(dtype="uint16", nodata=7), True), (dict(dtype="float32", nodata=-1.0), False),
    (dict(dtype="uint8", nodata=None), False), (dict(dtype="uint8", alpha=True), False),
    (dict(dtype="uint8", nodata=None, internal_mask=True), False)])
@pytest.mark.parametrize("ignore", [frozenset(), frozenset({"nodata"}), frozenset({"alpha"})])
def test_window_read_masks_equal_gdal_masks(tmp_path, kind, fast, ignore):
    path = make_raster(str(tmp_path / "r.tif"), **kind)
    with rasterio.open(path) as ds:
        indexes = [1, 2, 3]
        assert (raster._nodata_mask_value(ds, indexes, ignore) is not None) == (fast and "nodata" not in ignore)
        for window in WINDOWS:
            data, mask = raster._window_read(ds, indexes, window, ignore)
            want_data, want_mask = gdal_window_read(ds, indexes, window, ignore)
            assert data.dtype == want_data.dtype and data.shape == want_data.shape
            np.testing.assert_array_equal(data, want_data)
            np.testing.assert_array_equal(mask, want_mask, err_msg=str(window))
        assert 0 < raster._window_read(ds, indexes, WINDOWS[0], ignore)[1].mean() <= 1


def test_valid_fraction_is_mask_mean():
    rng = np.random.default_rng(2)
    for n in (1, 7, 128 * 128, 3 * 256 * 256):
        for p in (0.0, 0.01, 0.5, 0.999, 1.0):
            mask = rng.random(n) < p
            assert valid_fraction(mask) == float(mask.mean())
            assert valid_fraction(mask.astype(np.uint8)) == float(mask.astype(np.uint8).mean())
    assert valid_fraction(np.zeros((0, 4), bool)) == 0.0


def test_local_atomic_write_makes_a_missing_folder_again(tmp_path):
    path = str(tmp_path / "out" / "npy" / "a.npy")
    write_atomically(path, b"one")
    os.remove(path)
    os.rmdir(tmp_path / "out" / "npy")  # a user removed the folder between two runs in one process
    write_atomically(path, b"two")
    write_atomically(path, b"three")  # replaces
    with open(path, "rb") as f:
        assert f.read() == b"three"
    assert os.listdir(tmp_path / "out" / "npy") == ["a.npy"]


def test_local_reads_go_to_the_fetch_threads_in_batches():
    """A local raster's patches are handed to the fetch threads 8 at a time (one future per 8
    patches), every patch emitted once; a server's one at a time."""
    from pixelbeam.pipeline.limits import Limits
    from pixelbeam.pipeline.runner import pipeline_options, process_settings
    from pixelbeam.transforms.fetch import FetchDoFn, hand_off_batch, FetchLayer
    from pixelbeam.transforms.patch import INPUT, SOURCE_LAYER
    from pixelbeam.transforms.planning.grid import GridSpec, make_spec
    from pixelbeam.transforms.sources.base import PartResult, SourceInfo

    options = pipeline_options([])
    local = process_settings(Limits(2, "machine", None, 3, 10.0, "local file", local=True), options)
    server = process_settings(Limits(40, "job", 100.0, 3, 10.0, "earthengine"), options)
    assert (local.batch, server.batch) == (8, 1)

    class Source:
        def open(self, info=None):
            return self

        def fetch(self, spec, part):
            data = np.full((1, part.height, part.width), spec.col, dtype=np.uint8)
            return PartResult(data=data, mask=np.ones((part.height, part.width), bool), nbytes=data.nbytes)

    info = SourceInfo(band_names=("a",), dtypes=("uint8",))
    layer = FetchLayer(SOURCE_LAYER, INPUT, Source(), info, local)
    assert hand_off_batch([layer]) == 8 and hand_off_batch([layer, FetchLayer("b", INPUT, Source(), info, server)]) == 1
    dofn = FetchDoFn(Source(), info, local)
    dofn.setup()
    submitted = []
    submit = dofn.worker.pool.submit
    dofn.worker.pool.submit = lambda fn, specs: submitted.append(len(specs)) or submit(fn, specs)
    grid = GridSpec("EPSG:32618", (10.0, 10.0), patch_size=(4, 4))
    dofn.start_bundle()
    emitted = []
    for col in range(20):
        emitted += [p.spec.col for p in dofn.process(make_spec(grid, "EPSG:32618", 0, col, "r"))]
    emitted += [wv.value.spec.col for wv in dofn.finish_bundle()]
    dofn.worker.pool.submit = submit
    assert submitted == [8, 8, 4] and sorted(emitted) == list(range(20))


def test_manifest_rows_hold_plain_python_values():
    """A numpy scalar in a row (valid_fraction was numpy.float64) made Beam pickle every row
    between stages; the value stays numpy's rounding of the fraction."""
    from pixelbeam.transforms.outcomes import written_row
    from pixelbeam.transforms.patch import Patch
    from pixelbeam.transforms.planning.grid import GridSpec, make_spec

    spec = make_spec(GridSpec("EPSG:32618", (10.0, 10.0), patch_size=(7, 7)), "EPSG:32618", 0, 0, "r")
    mask = np.zeros((7, 7), bool)
    mask.flat[:17] = True
    patch = Patch(spec=spec, data=np.zeros((1, 7, 7), np.uint8), mask=mask, band_names=("a",))
    row = written_row(patch, ["npy/x.npy"])

    def types(v):
        if isinstance(v, dict):
            return set().union(*map(types, v.values())) if v else set()
        if isinstance(v, (list, tuple)):
            return set().union(*map(types, v)) if v else set()
        return {type(v)}
    assert types(row) <= {int, float, str, bool, type(None)}, types(row)
    assert row["valid_fraction"] == float(round(np.float64(17 / 49), 6))


def test_elements_pickle_by_position_and_come_back_equal():
    """What crosses stages (PatchSpec, Patch, LayerPixels, FailedPatch) pickles as its field
    values without their names, through Beam's own coder, and decodes to an equal element."""
    import copy
    import dataclasses
    import pickle

    from apache_beam.coders import coders

    from pixelbeam.transforms.patch import FailedPatch, LayerPixels, Patch, PatchSpec

    spec = PatchSpec("r0_r123456_c654321", "r0", "EPSG:32618", (6.25, 0.0, 5e5, 0.0, -6.25, 2.7e6), 4, 4,
                     row=123456, col=654321, margin=1, start="2020-01-01", label=3, split="val",
                     tfrecord_files=("a.tfrecord.gz",), kept_files=("npy/x.npy",))
    label = LayerPixels("label", "target", np.arange(36, dtype=np.int16).reshape(1, 6, 6), np.ones((6, 6), bool),
                        ("class",), times=("t0",), requests=2, bytes=72)
    patch = Patch(spec, np.arange(108, dtype=np.uint8).reshape(3, 6, 6), np.eye(6, dtype=bool), ("B1", "B2", "B3"),
                  requests=3, retries=1, bytes=180, image_ids=("img",), more=(label,))
    failed = FailedPatch(spec, "fetch", "TransientError:503", "gave up", attempts=6)
    coder = coders.FastPrimitivesCoder()
    for element in (spec, failed, patch, label):
        encoded = coder.encode(element)
        assert b"patch_id" not in encoded and b"band_names" not in encoded and b"error_class" not in encoded
        back = coder.decode(encoded)
        assert type(back) is type(element)
        for name in (f.name for f in dataclasses.fields(element)):
            mine, theirs = getattr(back, name), getattr(element, name)
            if isinstance(theirs, np.ndarray):
                assert mine.dtype == theirs.dtype and (mine == theirs).all()
            elif name == "more":
                assert [m.name for m in mine] == ["label"] and (mine[0].data == label.data).all()
            else:
                assert mine == theirs, name
    assert len(pickle.dumps(spec)) < 240  # 229 bytes; the default pickle, with its 20 field names, was 410
    assert copy.copy(spec) == spec and hash(copy.deepcopy(spec)) == hash(spec)
    assert dataclasses.replace(spec, margin=0).margin == 0
