"""Progress of a local run, shared between processes through small files. Beam-free.

Each fetch worker process writes its running totals (patches done and failed, requests,
retries, 429s) to `<dir>/<pid>.json` at most every `interval_s`, atomically; the launcher sums
the files of all worker processes (the DirectRunner's in-memory and multi-processing modes run
on this machine). Dataflow runs report the same numbers as Beam counters instead.
"""

from __future__ import annotations

import glob
import json
import os
import threading
import time
from typing import Callable, Optional

FIELDS = ("done", "failed", "requests", "retries", "quota_errors")


class ProgressFile:
    """One worker process's totals, written to `directory` every `interval_s` seconds at most."""

    def __init__(self, directory: Optional[str], interval_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        self.directory, self.interval_s, self.clock = directory, interval_s, clock
        self.totals = dict.fromkeys(FIELDS, 0)
        self._lock = threading.Lock()
        self._written_at = -float("inf")

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, n in counts.items():
                self.totals[key] += n

    def flush(self, force: bool = False) -> None:
        if not self.directory:
            return
        with self._lock:
            now = self.clock()
            if not force and now - self._written_at < self.interval_s:
                return
            self._written_at = now
            doc = json.dumps(self.totals)
        path = os.path.join(self.directory, f"{os.getpid()}.json")
        tmp = f"{path}.tmp-{threading.get_ident()}"
        with open(tmp, "w") as f:
            f.write(doc)
        os.replace(tmp, path)


def read_progress(directory: str) -> dict:
    """The totals of every worker process that reported to `directory`."""
    totals = dict.fromkeys(FIELDS, 0)
    for path in glob.glob(os.path.join(directory, "*.json")):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):  # being replaced right now: read it next time
            continue
        for key in FIELDS:
            totals[key] += int(doc.get(key, 0))
    return totals
