"""A run's launcher keeps only what it must of many point regions (issue 17.3). Beam-free.

`pixelbeam run` plans the points as `pixelbeam plan` does (every one read and checked, so bad
input is refused before any request); then, before Beam is imported (~160 MB), `lean_point_job`
replaces the job's point columns with a `PlannedPoints` (transforms/planning/point_plan.py): the
resume digest, the count, and each cell's own point patches, owners and labels. The columns are
freed; the graph stages the PointCells in chunks with the cells (pipeline/graph.py), and a worker
expands the cells of the chunk it reads, exactly as it would have from the whole set.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc

from pixelbeam.pipeline.digest import plan_digest
from pixelbeam.transforms.planning.point_plan import PlannedPoints, lean_sample, plan_point_cells, runs_on_point_cells


def lean_point_job(job, in_place: bool = False):
    """The job with its point columns replaced by their PlannedPoints (module doc), or the job
    itself when its regions are not points planned together (point_plan.runs_on_point_cells).
    `in_place`: the job itself is changed (the caller holds the only reference: the columns are
    freed here), else a changed copy is returned (the caller's job keeps its columns)."""
    if not runs_on_point_cells(job):
        return job
    sample = job.sample
    labels = sample if sample is not None and job.config.sample.label_property else None  # (its dict of labels)
    changes = {"regions": PlannedPoints(len(job.regions), plan_digest(job),
                                        plan_point_cells(job.regions, job.grid, job.cells, labels, job.projected)),
               "sample": lean_sample(sample), "projected": None}
    del sample, labels
    if not in_place:
        return dataclasses.replace(job, **changes)
    job.__dict__.pop("specs", None)  # a cached plan of the columns' patches
    for name, value in changes.items():
        setattr(job, name, value)
    gc.collect()
    release_freed_memory()
    return job


def release_freed_memory() -> None:
    """Hands the heap the columns held back to the system (glibc keeps freed pages of its heap
    for reuse; Beam's import would reuse some, not all); nothing elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
