"""Point tables rerun: only the groups no completed run wrote are fetched again, a killed run
leaves no (point, image) row twice, a finished table is left alone, another config is refused."""

import collections
import glob
import json
import os
import signal
import subprocess
import sys
import time

import yaml

from pixelbeam.pipeline.cli import main
from tests.test_point_table import expected_rows, read_table, write_collection, write_config, write_points

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPREAD = [(r, c) for r in range(2, 50, 8) for c in range(2, 60, 8)]  # 48 points, one per 8x8 px block


class Fetches:
    """Records the group id of every fetch and fails the groups in `fail` permanently."""

    def __init__(self, monkeypatch):
        from pixelbeam.transforms.sources import table as table_source
        from pixelbeam.transforms.fetching.retry import PermanentError
        self.ids, self.fail = [], set()
        real = table_source.RasterTableReader.fetch

        def fetch(reader, spec, part):
            self.ids.append(spec.patch_id)
            if spec.patch_id in self.fail:
                raise PermanentError("injected", cause="test")
            return real(reader, spec, part)
        monkeypatch.setattr(table_source.RasterTableReader, "fetch", fetch)


def snapshot(out):
    """{path: mtime_ns} of every file and folder under `out`, hidden ones included."""
    found = {}
    for folder, dirs, files in os.walk(out):
        for name in dirs + files:
            found[os.path.join(folder, name)] = os.stat(os.path.join(folder, name)).st_mtime_ns
    return found


def run_ids(out, pattern="part-*"):
    return {os.path.basename(p).split("-")[1] + "-" + os.path.basename(p).split("-")[2]
            for p in glob.glob(os.path.join(out, "table*", pattern))}


def audit(out, files, times, cells, formats=("parquet",)):
    """Every (point, image) pair exactly once with the values of a direct read, in every format;
    table.json counts them; nothing but completed runs' shards and their records in table/."""
    expected = expected_rows(files, times, cells)
    for fmt in formats:
        rows = read_table(out, fmt)
        pairs = collections.Counter((r["point_id"], r["id"]) for r in rows)
        assert sorted(pairs) == sorted(expected) and set(pairs.values()) == {1}, fmt
    for row in read_table(out):
        t, values = expected[(row["point_id"], row["id"])]
        assert row["time"] == t and (None if row["B1"] is None else (row["B1"], row["B2"], row["B3"])) == values
    desc = json.load(open(os.path.join(out, "table.json")))
    assert desc["rows"] == desc["planned_rows"] == len(expected) and desc["failed_rows"] == 0
    assert desc["files"] == sorted(os.path.relpath(p, out) for p in glob.glob(os.path.join(out, "table*", "part-*")))
    assert run_ids(out, "*") <= set(desc["runs"])  # every shard and groups record belongs to a completed run
    leftovers = [p for p in snapshot(out) if os.path.basename(p).startswith((".tmp-", "beam-temp-", "_running"))]
    assert not leftovers
    assert open(os.path.join(out, "failed.jsonl")).read() == ""
    return desc


def test_a_rerun_fetches_only_the_failed_group(tmp_path, monkeypatch, capsys):
    files, profile = write_collection(tmp_path, 3)
    cells = [(1, 3), (2, 4), (45, 55)]  # two groups of 32 px: g0_0 (p0, p1) and g1_1 (p2)
    cfg, times = write_config(tmp_path, files, write_points(tmp_path, profile, cells), group_size=32,
                              formats=["parquet", "csv"])
    out = str(tmp_path / "out")
    fetches = Fetches(monkeypatch)
    fetches.fail = {"g0_0"}
    assert main(["run", cfg]) == 1
    assert sorted(fetches.ids) == ["g0_0", "g1_1"]
    assert [json.loads(line)["group"] for line in open(os.path.join(out, "failed.jsonl"))] == ["g0_0"]
    first = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(out, "table*", "*"))}
    (first_run,) = json.load(open(os.path.join(out, "table.json")))["runs"]

    fetches.ids.clear()
    fetches.fail = set()
    capsys.readouterr()
    assert main(["retry-failed", out]) == 0  # the config recorded in table.json
    assert fetches.ids == ["g0_0"]
    assert "groups fetched in this run 1 of 2" in capsys.readouterr().out
    desc = audit(out, files, times, cells, formats=("parquet", "csv"))
    assert desc["runs"][0] == first_run and len(desc["runs"]) == 2
    assert {p: os.stat(p).st_mtime_ns for p in first} == first  # the first run's shards are kept as they were
    assert len(desc["files"]) == 4  # a parquet and a csv shard per run


def test_a_rerun_with_nothing_to_do_touches_no_file(tmp_path, monkeypatch, capsys):
    files, profile = write_collection(tmp_path, 3)
    cfg, times = write_config(tmp_path, files, write_points(tmp_path, profile, SPREAD[:10]), group_size=8)
    out = str(tmp_path / "out")
    assert main(["run", cfg]) == 0
    before = snapshot(out)
    fetches = Fetches(monkeypatch)
    capsys.readouterr()
    assert main(["run", cfg]) == 0
    assert f"nothing to do: all {10 * 3} planned rows are in" in capsys.readouterr().out
    assert fetches.ids == [] and snapshot(out) == before
    audit(out, files, times, SPREAD[:10])


def variant(tmp_path, name, files, profile, cells, **table):
    """A config in its own folder `name` writing to the shared tmp_path/out."""
    folder = tmp_path / name
    folder.mkdir()
    cfg, times = write_config(folder, files, write_points(folder, profile, cells), **table)
    doc = yaml.safe_load(open(cfg))
    doc["output"]["path"] = str(tmp_path / "out")
    open(cfg, "w").write(yaml.safe_dump(doc))
    return cfg, times


def test_a_changed_config_or_point_set_is_refused_unless_overwrite(tmp_path, capsys):
    files, profile = write_collection(tmp_path, 2)
    cfg, times = variant(tmp_path, "first", files, profile, SPREAD[:6], group_size=8)
    out = str(tmp_path / "out")
    assert main(["run", cfg]) == 0
    before = snapshot(out)
    (old_run,) = json.load(open(os.path.join(out, "table.json")))["runs"]
    capsys.readouterr()

    changed, _ = variant(tmp_path, "changed", files, profile, SPREAD[:6], group_size=16)
    assert main(["run", changed]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a table made with a different config (table." in err and "--overwrite" in err
    more = SPREAD[:8]  # the same config, two more points: groups would change under their ids
    same, _ = variant(tmp_path, "more", files, profile, more, group_size=8)
    assert main(["run", same]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a table of other points or images" in err and "--overwrite" in err
    assert snapshot(out) == before  # refused before anything was written

    assert main(["run", same, "--overwrite"]) == 0
    desc = audit(out, files, times, more)
    assert old_run not in desc["runs"] and len(desc["runs"]) == 1
    assert main(["run", changed, "--overwrite"]) == 0
    assert json.load(open(os.path.join(out, "table.json")))["config"]["table"]["group_size"] == 16
    audit(out, files, times, SPREAD[:6])


def test_a_deleted_shard_is_fetched_again_from_its_groups_record(tmp_path, monkeypatch):
    from pixelbeam.pipeline.tables import plan as table_plan
    monkeypatch.setattr(table_plan, "ROWS_PER_SHARD", 12)  # 48 points x 3 images: 12 shards
    files, profile = write_collection(tmp_path, 3)
    cfg, times = write_config(tmp_path, files, write_points(tmp_path, profile, SPREAD), group_size=8)
    out = str(tmp_path / "out")
    assert main(["run", cfg]) == 0
    records = sorted(glob.glob(os.path.join(out, "table", "_groups-*.json")))
    assert len(records) > 3
    lost = json.load(open(records[1]))
    os.remove(os.path.join(out, lost["files"][0]))
    fetches = Fetches(monkeypatch)
    assert main(["run", cfg]) == 0
    assert sorted(fetches.ids) == lost["groups"]
    assert not os.path.exists(records[1])  # the incomplete shard's record went with it
    audit(out, files, times, SPREAD)


SLOW_WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from pixelbeam.pipeline.tables import plan as table_plan
from pixelbeam.transforms.tables import sink as table_sink
table_plan.ROWS_PER_SHARD = 12  # many small shards
real = table_sink.write_shard
def slow(*args, **kwargs):
    written = real(*args, **kwargs)
    time.sleep(0.4)
    return written
table_sink.write_shard = slow
from pixelbeam.pipeline.cli import main
sys.exit(main(["run", {cfg!r}]))
"""


def kill_after_shards(cmd, out, old_runs, shards):
    """Start `cmd`, SIGKILL it once a new run has `shards` shard files in out/table; True if killed."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        new = [p for p in glob.glob(os.path.join(out, "table", "part-*")) if not any(r in p for r in old_runs)]
        if len(new) >= shards:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=120)
    return killed


def test_a_killed_run_then_a_rerun_leaves_every_row_once(tmp_path, monkeypatch):
    files, profile = write_collection(tmp_path, 6)
    cfg, times = write_config(tmp_path, files, write_points(tmp_path, profile, SPREAD), group_size=8)
    out = str(tmp_path / "out")
    fetches = Fetches(monkeypatch)
    failing = {f"g{r // 8}_{c // 8}" for r, c in SPREAD if (c // 8) % 2}  # half the groups
    fetches.fail = set(failing)
    assert main(["run", cfg]) == 1
    (first_run,) = json.load(open(os.path.join(out, "table.json")))["runs"]
    first_files = glob.glob(os.path.join(out, "table", "*"))

    # the retry runs in its own process, writing 12 shards 0.4 s apart; killed after 3 of them
    cmd = [sys.executable, "-c", SLOW_WRITER.format(root=ROOT, cfg=cfg)]
    assert kill_after_shards(cmd, out, [first_run], shards=3), "the run finished before it could be killed"
    (killed_run,) = run_ids(out) - {first_run}
    assert json.load(open(os.path.join(out, "_running.json")))["run_id"] == killed_run
    assert json.load(open(os.path.join(out, "table.json")))["runs"] == [first_run]

    fetches.ids.clear()
    fetches.fail = set()
    assert main(["run", cfg]) == 0
    # the killed run's shards were not trusted: its groups are fetched again, each once
    assert sorted(fetches.ids) == sorted(failing)
    desc = audit(out, files, times, SPREAD)
    assert killed_run not in run_ids(out, "*") and desc["runs"][0] == first_run and len(desc["runs"]) == 2
    assert all(os.path.exists(p) for p in first_files)
