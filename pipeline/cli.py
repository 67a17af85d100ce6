"""The `pixelbeam` command: run, plan, status, retry-failed, demo, preview, emulate.

`pixelbeam run CONFIG [Beam options]` runs the job (Beam options such as --runner pass straight
through; an option neither pixelbeam nor Beam knows is refused); `pixelbeam plan CONFIG` plans it and sends nothing. Bad input is one line on stderr
and exit status 2; a run whose failed fraction exceeds --max_failed_fraction exits 1. The
commands call the Python API (pipeline/api.py) and print what it returns.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import threading
from typing import Optional, Sequence

from pixelbeam.version import __version__

log = logging.getLogger("pixelbeam")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelbeam", description="Regions of the Earth -> ML training patches.")
    parser.add_argument("--version", action="version", version=f"pixelbeam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the extraction (extra arguments are Beam pipeline options)")
    run.add_argument("config")
    demo = sub.add_parser("demo", help="run the bundled demo (a Landsat scene, four regions) into --output")
    demo.add_argument("--output", default="out/demo", help="output folder (default out/demo in the current folder)")
    for sub_parser in (run, demo):
        sub_parser.add_argument("--max_failed_fraction", type=float, default=0.0,
                                help="exit 1 when more than this fraction of planned patches failed (default 0)")
        sub_parser.add_argument("--overwrite", action="store_true",
                                help="fetch and write every patch again, replacing what the output folder holds")
        sub_parser.add_argument("-v", "--verbose", action="store_true")
    retry = sub.add_parser("retry-failed", help="rerun the job of an output folder: fetches only what is not done")
    retry.add_argument("output", help="an output folder written by pixelbeam run (its dataset.json or table.json has the config)")
    retry.add_argument("--max_failed_fraction", type=float, default=0.0)
    for sub_parser in (run, retry):
        sub_parser.add_argument("--wait", action="store_true",
                                help="DataflowRunner: wait for the job and print the summary (default: return once "
                                     "it is submitted; the job records its own completion)")
        sub_parser.add_argument("--ee_emulator", metavar="URL",
                                help="send Earth Engine requests to a local emulator at URL (anonymous credentials)")
    plan = sub.add_parser("plan", help="plan the job: patches, requests, output bytes; sends no request")
    plan.add_argument("config")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--footprints", metavar="FILE.geojson", help="also write the patch footprints (lon/lat GeoJSON)")
    plan.add_argument("--ee_emulator", metavar="URL", help="as for run")
    status = sub.add_parser("status", help="what an output folder holds: completed runs, done, failed, complete or not")
    status.add_argument("output", help="the output.path of a run (also of a Dataflow job launched and left)")
    for sub_parser in (plan, retry):
        sub_parser.add_argument("-v", "--verbose", action="store_true")
    sub.add_parser("emulate", help="start a local Earth Engine REST emulator (see --help)", add_help=False)
    sub.add_parser("preview", help="write preview.png and footprints.png of an output (see --help)", add_help=False)
    return parser


INTERRUPTED = 130  # as a shell reports a command stopped by Ctrl-C (128 + SIGINT)
BUG = 1
BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command whose reader closed the pipe


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command; never a traceback: Ctrl-C is one line and exit 130, a closed pipe (`| head`)
    quietly exit 141, an error pixelbeam did not expect (a bug) is one line that says so and
    exit 1 (--verbose also prints its traceback). Called as the program (`argv` None), a failed
    command ends the process at once: fetch threads still blocked in a read must not hold it;
    and the objects left at the end are frozen (`gc.freeze`), so that the interpreter's exit
    does not walk them all again in its final collections (~250,000 after a run: ~1.4 CPU-s)."""
    program = argv is None
    code = command_status(list(sys.argv[1:] if program else argv), program)
    if program and code != 0 and any(t.is_alive() and not t.daemon for t in threading.enumerate()
                                     if t is not threading.main_thread()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if program:
        gc.freeze()
    return code


def command_status(arguments: list, program: bool = False) -> int:
    """`run_command`'s exit status, every exception turned into its one line (see `main`)."""
    try:
        return run_command(arguments, program)
    except KeyboardInterrupt:
        return interrupted()
    except BrokenPipeError:  # the reader went away (`pixelbeam plan ... | head`): nothing more to say
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        except (OSError, ValueError):
            pass
        return BROKEN_PIPE
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if any(isinstance(c, KeyboardInterrupt) for c in causes(e)):  # Ctrl-C inside a step Beam re-raised
            return interrupted()
        if "-v" in arguments or "--verbose" in arguments:
            import traceback
            say("".join(traceback.format_exception(e)).rstrip(), file=sys.stderr)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        say(f"pixelbeam: internal error (a bug in pixelbeam, not in your input): {type(e).__name__}"
            f"{': ' + detail if detail else ''}; rerun with --verbose for the details, and please report it",
            file=sys.stderr)
        return BUG


def one_line_beam_records(record: logging.LogRecord) -> bool:
    """A log filter: Beam's records keep their first line, without a traceback (--verbose shows it)."""
    if record.name.startswith("apache_beam"):
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        message = record.getMessage()
        record.msg, record.args = message.split("\n", 1)[0], ()
    return True


def interrupted() -> int:
    say("pixelbeam: interrupted; outputs of earlier completed runs are kept, and rerunning the same command "
        "resumes", file=sys.stderr)
    return INTERRUPTED


def causes(e: BaseException):
    """`e` and the exceptions it was raised from or during, outermost first."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


RUNS = ("run", "demo", "retry-failed")  # the commands that import Beam and run a pipeline
PRELOADED = ("plan",) + RUNS


def preload(config, command: str) -> None:
    """Import what `command` of `config` will import (planning; Beam for a run; `ee` for an Earth
    Engine job), then freeze every object so far (`gc.freeze`) and restart the collector, which
    the program paused from its start (`run_command`): imports make ~250,000 objects and no
    garbage, and each full collection during and after them walked them all (~1.3 CPU-s of
    collections in a small run). For the program's own process only: the objects frozen are
    never collected, which is what a module's are anyway."""
    from pixelbeam.pipeline.config import EarthEngineSourceConfig
    sources = list(config.layers) if config.layers is not None else [config.source]
    try:
        import pixelbeam.pipeline.plan  # noqa: F401
        if command in RUNS:
            import pixelbeam.pipeline.run  # noqa: F401  (Beam)
            if config.table is not None:
                import pixelbeam.pipeline.tables.run  # noqa: F401
        if any(isinstance(src, EarthEngineSourceConfig) for src in sources):
            try:
                import ee  # noqa: F401
            except ImportError:  # the run says what to install
                pass
    finally:
        gc.freeze()
        gc.enable()


def run_command(argv: Sequence[str], program: bool = False) -> int:
    """The command's exit status. Called as the program, a plan or a run pauses the garbage
    collector until `preload` has imported what it needs."""
    if program and argv and argv[0] in PRELOADED:
        gc.disable()
    try:
        return dispatch(argv, program)
    finally:
        if program and not gc.isenabled():
            gc.enable()


def dispatch(argv: Sequence[str], program: bool = False) -> int:
    parser = make_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "emulate":
        from pixelbeam.testing.ee_emulator.__main__ import main as emulate
        return emulate(list(rest), prog="pixelbeam emulate")
    if args.command == "preview":
        from pixelbeam.pipeline.preview import main as preview
        return preview(list(rest))
    if args.command == "status":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from pixelbeam.pipeline.status import main as status
        return status(args.output)
    if args.command == "plan" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # Beam logs a failed or interrupted step with its traceback; pixelbeam says it in one line
        for handler in logging.getLogger().handlers:
            handler.addFilter(one_line_beam_records)
    from pixelbeam.pipeline import api  # here, not above: --help and --version stay instant
    from pixelbeam.pipeline.config import ConfigError
    from pixelbeam.transforms.secrets import hide_secrets_in_logs
    hide_secrets_in_logs()
    try:
        if rest:  # Beam's options; anything else (a typo of --overwrite) is refused, not dropped
            from pixelbeam.pipeline.runner import check_options
            check_options(rest, own_options(parser, args.command))
        config = command_config(args)
        if program and args.command in PRELOADED:
            preload(config, args.command)
        if args.command == "plan":
            return print_plan(api.plan(config), as_json=args.json, footprints=args.footprints)
        result = api.run(config, beam_args=rest, overwrite=getattr(args, "overwrite", False),
                         max_failed_fraction=args.max_failed_fraction, wait=getattr(args, "wait", False))
    except ConfigError as e:
        say(f"pixelbeam: error: {e}", file=sys.stderr)
        return 2
    for line in result.lines:
        say(line)
    if result.problem:
        say(result.problem, file=sys.stderr)
    return result.exit_code


def say(line: str, file=None) -> None:
    """Print a line of the command's output; no URL's credential is ever shown."""
    from pixelbeam.transforms.secrets import hide_secrets
    print(hide_secrets(str(line)), file=file or sys.stdout)


def own_options(parser: argparse.ArgumentParser, command: str) -> list[str]:
    """The option strings of one of pixelbeam's commands (for a typo's suggestion)."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices  # noqa: SLF001
    return [o for action in commands[command]._actions for o in action.option_strings]  # noqa: SLF001


def command_config(args):
    """The validated config a command runs: the YAML given, an output folder's recorded config
    (retry-failed) or the bundled demo; pointed at the Earth Engine emulator with --ee_emulator."""
    from pixelbeam.pipeline import api
    if args.command == "retry-failed":
        config = load_output_config(args.output)
    elif args.command == "demo":
        config = api.load(api.demo_config(args.output))
    else:
        config = api.load(args.config)
    if getattr(args, "ee_emulator", None):
        config = use_emulator(config, args.ee_emulator)
    return config


def load_output_config(output_path: str):
    """The config recorded in an output folder's dataset.json (patches) or table.json (a point
    table), paths already absolute."""
    from pixelbeam.pipeline.config import ConfigError, parse_config
    from pixelbeam.pipeline.resume import STATE_FILE, TABLE_STATE_FILE, read_json
    from pixelbeam.transforms.secrets import has_redactions
    from pixelbeam.transforms.storage import join
    for name in (STATE_FILE, TABLE_STATE_FILE):
        state = read_json(join(output_path, name))
        if state and "config" in state:
            if has_redactions(state["config"]):
                raise ConfigError(f"{output_path}: the config recorded in {name} had a URL's credentials, which pixelbeam "
                                  "never stores; rerun it with `pixelbeam run CONFIG` (it resumes the same way)", field=None)
            return parse_config(state["config"], name=f"{output_path}/{name}", recorded=True)
    raise ConfigError(f"{output_path}: no dataset.json or table.json with a config; "
                      "give an output folder of a finished run", field=None)


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


def print_plan(plan, as_json: bool, footprints: Optional[str] = None) -> int:
    """`pixelbeam plan`: the footprints written (patch jobs), then the plan printed."""
    if footprints and plan.unit == "patches":
        plan.write_footprints(footprints)
    say(json.dumps(plan.summary, indent=2) if as_json else str(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
