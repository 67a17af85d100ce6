"""A small job's fixed cost: what `pixelbeam --help`, `pixelbeam plan` and a 43-patch `pixelbeam
run` cost as whole processes, and where the run's seconds go.

Each command runs in its own process (median of --repeat; wall seconds and CPU-seconds of the
process tree), against `python -c pass` and `python -c "import apache_beam"` in the same run
(the interpreter's and Beam's own import, which a run cannot avoid). The run's parts come from
one extra in-process run timed step by step: importing the run path (Beam), planning, building
and running the pipeline, dataset.json and the summary, and the pictures drawn afterwards.

    .venv/bin/python benchmarks/startup.py [--repeat 3] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
# as a user's installed package runs: with bytecode caches (see extract_overhead.py)
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def demo_config(workdir: str) -> str:
    """The demo (43 patches of 64 px, NPY only, so that TFRecords do not count here)."""
    with open(os.path.join(ROOT, "configs", "demo.yaml")) as f:
        doc = yaml.safe_load(f)
    doc["source"]["uri"] = os.path.join(ROOT, "data", "RGB.byte.tif")
    doc["regions"] = os.path.join(ROOT, "data", "regions.geojson")
    doc["grid"].update(overlap=0)
    doc["output"].update(path=os.path.join(workdir, "out"), formats=["npy"], max_masked_ratio=1.0)
    path = os.path.join(workdir, "job.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def timed_process(cmd: list[str], before=None) -> dict:
    if before:
        before()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=CHILD_ENV, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime}


def run_parts(config: str, out: str) -> dict:
    """One run in a child process, timed step by step (seconds)."""
    code = f"""
import json, time
t0 = time.perf_counter()
import pixelbeam.pipeline.run as run, apache_beam as beam
from pixelbeam.pipeline import api, preview, summary, resume
t1 = time.perf_counter()
job = api.planned_job({config!r})
t2 = time.perf_counter()
parts = {{}}
real_previews, real_dataset = run.write_previews_quietly, run.write_dataset_json
def timed(name, fn):
    def wrapper(*a, **k):
        s = time.perf_counter(); r = fn(*a, **k); parts[name] = time.perf_counter() - s; return r
    return wrapper
run.write_previews_quietly = timed("pictures", real_previews)
run.write_dataset_json = timed("dataset_json", real_dataset)
result = run.run_job(job, [], 1.0)
t3 = time.perf_counter()
print(json.dumps({{"import_run_path": t1 - t0, "plan": t2 - t1, "run_job": t3 - t2, **parts}}))
"""
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=CHILD_ENV, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"timed run failed: {proc.stderr[-2000:]}")
    parts = json.loads(proc.stdout.strip().splitlines()[-1])
    parts["pipeline"] = parts["run_job"] - parts.get("pictures", 0) - parts.get("dataset_json", 0)
    return parts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: one repeat")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON (benchmarks/run_all.py)")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    workdir = tempfile.mkdtemp(prefix="pixelbeam-startup-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        config = demo_config(workdir)
        out = os.path.join(workdir, "out")
        commands = {
            "python -c pass": ([PY, "-c", "pass"], None),
            "python -c 'import apache_beam'": ([PY, "-c", "import apache_beam"], None),
            "pixelbeam --help": ([PY, "-m", "pixelbeam", "--help"], None),
            "pixelbeam plan": ([PY, "-m", "pixelbeam", "plan", config], None),
            "pixelbeam run (43 patches)": ([PY, "-m", "pixelbeam", "run", config],
                                           lambda: shutil.rmtree(out, ignore_errors=True)),
        }
        runs = {name: [] for name in commands}
        for _ in range(repeat):  # interleaved
            for name, (cmd, before) in commands.items():
                runs[name].append(timed_process(cmd, before))
        results = {name: {"seconds": statistics.median(r["seconds"] for r in v),
                          "cpu_s": statistics.median(r["cpu_s"] for r in v)} for name, v in runs.items()}
        parts = run_parts(config, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'command':<32} {'seconds':>8} {'CPU s':>7}")
    for name, r in results.items():
        print(f"{name:<32} {r['seconds']:>8.2f} {r['cpu_s']:>7.2f}")
    print("the run, step by step (s): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "startup", "repeat": repeat, "commands": results, "run_parts": parts}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
