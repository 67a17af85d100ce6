"""Error classification and retry timing for pixel requests (pure, Beam-free).

Every failure of a pixel request is turned into a `FetchError` that says whether it is
worth retrying (`retryable`), a short `cause` label for metrics ("429", "503", "timeout",
"reset", "truncated", "400", ...) and how long the server asked us to wait
(`retry_after_s`, seconds). `RetryPolicy` turns that into a backoff delay.

Only the standard library is needed to import this module; `requests`, `urllib3`,
`httplib2`, `google.auth` and `googleapiclient` error types are recognised when those
packages are installed (looked up lazily, or duck-typed), and so are GDAL's HTTP errors
raised by rasterio (matched by class name and message).
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import importlib
import random
import re
import ssl
import time
from typing import Iterator, Optional


class FetchError(Exception):
    """A failed pixel request.

    Attributes: `retryable` (bool), `cause` (short metric label), `retry_after_s`
    (seconds the server asked us to wait, or None), `status` (HTTP status or None),
    `attempts` (how many attempts were made before this error was final; 0 while the
    error is still being retried).
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        cause: str,
        retry_after_s: Optional[float] = None,
        status: Optional[int] = None,
        attempts: int = 0,
    ):
        super().__init__(message)
        self.message = message
        self.cause = cause
        self.retry_after_s = retry_after_s
        self.status = status
        self.attempts = attempts

    def __reduce__(self):
        # Keeps the error picklable (Beam moves failures between workers).
        return (
            self.__class__,
            (self.message, self.cause, self.retry_after_s, self.status, self.attempts),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cause={self.cause!r}, message={self.message!r})"


class TransientError(FetchError):
    """A failure that may succeed when retried (5xx, 408, timeouts, dropped connections)."""

    retryable = True


class QuotaError(TransientError):
    """The server refused the request for quota or load reasons (HTTP 429): slow down."""


class PermanentError(FetchError):
    """A failure that will repeat if retried (4xx other than 408/429, bad input, bugs)."""

    retryable = False


# ---------------------------------------------------------------------------------------
# HTTP status codes


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None.

    `now` is the current epoch time in seconds (defaults to `time.time()`), used only for
    the HTTP-date form. A date in the past gives 0.0; unparseable values give None.
    """
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            return None
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # RFC 7231 dates are GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def classify_http_status(
    status: int,
    message: str,
    retry_after: Optional[str] = None,
    now: Optional[float] = None,
) -> FetchError:
    """Map an HTTP error status to a FetchError.

    429 -> QuotaError; 408 and every 5xx -> TransientError; every other status
    (400, 401, 403, 404, other 4xx, and anything unexpected) -> PermanentError.
    `retry_after` is the raw Retry-After header; `now` is epoch seconds for its date form.
    """
    status = int(status)
    text = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    retry_after_s = parse_retry_after(retry_after, now)
    if status == 429:
        return QuotaError(text, "429", retry_after_s, status)
    if status == 408 or 500 <= status <= 599:
        return TransientError(text, str(status), retry_after_s, status)
    return PermanentError(text, str(status), retry_after_s, status)


# ---------------------------------------------------------------------------------------
# Exceptions raised by transports and client libraries


def _optional_types(module_name: str, *names: str) -> tuple[type, ...]:
    """Exception classes from a module if it is importable, else ()."""
    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - optional dependency missing or broken
        return ()
    return tuple(t for t in (getattr(module, n, None) for n in names) if isinstance(t, type))


_TRANSPORT_TABLE: Optional[list[tuple[tuple[type, ...], str]]] = None


def _transport_table() -> list[tuple[tuple[type, ...], str]]:
    """(exception types, cause) pairs, most specific first; built on first use."""
    global _TRANSPORT_TABLE
    if _TRANSPORT_TABLE is None:
        table = [
            # Truncated bodies first: urllib3's IncompleteRead is also a ProtocolError.
            (
                (http.client.IncompleteRead,)
                + _optional_types("requests.exceptions", "ChunkedEncodingError")
                + _optional_types("urllib3.exceptions", "IncompleteRead"),
                "truncated",
            ),
            (
                _optional_types("requests.exceptions", "ContentDecodingError")
                + _optional_types("urllib3.exceptions", "DecodeError"),
                "decode",
            ),
            # Refused / unresolvable connections before timeouts: urllib3's
            # NewConnectionError subclasses ConnectTimeoutError.
            (
                _optional_types("urllib3.exceptions", "NewConnectionError"),
                "connection",
            ),
            (
                (TimeoutError,)  # also socket.timeout and concurrent.futures.TimeoutError
                + _optional_types("requests.exceptions", "Timeout")
                + _optional_types("urllib3.exceptions", "TimeoutError"),
                "timeout",
            ),
            (
                (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ssl.SSLEOFError)
                + _optional_types("urllib3.exceptions", "ProtocolError"),
                "reset",
            ),
            (
                (ConnectionError, http.client.BadStatusLine, http.client.ResponseNotReady)
                + _optional_types("requests.exceptions", "ConnectionError")
                + _optional_types("httplib2", "ServerNotFoundError")
                + _optional_types("google.auth.exceptions", "TransportError"),
                "connection",
            ),
        ]
        _TRANSPORT_TABLE = [(types, cause) for types, cause in table if types]
    return _TRANSPORT_TABLE


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it was raised from or during (`__cause__`, `__context__`, and
    urllib3's `MaxRetryError.reason`), outermost first, without cycles."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        for nxt in (current.__cause__, current.__context__, reason):
            if isinstance(nxt, BaseException):
                stack.append(nxt)


def _header(headers, name: str) -> Optional[str]:
    """Case-insensitive header lookup on a dict-like (httplib2 lowercases its keys)."""
    if headers is None:
        return None
    try:
        value = headers.get(name)
        if value is None:
            value = headers.get(name.lower())
    except Exception:  # noqa: BLE001 - odd header containers
        return None
    return None if value is None else str(value)


def _from_http_error(exc: BaseException, now: Optional[float]) -> Optional[FetchError]:
    """Classify an exception carrying an HTTP status, duck-typed:
    googleapiclient `HttpError` (`.resp.status`, headers on `.resp`, `._get_reason()`)
    and requests `HTTPError` (`.response.status_code`, `.response.headers`, `.text`)."""
    resp = getattr(exc, "resp", None)
    status = getattr(resp, "status", None)
    if status is not None:
        message = ""
        get_reason = getattr(exc, "_get_reason", None)
        try:
            message = get_reason() if callable(get_reason) else ""
        except Exception:  # noqa: BLE001
            message = ""
        if not message:
            content = getattr(exc, "content", b"")
            message = (
                content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
            )
        try:
            return classify_http_status(int(status), message, _header(resp, "retry-after"), now)
        except (TypeError, ValueError):
            return None
    status = getattr(exc, "status_code", None)  # pystac-client's APIError
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        text = str(exc).strip()
        return classify_http_status(status, text.splitlines()[0][:500] if text else "", None, now)
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        try:
            message = str(getattr(response, "text", "") or getattr(response, "reason", "") or "")
        except Exception:  # noqa: BLE001
            message = ""
        try:
            return classify_http_status(
                int(status), message[:500], _header(getattr(response, "headers", None), "Retry-After"), now
            )
        except (TypeError, ValueError):
            return None
    return None


_TOO_MANY_STATUS = re.compile(r"too many (\d{3}) error responses")


def _from_transport_error(exc: BaseException, now: Optional[float]) -> Optional[FetchError]:
    message = f"{type(exc).__name__}: {exc}"
    # urllib3 Retry exhausted on status codes ("too many 503 error responses").
    match = _TOO_MANY_STATUS.search(str(exc))
    if match:
        return classify_http_status(int(match.group(1)), str(exc), None, now)
    for types, cause in _transport_table():
        if isinstance(exc, types):
            return TransientError(message, cause)
    return None


# GDAL's HTTP errors as rasterio raises them (RasterioIOError, or a CPLE_* error in its chain):
# "HTTP response code: 503" when opening, "HTTP error code: 429 - <url>" from a retry, and
# libcurl's "CURL error: <what>" for connections that fail or time out.
_GDAL_STATUS = re.compile(r"HTTP (?:response|error) code: ?(\d{3})")
_GDAL_CURL = re.compile(r"CURL error: ?(.*)", re.IGNORECASE)
_CURL_TIMEOUT = re.compile(r"timed? ?out|timeout", re.IGNORECASE)
_CURL_RESET = re.compile(r"reset|recv failure|send failure|empty reply|connection died|SSL_read|transfer closed",
                         re.IGNORECASE)


def _is_gdal_error(exc: BaseException) -> bool:
    # Matched by name so that this module never has to import rasterio.
    return any(cls.__name__ == "RasterioIOError" or cls.__name__.startswith("CPLE_") for cls in type(exc).__mro__)


def _from_gdal_error(exc: BaseException, now: Optional[float]) -> Optional[FetchError]:
    """A GDAL error that names an HTTP status or a libcurl failure; None for any other GDAL
    error (a file that is not a raster, a band that does not exist: permanent)."""
    if not _is_gdal_error(exc):
        return None
    text = str(exc)
    match = _GDAL_STATUS.search(text)
    if match:
        return classify_http_status(int(match.group(1)), f"GDAL: {text}", None, now)
    match = _GDAL_CURL.search(text)
    if match:
        what = match.group(1)
        cause = "timeout" if _CURL_TIMEOUT.search(what) else "reset" if _CURL_RESET.search(what) else "connection"
        return TransientError(f"GDAL: {text}", cause)
    return None


def _is_ee_exception(exc: BaseException) -> bool:
    # Matched by name so that this module never has to import `ee`.
    return any(cls.__name__ == "EEException" for cls in type(exc).__mro__)


_EE_QUOTA = re.compile(
    r"too many concurrent|too many requests|quota exceeded|rate limit|"
    r"capacity exceeded|resource[ _]exhausted",
    re.IGNORECASE,
)
_EE_TIMEOUT = re.compile(r"timed out|deadline", re.IGNORECASE)
_EE_SERVER = re.compile(
    r"internal error|service unavailable|backend error|try again", re.IGNORECASE
)


def classify_ee_message(message: str) -> FetchError:
    """Last resort for an Earth Engine error with no HTTP error in its chain: guess from
    the message. Quota/concurrency wording -> QuotaError("429"), "timed out"/"deadline"
    -> TransientError("timeout"), "internal error"/"unavailable" -> TransientError("500"),
    anything else -> PermanentError("EEException")."""
    text = f"EEException: {message}"
    if _EE_QUOTA.search(message):
        return QuotaError(text, "429")
    if _EE_TIMEOUT.search(message):
        return TransientError(text, "timeout")
    if _EE_SERVER.search(message):
        return TransientError(text, "500")
    return PermanentError(text, "EEException")


def classify_exception(exc: BaseException, now: Optional[float] = None) -> FetchError:
    """Turn any exception from a pixel request into a FetchError.

    Walks the exception chain outermost first (`__cause__`, `__context__`, urllib3's
    `.reason`), because the Earth Engine client raises `ee.EEException` inside an
    `except HttpError:` block, leaving the HttpError (with the real status) on
    `__context__`. The first link that is a FetchError, carries an HTTP status (an attribute
    such as pystac-client's `APIError.status_code`, or GDAL's "HTTP response code: 503" in a
    RasterioIOError), or is a known transport error (libcurl's "CURL error: ..." through
    GDAL too) decides. Otherwise an EEException is classified from its
    message (last resort, see `classify_ee_message`), and anything else is a
    PermanentError whose cause is the exception's class name. `now` is epoch seconds for
    Retry-After dates.
    """
    chain = list(_exception_chain(exc))
    for link in chain:
        if isinstance(link, FetchError):
            return link
        found = _from_http_error(link, now) or _from_transport_error(link, now) or _from_gdal_error(link, now)
        if found is not None:
            return found
    for link in chain:
        if _is_ee_exception(link):
            return classify_ee_message(str(link))
    return PermanentError(f"{type(exc).__name__}: {exc}", type(exc).__name__)


# ---------------------------------------------------------------------------------------
# Backoff


class RetryPolicy:
    """How many attempts to make and how long to sleep between them.

    `delay_s(attempt, error)` after failed attempt number `attempt` (1-based) is
    "full jitter" exponential backoff: uniform(0, min(max_delay_s, base_delay_s *
    2**(attempt-1))) seconds. When the server sent Retry-After, the delay is
    min(max_delay_s, retry_after_s + that jitter): never shorter than the server asked
    (the jitter on top keeps threads that got the same Retry-After from returning in
    lock-step), but never longer than `max_delay_s`. The cap is deliberate: a worker
    thread parked for an hour is worse than one extra rejected request, and the
    adaptive throttler slows the other threads meanwhile.
    """

    def __init__(
        self,
        max_attempts: int = 6,
        base_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        rng: Optional[random.Random] = None,
    ):
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if base_delay_s < 0 or max_delay_s < 0:
            raise ValueError("delays must be >= 0")
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._rng = rng if rng is not None else random.Random()

    def backoff_ceiling_s(self, attempt: int) -> float:
        """Upper bound of the jittered backoff after failed attempt `attempt`, seconds."""
        exponent = min(max(attempt, 1) - 1, 64)  # avoids float overflow for huge attempts
        return min(self.max_delay_s, self.base_delay_s * 2.0**exponent)

    def delay_s(self, attempt: int, error: FetchError) -> float:
        """Seconds to sleep after failed attempt number `attempt` (1-based)."""
        jitter = self._rng.uniform(0.0, self.backoff_ceiling_s(attempt))
        floor = error.retry_after_s or 0.0
        return min(self.max_delay_s, floor + jitter)

    def should_retry(self, attempt: int, error: FetchError) -> bool:
        """True if `error` is retryable and attempt `attempt` was not the last allowed."""
        return bool(error.retryable) and attempt < self.max_attempts


def call_with_retries(call, policy: RetryPolicy, sleep=time.sleep):
    """`call()` retried by `policy` (for the launcher's few metadata requests, which have no
    throttler); raises the final FetchError, the original exception chained."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - everything is classified
            error = classify_exception(exc)
            if not policy.should_retry(attempt, error):
                raise error from exc
            sleep(policy.delay_s(attempt, error))


__all__ = [
    "FetchError",
    "TransientError",
    "QuotaError",
    "PermanentError",
    "parse_retry_after",
    "classify_http_status",
    "classify_exception",
    "classify_ee_message",
    "RetryPolicy",
    "call_with_retries",
]
