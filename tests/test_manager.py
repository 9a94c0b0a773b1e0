"""TokenManager behaviour: hot path, single flight, retries, failures, lifecycle.

Unit tests run against aioresponses; the emulator tests talk real HTTP on loopback.
Nothing here waits on real time: clocks and sleeps are FakeClock's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses

from conftest import (
    CANARIES,
    CANARY_ACCESS_TOKEN,
    CANARY_CLIENT_ID,
    CANARY_CLIENT_SECRET,
    CANARY_REFRESH_TOKEN,
)
from manager_fakes import (
    REVOKE_URL,
    TOKEN_URL,
    FailingSaveStore,
    FakeZoom,
    make_token,
    register,
)
from zoomtoken import (
    ConfigurationError,
    Event,
    EventKind,
    ManagerClosedError,
    MemoryStore,
    OAuthError,
    ReauthorizationRequiredError,
    RetryPolicy,
    Token,
    TokenExpiredError,
    TokenManager,
    TokenState,
)
from zoomtoken.testing import FakeClock, Fault, ZoomOAuthEmulator

# ---------------------------------------------------------------------------------- hot path


async def test_fresh_token_is_served_without_any_request(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """A FRESH stored token is returned as is: no POST, no task."""
    manager = make(store=MemoryStore(make_token(clock, age=10)))
    assert await manager.get_token() == "at-old-0"
    assert await manager.get_token() == "at-old-0"
    assert mock_http.requests == {}


async def test_ten_thousand_callers_on_an_expired_token_make_one_post(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """10,000 concurrent get_token() on an EXPIRED token share one refresh."""
    manager = make(store=MemoryStore(make_token(clock, age=4000)))
    tokens = await asyncio.gather(*(manager.get_token() for _ in range(10_000)))
    assert zoom.posts == 1
    assert set(tokens) == {"at-1"}
    assert manager.generation == 1


async def test_seed_refresh_token_is_used_when_the_store_is_empty(
    mock_http: aioresponses, make: Callable[..., TokenManager]
) -> None:
    """With no stored token the configured refresh token gets the first one."""
    zoom = FakeZoom("seed")
    register(mock_http, zoom)
    store = MemoryStore()
    manager = make(refresh_token="seed", store=store)
    assert await manager.get_token() == "at-1"
    stored = await store.load()
    assert stored is not None and stored.refresh_token == "rt-1" and stored.generation == 0


async def test_stale_token_is_served_while_one_refresh_runs(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """STALE: callers get the old token at once and exactly one refresh starts."""
    events: list[Event] = []
    manager = make(store=MemoryStore(make_token(clock, age=3000)), on_event=events.append)
    tokens = await asyncio.gather(*(manager.get_token() for _ in range(100)))
    assert set(tokens) == {"at-old-0"}
    for _ in range(20):
        await asyncio.sleep(0)
    assert zoom.posts == 1
    assert await manager.get_token() == "at-1"
    assert manager.status().stale_serves == 100
    kinds = [event.kind for event in events]
    assert kinds.count(EventKind.TOKEN_STALE) == 1
    assert kinds.count(EventKind.REFRESH_SUCCEEDED) == 1


async def test_cancelling_the_caller_that_started_the_refresh_does_not_stop_it(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """The refresh runs detached: cancelling its first caller leaves it running for others."""
    zoom.gate = gate = asyncio.Event()
    manager = make(store=MemoryStore(make_token(clock, age=4000)))
    first = asyncio.create_task(manager.get_token())
    await asyncio.sleep(0)
    others = [asyncio.create_task(manager.get_token()) for _ in range(10)]
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    gate.set()
    assert set(await asyncio.gather(*others)) == {"at-1"}
    assert first.cancelled()
    assert zoom.posts == 1


# ---------------------------------------------------------------------------------- failures


async def test_failed_refresh_while_stale_keeps_serving_then_raises_once_expired(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """The old token keeps serving through failures; past its deadline the error is typed."""
    mock_http.post(TOKEN_URL, status=503, body="{}", repeat=True)
    clock.autojump = True
    old = make_token(clock, age=3000)
    manager = make(store=MemoryStore(old), retry=RetryPolicy(max_attempts=2, budget=5))
    assert await manager.get_token() == old.access_token
    for _ in range(50):
        await asyncio.sleep(0)
    assert manager.status().failures == 1
    assert await manager.get_token() == old.access_token  # still STALE: served
    clock.jump_wall(old.hard_deadline - clock.time())
    await clock.advance(0)
    with pytest.raises(TokenExpiredError) as info:
        await manager.get_token()
    assert isinstance(info.value.__cause__, OAuthError)
    assert info.value.__cause__.status == 503


async def test_hundred_callers_on_a_failing_endpoint_cause_one_burst(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """100 callers on an EXPIRED token with a dead endpoint: one burst, one typed error each."""
    zoom = FakeZoom()
    zoom.script = [(503, {"error": "server_error"}, {})] * 100
    register(mock_http, zoom)
    clock.autojump = True
    manager = make(
        store=MemoryStore(make_token(clock, age=4000)), retry=RetryPolicy(max_attempts=4, budget=60)
    )
    results = await asyncio.gather(
        *(manager.get_token() for _ in range(100)), return_exceptions=True
    )
    assert zoom.posts == 4
    assert all(isinstance(result, TokenExpiredError) for result in results)
    causes = {id(result.__cause__) for result in results if isinstance(result, BaseException)}
    assert len(causes) == 1
    # During the cool-down more callers fail fast without a single new POST.
    more = await asyncio.gather(*(manager.get_token() for _ in range(100)), return_exceptions=True)
    assert all(isinstance(result, TokenExpiredError) for result in more)
    assert zoom.posts == 4


async def test_after_the_cool_down_one_new_burst_recovers(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """Once the cool-down has passed the next caller starts one new burst, which succeeds."""
    zoom = FakeZoom()
    zoom.script = [(503, {}, {})] * 3
    register(mock_http, zoom)
    clock.autojump = True
    manager = make(
        store=MemoryStore(make_token(clock, age=4000)), retry=RetryPolicy(max_attempts=3, budget=60)
    )
    with pytest.raises(TokenExpiredError):
        await manager.get_token()
    cooldown = manager.status().cooldown_remaining
    assert cooldown > 0
    await clock.sleep(cooldown)
    assert await manager.get_token() == "at-1"
    assert zoom.posts == 4


async def test_recorded_waits_follow_backoff_and_retry_after(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """Waits are full-jitter exponential, and never shorter than Retry-After."""
    zoom = FakeZoom()
    zoom.script = [
        (503, {}, {}),
        (503, {}, {}),
        (429, {}, {"Retry-After": "9"}),
        (503, {}, {}),
    ]
    register(mock_http, zoom)
    clock.autojump = True
    manager = make(
        store=MemoryStore(make_token(clock, age=4000)),
        retry=RetryPolicy(max_attempts=6, budget=120, backoff_base=1.0, backoff_cap=8.0),
    )
    assert await manager.get_token() == "at-1"
    waits = clock.sleeps
    assert len(waits) == 4
    assert 0 <= waits[0] <= 1.0
    assert 0 <= waits[1] <= 2.0
    assert waits[2] >= 9.0  # Retry-After honoured
    assert 0 <= waits[3] <= 8.0
    assert manager.status().retries == 4


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"reason": "Invalid Token!", "error": "invalid_grant"}),
        (401, {"reason": "Invalid client_id or client_secret", "error": "invalid_client"}),
    ],
)
async def test_dead_grant_or_client_needs_reauthorisation_and_stops_posting(
    mock_http: aioresponses,
    make: Callable[..., TokenManager],
    clock: FakeClock,
    status: int,
    body: dict[str, str],
) -> None:
    """invalid_grant / invalid_client: a distinct error, one POST, then never another."""
    zoom = FakeZoom()
    zoom.script = [(status, body, {})] * 10
    register(mock_http, zoom)
    clock.autojump = True
    manager = make(store=MemoryStore(make_token(clock, age=4000)))
    for _ in range(3):
        with pytest.raises(ReauthorizationRequiredError) as info:
            await manager.get_token()
        assert info.value.error == body["error"]
    with pytest.raises(ReauthorizationRequiredError):
        await manager.refresh(force=True)
    assert zoom.posts == 1
    assert manager.status().reauthorization_required


async def test_dead_grant_keeps_serving_the_still_valid_token(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """After invalid_grant a STALE token is still served until its deadline."""
    zoom = FakeZoom("someone-else-rotated")
    register(mock_http, zoom)
    manager = make(store=MemoryStore(make_token(clock, age=3000)))
    assert await manager.get_token() == "at-old-0"
    for _ in range(50):
        await asyncio.sleep(0)
    assert manager.status().reauthorization_required
    assert await manager.get_token() == "at-old-0"
    assert zoom.posts == 1


async def test_timeout_then_invalid_grant_is_reported_as_a_lost_answer(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """Sent, timed out, retried, invalid_grant: the error says the answer was lost."""
    mock_http.post(TOKEN_URL, timeout=True)
    mock_http.post(
        TOKEN_URL, status=400, payload={"reason": "Invalid Token!", "error": "invalid_grant"}
    )
    clock.autojump = True
    manager = make(store=MemoryStore(make_token(clock, age=4000)))
    with pytest.raises(ReauthorizationRequiredError) as info:
        await manager.get_token()
    assert "lost" in str(info.value)


async def test_token_expired_on_arrival_does_not_cause_a_hot_loop(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """A token already past its deadline on arrival is saved, then the cool-down holds."""
    sent: list[float] = []

    def slow_and_short(url: Any, **kwargs: Any) -> CallbackResult:
        sent.append(clock.time())
        clock.suspend(10)  # the answer takes longer than the token lives
        return CallbackResult(
            payload={"access_token": "short", "refresh_token": "rt-9", "expires_in": 2}
        )

    mock_http.post(TOKEN_URL, callback=slow_and_short, repeat=True)
    store = MemoryStore(make_token(clock, age=4000))
    manager = make(store=store)
    for _ in range(5):
        with pytest.raises(TokenExpiredError):
            await manager.get_token()
    assert len(sent) == 1
    stored = await store.load()
    assert stored is not None and stored.refresh_token == "rt-9"


# ---------------------------------------------------------------------------------- store


async def test_new_token_is_not_handed_out_before_it_is_saved(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """A failing save keeps the new token from callers; the error says why."""
    store = FailingSaveStore(make_token(clock, age=4000), fail=1)
    manager = make(store=store)
    with pytest.raises(TokenExpiredError) as info:
        await manager.get_token()
    assert "could not be saved" in str(info.value)
    assert "disk full" in str(info.value.__cause__)
    assert manager.generation == 0  # the old one is still what is published


async def test_unsaved_pair_is_saved_later_without_a_second_post(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """The rotated pair survives a failed save and is persisted on the next try, no new POST."""
    store = FailingSaveStore(make_token(clock, age=4000), fail=1)
    manager = make(store=store)
    with pytest.raises(TokenExpiredError):
        await manager.get_token()
    assert await manager.refresh() == "at-1"
    assert zoom.posts == 1 and zoom.invalid_grant == 0
    stored = await store.load()
    assert stored is not None and stored.refresh_token == "rt-1"


# ---------------------------------------------------------------------------------- operations


async def test_invalidate_of_an_old_token_triggers_no_refresh(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """invalidate(old) while a newer token is current returns the newer one, no POST."""
    manager = make(store=MemoryStore(make_token(clock, age=10, gen=3)))
    assert await manager.invalidate("at-old-2") == "at-old-3"
    assert zoom.posts == 0


async def test_invalidate_of_the_current_token_refreshes_once_and_is_rate_limited(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """200 concurrent invalidate(current) make one refresh; a quick repeat makes none."""
    manager = make(store=MemoryStore(make_token(clock, age=10)))
    results = await asyncio.gather(*(manager.invalidate("at-old-0") for _ in range(200)))
    assert set(results) == {"at-1"}
    assert zoom.posts == 1
    assert await manager.invalidate("at-1") == "at-1"  # within MIN_INVALIDATE_INTERVAL
    assert zoom.posts == 1


async def test_forced_refresh_always_posts(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """refresh(force=True) rotates even a FRESH token; refresh() alone does not."""
    manager = make(store=MemoryStore(make_token(clock, age=10)))
    assert await manager.refresh() == "at-old-0"
    assert await manager.refresh(force=True) == "at-1"
    assert await manager.refresh(force=True) == "at-2"
    assert zoom.posts == 2


async def test_revoke_clears_memory_and_store_even_when_the_endpoint_fails(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """A failing revoke still forgets the tokens, then raises the endpoint's error."""
    mock_http.post(REVOKE_URL, status=500, body="{}")
    store = MemoryStore(make_token(clock, age=10))
    manager = make(store=store)
    with pytest.raises(OAuthError):
        await manager.revoke()
    assert await store.load() is None
    assert manager.state is None
    with pytest.raises(ReauthorizationRequiredError):
        await manager.get_token()


async def test_revoke_sends_the_access_token(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """revoke() posts token=<current access token> and reports REVOKED."""
    mock_http.post(REVOKE_URL, payload={"status": "success"})
    events: list[Event] = []
    manager = make(store=MemoryStore(make_token(clock, age=10)), on_event=events.append)
    await manager.revoke()
    calls = next(iter(mock_http.requests.values()))
    assert calls[0].kwargs["data"] == {"token": "at-old-0"}
    assert events[-1].kind is EventKind.REVOKED


async def test_event_hook_that_raises_does_not_break_refreshes(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """A broken on_event hook is logged and ignored."""

    def broken(event: Event) -> None:
        raise RuntimeError("metrics down")

    manager = make(store=MemoryStore(make_token(clock, age=4000)), on_event=broken)
    assert await manager.get_token() == "at-1"


# ---------------------------------------------------------------------------------- lifecycle


async def test_background_refresh_fires_at_refresh_at(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """The refresher sleeps (in chunks) until refresh_at, then refreshes exactly once."""
    zoom = FakeZoom()
    posted_at: list[float] = []

    async def record(url: Any, **kwargs: Any) -> CallbackResult:
        posted_at.append(clock.time())
        return await zoom(url, **kwargs)

    mock_http.post(TOKEN_URL, callback=record, repeat=True)
    old = make_token(clock, age=0)
    manager = make(store=MemoryStore(old))
    await manager.start()
    await clock.advance(old.refresh_at - clock.time() - 1)
    assert posted_at == []
    await clock.advance(2)
    assert posted_at == [pytest.approx(old.refresh_at)]
    assert max(clock.sleeps) <= 15.0  # bounded chunks
    assert manager.generation == 1


async def test_after_suspend_an_expired_token_is_never_served(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """Wall clock +2 h, monotonic unchanged: get_token() refreshes instead of serving."""
    manager = make(store=MemoryStore(make_token(clock, age=0)))
    await manager.start()
    clock.suspend(2 * 3600)
    assert await manager.get_token() == "at-1"
    assert zoom.posts == 1


async def test_wall_clock_set_back_does_not_delay_the_refresh(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """With the wall clock stepped back an hour, the refresher follows the monotonic clock."""
    old = make_token(clock, age=0)
    manager = make(store=MemoryStore(old))
    await manager.start()
    clock.jump_wall(-3600)
    await clock.advance(old.refresh_at - old.issued_at + 16)
    assert zoom.posts == 1


async def test_aclose_leaves_no_task_and_refuses_further_use(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """After aclose() no zoomtoken task is pending and calls raise ManagerClosedError."""
    manager = make(store=MemoryStore(make_token(clock, age=3000)))
    await manager.start()
    await manager.get_token()  # STALE: kicks a refresh task
    await manager.aclose()
    pending = [
        task
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task() and task.get_name().startswith("zoomtoken")
    ]
    assert pending == []
    with pytest.raises(ManagerClosedError):
        await manager.get_token()
    with pytest.raises(ManagerClosedError):
        await manager.start()


async def test_async_with_runs_and_stops_the_refresher(
    mock_http: aioresponses, clock: FakeClock
) -> None:
    """async with starts the background task and stops it on exit."""
    async with TokenManager(
        client_id="c",
        client_secret="s",
        store=MemoryStore(make_token(clock, age=0)),
        clock=clock,
        sleep=clock.sleep,
    ) as manager:
        assert any(t.get_name() == "zoomtoken-refresher" for t in asyncio.all_tasks())
        assert manager.state is TokenState.FRESH
    assert not any(t.get_name() == "zoomtoken-refresher" for t in asyncio.all_tasks())


# ---------------------------------------------------------------------------------- config


def test_from_env_builds_a_manager() -> None:
    """ZOOM_CLIENT_ID / SECRET / REFRESH_TOKEN are enough."""
    manager = TokenManager.from_env(
        {"ZOOM_CLIENT_ID": "id", "ZOOM_CLIENT_SECRET": "s", "ZOOM_REFRESH_TOKEN": "rt"}
    )
    assert "closed" not in repr(manager)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"ZOOM_CLIENT_ID": "id"},
        {"ZOOM_CLIENT_ID": "id", "ZOOM_CLIENT_SECRET": "  "},
        {"ZOOM_CLIENT_ID": "id", "ZOOM_CLIENT_SECRET": "s"},
    ],
)
def test_from_env_names_what_is_missing(environ: dict[str, str]) -> None:
    """Missing or empty settings raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        TokenManager.from_env(environ)


def test_insecure_token_url_is_refused() -> None:
    """A plain-http token URL on a remote host is refused at construction."""
    with pytest.raises(ConfigurationError):
        TokenManager(client_id="a", client_secret="b", token_url="http://zoom.us/oauth/token")


# ---------------------------------------------------------------------------------- secrets


async def test_no_secret_reaches_logs_reprs_or_errors(
    mock_http: aioresponses,
    make: Callable[..., TokenManager],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Canary credentials and tokens appear in no log record, repr, event or error text."""
    caplog.set_level(logging.DEBUG)
    mock_http.post(
        TOKEN_URL,
        payload={
            "access_token": CANARY_ACCESS_TOKEN,
            "refresh_token": CANARY_REFRESH_TOKEN + "-2",
            "expires_in": 3599,
        },
    )
    mock_http.post(TOKEN_URL, status=503, body="{}", repeat=True)
    mock_http.post(REVOKE_URL, status=500, body="{}")
    events: list[Event] = []
    clock.autojump = True
    manager = make(
        client_id=CANARY_CLIENT_ID,
        client_secret=CANARY_CLIENT_SECRET,
        refresh_token=CANARY_REFRESH_TOKEN,
        on_event=events.append,
        retry=RetryPolicy(max_attempts=2, budget=5),
    )
    texts: list[str] = []
    assert await manager.get_token() == CANARY_ACCESS_TOKEN
    texts += [repr(manager), repr(manager.status()), repr(manager._token)]
    with pytest.raises(OAuthError) as forced:
        await manager.refresh(force=True)
    texts += [str(forced.value), repr(forced.value), repr(forced.value.__cause__)]
    with pytest.raises(OAuthError) as revoked:
        await manager.revoke()
    texts += [str(revoked.value), repr(revoked.value)]
    texts += [repr(event) for event in events]
    texts += [record.getMessage() for record in caplog.records]
    blob = "\n".join(texts)
    for canary in CANARIES:
        assert canary not in blob
    assert caplog.records  # something was logged, so the check above means something


async def test_status_reports_state_and_counters(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """status() carries state, expiry, generation and counts."""
    manager = make(store=MemoryStore(make_token(clock, age=4000)))
    await manager.get_token()
    status = manager.status()
    assert status.state is TokenState.FRESH
    assert status.generation == 1
    assert status.refreshes == 1 and status.token_posts == 1 and status.failures == 0
    assert status.seconds_to_expiry == pytest.approx(3599 - 60)


# ---------------------------------------------------------------------------------- emulator


async def test_fifty_background_cycles_against_reuse_detection_never_hit_invalid_grant(
    clock: FakeClock,
) -> None:
    """50 rotations through the background refresher and real HTTP: zero invalid_grant."""
    async with ZoomOAuthEmulator(expires_in=60, reuse_detection=True, clock=clock) as emulator:
        seed = emulator.create_grant()
        async with TokenManager(
            client_id=emulator.client_id,
            client_secret=emulator.client_secret,
            refresh_token=seed,
            token_url=emulator.token_url,
            revoke_url=emulator.revoke_url,
            clock=clock,
            sleep=clock.sleep,
        ) as manager:
            await manager.get_token()
            seen = set()
            for _ in range(50):
                before = emulator.counters.refreshes
                while emulator.counters.refreshes == before:
                    await clock.advance(5)
                    await asyncio.sleep(0.001)  # let the real HTTP round trip finish
                seen.add(await manager.get_token())
            assert emulator.counters.invalid_grant == 0
            assert emulator.counters.reuse_detected == 0
            assert manager.generation is not None and manager.generation >= 50
            assert len(seen) >= 50


async def test_emulator_herd_and_revoke_end_to_end(clock: FakeClock) -> None:
    """1,000 callers, one POST through real HTTP; revoke kills the grant at the emulator."""
    async with ZoomOAuthEmulator(reuse_detection=True, clock=clock) as emulator:
        seed = emulator.create_grant()
        manager = TokenManager(
            client_id=emulator.client_id,
            client_secret=emulator.client_secret,
            refresh_token=seed,
            token_url=emulator.token_url,
            revoke_url=emulator.revoke_url,
            clock=clock,
            sleep=clock.sleep,
        )
        try:
            tokens = await asyncio.gather(*(manager.get_token() for _ in range(1000)))
            assert len(set(tokens)) == 1
            assert emulator.counters.token_requests == 1
            emulator.inject(Fault.status(503), Fault.status(502))
            clock.autojump = True
            assert await manager.refresh(force=True) not in tokens
            assert emulator.counters.token_requests == 4
            await manager.revoke()
            assert emulator.counters.revokes == 1
        finally:
            await manager.aclose()


async def test_close_makes_a_last_attempt_to_save_an_unsaved_pair(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """A rotated pair whose save failed is written on aclose() if the store recovered."""
    store = FailingSaveStore(make_token(clock, age=4000), fail=1)
    manager = make(store=store)
    with pytest.raises(TokenExpiredError):
        await manager.get_token()
    await manager.aclose()
    stored = await store.load()
    assert stored is not None and stored.refresh_token == "rt-1"
    assert zoom.posts == 1


class WatchableStore(MemoryStore):
    """A MemoryStore that notifies through watch(), like Redis pub/sub."""

    def __init__(self, token: Token | None) -> None:
        super().__init__(token)
        self.updates: asyncio.Queue[None] = asyncio.Queue()

    def watch(self) -> AsyncIterator[None]:
        async def iterate() -> AsyncIterator[None]:
            while True:
                await self.updates.get()
                yield None

        return iterate()


async def test_store_notification_is_adopted_without_a_post(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """When the store reports another process's save, the manager adopts it at once."""
    old = make_token(clock, age=10)
    store = WatchableStore(old)
    manager = make(store=store)
    await manager.start()
    newer = Token.issue(
        access_token="from-elsewhere",
        refresh_token="rt-x",
        expires_in=3599,
        issued_at=clock.time(),
        jitter=0,
        generation=1,
    )
    await store.save(newer, expected_generation=0)
    store.updates.put_nowait(None)
    for _ in range(10):
        await asyncio.sleep(0)
    assert await manager.get_token() == "from-elsewhere"
    assert zoom.posts == 0
    await manager.aclose()
    assert not any(t.get_name() == "zoomtoken-watcher" for t in asyncio.all_tasks())


async def test_many_cancelled_waiters_leave_the_flight_and_the_rest_alone(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """Cancelling 900 of 1,000 waiters cancels neither the refresh nor the other 100."""
    zoom.gate = gate = asyncio.Event()
    manager = make(store=MemoryStore(make_token(clock, age=4000)))
    callers = [asyncio.create_task(manager.get_token()) for _ in range(1000)]
    for _ in range(5):
        await asyncio.sleep(0)
    flight = manager._flight
    assert flight is not None
    for caller in callers[:900]:
        caller.cancel()
    late = [asyncio.create_task(manager.get_token()) for _ in range(200)]
    for _ in range(5):
        await asyncio.sleep(0)
    # Cancelled waiters are compacted away as new ones join: the list stays bounded.
    assert len(flight.waiters) <= 2 * 300 + 64
    gate.set()
    assert set(await asyncio.gather(*callers[900:], *late)) == {"at-1"}
    assert all(caller.cancelled() for caller in callers[:900])
    assert flight.waiters == []
    assert zoom.posts == 1
