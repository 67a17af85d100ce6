"""The Flex Template's entry point (dataflow/main.py, run by the template launcher in the
container dataflow/Dockerfile builds): the template's parameters, as metadata.json declares
them, turned into `pixelbeam run`.

Dataflow's launcher passes every parameter as `--name=value`: `config` is a gs:// path (or a
path in the image) or the YAML itself, `overwrite` true/false, `max_failed_fraction` a number;
the rest (machine_type, max_num_workers, ...) are Beam options and pass through. The launcher
must return once the job is submitted (Dataflow's rule for Flex Templates), which `pixelbeam run`
on DataflowRunner does by default: the job records its own completion (pipeline/records.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Optional, Sequence

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def config_file(value: str, folder: str) -> str:
    """A local YAML file holding the config `value` names (gs:// or local path) or is (YAML
    text: it has a newline or a `key: value` pair), written into `folder` when it is not local."""
    from apache_beam.io.filesystems import FileSystems
    if "\n" not in value and ": " not in value:
        if "://" not in value:
            return value
        with FileSystems.open(value) as f:
            text = f.read().decode("utf-8")
    else:
        text = value
    path = os.path.join(folder, "config.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def flag(name: str, value: str) -> bool:
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise SystemExit(f"pixelbeam: error: --{name}: {value!r} is not true or false")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python dataflow/main.py --config=... [--overwrite=true] [--max_failed_fraction=F] [Beam options]`."""
    parser = argparse.ArgumentParser(prog="dataflow/main.py", description="pixelbeam's Flex Template entry point")
    parser.add_argument("--config", required=True, help="gs://BUCKET/job.yaml, or the YAML itself")
    parser.add_argument("--overwrite", default="false", help="true: redo every patch")
    parser.add_argument("--max_failed_fraction", default="0")
    args, beam_args = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if not any(a == "--runner" or a.startswith("--runner=") for a in beam_args):
        beam_args = ["--runner=DataflowRunner", *beam_args]
    from pixelbeam.pipeline.cli import main as cli
    with tempfile.TemporaryDirectory(prefix="pixelbeam-template-") as folder:
        try:
            path = config_file(args.config, folder)
        except Exception as e:  # e.g. a missing object or no access: Cloud Storage's own errors
            e = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            print(f"pixelbeam: error: --config: cannot read {args.config!r} ({e}); give a gs:// "
                  "path the launcher's service account can read, or the YAML itself", file=sys.stderr)
            return 2
        run = ["run", path, "--max_failed_fraction", args.max_failed_fraction, *beam_args]
        return cli(run + (["--overwrite"] if flag("overwrite", args.overwrite) else []))


if __name__ == "__main__":
    sys.exit(main())
