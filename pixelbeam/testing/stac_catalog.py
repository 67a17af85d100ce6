"""A small Sentinel-2-L2A-like static STAC catalog made from the bundled Landsat scene.

`make_demo_catalog(folder)` writes, with pystac, a self-contained catalog (`catalog.json`, a
collection `sentinel-2-l2a`, four items) over small COGs cut from data/RGB.byte.tif (CC0,
rasterio's test data; see data/README.md), so STAC jobs, tests and the tour run offline:

- assets `red`, `green`, `blue`: uint16 COGs (128 px tiles, deflate) holding
  `dn = 1000 + 40 * v + 10 * shift` where the scene's value `v` is valid and 0 (nodata) elsewhere,
  with `raster:bands` scale 0.0001, offset -0.1, nodata 0 (Earth Search's Sentinel-2 L2A
  convention: reflectance = dn * 0.0001 - 0.1);
- `scl`: a uint8 scene classification at twice the pixel size (as Sentinel-2's 20 m SCL beside
  10 m bands): 0 no data, 3 cloud shadow, 4 vegetation, 6 water, 8 / 9 cloud, drawn from the
  pixel values (stand-ins, not a real classification);
- `qa_pixel`: a uint16 Landsat-style QA bit mask at the band grid: bit 0 fill, 3 cloud,
  4 cloud shadow, 6 clear, 7 water (from the same classes);
- each item covers a window of the scene (`DEMO_ITEMS`), its footprint in `geometry`, `proj:code`,
  `proj:transform`, `proj:shape` on every asset, `eo:cloud_cover` and a date in June 2023.

Item ids and asset keys follow Earth Search (https://earth-search.aws.element84.com/v1), so a
job made for this catalog runs against the public API with only its url changed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Optional

import numpy as np

COLLECTION = "sentinel-2-l2a"
BANDS = (("red", 1), ("green", 2), ("blue", 3))
SCALE, OFFSET = 0.0001, -0.1
# id, datetime, scene window (col0, row0, col1, row1) in pixels, eo:cloud_cover, value shift
DEMO_ITEMS = (
    ("S2A_18RUK_20230605_0_L2A", "2023-06-05T15:50:00Z", (0, 0, 791, 718), 8.0, 0),
    ("S2B_18RUK_20230610_0_L2A", "2023-06-10T15:50:00Z", (0, 0, 420, 718), 3.5, 6),
    ("S2A_18RUK_20230615_0_L2A", "2023-06-15T15:50:00Z", (380, 0, 791, 718), 12.0, 12),
    ("S2B_18RUK_20230620_0_L2A", "2023-06-20T15:50:00Z", (0, 0, 791, 718), 64.0, 18),
)
SCL_INVALID = (0, 1, 3, 8, 9, 10)  # no data, saturated, cloud shadow, clouds (medium, high), cirrus
QA_BITS = {"fill": 0, "cloud": 3, "shadow": 4, "clear": 6, "water": 7}


def default_scene() -> str:
    """data/RGB.byte.tif of the repository this package runs from."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "data", "RGB.byte.tif"))


def classes(v: np.ndarray, shift: int) -> np.ndarray:
    """Stand-in SCL classes from the scene's values `v` (0 = nodata) and an item's shift."""
    k = (v.astype(np.int64) + 7 * shift) % 50
    return np.select([v == 0, k < 6, k < 10, v < 45, v > 120], [0, 9, 8, 3, 6], 4).astype(np.uint8)


def qa_bits(scl: np.ndarray) -> np.ndarray:
    """A Landsat-style QA bit mask from SCL-like classes."""
    b = QA_BITS
    return ((scl == 0).astype(np.uint16) << b["fill"] | np.isin(scl, (8, 9)).astype(np.uint16) << b["cloud"]
            | (scl == 3).astype(np.uint16) << b["shadow"] | (scl == 6).astype(np.uint16) << b["water"]
            | np.isin(scl, (4, 6)).astype(np.uint16) << b["clear"]).astype(np.uint16)


def write_cog(path: str, data: np.ndarray, crs, transform, nodata: Optional[float], blocksize: int = 128) -> None:
    import rasterio
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata,
                       blocksize=blocksize, compress="deflate", overviews="NONE") as out:
        out.write(data, 1)


def footprint(crs, transform, width: int, height: int) -> dict:
    """The window's outline in lon/lat (GeoJSON), edges densified before projecting."""
    import shapely
    from rasterio.warp import transform_geom
    x0, y0 = transform * (0, 0)
    x1, y1 = transform * (width, height)
    box = shapely.segmentize(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), abs(x1 - x0) / 8)
    geom = transform_geom(crs, "EPSG:4326", shapely.geometry.mapping(box))
    ring = [[round(x, 6), round(y, 6)] for x, y in geom["coordinates"][0]]
    return {"type": "Polygon", "coordinates": [ring]}


def make_demo_catalog(folder: str, scene: Optional[str] = None, items=DEMO_ITEMS) -> str:
    """Write the catalog and its COGs under `folder`; returns the path of catalog.json."""
    import pystac
    import rasterio
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform
    scene, folder = scene or default_scene(), os.path.abspath(folder)
    with rasterio.open(scene) as src:
        crs, full = src.crs, src.read()
        collection = pystac.Collection(
            id=COLLECTION, description="Sentinel-2 L2A stand-ins cut from rasterio's RGB.byte.tif (offline tests)",
            extent=pystac.Extent(pystac.SpatialExtent([list(_lonlat_bounds(src))]),
                                 pystac.TemporalExtent([[dt.datetime(2023, 6, 1, tzinfo=dt.timezone.utc), None]])),
            license="CC0-1.0")
        for item_id, when, (c0, r0, c1, r1), cloud, shift in items:
            window = Window(c0, r0, c1 - c0, r1 - r0)
            transform = window_transform(window, src.transform)
            values = full[:, r0:r1, c0:c1]
            item = pystac.Item(id=item_id, geometry=footprint(crs, transform, c1 - c0, r1 - r0), bbox=None,
                               datetime=dt.datetime.fromisoformat(when.replace("Z", "+00:00")),
                               properties={"eo:cloud_cover": cloud, "platform": f"sentinel-2{item_id[2].lower()}",
                                           "constellation": "sentinel-2", "s2:mgrs_tile": "18RUK",
                                           "sat:relative_orbit": 11 if shift % 12 == 0 else 54})
            item.bbox = list(_bbox(item.geometry))
            folder_of = os.path.join(folder, COLLECTION, item_id)
            proj = {"proj:code": f"EPSG:{crs.to_epsg()}", "proj:shape": [r1 - r0, c1 - c0],
                    "proj:transform": list(transform)[:6]}
            for key, band in BANDS:
                v = values[band - 1]
                dn = np.where(v > 0, 1000 + 40 * v.astype(np.uint16) + 10 * shift, 0).astype(np.uint16)
                path = os.path.join(folder_of, f"{key}.tif")
                write_cog(path, dn, crs, transform, nodata=0)
                item.add_asset(key, pystac.Asset(path, media_type=pystac.MediaType.COG, roles=["data"], extra_fields={
                    **proj, "raster:bands": [{"data_type": "uint16", "nodata": 0, "scale": SCALE, "offset": OFFSET,
                                              "spatial_resolution": round(abs(transform.a), 3)}]}))
            coarse = values[2][::2, ::2]  # SCL at twice the pixel size
            scl = classes(coarse, shift)
            scl_transform = transform * transform.scale(2, 2)
            write_cog(os.path.join(folder_of, "scl.tif"), scl, crs, scl_transform, nodata=0)
            item.add_asset("scl", pystac.Asset(os.path.join(folder_of, "scl.tif"), media_type=pystac.MediaType.COG,
                                               roles=["data"], extra_fields={
                "proj:code": proj["proj:code"], "proj:shape": list(scl.shape),
                "proj:transform": list(scl_transform)[:6], "raster:bands": [{"data_type": "uint8", "nodata": 0}]}))
            fine_scl = np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)[:r1 - r0, :c1 - c0]
            write_cog(os.path.join(folder_of, "qa_pixel.tif"), qa_bits(fine_scl), crs, transform, nodata=None)
            item.add_asset("qa_pixel", pystac.Asset(os.path.join(folder_of, "qa_pixel.tif"),
                                                    media_type=pystac.MediaType.COG, roles=["metadata"],
                                                    extra_fields={**proj, "raster:bands": [{"data_type": "uint16"}]}))
            item.stac_extensions = ["https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                                    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
                                    "https://stac-extensions.github.io/eo/v1.1.0/schema.json"]
            collection.add_item(item)
    catalog = pystac.Catalog(id="pixelbeam-demo", description="pixelbeam's offline STAC demo catalog")
    catalog.add_child(collection)
    catalog.normalize_hrefs(folder)
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return os.path.join(folder, "catalog.json")


def write_item_collection(catalog_path: str, out_path: str) -> str:
    """The catalog's items as one ItemCollection file (GeoJSON FeatureCollection), absolute hrefs."""
    import pystac
    items = list(pystac.Catalog.from_file(catalog_path).get_items(recursive=True))
    for item in items:
        item.make_asset_hrefs_absolute()
    doc = pystac.ItemCollection(items).to_dict(transform_hrefs=False)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    return out_path


def _lonlat_bounds(src) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds
    return transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)


def _bbox(geometry: dict) -> tuple[float, float, float, float]:
    xs = [p[0] for p in geometry["coordinates"][0]]
    ys = [p[1] for p in geometry["coordinates"][0]]
    return min(xs), min(ys), max(xs), max(ys)
