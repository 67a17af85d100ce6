"""Local progress: worker processes report totals to files, the launcher sums them."""

import os

import apache_beam as beam
import yaml

from pixelbeam.pipeline.runner import pipeline_options
from pixelbeam.pipeline.config import load_config
from pixelbeam.pipeline.graph import build_pipeline
from pixelbeam.pipeline.plan import prepare_job
from pixelbeam.pipeline.progress import progress_bar
from pixelbeam.transforms.fetching.progress import ProgressFile, read_progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_totals_are_written_at_most_every_interval_and_summed(tmp_path):
    clock = FakeClock()
    progress = ProgressFile(str(tmp_path), interval_s=0.5, clock=clock)
    progress.add(done=3, retries=1)
    progress.flush()
    progress.add(done=2)
    progress.flush()  # within the interval: not written
    assert read_progress(str(tmp_path))["done"] == 3
    clock.now = 0.6
    progress.flush()
    assert read_progress(str(tmp_path))["done"] == 5
    (tmp_path / "99999.json").write_text('{"done": 7, "failed": 1, "quota_errors": 4}')  # another process
    (tmp_path / "123.json").write_text('{"done": ')  # being replaced: skipped, not an error
    assert read_progress(str(tmp_path)) == {"done": 12, "failed": 1, "requests": 0, "retries": 1, "quota_errors": 4}


def test_a_run_reports_every_fetched_patch(tmp_path):
    doc = {"source": {"uri": os.path.join(ROOT, "data", "RGB.byte.tif")},
           "regions": os.path.join(ROOT, "data", "regions.geojson"),
           "grid": {"crs": "native", "scale": "native", "patch_size": 32},
           "output": {"path": str(tmp_path / "out"), "formats": ["npy"]}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    job = prepare_job(load_config(str(tmp_path / "job.yaml")))
    with progress_bar(job.planned, enabled=True, poll_s=0.05) as directory:
        build_pipeline(job, beam.Pipeline(options=pipeline_options([])), progress_dir=directory).run().wait_until_finish()
        totals = read_progress(directory)
    assert totals["done"] == job.planned and totals["requests"] == job.planned and totals["failed"] == 0


def test_a_table_run_reports_every_fetched_group(tmp_path):
    from pixelbeam.pipeline.runner import fetch_settings
    from pixelbeam.pipeline.tables.graph import build_table_pipeline
    from pixelbeam.pipeline.tables.plan import prepare_table_job
    from tests.test_point_table import write_collection, write_config, write_points
    files, profile = write_collection(tmp_path, 3)
    cfg, _ = write_config(tmp_path, files, write_points(tmp_path, profile, [(1, 3), (30, 40), (49, 59)]), group_size=16)
    job = prepare_table_job(load_config(cfg))
    options = pipeline_options([])
    with progress_bar(len(job.groups), enabled=True, poll_s=0.05, unit="groups") as directory:
        build_table_pipeline(job, beam.Pipeline(options=options), fetch_settings(job, options, directory),
                             run_id="r1").run().wait_until_finish()
        totals = read_progress(directory)
    assert len(job.groups) == 3 and totals["done"] == 3 and totals["failed"] == 0


def test_the_bar_is_off_when_not_a_terminal():
    with progress_bar(10) as directory:  # pytest captures stderr: not a terminal
        assert directory is None
