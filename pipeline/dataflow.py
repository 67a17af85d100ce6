"""Running on Dataflow: how many SDK processes share the quota, the worker options
run_dataflow.sh derives from a config, what a submission must satisfy, and the offline dry run.

Dataflow starts one Python SDK process per vCPU of every worker VM (Beam's Dataflow client adds
the `use_multiple_sdk_containers` experiment unless `no_use_multiple_sdk_containers` is given),
and each process keeps its own throttler (transforms/fetch.py). So the config's job-wide fetch
limits are divided over max_num_workers x processes per worker, and the pool must not grow past
max_num_workers: run_dataflow.sh asks for a fixed pool (autoscaling off), because Dataflow's
autoscaler reads the throttling counter as "fewer workers would do" and a smaller pool would
use only its share of the quota.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from typing import Optional, Sequence

from pixelbeam.pipeline.config import ConfigError, EarthEngineSourceConfig, RasterSourceConfig, VectorLayerConfig

ONE_PROCESS_PER_WORKER = "no_use_multiple_sdk_containers"
SETUP_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
SLOTS_PER_PROCESS = 8  # request slots each SDK process gets when the worker count is derived
GRAPH_LIMIT_BYTES = 10_000_000  # Dataflow refuses a job graph over 10 MB (its request quotas page)
SHARED_CORE_VCPUS = {"e2-micro": 2, "e2-small": 2, "e2-medium": 2, "f1-micro": 1, "g1-small": 1}
_STANDARD = re.compile(r"^[a-z][a-z0-9]*-[a-z]+-(\d+)(?:-lssd|-metal)?$")  # n1-standard-4, c3-highcpu-22
_CUSTOM = re.compile(r"^(?:[a-z][a-z0-9]*-)?custom-(\d+)-\d+(?:-ext)?$")  # custom-4-16384, n2-custom-8-32768


def is_dataflow(options) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions
    return "dataflow" in (options.view_as(StandardOptions).runner or "").lower()


def is_dry_run(options) -> bool:
    """As DataflowRunner reads --dry_run (any non-empty value counts, as in Beam)."""
    from apache_beam.options.pipeline_options import TestOptions
    return bool(options.view_as(TestOptions).dry_run)


def machine_vcpus(machine_type: str) -> int:
    """vCPUs of a Compute Engine machine type (`n1-standard-4` -> 4, `custom-8-32768` -> 8)."""
    name = machine_type.rsplit("/", 1)[-1].lower()  # also zones/.../machineTypes/NAME
    if name in SHARED_CORE_VCPUS:
        return SHARED_CORE_VCPUS[name]
    match = _CUSTOM.match(name) or _STANDARD.match(name)
    if not match:
        raise ValueError(f"unknown machine type {machine_type!r}")
    return int(match.group(1))


def processes_per_worker(options) -> int:
    """Python SDK processes on one Dataflow worker VM: one per vCPU, or one in all with
    --experiments=no_use_multiple_sdk_containers."""
    from apache_beam.options.pipeline_options import DebugOptions, WorkerOptions
    if ONE_PROCESS_PER_WORKER in (options.view_as(DebugOptions).experiments or []):
        return 1
    machine_type = options.view_as(WorkerOptions).machine_type
    if not machine_type:
        raise ConfigError("--machine_type: Dataflow runs one SDK process per vCPU and the fetch limits are divided "
                          "over them; give --machine_type (e.g. n1-standard-2) or "
                          f"--experiments={ONE_PROCESS_PER_WORKER}")
    try:
        return machine_vcpus(machine_type)
    except ValueError:
        raise ConfigError(f"--machine_type: cannot tell how many vCPUs {machine_type!r} has; use a predefined or "
                          f"custom-N-MB type, or --experiments={ONE_PROCESS_PER_WORKER}") from None


def worker_vms(options) -> int:
    """The most worker VMs the job can have: max_num_workers, or num_workers of a fixed pool."""
    from apache_beam.options.pipeline_options import WorkerOptions
    workers = options.view_as(WorkerOptions)
    if workers.max_num_workers:
        return workers.max_num_workers
    if workers.num_workers and workers.autoscaling_algorithm == "NONE":
        return workers.num_workers
    raise ConfigError("--max_num_workers: a Dataflow job needs it (the fetch limits are divided over the workers, "
                      "and autoscaling past it would exceed the quota); run_dataflow.sh sets it from the config")


def sdk_processes(options) -> int:
    """How many worker processes share the job's fetch limits on Dataflow."""
    return worker_vms(options) * processes_per_worker(options)


@dataclasses.dataclass(frozen=True)
class WorkerPlan:
    """A fixed Dataflow pool sized so that the job as a whole stays inside the config's limits."""

    workers: int
    processes_per_worker: int
    machine_type: str
    max_concurrent: int  # request slots per SDK process
    requests_per_second: float  # per SDK process

    @property
    def processes(self) -> int:
        return self.workers * self.processes_per_worker

    def beam_options(self) -> list[str]:
        opts = [f"--machine_type={self.machine_type}", f"--num_workers={self.workers}",
                f"--max_num_workers={self.workers}", "--autoscaling_algorithm=NONE"]
        if self.processes_per_worker == 1 and machine_vcpus(self.machine_type) > 1:
            opts.append(f"--experiments={ONE_PROCESS_PER_WORKER}")
        return opts

    def describe(self) -> str:
        return (f"{self.workers} x {self.machine_type} workers, {self.processes_per_worker} SDK process(es) each: "
                f"{self.processes} processes x {self.max_concurrent} concurrent requests, "
                f"{self.requests_per_second:g} requests/s each")


def plan_workers(fetch, machine_type: str, one_process_per_worker: bool = False,
                 max_workers: Optional[int] = None) -> WorkerPlan:
    """The pool for a config's `fetch` limits: every SDK process gets at least one request slot,
    and by default about SLOTS_PER_PROCESS (the quota, not the worker count, bounds throughput)."""
    from pixelbeam.pipeline.limits import EE_CONCURRENT, EE_RATE
    from pixelbeam.transforms.fetching.throttle import per_worker_limits
    per_worker = 1 if one_process_per_worker else machine_vcpus(machine_type)
    slots = fetch.max_concurrent_requests or EE_CONCURRENT  # unset: the Earth Engine quota the pool is sized for
    rate = fetch.max_requests_per_second
    rate = EE_RATE if rate in (None, "unlimited") else rate
    most = slots // per_worker
    if most < 1:
        raise ConfigError(f"fetch.max_concurrent_requests: {slots} is fewer than the {per_worker} SDK processes of one "
                          f"{machine_type} worker; use a smaller machine type or one process per worker")
    if max_workers is not None:
        if not 1 <= max_workers <= most:
            raise ConfigError(f"MAX_WORKERS: {max_workers} workers x {per_worker} processes would leave some process "
                              f"without a request slot of fetch.max_concurrent_requests {slots}; use 1..{most}, "
                              "or raise the limit")
        workers = max_workers
    else:
        workers = max(1, min(most, slots // (per_worker * SLOTS_PER_PROCESS)))
    concurrent, rate = per_worker_limits(slots, rate, workers * per_worker)
    return WorkerPlan(workers, per_worker, machine_type, concurrent, rate)


def config_sources(config) -> list:
    """The config's `source:`, or each of its layers."""
    return list(config.layers) if config.layers is not None else [config.source]


def uses_earth_engine(config) -> bool:
    return any(isinstance(src, EarthEngineSourceConfig) for src in config_sources(config))


def worker_requirements(config, setup_py: str = SETUP_PY) -> list[str]:
    """What workers need beyond setup.py's install_requires (pip-installed with the sdist) and
    the Beam SDK container (which has apache-beam[gcp]): the `ee` extra for Earth Engine
    sources, read from setup.py itself so that it stays the one list."""
    if not uses_earth_engine(config):
        return []
    import setuptools  # noqa: F401  (provides distutils on every Python version)
    from distutils.core import run_setup
    if not os.path.isfile(setup_py):
        raise ConfigError(f"{setup_py}: not found; run run_dataflow.sh from a pixelbeam checkout")
    return list(run_setup(setup_py, stop_after="init").extras_require["ee"])


def submission_problems(job) -> list[str]:
    """What would fail on Dataflow workers although it works here (one line each)."""
    config, problems = job.config, []
    if "://" not in config.output.path:
        problems.append(f"output.path: {config.output.path!r} is on this machine; Dataflow workers write to "
                        "gs://BUCKET/PREFIX")
    for src in config_sources(config):
        where = f"layers.{src.name}" if config.layers is not None else "source"
        paths = list(src.uris) if isinstance(src, RasterSourceConfig) else [getattr(src, "path", "")] if (
            isinstance(src, VectorLayerConfig)) else []
        local = [u for u in paths if not re.match(r"^(/vsi|[a-z][a-z0-9+.-]*://)", u, re.IGNORECASE)]
        if local:
            key = "path" if isinstance(src, VectorLayerConfig) else "uri"
            problems.append(f"{where}.{key}: {local[0]!r} is on this machine; copy it to gs://BUCKET/... "
                            "(GDAL reads gs:// with the worker's credentials)")
        if isinstance(src, EarthEngineSourceConfig):
            from pixelbeam.transforms.sources.earthengine import is_loopback
            if is_loopback(src.url):
                problems.append(f"{where}.url: {src.url!r} is a loopback address (an emulator); workers cannot "
                                "reach it")
            elif src.credentials not in ("default", "anonymous"):
                problems.append(f"{where}.credentials: a key file on this machine does not exist on the workers; "
                                "use default (the worker service account, see docs/dataflow.md)")
    return problems


def graph_size_problem(pipeline) -> Optional[str]:
    """The planned cells, regions and (tables) points travel inside the job graph: a graph over
    Dataflow's limit is refused at submission, so say so first (size of the pipeline proto)."""
    size = len(pipeline.to_runner_api().SerializeToString())
    if size <= GRAPH_LIMIT_BYTES:
        return None
    return (f"regions: the job graph would be {size / 1e6:.1f} MB (the planned regions, points and cells travel "
            f"in it) and Dataflow refuses graphs over {GRAPH_LIMIT_BYTES / 1e6:.0f} MB; split the regions over "
            "several jobs, or run this one locally")


def check_runner(job, options, build=None) -> None:
    """Before anything is written: the Dataflow settings pixelbeam depends on, and (unless a
    dry run) the paths and credentials the workers will use, and the size of the graph `build`
    (pipeline -> pipeline with the job's steps) makes. Raises ConfigError."""
    if not is_dataflow(options):
        if is_dry_run(options):
            raise ConfigError("--dry_run: only DataflowRunner has a dry run; `pixelbeam plan` plans without running")
        return
    from pixelbeam.pipeline.limits import quota_limits
    processes, (slots, _, field) = sdk_processes(options), quota_limits(job.config)
    if slots is not None and processes > slots:
        raise ConfigError(f"--max_num_workers: {worker_vms(options)} workers x {processes_per_worker(options)} SDK "
                          f"processes each exceed {field} {slots} (every process needs a "
                          "request slot); use fewer or smaller workers, or raise the limit")
    if is_dry_run(options):
        return  # dry_run() reports what a real run would stop at
    problems = submission_problems(job)
    if not problems and build is not None:
        import apache_beam as beam
        problems = [p for p in [graph_size_problem(build(beam.Pipeline()))] if p]
    if problems:
        raise ConfigError(problems[0])


def plan_staging(options, run_id: str = "", write: bool = True):
    """On Dataflow, where the plan is staged (transforms/planning/staged.StageTo under --temp_location) so
    that it stays out of the job graph; None for local runners (the plan is embedded)."""
    if not is_dataflow(options):
        return None
    from pixelbeam.transforms.planning.staged import StageTo
    return StageTo(stage_folder(options, run_id), write)


def stage_folder(options, run_id: str) -> str:
    """`<--temp_location>/pixelbeam-plan-<run_id>`: Dataflow needs a temp_location anyway."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    temp = options.view_as(GoogleCloudOptions).temp_location
    if not temp:
        raise ConfigError("--temp_location: Dataflow runs stage the plan there; give gs://BUCKET/tmp")
    return FileSystems.join(temp, f"pixelbeam-plan-{run_id or 'check'}")


def remove_staging(stage_to) -> None:
    """Deletes the staged plan once the job is done (a killed launcher leaves it in temp)."""
    if stage_to is None or not stage_to.write:
        return
    from apache_beam.io.filesystems import FileSystems
    found = FileSystems.match([FileSystems.join(stage_to.folder, "*")])[0].metadata_list
    if found:
        FileSystems.delete([m.path for m in found])


CONSOLE_JOB_URL = "https://console.cloud.google.com/dataflow/jobs/{region}/{job_id}?project={project}"


def job_info(options, result) -> dict:
    """The submitted Dataflow job: {"id", "project", "region"} (id None where the runner has none)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    cloud = options.view_as(GoogleCloudOptions)
    try:  # a Flex Template's launcher writes the job to --template_location: no id here
        job_id = result.job_id() if callable(getattr(result, "job_id", None)) else None
    except Exception:
        job_id = None
    return {"id": job_id, "project": cloud.project, "region": cloud.region}


def launch_lines(options, result, output_path: str, run_id: str, planned: str) -> list[str]:
    """What `pixelbeam run` prints after submitting a Dataflow job and leaving it: the job id,
    its console page and the command that shows progress."""
    info = job_info(options, result)
    console = (CONSOLE_JOB_URL.format(region=info["region"], job_id=info["id"], project=info["project"]) if info["id"]
               else f"https://console.cloud.google.com/dataflow/jobs?project={info['project']}")  # a template's launcher
    return [f"submitted: Dataflow job {info['id'] or '(its id: see the console)'} (run {run_id}, {planned}); it records "
            f"its own completion in {output_path}/runs/{run_id}.json, so this launcher may exit",
            f"console: {console}",
            f"progress: pixelbeam status {output_path}   (waiting here instead: add --wait)"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m pixelbeam.pipeline.dataflow worker-options CONFIG ...`: the Beam options run_dataflow.sh
    adds for a config, one per line; the plan in words on stderr."""
    parser = argparse.ArgumentParser(prog="python -m pixelbeam.pipeline.dataflow")
    sub = parser.add_subparsers(dest="command", required=True)
    opts = sub.add_parser("worker-options", help="Dataflow worker options that keep the job inside its fetch limits")
    opts.add_argument("config")
    opts.add_argument("--machine_type", default="n1-standard-2")
    opts.add_argument("--max_workers", type=int,
                      help="worker VMs (default: derived from fetch.max_concurrent_requests)")
    opts.add_argument("--one_process_per_worker", action="store_true",
                      help=f"one SDK process per worker VM (--experiments={ONE_PROCESS_PER_WORKER})")
    opts.add_argument("--requirements_file", metavar="FILE",
                      help="write the extra worker requirements here and add --requirements_file when there are any")
    opts.add_argument("--service_account", default="", help="the worker service account (to check it is given)")
    args = parser.parse_args(argv)
    from pixelbeam.pipeline.config import load_config
    try:
        config = load_config(args.config)
        machine_vcpus(args.machine_type)
    except ValueError as e:  # ConfigError is a ValueError
        message = str(e) if isinstance(e, ConfigError) else f"MACHINE_TYPE: {e}; give e.g. n1-standard-2"
        print(f"pixelbeam: error: {message}", file=sys.stderr)
        return 2
    try:
        from pixelbeam.pipeline.limits import quota_fetch
        fetch = quota_fetch(config)
        plan = plan_workers(fetch, args.machine_type, args.one_process_per_worker, args.max_workers)
        requirements = worker_requirements(config)
    except ConfigError as e:
        print(f"pixelbeam: error: {e}", file=sys.stderr)
        return 2
    lines = plan.beam_options()
    if requirements and args.requirements_file:
        with open(args.requirements_file, "w", encoding="utf-8") as f:
            f.write("\n".join(requirements) + "\n")
        # workers pip-install them at start-up, as they do setup.py's requirements
        lines += [f"--requirements_file={args.requirements_file}", "--requirements_cache=skip"]
    print(f"pixelbeam: {plan.describe()} (fetch limits: {fetch.max_concurrent_requests} concurrent, "
          f"{fetch.max_requests_per_second:g}/s for the whole job)", file=sys.stderr)
    if uses_earth_engine(config) and not args.service_account:
        print("pixelbeam: note: no SERVICE_ACCOUNT: workers run as the Compute Engine default service account, "
              "which then needs Earth Engine access (docs/dataflow.md)", file=sys.stderr)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
