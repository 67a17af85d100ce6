"""The code of an earlier git revision beside the current one, for before/after in one run
(startup.py, ee_throughput.py, plan_scale.py and scale_job.py `--before REV`)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkout(rev: str, folder: str) -> str:
    """The tree of git revision `rev` under `folder`, laid out as the installed package is (as
    plan_scale.py's); `python -m pixelbeam` started with this folder as its current directory
    imports pixelbeam from it (the current directory comes before the editable install's finder)."""
    root = os.path.join(folder, f"rev-{rev}")
    os.makedirs(root)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", root], input=archive, check=True)
    for name in ("pipeline", "transforms"):
        os.symlink(os.path.join("..", name), os.path.join(root, "pixelbeam", name))
    return root


def use_checkout(root: str) -> None:
    """Import pixelbeam from `root` (a checkout made by `checkout`), not from the editable
    install, in this process (a child started for the old code)."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower()
                        and "editable" not in type(f).__module__.lower()]
    sys.path.insert(0, root)
