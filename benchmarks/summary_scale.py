"""The end-of-run summary at scale: time and peak memory of counting a 10^6 .. 10^7-row manifest.

A synthetic manifest.jsonl in the layout `pixelbeam run` writes (~450 bytes a row: 90% written,
9% filtered, 1% failed and retried by a rerun whose rows come last, so ~1% of rows repeat an id)
is counted, each variant in a fresh process that reports its peak RSS, by:
  streaming - what the summary does (pixelbeam.pipeline.summary.manifest_outcomes): the file read in
              chunks, two values taken per line, a 64-bit hash + status code kept per row;
  list      - the former way: the whole file read, every row parsed into a dict, then counted
              (skipped above 2*10^6 rows, where it needs tens of GB).
Both must give the same counts. The file is written to a temporary folder and deleted.

    .venv/bin/python benchmarks/summary_scale.py [--sizes 1000000,10000000] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIST_MAX_ROWS = 2_000_000


def row_template() -> str:
    """One manifest line as transforms/sinks.to_json_line writes it, with %-placeholders."""
    sys.path.insert(0, ROOT)
    from pixelbeam.transforms.storage import to_json_line
    row = {"patch_id": "@ID", "region_id": "coast", "status": "@STATUS", "reason": "@REASON",
           "bounds_lonlat": [-77.962454805, 24.437873879, -77.936692609, 24.461456832], "crs": "EPSG:32618",
           "transform": [10.0, 0.0, 199680.0, 0.0, -10.0, 2708480.0], "width": 256, "height": 256, "margin": 0,
           "files": ["@FILES"], "valid_fraction": 1.0, "requests": 1, "attempts": 1, "bytes": 1638400,
           "run_id": "@RUN"}
    line = to_json_line(row).replace("%", "%%")
    for marker, field in (("@ID", "%(id)s"), ("@STATUS", "%(status)s"), ("@RUN", "%(run)s")):
        line = line.replace(marker, field)
    return (line.replace('"@REASON"', "%(reason)s").replace('["@FILES"]', "%(files)s")) + "\n"


def write_manifest(path: str, rows: int) -> tuple[int, int]:
    """A synthetic manifest of about `rows` rows; (rows written, distinct ids)."""
    template = row_template()
    ids = round(rows / 1.01)
    reasons = {"written": "null", "filtered": '"masked ratio 0.9932 > max_masked_ratio 0.95"',
               "failed": '"fetch: HttpError: <HttpError 429 \\"Quota exceeded\\">"'}

    def line(i: int, status: str, run: str) -> str:
        pid = f"epsg32618_r{i // 1000}_c{i % 1000}"
        files = f'["npy/{pid}.npy","tfrecord/patches-{run}-*.tfrecord.gz"]' if status == "written" else "[]"
        return template % {"id": pid, "status": status, "run": run, "reason": reasons[status], "files": files}

    def first_status(i: int) -> str:
        return "failed" if i % 100 == 7 else "filtered" if i % 10 == 3 else "written"

    written = 0
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, ids, 100_000):
            batch = [line(i, first_status(i), "20261121T094134-7b43") for i in range(start, min(start + 100_000, ids))]
            f.writelines(batch)
            written += len(batch)
        for start in range(0, ids, 100_000):  # the rerun retries the failures
            batch = [line(i, "failed" if i % 1000 == 7 else "written", "20261121T101502-c0de")
                     for i in range(start + 7, min(start + 100_000, ids), 100)]
            f.writelines(batch)
            written += len(batch)
    return written, ids


def list_outcomes(output_path: str) -> tuple[dict, int]:
    """The former pipeline/summary.py: read_manifest (a list of dicts) + count_outcomes."""
    import collections

    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(os.path.join(output_path, "manifest.jsonl")) as f:
        rows = [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]
    by_id = collections.Counter(r["patch_id"] for r in rows)
    statuses = collections.Counter(r["status"] for r in {r["patch_id"]: r for r in rows}.values())
    return dict(statuses), sum(n - 1 for n in by_id.values() if n > 1)


def child(mode: str, output_path: str) -> dict:
    """Runs in a fresh process: count, then report time and peak RSS (MB), also after imports."""
    sys.path.insert(0, ROOT)
    from pixelbeam.pipeline.summary import manifest_outcomes  # both variants: the same imports
    imported_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    counts, duplicates = manifest_outcomes(output_path) if mode == "streaming" else list_outcomes(output_path)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak_mb, "imports_mb": imported_mb, "counts": counts,
            "duplicates": duplicates}


def in_child(*args: str, script: str = __file__) -> dict:
    """Run `script` (this one by default) with `args` in a fresh process; its last stdout line,
    as JSON. This process stays small (no Beam, no rows): Linux carries a parent's peak RSS into
    the ru_maxrss of a child it starts, which would hide a child's smaller peak."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="manifest rows, comma-separated")
    parser.add_argument("--quick", action="store_true", help="20,000 rows only (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON (benchmarks/run_all.py)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "OUTPUT"), help=argparse.SUPPRESS)
    parser.add_argument("--write", nargs=2, metavar=("PATH", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    if args.write:
        rows, ids = write_manifest(args.write[0], int(args.write[1]))
        print(json.dumps({"rows": rows, "ids": ids}))
        return 0
    if args.quick:
        args.sizes = "20000"
    results = []
    print(f"{'rows':>10} {'ids':>10} {'file MB':>8} {'variant':>9} {'seconds':>8} {'rows/s':>10} {'peak MB':>8} "
          f"{'+count MB':>9}", flush=True)
    for target in map(int, args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="pixelbeam-summary-") as tmp:
            manifest = os.path.join(tmp, "manifest.jsonl")
            written = in_child("--write", manifest, str(target))
            rows, ids, file_mb = written["rows"], written["ids"], os.path.getsize(manifest) / 2**20
            result = {"rows": rows, "ids": ids, "file_mb": file_mb, "streaming": in_child("--child", "streaming", tmp),
                      "list": in_child("--child", "list", tmp) if rows <= LIST_MAX_ROWS else None}
        for variant in ("streaming", "list"):
            r = result[variant]
            if r is None:
                print(f"{rows:>10} {ids:>10} {file_mb:>8.0f} {variant:>9} {'skipped':>8}")
                continue
            print(f"{rows:>10} {ids:>10} {file_mb:>8.0f} {variant:>9} {r['seconds']:>8.2f} "
                  f"{rows / r['seconds']:>10,.0f} {r['peak_mb']:>8.0f} {r['peak_mb'] - r['imports_mb']:>9.0f}",
                  flush=True)
        if result["list"] and (result["list"]["counts"], result["list"]["duplicates"]) != (
                result["streaming"]["counts"], result["streaming"]["duplicates"]):
            print(f"MISMATCH at {rows} rows: streaming {result['streaming']} vs list {result['list']}")
            return 1
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "summary_scale", "results": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
