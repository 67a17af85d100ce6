"""Remote rasters over HTTP: GDAL's HTTP options on every worker, signed URLs, and secrets kept
out of every message. Pure, Beam-free.

- `gdal_http_options(overrides, timeout_s)`: the GDAL config options a reader sets (through
  `rasterio.Env`, in the thread that opens and reads, on every worker; not only on the
  launcher): no directory listing beside each COG, HTTP/2 multiplexing, GDAL's own retry of a
  tile read on 429/502/503/504 (what still fails reaches pixelbeam's classified retries), the
  fetch timeout; any of them overridable (e.g. `CPL_VSIL_CURL_USE_HEAD: NO` where presigned
  URLs refuse HEAD, at the cost of an unranged GET when a file is opened).
- `Signer`: how an asset's href becomes a URL that can be read: unchanged, signed by
  Planetary Computer's SDK (`planetary_computer.sign`), a SAS token (a query string) appended,
  or a function `module:function` (href -> URL). Signing happens where the file is opened
  (worker threads), so tokens are fresh; a handle that fails is reopened with a new signature.
- `hide_secrets` (transforms/secrets.py, the one place that redacts credentials): what
  pixelbeam writes or prints about a remote file passes through it (the launcher's errors, dead
  letters, GDAL's own log lines).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Callable, Optional

from pixelbeam.transforms.secrets import REDACTED, Secret, hide_secrets  # noqa: F401 - re-exported
from pixelbeam.transforms.secrets import hide_secrets_in_logs as _hide_secrets_in_logs
from pixelbeam.transforms.sources.base import SourceError

GDAL_HTTP_DEFAULTS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # a COG is one file: no listing of its folder
    "GDAL_HTTP_MULTIPLEX": "YES",  # HTTP/2: a patch's range requests share one connection
    "GDAL_HTTP_MAX_RETRY": "3",  # GDAL retries a tile read on 429/502/503/504 itself...
    "GDAL_HTTP_RETRY_DELAY": "1",  # ...after 1 s, doubling; then pixelbeam's retries decide
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
}
SIGN_KINDS = ("none", "planetary_computer", "query", "hook")

def gdal_http_options(overrides: Optional[dict] = None, timeout_s: Optional[float] = None) -> dict[str, str]:
    """GDAL config options for remote reads: the defaults, the fetch timeout, then `overrides`."""
    options = dict(GDAL_HTTP_DEFAULTS)
    if timeout_s:
        options["GDAL_HTTP_TIMEOUT"] = str(max(1, int(round(timeout_s))))
        options["GDAL_HTTP_CONNECTTIMEOUT"] = str(max(1, int(round(min(timeout_s, 30.0)))))
    for key, value in (overrides or {}).items():
        options[str(key)] = ("YES" if value else "NO") if isinstance(value, bool) else str(value)
    return options


@dataclasses.dataclass(frozen=True)
class Signer:
    """How hrefs become readable URLs (module doc); `field` names the config key in errors."""

    kind: str = "none"
    query: Optional[Secret] = None  # kind query: "sv=...&sig=..." (a SAS token)
    hook: Optional[str] = None  # kind hook: "module:function"
    field: str = "source.sign"

    def check(self) -> None:
        """On the launcher: the signing step can run here (package installed, hook importable)."""
        if self.kind not in SIGN_KINDS:
            raise SourceError(f"{self.field}: {self.kind!r} is not a signing method; use {', '.join(SIGN_KINDS)}")
        self._function()

    def _function(self) -> Callable[[str], str]:
        if self.kind == "planetary_computer":
            try:
                import planetary_computer
            except ImportError:
                raise SourceError(f"{self.field}: planetary_computer needs the planetary-computer package; "
                                  "pip install planetary-computer") from None
            return planetary_computer.sign
        if self.kind == "hook":
            module, _, name = (self.hook or "").partition(":")
            try:
                function = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError, ValueError) as e:
                raise SourceError(f"{self.field}.hook: cannot import {self.hook!r} ({type(e).__name__}); give "
                                  "module:function, a function that turns an href into a signed URL") from None
            if not callable(function):
                raise SourceError(f"{self.field}.hook: {self.hook!r} is not a function")
            return function
        if self.kind == "query":
            token = self.query.reveal().lstrip("?&") if self.query else ""
            return lambda href: f"{href}{'&' if '?' in href else '?'}{token}" if token else href
        return lambda href: href

    def sign(self, href: str) -> str:
        """A URL for `href` that can be read now."""
        if self.kind == "none" or not is_remote(href):
            return href
        try:
            signed = self._function()(href)
        except SourceError:
            raise
        except Exception as e:  # a signing service that failed: the fetch layer retries what is transient
            raise SigningError(f"{self.field}: signing {hide_secrets(href, self.secrets)} failed "
                               f"({type(e).__name__}: {hide_secrets(str(e), self.secrets)})") from e
        if not isinstance(signed, str):
            raise SourceError(f"{self.field}: the signing step returned {type(signed).__name__}, not a URL")
        return signed

    @property
    def secrets(self) -> tuple[str, ...]:
        if self.query is None:
            return ()
        token = self.query.reveal().lstrip("?&")
        return tuple(v for v in (token, *re.findall(r"=([^&]+)", token)) if len(v) >= 4)


class SigningError(RuntimeError):
    """The signing step raised (e.g. Planetary Computer's token service was unreachable)."""


def is_remote(href: str) -> bool:
    """A URL or a GDAL /vsi path (read over a network), not a local file."""
    return "://" in href or href.startswith("/vsi")


_gdal = None


def _gdal_library():
    """The GDAL library rasterio runs on (ctypes), found among the process's mapped files; None
    where it cannot be found (then GDAL's caches are left alone). pyogrio's wheels bring a GDAL
    of their own, mapped beside rasterio's: clearing that one's cache would do nothing."""
    global _gdal
    if _gdal is None:
        import ctypes
        import ctypes.util
        import rasterio  # noqa: F401  (its GDAL must be mapped before it is looked for)
        paths = []
        try:
            with open("/proc/self/maps", encoding="utf-8") as maps:
                paths = [line.split()[-1] for line in maps if "libgdal" in line and "/" in line]
        except OSError:
            pass
        path = next((p for p in paths if "rasterio" in p), paths[0] if paths else None)
        path = path or ctypes.util.find_library("gdal")
        try:
            lib = ctypes.CDLL(path) if path else None
            lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
            lib.VSICurlClearCache.argtypes = []
        except (OSError, AttributeError):
            lib = None
        _gdal = lib or False
    return _gdal or None


def forget_remote_file(url: str) -> None:
    """Drop what GDAL cached about `url` (its size, a failed request, its blocks), so the next
    open asks the server again: GDAL remembers a failed HEAD or GET for the life of the
    process, which would turn a transient 503 at open into a failure on every retry."""
    lib = _gdal_library()
    if lib is None or not is_remote(url):
        return
    prefix = url if url.startswith("/vsi") else f"/vsicurl/{url}"
    lib.VSICurlPartialClearCache(prefix.encode("utf-8"))


def forget_remote_files() -> None:
    """Drop everything GDAL cached about remote files in this process: a reader opened for a
    new run (the Python API or a notebook reruns in one process) must not inherit the previous
    run's failed opens (e.g. a 403 before a token was fixed), which GDAL would otherwise keep."""
    lib = _gdal_library()
    if lib is not None:
        lib.VSICurlClearCache()


GDAL_LOGGERS = ("rasterio._err", "rasterio._env", "rasterio._base", "rasterio._io", "rasterio._filepath",
                "rasterio.env", "pystac_client.stac_api_io")


def hide_secrets_in_logs(loggers: tuple[str, ...] = GDAL_LOGGERS) -> None:
    """Rewrite GDAL's (and pystac-client's) log lines, which carry the URLs they read, without
    their query strings; once per process, on the launcher and every worker."""
    _hide_secrets_in_logs(loggers)
