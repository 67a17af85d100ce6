"""Limits that fit the source (issue 16) and the cost of a vector layer, side by side in one run.

One local job (the demo scene, small patches, NPY only) is run, in alternation, with:
  fitted   - no `fetch:` section: a local file's defaults (the CPU count in flight, no rate limit);
  former   - the former default for every source, Earth Engine's quota: 40 concurrent, 100/s;
  layers   - the fitted job plus a vector target layer (configs/segmentation_labels.geojson)
             rasterized on every patch.
Each `pixelbeam run` is its own process; prints patches/s and CPU seconds (user + system) of the
median run of each, and the ratios fitted / former (throughput) and layers / fitted (time).

    .venv/bin/python benchmarks/local_limits.py [--repeat 3] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
LABELS = os.path.join(ROOT, "configs", "segmentation_labels.geojson")
BBOX = [-78.9, 23.5, -76.6, 25.5]  # the whole scene


def config(kind: str, out: str, patch_px: int) -> dict:
    image = {"uri": LANDSAT, "bands": [1, 2, 3]}
    doc = {"regions": BBOX, "grid": {"crs": "native", "scale": "native", "patch_size": patch_px},
           "output": {"path": out, "formats": ["npy"]}}
    if kind == "layers":
        doc["layers"] = {"image": {"kind": "raster", "role": "input", **image},
                         "labels": {"kind": "vector", "role": "target", "path": LABELS, "property": "class",
                                    "classes": {"water": 1, "land": 2, "cloud": 3}}}
    else:
        doc["source"] = image
    if kind == "former":
        doc["fetch"] = {"max_concurrent_requests": 40, "max_requests_per_second": 100}
    return doc


def run_once(kind: str, tmp: str, patch_px: int) -> dict:
    out = os.path.join(tmp, kind)
    shutil.rmtree(out, ignore_errors=True)
    path = os.path.join(tmp, f"{kind}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config(kind, out, patch_px), f, sort_keys=False)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pixelbeam", "run", path], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{kind}: pixelbeam run failed:\n{proc.stderr[-2000:]}")
    counts = proc.stdout.splitlines()[1].split()  # planned written filtered failed seconds patches/s
    return {"patches": int(counts[1]), "run_seconds": float(counts[4]), "patches_per_s": float(counts[5]),
            "wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run each, larger patches")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    repeat, patch_px = (1, 48) if args.quick else (args.repeat, 16)
    runs: dict = {"fitted": [], "former": [], "layers": []}
    with tempfile.TemporaryDirectory(prefix="pixelbeam-limits-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        for _ in range(repeat):
            for kind in runs:  # alternate, so that a busy moment hits every kind alike
                runs[kind].append(run_once(kind, tmp, patch_px))
    median = {kind: sorted(r, key=lambda x: x["run_seconds"])[len(r) // 2] for kind, r in runs.items()}
    print(f"{median['fitted']['patches']} patches of {patch_px} px, median of {repeat} run(s):")
    for kind, r in median.items():
        print(f"  {kind:7} {r['patches_per_s']:8.1f} patches/s  fetch+write {r['run_seconds']:6.2f} s  "
              f"wall {r['wall_s']:6.2f} s  CPU {r['cpu_s']:6.2f} s")
    speedup = median["fitted"]["patches_per_s"] / median["former"]["patches_per_s"]
    cost = median["layers"]["run_seconds"] / median["fitted"]["run_seconds"]
    print(f"fitted / former throughput: {speedup:.2f}; with a vector layer / without, time: {cost:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "local_limits", "patch_px": patch_px, "repeat": repeat, "median": median,
                       "runs": runs, "spread_s": {k: statistics.pstdev([x["run_seconds"] for x in v])
                                                  for k, v in runs.items()}}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
