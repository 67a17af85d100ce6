"""Run one pixel request with throttling, adaptive backoff, retries and statistics.

`RequestRunner.run(call)` is shared by all threads of a worker: it waits while the
`AdaptiveThrottler` says the server is overloaded, takes a `Throttler` slot, calls, and
on failure classifies the error and retries after a jittered backoff (sleeping outside
the slot, so a backing-off thread never blocks others). `RequestStats` counts what
happened; a Beam DoFn can push `drain_deltas()` into Beam Metrics now and then.

Beam-free; time, sleep and randomness are injected. Units: seconds unless named _ms.
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures
import logging
import math
import numbers
import queue
import random
import threading
import time
from typing import Any, Callable, Optional, TypeVar

from pixelbeam.transforms.fetching.retry import FetchError, QuotaError, RetryPolicy, TransientError, classify_exception
from pixelbeam.transforms.fetching.throttle import AdaptiveThrottler, Throttler

T = TypeVar("T")

_LOG = logging.getLogger(__name__)

# Upper bounds (seconds) of the latency histogram buckets; the last bucket is open.
LATENCY_BUCKET_BOUNDS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, math.inf)

_SCALARS = (
    "requests",  # attempts sent (that reached `call()`)
    "successes",
    "failures",  # requests given up on (final errors)
    "retries",
    "quota_errors",  # attempts rejected with 429 / QuotaError
    "timeouts",  # attempts abandoned by the runner's attempt timeout
    "adaptive_delays",  # times a request was delayed by the adaptive throttler
    "throttled_seconds",  # waiting for the Throttler plus adaptive delays
    "backoff_seconds",  # sleeping between retries
    "bytes",  # result sizes, when the result reports one
    "latency_count",
    "latency_sum_s",
)
_BY_CAUSE = ("errors_by_cause", "retries_by_cause", "failures_by_cause")


def default_result_nbytes(result: Any) -> Optional[int]:
    """Size of a result in bytes if it says (bytes-like, or a numpy-style `.nbytes`)."""
    if isinstance(result, memoryview):
        return result.nbytes
    if isinstance(result, (bytes, bytearray)):
        return len(result)
    nbytes = getattr(result, "nbytes", None)
    return int(nbytes) if isinstance(nbytes, numbers.Integral) else None


class RequestStats:
    """Thread-safe request counters, latencies and deltas for Beam Metrics.

    Latencies (seconds, successful attempts only) are kept as count/sum/min/max, a fixed
    histogram (`LATENCY_BUCKET_BOUNDS_S`) and the last `max_recent_latencies` values
    (for percentiles). `drain_deltas()` also returns the latencies since the previous
    drain as integer milliseconds, at most `max_pending_latencies` of them.
    """

    def __init__(self, max_recent_latencies: int = 2000, max_pending_latencies: int = 10_000):
        self._lock = threading.Lock()
        self._scalars = dict.fromkeys(_SCALARS, 0)
        self._by_cause: dict[str, collections.Counter] = {k: collections.Counter() for k in _BY_CAUSE}
        self._latency_min_s = math.inf
        self._latency_max_s = 0.0
        self._histogram = [0] * len(LATENCY_BUCKET_BOUNDS_S)
        self._recent = collections.deque(maxlen=max_recent_latencies)
        self._pending_ms: list[int] = []
        self._max_pending = max_pending_latencies
        self._drained_scalars = dict.fromkeys(_SCALARS, 0)
        self._drained_by_cause: dict[str, collections.Counter] = {
            k: collections.Counter() for k in _BY_CAUSE
        }

    # -- recording ----------------------------------------------------------------------
    def record_sent(self) -> None:
        with self._lock:
            self._scalars["requests"] += 1

    def record_success(self, latency_s: float, nbytes: Optional[int] = None) -> None:
        latency_s = max(0.0, float(latency_s))
        with self._lock:
            s = self._scalars
            s["successes"] += 1
            s["latency_count"] += 1
            s["latency_sum_s"] += latency_s
            if nbytes:
                s["bytes"] += int(nbytes)
            self._latency_min_s = min(self._latency_min_s, latency_s)
            self._latency_max_s = max(self._latency_max_s, latency_s)
            self._histogram[bisect.bisect_left(LATENCY_BUCKET_BOUNDS_S, latency_s)] += 1
            self._recent.append(latency_s)
            if len(self._pending_ms) < self._max_pending:
                self._pending_ms.append(int(round(latency_s * 1000)))

    def record_error(self, cause: str, quota: bool = False, timeout: bool = False) -> None:
        """One failed attempt (retried or not)."""
        with self._lock:
            self._by_cause["errors_by_cause"][cause] += 1
            if quota:
                self._scalars["quota_errors"] += 1
            if timeout:
                self._scalars["timeouts"] += 1

    def record_retry(self, cause: str, backoff_s: float) -> None:
        with self._lock:
            self._scalars["retries"] += 1
            self._scalars["backoff_seconds"] += backoff_s
            self._by_cause["retries_by_cause"][cause] += 1

    def record_failure(self, cause: str) -> None:
        with self._lock:
            self._scalars["failures"] += 1
            self._by_cause["failures_by_cause"][cause] += 1

    def record_throttled(self, seconds: float) -> None:
        """Time spent waiting for a Throttler slot / the rate schedule."""
        with self._lock:
            self._scalars["throttled_seconds"] += seconds

    def record_adaptive_delay(self, seconds: float) -> None:
        with self._lock:
            self._scalars["adaptive_delays"] += 1
            self._scalars["throttled_seconds"] += seconds

    # -- reading ------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """All totals so far, as plain numbers/dicts (latency values in seconds)."""
        with self._lock:
            out: dict[str, Any] = dict(self._scalars)
            out.update({k: dict(v) for k, v in self._by_cause.items()})
            recent = sorted(self._recent)
            count = self._scalars["latency_count"]
            out["latency_min_s"] = self._latency_min_s if count else None
            out["latency_max_s"] = self._latency_max_s if count else None
            out["latency_mean_s"] = self._scalars["latency_sum_s"] / count if count else None
            for q in (50, 90, 99):
                out[f"latency_p{q}_s"] = _percentile(recent, q)
            out["latency_histogram"] = {
                ("inf" if math.isinf(b) else b): n
                for b, n in zip(LATENCY_BUCKET_BOUNDS_S, self._histogram)
            }
        return out

    def drain_deltas(self) -> dict:
        """What changed since the previous drain: the scalar counters (only non-zero
        changes), the *_by_cause dicts (only changed causes), and `latencies_ms`
        (a list of int milliseconds, for a Beam Distribution)."""
        with self._lock:
            out: dict[str, Any] = {}
            for key, value in self._scalars.items():
                change = value - self._drained_scalars[key]
                if change:
                    out[key] = change
            self._drained_scalars = dict(self._scalars)
            for key, counter in self._by_cause.items():
                change = counter - self._drained_by_cause[key]  # Counter '-' keeps positives
                out[key] = dict(change)
                self._drained_by_cause[key] = collections.Counter(counter)
            out["latencies_ms"], self._pending_ms = self._pending_ms, []
        return out


def _percentile(sorted_values: list[float], q: float) -> Optional[float]:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


class _DaemonCallThreads:
    """Daemon threads that run calls on behalf of callers who may stop waiting.

    Unlike ThreadPoolExecutor (joined at interpreter exit), an abandoned, hung call here
    never blocks shutdown. Threads are reused, so thread-local clients persist; one is
    started whenever no idle thread is available.
    """

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            start_thread = self._idle == 0
            if start_thread:
                self._threads += 1
            else:
                self._idle -= 1  # claim an idle thread for this task
        if start_thread:
            threading.Thread(target=self._work, name="pixelbeam-call", daemon=True).start()
        self._tasks.put((fn, future))
        return future

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            fn, future = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        """Ask idle and future-idle threads to exit (busy ones exit after their call)."""
        with self._lock:
            count, self._threads, self._idle = self._threads, 0, 0
        for _ in range(count):
            self._tasks.put(None)


class RequestRunner:
    """Runs calls with throttling, adaptive delays and retries; shared by many threads.

    Per attempt: (1) while `adaptive.should_throttle()`, sleep a jittered
    uniform(0.5, 1.5) * `adaptive_delay_s` and ask again (counted as throttled time);
    (2) take a Throttler slot and call, timing it; (3) tell the adaptive throttler
    whether the server accepted (only QuotaError counts as a rejection); (4) on error,
    classify it (`classify_exception`) and either sleep `policy.delay_s` outside the slot
    and retry, or raise the final FetchError with `.attempts` set. Permanent errors are
    raised at once.

    `attempt_timeout_s` (None = off) bounds how long a caller waits for one attempt. The
    call then runs on a helper daemon thread and, when the timeout passes, the caller
    stops waiting and retries (cause "timeout"). Python cannot kill a thread, so the
    abandoned call runs on and *keeps its Throttler slot until it returns*: the
    concurrency limit stays truthful (the server still counts it), and at most
    `max_concurrent` calls can be abandoned at once. Still set a transport deadline
    (HTTP timeout, `ee.data.setDeadline`) on the call itself; this is the backstop.
    The wait uses real time (`threading` primitives), not the injected clock.
    """

    def __init__(
        self,
        throttler: Throttler,
        adaptive: Optional[AdaptiveThrottler] = None,
        policy: Optional[RetryPolicy] = None,
        stats: Optional[RequestStats] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: Optional[random.Random] = None,
        adaptive_delay_s: float = 1.0,
        attempt_timeout_s: Optional[float] = None,
        result_nbytes: Callable[[Any], Optional[int]] = default_result_nbytes,
    ):
        self.throttler = throttler
        self.adaptive = adaptive
        self.policy = policy if policy is not None else RetryPolicy()
        self.stats = stats if stats is not None else RequestStats()
        self.adaptive_delay_s = adaptive_delay_s
        self.attempt_timeout_s = attempt_timeout_s
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._rng_lock = threading.Lock()
        self._result_nbytes = result_nbytes
        self._call_threads: Optional[_DaemonCallThreads] = None
        self._call_threads_lock = threading.Lock()

    def run(self, call: Callable[[], T], describe: str = "") -> tuple[T, int]:
        """Call `call()` until it succeeds; returns (result, attempts made).

        Raises the final FetchError (with `.attempts`, and a message naming `describe`,
        the cause and the last server message) when the error is permanent or the
        policy gives up. The original exception is chained as `__cause__`.
        """
        attempt = 0
        while True:
            attempt += 1
            self._wait_while_adaptive_throttles()
            try:
                result, latency_s = self._attempt(call)
            except Exception as exc:  # noqa: BLE001 - everything is classified
                error = classify_exception(exc)
                overloaded = isinstance(error, QuotaError)
                if self.adaptive is not None:
                    self.adaptive.record(accepted=not overloaded)
                self.stats.record_error(
                    error.cause, quota=overloaded, timeout=isinstance(exc, _AttemptTimeout)
                )
                if not self.policy.should_retry(attempt, error):
                    self.stats.record_failure(error.cause)
                    raise _final_error(error, attempt, describe) from exc
                delay_s = self.policy.delay_s(attempt, error)
                self.stats.record_retry(error.cause, delay_s)
                _LOG.debug(
                    "%s: attempt %d failed (%s), retrying in %.2f s",
                    describe or "request", attempt, error.cause, delay_s,
                )
                self._sleep(delay_s)
                continue
            if self.adaptive is not None:
                self.adaptive.record(accepted=True)
            self.stats.record_success(latency_s, self._result_nbytes(result))
            return result, attempt

    def close(self) -> None:
        """Let the helper threads of `attempt_timeout_s` exit (they are daemons anyway)."""
        with self._call_threads_lock:
            threads, self._call_threads = self._call_threads, None
        if threads is not None:
            threads.close()

    # -- internals ----------------------------------------------------------------------
    def _wait_while_adaptive_throttles(self) -> None:
        if self.adaptive is None:
            return
        while self.adaptive.should_throttle():
            with self._rng_lock:
                delay_s = self._rng.uniform(0.5, 1.5) * self.adaptive_delay_s
            self.stats.record_adaptive_delay(delay_s)
            self._sleep(delay_s)

    def _attempt(self, call: Callable[[], T]) -> tuple[T, float]:
        """One throttled call; returns (result, latency seconds)."""
        if self.attempt_timeout_s is None:
            with self.throttler.slot() as waited_s:
                self.stats.record_throttled(waited_s)
                self.stats.record_sent()
                started = self._clock()
                result = call()
                return result, self._clock() - started
        waited_s = self.throttler.acquire()
        try:
            self.stats.record_throttled(waited_s)
            self.stats.record_sent()
            future = self._helper_threads().submit(lambda: self._timed_call_then_release(call))
        except BaseException:
            self.throttler.release()
            raise
        done, _ = concurrent.futures.wait([future], timeout=self.attempt_timeout_s)
        if not done:
            raise _AttemptTimeout(
                f"no answer within {self.attempt_timeout_s:g} s; the call was abandoned "
                "and keeps its slot until it returns",
                "timeout",
            )
        return future.result()

    def _timed_call_then_release(self, call: Callable[[], T]) -> tuple[T, float]:
        try:
            started = self._clock()
            result = call()
            return result, self._clock() - started
        finally:
            self.throttler.release()

    def _helper_threads(self) -> _DaemonCallThreads:
        with self._call_threads_lock:
            if self._call_threads is None:
                self._call_threads = _DaemonCallThreads()
            return self._call_threads


class _AttemptTimeout(TransientError):
    """The runner stopped waiting for an attempt (see `attempt_timeout_s`)."""


def _final_error(error: FetchError, attempts: int, describe: str) -> FetchError:
    """A copy of `error` whose message says what failed, why and after how many attempts."""
    what = describe or "request"
    message = f"{what} failed after {attempts} attempt(s), cause {error.cause}: {error.message}"
    cls = TransientError if isinstance(error, _AttemptTimeout) else type(error)
    try:
        return cls(message, error.cause, error.retry_after_s, error.status, attempts)
    except TypeError:  # a FetchError subclass with its own constructor
        error.attempts = attempts
        return error
