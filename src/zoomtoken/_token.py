"""The token, its states and the timing maths. Pure: no I/O, no clock reads.

Every time here is a **wall-clock** instant in seconds since the Unix epoch, or a duration in
seconds. The caller passes ``now``; nothing in this module reads a clock.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ._exceptions import StoreCorruptError

__all__ = [
    "MAX_SKEW",
    "REFRESH_FRACTION",
    "REFRESH_JITTER_FRACTION",
    "SKEW_FRACTION",
    "Token",
    "TokenState",
    "hard_deadline_for",
    "refresh_at_for",
    "token_from_dict",
    "token_from_json",
    "token_to_dict",
]

# Refresh once 80 % of the lifetime has passed: Zoom's hour-long token is renewed with about
# twelve minutes to spare, enough for a full retry budget and a cool-down or two.
REFRESH_FRACTION = 0.80
# Up to 5 % of the lifetime earlier, at random, so that many processes or tenants that got
# their tokens at the same moment do not all refresh in the same second.
REFRESH_JITTER_FRACTION = 0.05
# Stop serving a token this long before it expires, to cover clock skew between us and Zoom
# and the time a request takes to reach the API: a few percent of the lifetime ...
SKEW_FRACTION = 0.05
# ... but never more than a minute, which covers any sane skew (NTP keeps us within seconds).
MAX_SKEW = 60.0

# Format version of the dict written by stores; bump on an incompatible change.
_FORMAT_VERSION = 1


class TokenState(enum.Enum):
    """Where a token stands at a given instant."""

    #: Before ``refresh_at``: serve it, nothing to do.
    FRESH = "fresh"
    #: Between ``refresh_at`` and ``hard_deadline``: serve it, and make sure a refresh runs.
    STALE = "stale"
    #: Past ``hard_deadline``: never served; callers wait for a refresh or get an error.
    EXPIRED = "expired"


def refresh_at_for(issued_at: float, lifetime: float, jitter: float) -> float:
    """When to start refreshing: ``issued_at`` + 75–80 % of ``lifetime`` (seconds).

    ``jitter`` in [0, 1) picks the point in that band; 0 is the latest (80 %).
    """
    jitter = min(max(jitter, 0.0), 1.0)
    return issued_at + lifetime * (REFRESH_FRACTION - REFRESH_JITTER_FRACTION * jitter)


def hard_deadline_for(issued_at: float, lifetime: float) -> float:
    """The last instant the token is served: expiry minus min(5 % of lifetime, 60 s)."""
    return issued_at + lifetime - min(MAX_SKEW, lifetime * SKEW_FRACTION)


def _masked(value: str | None) -> str:
    return "None" if value is None else "'***'"


@dataclass(frozen=True, slots=True, repr=False)
class Token:
    """One access token with its refresh token and deadlines, immutable.

    The manager swaps a whole ``Token`` in one assignment, so no caller ever sees the access
    token of one refresh with the deadlines of another. ``repr`` never shows the secrets.
    """

    access_token: str
    #: ``None`` for grants that have none (Server-to-Server OAuth).
    refresh_token: str | None
    #: Lifetime granted by the server, seconds.
    expires_in: float
    #: Wall-clock instant (epoch seconds) the token request was *sent*.
    issued_at: float
    #: Wall-clock instant (epoch seconds) from which the token is STALE.
    refresh_at: float
    #: Wall-clock instant (epoch seconds) from which the token is EXPIRED for us.
    hard_deadline: float
    token_type: str = "bearer"
    scope: str | None = None
    api_url: str | None = None
    #: Incremented by every save; the compare-and-set key of shared stores.
    generation: int = 0
    #: Extra fields of the server's answer that we keep but do not interpret.
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def issue(
        cls,
        *,
        access_token: str,
        refresh_token: str | None,
        expires_in: float,
        issued_at: float,
        jitter: float,
        token_type: str = "bearer",
        scope: str | None = None,
        api_url: str | None = None,
        generation: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> Token:
        """Build a token whose deadlines derive from its own lifetime (``expires_in`` seconds)."""
        return cls(
            access_token=access_token,
            refresh_token=refresh_token,
            expires_in=expires_in,
            issued_at=issued_at,
            refresh_at=refresh_at_for(issued_at, expires_in, jitter),
            hard_deadline=hard_deadline_for(issued_at, expires_in),
            token_type=token_type,
            scope=scope,
            api_url=api_url,
            generation=generation,
            extra=dict(extra or {}),
        )

    @property
    def expires_at(self) -> float:
        """Wall-clock instant (epoch seconds) the server considers the token expired."""
        return self.issued_at + self.expires_in

    def state(self, now: float) -> TokenState:
        """The token's state at wall-clock instant ``now`` (epoch seconds)."""
        if now < self.refresh_at:
            return TokenState.FRESH
        if now < self.hard_deadline:
            return TokenState.STALE
        return TokenState.EXPIRED

    def seconds_to_expiry(self, now: float) -> float:
        """Seconds from ``now`` until ``hard_deadline`` (negative once expired)."""
        return self.hard_deadline - now

    def with_generation(self, generation: int) -> Token:
        """A copy carrying another generation number."""
        return replace(self, generation=generation)

    def __repr__(self) -> str:
        return (
            f"Token(access_token={_masked(self.access_token)}, "
            f"refresh_token={_masked(self.refresh_token)}, expires_in={self.expires_in!r}, "
            f"issued_at={self.issued_at!r}, generation={self.generation!r})"
        )


def token_to_dict(token: Token) -> dict[str, Any]:
    """The JSON-ready form stores write (it holds the secrets: stores keep it private)."""
    return {
        "format": _FORMAT_VERSION,
        "access_token": token.access_token,
        "refresh_token": token.refresh_token,
        "expires_in": token.expires_in,
        "issued_at": token.issued_at,
        "refresh_at": token.refresh_at,
        "hard_deadline": token.hard_deadline,
        "token_type": token.token_type,
        "scope": token.scope,
        "api_url": token.api_url,
        "generation": token.generation,
        "extra": dict(token.extra),
    }


def _field(data: Mapping[str, Any], name: str, kinds: tuple[type, ...], optional: bool) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise StoreCorruptError(f"stored token: field {name!r} is missing or has the wrong type")
    if isinstance(value, float) and not math.isfinite(value):
        raise StoreCorruptError(f"stored token: field {name!r} is not a finite number")
    if isinstance(value, int) and float in kinds:
        try:
            float(value)
        except OverflowError:
            raise StoreCorruptError(f"stored token: field {name!r} is out of range") from None
    return value


def token_from_dict(data: object) -> Token:
    """Parse what :func:`token_to_dict` wrote; anything else raises :class:`StoreCorruptError`."""
    if not isinstance(data, Mapping):
        raise StoreCorruptError("stored token: not a JSON object")
    if data.get("format") != _FORMAT_VERSION:
        raise StoreCorruptError("stored token: unknown format version")
    number = (int, float)
    access_token = _field(data, "access_token", (str,), optional=False)
    if not access_token:
        raise StoreCorruptError("stored token: empty access_token")
    expires_in = float(_field(data, "expires_in", number, optional=False))
    issued_at = float(_field(data, "issued_at", number, optional=False))
    refresh_at = float(_field(data, "refresh_at", number, optional=False))
    hard_deadline = float(_field(data, "hard_deadline", number, optional=False))
    if not (expires_in > 0 and issued_at <= refresh_at <= hard_deadline <= issued_at + expires_in):
        raise StoreCorruptError("stored token: inconsistent deadlines")
    extra = data.get("extra") or {}
    if not isinstance(extra, Mapping):
        raise StoreCorruptError("stored token: field 'extra' is not an object")
    generation = _field(data, "generation", (int,), optional=False)
    if generation < 0:
        raise StoreCorruptError("stored token: negative generation")
    return Token(
        access_token=access_token,
        refresh_token=_field(data, "refresh_token", (str,), optional=True),
        expires_in=expires_in,
        issued_at=issued_at,
        refresh_at=refresh_at,
        hard_deadline=hard_deadline,
        token_type=_field(data, "token_type", (str,), optional=True) or "bearer",
        scope=_field(data, "scope", (str,), optional=True),
        api_url=_field(data, "api_url", (str,), optional=True),
        generation=generation,
        extra=dict(extra),
    )


def token_from_json(raw: bytes | str) -> Token:
    """Parse a stored JSON document; anything unusable raises :class:`StoreCorruptError`.

    Messages are built from positions only and nothing is chained: ``JSONDecodeError`` and
    ``UnicodeDecodeError`` keep the whole document, secrets included, in their attributes.
    """
    try:
        return token_from_dict(json.loads(raw))
    except StoreCorruptError:
        raise
    except UnicodeDecodeError as exc:
        why = f"not UTF-8 (byte {exc.start})"
    except json.JSONDecodeError as exc:
        why = f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        why = f"unreadable ({type(exc).__name__})"
    raise StoreCorruptError(f"stored token: {why}")
