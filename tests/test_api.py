"""The Python API (`import pixelbeam`): run, plan, open_output, ConfigError.field, both job kinds,
the lazy import, and a user folder holding its own pipeline.py and transforms.py."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

import pixelbeam
from pixelbeam.pipeline.cli import main
from pixelbeam.pipeline.config import Config
from pixelbeam.pipeline.config.base import SECTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")


def demo_doc(output):
    with open(os.path.join(ROOT, "configs", "demo.yaml")) as f:
        doc = yaml.safe_load(f)
    doc["source"]["uri"], doc["regions"], doc["output"]["path"] = LANDSAT, REGIONS, output
    return doc


def manifest(path):
    return [json.loads(line) for line in open(os.path.join(path, "manifest.jsonl")) if line.strip()]


def test_a_dict_config_runs_with_paths_against_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = demo_doc("out/api")
    doc["source"]["uri"] = os.path.relpath(LANDSAT, tmp_path)  # relative: against the current folder
    result = pixelbeam.run(doc)
    out = str(tmp_path / "out" / "api")
    rows = manifest(out)
    assert result.output_path == out and result.ok and result.exit_code == 0 and result.submitted
    status = {s: sum(r["status"] == s for r in rows) for s in ("written", "filtered", "failed")}
    assert (result.planned, result.written, result.filtered, result.failed) == (
        len(rows), status["written"], status["filtered"], status["failed"])
    assert result.unit == "patches" and result.seconds > 0 and result.carried == 0
    assert result.requests.requests == len(rows) and result.requests.bytes == result.counters["bytes"] > 0
    text = str(result).splitlines()
    assert text[0].split() == ["planned", "written", "filtered", "failed", "seconds", "patches/s"]
    assert text[1].split()[:4] == [str(len(rows)), str(status["written"]), str(status["filtered"]), "0"]
    assert text[2].startswith(f"requests {len(rows)} | retries 0 | 429s 0")
    assert text[2].endswith(f"| fetched bytes {result.requests.bytes}")  # not the plan's output bytes
    assert text[3] == f"pictures: preview.png, footprints.png in {out}"
    html = result._repr_html_()
    assert f"<td>{len(rows)}</td><td>{status['written']}</td>" in html and "<th>patches/s</th>" in html

    again = pixelbeam.run(doc)  # resumes: nothing left to do
    assert again.ok and again.carried == len(rows) and again.written == status["written"]
    assert str(again) == f"nothing to do: all {len(rows)} planned patches are done in {out} (--overwrite redoes them)"


def test_run_takes_a_yaml_path_or_a_config_and_prints_as_the_cli_does(tmp_path, capsys):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(demo_doc("out")))  # relative to the file's folder
    assert main(["run", str(cfg)]) == 0
    cli_lines = capsys.readouterr().out.splitlines()
    config = pixelbeam.Config.model_validate(demo_doc(str(tmp_path / "out")))
    assert isinstance(config, Config)
    result = pixelbeam.run(config, overwrite=True)
    assert result.output_path == str(tmp_path / "out") and result.ok
    same = lambda lines: [line.split()[:4] if i < 2 else line for i, line in enumerate(lines) if "thread-s" not in line]
    assert same(str(result).splitlines()) == same(cli_lines)
    assert str(pixelbeam.run(str(cfg))).startswith("nothing to do")


def test_plan_is_what_the_plan_command_prints(tmp_path, capsys):
    doc = demo_doc(str(tmp_path / "out"))
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["plan", str(cfg), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    plan = pixelbeam.plan(doc)
    assert dict(plan.summary) == printed
    assert (plan.patches, plan.requests, plan.output_bytes, plan.bands) == (
        printed["patches"], printed["requests"], printed["output_bytes"], printed["bands"])
    assert "bytes" not in printed and "fetched bytes" not in str(plan)  # output, not fetched, bytes
    assert plan.planned == plan.patches and plan.unit == "patches" and plan.output_path == str(tmp_path / "out")
    assert main(["plan", str(cfg)]) == 0
    assert str(plan) == capsys.readouterr().out.rstrip("\n")
    specs = list(plan.specs())
    assert len(specs) == plan.patches == len({s.patch_id for s in specs})
    assert sorted(s.patch_id for s in specs) == sorted(s.patch_id for s in plan.job.specs)
    with pytest.raises(AttributeError, match="the plan has patches, regions"):
        plan.no_such_key
    assert not os.path.exists(tmp_path / "out")  # planning writes nothing


def test_open_output_reads_dataset_json_and_the_manifest(tmp_path):
    result = pixelbeam.run(demo_doc(str(tmp_path / "out")))
    output = pixelbeam.open_output(tmp_path / "out")
    assert output.dataset == json.load(open(tmp_path / "out" / "dataset.json"))
    assert output.planned == result.planned and output.bands == ["B1", "B2", "B3"] and output.unit == "patches"
    table = output.manifest()
    rows = manifest(str(tmp_path / "out"))
    assert table.num_rows == len(rows) and table.column("patch_id").to_pylist() == [r["patch_id"] for r in rows]
    assert {"patch_id", "status", "files", "bounds_lonlat", "valid_fraction"} <= set(table.column_names)
    assert list(output.manifest_rows()) == rows
    assert output.counts() == {"written": result.written, "filtered": result.filtered, "failed": 0}
    assert list(output.failures()) == [] and output.preview == str(tmp_path / "out" / "preview.png")
    with pytest.raises(ValueError, match="not a point table"):
        output.table()
    with pytest.raises(FileNotFoundError, match="no dataset.json or table.json"):
        pixelbeam.open_output(tmp_path)


def test_a_point_table_runs_through_the_api_with_row_counts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = {"source": {"uri": [LANDSAT]}, "regions": os.path.join(ROOT, "configs", "point_table_points.geojson"),
           "output": {"path": "out/table"},
           "table": {"times": ["2001-01-01"], "formats": ["parquet"], "point_id_property": "name"}}
    plan = pixelbeam.plan(doc)
    assert plan.unit == "rows" and plan.planned == plan.rows > 0 and plan.groups == len(list(plan.specs()))
    result = pixelbeam.run(doc)
    meta = json.load(open(tmp_path / "out" / "table" / "table.json"))
    assert result.ok and result.unit == "rows" and result.output_path == str(tmp_path / "out" / "table")
    assert (result.planned, result.written, result.failed) == (meta["planned_rows"], meta["rows"], meta["failed_rows"])
    assert result.details["groups_fetched"] == plan.groups and result.requests.requests > 0
    assert str(result).startswith(f"rows {meta['rows']} of {meta['planned_rows']} planned | failed 0")
    assert "<th>rows/s</th>" in result._repr_html_() and "<th>filtered</th>" not in result._repr_html_()
    output = pixelbeam.open_output("out/table")
    assert output.unit == "rows" and output.planned == result.planned and output.table().num_rows == result.written
    assert output.counts() == {"written": result.written, "failed": 0}
    with pytest.raises(ValueError, match="no manifest.jsonl"):
        output.manifest()
    again = pixelbeam.run(doc)
    assert again.ok and again.carried == result.planned and str(again).startswith("nothing to do")


def test_bad_config_raises_config_error_naming_the_field(tmp_path, capsys):
    doc = demo_doc(str(tmp_path / "out"))
    doc["grid"]["patch_size"] = "big"
    with pytest.raises(pixelbeam.ConfigError) as e:
        pixelbeam.run(doc)
    assert e.value.field == "grid.patch_size" and "\n" not in str(e.value)
    assert str(e.value).startswith("config: grid.patch_size: give pixels as an int")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["run", str(cfg)]) == 2
    assert capsys.readouterr().err == f"pixelbeam: error: {str(e.value).replace('config:', 'bad.yaml:', 1)}\n"
    doc = demo_doc(str(tmp_path / "out"))
    doc["grid"]["crs"] = "EPSG:99999999"
    with pytest.raises(pixelbeam.ConfigError) as e:
        pixelbeam.plan(doc)
    assert e.value.field == "grid.crs"
    with pytest.raises(pixelbeam.ConfigError) as e:
        pixelbeam.plan(str(tmp_path / "source.yaml"))  # a file named like a field is not a field
    assert e.value.field is None and "no such config file" in str(e.value)
    with pytest.raises(pixelbeam.ConfigError) as e:
        pixelbeam.run(demo_doc(str(tmp_path / "out")), beam_args=["--runner", "DataflowRunner", "--dry_run"])
    assert e.value.field and e.value.field.startswith("--")
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(TypeError, match="a YAML path, a dict or a pixelbeam.Config"):
        pixelbeam.plan(42)


def test_config_error_sections_are_the_configs_keys():
    assert set(SECTIONS) == set(Config.model_fields)


def test_import_pixelbeam_and_version_and_help_load_no_heavy_library(tmp_path):
    heavy = ("apache_beam", "tensorflow", "torch", "matplotlib")
    check = ("import sys, pixelbeam\n"
             "print(pixelbeam.__version__, [m for m in %r if m in sys.modules])\n"
             "pixelbeam.NpyPatchDataset, pixelbeam.run\n"
             "print([m for m in ('torch', 'apache_beam') if m in sys.modules])\n" % (heavy,))
    proc = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{pixelbeam.__version__} []", "['torch']"]
    for args in (["--version"], ["--help"], ["run", "--help"]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pixelbeam", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0
        loaded = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
        assert loaded and not loaded & set(heavy), (args, loaded & set(heavy))
    assert "[--overwrite]" in proc.stdout and f"pixelbeam {pixelbeam.__version__}" == subprocess.run(
        [sys.executable, "-m", "pixelbeam", "--version"], capture_output=True, text=True, timeout=300).stdout.strip()
    assert set(pixelbeam.__all__) <= set(dir(pixelbeam))
    with pytest.raises(AttributeError):
        pixelbeam.no_such_name


def test_a_user_folder_with_its_own_pipeline_and_transforms_modules(tmp_path):
    """Before the single import name, a user's pipeline.py or transforms.py shadowed ours."""
    (tmp_path / "pipeline.py").write_text("raise ImportError('the user pipeline.py was imported')\n")
    (tmp_path / "transforms.py").write_text("raise ImportError('the user transforms.py was imported')\n")
    (tmp_path / "train.py").write_text(textwrap.dedent("""
        import pixelbeam, pixelbeam.beam, torch
        result = pixelbeam.run(pixelbeam.demo_config("out"))
        assert result.ok, result.problem
        loader = torch.utils.data.DataLoader(pixelbeam.NpyPatchDataset("out"), batch_size=4)
        batch = next(iter(loader))
        print(result.written, tuple(batch["image"].shape), pixelbeam.open_output("out").counts()["written"])
        """))
    proc = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sum(r["status"] == "written" for r in manifest(str(tmp_path / "out")))
    assert proc.stdout.split() == [str(written), "(4,", "3,", "64,", "64)", str(written)]


def test_plan_loads_no_heavy_library(tmp_path):
    """`pixelbeam plan` plans on the launcher without Beam, matplotlib, TensorFlow or torch (issue 16)."""
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(demo_doc(str(tmp_path / "out"))))
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pixelbeam", "plan", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "patches:" in proc.stdout
    loaded = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "rasterio" in loaded and not loaded & {"apache_beam", "tensorflow", "torch", "matplotlib"}
