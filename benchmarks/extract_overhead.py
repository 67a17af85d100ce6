"""The pipeline's overhead over the raw work, measured side by side in one run.

For the demo config (and a finer grid of the same scene), times:
  raw      - the same planned patches read with rasterio window reads and saved with numpy.save
             in a plain loop (one process, one thread: the least work that gives the same files);
  pipeline - `pixelbeam run` in-process on the local runner writing NPY only (same files),
             and writing NPY + TFRecord + manifest (the full job).
Prints seconds (median of --repeat runs) and the ratio pipeline / raw.

    .venv/bin/python benchmarks/extract_overhead.py [--repeat 3] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import rasterio
from rasterio.windows import Window

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pixelbeam.pipeline.runner import pipeline_options  # noqa: E402
from pixelbeam.pipeline.config import load_config  # noqa: E402
from pixelbeam.pipeline.graph import build_pipeline  # noqa: E402
from pixelbeam.pipeline.plan import prepare_job  # noqa: E402


def raw_loop(job, out_dir: str) -> int:
    """Read every planned patch straight from the file on its native grid and np.save it."""
    os.makedirs(out_dir, exist_ok=True)
    uri = job.source.uris[0]
    indexes = list(range(1, len(job.info.band_names) + 1)) if not job.source.bands else list(job.source.bands)
    with rasterio.open(uri) as ds:
        inv = ~ds.transform
        for spec in job.specs:
            a, b, c, d, e, f = spec.fetch_transform
            col, row = inv * (c, f)
            window = Window(round(col), round(row), spec.fetch_width, spec.fetch_height)
            data = ds.read(indexes, window=window, boundless=True, fill_value=ds.nodata or 0)
            np.save(os.path.join(out_dir, f"{spec.patch_id}.npy"), data)
    return len(job.specs)


def pipeline_run(job, formats) -> None:
    import apache_beam as beam
    config = job.config.model_copy(update={"output": job.config.output.model_copy(update={"formats": formats})})
    job = dataclasses.replace(job, config=config)
    build_pipeline(job, beam.Pipeline(options=pipeline_options([]))).run().wait_until_finish()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(config_path: str, patch_size: int, repeat: int) -> dict:
    config = load_config(config_path)
    workdir = tempfile.mkdtemp(prefix="pixelbeam-bench-")
    grid = config.grid.model_copy(update={"patch_size": patch_size, "overlap": 0})
    output = config.output.model_copy(update={"path": os.path.join(workdir, "out"), "max_masked_ratio": 1.0})
    job = prepare_job(config.model_copy(update={"grid": grid, "output": output}))
    times = {"raw": [], "pipeline_npy": [], "pipeline_full": []}
    for _ in range(repeat):
        for name, fn in (("raw", lambda: raw_loop(job, os.path.join(workdir, "raw"))),
                         ("pipeline_npy", lambda: pipeline_run(job, ["npy"])),
                         ("pipeline_full", lambda: pipeline_run(job, ["npy", "tfrecord"]))):
            shutil.rmtree(workdir, ignore_errors=True)
            times[name].append(timed(fn))
    shutil.rmtree(workdir, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"patches": len(job.specs), "patch_px": patch_size, **med}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.yaml"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="64,16", help="patch sizes (px) to measure")
    parser.add_argument("--quick", action="store_true", help="smoke run: one repeat")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON (benchmarks/run_all.py)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = 1
    results = []
    print(f"{'patches':>8} {'px':>4} {'raw s':>8} {'npy s':>8} {'full s':>8} {'npy/raw':>8} {'full/raw':>9}")
    for size in map(int, args.sizes.split(",")):
        r = measure(args.config, size, args.repeat)
        results.append(r)
        print(f"{r['patches']:>8} {r['patch_px']:>4} {r['raw']:>8.3f} {r['pipeline_npy']:>8.3f} "
              f"{r['pipeline_full']:>8.3f} {r['pipeline_npy'] / r['raw']:>8.2f} {r['pipeline_full'] / r['raw']:>9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "extract_overhead", "repeat": args.repeat, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
