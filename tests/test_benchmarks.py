"""benchmarks/run_all.py: runs the scripts and builds one table (numbers are not checked here:
benchmarks are measured, never asserted)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
# a guard against a hung benchmark, not a time limit: a --quick benchmark takes under a minute
# to a few minutes, several times that on a 2-core machine beside a CPU-heavy job (load 8-10),
# where 300 s guards were within reach
HANG_GUARD_S = 3600

import run_all  # noqa: E402


def test_run_all_quick_extract_overhead_prints_one_table():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run_all.py"), "--quick",
                           "--only", "extract_overhead"], cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("benchmark") and "ratio" in line for line in lines)
    rows = [line.split("|") for line in lines if line.startswith("extract_overhead")]
    assert len(rows) == 6  # the scene case: 4 jobs against the raw loop, 2 processes / 1, NPY + TFRecord / NPY
    assert all(float(r[5]) > 0 for r in rows)
    assert all("754 patches of 128 px, stride 32" in r[1] for r in rows)


def test_run_all_quick_summary_scale_compares_streaming_with_the_list_of_dicts():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run_all.py"), "--quick",
                           "--only", "summary_scale"], cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("summary_scale")]
    assert [r[1].strip() for r in rows] == ["summary of 20,000 manifest rows: memory added",
                                            "summary of 20,000 manifest rows: time"]
    assert all(float(r[5]) > 0 for r in rows)


def test_summary_scale_summary_compares_larger_manifests_with_the_smallest():
    def run(peak, seconds=1.0):
        return {"peak_mb": peak, "imports_mb": 200.0, "seconds": seconds}
    doc = {"results": [{"rows": 10**6, "streaming": run(250.0, 2.0), "list": run(3200.0, 16.0)},
                       {"rows": 10**7, "streaming": run(700.0), "list": None}]}
    table = run_all.summary_scale_rows(doc)
    assert [(ref, round(ratio, 6)) for _, _, ref, _, ratio, _ in table] == [
        ("list of dicts (former)", round(50 / 3000, 6)), ("list of dicts (former)", 0.125),
        ("the same at 1,000,000 rows", 10.0)]


def test_ee_throughput_summary_compares_pixelbeam_with_every_baseline():
    def row(client, rate, lost=0):
        return {"client": client, "rate": rate, "lost": lost}
    doc = {"latency_s": 1.0, "concurrency": 40, "patches": 800, "faults": 0.05, "quota_rate": 40.0,
           "rows": [row("ideal (40 threads)", 37.7), row("pixelbeam", 37.2), row("sequential loop", 1.0),
                    row("notebook (64 threads)", 16.5, 3), row("ideal (40 threads) 5% faults", 33.7),
                    row("pixelbeam 5% faults", 33.6)]}
    table = run_all.ee_throughput_rows(doc)
    ratios = {(measure.endswith("faults: throughput"), ref): ratio for measure, _, ref, _, ratio, _ in table}
    assert len(ratios) == 5
    assert abs(ratios[(False, "quota C/L")] - 37.2 / 40) < 1e-9
    assert abs(ratios[(False, "ideal client (told the quota)")] - 37.2 / 37.7) < 1e-9
    assert abs(ratios[(False, "sequential getPixels loop")] - 37.2) < 1e-9
    assert abs(ratios[(False, "notebook thread pool (64)")] - 37.2 / 16.5) < 1e-9
    assert abs(ratios[(True, "ideal client (told the quota)")] - 33.6 / 33.7) < 1e-9


def test_ee_throughput_summary_reports_cpu_per_1000_patches_and_the_whole_process_rate():
    def row(client, rate, patches, wall_s, cpu_s, span_cpu_s):
        return {"client": client, "rate": rate, "lost": 0, "patches": str(patches), "wall_s": wall_s,
                "cpu_s": cpu_s, "span_cpu_s": span_cpu_s}
    doc = {"latency_s": 0.5, "concurrency": 20, "patches": 1000, "faults": 0, "quota_rate": 40.0,
           "rows": [row("ideal (20 threads)", 40.0, 1000, 26.0, 1.5, 1.25), row("ee pool (20 threads)", 38.0, 1000, 28.0, 4.0, 3.0),
                    row("pixelbeam", 38.0, 1000, 32.0, 8.0, 3.0)]}
    table = {(measure.split(": ")[1], ref): (value, ratio) for measure, value, ref, _, ratio, _ in run_all.ee_throughput_rows(doc)}
    assert table[("whole process", "ideal client over its fetch span")] == ("31.25 patches/s", 31.25 / 40)
    assert table[("CPU s / 1,000 patches, fetch span", "bare ee client pool")] == ("3.00 s", 1.0)
    assert table[("CPU s / 1,000 patches, whole process", "ideal client")] == ("8.00 s", 8.0 / 1.5)
    assert abs(table[("throughput", "bare ee client pool")][1] - 1.0) < 1e-9


def test_run_all_quick_table_throughput_compares_both_sources_with_their_baselines():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run_all.py"), "--quick",
                           "--only", "table_throughput"], cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [[x.strip() for x in line.split("|")] for line in proc.stdout.splitlines()
            if line.startswith("table_throughput")]
    assert [r[1].split(": ")[-1] for r in rows] == ["time", "wall time", "requests"]
    assert all(float(r[5]) > 0 for r in rows)
    assert "rows equal" in rows[0][6] and "rows equal" in rows[1][6]  # both tables match their baseline's rows
    # its own table (on stderr under run_all): every client, requests counted by the emulator
    for key in ("rasterio + numpy + Parquet loop", "pixelbeam (stacked)", "per image (4 threads)", "fixed cost"):
        assert key in proc.stderr


def test_table_throughput_summary_reports_time_and_requests():
    doc = {"raster": {"files": 100, "points": 7000, "bands": 3, "pixelbeam_s": 2.0, "baseline_s": 0.25,
                      "ratio": 8.0, "check": "equal"},
           "ee": {"latency_s": 0.25, "concurrency": 8, "images": 30, "points": 300, "check": "equal",
                  "pixelbeam": {"wall_s": 6.0, "requests": 18}, "per_image": {"wall_s": 17.0, "requests": 480},
                  "wall_ratio": 6 / 17, "requests_ratio": 18 / 480}}
    table = run_all.table_throughput_rows(doc)
    assert [(measure.split(": ")[-1], value, ref_value) for measure, value, _, ref_value, _, _ in table] == [
        ("time", "2.00 s", "0.25 s"), ("wall time", "6.0 s", "17.0 s"), ("requests", "18", "480")]
    assert [round(ratio, 6) for *_, ratio, _ in table] == [8.0, round(6 / 17, 6), round(18 / 480, 6)]
    assert run_all.table_throughput_rows({"raster": {}, "ee": doc["ee"]})[0][0].endswith("wall time")  # --skip raster


def test_scripts_are_discovered_with_their_options():
    names = {os.path.basename(p): run_all.options_of(p) for p in run_all.scripts()}
    assert "run_all.py" not in names
    assert names["extract_overhead.py"] == names["ee_throughput.py"] == names["ee_expression.py"] == {"--quick", "--json"}
    assert names["summary_scale.py"] == names["table_throughput.py"] == {"--quick", "--json"}
    assert names["graph_size.py"] == {"--quick"}  # prints its own table of sizes


def test_graph_size_quick_prints_both_graphs():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "graph_size.py"), "--quick"],
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = [line for line in proc.stdout.splitlines() if line.strip().startswith("2,000")]
    assert row.count(" MB") == 4


def test_ee_expression_summary_reports_throughput_and_cpu_against_the_ideal_client():
    def row(client, rate, cpu):
        return {"client": client, "rate": rate, "cpu_per_1000": cpu, "lost": 0}
    doc = {"latency_s": 1.0, "concurrency": 16, "patches": 480, "images": 50,
           "rows": [row("ideal (16 threads)", 15.0, 4.0), row("pixelbeam", 14.4, 30.0), row("ee-client (16 threads)", 12.0, 40.0)]}
    table = run_all.ee_expression_rows(doc)
    assert [round(ratio, 6) for *_, ratio, _ in table] == [0.96, 7.5, 1.2]
    assert table[0][2] == "ideal client, same pre-serialized expression"


def test_run_all_quick_ee_expression_prints_its_rows():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run_all.py"), "--quick",
                           "--only", "ee_expression"], cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [[x.strip() for x in line.split("|")] for line in proc.stdout.splitlines() if line.startswith("ee_expression")]
    assert [r[1].split(": ")[-1] for r in rows] == ["throughput", "CPU s / 1,000 patches", "throughput"]
    assert all(float(r[5]) > 0 for r in rows)
    assert rows[0][2].endswith("lost 0"), rows[0]  # every planned patch written (masked ones too)


def test_run_all_quick_resume_scale_compares_the_record_with_parsing_every_row():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run_all.py"), "--quick",
                           "--only", "resume_scale"], cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("resume_scale")]
    assert [r[1].strip() for r in rows] == ["rerun planning, 20,000 rows"]
    assert rows[0][3].strip() == "json.loads of every row" and float(rows[0][5]) > 0


def test_resume_scale_summary_names_the_target_where_rows_were_not_parsed():
    doc = {"results": [{"rows": 10_000_000, "record": {"seconds": 0.02, "peak_mb": 268.0}, "rows_parsed": None}]}
    ((what, value, reference, target, ratio, better),) = run_all.resume_scale_rows(doc)
    assert what == "rerun planning, 10,000,000 rows (peak 268 MB)" and (reference, target) == ("target", "10 s")
    assert round(ratio, 6) == 0.002 and better == "time, lower"


def test_startup_summary_compares_each_command_with_importing_beam():
    def cmd(seconds, cpu):
        return {"seconds": seconds, "cpu_s": cpu}
    doc = {"commands": {"python -c pass": cmd(0.05, 0.02), "python -c 'import apache_beam'": cmd(2.0, 1.5),
                        "pixelbeam --help": cmd(0.1, 0.1), "pixelbeam plan": cmd(0.8, 0.5),
                        "pixelbeam run (43 patches)": cmd(6.0, 4.0)},
           "run_parts": {"import_run_path": 2.5, "plan": 0.1, "run_job": 3.0, "pictures": 1.0, "pipeline": 2.0}}
    table = run_all.startup_rows(doc)
    assert [round(ratio, 6) for *_, ratio, _ in table] == [0.05, 0.4, 3.0, 0.5]
    assert table[-1][2] == "the pipeline itself"
