"""Races and lifecycle edges of TokenManager, each first reproduced as a failing test.

Clocks and sleeps are FakeClock's; nothing waits on real time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses

from manager_fakes import (
    REVOKE_URL,
    TOKEN_URL,
    FailingSaveStore,
    FakeZoom,
    make_token,
    register,
)
from zoomtoken import (
    ManagerClosedError,
    MemoryStore,
    RetryPolicy,
    StoreError,
    Token,
    TokenExpiredError,
    TokenManager,
    TokenState,
    ZoomTokenError,
)
from zoomtoken.testing import FakeClock


async def _spin(rounds: int = 50) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def _pending_zoomtoken_tasks() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task()
        and not task.done()
        and task.get_name().startswith("zoomtoken")
    ]


# ------------------------------------------------------------- 1. done flight, busy loop


class _SpinGuard:
    """Counts TokenManager._join_refresh calls and breaks a runaway loop with an error."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, limit: int = 1000) -> None:
        self.calls = 0
        original = TokenManager._join_refresh

        def guarded(manager: TokenManager, **kwargs: Any) -> asyncio.Future[Token]:
            self.calls += 1
            if self.calls > limit:
                raise RuntimeError("_join_refresh called in a loop that never yields")
            return original(manager, **kwargs)

        monkeypatch.setattr(TokenManager, "_join_refresh", guarded)


class _HookStore(MemoryStore):
    """A MemoryStore that runs ``on_save`` inside save(): a task it creates becomes ready in
    the same event-loop iteration in which the saving flight finishes."""

    def __init__(self, token: Token | None) -> None:
        super().__init__(token)
        self.on_save: Callable[[], None] | None = None

    async def save(self, token: Token, **kwargs: Any) -> None:
        await super().save(token, **kwargs)
        if self.on_save is not None:
            hook, self.on_save = self.on_save, None
            hook()


@pytest.mark.parametrize("operation", ["refresh_force", "invalidate"])
async def test_a_forced_refresh_started_as_a_flight_finishes_gets_a_newmake_token(
    zoom: FakeZoom,
    make: Callable[..., TokenManager],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
) -> None:
    """refresh(force=True) / invalidate() called in the loop iteration a flight ends refreshes once
    more instead of spinning."""
    guard = _SpinGuard(monkeypatch)
    store = _HookStore(make_token(clock, age=4000))
    manager = make(store=store)
    late: list[asyncio.Task[str]] = []

    def start_late_caller() -> None:
        if operation == "refresh_force":
            late.append(asyncio.get_running_loop().create_task(manager.refresh(force=True)))
        else:
            late.append(asyncio.get_running_loop().create_task(manager.invalidate("at-1")))

    store.on_save = start_late_caller
    assert await manager.get_token() == "at-1"
    (task,) = late
    assert await task == "at-2"
    assert zoom.posts == 2
    assert guard.calls < 10


# ------------------------------------------------------------- 2. revoke vs a new flight


async def test_a_refresh_started_during_revoke_does_not_resurrect_the_grant(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """After revoke() returns, neither memory nor the store holds a token, whatever refresh started
    meanwhile."""
    zoom = FakeZoom()
    zoom.gate = asyncio.Event()
    register(mock_http, zoom)
    revoke_gate = asyncio.Event()

    async def slow_revoke(url: Any, **kwargs: Any) -> CallbackResult:
        await revoke_gate.wait()
        return CallbackResult(payload={"status": "success"})

    mock_http.post(REVOKE_URL, callback=slow_revoke)
    store = MemoryStore(make_token(clock, age=3000))  # STALE
    manager = make(store=store)
    await manager.load()
    revoking = asyncio.create_task(manager.revoke())
    await _spin()
    # A caller during the revoke POST sees a STALE token: served, and a refresh starts.
    assert await manager.get_token() == "at-old-0"
    await _spin()
    revoke_gate.set()
    await revoking
    zoom.gate.set()  # the refresh answer lands after the revoke cleared everything
    await _spin()
    assert await store.load() is None
    assert manager.state is None


# ------------------------------------------------------------- 3. aclose during a load


class _SlowLoadStore(MemoryStore):
    """A MemoryStore whose loads wait for ``gate`` (a slow disk or network)."""

    def __init__(self, token: Token | None) -> None:
        super().__init__(token)
        self.gate = asyncio.Event()

    async def load(self) -> Token | None:
        await self.gate.wait()
        return await super().load()


async def test_aclose_during_start_leaves_no_refresher_running(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """aclose() while start() is still loading the store leaves no zoomtoken task behind."""
    store = _SlowLoadStore(make_token(clock, age=10))
    manager = make(store=store)
    starting = asyncio.create_task(manager.start())
    await _spin()
    closing = asyncio.create_task(manager.aclose())
    await _spin()
    store.gate.set()
    await closing
    with contextlib.suppress(ManagerClosedError):
        await starting
    leftover = _pending_zoomtoken_tasks()
    for task in leftover:  # clean up, so the failure is this assertion and nothing else
        task.cancel()
    await asyncio.gather(*leftover, return_exceptions=True)
    assert leftover == []


async def test_refresh_racing_aclose_fails_closed_and_posts_nothing(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """refresh() whose load is interrupted by aclose() raises ManagerClosedError and sends no
    request."""
    zoom = FakeZoom()
    zoom.gate = asyncio.Event()
    register(mock_http, zoom)
    store = _SlowLoadStore(make_token(clock, age=4000))
    manager = make(store=store)
    refreshing = asyncio.create_task(manager.refresh())
    await _spin()
    closing = asyncio.create_task(manager.aclose())
    await _spin()
    store.gate.set()
    await closing
    await _spin()
    leftover = _pending_zoomtoken_tasks()
    posts_after_close = zoom.posts
    zoom.gate.set()
    outcome = await asyncio.gather(refreshing, return_exceptions=True)
    if manager._session is not None:  # the session the late flight created: close it here
        await manager._session.close()
    assert leftover == []
    assert posts_after_close == 0
    assert isinstance(outcome[0], ManagerClosedError)


# ------------------------------------------------------------- 4. stale unsaved pair


async def test_an_unsaved_pair_never_overwrites_a_newer_grant_found_in_the_store(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """Once a newer pair (a re-authorised grant) is adopted from the store, the older unsaved pair
    is dropped, never saved over it."""
    zoom = FakeZoom()
    register(mock_http, zoom)
    store = FailingSaveStore(make_token(clock, age=4000), fail=1)
    manager = make(store=store)
    with pytest.raises(TokenExpiredError):
        await manager.get_token()  # POST ok (rt-0 -> rt-1), save fails: rt-1 is unsaved
    # The user re-authorises (zoomtoken authorize): a new grant lands in the store, and
    # Zoom invalidates the earlier grant, rt-1 included.
    new_grant = make_token(clock, age=0, gen=1, access="at-new", refresh="rt-new")
    await store.save(new_grant, expected_generation=0)
    zoom.current = "rt-new"
    await clock.advance(6)  # past the cool-down
    assert await manager.get_token() == "at-new"  # adopted from the store
    await clock.advance(2900)  # the new grant's token turns STALE
    await manager.refresh()
    stored = await store.load()
    assert stored is not None
    assert stored.refresh_token != "rt-1"  # the dead grant must not replace the live one
    assert zoom.invalid_grant == 0


# ------------------------------------------------------------- 5. aclose waits out retries


async def test_aclose_during_a_failing_post_stops_the_burst_instead_of_retrying(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """aclose() during a POST that then fails returns at once: no backoff wait, no further POST."""
    zoom = FakeZoom()
    zoom.gate = asyncio.Event()
    zoom.script = [(503, {"error": "server_error"})]
    register(mock_http, zoom)
    manager = make(
        store=MemoryStore(make_token(clock, age=4000)), retry=RetryPolicy(max_attempts=5, budget=30)
    )
    caller = asyncio.create_task(manager.get_token())
    await zoom.arrived.wait()  # the POST is on the wire: aclose() must let it land
    closing = asyncio.create_task(manager.aclose())
    await _spin()
    zoom.gate.set()  # ... and it lands as a 503
    await _spin()
    closed_promptly = closing.done()
    await clock.advance(60)  # let a backoff sleep, if any, run out
    await closing
    await asyncio.gather(caller, return_exceptions=True)
    assert closed_promptly
    assert zoom.posts == 1


# ------------------------------------------------------------- 6. revoke vs aclose


async def test_revoke_interrupted_by_aclose_raises_manager_closed_not_cancelled(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """revoke() waiting on a flight that aclose() cancels raises ManagerClosedError, not
    CancelledError."""
    zoom = FakeZoom()
    zoom.script = [(503, {"error": "server_error"})]
    register(mock_http, zoom)
    mock_http.post(REVOKE_URL, payload={"status": "success"}, repeat=True)
    manager = make(store=MemoryStore(make_token(clock, age=4000)))
    caller = asyncio.create_task(manager.get_token())
    await _spin()
    assert zoom.posts == 1 and clock.pending_sleepers == 1  # the burst backs off
    revoking = asyncio.create_task(manager.revoke())
    await _spin()
    await manager.aclose()
    await asyncio.gather(caller, revoking, return_exceptions=True)
    assert not revoking.cancelled()
    assert isinstance(revoking.exception(), ManagerClosedError)


# ------------------------------------------------------------- 7. hot path vs wall step back


async def test_get_token_never_serves_a_token_past_its_real_deadline_after_a_clock_step(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """With the wall clock stepped back an hour and refreshes failing, a running manager does not
    serve the old token past its real (monotonic) hard deadline."""
    mock_http.post(TOKEN_URL, status=503, body="{}", repeat=True)
    manager = make(
        store=MemoryStore(make_token(clock, age=0)), retry=RetryPolicy(max_attempts=1, budget=5)
    )
    await manager.start()
    assert await manager.get_token() == "at-old-0"
    clock.jump_wall(-3600)
    await clock.advance(3545)  # real (monotonic) time: past the hard deadline at 3539 s
    assert manager.state is TokenState.EXPIRED
    with pytest.raises(TokenExpiredError):
        await manager.get_token()


# ------------------------------------------------------------- 8. invalidate vs cool-down


async def test_invalidate_during_the_failure_cool_down_sends_no_request(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """A 401 reported through invalidate() while the failure cool-down runs causes no new POST."""
    zoom = FakeZoom()
    zoom.script = [(503, {"error": "server_error"})] * 100
    register(mock_http, zoom)
    manager = make(
        store=MemoryStore(make_token(clock, age=10)), retry=RetryPolicy(max_attempts=1, budget=30)
    )
    for _ in range(3):  # three failed bursts: the cool-down is now 20 s
        with pytest.raises(ZoomTokenError):
            await manager.invalidate("at-old-0")
        await clock.advance(10.5)
    assert zoom.posts == 3
    assert manager.status().cooldown_remaining > 0
    with contextlib.suppress(ZoomTokenError):
        await manager.invalidate("at-old-0")
    assert zoom.posts == 3


# ------------------------------------------------------------- 9. expired-on-arrival back-off


async def test_tokens_expired_on_arrival_back_off_with_a_growing_cool_down(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """Consecutive refreshes whose token arrives already expired get a doubling cool-down, like any
    failed burst."""
    zoom = FakeZoom(expires_in=2)

    async def slow(url: Any, **kwargs: Any) -> CallbackResult:
        clock.suspend(10)  # the answer takes longer than the token lives
        return await zoom(url, **kwargs)

    mock_http.post(TOKEN_URL, callback=slow, repeat=True)
    manager = make(store=MemoryStore(make_token(clock, age=4000)))
    cooldowns = []
    for _ in range(3):
        with pytest.raises(TokenExpiredError):
            await manager.get_token()
        cooldowns.append(manager.status().cooldown_remaining)
        await clock.advance(cooldowns[-1] + 0.1)
    assert zoom.posts == 3 and zoom.invalid_grant == 0
    assert cooldowns[0] < cooldowns[1] < cooldowns[2]


class _SharedFailingSaveStore(FailingSaveStore):
    """A failing-save MemoryStore that says it is shared, so the manager takes its lease."""

    shared = True


async def test_aclose_does_not_wait_out_lease_polling_while_a_pair_is_unsaved(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """aclose() returns promptly when the flight is only waiting for another holder's lease, and
    still makes its last-chance save."""
    store = _SharedFailingSaveStore(make_token(clock, age=4000), fail=1)
    manager = make(store=store)
    with pytest.raises(TokenExpiredError):
        await manager.get_token()  # POST ok, save fails: the rotated pair is unsaved
    other = await store.try_acquire_lease(ttl=60)  # another process starts refreshing
    assert other is not None
    await clock.advance(6)  # past the cool-down
    caller = asyncio.create_task(manager.get_token())
    await _spin()
    assert clock.pending_sleepers == 1  # the flight polls for the lease
    closing = asyncio.create_task(manager.aclose())
    await _spin()
    closed_promptly = closing.done()
    await other.release()
    await clock.advance(5)
    await closing
    await asyncio.gather(caller, return_exceptions=True)
    assert closed_promptly
    stored = await store.load()
    assert stored is not None and stored.refresh_token == "rt-1"
    assert zoom.posts == 1


# ------------------------------------------------------------- 10. start() after a failed start()


class _FlakyLoadStore(MemoryStore):
    """A MemoryStore whose first ``fail`` loads raise (a store briefly unreachable)."""

    def __init__(self, token: Token | None, fail: int) -> None:
        super().__init__(token)
        self.fail = fail

    async def load(self) -> Token | None:
        if self.fail > 0:
            self.fail -= 1
            raise StoreError("store unreachable")
        return await super().load()


async def test_start_retried_after_a_failed_load_runs_the_refresher(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """A start() that failed because the store was unreachable can be retried and then runs the
    refresher."""
    manager = make(store=_FlakyLoadStore(make_token(clock, age=0), fail=1))
    with pytest.raises(StoreError):
        await manager.start()
    await manager.start()
    assert any(task.get_name() == "zoomtoken-refresher" for task in _pending_zoomtoken_tasks())


# ------------------------------------------------------------- 11. revoke with an unreadable store


async def test_revoke_never_reports_success_without_revoking_the_grant(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """revoke() whose store cannot be read either revokes the stored grant upstream or raises; it
    never returns silently."""
    revoked: list[Any] = []

    async def revoke_endpoint(url: Any, **kwargs: Any) -> CallbackResult:
        revoked.append(kwargs["data"])
        return CallbackResult(payload={"status": "success"})

    mock_http.post(REVOKE_URL, callback=revoke_endpoint, repeat=True)
    store = _FlakyLoadStore(make_token(clock, age=10), fail=1)  # unreachable for one call
    manager = make(store=store)
    try:
        await manager.revoke()
    except ZoomTokenError:
        raised = True
    else:
        raised = False
    assert raised or revoked == [{"token": "at-old-0"}]


# ------------------------------------------------------------- 12. concurrent aclose()


async def test_a_second_concurrent_aclose_waits_until_the_manager_is_really_closed(
    mock_http: aioresponses, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """A second aclose() returns only once the first has finished and no zoomtoken task is left."""
    zoom = FakeZoom()
    zoom.gate = asyncio.Event()
    register(mock_http, zoom)
    manager = make(store=MemoryStore(make_token(clock, age=4000)))
    caller = asyncio.create_task(manager.get_token())
    await zoom.arrived.wait()  # the refresh is between sending and saving
    first = asyncio.create_task(manager.aclose())
    await _spin()
    second = asyncio.create_task(manager.aclose())
    await _spin()
    second_returned_early = second.done() and bool(_pending_zoomtoken_tasks())
    zoom.gate.set()
    await asyncio.gather(first, second, caller, return_exceptions=True)
    assert not second_returned_early


class _HeldLeaseStore(MemoryStore):
    """A shared store whose lease another process holds for ever."""

    shared = True

    async def try_acquire_lease(self, *, ttl: float) -> Any:
        return None


async def test_a_clock_jump_during_lease_polling_does_not_end_the_wait_early(
    zoom: FakeZoom, make: Callable[..., TokenManager], clock: FakeClock
) -> None:
    """Lease polling gives up after waiting out the lease's TTL, however far the clock jumps."""
    manager = make(store=_HeldLeaseStore(make_token(clock, age=4000)), lease_ttl=10)
    waiter = asyncio.create_task(manager.refresh(force=True))
    await clock.advance(0.05)
    clock.stall(7200)  # a blocked loop: both clocks jump two hours, nobody runs meanwhile
    await clock.advance(0)
    assert not waiter.done()
    await clock.advance(12)
    with pytest.raises(ZoomTokenError):
        await waiter
    assert sum(clock.sleeps) >= 10
    assert zoom.posts == 0
