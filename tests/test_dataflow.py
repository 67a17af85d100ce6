"""Dataflow, offline: every config translates for DataflowRunner (--dry_run=True, through
run_dataflow.sh), the job stages the sdist and the worker requirements, the quota is divided over
every SDK process of the pool, run_dataflow.sh fails early and clearly, and the sdist holds what
the workers import."""

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from pixelbeam.pipeline.config import ConfigError, FetchConfig, load_config
from pixelbeam.pipeline.dataflow import machine_vcpus, plan_workers, sdk_processes, worker_requirements
from pixelbeam.testing.ee_emulator import EmulatorServer
from pixelbeam.testing.ee_emulator.catalog import Catalog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "run_dataflow.sh")
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
DATAFLOW = ["--runner", "DataflowRunner", "--project", "pixelbeam-test", "--region", "us-central1",
            "--temp_location", "gs://pixelbeam-test/temp"]


@pytest.fixture
def sandbox(tmp_path):
    """configs/ copied (so that anything a dry run wrote would land here), data/ linked, and a
    `gcloud` on PATH that records being called and has no credentials."""
    shutil.copytree(os.path.join(ROOT, "configs"), tmp_path / "configs")
    os.symlink(os.path.join(ROOT, "data"), tmp_path / "data")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/gcloud-calls"\nexit "${{FAKE_GCLOUD_EXIT:-1}}"\n')
    gcloud.chmod(0o755)
    settings = ("GOOGLE_APPLICATION_CREDENTIALS", "REGION", "MACHINE_TYPE", "MAX_WORKERS", "ONE_PROCESS_PER_WORKER",
                "SERVICE_ACCOUNT", "SDK_CONTAINER_IMAGE", "JOB_NAME")
    env = {k: v for k, v in os.environ.items() if k not in settings}
    env.update(PATH=os.pathsep.join([str(bin_dir), env.get("PATH", "")]), PYTHON=sys.executable,
               PROJECT="pixelbeam-test", BUCKET="gs://pixelbeam-test-bucket", TF_CPP_MIN_LOG_LEVEL="2")
    return tmp_path, env


def run_script(args, env, cwd):
    return subprocess.run(["bash", SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def is_earth_engine(config_path):
    with open(config_path) as f:
        doc = yaml.safe_load(f)
    sources = [doc["source"]] if "source" in doc else list(doc["layers"].values())  # layers: configs/segmentation.yaml
    return any(src.get("kind") == "earthengine" for src in sources)


@contextlib.contextmanager
def local_stac_api(config_path, tmp):
    """A STAC API config pointed at a local STAC API over the demo catalog, served meanwhile
    (the launcher searches it when the job is planned)."""
    with open(config_path) as f:
        source = yaml.safe_load(f).get("source") or {}  # a layers: config has none
    if source.get("kind") != "stac" or not source.get("url"):
        yield
        return
    from pixelbeam.testing.stac_catalog import make_demo_catalog
    from pixelbeam.testing.stac_server import StacApiServer
    with StacApiServer(make_demo_catalog(str(tmp / "stac-demo"))) as api:
        with open(config_path) as f:
            text = f.read()
        with open(config_path, "w") as f:
            f.write(text.replace(source["url"], api.url))
        yield


@pytest.mark.parametrize("name", [os.path.basename(p) for p in CONFIGS])
def test_every_config_translates_for_dataflow(name, sandbox):
    tmp, env = sandbox
    cfg = str(tmp / "configs" / name)
    args = [cfg, "--dry_run"]
    with EmulatorServer(Catalog.from_file(str(tmp / "configs" / "emulator_catalog.json"))) as emulator, \
            local_stac_api(cfg, tmp):
        if is_earth_engine(cfg):  # the launcher's one band-type probe goes to the emulator
            args += ["--ee_emulator", emulator.url]
        proc = run_script(args, env, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run: DataflowRunner translated the job" in proc.stdout, proc.stdout
    command = proc.stderr.split("run_dataflow.sh: ", 1)[1].splitlines()[0]
    for option in ("--runner DataflowRunner", "--setup_file", "--autoscaling_algorithm=NONE", "--max_num_workers=",
                   "--machine_type=n1-standard-2", "--dry_run=True"):
        assert option in command, option
    assert ("--requirements_file=" in command) == is_earth_engine(cfg)
    assert not os.path.exists(tmp / "out")  # nothing written
    assert not os.path.exists(tmp / "gcloud-calls")  # no credentials asked for


def test_the_dry_run_stages_the_sdist_and_the_worker_requirements(tmp_path):
    import apache_beam as beam
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2
    from pixelbeam.pipeline.cli import use_emulator
    from pixelbeam.pipeline.runner import pipeline_options
    from pixelbeam.pipeline.graph import build_pipeline
    from pixelbeam.pipeline.runner import fetch_settings
    from pixelbeam.pipeline.plan import prepare_job
    config = load_config(os.path.join(ROOT, "configs", "ee_getpixels.yaml"))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(worker_requirements(config)) + "\n")
    catalog = Catalog.from_file(os.path.join(ROOT, "configs", "emulator_catalog.json"))
    with EmulatorServer(catalog) as emulator:
        job = prepare_job(use_emulator(config, emulator.url))
    options = pipeline_options(DATAFLOW + ["--dry_run=True", "--machine_type=n1-standard-4", "--max_num_workers=2",
                                           "--setup_file", os.path.join(ROOT, "setup.py"),
                                           f"--requirements_file={requirements}", "--requirements_cache=skip"])
    pipeline = build_pipeline(job, beam.Pipeline(options=options))
    pipeline.run().wait_until_finish()
    staged = set()
    for env in pipeline.runner.proto_pipeline.components.environments.values():
        for dep in env.dependencies:
            if dep.role_urn == common_urns.artifact_roles.STAGING_TO.urn:
                staged.add(beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dep.role_payload).staged_name)
    assert {"workflow.tar.gz", "requirements.txt"} <= staged, staged
    assert requirements.read_text().startswith("earthengine-api")
    settings = fetch_settings(job, options)  # 2 VMs x 4 vCPUs = 8 SDK processes share 40 slots, 100/s
    assert (settings.max_concurrent, settings.max_requests_per_second) == (5, 12.5)


@pytest.mark.parametrize("machine_type, vcpus", [
    ("n1-standard-1", 1), ("n1-standard-4", 4), ("n2-highmem-16", 16), ("c3-highcpu-22", 22), ("e2-medium", 2),
    ("c4-standard-8-lssd", 8), ("custom-6-23040", 6), ("n2-custom-8-32768", 8), ("n2d-custom-4-65536-ext", 4),
    ("zones/us-central1-a/machineTypes/n1-standard-2", 2)])
def test_machine_vcpus(machine_type, vcpus):
    assert machine_vcpus(machine_type) == vcpus


def dataflow_options(*extra):
    return PipelineOptions(DATAFLOW + list(extra))


def test_the_quota_is_divided_over_every_sdk_process_of_the_pool():
    from pixelbeam.pipeline.runner import worker_count
    assert worker_count(dataflow_options("--max_num_workers=3", "--machine_type=n1-standard-4")) == 12
    assert worker_count(dataflow_options("--max_num_workers=3", "--experiments=no_use_multiple_sdk_containers")) == 3
    assert sdk_processes(dataflow_options("--num_workers=2", "--autoscaling_algorithm=NONE",
                                          "--machine_type=e2-standard-8")) == 16


@pytest.mark.parametrize("extra, field", [
    (["--machine_type=n1-standard-2"], "--max_num_workers"),  # autoscaling could grow past any division
    (["--num_workers=2", "--machine_type=n1-standard-2"], "--max_num_workers"),
    (["--max_num_workers=2"], "--machine_type"),  # processes per VM unknown
    (["--max_num_workers=2", "--machine_type=a2-ultragpu-1g-x"], "--machine_type")])
def test_a_pool_whose_process_count_is_unknown_is_refused(extra, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        sdk_processes(dataflow_options(*extra))


def test_a_pool_with_more_processes_than_request_slots_is_refused_before_anything_runs(tmp_path, capsys):
    from pixelbeam.pipeline.cli import main
    cfg = tmp_path / "demo.yaml"  # fetch.max_concurrent_requests: 8
    cfg.write_text(open(os.path.join(ROOT, "configs", "demo.yaml")).read().replace("../", ROOT + "/"))
    assert main(["run", str(cfg), *DATAFLOW, "--dry_run=True", "--max_num_workers=3",
                 "--machine_type=n1-standard-4"]) == 2
    assert capsys.readouterr().err == ("pixelbeam: error: --max_num_workers: 3 workers x 4 SDK processes each exceed "
                                       "fetch.max_concurrent_requests 8 (every process needs a request slot); use "
                                       "fewer or smaller workers, or raise the limit\n")


def test_a_table_job_gets_the_same_dataflow_checks(tmp_path, capsys):
    from pixelbeam.pipeline.cli import main
    cfg = tmp_path / "point_table.yaml"  # fetch.max_concurrent_requests: 8
    cfg.write_text(open(os.path.join(ROOT, "configs", "point_table.yaml")).read()
                   .replace("../out/point_table", str(tmp_path / "out")).replace("../", ROOT + "/")
                   .replace("point_table_points.geojson", os.path.join(ROOT, "configs", "point_table_points.geojson")))
    assert main(["run", str(cfg), *DATAFLOW, "--dry_run=True", "--max_num_workers=3",
                 "--machine_type=n1-standard-4"]) == 2
    assert "--max_num_workers: 3 workers x 4 SDK processes each exceed" in capsys.readouterr().err
    assert main(["run", str(cfg), *DATAFLOW, "--dry_run=True", "--max_num_workers=2",
                 "--machine_type=n1-standard-2"]) == 0
    out = capsys.readouterr().out
    assert "note: a real run would stop here: output.path:" in out and "is on this machine" in out
    assert not os.path.exists(tmp_path / "out")  # nothing written


@pytest.mark.parametrize("name", ["demo.yaml", "point_table.yaml"])
def test_a_graph_over_dataflows_limit_is_refused_before_anything_is_written(name, tmp_path, capsys, monkeypatch):
    """The planned regions, points and cells travel in the job graph; Dataflow refuses graphs
    over 10 MB. The limit is lowered here so that the bundled configs exceed it."""
    from pixelbeam.pipeline import dataflow
    from pixelbeam.pipeline.cli import main
    cfg = tmp_path / name
    cfg.write_text(open(os.path.join(ROOT, "configs", name)).read()
                   .replace(f"../out/{name[:-5]}", str(tmp_path / "out")).replace("../", ROOT + "/")
                   .replace("point_table_points.geojson", os.path.join(ROOT, "configs", "point_table_points.geojson")))
    options = [*DATAFLOW, "--max_num_workers=2", "--machine_type=n1-standard-2"]
    assert main(["run", str(cfg), *options, "--dry_run=True"]) == 0
    assert "would be" not in capsys.readouterr().out  # the real limit: these graphs are small
    monkeypatch.setattr(dataflow, "GRAPH_LIMIT_BYTES", 20_000)
    assert main(["run", str(cfg), *options, "--dry_run=True"]) == 0
    out = capsys.readouterr().out
    assert "note: a real run would stop here: regions: the job graph would be" in out, out
    monkeypatch.setattr(dataflow, "submission_problems", lambda job: [])  # as if paths were gs://
    assert main(["run", str(cfg), *options]) == 2
    err = capsys.readouterr().err
    assert "regions: the job graph would be" in err and "Dataflow refuses graphs over 0 MB" in err
    assert err.count("\n") == 1 and not os.path.exists(tmp_path / "out")


def test_plan_workers_keeps_every_process_inside_the_fetch_limits():
    fetch = FetchConfig(max_concurrent_requests=40, max_requests_per_second=100)
    plan = plan_workers(fetch, "n1-standard-2")
    assert (plan.workers, plan.processes, plan.max_concurrent, plan.requests_per_second) == (2, 4, 10, 25.0)
    assert plan.beam_options() == ["--machine_type=n1-standard-2", "--num_workers=2", "--max_num_workers=2",
                                   "--autoscaling_algorithm=NONE"]
    for machine, one, workers in [("n1-standard-1", False, None), ("n1-standard-8", False, 5),
                                  ("n2-standard-32", True, 40), ("e2-medium", False, 20)]:
        plan = plan_workers(fetch, machine, one, workers)
        assert plan.processes * plan.max_concurrent <= 40 and plan.max_concurrent >= 1
        assert plan.processes * plan.requests_per_second <= 100 + 1e-9
    assert "--experiments=no_use_multiple_sdk_containers" in plan_workers(fetch, "n1-standard-4", True).beam_options()
    with pytest.raises(ConfigError, match="^MAX_WORKERS: "):
        plan_workers(fetch, "n1-standard-8", max_workers=6)  # 48 processes for 40 slots
    with pytest.raises(ConfigError, match="^fetch.max_concurrent_requests: "):
        plan_workers(FetchConfig(max_concurrent_requests=8), "n1-standard-16")


def test_the_helper_prints_the_options_run_dataflow_sh_adds(tmp_path):
    requirements = tmp_path / "req.txt"
    proc = subprocess.run([sys.executable, "-m", "pixelbeam.pipeline.dataflow", "worker-options",
                           os.path.join(ROOT, "configs", "ee_computepixels.yaml"), "--machine_type", "n1-standard-4",
                           "--requirements_file", str(requirements)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["--machine_type=n1-standard-4", "--num_workers=1", "--max_num_workers=1",
                                   "--autoscaling_algorithm=NONE", f"--requirements_file={requirements}",
                                   "--requirements_cache=skip"]
    assert "4 processes x 10 concurrent requests, 25 requests/s each" in proc.stderr
    assert "no SERVICE_ACCOUNT" in proc.stderr


@pytest.mark.parametrize("unset, value, message", [
    ("PROJECT", None, "PROJECT is not set"),
    ("BUCKET", None, "BUCKET is not set"),
    ("BUCKET", "gs://pixelbeam-test-bucket/some/folder", "BUCKET: 'gs://pixelbeam-test-bucket/some/folder' is not"),
    ("PROJECT", "My Project", "PROJECT: 'My Project' is not a Cloud project id"),
    ("MAX_WORKERS", "lots", "MAX_WORKERS: 'lots' is not a positive whole number")])
def test_run_dataflow_sh_fails_early_on_a_missing_setting(unset, value, message, sandbox):
    tmp, env = sandbox
    env.pop(unset, None)
    if value is not None:
        env[unset] = value
    proc = run_script([str(tmp / "configs" / "demo.yaml")], env, tmp)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"run_dataflow.sh: error: {message}") and proc.stderr.count("\n") == 1, proc.stderr


def test_run_dataflow_sh_needs_credentials_unless_dry_run(sandbox):
    tmp, env = sandbox
    cfg = str(tmp / "configs" / "demo.yaml")
    proc = run_script([cfg], env, tmp)
    assert proc.returncode == 2
    assert "error: no Google credentials: run 'gcloud auth application-default login'" in proc.stderr
    assert "application-default print-access-token" in (tmp / "gcloud-calls").read_text()
    proc = run_script([cfg], {**env, "GOOGLE_APPLICATION_CREDENTIALS": str(tmp / "missing.json")}, tmp)
    assert proc.returncode == 2 and "GOOGLE_APPLICATION_CREDENTIALS: " in proc.stderr
    # with credentials, a config Dataflow workers cannot run is refused before anything is submitted
    proc = run_script([cfg], {**env, "FAKE_GCLOUD_EXIT": "0"}, tmp)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"pixelbeam: error: output.path: '{tmp}/out/demo' is on this machine; "
                                            "Dataflow workers write to gs://BUCKET/PREFIX")
    assert not os.path.exists(tmp / "out")


def test_run_dataflow_sh_help(sandbox):
    tmp, env = sandbox
    proc = run_script(["--help"], env, tmp)
    assert proc.returncode == 0
    for name in ("PROJECT", "BUCKET", "REGION", "SERVICE_ACCOUNT", "MACHINE_TYPE", "MAX_WORKERS", "--dry_run"):
        assert name in proc.stdout


def test_the_sdist_holds_what_the_workers_import(tmp_path):
    """Beam builds the worker package exactly so (`python setup.py sdist` when `build` is not
    installed); workers pip-install it. Installed alone, every module imports from it."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(dist)], cwd=ROOT, check=True,
                   capture_output=True, timeout=600)
    (sdist,) = glob.glob(str(dist / "*.tar.gz"))
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    modules = {os.path.relpath(p, ROOT) for package in PACKAGE_FOLDERS
               for p in glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)}
    assert modules and modules <= names, sorted(modules - names)
    assert {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*"))} <= names
    for cfg in CONFIGS:  # the data the configs name
        config = load_config(cfg)
        local = [config.regions] if isinstance(config.regions, str) else []
        local += list(getattr(config.source, "uris", ()))
        assert {os.path.relpath(p, ROOT) for p in local} <= names, cfg
    assert "run_dataflow.sh" in names and "setup.py" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                    "--target", str(target), sdist], check=True, capture_output=True, timeout=300)
    assert {n for n in os.listdir(target) if not n.endswith(".dist-info")} - {"bin"} == {"pixelbeam"}
    check = ("import importlib, json, pkgutil, pixelbeam\n"
             "mods = [m.name for m in pkgutil.walk_packages(pixelbeam.__path__, 'pixelbeam.')\n"
             "        if not m.name.endswith('__main__')]\n"
             "for m in mods: importlib.import_module(m)\n"
             "print(json.dumps({'pixelbeam': pixelbeam.__file__, 'modules': mods}))\n")
    proc = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["pixelbeam"].startswith(str(target))
    expected = {import_name(m) for m in modules if not m.endswith("__main__.py")} - {"pixelbeam"}
    assert set(result["modules"]) == expected


# Repository folder -> the import name setup.py installs it as (its package_dir).
PACKAGE_FOLDERS = {"pixelbeam": "pixelbeam", "pipeline": "pixelbeam.pipeline", "transforms": "pixelbeam.transforms"}


def import_name(relpath: str) -> str:
    """`transforms/planning/grid.py` -> `pixelbeam.transforms.planning.grid`."""
    folder, _, rest = relpath[:-3].partition(os.sep)
    return ".".join([PACKAGE_FOLDERS[folder]] + ([rest.replace(os.sep, ".")] if rest else [])).removesuffix(".__init__")
