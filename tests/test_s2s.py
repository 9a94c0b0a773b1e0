"""Server-to-Server OAuth (grant_type=account_credentials) behind the same TokenManager.

Everything runs against the Zoom emulator over real HTTP on 127.0.0.1; time is a FakeClock.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from zoomtoken import (
    ConfigurationError,
    Event,
    EventKind,
    MemoryStore,
    TokenExpiredError,
    TokenManager,
    TokenState,
)
from zoomtoken.aiohttp import zoom_session
from zoomtoken.stores.file import FileStore
from zoomtoken.testing import FakeClock, ZoomOAuthEmulator

ACCOUNT = "acct-s2s-1"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def zoom(clock: FakeClock) -> AsyncIterator[ZoomOAuthEmulator]:
    async with ZoomOAuthEmulator(clock=clock) as emulator:
        emulator.create_s2s_account(ACCOUNT)
        yield emulator


@pytest.fixture
async def make(
    zoom: ZoomOAuthEmulator, clock: FakeClock
) -> AsyncIterator[Callable[..., TokenManager]]:
    """Build S2S managers on the emulator; all are closed after the test."""
    made: list[TokenManager] = []

    def build(**options: Any) -> TokenManager:
        kwargs: dict[str, Any] = {
            "client_id": zoom.client_id,
            "client_secret": zoom.client_secret,
            "account_id": ACCOUNT,
            "token_url": zoom.token_url,
            "revoke_url": zoom.revoke_url,
            "clock": clock,
            "sleep": clock.sleep,
        }
        kwargs.update(options)
        manager = TokenManager(**kwargs)
        made.append(manager)
        return manager

    yield build
    for manager in made:
        await manager.aclose()


async def until(condition: Callable[[], bool], clock: FakeClock, step: float = 5.0) -> None:
    """Advance virtual time in steps, letting real HTTP round trips finish, until ``condition``."""
    for _ in range(2000):
        if condition():
            return
        await clock.advance(step)
        await asyncio.sleep(0.001)
    raise AssertionError("condition never became true")


async def test_ten_thousand_concurrent_callers_cause_one_post(
    zoom: ZoomOAuthEmulator, make: Callable[..., TokenManager]
) -> None:
    """10,000 concurrent get_token() calls with no token yet share one account_credentials POST."""
    manager = make()
    tokens = await asyncio.gather(*(manager.get_token() for _ in range(10_000)))
    assert len(set(tokens)) == 1
    assert zoom.counters.s2s_issued == 1
    assert zoom.counters.token_requests == 1
    assert manager.status().token_posts == 1


async def test_the_s2s_token_has_no_refresh_token_and_its_own_lifetime(
    zoom: ZoomOAuthEmulator, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """The stored token has no refresh token, 3600 s of life counted from the send time."""
    store = MemoryStore()
    sent_at = clock.time()
    manager = make(store=store)
    await manager.get_token()
    stored = await store.load()
    assert stored is not None
    assert stored.refresh_token is None
    assert stored.expires_in == 3600
    assert stored.issued_at == sent_at
    assert stored.issued_at < stored.refresh_at < stored.hard_deadline < stored.expires_at
    assert stored.generation == 0


async def test_the_s2s_token_calls_the_api_through_the_middleware(
    zoom: ZoomOAuthEmulator, make: Callable[..., TokenManager]
) -> None:
    """An S2S token from the manager is accepted by the API, as the account."""
    manager = make()
    async with (
        zoom_session(manager, base_url=zoom.api_base_url) as session,
        session.get("/v2/users/me") as response,
    ):
        assert response.status == 200
        assert (await response.json())["id"] == ACCOUNT


async def test_background_refresh_renews_the_s2s_token_before_it_expires(
    zoom: ZoomOAuthEmulator, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """The background refresher fetches a new S2S token at 75-80 % of the old one's life."""
    started_at: list[float] = []

    def on_event(event: Event) -> None:
        if event.kind is EventKind.REFRESH_STARTED:
            started_at.append(clock.time())

    async with make(on_event=on_event) as manager:
        first = await manager.get_token()
        await until(lambda: zoom.counters.s2s_issued == 2, clock)
        issued, renewed = started_at[0], started_at[1]
        assert 0.75 * 3600 <= renewed - issued <= 0.80 * 3600
        second = await manager.get_token()
        assert second != first
        assert manager.state is TokenState.FRESH
        assert manager.generation == 1
        # Several more cycles: one POST each, never a storm.
        await until(lambda: zoom.counters.s2s_issued == 5, clock, step=30.0)
        assert zoom.counters.token_requests == 5
        assert manager.status().failures == 0


async def test_invalidate_fetches_a_new_s2s_token_once(
    zoom: ZoomOAuthEmulator, make: Callable[..., TokenManager]
) -> None:
    """A 401 for the current S2S token gets one new token, shared by all who report it."""
    manager = make()
    old = await manager.get_token()
    fresh = await asyncio.gather(*(manager.invalidate(old) for _ in range(100)))
    assert len(set(fresh)) == 1 and fresh[0] != old
    assert zoom.counters.s2s_issued == 2


async def test_the_token_is_persisted_and_a_second_manager_adopts_it_without_a_post(
    zoom: ZoomOAuthEmulator, make: Callable[..., TokenManager], tmp_path: Path
) -> None:
    """A FileStore shares the S2S token: a second manager (another process) loads it."""
    path = tmp_path / "s2s.json"
    first = make(store=FileStore(path), close_store=True)
    token = await first.get_token()
    assert os.stat(path).st_mode & 0o777 == 0o600
    second = make(store=FileStore(path), close_store=True)
    assert await second.get_token() == token
    assert second.status().token_posts == 0
    assert zoom.counters.s2s_issued == 1


async def test_two_managers_sharing_a_file_store_renew_once(
    zoom: ZoomOAuthEmulator, make: Callable[..., TokenManager], clock: FakeClock, tmp_path: Path
) -> None:
    """Both STALE at once: the file lease lets one POST; the other adopts its token."""
    path = tmp_path / "s2s.json"
    one = make(store=FileStore(path), close_store=True)
    two = make(store=FileStore(path), close_store=True)
    first = await one.get_token()
    assert await two.get_token() == first
    clock.suspend(0.81 * 3600)  # past refresh_at, before hard_deadline
    assert one.state is TokenState.STALE and two.state is TokenState.STALE
    both = asyncio.gather(one.refresh(), two.refresh())
    while not both.done():
        # The loser polls the lease on the virtual clock: let it move, slowly enough that
        # the winner's real HTTP round trip ends long before the lease wait gives up.
        await clock.advance(0.01)
        await asyncio.sleep(0.005)
    renewed = await both
    assert renewed[0] == renewed[1] != first
    assert zoom.counters.s2s_issued == 2
    assert one.status().adopted + two.status().adopted == 1
    assert one.generation == two.generation == 1


async def test_from_env_with_zoom_account_id_uses_server_to_server(
    zoom: ZoomOAuthEmulator, clock: FakeClock, tmp_path: Path
) -> None:
    """ZOOM_ACCOUNT_ID selects account_credentials; ZOOM_TOKEN_STORE persists the token."""
    path = tmp_path / "env.json"
    environ = {
        "ZOOM_CLIENT_ID": zoom.client_id,
        "ZOOM_CLIENT_SECRET": zoom.client_secret,
        "ZOOM_ACCOUNT_ID": ACCOUNT,
        "ZOOM_TOKEN_URL": zoom.token_url,
        "ZOOM_REVOKE_URL": zoom.revoke_url,
        "ZOOM_TOKEN_STORE": str(path),
    }
    async with TokenManager.from_env(environ, clock=clock, sleep=clock.sleep) as manager:
        token = await manager.get_token()
    assert zoom.counters.s2s_issued == 1
    assert zoom.counters.refreshes == 0
    stored = await FileStore(path).load()
    assert stored is not None and stored.access_token == token


async def test_from_env_refuses_both_a_refresh_token_and_an_account_id() -> None:
    """The two grants are exclusive: a clear configuration error, no guessing."""
    environ = {
        "ZOOM_CLIENT_ID": "id",
        "ZOOM_CLIENT_SECRET": "secret",
        "ZOOM_ACCOUNT_ID": ACCOUNT,
        "ZOOM_REFRESH_TOKEN": "rt",
    }
    with pytest.raises(ConfigurationError, match="either refresh_token or account_id"):
        TokenManager.from_env(environ)


async def test_an_unknown_account_is_reported_clearly_without_retries(
    zoom: ZoomOAuthEmulator, make: Callable[..., TokenManager], caplog: pytest.LogCaptureFixture
) -> None:
    """Zoom's answer for an unknown account is permanent: one POST, its reason in the error."""
    caplog.set_level(logging.DEBUG, logger="zoomtoken")
    manager = make(account_id="no-such-account")
    with pytest.raises(TokenExpiredError, match="Account does not exist") as caught:
        await manager.get_token()
    assert zoom.counters.token_requests == 1
    assert zoom.client_secret not in str(caught.value) + caplog.text
