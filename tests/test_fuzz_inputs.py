"""Fuzzing: whatever a config or region file holds, the loaders answer with a result or their
own one-line error (ConfigError / RegionError), never another exception."""

import json

from hypothesis import HealthCheck, given, settings, strategies as st

from pixelbeam.pipeline.config import ConfigError, load_config, parse_config
from pixelbeam.transforms.planning.regions import RegionError, regions_from_geojson

KEYS = ["source", "kind", "uri", "bands", "resampling", "regions", "grid", "crs", "scale", "origin", "patch_size",
        "overlap", "margin", "min_coverage", "output", "path", "formats", "max_masked_ratio", "fetch",
        "max_concurrent_requests", "max_attempts", "timeout_s", "asset", "collection", "composite", "filters",
        "property", "op", "value", "earthengine", "raster", "native", "utm", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(KEYS))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                      st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)),
                      max_leaves=30)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_config_parsing_never_crashes(doc):
    try:
        parse_config(doc, base_dir="/tmp")
    except ConfigError as e:
        assert "\n" not in str(e)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(max_size=200))
def test_any_yaml_text_is_a_config_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "job.yaml"
    path.write_text(text)
    try:
        load_config(str(path))
    except ConfigError as e:
        assert "\n" not in str(e)


lon = st.floats(-200, 200, allow_nan=False)
lat = st.floats(-100, 100, allow_nan=False)
position = st.lists(st.one_of(lon, lat), min_size=0, max_size=3)
ring = st.lists(st.tuples(lon, lat), min_size=0, max_size=7).map(lambda pts: [list(p) for p in pts] + [list(pts[0])] if pts else [])
geometry = st.one_of(
    st.builds(lambda c: {"type": "Point", "coordinates": c}, position),
    st.builds(lambda c: {"type": "MultiPoint", "coordinates": c}, st.lists(position, max_size=4)),
    st.builds(lambda r: {"type": "Polygon", "coordinates": r}, st.lists(ring, max_size=2)),
    st.builds(lambda p: {"type": "MultiPolygon", "coordinates": p}, st.lists(st.lists(ring, max_size=2), max_size=2)),
    st.builds(lambda c: {"type": "LineString", "coordinates": c}, st.lists(position, max_size=4)),
    st.builds(lambda t: {"type": t}, st.text(max_size=8)),
    st.none(),
)
feature = st.builds(lambda g, i: {"type": "Feature", "id": i, "properties": {}, "geometry": g}, geometry,
                    st.one_of(st.none(), st.integers(0, 3), st.text(max_size=4)))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.one_of(st.builds(lambda fs: {"type": "FeatureCollection", "features": fs}, st.lists(feature, max_size=4)),
                 feature, geometry, values))
def test_region_parsing_never_crashes(doc):
    try:
        regions = regions_from_geojson(json.loads(json.dumps(doc)))
    except RegionError as e:
        assert "\n" not in str(e)
        return
    for region in regions:
        assert region.geometry.is_valid and not region.geometry.is_empty
        assert region.geometry.geom_type in ("Polygon", "MultiPolygon", "Point", "MultiPoint")
