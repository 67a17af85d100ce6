"""A job records its own completion from its last stage (issue 19): a launcher that dies right
after submission leaves a complete, resumable output without its staged plan; a job killed
mid-run leaves no completion record and is cleaned by the next run, as before."""

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from pixelbeam.pipeline import records, resume
from pixelbeam.pipeline.cli import main
from tests.test_point_table import write_collection, write_config, write_points
from tests.test_resume import ROOT, audit, raster_config, run_and_kill
from tests.test_table_resume import SPREAD, audit as audit_table, snapshot

# The launcher of a child process: it stages the plan in STAGE (as on Dataflow), submits the
# job to the local runner, and is SIGKILLed as soon as the runner returns: no code after the
# job itself runs (no wait_until_finish, no summary, no dataset.json from the launcher).
LEAVE = textwrap.dedent("""
    import os, signal, sys
    from pixelbeam.pipeline.config import load_config
    from pixelbeam.pipeline.runner import pipeline_options
    from pixelbeam.transforms.planning.staged import StageTo
    config, stage = load_config(sys.argv[1]), StageTo(sys.argv[2])
    if config.table is not None:
        from pixelbeam.pipeline.tables.plan import prepare_table_job
        from pixelbeam.pipeline.tables.run import run_table_job
        run_table_job(prepare_table_job(config), [], stage_to=stage, leave=True)
    else:
        from pixelbeam.pipeline.plan import prepare_job
        from pixelbeam.pipeline.run import submit
        submit(prepare_job(config), pipeline_options([]), stage_to=stage)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def launch_and_leave(cfg, stage):
    """Runs LEAVE in a child process; returns its exit status (-SIGKILL when it got that far)."""
    proc = subprocess.run([sys.executable, "-c", LEAVE, cfg, stage], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-3000:]
    return proc.returncode


def files_under(out):
    return {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(out, "**", "*"), recursive=True)}


def test_a_launcher_killed_right_after_submission_leaves_a_complete_resumable_output(tmp_path, capsys):
    cfg = raster_config(tmp_path)
    out, stage = str(tmp_path / "out"), str(tmp_path / "temp" / "pixelbeam-plan-x")
    launch_and_leave(cfg, stage)
    (record_file,) = glob.glob(os.path.join(out, "runs", "*.json"))
    record = json.load(open(record_file))
    state = json.load(open(os.path.join(out, "dataset.json")))
    assert state["runs"] == [record["run_id"]] and state["fingerprint"] == record["fingerprint"]
    assert "stats" in state  # completed by the last stage, as the launcher used to
    rows = audit(cfg)  # every patch once, no _running.json, no beam-temp
    assert record["manifest"]["rows"] == len(rows) == record["this_run"]["written"] + record["this_run"]["filtered"]
    assert record["manifest"]["bytes"] == os.path.getsize(os.path.join(out, "manifest.jsonl"))
    shards = sorted(os.path.relpath(p, out) for p in glob.glob(os.path.join(out, "tfrecord", "*")))
    assert record["files"]["shards"] == shards and record["files"]["reports"] == ["failed.jsonl", "manifest.jsonl"]
    assert os.path.isdir(stage) and os.listdir(stage) == []  # the plan was staged there, then deleted

    before = files_under(out)
    capsys.readouterr()
    assert main(["run", cfg]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert files_under(out) == before  # nothing deleted, nothing rewritten


def test_a_killed_job_leaves_no_record_and_is_cleaned_by_the_next_run(tmp_path):
    cfg = raster_config(tmp_path, patch_size=8, max_concurrent_requests=2)  # ~4,000 small patches
    out = str(tmp_path / "out")
    assert run_and_kill([sys.executable, "-m", "pixelbeam", "run", cfg], out, ROOT)
    assert not glob.glob(os.path.join(out, "runs", "*")) and not os.path.exists(os.path.join(out, "dataset.json"))
    assert os.path.exists(os.path.join(out, "_running.json"))
    assert main(["run", cfg]) == 0
    audit(cfg)
    (record,) = records.read_records(out).values()
    assert json.load(open(os.path.join(out, "dataset.json")))["runs"] == [record["run_id"]]


def test_an_output_without_run_records_stays_resumable(tmp_path, capsys):
    """Outputs written before run records existed: dataset.json's run list and the manifest rows."""
    cfg = raster_config(tmp_path)
    out = str(tmp_path / "out")
    assert main(["run", cfg]) == 0
    for path in glob.glob(os.path.join(out, "runs", "*")):
        os.remove(path)
    capsys.readouterr()
    assert main(["run", cfg]) == 0
    assert "nothing to do" in capsys.readouterr().out
    os.remove(sorted(glob.glob(os.path.join(out, "npy", "*.npy")))[0])
    assert main(["run", cfg]) == 0
    assert "1 fetched in this run" in capsys.readouterr().out
    audit(cfg)


def test_a_record_counts_only_the_manifest_it_finalized(tmp_path):
    """A later run killed after its manifest was renamed into place (but before its record):
    the last record no longer describes manifest.jsonl, so the rows are counted instead."""
    cfg = raster_config(tmp_path)
    out = str(tmp_path / "out")
    assert main(["run", cfg]) == 0
    (record,) = records.read_records(out).values()
    manifest = os.path.join(out, "manifest.jsonl")
    assert resume.recorded_done(record, manifest) == (record["manifest"]["written"] + record["manifest"]["filtered"],
                                                      record["manifest"]["written"])
    lines = open(manifest).readlines()
    open(manifest, "w").writelines(lines[:-1])  # another manifest than the recorded one
    assert resume.recorded_done(record, manifest) is None
    assert resume.recorded_done(None, manifest) is None


def test_a_record_of_another_config_is_refused(tmp_path, capsys):
    """The record alone (dataset.json lost) still tells another config's output apart."""
    cfg = raster_config(tmp_path, patch_size=48)
    out = str(tmp_path / "out")
    assert main(["run", cfg]) == 0
    os.remove(os.path.join(out, "dataset.json"))
    capsys.readouterr()
    assert main(["run", raster_config(tmp_path, patch_size=32)]) == 2
    assert "holds patches made with a different config" in capsys.readouterr().err


def test_overwrite_deletes_the_old_records(tmp_path):
    cfg = raster_config(tmp_path)
    out = str(tmp_path / "out")
    assert main(["run", cfg]) == 0
    (first,) = records.read_records(out)
    assert main(["run", cfg, "--overwrite"]) == 0
    (second,) = records.read_records(out)
    assert second != first and json.load(open(os.path.join(out, "dataset.json")))["runs"] == [second]


def test_a_table_launcher_killed_right_after_submission_leaves_a_complete_table(tmp_path, capsys):
    files, profile = write_collection(tmp_path, 3)
    cfg, times = write_config(tmp_path, files, write_points(tmp_path, profile, SPREAD[:10]), group_size=8)
    out, stage = str(tmp_path / "out"), str(tmp_path / "temp" / "pixelbeam-plan-t")
    launch_and_leave(cfg, stage)
    desc = audit_table(out, files, times, SPREAD[:10])  # table.json counts every row; no _running.json
    (record,) = records.read_records(out).values()
    assert desc["runs"] == [record["run_id"]] and record["this_run"]["groups_written"] > 0
    assert "groups_failed" not in record["this_run"]
    assert record["files"]["shards"] == desc["files"]
    assert os.path.isdir(stage) and os.listdir(stage) == []
    before = snapshot(out)
    capsys.readouterr()
    assert main(["run", cfg]) == 0
    assert "nothing to do" in capsys.readouterr().out and snapshot(out) == before


def test_a_killed_table_job_leaves_no_record(tmp_path):
    files, profile = write_collection(tmp_path, 40)
    cells = [(r, c) for r in range(2, 50, 2) for c in range(2, 60, 2)]
    cfg, times = write_config(tmp_path, files, write_points(tmp_path, profile, cells), group_size=2)
    out = str(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-m", "pixelbeam", "run", cfg], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None and not os.path.exists(os.path.join(out, "_running.json")):
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if not killed:
        pytest.skip("the table job finished before it could be killed")
    assert not records.read_records(out) and not os.path.exists(os.path.join(out, "table.json"))
    assert main(["run", cfg]) == 0
    desc = audit_table(out, files, times, cells)
    assert desc["runs"] == list(records.read_records(out))


def test_a_job_that_died_between_its_record_and_dataset_json_is_done(tmp_path, capsys):
    """The record is the commit point: dataset.json is written again from it, nothing refetched."""
    cfg = raster_config(tmp_path)
    out = str(tmp_path / "out")
    assert main(["run", cfg]) == 0
    expected = json.load(open(os.path.join(out, "dataset.json")))
    os.remove(os.path.join(out, "dataset.json"))
    capsys.readouterr()
    assert main(["run", cfg]) == 0
    assert "nothing to do" in capsys.readouterr().out
    again = json.load(open(os.path.join(out, "dataset.json")))
    assert again["runs"] == expected["runs"] and again["fingerprint"] == expected["fingerprint"]
    assert again["stats"] == expected["stats"]
    audit(cfg)


def test_a_table_job_that_died_before_table_json_is_done(tmp_path, capsys):
    files, profile = write_collection(tmp_path, 2)
    cfg, times = write_config(tmp_path, files, write_points(tmp_path, profile, SPREAD[:6]), group_size=8)
    out = str(tmp_path / "out")
    assert main(["run", cfg]) == 0
    expected = json.load(open(os.path.join(out, "table.json")))
    os.remove(os.path.join(out, "table.json"))
    capsys.readouterr()
    assert main(["run", cfg]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert json.load(open(os.path.join(out, "table.json"))) == expected
    audit_table(out, files, times, SPREAD[:6])
