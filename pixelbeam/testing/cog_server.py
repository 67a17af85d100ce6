"""A local HTTP file server with Range requests, as object stores serve Cloud Optimized GeoTIFFs.

`RangeFileServer(root)` serves the files under `root` on 127.0.0.1 (HTTP/1.1, keep-alive,
`HEAD`, `GET` with `Range: bytes=a-b`, `a-`, `-n`, and several ranges as
`multipart/byteranges`), and logs every request (`log`: path, method, ranges, bytes sent,
status) so tests can check that a reader asked only for the tiles a patch needs. Optional:
a query string every request must carry (`required_query`, e.g. a SAS token: 403 without
it) and injected failures (`fail(path, status, times)`). Binds to loopback only.

    with RangeFileServer("/dev/shm/cogs") as server:
        rasterio.open(f"{server.url}/red.tif")
        server.log.requests("/red.tif"), server.log.bytes("/red.tif")
"""

from __future__ import annotations

import dataclasses
import email.utils
import os
import posixpath
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


@dataclasses.dataclass(frozen=True)
class Request:
    path: str  # URL path, without the query string
    method: str
    ranges: tuple[tuple[int, int], ...]  # inclusive byte ranges served; () for a whole file
    bytes_sent: int  # body bytes
    status: int


class RequestLog:
    """Thread-safe list of the requests a server answered."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: list[Request] = []

    def add(self, request: Request) -> None:
        with self._lock:
            self._items.append(request)

    def all(self, path: Optional[str] = None) -> list[Request]:
        with self._lock:
            return [r for r in self._items if path is None or r.path == path]

    def requests(self, path: Optional[str] = None) -> int:
        return len(self.all(path))

    def bytes(self, path: Optional[str] = None) -> int:
        return sum(r.bytes_sent for r in self.all(path))

    def paths(self) -> set[str]:
        return {r.path for r in self.all()}

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def parse_ranges(header: str, size: int) -> Optional[list[tuple[int, int]]]:
    """Inclusive (start, end) byte ranges of a `Range: bytes=...` header within a file of `size`
    bytes; None if the header is malformed (serve the whole file), [] if none is satisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return None
    out = []
    for part in spec.split(","):
        m = _RANGE.match(part)
        if not m or (not m.group(1) and not m.group(2)):
            return None
        if not m.group(1):  # the last n bytes
            n = int(m.group(2))
            if n:
                out.append((max(0, size - n), size - 1))
            continue
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        if m.group(2) and int(m.group(2)) < start:
            return None
        if start < size:
            out.append((start, end))
    return out


class FileHandlerMixin:
    """Answers GET/HEAD of a file under `self.server.files_root` (with Range); needs
    `self.server.log` (RequestLog), `required_query` and `faults`."""

    def serve_file(self, rel_path: str, head: bool = False) -> None:
        server = self.server
        path = urllib.parse.urlsplit(self.path).path
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if server.required_query and any(query.get(k) != [v] for k, v in server.required_query.items()):
            return self._refuse(path, 403, "missing or wrong access token")
        status = server.take_fault(path)
        if status:
            return self._refuse(path, status, "injected failure")
        full = os.path.realpath(os.path.join(server.files_root, posixpath.normpath(rel_path).lstrip("/")))
        if not full.startswith(os.path.realpath(server.files_root) + os.sep) or not os.path.isfile(full):
            return self._refuse(path, 404, "no such file")
        size = os.path.getsize(full)
        stamp = email.utils.formatdate(os.path.getmtime(full), usegmt=True)
        ranges = parse_ranges(self.headers["Range"], size) if self.headers.get("Range") else None
        if ranges == []:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return server.log.add(Request(path, self.command, (), 0, 416))
        with open(full, "rb") as f:
            if ranges is None:
                body = b"" if head else f.read()
                self.send_response(200)
                self.send_header("Content-Type", "image/tiff")
                self.send_header("Content-Length", str(size))
                parts: tuple = ()
            elif len(ranges) == 1:
                (start, end), = ranges
                f.seek(start)
                body = b"" if head else f.read(end - start + 1)
                self.send_response(206)
                self.send_header("Content-Type", "image/tiff")
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(end - start + 1))
                parts = ((start, end),)
            else:
                boundary = "pixelbeam-byteranges"
                chunks = []
                for start, end in ranges:
                    f.seek(start)
                    chunks.append(f"--{boundary}\r\nContent-Type: image/tiff\r\nContent-Range: bytes {start}-{end}/"
                                  f"{size}\r\n\r\n".encode() + f.read(end - start + 1) + b"\r\n")
                body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
                self.send_response(206)
                self.send_header("Content-Type", f"multipart/byteranges; boundary={boundary}")
                self.send_header("Content-Length", str(len(body)))
                parts = tuple(ranges)
                body = b"" if head else body
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", stamp)
        self.end_headers()
        self.wfile.write(body)
        server.log.add(Request(path, self.command, parts, len(body), 200 if not parts else 206))

    def _refuse(self, path: str, status: int, message: str) -> None:
        body = f'{{"error": "{message}"}}'.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.server.log.add(Request(path, self.command, (), 0, status))


class _Handler(FileHandlerMixin, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self):
        self.serve_file(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path))

    def do_HEAD(self):
        self.serve_file(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path), head=True)


class LoopbackServer(ThreadingHTTPServer):
    """A threading HTTP server on loopback with a request log, an optional required query
    string and injected failures; the base of the development servers here."""

    daemon_threads = True

    def __init__(self, handler, port: int = 0, files_root: Optional[str] = None,
                 required_query: Optional[dict] = None):
        super().__init__(("127.0.0.1", port), handler)
        self.files_root = files_root
        self.required_query = dict(required_query or {})
        self.log = RequestLog()
        self._faults: dict[str, list[int]] = {}
        self._fault_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def handle_error(self, request, client_address):  # a client that hung up is not news
        pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def fail(self, path: str, status: int, times: int = 1) -> None:
        """Answer the next `times` requests for `path` (a URL path) with `status`."""
        with self._fault_lock:
            self._faults.setdefault(path, []).extend([status] * times)

    def take_fault(self, path: str) -> Optional[int]:
        with self._fault_lock:
            queue = self._faults.get(path)
            return queue.pop(0) if queue else None

    def start(self):
        self._thread = threading.Thread(target=self.serve_forever, name="pixelbeam-test-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread:
            self._thread.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class RangeFileServer(LoopbackServer):
    """Files under `root` at `url/<relative path>` (module doc)."""

    def __init__(self, root: str, port: int = 0, required_query: Optional[dict] = None):
        super().__init__(_Handler, port=port, files_root=root, required_query=required_query)
