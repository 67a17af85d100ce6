"""Shared by the STAC tests: the demo catalog, regions drawn in scene pixels, configs, and the
expected pixels of an item computed straight from its files with rasterio and numpy."""

import json
import os

import numpy as np
import pyproj
import rasterio
import yaml
from rasterio.windows import Window

from pixelbeam.testing.stac_catalog import DEMO_ITEMS, OFFSET, SCALE, SCL_INVALID, make_demo_catalog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENE = os.path.join(ROOT, "data", "RGB.byte.tif")
CLEAR = [i for i in DEMO_ITEMS if i[3] < 20]  # the items with eo:cloud_cover < 20, in time order
# Scene pixel windows (col0, row0, col1, row1) inside one native 64 px patch each: west of the
# east item, east of the west item, and where both overlap.
WEST, EAST, MIDDLE = (140, 270, 170, 300), (590, 270, 620, 300), (395, 270, 430, 300)
PATCH_ORIGIN = {WEST: (128, 256), EAST: (576, 256), MIDDLE: (384, 256)}  # (col, row) of its patch


def build_catalog(folder) -> str:
    return make_demo_catalog(str(folder))


def lonlat_box(window):
    """A GeoJSON polygon (lon/lat) of a scene pixel window."""
    with rasterio.open(SCENE) as ds:
        t, crs = ds.transform, ds.crs
    c0, r0, c1, r1 = window
    to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    ring = [to_lonlat.transform(*(t * (c, r))) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))]
    return {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}


def write_regions(path, *windows):
    features = [{"type": "Feature", "id": f"w{i}", "properties": {}, "geometry": lonlat_box(w)}
                for i, w in enumerate(windows)]
    with open(path, "w") as f:
        json.dump({"type": "FeatureCollection", "features": features}, f)
    return str(path)


def write_config(tmp_path, source, regions, name="job", **sections):
    doc = {"source": {"kind": "stac", "collections": ["sentinel-2-l2a"], "bands": ["red", "green"], **source},
           "regions": regions,
           "grid": {"crs": "native", "scale": "native", "patch_size": 64},
           "output": {"path": str(tmp_path / f"out_{name}"), "formats": ["npy"]},
           "mask": {"npy": True},
           "fetch": {"max_concurrent_requests": 4, "max_requests_per_second": 1000}}
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def item_pixels(catalog_dir, item, origin, size=64, bands=("red", "green"), invalid=SCL_INVALID):
    """(values float32 (C, H, W), valid (H, W)) of one demo item on the native patch whose
    top-left scene pixel is `origin` (col, row): a boundless window read of each band COG, its
    nodata, the SCL (twice the pixel size) looked up by integer division, dn * scale + offset."""
    item_id, _, (ic0, ir0, ic1, ir1), _, _ = item
    folder = os.path.join(str(catalog_dir), "sentinel-2-l2a", item_id)
    col, row = origin[0] - ic0, origin[1] - ir0
    dn = []
    for band in bands:
        with rasterio.open(os.path.join(folder, f"{band}.tif")) as ds:
            dn.append(ds.read(1, window=Window(col, row, size, size), boundless=True, fill_value=0))
    dn = np.stack(dn)
    with rasterio.open(os.path.join(folder, "scl.tif")) as ds:
        scl = ds.read(1)
    rows, cols = (row + np.arange(size)) // 2, (col + np.arange(size)) // 2
    inside = ((rows >= 0) & (rows < scl.shape[0]))[:, None] & ((cols >= 0) & (cols < scl.shape[1]))[None, :]
    classes = scl[np.clip(rows, 0, scl.shape[0] - 1)][:, np.clip(cols, 0, scl.shape[1] - 1)]
    valid = np.all(dn != 0, axis=0) & inside & ~np.isin(classes, invalid)
    values = dn.astype(np.float32) * np.float32(SCALE) + np.float32(OFFSET)
    return values, valid
