"""Local Earth Engine REST emulator: getPixels/computePixels (NPY) from local GeoTIFFs.

In-process::

    from pixelbeam.testing.ee_emulator import EmulatorConfig, EmulatorServer, initialize_ee_client
    catalog = {"images": {"projects/demo/assets/landsat":
                              {"path": "/abs/RGB.byte.tif", "bands": ["B4", "B3", "B2"]}}}
    with EmulatorServer(catalog, EmulatorConfig(max_concurrent=4)) as emulator:
        initialize_ee_client(emulator.url)        # the real ee client, no credentials
        ee.data.getPixels({"assetId": "projects/demo/assets/landsat", "fileFormat": "NPY",
                           "grid": {...}, "bandIds": ["B4"]})
        emulator.stats()                          # also GET {url}/_emulator/stats

As a process (prints ``EMULATOR_URL=http://127.0.0.1:PORT`` once listening)::

    python -m pixelbeam.testing.ee_emulator --port 0 --catalog catalog.json --latency-s 1.0 \\
        --max-concurrent 40 --max-rps 100 --fault-429 0.1 --seed 0

``initialize_ee_client(url)`` is exactly::

    ee.Initialize(credentials=google.auth.credentials.AnonymousCredentials(),
                  url=url, project="demo")

made while ``ee.deprecation._FetchDataCatalogStac`` returns ``{}``: otherwise
``ee.Initialize`` downloads a STAC catalog from storage.googleapis.com to warn
about deprecated assets, which must not happen offline. ``credentials=None``
also works (no Authorization header is sent); a project is required either way.

``fileFormat`` "NPY" returns the raw .npy bytes; "NUMPY_NDARRAY" makes the
client send "NPY" and ``numpy.load`` the answer into a structured (H, W) array
with one field per band in the band's dtype (see ``image_ops`` for dtypes).

Stats (``EmulatorServer.stats()`` or ``GET /_emulator/stats``; pixel requests
only; ``POST /_emulator/reset`` zeroes them and restarts the fault sequence):
requests_received, answered_200, rejected_429 {concurrency, rate, injected},
faults {500, 503, hang, reset, truncate}, errors_by_code, in_flight,
peak_in_flight, in_flight_histogram {in-flight count at admission: times}.

Errors reach the client as ``ee.EEException`` (message = the JSON error
message) whose ``__context__`` is the ``googleapiclient.errors.HttpError``
(``.resp.status``; headers such as ``retry-after`` in ``.resp``, lower-cased).
Connection resets and truncated bodies surface as the builtin
``ConnectionError`` and client timeouts (``ee.data.setDeadline``) as the
builtin ``TimeoutError`` — not EEException. Set ``ee.data.setMaxRetries(0)``
to see every failure (googleapiclient otherwise retries 429/5xx and socket
errors itself).
"""

from __future__ import annotations

from typing import Any

from .catalog import Catalog, CatalogImage, canonical_asset_id
from .pixels import MAX_BANDS, MAX_GRID_DIMENSION, MAX_REQUEST_BYTES, EmulatorError
from .server import EmulatorConfig, EmulatorServer


def initialize_ee_client(url: str, project: str = "demo", **kwargs: Any) -> None:
    """Points the real ``ee`` client at the emulator at ``url`` (no credentials, offline)."""
    import ee
    import ee.deprecation
    import google.auth.credentials

    fetch = ee.deprecation._FetchDataCatalogStac
    ee.deprecation._FetchDataCatalogStac = lambda: {}
    try:
        ee.Initialize(credentials=google.auth.credentials.AnonymousCredentials(),
                      url=url, project=project, **kwargs)
    finally:
        ee.deprecation._FetchDataCatalogStac = fetch


__all__ = [
    "Catalog", "CatalogImage", "EmulatorConfig", "EmulatorError", "EmulatorServer",
    "MAX_BANDS", "MAX_GRID_DIMENSION", "MAX_REQUEST_BYTES", "canonical_asset_id",
    "initialize_ee_client",
]
