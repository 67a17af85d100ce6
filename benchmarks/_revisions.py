"""The code of an earlier git revision beside the current one, for before/after in one run
(startup.py and ee_throughput.py `--before REV`)."""

from __future__ import annotations

import os
import subprocess

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
