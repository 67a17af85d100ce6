"""Cloud Storage outputs, offline: a real local Cloud Storage server (the gcp-storage-emulator
package, on 127.0.0.1) behind STORAGE_EMULATOR_HOST, written through Beam's GCS filesystem and
read back with the real google-cloud-storage client. The same job written to a local folder and
to gs://bucket/prefix gives the same outputs, and reruns to gs:// resume."""

import contextlib
import logging
import os
import socket

import pytest
import yaml

from outputs_compare import assert_same_outputs
from pixelbeam.pipeline.cli import main

pytest.importorskip("gcp_storage_emulator")
from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import storage  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")
BUCKET = "pixelbeam-test"
FORMATS = ["tfrecord", "npy", "geotiff", "png"]


@contextlib.contextmanager
def beam_gcs_without_credentials():
    """Beam's GcsIO asks google.auth for credentials once per process (retrying for ~15 s when
    there are none) and, when it has some, sends them even to an emulator. An initialized
    empty cache makes it use google-cloud-storage's anonymous client, which honours
    STORAGE_EMULATOR_HOST. (Beam 2.77 has no option for this: --no_auth only reaches the
    Dataflow API client.)"""
    from apache_beam.internal.gcp.auth import _Credentials
    saved = _Credentials._credentials_init, _Credentials._credentials
    _Credentials._credentials_init, _Credentials._credentials = True, None
    try:
        yield
    finally:
        _Credentials._credentials_init, _Credentials._credentials = saved


@pytest.fixture(scope="module")
def gcs():
    """A Cloud Storage emulator with one bucket; yields a real client for it."""
    from gcp_storage_emulator.server import create_server
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)  # it warns on every download
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    with pytest.MonkeyPatch.context() as mp, beam_gcs_without_credentials():
        mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        try:
            yield storage.Client(project="pixelbeam-test", credentials=AnonymousCredentials())
        finally:
            server.stop()


def write_config(tmp_path, name, path):
    doc = {"source": {"uri": LANDSAT, "bands": [1, 2, 3]}, "regions": REGIONS,
           "grid": {"crs": "native", "scale": "native", "patch_size": 48, "margin": 2},
           "output": {"path": path, "formats": FORMATS, "max_masked_ratio": 0.9},
           "fetch": {"max_concurrent_requests": 4}}
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return str(cfg)


def objects(client, prefix):
    """{name relative to prefix: blob} of every object under gs://BUCKET/prefix/."""
    return {b.name[len(prefix) + 1:]: b for b in client.list_blobs(BUCKET, prefix=prefix + "/")}


def download(client, prefix, dest):
    for name, blob in objects(client, prefix).items():
        path = os.path.join(dest, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        blob.download_to_filename(path)
    return str(dest)


@pytest.fixture(scope="module")
def both(gcs, tmp_path_factory):
    """The same job run once to a local folder and once to gs://BUCKET/job."""
    tmp = tmp_path_factory.mktemp("gcs")
    local = write_config(tmp, "local", str(tmp / "local"))
    remote = write_config(tmp, "remote", f"gs://{BUCKET}/job")
    assert main(["run", local]) == 0
    assert main(["run", remote]) == 0
    return tmp, str(tmp / "local"), remote


def test_outputs_on_cloud_storage_equal_outputs_in_a_local_folder(gcs, both):
    tmp, local, _ = both
    names = set(objects(gcs, "job"))
    local_names = {os.path.relpath(os.path.join(d, f), local).replace(os.sep, "/")
                   for d, _, files in os.walk(local) for f in files}
    assert {"manifest.jsonl", "failed.jsonl", "dataset.json", "preview.png", "footprints.png"} <= names
    # the same files (TFRecord shard, stats file and run record names carry the run id), nothing staged or temporary left
    per_run = ("tfrecord/", "stats/", "runs/")
    not_shards = {n for n in names if not n.startswith(per_run)}
    assert not_shards == {n for n in local_names if not n.startswith(per_run)}
    assert len([n for n in names if n.startswith("stats/")]) == len([n for n in local_names if n.startswith("stats/")]) == 1
    assert len([n for n in names if n.startswith("runs/")]) == len([n for n in local_names if n.startswith("runs/")]) == 1
    assert len([n for n in names if n.startswith("tfrecord/patches-")]) == len(
        [n for n in local_names if n.startswith("tfrecord/")])
    copy = download(gcs, "job", tmp / "downloaded")
    assert_same_outputs(local, copy, folders=("npy", "geotiff", "png"))


def test_a_rerun_to_cloud_storage_has_nothing_to_do(gcs, both, capsys):
    _, _, remote = both
    before = {name: (b.generation, b.updated) for name, b in objects(gcs, "job").items()}
    capsys.readouterr()
    assert main(["run", remote]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {name: (b.generation, b.updated) for name, b in objects(gcs, "job").items()} == before


def test_a_rerun_to_cloud_storage_refetches_missing_files_and_cleans_a_killed_run(gcs, both, capsys, tmp_path):
    _, local, remote = both
    bucket = gcs.bucket(BUCKET)
    npys = sorted(n for n in objects(gcs, "job") if n.startswith("npy/"))
    for name in npys[:2]:
        bucket.blob(f"job/{name}").delete()
    # what a killed run leaves: a shard of a run that never completed, Beam's staging objects
    # (Cloud Storage has no folders: only objects under a beam-temp-* prefix) and temp files
    leftovers = ["tfrecord/patches-20200101T000000-dead-00000-of-00001.tfrecord.gz",
                 "tfrecord/beam-temp-patches-0123456789abcdef/9f8e7d6c", "beam-temp-manifest.jsonl-abcdef/0123",
                 "npy/.tmp-0123456789abcdef-epsg32618_r0_c0.npy"]
    for name in leftovers:
        bucket.blob(f"job/{name}").upload_from_string(b"partial")
    capsys.readouterr()
    assert main(["run", remote]) == 0
    out = capsys.readouterr().out
    assert "requests 2 " in out, out  # only the two missing patches were fetched
    names = set(objects(gcs, "job"))
    assert set(npys) <= names and not names & set(leftovers)
    assert_same_outputs(local, download(gcs, "job", tmp_path / "after"), folders=("npy", "geotiff", "png"))
