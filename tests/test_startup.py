"""A small job's fixed cost (issue 16 item 5), what it must not change: the collector paused
for the program's imports and restarted whatever the command's end, nothing of it in a caller's
own process, and the pictures' imports started with a local pipeline yet the same pictures."""

import hashlib
import os
import subprocess
import sys

import yaml

from pixelbeam.pipeline import preview
from pixelbeam.pipeline import run as run_module
from pixelbeam.pipeline.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yaml")

# The program's own process (`program=True`, as `pixelbeam` runs): after the command, is the
# collector on, were objects frozen, and did a plan import Beam?
PROGRAM = """
import gc, sys
from pixelbeam.pipeline import cli
code = cli.run_command(sys.argv[1:], program=True)
print(code, gc.isenabled(), gc.get_freeze_count() > 0, "apache_beam" in sys.modules)
"""


def program(*args):
    proc = subprocess.run([sys.executable, "-c", PROGRAM, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    return proc.stdout.strip().splitlines()[-1].split()


def test_a_plan_as_the_program_freezes_its_imports_restarts_the_collector_and_imports_no_beam():
    assert program("plan", DEMO) == ["0", "True", "True", "False"]


def test_a_refused_config_restarts_the_collector(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"source": {"uri": "x.tif"}, "regions": [0, 0, 1, 1], "grid": {"scale": -1}}))
    assert program("plan", str(bad))[:2] == ["2", "True"]
    assert program("run", str(bad))[:2] == ["2", "True"]


def test_main_called_by_a_caller_leaves_its_collector_alone():
    code = "import gc; from pixelbeam.pipeline.cli import main; c = main(['plan', %r]); " \
           "print(c, gc.isenabled(), gc.get_freeze_count())" % DEMO
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.stdout.strip().splitlines()[-1].split() == ["0", "True", "0"]


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_local_run_warms_the_pictures_up_and_draws_the_same_pictures(tmp_path, monkeypatch):
    threads = []
    real = run_module.warm_up_pictures

    def recorded():
        threads.append(real())
        return threads[-1]

    monkeypatch.setattr(run_module, "warm_up_pictures", recorded)
    with open(DEMO) as f:
        doc = yaml.safe_load(f)
    doc["source"]["uri"] = os.path.join(ROOT, "data", "RGB.byte.tif")
    doc["regions"] = os.path.join(ROOT, "data", "regions.geojson")
    doc["output"].update(path=str(tmp_path / "out"), formats=["npy"])
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(doc))
    assert main(["run", str(config)]) == 0
    assert len(threads) == 1 and not threads[0].is_alive()  # started with the pipeline, joined before drawing
    out = tmp_path / "out"
    drawn = {name: sha(out / name) for name in ("preview.png", "footprints.png")}
    for name in drawn:
        os.remove(out / name)
    preview.write_previews(str(out))  # drawn again, cold: no warm-up
    assert {name: sha(out / name) for name in drawn} == drawn
