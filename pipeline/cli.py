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
from typing import Optional, Sequence

from pixelbeam.pipeline.config import ConfigError, load_config

log = logging.getLogger("pixelbeam")


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
        from pixelbeam.testing.ee_emulator.__main__ import main as emulate
        return emulate(list(rest))
    if args.command == "preview":
        from pixelbeam.pipeline.preview import main as preview
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
        if config.table is not None:  # point time series: pipeline/tables/graph.py
            from pixelbeam.pipeline.tables.run import table_main
            return table_main(args.command, config, rest, getattr(args, "json", False),
                              getattr(args, "max_failed_fraction", 0.0), overwrite=getattr(args, "overwrite", False))
        from pixelbeam.pipeline.plan import prepare_job
        job = prepare_job(config)
    except ConfigError as e:
        print(f"pixelbeam: error: {e}", file=sys.stderr)
        return 2
    if args.command == "plan":
        if args.footprints:
            from pixelbeam.pipeline.footprints import write_footprints
            write_footprints(job, args.footprints)
        return print_plan(job, as_json=args.json)
    from pixelbeam.pipeline.run import run_job
    try:
        return run_job(job, rest, args.max_failed_fraction, overwrite=getattr(args, "overwrite", False))
    except ConfigError as e:
        print(f"pixelbeam: error: {e}", file=sys.stderr)
        return 2


def load_output_config(output_path: str):
    """The config recorded in an output folder's dataset.json (patches) or table.json (a point
    table), paths already absolute."""
    from pixelbeam.pipeline.config import parse_config
    from pixelbeam.pipeline.resume import STATE_FILE, TABLE_STATE_FILE, read_json
    from pixelbeam.transforms.storage import join
    for name in (STATE_FILE, TABLE_STATE_FILE):
        state = read_json(join(output_path, name))
        if state and "config" in state:
            return parse_config(state["config"], name=f"{output_path}/{name}")
    raise ConfigError(f"{output_path}: no dataset.json or table.json with a config; "
                      "give an output folder of a finished run")


def use_emulator(config, url: str):
    """The config with its Earth Engine source (or layers) pointed at a local emulator."""
    from pixelbeam.pipeline.config import ConfigError, EarthEngineSourceConfig
    from pixelbeam.transforms.sources.earthengine import is_loopback
    local = {"url": url, "credentials": "anonymous"}
    if config.layers is not None and any(isinstance(layer, EarthEngineSourceConfig) for layer in config.layers):
        if not is_loopback(url):
            raise ConfigError(f"--ee_emulator: {url!r} is not a loopback URL; the emulator runs on this machine")
        return config.model_copy(update={"layers": [layer.model_copy(update=local)
                                                    if isinstance(layer, EarthEngineSourceConfig) else layer
                                                    for layer in config.layers]})
    if not isinstance(config.source, EarthEngineSourceConfig):
        raise ConfigError("--ee_emulator: the config's source is not earthengine; drop the flag")
    if not is_loopback(url):
        raise ConfigError(f"--ee_emulator: {url!r} is not a loopback URL; the emulator runs on this machine")
    return config.model_copy(update={"source": config.source.model_copy(update=local)})


def print_plan(job, as_json: bool) -> int:
    from pixelbeam.pipeline.plan import plan_summary
    summary = plan_summary(job)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            if isinstance(value, dict):  # limits: one line per layer
                print(f"{key:>22}:")
                for name, text in value.items():
                    print(f"{'':>24}{name}: {text}")
            elif value and isinstance(value, list) and isinstance(value[0], dict):  # layers: one line each
                print(f"{key:>22}:")
                for item in value:
                    print(f"{'':>24}" + ", ".join(f"{k} {v}" for k, v in item.items()))
            else:
                print(f"{key:>22}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
