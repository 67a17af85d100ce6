"""Launch and leave (issue 19): on DataflowRunner `pixelbeam run` returns once the job is
submitted, printing the job id, its console page and the status command; `--wait` waits as
before; `pixelbeam status OUT` tells from the folder what is done, what failed, and whether the
run completed. Dataflow itself is not called: the submission is replaced by a recorded one."""

import json
import os

import apache_beam as beam
import pytest

from pixelbeam.pipeline import run as run_module
from pixelbeam.pipeline import status
from pixelbeam.pipeline.cli import main
from tests.test_gcs import BUCKET, gcs  # noqa: F401  (the Cloud Storage emulator fixture: --temp_location)
from tests.test_resume import raster_config

DATAFLOW = ["--runner", "DataflowRunner", "--project", "pixelbeam-test", "--region", "europe-west4",
            "--machine_type", "n1-standard-2", "--max_num_workers", "1"]


class Submitted:
    """What DataflowRunner returns once a job is submitted (here: nothing was sent)."""

    waited = 0

    def job_id(self):
        return "2026-12-02_01_02_03-1234567890"

    def wait_until_finish(self, duration=None):
        Submitted.waited += 1
        return "DONE"

    def metrics(self):
        raise NotImplementedError


@pytest.fixture
def submit_offline(monkeypatch, tmp_path, gcs):
    """`pixelbeam run --runner DataflowRunner` with the submission recorded, not sent (and the
    checks of gs:// paths and credentials, which a local output cannot pass, skipped)."""
    graphs = []

    def run(pipeline, test_runner_api="AUTO"):
        graphs.append(pipeline)
        return Submitted()
    monkeypatch.setattr(beam.Pipeline, "run", run)
    monkeypatch.setattr(run_module, "check_runner", lambda *args, **kwargs: None)
    Submitted.waited = 0
    return graphs, ["--temp_location", f"gs://{BUCKET}/temp/{tmp_path.name}"]


def test_dataflow_run_returns_after_submission_with_job_id_console_link_and_status_command(
        tmp_path, capsys, submit_offline, gcs):
    graphs, temp = submit_offline
    cfg = raster_config(tmp_path)
    out = str(tmp_path / "out")
    assert main(["run", cfg, *DATAFLOW, *temp]) == 1  # not complete yet: the job runs on
    printed = capsys.readouterr().out
    assert Submitted.waited == 0 and len(graphs) == 1
    assert "submitted: Dataflow job 2026-12-02_01_02_03-1234567890" in printed
    assert ("https://console.cloud.google.com/dataflow/jobs/europe-west4/2026-12-02_01_02_03-1234567890"
            "?project=pixelbeam-test") in printed
    assert f"pixelbeam status {out}" in printed
    names = [t.unique_name for t in graphs[0].to_runner_api().components.transforms.values()]
    assert "RecordRun/RecordCompletion" in names  # the job records itself
    running = json.load(open(os.path.join(out, "_running.json")))
    assert running["job"] == {"id": "2026-12-02_01_02_03-1234567890", "project": "pixelbeam-test",
                              "region": "europe-west4"}
    staged = list(gcs.list_blobs(BUCKET, prefix=f"temp/{tmp_path.name}/pixelbeam-plan-{running['run_id']}/"))
    assert staged  # the plan went to --temp_location, not into the graph

    lines, complete = status.status_lines(out, job_state=lambda job: f"JOB_STATE_RUNNING ({job['id']})")
    text = "\n".join(lines)
    assert not complete and "completed runs: none" in text and f"run {running['run_id']}" in text
    assert "dataflow job: 2026-12-02_01_02_03-1234567890 (project pixelbeam-test, region europe-west4): " \
           "JOB_STATE_RUNNING (2026-12-02_01_02_03-1234567890)" in text
    assert text.endswith("complete: no")


def test_wait_keeps_todays_behaviour(tmp_path, capsys, submit_offline):
    _, temp = submit_offline
    cfg = raster_config(tmp_path)
    main(["run", cfg, *DATAFLOW, *temp, "--wait"])
    assert Submitted.waited == 1 and "submitted: Dataflow job" not in capsys.readouterr().out


def test_status_of_a_finished_output_and_of_one_with_failures(tmp_path, capsys):
    cfg = raster_config(tmp_path)
    out = str(tmp_path / "out")
    assert main(["run", cfg]) == 0
    capsys.readouterr()
    assert main(["status", out]) == 0
    text = capsys.readouterr().out
    planned = json.load(open(os.path.join(out, "dataset.json")))["patches_planned"]
    assert "completed runs: 1 (latest " in text and f"of {planned} planned patches" in text
    assert "failed 0" in text and text.strip().endswith("complete: yes")

    # a run that failed some patches: the manifest says so (counted from it: not the recorded one)
    rows = [json.loads(line) for line in open(os.path.join(out, "manifest.jsonl"))]
    rows[0]["status"] = "failed"
    with open(os.path.join(out, "manifest.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert main(["status", out]) == 1
    text = capsys.readouterr().out
    assert f"done: {planned - 1} of {planned}" in text and "failed 1 (see failed.jsonl" in text
    assert text.strip().endswith("complete: no")


def test_status_of_a_folder_without_output_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give the output.path of a pixelbeam run" in err


def test_status_without_credentials_still_reads_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_running.json").write_text(json.dumps({"run_id": "20261202T000000-abcd", "fingerprint": "f",
                                                   "job": {"id": "j1", "project": "p", "region": "r"}}))

    def no_credentials(job):
        raise RuntimeError("could not find default credentials")
    lines, complete = status.status_lines(str(out), job_state=no_credentials)
    assert not complete
    assert "dataflow job: j1 (project p, region r): state unknown (RuntimeError: could not find default " \
           "credentials)" in lines


def test_status_of_an_unreadable_folder_is_one_line(tmp_path, capsys, monkeypatch):
    def refuse(path):
        raise PermissionError("403 Forbidden: caller does not have storage.objects.get access")
    monkeypatch.setattr(status, "read_json", refuse)
    assert main(["status", "gs://somebody-elses-bucket/out"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the output folder (PermissionError: 403 Forbidden" in err


def test_a_job_that_finished_before_the_launcher_noted_it_is_not_marked_running_again(
        tmp_path, capsys, submit_offline, monkeypatch):
    """A short job can record itself (and remove _running.json) before `run()` returns."""
    _, temp = submit_offline
    out = str(tmp_path / "out")

    def run_and_finish(pipeline, test_runner_api="AUTO"):
        from pixelbeam.pipeline import records
        records.clear_running(out)  # what the job's last stage does
        return Submitted()
    monkeypatch.setattr(beam.Pipeline, "run", run_and_finish)
    main(["run", raster_config(tmp_path), *DATAFLOW, *temp])
    assert "submitted: Dataflow job" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(out, "_running.json"))


def test_the_job_state_and_counters_come_from_the_dataflow_api_messages():
    """The Dataflow API's own response types (google-cloud-dataflow-client, as Beam's client
    returns them); only the client that would send the request is replaced."""
    from google.cloud import dataflow_v1beta3 as dataflow

    def update(name, value, **context):
        return dataflow.MetricUpdate(name=dataflow.MetricStructuredName(origin="user", name=name, context=context),
                                     scalar=value)

    class Client:
        def get_job(self, job_id):
            return dataflow.Job(id=job_id, current_state=dataflow.JobState.JOB_STATE_RUNNING)

        def get_job_metrics(self, job_id):
            return dataflow.JobMetrics(metrics=[
                update("patches_fetched", 1200, namespace="pixelbeam", step="s7"),
                update("patches_fetched", 34, namespace="pixelbeam", step="s9"),
                update("patches_fetched", 5000, namespace="pixelbeam", step="s7", tentative="true"),
                update("requests", 1250, namespace="pixelbeam", step="s7"),
                update("ElementCount", 9, step="s7")])
    job = {"id": "j1", "project": "p", "region": "r"}
    text = status.dataflow_job_state(job, client_for=lambda job: Client())
    assert text == "JOB_STATE_RUNNING; patches_fetched 1234, requests 1250"


def test_status_of_a_point_table(tmp_path, capsys):
    from tests.test_point_table import write_collection, write_config, write_points
    from tests.test_table_resume import SPREAD
    files, profile = write_collection(tmp_path, 2)
    cfg, _ = write_config(tmp_path, files, write_points(tmp_path, profile, SPREAD[:6]), group_size=8)
    out = str(tmp_path / "out")
    assert main(["run", cfg]) == 0
    capsys.readouterr()
    assert main(["status", out]) == 0
    text = capsys.readouterr().out
    assert f"output: {out} (a point table)" in text and "groups written in that run" in text
    assert "done: 12 of 12 planned rows; failed 0" in text and text.strip().endswith("complete: yes")
