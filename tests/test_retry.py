"""Retryability, Retry-After parsing, backoff and the per-burst tenacity policy."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest

from zoomtoken import OAuthError, ReauthorizationRequiredError, TransportError, is_retryable
from zoomtoken._retry import (
    COOLDOWN_BASE,
    COOLDOWN_MAX,
    Disposition,
    RetryPolicy,
    backoff_wait,
    build_retrying,
    classify_oauth_error,
    cooldown_for,
    parse_retry_after,
)
from zoomtoken.testing import FakeClock

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "error", "reason", "expected"),
    [
        (400, "invalid_grant", "Invalid Token!", Disposition.REAUTHORIZE),
        (401, "invalid_grant", None, Disposition.REAUTHORIZE),
        (400, "invalid_request", "Invalid Token!", Disposition.REAUTHORIZE),
        (401, "invalid_client", "Invalid client_id or client_secret", Disposition.REAUTHORIZE),
        (400, "unauthorized_client", None, Disposition.REAUTHORIZE),
        (400, "unsupported_grant_type", None, Disposition.FAIL),
        (400, "invalid_request", "Missing parameter", Disposition.FAIL),
        (403, None, None, Disposition.FAIL),
        (404, None, None, Disposition.FAIL),
        (408, None, None, Disposition.RETRY),
        (429, None, None, Disposition.RETRY),
        (500, None, None, Disposition.RETRY),
        (502, None, None, Disposition.RETRY),
        (503, "temporarily_unavailable", None, Disposition.RETRY),
        (400, "server_error", None, Disposition.RETRY),
        (503, "invalid_grant", None, Disposition.REAUTHORIZE),
    ],
)
def test_classification_reads_the_body_before_the_status(
    status: int, error: str | None, reason: str | None, expected: Disposition
) -> None:
    """The error code decides first (Zoom moved dead tokens from 401 to 400), then the status."""
    assert classify_oauth_error(status, error, reason) is expected


def test_is_retryable_follows_the_error_flag_and_transport_failures() -> None:
    """Typed errors carry their retryability; raw transport failures are retryable."""
    assert is_retryable(TransportError("x"))
    assert is_retryable(OAuthError("x", status=503, retryable=True))
    assert not is_retryable(OAuthError("x", status=400, retryable=False))
    assert not is_retryable(ReauthorizationRequiredError("x"))
    assert is_retryable(aiohttp.ClientConnectionError())
    assert is_retryable(TimeoutError())
    assert not is_retryable(ValueError())


def test_retry_after_delta_seconds() -> None:
    """'120' means 120 seconds."""
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after(" 0 ", NOW) == 0.0


def test_retry_after_http_date() -> None:
    """An HTTP-date is turned into seconds from now."""
    when = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=90)
    assert parse_retry_after(format_datetime(when, usegmt=True), NOW) == pytest.approx(90)


def test_retry_after_iso_8601() -> None:
    """An ISO-8601 datetime, with Z, offset or none (UTC), is turned into seconds from now."""
    when = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=30)
    assert parse_retry_after(when.isoformat(), NOW) == pytest.approx(30)
    assert parse_retry_after(when.strftime("%Y-%m-%dT%H:%M:%SZ"), NOW) == pytest.approx(30)
    naive = when.replace(tzinfo=None).isoformat()
    assert parse_retry_after(naive, NOW) == pytest.approx(30)


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "nan", "inf", "Mon, 99 Foo"])
def test_retry_after_garbage_is_ignored(value: str | None) -> None:
    """Missing or unreadable Retry-After gives None, never an exception."""
    assert parse_retry_after(value, NOW) is None


def test_retry_after_in_the_past_is_zero() -> None:
    """A date already past means retry now."""
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", NOW) == 0.0


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    """Attempt n waits uniformly in [0, min(cap, base*2**(n-1))]."""
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 10.0), (50, 10.0)]:
        waits = [backoff_wait(attempt, base=0.5, cap=10.0, rng=rng) for _ in range(200)]
        assert min(waits) >= 0 and max(waits) <= ceiling
        assert max(waits) > ceiling * 0.8


def test_cooldown_doubles_up_to_its_cap_and_honours_retry_after() -> None:
    """Bursts cool down for 5, 10, 20 ... 300 s, or longer if the server asked."""
    assert cooldown_for(1) == COOLDOWN_BASE
    assert cooldown_for(2) == 2 * COOLDOWN_BASE
    assert cooldown_for(100) == COOLDOWN_MAX
    assert cooldown_for(1, retry_after=600) == 600


async def test_retrying_records_waits_and_honours_retry_after() -> None:
    """The burst sleeps through the injected sleep, at least Retry-After each time."""
    clock = FakeClock(autojump=True)
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise OAuthError("busy", status=429, retryable=True, retry_after=7.0)
        return "ok"

    retrying = build_retrying(
        RetryPolicy(max_attempts=5, budget=100),
        clock=clock,
        sleep=clock.sleep,
        stop_at=clock.monotonic() + 100,
        rng=random.Random(0),
    )
    result: str = await retrying(flaky)
    assert result == "ok"
    assert attempts == 3
    assert clock.sleeps == [7.0, 7.0]


async def test_retrying_stops_before_the_deadline() -> None:
    """A wait that would end past stop_at is not taken: the last error is raised instead."""
    clock = FakeClock(autojump=True)
    attempts = 0

    async def down() -> str:
        nonlocal attempts
        attempts += 1
        raise OAuthError("down", status=503, retryable=True, retry_after=4.0)

    retrying = build_retrying(
        RetryPolicy(max_attempts=10, budget=10),
        clock=clock,
        sleep=clock.sleep,
        stop_at=clock.monotonic() + 10,
        rng=random.Random(0),
    )
    with pytest.raises(OAuthError):
        await retrying(down)
    assert attempts == 3  # waits at 0 -> 4 -> 8; a third wait would end at 12 > 10
    assert sum(clock.sleeps) < 10


async def test_retrying_never_retries_a_permanent_error() -> None:
    """invalid_grant fails at once: one attempt, no sleep."""
    clock = FakeClock(autojump=True)
    attempts = 0

    async def dead() -> str:
        nonlocal attempts
        attempts += 1
        raise ReauthorizationRequiredError("dead", status=400, error="invalid_grant")

    retrying = build_retrying(
        RetryPolicy(), clock=clock, sleep=clock.sleep, stop_at=1e12, rng=random.Random(0)
    )
    with pytest.raises(ReauthorizationRequiredError):
        await retrying(dead)
    assert attempts == 1
    assert clock.sleeps == []
