"""Every ```sh and ```python block of docs/*.md runs, in order, in a fresh sandbox.

A sandbox is a temporary folder laid out like the repository (configs/ copied, data/ linked)
with a `pixelbeam` command on PATH, so the blocks run as a user types them from the repository
root. A block right after a `<!-- docs-test: skip (...) -->` line is not run (e.g. it needs
Earth Engine credentials). Docs other than the tour start from a finished `make demo` output.
The emulator's port 8765 is replaced by a free one, and background jobs are killed after
each block. Also checks that docs/outputs.md names every key the outputs actually carry.
"""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
SKIP_MARK = "<!-- docs-test: skip"
STARTS_FROM_SCRATCH = {"tour.md"}
BLOCK_TIMEOUT_S = 300


def code_blocks(path):
    """[(line number, language, code, skipped)] of the ```sh / ```python blocks of a markdown file."""
    blocks, lines = [], open(path, encoding="utf-8").read().splitlines()
    i, previous = 0, ""
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            lang, start, body = line[3:].strip(), i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if lang in ("sh", "python"):
                blocks.append((start, lang, "\n".join(body) + "\n", previous.startswith(SKIP_MARK)))
        elif line.strip():
            previous = line.strip()
        i += 1
    return blocks


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_sandbox(tmp_path):
    box = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "configs"), box / "configs")
    os.symlink(os.path.join(ROOT, "data"), box / "data")
    os.makedirs(box / "bin")
    shim = box / "bin" / "pixelbeam"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pixelbeam "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": os.pathsep.join([str(box / "bin"), os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    return str(box), env


def use_free_stac_port(cwd):
    """The local STAC API's port 8766 (configs/stac_s2_l2a.yaml and the tour) replaced by a free
    one in the sandbox's configs; returns it, for the blocks."""
    port = free_port()
    for name in glob.glob(os.path.join(cwd, "configs", "*.yaml")):
        text = open(name, encoding="utf-8").read()
        if "127.0.0.1:8766" in text:
            open(name, "w", encoding="utf-8").write(text.replace("127.0.0.1:8766", f"127.0.0.1:{port}"))
    return port


def run_block(lang, code, cwd, env, port):
    if lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + code.replace("8765", str(port))
        cmd = ["bash", "-c", script]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)


def test_docs_exist_with_runnable_examples():
    names = {os.path.basename(p) for p in DOCS}
    assert {"tour.md", "outputs.md", "troubleshooting.md"} <= names
    for path in DOCS:
        assert any(not skipped for *_, skipped in code_blocks(path)), f"{path} has no runnable example"


@pytest.mark.parametrize("path", DOCS, ids=[os.path.basename(p) for p in DOCS])
def test_every_example_runs(path, tmp_path):
    cwd, env = make_sandbox(tmp_path)
    port = free_port()
    stac_port = use_free_stac_port(cwd)
    if os.path.basename(path) not in STARTS_FROM_SCRATCH:
        done = run_block("sh", "pixelbeam run configs/demo.yaml\n", cwd, env, port)
        assert done.returncode == 0, done.stderr[-3000:]
    ran = 0
    for line, lang, code, skipped in code_blocks(path):
        if skipped:
            continue
        proc = run_block(lang, code.replace("8766", str(stac_port)), cwd, env, port)
        assert proc.returncode == 0, (f"{os.path.basename(path)}:{line} ```{lang} block failed "
                                      f"(exit {proc.returncode}):\n{code}\n--- stdout\n{proc.stdout[-3000:]}"
                                      f"\n--- stderr\n{proc.stderr[-3000:]}")
        ran += 1
    assert ran
    if os.path.basename(path) == "tour.md":  # what the tour says it produced
        for name in ("out/demo/preview.png", "out/demo/footprints.png", "out/demo-plan.geojson",
                     "out/ee_getpixels/preview.png", "out/ee_getpixels/manifest.jsonl"):
            assert os.path.exists(os.path.join(cwd, name)), name


def test_readme_python_examples_run(tmp_path):
    """The README's Python blocks run after `make demo`'s job (its sh blocks are set-up commands)."""
    cwd, env = make_sandbox(tmp_path)
    done = run_block("sh", "pixelbeam run configs/demo.yaml\n", cwd, env, free_port())
    assert done.returncode == 0, done.stderr[-3000:]
    blocks = [b for b in code_blocks(os.path.join(ROOT, "README.md")) if b[1] == "python"]
    assert blocks
    for line, lang, code, skipped in blocks:
        proc = run_block(lang, code, cwd, env, free_port())
        assert proc.returncode == 0, f"README.md:{line}: {proc.stderr[-3000:]}"
        assert "(8, 3, 64, 64) (8, 64, 64, 3) (8, 64, 64)" in proc.stdout


def test_outputs_reference_names_every_key(tmp_path):
    """docs/outputs.md mentions (in backticks) every dataset.json key, manifest key, TFRecord
    feature and failed.jsonl key that a real run writes."""
    from pixelbeam.pipeline.cli import main
    import yaml
    with open(os.path.join(ROOT, "configs", "demo.yaml")) as f:
        doc = yaml.safe_load(f)
    doc["source"]["uri"] = os.path.join(ROOT, "data", "RGB.byte.tif")
    doc["regions"] = os.path.join(ROOT, "data", "regions.geojson")
    doc["output"]["path"] = str(tmp_path / "out")
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["run", str(cfg)]) == 0
    out = str(tmp_path / "out")
    meta = json.load(open(os.path.join(out, "dataset.json")))
    row = json.loads(open(os.path.join(out, "manifest.jsonl")).readline())
    from pixelbeam.transforms.patch import FailedPatch, PatchSpec
    failed_keys = FailedPatch(PatchSpec("p", "r", "EPSG:4326", (1, 0, 0, 0, -1, 0), 1, 1), "fetch", "E", "m").to_record()
    text = open(os.path.join(ROOT, "docs", "outputs.md"), encoding="utf-8").read()
    features = [k for k, v in meta["tfrecord"]["features"].items() if v["role"] != "band"]
    missing = [k for k in [*meta, *row, *features, *failed_keys, *meta["tfrecord"]] if f"`{k}`" not in text]
    assert not missing, f"docs/outputs.md does not describe {missing}; add them to its tables"


def readme_config_block():
    """The README's reference config block (the first ```yaml block under "## Config"), parsed."""
    import yaml
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index("```yaml\n", text.index("\n## Config\n")) + len("```yaml\n")
    block = text[start:text.index("```", start)]
    return yaml.safe_load(block), block


def test_readme_config_block_shows_the_true_defaults():
    """Every key the README's config block gives, except those it marks required (no default),
    has the value pixelbeam uses when the key is left out."""
    from pixelbeam.pipeline.config import FetchConfig, GridConfig, MaskConfig, OutputConfig, SampleConfig
    from pixelbeam.pipeline.config.sources import RasterSourceConfig
    doc, block = readme_config_block()
    required = {line.split(":")[0].strip() for line in block.splitlines() if "# required" in line}
    assert required == {"uri", "regions", "path"}, required
    defaults = {"source": RasterSourceConfig(uri="x"), "grid": GridConfig(), "output": OutputConfig(path="x"),
                "fetch": FetchConfig(), "mask": MaskConfig(), "sample": SampleConfig()}
    checked = 0
    for section, model in defaults.items():
        for key, shown in doc[section].items():
            if key in required:
                continue
            actual = getattr(model, key)
            actual = list(actual) if isinstance(actual, tuple) else actual
            assert shown == actual, f"README config block: {section}.{key} shows {shown!r}; the default is {actual!r}"
            checked += 1
    assert doc["split"] is None and checked >= 30
