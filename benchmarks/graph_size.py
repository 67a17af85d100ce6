"""How big the job graph gets with many points: Dataflow refuses graphs over 10 MB. Local runs
embed the plan (cells, regions, sample, a table's pixel groups) in the graph; Dataflow runs
stage it as files under --temp_location (transforms/planning/staged.py), so their graph stays small.

For N random points over the bundled scene, prints the size of the pipeline proto (what
`pixelbeam.pipeline.dataflow.graph_size_problem` checks), embedded and staged, for centred, labelled
32 px patches and for a point table, and the time to plan and build. No runner is started.

    .venv/bin/python benchmarks/graph_size.py            # 20,000 and 200,000 points (~1 min)
    .venv/bin/python benchmarks/graph_size.py --quick    # 2,000 points
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")


def write_points(folder: str, n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(-78.2, -77.2, n), rng.uniform(24.0, 25.0, n)
    features = [{"type": "Feature", "properties": {"name": f"p{i}", "label": i % 7},
                 "geometry": {"type": "Point", "coordinates": [float(x), float(y)]}} for i, (x, y) in enumerate(zip(lon, lat))]
    path = os.path.join(folder, f"points-{n}.geojson")
    with open(path, "w") as f:
        json.dump({"type": "FeatureCollection", "features": features}, f)
    return path


def graph_bytes(pipeline) -> int:
    return len(pipeline.to_runner_api().SerializeToString())


def measure(n: int, folder: str) -> dict:
    import apache_beam as beam
    from pixelbeam.pipeline.runner import pipeline_options
    from pixelbeam.pipeline.config import parse_config
    from pixelbeam.pipeline.graph import build_pipeline
    from pixelbeam.pipeline.runner import fetch_settings
    from pixelbeam.transforms.planning.staged import StageTo
    from pixelbeam.pipeline.plan import prepare_job
    from pixelbeam.pipeline.tables.graph import build_table_pipeline
    from pixelbeam.pipeline.tables.plan import prepare_table_job
    points = write_points(folder, n)
    out = {"points": n}
    started = time.monotonic()
    job = prepare_job(parse_config({"source": {"uri": LANDSAT}, "regions": points, "grid": {"patch_size": 32},
                                    "sample": {"centered_on_points": True, "label_property": "label"},
                                    "output": {"path": os.path.join(folder, "patches")}}))
    out["patches_mb"] = graph_bytes(build_pipeline(job, beam.Pipeline())) / 1e6
    out["patches_s"] = time.monotonic() - started
    named = StageTo(os.path.join(folder, "plan"), write=False)  # names the files, writes none
    out["patches_staged_mb"] = graph_bytes(build_pipeline(job, beam.Pipeline(), stage_to=named)) / 1e6
    started = time.monotonic()
    job = prepare_table_job(parse_config({"source": {"uri": [LANDSAT]}, "regions": points,
                                          "table": {"times": ["2020-01-01"], "point_id_property": "name"},
                                          "output": {"path": os.path.join(folder, "table")}}))
    options = pipeline_options([])
    out["table_mb"] = graph_bytes(build_table_pipeline(job, beam.Pipeline(), fetch_settings(job, options))) / 1e6
    out["table_s"] = time.monotonic() - started
    out["table_staged_mb"] = graph_bytes(build_table_pipeline(job, beam.Pipeline(), fetch_settings(job, options),
                                                              stage_to=named)) / 1e6
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 points only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    args = parser.parse_args(argv)
    sizes = [2_000] if args.quick else args.sizes
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(n, folder) for n in sizes]
    print(f"{'points':>9}  {'patches: embedded':>17}  {'staged':>8}  {'table: embedded':>15}  {'staged':>8}"
          "  (Dataflow limit 10 MB)")
    for r in rows:
        print(f"{r['points']:>9,}  {r['patches_mb']:>14.2f} MB  {r['patches_staged_mb']:>5.2f} MB  "
              f"{r['table_mb']:>12.2f} MB  {r['table_staged_mb']:>5.2f} MB"
              f"   planned and built in {r['patches_s']:.1f} s / {r['table_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
