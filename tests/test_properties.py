"""Property-based tests: no input makes the parsers raise anything but the library's typed
errors, and the timing maths keep their invariants for every lifetime from 1 s to 10 years.

Example counts are kept modest so the suite stays fast; pure functions only, plus a FileStore
round trip in a temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import tempfile
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from zoomtoken import OAuthError, StoreCorruptError, Token, ZoomTokenError
from zoomtoken._oauth import error_from_response, parse_token_response
from zoomtoken._retry import parse_retry_after
from zoomtoken._token import token_from_dict, token_from_json, token_to_dict
from zoomtoken.stores import FileStore

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

YEAR = 365.25 * 86_400
# Wall-clock instants the library will meet: 1970 to 2100, epoch seconds.
instants = st.floats(min_value=0, max_value=4.1e9, allow_nan=False, allow_infinity=False)
jitters = st.floats(min_value=0, max_value=1)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Answers shaped like a token response, every field possibly missing or of any type.
token_fields = st.fixed_dictionaries(
    {},
    optional={
        "access_token": st.text(max_size=30) | json_values,
        "refresh_token": st.text(max_size=30) | json_values,
        "expires_in": st.integers(-5, 10**6)
        | st.floats()
        | st.sampled_from(["3599", "soon", "1e999", "NaN", " 60 ", ""])
        | json_values,
        "token_type": json_values,
        "scope": json_values,
        "api_url": json_values,
        "error": st.sampled_from(["invalid_grant", "invalid_client", "server_error"]) | json_values,
        "reason": json_values,
    },
).flatmap(
    lambda known: st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(
        lambda extra: {**extra, **known}
    )
)
bodies = (
    st.binary(max_size=300)
    | token_fields.map(lambda data: json.dumps(data).encode())
    | json_values.map(lambda data: json.dumps(data).encode())
    | st.text(max_size=100).map(str.encode)
)
headers = st.dictionaries(
    st.sampled_from(["Retry-After", "Content-Type", "X-Other"]), st.text(max_size=40), max_size=3
)


def _storable(token: Token) -> None:
    """What the parser accepts must survive a store round trip."""
    assert token_from_dict(json.loads(json.dumps(token_to_dict(token)))) == token


@FAST
@given(st.integers(0, 999), headers, bodies, instants, st.none() | st.text(max_size=20), jitters)
@example(200, {}, b'{"access_token": "a", "expires_in": 1e308}', 1.7e9, "rt", 0.5)
@example(200, {}, b'{"access_token": "a", "expires_in": 5e-324}', 1.7e9, "rt", 0.5)
@example(200, {}, b'{"access_token": "a", "expires_in": "1e999"}', 1.7e9, "rt", 0.5)
@example(503, {"Retry-After": "9" * 400}, b"<html>", 1.7e9, None, 0.0)
def test_parse_token_response_raises_only_typed_errors(
    status: int,
    response_headers: dict[str, str],
    body: bytes,
    sent_at: float,
    previous: str | None,
    jitter: float,
) -> None:
    """Any status, headers and body give a storable Token or a ZoomTokenError, nothing else."""
    error: ZoomTokenError | None = None
    try:
        token = parse_token_response(
            status,
            response_headers,
            body,
            sent_at=sent_at,
            previous_refresh_token=previous,
            jitter=jitter,
        )
    except ZoomTokenError as exc:
        error = exc
    if error is not None:
        # A 2xx we cannot use may still have rotated the pair: it must be retryable.
        assert not (200 <= status < 300) or error.retryable
        return
    assert 200 <= status < 300
    assert token.access_token and token.expires_in > 0
    assert token.issued_at == sent_at
    _storable(token)


@FAST
@given(st.integers(0, 999), headers, bodies, instants)
def test_error_from_response_always_builds_an_error(
    status: int, response_headers: dict[str, str], body: bytes, now: float
) -> None:
    """Any answer turns into an OAuthError whose retry delay, if any, is finite and >= 0."""
    error = error_from_response(status, response_headers, body, now=now)
    assert isinstance(error, OAuthError)
    assert error.retry_after is None or (
        math.isfinite(error.retry_after) and error.retry_after >= 0
    )
    assert len(error.message) < 1000


def _http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


retry_after_texts = (
    st.text(max_size=40)
    | st.floats().map(repr)
    | st.integers().map(str)
    | st.datetimes(timezones=st.just(UTC)).map(_http_date)
    | st.datetimes().map(datetime.isoformat)
    | st.datetimes(timezones=st.timezones()).map(datetime.isoformat)
    | st.sampled_from(["inf", "-1", "nan", "1e999", " 5 ", "Wed, 21 Oct 2015 07:28:00 GMT"])
)


@FAST
@given(st.none() | retry_after_texts, st.floats(allow_nan=False, allow_infinity=False))
@example("Fri, 31 Dec 9999 23:59:59 GMT", 0.0)
@example("0001-01-01T00:00:00", 1.7e9)
@example("9999-12-31T23:59:59-23:59", -1e300)
def test_parse_retry_after_is_none_or_a_finite_delay(value: str | None, now: float) -> None:
    """Any Retry-After text gives None or a finite number of seconds >= 0, never an error."""
    delay = parse_retry_after(value, now)
    assert delay is None or (isinstance(delay, float) and math.isfinite(delay) and delay >= 0)


def test_parse_retry_after_reads_the_three_forms() -> None:
    """Seconds, an HTTP-date and an ISO-8601 instant all give the same delay."""
    now = 1_700_000_000.0
    later = datetime.fromtimestamp(now, UTC) + timedelta(seconds=30)
    assert parse_retry_after("30", now) == 30
    assert parse_retry_after(_http_date(later), now) == pytest.approx(30)
    assert parse_retry_after(later.isoformat(), now) == pytest.approx(30)


# JSON-ish documents: anything json.loads could give, and near misses of the real format.
finite_numbers = st.integers(-(2**63), 2**63) | st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def stored_documents(draw: st.DrawFn) -> Any:
    """A real stored token with some fields replaced by arbitrary values, or anything."""
    if draw(st.booleans()):
        return draw(json_values)
    token = Token.issue(
        access_token="a",
        refresh_token="r",
        expires_in=draw(st.floats(1, 1e6)),
        issued_at=draw(instants),
        jitter=draw(jitters),
    )
    document = token_to_dict(token)
    for key in draw(st.lists(st.sampled_from(sorted(document)), max_size=4)):
        if draw(st.booleans()):
            document.pop(key, None)
        else:
            document[key] = draw(finite_numbers | json_values)
    return document


@FAST
@given(stored_documents())
def test_token_from_dict_raises_only_store_corrupt(document: Any) -> None:
    """Any JSON-ish document gives a consistent Token or StoreCorruptError, nothing else."""
    try:
        token = token_from_dict(document)
    except StoreCorruptError:
        return
    assert token.issued_at <= token.refresh_at <= token.hard_deadline <= token.expires_at


@FAST
@given(st.binary(max_size=400) | stored_documents().map(lambda d: json.dumps(d).encode()))
def test_token_from_json_raises_only_store_corrupt(raw: bytes) -> None:
    """Any bytes in a store give a Token or StoreCorruptError, nothing else."""
    with contextlib.suppress(StoreCorruptError):
        token_from_json(raw)


def test_token_from_dict_refuses_a_huge_integer_with_store_corrupt() -> None:
    """A number too large for a float is corrupt data, not an OverflowError."""
    document = token_to_dict(
        Token.issue(access_token="a", refresh_token="r", expires_in=60, issued_at=0, jitter=0)
    )
    document["issued_at"] = 10**400
    with pytest.raises(StoreCorruptError):
        token_from_dict(document)


lifetimes = st.floats(min_value=1.0, max_value=10 * YEAR)


@settings(max_examples=400, deadline=None)
@given(lifetimes, jitters, instants)
@example(1.0, 0.0, 4.1e9)
@example(1.0, 1.0, 4.1e9)
@example(10 * YEAR, 1.0, 0.0)
@example(3599.0, 0.5, 1.7e9)
@example(1.9, 1.0, 536870911.0)
def test_timing_invariants_hold_for_every_lifetime(
    lifetime: float, jitter: float, issued: float
) -> None:
    """issued < refresh_at < hard_deadline < expiry, and no refresh before 75 % of the life."""
    token = Token.issue(
        access_token="a", refresh_token="r", expires_in=lifetime, issued_at=issued, jitter=jitter
    )
    assert token.issued_at < token.refresh_at < token.hard_deadline < token.expires_at
    # Float slack: instants near 4e9 s are only exact to a few ULPs (~5e-7 s).
    slack = 4 * math.ulp(issued + lifetime)
    # No hot loop: the next refresh is at least 75 % of the lifetime away.
    assert token.refresh_at - token.issued_at >= 0.75 * lifetime - slack
    # Room to refresh: the STALE window is at least 10 % of the life, or a minute.
    assert token.hard_deadline - token.refresh_at >= min(0.1 * lifetime, 60.0) - slack


tokens_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60)


@st.composite
def tokens(draw: st.DrawFn) -> Token:
    """Arbitrary tokens as a server might hand them out."""
    return Token.issue(
        access_token=draw(tokens_text),
        refresh_token=draw(st.none() | tokens_text),
        expires_in=draw(lifetimes),
        issued_at=draw(instants),
        jitter=draw(jitters),
        token_type=draw(st.sampled_from(["bearer", "mac"])),
        scope=draw(st.none() | st.text(max_size=40)),
        api_url=draw(st.none() | st.text(max_size=40)),
        generation=draw(st.integers(0, 2**53)),
        extra=draw(
            st.dictionaries(
                st.text(max_size=10),
                st.text(max_size=10) | st.integers(-(2**63), 2**63) | st.floats() | st.booleans(),
                max_size=4,
            )
        ),
    )


def _same(a: Token, b: Token) -> bool:
    # Token equality leaves ``extra`` out; NaN is not equal to itself, so compare as JSON.
    return a == b and json.dumps(dict(a.extra), sort_keys=True) == json.dumps(
        dict(b.extra), sort_keys=True
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(tokens(), min_size=1, max_size=3))
def test_file_store_round_trips_any_token(sequence: list[Token]) -> None:
    """What FileStore saves it loads back identical, save after save (generation CAS)."""

    async def run(directory: str) -> None:
        store = FileStore(Path(directory) / "token.json")
        expected: int | None = None
        for generation, token in enumerate(sequence):
            token = token.with_generation(generation)
            await store.save(token, expected_generation=expected)
            loaded = await store.load()
            assert loaded is not None and _same(loaded, token)
            expected = generation
        await store.aclose()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(directory))
