"""pipeline/summary.py: the end-of-run counts from manifest.jsonl, streamed (pixelbeam.pipeline.summary.
manifest_outcomes) and equal to the former read-everything count, kept here as the reference."""

import collections
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelbeam.pipeline import summary
from pixelbeam.pipeline.summary import RunSummary, count_outcomes, manifest_keys, manifest_outcomes
from pixelbeam.transforms.storage import to_json_line

try:  # the Cloud Storage emulator fixture, when gcp-storage-emulator is installed
    from test_gcs import BUCKET, gcs  # noqa: F401
except pytest.skip.Exception:
    BUCKET = gcs = None


def reference_outcomes(output_path: str) -> tuple[dict, int]:
    """The former implementation: every row parsed into a list of dicts, last row of an id wins."""
    path = f"{output_path}/manifest.jsonl"
    try:
        text = open(path, "rb").read().decode("utf-8")
    except FileNotFoundError:
        return {}, 0
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    by_id = collections.Counter(r["patch_id"] for r in rows)
    statuses = collections.Counter(r["status"] for r in {r["patch_id"]: r for r in rows}.values())
    return dict(statuses), sum(n - 1 for n in by_id.values() if n > 1)


def row(patch_id: str, status: str, run: str = "run-1", **extra) -> dict:
    """A manifest row in the layout transforms/outcomes.manifest_row gives it."""
    return {"patch_id": patch_id, "region_id": "bbox", "status": status,
            "reason": None if status == "written" else f"{status} because", "bounds_lonlat": [-77.9, 24.4, -77.8, 24.5],
            "crs": "EPSG:32618", "transform": [10.0, 0.0, 199680.0, 0.0, -10.0, 2708480.0], "width": 64,
            "height": 64, "margin": 0, "files": [f"npy/{patch_id}.npy"] if status == "written" else [],
            "valid_fraction": 1.0, "requests": 1, "attempts": 1, "bytes": 12288, "run_id": run, **extra}


def write_manifest(folder, lines: list[str]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.jsonl").write_bytes("".join(lines).encode("utf-8"))
    return str(folder)


def rerun_lines() -> list[str]:
    """Three runs appended: failures retried (last row wins), blank lines, other JSON layouts."""
    first = [to_json_line(row(f"p{i}", "failed" if i % 3 == 0 else "written")) + "\n" for i in range(12)]
    blank = ["\n", "   \n", "\r\n"]
    second = [to_json_line(row(f"p{i}", "written" if i % 2 else "filtered", run="run-2")) + "\n"
              for i in range(0, 12, 3)]
    third = [to_json_line(row("p0", "failed", run="run-3")) + "\n",
             json.dumps(row("p1", "filtered", run="run-3")) + "\n",  # spaced layout
             json.dumps({"status": "written", "patch_id": "p12"}) + "\n"]  # reordered keys
    return first + blank + second + third


def test_reruns_and_blank_lines_count_like_the_reference(tmp_path):
    out = write_manifest(tmp_path / "out", rerun_lines())
    assert manifest_outcomes(out) == reference_outcomes(out) == ({"written": 10, "filtered": 2, "failed": 1}, 6)


def test_every_chunk_size_gives_the_same_keys(tmp_path):
    """Lines cut anywhere by the chunked read (a last line without newline included)."""
    lines = rerun_lines()
    lines[-1] = lines[-1].rstrip("\n")
    out = write_manifest(tmp_path / "out", lines)
    whole = list(manifest_keys(f"{out}/manifest.jsonl", chunk_bytes=1 << 20))
    assert len(whole) == 19
    for size in (1, 2, 7, 64, 333):
        assert list(manifest_keys(f"{out}/manifest.jsonl", chunk_bytes=size)) == whole
    assert count_outcomes(whole) == reference_outcomes(out)


def test_lines_the_fast_path_must_not_misread_are_parsed_in_full(tmp_path):
    """A nested or quoted "status"/"patch_id" before the real ones, escapes, non-ASCII ids."""
    lines = [
        to_json_line({"meta": {"status": "failed", "patch_id": "x"}, "patch_id": "a", "status": "written"}),
        to_json_line({"reason": 'HTTP 429 {"patch_id":"b","status":"failed"}', "patch_id": "a", "status": "filtered"}),
        to_json_line({"patch_id": "c", "status": "failed", "reason": '"status":"written"'}),
        to_json_line({"patch_id": 'q"uote\\', "status": "written"}),
        to_json_line({"patch_id": "q\"uote\\", "region_id": "r", "status": "failed"}),
        '{"patch_id":"caf\u00e9","status":"written"}',  # raw UTF-8
        '{"patch_id":"caf\\u00e9","status":"filtered"}',  # the same id, escaped
        to_json_line({"files": ["a", "b"], "patch_id": "d", "status": "written"}),
        to_json_line({"patch_id": "e", "n": -1.5e-3, "ok": True, "none": None, "status": "written"}),
    ]
    out = write_manifest(tmp_path / "out", [line + "\n" for line in lines])
    assert manifest_outcomes(out) == reference_outcomes(out) == ({"filtered": 2, "failed": 2, "written": 2}, 3)
    keys = list(manifest_keys(f"{out}/manifest.jsonl"))
    assert keys[1] == (b"a", b"filtered") and keys[3] == (b'q"uote\\', b"written")
    assert keys[5] == keys[6][:1] + (b"written",) == ("café".encode(), b"written")


def test_no_manifest_counts_nothing(tmp_path):
    assert manifest_outcomes(str(tmp_path)) == ({}, 0) == reference_outcomes(str(tmp_path))
    assert manifest_outcomes(write_manifest(tmp_path / "empty", ["\n"])) == ({}, 0)


@pytest.mark.parametrize("line, problem", [('{"patch_id": "a", "stat', "not a manifest row"),
                                           ('{"patch_id": "a"}', "not a manifest row"),
                                           ('{"patch_id": 7, "status": "written"}', "must be strings")])
def test_a_damaged_line_is_named(tmp_path, line, problem):
    out = write_manifest(tmp_path / "out", [to_json_line(row("p0", "written")) + "\n", "\n", line + "\n"])
    with pytest.raises(ValueError, match=f"manifest.jsonl: line 3.*{problem}"):
        manifest_outcomes(out)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["written", "filtered", "failed"]),
                          st.sampled_from(["compact", "spaced", "blank"])), max_size=80))
def test_any_rerun_history_counts_like_the_reference(tmp_path_factory, history):
    lines = [("\n" if layout == "blank" else (to_json_line if layout == "compact" else json.dumps)(
        row(f"epsg32618_r{i}_c{i * 7}", status)) + "\n") for i, status, layout in history]
    out = write_manifest(tmp_path_factory.mktemp("m"), lines)
    assert manifest_outcomes(out) == reference_outcomes(out)


def test_a_hash_collision_can_only_look_incomplete(monkeypatch):
    """Two ids with one hash merge into one id with a repeat: the run is reported incomplete."""
    class OneHash:
        def __init__(self, data, digest_size):
            pass

        def digest(self):
            return b"\0" * 8
    monkeypatch.setattr(summary.hashlib, "blake2b", OneHash)
    counts, duplicates = count_outcomes([("a", "written"), ("b", "written")])
    assert (counts, duplicates) == ({"written": 1}, 1)
    assert not RunSummary(planned=2, counts=counts, elapsed_s=1.0, metrics={}, duplicates=duplicates).complete


def test_the_summary_reports_duplicates_from_the_streamed_count(tmp_path):
    out = write_manifest(tmp_path / "out", rerun_lines())
    counts, duplicates = manifest_outcomes(out)
    lines = RunSummary(planned=13, counts=counts, elapsed_s=2.0, metrics={}, duplicates=duplicates).lines()
    assert lines[1].split() == ["13", "10", "2", "1", "2.0", "6.5"]
    assert lines[-1] == "INCOMPLETE: 13 manifest rows (6 duplicated) for 13 planned patches"


@pytest.mark.skipif(gcs is None, reason="needs gcp-storage-emulator")
def test_a_manifest_on_cloud_storage_is_streamed(gcs, tmp_path):
    """gs://: the same reader through Beam's GCS filesystem (a local emulator, tests/test_gcs.py)."""
    lines = rerun_lines()
    local = write_manifest(tmp_path / "out", lines)
    gcs.bucket(BUCKET).blob("summary/manifest.jsonl").upload_from_string("".join(lines).encode("utf-8"))
    remote = f"gs://{BUCKET}/summary"
    assert list(manifest_keys(f"{remote}/manifest.jsonl", chunk_bytes=100)) == list(
        manifest_keys(f"{local}/manifest.jsonl"))
    assert manifest_outcomes(remote) == reference_outcomes(local)
    assert manifest_outcomes(f"gs://{BUCKET}/nothing-here") == ({}, 0)
