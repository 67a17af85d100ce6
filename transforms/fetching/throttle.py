"""Client-side limits for pixel requests: concurrency + request rate, and adaptive backoff.

One `Throttler` and one `AdaptiveThrottler` are shared by all threads of a worker process.
`Throttler` enforces hard limits (in-flight requests, requests per second) so the job stays
inside its quota; `AdaptiveThrottler` reacts to the server saying "too much" (HTTP 429)
anyway, e.g. because other jobs share the project's quota.

Time is injected (`clock` returns monotonic seconds, `sleep` takes seconds) so tests can
use a fake clock. Units: seconds, requests, requests per second.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from typing import Callable, Iterator, Optional


def per_worker_limits(
    max_concurrent: int, max_requests_per_second: float, num_workers: int
) -> tuple[int, float]:
    """Split job-wide limits evenly over `num_workers` worker processes.

    Returns (max_concurrent per worker, requests per second per worker). Concurrency is
    floored (never below 1) and the rate is divided exactly, so the sum over workers never
    exceeds the job's limits: the job can never exceed the quota, provided each worker
    shares one Throttler between its threads. (The floor of 1 is the only exception: with
    more workers than concurrent slots each worker still needs one slot; size the job
    so that num_workers <= max_concurrent.) Rate precisely: each worker starts at most
    ceil(rate_w * T) requests in any T-second window (see `RequestPacer`), so the job
    starts at most rate * T + num_workers; over a 60 s accounting window that is within
    num_workers/60 requests per second of the quota.
    """
    if num_workers < 1:
        raise ValueError("num_workers must be >= 1")
    if max_concurrent < 1:
        raise ValueError("max_concurrent must be >= 1")
    if max_requests_per_second <= 0:
        raise ValueError("max_requests_per_second must be > 0")
    return max(1, max_concurrent // num_workers), max_requests_per_second / num_workers


class RequestPacer:
    """Hands out send times so that at most `rate` requests start in any 1 s window.

    This is a token bucket with capacity (burst) 1, written as a schedule: send times are
    spaced at least 1/rate seconds apart. Why capacity 1: with capacity b, a window of T
    seconds can admit up to b + rate*T requests (a full bucket at the window start plus
    the refill). Any b > 1 lets a 1 s window exceed the rate - e.g. a burst of `rate`
    after an idle spell followed by the steady rate admits ~2*rate in one second. With
    b = 1, any half-open window [t, t+T) holds at most ceil(rate*T) sends, so for an
    integer rate a 1 s window never exceeds it (a closed window [t, t+1] may hold rate+1,
    the two end points); long-run throughput is still exactly `rate`, so no capacity is
    lost, only bunching. The guarantee is exact up to float rounding (nanoseconds): the
    schedule is anchor + n/rate rather than a running sum, so errors do not accumulate.

    Not thread-safe by itself; `Throttler` calls it under its lock.
    """

    def __init__(self, rate: float):
        if not rate > 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        self._anchor: Optional[float] = None  # send time of request 0 of this busy spell
        self._count = 0  # requests scheduled since the anchor

    def next_free_s(self) -> Optional[float]:
        """Earliest time the next request could be sent (None before the first)."""
        if self._anchor is None:
            return None
        return self._anchor + self._count / self.rate

    def reserve(self, now: float) -> float:
        """Reserve the next send time (>= now) for a request arriving at `now` seconds."""
        next_free = self.next_free_s()
        if next_free is None or now >= next_free:
            # Idle long enough: start a new schedule at `now`.
            self._anchor, self._count = now, 0
        send_at = self._anchor + self._count / self.rate
        self._count += 1
        return send_at


class Throttler:
    """Thread-safe limit on concurrent requests and on requests per second.

    `with throttler.slot() as waited_s:` blocks until one of `max_concurrent` slots is
    free and then until the rate schedule allows a send (`max_requests_per_second`,
    None = unlimited, see `RequestPacer` for the burst choice). The slot is taken first
    and the send time reserved while holding it, so requests that waited for a slot
    cannot all fire at once when slots free up.

    Waiting never spins. Two mechanisms, so that a fake clock works in tests:
      * slots: a `threading.Condition`; a finishing request wakes one waiter. This
        needs no clock at all.
      * rate: the send time is reserved under the lock, then the caller sleeps until it
        with the injected `sleep` (re-checking the injected `clock`). Each waiter sleeps
        about once, for exactly its own delay.

    Counters: `throttled_seconds` (total time callers spent waiting, by `clock`),
    `in_flight`, `peak_in_flight`, `admitted`.
    """

    def __init__(
        self,
        max_concurrent: int,
        max_requests_per_second: Optional[float],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        if max_requests_per_second is not None:
            if not max_requests_per_second > 0:
                raise ValueError("max_requests_per_second must be > 0 (None = unlimited)")
            if math.isinf(max_requests_per_second):
                max_requests_per_second = None
        self.max_concurrent = int(max_concurrent)
        self.max_requests_per_second = max_requests_per_second
        self._pacer = None if max_requests_per_second is None else RequestPacer(max_requests_per_second)
        self._clock = clock
        self._sleep = sleep
        self._cond = threading.Condition()
        self._in_flight = 0
        self._peak_in_flight = 0
        self._admitted = 0
        self._throttled_seconds = 0.0

    @property
    def in_flight(self) -> int:
        """Slots currently held."""
        with self._cond:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """Most slots ever held at once."""
        with self._cond:
            return self._peak_in_flight

    @property
    def admitted(self) -> int:
        """Requests let through so far."""
        with self._cond:
            return self._admitted

    @property
    def throttled_seconds(self) -> float:
        """Total seconds callers spent waiting for a slot or for the rate schedule."""
        with self._cond:
            return self._throttled_seconds

    def acquire(self) -> float:
        """Block until a request may be sent; returns the seconds waited.

        The caller must call `release()` exactly once afterwards (prefer `slot()`).
        """
        started = self._clock()
        with self._cond:
            while self._in_flight >= self.max_concurrent:
                self._cond.wait()
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            send_at = self._pacer.reserve(self._clock()) if self._pacer else None
        try:
            if send_at is not None:
                self._sleep_until(send_at)
        except BaseException:
            self.release()
            raise
        waited_s = max(0.0, self._clock() - started)
        with self._cond:
            self._admitted += 1
            self._throttled_seconds += waited_s
        return waited_s

    def release(self) -> None:
        """Give back a slot taken by `acquire()`."""
        with self._cond:
            if self._in_flight <= 0:
                raise RuntimeError("release() without acquire()")
            self._in_flight -= 1
            self._cond.notify()

    @contextlib.contextmanager
    def slot(self) -> Iterator[float]:
        """Context manager around acquire/release; yields the seconds waited."""
        waited_s = self.acquire()
        try:
            yield waited_s
        finally:
            self.release()

    def _sleep_until(self, deadline: float) -> None:
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._sleep(remaining)


class AdaptiveThrottler:
    """Client-side adaptive throttling (Google SRE book, "Handling Overload").

    Over a sliding window of `window_s` seconds it counts `requests` (attempts actually
    sent) and `accepts` (attempts the server did not reject for overload) and throttles
    with probability p = max(0, (requests - k*accepts) / (requests + 1)).

    Use: pixelbeam must never drop a patch, so "throttled" means *delayed*: while
    `should_throttle()` is True the caller sleeps a short jittered delay and asks again;
    then it sends and calls `record(accepted=...)`. Because delayed asks are re-asks of
    the same request, only sent attempts are counted (`record`), not asks: counting every
    re-ask would inflate `requests` during an outage so much that p stays near 1 for
    many windows after the server recovers. With closed-loop threads, each send costs on
    average delay*p/(1-p) seconds of waiting, so the send rate falls as p rises.

    Counters live in `bucket_s`-second buckets in a ring (memory O(window_s/bucket_s));
    old buckets fall out as time passes, so p returns to 0 at most `window_s` after the
    last rejection, and sooner once accepts outnumber rejections by the ratio k.

    Defaults (window_s=30, k=1.5), and why they engage at pixelbeam's rates: a worker
    sends ~2-10 requests/s (100 req/s over 10-50 workers), so a 30 s window holds
    60-300 attempts - enough for a stable estimate - and spans several retry backoffs
    (1, 2, 4, 8 s), yet forgets a past storm within half a minute. k=1.5 engages once
    more than 1/3 of attempts are rejected; the SRE book's k=2 needs more than half,
    which a retrying client with a hard rate limit rarely reaches, so it would seldom
    act. (Beam's RequestResponseIO default window is 1 ms, so it never throttles.)
    """

    def __init__(
        self,
        window_s: float = 30.0,
        k: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
        rng: Optional[random.Random] = None,
        bucket_s: float = 1.0,
    ):
        if not window_s > 0 or not bucket_s > 0:
            raise ValueError("window_s and bucket_s must be > 0")
        if k < 1:
            raise ValueError("k must be >= 1 (k < 1 would throttle a healthy server)")
        self.window_s = float(window_s)
        self.k = float(k)
        self.bucket_s = float(bucket_s)
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        n = max(1, math.ceil(window_s / bucket_s))
        self._bucket_ids: list[Optional[int]] = [None] * n
        self._requests = [0] * n
        self._accepts = [0] * n

    def _bucket(self, now: float) -> int:
        """Ring index of the bucket for `now`, cleared if it held an older bucket."""
        bucket_id = math.floor(now / self.bucket_s)
        index = bucket_id % len(self._bucket_ids)
        if self._bucket_ids[index] != bucket_id:
            self._bucket_ids[index] = bucket_id
            self._requests[index] = 0
            self._accepts[index] = 0
        return index

    def counts(self) -> tuple[int, int]:
        """(requests, accepts) within the window ending now."""
        with self._lock:
            return self._counts(self._clock())

    def _counts(self, now: float) -> tuple[int, int]:
        newest = math.floor(now / self.bucket_s)
        oldest = newest - len(self._bucket_ids) + 1
        requests = accepts = 0
        for bucket_id, r, a in zip(self._bucket_ids, self._requests, self._accepts):
            if bucket_id is not None and oldest <= bucket_id <= newest:
                requests += r
                accepts += a
        return requests, accepts

    def throttle_probability(self) -> float:
        """Current p = max(0, (requests - k*accepts) / (requests + 1)), in [0, 1)."""
        with self._lock:
            requests, accepts = self._counts(self._clock())
        return max(0.0, (requests - self.k * accepts) / (requests + 1))

    def should_throttle(self) -> bool:
        """Draw whether to delay the next request (True with probability p)."""
        p = self.throttle_probability()
        if p <= 0.0:
            return False
        with self._lock:
            return self._rng.random() < p

    def record(self, accepted: bool) -> None:
        """Count one sent attempt; `accepted` is False if the server rejected it for
        overload (HTTP 429 / QuotaError)."""
        with self._lock:
            index = self._bucket(self._clock())
            self._requests[index] += 1
            if accepted:
                self._accepts[index] += 1
