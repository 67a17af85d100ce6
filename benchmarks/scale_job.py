"""A job of many tiny patches against the Earth Engine emulator: the launcher's plan at 10^6,
10^7 and 10^8 patches (plan only: time, peak RSS, cells, the job graph's size) and one job run
end to end (plan + fetch + WebDataset shards + manifest) with its throughput and peak RSS.

Patches are 4 x 4 px on EPSG:32618 over a 100 km square of the bundled Landsat scene, served as
an Earth Engine asset by pixelbeam's emulator (a local process on 127.0.0.1, no latency); the
pixel size is set so the square holds the number of patches asked for. Each measurement runs in
a fresh process. The end-to-end run uses Beam's DirectRunner on this machine (2 shared cores);
the default is a run that fits in a few minutes. `--run 1000000` runs 10^6 patches (about an
hour here with merged requests, 16 patches a request; its process peaked at 4.8 GB of RSS:
the in-memory runner holds a whole stage's input and output, README.md says more).
`--before REV` runs the end-to-end job again with revision REV's code, in the same sitting.

    .venv/bin/python benchmarks/scale_job.py [--plan 1000000,10000000,100000000] [--run 5000]
    .venv/bin/python benchmarks/scale_job.py --quick    # plan 10^6, run 2,000
    .venv/bin/python benchmarks/scale_job.py --plan "" --run 5000 --patches-per-request 1  # a request per patch
    .venv/bin/python benchmarks/scale_job.py --plan "" --run 60000 --before REV  # the run, then with REV's code
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

from _revisions import checkout, use_checkout  # noqa: E402  (benchmarks/, the script's own folder)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
ASSET = "projects/pixelbeam-bench/assets/landsat"
SIDE_M = 100_000.0  # the square's side
CENTER = (-77.75, 24.55)  # lon, lat inside the scene
PATCH_PX = 4


def write_config(folder: str, url: str, patches: int, out: str, per_request: int = 0) -> str:
    scale = SIDE_M / (PATCH_PX * math.sqrt(patches))  # m per px: the square holds `patches` patches
    half_lon = SIDE_M / 2 / (111_320 * math.cos(math.radians(CENTER[1])))
    half_lat = SIDE_M / 2 / 110_540
    doc = {"source": {"kind": "earthengine", "asset": ASSET, "url": url, "credentials": "anonymous",
                      "project": "pixelbeam-bench"},
           "regions": [CENTER[0] - half_lon, CENTER[1] - half_lat, CENTER[0] + half_lon, CENTER[1] + half_lat],
           "grid": {"crs": "EPSG:32618", "scale": round(scale, 6), "patch_size": PATCH_PX},
           "output": {"path": out, "formats": ["webdataset"], "shard_size_mb": 64},
           "fetch": {"max_concurrent_requests": 16, "max_requests_per_second": 100000, "timeout_s": 60}}
    if per_request:  # else the source's default (Earth Engine: 16, transforms/fetching/merging.py)
        doc["fetch"]["patches_per_request"] = per_request
    path = os.path.join(folder, f"scale-{patches}.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def child_plan(config_path: str) -> dict:
    import apache_beam as beam
    from pixelbeam.pipeline.config import load_config
    from pixelbeam.pipeline.graph import build_pipeline
    from pixelbeam.pipeline.plan import prepare_job
    started, cpu = time.perf_counter(), time.process_time()
    job = prepare_job(load_config(config_path))
    plan_s, plan_cpu = time.perf_counter() - started, time.process_time() - cpu
    graph = len(build_pipeline(job, beam.Pipeline()).to_runner_api().SerializeToString())
    return {"patches": job.planned, "cells": len(job.cells), "plan_s": plan_s, "plan_cpu_s": plan_cpu,
            "graph_mb": graph / 1e6, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_run(config_path: str) -> dict:
    from pixelbeam.pipeline.cli import main
    started, cpu = time.perf_counter(), time.process_time()
    code = main(["run", config_path])
    wall = time.perf_counter() - started
    out = json.load(open(config_path))["output"]["path"]
    with open(os.path.join(out, "manifest.jsonl")) as f:
        written = sum('"status":"written"' in line for line in f)
    return {"code": code, "written": written, "wall_s": wall, "cpu_s": time.process_time() - cpu,
            "patches_per_s": written / wall, "shards": len(os.listdir(os.path.join(out, "shards"))),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def in_child(mode: str, config_path: str, root: str = ROOT) -> dict:
    """`child_plan` or `child_run` in a fresh process, importing pixelbeam from `root` (this tree,
    or a `checkout` of an earlier revision)."""
    out = subprocess.run([sys.executable, __file__, "--child", mode, config_path, root], capture_output=True, text=True,
                         cwd=root)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_emulator(folder: str):
    catalog = os.path.join(folder, "catalog.json")
    with open(catalog, "w") as f:
        json.dump({"images": {ASSET: {"path": LANDSAT, "bands": ["B1", "B2", "B3"]}}}, f)
    proc = subprocess.Popen([sys.executable, "-m", "pixelbeam.testing.ee_emulator", "--port", "0", "--catalog", catalog],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip().split("=", 1)[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default="1000000,10000000,100000000", help="patch counts to plan (plan only)")
    parser.add_argument("--run", type=int, default=5_000, help="patches of the end-to-end run (0: none)")
    parser.add_argument("--quick", action="store_true", help="plan 10^6, run 2,000")
    parser.add_argument("--patches-per-request", type=int, default=0,
                        help="fetch.patches_per_request of the run (default: the source's, 16; 1: a request per patch)")
    parser.add_argument("--before", metavar="REV", help="also run the end-to-end job with git revision REV's code, "
                        "after this tree's, in the same sitting")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, config_path, root = args.child
        if root == ROOT:
            sys.path.insert(0, ROOT)
        else:
            use_checkout(root)
        print(json.dumps(child_plan(config_path) if mode == "plan" else child_run(config_path)))
        return 0
    if args.quick:
        args.plan, args.run = "1000000", 2000
    with tempfile.TemporaryDirectory() as folder:
        emulator, url = start_emulator(folder)
        try:
            print(f"{'patches':>11} {'cells':>7} {'plan s':>7} {'CPU s':>6} {'peak MB':>8} {'graph MB':>9}   (plan only)")
            for n in map(int, args.plan.split(",")) if args.plan else ():
                r = in_child("plan", write_config(folder, url, n, os.path.join(folder, f"out-{n}")))
                print(f"{r['patches']:>11,} {r['cells']:>7,} {r['plan_s']:>7.1f} {r['plan_cpu_s']:>6.1f} "
                      f"{r['peak_mb']:>8.0f} {r['graph_mb']:>9.2f}", flush=True)
            ways = [("this tree", ROOT)] if args.run else []
            if args.run and args.before:
                ways.append((f"before {args.before[:7]}", checkout(args.before, folder)))
            for way, root in ways:
                subprocess.run(["rm", "-rf", os.path.join(folder, "run")], check=True)
                r = in_child("run", write_config(folder, url, args.run, os.path.join(folder, "run"),
                                                 args.patches_per_request), root)
                print(f"end to end ({way}), about {args.run:,} patches asked: {r['written']:,} written into "
                      f"{r['shards']} shards in {r['wall_s']:.1f} s ({r['cpu_s']:.1f} CPU-s in the launcher process), "
                      f"{r['patches_per_s']:.0f} patches/s, peak RSS {r['peak_mb']:.0f} MB (DirectRunner: "
                      "launcher and workers in one process)", flush=True)
        finally:
            emulator.terminate()
            emulator.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
