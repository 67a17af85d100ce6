"""Where output files go, through Beam's filesystems (a local folder and gs://bucket/prefix
alike): paths joined under the output path, whole-or-nothing writes, JSON lines. Beam-free
apart from `apache_beam.io.filesystems`."""

from __future__ import annotations

import json
import os
import uuid

from apache_beam.io.filesystems import FileSystems

from pixelbeam.transforms.secrets import hide_secrets


def join(base: str, relpath: str) -> str:
    return FileSystems.join(base, *relpath.split("/"))


def write_atomically(path: str, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the whole file or none of it."""
    if "://" not in path:  # local: Beam's LocalFileSystem steps, its folder made only when missing
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        try:
            f = open(tmp, "wb")
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
            f = open(tmp, "wb")
        try:
            with f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return
    directory, name = FileSystems.split(path)
    tmp = FileSystems.join(directory, f".tmp-{uuid.uuid4().hex}-{name}")
    with FileSystems.create(tmp) as f:
        f.write(data)
    FileSystems.rename([tmp], [path])


def to_json_line(row: dict) -> str:
    """A manifest or dead-letter line: `row` as compact JSON, credentials in URLs redacted."""
    return hide_secrets(json.dumps(row, separators=(",", ":"), sort_keys=False))
