"""Launcher planning at scale: time and peak memory of `pixelbeam plan` for 10^5 .. 10^7 patches.

A large irregular polygon (a 'coastline' of 20,000 vertices around the Bahamas scene, so the
bundled raster is a valid source) is planned on a 10 m UTM grid with patch sizes chosen to give
about 10^5, 10^6 and 10^7 patches. Each measurement runs in a fresh process and reports its peak
RSS, for:
  cells     - what `pixelbeam plan` does: coarse cells + counting (launcher memory O(cells));
  enumerate - listing every PatchSpec on the launcher (what a naive planner does), for contrast
              (skipped at 10^7, where it needs several GB).

Point regions (issue 15.6 / 17.3): `--points 300000,1000000` plans that many point regions
(a GeoJSON FeatureCollection of points with two properties each, ~170 bytes a feature: 300,000
points are the issue's 50 MB file) with `centered_on_points`, in a fresh process each, and
reports the load and plan time (wall and CPU) and the peak RSS; `--former` also plans them the
former way (one region at a time: `cells.BULK_POINTS = False` and the feature-by-feature loader),
and `--before REV` with the code of git revision REV (a `git archive` of it, imported instead of
the editable install), for before/after in one run; `--sample per_region|per_class` plans with
that sample instead of only `centered_on_points`.

`--launcher` measures a `pixelbeam run` launcher instead: the whole process (interpreter start
to the returned RunResult) of `pixelbeam.run(config, DataflowRunner options)`, which plans,
checks the graph's size, plans the resume, stages the plan under --temp_location (a folder on
/dev/shm) and translates the job for DataflowRunner; Beam's own `--dry_run=True` stops its
runner just before it would upload the job (pixelbeam's dry-run branch is bypassed, and the
check that the output and the source are on Cloud Storage is off: the benchmark's files are
local; the plan is staged in a local folder instead of --temp_location's gs://). Wall is the child's elapsed time, CPU its user + system seconds, peak its ru_maxrss.

    .venv/bin/python benchmarks/plan_scale.py [--sizes 100000,1000000,10000000]
    .venv/bin/python benchmarks/plan_scale.py --points 300000,1000000 [--former] [--before 2bd608f] [--sample per_class]
    .venv/bin/python benchmarks/plan_scale.py --points 1000000 --launcher [--before REV] [--sample per_class] [--scale 10]
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

import numpy as np

from _revisions import checkout, use_checkout  # noqa: E402  (benchmarks/, the script's own folder)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
CENTER = (-77.6, 24.6)  # lon, lat: the bundled Landsat scene
PATCH_PX = 32
SCALE_M = 10.0


def coastline(radius_deg: float, vertices: int = 20000, seed: int = 0) -> dict:
    """An irregular polygon: a circle whose radius wanders by a smoothed random walk."""
    rng = np.random.default_rng(seed)
    angle = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    wobble = np.convolve(rng.normal(0, 1, vertices), np.ones(200) / 200, mode="same")
    r = radius_deg * (1 + 0.25 * wobble / np.abs(wobble).max())
    lon = CENTER[0] + r * np.cos(angle) / math.cos(math.radians(CENTER[1]))
    lat = CENTER[1] + r * np.sin(angle)
    ring = np.column_stack([lon, lat]).round(6).tolist()
    return {"type": "Polygon", "coordinates": [ring + [ring[0]]]}


def radius_for(patches: int) -> float:
    """Radius (degrees) of a disc holding about `patches` patches of 32 px at 10 m."""
    area_m2 = patches * (PATCH_PX * SCALE_M) ** 2
    return math.sqrt(area_m2 / math.pi) / 111_000


def child(mode: str, config_path: str) -> dict:
    """Runs in a fresh process: plan, then report time and peak RSS."""
    sys.path.insert(0, ROOT)
    from pixelbeam.pipeline.config import load_config
    from pixelbeam.pipeline.plan import plan_summary, prepare_job
    started = time.perf_counter()
    job = prepare_job(load_config(config_path))
    patches = plan_summary(job)["patches"] if mode == "cells" else len(job.specs)
    seconds = time.perf_counter() - started
    return {"patches": patches, "seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cells": len(job.cells)}


def points_child(mode: str, config_path: str) -> dict:
    """Runs in a fresh process: load and plan point regions (mode `bulk`, `former`, or
    `rev:<folder>`: the bulk way of the checkout in folder)."""
    if mode.startswith("rev:"):
        use_checkout(mode[4:])
    else:
        sys.path.insert(0, ROOT)
    from pixelbeam.pipeline.config import load_config
    from pixelbeam.pipeline.plan import prepare_job
    from pixelbeam.transforms.planning import cells, region_loading
    if mode == "former":
        cells.BULK_POINTS, region_loading.MIN_BULK = False, 10**12
    imports_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started, cpu = time.perf_counter(), time.process_time()
    job = prepare_job(load_config(config_path))
    return {"patches": job.planned, "seconds": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "imports_mb": imports_mb,
            "cells": len(job.cells)}


def launcher_child(mode: str, config_path: str) -> dict:
    """Runs in a fresh process: a `pixelbeam run` launcher on DataflowRunner up to the job's
    submission (module doc); mode `bulk` or `rev:<folder>`."""
    if mode.startswith("rev:"):
        use_checkout(mode[4:])
    else:
        sys.path.insert(0, ROOT)
    from pixelbeam.pipeline import api
    temp = os.path.join(os.path.dirname(config_path), "temp")
    launch = api.run_planned

    def run_planned(job, *args, **kwargs):  # Beam imported as the launcher imports it: once the job is planned
        from pixelbeam.pipeline import dataflow, run
        run.is_dry_run = dataflow.is_dry_run = lambda options: False  # pixelbeam's: a real launch; Beam's: stop at upload
        dataflow.submission_problems = lambda job: []  # the benchmark's output and raster are local files
        dataflow.stage_folder = lambda options, run_id: os.path.join(temp, f"pixelbeam-plan-{run_id or 'check'}")
        return launch(job, *args, **kwargs)

    api.run_planned = run_planned
    args = ["--runner", "DataflowRunner", "--project", "bench", "--region", "us-central1",
            "--temp_location", "gs://bench/temp",
            "--machine_type", "n1-standard-2", "--max_num_workers", "2", "--dry_run=True"]
    result = api.run(config_path, beam_args=args)
    staged = [os.path.join(d, f) for d, _, fs in os.walk(temp) for f in fs]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"patches": result.planned, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024,
            "staged_files": len(staged), "staged_mb": sum(map(os.path.getsize, staged)) / 1e6}


def launch_points(sizes: str, before: str | None = None, sample: str = "centered", scale: str = "native") -> list[dict]:
    """`--launcher`: each size, after (this tree) and before (`before`), in fresh processes."""
    results = []
    print(f"{'points':>9} {'file MB':>8} {'patches':>8} {'way':>14} {'wall s':>7} {'CPU s':>6} {'peak MB':>8} "
          f"{'staged MB':>10}")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        modes = (("bulk",) if not before else (f"rev:{checkout(before, tmp)}", "bulk"))
        for points in map(int, sizes.split(",")):
            config = write_points_config(tmp, points, sample, scale)
            size_mb = os.path.getsize(config.replace(".yaml", ".geojson")) / 1e6
            for mode in modes:
                for leftover in ("out", "temp"):
                    subprocess.run(["rm", "-rf", os.path.join(tmp, leftover)], check=True)
                started = time.perf_counter()
                out = subprocess.run([sys.executable, __file__, "--launcher-child", mode, config], capture_output=True,
                                     text=True, cwd=ROOT)
                wall = time.perf_counter() - started
                if out.returncode != 0:
                    raise RuntimeError(out.stderr[-3000:])
                r = {"wall_s": wall, **json.loads(out.stdout.strip().splitlines()[-1])}
                way = f"before {before[:7]}" if mode.startswith("rev:") else "this tree"
                results.append({"points": points, "mode": way, "sample": sample, "scale": scale, **r})
                print(f"{points:>9} {size_mb:>8.0f} {r['patches']:>8} {way:>14} {wall:>7.1f} {r['cpu_s']:>6.1f} "
                      f"{r['peak_mb']:>8.0f} {r['staged_mb']:>10.1f}", flush=True)
    return results


SAMPLES = {"centered": "{centered_on_points: true}", "per_region": "{centered_on_points: true, per_region: 1, seed: 1}",
           "per_class": "{centered_on_points: true, per_class: 100, label_property: class, seed: 1}"}


def write_points_config(tmp: str, points: int, sample: str = "centered", scale: str = "native") -> str:
    """`points` random points over the bundled scene, as the issue's file (ids, a class, a name)."""
    rng = np.random.default_rng(points)
    lon, lat = rng.uniform(-78.9, -76.6, points), rng.uniform(23.6, 25.5, points)
    path = os.path.join(tmp, f"points-{points}.geojson")
    if os.path.exists(path):
        return write_sample_config(tmp, points, path, sample, scale)
    with open(path, "w") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        for i in range(points):
            f.write(("," if i else "") + json.dumps(
                {"type": "Feature", "id": f"pt-{i}", "properties": {"class": i % 5, "name": f"point number {i}"},
                 "geometry": {"type": "Point", "coordinates": [round(float(lon[i]), 7), round(float(lat[i]), 7)]}}))
        f.write("]}")
    return write_sample_config(tmp, points, path, sample, scale)


def write_sample_config(tmp: str, points: int, path: str, sample: str, scale: str = "native") -> str:
    config = os.path.join(tmp, f"points-{points}.yaml")
    with open(config, "w") as f:
        f.write(f"source: {{uri: {LANDSAT}}}\nregions: {path}\n"
                f"grid: {{crs: native, scale: {scale}, patch_size: 16}}\nsample: {SAMPLES[sample]}\n"
                f"output: {{path: {os.path.join(tmp, 'out')}}}\n")
    return config


def plan_points(sizes: str, former: bool, before: str | None = None, sample: str = "centered") -> list[dict]:
    results = []
    print(f"{'points':>9} {'file MB':>8} {'patches':>8} {'way':>12} {'wall s':>7} {'CPU s':>6} {'peak MB':>8} {'imports MB':>11}")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        modes = ("bulk",) + (("former",) if former else ())
        if before:
            modes += (f"rev:{checkout(before, tmp)}",)
        for points in map(int, sizes.split(",")):
            config = write_points_config(tmp, points, sample)
            size_mb = os.path.getsize(config.replace(".yaml", ".geojson")) / 1e6
            for mode in modes:
                out = subprocess.run([sys.executable, __file__, "--points-child", mode, config], capture_output=True,
                                     text=True, cwd=ROOT, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                way = f"before {before[:7]}" if mode.startswith("rev:") else mode
                results.append({"points": points, "mode": way, "sample": sample, **r})
                print(f"{points:>9} {size_mb:>8.0f} {r['patches']:>8} {way:>12} {r['seconds']:>7.1f} {r['cpu_s']:>6.1f} "
                      f"{r['peak_mb']:>8.0f} {r['imports_mb']:>11.0f}", flush=True)
    return results


def measure(mode: str, config_path: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, config_path], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_config(tmp: str, patches: int) -> str:
    regions = os.path.join(tmp, f"coast-{patches}.geojson")
    with open(regions, "w") as f:
        json.dump({"type": "FeatureCollection", "features": [
            {"type": "Feature", "id": "coast", "properties": {}, "geometry": coastline(radius_for(patches))}]}, f)
    config = os.path.join(tmp, f"plan-{patches}.yaml")
    with open(config, "w") as f:
        f.write(f"source: {{uri: {LANDSAT}}}\nregions: {regions}\n"
                f"grid: {{crs: EPSG:32618, scale: {SCALE_M}, patch_size: {PATCH_PX}}}\n"
                f"output: {{path: {os.path.join(tmp, 'out')}}}\n")
    return config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--quick", action="store_true", help="10^5 and 10^6 patches only")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON (benchmarks/run_all.py)")
    parser.add_argument("--points", metavar="N,N", help="plan that many point regions instead (module doc)")
    parser.add_argument("--former", action="store_true", help="with --points: also the former one-at-a-time way")
    parser.add_argument("--before", metavar="REV", help="with --points: also the code of git revision REV (before/after)")
    parser.add_argument("--sample", choices=sorted(SAMPLES), default="centered", help="with --points: the sample: section")
    parser.add_argument("--launcher", action="store_true", help="with --points: a `pixelbeam run` launcher (module doc)")
    parser.add_argument("--scale", default="native", help="with --launcher: grid.scale (m; native: the scene's 300 m, "
                                                           "so 10^6 points share ~2,200 patches; 10: most points own one)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--launcher-child", nargs=2, metavar=("MODE", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--points-child", nargs=2, metavar=("MODE", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    if args.points_child:
        print(json.dumps(points_child(*args.points_child)))
        return 0
    if args.launcher_child:
        print(json.dumps(launcher_child(*args.launcher_child)))
        return 0
    if args.points and args.launcher:
        results = launch_points(args.points, args.before, args.sample, args.scale)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"benchmark": "plan_scale_launcher", "results": results}, f)
        return 0
    if args.points:
        results = plan_points(args.points, args.former, args.before, args.sample)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"benchmark": "plan_scale_points", "results": results}, f)
        return 0
    if args.quick:
        args.sizes = "100000,1000000"
    results = []
    print(f"{'target':>10} {'patches':>10} {'cells':>7} {'cells s':>8} {'patches/s':>11} {'peak MB':>8} "
          f"{'enumerate s':>12} {'enum peak MB':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for target in map(int, args.sizes.split(",")):
            config = write_config(tmp, target)
            cells = measure("cells", config)
            enum = measure("enumerate", config) if target <= 2_000_000 else None
            results.append({"target": target, "cells": cells, "enumerate": enum})
            enum_s = f"{enum['seconds']:.2f}" if enum else "skipped"
            enum_mb = f"{enum['peak_mb']:.0f}" if enum else "-"
            print(f"{target:>10} {cells['patches']:>10} {cells['cells']:>7} {cells['seconds']:>8.2f} "
                  f"{cells['patches'] / cells['seconds']:>11,.0f} {cells['peak_mb']:>8.0f} {enum_s:>12} {enum_mb:>13}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "plan_scale", "results": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
