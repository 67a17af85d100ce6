"""FetchPatches / FetchLayers: PatchSpecs in, Patches (and FailedPatches on a dead-letter output) out.

`FetchPatches` fetches one source; `FetchLayers` fetches every layer of a job's patches (several
sources on one grid) in one DoFn, each layer through its own reader, throttler and request
runner, so that each keeps its own limits (Earth Engine layers of one project share one
throttler: one quota). A patch is emitted when every layer is fetched; a layer that fails makes
the patch a FailedPatch whose message names the layer. Layers without requests (a vector file
rasterized locally, `settings` None) are read directly.

The DoFn brings its own concurrency: the DirectRunner runs a stage's bundle on one thread, so
each worker process keeps one thread pool, one throttler and one retry policy (shared between
DoFn instances with Beam's `Shared`) and keeps up to `threads` patches in flight across the
elements of a bundle, yielding each patch as soon as it is done (no waves, no stragglers
holding a batch back). Local reads are handed to the threads `FetchSettings.batch` patches at a
time (one future and one thread wake-up per 8 patches, not per patch); requests to a server one
patch at a time. Request logic lives in `fetch_patch` and the request runner, not here.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from typing import Callable, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.shared import Shared
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from pixelbeam.transforms.patch import (FAILED, INPUT, SOURCE_LAYER, FailedPatch, LayerPixels, Patch,  # FAILED: also
                                        PatchSpec)  # the dead-letter tag
from pixelbeam.transforms.fetching import merging
from pixelbeam.transforms.fetching.progress import ProgressFile
from pixelbeam.transforms.fetching.sizing import RequestPart
from pixelbeam.transforms.fetching.runner import RequestRunner, RequestStats
from pixelbeam.transforms.fetching.retry import FetchError, RetryPolicy, TransientError, classify_exception
from pixelbeam.transforms.sources.base import (PartResult, PixelReader, PixelSource, SourceInfo, assemble_patch,
                                               patch_parts)
from pixelbeam.transforms.fetching.throttle import AdaptiveThrottler, Throttler

METRICS_NAMESPACE = "pixelbeam"
LOCAL_BATCH = 8  # patches per hand-off to a fetch thread for local reads (FetchSettings.batch)
REPORT_EVERY = 64  # patches between two reports of the request stats (and always at the end of a bundle)


@dataclasses.dataclass(frozen=True)
class FetchSettings:
    """Per-worker-process request limits (already divided over workers) and retry settings."""

    max_concurrent: int = 40
    max_requests_per_second: Optional[float] = 100.0  # None: no rate limit
    max_attempts: int = 6
    timeout_s: float = 120.0
    threads: int = 40
    progress_dir: Optional[str] = None  # local runs: where worker processes report progress
    quota_pool: str = ""  # layers naming the same pool share one throttler (an Earth Engine project)
    # each call on a helper thread that the caller abandons after 1.5 x timeout_s (a hung HTTP
    # request); off for local files, where that hand-off per read costs more than the read
    abandon_hung_calls: bool = True
    # patches handed to a fetch thread at once: 1 for requests that wait on a server (each
    # patch emitted as soon as it is done); more for local reads, where a hand-off per patch
    # (a future, a queue put, a thread wake-up) costs a good part of the read itself
    batch: int = 1
    # neighbouring patches fetched in one request (transforms/fetching/merging.py), for sources
    # whose answer for a window is the same pixels as for each patch in it (`merges_windows`)
    patches_per_request: int = 1


@dataclasses.dataclass(frozen=True)
class FetchLayer:
    """One layer of a job's patches: `source` (with the launcher's `describe()` result `info`)
    fetched under `settings`, or read directly when `settings` is None (no requests)."""

    name: str
    role: str
    source: PixelSource
    info: SourceInfo
    settings: Optional[FetchSettings] = None


class DirectCall:
    """A RequestRunner stand-in for readers that send no request: one call, no retry."""

    def run(self, call, describe: str = ""):
        return call(), 1


def fetch_patch(spec: PatchSpec, info: SourceInfo, reader: PixelReader, runner: RequestRunner) -> Patch | FailedPatch:
    """Fetch every request of one patch through `runner` and assemble it; never raises."""
    attempts = 0
    try:
        parts = patch_parts(spec, info)
        results = []
        for part in parts:
            result, tries = runner.run(lambda part=part: reader.fetch(spec, part), describe=spec.patch_id)
            attempts += tries
            results.append(result)
        return assemble_patch(spec, info, parts, results, retries=attempts - len(parts))
    except FetchError as e:
        return FailedPatch(spec, "fetch", f"{type(e).__name__}:{e.cause}", str(e), attempts + (getattr(e, "attempts", 1) or 1))
    except Exception as e:  # a bug or an unexpected library error: dead-letter it, keep the job
        err = classify_exception(e)
        return FailedPatch(spec, "fetch", type(e).__name__, f"{err}", attempts + 1)


def fetch_window(window: merging.MergedWindow, info: SourceInfo, reader: PixelReader,
                 runner: RequestRunner) -> list[Patch | FailedPatch]:
    """The patches of one merged window, from one request for the window (retried as a whole
    by `runner`) cut into them; never raises. Each patch then holds what its own request would
    have brought: its pixels and mask, `requests` 1, the window's retries and its own bytes. A
    window that fails permanently (refused, too large, undecodable, or any other error) is
    fetched again patch by patch, so each patch ends with its own outcome; one that still fails
    after every attempt (transient causes) fails each of its patches with that message."""
    spec = window.spec
    part = RequestPart(tuple(range(len(info.band_names))), 0, 0, spec.fetch_height, spec.fetch_width)
    try:
        result, tries = runner.run(lambda: reader.fetch(spec, part), describe=f"{spec.patch_id} ({len(window.members)} patches)")
    except TransientError as e:
        return [FailedPatch(m, "fetch", f"{type(e).__name__}:{e.cause}", str(e), getattr(e, "attempts", 1) or 1)
                for m in window.members]
    except Exception:  # noqa: BLE001 - permanent or unexpected: each patch on its own
        return [fetch_patch(m, info, reader, runner) for m in window.members]
    px_bytes = result.nbytes // max(1, spec.fetch_width * spec.fetch_height)  # bytes of one pixel, every band
    out = []
    for i, member in enumerate(window.members):
        data, mask = merging.cut(result.data, result.mask, window, i)
        whole = RequestPart(part.bands, 0, 0, member.fetch_height, member.fetch_width)
        own = PartResult(data, mask, px_bytes * member.fetch_width * member.fetch_height)
        out.append(assemble_patch(member, info, [whole], [own], retries=tries - 1))
    return out


def merge_cap(source: PixelSource, info: SourceInfo, settings: Optional[FetchSettings]) -> int:
    """Patches per request for one layer: `settings.patches_per_request` for a source that
    answers a window with each patch's own pixels (`merges_windows`, one image), else 1."""
    if settings is None or settings.patches_per_request <= 1 or info.collection is not None:
        return 1
    return settings.patches_per_request if getattr(source, "merges_windows", False) else 1


def fetch_layers(spec: PatchSpec, layers: Sequence[tuple[FetchLayer, PixelReader, object]]) -> Patch | FailedPatch:
    """Every layer of one patch, in order, each through its (reader, runner); the first input
    layer becomes the Patch's `data`, the others its `more`. Never raises: the first layer that
    fails makes the patch a FailedPatch naming it (the later layers are not fetched)."""
    fetched: list[tuple[FetchLayer, Patch]] = []
    attempts = 0
    for layer, reader, runner in layers:
        result = fetch_patch(spec, layer.info, reader, runner)
        if isinstance(result, FailedPatch):
            return dataclasses.replace(result, message=f"layer {layer.name}: {result.message}",
                                       attempts=attempts + result.attempts)
        if layer.settings is None:  # rasterized locally: no request
            result = dataclasses.replace(result, requests=0, retries=0)
        attempts += result.requests + result.retries
        fetched.append((layer, result))
    primary_layer, primary = next((lp for lp in fetched if lp[0].role == INPUT), fetched[0])
    more = tuple(LayerPixels(layer.name, layer.role, p.data, p.mask, p.band_names, p.times, p.image_ids,
                             p.requests, p.bytes) for layer, p in fetched if layer is not primary_layer)
    return dataclasses.replace(primary, layer=primary_layer.name, more=more,
                               requests=sum(p.requests for _, p in fetched),
                               retries=sum(p.retries for _, p in fetched), bytes=sum(p.bytes for _, p in fetched))


class _WorkerFetcher:
    """What one worker process shares between threads: per layer a reader and a runner (one
    throttler per quota pool), the thread pool, the stats."""

    def __init__(self, layers: Sequence[FetchLayer], threads: int, progress_dir: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.stats = RequestStats()
        throttlers: dict[str, tuple[Throttler, AdaptiveThrottler]] = {}
        self.layers = []
        for layer in layers:
            reader = layer.source.open(layer.info)
            settings = layer.settings
            if settings is None:
                self.layers.append((layer, reader, DirectCall()))
                continue
            pool = settings.quota_pool or f"layer {layer.name}"
            if pool not in throttlers:
                throttlers[pool] = (Throttler(settings.max_concurrent, settings.max_requests_per_second, clock=clock,
                                              sleep=sleep), AdaptiveThrottler(clock=clock))
            throttler, adaptive = throttlers[pool]
            runner = RequestRunner(
                throttler=throttler, adaptive=adaptive, policy=RetryPolicy(max_attempts=settings.max_attempts),
                stats=self.stats, clock=clock, sleep=sleep,
                # a backstop: sources also set their own transport deadline to timeout_s
                attempt_timeout_s=settings.timeout_s * 1.5 if settings.abandon_hung_calls else None)
            self.layers.append((layer, reader, runner))
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="pixelbeam-fetch")
        self.progress = ProgressFile(progress_dir)

    def submit(self, specs: Sequence[PatchSpec]) -> concurrent.futures.Future:
        """One hand-off to a fetch thread: a future of the results of `specs`, in order."""
        return self.pool.submit(self.fetch_all, tuple(specs))

    def fetch_all(self, specs: Sequence[PatchSpec | merging.MergedWindow]) -> list[Patch | FailedPatch]:
        if len(self.layers) == 1 and self.layers[0][0].name == SOURCE_LAYER:  # one source: as it always was
            layer, reader, runner = self.layers[0]
            out = []
            for spec in specs:
                if isinstance(spec, merging.MergedWindow):
                    out.extend(fetch_window(spec, layer.info, reader, runner))
                else:
                    out.append(fetch_patch(spec, layer.info, reader, runner))
            return out
        return [fetch_layers(spec, self.layers) for spec in specs]


class FetchLayersDoFn(beam.DoFn):
    """Keeps up to `threads` patches in flight; main output Patch, FAILED FailedPatch."""

    def __init__(self, layers: Sequence[FetchLayer], threads: int, progress_dir: Optional[str] = None):
        self.layers, self.threads, self.progress_dir = tuple(layers), threads, progress_dir
        self.batch = hand_off_batch(layers)
        # a single source that merges: elements are (block key, the block's specs), GroupBlocks
        self.cap = merge_cap(layers[0].source, layers[0].info, layers[0].settings) \
            if len(layers) == 1 and layers[0].name == SOURCE_LAYER else 1
        self._shared = Shared()

    def setup(self):
        self.worker = self._shared.acquire(lambda: _WorkerFetcher(self.layers, self.threads, self.progress_dir),
                                           tag="fetch")
        self.written = Metrics.counter(METRICS_NAMESPACE, "patches_fetched")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "patches_failed")
        self.latency = Metrics.distribution(METRICS_NAMESPACE, "request_latency_ms")

    def start_bundle(self):
        self.pending: set[concurrent.futures.Future] = set()
        self.waiting: list[PatchSpec] = []  # not yet handed off (fewer than `batch`)
        self._unreported = 0

    def process(self, spec: PatchSpec):
        if self.cap > 1:  # a block: each merged window (or single patch) is one hand-off
            info = self.layers[0].info
            for item in merging.plan_windows(list(spec[1]), info.band_bytes, info.limits, self.cap):
                self.pending.add(self.worker.submit([item]))
        else:
            self.waiting.append(spec)
        if len(self.waiting) >= self.batch:
            self.pending.add(self.worker.submit(self.waiting))
            self.waiting = []
        # Block only when 2x threads hand-offs are pending (the pool stays busy meanwhile), and
        # then only until *any* is done: waiting for the oldest would let one patch in retry
        # backoff hold back every patch behind it and drain the pool.
        if len(self.pending) >= self.threads * 2:
            concurrent.futures.wait(self.pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in [f for f in self.pending if f.done()]:  # in completion, not arrival, order
            self.pending.discard(future)
            for result in future.result():
                yield self._output(result)
        self._unreported += 1
        if self._unreported >= REPORT_EVERY:  # request stats to Beam's counters in batches, not per patch
            self._unreported = 0
            self._report_metrics()

    def finish_bundle(self):
        if self.waiting:
            self.pending.add(self.worker.submit(self.waiting))
            self.waiting = []
        for future in concurrent.futures.as_completed(self.pending):
            for result in future.result():
                yield self._output(result, windowed=True)
        self.pending = set()
        self._report_metrics(final=True)

    def _output(self, result: Patch | FailedPatch, windowed: bool = False):
        value = WindowedValue(result, MIN_TIMESTAMP, [GlobalWindow()]) if windowed else result
        failed = isinstance(result, FailedPatch)
        self.worker.progress.add(done=1, failed=int(failed))
        if failed:
            self.failed.inc()
            return beam.pvalue.TaggedOutput(FAILED, value)
        self.written.inc()
        return value

    def _report_metrics(self, final: bool = False):
        deltas = self.worker.stats.drain_deltas()
        self._throttled_carry = report_request_metrics(deltas, self.latency, getattr(self, "_throttled_carry", 0.0))
        self.worker.progress.add(requests=int(deltas.get("requests", 0)), quota_errors=int(deltas.get("quota_errors", 0)),
                                 retries=int(sum((deltas.get("retries_by_cause") or {}).values())))
        self.worker.progress.flush(force=final)


def hand_off_batch(layers: Sequence[FetchLayer]) -> int:
    """Patches per hand-off to a fetch thread: the smallest `batch` of the layers that send
    requests (1 as soon as one waits on a server), that of local reads otherwise."""
    batches = [layer.settings.batch for layer in layers if layer.settings is not None]
    return max(1, min(batches)) if batches else LOCAL_BATCH


def report_request_metrics(deltas: dict, latency=None, carry_s: float = 0.0) -> float:
    """Push request-stat deltas into Beam counters, including the throttling counters Dataflow's
    autoscaler reads (`beam-throttling-metrics/throttling-msecs`, `cumulativeThrottlingSeconds`).
    Throttled time counts waits for the throttler and retry backoffs (time the server made us
    idle). Returns the fraction of a second not yet reported, to carry into the next call."""
    for name in ("requests", "successes", "quota_errors", "timeouts", "bytes"):
        if deltas.get(name):
            Metrics.counter(METRICS_NAMESPACE, name).inc(int(deltas[name]))
    for cause, n in (deltas.get("retries_by_cause") or {}).items():
        if n:
            Metrics.counter(METRICS_NAMESPACE, f"retries_{cause}").inc(int(n))
    throttled = deltas.get("throttled_seconds", 0.0) + deltas.get("backoff_seconds", 0.0)
    if throttled:
        Metrics.counter("beam-throttling-metrics", "throttling-msecs").inc(int(throttled * 1000))
    carry_s += throttled
    if carry_s >= 1.0:
        Metrics.counter(METRICS_NAMESPACE, "cumulativeThrottlingSeconds").inc(int(carry_s))
        carry_s -= int(carry_s)
    if latency is not None:
        for ms in deltas.get("latencies_ms", ()):
            latency.update(int(ms))
    return carry_s


class FetchDoFn(FetchLayersDoFn):
    """The DoFn of one source (the layer `image`), as FetchPatches uses it."""

    def __init__(self, source: PixelSource, info: SourceInfo, settings: FetchSettings):
        super().__init__([FetchLayer(SOURCE_LAYER, INPUT, source, info, settings)], settings.threads,
                         settings.progress_dir)
        self.source, self.info, self.settings = source, info, settings


@dataclasses.dataclass
class FetchPatches(beam.PTransform):
    """PCollection[PatchSpec] -> DoOutputsTuple with main `patches` and `failed`, for one source."""

    source: PixelSource
    info: SourceInfo
    settings: FetchSettings = FetchSettings()

    def __post_init__(self):
        super().__init__()

    def expand(self, specs):
        dofn = FetchDoFn(self.source, self.info, self.settings)
        if dofn.cap > 1:  # a block's patches reach one DoFn call together, to be merged into requests
            specs = specs | "GroupBlocks" >> GroupBlocks(dofn.cap)
        return specs | "FetchPixels" >> beam.ParDo(dofn).with_outputs(FAILED, main="patches")


@dataclasses.dataclass
class GroupBlocks(beam.PTransform):
    """PCollection[PatchSpec] -> PCollection[(block key, [PatchSpec])]: the patches of each block
    of `cap` grid cells together (transforms/fetching/merging.py), the blocks spread over workers
    by their key as a Reshuffle spreads patches."""

    cap: int

    def __post_init__(self):
        super().__init__()

    def expand(self, specs):
        cap = self.cap
        return (specs | "KeyByBlock" >> beam.Map(lambda s: (merging.block_key(s, cap), s))
                | "GroupByBlock" >> beam.GroupByKey())


@dataclasses.dataclass
class FetchLayers(beam.PTransform):
    """PCollection[PatchSpec] -> DoOutputsTuple with main `patches` (every layer fetched) and
    `failed`; `threads` fetch threads per worker process (see `layer_threads`)."""

    layers: tuple[FetchLayer, ...]
    threads: int = 0  # 0: layer_threads(layers)
    progress_dir: Optional[str] = None

    def __post_init__(self):
        super().__init__()
        if not self.layers:
            raise ValueError("FetchLayers needs at least one layer")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {names}")

    def expand(self, specs):
        dofn = FetchLayersDoFn(self.layers, self.threads or layer_threads(self.layers), self.progress_dir)
        return specs | "FetchPixels" >> beam.ParDo(dofn).with_outputs(FAILED, main="patches")


def layer_threads(layers: Sequence[FetchLayer], most: int = 64) -> int:
    """Fetch threads for a patch fetched layer after layer: enough to fill every layer's slots at
    once (a thread holds one slot at a time), at most `most`."""
    return max(1, min(most, sum(layer.settings.threads for layer in layers if layer.settings is not None) or 2))
