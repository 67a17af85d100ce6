"""The `pixelbeam` command: run, plan, emulate.

`pixelbeam run CONFIG [Beam options]` runs the job (Beam options such as --runner pass straight
through); `pixelbeam plan CONFIG` plans it and sends nothing. Bad input is one line on stderr
and exit status 2; a run whose failed fraction exceeds --max_failed_fraction exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Optional, Sequence

from pipeline.config import ConfigError, load_config

log = logging.getLogger("pixelbeam")

# DirectRunner first tries to download the Prism runner; FnApiRunner is the same local
# execution without that attempt (and honours direct_num_workers / direct_running_mode).
LOCAL_RUNNER = "FnApiRunner"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pixelbeam", description="Regions of the Earth -> ML training patches.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the extraction (extra arguments are Beam pipeline options)")
    run.add_argument("config")
    run.add_argument("--max_failed_fraction", type=float, default=0.0,
                     help="exit 1 when more than this fraction of planned patches failed (default 0)")
    run.add_argument("--overwrite", action="store_true",
                     help="fetch and write every patch again, replacing what the output folder holds")
    run.add_argument("-v", "--verbose", action="store_true")
    retry = sub.add_parser("retry-failed", help="rerun the job of an output folder: fetches only what is not done")
    retry.add_argument("output", help="an output folder written by pixelbeam run (its dataset.json or table.json has the config)")
    retry.add_argument("--max_failed_fraction", type=float, default=0.0)
    for sub_parser in (run, retry):
        sub_parser.add_argument("--ee_emulator", metavar="URL",
                                help="send Earth Engine requests to a local emulator at URL (anonymous credentials)")
    plan = sub.add_parser("plan", help="plan the job: patches, requests, bytes; sends no request")
    plan.add_argument("config")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--footprints", metavar="FILE.geojson", help="also write the patch footprints (lon/lat GeoJSON)")
    plan.add_argument("--ee_emulator", metavar="URL", help="as for run")
    sub.add_parser("emulate", help="start a local Earth Engine REST emulator (see --help)", add_help=False)
    sub.add_parser("preview", help="write preview.png and footprints.png of an output (see --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "emulate":
        from pipeline.ee_emulator.__main__ import main as emulate
        return emulate(list(rest))
    if args.command == "preview":
        from pipeline.preview import main as preview
        return preview(list(rest))
    if args.command == "plan" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # Beam warns each time a rerun replaces manifest.jsonl / failed.jsonl: expected, not news
    logging.getLogger("apache_beam.io.filebasedsink").setLevel(logging.ERROR)
    try:
        config = load_output_config(args.output) if args.command == "retry-failed" else load_config(args.config)
        if getattr(args, "ee_emulator", None):
            config = use_emulator(config, args.ee_emulator)
        if config.table is not None:  # point time series: pipeline/table_graph.py
            from pipeline.table_graph import table_main
            return table_main(args.command, config, rest, getattr(args, "json", False),
                              getattr(args, "max_failed_fraction", 0.0), overwrite=getattr(args, "overwrite", False))
        from pipeline.plan import prepare_job
        job = prepare_job(config)
    except ConfigError as e:
        print(f"pixelbeam: error: {e}", file=sys.stderr)
        return 2
    if args.command == "plan":
        if args.footprints:
            from pipeline.footprints import write_footprints
            write_footprints(job, args.footprints)
        return print_plan(job, as_json=args.json)
    try:
        return run_job(job, rest, args.max_failed_fraction, overwrite=getattr(args, "overwrite", False))
    except ConfigError as e:
        print(f"pixelbeam: error: {e}", file=sys.stderr)
        return 2


def load_output_config(output_path: str):
    """The config recorded in an output folder's dataset.json (patches) or table.json (a point
    table), paths already absolute."""
    from pipeline.config import parse_config
    from pipeline.resume import STATE_FILE, TABLE_STATE_FILE, read_json
    from transforms.sinks import join
    for name in (STATE_FILE, TABLE_STATE_FILE):
        state = read_json(join(output_path, name))
        if state and "config" in state:
            return parse_config(state["config"], name=f"{output_path}/{name}")
    raise ConfigError(f"{output_path}: no dataset.json or table.json with a config; "
                      "give an output folder of a finished run")


def use_emulator(config, url: str):
    """The config with its Earth Engine source pointed at a local emulator."""
    from pipeline.config import ConfigError, EarthEngineSourceConfig
    from transforms.ee_source import is_loopback
    if not isinstance(config.source, EarthEngineSourceConfig):
        raise ConfigError("--ee_emulator: the config's source is not earthengine; drop the flag")
    if not is_loopback(url):
        raise ConfigError(f"--ee_emulator: {url!r} is not a loopback URL; the emulator runs on this machine")
    return config.model_copy(update={"source": config.source.model_copy(update={"url": url, "credentials": "anonymous"})})


def print_plan(job, as_json: bool) -> int:
    from pipeline.plan import plan_summary
    summary = plan_summary(job)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:>22}: {value}")
    return 0


def pipeline_options(beam_args: Sequence[str]):
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    options = PipelineOptions(list(beam_args))
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner"):
        standard.runner = LOCAL_RUNNER
    return options


def run_job(job, beam_args: Sequence[str], max_failed_fraction: float, overwrite: bool = False) -> int:
    """Runs the job, resuming what an earlier run of the same config left undone."""
    import apache_beam as beam
    from pipeline import resume
    from pipeline.graph import build_pipeline
    from pipeline.summary import summarize, write_dataset_json

    out = job.config.output.path
    options = pipeline_options(beam_args)
    from pipeline.dataflow import check_runner, dry_run, is_dry_run, plan_staging, remove_staging
    check_runner(job, options, lambda p: build_pipeline(job, p, stage_to=plan_staging(options, write=False)))
    if is_dry_run(options):
        return dry_run(job, options)
    fingerprint = resume.check_fingerprint(job.config, out, overwrite)
    state = resume.plan_resume(job, resume.new_run_id(), overwrite)
    if state.nothing_to_do:
        print(f"nothing to do: all {job.planned} planned patches are done in {out} (--overwrite redoes them)")
        return 0
    started = time.monotonic()
    resume.clean_leftovers(out, state.completed_runs, overwrite)
    resume.mark_running(out, state.run_id, fingerprint)
    from apache_beam.options.pipeline_options import StandardOptions
    from pipeline.progress import is_local, progress_bar
    local = is_local(options.view_as(StandardOptions).runner)
    stage_to = plan_staging(options, state.run_id)  # Dataflow: the plan as files, not in the job graph
    with progress_bar(max(job.planned - state.done_before, 0), enabled=None if local else False) as progress_dir:
        pipeline = build_pipeline(job, beam.Pipeline(options=options), state, progress_dir, stage_to)
        result = pipeline.run()
        result.wait_until_finish()
    remove_staging(stage_to)
    write_dataset_json(job, fingerprint, state.completed_runs + [state.run_id], resume.plan_digest(job))
    resume.clear_running(out)
    summary = summarize(job, result, time.monotonic() - started)
    for line in summary.lines():
        print(line)
    from pipeline.preview import try_write_previews
    try_write_previews(out)  # preview.png + footprints.png; a failure only warns
    failed = summary.counts.get("failed", 0)
    if not summary.complete:
        return 1
    if failed > max_failed_fraction * summary.planned:
        print(f"pixelbeam: {failed} patches failed (see failed.jsonl); rerun to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
