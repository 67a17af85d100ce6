"""Where output files go, through Beam's filesystems (a local folder and gs://bucket/prefix
alike): paths joined under the output path, whole-or-nothing writes, JSON lines. Beam-free
apart from `apache_beam.io.filesystems`.

Whole or nothing without renames on object stores: a Cloud Storage object appears only when its
upload finishes, so on `gs://` (and any other `scheme://` store) a file is uploaded straight to
its final name, one write per file; an upload that fails is abandoned, never finished, so no
partial object appears. A local folder has no such guarantee, so there a file is written under a
temporary name (`.tmp-<uuid>-<name>`, in the same folder) and renamed, which is atomic.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import uuid
from typing import BinaryIO, Iterator

from apache_beam.io.filesystems import FileSystems

from pixelbeam.transforms.secrets import hide_secrets


def join(base: str, relpath: str) -> str:
    """`relpath` ('/'-separated) under `base`, a local folder or a `scheme://` prefix."""
    if "://" not in base:  # what Beam's LocalFileSystem.join does, without its look-up per call
        return os.path.join(base, *relpath.split("/"))
    return FileSystems.join(base, *relpath.split("/"))


def is_object_store(path: str) -> bool:
    """True for `scheme://...` paths (gs://, s3://, ...), whose objects appear whole when written."""
    return "://" in path and not path.startswith("file://")


@contextlib.contextmanager
def open_once(path: str) -> Iterator[BinaryIO]:
    """A writable file that appears at `path` whole when the block ends cleanly and not at all
    when it raises (module doc: straight to the final name on object stores, temp + rename
    locally)."""
    if is_object_store(path):
        f = FileSystems.create(path)
        try:
            yield f
        except BaseException:
            abandon(f)
            raise
        f.close()
        return
    directory, name = FileSystems.split(path)
    tmp = FileSystems.join(directory, f".tmp-{uuid.uuid4().hex}-{name}")
    try:
        with FileSystems.create(tmp) as f:
            yield f
        FileSystems.rename([tmp], [path])
    except BaseException:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
        raise


def abandon(f) -> None:
    """Cancel an unfinished upload instead of finishing it: google-cloud-storage's BlobWriter
    `terminate()` deletes the resumable upload session; when that fails, its buffer is closed so
    that nothing (not `close()`, not garbage collection) finishes the upload, and a session never
    finished creates no object."""
    try:
        f.terminate()
    except Exception:  # noqa: BLE001 - e.g. a server that cannot cancel: leave the session unfinished
        pass
    buffer = getattr(f, "_buffer", None)  # closed, so neither close() nor garbage collection finishes the upload
    if buffer is not None and not buffer.closed:
        buffer.close()


def write_atomically(path: str, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the whole file or none of it (one write on
    object stores, temp + rename locally)."""
    if "://" not in path:  # local: open + os.replace (Beam's LocalFileSystem per call costs more than the write)
        write_local_atomically(path, data)
        return
    with open_once(path) as f:
        f.write(data)


# temporary names unique without a uuid4 (an os.urandom call) per file: random per import, the
# process id (a forked process shares the first and the counter, not the pid), a counter
_TMP_PREFIX = uuid.uuid4().hex[:12]
_TMP_COUNTER = itertools.count()


def write_local_atomically(path: str, data: bytes) -> None:
    """`write_atomically` for a local path: a temporary file in the same folder (the folder made
    only when missing), renamed over `path`."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".tmp-{_TMP_PREFIX}-{os.getpid()}-{next(_TMP_COUNTER)}-{os.path.basename(path)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    try:  # os.open/os.write: a file object (FileIO + buffer) per patch costs more than the write
        fd = os.open(tmp, flags, 0o666)
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        try:
            view, done = memoryview(data), 0
            while done < len(view):  # os.write may write less than asked
                done += os.write(fd, view[done:])
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def to_json_line(row: dict) -> str:
    """A manifest or dead-letter line: `row` as compact JSON, credentials in URLs redacted."""
    return hide_secrets(json.dumps(row, separators=(",", ":"), sort_keys=False))
