"""The Flex Template under dataflow/, offline (issue 19): metadata.json holds only the fields
Dataflow documents for template metadata and its parameters, every parameter is one the entry
point or Beam understands, the entry point with the template's parameters translates the job
(--dry_run), the Dockerfile installs exactly what setup.py declares on the Beam SDK image that
setup.py pins, and `run_dataflow.sh --template` launches it with the derived worker options."""

import json
import os
import re
import shlex

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from pixelbeam.pipeline import template
from tests.test_dataflow import run_script, sandbox  # noqa: F401  (fixture: configs/, a fake gcloud)
from tests.test_gcs import BUCKET, gcs  # noqa: F401  (the Cloud Storage emulator fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, "dataflow")
# Dataflow's template metadata (docs: "Flex Templates: metadata parameters"; the API's
# TemplateMetadata and ParameterMetadata messages, v1b3).
METADATA_FIELDS = {"name": str, "description": str, "streaming": bool, "supportsAtLeastOnce": bool,
                   "supportsExactlyOnce": bool, "defaultStreamingMode": str, "parameters": list}
PARAMETER_FIELDS = {"name": str, "label": str, "helpText": str, "isOptional": bool, "regexes": list,
                    "paramType": str, "customMetadata": dict, "groupName": str, "parentName": str,
                    "parentTriggerValues": list, "enumOptions": list, "defaultValue": str, "hiddenUi": bool}
PARAM_TYPES = {"DEFAULT", "TEXT", "GCS_READ_BUCKET", "GCS_WRITE_BUCKET", "GCS_READ_FILE", "GCS_WRITE_FILE",
               "GCS_READ_FOLDER", "GCS_WRITE_FOLDER", "PUBSUB_TOPIC", "PUBSUB_SUBSCRIPTION", "BIGQUERY_TABLE",
               "JAVASCRIPT_UDF_FILE", "SERVICE_ACCOUNT", "MACHINE_TYPE", "KMS_KEY_NAME", "WORKER_REGION",
               "WORKER_ZONE", "BOOLEAN", "ENUM", "NUMBER", "KAFKA_TOPIC", "KAFKA_READ_TOPIC", "KAFKA_WRITE_TOPIC"}
DRY_RUN = ["--runner=DataflowRunner", "--project=pixelbeam-test", "--region=us-central1",
           "--temp_location=gs://pixelbeam-test/temp", "--dry_run=True"]
# What run_dataflow.sh --template passes for configs/demo.yaml with the default MACHINE_TYPE
WORKER_PARAMETERS = ["--machine_type=n1-standard-2", "--num_workers=1", "--max_num_workers=1",
                     "--autoscaling_algorithm=NONE"]


def metadata():
    with open(os.path.join(FOLDER, "metadata.json"), encoding="utf-8") as f:
        return json.load(f)


def setup_py():
    import setuptools  # noqa: F401  (distutils on every Python version)
    from distutils.core import run_setup
    return run_setup(os.path.join(ROOT, "setup.py"), stop_after="init")


def test_metadata_holds_only_the_fields_dataflow_documents():
    doc = metadata()
    assert set(doc) <= set(METADATA_FIELDS) and {"name", "parameters"} <= set(doc)
    for key, value in doc.items():
        assert isinstance(value, METADATA_FIELDS[key]), key
    assert doc["streaming"] is False  # a batch job
    names = [p["name"] for p in doc["parameters"]]
    assert len(names) == len(set(names))
    for p in doc["parameters"]:
        assert set(p) <= set(PARAMETER_FIELDS) and {"name", "label", "helpText"} <= set(p), p
        for key, value in p.items():
            assert isinstance(value, PARAMETER_FIELDS[key]), (p["name"], key)
        assert re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_]*", p["name"])
        assert p.get("paramType", "DEFAULT") in PARAM_TYPES
        for regex in p.get("regexes", []):
            re.compile(regex)


def test_every_parameter_is_one_the_entry_point_or_beam_understands():
    beam_options = set(PipelineOptions([]).get_all_options(retain_unknown_options=False))
    own = {"config", "overwrite", "max_failed_fraction"}  # pixelbeam/pipeline/template.py
    for p in metadata()["parameters"]:
        assert p["name"] in own or p["name"] in beam_options, p["name"]
    required = {p["name"] for p in metadata()["parameters"] if not p.get("isOptional")}
    assert required == {"config", "machine_type", "max_num_workers"}  # what a Dataflow run of pixelbeam needs


def test_the_parameters_run_dataflow_sh_passes_match_their_regexes():
    regexes = {p["name"]: p.get("regexes", []) for p in metadata()["parameters"]}
    for option in WORKER_PARAMETERS + ["--overwrite=true", "--max_failed_fraction=0.05"]:
        name, value = option[2:].split("=", 1)
        assert all(re.fullmatch(r, value) for r in regexes[name]), option
    assert not any(re.fullmatch(r, "maybe") for r in regexes["overwrite"])


def demo_yaml(out="gs://pixelbeam-test/out/demo"):
    """configs/demo.yaml as YAML text with absolute data paths and a gs:// output."""
    with open(os.path.join(ROOT, "configs", "demo.yaml"), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    doc["source"]["uri"] = os.path.join(ROOT, "data", "RGB.byte.tif")
    doc["regions"] = os.path.join(ROOT, "data", "regions.geojson")
    doc["output"]["path"] = out
    return yaml.safe_dump(doc)


def test_the_entry_point_translates_the_job_from_inline_yaml(capsys):
    assert template.main([f"--config={demo_yaml()}", *DRY_RUN, *WORKER_PARAMETERS]) == 0
    assert "dry run: DataflowRunner translated the job" in capsys.readouterr().out


def test_the_entry_point_reads_a_gs_config_and_maps_overwrite(gcs, monkeypatch, capsys):
    gcs.bucket(BUCKET).blob("jobs/demo.yaml").upload_from_string(demo_yaml())
    seen = []
    monkeypatch.setattr("pixelbeam.pipeline.cli.main", lambda argv: seen.append(list(argv)) or 0)
    assert template.main([f"--config=gs://{BUCKET}/jobs/demo.yaml", "--overwrite=true", *DRY_RUN]) == 0
    (argv,) = seen
    assert argv[0] == "run" and argv[-1] == "--overwrite" and "--runner=DataflowRunner" in argv
    with pytest.raises(SystemExit, match="--overwrite: 'maybe' is not true or false"):
        template.main([f"--config=gs://{BUCKET}/jobs/demo.yaml", "--overwrite=maybe"])
    assert template.main([f"--config=gs://{BUCKET}/jobs/missing.yaml"]) == 2
    assert "--config: cannot read" in capsys.readouterr().err


def dockerfile():
    """(FROM image, [RUN commands], [COPY sources], {ENV name: value}) of dataflow/Dockerfile."""
    with open(os.path.join(FOLDER, "Dockerfile"), encoding="utf-8") as f:
        text = re.sub(r"\\\n\s*", " ", f.read())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    runs = [line[4:] for line in lines if line.startswith("RUN ")]
    copies = [shlex.split(line)[1:-1] for line in lines if line.startswith("COPY ") and "--from=" not in line]
    env = dict(re.match(r'ENV (\w+)="?([^"]*)"?', line).groups() for line in lines if line.startswith("ENV "))
    args = dict(re.match(r"ARG (\w+)=(\S+)", line).groups() for line in lines if line.startswith("ARG "))
    env = {k: re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], v) for k, v in env.items()}
    return froms, runs, [s for c in copies for s in c], env


def test_the_dockerfile_installs_what_setup_py_declares_on_the_beam_image_it_pins():
    froms, runs, copied, env = dockerfile()
    dist = setup_py()
    (image,) = froms
    found = re.fullmatch(r"apache/beam_python(\d+)\.(\d+)_sdk:(\d+\.\d+)\.\d+", image)
    assert found, image
    python, beam_minor = (int(found[1]), int(found[2])), found[3]
    (beam_pin,) = [r for r in dist.install_requires if r.startswith("apache-beam")]
    assert beam_pin == f"apache-beam=={beam_minor}.*"  # the workers' Beam is the launcher's
    assert python >= tuple(int(x) for x in dist.python_requires.lstrip(">=").split("."))
    installs = [shlex.split(part) for run in runs for part in run.split("&&") if "pip install" in part]
    (install,) = installs
    targets = [a for a in install[2:] if not a.startswith("-")]
    assert len(targets) == 1 and targets[0].startswith(".[")  # only the package itself, no extra pins
    extras = set(targets[0][2:-1].split(","))
    assert extras <= set(dist.extras_require) and {"gcp", "ee"} <= extras  # Cloud Storage, Earth Engine
    folders = set(dist.package_dir.values())  # pixelbeam, pipeline, transforms, configs, data
    assert folders <= {c.rstrip("/") for c in copied} and "setup.py" in copied
    with open(os.path.join(ROOT, "MANIFEST.in"), encoding="utf-8") as f:
        included = {w for line in f if line.startswith("include ") for w in line.split()[1:] if "*" not in w}
    assert included - {"data/README.md"} <= set(copied)
    entry = env["FLEX_TEMPLATE_PYTHON_PY_FILE"]
    assert entry == "/template/dataflow/main.py" and "dataflow/main.py" in copied
    assert os.path.isfile(os.path.join(ROOT, "dataflow", "main.py"))
    assert "FLEX_TEMPLATE_PYTHON_SETUP_FILE" not in env  # installed in the image, nothing to stage


def test_run_dataflow_sh_template_launches_the_flex_template(sandbox):
    tmp, env = sandbox
    cfg = str(tmp / "configs" / "demo.yaml")
    proc = run_script([cfg, "--template", "--overwrite"], {**env, "FAKE_GCLOUD_EXIT": "0", "JOB_NAME": "pb-demo",
                                                             "IMAGE": "us-docker.pkg.dev/p/r/pixelbeam:1"}, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = (tmp / "gcloud-calls").read_text().splitlines()
    (copy,) = [c for c in calls if c.startswith("storage cp")]
    assert copy.split()[2:4] == [cfg, "gs://pixelbeam-test-bucket/pixelbeam/configs/pb-demo.yaml"]
    (run,) = [c for c in calls if c.startswith("dataflow flex-template run")]
    assert "--template-file-gcs-location gs://pixelbeam-test-bucket/pixelbeam/templates/pixelbeam.json" in run
    params = run.split("--parameters ^~^", 1)[1].split()[0].split("~")
    assert params == ["config=gs://pixelbeam-test-bucket/pixelbeam/configs/pb-demo.yaml",
                      *[p[2:] for p in WORKER_PARAMETERS], "sdk_container_image=us-docker.pkg.dev/p/r/pixelbeam:1",
                      "overwrite=true"]
    declared = {p["name"] for p in metadata()["parameters"]}
    assert {p.split("=", 1)[0] for p in params} <= declared
    assert f"pixelbeam status {tmp}/out/demo" in proc.stdout


def test_run_dataflow_sh_template_dry_run_translates_with_the_entry_point(sandbox):
    tmp, env = sandbox
    proc = run_script([str(tmp / "configs" / "demo.yaml"), "--template", "--dry_run"], env, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run: DataflowRunner translated the job" in proc.stdout
    assert "would run: gcloud storage cp" in proc.stdout and "dataflow flex-template run" in proc.stdout
    assert "dataflow/main.py --config=" in proc.stderr
    assert not os.path.exists(tmp / "gcloud-calls") and not os.path.exists(tmp / "out")
