"""Every benchmark in benchmarks/, then one table of ratios: pixelbeam vs the raw work and vs the
baselines, each measured side by side within its own script's run.

Runs each `benchmarks/*.py` script (except this one) in its own process with `--json FILE`
(and `--quick` when given), shows its own output on stderr as it goes, and prints the table on
stdout. A script joins the table by accepting `--json FILE` (and `--quick` for a smoke run) and
having a summary in SUMMARIES; one without `--quick` is skipped by `--quick` runs, one without
`--json` runs and keeps its own table. A ratio is pixelbeam's number over the reference's: for times lower is better (1.00 =
no overhead), for throughputs higher is better (1.00 = as fast as the reference).

    .venv/bin/python benchmarks/run_all.py            # full runs (ee_throughput takes ~4 min)
    .venv/bin/python benchmarks/run_all.py --quick    # smoke runs (~1.5 min)
    .venv/bin/python benchmarks/run_all.py --only extract_overhead
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))

# (measure, pixelbeam value, reference, reference value, ratio, which way is better)
Row = tuple[str, str, str, str, float, str]


def scripts() -> list[str]:
    """The benchmark scripts: every benchmarks/*.py but this runner and private modules."""
    me = os.path.basename(__file__)
    return sorted(p for p in glob.glob(os.path.join(HERE, "*.py"))
                  if os.path.basename(p) != me and not os.path.basename(p).startswith("_"))


def options_of(path: str) -> set[str]:
    """Which of run_all's options (--quick, --json) a script declares."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return {opt for opt in ("--quick", "--json") if f'"{opt}"' in text}


def extract_overhead_rows(doc: dict) -> list[Row]:
    rows = []
    for r in doc["results"]:
        what = f"{r['patches']} patches of {r['patch_px']} px, stride {r['stride_px']}"
        raw = r["raw"]

        def value(v):
            return f"{v['patches_per_s']:.0f} patches/s, {v['cpu_s_per_1000']:.2f} CPU s/1,000"
        for name, label in (("npy", "NPY, in-memory"), ("npy_2proc", "NPY, 2 processes"),
                            ("npy_tfrecord", "NPY + TFRecord"), ("tfrecord", "TFRecord only")):
            if name in r:
                rows.append((f"{what}: {label}", value(r[name]), "raw in-bounds rasterio + np.save loop",
                             value(raw), r[name]["patches_per_s"] / raw["patches_per_s"], "rate, higher (target npy >= 0.5)"))
        beyond = (r.get("npy_beyond_fixed") or {}).get("patches_per_s")
        if beyond:
            rows.append((f"{what}: NPY beyond a run's fixed cost ({r['fixed']['seconds']:.1f} s)", f"{beyond:.0f} patches/s",
                         "raw in-bounds rasterio + np.save loop", value(raw), beyond / raw["patches_per_s"],
                         "rate, higher"))
        if "npy_2proc" in r and "npy" in r:
            rows.append((f"{what}: NPY, 2 processes", value(r["npy_2proc"]), "NPY, in-memory", value(r["npy"]),
                         r["npy_2proc"]["patches_per_s"] / r["npy"]["patches_per_s"], "rate, higher (target >= 1.6)"))
        if "npy_tfrecord" in r and "npy" in r:
            rows.append((f"{what}: NPY + TFRecord", f"{r['npy_tfrecord']['seconds']:.2f} s", "NPY alone",
                         f"{r['npy']['seconds']:.2f} s", r["npy_tfrecord"]["seconds"] / r["npy"]["seconds"],
                         "time, lower (target <= 2)"))
    return rows


def ee_throughput_rows(doc: dict) -> list[Row]:
    by = {r["client"]: r for r in doc["rows"]}

    def find(prefix: str, faults: bool):
        for name, r in by.items():
            if name.startswith(prefix) and (("faults" in name) == faults):
                return r
        return None

    rows = []
    setup = f"L {doc['latency_s']:g} s, C {doc['concurrency']}, {doc['patches']} patches"
    for faults in (False, True):
        pb = find("pixelbeam", faults)
        if pb is None:
            continue
        tag = f", {doc['faults']:.0%} faults" if faults else ""
        value = f"{pb['rate']:.2f} patches/s, lost {pb['lost']}"
        if not faults:
            rows.append((f"{setup}: throughput", value, "quota C/L", f"{doc['quota_rate']:.2f} patches/s",
                         pb["rate"] / doc["quota_rate"], "rate, higher"))
        for prefix, label in (("ideal", "ideal client (told the quota)"), ("ee pool", "bare ee client pool"),
                              ("sequential", "sequential getPixels loop"), ("notebook", "notebook thread pool (64)")):
            ref = find(prefix, faults)
            if ref is not None and ref["rate"] > 0:
                rows.append((f"{setup}{tag}: throughput", value, label,
                             f"{ref['rate']:.2f} patches/s, lost {ref['lost']}", pb["rate"] / ref["rate"],
                             "rate, higher" + ("" if faults or prefix != "ideal" else " (target >= 0.95)")))
        ideal = find("ideal", faults)
        if not faults and ideal is not None and pb.get("wall_s") and ideal["rate"] > 0:
            whole = int(str(pb["patches"]).split()[0]) / pb["wall_s"]
            rows.append((f"{setup}: whole process", f"{whole:.2f} patches/s", "ideal client over its fetch span",
                         f"{ideal['rate']:.2f} patches/s", whole / ideal["rate"], "rate, higher (target >= 0.85)"))
        for key, what in (("span_cpu_s", "CPU s / 1,000 patches, fetch span"),
                          ("cpu_s", "CPU s / 1,000 patches, whole process")):
            if faults or pb.get(key) is None:
                continue
            per = {name: 1000 * r[key] / max(1, int(str(r["patches"]).split()[0]))
                   for name, r in (("pixelbeam", pb), ("ee pool", find("ee pool", False)), ("ideal", ideal)) if r}
            for name, label in (("ee pool", "bare ee client pool"), ("ideal", "ideal client")):
                if name in per:
                    rows.append((f"{setup}: {what}", f"{per['pixelbeam']:.2f} s", label, f"{per[name]:.2f} s",
                                 per["pixelbeam"] / max(per[name], 1e-9), "CPU, lower (target <= 6 s)"))
    return rows


def plan_scale_rows(doc: dict) -> list[Row]:
    rows = []
    smallest = doc["results"][0]["cells"]["peak_mb"]
    for r in doc["results"]:
        cells, enum = r["cells"], r["enumerate"]
        what = f"plan {cells['patches']:,} patches"
        rows.append((f"{what}: launcher peak memory", f"{cells['peak_mb']:.0f} MB", "the same at 10^5 patches",
                     f"{smallest:.0f} MB", cells["peak_mb"] / smallest, "memory, lower (1.00 = flat)"))
        if enum:
            rows.append((f"{what}: launcher time", f"{cells['seconds']:.2f} s", "enumerating every patch",
                         f"{enum['seconds']:.2f} s, {enum['peak_mb']:.0f} MB", cells["seconds"] / enum["seconds"],
                         "time, lower"))
    return rows


def summary_scale_rows(doc: dict) -> list[Row]:
    rows = []
    smallest = doc["results"][0]
    for r in doc["results"]:
        new, old = r["streaming"], r["list"]
        what = f"summary of {r['rows']:,} manifest rows"
        added = new["peak_mb"] - new["imports_mb"]  # memory the count adds to the launcher
        if old:
            old_added = max(old["peak_mb"] - old["imports_mb"], 1.0)
            rows.append((f"{what}: memory added", f"{added:.0f} MB", "list of dicts (former)",
                         f"{old_added:.0f} MB", added / old_added, "memory, lower"))
            rows.append((f"{what}: time", f"{new['seconds']:.2f} s", "list of dicts (former)",
                         f"{old['seconds']:.2f} s", new["seconds"] / old["seconds"], "time, lower"))
        elif r is not smallest:
            base = smallest["streaming"]
            base_added = max(base["peak_mb"] - base["imports_mb"], 1.0)
            rows.append((f"{what}: memory added", f"{added:.0f} MB", f"the same at {smallest['rows']:,} rows",
                         f"{base_added:.0f} MB", added / base_added,
                         f"memory, lower ({r['rows'] / smallest['rows']:.0f}x the rows)"))
    return rows


def table_throughput_rows(doc: dict) -> list[Row]:
    rows = []
    r = doc.get("raster")
    if r:
        rows.append((f"table of {r['files']} files x {r['points']:,} points x {r['bands']} bands: time",
                     f"{r['pixelbeam_s']:.2f} s", "rasterio + numpy + one Parquet loop", f"{r['baseline_s']:.2f} s",
                     r["ratio"], f"time, lower (rows {r['check']})"))
    e = doc.get("ee")
    if e:
        what = f"table, L {e['latency_s']:g} s, C {e['concurrency']}, {e['images']} images x {e['points']} points"
        pb, ref = e["pixelbeam"], e["per_image"]
        label = f"a computePixels per (group, image), {e['concurrency']} threads"
        rows.append((f"{what}: wall time", f"{pb['wall_s']:.1f} s", label, f"{ref['wall_s']:.1f} s",
                     e["wall_ratio"], f"time, lower (rows {e['check']})"))
        rows.append((f"{what}: requests", str(pb["requests"]), label, str(ref["requests"]),
                     e["requests_ratio"], "requests, lower"))
    return rows


def ee_expression_rows(doc: dict) -> list[Row]:
    by = {r["client"].split(" (")[0]: r for r in doc["rows"]}
    pb, ideal = by["pixelbeam"], by["ideal"]
    what = f"L {doc['latency_s']:g} s, C {doc['concurrency']}, {doc['patches']} patches, {doc['images']}-image expression"
    rows = [(f"{what}: throughput", f"{pb['rate']:.2f} patches/s, lost {pb['lost']}",
             "ideal client, same pre-serialized expression", f"{ideal['rate']:.2f} patches/s", pb["rate"] / ideal["rate"],
             "rate, higher (target >= 0.95)"),
            (f"{what}: CPU s / 1,000 patches", f"{pb['cpu_per_1000']:.1f} s", "ideal client (whole process)",
             f"{ideal['cpu_per_1000']:.1f} s", pb["cpu_per_1000"] / max(ideal["cpu_per_1000"], 1e-9), "CPU, lower")]
    naive = by.get("ee-client")
    if naive:
        rows.append((f"{what}: throughput", f"{pb['rate']:.2f} patches/s", "ee.data.computePixels(ee.Image), C threads",
                     f"{naive['rate']:.2f} patches/s, {naive['cpu_per_1000']:.1f} CPU s / 1,000",
                     pb["rate"] / naive["rate"], "rate, higher"))
    return rows


def local_limits_rows(doc: dict) -> list[Row]:
    m = doc["median"]
    what = f"{m['fitted']['patches']} local patches of {doc['patch_px']} px"
    fitted, former, layers = m["fitted"], m["former"], m["layers"]
    return [(f"{what}: limits fitting a local file", f"{fitted['patches_per_s']:.1f} patches/s",
             "former default: EE's quota (40, 100/s)", f"{former['patches_per_s']:.1f} patches/s",
             fitted["patches_per_s"] / former["patches_per_s"], "throughput, higher"),
            (f"{what}: + a vector target layer", f"{layers['run_seconds']:.2f} s", "the image layer alone",
             f"{fitted['run_seconds']:.2f} s", layers["run_seconds"] / fitted["run_seconds"], "time, lower")]


def resume_scale_rows(doc: dict) -> list[Row]:
    """A rerun's planning from the run record vs parsing every manifest row (where both ran)."""
    rows = []
    for r in doc["results"]:
        new = r["record"]
        if r.get("rows_parsed"):
            old = r["rows_parsed"]
            rows.append((f"rerun planning, {r['rows']:,} rows", f"{new['seconds']:.3f} s", "json.loads of every row",
                         f"{old['seconds']:.3f} s", new["seconds"] / max(old["seconds"], 1e-9), "time, lower"))
        else:
            rows.append((f"rerun planning, {r['rows']:,} rows (peak {new['peak_mb']:.0f} MB)", f"{new['seconds']:.3f} s",
                         "target", "10 s", new["seconds"] / 10.0, "time, lower"))
    return rows


def startup_rows(doc: dict) -> list[Row]:
    c, parts = doc["commands"], doc["run_parts"]
    beam = c["python -c 'import apache_beam'"]
    rows = [(name, f"{c[name]['seconds']:.2f} s, {c[name]['cpu_s']:.2f} CPU s", "python -c 'import apache_beam'",
             f"{beam['seconds']:.2f} s, {beam['cpu_s']:.2f} CPU s", c[name]["seconds"] / beam["seconds"], "time, lower")
            for name in ("pixelbeam --help", "pixelbeam plan", "pixelbeam run (43 patches)")]
    rows.append(("pixelbeam run (43 patches): pictures after the run", f"{parts.get('pictures', 0):.2f} s",
                 "the pipeline itself", f"{parts['pipeline']:.2f} s", parts.get("pictures", 0) / parts["pipeline"],
                 "time, lower"))
    return rows


SUMMARIES: dict[str, Callable[[dict], list[Row]]] = {
    "startup": startup_rows,
    "ee_expression": ee_expression_rows,
    "local_limits": local_limits_rows,
    "extract_overhead": extract_overhead_rows,
    "ee_throughput": ee_throughput_rows,
    "plan_scale": plan_scale_rows,
    "summary_scale": summary_scale_rows,
    "resume_scale": resume_scale_rows,
    "table_throughput": table_throughput_rows,
}


def run_script(path: str, quick: bool, with_json: bool) -> tuple[dict | None, float, str]:
    """Run one benchmark; (its JSON results or None, wall seconds, error text)."""
    with tempfile.TemporaryDirectory(prefix="pixelbeam-bench-all-") as tmp:
        out = os.path.join(tmp, "results.json")
        cmd = [sys.executable, path] + (["--json", out] if with_json else []) + (["--quick"] if quick else [])
        print(f"== {' '.join(os.path.relpath(c) if c == path else c for c in cmd[1:])}", file=sys.stderr, flush=True)
        started = time.monotonic()
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        wall = time.monotonic() - started
        if proc.returncode != 0:
            return None, wall, f"exit status {proc.returncode}"
        if not with_json:
            return {}, wall, ""
        try:
            with open(out) as f:
                return json.load(f), wall, ""
        except (OSError, json.JSONDecodeError) as e:
            return None, wall, f"no JSON results ({e}); does the script accept --json FILE?"


def print_table(rows: list[list[str]]) -> None:
    head = ["benchmark", "measure", "pixelbeam", "reference", "reference value", "ratio", "better"]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    for line in [head, ["-" * w for w in widths]] + rows:
        print(" | ".join(x.rjust(w) if i == 5 else x.ljust(w) for i, (x, w) in enumerate(zip(line, widths))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark (smoke runs)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    args = parser.parse_args(argv)
    chosen = [p for p in scripts() if not args.only or os.path.splitext(os.path.basename(p))[0] in args.only]
    if not chosen:
        parser.error(f"no benchmark named {args.only}; have {[os.path.basename(p) for p in scripts()]}")
    table, failures, notes = [], [], []
    for path in chosen:
        name = os.path.splitext(os.path.basename(path))[0]
        options = options_of(path)
        if args.quick and "--quick" not in options:
            notes.append(f"{name}: skipped (no --quick smoke mode; run it alone)")
            continue
        doc, wall, error = run_script(path, args.quick, "--json" in options)
        if doc is None:
            failures.append(f"{name}: {error}")
            continue
        summarize = SUMMARIES.get(doc.get("benchmark", name))
        if summarize is None:
            notes.append(f"{name}: ran in {wall:.0f} s; its own table is above (no --json results, or no "
                         "summary in run_all.py's SUMMARIES)")
            continue
        for measure, value, ref, ref_value, ratio, better in summarize(doc):
            table.append([name, measure, value, ref, ref_value, f"{ratio:.3f}", better])
    print(f"\npixelbeam benchmarks{' (--quick)' if args.quick else ''} | {os.cpu_count()} cores | "
          f"ratio = pixelbeam / reference")
    if table:
        print_table(table)
    for note in notes:
        print(f"note: {note}")
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
