"""`pixelbeam status OUT`: what an output folder holds, read from the folder alone (a job that
was launched and left records its own completion, pipeline/records.py): the completed runs,
what is done and what failed, whether a run started without finishing, and (where the
credentials allow) the state of the Dataflow job that run was submitted as."""

from __future__ import annotations

from typing import Callable, Optional

from pixelbeam.pipeline.records import RUNNING_FILE, completed_runs, latest_record, read_records
from pixelbeam.pipeline.resume import STATE_FILE, TABLE_STATE_FILE, read_json
from pixelbeam.transforms.storage import join


SHOWN_COUNTERS = ("patches_fetched", "patches_carried", "patches_failed", "requests", "quota_errors")


def dataflow_client(job: dict):
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dataflow.internal.apiclient import DataflowApplicationClient
    return DataflowApplicationClient(PipelineOptions(project=job["project"], region=job["region"]))


def dataflow_job_state(job: dict, client_for=dataflow_client) -> str:
    """The state of a Dataflow job {"id", "project", "region"} and its pixelbeam counters so far
    ("JOB_STATE_RUNNING; patches_fetched 1200, requests 1250, ..."), asked with the caller's
    Google credentials; raises when the state cannot be known (the counters are optional)."""
    client = client_for(job)
    current = client.get_job(job["id"]).current_state  # a JobState enum (google-cloud-dataflow-client)
    state = getattr(current, "name", str(current))
    try:
        counters = job_counters(client.get_job_metrics(job["id"]))
    except Exception:  # e.g. no metrics yet, or no permission for them
        counters = {}
    shown = [f"{name} {counters[name]}" for name in SHOWN_COUNTERS if name in counters]
    return state + (f"; {', '.join(shown)}" if shown else "")


def job_counters(metrics) -> dict[str, int]:
    """{name: committed value} of the pixelbeam namespace's counters in a Dataflow JobMetrics
    response (tentative values, also reported, are left out), summed over steps."""
    totals: dict[str, int] = {}
    for update in getattr(metrics, "metrics", None) or []:
        context = dict(update.name.context or {})
        if context.get("namespace") != "pixelbeam" or context.get("tentative") == "true":
            continue
        value = update.scalar
        if isinstance(value, (int, float)):
            totals[update.name.name] = totals.get(update.name.name, 0) + int(value)
    return totals


def status_lines(output_path: str, job_state: Callable[[dict], str] = dataflow_job_state) -> tuple[list[str], bool]:
    """(lines to print, whether the output is complete); raises FileNotFoundError when the
    folder holds no pixelbeam output."""
    state_file, state = STATE_FILE, read_json(join(output_path, STATE_FILE))
    if state is None:
        state_file, state = TABLE_STATE_FILE, read_json(join(output_path, TABLE_STATE_FILE))
    records = read_records(output_path)
    running = read_json(join(output_path, RUNNING_FILE))
    if state is None and not records and running is None:
        raise FileNotFoundError(f"{output_path}: no dataset.json, table.json, runs/ or {RUNNING_FILE}; "
                                "give the output.path of a pixelbeam run")
    table = state_file == TABLE_STATE_FILE or any("groups_written" in r.get("this_run", {}) for r in records.values())
    state = state or {}
    runs = completed_runs(state, records)
    lines = [f"output: {output_path} ({'a point table' if table else 'patches'})"]
    latest = latest_record(runs, records)
    if runs:
        lines.append(f"completed runs: {len(runs)} (latest {runs[-1]}"
                     + (f": {describe(latest.get('this_run', {}))} in that run)" if latest else ")"))
    else:
        lines.append("completed runs: none")
    done = done_line(output_path, state, latest, table)
    complete = done[1] if done else False
    if done:
        lines.append(done[0])
    if running is not None and running.get("run_id") not in runs:
        lines.append(f"started, not completed: run {running.get('run_id')} (no runs/{running.get('run_id')}.json yet: "
                     "still running, or killed; a rerun of the same config cleans what it left and finishes)")
        complete = False
        job = running.get("job") or {}
        if job.get("id"):
            lines.append(f"dataflow job: {job['id']} (project {job.get('project')}, region {job.get('region')}): "
                         f"{ask(job_state, job)}")
    lines.append(f"complete: {'yes' if complete else 'no'}")
    return lines, complete


def ask(job_state: Callable[[dict], str], job: dict) -> str:
    try:
        return job_state(job)
    except Exception as e:  # no credentials, no network, no such job: the folder still tells what is done
        return f"state unknown ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'no detail'})"


def describe(counts: dict) -> str:
    return ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in sorted(counts.items())) or "nothing"


def done_line(output_path: str, state: dict, latest: Optional[dict], table: bool) -> Optional[tuple[str, bool]]:
    """(what is done and failed in words, whether every planned patch or row is accounted for)."""
    if table:
        if "planned_rows" not in state:
            return None
        rows, lost, planned = state.get("rows", 0), state.get("failed_rows", 0), state["planned_rows"]
        failed = f"; failed {lost} rows (see failed.jsonl)" if lost else "; failed 0"
        return f"done: {rows} of {planned} planned rows{failed}", rows + lost == planned and not lost
    planned = state.get("patches_planned")
    counts = manifest_counts(output_path, latest)
    if planned is None or counts is None:
        return None
    done = counts.get("written", 0) + counts.get("filtered", 0)
    failed = counts.get("failed", 0)
    text = (f"done: {done} of {planned} planned patches (written {counts.get('written', 0)}, filtered "
            f"{counts.get('filtered', 0)}); failed {failed}" + (" (see failed.jsonl; a rerun retries them)" if failed else ""))
    return text, done == planned


def manifest_counts(output_path: str, latest: Optional[dict]) -> Optional[dict]:
    """Status counts of manifest.jsonl: from the latest run's record when it describes this
    manifest (its size), else counted from the file; None without a manifest."""
    from pixelbeam.pipeline.records import file_size
    path = join(output_path, "manifest.jsonl")
    size = file_size(path)
    if size is None:
        return None
    recorded = (latest or {}).get("manifest") or {}
    if recorded.get("bytes") == size:
        return {k: v for k, v in recorded.items() if k not in ("rows", "bytes")}
    from pixelbeam.pipeline.summary import manifest_outcomes
    return manifest_outcomes(output_path)[0]


def main(output_path: str) -> int:
    """`pixelbeam status OUT`: prints the status; exit 0 when complete, 1 when not, 2 when the
    folder holds no pixelbeam output."""
    import sys
    try:
        lines, complete = status_lines(output_path)
    except FileNotFoundError as e:
        print(f"pixelbeam: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # e.g. gs:// without credentials or access: one line, not a traceback
        detail = str(e).splitlines()[0][:200] if str(e) else "no detail"
        print(f"pixelbeam: error: {output_path}: cannot read the output folder ({type(e).__name__}: {detail})",
              file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0 if complete else 1
