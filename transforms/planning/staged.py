"""Plan data staged as files beside the job instead of inside the job graph.

The launcher's plan (cells, regions, a sample, a table's pixel groups) grows with the regions,
and Dataflow refuses a job graph over 10 MB. On Dataflow the launcher therefore writes each
large piece to a gzipped pickle under `--temp_location` (`stage`) and the graph carries only its
path (`Staged`); a worker loads it once per process (`resolve`). Local runs embed the values as
they are. Pickles are only ever read from the job's own temporary folder, written by its own
launcher.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import uuid
from typing import Any, Iterator, Sequence

from apache_beam.io.filesystems import FileSystems

CHUNK = 20_000  # items per staged file of a list (cells, table groups)


@dataclasses.dataclass(frozen=True)
class StageTo:
    """Where the launcher stages the plan: `folder` (on Dataflow under --temp_location), and
    whether to write the files (False: a dry run or a size check, which only translate the graph)."""

    folder: str
    write: bool = True


@dataclasses.dataclass(frozen=True)
class Staged:
    """A value the launcher wrote to `path` (a gzipped pickle)."""

    path: str


def stage(value: Any, folder: str, name: str, write: bool = True) -> Staged:
    """Writes `value` under `folder` and returns its handle; `write` False (a dry run) only
    names the file, so the graph can be translated without touching the folder."""
    path = FileSystems.join(folder, f"{name}-{uuid.uuid4().hex[:12]}.pkl.gz")
    if write:
        with FileSystems.create(path) as f:  # .gz: Beam compresses
            f.write(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    return Staged(path)


def stage_chunks(items: Sequence, folder: str, name: str, write: bool = True, chunk: int = CHUNK) -> list[Staged]:
    """A list staged as files of `chunk` items each (at least one file)."""
    return [stage(list(items[i:i + chunk]), folder, f"{name}-{i // chunk:05d}", write)
            for i in range(0, max(len(items), 1), chunk)]


@functools.lru_cache(maxsize=4)
def _load(path: str) -> Any:
    with FileSystems.open(path) as f:
        return pickle.loads(f.read())


def resolve(value: Any) -> Any:
    """The value itself, or what a `Staged` handle names (loaded once per process)."""
    return _load(value.path) if isinstance(value, Staged) else value


def unstage_items(value: Any) -> Iterator:
    """For `beam.FlatMap` over a list's items or its staged chunks: a chunk's items, or the
    item itself."""
    if isinstance(value, Staged):
        yield from resolve(value)
    else:
        yield value
