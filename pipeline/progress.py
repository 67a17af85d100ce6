"""A live progress bar for local runs: patches done / to do, patches/s, ETA, retries, 429s.

It reads what the fetch workers report (transforms/fetching/progress.py) twice a second and draws a
`rich` progress bar on stderr when stderr is a terminal (quiet in CI, logs and pipes), or in a
Jupyter notebook as a widget updated in place (with ipywidgets, `pip install
'pixelbeam[notebook]'`; without it, no bar).
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
import threading
from typing import Iterator, Optional

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from pixelbeam.transforms.fetching.progress import read_progress


def is_local(runner: Optional[str]) -> bool:
    return (runner or "").lower() in ("fnapirunner", "directrunner", "")


@contextlib.contextmanager
def progress_bar(total: int, enabled: Optional[bool] = None, poll_s: float = 0.5,
                 unit: str = "patches") -> Iterator[Optional[str]]:
    """Yields the folder workers report to (None when the bar is off) and draws the bar until
    the block ends. `enabled` None means: when stderr is a terminal, or in Jupyter with
    ipywidgets; `unit` names what is fetched (patches, or a table's groups)."""
    console = Console(stderr=True)
    if enabled is None:
        enabled = console.is_terminal or (console.is_jupyter and importlib.util.find_spec("ipywidgets") is not None)
    if not enabled:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="pixelbeam-progress-") as directory:
        stop = threading.Event()
        columns = (TextColumn("fetch"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                   TextColumn(f"{{task.fields[rate]:.1f}} {unit}/s"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), TextColumn("retries {task.fields[retries]}  429s {task.fields[quota]}"
                                                     "  failed {task.fields[failed]}"))
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("fetch", total=total, rate=0.0, retries=0, quota=0, failed=0)

            def refresh():
                totals = read_progress(directory)
                elapsed = bar.tasks[0].elapsed or 0.0
                bar.update(task, completed=totals["done"], retries=totals["retries"], quota=totals["quota_errors"],
                           failed=totals["failed"], rate=totals["done"] / elapsed if elapsed else 0.0)

            def poll():
                while not stop.wait(poll_s):
                    refresh()

            thread = threading.Thread(target=poll, name="pixelbeam-progress", daemon=True)
            thread.start()
            try:
                yield directory
            finally:
                stop.set()
                thread.join()
                refresh()
                bar.refresh()  # Jupyter: rich draws no final frame of its own when it stops
