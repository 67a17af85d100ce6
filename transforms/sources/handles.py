"""Open dataset handles kept per thread (GDAL handles are not thread-safe), least recently
used first out when a thread holds `max_open`. Pure, Beam-free.

A reader keeps one `ThreadHandles`: `get(key)` returns this thread's handle for `key`,
opening it with `open(key)` on first use; `evict(key)` closes this thread's handle (e.g. after
a failed remote read, so the next attempt reopens and re-signs the URL); `close()` closes
every thread's handles at teardown.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Hashable, Optional


class ThreadHandles:
    def __init__(self, open: Callable[[Hashable], Any], max_open: Optional[int] = None):
        self._open = open
        self.max_open = max_open  # per thread; None: no limit
        self._local = threading.local()
        self._lock = threading.Lock()
        self._every: dict[int, Any] = {}  # id -> handle, of every thread (for close)

    def _mine(self) -> collections.OrderedDict:
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = collections.OrderedDict()
        return handles

    def get(self, key: Hashable) -> Any:
        """This thread's handle for `key`, opened on first use (the oldest closed past max_open)."""
        handles = self._mine()
        if key in handles:
            handles.move_to_end(key)
            return handles[key]
        value = handles[key] = self._open(key)
        with self._lock:
            self._every[id(value)] = value
        while self.max_open is not None and len(handles) > self.max_open:
            _, old = handles.popitem(last=False)
            self._close(old)
        return value

    def evict(self, key: Hashable) -> None:
        """Close this thread's handle for `key`, if it has one."""
        value = self._mine().pop(key, None)
        if value is not None:
            self._close(value)

    def close(self) -> None:
        """Close every thread's handles."""
        with self._lock:
            values = list(self._every.values())
            self._every.clear()
        for value in values:
            _close_handle(value)

    def _close(self, value: Any) -> None:
        with self._lock:
            self._every.pop(id(value), None)
        _close_handle(value)


def _close_handle(value: Any) -> None:
    """Close a dataset, or the first item of a (dataset, ...) tuple."""
    target = value[0] if isinstance(value, tuple) else value
    close = getattr(target, "close", None)
    if close is not None:
        close()
