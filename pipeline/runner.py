"""Beam runner options for a job: the local runner by default, and how many worker processes
share the job's request limits (which sets each process's fetch settings, layer by layer)."""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Optional, Sequence

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pixelbeam.pipeline.limits import JOB, MACHINE, Limits, fetch_section_limits, job_limits
from pixelbeam.transforms.fetch import LOCAL_BATCH, FetchLayer, FetchSettings
from pixelbeam.transforms.patch import SOURCE_LAYER
from pixelbeam.transforms.fetching.throttle import per_worker_limits

# DirectRunner first tries to download the Prism runner; FnApiRunner is the same local
# execution without that attempt (and honours direct_num_workers / direct_running_mode).
LOCAL_RUNNER = "FnApiRunner"
# Fetch threads per worker process never exceed this, whatever the quota.
MAX_THREADS_PER_WORKER = 64


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam's options from the command line's leftover arguments; no runner (or DirectRunner)
    means the local FnApiRunner. An argument Beam does not know is a ConfigError (Beam would
    drop it with a warning: a typo of an option would change nothing, silently)."""
    check_options(beam_args)
    options = PipelineOptions(list(beam_args))
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner"):
        standard.runner = LOCAL_RUNNER
    return options


NUMBER = re.compile(r"-\d[\d.eE+-]*")  # a negative value, not an option


def beam_option_parser() -> argparse.ArgumentParser:
    """A parser of every option Beam's PipelineOptions classes define (as Beam builds it)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        try:
            cls._add_argparse_args(parser)  # noqa: SLF001 - Beam's own way to list its options
        except argparse.ArgumentError:  # a class defined twice (e.g. in a notebook): its options are there
            pass
    return parser


def check_options(args: Sequence[str], known: Sequence[str] = ()) -> None:
    """Raises ConfigError naming the first of `args` that is neither a Beam option nor one of
    `known` (the command's own options, for the suggestion)."""
    parser = beam_option_parser()
    options = list(known) + [o for action in parser._actions for o in action.option_strings]  # noqa: SLF001
    names = [arg.split("=", 1)[0] for arg in args if arg.startswith("-") and not NUMBER.fullmatch(arg)]
    unknown = [name for name in names[:names.index("--")] if name not in options] if "--" in names else \
        [name for name in names if name not in options]
    if not unknown:
        return  # (their values are Beam's to check, when it reads them)
    from pixelbeam.pipeline.config import ConfigError
    name = unknown[0]
    close = difflib.get_close_matches(name, options, n=1)
    hint = f"did you mean {close[0]}?" if close else "see pixelbeam run --help, and Beam's pipeline options"
    raise ConfigError(f"{name}: neither a pixelbeam option nor a Beam pipeline option; {hint}")


def worker_count(options: PipelineOptions) -> int:
    """How many worker processes share the job's quota (Dataflow: max_num_workers x SDK processes per VM)."""
    runner = (options.view_as(StandardOptions).runner or "").lower()
    if "dataflow" in runner:
        from pixelbeam.pipeline.dataflow import sdk_processes  # one process per vCPU; ConfigError if it cannot be known
        return sdk_processes(options)
    direct = options.view_as(DirectOptions)
    if (direct.direct_running_mode or "in_memory") == "in_memory":
        return 1
    return max(1, direct.direct_num_workers or 1)


def machine_process_count(options: PipelineOptions) -> int:
    """How many worker processes share one machine (a local runner's are all on this one)."""
    runner = (options.view_as(StandardOptions).runner or "").lower()
    if "dataflow" in runner:
        from pixelbeam.pipeline.dataflow import processes_per_worker
        return processes_per_worker(options)
    return worker_count(options)


def process_settings(limits: Limits, options: PipelineOptions, progress_dir: Optional[str] = None) -> FetchSettings:
    """One worker process's share of a layer's limits (pipeline/limits.py): a whole-job
    concurrency and every rate are divided over the worker processes, a machine's concurrency
    over the processes of one machine."""
    workers = worker_count(options)
    rate = limits.max_requests_per_second
    if limits.shared_by == JOB:
        concurrent, rate = per_worker_limits(limits.max_concurrent, rate or 1.0, workers)
        rate = rate if limits.max_requests_per_second is not None else None
    else:
        share = machine_process_count(options) if limits.shared_by == MACHINE else 1
        concurrent = max(1, limits.max_concurrent // share)
        rate = None if rate is None else rate / workers
    local = limits.local  # a local file: as many threads as reads at once, no hand-off to abandon a hung call
    return FetchSettings(max_concurrent=concurrent, max_requests_per_second=rate, max_attempts=limits.max_attempts,
                         timeout_s=limits.timeout_s, threads=concurrent if local else fetch_threads(concurrent),
                         progress_dir=progress_dir, quota_pool=limits.pool, abandon_hung_calls=not local,
                         batch=LOCAL_BATCH if local else 1, patches_per_request=limits.patches_per_request)


def layer_fetch_settings(job, options: PipelineOptions,
                         progress_dir: Optional[str] = None) -> dict[str, Optional[FetchSettings]]:
    """{layer: one worker process's FetchSettings, None for a layer without requests}."""
    config = job.config
    if getattr(config, "source", None) is None and getattr(config, "layers", None) is None:
        limits = {SOURCE_LAYER: fetch_section_limits(config.fetch)}  # a job that names no source
    else:
        limits = job_limits(config)
    return {name: None if lim is None else process_settings(lim, options, progress_dir) for name, lim in limits.items()}


def fetch_layers(job, options: PipelineOptions, progress_dir: Optional[str] = None) -> tuple[FetchLayer, ...]:
    """The job's layers as FetchLayers, each with one worker process's share of its limits."""
    settings = layer_fetch_settings(job, options, progress_dir)
    return tuple(FetchLayer(layer.name, layer.role, layer.source, layer.info, settings[layer.name])
                 for layer in job.layers)


def fetch_settings(job, options: PipelineOptions, progress_dir: Optional[str] = None) -> FetchSettings:
    """One worker process's share of the limits of the job's source (a patch or table job; with
    layers:, those of its first layer that sends requests)."""
    settings = [s for s in layer_fetch_settings(job, options, progress_dir).values() if s is not None]
    return settings[0] if settings else FetchSettings(progress_dir=progress_dir)


def fetch_threads(max_concurrent: int) -> int:
    """Fetch threads per worker: a quarter more than the concurrency cap (at least 2 more), so
    a patch sleeping in retry backoff does not leave a request slot idle; the throttler still
    holds requests in flight to `max_concurrent`."""
    return min(max_concurrent + max(2, max_concurrent // 4), MAX_THREADS_PER_WORKER)


def describe_process_limits(job, options: PipelineOptions) -> str:
    """One worker process's limits in words ('5 concurrent requests, 12.5 requests/s'), per layer
    for a job of several layers that send requests."""
    settings = {name: s for name, s in layer_fetch_settings(job, options).items() if s is not None}

    def words(s: FetchSettings) -> str:
        rate = "no rate limit" if s.max_requests_per_second is None else f"{s.max_requests_per_second:g} requests/s"
        return f"{s.max_concurrent} concurrent requests, {rate}"
    if len(settings) == 1:
        return words(next(iter(settings.values())))
    return "; ".join(f"{name}: {words(s)}" for name, s in settings.items()) or "no requests"
