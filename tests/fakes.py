"""Test doubles shared by the request-control tests."""

from __future__ import annotations

import threading


class FakeClock:
    """A thread-safe fake monotonic clock (seconds). `sleep(s)` returns at once and
    advances time by `s`; `advance(s)` does the same without recording a sleep."""

    def __init__(self, start: float = 1000.0):
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        with self._lock:
            return self._now

    __call__ = now

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("negative sleep")
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
