"""TokenManager: the hot path, the single flight, the background refresher and the lifecycle.

Clocks: token deadlines are wall-clock instants (``clock.time()``, epoch seconds); cool-downs,
retry budgets and lease waits are measured on ``clock.monotonic()`` (seconds). Durations are
seconds everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any, Self

import aiohttp

from ._clock import Clock, Sleep, SystemClock, real_sleep
from ._events import Event, EventHook, EventKind, ManagerStatus
from ._exceptions import (
    ConfigurationError,
    InvalidResponseError,
    LeaseLostError,
    ManagerClosedError,
    OutcomeUnknownError,
    ReauthorizationRequiredError,
    RefreshError,
    StaleGenerationError,
    StoreCorruptError,
    StoreError,
    TokenExpiredError,
    ZoomTokenError,
)
from ._oauth import ZOOM_REVOKE_URL, ZOOM_TOKEN_URL, OAuthClient
from ._retry import RetryPolicy, build_retrying, cooldown_for
from ._token import Token, TokenState
from .stores._base import Lease, TokenStore

__all__ = ["TokenManager"]

logger = logging.getLogger("zoomtoken")

# The refresher never sleeps longer than this in one go, then re-reads the wall clock: the
# event loop's monotonic clock stops while a machine is suspended, so one long sleep could
# wake up well past the token's expiry.
MAX_SLEEP_CHUNK = 15.0
# Two background refreshes never start closer than this: a server that hands out tokens
# already near their end must not turn the refresher into a hot loop.
MIN_REFRESH_INTERVAL = 1.0
# A wall clock that falls this far behind the monotonic clock's view of it was stepped back
# (NTP slews small errors instead): the refresher then re-anchors the published deadlines.
CLOCK_STEP_TOLERANCE = 1.0
# invalidate() (an API answered 401) refreshes at most this often: an API that rejects even
# brand-new tokens must not drive a refresh per request.
MIN_INVALIDATE_INTERVAL = 10.0
# A lease outlives the whole retry budget plus one request timeout, with this much to spare,
# so it never lapses while its holder still might save.
LEASE_MARGIN = 10.0
# First and largest pause between polls for a lease another process holds.
LEASE_POLL_FIRST = 0.05
LEASE_POLL_MAX = 1.0
# Smallest retry budget a burst gets, so a nearly expired token still gets one real attempt.
MIN_BURST_BUDGET = 1.0


# Jitter and backoff need no private generator: one shared by every manager (a
# ``random.Random`` weighs 2.5 KiB). Pass ``rng=`` for a reproducible one.
_SHARED_RNG = random.Random()


def _require(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} is missing or empty")
    return value.strip()


class _Flight:
    """One refresh shared by every caller that needs it.

    Each waiting caller gets its own future (so cancelling one caller cancels only that
    future, never the refresh), and one done-callback on the task resolves them all: a herd
    costs one event-loop callback per caller, as if all awaited one bare future. (One
    ``asyncio.shield`` per caller costs three, plus two closures and a future.)
    """

    __slots__ = (
        "_compact_at",
        "_loop",
        "expired_wait_emitted",
        "task",
        "waiters",
    )

    def __init__(self, task: asyncio.Task[Token]) -> None:
        self.task = task
        self._loop = task.get_loop()
        self.expired_wait_emitted = False
        self.waiters: list[asyncio.Future[Token]] = []
        self._compact_at = 64
        task.add_done_callback(self._release)

    def join(self) -> asyncio.Future[Token]:
        """A future that gets the flight's outcome; cancelling it leaves the flight alone."""
        task = self.task
        if task.done():
            return task  # awaiting a finished task cannot cancel it
        waiter: asyncio.Future[Token] = self._loop.create_future()
        waiters = self.waiters
        waiters.append(waiter)
        if len(waiters) >= self._compact_at:
            # Callers that gave up (cancelled) leave done futures behind: drop them, so a
            # long refresh under a stream of timeouts keeps the list bounded (amortised O(1)).
            waiters[:] = [w for w in waiters if not w.done()]
            self._compact_at = max(64, 2 * len(waiters))
        return waiter

    def _release(self, task: asyncio.Task[Token]) -> None:
        waiters, self.waiters = self.waiters, []
        if task.cancelled():
            for waiter in waiters:
                waiter.cancel()
            return
        error = task.exception()
        if error is not None:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
            return
        token = task.result()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(token)


class TokenManager:
    """Keeps one OAuth grant's access token fresh for every coroutine of a process.

    Use it as ``async with TokenManager(...) as manager:`` (or ``start()`` / ``aclose()``) to run
    the background refresher; ``await manager.get_token()`` returns a valid access token.
    """

    # Slots, not an instance dict: past 30 attributes CPython 3.11 stops keeping attribute
    # values inline and every ``self.x`` on the hot path becomes a dict lookup. A new
    # attribute must be listed here (construction fails loudly otherwise).
    __slots__ = (
        "__weakref__",
        "_account_id",
        "_adopted",
        "_background",
        "_clock",
        "_clock_offset",
        "_close_done",
        "_close_store",
        "_closed",
        "_critical",
        "_dead",
        "_failed_bursts",
        "_failures",
        "_flight",
        "_last_error",
        "_last_invalidate_at",
        "_last_success_at",
        "_lease_ttl",
        "_load_task",
        "_loaded",
        "_next_burst_at",
        "_oauth",
        "_on_event",
        "_outcome_unknown",
        "_owns_session",
        "_policy",
        "_refreshes",
        "_retries",
        "_rng",
        "_seed_refresh_token",
        "_session",
        "_sleep",
        "_stale_event_generation",
        "_stale_serves",
        "_started",
        "_store",
        "_token",
        "_unsaved",
        "_wall",
        "_watcher",
    )

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str | None = None,
        account_id: str | None = None,
        store: TokenStore | None = None,
        token_url: str = ZOOM_TOKEN_URL,
        revoke_url: str = ZOOM_REVOKE_URL,
        session: aiohttp.ClientSession | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        on_event: EventHook | None = None,
        retry: RetryPolicy | None = None,
        http_timeout: float = 10.0,
        lease_ttl: float | None = None,
        rng: random.Random | None = None,
        close_store: bool = False,
    ) -> None:
        """Configure the manager; nothing runs until the first ``await``.

        ``refresh_token`` seeds a grant when ``store`` holds nothing yet (a stored pair always
        wins: it is newer). ``account_id`` selects Server-to-Server OAuth instead. ``clock`` and
        ``sleep`` are injectable for tests; ``http_timeout`` (seconds) bounds one request;
        ``lease_ttl`` (seconds) defaults to the retry budget plus one request plus a margin.
        """
        client_id = _require("client_id", client_id)
        client_secret = _require("client_secret", client_secret)
        if refresh_token is not None:
            refresh_token = _require("refresh_token", refresh_token)
        if account_id is not None:
            account_id = _require("account_id", account_id)
            if refresh_token is not None:
                raise ConfigurationError("give either refresh_token or account_id, not both")
        if http_timeout <= 0:
            raise ConfigurationError("http_timeout must be positive")
        self._clock: Clock = clock if clock is not None else SystemClock()
        # Bound once: the hot path calls it with no attribute lookup on the clock.
        self._wall = self._clock.time
        self._sleep: Sleep = sleep if sleep is not None else real_sleep
        self._oauth = OAuthClient(
            client_id=client_id,
            client_secret=client_secret,
            token_url=token_url,
            revoke_url=revoke_url,
            clock=self._clock,
            timeout=http_timeout,
        )
        self._seed_refresh_token = refresh_token
        self._account_id = account_id
        self._store = store
        self._close_store = close_store
        self._session = session
        self._owns_session = session is None
        self._on_event = on_event
        self._policy = retry if retry is not None else RetryPolicy()
        self._lease_ttl = (
            lease_ttl
            if lease_ttl is not None
            else self._policy.budget + http_timeout + LEASE_MARGIN
        )
        self._rng = rng if rng is not None else _SHARED_RNG

        # The published token: read lock-free by the hot path, replaced in one assignment.
        self._token: Token | None = None
        # wall - monotonic when the token was published: lets the refresher notice a wall
        # clock set backwards (it then trusts the monotonic clock).
        self._clock_offset = 0.0
        # A rotated pair we could not persist yet: the next refresh saves it instead of
        # POSTing, because its refresh token is the only live one.
        self._unsaved: Token | None = None
        self._loaded = False
        self._load_task: asyncio.Task[None] | None = None
        self._flight: _Flight | None = None
        self._background: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._close_done: asyncio.Event | None = None
        # Number of refreshes inside the send-to-save window, where cancelling loses a grant.
        self._critical = 0

        self._dead: ReauthorizationRequiredError | None = None
        # An attempt got no usable answer after sending: the server may have rotated.
        self._outcome_unknown = False
        self._last_error: ZoomTokenError | None = None
        self._failed_bursts = 0
        self._next_burst_at = 0.0  # monotonic
        self._last_success_at: float | None = None  # monotonic
        self._last_invalidate_at: float | None = None  # monotonic
        self._stale_event_generation: int | None = None

        self._refreshes = 0
        self._failures = 0
        self._retries = 0
        self._stale_serves = 0
        self._adopted = 0

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> TokenManager:
        """Build a manager from ``ZOOM_CLIENT_ID``, ``ZOOM_CLIENT_SECRET`` and either
        ``ZOOM_REFRESH_TOKEN`` / ``ZOOM_TOKEN_STORE`` (a file path) or ``ZOOM_ACCOUNT_ID``.

        ``ZOOM_TOKEN_URL`` and ``ZOOM_REVOKE_URL`` override the endpoints; keyword ``options``
        override anything. A missing or empty setting raises :class:`ConfigurationError`.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        missing = [
            name
            for name in ("ZOOM_CLIENT_ID", "ZOOM_CLIENT_SECRET")
            if get(name) is None and name.lower().removeprefix("zoom_") not in options
        ]
        if missing:
            raise ConfigurationError(f"missing or empty environment variable(s): {missing}")
        kwargs: dict[str, Any] = {
            "client_id": get("ZOOM_CLIENT_ID"),
            "client_secret": get("ZOOM_CLIENT_SECRET"),
        }
        if get("ZOOM_ACCOUNT_ID"):
            kwargs["account_id"] = get("ZOOM_ACCOUNT_ID")
        if get("ZOOM_REFRESH_TOKEN"):
            kwargs["refresh_token"] = get("ZOOM_REFRESH_TOKEN")
        for name, key in (("ZOOM_TOKEN_URL", "token_url"), ("ZOOM_REVOKE_URL", "revoke_url")):
            if get(name):
                kwargs[key] = get(name)
        store_path = get("ZOOM_TOKEN_STORE")
        if store_path and "store" not in options:
            from .stores.file import FileStore

            kwargs["store"] = FileStore(store_path)
            kwargs["close_store"] = True
        kwargs.update(options)
        if (
            kwargs.get("refresh_token") is None
            and kwargs.get("account_id") is None
            and kwargs.get("store") is None
        ):
            raise ConfigurationError(
                "set ZOOM_REFRESH_TOKEN, ZOOM_TOKEN_STORE (a file holding a token pair) "
                "or ZOOM_ACCOUNT_ID (Server-to-Server OAuth)"
            )
        return cls(**kwargs)

    def __repr__(self) -> str:
        token = self._token
        state = "none" if token is None else token.state(self._wall()).value
        generation = None if token is None else token.generation
        return (
            f"<TokenManager state={state} generation={generation} "
            f"token_url={str(self._oauth.token_url)!r}{' closed' if self._closed else ''}>"
        )

    # ------------------------------------------------------------------ hot path

    async def get_token(self) -> str:
        """A valid access token: lock-free while FRESH; waits for a refresh only if EXPIRED.

        Raises :class:`TokenExpiredError` (chained to the last failure) when no valid token
        can be had, :class:`ReauthorizationRequiredError` once the grant is dead.
        """
        token = self._token
        wall = self._wall()
        if token is not None and wall < token.refresh_at:
            return token.access_token
        # The slow path lives in its own coroutine: every local it needs would otherwise
        # enlarge the frame that each hot-path call allocates.
        return await self._get_token_slow(wall)

    async def _get_token_slow(self, wall: float) -> str:
        if not self._loaded:
            self._check_open()
            await self._ensure_loaded()
            wall = self._wall()
        served = self._serve_without_waiting(wall)
        if served is not None:
            return served
        flight = self._flight
        if flight is not None and flight.expired_wait_emitted and self._dead is None:
            # A herd joining a refresh already under way: nothing to decide but the join.
            waiter = flight.join()
        else:
            waiter = self._join_refresh(min_generation=None, explicit=False)
        try:
            fresh = await waiter
        except BaseException as exc:
            error = self._refresh_failed(exc, explicit=False)
            if error is exc:
                raise
            raise error from exc
        return fresh.access_token

    def _serve_without_waiting(self, wall: float) -> str | None:
        """The token if it is FRESH or STALE (then making sure a refresh runs), else None.

        ``wall`` is the wall clock just read by the caller (epoch seconds).
        """
        self._check_open()
        token = self._token
        if token is None or wall >= token.hard_deadline:
            # Expired by the wall clock alone: the monotonic view can only make it later.
            return None
        state = token.state(max(wall, self._clock.monotonic() + self._clock_offset))
        if state is TokenState.FRESH:
            return token.access_token
        if state is TokenState.STALE:
            self._stale_serves += 1
            if self._stale_event_generation != token.generation:
                self._stale_event_generation = token.generation
                self._emit(EventKind.TOKEN_STALE, generation=token.generation)
            self._ensure_refresh_under_way()
            return token.access_token
        return None

    # ------------------------------------------------------------------ public operations

    async def refresh(self, *, force: bool = False) -> str:
        """Refresh now if the token is not FRESH, or always with ``force=True``; return it.

        Joins a refresh already in flight. Errors are raised as they are (typed
        :class:`RefreshError` or :class:`ReauthorizationRequiredError`).
        """
        self._check_open()
        await self._ensure_loaded()
        token = self._token
        if not force and token is not None and token.state(self._now()) is TokenState.FRESH:
            return token.access_token
        min_generation = token.generation if (force and token is not None) else None
        fresh = await self._wait_for_refresh(min_generation=min_generation, explicit=True)
        return fresh.access_token

    async def invalidate(self, access_token: str) -> str:
        """Report that the API rejected ``access_token`` (HTTP 401); return the token to use.

        Refreshes only if ``access_token`` is still the current one, and at most once per
        ``MIN_INVALIDATE_INTERVAL`` seconds; otherwise returns the current token.
        """
        self._check_open()
        await self._ensure_loaded()
        token = self._token
        if token is None or token.access_token != access_token:
            return await self.get_token()
        now = self._clock.monotonic()
        last = self._last_invalidate_at
        if self._flight is None and (
            self._in_cooldown() or (last is not None and now - last < MIN_INVALIDATE_INTERVAL)
        ):
            logger.info("invalidate ignored: rate-limited, or cooling down after a failure")
            return await self.get_token()
        self._last_invalidate_at = now
        fresh = await self._wait_for_refresh(min_generation=token.generation, explicit=True)
        return fresh.access_token

    async def revoke(self) -> None:
        """Revoke the grant upstream, then forget the tokens here and in the store.

        The tokens are cleared whatever the endpoint answers (Zoom revokes the whole grant on
        an access-token revoke); an endpoint error is raised after clearing.
        """
        self._check_open()
        # A store that cannot be reached must not turn into a silent no-op revoke; only
        # unreadable (corrupt) contents, which hold nothing to revoke, are passed over.
        with contextlib.suppress(StoreCorruptError):
            await self._ensure_loaded()
        # From here no new refresh may start: one landing after the clear below would save and
        # publish a pair of the grant being revoked.
        blocked = self._dead
        self._dead = ReauthorizationRequiredError("the grant is being revoked")
        flight = self._flight
        if flight is not None:
            # Let a refresh in flight land first, so the token we revoke is the live one.
            # wait() neither raises the flight's outcome nor cancels it.
            await asyncio.wait([flight.task])
            self._check_open()
        token = self._token
        try:
            if token is not None:
                await self._oauth.revoke(self._http(), token.access_token)
        finally:
            generation = None if token is None else token.generation
            self._token = None
            self._unsaved = None
            self._seed_refresh_token = None
            if self._account_id is None:
                # A user grant is gone for good; a Server-to-Server token can simply be
                # fetched again.
                self._dead = ReauthorizationRequiredError(
                    "the grant was revoked: authorise the app again"
                )
            else:
                self._dead = blocked
            try:
                if self._store is not None:
                    await self._store.clear()
            finally:
                logger.info("grant revoked and tokens cleared (generation %s)", generation)
                self._emit(EventKind.REVOKED, generation=generation)

    def status(self) -> ManagerStatus:
        """A snapshot of state, expiry, generation, last error and counters."""
        token = self._token
        now = self._now()
        mono = self._clock.monotonic()
        return ManagerStatus(
            state=None if token is None else token.state(now),
            seconds_to_expiry=None if token is None else token.seconds_to_expiry(now),
            generation=None if token is None else token.generation,
            last_error=self._last_error,
            reauthorization_required=self._dead is not None,
            cooldown_remaining=max(0.0, self._next_burst_at - mono),
            refreshes=self._refreshes,
            failures=self._failures,
            retries=self._retries,
            stale_serves=self._stale_serves,
            adopted=self._adopted,
            token_posts=self._oauth.token_posts,
            closed=self._closed,
        )

    @property
    def state(self) -> TokenState | None:
        """State of the current token (``None`` when there is none)."""
        token = self._token
        return None if token is None else token.state(self._now())

    @property
    def generation(self) -> int | None:
        """Generation of the current token (``None`` when there is none)."""
        token = self._token
        return None if token is None else token.generation

    @property
    def last_error(self) -> ZoomTokenError | None:
        """The last refresh failure, if any."""
        return self._last_error

    # ------------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        """Read the stored token into memory without refreshing anything (idempotent)."""
        self._check_open()
        await self._ensure_loaded()

    async def start(self) -> None:
        """Load the stored token and start the background refresher (idempotent)."""
        self._check_open()
        if self._started:
            return
        self._started = True
        try:
            await self._ensure_loaded()
        except BaseException:
            self._started = False
            raise
        loop = asyncio.get_running_loop()
        self._background = loop.create_task(self._run_background(), name="zoomtoken-refresher")
        updates = self._store.watch() if self._store is not None else None
        if updates is not None:
            self._watcher = loop.create_task(self._run_watcher(updates), name="zoomtoken-watcher")

    async def aclose(self) -> None:
        """Stop the refresher, close what the manager owns, leave no task behind.

        A refresh caught between sending its request and saving the answer is awaited, not
        cancelled: cancelling there would lose the only live refresh token.
        """
        if self._closed:
            if self._close_done is not None:
                await self._close_done.wait()
            return
        self._closed = True
        self._close_done = asyncio.Event()
        try:
            tasks: list[asyncio.Task[Any]] = []
            for helper in (self._background, self._watcher):
                if helper is not None:
                    helper.cancel()
                    tasks.append(helper)
            flight = self._flight
            if flight is not None:
                # Between sending the request and saving the answer the flight holds the only live
                # refresh token: let it finish (it is bounded by the HTTP timeout and the save).
                if self._critical == 0:
                    flight.task.cancel()
                tasks.append(flight.task)
            if self._load_task is not None:
                tasks.append(self._load_task)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self._token = None
            if self._unsaved is not None and self._store is not None:
                await self._last_chance_save(self._unsaved, self._store)
            try:
                if self._owns_session and self._session is not None:
                    await self._session.close()
            finally:
                self._session = None
                if self._close_store and self._store is not None:
                    await self._store.aclose()
        finally:
            self._close_done.set()

    async def _last_chance_save(self, unsaved: Token, store: TokenStore) -> None:
        """On close, try once more to persist a rotated pair an earlier save failed to write."""
        expected = unsaved.generation - 1 if unsaved.generation > 0 else None
        try:
            # No lease here: the generation compare-and-set alone keeps a newer pair safe.
            await self._save_to_store(store, unsaved, expected, None)
        except Exception as exc:
            logger.error(
                "closing with an unsaved rotated token (generation %d): %s; the grant will "
                "need re-authorisation",
                unsaved.generation,
                type(exc).__name__,
            )
        else:
            self._unsaved = None

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ internals: time

    def _now(self) -> float:
        """Effective wall-clock now: never behind the monotonic clock's view of it."""
        return max(self._wall(), self._clock.monotonic() + self._clock_offset)

    def _emit(self, kind: EventKind, **fields: Any) -> None:
        hook = self._on_event
        if hook is None:
            return
        try:
            hook(Event(kind, **fields))
        except Exception as exc:
            # A broken metrics hook must never break token refreshes.
            logger.warning("on_event hook raised %s for %s", type(exc).__name__, kind.value)

    def _check_open(self) -> None:
        if self._closed:
            raise ManagerClosedError("the TokenManager is closed")

    def _http(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the running loop, never to one at construction time.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    # ------------------------------------------------------------------ internals: store

    async def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        if self._load_task is None:
            self._load_task = asyncio.get_running_loop().create_task(self._load())
        task = self._load_task
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._load_task is task:
                # Loaded: nothing left to await. Failed: let the next caller try again
                # rather than caching the error.
                self._load_task = None
        # aclose() may have run while we waited: start nothing on a closed manager.
        self._check_open()

    async def _load(self) -> None:
        if self._store is not None:
            stored = await self._store.load()
            if stored is not None:
                self._publish(stored)
        self._loaded = True

    def _publish(self, token: Token) -> None:
        self._clock_offset = self._wall() - self._clock.monotonic()
        self._token = token

    def _serves(self, token: Token, start: int | None, min_generation: int | None) -> bool:
        """Whether ``token`` answers a refresh that began at generation ``start``."""
        if start is not None and token.generation <= start:
            return False
        state = token.state(self._now())
        if min_generation is not None:
            return state is not TokenState.EXPIRED
        return state is TokenState.FRESH

    async def _adopt_from_store(
        self, start: int | None, min_generation: int | None
    ) -> Token | None:
        """Re-read the store and publish a newer pair; return a token that makes the refresh
        begun at generation ``start`` unnecessary, if there is one (in the store or already in
        memory, where a store notification may have put it)."""
        if self._store is None:
            return None
        stored = await self._store.load()
        current = self._token
        if stored is not None and (current is None or stored.generation > current.generation):
            # Newer than ours: its refresh token is the live one even if its access token is not.
            self._publish(stored)
            self._adopted += 1
            if self._unsaved is not None:
                # The store moved past the pair we could not save (a new grant): ours is
                # superseded, and saving it later would overwrite the live one.
                logger.warning(
                    "dropping unsaved generation %d: the store holds a newer pair",
                    self._unsaved.generation,
                )
                self._unsaved = None
            logger.info("adopted generation %d from the store", stored.generation)
            self._emit(EventKind.TOKEN_ADOPTED, generation=stored.generation)
            if self._dead is not None:
                # Someone re-authorised (zoomtoken authorize) and saved a new grant.
                logger.warning("a newer token appeared in the store: refreshing resumes")
                self._dead = None
                self._failed_bursts = 0
                self._next_burst_at = 0.0
        current = self._token
        if current is not None and self._serves(current, start, min_generation):
            return current
        return None

    async def _acquire_lease(
        self, store: TokenStore, start: int | None, min_generation: int | None
    ) -> tuple[Lease | None, Token | None]:
        """Take the cross-process lease, or adopt what the holder produced meanwhile."""
        # The patience is the time we actually spent waiting, not a clock difference: a clock
        # that jumps (a blocked loop, a suspend) must not make us give up after one poll while
        # the holder is still legitimately refreshing.
        patience = self._lease_ttl + LEASE_POLL_MAX
        waited = 0.0
        delay = LEASE_POLL_FIRST
        while True:
            lease = await store.try_acquire_lease(ttl=self._lease_ttl)
            if lease is not None:
                return lease, None
            adopted = await self._adopt_from_store(start, min_generation)
            if adopted is not None:
                return None, adopted
            if waited + delay >= patience:
                raise LeaseLostError(
                    "another process holds the refresh lease and produced no new token"
                )
            await self._pause(delay)
            waited += delay
            delay = min(delay * 2, LEASE_POLL_MAX)

    # ------------------------------------------------------------------ internals: flight

    def _in_cooldown(self) -> bool:
        return self._clock.monotonic() < self._next_burst_at

    def _ensure_refresh_under_way(self) -> None:
        if self._flight is None and self._dead is None and not self._in_cooldown():
            self._start_flight(min_generation=None)

    def _start_flight(self, *, min_generation: int | None) -> _Flight:
        task = asyncio.get_running_loop().create_task(
            # The generation this refresh is for, read now: by the time the task first runs, the
            # store watcher may already have published a newer token, which then answers it.
            self._refresh_flight(min_generation, self.generation),
            name="zoomtoken-refresh",
        )
        flight = _Flight(task)
        self._flight = flight
        task.add_done_callback(self._flight_done)
        return flight

    def _flight_done(self, task: asyncio.Task[Token]) -> None:
        flight = self._flight
        if flight is not None and flight.task is task:
            self._flight = None
        if not task.cancelled():
            # Mark the exception retrieved: a refresh nobody awaited must not warn.
            task.exception()

    def _join_refresh(self, *, min_generation: int | None, explicit: bool) -> asyncio.Future[Token]:
        """Join (or start) the single flight; raise at once when no refresh may run now."""
        if self._dead is not None:
            raise ReauthorizationRequiredError(
                self._dead.message,
                status=self._dead.status,
                error=self._dead.error,
                reason=self._dead.reason,
            ) from self._dead
        flight = self._flight
        if flight is None or flight.task.done():
            if not explicit and self._in_cooldown():
                wait = self._next_burst_at - self._clock.monotonic()
                raise TokenExpiredError(
                    f"no valid access token: the last refresh failed; next attempt in {wait:.1f}s"
                ) from self._last_error
            flight = self._start_flight(min_generation=min_generation)
        if not explicit and not flight.expired_wait_emitted:
            flight.expired_wait_emitted = True
            self._emit(EventKind.EXPIRED_WAIT, generation=self.generation)
        return flight.join()

    def _refresh_failed(self, exc: BaseException, *, explicit: bool) -> BaseException:
        """What a caller of a failed refresh raises: a new instance per caller, chained to the
        shared failure (re-raising one instance from many tasks would grow its traceback)."""
        if isinstance(exc, asyncio.CancelledError):
            if self._closed:
                return ManagerClosedError("the TokenManager was closed during a refresh")
            return exc
        if not isinstance(exc, Exception):
            return exc
        if isinstance(exc, ReauthorizationRequiredError):
            return ReauthorizationRequiredError(
                exc.message, status=exc.status, error=exc.error, reason=exc.reason
            )
        if explicit and isinstance(exc, ZoomTokenError):
            return type(exc)(
                exc.message,
                status=exc.status,
                error=exc.error,
                reason=exc.reason,
                retryable=exc.retryable,
            )
        return TokenExpiredError(
            "no valid access token: the refresh failed"
            + (f" ({exc.message})" if isinstance(exc, ZoomTokenError) else "")
        )

    async def _wait_for_refresh(self, *, min_generation: int | None, explicit: bool) -> Token:
        """Join (or start) the single flight and return its token, raising typed errors."""
        while True:
            waiter = self._join_refresh(min_generation=min_generation, explicit=explicit)
            try:
                token = await waiter
            except BaseException as exc:
                error = self._refresh_failed(exc, explicit=explicit)
                if error is exc:
                    raise
                raise error from exc
            if min_generation is None or token.generation > min_generation:
                return token
            # We joined a flight that began before our request: run one more.

    async def _refresh_flight(self, min_generation: int | None, start: int | None) -> Token:
        generation = self.generation
        self._emit(EventKind.REFRESH_STARTED, generation=generation)
        try:
            token = await self._refresh(min_generation, start)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, ZoomTokenError)
                else RefreshError(f"unexpected {type(exc).__name__} during refresh")
            )
            self._record_failure(error)
            if error is not exc:
                raise error from exc
            raise
        self._last_success_at = self._clock.monotonic()
        if token.state(self._now()) is TokenState.EXPIRED:
            # Saved and published (its refresh token is live), but unusable: a failed burst,
            # so the cool-down stops a hot loop of refreshes.
            error = InvalidResponseError(
                "the new token was already past its deadline on arrival "
                "(request latency or clock skew exceeds its lifetime)"
            )
            self._record_failure(error)
            raise error
        self._failed_bursts = 0
        self._next_burst_at = 0.0
        self._emit(EventKind.REFRESH_SUCCEEDED, generation=token.generation)
        return token

    def _record_failure(self, error: ZoomTokenError) -> None:
        self._last_error = error
        self._failures += 1
        if isinstance(error, ReauthorizationRequiredError):
            self._dead = error
            logger.error("refresh failed for good, re-authorisation required: %s", error.message)
        else:
            self._failed_bursts += 1
            retry_after = getattr(error, "retry_after", None)
            cooldown = cooldown_for(self._failed_bursts, retry_after)
            self._next_burst_at = self._clock.monotonic() + cooldown
            logger.warning(
                "refresh failed (%s): %s; next attempt in %.1fs",
                type(error).__name__,
                error.message,
                cooldown,
            )
        self._emit(EventKind.REFRESH_FAILED, generation=self.generation, error=error)

    async def _pause(self, seconds: float) -> None:
        """A flight's wait (retry backoff, lease poll): a closed manager's flight ends here."""
        self._check_open()
        await self._sleep(seconds)

    def _burst_stop_at(self) -> float:
        """Monotonic instant by which this burst must stop retrying."""
        budget = self._policy.budget
        token = self._token
        now = self._now()
        if token is not None and token.state(now) is not TokenState.EXPIRED:
            # Never retry past the point where the old token stops being served.
            budget = min(budget, token.hard_deadline - now)
        return self._clock.monotonic() + max(budget, MIN_BURST_BUDGET)

    async def _refresh(self, min_generation: int | None, start: int | None) -> Token:
        store = self._store
        lease: Lease | None = None
        try:
            if store is not None:
                # Re-read first: another process may have refreshed while we were STALE.
                adopted = await self._adopt_from_store(start, min_generation)
                if adopted is not None:
                    return adopted
                if store.shared:
                    lease, adopted = await self._acquire_lease(store, start, min_generation)
                    if adopted is not None:
                        return adopted
                    # Re-read under the lease: the previous holder may have saved just now.
                    adopted = await self._adopt_from_store(start, min_generation)
                    if adopted is not None:
                        return adopted
            if self._unsaved is not None:
                return await self._save_and_publish(self._unsaved, lease)
            try:
                fresh = await self._fetch(self._burst_stop_at())
            except ReauthorizationRequiredError as exc:
                if exc.error == "invalid_grant" or exc.error == "invalid_request":
                    # Another process may have rotated the pair under us: a recovered race,
                    # not a dead grant, if the store now holds something newer.
                    adopted = await self._adopt_from_store(start, min_generation)
                    if adopted is not None:
                        logger.warning("invalid_grant recovered: another process had rotated")
                        return adopted
                raise
            return await self._save_and_publish(fresh, lease)
        finally:
            if lease is not None:
                try:
                    await lease.release()
                except Exception as exc:
                    logger.warning("could not release the refresh lease: %s", type(exc).__name__)

    async def _save_and_publish(self, fresh: Token, lease: Lease | None) -> Token:
        """Persist ``fresh`` durably, then publish it: never the other way round."""
        current = self._token
        expected = None if current is None else current.generation
        if self._unsaved is not fresh:
            fresh = fresh.with_generation(0 if expected is None else expected + 1)
            self._unsaved = fresh
        if self._store is not None:
            self._critical += 1
            try:
                await self._save_to_store(self._store, fresh, expected, lease)
            except StoreError as exc:
                raise type(exc)(
                    f"the new token could not be saved, so it is not used yet ({exc.message}); "
                    "it is kept in memory and saving is retried on the next refresh"
                ) from exc
            except Exception as exc:
                raise StoreError(
                    f"the new token could not be saved ({type(exc).__name__}), so it is not "
                    "used yet; saving is retried on the next refresh"
                ) from exc
            finally:
                self._critical -= 1
        self._unsaved = None
        self._publish(fresh)
        self._refreshes += 1
        logger.info(
            "token refreshed: generation %d, lifetime %.0fs", fresh.generation, fresh.expires_in
        )
        return fresh

    async def _save_to_store(
        self, store: TokenStore, fresh: Token, expected: int | None, lease: Lease | None
    ) -> None:
        try:
            await store.save(fresh, expected_generation=expected, lease=lease)
        except StaleGenerationError:
            if expected is None or await store.load() is not None:
                raise
            # The store lost our pair (restarted without persistence, evicted, expired) while
            # we hold the lease: write the only live refresh token afresh.
            logger.warning("the store no longer holds generation %d: writing afresh", expected)
            await store.save(fresh, expected_generation=None, lease=lease)

    async def _fetch(self, stop_at: float) -> Token:
        """POST the grant with retries (one fresh tenacity policy per burst)."""
        current = self._token
        refresh_token = current.refresh_token if current is not None else None
        if refresh_token is None:
            refresh_token = self._seed_refresh_token
        account_id = self._account_id
        if account_id is None and refresh_token is None:
            raise ReauthorizationRequiredError(
                "no refresh token is available: authorise the app (zoomtoken authorize) "
                "or set ZOOM_REFRESH_TOKEN"
            )
        session = self._http()

        def before_sleep(state: Any) -> None:
            self._retries += 1
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            self._emit(
                EventKind.RETRY_SCHEDULED,
                generation=self.generation,
                error=error if isinstance(error, ZoomTokenError) else None,
                attempt=state.attempt_number,
                wait=state.upcoming_sleep,
            )

        retrying = build_retrying(
            self._policy,
            clock=self._clock,
            sleep=self._pause,
            stop_at=stop_at,
            rng=self._rng,
            before_sleep=before_sleep,
        )
        async for attempt in retrying:
            with attempt:
                jitter = self._rng.random()
                self._critical += 1
                try:
                    if account_id is not None:
                        fresh = await self._oauth.account_credentials(
                            session, account_id, jitter=jitter
                        )
                    else:
                        assert refresh_token is not None
                        fresh = await self._oauth.refresh(session, refresh_token, jitter=jitter)
                    self._outcome_unknown = False
                    return fresh
                except (OutcomeUnknownError, InvalidResponseError):
                    # Kept on the manager, not in this burst: the lost answer may end this
                    # burst, and the next one's invalid_grant must still be read in its light.
                    self._outcome_unknown = True
                    raise
                except ReauthorizationRequiredError as exc:
                    if self._outcome_unknown and exc.error in ("invalid_grant", "invalid_request"):
                        raise ReauthorizationRequiredError(
                            "an earlier attempt got no usable answer and the server no longer "
                            "accepts the refresh token: it probably rotated and the answer "
                            "was lost; re-authorise the app",
                            status=exc.status,
                            error=exc.error,
                            reason=exc.reason,
                        ) from exc
                    raise
                finally:
                    self._critical -= 1
        raise AssertionError("unreachable: tenacity either returns or raises")

    # ------------------------------------------------------------------ internals: background

    async def _run_watcher(self, updates: AsyncIterator[None]) -> None:
        """Adopt tokens other processes save, as soon as the store says so (no polling)."""
        try:
            async for _ in updates:
                try:
                    await self._adopt_from_store(None, None)
                except StoreError as exc:
                    logger.warning("store notification, re-read failed: %s", type(exc).__name__)
        finally:
            close = getattr(updates, "aclose", None)
            if close is not None:
                await close()

    async def _run_background(self) -> None:
        while True:
            try:
                await self._background_step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The refresher must outlive any failure; failures are recorded elsewhere.
                logger.warning("background refresher: %s", type(exc).__name__)
                await self._sleep(MIN_REFRESH_INTERVAL)

    def _next_due_in(self) -> float:
        """Seconds until the background refresher should start a refresh (<= 0: now)."""
        token = self._token
        due_in = 0.0 if token is None else token.refresh_at - self._now()
        mono = self._clock.monotonic()
        due_in = max(due_in, self._next_burst_at - mono)
        if self._last_success_at is not None:
            due_in = max(due_in, self._last_success_at + MIN_REFRESH_INTERVAL - mono)
        return due_in

    def _reanchor(self) -> None:
        """If the wall clock was set back, move the published deadlines back with it.

        The hot path reads only the wall clock; without this, a clock stepped back an hour
        would let it serve a token up to an hour past its real deadline.
        """
        token = self._token
        if token is None:
            return
        wall = self._wall()
        mono = self._clock.monotonic()
        behind = mono + self._clock_offset - wall
        if behind <= CLOCK_STEP_TOLERANCE:
            return
        self._token = replace(
            token,
            issued_at=token.issued_at - behind,
            refresh_at=token.refresh_at - behind,
            hard_deadline=token.hard_deadline - behind,
        )
        self._clock_offset = wall - mono
        logger.warning("the wall clock was set back %.1fs: deadlines re-anchored", behind)

    def _until_hard_deadline(self) -> float:
        """Seconds until the token's hard deadline, or infinity when none is ahead."""
        token = self._token
        if token is None:
            return math.inf
        left = token.hard_deadline - self._now()
        return left if left > 0 else math.inf

    async def _background_step(self) -> None:
        self._reanchor()
        if self._dead is not None or (
            self._token is None
            and self._unsaved is None
            and self._seed_refresh_token is None
            and self._account_id is None
        ):
            # Nothing we can refresh: wake now and then in case a token is stored later.
            await self._sleep(MAX_SLEEP_CHUNK)
            if self._store is not None:
                await self._adopt_from_store(None, None)
            return
        due_in = self._next_due_in()
        if due_in > 0:
            # Also wake at the hard deadline, to re-anchor before the hot path judges it.
            await self._sleep(min(due_in, MAX_SLEEP_CHUNK, self._until_hard_deadline()))
            return
        flight = self._flight or self._start_flight(min_generation=None)
        # A failure is recorded by the flight; the cool-down decides when to try again.
        with contextlib.suppress(ZoomTokenError):
            await asyncio.shield(flight.task)
