"""Beam runner options for a job: the local runner by default, and how many worker processes
share the job's request limits (which sets each process's fetch settings)."""

from __future__ import annotations

from typing import Optional, Sequence

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pixelbeam.transforms.fetch import FetchSettings
from pixelbeam.transforms.fetching.throttle import per_worker_limits

# DirectRunner first tries to download the Prism runner; FnApiRunner is the same local
# execution without that attempt (and honours direct_num_workers / direct_running_mode).
LOCAL_RUNNER = "FnApiRunner"
# Fetch threads per worker process never exceed this, whatever the quota.
MAX_THREADS_PER_WORKER = 64


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam's options from the command line's leftover arguments; no runner (or DirectRunner)
    means the local FnApiRunner."""
    options = PipelineOptions(list(beam_args))
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner"):
        standard.runner = LOCAL_RUNNER
    return options


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


def fetch_settings(job, options: PipelineOptions, progress_dir: Optional[str] = None) -> FetchSettings:
    """One worker process's share of the job's `fetch` limits (a patch or table job)."""
    fetch = job.config.fetch
    concurrent, rate = per_worker_limits(fetch.max_concurrent_requests, fetch.max_requests_per_second,
                                         worker_count(options))
    return FetchSettings(max_concurrent=concurrent, max_requests_per_second=rate,
                         max_attempts=fetch.max_attempts, timeout_s=fetch.timeout_s,
                         threads=fetch_threads(concurrent), progress_dir=progress_dir)


def fetch_threads(max_concurrent: int) -> int:
    """Fetch threads per worker: a quarter more than the concurrency cap (at least 2 more), so
    a patch sleeping in retry backoff does not leave a request slot idle; the throttler still
    holds requests in flight to `max_concurrent`."""
    return min(max_concurrent + max(2, max_concurrent // 4), MAX_THREADS_PER_WORKER)
