"""HTTP server emulating Earth Engine REST v1 getPixels/computePixels (NPY only).

Also serves the discovery document and algorithm list the ee client loads on
``ee.Initialize``, a quota/fault layer on the pixel endpoints only, and
``GET /_emulator/stats`` / ``POST /_emulator/reset``.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import json
import os
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from . import expressions, pixels
from .catalog import Catalog
from .pixels import EmulatorError, invalid, not_found

FAULT_KINDS = ("429", "400", "500", "503", "hang", "reset", "truncate")
_API_PATH = re.compile(r"^/(?:v1|v1alpha|v1beta)/projects/([^/]+)/(.+)$")


@dataclasses.dataclass
class EmulatorConfig:
    """Quota and fault settings for the pixel endpoints (all off by default).

    latency_s: seconds every admitted pixel request sleeps before answering.
    max_concurrent: requests in flight allowed (0 = unlimited); more -> 429.
    max_rps: admitted requests per sliding 1 s window (0 = unlimited); more -> 429.
    fault_*: probability per pixel request of each injected fault (sum <= 1).
    hang_s: seconds a "hang" fault sleeps before answering normally.
    retry_after_s: Retry-After header (seconds) on injected 429s; None = no header.
    seed: seeds the fault draws; one draw per pixel request in arrival order.
    """

    latency_s: float = 0.0
    max_concurrent: int = 0
    max_rps: float = 0.0
    fault_429: float = 0.0
    fault_400: float = 0.0  # a permanent error (INVALID_ARGUMENT), for dead-letter tests
    fault_500: float = 0.0
    fault_503: float = 0.0
    fault_hang: float = 0.0
    fault_reset: float = 0.0
    fault_truncate: float = 0.0
    hang_s: float = 30.0
    retry_after_s: float | None = None
    seed: int = 0

    def fault_rates(self) -> list[tuple[str, float]]:
        rates = [(kind, float(getattr(self, f"fault_{kind}"))) for kind in FAULT_KINDS]
        if any(r < 0 for _, r in rates) or sum(r for _, r in rates) > 1.0 + 1e-9:
            raise ValueError(f"fault rates must be >= 0 and sum to <= 1: {rates}")
        return rates


class _Stats:
    """Counters for pixel requests; mutate only under the server lock."""

    def __init__(self) -> None:
        self.requests_received = 0
        self.answered_200 = 0
        self.rejected_429 = {"concurrency": 0, "rate": 0, "injected": 0}
        self.faults = {kind: 0 for kind in FAULT_KINDS if kind != "429"}
        self.errors_by_code: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.in_flight_histogram: collections.Counter[int] = collections.Counter()

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests_received": self.requests_received,
            "answered_200": self.answered_200,
            "rejected_429": dict(self.rejected_429),
            "faults": dict(self.faults),
            "errors_by_code": dict(self.errors_by_code),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            # in-flight count (including the new request) seen at each admission
            "in_flight_histogram": {str(k): v for k, v in sorted(self.in_flight_histogram.items())},
        }


def _ee_test_document(name: str) -> bytes:
    import ee  # the documents ship with the installed client

    with open(os.path.join(os.path.dirname(ee.__file__), "tests", name), "rb") as f:
        return f.read()


def _loopback_host(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"the EE emulator only binds loopback addresses, not {host!r}")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    emulator: "EmulatorServer"

    def handle_error(self, request, client_address) -> None:
        pass  # client disconnects (timeouts, resets) are expected; stay quiet


class EmulatorServer:
    """The emulator on 127.0.0.1; ``start()`` serves from a daemon thread."""

    def __init__(self, catalog: Catalog | dict | None = None, config: EmulatorConfig | None = None,
                 host: str = "127.0.0.1", port: int = 0, record: bool = False):
        self.catalog = catalog if isinstance(catalog, Catalog) else Catalog(catalog)
        # with record: (method, request body) of every pixel and value request, in arrival order
        self.recorded: list[tuple[str, dict[str, Any]]] | None = [] if record else None
        host = _loopback_host(host)
        server_class = _HTTPServer
        if ":" in host:
            server_class = type("_HTTPServer6", (_HTTPServer,), {"address_family": socket.AF_INET6})
        self._httpd = server_class((host, port), _Handler)
        self._httpd.emulator = self
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.set_config(config or EmulatorConfig())
        discovery = json.loads(_ee_test_document("cloud_api_discovery_document.json"))
        for key in ("rootUrl", "mtlsRootUrl"):
            discovery[key] = self.url + "/"
        discovery["baseUrl"] = self.url + "/" + discovery.get("servicePath", "")
        self.discovery_document = json.dumps(discovery).encode()
        self.algorithms_document = _ee_test_document("algorithms.json")

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> "EmulatorServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ee-emulator",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "EmulatorServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_config(self, config: EmulatorConfig) -> None:
        """Replaces quota/fault settings and restarts the fault sequence from its seed."""
        config.fault_rates()
        with self._lock:
            self.config = config
            self._rng = random.Random(config.seed)
            self._rate_window: collections.deque[float] = collections.deque()
            if not hasattr(self, "_stats"):
                self._stats = _Stats()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._stats.as_dict()

    def reset_stats(self) -> None:
        """Zeroes the counters and restarts the fault sequence (requests in flight stay counted)."""
        with self._lock:
            in_flight = self._stats.in_flight
            self._stats = _Stats()
            self._stats.in_flight = in_flight
            self._rng = random.Random(self.config.seed)
            self._rate_window.clear()

    # -- quota and faults -------------------------------------------------
    def admit(self) -> str:
        """Counts a pixel request; returns "concurrency"/"rate" (rejected) or a fault kind or ""."""
        with self._lock:
            stats, cfg = self._stats, self.config
            stats.requests_received += 1
            draw, fault = self._rng.random(), ""
            for kind, rate in cfg.fault_rates():
                if draw < rate:
                    fault = kind
                    break
                draw -= rate
            if cfg.max_concurrent and stats.in_flight >= cfg.max_concurrent:
                stats.rejected_429["concurrency"] += 1
                return "concurrency"
            now = time.monotonic()
            while self._rate_window and self._rate_window[0] <= now - 1.0:
                self._rate_window.popleft()
            if cfg.max_rps and len(self._rate_window) >= cfg.max_rps:
                stats.rejected_429["rate"] += 1
                return "rate"
            self._rate_window.append(now)
            stats.in_flight += 1
            stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
            stats.in_flight_histogram[stats.in_flight] += 1
            if fault == "429":
                stats.rejected_429["injected"] += 1
            elif fault:
                stats.faults[fault] += 1
            return fault

    def release(self, code: int | None) -> None:
        with self._lock:
            self._stats.in_flight -= 1
            if code == 200:
                self._stats.answered_200 += 1
            elif code is not None and code != 429:
                self._stats.errors_by_code[str(code)] += 1

    # -- pixels -----------------------------------------------------------
    def render(self, project: str, project_path: str, body: dict[str, Any]) -> bytes:
        """NPY bytes for ``projects/{project}/`` + ``assets/{id}:getPixels`` or
        ``image:computePixels``; JSON ``{"result": ...}`` for ``value:compute``."""
        if self.recorded is not None:
            with self._lock:
                self.recorded.append((project_path.rsplit(":", 1)[-1], body))
        if project_path == "value:compute":  # what getInfo() sends: a JSON {"result": value}
            if "expression" not in body:
                raise invalid("value:compute: expression is required.")
            result = expressions.to_json_value(expressions.evaluate(body["expression"], self.catalog))
            return json.dumps({"result": result}).encode()
        unsupported = [k for k in ("region", "visualizationOptions") if body.get(k)]
        if unsupported:
            raise invalid(f"The emulator does not support {unsupported}; pass a grid.")
        if body.get("fileFormat") not in ("NPY", "NUMPY_NDARRAY"):
            raise invalid(f"fileFormat {body.get('fileFormat')!r} is not supported by the "
                          "emulator (only NPY).")
        if project_path.endswith(":getPixels") and project_path.startswith("assets/"):
            name = f"projects/{project}/{project_path[:-len(':getPixels')]}"
            asset = self.catalog.image(name)
            if asset is None:
                raise not_found(f"Image asset '{name}' not found (does not exist or caller "
                                "does not have access).")
            image, default_grid = pixels.asset_image(asset), pixels.native_grid(asset)
        elif project_path == "image:computePixels":
            if "expression" not in body:
                raise invalid("computePixels: expression is required.")
            image = expressions.evaluate_image(body["expression"], self.catalog)
            default_grid = None
        else:
            raise not_found(f"Unknown method {project_path!r}.")
        if body.get("grid"):
            grid = pixels.Grid.from_json(body["grid"])
        elif default_grid is not None:
            grid = default_grid
        else:
            raise invalid("computePixels: grid is required by the emulator.")
        band_ids = body.get("bandIds")
        if band_ids is not None and not isinstance(band_ids, list):
            raise invalid("bandIds must be a list of band names.")
        bands = pixels.select_output_bands(image, band_ids)
        pixels.check_request_size(bands, grid)
        return pixels.encode_npy(bands, grid)


_STATUS_FOR_CODE = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
                    500: "INTERNAL", 503: "UNAVAILABLE"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like Google front ends
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        emulator, path = self.server.emulator, self._path()
        if path == "/$discovery/rest":
            self._send(200, emulator.discovery_document, "application/json")
        elif path == "/_emulator/stats":
            self._send_json(200, emulator.stats())
        elif (m := _API_PATH.match(path)) and m.group(2) == "algorithms":
            self._send(200, emulator.algorithms_document, "application/json")
        else:
            self._send_error(404, f"No GET handler for {path}.")

    def do_POST(self) -> None:
        emulator, path = self.server.emulator, self._path()
        raw_body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/_emulator/reset":
            emulator.reset_stats()
            self._send_json(200, {})
            return
        m = _API_PATH.match(path)
        if not m or not (m.group(2).endswith((":getPixels", ":computePixels")) or m.group(2) == "value:compute"):
            self._send_error(404, f"No POST handler for {path}.")
            return
        outcome = emulator.admit()
        if outcome in ("concurrency", "rate"):
            what = "concurrent requests" if outcome == "concurrency" else "requests per second"
            self._send_error(429, f"Too many {what}.")
            return
        released: list[int | None] = []

        def release(code: int | None) -> None:
            """Records the outcome once, before the response goes out, so a client that
            has its answer also sees it in the stats."""
            if not released:
                released.append(code)
                emulator.release(code)
        try:
            self._answer_pixels(m.group(1), m.group(2), raw_body, outcome, release)
        finally:
            release(None)

    def _answer_pixels(self, project: str, project_path: str, raw_body: bytes, fault: str,
                       release: Callable[[int | None], None]) -> None:
        """Sleeps, then injects ``fault`` or computes and answers."""
        cfg = self.server.emulator.config
        if cfg.latency_s > 0:
            time.sleep(cfg.latency_s)
        if fault == "429":
            headers = {}
            if cfg.retry_after_s is not None:
                headers["Retry-After"] = f"{cfg.retry_after_s:g}"
            release(429)
            self._send_error(429, "Too many requests (injected).", headers)
            return
        if fault == "400":
            release(400)
            self._send_error(400, "Injected permanent error 400.", status="INVALID_ARGUMENT")
            return
        if fault in ("500", "503"):
            release(int(fault))
            self._send_error(int(fault), f"Injected error {fault}.")
            return
        if fault == "reset":
            release(None)
            self._reset_connection()
            return
        if fault == "hang":
            time.sleep(cfg.hang_s)
        try:
            body = json.loads(raw_body or b"{}")
            if not isinstance(body, dict):
                raise invalid("Request body must be a JSON object.")
            payload = self.server.emulator.render(project, project_path, body)
        except json.JSONDecodeError as exc:
            payload, error = None, invalid(f"Invalid JSON payload: {exc}")
        except EmulatorError as exc:
            payload, error = None, exc
        except Exception as exc:  # a bug or an unreadable raster: answer like EE would
            payload, error = None, EmulatorError(500, "INTERNAL", f"{type(exc).__name__}: {exc}")
        if payload is None:
            release(error.code)
            self._send_error(error.code, error.message, status=error.status)
        elif fault == "truncate":
            release(None)
            self._send_truncated(payload)
        else:
            release(200)
            kind = "application/json" if project_path == "value:compute" else "application/octet-stream"
            self._send(200, payload, kind)

    # -- low-level responses ----------------------------------------------
    def _path(self) -> str:
        return urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)

    def _send(self, code: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client went away (e.g. timed out during a hang)
            self.close_connection = True

    def _send_json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json; charset=UTF-8", headers)

    def _send_error(self, code: int, message: str, headers: dict[str, str] | None = None,
                    status: str | None = None) -> None:
        error = {"code": code, "message": message, "status": status or _STATUS_FOR_CODE[code]}
        self._send_json(code, {"error": error}, headers)

    def _reset_connection(self) -> None:
        """Closes the socket with SO_LINGER 0 so the peer sees a TCP RST, no response."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _send_truncated(self, payload: bytes) -> None:
        """Announces the full Content-Length, sends half the body, then closes."""
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
