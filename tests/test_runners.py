"""Same results on every runner: Beam's FnApiRunner in memory (one process) and in
multi-processing mode (two SDK worker processes, every element crossing a process boundary
through its coder) write byte-identical NPY files and the same TFRecord examples, for the raster
source and for the Earth Engine source against the local emulator."""

import os

import yaml

from outputs_compare import assert_same_outputs
from pixelbeam.pipeline.cli import main
from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")
ASSET = "projects/pixelbeam-test/assets/landsat"
MULTI_PROCESSING = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]


def write_config(tmp_path, name, source, grid):
    doc = {"source": source, "regions": REGIONS, "grid": grid,
           "output": {"path": str(tmp_path / name), "formats": ["tfrecord", "npy"], "max_masked_ratio": 0.9},
           "fetch": {"max_concurrent_requests": 4, "timeout_s": 20}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def run_both(tmp_path, source, grid, extra=()):
    one = write_config(tmp_path, "in_memory", source, grid)
    two = write_config(tmp_path, "multi_processing", source, grid)
    assert main(["run", one, *extra]) == 0
    assert main(["run", two, *extra, *MULTI_PROCESSING]) == 0
    return str(tmp_path / "in_memory"), str(tmp_path / "multi_processing")


def test_raster_source_same_outputs_in_memory_and_multi_processing(tmp_path):
    # a warped grid (not the file's own) so that GDAL's resampling runs in both modes
    a, b = run_both(tmp_path, {"uri": LANDSAT, "bands": [1, 2, 3], "resampling": "bilinear"},
                    {"crs": "EPSG:32618", "scale": 400, "patch_size": 32, "overlap": 4, "margin": 2})
    assert_same_outputs(a, b)


def test_earth_engine_source_same_outputs_in_memory_and_multi_processing(tmp_path):
    catalog = {"images": {ASSET: {"path": LANDSAT, "bands": ["B1", "B2", "B3"]}}}
    with EmulatorServer(catalog, EmulatorConfig(max_concurrent=8)) as server:
        a, b = run_both(tmp_path, {"kind": "earthengine", "asset": ASSET, "url": server.url,
                                   "credentials": "anonymous", "project": "pixelbeam-test"},
                        {"crs": "EPSG:32618", "scale": 300, "patch_size": 32})
    assert_same_outputs(a, b)
