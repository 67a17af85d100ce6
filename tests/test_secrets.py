"""Credentials in a raster URL (a signed URL's query token, userinfo) are never written or
printed: not in dataset.json, the manifest, dead letters, plan output, logs or error messages."""

import json
import logging
import os
import shutil

import pytest
import yaml

from pixelbeam.pipeline.cli import main
from pixelbeam.testing.cog_server import RangeFileServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")
REGIONS = os.path.join(ROOT, "data", "regions.geojson")

# Each kind of credential a URL carries: (what to append or insert, the secret strings).
KINDS = {
    "signed url": ("?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=5ecre7519a7e", ["5ecre7519a7e"]),
    "token": ("?token=t0kenvalue42", ["t0kenvalue42"]),
    "sas sig": ("?sv=2021-01-01&sig=5a5s1gnature%3D", ["5a5s1gnature"]),
    "userinfo": ("user:hunter2pass@", ["hunter2pass"]),
}


def secret_url(base: str, kind: str, path: str = "/scene.tif") -> str:
    extra, _ = KINDS[kind]
    if extra.endswith("@"):
        return base.replace("http://", f"http://{extra}") + path
    return base + path + extra


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("cogs")
    shutil.copy(LANDSAT, root / "scene.tif")
    env = pytest.MonkeyPatch()
    env.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")  # GDAL lists no folder of this server (it would wait)
    with RangeFileServer(str(root)) as s:
        yield s
    env.undo()


def write_config(tmp_path, uri, **output):
    doc = {"source": {"kind": "raster", "uri": uri, "bands": [1, 2, 3]}, "regions": REGIONS,
           "grid": {"crs": "native", "scale": "native", "patch_size": 64},
           "output": {"path": str(tmp_path / "out"), "formats": ["tfrecord", "npy"], **output},
           "fetch": {"max_attempts": 1}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def written_bytes(folder):
    """Every file under `folder`, as bytes (gzip TFRecords included as they are on disk)."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, name), folder)] = f.read()
    return out


def assert_nowhere(secrets, printed, files):
    for secret in secrets:
        assert secret not in printed, f"{secret!r} printed: {printed[max(0, printed.find(secret) - 200):][:400]}"
        for name, data in files.items():
            assert secret.encode() not in data, f"{secret!r} written to {name}"


def everything_printed(capfd, caplog):
    captured = capfd.readouterr()
    return captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_run_writes_and_prints_no_credential(kind, server, tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    secrets = KINDS[kind][1]
    cfg = write_config(tmp_path, secret_url(server.url, kind))
    assert main(["plan", cfg]) == 0
    assert main(["plan", "--json", cfg]) == 0
    assert main(["run", "--verbose", cfg]) == 0
    files = written_bytes(tmp_path / "out")
    assert "dataset.json" in files and "manifest.jsonl" in files
    dataset = json.loads(files["dataset.json"])
    assert "REDACTED" in dataset["config"]["source"]["uri"]  # where the secret was: still says a url was given
    assert dataset["config"]["source"]["uri"].startswith("http://")
    assert main(["run", cfg]) == 0  # a rerun resumes: nothing to do
    printed = everything_printed(capfd, caplog)
    assert "nothing to do" in printed
    assert_nowhere(secrets, printed, written_bytes(tmp_path / "out"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_failures_write_and_print_no_credential(kind, server, tmp_path, capfd, caplog):
    """A raster that cannot be opened (a one-line error), and patches whose reads fail (dead letters)."""
    caplog.set_level(logging.DEBUG)
    secrets = KINDS[kind][1]
    missing = write_config(tmp_path, secret_url(server.url, kind, "/missing.tif"))
    assert main(["run", missing]) == 2
    assert not (tmp_path / "out").exists()
    printed = everything_printed(capfd, caplog)
    assert "source.uri: cannot open" in printed and "REDACTED" in printed
    assert_nowhere(secrets, printed, {})


def test_dead_letters_hold_no_credential(server, tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    secrets = [s for _, kind_secrets in KINDS.values() for s in kind_secrets]
    uri = server.url.replace("http://", "http://user:hunter2pass@") + "/scene.tif?token=t0kenvalue42"
    cfg = write_config(tmp_path, uri)
    import rasterio.errors

    import pixelbeam.transforms.sources.raster as raster

    def failing(ds, *args, **kwargs):  # as GDAL says it: the URL in the message
        raise rasterio.errors.RasterioIOError(f"HTTP response code on {ds.name}: 500")

    mp = pytest.MonkeyPatch()
    mp.setattr(raster, "read_onto_grid", failing)
    try:
        code = main(["run", cfg, "--max_failed_fraction", "1"])
    finally:
        mp.undo()
    assert code == 0
    files = written_bytes(tmp_path / "out")
    assert files["failed.jsonl"].count(b"\n") >= 1 and b"REDACTED" in files["failed.jsonl"]
    assert_nowhere(secrets, everything_printed(capfd, caplog), files)


def test_a_new_token_resumes_and_retry_failed_asks_for_the_config(server, tmp_path, capfd):
    """The fingerprint leaves credentials out (a signed URL's token changes, its pixels do not);
    retry-failed cannot rerun a recorded config whose credentials were left out: one line."""
    cfg = write_config(tmp_path, f"{server.url}/scene.tif?token=t0kenvalue42")
    assert main(["run", cfg]) == 0
    cfg = write_config(tmp_path, f"{server.url}/scene.tif?token=an0thertoken")
    assert main(["run", cfg]) == 0
    assert "nothing to do" in capfd.readouterr().out
    assert main(["retry-failed", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "credentials, which pixelbeam never stores; rerun it with `pixelbeam run CONFIG`" in err
    assert "t0kenvalue42" not in err and "an0thertoken" not in err


def test_a_collection_of_signed_urls_resumes_with_new_tokens(server, tmp_path, capfd):
    """A collection's images are recorded in dataset.json without their tokens, and compared so."""
    def config(token):
        path = write_config(tmp_path, "unused")
        doc = yaml.safe_load(open(path))
        doc["source"] = {"kind": "raster", "bands": [1, 2, 3], "collection_mode": "mosaic",
                         "images": [{"uri": f"{server.url}/scene.tif?token={token}", "time": "2020-01-05"}]}
        open(path, "w").write(yaml.safe_dump(doc))
        return path
    assert main(["run", config("t0kenvalue42")]) == 0
    files = written_bytes(tmp_path / "out")
    assert b"t0kenvalue42" not in files["dataset.json"] and b"?REDACTED" in files["dataset.json"]
    capfd.readouterr()
    assert main(["run", config("an0thertoken")]) == 0
    assert "nothing to do" in capfd.readouterr().out


def test_a_query_of_harmless_names_is_kept_and_any_other_is_hidden_whole():
    """A Dataflow console link keeps `?project=`; a query with any other parameter is redacted."""
    from pixelbeam.transforms.secrets import hide_secrets
    link = "https://console.cloud.google.com/dataflow/jobs/europe-west4/j-1?project=p"
    assert hide_secrets(link) == link
    assert hide_secrets("https://x/a.tif?project=p&sig=abc") == "https://x/a.tif?REDACTED"
    assert hide_secrets("https://x/a.tif?token=abc") == "https://x/a.tif?REDACTED"
