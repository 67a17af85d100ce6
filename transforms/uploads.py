"""A bounded pool of uploads: each patch's files go to an object store from a few threads while
the worker encodes the next patch. Beam-free apart from `transforms.storage`.

`submit(item, files)` starts the uploads of one item's files and returns the items whose uploads
have all finished, oldest first, once more than `max_pending` items are in flight (so memory
holds at most `max_pending` patches' bytes); `drain()` waits for the rest. Each finished item
comes with None or the first exception one of its uploads raised.
"""

from __future__ import annotations

import collections
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

from pixelbeam.transforms.storage import write_atomically

UPLOAD_THREADS = 16  # uploads in flight per worker process (each a few small HTTP requests)


class UploadPool:
    """Upload (path, bytes) pairs from `threads` threads, at most `max_pending` items in flight."""

    def __init__(self, threads: int = UPLOAD_THREADS, max_pending: Optional[int] = None,
                 write: Callable[[str, bytes], None] = write_atomically):
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pixelbeam-upload")
        self.max_pending = max_pending if max_pending is not None else 2 * threads
        self.write = write
        self.pending: collections.deque = collections.deque()

    def submit(self, item: Any, files: Sequence[tuple[str, bytes]]) -> list[tuple[Any, Optional[BaseException]]]:
        futures = [self.executor.submit(self.write, path, data) for path, data in files]
        self.pending.append((item, futures))
        done = []
        while len(self.pending) > self.max_pending or (self.pending and all(f.done() for f in self.pending[0][1])):
            done.append(self._finish(*self.pending.popleft()))
        return done

    def drain(self) -> list[tuple[Any, Optional[BaseException]]]:
        done = [self._finish(*entry) for entry in self.pending]
        self.pending.clear()
        return done

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    @staticmethod
    def _finish(item: Any, futures: list[Future]) -> tuple[Any, Optional[BaseException]]:
        errors = [f.exception() for f in futures]  # waits for each
        return item, next((e for e in errors if e is not None), None)
