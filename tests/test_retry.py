"""Tests for transforms/fetching/retry.py: error classification tables and backoff bounds."""

from __future__ import annotations

import http.client
import json
import pickle
import random
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st


from pixelbeam.transforms.fetching.retry import (
    FetchError,
    PermanentError,
    QuotaError,
    RetryPolicy,
    TransientError,
    classify_exception,
    classify_http_status,
    parse_retry_after,
)

NOW = 1_700_000_000.0  # an epoch for Retry-After dates


# -- HTTP statuses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, kind, cause",
    [
        (429, QuotaError, "429"),
        (408, TransientError, "408"),
        (500, TransientError, "500"),
        (502, TransientError, "502"),
        (503, TransientError, "503"),
        (504, TransientError, "504"),
        (507, TransientError, "507"),
        (400, PermanentError, "400"),
        (401, PermanentError, "401"),
        (403, PermanentError, "403"),
        (404, PermanentError, "404"),
        (409, PermanentError, "409"),
        (418, PermanentError, "418"),
    ],
)
def test_classify_http_status(status, kind, cause):
    error = classify_http_status(status, "server said no", None)
    assert type(error) is kind
    assert error.cause == cause
    assert error.status == status
    assert error.retryable == (kind is not PermanentError)
    assert "server said no" in str(error) and str(status) in str(error)


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("Tue, 14 Nov 2023 22:13:50 GMT", 30.0),  # NOW + 30 s
        ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),  # in the past
        ("Tuesday, 14-Nov-23 22:13:50 GMT", 30.0),  # obsolete RFC 850 form
    ],
)
def test_parse_retry_after(header, expected):
    got = parse_retry_after(header, now=NOW)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_retry_after_reaches_the_error():
    error = classify_http_status(429, "slow down", "Tue, 14 Nov 2023 22:13:50 GMT", now=NOW)
    assert isinstance(error, QuotaError)
    assert error.retry_after_s == pytest.approx(30.0)
    assert classify_http_status(503, "", "12").retry_after_s == 12.0


# -- exceptions -------------------------------------------------------------------------


def _requests_errors():
    import requests.exceptions as r

    return [
        (r.Timeout("t"), TransientError, "timeout"),
        (r.ReadTimeout("t"), TransientError, "timeout"),
        (r.ConnectTimeout("t"), TransientError, "timeout"),
        (r.ConnectionError("c"), TransientError, "connection"),
        (r.ChunkedEncodingError("c"), TransientError, "truncated"),
        (r.ContentDecodingError("d"), TransientError, "decode"),
    ]


def _urllib3_errors():
    import urllib3.exceptions as u

    return [
        (u.ProtocolError("Connection aborted."), TransientError, "reset"),
        (u.ReadTimeoutError(None, "/x", "read timed out"), TransientError, "timeout"),
        (u.NewConnectionError(None, "refused"), TransientError, "connection"),
        (u.IncompleteRead(10, 20), TransientError, "truncated"),
    ]


@pytest.mark.parametrize(
    "exc, kind, cause",
    [
        (TimeoutError("t"), TransientError, "timeout"),
        (socket.timeout("t"), TransientError, "timeout"),
        (ConnectionResetError(104, "reset by peer"), TransientError, "reset"),
        (BrokenPipeError(), TransientError, "reset"),
        (ConnectionRefusedError(), TransientError, "connection"),
        (http.client.IncompleteRead(b"abc", 10), TransientError, "truncated"),
        (http.client.RemoteDisconnected("closed"), TransientError, "reset"),
        (ValueError("bad band name"), PermanentError, "ValueError"),
        (KeyError("x"), PermanentError, "KeyError"),
    ]
    + _requests_errors()
    + _urllib3_errors(),
)
def test_classify_exception_table(exc, kind, cause):
    error = classify_exception(exc)
    assert type(error) is kind
    assert error.cause == cause


def test_fetch_errors_pass_through_unchanged():
    error = QuotaError("x", "429", 3.0)
    assert classify_exception(error) is error


def make_http_error(status: int, message: str, retry_after=None):
    """A real googleapiclient HttpError as the EE client sees it."""
    import httplib2
    from googleapiclient.errors import HttpError

    headers = {"status": str(status)}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    content = json.dumps({"error": {"code": status, "message": message, "status": "X"}}).encode()
    return HttpError(httplib2.Response(headers), content, uri="https://earthengine.googleapis.com/v1/x")


def test_googleapiclient_http_error():
    error = classify_exception(make_http_error(429, "Too many concurrent aggregations.", "4"))
    assert isinstance(error, QuotaError)
    assert error.retry_after_s == 4.0
    assert "Too many concurrent aggregations." in str(error)
    error = classify_exception(make_http_error(400, "Image.select: band 'B99' not found."))
    assert isinstance(error, PermanentError) and error.cause == "400"


class EEException(Exception):
    """Stands in for ee.EEException (matched by class name)."""


def raise_like_ee_client(status: int, message: str):
    """The EE client: `except HttpError as e: raise EEException(e._get_reason())`."""
    try:
        raise make_http_error(status, message, "2")
    except Exception as http_error:
        raise EEException(http_error._get_reason())  # noqa: B904 - this is what ee does


@pytest.mark.parametrize(
    "status, kind",
    [(429, QuotaError), (503, TransientError), (500, TransientError), (404, PermanentError)],
)
def test_ee_exception_with_http_error_on_context(status, kind):
    with pytest.raises(EEException) as info:
        raise_like_ee_client(status, "Something went wrong")
    error = classify_exception(info.value)
    assert type(error) is kind
    assert error.cause == str(status)
    assert error.retry_after_s == 2.0


def test_real_ee_exception_chain():
    ee_exception = pytest.importorskip("ee.ee_exception")
    try:
        try:
            raise make_http_error(503, "The service is currently unavailable.")
        except Exception as http_error:
            raise ee_exception.EEException(http_error._get_reason())  # noqa: B904
    except ee_exception.EEException as exc:
        error = classify_exception(exc)
    assert isinstance(error, TransientError) and error.cause == "503"


def test_explicit_cause_chain_and_wrapping():
    try:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as inner:
            raise RuntimeError("fetch failed") from inner
    except RuntimeError as exc:
        assert classify_exception(exc).cause == "timeout"


def test_requests_http_error_with_response():
    import requests

    response = requests.Response()
    response.status_code = 503
    response.headers["Retry-After"] = "9"
    response._content = b"backend busy"
    error = classify_exception(requests.HTTPError("503 Server Error", response=response))
    assert isinstance(error, TransientError)
    assert error.cause == "503" and error.retry_after_s == 9.0
    assert "backend busy" in str(error)


def test_urllib3_status_retries_exhausted():
    import requests.exceptions
    import urllib3.exceptions as u

    reason = u.ResponseError(u.ResponseError.SPECIFIC_ERROR.format(status_code=429))
    exc = requests.exceptions.RetryError(u.MaxRetryError(None, "/x", reason))
    assert isinstance(classify_exception(exc), QuotaError)


@pytest.mark.parametrize(
    "message, kind, cause",
    [
        ("Too many concurrent aggregations.", QuotaError, "429"),
        ("Quota exceeded for quota metric 'Requests'.", QuotaError, "429"),
        ("Request rate limit exceeded.", QuotaError, "429"),
        ("Earth Engine capacity exceeded.", QuotaError, "429"),
        ("Computation timed out.", TransientError, "timeout"),
        ("Deadline exceeded.", TransientError, "timeout"),
        ("An internal error has occurred.", TransientError, "500"),
        ("Image.load: Image asset 'x' not found.", PermanentError, "EEException"),
        ("User memory limit exceeded.", PermanentError, "EEException"),
    ],
)
def test_ee_exception_without_http_error_uses_message(message, kind, cause):
    error = classify_exception(EEException(message))
    assert type(error) is kind
    assert error.cause == cause
    assert message in str(error)


def test_first_structural_match_wins_over_messages():
    # A timeout raised while handling an unrelated EE error is a timeout.
    try:
        try:
            raise EEException("Image.load: not found")
        except EEException:
            raise TimeoutError("read timed out")  # noqa: B904
    except TimeoutError as exc:
        assert classify_exception(exc).cause == "timeout"


def test_chain_cycles_terminate():
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert classify_exception(a).cause == "ValueError"


def test_fetch_errors_pickle():
    error = QuotaError("HTTP 429: slow", "429", 3.0, 429, attempts=4)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is QuotaError
    assert (copy.message, copy.cause, copy.retry_after_s, copy.status, copy.attempts) == (
        "HTTP 429: slow", "429", 3.0, 429, 4,
    )
    assert isinstance(copy, TransientError) and isinstance(copy, FetchError) and copy.retryable


# -- RetryPolicy ------------------------------------------------------------------------


@given(
    attempt=st.integers(1, 40),
    base=st.floats(0.01, 5),
    cap=st.floats(0.1, 120),
    seed=st.integers(0, 2**32),
)
def test_backoff_is_full_jitter_within_bounds(attempt, base, cap, seed):
    policy = RetryPolicy(base_delay_s=base, max_delay_s=cap, rng=random.Random(seed))
    delay = policy.delay_s(attempt, TransientError("x", "503"))
    assert 0.0 <= delay <= min(cap, base * 2 ** (attempt - 1)) + 1e-12


@given(
    attempt=st.integers(1, 10),
    retry_after=st.floats(0, 500),
    cap=st.floats(1, 120),
    seed=st.integers(0, 2**32),
)
def test_backoff_honours_retry_after_up_to_the_cap(attempt, retry_after, cap, seed):
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=cap, rng=random.Random(seed))
    delay = policy.delay_s(attempt, QuotaError("x", "429", retry_after))
    assert min(retry_after, cap) - 1e-9 <= delay <= cap


def test_backoff_spreads_delays():
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=60.0, rng=random.Random(1))
    delays = [policy.delay_s(4, TransientError("x", "503")) for _ in range(2000)]
    assert max(delays) <= 8.0
    assert 3.5 < sum(delays) / len(delays) < 4.5  # uniform(0, 8) has mean 4


def test_should_retry():
    policy = RetryPolicy(max_attempts=3)
    transient, permanent = TransientError("x", "503"), PermanentError("x", "400")
    assert policy.should_retry(1, transient) and policy.should_retry(2, transient)
    assert not policy.should_retry(3, transient)
    assert not policy.should_retry(1, permanent)
    assert policy.should_retry(1, QuotaError("x", "429"))
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_call_with_retries_retries_transient_errors_and_stops_at_permanent_ones():
    from pixelbeam.transforms.fetching.retry import call_with_retries
    slept = []
    answers = iter([TransientError("503", cause="http_503"), QuotaError("429", cause="http_429"), "listed"])

    def flaky():
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a
    assert call_with_retries(flaky, RetryPolicy(max_attempts=3, rng=random.Random(0)), sleep=slept.append) == "listed"
    assert len(slept) == 2 and all(0 <= s <= 2 for s in slept)
    calls = []

    def refused():
        calls.append(1)
        raise PermanentError("400 bad collection", cause="http_400")
    with pytest.raises(PermanentError, match="bad collection"):
        call_with_retries(refused, RetryPolicy(max_attempts=5), sleep=slept.append)
    assert len(calls) == 1

    def always_busy():
        calls.append(1)
        raise QuotaError("429", cause="http_429")
    calls.clear()
    with pytest.raises(QuotaError):
        call_with_retries(always_busy, RetryPolicy(max_attempts=4), sleep=lambda s: None)
    assert len(calls) == 4
