"""When to retry, how long to wait, and the tenacity policy built from both.

Retryability is decided in exactly one place, :func:`classify_oauth_error` for answers and
:func:`is_retryable` for exceptions. Durations are seconds; instants on the wall clock are
seconds since the epoch, instants on the monotonic clock are ``Clock.monotonic()`` seconds.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from ._clock import Clock, Sleep
from ._exceptions import OAuthError, ZoomTokenError

__all__ = [
    "COOLDOWN_BASE",
    "COOLDOWN_MAX",
    "Disposition",
    "RetryPolicy",
    "backoff_wait",
    "build_retrying",
    "classify_oauth_error",
    "cooldown_for",
    "is_retryable",
    "parse_retry_after",
]

#: ``error`` codes that mean the grant or the client is dead: retrying cannot help, and with
#: rotating refresh tokens a retry may even trip reuse detection.
REAUTHORIZE_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})
#: ``error`` codes a well-behaved server uses for passing trouble (RFC 6749 §4.1.2.1).
TRANSIENT_ERRORS = frozenset({"server_error", "temporarily_unavailable"})
#: Statuses that mean "try again later" whatever the body says.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
#: Zoom answers a dead refresh token with this reason, under invalid_grant or invalid_request.
ZOOM_DEAD_TOKEN_REASON = "invalid token!"

# After a burst of retries fails, the next burst waits this long, doubling per failed burst,
# so that a dead endpoint sees a trickle of attempts and never a storm.
COOLDOWN_BASE = 5.0
# ... up to five minutes: long enough to be polite, short enough that a one-hour token still
# gets several more bursts before its hard deadline.
COOLDOWN_MAX = 300.0


class Disposition(enum.Enum):
    """What to do about an error answer."""

    RETRY = "retry"
    FAIL = "fail"
    REAUTHORIZE = "reauthorize"


def classify_oauth_error(status: int, error: str | None, reason: str | None) -> Disposition:
    """Decide from the status and the body's ``error`` / ``reason`` whether to retry.

    Zoom moved dead-token answers from 401 to 400, so the body decides before the status.
    """
    if error in REAUTHORIZE_ERRORS:
        return Disposition.REAUTHORIZE
    if error == "invalid_request" and (reason or "").strip().lower() == ZOOM_DEAD_TOKEN_REASON:
        return Disposition.REAUTHORIZE
    if error in TRANSIENT_ERRORS or status in TRANSIENT_STATUSES or status >= 500:
        return Disposition.RETRY
    return Disposition.FAIL


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed attempt may be tried again within the same burst."""
    if isinstance(exc, ZoomTokenError):
        return exc.retryable
    # Raw transport failures should have been wrapped by _oauth; be safe if one slips through.
    return isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError | ConnectionError)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or ``None`` if absent or unreadable.

    Accepts delta-seconds, an HTTP-date and an ISO-8601 datetime; ``now`` is the wall clock
    (epoch seconds) used to turn a date into a delay. Dates in the past give 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    when: datetime | None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        when = None
    if when is None:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        delay = when.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None
    return max(0.0, delay) if math.isfinite(delay) else None


def backoff_wait(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 60))
    return rng.uniform(0.0, ceiling)


def cooldown_for(failed_bursts: int, retry_after: float | None = None) -> float:
    """Seconds to wait before the next burst after ``failed_bursts`` consecutive failures."""
    cooldown = min(COOLDOWN_MAX, COOLDOWN_BASE * 2.0 ** min(max(failed_bursts - 1, 0), 30))
    return max(cooldown, retry_after or 0.0)


class RetryPolicy:
    """The shape of one retry burst; a fresh ``AsyncRetrying`` is built from it per refresh."""

    __slots__ = ("backoff_base", "backoff_cap", "budget", "max_attempts")

    def __init__(
        self,
        *,
        max_attempts: int = 5,
        budget: float = 30.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 10.0,
    ) -> None:
        #: Attempts in one burst, the first included.
        self.max_attempts = max_attempts
        #: Seconds one burst may last at most (it also stops before the token's hard deadline).
        self.budget = budget
        #: First backoff ceiling, seconds; doubles per attempt.
        self.backoff_base = backoff_base
        #: Largest backoff ceiling, seconds.
        self.backoff_cap = backoff_cap

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_attempts={self.max_attempts}, budget={self.budget}, "
            f"backoff_base={self.backoff_base}, backoff_cap={self.backoff_cap})"
        )


def build_retrying(
    policy: RetryPolicy,
    *,
    clock: Clock,
    sleep: Sleep,
    stop_at: float,
    rng: random.Random,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """One ``AsyncRetrying`` for one burst, stopping before ``stop_at`` (monotonic seconds).

    tenacity's own ``stop_after_delay`` reads the real clock; this stop reads the injected one,
    and refuses a wait that would end past ``stop_at``.
    """

    def wait(state: RetryCallState) -> float:
        delay = backoff_wait(
            state.attempt_number, base=policy.backoff_base, cap=policy.backoff_cap, rng=rng
        )
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, OAuthError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number >= policy.max_attempts:
            return True
        return clock.monotonic() + state.upcoming_sleep >= stop_at

    async def do_sleep(seconds: float) -> None:
        await sleep(seconds)

    return AsyncRetrying(
        sleep=do_sleep,
        stop=stop,
        wait=wait,
        retry=retry_if_exception(is_retryable),
        reraise=True,
        before_sleep=before_sleep,
    )
