"""Run records: a job records its own completion from its last stage, so nothing after
`wait_until_finish()` (nor the launcher at all) is needed for an output to be complete and
resumable (issue 19).

The last stage (`RecordRun`) runs once every sink has finalized: it takes their finalized file
names as side inputs, so Beam starts it only after the manifest, the dead letters, the TFRecord
(or table) shards and the statistics are in their final place. It then, in this order:

1. writes `runs/<run_id>.json` atomically (the commit point): run id, config fingerprint, plan
   digest, the counts of the manifest it finalized (and its size in bytes, so a later manifest
   is told apart), this run's own counts, and every file it finalized;
2. writes the state file (dataset.json or table.json) with the run list
   `runs before + [run_id]`;
3. deletes the launcher's `_running.json` marker (if it names this run) and the staged plan.

A reader derives the completed runs from the state file's list and the records together
(`completed_runs`), so a job killed between steps 1 and 2 still counts as completed. A killed
job never reaches step 1: it leaves no record, and the next run cleans it as before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pixelbeam.transforms.secrets import hide_secrets_in
from pixelbeam.transforms.storage import join, write_atomically

log = logging.getLogger(__name__)

RUNS_FOLDER = "runs"
RUNNING_FILE = "_running.json"  # the launcher's marker of a run that started (pipeline/resume.py)


def record_relpath(run_id: str) -> str:
    return f"{RUNS_FOLDER}/{run_id}.json"


def read_records(output_path: str) -> dict[str, dict]:
    """{run id: record} of every completion record in `output_path/runs/` (temporary files of
    an atomic write and unreadable files are no record)."""
    try:
        found = FileSystems.match([join(output_path, f"{RUNS_FOLDER}/*.json")])[0].metadata_list
    except Exception:  # no such folder
        return {}
    records = {}
    for m in found:
        name = FileSystems.split(m.path)[1]
        if name.startswith(".tmp-"):
            continue
        try:
            with FileSystems.open(m.path) as f:
                record = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError):
            log.warning("%s: not a run record; ignored", m.path)
            continue
        if isinstance(record, dict) and record.get("run_id") == name[:-len(".json")]:
            records[record["run_id"]] = record
    return records


def completed_runs(state: dict, records: dict[str, dict]) -> list[str]:
    """The completed runs of an output folder, oldest first (run ids sort by time): those its
    state file lists and those that recorded themselves."""
    return sorted(set(state.get("runs") or []) | set(records))


def latest_record(completed: Sequence[str], records: dict[str, dict]) -> Optional[dict]:
    """The record of the last completed run (the one whose manifest the folder holds), or None
    when that run left none (an output written before run records existed)."""
    return records.get(max(completed)) if completed else None


def relative(output_path: str, path: str) -> str:
    """`path` relative to the output folder (as the manifest names files)."""
    base = output_path.rstrip("/") + "/"
    return path[len(base):] if path.startswith(base) else path


def file_size(path: str) -> Optional[int]:
    try:
        found = FileSystems.match([path])[0].metadata_list
    except Exception:
        return None
    return found[0].size_in_bytes if found else None


@dataclasses.dataclass(frozen=True)
class RunEnd:
    """What the last stage of a run writes, all known at launch: the run, the state file (its
    document without the run list, which `finish_doc(doc, runs)` completes on the worker, e.g.
    with statistics merged over the runs) and the staged plan to delete (None: nothing staged)."""

    output_path: str
    run_id: str
    fingerprint: str
    plan_digest: str
    state_file: str  # dataset.json or table.json
    state_doc: Any  # a dict, or staged (transforms/planning/staged.py) when the plan is
    runs_before: tuple[str, ...] = ()
    stage_folder: Optional[str] = None
    finish_doc: Optional[Callable[[dict, list], dict]] = None
    manifest: Optional[str] = "manifest.jsonl"  # the manifest the counts describe (None: a table)

    @property
    def runs(self) -> list[str]:
        return list(self.runs_before) + [self.run_id]


def finish_run(_, end: RunEnd, counts: Sequence[tuple[str, int]], **finalized) -> str:
    """The last stage's work (see the module docstring); returns the record's path."""
    out = end.output_path
    totals: dict[str, dict[str, int]] = {}
    for key, n in counts:
        part, name = key.split(".", 1)
        totals.setdefault(part, {})[name] = totals.get(part, {}).get(name, 0) + n
    record = {"run_id": end.run_id, "fingerprint": end.fingerprint, "plan_digest": end.plan_digest,
              "completed": True, "runs": end.runs, **{part: dict(sorted(c.items())) for part, c in sorted(totals.items())},
              "files": {name: sorted(relative(out, p) for p in paths) for name, paths in sorted(finalized.items())}}
    if end.manifest:
        manifest = dict(record.get("manifest", {}))
        manifest["rows"] = sum(manifest.values())
        manifest["bytes"] = file_size(join(out, end.manifest))
        record["manifest"] = manifest
    path = join(out, record_relpath(end.run_id))
    write_atomically(path, json.dumps(hide_secrets_in(record), indent=2).encode("utf-8"))  # the run is complete from here on
    from pixelbeam.transforms.planning.staged import resolve
    doc = {**resolve(end.state_doc), "runs": end.runs}
    if end.finish_doc is not None:
        doc = end.finish_doc(doc, end.runs)
    write_atomically(join(out, end.state_file), json.dumps(hide_secrets_in(doc), indent=2).encode("utf-8"))
    clear_running(out, end.run_id)
    remove_stage_folder(end.stage_folder)
    return path


def clear_running(output_path: str, run_id: Optional[str] = None) -> None:
    """Deletes `_running.json` (with `run_id`: only when it names that run)."""
    path = join(output_path, RUNNING_FILE)
    if not FileSystems.exists(path):
        return
    if run_id is not None:
        try:
            with FileSystems.open(path) as f:
                if json.loads(f.read().decode("utf-8")).get("run_id") != run_id:
                    return
        except (OSError, ValueError):
            pass
    FileSystems.delete([path])


def remove_stage_folder(folder: Optional[str]) -> None:
    """Deletes the staged plan (transforms/planning/staged.py) of a finished run."""
    if not folder:
        return
    found = FileSystems.match([FileSystems.join(folder, "*")])[0].metadata_list
    if found:
        FileSystems.delete([m.path for m in found])


@dataclasses.dataclass
class RecordRun(beam.PTransform):
    """The run's last stage. Input: {"counts": PCollection[(part.name, n)], <name>:
    PCollection of finalized file paths, ...}; output: the record's path, once it is written."""

    end: RunEnd

    def __post_init__(self):
        super().__init__()

    def expand(self, inputs: dict):
        inputs = dict(inputs)
        counts = inputs.pop("counts") | "SumCounts" >> beam.CombinePerKey(sum)
        waits = {name: beam.pvalue.AsList(pcoll) for name, pcoll in sorted(inputs.items())}
        return (counts.pipeline
                | "RunEnds" >> beam.Create([None])
                | "RecordCompletion" >> beam.Map(finish_run, self.end, beam.pvalue.AsList(counts), **waits))
