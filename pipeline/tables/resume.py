"""Reruns of point tables: fetch only the groups no completed run wrote, and never hold a
(point, image) row twice.

The state lives in `table.json` (beside the table's description): the config fingerprint (the
same rules as patches, pipeline/resume.py), a digest of the plan (images, grid, every group's
pixels: a group id names a block of the grid, so other regions or another image list give the
same id other rows) and the completed runs. Each run writes its shards under its own id, each
with a record of the groups it holds (transforms/tables/sink.py). A group is *done* when such a
record of a completed run lists it and every file the record names exists. Everything else in
`table/` and `table_csv/` (shards of killed runs, incomplete shards, temporary files) is deleted
before a run starts, with Beam's staging folders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from pixelbeam.pipeline import resume
from pixelbeam.pipeline.config import ConfigError
from pixelbeam.pipeline.records import RUNS_FOLDER, completed_runs, latest_record, read_records
from pixelbeam.transforms.secrets import hide_secrets
from pixelbeam.transforms.storage import join
from pixelbeam.transforms.tables.sink import FOLDERS, GROUPS_PREFIX, SHARD_PREFIX

log = logging.getLogger(__name__)

TABLE_FOLDER = "table"
SHARD_NAME = SHARD_PREFIX.split("/", 1)[1]  # "part-"
GROUPS_NAME = GROUPS_PREFIX.split("/", 1)[1]  # "_groups-"


@dataclasses.dataclass
class TableResume:
    """What a table run starts from: its id, the config fingerprint and plan digest, the runs
    that completed before it, the groups they wrote, and the files and folders to delete first
    (full paths)."""

    run_id: str
    fingerprint: str
    plan_digest: str
    completed_runs: list[str] = dataclasses.field(default_factory=list)
    done_groups: frozenset = frozenset()
    doomed: list[str] = dataclasses.field(default_factory=list)

    def todo(self, groups: list) -> list:
        """The planned (spec, pixels) groups still to fetch, in plan order."""
        return [(spec, pixels) for spec, pixels in groups if spec.patch_id not in self.done_groups]


def table_plan_digest(job) -> str:
    """Hash of what decides the table's rows: images (id, time), bands, dtype, grid, and each
    group's window and pixels (point id, row, col)."""
    groups = [(spec.patch_id, list(spec.transform), spec.width, spec.height,
               [(p.point_id, p.row, p.col) for p in pixels]) for spec, pixels in job.groups]
    doc = [[(hide_secrets(i.image_id), i.time_ms) for i in job.images], list(job.bands), job.dtype,  # no token
           dataclasses.asdict(job.grid), groups]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_table_resume(job, overwrite: bool) -> TableResume:
    """The state a table run starts from; sends no request and changes no file. Raises a
    one-line ConfigError when the folder holds a table of another config or plan."""
    out = job.config.output.path
    fingerprint = resume.check_fingerprint(job.config, out, overwrite)
    run_id, digest = resume.new_run_id(), table_plan_digest(job)
    if overwrite:
        doomed = [join(out, f) for f in table_files(out) if pixelbeam_table_file(f)]  # never a file of the user's
        doomed += [join(out, n) for n in ("failed.jsonl", resume.TABLE_STATE_FILE) if FileSystems.exists(join(out, n))]
        doomed += [join(out, f"{RUNS_FOLDER}/{name}") for name in resume.existing_files(out, RUNS_FOLDER)]
        return TableResume(run_id, fingerprint, digest, doomed=doomed + staging_and_temporary(out))
    state = resume.read_json(join(out, resume.TABLE_STATE_FILE)) or {}
    records = read_records(out)  # runs that recorded themselves (pipeline/records.py)
    completed = completed_runs(state, records)
    recorded_digest = state.get("plan_digest") or (latest_record(completed, records) or {}).get("plan_digest")
    if completed and recorded_digest != digest:
        raise ConfigError(
            f"output.path: {out!r} holds a table of other points or images (the regions or the images changed); "
            "use a new output.path, or --overwrite to replace it")
    done, doomed = completed_shards(out, completed)
    return TableResume(run_id, fingerprint, digest, completed, frozenset(done), doomed + staging_and_temporary(out))


def table_files(out: str) -> list[str]:
    """Every file in the table's folders (`table/`, `table_csv/`), relative to `out`."""
    return [f"{folder}/{name}" for folder in sorted(set(FOLDERS.values()))
            for name in resume.existing_files(out, folder)]


def completed_shards(out: str, completed_runs: list[str]) -> tuple[set, list[str]]:
    """(groups held by intact shards of completed runs, every other file in the table's folders)."""
    units: dict[str, list[str]] = {}  # "<run>-SSSSS-of-NNNNN" -> its files (shard formats + groups record)
    doomed = []
    for path in table_files(out):
        stem = unit_stem(path.split("/", 1)[1])
        if stem is None:  # temporary files and shards without a run id; a file of the user's stays
            doomed += [path] if pixelbeam_table_file(path) else []
        else:
            units.setdefault(stem, []).append(path)
    done: set = set()
    for stem, files in sorted(units.items()):
        completed = resume.shard_run_id(SHARD_NAME + stem, SHARD_NAME) in completed_runs
        record = read_groups_record(out, stem) if completed else None
        listed = (set(record["files"]) | {f"{TABLE_FOLDER}/{GROUPS_NAME}{stem}.json"}) if record else set()
        if record and listed <= set(files) and not done & set(record["groups"]):  # intact, and no group twice
            done.update(record["groups"])
            doomed += [f for f in files if f not in listed]
        else:
            doomed += files
    return done, [join(out, f) for f in doomed]


def pixelbeam_table_file(path: str) -> bool:
    """A file of a table folder (`table/...`) that pixelbeam writes: a shard, a groups record, a
    temporary file of an atomic write."""
    name = path.split("/", 1)[1]
    return name.startswith((".tmp-", SHARD_NAME, GROUPS_NAME))


def unit_stem(name: str) -> Optional[str]:
    """`<run>-SSSSS-of-NNNNN` of a table shard or groups record named with a run id, else None."""
    for prefix in (SHARD_NAME, GROUPS_NAME):
        if name.startswith(prefix) and "." in name and resume.shard_run_id(name, prefix):
            return name[len(prefix):name.rindex(".")]
    return None


def read_groups_record(out: str, stem: str) -> Optional[dict]:
    try:
        record = resume.read_json(join(out, f"{TABLE_FOLDER}/{GROUPS_NAME}{stem}.json"))
    except ValueError:  # not JSON: not trusted
        return None
    if not record or not isinstance(record.get("groups"), list) or not isinstance(record.get("files"), list):
        return None
    return record


def staging_and_temporary(out: str) -> list[str]:
    """Beam's staging folders (failed.jsonl) and temporary files of atomic writes (table.json,
    run records)."""
    records = [join(out, f"{RUNS_FOLDER}/{name}") for name in resume.existing_files(out, RUNS_FOLDER)
               if name.startswith(".tmp-")]
    return resume.beam_staging_folders(out) + resume.temporary_files(out) + records


def delete_doomed(doomed: list[str]) -> int:
    """Deletes what `plan_table_resume` found no completed run owns; returns how many."""
    paths = sorted(set(doomed))
    if paths:
        FileSystems.delete(paths)
        log.info("removed %d leftover files", len(paths))
    return len(paths)
