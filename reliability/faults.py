"""The fault matrix: every way a refresh can fail, injected while callers are being served.

Each case runs against the emulator over real HTTP on loopback, with a :class:`FileStore` in a
temporary directory and a :class:`FakeClock` that jumps ahead whenever everything sleeps:

1. a bootstrap manager obtains generation 0 and saves it;
2. a second manager serves it to 20 hammering callers; when its refresh starts (the token is
   STALE), the fault is injected twice and the server recovers (*burst*);
3. the fault then persists until the token is past its deadline (*until expiry*): callers must
   never see an error before that, and must get the right typed error after it;
4. the store must still hold a pair the server accepts: a fresh manager refreshes from it.

Permanent errors run once, until expiry, and must not be retried. When the server rotated and
the answer was lost, the old pair is dead by construction: those cases must end in
``ReauthorizationRequiredError`` naming the lost answer and are counted apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from zoomtoken import (
    Event,
    EventKind,
    InvalidResponseError,
    OAuthError,
    OutcomeUnknownError,
    ReauthorizationRequiredError,
    TokenExpiredError,
    TokenManager,
    TransportError,
    ZoomTokenError,
)
from zoomtoken.stores import FileStore
from zoomtoken.testing import FakeClock, Fault, ZoomOAuthEmulator

from ._harness import (
    Blackhole,
    Callers,
    RewritingProxy,
    closed_port_url,
    memory_backed_dir,
    wait_until,
)

__all__ = ["CASES", "FaultCase", "FaultResult", "matrix_settings", "run_matrix", "table"]

Kind = Literal["transient", "permanent", "lost"]
Endpoint = Literal["emulator", "refused", "blackhole", "proxy"]
FaultFactory = Callable[[FakeClock], Fault]

USER = "reliability-user"
# Real seconds one HTTP request may take in these runs: timeouts fire quickly.
HTTP_TIMEOUT = 0.2
# Real seconds a phase may take before the case is declared stuck.
PHASE_TIMEOUT = 60.0
# Retry-After the 429 cases ask for, seconds.
RETRY_AFTER = 7
# Real seconds each caller waits between two calls. Callers that never wait would keep the
# loop (and the GIL) busy, and the store's worker threads would crawl (GIL hand-offs wait
# out the 5 ms switch interval): seconds of stalls that only measure the harness.
CALLER_PAUSE = 0.001
# Concurrent calls fired at every event the manager emits (a refresh starts, fails, retries).
HERD = 25
# A body far past the 64 KiB read bound.
ENORMOUS = 8 * 1024 * 1024


@dataclass(frozen=True)
class FaultCase:
    """One row of the matrix."""

    name: str
    kind: Kind
    #: Builds the fault at injection time (a Retry-After date is relative to "now").
    fault: FaultFactory | None = None
    endpoint: Endpoint = "emulator"
    #: For ``proxy`` cases: rewrites the server's real answer.
    transform: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None
    #: Send a wrong client secret (the server's real ``invalid_client``).
    wrong_secret: bool = False
    #: The ``__cause__`` the caller's TokenExpiredError must carry once the token is dead.
    expect_cause: type[ZoomTokenError] | None = None
    #: For permanent cases: the error callers get once the token expired.
    expect_error: type[ZoomTokenError] = TokenExpiredError
    #: Run the burst phase (fault twice, then recovery).
    burst: bool = True
    #: Run the until-expiry phase.
    persistent: bool = True
    #: Minimum wait the retry after the first fault must honour (virtual seconds).
    min_wait: float = 0.0
    #: For lost cases: 503s served before the fault, so it lands on the burst's last attempt.
    prelude: int = 0
    #: A library bug this case reproduces (and the xfail test that pins it): its failure is
    #: reported but does not fail the run; a pass then does, so the mark gets removed.
    known_bug: str | None = None


def _status(code: int, **kwargs: Any) -> FaultFactory:
    return lambda clock: Fault.status(code, **kwargs)


def _malformed(body: bytes | str, status: int = 200, **kwargs: Any) -> FaultFactory:
    return lambda clock: Fault.malformed(body, status, **kwargs)


def _retry_after_date(clock: FakeClock) -> Fault:
    return Fault.rate_limited(datetime.fromtimestamp(clock.time() + RETRY_AFTER + 1, UTC))


def _retry_after_iso(clock: FakeClock) -> Fault:
    moment = datetime.fromtimestamp(clock.time() + RETRY_AFTER, UTC)
    return Fault.rate_limited(moment.isoformat())


def _oauth(error: str, reason: str, code: int = 400) -> FaultFactory:
    return _status(code, body={"error": error, "reason": reason})


def _with_extras(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "foo": "bar", "nested": {"a": [1, 2]}, "token_type": "Bearer", "n": 1.5}


def _expires_as_string(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "expires_in": str(data["expires_in"])}


_HTML = "<!doctype html><html><body><h1>Service temporarily unavailable</h1></body></html>"

CASES: tuple[FaultCase, ...] = (
    # -- transient: the server did not act, the old pair stays live
    *(
        FaultCase(f"HTTP {code}", "transient", _status(code), expect_cause=OAuthError)
        for code in (500, 502, 503, 504)
    ),
    FaultCase(
        "429, Retry-After: 7 (seconds)",
        "transient",
        lambda clock: Fault.rate_limited(RETRY_AFTER),
        expect_cause=OAuthError,
        min_wait=RETRY_AFTER,
    ),
    FaultCase(
        "429, Retry-After: HTTP-date",
        "transient",
        _retry_after_date,
        expect_cause=OAuthError,
        min_wait=RETRY_AFTER - 1,
    ),
    FaultCase(
        "429, Retry-After: ISO-8601",
        "transient",
        _retry_after_iso,
        expect_cause=OAuthError,
        min_wait=RETRY_AFTER - 1,
    ),
    FaultCase(
        "429, no Retry-After",
        "transient",
        lambda clock: Fault.rate_limited(None),
        expect_cause=OAuthError,
    ),
    FaultCase(
        "HTML page with 503",
        "transient",
        _status(503, body=_HTML, content_type="text/html"),
        expect_cause=OAuthError,
    ),
    FaultCase(
        "connection reset",
        "transient",
        lambda clock: Fault.reset(),
        # The request may have been read before the reset: rightly "outcome unknown".
        expect_cause=OutcomeUnknownError,
    ),
    FaultCase(
        "connect refused (closed port)",
        "transient",
        endpoint="refused",
        expect_cause=TransportError,
        burst=False,
    ),
    FaultCase(
        "connect timeout (SYN dropped)",
        "transient",
        endpoint="blackhole",
        # Nothing was sent: a plain TransportError, not "outcome unknown".
        expect_cause=TransportError,
        burst=False,
    ),
    FaultCase(
        "read timeout, server did not act",
        "transient",
        lambda clock: Fault.hang(),
        expect_cause=OutcomeUnknownError,
    ),
    FaultCase(
        "truncated JSON with 200",
        "transient",
        _malformed('{"access_token": "abc", "expires_'),
        expect_cause=InvalidResponseError,
    ),
    FaultCase(
        "HTML page with 200",
        "transient",
        _malformed(_HTML, content_type="text/html"),
        expect_cause=InvalidResponseError,
    ),
    FaultCase(
        "missing access_token",
        "transient",
        _malformed('{"token_type": "bearer", "refresh_token": "x", "expires_in": 3599}'),
        expect_cause=InvalidResponseError,
    ),
    FaultCase(
        "missing expires_in",
        "transient",
        _malformed('{"access_token": "a", "refresh_token": "x", "token_type": "bearer"}'),
        expect_cause=InvalidResponseError,
    ),
    FaultCase(
        "expires_in wrongly typed",
        "transient",
        _malformed('{"access_token": "a", "refresh_token": "x", "expires_in": "soon"}'),
        expect_cause=InvalidResponseError,
    ),
    FaultCase(
        "refresh_token wrongly typed",
        "transient",
        _malformed('{"access_token": "a", "refresh_token": 42, "expires_in": 3599}'),
        expect_cause=InvalidResponseError,
    ),
    FaultCase(
        "JSON array instead of object",
        "transient",
        _malformed('["access_token", "refresh_token"]'),
        expect_cause=InvalidResponseError,
    ),
    FaultCase(
        "enormous body (8 MiB)",
        "transient",
        _malformed(b'{"access_token": "' + b"A" * ENORMOUS + b'"}'),
        expect_cause=InvalidResponseError,
    ),
    FaultCase(
        "extra and unknown fields",
        "transient",
        endpoint="proxy",
        transform=_with_extras,
        persistent=False,
    ),
    FaultCase(
        "expires_in as a numeric string",
        "transient",
        endpoint="proxy",
        transform=_expires_as_string,
        persistent=False,
    ),
    # -- permanent: no retry, the error tells the user what to do
    FaultCase(
        "invalid_grant",
        "permanent",
        _oauth("invalid_grant", "Invalid Token!"),
        expect_error=ReauthorizationRequiredError,
        burst=False,
    ),
    FaultCase(
        "invalid_request, Invalid Token!",
        "permanent",
        _oauth("invalid_request", "Invalid Token!"),
        expect_error=ReauthorizationRequiredError,
        burst=False,
    ),
    FaultCase(
        "invalid_client (wrong secret)",
        "permanent",
        wrong_secret=True,
        expect_error=ReauthorizationRequiredError,
        burst=False,
    ),
    FaultCase(
        "unsupported_grant_type",
        "permanent",
        _oauth("unsupported_grant_type", "Unsupported grant type"),
        expect_cause=OAuthError,
        burst=False,
    ),
    # -- the server rotated and the answer never arrived: the grant is gone by construction
    FaultCase(
        "read timeout after server rotated",
        "lost",
        lambda clock: Fault.hang(rotate=True),
        expect_error=ReauthorizationRequiredError,
        persistent=False,
    ),
    FaultCase(
        "slow drip past the timeout",
        "lost",
        lambda clock: Fault.drip(0.05),
        expect_error=ReauthorizationRequiredError,
        persistent=False,
    ),
    FaultCase(
        "reset after server rotated",
        "lost",
        lambda clock: Fault.reset(rotate=True),
        expect_error=ReauthorizationRequiredError,
        persistent=False,
    ),
    FaultCase(
        "read timeout after rotation, on a burst's last attempt",
        "lost",
        lambda clock: Fault.hang(rotate=True),
        expect_error=ReauthorizationRequiredError,
        persistent=False,
        # Four 503s first: the lost answer ends the burst, and the next burst's invalid_grant
        # must still be reported as the lost answer, not as a revoked grant.
        prelude=4,
    ),
    FaultCase(
        "truncated 200 after server rotated",
        "lost",
        _malformed('{"access_token": "abc", "refresh_', rotate=True),
        expect_error=ReauthorizationRequiredError,
        persistent=False,
    ),
)


@dataclass
class FaultResult:
    """What one case did and whether it kept the promises."""

    name: str
    kind: Kind
    burst_posts: int | None = None
    burst_outcome: str = "—"
    expiry_posts: int | None = None
    expiry_outcome: str = "—"
    caller_calls: int = 0
    errors_while_valid: int = 0
    served_expired: int = 0
    tokens_lost: int = 0
    lost_by_rotation: int = 0
    problems: list[str] = field(default_factory=list)
    #: Failures explained by a known bug (they do not fail the run).
    known: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every check of the case passed, or failed only as a known bug does."""
        return not self.problems


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    cause = exc.__cause__
    if isinstance(exc, TokenExpiredError) and cause is not None:
        name += f" ← {type(cause).__name__}"
        exc = cause
    status = getattr(exc, "status", None)
    error = getattr(exc, "error", None)
    detail = " ".join(str(part) for part in (status, error) if part is not None)
    return f"{name} ({detail})" if detail else name


class _Run:
    """One case: the emulator, the store and the managers built around them."""

    def __init__(
        self,
        case: FaultCase,
        emulator: ZoomOAuthEmulator,
        clock: FakeClock,
        path: Path,
        callers: int,
    ) -> None:
        self.case = case
        self.callers = callers
        self.emulator = emulator
        self.clock = clock
        self.path = path
        self.events: list[Event] = []
        # For each event: the wall-clock instant and the POSTs the manager had sent by then.
        # Virtual time runs ahead between two polls of the harness, so counts are taken here.
        self.stamps: list[tuple[float, int]] = []
        self.active: TokenManager | None = None
        self.callers_now: Callers | None = None
        self.result = FaultResult(case.name, case.kind)
        self._inject_on_start: Callable[[], None] | None = None

    def problem(self, text: str) -> None:
        self.result.problems.append(text)

    def _on_event(self, event: Event) -> None:
        self.events.append(event)
        posts = self.active.status().token_posts if self.active is not None else 0
        self.stamps.append((self.clock.time(), posts))
        if self.callers_now is not None:
            # A herd at every change of state: virtual time may race past the looping
            # callers, never past these.
            self.callers_now.herd(HERD)
        if event.kind is EventKind.REFRESH_STARTED and self._inject_on_start is not None:
            inject, self._inject_on_start = self._inject_on_start, None
            inject()

    def manager(
        self, token_url: str, *, seed: str | None = None, wrong_secret: bool = False
    ) -> TokenManager:
        emulator = self.emulator
        return TokenManager(
            client_id=emulator.client_id,
            client_secret="wrong-secret" if wrong_secret else emulator.client_secret,
            refresh_token=seed,
            store=FileStore(self.path),
            close_store=True,
            token_url=token_url,
            revoke_url=emulator.revoke_url,
            clock=self.clock,
            sleep=self.clock.sleep,
            http_timeout=HTTP_TIMEOUT,
            rng=random.Random(len(self.case.name)),
            on_event=self._on_event,
        )

    async def stored_refresh_token(self) -> str | None:
        store = FileStore(self.path)
        try:
            token = await store.load()
        except ZoomTokenError as exc:
            self.problem(f"store unreadable: {type(exc).__name__}")
            self.result.tokens_lost += 1
            return None
        finally:
            await store.aclose()
        if token is None or token.refresh_token is None:
            self.problem("store holds no refresh token")
            self.result.tokens_lost += 1
            return None
        return token.refresh_token

    @contextlib.asynccontextmanager
    async def _callers(self, manager: TokenManager) -> AsyncIterator[Callers]:
        async with Callers(manager, self.callers, pause=CALLER_PAUSE) as callers:
            self.callers_now = callers
            try:
                yield callers
            finally:
                self.callers_now = None

    def _posts_at(self, first: int, kinds: tuple[EventKind, ...]) -> int | None:
        """POSTs sent by the first event of ``kinds`` from index ``first`` on."""
        for index in range(first, len(self.events)):
            if self.events[index].kind in kinds:
                return self.stamps[index][1]
        return None

    async def burst(self, manager: TokenManager) -> None:
        """The fault twice during the refresh, then a healthy server."""
        case, emulator = self.case, self.emulator
        posts_before = manager.status().token_posts
        generation = manager.generation
        if case.fault is not None:
            factory = case.fault

            def inject() -> None:
                fault = factory(self.clock)
                emulator.inject(fault, fault)

            self._inject_on_start = inject
        first_event = len(self.events)
        async with self._callers(manager) as callers:
            done = await wait_until(
                lambda: (
                    manager.generation != generation or manager.status().reauthorization_required
                ),
                limit=PHASE_TIMEOUT,
            )
        self._judge_callers(callers)
        ended = (EventKind.REFRESH_SUCCEEDED, EventKind.REFRESH_FAILED)
        posts = (self._posts_at(first_event, ended) or posts_before) - posts_before
        self.result.burst_posts = posts
        if not done:
            self.problem("burst: no new token within the time limit")
            self.result.burst_outcome = "stuck"
            return
        if manager.status().reauthorization_required:
            self.problem("burst: a transient fault killed the grant")
            self.result.burst_outcome = "re-authorisation required"
            return
        expected = 1 if case.fault is None else 3
        if posts != expected:
            self.problem(f"burst: {posts} POSTs, expected {expected}")
        waits = [
            event.wait
            for event in self.events[first_event:]
            if event.kind is EventKind.RETRY_SCHEDULED and event.wait is not None
        ]
        if case.min_wait and (not waits or waits[0] < case.min_wait):
            self.problem(f"burst: first retry after {waits[:1]}s, Retry-After asked more")
        outcome = "refreshed" if case.fault is None else "refreshed after 2 failures"
        if case.min_wait and waits:
            outcome += f", waited {waits[0]:.0f} s"
        self.result.burst_outcome = outcome

    async def until_expiry(self, manager: TokenManager) -> None:
        """The fault (or a dead endpoint) until the token is past its deadline."""
        case, emulator = self.case, self.emulator
        posts_before = manager.status().token_posts
        left = manager.status().seconds_to_expiry
        deadline = self.clock.time() + (left or 0.0)
        if case.fault is not None:
            emulator.fail_always(case.fault(self.clock))
        first_event = len(self.events)
        async with self._callers(manager) as callers:

            def expired() -> bool:
                status = manager.status()
                past = status.seconds_to_expiry is not None and status.seconds_to_expiry < 0
                return past and bool(callers.errors_after_expiry)

            done = await wait_until(expired, limit=PHASE_TIMEOUT)
        emulator.fail_always(None)
        emulator.release_hung()
        self._judge_callers(callers)
        before_deadline = [posts for when, posts in self.stamps[first_event:] if when < deadline]
        self.result.expiry_posts = max(before_deadline, default=posts_before) - posts_before
        if not done:
            self.problem("until expiry: callers never saw the token expire")
            self.result.expiry_outcome = "stuck"
            return
        seen = sorted({_describe(exc) for exc in callers.errors_after_expiry})
        self.result.expiry_outcome = "; ".join(seen)
        for exc in callers.errors_after_expiry:
            if not isinstance(exc, case.expect_error):
                self.problem(
                    f"after expiry: {_describe(exc)}, expected {case.expect_error.__name__}"
                )
                break
            # Exact class: a connect timeout reported as OutcomeUnknownError (a subclass of
            # TransportError) would later turn a plain invalid_grant into "answer lost".
            if case.expect_cause is not None and type(exc.__cause__) is not case.expect_cause:
                self.problem(
                    f"after expiry: {_describe(exc)}, expected cause {case.expect_cause.__name__}"
                )
                break
        retries = [e for e in self.events[first_event:] if e.kind is EventKind.RETRY_SCHEDULED]
        if case.kind == "permanent":
            if retries:
                self.problem(f"permanent error retried {len(retries)} times within a burst")
            if case.expect_error is ReauthorizationRequiredError and self.result.expiry_posts != 1:
                self.problem(f"permanent error: {self.result.expiry_posts} POSTs, expected 1")

    async def lost(self, manager: TokenManager) -> None:
        """The server rotates, the answer is lost: outcome unknown, then re-authorise."""
        case, emulator = self.case, self.emulator
        assert case.fault is not None
        factory = case.fault
        posts_before = manager.status().token_posts
        prelude = [Fault.status(503)] * case.prelude
        self._inject_on_start = lambda: emulator.inject(*prelude, factory(self.clock))
        first_event = len(self.events)
        async with self._callers(manager) as callers:

            def finished() -> bool:
                status = manager.status()
                past = status.seconds_to_expiry is not None and status.seconds_to_expiry < 0
                return past and bool(callers.errors_after_expiry)

            done = await wait_until(finished, limit=PHASE_TIMEOUT)
        emulator.release_hung()
        self._judge_callers(callers)
        dead = next(
            (
                posts
                for event, (_, posts) in zip(
                    self.events[first_event:], self.stamps[first_event:], strict=True
                )
                if isinstance(event.error, ReauthorizationRequiredError)
            ),
            manager.status().token_posts,
        )
        self.result.burst_posts = dead - posts_before
        if not done:
            self.problem("lost answer: callers never saw the token expire")
            self.result.burst_outcome = "stuck"
            return
        unknown = [
            e
            for e in self.events[first_event:]
            if e.kind in (EventKind.RETRY_SCHEDULED, EventKind.REFRESH_FAILED)
            and isinstance(e.error, OutcomeUnknownError | InvalidResponseError)
        ]
        if not unknown:
            self.problem("lost answer: the unknown outcome was never reported")
        final = callers.errors_after_expiry[0]
        cause = final.__cause__ if isinstance(final, TokenExpiredError) else final
        says_lost = re.search(r"\blost\b", str(cause)) is not None
        if not isinstance(final, ReauthorizationRequiredError):
            self.problem(f"lost answer: callers got {_describe(final)}")
        elif not says_lost:
            self.problem("lost answer: the error does not say the answer was lost")
        reported = type(unknown[0].error).__name__ if unknown and unknown[0].error else "?"
        said = "says the answer was lost" if says_lost else "reads as a revoked grant"
        self.result.burst_outcome = f"{reported}, then {_describe(final)}, {said}"

    def _judge_callers(self, callers: Callers) -> None:
        self.result.caller_calls += callers.calls
        self.result.errors_while_valid += len(callers.errors_while_valid)
        self.result.served_expired += callers.served_expired
        if callers.errors_while_valid:
            first = callers.errors_while_valid[0]
            self.problem(f"caller error while a valid token existed: {_describe(first)}")
        if callers.served_expired:
            self.problem(f"{callers.served_expired} expired tokens served")


@contextlib.contextmanager
def _endpoint(case: FaultCase) -> Iterator[str | None]:
    """The token URL a case's faulty manager uses (``None``: the emulator's or the proxy's)."""
    if case.endpoint == "refused":
        yield closed_port_url()
    elif case.endpoint == "blackhole":
        hole = Blackhole()
        try:
            yield hole.url
        finally:
            hole.close()
    else:
        yield None


async def run_case(
    case: FaultCase, directory: Path, *, lifetime: int = 3599, callers: int = 20
) -> FaultResult:
    """Run one row of the matrix in ``directory`` (its token file is created there).

    ``lifetime``: seconds the emulator's tokens live; ``callers``: concurrent callers.
    """
    started = time.perf_counter()
    clock = FakeClock(autojump=True)
    # The emulator's own waits (drip) are real: they race the client's real timeout.
    async with ZoomOAuthEmulator(
        clock=clock, sleep=asyncio.sleep, reuse_detection=True, expires_in=lifetime
    ) as emulator:
        slug = re.sub(r"[^a-z0-9]+", "-", case.name.lower()).strip("-")
        run = _Run(case, emulator, clock, directory / f"{slug}.json", callers)
        seed = emulator.create_grant(user_id=USER)
        bootstrap = run.manager(emulator.token_url, seed=seed)
        try:
            await bootstrap.get_token()
        finally:
            await bootstrap.aclose()
        before = await run.stored_refresh_token()

        proxy: RewritingProxy | None = None
        if case.transform is not None:
            proxy = RewritingProxy(emulator.token_url, case.transform)
            await proxy.__aenter__()
        try:
            with _endpoint(case) as url:
                token_url = url or (proxy.url if proxy is not None else emulator.token_url)
                manager = run.manager(token_url, wrong_secret=case.wrong_secret)
                run.active = manager
                async with manager:
                    if case.kind == "lost":
                        await run.lost(manager)
                    else:
                        if case.burst:
                            await run.burst(manager)
                        if case.persistent:
                            await run.until_expiry(manager)
        finally:
            if proxy is not None:
                await proxy.__aexit__(None, None, None)

        await _check_store(run, before)
        if emulator.counters.reuse_detected and case.kind != "lost":
            run.problem(f"refresh token reused {emulator.counters.reuse_detected} times")
    result = run.result
    if case.known_bug is not None:
        if result.problems:
            result.known = [
                f"{problem} — known bug: {case.known_bug}" for problem in result.problems
            ]
            result.problems = []
        else:
            result.problems.append(
                f"known bug no longer reproduces, drop the mark: {case.known_bug}"
            )
    result.seconds = time.perf_counter() - started
    return result


async def _check_store(run: _Run, before: str | None) -> None:
    """The store holds a live pair (proved by refreshing from it), or for lost answers the
    pair the server killed by rotating — never garbage."""
    emulator, result = run.emulator, run.result
    stored = await run.stored_refresh_token()
    if stored is None:
        return
    info = emulator.grant_info(USER)
    if run.case.kind == "lost":
        if stored == before and info.refreshes == 2:
            result.lost_by_rotation += 1
        else:
            run.problem("lost answer: the store holds something other than the last saved pair")
            result.tokens_lost += 1
        return
    if stored != info.refresh_token or info.revoked:
        run.problem("the stored refresh token is not the grant's live one")
        result.tokens_lost += 1
        return
    recovery = run.manager(emulator.token_url)
    try:
        await recovery.refresh(force=True)
    except ZoomTokenError as exc:
        run.problem(f"recovery from the store failed: {_describe(exc)}")
        result.tokens_lost += 1
    finally:
        await recovery.aclose()


def matrix_settings(*, quick: bool) -> tuple[int, int]:
    """Token lifetime (seconds) and number of callers of a run."""
    return (600, 8) if quick else (3599, 20)


async def run_matrix(*, quick: bool = False, directory: Path | None = None) -> list[FaultResult]:
    """Run every case. ``quick`` uses 10-minute tokens (fewer attempts before expiry) and
    fewer callers, so that the cases that wait for real timeouts stay short."""
    results: list[FaultResult] = []
    lifetime, callers = matrix_settings(quick=quick)
    with contextlib.ExitStack() as stack:
        if directory is None:
            scratch = tempfile.TemporaryDirectory(prefix="faults-", dir=memory_backed_dir())
            directory = Path(stack.enter_context(scratch))
        for case in CASES:
            results.append(await run_case(case, directory, lifetime=lifetime, callers=callers))
    return results


def table(results: list[FaultResult]) -> str:
    """The matrix as a markdown table."""
    lines = [
        "| fault | kind | POSTs: 2 faults, then OK | POSTs: fault until expiry | outcome "
        "| error once expired | caller errors while valid | tokens lost | lost by server "
        "rotation | ok |",
        "|---|---|---:|---:|---|---|---:|---:|---:|:-:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.kind} | {_n(r.burst_posts)} | {_n(r.expiry_posts)} "
            f"| {r.burst_outcome} | {r.expiry_outcome} | {r.errors_while_valid} "
            f"| {r.tokens_lost} | {r.lost_by_rotation} | {_verdict(r)} |"
        )
    return "\n".join(lines)


def _verdict(result: FaultResult) -> str:
    if not result.ok:
        return "✗"
    return "✗ known bug" if result.known else "✓"


def _n(value: int | None) -> str:
    return "—" if value is None else str(value)
