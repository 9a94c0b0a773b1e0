"""Tools for testing code that uses zoomtoken: a fake clock and a Zoom OAuth emulator.

:class:`FakeClock` replaces both clocks of :class:`zoomtoken._clock.Clock` and provides the
matching ``sleep``, so a test moves time by hand instead of waiting for it::

    clock = FakeClock()
    manager = TokenManager(..., clock=clock, sleep=clock.sleep)
    await clock.advance(3000)        # 50 virtual minutes, instantly

:class:`ZoomOAuthEmulator` is a real HTTP server on 127.0.0.1 that answers like Zoom's token,
revoke and API endpoints (rotating single-use refresh tokens, ``invalid_grant`` bodies, whole-grant
revocation), counts what it served, and injects faults on demand (:class:`Fault`)::

    async with ZoomOAuthEmulator(clock=clock) as zoom:
        refresh_token = zoom.create_grant()
        zoom.inject(Fault.status(503), Fault.reset(rotate=True))
        ...
        assert zoom.counters.refreshes == 1

The emulator never logs, and its ``repr`` shows no token or secret.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import heapq
import itertools
import json
import secrets
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from email.utils import format_datetime
from typing import Any, Literal, TypeVar

from aiohttp import web
from yarl import URL

from ._clock import Clock, Sleep, SystemClock

_T = TypeVar("_T")

__all__ = [
    "EmulatorCounters",
    "FakeClock",
    "Fault",
    "GrantInfo",
    "ZoomOAuthEmulator",
]


# --------------------------------------------------------------------------------------------
# FakeClock
# --------------------------------------------------------------------------------------------

# How many bare yields make one "settle" round: a woken task typically needs one step to run,
# one more per future it hands a result to (task → awaiting task → ...).
_SETTLE_YIELDS = 8
# Settle rounds stop when a round saw no sleep() activity, or after this many rounds (a task
# that sleeps(0) forever must not hang advance()).
_SETTLE_MAX_ROUNDS = 64
# advance() wakes at most this many sleepers; more means a task sleeps so briefly that the
# window never ends (e.g. a step that vanishes in float rounding), which is a bug in the test.
_MAX_WAKEUPS_PER_ADVANCE = 10_000_000


class FakeClock:
    """Virtual wall and monotonic clocks with a virtual ``sleep``; nothing waits for real time.

    ``time()`` is the wall clock (epoch seconds), ``monotonic()`` the monotonic clock
    (seconds, arbitrary origin). Both start where the constructor says and move only when a
    test calls :meth:`advance` (both clocks), :meth:`suspend` or :meth:`jump_wall` (wall clock
    only), or when a sleep autojumps.

    ``sleep(seconds)`` (pass it as ``sleep=clock.sleep``) records the request in :attr:`sleeps`
    and blocks until the monotonic clock reaches its deadline.

    With ``autojump=True`` a positive sleep instead moves both clocks straight to its own
    deadline (never backwards) and returns after one yield: virtual time runs as fast as the
    code sleeps, which lets a test simulate days of background refreshes in milliseconds.
    Concurrent sleepers are then served in call order, not deadline order, and time also jumps
    while real I/O is in flight — use it for long single-timeline simulations, and
    :meth:`advance` where the interleaving of several sleepers matters.

    No event-loop object is captured: futures are created in the loop that awaits them.
    """

    def __init__(
        self,
        *,
        wall: float = 1_700_000_000.0,
        monotonic: float = 1000.0,
        autojump: bool = False,
    ) -> None:
        self._wall = float(wall)
        self._monotonic = float(monotonic)
        #: Whether positive sleeps jump the clocks to their deadline at once (may be toggled).
        self.autojump = autojump
        #: Every duration passed to :meth:`sleep`, seconds, negatives recorded as 0.
        self.sleeps: list[float] = []
        # Heap of (monotonic deadline, sequence, future). Cancelled sleepers stay in the heap
        # until popped (lazy removal keeps cancel O(1)); ``_pending`` counts the live ones.
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._sequence = itertools.count()
        self._pending = 0
        # Bumped by every sleep() call and every wake-up: how advance() sees that woken tasks
        # are still doing something.
        self._activity = 0

    def time(self) -> float:
        """Virtual wall-clock time, seconds since the Unix epoch."""
        return self._wall

    def monotonic(self) -> float:
        """Virtual monotonic time, seconds."""
        return self._monotonic

    @property
    def pending_sleepers(self) -> int:
        """How many tasks are blocked in :meth:`sleep` right now."""
        return self._pending

    @property
    def next_deadline(self) -> float | None:
        """Monotonic instant (seconds) the earliest pending sleeper wakes, or ``None``."""
        self._drop_cancelled()
        return self._heap[0][0] if self._heap else None

    async def sleep(self, seconds: float) -> None:
        """Block until the monotonic clock has moved ``seconds`` forward (negative means 0).

        ``sleep(0)`` yields to the loop once and returns, like ``asyncio.sleep(0)``.
        """
        seconds = max(0.0, float(seconds))
        self.sleeps.append(seconds)
        self._activity += 1
        if seconds == 0.0:
            await asyncio.sleep(0)
            return
        deadline = self._monotonic + seconds
        if self.autojump:
            self._move_to(deadline)
            self._wake_due(self._monotonic)
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (deadline, next(self._sequence), future))
        self._pending += 1
        try:
            await future
        finally:
            # Woken sleepers were uncounted when woken; a cancelled one is uncounted here and
            # its heap entry skipped when it surfaces.
            if future.cancelled():
                self._pending -= 1
                self._compact()
        self._activity += 1

    async def advance(self, seconds: float) -> None:
        """Move both clocks ``seconds`` forward, waking sleepers in deadline order.

        Each due sleeper is woken with the clocks set to its own deadline, then the loop runs
        until the woken tasks settle, so sleeps they start that end inside the window are
        honoured too. Returns with both clocks at the start plus ``seconds``.
        """
        if not seconds >= 0:
            raise ValueError("advance() needs a non-negative number of seconds")
        target = self._monotonic + seconds
        await self._settle()
        for _ in range(_MAX_WAKEUPS_PER_ADVANCE):
            if not self._wake_next(target):
                break
            await self._settle()
        else:
            raise RuntimeError("FakeClock.advance(): sleepers keep waking inside the window")
        self._move_to(target)
        await self._settle()

    def suspend(self, seconds: float) -> None:
        """The machine slept ``seconds``: the wall clock jumps forward, monotonic stays put.

        The event loop's monotonic clock does not count suspended time, so no sleeper wakes.
        """
        if not seconds >= 0:
            raise ValueError("suspend() needs a non-negative number of seconds")
        self._wall += seconds

    def stall(self, seconds: float) -> None:
        """The event loop was blocked ``seconds``: both clocks jump, nobody runs meanwhile.

        Sleepers whose deadline passed wake at the next :meth:`advance` (``advance(0)``), all
        seeing the late time, as after a long synchronous call on a real loop.
        """
        if not seconds >= 0:
            raise ValueError("stall() needs a non-negative number of seconds")
        self._move_to(self._monotonic + seconds)

    def jump_wall(self, seconds: float) -> None:
        """The wall clock is stepped by ``seconds`` (either sign), as by NTP; monotonic stays."""
        self._wall += seconds

    def _move_to(self, monotonic: float) -> None:
        # Both clocks move together and never backwards.
        delta = monotonic - self._monotonic
        if delta > 0:
            self._monotonic = monotonic
            self._wall += delta

    def _drop_cancelled(self) -> None:
        heap = self._heap
        while heap and heap[0][2].done():
            heapq.heappop(heap)

    def _compact(self) -> None:
        # Many cancelled sleepers (a refresher restarted again and again) must not grow the
        # heap without bound.
        if len(self._heap) > 2 * self._pending + 64:
            self._heap = [entry for entry in self._heap if not entry[2].done()]
            heapq.heapify(self._heap)

    def _wake_next(self, limit: float) -> bool:
        """Wake the earliest sleeper due at or before ``limit``; ``False`` if there is none."""
        self._drop_cancelled()
        if not self._heap or self._heap[0][0] > limit:
            return False
        deadline, _, future = heapq.heappop(self._heap)
        self._move_to(deadline)
        self._pending -= 1
        future.set_result(None)
        return True

    def _wake_due(self, limit: float) -> None:
        while self._wake_next(limit):
            pass

    async def _settle(self) -> None:
        for _ in range(_SETTLE_MAX_ROUNDS):
            before = self._activity
            for _ in range(_SETTLE_YIELDS):
                await asyncio.sleep(0)
            if self._activity == before:
                return

    def __repr__(self) -> str:
        return (
            f"FakeClock(wall={self._wall!r}, monotonic={self._monotonic!r}, "
            f"autojump={self.autojump!r}, pending_sleepers={self._pending})"
        )


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------

FaultKind = Literal["status", "reset", "hang", "malformed", "drip"]

_STATUS_BODIES: dict[int, dict[str, Any]] = {
    429: {"code": 429, "message": "You have reached the maximum per-second rate limit."},
    500: {"error": "server_error", "reason": "Internal Server Error"},
    502: {"error": "server_error", "reason": "Bad Gateway"},
    503: {"error": "temporarily_unavailable", "reason": "Service Unavailable"},
    504: {"error": "temporarily_unavailable", "reason": "Gateway Timeout"},
}


def _encode_body(body: bytes | str | Mapping[str, Any] | None, code: int) -> bytes:
    if body is None:
        return json.dumps(_STATUS_BODIES.get(code, {"error": "server_error"})).encode()
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(dict(body)).encode()


@dataclass(frozen=True, slots=True)
class Fault:
    """One failure the emulator serves instead of a token-endpoint answer.

    Build them with the class methods. ``rotate=True`` makes the emulator first perform the
    real request (the old refresh token dies, the new pair becomes the grant's current one)
    and then fail: the answer carrying the new pair is lost, as after a timeout or a crash.
    """

    kind: FaultKind
    #: HTTP status of ``status`` and ``malformed`` faults.
    code: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    #: ``drip``: seconds (injected sleep) between chunks, and the chunk size in bytes.
    chunk_delay: float = 0.0
    chunk_size: int = 8
    rotate: bool = False

    @classmethod
    def status(
        cls,
        code: int,
        body: bytes | str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        content_type: str = "application/json",
        rotate: bool = False,
    ) -> Fault:
        """Answer with HTTP ``code``; ``body`` defaults to a Zoom-like JSON error for it."""
        return cls(
            "status",
            code=code,
            body=_encode_body(body, code),
            content_type=content_type,
            headers=tuple((headers or {}).items()),
            rotate=rotate,
        )

    @classmethod
    def rate_limited(
        cls, retry_after: float | str | datetime | None = None, *, rotate: bool = False
    ) -> Fault:
        """429 with ``Retry-After``: seconds (number), an HTTP-date (``datetime``), any raw
        string (e.g. an ISO-8601 instant), or no header at all (``None``)."""
        headers: dict[str, str] = {}
        if isinstance(retry_after, datetime):
            headers["Retry-After"] = format_datetime(retry_after, usegmt=True)
        elif isinstance(retry_after, str):
            headers["Retry-After"] = retry_after
        elif retry_after is not None:
            seconds = float(retry_after)
            headers["Retry-After"] = str(int(seconds)) if seconds.is_integer() else str(seconds)
        return cls.status(429, headers=headers, rotate=rotate)

    @classmethod
    def reset(cls, *, rotate: bool = False) -> Fault:
        """Drop the connection without answering; the client sees ``ServerDisconnectedError``."""
        return cls("reset", rotate=rotate)

    @classmethod
    def hang(cls, *, rotate: bool = False) -> Fault:
        """Never answer: wait until ``release_hung()`` or ``aclose()``, then drop the connection.

        Lets a client timeout fire. With ``rotate=True`` it is the "timeout after the server
        rotated" case: the outcome is unknown to the client.
        """
        return cls("hang", rotate=rotate)

    @classmethod
    def malformed(
        cls,
        body: bytes | str,
        status: int = 200,
        content_type: str = "application/json",
        *,
        rotate: bool = False,
    ) -> Fault:
        """Answer ``status`` with exactly ``body``: truncated JSON, an HTML page, missing or
        wrongly-typed fields, an enormous body..."""
        raw = body.encode() if isinstance(body, str) else body
        return cls("malformed", code=status, body=raw, content_type=content_type, rotate=rotate)

    @classmethod
    def drip(cls, chunk_delay: float, chunk_size: int = 8) -> Fault:
        """Serve the real answer slowly: ``chunk_size`` bytes, then ``sleep(chunk_delay)``.

        The request is really performed (the rotation happens), so a client whose read
        timeout fires mid-body has lost the new pair.
        """
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        return cls("drip", chunk_delay=chunk_delay, chunk_size=chunk_size, rotate=True)


# --------------------------------------------------------------------------------------------
# Emulator state
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class EmulatorCounters:
    """What the emulator has served; plain ints that tests read and may reset."""

    #: Every POST to the token endpoint, faults included.
    token_requests: int = 0
    #: Successful ``refresh_token`` grants (each one a rotation).
    refreshes: int = 0
    #: Server-to-Server (``account_credentials``) tokens issued.
    s2s_issued: int = 0
    #: Authorization codes exchanged for a grant.
    codes_exchanged: int = 0
    #: ``invalid_grant`` answers (unknown, rotated or revoked refresh token, bad code).
    invalid_grant: int = 0
    #: ``invalid_client`` answers (bad or missing Basic auth).
    invalid_client: int = 0
    #: Rotated refresh tokens presented again while ``reuse_detection`` is on.
    reuse_detected: int = 0
    #: Successful revocations.
    revokes: int = 0
    #: Requests to ``/v2/...``, accepted or not.
    api_calls: int = 0
    #: ``/v2/...`` requests refused with 401.
    api_unauthorized: int = 0
    #: Faults served instead of a normal answer.
    faults_served: int = 0

    def reset(self) -> None:
        """Set every counter back to zero."""
        for counter in fields(self):
            setattr(self, counter.name, 0)


@dataclass(slots=True, eq=False)
class _Grant:
    user_id: str
    scope: str
    refresh_token: str
    access_token: str = ""
    access_expires_at: float = 0.0
    revoked: bool = False
    refreshes: int = 0


@dataclass(slots=True, eq=False)
class _Access:
    subject: str
    expires_at: float
    # None for Server-to-Server tokens, which belong to no grant.
    grant: _Grant | None
    revoked: bool = False


@dataclass(slots=True)
class _Code:
    user_id: str
    scope: str
    redirect_uri: str
    challenge: str | None
    method: str
    expires_at: float


@dataclass(frozen=True, slots=True, repr=False)
class GrantInfo:
    """A snapshot of one grant as the emulator sees it (holds secrets: for tests only)."""

    user_id: str
    scope: str
    #: The last refresh token issued (the current one, unless the grant is revoked).
    refresh_token: str
    #: The last access token issued, and its wall-clock expiry (epoch seconds).
    access_token: str
    access_expires_at: float
    revoked: bool
    #: Successful rotations of this grant.
    refreshes: int

    def __repr__(self) -> str:
        return (
            f"GrantInfo(user_id={self.user_id!r}, scope={self.scope!r}, "
            f"revoked={self.revoked!r}, refreshes={self.refreshes!r})"
        )


_FORM = "application/x-www-form-urlencoded"
# Query parameters that would carry a secret; Zoom refuses tokens in the URL.
_SECRET_QUERY_KEYS = frozenset(
    {"refresh_token", "access_token", "token", "code", "code_verifier", "client_secret"}
)
_CODE_LIFETIME = 300.0  # seconds; Zoom's authorization codes live five minutes


def _json(status: int, payload: Mapping[str, Any]) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type="application/json"
    )


def _oauth_error(status: int, error: str, reason: str) -> web.Response:
    return _json(status, {"reason": reason, "error": error})


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------------------------
# ZoomOAuthEmulator
# --------------------------------------------------------------------------------------------


class ZoomOAuthEmulator:
    """A local HTTP server that behaves like Zoom's OAuth and API endpoints.

    Listens on 127.0.0.1 and a free port (see :attr:`base_url`) between :meth:`start` and
    :meth:`aclose`, or inside ``async with``. Endpoints:

    - ``POST /oauth/token``: Basic client auth, form body; ``refresh_token`` grants rotate
      (the presented refresh token dies at once), ``account_credentials`` for Server-to-Server,
      ``authorization_code`` with PKCE.
    - ``POST /oauth/revoke``: form ``token=``; revoking any token of a grant kills the grant.
    - ``GET /oauth/authorize``: approves at once as :attr:`authorize_user_id`, redirects with
      ``code`` and ``state`` (codes live 300 s on ``clock.time()``, single use); with
      :attr:`authorize_deny` set, redirects with ``error=access_denied`` instead.
    - ``/v2/...`` (any method): needs a valid, unexpired bearer token; echoes the request.

    Access tokens expire on ``clock.time()`` (wall clock, epoch seconds). ``latency`` seconds
    are awaited with ``sleep`` before each token or revoke answer, *after* the request took
    effect, so a client that times out meanwhile has lost a real rotation.
    """

    def __init__(
        self,
        *,
        client_id: str = "emulator-client-id",
        client_secret: str = "emulator-client-secret",
        expires_in: int = 3599,
        s2s_expires_in: int = 3600,
        latency: float = 0.0,
        reuse_detection: bool = False,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self._client_id = client_id.encode()
        self._client_secret = client_secret.encode()
        #: Lifetime of user tokens and of Server-to-Server tokens, seconds.
        self.expires_in = expires_in
        self.s2s_expires_in = s2s_expires_in
        #: Seconds awaited before each token or revoke answer.
        self.latency = latency
        #: Revoke the whole grant when a rotated refresh token comes back (OAuth Security BCP).
        self.reuse_detection = reuse_detection
        #: The user an ``/oauth/authorize`` request is approved for.
        self.authorize_user_id = "authorized-user"
        #: When true, ``/oauth/authorize`` acts as if the user clicked "Decline": it redirects
        #: with ``error=access_denied`` (and the ``state``) instead of a code.
        self.authorize_deny = False
        #: The query of the last ``/oauth/authorize`` request (PKCE parameters, state...).
        self.last_authorize_query: dict[str, str] | None = None
        self.counters = EmulatorCounters()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._refresh_index: dict[str, _Grant] = {}
        self._access_index: dict[str, _Access] = {}
        self._grants_by_user: dict[str, _Grant] = {}
        self._s2s_accounts: dict[str, str] = {}
        self._codes: dict[str, _Code] = {}
        self._user_numbers = itertools.count(1)
        self._faults: deque[Fault] = deque()
        self._always: Fault | None = None
        self._hung = 0
        # Created in the running loop by start(); replaced after each release_hung().
        self._release: asyncio.Event | None = None
        self._waiting: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port and start serving."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        app = web.Application()
        app.router.add_post("/oauth/token", self._handle_token)
        app.router.add_post("/oauth/revoke", self._handle_revoke)
        app.router.add_get("/oauth/authorize", self._handle_authorize)
        app.router.add_route("*", "/v2/{tail:.*}", self._handle_api)
        # No access log: it costs time under load, and this server must never log anything.
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._release = asyncio.Event()

    async def aclose(self) -> None:
        """Stop serving; hung, dripping and delayed requests are dropped. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._port = None
        # Our own waits (latency, hang, drip) may be on a fake clock that nobody advances;
        # aiohttp would wait for them up to its shutdown timeout, so end them first.
        for task in list(self._waiting):
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> ZoomOAuthEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (only while running)."""
        if self._port is None:
            raise RuntimeError("the emulator is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def token_url(self) -> str:
        """The token endpoint, ``{base_url}/oauth/token``."""
        return f"{self.base_url}/oauth/token"

    @property
    def revoke_url(self) -> str:
        """The revoke endpoint, ``{base_url}/oauth/revoke``."""
        return f"{self.base_url}/oauth/revoke"

    @property
    def authorize_url(self) -> str:
        """The authorization endpoint, ``{base_url}/oauth/authorize``."""
        return f"{self.base_url}/oauth/authorize"

    @property
    def api_base_url(self) -> str:
        """Base of the API (``/v2/...`` lives under it); also the ``api_url`` of tokens."""
        return self.base_url

    @property
    def client_id(self) -> str:
        """The client id the token endpoint accepts."""
        return self._client_id.decode()

    @property
    def client_secret(self) -> str:
        """The client secret the token endpoint accepts."""
        return self._client_secret.decode()

    # -- configuration and state -------------------------------------------------------------

    def configure(
        self,
        *,
        expires_in: int | None = None,
        s2s_expires_in: int | None = None,
        latency: float | None = None,
        reuse_detection: bool | None = None,
    ) -> None:
        """Change settings at run time; ``None`` leaves a setting as it is."""
        if expires_in is not None:
            self.expires_in = expires_in
        if s2s_expires_in is not None:
            self.s2s_expires_in = s2s_expires_in
        if latency is not None:
            self.latency = latency
        if reuse_detection is not None:
            self.reuse_detection = reuse_detection

    def create_grant(self, *, user_id: str | None = None, scope: str = "user:read") -> str:
        """Authorise a user (no HTTP involved) and return the grant's first refresh token.

        The grant also gets a first access token (see :meth:`grant_info`). As on Zoom,
        authorising a user again revokes that user's earlier grant.
        """
        if user_id is None:
            user_id = f"user-{next(self._user_numbers)}"
        return self._new_grant(user_id, scope).refresh_token

    def create_s2s_account(self, account_id: str, *, scope: str = "user:read:admin") -> None:
        """Allow Server-to-Server tokens (``grant_type=account_credentials``) for an account."""
        self._s2s_accounts[account_id] = scope

    def grant_info(self, key: str) -> GrantInfo:
        """The grant that ``key`` (any refresh or access token it issued, or a user id) names."""
        grant = self._find_grant(key)
        if grant is None:
            raise KeyError("no grant is known by that token or user id")
        return GrantInfo(
            user_id=grant.user_id,
            scope=grant.scope,
            refresh_token=grant.refresh_token,
            access_token=grant.access_token,
            access_expires_at=grant.access_expires_at,
            revoked=grant.revoked,
            refreshes=grant.refreshes,
        )

    def last_issued_refresh_token(self, key: str) -> str:
        """The newest refresh token of the grant ``key`` names (see :meth:`grant_info`)."""
        return self.grant_info(key).refresh_token

    def revoke_grant(self, key: str) -> None:
        """Kill a grant server-side, as when the user uninstalls the app."""
        grant = self._find_grant(key)
        if grant is None:
            raise KeyError("no grant is known by that token or user id")
        grant.revoked = True

    # -- faults ------------------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each token-endpoint request consumes the oldest one."""
        self._faults.extend(faults)

    def fail_always(self, fault: Fault | None) -> None:
        """Serve ``fault`` to every token request once the queue is empty (``None`` stops)."""
        self._always = fault

    def clear_faults(self) -> None:
        """Forget queued faults and any :meth:`fail_always` fault."""
        self._faults.clear()
        self._always = None

    @property
    def pending_faults(self) -> int:
        """How many queued faults are not consumed yet."""
        return len(self._faults)

    @property
    def hung_requests(self) -> int:
        """How many requests are held by a ``hang`` fault right now."""
        return self._hung

    def release_hung(self) -> None:
        """Drop the connections of all requests held by ``hang`` faults (no answer is sent)."""
        if self._release is not None:
            self._release.set()
            self._release = asyncio.Event()

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not running"
        return (
            f"ZoomOAuthEmulator({where}, grants={len(self._grants_by_user)}, "
            f"reuse_detection={self.reuse_detection!r})"
        )

    # -- internals: state --------------------------------------------------------------------

    def _find_grant(self, key: str) -> _Grant | None:
        grant = self._refresh_index.get(key)
        if grant is None:
            access = self._access_index.get(key)
            grant = access.grant if access is not None else None
        if grant is None:
            grant = self._grants_by_user.get(key)
        return grant

    def _new_grant(self, user_id: str, scope: str) -> _Grant:
        previous = self._grants_by_user.get(user_id)
        if previous is not None:
            previous.revoked = True  # Zoom: re-authorising invalidates earlier grants
        grant = _Grant(user_id=user_id, scope=scope, refresh_token="")
        self._grants_by_user[user_id] = grant
        self._rotate(grant)
        return grant

    def _rotate(self, grant: _Grant) -> None:
        # The new pair replaces the old at once: the previous refresh token is dead from now on
        # (it stays in the index so that a reuse can be told apart from an unknown token).
        refresh_token = secrets.token_urlsafe(32)
        access_token = secrets.token_urlsafe(32)
        expires_at = self._clock.time() + self.expires_in
        grant.refresh_token = refresh_token
        grant.access_token = access_token
        grant.access_expires_at = expires_at
        self._refresh_index[refresh_token] = grant
        self._access_index[access_token] = _Access(grant.user_id, expires_at, grant)

    def _pair_body(self, grant: _Grant) -> web.Response:
        return _json(
            200,
            {
                "access_token": grant.access_token,
                "token_type": "bearer",
                "refresh_token": grant.refresh_token,
                "expires_in": self.expires_in,
                "scope": grant.scope,
                "api_url": self.api_base_url,
            },
        )

    def _client_ok(self, header: str | None) -> bool:
        if header is None:
            return False
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        client_id, sep, client_secret = decoded.partition(b":")
        # Both comparisons always run: timing must not tell which half was wrong.
        id_ok = secrets.compare_digest(client_id, self._client_id)
        secret_ok = secrets.compare_digest(client_secret, self._client_secret)
        return bool(sep) and id_ok and secret_ok

    # -- internals: HTTP handlers ------------------------------------------------------------

    async def _wait(self, awaitable: Awaitable[_T]) -> _T:
        # Register the handler task so aclose() can end waits a fake clock would never end.
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            return await awaitable
        finally:
            self._waiting.discard(task)

    async def _delay(self) -> None:
        if self.latency > 0:
            await self._wait(self._sleep(self.latency))

    def _next_fault(self) -> Fault | None:
        if self._faults:
            return self._faults.popleft()
        return self._always

    async def _handle_token(self, request: web.Request) -> web.StreamResponse:
        self.counters.token_requests += 1
        fault = self._next_fault()
        if fault is None:
            response = await self._token_answer(request)
            await self._delay()
            return response
        self.counters.faults_served += 1
        performed = fault.rotate or fault.kind == "drip"
        real = await self._token_answer(request) if performed else None
        await self._delay()
        return await self._serve_fault(request, fault, real)

    async def _serve_fault(
        self, request: web.Request, fault: Fault, real: web.Response | None
    ) -> web.StreamResponse:
        if fault.kind in ("status", "malformed"):
            headers = dict(fault.headers)
            headers["Content-Type"] = fault.content_type
            return web.Response(status=fault.code, body=fault.body, headers=headers)
        if fault.kind == "drip" and real is not None:
            return await self._drip(request, fault, real)
        if fault.kind == "hang":
            release = self._release
            assert release is not None
            self._hung += 1
            try:
                await self._wait(release.wait())
            finally:
                self._hung -= 1
        # reset, or a released hang: drop the connection. The returned response is never
        # written, and aiohttp logs nothing for an aborted transport.
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)

    async def _drip(
        self, request: web.Request, fault: Fault, real: web.Response
    ) -> web.StreamResponse:
        body = real.body
        assert isinstance(body, bytes)
        response = web.StreamResponse(status=real.status)
        response.content_type = real.content_type
        response.content_length = len(body)
        await response.prepare(request)
        try:
            for start in range(0, len(body), fault.chunk_size):
                await response.write(body[start : start + fault.chunk_size])
                await self._wait(self._sleep(fault.chunk_delay))
            await response.write_eof()
        except ConnectionError:
            pass  # the client gave up mid-body (its read timeout): exactly what drip tests
        return response

    async def _token_answer(self, request: web.Request) -> web.Response:
        """Perform one token request and build Zoom's answer (state changes happen here)."""
        counters = self.counters
        if not _SECRET_QUERY_KEYS.isdisjoint(request.query.keys()):
            return _oauth_error(400, "invalid_request", "Tokens must not be sent in the URL.")
        if not self._client_ok(request.headers.get("Authorization")):
            counters.invalid_client += 1
            return _json(
                401, {"reason": "Invalid client_id or client_secret", "error": "invalid_client"}
            )
        if request.content_type != _FORM:
            return _oauth_error(400, "invalid_request", "The body must be a form.")
        form = await request.post()
        grant_type = form.get("grant_type")
        if not isinstance(grant_type, str) or not grant_type:
            return _oauth_error(400, "invalid_request", "Missing grant_type.")
        if grant_type == "refresh_token":
            return self._refresh(form.get("refresh_token"))
        if grant_type == "account_credentials":
            return self._account_credentials(form.get("account_id"))
        if grant_type == "authorization_code":
            return self._exchange_code(form)
        return _oauth_error(400, "unsupported_grant_type", "Unsupported grant type")

    def _invalid_grant(self) -> web.Response:
        self.counters.invalid_grant += 1
        return _oauth_error(400, "invalid_grant", "Invalid Token!")

    def _refresh(self, refresh_token: object) -> web.Response:
        if not isinstance(refresh_token, str) or not refresh_token:
            return _oauth_error(400, "invalid_request", "Missing refresh_token.")
        grant = self._refresh_index.get(refresh_token)
        if grant is None or grant.revoked:
            return self._invalid_grant()
        if refresh_token != grant.refresh_token:
            # A rotated token came back: a duplicate refresh somewhere, or a stolen token.
            if self.reuse_detection:
                self.counters.reuse_detected += 1
                grant.revoked = True
            return self._invalid_grant()
        self._rotate(grant)
        grant.refreshes += 1
        self.counters.refreshes += 1
        return self._pair_body(grant)

    def _account_credentials(self, account_id: object) -> web.Response:
        if not isinstance(account_id, str) or not account_id:
            return _oauth_error(400, "invalid_request", "Missing account_id.")
        scope = self._s2s_accounts.get(account_id)
        if scope is None:
            return _oauth_error(400, "invalid_request", "Account does not exist.")
        access_token = secrets.token_urlsafe(32)
        expires_in = self.s2s_expires_in
        self._access_index[access_token] = _Access(
            account_id, self._clock.time() + expires_in, None
        )
        self.counters.s2s_issued += 1
        return _json(
            200,
            {
                "access_token": access_token,
                "token_type": "bearer",
                "expires_in": expires_in,
                "scope": scope,
                "api_url": self.api_base_url,
            },
        )

    def _exchange_code(self, form: Mapping[str, Any]) -> web.Response:
        code, redirect_uri = form.get("code"), form.get("redirect_uri")
        if not isinstance(code, str) or not code or not isinstance(redirect_uri, str):
            return _oauth_error(400, "invalid_request", "Missing code or redirect_uri.")
        record = self._codes.pop(code, None)  # single use, whatever happens next
        if record is None or self._clock.time() >= record.expires_at:
            return self._invalid_grant()
        if redirect_uri != record.redirect_uri:
            self.counters.invalid_grant += 1
            return _oauth_error(400, "invalid_grant", "Redirect URI mismatch.")
        if record.challenge is not None:
            verifier = form.get("code_verifier")
            expected = (
                _s256(verifier)
                if isinstance(verifier, str) and record.method == "S256"
                else verifier
            )
            if not isinstance(expected, str) or not secrets.compare_digest(
                expected.encode(), record.challenge.encode()
            ):
                self.counters.invalid_grant += 1
                return _oauth_error(400, "invalid_grant", "Invalid code_verifier.")
        grant = self._new_grant(record.user_id, record.scope)
        self.counters.codes_exchanged += 1
        return self._pair_body(grant)

    async def _handle_authorize(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.last_authorize_query = query
        if query.get("client_id", "").encode() != self._client_id:
            return _oauth_error(400, "invalid_client", "Invalid client_id.")
        redirect_uri = query.get("redirect_uri")
        if query.get("response_type") != "code" or not redirect_uri:
            return _oauth_error(400, "invalid_request", "Need response_type=code and redirect_uri.")
        challenge = query.get("code_challenge")
        # Zoom's default PKCE method is "plain"; clients must ask for S256 explicitly.
        method = query.get("code_challenge_method", "plain")
        if method not in ("plain", "S256"):
            return _oauth_error(400, "invalid_request", "Unsupported code_challenge_method.")
        if self.authorize_deny:
            denied = {"error": "access_denied", "error_description": "The user denied access."}
            if "state" in query:
                denied["state"] = query["state"]
            raise web.HTTPFound(location=str(URL(redirect_uri).update_query(denied)))
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(
            user_id=self.authorize_user_id,
            scope=query.get("scope", "user:read"),
            redirect_uri=redirect_uri,
            challenge=challenge,
            method=method,
            expires_at=self._clock.time() + _CODE_LIFETIME,
        )
        params = {"code": code}
        if "state" in query:
            params["state"] = query["state"]
        raise web.HTTPFound(location=str(URL(redirect_uri).update_query(params)))

    async def _handle_revoke(self, request: web.Request) -> web.Response:
        if not self._client_ok(request.headers.get("Authorization")):
            self.counters.invalid_client += 1
            return _json(
                401, {"reason": "Invalid client_id or client_secret", "error": "invalid_client"}
            )
        if not _SECRET_QUERY_KEYS.isdisjoint(request.query.keys()):
            return _oauth_error(400, "invalid_request", "Tokens must not be sent in the URL.")
        if request.content_type != _FORM:
            return _oauth_error(400, "invalid_request", "The body must be a form.")
        form = await request.post()
        token = form.get("token")
        if not isinstance(token, str) or not token:
            return _oauth_error(400, "invalid_request", "Missing token.")
        access = self._access_index.get(token)
        grant = access.grant if access is not None else self._refresh_index.get(token)
        if grant is not None:
            grant.revoked = True  # Zoom: revoking any token uninstalls the app for that user
        elif access is not None:
            access.revoked = True  # a Server-to-Server token: only itself
        else:
            await self._delay()
            return _oauth_error(400, "invalid_request", "Invalid Token!")
        self.counters.revokes += 1
        await self._delay()
        return _json(200, {"status": "success"})

    async def _handle_api(self, request: web.Request) -> web.Response:
        counters = self.counters
        counters.api_calls += 1
        header = request.headers.get("Authorization", "")
        access = self._access_index.get(header[7:]) if header[:7].lower() == "bearer " else None
        if access is None or access.revoked or (access.grant is not None and access.grant.revoked):
            counters.api_unauthorized += 1
            return _json(401, {"code": 124, "message": "Invalid access token."})
        if self._clock.time() >= access.expires_at:
            counters.api_unauthorized += 1
            return _json(401, {"code": 124, "message": "Access token is expired."})
        body = await request.read()
        return _json(
            200,
            {
                "id": access.subject,
                "email": f"{access.subject}@example.com",
                "method": request.method,
                "path": request.path,
                "body_length": len(body),
            },
        )
