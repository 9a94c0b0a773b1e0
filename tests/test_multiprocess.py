"""Many OS processes, one grant: the cross-process single flight, crash take-over, Redis
outages and propagation, against the emulator with reuse detection.

Time never passes by itself here: every process reads a :class:`SharedClock` that the parent
moves between cycles, so all workers see the token expire at the same instant. Only the lease
polls wait for real (tens of milliseconds). Workers are ``spawn``-ed and driven through queues
(see ``_mp_worker``); every wait is bounded, so a bug fails a test instead of hanging it. The
emulator runs on its own event loop in a thread of the parent, because the parent blocks on
multiprocessing primitives.
"""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import replace
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from _mp_worker import SharedClock, WorkerSpec, fingerprint, worker_main
from redis_server import RedisServer, redis_server_fixture  # noqa: F401
from zoomtoken import (
    Event,
    EventKind,
    Lease,
    StaleGenerationError,
    StoreUnavailableError,
    Token,
    TokenExpiredError,
    TokenManager,
    TokenState,
)
from zoomtoken.stores.file import FileStore
from zoomtoken.stores.redis import RedisStore
from zoomtoken.testing import EmulatorCounters, FakeClock, Fault, ZoomOAuthEmulator

_T = TypeVar("_T")

# Virtual seconds a token lives; each cycle advances the shared clock by this much, which is
# past the token's hard deadline (expiry minus 5 %) for every worker at once.
LIFETIME = 60
PROCESSES = 8
CALLERS = 500
CYCLES = 20
USER = "mp-user"
NAMESPACE = "zoomtoken-mp"
# Real seconds: the longest any single step may take before the test fails.
STEP_TIMEOUT = 30.0
START_TIMEOUT = 60.0


# ------------------------------------------------------------------ the emulator's thread


class EmulatorThread:
    """A ZoomOAuthEmulator (reuse detection on) serving from an event loop in a thread."""

    def __init__(self, clock: SharedClock) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="emulator", daemon=True)
        self._thread.start()
        self.clock = clock
        self.emulator = self.run(self._start(clock))
        self.user = USER
        self.refresh_token = self.call(
            lambda: self.emulator.create_grant(user_id=USER), timeout=STEP_TIMEOUT
        )

    async def _start(self, clock: SharedClock) -> ZoomOAuthEmulator:
        emulator = ZoomOAuthEmulator(expires_in=LIFETIME, reuse_detection=True, clock=clock)
        await emulator.start()
        return emulator

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = STEP_TIMEOUT) -> _T:
        """Run ``coro`` on the emulator's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, fn: Callable[[], _T], timeout: float = STEP_TIMEOUT) -> _T:
        """Run ``fn()`` on the emulator's loop (its state is only touched there)."""

        async def on_loop() -> _T:
            return fn()

        return self.run(on_loop(), timeout)

    def counters(self) -> EmulatorCounters:
        """A copy of the emulator's counters."""
        return self.call(lambda: replace(self.emulator.counters))

    def current(self) -> tuple[str, float, bool]:
        """Fingerprint of the grant's current access token, its expiry, and whether revoked."""
        info = self.call(lambda: self.emulator.grant_info(USER))
        return fingerprint(info.access_token), info.access_expires_at, info.revoked

    def close(self) -> None:
        try:
            self.run(self.emulator.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STEP_TIMEOUT)
            self._loop.close()


@pytest.fixture
def zoom() -> Iterator[EmulatorThread]:
    """The emulator on its own thread, on a fresh shared clock, with one grant."""
    ctx = multiprocessing.get_context("spawn")
    clock = SharedClock(ctx.RawValue("d", 0.0))
    thread = EmulatorThread(clock)
    try:
        yield thread
    finally:
        thread.close()


# ------------------------------------------------------------------ worker processes


class Worker:
    """One spawned worker process and its two queues."""

    def __init__(
        self,
        ctx: SpawnContext,
        spec: WorkerSpec,
        clock: SharedClock,
        barrier: Any,
        name: str,
    ) -> None:
        self.name = name
        self.commands: Queue[tuple[Any, ...]] = ctx.Queue()
        self.replies: Queue[tuple[Any, ...]] = ctx.Queue()
        self.process: SpawnProcess = ctx.Process(
            target=worker_main,
            args=(spec, clock, barrier, self.commands, self.replies),
            name=name,
            daemon=True,
        )
        self.process.start()

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None
        return pid

    def send(self, *command: Any) -> None:
        self.commands.put(command)

    def recv(self, timeout: float = STEP_TIMEOUT) -> tuple[Any, ...]:
        """The next reply; fails the test if none comes in ``timeout`` seconds or the worker
        died without answering."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.replies.get(timeout=0.05)
            except queue.Empty:
                if not self.process.is_alive():
                    try:
                        return self.replies.get(timeout=0.5)
                    except queue.Empty:
                        pytest.fail(
                            f"{self.name} died (exit code {self.process.exitcode}) "
                            "without answering"
                        )
                if time.monotonic() > deadline:
                    pytest.fail(f"{self.name} did not answer within {timeout}s")

    def poll(self) -> tuple[Any, ...] | None:
        """A reply if one is already there."""
        try:
            return self.replies.get_nowait()
        except queue.Empty:
            return None

    def ask(self, *command: Any, timeout: float = STEP_TIMEOUT) -> tuple[Any, ...]:
        """Send ``command`` and return the answer; a worker error fails the test."""
        self.send(*command)
        reply = self.recv(timeout)
        if reply[0] == "error":
            pytest.fail(f"{self.name}: {command[0]} raised {reply[1]}: {reply[2]}")
        return reply

    def kill(self) -> None:
        """SIGKILL: no cleanup, no lease release; the kernel drops its locks and sockets."""
        self.process.kill()
        self.process.join(STEP_TIMEOUT)
        assert self.process.exitcode == -signal.SIGKILL

    def request_stop(self) -> None:
        """Ask the worker to close its manager and exit (see :meth:`stop`)."""
        if self.process.is_alive():
            self.send("stop")

    def stop(self) -> None:
        """Wait for the exit :meth:`request_stop` asked for; kill a worker that hangs."""
        try:
            self.process.join(STEP_TIMEOUT)
        finally:
            if self.process.is_alive():
                self.process.kill()
                self.process.join(STEP_TIMEOUT)
            for q in (self.commands, self.replies):
                q.close()
                q.join_thread()


class Workers:
    """A group of workers sharing one spec, one shared clock and one barrier."""

    def __init__(self, spec: WorkerSpec, clock: SharedClock, count: int) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.barrier = self.ctx.Barrier(count)
        self.all: list[Worker] = []
        try:
            for index in range(count):
                self.all.append(Worker(self.ctx, spec, clock, self.barrier, f"worker-{index}"))
            for worker in self.all:
                reply = worker.recv(START_TIMEOUT)
                assert reply[0] == "ready", reply
        except BaseException:
            self.stop()
            raise

    def __getitem__(self, index: int) -> Worker:
        return self.all[index]

    def stop(self) -> None:
        # All at once: each worker's shutdown (closing its manager) overlaps the others'.
        for worker in self.all:
            worker.request_stop()
        for worker in self.all:
            worker.stop()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def spec_for(zoom: EmulatorThread, store: str, **options: Any) -> WorkerSpec:
    return WorkerSpec(
        token_url=zoom.emulator.token_url,
        client_id=zoom.emulator.client_id,
        client_secret=zoom.emulator.client_secret,
        refresh_token=zoom.refresh_token,
        store=store,
        **options,
    )


def file_spec(zoom: EmulatorThread, tmp_path: Path, **options: Any) -> WorkerSpec:
    return spec_for(zoom, "file", path=str(tmp_path / "store" / "token.json"), **options)


def redis_spec(zoom: EmulatorThread, server: RedisServer, **options: Any) -> WorkerSpec:
    return spec_for(zoom, "redis", redis_url=server.url, namespace=NAMESPACE, **options)


def load_stored(spec: WorkerSpec) -> Any:
    """The token the store holds, parsed by the store itself (raises if it is corrupt)."""

    async def load() -> Any:
        if spec.store == "file":
            return await FileStore(spec.path).load()
        store = RedisStore.from_url(spec.redis_url, namespace=spec.namespace, grant=spec.grant)
        try:
            return await store.load()
        finally:
            await store.aclose()

    return asyncio.run(load())


# ------------------------------------------------------------------ 8 processes x 500 callers


def run_cycles(
    zoom: EmulatorThread,
    spec: WorkerSpec,
    *,
    processes: int = PROCESSES,
    callers: int = CALLERS,
    cycles: int = CYCLES,
) -> None:
    """``cycles`` refresh cycles of ``processes`` x ``callers`` concurrent get_token() calls;
    the first cycle seeds the empty store from the grant's refresh token."""
    clock = zoom.clock
    seen: set[str] = set()
    # Taken before the workers exist: started managers seed the store as soon as they start.
    before = zoom.counters()
    with Workers(spec, clock, processes) as workers:
        for cycle in range(cycles):
            if cycle:
                # Past the hard deadline for everybody at once: every caller must wait.
                clock.advance(LIFETIME)
            for worker in workers.all:
                worker.send("burst", callers)
            fingerprints: set[str] = set()
            for worker in workers.all:
                reply = worker.recv()
                assert reply[0] == "burst", (cycle, worker.name, reply)
                _, got, returned, errors = reply
                assert errors == [], (cycle, worker.name, errors)
                assert returned == callers, (cycle, worker.name, returned)
                fingerprints.update(got)
            after = zoom.counters()
            assert after.refreshes - before.refreshes == 1, (cycle, before, after)
            assert after.token_requests - before.token_requests == 1, (cycle, before, after)
            assert after.invalid_grant == 0, (cycle, after)
            assert after.reuse_detected == 0, (cycle, after)
            current, expires_at, revoked = zoom.current()
            assert fingerprints == {current}, cycle
            assert current not in seen, cycle
            assert not revoked
            assert expires_at > clock.time()
            seen.add(current)
            before = after
        posts = sum(w.ask("status")[1]["token_posts"] for w in workers.all)
        assert posts == cycles
    stored = load_stored(spec)
    assert stored is not None
    assert stored.generation == cycles - 1
    assert fingerprint(stored.access_token) == zoom.current()[0]


@pytest.mark.slow
def test_eight_processes_share_one_refresh_per_cycle_through_file_store(
    zoom: EmulatorThread, tmp_path: Path
) -> None:
    """8 processes x 500 callers on one FileStore make exactly one POST per expiry cycle, and
    every caller gets the emulator's current token."""
    run_cycles(zoom, file_spec(zoom, tmp_path))


@pytest.mark.slow
@pytest.mark.redis
def test_eight_processes_share_one_refresh_per_cycle_through_redis_store(
    zoom: EmulatorThread, redis_server: RedisServer
) -> None:
    """8 processes x 500 callers on one RedisStore make exactly one POST per expiry cycle, and
    every caller gets the emulator's current token."""
    run_cycles(zoom, redis_spec(zoom, redis_server))


@pytest.mark.slow
@pytest.mark.redis
def test_started_managers_whose_watcher_adopts_first_make_no_extra_post(
    zoom: EmulatorThread, redis_server: RedisServer
) -> None:
    """Started managers (store watcher on) still make one POST per cycle: a refresh waiting
    for the lease uses the token its watcher adopted meanwhile instead of POSTing again."""
    # A slower answer keeps the losers asleep between two lease polls while the winner saves,
    # so each loser's watcher adopts the new token before its own refresh wakes up.
    zoom.call(lambda: zoom.emulator.configure(latency=0.02))
    spec = redis_spec(zoom, redis_server, start=True)
    run_cycles(zoom, spec, processes=4, callers=100, cycles=5)


# ------------------------------------------------------------------ SIGKILL mid-refresh


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def lease_is_held(spec: WorkerSpec) -> bool:
    """Whether some process holds the store's refresh lease right now (checked from outside,
    without taking it for longer than the check)."""
    if spec.store == "file":
        fd = os.open(spec.path + ".lease", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # releases the lock if we got it
        return False
    key = RedisStore.from_url(spec.redis_url, namespace=spec.namespace, grant=spec.grant)
    probe = redis.Redis.from_url(spec.redis_url)
    try:
        return bool(probe.exists(key.lease_key))
    finally:
        probe.close()


def kill_lease_holder_mid_refresh(zoom: EmulatorThread, spec: WorkerSpec) -> float:
    """A refreshes into a hung POST and is SIGKILLed; B takes over. Returns the seconds from
    A's refresh request to B's token."""
    with Workers(spec, zoom.clock, 2) as workers:
        a, b = workers[0], workers[1]
        seeded = a.ask("get")[1]
        assert b.ask("get")[1] == seeded
        zoom.clock.advance(LIFETIME)
        # The next POST hangs and the server does NOT rotate: the refresh token stays live.
        zoom.call(lambda: zoom.emulator.inject(Fault.hang()))
        started = time.monotonic()
        a.send("get")
        wait_until(lambda: zoom.call(lambda: zoom.emulator.hung_requests) == 1, "A's POST")
        b.send("get")
        time.sleep(0.2)
        assert b.poll() is None, "B refreshed while A still held the lease"
        assert lease_is_held(spec)
        a.kill()
        zoom.call(zoom.emulator.release_hung)
        reply = b.recv()
        took = time.monotonic() - started
        assert reply[0] == "get", reply
        counters = zoom.counters()
        assert counters.token_requests == 3  # the seed, A's hung POST, B's
        assert counters.refreshes == 2
        assert counters.invalid_grant == 0
        assert counters.reuse_detected == 0
        current, _, revoked = zoom.current()
        assert reply[1] == current
        assert not revoked
        assert b.ask("status")[1]["generation"] == 1
    stored = load_stored(spec)
    assert stored is not None
    assert stored.generation == 1
    assert fingerprint(stored.access_token) == current
    return took


@pytest.mark.slow
def test_sigkilled_lease_holder_is_taken_over_through_file_store(
    zoom: EmulatorThread, tmp_path: Path
) -> None:
    """A FileStore lease holder SIGKILLed mid-refresh frees the lease with its process, and
    another process refreshes with the still-live refresh token."""
    spec = file_spec(zoom, tmp_path)
    kill_lease_holder_mid_refresh(zoom, spec)
    directory = Path(spec.path).parent
    assert sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.slow
@pytest.mark.redis
def test_sigkilled_lease_holder_is_taken_over_after_redis_lease_ttl(
    zoom: EmulatorThread, redis_server: RedisServer
) -> None:
    """A RedisStore lease holder SIGKILLed mid-refresh blocks others only until the lease TTL
    lapses, then another process refreshes with the still-live refresh token."""
    ttl = 1.0
    took = kill_lease_holder_mid_refresh(zoom, redis_spec(zoom, redis_server, lease_ttl=ttl))
    # A took the lease after we asked it to refresh; nobody could have it back sooner.
    assert took >= ttl * 0.9


# ------------------------------------------------------------------ Redis stopped mid-run


@pytest.mark.redis
async def test_redis_outage_serves_valid_token_then_recovers(redis_server: RedisServer) -> None:
    """With Redis down callers keep their valid token, get a typed TokenExpiredError caused by
    StoreUnavailableError once it expires, and refresh again once Redis is back."""
    clock = FakeClock()
    lifetime = 3600
    async with ZoomOAuthEmulator(
        expires_in=lifetime, reuse_detection=True, clock=clock, sleep=clock.sleep
    ) as zoom:
        seed = zoom.create_grant(user_id=USER)
        store = RedisStore.from_url(redis_server.url, namespace=NAMESPACE)
        manager = TokenManager(
            client_id=zoom.client_id,
            client_secret=zoom.client_secret,
            refresh_token=seed,
            token_url=zoom.token_url,
            store=store,
            close_store=True,
            clock=clock,
            sleep=clock.sleep,
        )
        try:
            first = await manager.get_token()
            assert zoom.counters.refreshes == 1
            await asyncio.to_thread(redis_server.stop)

            # STALE: served as it is; the refresh it triggers fails on the store, quietly.
            await clock.advance(lifetime * 0.85)
            assert manager.state is TokenState.STALE
            for _ in range(3):
                assert await manager.get_token() == first
            await wait_for(lambda: manager.status().failures >= 1, "the failed STALE refresh")
            assert isinstance(manager.last_error, StoreUnavailableError)
            assert await manager.get_token() == first
            assert zoom.counters.token_requests == 1  # never a POST without the lease

            # EXPIRED with Redis down: a clear typed error, caused by the store outage.
            await clock.advance(lifetime * 0.15)
            assert manager.status().state is TokenState.EXPIRED
            with pytest.raises(TokenExpiredError) as caught:
                await manager.get_token()
            assert isinstance(caught.value.__cause__, StoreUnavailableError)
            assert zoom.counters.token_requests == 1

            # Redis is back (empty: it keeps nothing on disk); after the cool-down, refresh.
            await asyncio.to_thread(redis_server.start)
            await clock.advance(manager.status().cooldown_remaining + 1)
            second = await manager.get_token()
            assert second != first
            assert second == zoom.grant_info(USER).access_token
            assert zoom.counters.refreshes == 2
            assert zoom.counters.invalid_grant == 0
            assert zoom.counters.reuse_detected == 0
            stored = await store.load()
            assert stored is not None and stored.access_token == second
        finally:
            await manager.aclose()


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` on the real clock (redis-py's own retries wait for real)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------ propagation


@pytest.mark.slow
@pytest.mark.redis
def test_new_token_reaches_other_process_through_pubsub_without_a_post(
    zoom: EmulatorThread, redis_server: RedisServer
) -> None:
    """A token one process refreshes reaches another process's manager through the store's
    pub/sub while its own token is still FRESH, without any POST from it."""
    spec = redis_spec(zoom, redis_server, start=True)
    channel = RedisStore.from_url(spec.redis_url, namespace=NAMESPACE).channel
    probe = redis.Redis.from_url(spec.redis_url)
    try:
        with Workers(spec, zoom.clock, 2) as workers:
            a, b = workers[0], workers[1]
            seeded = a.ask("get")[1]
            assert b.ask("get")[1] == seeded

            def subscribers() -> int:
                return int(probe.pubsub_numsub(channel)[0][1])

            wait_until(lambda: subscribers() >= 2, "both watchers to subscribe")
            before = b.ask("status")[1]
            assert before["generation"] == 0
            assert before["state"] == "fresh"

            refreshed = a.ask("refresh")[1]

            def adopted() -> bool:
                return bool(b.ask("status")[1]["generation"] == 1)

            wait_until(adopted, "B to adopt generation 1")
            after = b.ask("status")[1]
            assert after["adopted"] == before["adopted"] + 1, (before, after)
            assert after["state"] == "fresh"
            # B may have made the seed POST (either worker's refresher can win the first lease),
            # but none since: the new generation came through the store.
            assert after["token_posts"] == before["token_posts"]
            assert after["refreshes"] == before["refreshes"]
            assert after["stale_serves"] == 0
            assert b.ask("get")[1] == refreshed == zoom.current()[0]
            counters = zoom.counters()
            assert counters.refreshes == 2
            assert counters.token_requests == 2
            assert counters.invalid_grant == 0
    finally:
        probe.close()


class _Lease:
    """A lease that is always granted: one process here, the other's saves come by hand."""

    owner = "stub-lease"

    async def extend(self, ttl: float) -> None:
        return None

    async def release(self) -> None:
        return None


class _NotifyingStore:
    """A shared in-memory store whose notifications the test sends by hand, and whose
    ``load()`` answers without suspending (as a cached or very fast store would)."""

    shared = True

    def __init__(self, box: dict[str, Token], notifications: asyncio.Queue[None] | None) -> None:
        self._box = box
        self._notifications = notifications

    async def load(self) -> Token | None:
        return self._box.get("token")

    async def save(
        self, token: Token, *, expected_generation: int | None, lease: Lease | None = None
    ) -> None:
        stored = self._box.get("token")
        if (None if stored is None else stored.generation) != expected_generation:
            raise StaleGenerationError("save refused: stale generation")
        self._box["token"] = token

    async def clear(self) -> None:
        self._box.pop("token", None)

    async def try_acquire_lease(self, *, ttl: float) -> Lease | None:
        return _Lease()

    def watch(self) -> AsyncIterator[None] | None:
        notifications = self._notifications
        if notifications is None:
            return None

        async def updates() -> AsyncIterator[None]:
            while True:
                await notifications.get()
                yield None

        return updates()

    async def aclose(self) -> None:
        return None


async def test_refresh_answered_by_token_watcher_published_before_it_ran() -> None:
    """A refresh requested for generation 0 is answered, with no POST, by the newer generation
    the store watcher publishes before the refresh task first runs."""
    clock = FakeClock()
    lifetime = 3600
    async with ZoomOAuthEmulator(expires_in=lifetime, reuse_detection=True, clock=clock) as zoom:
        seed = zoom.create_grant(user_id=USER)
        box: dict[str, Token] = {}
        notifications: asyncio.Queue[None] = asyncio.Queue()
        finished: list[EventKind] = []

        def on_event(event: Event) -> None:
            if event.kind in (EventKind.REFRESH_SUCCEEDED, EventKind.REFRESH_FAILED):
                finished.append(event.kind)

        def manager(store: _NotifyingStore, **options: Any) -> TokenManager:
            return TokenManager(
                client_id=zoom.client_id,
                client_secret=zoom.client_secret,
                refresh_token=seed,  # used only while the store is empty
                token_url=zoom.token_url,
                store=store,
                clock=clock,
                # Real sleeps: the background refresher stays asleep (15 s chunks) while the
                # fake clock moves, so only the caller below starts a refresh.
                sleep=asyncio.sleep,
                **options,
            )

        watched = manager(_NotifyingStore(box, notifications), on_event=on_event)
        try:
            await watched.start()
            first = await watched.get_token()
            other = manager(_NotifyingStore(box, None))  # another process on the same store
            try:
                await clock.advance(lifetime * 0.5)
                await other.refresh(force=True)  # generation 1, FRESH for a while yet
            finally:
                await other.aclose()
            await clock.advance(lifetime * 0.35)  # generation 0 is STALE now
            assert zoom.counters.refreshes == 2
            finished.clear()

            # In one loop step: a caller finds generation 0 STALE and starts a refresh, and
            # the notification of generation 1 reaches the watcher, which runs first.
            caller = asyncio.ensure_future(watched.get_token())
            notifications.put_nowait(None)
            assert await caller == first  # STALE is served at once
            await wait_for(lambda: bool(finished), "the refresh to end")

            assert finished == [EventKind.REFRESH_SUCCEEDED]
            assert zoom.counters.refreshes == 2, "a POST although generation 1 was adopted"
            assert watched.generation == 1
            assert watched.status().token_posts == 1  # the seed only
        finally:
            await watched.aclose()
