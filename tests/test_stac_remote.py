"""STAC sources as remote sources: bad input refused in one line before any pixel is read,
signed URLs whose tokens never reach an output or a message, GDAL's HTTP options applied in
the fetch threads, and GDAL's HTTP errors classified for retries."""

import json
import os
import re
import socket

import numpy as np
import pytest
import rasterio

from pixelbeam.pipeline.cli import main
from pixelbeam.testing.cog_server import RangeFileServer
from pixelbeam.testing.stac_catalog import write_item_collection
from pixelbeam.testing.stac_server import StacApiServer
from pixelbeam.transforms.fetching.retry import PermanentError, QuotaError, TransientError, classify_exception
from pixelbeam.transforms.pixels.quality import QualityMask
from pixelbeam.transforms.sources.remote import Secret, Signer, gdal_http_options, hide_secrets
from stac_helpers import CLEAR, MIDDLE, WEST, build_catalog, read_jsonl, write_config, write_regions

SECRET = "s3cr3t-SAS-signature-value"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return build_catalog(tmp_path_factory.mktemp("stac"))


@pytest.fixture(scope="module")
def api(catalog):
    with StacApiServer(catalog) as server:
        yield server


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(tmp_path, capsys, source, regions, **sections):
    """Run a config that must be refused: exit 2, one line naming a field, nothing written."""
    cfg = write_config(tmp_path, source, regions, **sections)
    assert main(["run", cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pixelbeam: error: ") and "\n" not in err and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "out_job")
    return err


def file_requests(server):
    return [r for r in server.log.all() if r.path.startswith("/files/")]


@pytest.mark.parametrize("case, field", [
    ({"collections": ["sentinel-2-l1c"]}, "source.collections: 'sentinel-2-l1c' is not a collection"),
    ({"bands": ["red", "B99"]}, "source.bands: 3 of 3 items have no asset 'B99'"),
    ({"mask": {"asset": "SCL", "invalid": [3]}}, "source.mask.asset: 3 of 3 items have no asset 'SCL'"),
    ({"datetime": "2019-01-01/2019-02-01"}, "source: the search of http://127.0.0.1"),
    ({"datetime": "June 2023"}, "source."),
    ({"filter": "eo:cloud_cover <"}, "source.filter"),
    ({"bands": ["red:5"]}, "source.bands: 'red:5'"),
])
def test_bad_api_input_is_one_line_before_any_pixel(tmp_path, capsys, api, case, field):
    regions = write_regions(tmp_path / "r.geojson", WEST)
    api.log.clear()
    err = refused(tmp_path, capsys, {"url": api.url, **case}, regions)
    assert field in err, err
    assert not [r for r in file_requests(api) if r.method == "GET" and any(s > 32768 for s, _ in r.ranges)]


def test_unreachable_and_non_stac_urls(tmp_path, capsys, catalog):
    regions = write_regions(tmp_path / "r.geojson", WEST)
    err = refused(tmp_path, capsys, {"url": f"http://127.0.0.1:{free_port()}"}, regions)
    assert "source.url: cannot reach http://127.0.0.1:" in err
    folder = os.path.dirname(catalog)
    with RangeFileServer(folder) as files:  # a web server, but no STAC API: 404 at its root
        err = refused(tmp_path, capsys, {"url": files.url}, regions)
        assert "source.url:" in err and "is not a STAC API" in err
        err = refused(tmp_path, capsys, {"url": f"{files.url}/sentinel-2-l2a/S2A_18RUK_20230605_0_L2A/red.tif"}, regions)
        assert "source.url:" in err and "is not a STAC API" in err  # not JSON


def test_bad_static_catalogs(tmp_path, capsys, catalog):
    regions = write_regions(tmp_path / "r.geojson", WEST)
    err = refused(tmp_path, capsys, {"catalog": str(tmp_path / "missing.json")}, regions)
    assert err.startswith("pixelbeam: error: source.catalog:") and "does not exist" in err
    (tmp_path / "plain.json").write_text('{"hello": 1}')
    err = refused(tmp_path, capsys, {"catalog": str(tmp_path / "plain.json")}, regions)
    assert "source.catalog:" in err and "is not a STAC" in err
    items = json.load(open(write_item_collection(catalog, str(tmp_path / "items.json"))))
    del items["features"][1]["assets"]["green"]  # one item without a named asset
    (tmp_path / "items.json").write_text(json.dumps(items))
    err = refused(tmp_path, capsys, {"catalog": str(tmp_path / "items.json")}, regions)
    assert "source.bands: 1 of 3 items have no asset 'green' (e.g. item 'S2B_18RUK_20230610_0_L2A'" in err
    err = refused(tmp_path, capsys, {"catalog": catalog, "bands": []}, regions)
    assert "source.bands" in err
    err = refused(tmp_path, capsys, {"catalog": catalog, "url": "http://127.0.0.1:1"}, regions)
    assert "exactly one of url" in err


def test_sas_token_signs_every_read_and_is_never_written(tmp_path, capsys, catalog):
    """Unsigned, the first asset is refused (403) at plan time; signed inline or from the
    environment, the job runs; a read refused later is a dead letter whose message hides the
    token; nothing written or printed holds it. (A server per run: GDAL caches by URL.)"""
    regions = write_regions(tmp_path / "r.geojson", MIDDLE)
    token = f"sv=2024-01-01&se=2030-01-01&sig={SECRET}"
    with StacApiServer(catalog, required_query={"sig": SECRET}) as api:
        err = refused(tmp_path, capsys, {"url": api.url}, regions)
        assert "source.bands: cannot open asset 'red'" in err and "403" in err
    os.environ["PIXELBEAM_TEST_SAS"] = token
    try:
        for name, sign in (("inline", {"query": token}), ("env", {"query_env": "PIXELBEAM_TEST_SAS"})):
            with StacApiServer(catalog, required_query={"sig": SECRET}) as api:
                cfg = write_config(tmp_path, {"url": api.url, "query": {"eo:cloud_cover": {"lt": 20}}, "sign": sign,
                                              "collection_mode": "stack"}, regions, name=name)
                api.fail(f"/files/sentinel-2-l2a/{CLEAR[1][0]}/green.tif", 403, 1000)  # not probed at plan time
                assert main(["run", cfg, "-v"]) == 1
                out = tmp_path / f"out_{name}"
                failed = read_jsonl(out / "failed.jsonl")
                assert failed and all("403" in f["message"] and "'green'" in f["message"] for f in failed), failed
                assert SECRET not in json.dumps(failed)
                api._faults.clear()
                assert main(["run", cfg]) == 0  # the rerun fetches the failed patch
                assert np.load(next((out / "npy").glob("*.mask.npy"))).any()
            written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
            assert SECRET.encode() not in written and b"2030-01-01" not in written
            if name == "inline":
                assert json.load(open(out / "dataset.json"))["config"]["source"]["sign"]["query"] == "**********"
    finally:
        del os.environ["PIXELBEAM_TEST_SAS"]
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err


def test_signing_hook_and_missing_planetary_computer(tmp_path, capsys, catalog):
    regions = write_regions(tmp_path / "r.geojson", MIDDLE)
    with StacApiServer(catalog, required_query={"sig": SECRET}) as api:
        cfg = write_config(tmp_path, {"url": api.url, "sign": {"hook": "stac_sign_hook:sign"}}, regions, name="hook")
        os.environ["STAC_HOOK_SIG"] = SECRET
        try:
            assert main(["run", cfg]) == 0
        finally:
            del os.environ["STAC_HOOK_SIG"]
    err = refused(tmp_path, capsys, {"catalog": catalog, "sign": "planetary_computer"}, regions)
    assert "source.sign: planetary_computer needs the planetary-computer package" in err
    err = refused(tmp_path, capsys, {"catalog": catalog, "sign": {"hook": "no_such_module:sign"}}, regions)
    assert "source.sign.hook: cannot import 'no_such_module:sign'" in err
    err = refused(tmp_path, capsys, {"catalog": catalog, "sign": {"query_env": "PIXELBEAM_UNSET_VARIABLE"}}, regions)
    assert "source.sign.query_env: the environment variable PIXELBEAM_UNSET_VARIABLE is not set" in err


def test_gdal_options_reach_the_fetch_threads_and_retries_are_classified(tmp_path, capsys, catalog):
    """A tile read answered 503 four times: GDAL retries it itself with its default options; with
    GDAL_HTTP_MAX_RETRY 0 from the config (applied in the fetch threads), pixelbeam's request
    runner retries it (a remote read failure is transient; GDAL's cached failure is dropped)
    and the patch is still written."""
    regions = write_regions(tmp_path / "r.geojson", WEST)
    results = {}
    for name, gdal in (("default", {"GDAL_HTTP_RETRY_DELAY": 0.05}), ("no_gdal_retry", {"GDAL_HTTP_MAX_RETRY": 0})):
        with StacApiServer(catalog) as api:
            cfg = write_config(tmp_path, {"url": api.url, "query": {"eo:cloud_cover": {"lt": 20}}, "gdal": gdal,
                                          "collection_mode": "stack", "bands": ["red"]}, regions, name=name,
                               fetch={"max_concurrent_requests": 1})
            path = f"/files/sentinel-2-l2a/{CLEAR[1][0]}/red.tif"
            original = api.take_fault

            def take_fault(p, _state={"left": 4}):  # the open passes; the next four reads get a 503
                if p == path and _state["left"] and [r for r in api.log.all(path) if r.method == "GET"]:
                    _state["left"] -= 1
                    return 503
                return original(p)

            api.take_fault = take_fault
            assert main(["run", cfg]) == 0
            results[name] = capsys.readouterr().out
            assert [r.status for r in api.log.all(path)].count(503) == 4
    assert "retries 0 " in results["default"], results["default"]
    retried = int(re.search(r"retries (\d+) ", results["no_gdal_retry"]).group(1))
    assert retried >= 1 and "      1        1         0       0" in results["no_gdal_retry"], results["no_gdal_retry"]


def test_gdal_http_errors_are_classified():
    from rasterio.errors import RasterioIOError
    assert isinstance(classify_exception(RasterioIOError("HTTP response code: 503")), TransientError)
    assert isinstance(classify_exception(RasterioIOError("HTTP response code: 429")), QuotaError)
    gone = classify_exception(RasterioIOError("HTTP response code: 404"))
    assert isinstance(gone, PermanentError) and gone.status == 404
    timeout = classify_exception(RasterioIOError("CURL error: Operation timed out after 30000 milliseconds"))
    assert isinstance(timeout, TransientError) and timeout.cause == "timeout"
    refused_ = classify_exception(RasterioIOError("CURL error: Failed to connect to 127.0.0.1 port 1"))
    assert isinstance(refused_, TransientError) and refused_.cause == "connection"
    reset = classify_exception(RasterioIOError("CURL error: Recv failure: Connection reset by peer"))
    assert reset.cause == "reset"
    assert isinstance(classify_exception(RasterioIOError("'x.tif' not recognized as a supported file format")),
                      PermanentError)
    try:  # a CPLE error in the chain, as rasterio raises it
        try:
            raise rasterio._err.CPLE_HttpResponseError(11, 11, "HTTP response code: 502")
        except Exception as inner:
            raise RasterioIOError("Read failed. See previous exception for details.") from inner
    except RasterioIOError as e:
        assert classify_exception(e).cause == "502"
    from pystac_client.exceptions import APIError
    err = APIError("Too many requests")
    err.status_code = 429
    assert isinstance(classify_exception(err), QuotaError)


def test_remote_read_failures_without_a_status_are_transient_and_hide_secrets():
    from rasterio.errors import RasterioIOError
    from pixelbeam.transforms.sources.stac import remote_read_error
    signer = Signer(kind="query", query=Secret(f"sig={SECRET}"))
    href = f"https://bucket.example/a.tif?sig={SECRET}"
    e = remote_read_error(RasterioIOError(f"Read failed: {href}"), "item 'x' asset 'red'", href, signer)
    assert isinstance(e, TransientError) and e.cause == "read" and SECRET not in str(e)
    local = remote_read_error(RasterioIOError("Read failed"), "item 'x' asset 'red'", "/data/a.tif", signer)
    assert isinstance(local, PermanentError)
    e = remote_read_error(RasterioIOError(f"HTTP response code: 403 {href}"), "asset", href, signer)
    assert isinstance(e, PermanentError) and e.status == 403 and SECRET not in e.message


def test_hide_secrets_and_gdal_option_defaults():
    text = (f"open /vsicurl/https://user:pw@host.example/a/b.tif?sv=1&sig={SECRET} failed; "
            f"also http://127.0.0.1:8/x.tif?token=abc and s3://bucket/key.tif")
    hidden = hide_secrets(text, (SECRET,))
    assert SECRET not in hidden and "pw@" not in hidden and "token=abc" not in hidden
    assert "https://REDACTED@host.example/a/b.tif?REDACTED" in hidden and "s3://bucket/key.tif" in hidden
    options = gdal_http_options({"GDAL_HTTP_MAX_RETRY": 0, "GDAL_HTTP_MULTIPLEX": False}, timeout_s=45)
    assert options["GDAL_HTTP_MAX_RETRY"] == "0" and options["GDAL_HTTP_MULTIPLEX"] == "NO"
    assert options["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR" and options["GDAL_HTTP_TIMEOUT"] == "45"
    assert SECRET not in repr(Signer(kind="query", query=Secret(SECRET)))


def test_quality_masks_by_class_and_bit():
    scl = np.array([[0, 4, 8], [3, 5, 10]])
    np.testing.assert_array_equal(QualityMask("scl", invalid=(0, 1, 3, 8, 9, 10)).keep(scl),
                                  [[False, True, False], [False, True, False]])
    np.testing.assert_array_equal(QualityMask("scl", valid=(4, 5)).keep(scl), [[False, True, False], [False, True, False]])
    qa = np.array([0b0, 0b1000, 0b10000, 0b1000000, 0b1001], dtype=np.uint16)  # clear, cloud, shadow, bit 6, fill+cloud
    np.testing.assert_array_equal(QualityMask("qa", bits=(0, 3, 4)).keep(qa), [True, False, False, True, False])
    with pytest.raises(ValueError):
        QualityMask("qa", invalid=(1,), bits=(2,))


def test_config_errors_never_echo_a_token(tmp_path, capsys, catalog):
    regions = write_regions(tmp_path / "r.geojson", WEST)
    err = refused(tmp_path, capsys, {"catalog": catalog, "sign": {"query": SECRET, "hook": "m:f"}}, regions)
    assert "source.sign: give planetary_computer" in err and SECRET not in err
    # what retry-failed reads back from dataset.json: the token is not there, so it is asked for
    err = refused(tmp_path, capsys, {"catalog": catalog, "sign": {"query": "**********"}}, regions)
    assert "source.sign.query: the token is not kept in dataset.json" in err
