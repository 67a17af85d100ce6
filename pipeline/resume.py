"""Reruns: finish exactly what is missing, never mix outputs of different configs, and never
leave a patch twice or half-written.

An output folder records its state in `dataset.json` (the config fingerprint and the ids of the
runs that completed) and in `runs/<run_id>.json`, the record each run's last stage writes once
its files are in place (pipeline/records.py); the completed runs are those of either. Each run writes its TFRecord shards under its own run id, and its manifest
rows carry it. A patch is *done* when the latest manifest says `written` or `filtered` by a
completed run (and, for NPY output, its file exists); everything else is fetched again. A run
that was killed leaves shards of a run id that never completed: they are deleted when the next
run starts, together with temporary files, so no patch appears twice.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
import secrets
import time
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from pixelbeam.pipeline.add_formats import added_formats, stored_layout, why_not_from_stored
from pixelbeam.pipeline.config import Config, ConfigError
from pixelbeam.pipeline.digest import plan_digest  # noqa: F401 (re-exported: resume's own and callers')
from pixelbeam.pipeline.records import RUNNING_FILE, RUNS_FOLDER, completed_runs, latest_record, read_records
from pixelbeam.pipeline.shards import shards_missing
from pixelbeam.transforms.formats.stored import StoredLayout
from pixelbeam.transforms.formats.webdataset import shard_run_id as webdataset_shard_run_id
from pixelbeam.transforms.patch import FILTERED, WRITTEN
from pixelbeam.transforms.secrets import hide_secrets_in
from pixelbeam.transforms.storage import join

log = logging.getLogger(__name__)

STATE_FILE = "dataset.json"
TABLE_STATE_FILE = "table.json"  # the state of a point table (pipeline/tables/resume.py)
DONE_STATUSES = (WRITTEN, FILTERED)
PER_PATCH_FOLDERS = ("npy", "geotiff", "png", "jpeg")  # one file per written patch in each
# Config keys that do not change any patch's pixels or status (where to write, how fast, who).
# An Earth Engine expression counts by the serialized graph it ran (`source.expression_json`, recorded
# by the planner), not by the file and arguments that built it.
NEUTRAL_KEYS = {"source": ("credentials", "url", "project", "expression", "expression_args"),
                "output": ("path", "tfrecord_shards", "shard_size_mb")}


RUN_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{4}")  # as new_run_id makes them


def new_run_id(now: Optional[float] = None) -> str:
    """A sortable, unique run id: UTC time plus 4 random hex digits."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(2)}"


def config_fingerprint(config: Config) -> str:
    """Hash of everything in the config that decides a patch's pixels and status (not the
    regions: a changed region set plans other patches, it does not change a patch)."""
    # a new key at its default changes nothing; nor does a URL's credential (a signed URL's new token)
    doc = decisive_part(config.model_dump(mode="json", exclude_defaults=True))
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def decisive_part(doc: dict) -> dict:
    """A config document (`model_dump(mode="json")`) without what decides no pixel: regions,
    fetch settings, NEUTRAL_KEYS and URLs' credentials."""
    doc = hide_secrets_in(doc)
    doc.pop("regions", None)
    doc.pop("regions_outside", None)  # like the regions: which are planned, not what a patch holds
    doc.pop("fetch", None)
    for section, keys in NEUTRAL_KEYS.items():
        for key in keys:
            (doc.get(section) or {}).pop(key, None)
    for layer in doc.get("layers") or []:  # a layer's fetch limits and Earth Engine access decide no pixel
        for key in ("fetch",) + NEUTRAL_KEYS["source"]:
            layer.pop(key, None)
    return doc


def changed_keys(recorded: Optional[dict], config: Config, limit: int = 3) -> str:
    """'grid.patch_size 48 -> 32, ...': the keys whose values decide pixels and differ between
    a recorded config (dataset.json's, defaults included) and `config`; '' when unknown."""
    if not isinstance(recorded, dict):
        return ""
    old, new = flatten(decisive_part(recorded)), flatten(decisive_part(config.model_dump(mode="json")))
    keys = changed_key_names(recorded, config)
    words = [f"{k} {short(old.get(k, MISSING))} -> {short(new.get(k, MISSING))}" for k in keys[:limit]]
    return ", ".join(words) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def changed_key_names(recorded: Optional[dict], config: Config) -> list[str]:
    """The dotted keys of `changed_keys`, sorted; [] when the recorded config is unknown."""
    if not isinstance(recorded, dict):
        return []
    new = decisive_part(config.model_dump(mode="json"))
    given = flatten(decisive_part(config.model_dump(mode="json", exclude_defaults=True)))
    old, new = flatten(decisive_part(recorded)), flatten(new)
    return [k for k in sorted(set(old) | set(new)) if old.get(k, MISSING) != new.get(k, MISSING)
            and (k in old or k in given)]  # a key a newer pixelbeam added, at its default, is no change


MISSING = "(unset)"


def formats_added(recorded: Optional[dict], config: Config) -> list[str]:
    """The output formats `config` adds to a finished output's recorded config, when that is
    the only change (pipeline/add_formats.py), else []."""
    if getattr(config, "table", None) is not None:
        return []
    return added_formats(changed_key_names(recorded, config), recorded, config)


def flatten(doc, prefix: str = "") -> dict:
    """{dotted key: leaf value} of a JSON document; a list of named layers by name."""
    if isinstance(doc, list) and doc and all(isinstance(d, dict) and "name" in d for d in doc):
        doc = {str(d["name"]): {k: v for k, v in d.items() if k != "name"} for d in doc}
    if not isinstance(doc, dict) or not doc:
        return {prefix: doc} if prefix else {}
    out = {}
    for key, value in doc.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def short(value) -> str:
    text = value if value == MISSING else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_json(path: str) -> Optional[dict]:
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))


def _match(pattern: str) -> list:
    try:
        return FileSystems.match([pattern])[0].metadata_list
    except Exception:  # e.g. the folder does not exist yet
        return []


def existing_files(output_path: str, folder: str) -> dict[str, int]:
    """{file name: size in bytes} of the entries directly in `output_path/folder`."""
    return {FileSystems.split(m.path.rstrip("/"))[1]: m.size_in_bytes
            for m in _match(join(output_path, f"{folder}/*"))}


@dataclasses.dataclass
class ResumeState:
    """What a run starts from: its id, the runs that completed before it, the manifest their
    rows are in (None on a first run or with --overwrite), and whether nothing is left to do."""

    run_id: str
    completed_runs: list[str] = dataclasses.field(default_factory=list)
    previous_manifest: Optional[str] = None
    nothing_to_do: bool = False
    done_before: int = 0  # rows of done patches in the previous manifest
    manifest_counts: Optional[dict] = None  # {status: rows} of that manifest, from its run's record (if it has one)
    formats_added: tuple[str, ...] = ()  # formats this run adds to the written patches, from their stored NPY files
    restore: Optional[StoredLayout] = None  # with formats_added: what each written patch must have (add_formats.py)


def check_fingerprint(config: Config, output_path: str, overwrite: bool) -> str:
    """The config's fingerprint; refuses an output folder made with another config (patches or
    a point table: either state file, or the marker of a run that did not finish)."""
    fingerprint = config_fingerprint(config)
    if overwrite:
        return fingerprint
    current = "a table" if getattr(config, "table", None) is not None else "patches"
    records = read_records(output_path)  # runs that recorded themselves (pipeline/records.py)
    states = [(holds, read_json(join(output_path, name)) or {}) for name, holds in (
        (STATE_FILE, "patches"), (TABLE_STATE_FILE, "a table"), (RUNNING_FILE, current))]
    states += [(current, records[max(records)])] if records else []
    adding = formats_added((read_json(join(output_path, STATE_FILE)) or {}).get("config"), config)
    for holds, state in states:
        old = state.get("fingerprint")
        if old and old != fingerprint:
            field = changed_expression(state.get("config"), config)
            if field:
                raise ConfigError(f"output.path: {output_path!r} holds {holds} made with another image ({field} now "
                                  "builds another expression than the one recorded there); use a new output.path, "
                                  "or --overwrite to replace them")
            if adding and old == states[0][1].get("fingerprint"):  # dataset.json's config plus formats
                why = why_not_from_stored(adding, states[0][1]["config"], config)
                if why is None:
                    continue  # the added formats are written from the stored patches
                raise ConfigError(f"output.path: {output_path!r} holds patches without {', '.join(adding)}: {why}; "
                                  "use a new output.path, or --overwrite to replace them")
            changed, them = (("source, grid or output settings", "them") if holds == "patches"
                             else ("source, table or output settings", "it"))
            keys = changed_keys(state.get("config"), config)
            raise ConfigError(
                f"output.path: {output_path!r} holds {holds} made with a different config ({keys or changed + ' changed'}); "
                f"use a new output.path, or --overwrite to replace {them}")
    return fingerprint


def changed_expression(recorded: Optional[dict], config: Config) -> Optional[str]:
    """`source.expression` (or `source.expression_json`) when the recorded config's Earth
    Engine expression differs from `config`'s, else None."""
    source = getattr(config, "source", None)
    new = getattr(source, "expression_json", None)
    old = ((recorded or {}).get("source") or {}).get("expression_json")
    if new is None or old is None or old == new:
        return None
    return "source.expression" if getattr(source, "expression", None) else "source.expression_json"


def plan_resume(job, run_id: str, overwrite: bool) -> ResumeState:
    """The state a run starts from. Which patches are done is decided on the workers
    (transforms/skip_done.py); the launcher only streams the manifest to see whether every
    planned patch is done already, so it can stop without touching anything."""
    out = job.config.output.path
    if overwrite:
        return ResumeState(run_id)
    state = read_json(join(out, STATE_FILE)) or {}
    records = read_records(out)
    completed = completed_runs(state, records)
    check_collection_images(job, {**state, "runs": completed})
    manifest = join(out, "manifest.jsonl")
    if not completed or not FileSystems.exists(manifest):
        return ResumeState(run_id, completed)
    latest = latest_record(completed, records)
    recorded = recorded_done(latest, manifest)
    done, written = recorded or count_done_rows(manifest, completed)
    digest = state.get("plan_digest") or (latest or {}).get("plan_digest")
    nothing = digest == plan_digest(job) and done == job.planned and all(
        file_count(out, folder, suffix, others) >= written for folder, suffix, others in per_patch_files(job)) \
        and not shards_missing(job, manifest, existing_files(out, "shards"))
    counts = {k: v for k, v in latest["manifest"].items() if k not in ("rows", "bytes")} if recorded else None
    adding = tuple(formats_added(state.get("config"), job.config)) if state.get("fingerprint") != config_fingerprint(
        job.config) else ()  # check_fingerprint let it through: the only change is formats written from stored patches
    if adding:
        return ResumeState(run_id, completed, manifest, False, done, counts, adding, stored_layout(job))
    return ResumeState(run_id, completed, manifest, nothing, done, counts)


def recorded_done(record: Optional[dict], manifest: str) -> Optional[tuple[int, int]]:
    """(done rows, written rows) of the manifest from the last completed run's record, without
    reading the manifest (issue 17: resume at 10^7 rows); None when there is no record or the
    manifest is not the one it finalized (its size differs, e.g. a later run that was killed
    after its manifest was written): then the manifest is counted row by row."""
    counts = (record or {}).get("manifest")
    if not isinstance(counts, dict) or counts.get("bytes") is None:
        return None
    from pixelbeam.pipeline.records import file_size
    if file_size(manifest) != counts["bytes"]:
        return None
    written = int(counts.get(WRITTEN, 0))
    return written + int(counts.get(FILTERED, 0)), written


PATCH_ID = "\x00"  # stands for the patch id in the file templates


def per_patch_files(job) -> list[tuple[str, str, tuple[str, ...]]]:
    """(folder, file name suffix, longer suffixes of the same folder) of each file a written patch
    has: `npy/<id>.npy` and `npy/<id>.mask.npy` are told apart; with layers, `npy/<layer>/...`."""
    from pixelbeam.pipeline.outputs import job_file_options
    paths = [path for _, _, path in job_file_options(job).files(PATCH_ID)]
    pairs = [(path.rsplit("/", 1)[0], path.rsplit(PATCH_ID, 1)[1]) for path in paths]
    return [(folder, suffix, tuple(s for f, s in pairs if f == folder and s != suffix and s.endswith(suffix)))
            for folder, suffix in pairs]


def check_collection_images(job, state: dict) -> None:
    """A collection must list the images it listed for the completed runs (dataset.json
    `images`): a stack's steps, a mosaic's and a composite's inputs depend on them, and an Earth
    Engine collection gains images as they are ingested."""
    if not state.get("runs"):
        return
    if getattr(job, "layered", False):
        recorded = {entry.get("name"): entry.get("images") for entry in state.get("layers", [])}
        for layer in job.layers:
            check_images(job, layer.info.collection, recorded.get(layer.name), f"{layer.where}: the collection")
        return
    check_images(job, job.info.collection, state.get("images"), "source: the collection")


def check_images(job, plan, recorded, where: str) -> None:
    if plan is None or recorded is None:
        return
    current = hide_secrets_in([im.image_id for im in plan.images])  # as dataset.json records them
    if current != recorded:
        new = sorted(set(current) - set(recorded))
        gone = sorted(set(recorded) - set(current))
        what = f"new {new[0]!r}" if new else (f"no longer {gone[0]!r}" if gone else "another order")
        raise ConfigError(f"{where} now lists {len(current)} images ({what}), {len(recorded)} when "
                          f"{job.config.output.path!r} was written; use a new output.path, or --overwrite to redo "
                          "every patch with the images listed now")


def count_done_rows(manifest: str, completed_runs: list[str]) -> tuple[int, int]:
    """(done rows, written rows) of completed runs in a manifest, streamed line by line."""
    done = written = 0
    with FileSystems.open(manifest) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("run_id") in completed_runs and row["status"] in DONE_STATUSES:
                done += 1
                written += row["status"] == WRITTEN
    return done, written


def file_count(output_path: str, folder: str, suffix: str = "", longer: tuple[str, ...] = ()) -> int:
    """Finished files in a per-patch folder (temporary `.tmp-*` files excluded) whose names end
    with `suffix` but with none of the `longer` suffixes (`.npy`, not `.mask.npy`)."""
    return sum(1 for name in existing_files(output_path, folder) if not name.startswith(".tmp-")
               and name.endswith(suffix) and not name.endswith(longer))


def clean_leftovers(output_path: str, completed_runs: list[str], overwrite: bool,
                    file_folders: tuple[str, ...] = PER_PATCH_FOLDERS) -> int:
    """Delete what no completed run owns: TFRecord shards of killed runs, Beam's staging folders,
    and temporary files of atomic writes; with --overwrite also every file pixelbeam recorded
    writing (`recorded_files`), and never a file of the user's."""
    doomed = [join(output_path, f"tfrecord/{name}") for name in existing_files(output_path, "tfrecord")
              if tfrecord_shard_run_id(name) is not None and tfrecord_shard_run_id(name) not in completed_runs]
    doomed += [join(output_path, f"shards/{name}") for name in existing_files(output_path, "shards")  # issue 17
               if name.startswith(".tmp-") or (webdataset_shard_run_id(name) is not None
                                               and webdataset_shard_run_id(name) not in completed_runs)]
    doomed += [join(output_path, f"stats/{name}") for name in existing_files(output_path, "stats")  # issue 14
               if name.startswith(".tmp-") or (RUN_ID.fullmatch(name.removesuffix(".json"))
                                               and name.removesuffix(".json") not in completed_runs)]
    doomed += beam_staging_folders(output_path) + temporary_files(output_path)
    for folder in file_folders:
        doomed += [join(output_path, f"{folder}/{name}") for name in existing_files(output_path, folder)
                   if name.startswith(".tmp-")]
        doomed += [m.path for m in _match(join(output_path, f"{folder}/*/.tmp-*"))]  # layers: npy/<layer>/...
    if overwrite:
        doomed += recorded_files(output_path)
    else:  # temporary files of a record's atomic write
        doomed += [join(output_path, f"{RUNS_FOLDER}/{name}") for name in existing_files(output_path, RUNS_FOLDER)
                   if name.startswith(".tmp-")]
    if doomed:
        FileSystems.delete(sorted(set(doomed)))
        log.info("removed %d leftover files", len(doomed))
    return len(doomed)


REPORT_FILES = ("manifest.jsonl", "failed.jsonl", STATE_FILE, "preview.png", "footprints.png")


def recorded_files(output_path: str) -> list[str]:
    """The files of a patch output that pixelbeam recorded writing: those the manifest's rows
    list, the TFRecord and WebDataset shards, statistics and run records of its runs (completed,
    or the one that did not finish), its reports and pictures. All that --overwrite deletes."""
    state = read_json(join(output_path, STATE_FILE)) or {}
    runs = set(completed_runs(state, read_records(output_path)))
    runs |= {(read_json(join(output_path, RUNNING_FILE)) or {}).get("run_id")}
    runs.discard(None)
    listed: set = set()
    manifest = join(output_path, "manifest.jsonl")
    if FileSystems.exists(manifest):
        with FileSystems.open(manifest) as f:
            listed = {name for line in f if line.strip() for name in json.loads(line).get("files") or ()}
    doomed = [join(output_path, name) for name in sorted(listed) if "*" not in name
              and name.split("/", 1)[0] in PER_PATCH_FOLDERS and FileSystems.exists(join(output_path, name))]
    doomed += [join(output_path, f"tfrecord/{name}") for name in existing_files(output_path, "tfrecord")
               if tfrecord_shard_run_id(name) in runs]
    doomed += [join(output_path, f"stats/{name}") for name in existing_files(output_path, "stats")
               if name.removesuffix(".json") in runs]
    doomed += [join(output_path, f"shards/{name}") for name in existing_files(output_path, "shards")
               if webdataset_shard_run_id(name) in runs]
    doomed += [join(output_path, f"{RUNS_FOLDER}/{name}") for name in existing_files(output_path, RUNS_FOLDER)
               if name.startswith(".tmp-") or RUN_ID.fullmatch(name.removesuffix(".json"))]
    return doomed + [join(output_path, n) for n in REPORT_FILES if FileSystems.exists(join(output_path, n))]


def temporary_files(output_path: str) -> list[str]:
    """Temporary files of atomic writes (`write_atomically`) left in the folder itself by a
    killed run (dataset.json, table.json, previews)."""
    return [m.path for m in _match(join(output_path, ".tmp-*"))]


def beam_staging_folders(output_path: str) -> list[str]:
    """Beam's file sinks stage shards in `beam-temp-*` folders until they finalize; a killed
    run leaves them behind. Found through the files inside (matching does not list folders)."""
    folders = set()
    for pattern in ("beam-temp-*/*", "tfrecord/beam-temp-*/*"):
        for m in _match(join(output_path, pattern)):
            folders.add(FileSystems.split(m.path)[0] + ("/" if "://" in output_path else ""))  # gs://: delete the prefix
    if "://" not in output_path:  # a local folder may also hold empty staging folders
        for pattern in ("beam-temp-*", os.path.join("tfrecord", "beam-temp-*")):
            folders.update(p for p in glob.glob(os.path.join(output_path, pattern)) if os.path.isdir(p))
    return sorted(folders)


def tfrecord_shard_run_id(name: str) -> Optional[str]:
    """The run id in a TFRecord shard name `<patches or split>-<run_id>-00000-of-00004.tfrecord.gz`
    (read from the right: the run id is `YYYYMMDDTHHMMSS-hhhh`), else None."""
    parts = name.split(".", 1)[0].split("-")
    if len(parts) < 6 or parts[-2] != "of":
        return None
    return f"{parts[-5]}-{parts[-4]}"


def shard_run_id(name: str, prefix: str = "patches-") -> Optional[str]:
    """The run id in a shard name `<prefix><run_id>-00000-of-00004.<ext>` (TFRecord:
    `patches-…`, table: `part-…`), else None."""
    if not name.startswith(prefix):
        return None
    parts = name[len(prefix):].split("-")
    return "-".join(parts[:2]) if len(parts) >= 4 else None


def mark_running(output_path: str, run_id: str, fingerprint: str, job: Optional[dict] = None) -> None:
    """`_running.json`: the run that started (and, once submitted to Dataflow, its job: id,
    project, region), until its last stage records its completion (pipeline/records.py)."""
    from pixelbeam.transforms.storage import write_atomically
    doc = {"run_id": run_id, "fingerprint": fingerprint, **({"job": job} if job else {})}
    write_atomically(join(output_path, RUNNING_FILE), json.dumps(doc).encode())


def note_submitted_job(output_path: str, run_id: str, fingerprint: str, job: dict) -> None:
    """Adds the submitted Dataflow job to `_running.json`, unless the job already recorded its
    completion and removed the file (a short job); `pixelbeam status` asks for its state."""
    if FileSystems.exists(join(output_path, RUNNING_FILE)) and run_id not in read_records(output_path):
        mark_running(output_path, run_id, fingerprint, job)


def clear_running(output_path: str) -> None:
    from pixelbeam.pipeline.records import clear_running as clear
    clear(output_path)
