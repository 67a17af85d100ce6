"""Secrets stay out of outputs and logs, names from input cannot escape the output folder,
YAML loads safely, and the emulator binds to loopback only."""

import glob
import json
import logging
import os

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pixelbeam.pipeline.cli import main
from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDSAT = os.path.join(ROOT, "data", "RGB.byte.tif")


def test_yaml_tags_are_not_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "job.yaml"
    path.write_text(f'source: !!python/object/apply:os.system ["touch {marker}"]\nregions: x\noutput: {{path: o}}\n')
    assert main(["plan", str(path)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not marker.exists()


def test_region_ids_cannot_escape_the_output_folder(tmp_path):
    regions = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "../../escaped", "properties": {},
         "geometry": {"type": "Polygon", "coordinates": [[[-78.0, 24.3], [-77.9, 24.3], [-77.9, 24.4], [-78.0, 24.4],
                                                          [-78.0, 24.3]]]}}]}
    (tmp_path / "regions.geojson").write_text(json.dumps(regions))
    cfg = {"source": {"uri": LANDSAT}, "regions": str(tmp_path / "regions.geojson"),
           "grid": {"crs": "native", "scale": "native", "patch_size": 16},
           "output": {"path": str(tmp_path / "sub" / "out")}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "job.yaml")]) == 0
    everything = {os.path.relpath(p, tmp_path) for p in glob.glob(str(tmp_path / "**"), recursive=True)}
    outside = {p for p in everything if not p.startswith(os.path.join("sub", "out")) and p not in (
        ".", "sub", "regions.geojson", "job.yaml")}
    assert outside == set()
    with open(tmp_path / "sub" / "out" / "manifest.jsonl") as f:
        assert {json.loads(line)["region_id"] for line in f} == {"../../escaped"}  # kept as data, never a path


def test_emulator_binds_loopback_only():
    with pytest.raises(ValueError):
        EmulatorServer({}, EmulatorConfig(), host="0.0.0.0")


def test_service_account_key_never_appears_in_messages_logs_or_outputs(tmp_path, capsys, caplog):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    secret_line = pem.splitlines()[5]  # a line of the key itself
    with EmulatorServer({}, EmulatorConfig()) as server:
        key_file = tmp_path / "key.json"
        key_file.write_text(json.dumps({
            "type": "service_account", "project_id": "pixelbeam-test", "private_key_id": "k1",
            "private_key": pem, "client_email": "bot@pixelbeam-test.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": f"{server.url}/token"}))
        cfg = {"source": {"kind": "earthengine", "asset": "projects/pixelbeam-test/assets/x", "url": server.url,
                          "credentials": str(key_file), "project": "pixelbeam-test"},
               "regions": [-78.0, 24.3, -77.9, 24.4], "grid": {"crs": "EPSG:32618", "scale": 300},
               "output": {"path": str(tmp_path / "out")}}
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
        with caplog.at_level(logging.DEBUG):
            code = main(["run", str(tmp_path / "job.yaml")])
    captured = capsys.readouterr()
    assert code == 2  # the emulator has no token endpoint: a one-line error, not a traceback
    assert captured.err.startswith("pixelbeam: error: source: cannot initialize Earth Engine")
    for text in (captured.out, captured.err, caplog.text):
        assert secret_line not in text and "PRIVATE KEY" not in text
    assert not (tmp_path / "out").exists()
