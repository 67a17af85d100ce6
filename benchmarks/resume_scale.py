"""A rerun's planning at scale: time and peak memory of deciding what is done in an output of
10^6 .. 10^7 manifest rows (issue 17 item 4).

A synthetic output folder (TFRecord output, so no per-patch file listing: dataset.json, a
manifest.jsonl in the layout `pixelbeam run` writes, ~450 bytes a row, every planned patch
done: 90% written, 10% filtered by two completed runs) is rerun by `pixelbeam.pipeline.run.submit`
up to its "nothing to do" (fingerprint check, resume state, the counts it reports: everything
the launcher does before a Beam pipeline exists), each variant in a fresh process that reports
its peak RSS:
  record - the last run's completion record (runs/<run_id>.json, written by the job's last
           stage): the manifest's counts, trusted when its size matches the manifest's;
  rows   - an output without records (written before them, still resumable): every manifest
           row parsed with json.loads, then the counts streamed from it (skipped above 2*10^6
           rows: over a minute at 10^7).
Both must find "nothing to do" with the same count. The folder is temporary and deleted.
The job's own plan (cells, regions) is the demo's and is not what is measured here (issue 17
items 3 and 5 plan 10^6+ patches on the workers).

    .venv/bin/python benchmarks/resume_scale.py [--sizes 1000000,10000000] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS_MAX_ROWS = 2_000_000
RUNS = ("20261121T094134-7b43", "20261121T101502-c0de")


def demo_config(output_path: str):
    sys.path.insert(0, ROOT)
    from pixelbeam.pipeline.config import parse_config
    return parse_config({"source": {"uri": os.path.join(ROOT, "data", "RGB.byte.tif")},
                         "regions": os.path.join(ROOT, "data", "regions.geojson"),
                         "grid": {"crs": "native", "scale": "native", "patch_size": 48},
                         "output": {"path": output_path, "formats": ["tfrecord"]}}, name="resume_scale")


class Scaled:
    """The demo's job with `planned` patches (what plan_resume compares the done count with)."""

    def __init__(self, job, planned: int):
        self._job, self.planned = job, planned

    def __getattr__(self, name):
        return getattr(self._job, name)


def write_output(folder: str, rows: int, record: bool) -> dict:
    """The synthetic output folder (see the module docstring); its counts."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from summary_scale import row_template
    from pixelbeam.pipeline import resume
    from pixelbeam.pipeline.plan import prepare_job
    from pixelbeam.transforms.storage import to_json_line
    config = demo_config(folder)
    job = prepare_job(config)
    template = row_template()
    counts = {"written": 0, "filtered": 0}
    with open(os.path.join(folder, "manifest.jsonl"), "w", encoding="utf-8") as f:
        for start in range(0, rows, 100_000):
            batch = []
            for i in range(start, min(start + 100_000, rows)):
                status, run = ("filtered" if i % 10 == 3 else "written"), RUNS[i % 2]
                pid = f"epsg32618_r{i // 1000}_c{i % 1000}"
                files = f'["tfrecord/patches-{run}-*.tfrecord.gz"]' if status == "written" else "[]"
                reason = '"masked ratio 0.9932 > max_masked_ratio 0.95"' if status == "filtered" else "null"
                batch.append(template % {"id": pid, "status": status, "run": run, "reason": reason, "files": files})
                counts[status] += 1
            f.writelines(batch)
    fingerprint = resume.config_fingerprint(config)
    state = {"fingerprint": fingerprint, "plan_digest": resume.plan_digest(job), "runs": list(RUNS)}
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        f.write(to_json_line(state))
    if record:
        os.makedirs(os.path.join(folder, "runs"))
        doc = {"run_id": RUNS[-1], "fingerprint": fingerprint, "plan_digest": state["plan_digest"], "completed": True,
               "runs": list(RUNS), "manifest": {**counts, "rows": rows,
                                                "bytes": os.path.getsize(os.path.join(folder, "manifest.jsonl"))}}
        with open(os.path.join(folder, "runs", f"{RUNS[-1]}.json"), "w") as f:
            f.write(json.dumps(doc))
    return counts


def child(folder: str, planned: int) -> dict:
    """Runs in a fresh process: plan the rerun, then report time and peak RSS (MB)."""
    sys.path.insert(0, ROOT)
    from pixelbeam.pipeline.plan import prepare_job
    from pixelbeam.pipeline.results import RunResult
    from pixelbeam.pipeline.run import submit
    from pixelbeam.pipeline.runner import pipeline_options
    job = Scaled(prepare_job(demo_config(folder)), planned)
    imported_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started, cpu = time.perf_counter(), time.process_time()
    result = submit(job, pipeline_options([]))  # what `pixelbeam run` does before a Beam pipeline exists
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    nothing = isinstance(result, RunResult) and result.lines[0].startswith("nothing to do")
    return {"seconds": seconds, "cpu_s": cpu_s, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "imports_mb": imported_mb, "nothing_to_do": nothing,
            "done": result.written + result.filtered if nothing else None}


def in_child(*args: str) -> dict:
    """This script with `args` in a fresh process (its own peak RSS); its last stdout line."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from summary_scale import in_child as run_in_child
    return run_in_child(*args, script=__file__)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="manifest rows, comma-separated")
    parser.add_argument("--quick", action="store_true", help="20,000 rows only (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON (benchmarks/run_all.py)")
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "PLANNED"), help=argparse.SUPPRESS)
    parser.add_argument("--write", nargs=3, metavar=("FOLDER", "ROWS", "RECORD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    if args.write:
        print(json.dumps(write_output(args.write[0], int(args.write[1]), args.write[2] == "1")))
        return 0
    if args.quick:
        args.sizes = "20000"
    results = []
    print(f"{'rows':>10} {'file MB':>8} {'variant':>7} {'seconds':>8} {'cpu s':>7} {'peak MB':>8} {'+plan MB':>8}",
          flush=True)
    for rows in map(int, args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="pixelbeam-resume-") as tmp:
            in_child("--write", tmp, str(rows), "1")
            file_mb = os.path.getsize(os.path.join(tmp, "manifest.jsonl")) / 2**20
            result = {"rows": rows, "file_mb": file_mb, "record": in_child("--child", tmp, str(rows)), "rows_parsed": None}
            if rows <= ROWS_MAX_ROWS:
                os.remove(os.path.join(tmp, "runs", f"{RUNS[-1]}.json"))  # an output written before records
                result["rows_parsed"] = in_child("--child", tmp, str(rows))
        for variant, key in (("record", "record"), ("rows", "rows_parsed")):
            r = result[key]
            if r is None:
                print(f"{rows:>10} {file_mb:>8.0f} {variant:>7} {'skipped':>8}")
                continue
            print(f"{rows:>10} {file_mb:>8.0f} {variant:>7} {r['seconds']:>8.3f} {r['cpu_s']:>7.3f} "
                  f"{r['peak_mb']:>8.0f} {r['peak_mb'] - r['imports_mb']:>8.0f}", flush=True)
        found = [result[k] for k in ("record", "rows_parsed") if result[k]]
        if any(not r["nothing_to_do"] or r["done"] != rows for r in found):
            print(f"MISMATCH at {rows} rows: {found}")
            return 1
        if result["rows_parsed"]:
            print(f"{'':>10} {'':>8} {'ratio':>7} {result['record']['seconds'] / result['rows_parsed']['seconds']:>8.4f} "
                  "(record / rows, wall time)")
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "resume_scale", "results": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
