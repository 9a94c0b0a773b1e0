"""What the manager tells the outside world: events for hooks, and a status snapshot."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from ._exceptions import ZoomTokenError
from ._token import TokenState

__all__ = ["Event", "EventHook", "EventKind", "ManagerStatus"]


class EventKind(enum.Enum):
    """Kinds of :class:`Event`."""

    #: A refresh (one single flight) began.
    REFRESH_STARTED = "refresh_started"
    #: A refresh produced a new token, saved and published.
    REFRESH_SUCCEEDED = "refresh_succeeded"
    #: A refresh burst failed; ``error`` says why.
    REFRESH_FAILED = "refresh_failed"
    #: One attempt failed and another follows after ``wait`` seconds.
    RETRY_SCHEDULED = "retry_scheduled"
    #: The current token turned STALE and was served while a refresh runs (once per token).
    TOKEN_STALE = "token_stale"
    #: A caller found no valid token and waits for a refresh (once per refresh).
    EXPIRED_WAIT = "expired_wait"
    #: A newer token written by another process was taken from the store (no POST).
    TOKEN_ADOPTED = "token_adopted"
    #: The grant was revoked and the tokens cleared.
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened. Holds no secret."""

    kind: EventKind
    #: Generation of the token concerned, when there is one.
    generation: int | None = None
    error: ZoomTokenError | None = None
    #: Attempt number within the burst (``RETRY_SCHEDULED``).
    attempt: int | None = None
    #: Seconds until the next attempt (``RETRY_SCHEDULED``).
    wait: float | None = None


#: ``on_event=`` callback; it must not block. Exceptions it raises are logged and ignored.
EventHook = Callable[[Event], None]


@dataclass(frozen=True, slots=True)
class ManagerStatus:
    """A read-only snapshot of a :class:`~zoomtoken.TokenManager`. Holds no secret."""

    #: State of the current token, ``None`` when there is none.
    state: TokenState | None
    #: Seconds until the token's hard deadline (negative once past), ``None`` without token.
    seconds_to_expiry: float | None
    generation: int | None
    last_error: ZoomTokenError | None
    #: True once the grant is dead: re-authorisation is needed.
    reauthorization_required: bool
    #: Seconds until the next refresh burst may start after failures (0 when allowed now).
    cooldown_remaining: float
    refreshes: int
    failures: int
    retries: int
    stale_serves: int
    adopted: int
    token_posts: int
    closed: bool
