"""Cloud Storage without renames: against the real local Cloud Storage server (test_gcs.py's
fixture), every per-patch object and WebDataset shard is written once, straight to its final
name (no temporary object, copy or delete), and the outputs read back as the local ones do."""

import collections
import json
import os

import pytest
import yaml

from pixelbeam.pipeline.cli import main
from test_gcs import BUCKET, LANDSAT, REGIONS, gcs, objects  # noqa: F401 - gcs is the fixture

PER_PATCH = ("npy/", "geotiff/", "png/", "shards/")


@pytest.fixture
def storage_operations(monkeypatch):
    """{"create": Counter(object name), "delete": Counter(object name)} of what the emulator
    stores: an upload, a copy and a rewrite each create an object; a rename is a copy + a delete."""
    from gcp_storage_emulator.storage import Storage
    ops = {"create": collections.Counter(), "delete": collections.Counter()}
    create, delete = Storage.create_file, Storage.delete_file

    def counted_create(self, bucket_name, file_name, *args, **kwargs):
        ops["create"][file_name] += 1
        return create(self, bucket_name, file_name, *args, **kwargs)

    def counted_delete(self, bucket_name, file_name, *args, **kwargs):
        ops["delete"][file_name] += 1
        return delete(self, bucket_name, file_name, *args, **kwargs)

    monkeypatch.setattr(Storage, "create_file", counted_create)
    monkeypatch.setattr(Storage, "delete_file", counted_delete)
    return ops


def test_every_per_patch_object_is_one_write_to_its_final_name(gcs, storage_operations, tmp_path):
    doc = {"source": {"uri": LANDSAT, "bands": [1, 2, 3]}, "regions": REGIONS,
           "grid": {"crs": "native", "scale": "native", "patch_size": 48},
           "output": {"path": f"gs://{BUCKET}/once", "formats": ["npy", "geotiff", "png", "webdataset"],
                      "max_masked_ratio": 0.9, "shard_size_mb": 0.1},
           "mask": {"npy": True}, "fetch": {"max_concurrent_requests": 4}}
    cfg = tmp_path / "once.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["run", str(cfg)]) == 0
    stored = objects(gcs, "once")
    rows = [json.loads(line) for line in stored["manifest.jsonl"].download_as_bytes().decode().splitlines()]
    written = [r for r in rows if r["status"] == "written"]
    files = {f for r in written for f in r["files"]}
    assert len(written) > 20 and len(files) > 4 * len(written)
    assert files <= set(stored)  # every listed object is there
    created = {name[len("once/"):]: n for name, n in storage_operations["create"].items() if name.startswith("once/")}
    per_patch_ops = {name: n for name, n in created.items() if name.startswith(PER_PATCH)}
    assert set(per_patch_ops) == files  # no temporary object was ever made
    assert set(per_patch_ops.values()) == {1}  # one write per file: no copy (rename), no second upload
    deleted = [n[len("once/"):] for n in storage_operations["delete"] if n.startswith("once/")]
    assert not [n for n in deleted if n.startswith(PER_PATCH) or ".tmp-" in n]  # and no delete
    assert not [n for n in created if ".tmp-" in n] and max(created.values()) == 1  # dataset.json, previews: one write
    # (the manifest and dead letters go through Beam's text sink: staged under beam-temp-*, then copied once)


@pytest.mark.parametrize("size", [1000, 20 * 1024 * 1024])  # one request; more than one 16 MiB chunk uploaded
def test_an_upload_that_fails_leaves_no_object(gcs, size):
    from pixelbeam.transforms.storage import open_once
    with pytest.raises(RuntimeError, match="killed"):
        with open_once(f"gs://{BUCKET}/half-{size}/x.bin") as f:
            f.write(b"x" * size)
            raise RuntimeError("killed")
    assert not objects(gcs, f"half-{size}")
    with open_once(f"gs://{BUCKET}/half-{size}/x.bin") as f:
        f.write(b"y" * size)
    assert objects(gcs, f"half-{size}")["x.bin"].size == size
