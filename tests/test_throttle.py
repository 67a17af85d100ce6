"""Tests for transforms/fetching/throttle.py on a fake clock (no timed assertions)."""

from __future__ import annotations

import math
import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


from tests.fakes import FakeClock
from pixelbeam.transforms.fetching.throttle import (
    AdaptiveThrottler,
    RequestPacer,
    Throttler,
    per_worker_limits,
)

# Float rounding of send times is allowed to be off by ~1e-12 s; windows are shrunk by this.
EPS = 1e-9


def max_in_window(times: list[float], window_s: float) -> int:
    """Most events in any half-open window [t, t + window_s) (it suffices to start windows
    at events)."""
    times = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < start + window_s - EPS:
            j += 1
        best = max(best, j - i)
    return best


# -- per_worker_limits --------------------------------------------------------------------


@pytest.mark.parametrize(
    "job, workers, expected",
    [
        ((40, 100.0), 1, (40, 100.0)),
        ((40, 100.0), 4, (10, 25.0)),
        ((40, 100.0), 3, (13, 100.0 / 3)),
        ((40, 100.0), 80, (1, 1.25)),
    ],
)
def test_per_worker_limits_table(job, workers, expected):
    concurrent, rate = per_worker_limits(*job, workers)
    assert concurrent == expected[0]
    assert rate == pytest.approx(expected[1])


@given(
    max_concurrent=st.integers(1, 500),
    rate=st.floats(0.1, 10_000),
    workers=st.integers(1, 500),
)
def test_per_worker_limits_never_exceed_the_job_quota(max_concurrent, rate, workers):
    per_concurrent, per_rate = per_worker_limits(max_concurrent, rate, workers)
    assert per_concurrent >= 1
    if workers <= max_concurrent:
        assert per_concurrent * workers <= max_concurrent
    assert per_rate * workers <= rate * (1 + 1e-12)


def test_per_worker_limits_rejects_nonsense():
    with pytest.raises(ValueError):
        per_worker_limits(40, 100.0, 0)
    with pytest.raises(ValueError):
        per_worker_limits(0, 100.0, 1)
    with pytest.raises(ValueError):
        per_worker_limits(40, 0.0, 1)


# -- RequestPacer (token bucket, burst 1) ---------------------------------------------------

rates = st.one_of(st.sampled_from([1.0, 2.0, 2.5, 3.0, 7.0, 10.0, 25.0, 100.0]), st.floats(0.2, 200.0))
# Many zero gaps = many simultaneous arrivals (what 64 threads do).
gaps = st.lists(st.one_of(st.just(0.0), st.floats(0.0, 0.05), st.floats(0.0, 3.0)), min_size=1, max_size=400)


@settings(max_examples=150, deadline=None)
@given(rate=rates, arrival_gaps=gaps)
def test_pacer_never_exceeds_rate_in_any_window(rate, arrival_gaps):
    pacer = RequestPacer(rate)
    now, sends = 0.0, []
    for gap in arrival_gaps:
        now += gap
        send_at = pacer.reserve(now)
        assert send_at >= now
        assert not sends or send_at >= sends[-1]
        sends.append(send_at)
    # Any 1 s window: at most ceil(rate) (= rate for an integer rate).
    assert max_in_window(sends, 1.0) <= math.ceil(rate - EPS)
    if rate == int(rate):
        assert max_in_window(sends, 1.0) <= rate
    # Any window of T seconds: at most ceil(rate * T).
    for window_s in (0.5, 2.0, 10.0):
        assert max_in_window(sends, window_s) <= math.ceil(rate * window_s - EPS)


@given(rate=rates, n=st.integers(1, 300))
def test_pacer_loses_no_throughput(rate, n):
    """A burst of n arrivals is sent at exactly `rate`: the last goes at (n-1)/rate."""
    pacer = RequestPacer(rate)
    sends = [pacer.reserve(5.0) for _ in range(n)]
    assert sends[0] == 5.0
    assert sends[-1] == pytest.approx(5.0 + (n - 1) / rate)


def test_pacer_after_idle_does_not_burst():
    """After a long idle spell only one request goes at once (a bucket of capacity `rate`
    would let `rate` go at once and then `rate` more within the same second)."""
    pacer = RequestPacer(10.0)
    for _ in range(100):
        pacer.reserve(0.0)
    sends = [pacer.reserve(100.0) for _ in range(30)]
    assert sends[:3] == pytest.approx([100.0, 100.1, 100.2])
    assert max_in_window(sends, 1.0) == 10


# -- Throttler --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(rate=rates, arrival_gaps=gaps)
def test_throttler_admissions_respect_rate_on_fake_clock(rate, arrival_gaps):
    clock = FakeClock()
    throttler = Throttler(4, rate, clock=clock.now, sleep=clock.sleep)
    admitted_at, total_wait = [], 0.0
    for gap in arrival_gaps:
        clock.advance(gap)
        with throttler.slot() as waited_s:
            admitted_at.append(clock.now())
            total_wait += waited_s
    assert max_in_window(admitted_at, 1.0) <= math.ceil(rate - EPS)
    assert throttler.admitted == len(arrival_gaps)
    assert throttler.throttled_seconds == pytest.approx(total_wait)
    assert throttler.in_flight == 0


def test_throttler_waits_by_sleeping_not_spinning():
    clock = FakeClock(0.0)
    throttler = Throttler(10, 4.0, clock=clock.now, sleep=clock.sleep)
    for _ in range(9):
        with throttler.slot():
            pass
    # 9 requests at rate 4/s: 8 waits of 0.25 s each, one sleep per wait.
    assert clock.sleeps == pytest.approx([0.25] * 8)
    assert throttler.throttled_seconds == pytest.approx(2.0)
    assert clock.now() == pytest.approx(2.0)


def test_unlimited_rate_never_sleeps():
    clock = FakeClock()
    throttler = Throttler(2, None, clock=clock.now, sleep=clock.sleep)
    for _ in range(100):
        with throttler.slot():
            pass
    assert clock.sleeps == []
    assert Throttler(2, math.inf)._pacer is None


def test_slot_is_released_when_the_body_raises():
    throttler = Throttler(1, None)
    with pytest.raises(RuntimeError):
        with throttler.slot():
            raise RuntimeError("boom")
    assert throttler.in_flight == 0
    with throttler.slot():  # would block forever if the slot leaked
        assert throttler.in_flight == 1


def test_release_without_acquire_is_an_error():
    with pytest.raises(RuntimeError):
        Throttler(1, None).release()
    with pytest.raises(ValueError):
        Throttler(0, None)
    with pytest.raises(ValueError):
        Throttler(1, 0.0)


def test_concurrency_limit_with_real_threads():
    """20 threads through max_concurrent=3: exactly 3 get in, the rest wait until the
    first ones leave; never more than 3 in flight."""
    throttler = Throttler(3, None)
    gate = threading.Event()
    entered = []
    lock = threading.Lock()

    def worker(i):
        with throttler.slot():
            with lock:
                entered.append(i)
                assert throttler.in_flight <= 3
            gate.wait(10)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for _ in range(1000):  # up to ~5 s for 3 threads to get in
        if len(entered) >= 3:
            break
        threading.Event().wait(0.005)
    assert throttler.in_flight == 3
    assert len(entered) == 3  # the other 17 are blocked on the Condition
    gate.set()
    for t in threads:
        t.join(10)
    assert len(entered) == 20
    assert throttler.peak_in_flight == 3
    assert throttler.in_flight == 0


def test_many_threads_share_one_throttler_on_a_fake_clock():
    clock = FakeClock()
    throttler = Throttler(2, 5.0, clock=clock.now, sleep=clock.sleep)
    errors = []

    def worker():
        try:
            for _ in range(20):
                with throttler.slot():
                    assert throttler.in_flight <= 2
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors
    assert throttler.admitted == 160
    assert throttler.peak_in_flight <= 2
    # 160 requests at 5/s cannot be admitted in less than 159/5 s of (fake) time.
    assert clock.now() - 1000.0 >= 159 / 5 - EPS


# -- AdaptiveThrottler ------------------------------------------------------------------


def make_adaptive(clock, **kw):
    return AdaptiveThrottler(clock=clock.now, rng=random.Random(7), **kw)


def test_healthy_server_is_never_throttled():
    clock = FakeClock()
    adaptive = make_adaptive(clock)
    for _ in range(500):
        assert not adaptive.should_throttle()
        adaptive.record(accepted=True)
        clock.advance(0.1)
    assert adaptive.throttle_probability() == 0.0


def test_burst_of_429s_throttles_then_recovers_as_window_slides():
    clock = FakeClock()
    adaptive = make_adaptive(clock, window_s=30.0, k=1.5)
    for _ in range(40):
        adaptive.record(accepted=False)
        clock.advance(0.1)
    p = adaptive.throttle_probability()
    assert p == pytest.approx(40 / 41)
    assert sum(adaptive.should_throttle() for _ in range(200)) > 150
    # The server recovers: successes only, while the storm slides out of the window.
    for _ in range(40):
        clock.advance(1.0)
        adaptive.record(accepted=True)
    assert adaptive.throttle_probability() == 0.0
    assert not any(adaptive.should_throttle() for _ in range(200))


def test_recovers_once_accepts_outweigh_rejects_by_k():
    clock = FakeClock()
    adaptive = make_adaptive(clock, window_s=60.0, k=1.5)
    for _ in range(10):
        adaptive.record(accepted=False)
    assert adaptive.throttle_probability() > 0.5
    for _ in range(19):
        adaptive.record(accepted=True)
    assert adaptive.throttle_probability() > 0  # 29 - 1.5*19 = 0.5 > 0
    adaptive.record(accepted=True)
    assert adaptive.throttle_probability() == 0.0  # 30 - 1.5*20 = 0


def test_old_buckets_expire_and_memory_is_bounded():
    clock = FakeClock()
    adaptive = make_adaptive(clock, window_s=10.0, bucket_s=1.0)
    for _ in range(5):
        adaptive.record(accepted=False)
    assert adaptive.counts() == (5, 0)
    clock.advance(9.5)
    adaptive.record(accepted=True)
    assert adaptive.counts() == (6, 1)
    clock.advance(1.0)
    assert adaptive.counts() == (1, 1)
    for _ in range(1000):
        clock.advance(0.37)
        adaptive.record(accepted=True)
    assert len(adaptive._requests) == 10


@given(events=st.lists(st.tuples(st.floats(0, 5), st.booleans()), max_size=300))
def test_probability_stays_in_unit_interval(events):
    clock = FakeClock()
    adaptive = make_adaptive(clock, window_s=20.0)
    for gap, accepted in events:
        clock.advance(gap)
        adaptive.record(accepted)
        p = adaptive.throttle_probability()
        assert 0.0 <= p < 1.0
        requests, accepts = adaptive.counts()
        assert 0 <= accepts <= requests


def test_adaptive_rejects_k_below_one():
    with pytest.raises(ValueError):
        AdaptiveThrottler(k=0.5)
