"""What a user who installs the package gets: the wheel (`pip wheel .`), installed (not
editable) into a fresh virtual environment, runs the bundled demo from another folder, and
installs nothing at top level but `pixelbeam/` and the console script.

The fresh environment takes its dependencies (Beam, rasterio, ...) from this one without
downloading: a .pth file names this environment's site-packages. Site folders added that way
do not run their own .pth files, so the development install's editable finder stays off and
pixelbeam can only come from the wheel (checked).
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "out", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis")


def run(cmd, cwd, env=None):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, bin folder, site-packages) of a fresh venv holding the wheel built from a clean
    copy of the source (no stale build/ can leak in)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE, symlinks=True)
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp / "wheels")], cwd=source)
    (wheel,) = (tmp / "wheels").glob("pixelbeam-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = str(env_dir / "bin" / "python")
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp)
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip()
    shown = run([sys.executable, "-m", "pip", "--python", python, "show", "-f", "pixelbeam"], cwd=tmp).stdout
    # now the dependencies, from this environment (after `pip show`, which then sees one pixelbeam)
    with open(os.path.join(site, "dependencies-from-the-test-env.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return {"python": python, "bin": str(env_dir / "bin"), "site": site, "shown": shown, "tmp": tmp}


def test_the_wheel_installs_only_pixelbeam_and_the_console_script(installed):
    files = installed["shown"].split("Files:", 1)[1].split()
    top = {f.split("/")[0] for f in files if not f.startswith("..")}
    assert top == {"pixelbeam", "pixelbeam-0.1.0.dist-info"}, top
    scripts = [f for f in files if f.startswith("..")]
    assert [os.path.basename(f) for f in scripts] == ["pixelbeam"], scripts
    for data in ("pixelbeam/configs/demo.yaml", "pixelbeam/data/RGB.byte.tif", "pixelbeam/data/regions.geojson",
                 "pixelbeam/py.typed", "pixelbeam/pipeline/api.py", "pixelbeam/transforms/tiling.py"):
        assert data in files


def test_the_installed_demo_runs_from_another_folder(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=os.pathsep.join([installed["bin"], "/usr/bin", "/bin"]), MPLBACKEND="Agg")
    where = run([installed["python"], "-c", "import json, pixelbeam, pixelbeam.pipeline.api as api, "
                 "pixelbeam.transforms.tiling as t; print(json.dumps([pixelbeam.__file__, api.__file__, "
                 "t.__file__, api.DEMO_CONFIG, pixelbeam.__version__]))"], cwd=tmp_path, env=env)
    files = json.loads(where.stdout)
    assert all(f.startswith(installed["site"] + os.sep) for f in files[:4]), files
    assert files[4] == run(["pixelbeam", "--version"], cwd=tmp_path, env=env).stdout.split()[1]

    done = run(["pixelbeam", "demo", "--output", "demo-out"], cwd=tmp_path, env=env)
    assert done.stdout.splitlines()[0].split() == ["planned", "written", "filtered", "failed", "seconds", "patches/s"]
    planned, written, filtered, failed = map(int, done.stdout.splitlines()[1].split()[:4])
    out = tmp_path / "demo-out"
    rows = [json.loads(line) for line in open(out / "manifest.jsonl") if line.strip()]
    assert planned == len(rows) == 55 and failed == 0 and written == sum(r["status"] == "written" for r in rows)
    meta = json.load(open(out / "dataset.json"))
    assert meta["config"]["source"]["uri"].startswith(installed["site"])  # the installed copy of the raster
    npy = [f for r in rows if r["status"] == "written" for f in r["files"] if f.endswith(".npy")]
    assert len(npy) == written and np.load(out / npy[0]).shape == (3, 64, 64)
    assert (out / "preview.png").exists() and list((out / "tfrecord").glob("patches-*.tfrecord.gz"))
    again = run(["pixelbeam", "demo", "--output", "demo-out"], cwd=tmp_path, env=env)
    assert again.stdout.startswith("nothing to do: all 55 planned patches are done")
    assert sorted(os.listdir(installed["site"] + "/pixelbeam/data")) == ["README.md", "RGB.byte.tif", "regions.geojson"]
