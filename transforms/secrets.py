"""Credentials kept out of everything pixelbeam writes or prints: the one place that redacts
them. Pure, Beam-free.

A URL's query string (a signed URL's `X-Goog-Signature`, a `?token=`, a SAS token's `sig=`;
all but a harmless `?project=`) and its userinfo (`user:password@`) are replaced by `REDACTED`, and so is any secret string
given (a signing token). Where it is used: dataset.json and table.json (the recorded config),
manifest and dead-letter lines (`transforms/storage.to_json_line`), `ConfigError` messages,
plan output, every line the command prints, and log records (`hide_secrets_in_logs`: every
record made in the process, on the launcher and on workers that read remote files).

- `hide_secrets(text, secrets)`: `text` redacted.
- `hide_secrets_in(doc, secrets)`: a JSON-like document (dicts, lists, strings) redacted.
- `has_redactions(doc)`: whether a recorded document lost a credential (it cannot be rerun as is).
- `Secret`: a string that never shows in a repr or a str() (it still pickles).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

REDACTED = "REDACTED"
# A query string naming only these is kept: a Dataflow console link's `?project=` (any other
# parameter may be a credential, so a query with one is redacted whole)
SAFE_QUERY_NAMES = frozenset({"project"})

_URL = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@'\"<>]*@)?"
                  r"(?P<rest>[^\s?'\"<>]*)(?P<query>\?[^\s'\"<>]*)?")


def hide_secrets(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with URL query strings and userinfo, and each of `secrets`, replaced (module doc)."""
    if not isinstance(text, str) or not text:
        return text
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    if "://" not in text:  # the common case (a manifest row): no regex
        return text
    return _URL.sub(lambda m: (m["scheme"] + (f"{REDACTED}@" if m["userinfo"] else "") + m["rest"]
                               + _hidden_query(m["query"])), text)


def _hidden_query(query) -> str:
    """A URL's query string, redacted unless it names only harmless parameters (SAFE_QUERY_NAMES)."""
    if not query or len(query) == 1:
        return query or ""
    names = {pair.split("=", 1)[0] for pair in query[1:].split("&")}
    return query if names <= SAFE_QUERY_NAMES else f"?{REDACTED}"


def hide_secrets_in(doc: Any, secrets: tuple[str, ...] = ()) -> Any:
    """A copy of a JSON-like document (dict keys kept) with every string passed through hide_secrets."""
    if isinstance(doc, str):
        return hide_secrets(doc, secrets)
    if isinstance(doc, dict):
        return {key: hide_secrets_in(value, secrets) for key, value in doc.items()}
    if isinstance(doc, (list, tuple)):
        return type(doc)(hide_secrets_in(value, secrets) for value in doc)
    return doc


def has_redactions(doc: Any) -> bool:
    """Whether a recorded (redacted) document names a URL whose credentials were left out."""
    if isinstance(doc, str):
        return f"://{REDACTED}@" in doc or f"?{REDACTED}" in doc
    if isinstance(doc, dict):
        return any(has_redactions(value) for value in doc.values())
    if isinstance(doc, (list, tuple)):
        return any(has_redactions(value) for value in doc)
    return False


class Secret:
    """A string that never shows in a repr, a str() or a log line (it still pickles)."""

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{REDACTED}')"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):
        return (Secret, (self._value,))


def hide_secrets_in_record(record: logging.LogRecord) -> logging.LogRecord:
    """`record` with its message (and its traceback's text) redacted, in place."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record: leave it to logging
        return record
    hidden = hide_secrets(message)
    if hidden != message:
        record.msg, record.args = hidden, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = hide_secrets(logging.Formatter().formatException(record.exc_info))
    return record


class HideSecrets(logging.Filter):
    """A log filter (for a logger or a handler) that redacts each record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        hide_secrets_in_record(record)
        return True


_log_filter_lock = threading.Lock()
_filtered: set = set()


def hide_secrets_in_logs(loggers: tuple[str, ...] = ()) -> None:
    """Redact every log record this process makes (all loggers, every handler: a record is
    redacted when it is made), and, for good measure, filter `loggers` (by name); once per
    process. The CLI and the Python API call it on the launcher, sources that read remote
    files on every worker."""
    with _log_filter_lock:
        if "" not in _filtered:
            make_record = logging.getLogRecordFactory()

            def redacted_record(*args, **kwargs) -> logging.LogRecord:
                return hide_secrets_in_record(make_record(*args, **kwargs))

            logging.setLogRecordFactory(redacted_record)
            _filtered.add("")
        for name in loggers:
            if name not in _filtered:
                logging.getLogger(name).addFilter(HideSecrets())
                _filtered.add(name)
