"""What a run returns (`pixelbeam.run`, and `pixelbeam run` prints): `RunResult`, the counts of a
patch job or a point table, the request counters, and the summary lines as the CLI prints them.
Beam-free; built by pipeline/run.py and pipeline/tables/run.py."""

from __future__ import annotations

import dataclasses
import html
from typing import Mapping, Optional

PATCHES, ROWS = "patches", "rows"  # what a job plans: patches, or a point table's rows


@dataclasses.dataclass(frozen=True)
class Requests:
    """The pixel requests of a run, from the fetch workers' Beam counters."""

    requests: int = 0  # requests sent (each attempt counts)
    retries: int = 0  # attempts after the first, every cause
    quota_errors: int = 0  # HTTP 429 answers
    throttled_s: float = 0.0  # thread-seconds waited for the throttler or in retry backoff
    bytes: int = 0  # pixel bytes received

    @classmethod
    def from_counters(cls, counters: Mapping[str, int]) -> "Requests":
        return cls(requests=counters.get("requests", 0),
                   retries=sum(v for k, v in counters.items() if k.startswith("retries_")),
                   quota_errors=counters.get("quota_errors", 0),
                   throttled_s=counters.get("throttling-msecs", 0) / 1000, bytes=counters.get("bytes", 0))


@dataclasses.dataclass(frozen=True)
class RunResult:
    """The outcome of `pixelbeam.run`: counts of what was planned (`unit`: patches, or a point
    table's rows) and how each ended, wall time, requests, and the summary `pixelbeam run`
    prints (`str(result)`; a table in Jupyter). `ok` is False when more than
    `max_failed_fraction` of the plan failed or the outputs do not account for every planned
    patch (or row): `pixelbeam run` then exits 1."""

    output_path: str
    planned: int
    written: int = 0
    filtered: int = 0  # patches over output.max_masked_ratio (a table filters nothing)
    failed: int = 0
    seconds: float = 0.0  # wall time of the Beam job
    requests: Requests = Requests()
    unit: str = PATCHES
    carried: int = 0  # done by earlier runs of the same config, kept, not fetched again
    complete: bool = True  # the outputs account for every planned patch (row) exactly once
    submitted: bool = True  # False for a Dataflow dry run (--dry_run): nothing ran
    counters: Mapping[str, int] = dataclasses.field(default_factory=dict)  # every Beam counter, by name
    details: Mapping[str, int] = dataclasses.field(default_factory=dict)  # a table: images, pixels, values, groups
    lines: tuple[str, ...] = ()  # the summary, as `pixelbeam run` prints it on stdout
    problem: Optional[str] = None  # why the run is not ok, as `pixelbeam run` prints it on stderr

    @property
    def ok(self) -> bool:
        return self.complete and self.problem is None

    @property
    def exit_code(self) -> int:
        """`pixelbeam run`'s exit status for this result: 0 ok, else 1."""
        return 0 if self.ok else 1

    def __str__(self) -> str:
        return "\n".join(self.lines)

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython's text display
        printer.text(str(self))

    def _repr_html_(self) -> str:
        """The summary as an HTML table (Jupyter), with the lines that follow it."""
        rate = (self.written + self.filtered + self.failed - self.carried) / self.seconds if self.seconds > 0 else 0.0
        cells = {"planned": self.planned, "written": self.written, "filtered": self.filtered, "failed": self.failed,
                 "seconds": f"{self.seconds:.1f}", f"{self.unit}/s": f"{rate:.1f}"}
        if self.unit == ROWS:
            cells.pop("filtered")
        head = "".join(f"<th>{html.escape(k)}</th>" for k in cells)
        row = "".join(f"<td>{html.escape(str(v))}</td>" for v in cells.values())
        notes = self.lines[2:] if self.lines and self.lines[0].split()[:1] == ["planned"] else self.lines
        if not self.submitted:
            head = row = ""
        note = f"<pre>{html.escape(chr(10).join(notes))}</pre>" if notes else ""
        problem = f"<p><b>{html.escape(self.problem)}</b></p>" if self.problem else ""
        table = f"<table><tr>{head}</tr><tr>{row}</tr></table>" if head else ""
        return f'<div class="pixelbeam-run">{table}{note}{problem}</div>'
