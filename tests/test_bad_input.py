"""Bad input: one clear line naming the field, exit status 2, no traceback, nothing written."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from pixelbeam.pipeline.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")


def base_config(tmp_path):
    return {
        "source": {"kind": "raster", "uri": LANDSAT, "bands": [1, 2, 3]},
        "regions": REGIONS,
        "grid": {"crs": "native", "scale": "native", "patch_size": 64},
        "output": {"path": str(tmp_path / "out")},
    }


def feature_collection(*geometries):
    return {"type": "FeatureCollection",
            "features": [{"type": "Feature", "properties": {}, "geometry": g} for g in geometries]}


def write_regions(tmp_path, doc):
    path = tmp_path / "regions.geojson"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def with_regions(doc):
    def change(cfg, tmp_path):
        cfg["regions"] = write_regions(tmp_path, doc)
    return change


def setter(*path, value):
    def change(cfg, tmp_path):
        node = cfg
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return change


def remover(*path):
    def change(cfg, tmp_path):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return change


def _a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


def with_layers(*edits):
    """Replaces `source:` with an input raster layer `image` and a vector target `labels` (a
    polygon over the scene), then applies (path, value) edits (value DELETE removes the key)."""
    def change(cfg, tmp_path):
        labels = tmp_path / "labels.geojson"
        labels.write_text(json.dumps({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {"class": "water"},
             "geometry": {"type": "Polygon", "coordinates": [[[-77.9, 24.2], [-77.8, 24.2], [-77.8, 24.3],
                                                              [-77.9, 24.2]]]}}]}))
        cfg.pop("source")
        cfg["layers"] = {"image": {"kind": "raster", "role": "input", "uri": LANDSAT, "bands": [1, 2, 3]},
                         "labels": {"kind": "vector", "role": "target", "path": str(labels), "property": "class",
                                    "classes": {"water": 1}}}
        for path, value in edits:
            node = cfg
            for key in path[:-1]:
                node = node.setdefault(key, {})
            if value is DELETE:
                del node[path[-1]]
            else:
                node[path[-1]] = value
    return change


DELETE = object()
EE_LAYER = {"kind": "earthengine", "role": "input", "asset": "a/b", "url": "http://127.0.0.1:9",
            "credentials": "anonymous", "project": "p"}
EE_SOURCE = {k: v for k, v in EE_LAYER.items() if k != "role"}

def laughs(levels=9, width=9):
    """A billion laughs: nested lists of one shared list, which yaml.safe_dump writes as
    anchors and aliases (a few hundred bytes standing for width ** levels values)."""
    value = ["lol"] * width
    for _ in range(levels - 1):
        value = [value] * width
    return value


def named_features(*pairs):
    return {"type": "FeatureCollection",
            "features": [{"type": "Feature", "id": rid, "properties": {}, "geometry": g} for rid, g in pairs]}


INSIDE = {"type": "Polygon", "coordinates": [[[-77.9, 24.2], [-77.8, 24.2], [-77.8, 24.3], [-77.9, 24.3], [-77.9, 24.2]]]}
FAR_AWAY = {"type": "Polygon", "coordinates": [[[10, 10], [11, 10], [11, 11], [10, 11], [10, 10]]]}
LINE = {"type": "LineString", "coordinates": [[-77.9, 24.2], [-77.8, 24.3]]}

CASES = {
    "unknown top-level key": (setter("extra", value=1), "extra: unknown key"),
    "unknown grid key": (setter("grid", "patchsize", value=64), "grid.patchsize: unknown key"),
    "missing output": (remover("output"), "output: required key is missing"),
    "missing source uri": (remover("source", "uri"), "source.uri: required key is missing"),
    "wrong type": (setter("grid", "patch_size", value="big"), "grid.patch_size: give pixels as an int or [width, height] (got 'big')"),
    "zero patch size": (setter("grid", "patch_size", value=0), "grid.patch_size: patch sizes must be at least 1"),
    "negative overlap": (setter("grid", "overlap", value=-1), "grid.overlap"),
    "overlap >= size": (setter("grid", "overlap", value=64), "grid: overlap (64 px) must be smaller"),
    "negative scale": (setter("grid", "scale", value=-10), "grid.scale: the pixel size must be positive"),
    "coverage above 1": (setter("grid", "min_coverage", value=1.5), "grid.min_coverage"),
    "unknown source kind": (setter("source", "kind", value="wms"), "source.kind: 'wms' is not a source kind"),
    "unknown crs": (setter("grid", "crs", value="EPSG:999999"), "grid.crs: 'EPSG:999999' is not a CRS"),
    "native scale with another crs": (setter("grid", "crs", value="EPSG:4326"), "grid.scale: native needs"),
    "unknown format": (setter("output", "formats", value=["tiff"]), "output.formats"),
    "no formats": (setter("output", "formats", value=[]), "output.formats: give at least one"),
    "missing raster": (setter("source", "uri", value="/nonexistent/scene.tif"), "source.uri: cannot open"),
    "band index too high": (setter("source", "bands", value=[1, 4]), "source.bands: band 4 does not exist"),
    "band name unknown": (setter("source", "bands", value=["nir"]), "source.bands: band 'nir' does not exist"),
    "unknown resampling": (setter("source", "resampling", value="smooth"), "source.resampling: 'smooth' is not a GDAL warp resampling"),
    "missing region file": (setter("regions", value="/nonexistent/regions.geojson"), "regions: file"),
    "region file not json": (with_regions("{not json"), "is not readable GeoJSON"),
    "empty region file": (with_regions({"type": "FeatureCollection", "features": []}), "has no features"),
    "line region": (with_regions(feature_collection(LINE)), "LineString is not supported"),
    "feature without geometry": (with_regions({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": None}]}), "has no geometry"),
    "lat/lon swapped": (with_regions(feature_collection({"type": "Point", "coordinates": [24.5, -95.0]})), "latitude and longitude swapped"),
    "region outside raster": (with_regions(feature_collection(FAR_AWAY)), "lies outside the source's footprint"),
    "bad bbox": (setter("regions", value=[-77, 24, -78, 25]), "regions: bbox"),
    "output under a file": (lambda cfg, tmp: cfg["output"].update(path=str(_a_file(tmp) / "out")), "output.path: "),
    "earthengine without image": (setter("source", value={"kind": "earthengine"}), "give exactly one of asset"),
    "earthengine collection without composite": (setter("source", value={"kind": "earthengine", "collection": "C"}),
                                                 "a collection needs composite"),
    "earthengine unknown filter op": (setter("source", value={"kind": "earthengine", "collection": "C", "composite": "median",
                                                              "filters": [{"property": "p", "op": "like", "value": 1}]}),
                                      "source.filters.0.op"),
    "anonymous credentials on a real url": (setter("source", value={"kind": "earthengine", "asset": "a/b",
                                                                    "credentials": "anonymous"}),
                                            "source.credentials: anonymous is only allowed for a loopback url"),
    "not a raster": (lambda cfg, tmp: cfg["source"].update(uri=str(_a_file(tmp))), "source.uri: cannot open"),
    "negative margin": (setter("grid", "margin", value=-2), "grid.margin"),
    "patch size pair of three": (setter("grid", "patch_size", value=[1, 2, 3]), "grid.patch_size: give pixels as an int or [width, height]"),
    "masked ratio above 1": (setter("output", "max_masked_ratio", value=2), "output.max_masked_ratio"),
    "zero attempts": (setter("fetch", "max_attempts", value=0), "fetch.max_attempts"),
    "zero rate": (setter("fetch", "max_requests_per_second", value=0), "fetch.max_requests_per_second"),
    "regions not a list or path": (setter("regions", value={"a": 1}), "regions: give a GeoJSON path or a [min_lon"),
    "table from an earthengine asset": (lambda cfg, tmp: cfg.update(
        source={"kind": "earthengine", "asset": "a/b"}, table={"crs": "EPSG:32618", "scale": 30}),
        "source: table: needs a collection (one row per image); give source.collection"),
    "table from earthengine without a crs": (lambda cfg, tmp: cfg.update(
        source={"kind": "earthengine", "collection": "C", "url": "http://127.0.0.1:9", "credentials": "anonymous"},
        table={}), "table.crs: an Earth Engine collection has no single native grid here"),
    "table with a composite": (lambda cfg, tmp: cfg.update(
        source={"kind": "earthengine", "collection": "C", "composite": "median"}, table={"crs": "EPSG:32618", "scale": 30}),
        "table: writes one row per image; remove source.collection_mode, composite and filter_coverage"),
    "table scale negative": (lambda cfg, tmp: cfg.update(table={"scale": [10, -10]}), "table.scale: the pixel size must be positive"),
    # issue 14: splits and balanced sampling
    "split fractions not summing to 1": (setter("split", value={"train": 0.8, "val": 0.1, "test": 0.05}),
                                         "split: train 0.8 + val 0.1 + test 0.05 = 0.95; the fractions must sum to 1"),
    "split negative fraction": (setter("split", value={"train": 0.9, "val": -0.1, "test": 0.2}),
                                "split.val: Input should be greater than or equal to 0"),
    "split fraction above 1": (setter("split", value={"train": 1.1, "val": -0.1}), "split.train: Input should be less"),
    "split unknown key": (setter("split", value={"train": 0.9, "valid": 0.1}), "split.valid: unknown key"),
    "split block below 1": (setter("split", value={"train": 1, "block": 0}), "split.block: Input should be greater"),
    "split by with fractions": (setter("split", value={"by": "name", "train": 1}),
                                "split: by: the region property decides each patch's split; remove split.train"),
    "split by a missing property": (setter("split", value={"by": "fold"}), "split.by: region 'andros-north' has no "
                                                                           "property 'fold'"),
    "split by a property unfit for file names": (setter("split", value={"by": "name"}),
                                                 "split.by: 'North Andros, Bahamas' cannot name a split"),
    "split without fractions": (setter("split", value={"seed": 3}), "split: give fractions (e.g. train: 0.8"),
    "split with a table": (lambda cfg, tmp: cfg.update(table={"times": ["2020-01-01"]}, split={"train": 1}),
                           "split: applies to patches; a table: job writes rows"),
    "per_class without label_property": (setter("sample", value={"per_class": 2}), "sample: per_class needs label_property"),
    "per_class with per_region": (setter("sample", value={"per_class": 2, "per_region": 3, "label_property": "name"}),
                                  "sample: give per_region or per_class, not both"),
    "per_class zero": (setter("sample", value={"per_class": 0, "label_property": "name"}), "sample.per_class"),
    "layer without a role": (with_layers((("layers", "image", "role"), DELETE)), "layers.image.role: required key is missing"),
    "vector layer without property": (with_layers((("layers", "labels", "property"), DELETE)),
                                      "layers.labels.property: required key is missing"),
    "target layer with bilinear resampling": (with_layers((("layers", "classes"), {
        "kind": "raster", "role": "target", "uri": LANDSAT, "bands": [1], "resampling": "bilinear"})),
        "layers.classes.resampling: a target keeps its class values, so it is resampled by nearest neighbour"),
    "two layers of one name": (lambda cfg, tmp: cfg.update(source=None, layers=[
        {"name": "image", "role": "input", "uri": LANDSAT}, {"name": "image", "role": "target", "uri": LANDSAT}]),
        "layers: two layers are named 'image'"),
    "source and layers": (lambda cfg, tmp: with_layers()(cfg, tmp) or cfg.update(source={"uri": LANDSAT}),
                          "layers: give either source (one input layer) or layers, not both"),
    "no input layer": (with_layers((("layers", "image", "role"), "target")), "layers: no layer has role input"),
    "output scaling with layers": (with_layers((("output", "scaling"), "display")),
                                   "output.scaling: with layers:, give it per layer"),
    "scaling a target": (with_layers((("layers", "classes"), {"kind": "raster", "role": "target", "uri": LANDSAT,
                                                              "scaling": "display"})),
                         "layers.classes.scaling: a target keeps its values"),
    "averaging a target collection": (with_layers((("layers", "classes"), {
        "kind": "raster", "role": "target", "uri": [LANDSAT, LANDSAT], "composite": "median"})),
        "layers.classes.composite: median would average class values"),
    "unknown layer kind": (with_layers((("layers", "labels", "kind"), "wms")),
                           "layers.labels.kind: 'wms' is not a source kind; use raster, earthengine, stac or vector"),
    "layer name not file-safe": (with_layers((("layers", "a/b"), {"uri": LANDSAT, "role": "input"})),
                                 "layers.a/b.name: a layer name starts with a letter"),
    "vector property not an attribute": (with_layers((("layers", "labels", "property"), "klass")),
                                         "layers.labels.property: 'klass' is not an attribute of"),
    "class not in classes": (with_layers((("layers", "labels", "classes"), {"land": 2})),
                             "layers.labels.classes: feature 0 has class 'water', which is not among the classes (land)"),
    "class name without classes": (with_layers((("layers", "labels", "classes"), DELETE)),
                                   "layers.labels.property: feature 0 has class 'water', not a number"),
    "missing vector file": (with_layers((("layers", "labels", "path"), "/nonexistent/labels.gpkg")),
                            "layers.labels.path: file '/nonexistent/labels.gpkg' does not exist"),
    "ignore buffer without value": (with_layers((("layers", "labels", "ignore_buffer"), 2)),
                                    "layers.labels: ignore_buffer needs ignore_value"),
    "band of a layer": (with_layers((("layers", "image", "bands"), [1, 4])), "layers.image.bands: band 4 does not exist"),
    "scaling of a vector layer": (with_layers((("layers", "labels", "scaling"), "display")),
                                  "layers.labels.scaling: a vector layer burns the values it is given"),
    "fetch of a vector layer": (with_layers((("layers", "labels", "fetch"), {"max_concurrent_requests": 2})),
                                "layers.labels.fetch: a vector layer is rasterized locally"),
    "mask.unmask with layers": (with_layers((("mask", "unmask"), 0)), "mask.unmask: with layers:, give it per layer"),
    "visualization of an unknown layer": (with_layers((("output", "formats"), ["png"]),
                                                      (("output", "visualization"), {"layer": "dem"})),
                                          "output.visualization.layer: 'dem' is not a layer"),
    "earth engine layers of one project disagree": (with_layers(
        (("layers", "ee1"), {**EE_LAYER, "fetch": {"max_concurrent_requests": 4}}),
        (("layers", "ee2"), {**EE_LAYER, "role": "target"})),
        "layers.ee2.fetch: layers 'ee1' and 'ee2' share one Earth Engine project"),
    # issue 15
    "grid crs on the other side of the Earth": (lambda cfg, tmp: cfg["grid"].update(crs="EPSG:32660", scale=300),
                                                "grid.crs: EPSG:32660 would write the patches of regions 'andros-central', 'andros-north', "
                                                "'exuma-sound', 'sample-points' upside down or mirrored"),
    "patch of 30,000 px over the memory budget": (setter("grid", "patch_size", value=30000),
                                                  "grid.patch_size: a 30000x30000 px patch (margin included) takes "
                                                  "3.4 GiB of a worker's memory, over fetch.max_patch_bytes (512 MiB)"),
    "patch of a million px over the memory budget": (setter("grid", "patch_size", value=10**6),
                                                     "grid.patch_size: a 1000000x1000000 px patch (margin included) "
                                                     "takes 3.6 TiB"),
    "margin counts in the memory budget": (lambda cfg, tmp: cfg["grid"].update(patch_size=64, margin=8) or cfg.update(
        fetch={"max_patch_bytes": 64 * 64 * 4}), "grid.patch_size: a 80x80 px patch (margin included) takes 25 KiB"),
    "every image of a collection counts in the memory budget": (lambda cfg, tmp: cfg.update(
        source={"images": [{"uri": LANDSAT, "time": "2020-01-01"}, {"uri": LANDSAT, "time": "2020-02-01"}],
                "collection_mode": "stack", "bands": [1, 2, 3]}, fetch={"max_patch_bytes": 20000}),
        "takes 32 KiB of a worker's memory, over fetch.max_patch_bytes (19.5 KiB)"),
    "every layer counts in the memory budget": (with_layers((("fetch",), {"max_patch_bytes": 64 * 64 * 4})),
                                                "takes 24 KiB of a worker's memory; layer 'image' 16 KiB, over "
                                                "fetch.max_patch_bytes (16 KiB)"),
    "memory budget of one layer": (with_layers((("layers", "image", "fetch"), {"max_patch_bytes": 10**9})),
                                   "layers.image.fetch.max_patch_bytes: a patch holds every layer in one worker's "
                                   "memory; give it in the top-level fetch:"),
    "memory budget of zero": (setter("fetch", "max_patch_bytes", value=0),
                              "fetch.max_patch_bytes: Input should be greater than or equal to 1"),
    "pixels of a nanometre": (lambda cfg, tmp: cfg["grid"].update(crs="EPSG:32618", scale=1e-9),
                              "grid.scale: pixels of 1e-09 CRS units make about 3.3e+24 patches (region 'exuma-sound' "
                              "alone 1.5e+24; the plan stops at 1,000,000,000); give grid.scale in the CRS's units"),
    "alias bomb in regions": (setter("regions", value=laughs()), "regions: YAML aliases (*name) expand the config to "),
    "alias bomb in an unknown key": (setter("notes", value=laughs()), "notes: YAML aliases (*name) expand the config "
                                                                      "to "),
    "alias bomb in a layer": (with_layers((("layers", "image", "bands"), laughs())), "layers: YAML aliases (*name)"),
    "every region outside is named": (with_regions(named_features(
        ("far-a", FAR_AWAY), ("inside", INSIDE), ("far-b", {"type": "Point", "coordinates": [0.0, 0.0]}))),
        "regions: 2 regions lie outside the source's footprint (lon/lat -78.9586, 23.5650, -76.5749, 25.5509): "
        "'far-a', 'far-b'; move them, use another source, or set regions_outside: skip to plan without them"),
    "every region past 180 is named": (with_regions(named_features(
        ("past-180", {"type": "Point", "coordinates": [181.0, 24.3]}), ("inside", INSIDE),
        ("past-90", {"type": "Polygon", "coordinates": [[[-77.9, 89], [-77.8, 89], [-77.8, 91], [-77.9, 89]]]}))),
        "regions (regions.geojson): 2 bad regions: feature 0 ('past-180'): coordinates (181.0, 24.3, 181.0, 24.3) are "
        "outside lon [-180, 180] / lat [-90, 90]; GeoJSON must be longitude, latitude in degrees (RFC 7946); "
        "feature 2 ('past-90'): coordinates (-77.9, 89.0, -77.8, 91.0) are outside"),
    "every bad region is named": (with_regions(named_features(("no-geometry", None), ("line", LINE), ("inside", INSIDE))),
                                  "regions (regions.geojson): 2 bad regions: feature 0 ('no-geometry'): has no geometry; "
                                  "give a Polygon, MultiPolygon, Point or MultiPoint; feature 1 ('line'): geometry type "
                                  "LineString is not supported; use polygons or points"),
    "regions_outside skip leaving no region": (lambda cfg, tmp: with_regions(named_features(("far", FAR_AWAY)))(cfg, tmp)
                                               or cfg.update(regions_outside="skip"),
                                               "regions_outside: skip left no region (1 skipped, e.g. 'far': outside "
                                               "the source's footprint"),
    "regions_outside unknown": (setter("regions_outside", value="drop"), "regions_outside: Input should be 'error' or 'skip'"),
    "regions_outside skip with a table": (lambda cfg, tmp: cfg.update(regions_outside="skip", table={"times": ["2020-01-01"]}),
                                          "regions_outside: skip applies to patches; a table: job reads every region"),
    "empty band list": (setter("source", "bands", value=[]), "source.bands: an empty list selects no band; give 1-based "
                                                             "indexes or names, or leave bands out for all (got [])"),
    "empty band list of a layer": (with_layers((("layers", "image", "bands"), [])),
                                   "layers.image.bands: an empty list selects no band"),
    "empty band list of earthengine": (setter("source", value={**EE_SOURCE, "bands": []}),
                                       "source.bands: an empty list selects no band; give band names, or leave bands "
                                       "out for all (got [])"),
    "empty band list of an earthengine collection": (setter("source", value={
        "kind": "earthengine", "collection": "C", "composite": "median", "url": "http://127.0.0.1:9",
        "credentials": "anonymous", "project": "p", "bands": []}), "source.bands: an empty list selects no band"),
    "empty band list of an earthengine layer": (with_layers((("layers", "image"), {**EE_LAYER, "bands": []})),
                                                "layers.image.bands: an empty list selects no band; give band names"),
    "empty band list of stac": (setter("source", value={"kind": "stac", "catalog": "catalog.json", "bands": []}),
                                "source.bands: give a list of 1-based band indexes or band names (stac: asset keys) (got [])"),
    "bbox of strings": (setter("regions", value=["-78", "24", "-77", "25"]),
                        "regions: give a GeoJSON path or a [min_lon, min_lat, max_lon, max_lat] bbox (got ['-78', "),
    "coordinates as strings": (with_regions(named_features(("quoted", {"type": "Polygon", "coordinates": [[
        [-77.9, 24.2], ["-77.8", 24.2], [-77.8, 24.3], [-77.9, 24.2]]]}))),
        "regions (regions.geojson): feature 0 ('quoted'): coordinates must be numbers, not str '-77.8'; write them "
        "without quotes (RFC 7946)"),
    "a point of booleans": (with_regions(named_features(("flags", {"type": "Point", "coordinates": [True, False]}))),
                            "feature 0 ('flags'): coordinates must be numbers, not bool True"),
    "NUL in a region id": (with_regions(named_features(("andros\x00north", INSIDE))),
                           "feature 0 ('andros\\x00north'): the region id holds a control character ('\\x00'); give "
                           "ids of printable characters"),
    "a newline in a region id": (with_regions(named_features(("two\nlines", INSIDE))),
                                 "the region id holds a control character ('\\n')"),
    "30 degree pixels": (lambda cfg, tmp: cfg["grid"].update(crs="EPSG:4326", scale=30),
                         "grid.scale: 30 is in degrees in EPSG:4326 (a geographic CRS: its unit is degrees), so a "
                         "64x64 px patch spans 1920 x 1920 degrees; for 30 m pixels give about 0.00027 degrees, or "
                         "crs: utm"),
    "table images_per_request on rasters": (lambda cfg, tmp: cfg.update(table={"times": ["2020-01-01"], "images_per_request": 2}),
                                            "table.images_per_request: applies to Earth Engine"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_line(name, tmp_path, capsys):
    change, expected = CASES[name]
    cfg = base_config(tmp_path)
    change(cfg, tmp_path)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["run", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("pixelbeam: error: "), err
    assert expected in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_alias_bomb_is_counted_not_expanded():
    """The count is exact and takes time linear in the file: nine levels of nine stand for
    9^9 strings and 1 + 9 + ... + 9^8 lists, plus the mapping and its key."""
    from pixelbeam.pipeline.config.yaml_limits import alias_bomb, expanded_sizes
    text = yaml.safe_dump({"regions": laughs()})
    assert len(text) < 2000
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    values = 9 ** 9 + sum(9 ** k for k in range(9))
    assert expanded_sizes(root)[id(root)] == 2 + values
    assert alias_bomb(root).startswith(f"regions: YAML aliases (*name) expand the config to {2 + values:,} values")
    assert alias_bomb(yaml.compose(yaml.safe_dump({"regions": laughs(levels=3)}), Loader=yaml.SafeLoader)) is None


def test_aliases_that_expand_little_are_fine(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(f"source: {{uri: &scene {LANDSAT}, bands: &rgb [1, 2, 3]}}\nregions: {REGIONS}\n"
                    f"grid: {{crs: native, scale: native, patch_size: 64}}\noutput: {{path: {tmp_path / 'out'}}}\n"
                    "sample: {label_property: name}\n")
    assert main(["plan", str(path)]) == 0


def test_yaml_nested_thousands_deep_is_one_line(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("regions: " + "[" * 50000 + "]" * 50000 + "\n")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == "pixelbeam: error: job.yaml: the YAML nests lists or mappings thousands deep; a config needs a few levels\n"


def test_regions_outside_skip_records_what_it_skipped(tmp_path, capsys):
    """regions_outside: skip plans the other regions and lists the skipped ones, with reasons,
    in the plan and in dataset.json; the manifest holds only the planned regions' patches."""
    cfg = base_config(tmp_path)
    cfg["regions"] = write_regions(tmp_path, named_features(
        ("far", FAR_AWAY), ("inside", INSIDE), ("past-180", {"type": "Point", "coordinates": [200.0, 10.0]})))
    cfg["regions_outside"] = "skip"
    cfg["output"]["formats"] = ["npy"]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    expected = [{"region": "past-180", "reason": "coordinates (200.0, 10.0, 200.0, 10.0) outside lon [-180, 180] / "
                                                 "lat [-90, 90]"},
                {"region": "far", "reason": "outside the source's footprint (lon/lat -78.9586, 23.5650, -76.5749, "
                                            "25.5509)"}]
    assert main(["plan", "--json", str(path)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["regions"] == 1 and plan["regions_skipped"] == expected
    assert main(["run", str(path)]) == 0
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert dataset["regions_skipped"] == expected and dataset["config"]["regions_outside"] == "skip"
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert rows and {r["region_id"] for r in rows} == {"inside"}


def test_pixels_of_degrees_over_1_are_warned_about(tmp_path, caplog):
    cfg = base_config(tmp_path)
    cfg["grid"] = {"crs": "EPSG:4326", "scale": 2, "patch_size": 4}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["plan", str(path)]) == 0
    assert [r.message for r in caplog.records if r.levelname == "WARNING"] == [
        "grid.scale: 2 is in degrees in EPSG:4326 (a geographic CRS: its unit is degrees), so a 4x4 px patch spans "
        "8 x 8 degrees; for 2 m pixels give about 1.8e-05 degrees, or crs: utm"]


@pytest.mark.parametrize("text, message", [
    ("grid: {crs: native, scale: native, patch_size: 64, patch_size: 32}",
     "job.yaml: grid: the key is given twice: 'patch_size' (line 3); give each key once"),
    ("grid: {crs: native, scale: native, patch_size: 64}\ngrid: {crs: utm}",
     "job.yaml: config: the key is given twice: 'grid' (line 4); give each key once"),
])
def test_duplicate_yaml_keys_are_refused(tmp_path, capsys, text, message):
    path = tmp_path / "job.yaml"
    path.write_text(f"source: {{uri: {LANDSAT}}}\nregions: {REGIONS}\n{text}\noutput: {{path: {tmp_path / 'out'}}}\n")
    assert main(["plan", str(path)]) == 2
    assert capsys.readouterr().err == f"pixelbeam: error: {message}\n"


def test_the_memory_budget_is_configurable(tmp_path, capsys):
    """fetch.max_patch_bytes decides: a 30,000 px patch plans once the workers have the memory."""
    cfg = base_config(tmp_path)
    cfg["grid"]["patch_size"] = 30000
    cfg["fetch"] = {"max_patch_bytes": 4 * 2**30}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["plan", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["patch_shape"] == [3, 30000, 30000]


def test_two_layers_of_one_name_in_a_yaml_mapping(tmp_path, capsys):
    """A YAML mapping keeps the last of two equal keys; the config loader refuses them instead."""
    path = tmp_path / "job.yaml"
    path.write_text(f"layers:\n  image: {{role: input, uri: {LANDSAT}}}\n  image: {{role: target, uri: {LANDSAT}}}\n"
                    f"regions: {REGIONS}\noutput: {{path: {tmp_path / 'out'}}}\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == ("pixelbeam: error: job.yaml: layers: two layers are named 'image' (line 3); give each key once "
                   "(each layer its own name)\n")
    assert not (tmp_path / "out").exists()


def test_broken_yaml_names_the_line(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("source:\n  uri: [a, b\nregions: x\n")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML at line" in err and err.count("\n") == 1


def test_missing_config_file(capsys):
    assert main(["plan", "/nonexistent/job.yaml"]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_cli_process_prints_no_traceback(tmp_path):
    cfg = base_config(tmp_path)
    cfg["source"]["bands"] = [9]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "pixelbeam", "run", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"pixelbeam: error: source.bands: band 9 does not exist in {LANDSAT!r}, which has bands 1..3"]


def test_invalid_polygon_is_repaired_with_a_warning(tmp_path, caplog):
    bowtie = {"type": "Polygon", "coordinates": [[[-78.0, 24.2], [-77.8, 24.4], [-77.8, 24.2], [-78.0, 24.4], [-78.0, 24.2]]]}
    cfg = base_config(tmp_path)
    cfg["regions"] = write_regions(tmp_path, feature_collection(bowtie))
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["plan", str(path)]) == 0
    assert any("repaired with make_valid" in r.message for r in caplog.records)


def test_gs_output_without_the_gcp_extra(tmp_path, capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_gcp(name, *args, **kwargs):
        if name.startswith(("google.cloud.storage", "apache_beam.io.gcp")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gcp)
    cfg = base_config(tmp_path)
    cfg["output"]["path"] = "gs://some-bucket/patches"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["plan", str(path)]) == 2
    assert "output.path: gs:// needs the GCP extra; pip install 'pixelbeam[gcp]'" in capsys.readouterr().err


def test_antimeridian_region_is_planned_not_rejected(tmp_path):
    from pixelbeam.transforms.planning.grid import GridSpec, plan_patches
    from pixelbeam.transforms.planning.regions import regions_from_geojson
    cross = {"type": "Polygon", "coordinates": [[[179.8, -17.2], [-179.8, -17.2], [-179.8, -16.8], [179.8, -16.8],
                                                 [179.8, -17.2]]]}
    same_shape = {"type": "Polygon", "coordinates": [[[170.8, -17.2], [171.2, -17.2], [171.2, -16.8], [170.8, -16.8],
                                                      [170.8, -17.2]]]}
    for crs in ("utm", "EPSG:3857"):
        grid = GridSpec(crs, (100.0, 100.0), patch_size=(64, 64))
        crossing = len(plan_patches(regions_from_geojson(cross), grid))
        elsewhere = len(plan_patches(regions_from_geojson(same_shape), grid))
        # read naively, the crossing polygon spans the globe (about 50,000 patches here)
        assert abs(crossing - elsewhere) <= 0.1 * elsewhere, (crs, crossing, elsewhere)


# issue 15: options that neither pixelbeam nor Beam knows are refused, not handed to Beam
@pytest.mark.parametrize("args, expected", [
    (["--ovrwrite"], "pixelbeam: error: --ovrwrite: neither a pixelbeam option nor a Beam pipeline option; "
                     "did you mean --overwrite?"),
    (["--direct_num_workerz=2"], "--direct_num_workerz: neither a pixelbeam option nor a Beam pipeline option; "
                                 "did you mean --direct_num_workers?"),
    (["--max_failed_fractoin", "0.5"], "did you mean --max_failed_fraction?"),
])
def test_unknown_options_are_refused(args, expected, tmp_path, capsys):
    cfg = base_config(tmp_path)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_unknown_beam_options_are_refused_by_the_api(tmp_path):
    import pixelbeam
    from pixelbeam.pipeline.config import ConfigError
    with pytest.raises(ConfigError, match="--ovrwrite: neither a pixelbeam option nor a Beam pipeline option"):
        pixelbeam.run(base_config(tmp_path), beam_args=["--ovrwrite"])
    assert not (tmp_path / "out").exists()


# issue 15: output folders that cannot hold outputs, or that hold the user's own files
def _dangling_link(cfg, tmp_path):
    os.symlink(tmp_path / "nowhere" / "target", tmp_path / "link")
    cfg["output"]["path"] = str(tmp_path / "link")


OUTPUT_CASES = {
    "empty output path": (setter("output", "path", value=""), "output.path: is empty; give a folder"),
    "blank output path": (setter("output", "path", value="  "), "output.path: is empty; give a folder"),
    "output under /proc": (setter("output", "path", value="/proc/pixelbeam-out"),
                           "output.path: '/proc/pixelbeam-out' is on the kernel's 'proc' filesystem"),
    "output under /sys": (setter("output", "path", value="/sys/kernel/pixelbeam"), "is on the kernel's 'sys' filesystem"),
    "output under /dev": (setter("output", "path", value="/dev/pixelbeam-out"), "is on the kernel's 'dev' filesystem"),
    "output a dangling symlink": (_dangling_link, "is a symlink to"),
}


@pytest.mark.parametrize("name", sorted(OUTPUT_CASES))
@pytest.mark.parametrize("command", ["plan", "run"])
def test_unwritable_output_paths_are_one_line(name, command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    change, expected = OUTPUT_CASES[name]
    cfg = base_config(tmp_path)
    change(cfg, tmp_path)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    before = sorted(os.listdir(tmp_path))
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pixelbeam: error: ") and expected in err, err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written (not into the config's folder either)


def test_an_output_on_dev_shm_is_allowed(tmp_path):
    """/dev/shm is a tmpfs (the benchmarks' scratch outputs), not the kernel's /dev."""
    from pixelbeam.pipeline.output_folder import check_output_path
    import tempfile
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        check_output_path(os.path.join(shm, "out"))  # raises on refusal


def test_a_folder_of_the_users_own_files_is_refused(tmp_path, capsys):
    cfg = base_config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_text("my own notes\n")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for args in (["run", str(path)], ["run", str(path), "--overwrite"], ["plan", str(path)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err == (f"pixelbeam: error: output.path: {str(out)!r} holds files pixelbeam did not write "
                       "(manifest.jsonl); give an empty or new folder (pixelbeam never writes among, nor replaces, "
                       "a folder's own files)\n")
    assert os.listdir(out) == ["manifest.jsonl"] and (out / "manifest.jsonl").read_text() == "my own notes\n"


def test_overwrite_deletes_only_what_pixelbeam_wrote(tmp_path, capsys):
    cfg = base_config(tmp_path)
    cfg["output"]["formats"] = ["tfrecord", "npy", "png"]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 0
    out = tmp_path / "out"
    first = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    mine = ["npy/mine.npy", "npy/keep/deep.npy", "png/holiday.png", "tfrecord/my-records.tfrecord.gz",
            "stats/my-stats.json", "notes.txt"]
    for name in mine:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"the user's own " + name.encode())
    cfg["grid"]["patch_size"] = 48  # other patches: none of the first run's files is rewritten
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--overwrite"]) == 0
    for name in mine:
        assert (out / name).read_bytes() == b"the user's own " + name.encode(), name
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(r["width"] == 48 for r in rows)
    rewritten = {f for r in rows for f in r["files"] if "*" not in f}
    assert rewritten and all(os.path.exists(out / f) for f in rewritten)
    now = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    left = {str(p) for p in first if str(p) in now and p.parts[0] in ("npy", "png", "tfrecord", "stats")}
    assert left - rewritten == set()  # every per-patch file, shard and statistic of the first run is gone


# issue 15: inputs that raised a traceback (exit 1) instead of one line (exit 2)
DEGENERATE_RING_WITH_A_HOLE = {"type": "Polygon", "coordinates": [
    [[-78.0, 24.2], [-78.0, 24.2], [-78.0, 24.2], [-78.0, 24.2]],
    [[-77.95, 24.25], [-77.9, 24.25], [-77.9, 24.3], [-77.95, 24.25]]]}

TRACEBACK_CASES = {
    "degenerate exterior ring with a hole": (with_regions(feature_collection(DEGENERATE_RING_WITH_A_HOLE)),
                                             "invalid geometry (Too few points in geometry component"),
    "features not a list": (with_regions({"type": "FeatureCollection", "features": {"a": 1}}),
                            "the FeatureCollection's features is dict, not a list of Features"),
    "features a string": (with_regions({"type": "FeatureCollection", "features": "abc"}),
                          "the FeatureCollection's features is str, not a list of Features"),
    "feature not an object": (with_regions({"type": "FeatureCollection", "features": ["abc"]}),
                              "feature 0 is str, not a GeoJSON Feature object"),
    "properties not an object": (with_regions({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": [1], "geometry": FAR_AWAY}]}), "feature 0: properties is list, not an object"),
}


@pytest.mark.parametrize("name", sorted(TRACEBACK_CASES))
def test_inputs_that_raised_tracebacks_are_one_line(name, tmp_path, capsys):
    change, expected = TRACEBACK_CASES[name]
    cfg = base_config(tmp_path)
    change(cfg, tmp_path)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pixelbeam: error: ") and expected in err, err
    assert not (tmp_path / "out").exists()


def test_a_degenerate_ring_with_a_hole_is_a_region_error():
    """What tests/test_fuzz_inputs.py's hypothesis found (GEOSException from make_valid), kept explicitly."""
    from pixelbeam.transforms.planning.regions import RegionError, regions_from_geojson
    with pytest.raises(RegionError, match="cannot be repaired .*; fix the polygon"):
        regions_from_geojson(DEGENERATE_RING_WITH_A_HOLE)


def test_a_config_that_is_not_utf8_or_not_a_file(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(f"# caf\xe9\nsource: {{uri: {LANDSAT}}}\nregions: {REGIONS}\noutput: {{path: o}}\n".encode("latin-1"))
    assert main(["plan", str(path)]) == 2
    assert capsys.readouterr().err == "pixelbeam: error: latin1.yaml: not UTF-8 text (byte 5); save the config as UTF-8\n"
    assert main(["plan", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the config (Is a directory)" in err


def test_emulate_refuses_a_non_loopback_host_in_one_line(capsys):
    assert main(["emulate", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err == ("pixelbeam emulate: error: --host: the EE emulator only binds loopback addresses, not '0.0.0.0'; "
                   "give 127.0.0.1, ::1 or localhost\n")


def test_emulate_help_names_the_command(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["emulate", "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage: pixelbeam emulate [-h] [--host HOST]")


def test_an_unexpected_error_is_one_line_that_says_it_is_a_bug(tmp_path, capsys, monkeypatch):
    from pixelbeam.pipeline import api

    def broken(*args, **kwargs):
        raise RuntimeError("internal state\nwith a second line")
    monkeypatch.setattr(api, "plan", broken)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path)))
    assert main(["plan", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == ("pixelbeam: internal error (a bug in pixelbeam, not in your input): RuntimeError: internal state; "
                   "rerun with --verbose for the details, and please report it\n")
    assert main(["plan", "--verbose", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "with a second line" in err
    assert err.splitlines()[-1].startswith("pixelbeam: internal error (a bug in pixelbeam")


def test_ctrl_c_in_the_api_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    from pixelbeam.pipeline import api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(api, "run", interrupted)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path)))
    assert main(["run", str(path)]) == 130
    assert capsys.readouterr().err == ("pixelbeam: interrupted; outputs of earlier completed runs are kept, and "
                                       "rerunning the same command resumes\n")


CTRL_C_RUN = """
import signal, sys, threading
# Ctrl-C as in a terminal: a test run started in the background by a non-interactive shell
# (`nohup make test &`) hands its children SIGINT ignored, and Python leaves it ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
import pixelbeam.transforms.sources.raster as raster
real, started = raster.read_onto_grid, threading.Event()
def slow(*args, **kwargs):  # the first patch reads; every later one waits (a slow server)
    if started.is_set():
        threading.Event().wait()
    started.set()
    return real(*args, **kwargs)
raster.read_onto_grid = slow
from pixelbeam.pipeline.cli import main
sys.exit(main())  # as the console script calls it
"""


def test_ctrl_c_during_a_run_is_one_line_exit_130_and_keeps_earlier_runs(tmp_path):
    import signal
    import time
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path)))
    assert main(["run", str(path)]) == 0  # a completed run
    out = tmp_path / "out"
    files = sorted((out / "npy").iterdir())
    for p in files[:3]:  # the rerun has these to fetch again
        p.unlink()
    kept = {p: p.read_bytes() for p in files[3:]}
    manifest = (out / "manifest.jsonl").read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_RUN, "run", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not (out / "_running.json").exists() and proc.poll() is None:  # the rerun has started
            time.sleep(0.05)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)  # a hang guard, not a timing check
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == ("pixelbeam: interrupted; outputs of earlier completed runs are kept, and "
                                    "rerunning the same command resumes"), err
    assert {p: p.read_bytes() for p in files[3:]} == kept and (out / "manifest.jsonl").read_bytes() == manifest
    assert main(["run", str(path)]) == 0  # resumes: the three deleted patches come back
    assert all(p.exists() for p in files)


def test_a_reader_that_closes_the_pipe_is_no_error():
    """`pixelbeam plan cfg | head`: the reader went away; no traceback, no "internal error" line
    (before: BrokenPipeError reported as a bug), exit 141 as a shell would report it."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before anything is written: the first write meets a broken pipe
    try:
        proc = subprocess.run([sys.executable, "-m", "pixelbeam", "plan", os.path.join(ROOT, "configs", "demo.yaml")],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=600)
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 141


def test_a_recorded_config_with_the_default_empty_band_list_still_loads(tmp_path):
    """dataset.json records every key, defaults included: an Earth Engine source's `bands: []`
    (every band) there is no empty list given by a user."""
    from pixelbeam.pipeline.config import ConfigError, parse_config
    doc = base_config(tmp_path)
    doc["source"] = dict(EE_SOURCE)
    recorded = parse_config(doc).model_dump(mode="json")
    assert recorded["source"]["bands"] == []
    assert parse_config(recorded, recorded=True).source.bands == []
    with pytest.raises(ConfigError, match="source.bands: an empty list selects no band"):
        parse_config(recorded)
