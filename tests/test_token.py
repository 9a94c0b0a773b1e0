"""The token, its states and the timing maths, tested with plain values."""

from __future__ import annotations

import pytest

from zoomtoken import StoreCorruptError, Token, TokenState
from zoomtoken._token import (
    MAX_SKEW,
    hard_deadline_for,
    refresh_at_for,
    token_from_dict,
    token_to_dict,
)

ISSUED = 1_700_000_000.0


def _token(lifetime: float, jitter: float = 0.5) -> Token:
    return Token.issue(
        access_token="at", refresh_token="rt", expires_in=lifetime, issued_at=ISSUED, jitter=jitter
    )


@pytest.mark.parametrize("lifetime", [1.0, 3.0, 30.0, 3599.0, 86_400.0, 10 * 365 * 86_400.0])
@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999])
def test_deadlines_are_ordered_for_any_lifetime(lifetime: float, jitter: float) -> None:
    """issued < refresh_at < hard_deadline < expiry holds from 1 s to 10 years."""
    token = _token(lifetime, jitter)
    assert token.issued_at < token.refresh_at < token.hard_deadline < token.expires_at


def test_zoom_hour_token_refreshes_at_75_to_80_percent_and_stops_60s_early() -> None:
    """Zoom's 3599 s token refreshes between 45 and 48 minutes and is served until T-60 s."""
    assert refresh_at_for(ISSUED, 3599, 0.0) == pytest.approx(ISSUED + 0.80 * 3599)
    assert refresh_at_for(ISSUED, 3599, 1.0) == pytest.approx(ISSUED + 0.75 * 3599)
    assert hard_deadline_for(ISSUED, 3599) == pytest.approx(ISSUED + 3599 - MAX_SKEW)


def test_thirty_second_token_keeps_most_of_its_life() -> None:
    """A 30 s token is served until 28.5 s, not killed by a fixed 60 s margin."""
    token = _token(30.0)
    assert token.hard_deadline == pytest.approx(ISSUED + 28.5)
    assert 22.5 <= token.refresh_at - ISSUED <= 24.0


def test_one_second_token_is_still_usable() -> None:
    """A 1 s token is FRESH right after issue and STALE before it is EXPIRED."""
    token = _token(1.0)
    assert token.state(ISSUED) is TokenState.FRESH
    assert token.state(ISSUED + 0.9) is TokenState.STALE
    assert token.state(ISSUED + 0.96) is TokenState.EXPIRED


def test_states_change_exactly_at_the_deadlines() -> None:
    """FRESH before refresh_at, STALE from refresh_at, EXPIRED from hard_deadline."""
    token = _token(3599.0)
    assert token.state(token.refresh_at - 0.001) is TokenState.FRESH
    assert token.state(token.refresh_at) is TokenState.STALE
    assert token.state(token.hard_deadline - 0.001) is TokenState.STALE
    assert token.state(token.hard_deadline) is TokenState.EXPIRED


def test_token_that_arrives_expired_is_expired() -> None:
    """A token whose request was sent long ago is EXPIRED on arrival."""
    token = _token(30.0)
    assert token.state(ISSUED + 3600) is TokenState.EXPIRED
    assert token.seconds_to_expiry(ISSUED + 3600) < 0


def test_out_of_range_jitter_is_clamped() -> None:
    """Jitter outside [0, 1] cannot push refresh_at out of the 75-80 % band."""
    assert refresh_at_for(ISSUED, 100, -5) == pytest.approx(ISSUED + 80)
    assert refresh_at_for(ISSUED, 100, 5) == pytest.approx(ISSUED + 75)


def test_repr_masks_both_secrets() -> None:
    """repr() and str() never show the access or refresh token."""
    token = Token.issue(
        access_token="secret-access",
        refresh_token="secret-refresh",
        expires_in=10,
        issued_at=ISSUED,
        jitter=0,
    )
    for text in (repr(token), str(token)):
        assert "secret-access" not in text
        assert "secret-refresh" not in text


def test_serialisation_round_trips() -> None:
    """token_from_dict(token_to_dict(t)) == t, generation and extras included."""
    token = Token.issue(
        access_token="a",
        refresh_token=None,
        expires_in=3600,
        issued_at=ISSUED,
        jitter=0.3,
        scope="user:read",
        api_url="https://api.zoom.us",
        generation=7,
        extra={"k": "v"},
    )
    back = token_from_dict(token_to_dict(token))
    assert back == token
    assert back.extra == {"k": "v"}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("access_token"),
        lambda d: d.update(access_token=5),
        lambda d: d.update(access_token=""),
        lambda d: d.update(expires_in="x"),
        lambda d: d.update(expires_in=True),
        lambda d: d.update(expires_in=float("nan")),
        lambda d: d.update(format=99),
        lambda d: d.update(generation=-1),
        lambda d: d.update(refresh_at=d["hard_deadline"] + 1),
        lambda d: d.update(extra=[1]),
    ],
)
def test_malformed_stored_data_is_a_typed_error(mutate: object) -> None:
    """Every broken field raises StoreCorruptError, never a KeyError or TypeError."""
    data = token_to_dict(_token(3599.0))
    mutate(data)  # type: ignore[operator]
    with pytest.raises(StoreCorruptError):
        token_from_dict(data)


def test_non_mapping_stored_data_is_a_typed_error() -> None:
    """A JSON list or string in the store raises StoreCorruptError."""
    with pytest.raises(StoreCorruptError):
        token_from_dict(["not", "a", "token"])


def test_a_number_too_large_for_a_float_is_corrupt_data() -> None:
    """An integer beyond float range raises StoreCorruptError, not OverflowError."""
    data = token_to_dict(_token(60.0))
    data["issued_at"] = 10**400
    with pytest.raises(StoreCorruptError):
        token_from_dict(data)
