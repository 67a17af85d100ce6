"""The output folder: where a job may write, and what `--overwrite` may delete.

- `check_output_path(path)`: on the launcher, before anything is fetched or written: a local
  folder must be creatable and writable on a real filesystem (not /proc, /sys, /dev but /dev/shm; not a
  dangling symlink), and a folder that already holds files must be a pixelbeam output (its
  dataset.json, table.json, its runs/ records or the marker of a run that did not finish): pixelbeam never writes
  into, nor replaces, a folder of the user's own files.
`--overwrite` deletes only what pixelbeam recorded writing (pipeline/resume.py `recorded_files`).
"""

from __future__ import annotations

import os

from pixelbeam.pipeline.config import ConfigError
# A folder holding one of them is a pixelbeam output: resume.STATE_FILE, resume.TABLE_STATE_FILE,
# records.RUNNING_FILE and records.RUNS_FOLDER (runs/: a job that recorded itself, then died).
# Spelled out, not imported: `pixelbeam plan` checks the folder without importing Beam (tested).
MARKERS = ("dataset.json", "table.json", "_running.json", "runs")
PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")  # the kernel's: nothing can be written there...
MEMORY_FILESYSTEMS = ("/dev/shm",)  # ...but /dev/shm, a tmpfs (a fast scratch output, e.g. benchmarks)


def check_output_path(path: str) -> None:
    """Raises a one-line ConfigError for an output.path that cannot be written or that holds
    files pixelbeam did not write (module doc); remote paths: only the gs:// extra is checked."""
    if not path.strip():
        raise ConfigError("output.path: is empty; give a folder for the outputs (e.g. out/my_job)")
    if "://" in path:
        scheme = path.split("://", 1)[0]
        if scheme == "gs":
            try:
                import apache_beam.io.gcp.gcsfilesystem  # noqa: F401
                import google.cloud.storage  # noqa: F401
            except ImportError:
                raise ConfigError("output.path: gs:// needs the GCP extra; pip install 'pixelbeam[gcp]'") from None
        return
    real = os.path.realpath(path)
    if any(real == root or real.startswith(root + os.sep) for root in PSEUDO_FILESYSTEMS) and not any(
            real == shm or real.startswith(shm + os.sep) for shm in MEMORY_FILESYSTEMS):
        raise ConfigError(f"output.path: {path!r} is on the kernel's {real.split(os.sep)[1]!r} filesystem, where no "
                          "file can be written; choose another path")
    probe = path
    while not os.path.exists(probe):
        if os.path.islink(probe):
            raise ConfigError(f"output.path: {probe!r} is a symlink to {os.readlink(probe)!r}, which does not "
                              "exist; create its target or choose another path")
        probe = os.path.dirname(probe) or "."
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
        raise ConfigError(f"output.path: {path!r} cannot be written ({probe!r} is not a writable folder); choose another path")
    if probe == path:
        check_not_a_users_folder(path)


def check_not_a_users_folder(path: str) -> None:
    """An existing, non-empty local folder must be a pixelbeam output (module doc)."""
    names = os.listdir(path)
    if names and not any(name in names for name in MARKERS):
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise ConfigError(f"output.path: {path!r} holds files pixelbeam did not write ({shown}); give an empty or "
                          "new folder (pixelbeam never writes among, nor replaces, a folder's own files)")
