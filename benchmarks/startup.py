"""A small job's fixed cost: what `pixelbeam --help`, `pixelbeam plan` and a 43-patch `pixelbeam
run` cost as whole processes, and where the run's seconds go.

Each command runs in its own process (median of --repeat; wall seconds and CPU-seconds of the
process tree), against `python -c pass` and `python -c "import apache_beam"` in the same run
(the interpreter's and Beam's own import, which a run cannot avoid); `--before REV` also runs
pixelbeam's three commands with the code of git revision REV (a `git archive` of it), each
right after the current code's, so that before and after share the machine's load. The run's
parts come from one extra `pixelbeam run`, the real CLI with its steps timed: start (the
interpreter and the CLI's imports), import_run_path (planning and Beam, imported before the
run), plan, build_graph (the Beam graph), pipeline (running it), summary, pictures (preview.png
and footprints.png, drawn after it), exit (from the command's end to the process's) and whole.

    .venv/bin/python benchmarks/startup.py [--repeat 3] [--quick] [--before REV] [--json FILE]
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

from _revisions import checkout

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


def timed_process(cmd: list[str], before=None, cwd: str = ROOT) -> dict:
    if before:
        before()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=CHILD_ENV, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime}


# The timed run: `pixelbeam run CONFIG` as the program runs it (cli.main(), so the collector and
# the exit behave as for a user), with the steps wrapped; the JSON line goes to stderr at the end.
PARTS_CHILD = """
import json, sys, time
started = time.time()
from pixelbeam.pipeline import api, cli
parts = {{"started": started, "start": time.time() - started}}
def timed(name, fn):
    def wrapper(*a, **k):
        s = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            parts[name] = parts.get(name, 0.0) + time.perf_counter() - s
    return wrapper
def patch_run_path():
    import pixelbeam.pipeline.run as run
    for name, label in (("build_pipeline", "build_graph"), ("summarize", "summary"), ("write_previews_quietly", "pictures")):
        if hasattr(run, name):
            setattr(run, name, timed(label, getattr(run, name)))
    if not hasattr(run.run_job, "__wrapped_by_bench__"):
        run.run_job = timed("run_job", run.run_job)
        run.run_job.__wrapped_by_bench__ = True
real_preload = cli.preload
def preload(config, command):
    s = time.perf_counter()
    real_preload(config, command)
    parts["import_run_path"] = time.perf_counter() - s
    patch_run_path()
cli.preload = preload
api.planned_job = timed("plan", api.planned_job)
sys.argv = ["pixelbeam", "run", {config!r}]
code = cli.main()
parts["ended"] = time.time()
parts["code"] = code
print("PARTS " + json.dumps(parts), file=sys.stderr, flush=True)
sys.exit(code)
"""


def run_parts(config: str, out: str) -> dict:
    """One `pixelbeam run` in a child process, timed step by step (seconds): start (the
    interpreter and the CLI's imports), import_run_path (planning and Beam, imported before the
    run), plan, build_graph, the pipeline (running it: run_job less the graph, the summary and
    the pictures), summary, pictures, and exit (from the command's end to the process's)."""
    shutil.rmtree(out, ignore_errors=True)
    spawned = time.time()
    proc = subprocess.run([PY, "-c", PARTS_CHILD.format(config=config)], capture_output=True, text=True, env=CHILD_ENV,
                          cwd=ROOT)
    exited = time.time()
    lines = [line for line in proc.stderr.splitlines() if line.startswith("PARTS ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"timed run failed: {proc.stderr[-2000:]}")
    raw = json.loads(lines[-1][len("PARTS "):])
    parts = {"start": raw["started"] - spawned + raw["start"]}
    for name in ("import_run_path", "plan", "build_graph"):
        parts[name] = raw.get(name, 0.0)
    parts["pipeline"] = raw["run_job"] - sum(raw.get(k, 0.0) for k in ("build_graph", "summary", "pictures"))
    for name in ("summary", "pictures"):
        parts[name] = raw.get(name, 0.0)
    parts["exit"] = exited - raw["ended"]
    parts["whole"] = exited - spawned
    return parts


def median_of(runs: dict) -> dict:
    return {name: {"seconds": statistics.median(r["seconds"] for r in v),
                   "cpu_s": statistics.median(r["cpu_s"] for r in v)} for name, v in runs.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: one repeat")
    parser.add_argument("--before", metavar="REV", help="also pixelbeam's commands with the code of git revision REV")
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
        old_root = checkout(args.before, workdir) if args.before else None
        runs = {name: [] for name in commands}
        before_runs = {name: [] for name in commands if name.startswith("pixelbeam")}
        for _ in range(repeat):  # interleaved, now and before alternating
            for name, (cmd, setup) in commands.items():
                runs[name].append(timed_process(cmd, setup))
                if old_root and name in before_runs:
                    before_runs[name].append(timed_process(cmd, setup, cwd=old_root))
        results = median_of(runs)
        before = median_of(before_runs) if old_root else None
        parts = run_parts(config, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    head = f"{'command':<32} {'seconds':>8} {'CPU s':>7}"
    print(head + (f" {'before: seconds':>16} {'CPU s':>7}  ({args.before})" if before else ""))
    for name, r in results.items():
        line = f"{name:<32} {r['seconds']:>8.2f} {r['cpu_s']:>7.2f}"
        if before and name in before:
            line += f" {before[name]['seconds']:>16.2f} {before[name]['cpu_s']:>7.2f}"
        print(line)
    print("the run, step by step (s): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "startup", "repeat": repeat, "commands": results, "run_parts": parts,
                       **({"before": {"rev": args.before, "commands": before}} if before else {})}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
