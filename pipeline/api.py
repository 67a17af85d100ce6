"""The Python API, re-exported by `pixelbeam`: plan a job, run it, open what it wrote.

    import pixelbeam
    plan = pixelbeam.plan("configs/demo.yaml")      # what `pixelbeam plan` prints, as attributes
    result = pixelbeam.run("configs/demo.yaml")     # what `pixelbeam run` does; a RunResult
    output = pixelbeam.open_output(result.output_path)

A config is a YAML path (relative paths in it resolve against the file's folder), a mapping with
the YAML's shape or a `Config` (relative paths resolve against the current folder). Bad input
raises `ConfigError` before any pixel request is sent or anything is written. The CLI
(pipeline/cli.py) is a thin caller of these functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shlex
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import yaml

from pixelbeam.pipeline.config import Config, ConfigError, load_config, parse_config, resolve_paths
from pixelbeam.pipeline.results import PATCHES, ROWS, RunResult
from pixelbeam.transforms.loaders.common import arrow_source, join_path, read_bytes
from pixelbeam.transforms.patch import FAILED, FILTERED, WRITTEN, PatchSpec
from pixelbeam.transforms.secrets import hide_secrets_in, hide_secrets_in_logs

ConfigLike = Union[str, "os.PathLike[str]", Mapping[str, Any], Config]

# The installed package carries the demo beside pipeline/ as the repository does: configs/ and
# data/ (setup.py maps them to pixelbeam/configs and pixelbeam/data).
BUNDLE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(BUNDLE, "configs", "demo.yaml")


def load(config: ConfigLike, rewrite=None) -> Config:
    """A validated `Config` with absolute paths: from a YAML file (its relative paths against the
    file's folder), a mapping with the YAML's shape or a `Config` (relative paths against the
    current folder). `rewrite` (mapping -> mapping) changes the document before validation.
    Raises ConfigError."""
    hide_secrets_in_logs()  # from here on no log line shows a URL's credential
    if isinstance(config, Config):
        if rewrite:
            config = parse_config(rewrite(config.model_dump(mode="json", exclude_defaults=True)), name="config")
        return resolve_paths(config, os.getcwd())
    if isinstance(config, Mapping):
        doc = rewrite(dict(config)) if rewrite else dict(config)
        return parse_config(doc, base_dir=os.getcwd(), name="config")
    if isinstance(config, (str, os.PathLike)):
        return load_config(os.fspath(config), rewrite)
    raise TypeError(f"config: expected a YAML path, a dict or a pixelbeam.Config, got {type(config).__name__}")


def prepare(config: Config):
    """The planned job of a validated config: a patch `Job` (pipeline/plan.py) or, with a
    `table:` section, a `TableJob` (pipeline/tables/plan.py). Sends no pixel request."""
    if config.table is not None:
        from pixelbeam.pipeline.tables.plan import prepare_table_job
        return prepare_table_job(config)
    from pixelbeam.pipeline.plan import prepare_job
    return prepare_job(config)


RENAMED = {"bytes": "output_bytes", "bytes_per_patch": "output_bytes_per_patch"}  # plan keys' earlier names


@dataclasses.dataclass(frozen=True)
class Plan:
    """A planned job, as `pixelbeam plan` prints it: every key of `summary` (the `--json`
    output) is also an attribute (`plan.patches`, `plan.requests`, `plan.output_bytes`,
    `plan.min_seconds_at_quota`; a point table's `plan.rows`, `plan.groups` ...). `specs()`
    iterates over the planned patches; `job` is the prepared job the building blocks take
    (pixelbeam.beam)."""

    config: Config
    summary: Mapping[str, Any]
    job: Any  # pipeline.plan.Job, or pipeline.tables.plan.TableJob for a point table

    @classmethod
    def of(cls, job) -> "Plan":
        if job.config.table is not None:
            return cls(job.config, hide_secrets_in(job.summary()), job)
        from pixelbeam.pipeline.plan import plan_summary
        return cls(job.config, hide_secrets_in(plan_summary(job)), job)  # what is printed names no credential

    @property
    def unit(self) -> str:
        """What the job plans and its manifest (or table) accounts for: patches, or rows."""
        return ROWS if self.config.table is not None else PATCHES

    @property
    def planned(self) -> int:
        """Planned patches (a point table: rows), as `RunResult.planned` counts them."""
        return self.summary["rows" if self.unit == ROWS else "patches"]

    @property
    def output_path(self) -> str:
        return self.config.output.path

    def __getattr__(self, name: str) -> Any:
        summary = self.__dict__.get("summary") or {}
        name = RENAMED.get(name, name) if name not in summary else name
        if name in summary:
            return summary[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}; "
                             f"the plan has {', '.join(summary)}")

    def specs(self) -> Iterator[PatchSpec]:
        """The planned patches, cell by cell (memory: one cell's patches at a time); a point
        table's fetch groups (each a small window holding some of its pixels)."""
        if self.unit == ROWS:
            yield from (spec for spec, _ in self.job.groups)
            return
        from pixelbeam.transforms.planning.cells import expand_cell, project_regions
        job = self.job
        projected = project_regions(job.regions, job.grid)
        for cell in job.cells:
            yield from expand_cell(cell, projected[cell.crs], job.grid, job.sample)

    def write_footprints(self, path: str) -> str:
        """The patch footprints as lon/lat GeoJSON (`pixelbeam plan --footprints`)."""
        if self.unit == ROWS:
            raise ValueError("footprints: a point table plans pixels, not patches")
        from pixelbeam.pipeline.footprints import write_footprints
        write_footprints(self.job, path)
        return path

    def lines(self) -> list[str]:
        """`pixelbeam plan`'s lines: one per key; limits (a dict) and layers (a list of dicts)
        one line per layer."""
        out = []
        for key, value in self.summary.items():
            if isinstance(value, dict):
                out.append(f"{key:>22}:")
                out += [f"{'':>24}{name}: {text}" for name, text in value.items()]
            elif value and isinstance(value, list) and isinstance(value[0], dict):
                out.append(f"{key:>22}:")
                out += [f"{'':>24}" + ", ".join(f"{k} {v}" for k, v in item.items()) for item in value]
            else:
                out.append(f"{key:>22}: {value}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))


def planned_job(config: ConfigLike, image: Any = None, collection: Any = None):
    """The prepared job of `run` and `plan`. `image` (an `ee.Image`) or `collection` (an
    `ee.ImageCollection`), or their serialized JSON, replace the config's Earth Engine image:
    the expression is put inline into `source.expression_json` (pipeline/config/expression.py),
    so it is fingerprinted, recorded in dataset.json and resumed like one read from a file."""
    if image is not None and collection is not None:
        raise ConfigError("image: give image (an ee.Image) or collection (an ee.ImageCollection), not both")
    rewrite = None
    if image is not None or collection is not None:
        from pixelbeam.pipeline.config.expression import check_kind, with_expression
        given = image if image is not None else collection
        check_kind(given, "image" if image is not None else "collection")
        rewrite = lambda doc: with_expression(doc, given)  # noqa: E731
    return prepare(load(config, rewrite))


def plan(config: ConfigLike, *, image: Any = None, collection: Any = None) -> Plan:
    """Check and plan the job (`pixelbeam plan`): patches, requests, output bytes; sends no pixel
    request and writes nothing. `image` / `collection`: as for `run`. Raises ConfigError."""
    return Plan.of(planned_job(config, image, collection))


def run(config: ConfigLike, *, beam_args: Union[Sequence[str], str] = (), overwrite: bool = False,
        max_failed_fraction: float = 0.0, image: Any = None, collection: Any = None, wait: bool = False) -> RunResult:
    """Run the job (`pixelbeam run`), resuming what an earlier run of the same config left
    undone, and return its `RunResult` (printed, it is the summary table).

    `beam_args` are Beam pipeline options (`["--runner", "DataflowRunner", ...]`, or one
    string); none means the local runner. `overwrite` redoes every patch, replacing what the
    output folder holds. The result is not `ok` when more than `max_failed_fraction` of the
    planned patches failed; patches that failed are in the manifest and failed.jsonl, and a rerun
    retries them. `image` (an `ee.Image`) or `collection` (an `ee.ImageCollection`) is the Earth
    Engine image to fetch, in place of the config's asset, collection or expression (the config's
    `source` keeps its other keys: bands, mask, collection_mode, project, url, ...). On
    DataflowRunner it returns once the job is submitted (the job records its own completion;
    `pixelbeam status OUT` shows progress) unless `wait`. Raises ConfigError, before anything is
    written, for bad input."""
    job = planned_job(config, image, collection)
    if job.config.table is None:
        from pixelbeam.pipeline.point_run import lean_point_job
        lean_point_job(job, in_place=True)  # point columns freed before Beam is imported (issue 17.3)
    return run_planned(job, beam_args, overwrite=overwrite, max_failed_fraction=max_failed_fraction, wait=wait)


def run_planned(job, beam_args: Union[Sequence[str], str] = (), overwrite: bool = False,
                max_failed_fraction: float = 0.0, wait: bool = False) -> RunResult:
    """`run` of an already prepared job (a `Plan.job`)."""
    args = shlex.split(beam_args) if isinstance(beam_args, str) else list(beam_args)
    if job.config.table is None:
        from pixelbeam.pipeline.point_run import lean_point_job
        job = lean_point_job(job)  # the PointCells the graph takes (the caller's job keeps its columns)
    with quiet_expected_warnings():
        if job.config.table is not None:
            from pixelbeam.pipeline.tables.run import run_table_job
            return run_table_job(job, args, max_failed_fraction, overwrite=overwrite, wait=wait)
        from pixelbeam.pipeline.run import run_job
        return run_job(job, args, max_failed_fraction, overwrite=overwrite, wait=wait)


# Beam warns each time a rerun replaces manifest.jsonl / failed.jsonl, and in Jupyter that its
# interactive extra (PCollection charts, which pixelbeam does not use) is not installed.
EXPECTED_WARNINGS = ("apache_beam.io.filebasedsink", "apache_beam.runners.interactive.interactive_environment")


@contextlib.contextmanager
def quiet_expected_warnings() -> Iterator[None]:
    """Beam's EXPECTED_WARNINGS silenced while the block runs: expected, not news."""
    loggers = [logging.getLogger(name) for name in EXPECTED_WARNINGS]
    levels = [logger.level for logger in loggers]
    for logger, level in zip(loggers, levels):
        logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def demo_config(output_path: str = "out/demo") -> dict:
    """The bundled demo (configs/demo.yaml: 64 px patches of a Landsat scene over four regions),
    as a config mapping: its raster and regions are the installed copies, its output goes to
    `output_path` (relative to the current folder). `pixelbeam demo` runs it."""
    try:
        with open(DEMO_CONFIG, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{DEMO_CONFIG}: the demo is not installed with this pixelbeam; reinstall it "
                                "from a wheel or a checkout") from None
    base = os.path.dirname(DEMO_CONFIG)
    doc["source"]["uri"] = os.path.normpath(os.path.join(base, doc["source"]["uri"]))
    doc["regions"] = os.path.normpath(os.path.join(base, doc["regions"]))
    doc["output"]["path"] = os.fspath(output_path)
    return doc


@dataclasses.dataclass(frozen=True)
class Output:
    """A written output folder: `dataset` is its dataset.json (a point table: table.json) as a
    dict; the manifest is read on demand, as rows or a pyarrow.Table."""

    path: str
    dataset: Mapping[str, Any]

    @property
    def unit(self) -> str:
        return ROWS if self.dataset.get("mode") == "table" else PATCHES

    @property
    def planned(self) -> int:
        return self.dataset["planned_rows" if self.unit == ROWS else "patches_planned"]

    @property
    def bands(self) -> list[str]:
        return list(self.dataset["bands"]) if "bands" in self.dataset else [
            c["name"] for c in self.dataset["columns"] if c["meaning"].startswith("band value")]

    def manifest_rows(self) -> Iterator[dict]:
        """manifest.jsonl's rows as dicts, streamed in file order (one per planned patch)."""
        yield from _json_lines(self._patches_only("manifest.jsonl"))

    def manifest(self):
        """The manifest as a pyarrow.Table (one row per planned patch, columns as in
        docs/outputs.md; a key a row lacks is null)."""
        import pyarrow as pa
        return pa.Table.from_pylist(list(self.manifest_rows()))

    def failures(self) -> Iterator[dict]:
        """The dead letters of failed.jsonl (none when nothing failed)."""
        path = join_path(self.path, "failed.jsonl")
        if _exists(path):
            yield from _json_lines(path)

    def counts(self) -> dict[str, int]:
        """{written, filtered, failed}: patches by their manifest status (a point table: rows
        written and failed, from table.json)."""
        if self.unit == ROWS:
            return {WRITTEN: self.dataset["rows"], FAILED: self.dataset["failed_rows"]}
        from pixelbeam.pipeline.summary import count_outcomes
        counts, _ = count_outcomes((r["patch_id"], r["status"]) for r in self.manifest_rows())
        return {status: counts.get(status, 0) for status in (WRITTEN, FILTERED, FAILED)}

    def table(self):
        """A point table's rows (its Parquet or CSV shards) as one pyarrow.Table."""
        if self.unit != ROWS:
            raise ValueError(f"{self.path}: holds patches, not a point table; read manifest() or the loaders")
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq
        fmt = self.dataset["config"]["table"]["formats"][0]
        files = [f for f in self.dataset["files"] if f.endswith(f".{fmt}")]
        read = pq.read_table if fmt == "parquet" else pcsv.read_csv
        return pa.concat_tables([read(arrow_source(join_path(self.path, f))) for f in files])

    @property
    def preview(self) -> Optional[str]:
        """preview.png's path (drawn after a local run, or by `pixelbeam preview`), if there is one."""
        path = join_path(self.path, "preview.png")
        return path if _exists(path) else None

    def _patches_only(self, name: str) -> str:
        if self.unit == ROWS:
            raise ValueError(f"{self.path}: a point table has no {name}; read table()")
        return join_path(self.path, name)


def open_output(path: Union[str, "os.PathLike[str]"]) -> Output:
    """The output folder `path` (local or gs://) of a finished run; FileNotFoundError says what
    to do when it holds no dataset.json or table.json."""
    path = os.fspath(path)
    for name in ("dataset.json", "table.json"):
        if _exists(join_path(path, name)):
            return Output(path, json.loads(read_bytes(join_path(path, name)).decode("utf-8")))
    raise FileNotFoundError(f"{path}: no dataset.json or table.json; give the output.path of a finished `pixelbeam run`")


def _exists(path: str) -> bool:
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems
        return FileSystems.exists(path)
    return os.path.exists(path)


def _json_lines(path: str) -> Iterator[dict]:
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems
        f = io.TextIOWrapper(FileSystems.open(path), encoding="utf-8")
    else:
        f = open(path, encoding="utf-8")
    with f:
        for line in f:
            if line.strip():
                yield json.loads(line)


__all__ = ["Config", "ConfigError", "ConfigLike", "Output", "Plan", "RunResult", "demo_config", "load", "open_output",
           "plan", "planned_job", "prepare", "run", "run_planned"]
