"""Request limits that fit each layer's source, resolved from the config alone (no request).

A limit of a layer is, in this order: the layer's own `fetch:` value, the top-level `fetch:`
value, or the default of its source:

| source | concurrent requests | requests/s | why |
|---|---|---|---|
| Earth Engine | 40 for the whole job | 100 for the whole job | the project's default quota |
| local raster file | the CPU count, shared by the processes of the machine | none | reads cost CPU (decoding) and the local disk; no server to protect |
| remote raster (`/vsicurl/`, `/vsigs/`, `/vsis3/`, `https://`, `gs://` ...), STAC assets | 16 per worker process | none | an HTTP range request waits ~20-100 ms on the network, so 16 in flight keep a process busy; object stores take thousands of reads/s per bucket, so there is no job-wide quota to divide |
| vector file | none | none | rasterized locally, no request |

A value given in `fetch:` (top level or in a layer) is for the whole job and is divided over
the worker processes, as Earth Engine's quota is. Earth Engine layers of one project (same
`url` and `project`) share one quota, so they share one throttler per worker and must agree
on their limits.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional

from pixelbeam.pipeline.config import (SOURCE_LAYER, ConfigError, EarthEngineSourceConfig, FetchConfig,
                                       StacSourceConfig, VectorLayerConfig)
from pixelbeam.pipeline.config.sections import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S

EE_CONCURRENT, EE_RATE = 40, 100.0  # Earth Engine's default quota per project
# neighbouring patches per Earth Engine request (a 4 x 4 block of the grid): the quota counts
# requests, so small patches move up to 16x faster; 16 patches of 256 px, 3 uint8 bands and the
# valid band are a 4 MiB request; a block over the 48 MiB limit (16 x 3 MiB for 12 float32
# bands) is fetched row by row, or patch by patch (transforms/fetching/merging.py)
EE_PATCHES_PER_REQUEST = 16
REMOTE_CONCURRENT = 16  # per worker process
JOB, MACHINE, PROCESS = "job", "machine", "process"  # what a concurrency limit is shared by
# GDAL paths and URLs that read over the network (a /vsimem/ or /vsizip/ of a local file is local).
REMOTE_PATH = re.compile(r"(^|/)(vsicurl|vsigs|vsis3|vsiaz|vsiadls|vsioss|vsiswift|vsiwebhdfs|vsihdfs)(_streaming)?/"
                         r"|^(?!file://)[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def local_concurrency() -> int:
    """The default concurrency for local files: this machine's CPU count."""
    return max(1, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class Limits:
    """One layer's request limits. `shared_by` says what `max_concurrent` is for: JOB (divided
    over every worker process), MACHINE (over the processes of one machine) or PROCESS (each);
    `max_requests_per_second` is for the whole job, None for no limit. `pool` names a quota
    shared with other layers (an Earth Engine project), `why` where the numbers come from."""

    max_concurrent: int
    shared_by: str
    max_requests_per_second: Optional[float]
    max_attempts: int
    timeout_s: float
    why: str  # the reason of the source's defaults
    concurrent_field: str = ""  # the config field that set max_concurrent ("" for the default)
    rate_field: str = ""  # the config field that set max_requests_per_second ("" for the default)
    pool: str = ""
    local: bool = False  # a local raster file: no server, reads cost this machine's CPU
    patches_per_request: int = 1  # neighbouring patches merged into one request (Earth Engine only)

    def describe(self) -> str:
        scope = {JOB: "for the whole job", MACHINE: "per machine", PROCESS: "per worker process"}[self.shared_by]
        rate = ("no rate limit" if self.max_requests_per_second is None
                else f"{self.max_requests_per_second:g} requests/s for the whole job")
        rate_why = self.rate_field or (self.why if self.max_requests_per_second is not None else "")
        return (f"{self.max_concurrent} concurrent {scope} ({self.concurrent_field or self.why}), {rate}"
                f"{f' ({rate_why})' if rate_why else ''}; {self.max_attempts} attempts, {self.timeout_s:g} s timeout")


def source_kind(src) -> str:
    """earthengine, remote (a raster read over the network), local (a raster file) or vector."""
    if isinstance(src, VectorLayerConfig):
        return "vector"
    if isinstance(src, EarthEngineSourceConfig):
        return "earthengine"
    if isinstance(src, StacSourceConfig):  # its assets are read over HTTP (or a catalog's hrefs)
        return "remote"
    return "remote" if any(REMOTE_PATH.search(u) for u in src.uris) else "local"


def kind_defaults(kind: str) -> tuple[int, str, Optional[float], str]:
    """(max_concurrent, shared_by, max_requests_per_second, why) of a source kind (module doc)."""
    if kind == "earthengine":
        return EE_CONCURRENT, JOB, EE_RATE, "Earth Engine's default quota"
    if kind == "remote":
        return REMOTE_CONCURRENT, PROCESS, None, "remote raster: HTTP range requests"
    return local_concurrency(), MACHINE, None, "local file: the CPU count"


def layer_limits(config, src, name: str = SOURCE_LAYER, in_layers: bool = False) -> Optional[Limits]:
    """The limits of one layer (or of `source:`), None for a vector layer (no request)."""
    kind = source_kind(src)
    if kind == "vector":
        return None
    own = getattr(src, "fetch", None) or FetchConfig()
    fetches = ((f"layers.{name}.fetch", own), ("fetch", config.fetch)) if in_layers else (("fetch", config.fetch),)
    concurrent, shared_by, rate, why = kind_defaults(kind)
    concurrent_field = rate_field = ""
    for where, fetch in fetches:
        if fetch.max_concurrent_requests is not None:
            concurrent, shared_by = fetch.max_concurrent_requests, JOB
            concurrent_field = f"{where}.max_concurrent_requests"
            break
    for where, fetch in fetches:
        if fetch.max_requests_per_second is not None:
            rate = None if fetch.max_requests_per_second == "unlimited" else float(fetch.max_requests_per_second)
            rate_field = f"{where}.max_requests_per_second"
            break
    attempts = next((f.max_attempts for _, f in fetches if f.max_attempts), DEFAULT_MAX_ATTEMPTS)
    timeout = next((f.timeout_s for _, f in fetches if f.timeout_s), DEFAULT_TIMEOUT_S)
    pool = f"earthengine {src.url} {src.project or ''}".strip() if kind == "earthengine" else ""
    merged = next((f.patches_per_request for _, f in fetches if f.patches_per_request), EE_PATCHES_PER_REQUEST)
    return Limits(concurrent, shared_by, rate, attempts, timeout, why, concurrent_field, rate_field, pool,
                  local=kind == "local", patches_per_request=merged if kind == "earthengine" else 1)


def fetch_section_limits(fetch: FetchConfig) -> Limits:
    """A bare `fetch:` section as whole-job limits (unset values: Earth Engine's quota)."""
    rate = fetch.max_requests_per_second
    return Limits(fetch.max_concurrent_requests or EE_CONCURRENT, JOB,
                  None if rate == "unlimited" else float(rate or EE_RATE), fetch.max_attempts or DEFAULT_MAX_ATTEMPTS,
                  fetch.timeout_s or DEFAULT_TIMEOUT_S,
                  "fetch", "fetch.max_concurrent_requests", "fetch.max_requests_per_second")


def job_limits(config) -> dict[str, Optional[Limits]]:
    """{layer name: Limits or None} in layer order; `source:` is the layer `image`. Earth Engine
    layers of one project must agree on their limits (one quota): ConfigError otherwise."""
    if config.layers is None:
        return {SOURCE_LAYER: layer_limits(config, config.source)}
    out = {layer.name: layer_limits(config, layer, layer.name, in_layers=True) for layer in config.layers}
    first: dict[str, tuple[str, Limits]] = {}
    for name, limits in out.items():
        if limits is None or not limits.pool:
            continue
        if limits.pool in first:
            other, seen = first[limits.pool]
            if (seen.max_concurrent, seen.max_requests_per_second) != (limits.max_concurrent, limits.max_requests_per_second):
                raise ConfigError(f"layers.{name}.fetch: layers {other!r} and {name!r} share one Earth Engine "
                                  "project (one quota) and so one throttler; give them the same "
                                  "max_concurrent_requests and max_requests_per_second")
        else:
            first[limits.pool] = (name, limits)
    return out


def quota_limits(config) -> tuple[Optional[int], Optional[float], str]:
    """(concurrent, requests/s, field naming the concurrency) of the tightest limit shared by the
    whole job (Dataflow's pool is sized so that every process gets a slot of it); (None, None,
    "") when no layer has one (local and remote rasters, vector files)."""
    concurrent, rate, field = None, None, ""
    for name, limits in job_limits(config).items():
        if limits is None:
            continue
        if limits.shared_by == JOB and (concurrent is None or limits.max_concurrent < concurrent):
            concurrent = limits.max_concurrent
            field = limits.concurrent_field or (f"layers.{name}.fetch.max_concurrent_requests" if config.layers
                                                else "fetch.max_concurrent_requests")
        if limits.max_requests_per_second is not None and (rate is None or limits.max_requests_per_second < rate):
            rate = limits.max_requests_per_second
    return concurrent, rate, field


def quota_fetch(config) -> FetchConfig:
    """The job's tightest whole-job limits as a FetchConfig, for sizing a Dataflow pool
    (pipeline/dataflow.py plan_workers); Earth Engine's quota when no layer has one."""
    concurrent, rate, _ = quota_limits(config)
    return FetchConfig(max_concurrent_requests=concurrent or EE_CONCURRENT, max_requests_per_second=rate or EE_RATE)
