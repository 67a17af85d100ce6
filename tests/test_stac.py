"""STAC source end to end, offline: a static catalog of small COGs cut from the bundled scene
(pixelbeam.testing.stac_catalog), read from disk, and through a local STAC API whose COGs are
served over HTTP with Range requests (pixelbeam.testing.stac_server), searched by pystac-client.
Pixels are checked against direct rasterio reads of the same files, masks and composites
against numpy, and footprint skipping and tile reads against the server's request log."""

import json
import os
import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject

from pixelbeam.pipeline.cli import main
from pixelbeam.testing.stac_catalog import DEMO_ITEMS, write_item_collection
from pixelbeam.testing.stac_server import StacApiServer
from stac_helpers import (CLEAR, EAST, MIDDLE, PATCH_ORIGIN, WEST, build_catalog, item_pixels, read_jsonl,
                          write_config, write_regions)

CLOUD_QUERY = {"eo:cloud_cover": {"lt": 20}}
SCL_MASK = {"asset": "scl", "invalid": [0, 1, 3, 8, 9, 10]}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stac")
    return build_catalog(folder)


@pytest.fixture(scope="module")
def api(catalog):
    with StacApiServer(catalog) as server:
        yield server


def load_patch(out, row):
    data = np.load(os.path.join(out, "npy", f"{row['patch_id']}.npy"))
    mask = np.load(os.path.join(out, "npy", f"{row['patch_id']}.mask.npy")).astype(bool)
    return data, mask


def patches_by_window(out, windows):
    """{window: manifest row} for the written patches, by their origin in scene pixels."""
    with rasterio.open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "RGB.byte.tif")) as ds:
        inverse = ~ds.transform
    rows = [r for r in read_jsonl(os.path.join(out, "manifest.jsonl")) if r["status"] == "written"]
    found = {}
    for r in rows:
        col, row = (round(v) for v in inverse * (r["transform"][2], r["transform"][5]))
        for w in windows:
            if PATCH_ORIGIN[w] == (col, row):
                found[w] = r
    assert set(found) == set(windows), (sorted(found), [r["patch_id"] for r in rows])
    return found


def test_stack_from_a_static_catalog_equals_direct_reads(tmp_path, catalog):
    regions = write_regions(tmp_path / "r.geojson", WEST, EAST, MIDDLE)
    cfg = write_config(tmp_path, {"catalog": catalog, "datetime": "2023-06", "query": CLOUD_QUERY, "mask": SCL_MASK,
                                  "collection_mode": "stack"}, regions)
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out_job")
    meta = json.load(open(os.path.join(out, "dataset.json")))
    assert meta["times"] == ["2023-06-05T15:50:00Z", "2023-06-10T15:50:00Z", "2023-06-15T15:50:00Z"]
    assert meta["images"] == [i[0] for i in CLEAR] and meta["dtype"] == "float32"
    folder = os.path.dirname(catalog)
    for window, row in patches_by_window(out, (WEST, EAST, MIDDLE)).items():
        data, mask = load_patch(out, row)
        assert data.shape == (3, 2, 64, 64) and mask.shape == (3, 64, 64)
        for t, item in enumerate(CLEAR):
            values, valid = item_pixels(folder, item, PATCH_ORIGIN[window])
            np.testing.assert_array_equal(mask[t], valid, err_msg=f"{window} {item[0]}")
            np.testing.assert_array_equal(data[t][:, valid], values[:, valid])
        reached = [t for t, item in enumerate(CLEAR) if mask[t].any()]
        assert row["requests"] == len(reached)  # an item whose footprint misses the patch: not requested
    assert 0 < np.mean([load_patch(out, r)[1].mean() for r in read_jsonl(os.path.join(out, "manifest.jsonl"))]) < 1


@pytest.mark.parametrize("reducer", ["median", "mean", "max"])
def test_composites_over_the_api_equal_numpy(tmp_path, catalog, api, reducer):
    regions = write_regions(tmp_path / "r.geojson", MIDDLE, WEST)
    cfg = write_config(tmp_path, {"url": api.url, "datetime": "2023-06-01/2023-06-30", "query": CLOUD_QUERY,
                                  "mask": SCL_MASK, "composite": reducer}, regions)
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out_job")
    for window, row in patches_by_window(out, (MIDDLE, WEST)).items():
        data, mask = load_patch(out, row)
        pixels = [item_pixels(os.path.dirname(catalog), item, PATCH_ORIGIN[window]) for item in CLEAR]
        values = np.stack([v for v, _ in pixels]).astype(np.float64)
        valid = np.stack([m for _, m in pixels])
        stacked = np.where(valid[:, None], values, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-masked pixels
            expected = {"median": np.nanmedian, "mean": np.nanmean, "max": np.nanmax}[reducer](stacked, axis=0)
        np.testing.assert_array_equal(mask, valid.any(axis=0))
        np.testing.assert_allclose(data[:, mask], expected[:, mask], rtol=0, atol=1e-12 if reducer != "max" else 0)
        assert np.all(data[:, ~mask] == 0)


def test_mosaic_last_valid_wins_and_item_collection_file_gives_the_same(tmp_path, catalog):
    regions = write_regions(tmp_path / "r.geojson", MIDDLE)
    items = write_item_collection(catalog, str(tmp_path / "items.json"))
    outs = []
    for name, where in (("catalog", catalog), ("items", items)):
        cfg = write_config(tmp_path, {"catalog": where, "filter": "eo:cloud_cover < 20", "mask": SCL_MASK,
                                      "collection_mode": "mosaic"}, regions, name=name)
        assert main(["run", cfg]) == 0
        outs.append(str(tmp_path / f"out_{name}"))
    row = patches_by_window(outs[0], (MIDDLE,))[MIDDLE]
    data, mask = load_patch(outs[0], row)
    expected, valid = np.zeros((2, 64, 64), np.float32), np.zeros((64, 64), bool)
    for item in CLEAR:  # time order: the last valid image wins
        values, m = item_pixels(os.path.dirname(catalog), item, PATCH_ORIGIN[MIDDLE])
        expected = np.where(m[None], values, expected)
        valid |= m
    np.testing.assert_array_equal(mask, valid)
    np.testing.assert_array_equal(data[:, valid], expected[:, valid])
    other, other_mask = load_patch(outs[1], row)
    np.testing.assert_array_equal(other, data)
    np.testing.assert_array_equal(other_mask, mask)


def test_only_the_tiles_a_patch_needs_are_requested(tmp_path, catalog):
    """Over HTTP each asset is read as its COG header and then only byte ranges holding tiles of
    the patch window. (A server of its own: GDAL caches what it read from another server's URLs.)"""
    regions = write_regions(tmp_path / "r.geojson", WEST, EAST)
    with StacApiServer(catalog) as api:
        cfg = write_config(tmp_path, {"url": api.url, "datetime": "2023-06", "query": CLOUD_QUERY, "mask": SCL_MASK,
                                      "collection_mode": "stack"}, regions, fetch={"max_concurrent_requests": 1})
        assert main(["run", cfg]) == 0
        files = {r.path for r in api.log.all() if r.path.startswith("/files/")}
        root, log = api.files_root, api.log
    assert not [f for f in files if "qa_pixel" in f]  # not named: never opened
    for item, window in ((CLEAR[1], WEST), (CLEAR[2], EAST)):  # each reaches one of the two patches
        col, row = PATCH_ORIGIN[window][0] - item[2][0], PATCH_ORIGIN[window][1] - item[2][1]
        for band in ("red", "green", "scl"):
            path = f"/files/sentinel-2-l2a/{item[0]}/{band}.tif"
            requests = [r for r in log.all(path) if r.method == "GET"]
            assert requests, (path, sorted(files))
            local = os.path.join(root, path[len("/files/"):])
            scale = 2 if band == "scl" else 1
            needed = needed_tile_ranges(local, col // scale, row // scale, 64 // scale + 1)
            header_end = requests[0].ranges[0][1]  # the first range GET holds the header (the IFD)
            for r in requests[1:]:
                for start, end in r.ranges:
                    assert start <= header_end or any(start <= e and end >= s for s, e in needed), (band, r, needed)
            if band != "scl":  # the SCL file is smaller than GDAL's first read
                assert log.bytes(path) < os.path.getsize(local) / 2


def test_items_whose_footprint_misses_a_patch_are_not_requested(tmp_path, catalog):
    """Both half-scene items are listed (the regions span them), but the west patch sends no
    request at all for the east item, and the east patch none for the west item."""
    from pixelbeam.pipeline.config import load_config
    from pixelbeam.pipeline.plan import prepare_job
    from pixelbeam.transforms.sources.base import assemble_patch, patch_parts
    regions = write_regions(tmp_path / "r.geojson", WEST, EAST)
    with StacApiServer(catalog) as api:
        cfg = write_config(tmp_path, {"url": api.url, "query": CLOUD_QUERY, "collection_mode": "stack"}, regions)
        job = prepare_job(load_config(cfg))
        assert [im.image_id for im in job.info.collection.images] == [i[0] for i in CLEAR]
        reader = job.source.open(job.info)
        api.log.clear()
        for spec in job.specs:
            east_patch = spec.transform[2] > 101985 + 400 * 300.04  # the patch origin east of scene column 400
            skipped = CLEAR[1][0] if east_patch else CLEAR[2][0]
            parts = patch_parts(spec, job.info)
            assert {job.info.collection.images[p.image].image_id for p in parts} == {i[0] for i in CLEAR} - {skipped}
            before = {r.path for r in api.log.all()}
            patch = assemble_patch(spec, job.info, parts, [reader.fetch(spec, p) for p in parts])
            touched = {r.path for r in api.log.all()} - before
            assert touched and not [p for p in touched if skipped in p], touched
            step = [i[0] for i in CLEAR].index(skipped)
            assert not patch.mask[step].any() and patch.mask[[t for t in range(3) if t != step]].any()
            item = reader.by_id[skipped]  # asked directly, the reader still sends nothing
            result = reader.fetch_item(spec, parts[0], item)
            assert result.nbytes == 0 and not result.mask.any()
            assert {r.path for r in api.log.all()} - before == touched
        reader.close()


def needed_tile_ranges(path, col, row, size):
    """Byte ranges (inclusive) of the COG tiles a window touches, from the TIFF's block tags."""
    with rasterio.open(path) as ds:
        bw, bh = ds.block_shapes[0][1], ds.block_shapes[0][0]
        out = []
        for ty in range(max(row, 0) // bh, min(row + size, ds.height) // bh + 1):
            for tx in range(max(col, 0) // bw, min(col + size, ds.width) // bw + 1):
                offset = ds.get_tag_item(f"BLOCK_OFFSET_{tx}_{ty}", "TIFF", bidx=1)
                length = ds.get_tag_item(f"BLOCK_SIZE_{tx}_{ty}", "TIFF", bidx=1)
                if offset and length:
                    out.append((int(offset), int(offset) + int(length) - 1))
    return out


def test_other_grid_equals_gdal_warp_of_each_item(tmp_path, catalog, api):
    regions = write_regions(tmp_path / "r.geojson", MIDDLE)
    cfg = write_config(tmp_path, {"url": api.url, "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]},
                                  "collection_mode": "stack", "rescale": False, "bands": ["red"]}, regions,
                       grid={"crs": "EPSG:32618", "scale": 450, "patch_size": 24})
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out_job")
    rows = [r for r in read_jsonl(os.path.join(out, "manifest.jsonl")) if r["status"] == "written"]
    assert rows
    for row in rows:
        data, mask = load_patch(out, row)
        assert data.dtype == np.uint16
        for t, item in enumerate(CLEAR):
            with rasterio.open(os.path.join(os.path.dirname(catalog), "sentinel-2-l2a", item[0], "red.tif")) as ds:
                expected = np.zeros((24, 24), np.uint16)
                reproject(rasterio.band(ds, 1), expected, dst_transform=Affine(*row["transform"]),
                          dst_crs="EPSG:32618", resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
            np.testing.assert_array_equal(data[t, 0], expected)
            np.testing.assert_array_equal(mask[t], expected != 0)


def test_qa_bit_mask_equals_numpy(tmp_path, catalog):
    regions = write_regions(tmp_path / "r.geojson", WEST)
    bits = [0, 3, 4]  # fill, cloud, cloud shadow
    cfg = write_config(tmp_path, {"catalog": catalog, "query": CLOUD_QUERY, "collection_mode": "stack",
                                  "mask": {"asset": "qa_pixel", "bits": bits}}, regions)
    assert main(["run", cfg]) == 0
    out = str(tmp_path / "out_job")
    data, mask = load_patch(out, patches_by_window(out, (WEST,))[WEST])
    listed = json.load(open(os.path.join(out, "dataset.json")))["images"]
    assert listed == [CLEAR[0][0], CLEAR[1][0]]  # searched within the region's extent: not the east item
    col, row = PATCH_ORIGIN[WEST]
    for t, item in enumerate(CLEAR[:2]):
        values, valid = item_pixels(os.path.dirname(catalog), item, PATCH_ORIGIN[WEST], invalid=())
        c0, r0 = col - item[2][0], row - item[2][1]
        with rasterio.open(os.path.join(os.path.dirname(catalog), "sentinel-2-l2a", item[0], "qa_pixel.tif")) as ds:
            qa = ds.read(1, window=rasterio.windows.Window(c0, r0, 64, 64), boundless=True, fill_value=1)
        keep = (qa & sum(1 << b for b in bits)) == 0
        np.testing.assert_array_equal(mask[t], valid & keep)
        assert (valid & ~keep).any() or not valid.any()  # the bits mask something the nodata does not


def test_point_table_from_stac_items_equals_direct_reads(tmp_path, catalog):
    import pyarrow.parquet as pq
    with rasterio.open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "RGB.byte.tif")) as ds:
        t, crs = ds.transform, ds.crs
    import pyproj
    to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    pixels = [(150, 280), (600, 280), (400, 285)]  # (col, row) of the scene: west, east, both
    points = [list(to_lonlat.transform(*(t * (c + 0.5, r + 0.5)))) for c, r in pixels]
    regions = tmp_path / "points.geojson"
    regions.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": f"p{i}", "properties": {}, "geometry": {"type": "Point", "coordinates": p}}
        for i, p in enumerate(points)]}))
    cfg = write_config(tmp_path, {"catalog": catalog, "query": CLOUD_QUERY, "mask": SCL_MASK}, str(regions),
                       table={"crs": "native", "scale": "native", "group_size": 16})
    assert main(["run", cfg]) == 0
    table = pq.read_table(str(tmp_path / "out_job" / "table")).to_pylist()
    assert len(table) == len(pixels) * len(CLEAR)
    for i, (c, r) in enumerate(pixels):
        for item in CLEAR:
            values, valid = item_pixels(os.path.dirname(catalog), item, (c, r), size=1)
            got = [x for x in table if x["point_id"] == f"p{i}" and x["id"] == item[0]]
            assert len(got) == 1
            if valid[0, 0]:
                assert got[0]["red"] == pytest.approx(float(values[0, 0, 0]), abs=0) and got[0]["green"] == float(values[1, 0, 0])
            else:
                assert got[0]["red"] is None and got[0]["green"] is None
    assert any(x["red"] is None for x in table) and any(x["red"] is not None for x in table)


def test_item_order_and_ids_follow_time_not_listing(tmp_path, catalog):
    """Items are images in time order whatever order the catalog lists them in; all four without a query."""
    regions = write_regions(tmp_path / "r.geojson", MIDDLE)
    cfg = write_config(tmp_path, {"catalog": catalog, "collection_mode": "stack"}, regions)
    assert main(["plan", cfg, "--json"]) == 0
    assert main(["run", cfg]) == 0
    meta = json.load(open(str(tmp_path / "out_job" / "dataset.json")))
    assert meta["images"] == [i[0] for i in sorted(DEMO_ITEMS, key=lambda i: i[1])]
