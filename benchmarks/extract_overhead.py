"""The pipeline's overhead over the raw work, measured side by side in one run.

Two cases of the bundled 3-band uint8 Landsat scene (data/RGB.byte.tif), outputs on tmpfs
(/dev/shm when there is one: the disk would only add noise):
  demo  - the demo's four regions cut into 64 px patches (no overlap);
  scene - the whole scene cut into 128 px patches with a stride of 8 px (overlap 120): 12,075
          patches (--quick: this case alone, at stride 32: 754 patches).
For each case, times and CPU-seconds of:
  raw          - the planned patches read with in-bounds rasterio window reads (zeros where a
                 patch reaches past the file) and written with numpy.save, in a plain loop in
                 this process: the least work that gives the same files (checked: the NPY files
                 of `npy` are byte-identical to the loop's);
  npy          - `pixelbeam run` (a whole process, as a user runs it) writing NPY only;
  npy_2proc    - the same on 2 worker processes (--direct_num_workers 2
                 --direct_running_mode multi_processing);
  npy_tfrecord - NPY + TFRecord (+ the manifest, as every run);
  tfrecord     - TFRecord only.
Prints seconds, patches/s and CPU-seconds per 1,000 patches (user + system of the whole process
tree), and the ratios the issue asks for: each job against the raw loop (throughput, higher is
better), 2 processes against in-memory, NPY + TFRecord against NPY. With the npy job, the scene
case also runs `fixed` (not with --quick): the same job cut without overlap (48 patches), a run's fixed cost
(imports, planning, Beam's start, the pictures), and prints the NPY job's rate beyond it,
(patches - 48) / (seconds - fixed seconds), against the raw loop's: the per-patch overhead alone.

    .venv/bin/python benchmarks/extract_overhead.py [--repeat 1] [--quick] [--json FILE] [--cases demo,scene]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

import numpy as np
import rasterio
import yaml
from rasterio.windows import Window

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pixelbeam.pipeline.config import load_config  # noqa: E402
from pixelbeam.pipeline.plan import prepare_job  # noqa: E402

SCENE = os.path.join(ROOT, "data", "RGB.byte.tif")
PIXELBEAM = [sys.executable, "-m", "pixelbeam.pipeline.cli"]
# as a user's installed package runs: with bytecode caches (a shell that sets PYTHONDONTWRITEBYTECODE
# would make every run compile pixelbeam's modules again, a second of start-up that users do not pay)
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
JOBS = {  # name: (formats, extra Beam options)
    "npy": (["npy"], []),
    "npy_2proc": (["npy"], ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]),
    "npy_tfrecord": (["npy", "tfrecord"], []),
    "tfrecord": (["tfrecord"], []),
}


def tmpfs_dir() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="pixelbeam-bench-", dir=base)


def scene_regions(path: str) -> str:
    """A GeoJSON of the scene's footprint (lon/lat), written to `path`."""
    from rasterio.warp import transform_geom
    with rasterio.open(SCENE) as ds:
        left, bottom, right, top = ds.bounds
        ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
        geometry = transform_geom(ds.crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    with open(path, "w") as f:
        json.dump({"type": "FeatureCollection",
                   "features": [{"type": "Feature", "id": "scene", "properties": {}, "geometry": geometry}]}, f)
    return path


def case_config(workdir: str, case: str, stride: int, tfrecord_level: Optional[int] = None) -> tuple[str, dict]:
    """(config path, the config as a dict) of one case, outputs under workdir/out."""
    regions = os.path.join(ROOT, "data", "regions.geojson")
    if case == "demo":
        grid = {"patch_size": 64, "overlap": 0}
    elif case == "scene":
        regions = scene_regions(os.path.join(workdir, "scene.geojson"))
        grid = {"patch_size": 128, "overlap": 128 - stride}
    else:
        raise SystemExit(f"unknown case {case!r}; use demo or scene")
    doc = {"source": {"kind": "raster", "uri": SCENE, "bands": [1, 2, 3]}, "regions": regions,
           "grid": {"crs": "native", "scale": "native", "min_coverage": 0.0, **grid},
           "output": {"path": os.path.join(workdir, "out"), "formats": ["npy"], "max_masked_ratio": 1.0,
                      # every planned patch written, as the raw loop writes it (the scene's corners
                      # hold patches without a valid pixel, filtered by default)
                      "keep_empty": True}}
    if tfrecord_level is not None:
        doc["output"]["tfrecord_compression_level"] = tfrecord_level
    path = os.path.join(workdir, f"{case}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path, doc


def raw_loop(job, out_dir: str) -> int:
    """Every planned patch read in bounds (zeros past the file's edges) and np.save'd."""
    os.makedirs(out_dir, exist_ok=True)
    indexes = list(job.source.bands) if job.source.bands else None
    with rasterio.open(job.source.uris[0]) as ds:
        indexes = indexes or list(range(1, ds.count + 1))
        inv, height, width, dtype = ~ds.transform, ds.height, ds.width, ds.dtypes[0]
        for spec in job.specs:
            col, row = inv * (spec.fetch_transform[2], spec.fetch_transform[5])
            col, row, w, h = round(col), round(row), spec.fetch_width, spec.fetch_height
            r0, c0, r1, c1 = max(row, 0), max(col, 0), min(row + h, height), min(col + w, width)
            if (r0, c0, r1, c1) == (row, col, row + h, col + w):
                data = ds.read(indexes, window=Window(col, row, w, h))
            else:
                data = np.zeros((len(indexes), h, w), dtype=dtype)
                if r0 < r1 and c0 < c1:
                    data[:, r0 - row:r1 - row, c0 - col:c1 - col] = ds.read(
                        indexes, window=Window(c0, r0, c1 - c0, r1 - r0))
            np.save(os.path.join(out_dir, f"{spec.patch_id}.npy"), data)
    return len(job.specs)


def run_raw(job, out_dir: str) -> dict:
    shutil.rmtree(out_dir, ignore_errors=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    raw_loop(job, out_dir)
    return {"seconds": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0}


def run_pixelbeam(doc: dict, workdir: str, formats: list[str], beam_args: list[str]) -> dict:
    """One `pixelbeam run` in its own process; wall seconds and CPU-seconds of its process tree."""
    doc = {**doc, "output": {**doc["output"], "formats": formats}}
    path = os.path.join(workdir, "job.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    shutil.rmtree(doc["output"]["path"], ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.Popen(PIXELBEAM + ["run", path, *beam_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=CHILD_ENV)
    _, status, usage = os.wait4(proc.pid, 0)  # usage counts the children it waited for (Beam's workers)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"pixelbeam run failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime}


def folder_digest(folder: str) -> str:
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            digest.update(name.encode() + hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def measure(case: str, repeat: int, stride: int, jobs: list[str], tfrecord_level: Optional[int] = None,
            fixed: bool = True) -> dict:
    workdir = tmpfs_dir()
    try:
        path, doc = case_config(workdir, case, stride, tfrecord_level)
        job = prepare_job(load_config(path))
        runs: dict[str, list[dict]] = {name: [] for name in ["raw", *jobs]}
        same = None
        for _ in range(repeat):  # interleaved, so that a busy moment of the machine hits every job alike
            runs["raw"].append(run_raw(job, os.path.join(workdir, "raw")))
            for name in jobs:
                formats, beam_args = JOBS[name]
                runs[name].append(run_pixelbeam(doc, workdir, formats, beam_args))
                if name == "npy" and same is None:
                    same = folder_digest(os.path.join(doc["output"]["path"], "npy")) == folder_digest(
                        os.path.join(workdir, "raw"))
        if fixed and case == "scene" and "npy" in jobs:  # a run's fixed cost: the same job with (almost) no patches
            small = {**doc, "grid": {**doc["grid"], "overlap": 0}}
            runs["fixed"] = [run_pixelbeam(small, workdir, ["npy"], []) for _ in range(repeat)]
            fixed_patches = len(prepare_job(load_config(case_config(workdir, case, doc["grid"]["patch_size"])[0])).specs)
        patches = len(job.specs)
        out = {"case": case, "patches": patches, "patch_px": doc["grid"]["patch_size"],
               "stride_px": doc["grid"]["patch_size"] - doc["grid"]["overlap"], "npy_identical_to_raw": same}
        for name, values in runs.items():
            seconds = statistics.median(v["seconds"] for v in values)
            cpu = statistics.median(v["cpu_s"] for v in values)
            n = fixed_patches if name == "fixed" else patches
            out[name] = {"seconds": seconds, "patches_per_s": n / seconds, "cpu_s_per_1000": 1000 * cpu / n}
        if "fixed" in out:
            out["fixed"]["patches"] = fixed_patches
            extra = out["npy"]["seconds"] - out["fixed"]["seconds"]
            out["npy_beyond_fixed"] = {"patches_per_s": (patches - fixed_patches) / extra if extra > 0 else None}
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def print_case(r: dict) -> None:
    print(f"\n{r['case']}: {r['patches']} patches of {r['patch_px']} px, stride {r['stride_px']} px; "
          f"pixelbeam's NPY files identical to the raw loop's: {r['npy_identical_to_raw']}")
    print(f"  {'job':<14} {'seconds':>8} {'patches/s':>10} {'CPU s/1000':>11} {'of raw':>7}")
    raw = r["raw"]["patches_per_s"]
    for name in ["raw", *JOBS]:
        if name in r:  # (fixed: printed below)
            v = r[name]
            print(f"  {name:<14} {v['seconds']:>8.2f} {v['patches_per_s']:>10.0f} {v['cpu_s_per_1000']:>11.3f} "
                  f"{v['patches_per_s'] / raw:>7.3f}")
    if "fixed" in r:
        f, beyond = r["fixed"], r["npy_beyond_fixed"]["patches_per_s"]
        print(f"  fixed cost (the same job, {f['patches']} patches): {f['seconds']:.2f} s, "
              f"{f['cpu_s_per_1000'] * f['patches'] / 1000:.2f} CPU-s; npy beyond it: "
              + (f"{beyond:.0f} patches/s, {beyond / raw:.3f} of raw" if beyond else "n/a"))
    if "npy_2proc" in r and "npy" in r:
        print(f"  2 processes / in-memory: {r['npy_2proc']['patches_per_s'] / r['npy']['patches_per_s']:.2f}x")
    if "npy_tfrecord" in r and "npy" in r:
        print(f"  NPY + TFRecord time / NPY time: {r['npy_tfrecord']['seconds'] / r['npy']['seconds']:.2f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each job (median), interleaved")
    parser.add_argument("--cases", default="demo,scene")
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"pixelbeam jobs to run, of {','.join(JOBS)}")
    parser.add_argument("--stride", type=int, default=0, help="the scene case's stride in px (default 8; --quick 32)")
    parser.add_argument("--tfrecord-level", type=int, help="output.tfrecord_compression_level (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: the scene case alone, at stride 32, one repeat")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON (benchmarks/run_all.py)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.cases = 1, "scene"
    jobs = [j for j in args.jobs.split(",") if j]
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        parser.error(f"--jobs: unknown {unknown}; have {list(JOBS)}")
    print(f"load average before: {os.getloadavg()[0]:.2f} | {os.cpu_count()} cores", flush=True)
    results = []
    for case in args.cases.split(","):
        results.append(measure(case, args.repeat, args.stride or (32 if args.quick else 8), jobs, args.tfrecord_level,
                               fixed=not args.quick))  # at --quick's 754 patches the difference is all noise
        print_case(results[-1])
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "extract_overhead", "repeat": args.repeat, "quick": args.quick,
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
