"""Tests for transforms/fetching/runner.py on a fake clock (no timed assertions)."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest


from tests.fakes import FakeClock
from pixelbeam.transforms.fetching.runner import RequestRunner, RequestStats
from pixelbeam.transforms.fetching.retry import (
    FetchError,
    PermanentError,
    QuotaError,
    RetryPolicy,
    TransientError,
)
from pixelbeam.transforms.fetching.throttle import AdaptiveThrottler, Throttler


def make_runner(clock, *, rate=None, max_concurrent=4, adaptive=True, max_attempts=6, **kw):
    throttler = Throttler(max_concurrent, rate, clock=clock.now, sleep=clock.sleep)
    return RequestRunner(
        throttler,
        AdaptiveThrottler(clock=clock.now, rng=random.Random(1)) if adaptive else None,
        RetryPolicy(max_attempts=max_attempts, rng=random.Random(2)),
        RequestStats(),
        clock=clock.now,
        sleep=clock.sleep,
        rng=random.Random(3),
        **kw,
    )


def failing_then(results):
    """A call that raises/returns the given items in order."""
    items = list(results)
    calls = []

    def call():
        calls.append(1)
        item = items.pop(0) if len(items) > 1 else items[0]
        if isinstance(item, BaseException):
            raise item
        return item

    call.calls = calls
    return call


def test_success_first_try_records_latency_and_bytes():
    clock = FakeClock()
    runner = make_runner(clock)

    def call():
        clock.advance(0.25)  # the request takes 250 ms
        return np.zeros((4, 4), dtype=np.float32)

    result, attempts = runner.run(call, describe="patch-1")
    assert attempts == 1 and result.shape == (4, 4)
    snap = runner.stats.snapshot()
    assert snap["requests"] == 1 and snap["successes"] == 1 and snap["retries"] == 0
    assert snap["bytes"] == 64
    assert snap["latency_count"] == 1
    assert snap["latency_min_s"] == snap["latency_max_s"] == snap["latency_p50_s"] == pytest.approx(0.25)
    assert snap["latency_histogram"][0.25] == 1


def test_transient_error_is_retried_with_backoff_outside_the_slot():
    clock = FakeClock()
    runner = make_runner(clock, adaptive=False)
    sleeps_in_slot = []

    def sleep(seconds):
        sleeps_in_slot.append(runner.throttler.in_flight)
        clock.sleep(seconds)

    runner._sleep = sleep
    call = failing_then([TransientError("HTTP 503: busy", "503"), ConnectionResetError(), b"ok"])
    result, attempts = runner.run(call)
    assert (result, attempts) == (b"ok", 3)
    assert sleeps_in_slot == [0, 0]  # backoff never holds a slot
    snap = runner.stats.snapshot()
    assert snap["requests"] == 3 and snap["successes"] == 1 and snap["retries"] == 2
    assert snap["retries_by_cause"] == {"503": 1, "reset": 1}
    assert snap["backoff_seconds"] == pytest.approx(sum(clock.sleeps))
    assert snap["bytes"] == 2


def test_permanent_error_is_raised_at_once():
    clock = FakeClock()
    runner = make_runner(clock)
    original = PermanentError("HTTP 400: Image.select: band 'B99' not found", "400", status=400)
    with pytest.raises(PermanentError) as info:
        runner.run(failing_then([original]), describe="patch-7")
    error = info.value
    assert error.attempts == 1
    assert "patch-7" in str(error) and "400" in str(error) and "B99" in str(error)
    assert error.__cause__ is original
    assert clock.sleeps == []
    assert runner.stats.snapshot()["failures_by_cause"] == {"400": 1}


def test_unknown_exceptions_are_permanent_and_keep_their_traceback():
    runner = make_runner(FakeClock())
    with pytest.raises(PermanentError) as info:
        runner.run(failing_then([ZeroDivisionError("oops")]))
    assert info.value.cause == "ZeroDivisionError" and info.value.attempts == 1
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_gives_up_after_max_attempts_with_the_last_message():
    clock = FakeClock()
    runner = make_runner(clock, adaptive=False, max_attempts=4)
    call = failing_then(
        [TransientError("HTTP 503: first", "503"), TransientError("HTTP 504: last words", "504")]
    )
    with pytest.raises(TransientError) as info:
        runner.run(call, describe="p")
    assert info.value.attempts == 4 and info.value.cause == "504"
    assert "last words" in str(info.value) and "4 attempt" in str(info.value)
    assert len(call.calls) == 4 and len(clock.sleeps) == 3


def test_retry_after_is_honoured():
    clock = FakeClock()
    runner = make_runner(clock, adaptive=False)
    call = failing_then([QuotaError("HTTP 429", "429", retry_after_s=7.0), "ok"])
    assert runner.run(call) == ("ok", 2)
    assert clock.sleeps[0] >= 7.0
    assert runner.stats.snapshot()["quota_errors"] == 1


def test_quota_errors_feed_the_adaptive_throttler():
    clock = FakeClock()
    runner = make_runner(clock)
    call = failing_then([QuotaError("x", "429"), TransientError("x", "503"), "ok"])
    runner.run(call)
    assert runner.adaptive.counts() == (3, 2)  # only the 429 is a rejection


def test_drain_deltas_reports_only_changes():
    clock = FakeClock()
    runner = make_runner(clock, adaptive=False)

    def call():
        clock.advance(0.1)
        return b"abc"

    runner.run(call)
    runner.run(failing_then([TransientError("x", "503"), b"de"]))
    first = runner.stats.drain_deltas()
    assert first["requests"] == 3 and first["successes"] == 2 and first["bytes"] == 5
    assert first["retries_by_cause"] == {"503": 1}
    assert first["latencies_ms"][0] == 100 and len(first["latencies_ms"]) == 2
    second = runner.stats.drain_deltas()
    assert "requests" not in second and second["retries_by_cause"] == {} and second["latencies_ms"] == []
    runner.run(call)
    third = runner.stats.drain_deltas()
    assert third["requests"] == 1 and third["latencies_ms"] == [100]
    assert runner.stats.snapshot()["requests"] == 4


def test_adaptive_delays_count_as_throttled_time():
    clock = FakeClock()
    runner = make_runner(clock, rate=10.0)
    for _ in range(20):
        runner.adaptive.record(accepted=False)
    assert runner.run(lambda: "ok") == ("ok", 1)
    snap = runner.stats.snapshot()
    assert snap["adaptive_delays"] >= 1
    assert snap["throttled_seconds"] > 0 and snap["backoff_seconds"] == 0


def simulate_storm(adaptive: bool):
    """One thread, 10 requests/s allowed; the server answers 429 during [60, 180) s."""
    clock = FakeClock(0.0)
    runner = make_runner(clock, rate=10.0, adaptive=adaptive)
    sent = []

    def call():
        now = clock.now()
        sent.append(now)
        if 60.0 <= now < 180.0:
            raise QuotaError("HTTP 429: Too many requests", "429")
        return b"px"

    while clock.now() < 300.0:
        try:
            runner.run(call)
        except FetchError:
            pass  # a dead-lettered patch; the test only counts requests
    return np.array(sent), runner


def test_429_storm_slows_the_client_and_recovery_restores_full_speed():
    sent, runner = simulate_storm(adaptive=True)
    sent_plain, _ = simulate_storm(adaptive=False)

    def count(times, start, end):
        return int(((times >= start) & (times < end)).sum())

    # Before the storm: full speed (10/s).
    assert count(sent, 10, 60) >= 499
    # During the storm far fewer requests are sent, and fewer than with backoff alone.
    storm_sends = count(sent, 70, 180)
    assert storm_sends < count(sent_plain, 70, 180)
    assert storm_sends < 0.05 * 10 * 110
    # Once the storm has slid out of the 30 s window (and the longest backoff, 16 s, is
    # over), the client is back at full speed.
    assert count(sent, 230, 300) >= 10 * 70 - 1
    assert runner.adaptive.throttle_probability() == 0.0
    snap = runner.stats.snapshot()
    assert snap["adaptive_delays"] > 0 and snap["quota_errors"] == count(sent, 60, 180)


def test_shared_runner_is_thread_safe():
    clock = FakeClock()
    runner = make_runner(clock, rate=50.0, max_concurrent=3)
    counter = iter(range(10**6))
    lock = threading.Lock()

    def flaky():
        with lock:
            n = next(counter)
        assert runner.throttler.in_flight <= 3
        if n % 3 == 0:
            raise TransientError("HTTP 503", "503")
        return b"x"

    errors = []

    def worker():
        try:
            for _ in range(25):
                runner.run(flaky)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    snap = runner.stats.snapshot()
    assert snap["successes"] == 400
    assert snap["requests"] == 400 + snap["retries"]
    assert snap["retries_by_cause"] == {"503": snap["retries"]}
    assert runner.throttler.peak_in_flight <= 3 and runner.throttler.in_flight == 0


def test_attempt_timeout_cuts_the_wait_short_but_keeps_the_slot():
    """The first attempt hangs until the test releases it; the runner stops waiting after
    attempt_timeout_s (real time), retries, and the hung call keeps its slot."""
    clock = FakeClock()
    runner = make_runner(clock, max_concurrent=2, adaptive=False, attempt_timeout_s=0.05)
    release_hung_call = threading.Event()
    calls = []

    def call():
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            release_hung_call.wait(10)
            return "late"
        return "fresh"

    try:
        result, attempts = runner.run(call, describe="hangs")
        assert (result, attempts) == ("fresh", 2)
        assert runner.throttler.in_flight == 1  # the abandoned call still holds its slot
        snap = runner.stats.snapshot()
        assert snap["timeouts"] == 1 and snap["retries_by_cause"] == {"timeout": 1}
    finally:
        release_hung_call.set()
    for _ in range(1000):  # up to ~5 s for the helper thread to finish
        if runner.throttler.in_flight == 0:
            break
        threading.Event().wait(0.005)
    assert runner.throttler.in_flight == 0
    runner.close()


def test_attempt_timeout_passes_call_errors_through():
    runner = make_runner(FakeClock(), adaptive=False, attempt_timeout_s=5.0)
    with pytest.raises(PermanentError) as info:
        runner.run(failing_then([ValueError("bad")]))
    assert info.value.cause == "ValueError"
    # A TimeoutError raised by the call itself is the call's, not the runner's, timeout.
    call = failing_then([TimeoutError("socket"), "ok"])
    assert runner.run(call) == ("ok", 2)
    assert runner.stats.snapshot()["timeouts"] == 0
    assert runner.throttler.in_flight == 0
    runner.close()
