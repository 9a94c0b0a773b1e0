"""Scenarios 3 and 4: a herd of callers on an EXPIRED token, and the same during an outage.

Both run against :class:`zoomtoken.testing.ZoomOAuthEmulator` on 127.0.0.1 in this process,
in real time (the emulator's latency is a real ``asyncio.sleep``) on the production clocks
(``SystemClock``). Each manager starts from a store holding an already EXPIRED token, read in
with ``load()`` (which refreshes nothing), so no scenario waits for a token to expire.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from zoomtoken import Event, EventKind, RetryPolicy, SystemClock, TokenManager, TokenState
from zoomtoken._oauth import OAuthClient
from zoomtoken.testing import Fault, ZoomOAuthEmulator

from ._common import Mode, Row, fmt_s, median, no_gc, verdict
from ._contenders import (
    AGE_PAST_EXPIRY,
    AuthlibSide,
    NaiveLockManager,
    load_authlib,
    make_manager,
    make_token,
)

__all__ = [
    "HERD_LATENCY",
    "HERD_RELEASE_FACTOR",
    "OUTAGE_POLICY",
    "future_herd",
    "run_herd",
    "run_outage",
    "zoomtoken_herd",
]

#: Emulator latency for the herd, seconds.
HERD_LATENCY = 0.050
#: Target: herd time ≤ refresh round trip + this × the bare-future herd's own overhead.
HERD_RELEASE_FACTOR = 1.3
#: Outage: a small burst budget so the scenario runs in real time within seconds.
OUTAGE_POLICY = RetryPolicy(max_attempts=4, budget=1.0, backoff_base=0.05, backoff_cap=0.25)
OUTAGE_HTTP_TIMEOUT = 1.0
OUTAGE_CALLERS = 100


@dataclass
class HerdResult:
    """One herd: seconds from the first call until every caller held the token."""

    callers: int
    total: float
    #: Seconds between the refresh starting and the token being published (the POST's
    #: round trip including the emulator's latency); for the reference, its pure latency.
    refresh: float
    #: Seconds from publication (or ``set_result``) until the last caller had the token.
    release: float
    posts: int = 0
    invalid_grant: int = 0
    reuse_detected: int = 0
    distinct_tokens: int = 1
    errors: int = 0
    #: CPU seconds of this process over the herd (``time.process_time``): unlike wall time,
    #: not inflated when other processes take the CPU away. The refresh itself is mostly
    #: waiting, so this is close to the CPU cost of the overhead.
    cpu: float = 0.0

    @property
    def overhead(self) -> float:
        """Everything but the refresh itself: getting N callers to wait, then releasing them."""
        return self.total - self.refresh


async def future_herd(callers: int, latency: float) -> HerdResult:
    """The reference: the same herd, waiting on one bare ``asyncio.Future``.

    Mirrors the manager's shape exactly: the first caller starts a task that "refreshes"
    (sleeps ``latency``) and resolves the future; the others just await the future.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()
    marks: dict[str, float] = {}
    resolver: list[asyncio.Task[None]] = []

    async def resolve() -> None:
        marks["started"] = time.perf_counter()
        await asyncio.sleep(latency)
        marks["resolved"] = time.perf_counter()
        future.set_result("reference-token")

    async def caller() -> str:
        if not resolver:
            resolver.append(loop.create_task(resolve()))
        return await future

    with no_gc():
        cpu = time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        end = time.perf_counter()
        cpu = time.process_time() - cpu
    await resolver[0]
    return HerdResult(
        callers=callers,
        total=end - start,
        refresh=marks["resolved"] - marks["started"],
        release=end - marks["resolved"],
        cpu=cpu,
    )


class ZoomtokenHerd:
    """A manager on the real clocks (``SystemClock``, as in production) whose store holds an
    EXPIRED token, loaded with ``load()`` (no refresh yet); one fresh grant each."""

    def __init__(
        self, emulator: ZoomOAuthEmulator, manager: TokenManager, marks: dict[str, float]
    ) -> None:
        self.emulator = emulator
        self.manager = manager
        self.marks = marks

    @classmethod
    async def prepare(
        cls, emulator: ZoomOAuthEmulator, session: aiohttp.ClientSession
    ) -> ZoomtokenHerd:
        marks: dict[str, float] = {}

        def on_event(event: Event) -> None:
            if event.kind is EventKind.REFRESH_STARTED:
                marks["started"] = time.perf_counter()
            elif event.kind is EventKind.REFRESH_SUCCEEDED:
                marks["published"] = time.perf_counter()

        manager = make_manager(
            client_id=emulator.client_id,
            client_secret=emulator.client_secret,
            refresh_token=emulator.create_grant(),
            token_url=emulator.token_url,
            revoke_url=emulator.revoke_url,
            session=session,
            on_event=on_event,
            issued_at=time.time() - AGE_PAST_EXPIRY,
        )
        await manager.load()
        return cls(emulator, manager, marks)

    async def run(self, callers: int) -> HerdResult:
        """``callers`` concurrent ``get_token()`` on the EXPIRED token, timed."""
        manager = self.manager
        try:
            if manager.state is not TokenState.EXPIRED:
                raise RuntimeError("the herd must start from an EXPIRED token")
            self.emulator.counters.reset()
            with no_gc():
                cpu = time.process_time()
                start = time.perf_counter()
                tokens = await asyncio.gather(
                    *(manager.get_token() for _ in range(callers)), return_exceptions=True
                )
                end = time.perf_counter()
                cpu = time.process_time() - cpu
        finally:
            await manager.aclose()
        marks = self.marks
        good = [t for t in tokens if isinstance(t, str)]
        counters = self.emulator.counters
        return HerdResult(
            callers=callers,
            total=end - start,
            refresh=marks.get("published", end) - marks.get("started", start),
            release=end - marks.get("published", end),
            posts=counters.token_requests,
            invalid_grant=counters.invalid_grant,
            reuse_detected=counters.reuse_detected,
            distinct_tokens=len(set(good)),
            errors=len(tokens) - len(good),
            cpu=cpu,
        )


async def zoomtoken_herd(
    emulator: ZoomOAuthEmulator, session: aiohttp.ClientSession, callers: int
) -> HerdResult:
    """``callers`` concurrent ``get_token()`` on an EXPIRED token."""
    herd = await ZoomtokenHerd.prepare(emulator, session)
    return await herd.run(callers)


async def _lock_herd(
    get: Callable[[], Awaitable[str]], emulator: ZoomOAuthEmulator, callers: int
) -> HerdResult:
    emulator.counters.reset()
    with no_gc():
        start = time.perf_counter()
        tokens = await asyncio.gather(*(get() for _ in range(callers)), return_exceptions=True)
        end = time.perf_counter()
    good = [t for t in tokens if isinstance(t, str)]
    return HerdResult(
        callers=callers,
        total=end - start,
        refresh=0.0,
        release=0.0,
        posts=emulator.counters.token_requests,
        invalid_grant=emulator.counters.invalid_grant,
        reuse_detected=emulator.counters.reuse_detected,
        distinct_tokens=len(set(good)),
        errors=len(tokens) - len(good),
    )


async def naive_herd(
    emulator: ZoomOAuthEmulator, session: aiohttp.ClientSession, callers: int
) -> HerdResult:
    naive = _naive_on_expired(emulator, session, emulator.create_grant())
    return await _lock_herd(naive.get_token, emulator, callers)


def _naive_on_expired(
    emulator: ZoomOAuthEmulator, session: aiohttp.ClientSession, refresh_token: str
) -> NaiveLockManager:
    oauth = OAuthClient(
        client_id=emulator.client_id,
        client_secret=emulator.client_secret,
        token_url=emulator.token_url,
        revoke_url=emulator.revoke_url,
        clock=SystemClock(),
    )
    expired = make_token(refresh_token, issued_at=time.time() - AGE_PAST_EXPIRY)
    return NaiveLockManager(expired, oauth=oauth, session=session)


async def authlib_herd(emulator: ZoomOAuthEmulator, client_class: Any, callers: int) -> HerdResult:
    seed = emulator.create_grant()
    side = AuthlibSide(
        client_class,
        client_id=emulator.client_id,
        client_secret=emulator.client_secret,
        token_url=emulator.token_url,
        refresh_token=seed,
        expires_at=time.time() - 600,
    )
    try:
        return await _lock_herd(side.get_token, emulator, callers)
    finally:
        await side.aclose()


def _herd_checks(result: HerdResult) -> tuple[bool, str]:
    ok = (
        result.posts == 1
        and result.invalid_grant == 0
        and result.errors == 0
        and result.distinct_tokens == 1
    )
    text = f"POSTs {result.posts}, invalid_grant {result.invalid_grant}"
    if result.errors:
        text += f", {result.errors} callers failed"
    if result.distinct_tokens != 1:
        text += f", {result.distinct_tokens} distinct tokens"
    return ok, text


async def _herd(mode: Mode) -> tuple[list[Row], dict[str, Any]]:
    scenario = "3 Herd (EXPIRED, 50 ms latency, rotation + reuse detection)"
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    authlib_class = load_authlib()
    async with (
        ZoomOAuthEmulator(latency=HERD_LATENCY, reuse_detection=True) as emulator,
        aiohttp.ClientSession() as session,
    ):
        for callers in mode.herd_sizes:
            references: list[HerdResult] = []
            ours: list[HerdResult] = []
            for _ in range(mode.herd_repeats):
                herd = await ZoomtokenHerd.prepare(emulator, session)
                references.append(await future_herd(callers, HERD_LATENCY))
                ours.append(await herd.run(callers))
            ref_overhead = median([r.overhead for r in references])
            ref_release = median([r.release for r in references])
            ref_total = median([r.total for r in references])
            total = median([r.total for r in ours])
            refresh = median([r.refresh for r in ours])
            release = median([r.release for r in ours])
            limit = refresh + HERD_RELEASE_FACTOR * ref_overhead
            cpu_ratio = median([r.cpu for r in ours]) / median([r.cpu for r in references])
            checks = [_herd_checks(r) for r in ours]
            counts_ok = all(ok for ok, _ in checks)
            posts = max(r.posts for r in ours)
            invalid = max(r.invalid_grant for r in ours)
            rows.append(
                Row(
                    scenario,
                    f"{callers:,} callers: bare `asyncio.Future` (reference)",
                    f"{fmt_s(ref_total)} total; release {fmt_s(ref_release)}",
                    "1.00×",
                    data={
                        "callers": callers,
                        "total_s": ref_total,
                        "overhead_s": ref_overhead,
                        "release_s": ref_release,
                        "runs": [vars(r) for r in references],
                    },
                )
            )
            rows.append(
                Row(
                    scenario,
                    f"{callers:,} callers: zoomtoken, POSTs / invalid_grant",
                    f"{posts} / {invalid}",
                    "",
                    "1 / 0",
                    verdict(counts_ok, invariant=True),
                    data={"posts": [r.posts for r in ours], "checks": [t for _, t in checks]},
                )
            )
            rows.append(
                Row(
                    scenario,
                    f"{callers:,} callers: zoomtoken, time until all hold the token",
                    f"{fmt_s(total)} (refresh {fmt_s(refresh)}, release {fmt_s(release)})",
                    f"overhead {(total - refresh) / ref_overhead:.2f}× ref. "
                    f"(CPU {cpu_ratio:.2f}×); release {release / ref_release:.2f}×",
                    f"≤ {fmt_s(limit)} (refresh + {HERD_RELEASE_FACTOR}× ref. overhead)",
                    verdict(total <= limit),
                    data={
                        "callers": callers,
                        "total_s": total,
                        "refresh_s": refresh,
                        "release_s": release,
                        "limit_s": limit,
                        "overhead_ratio": (total - refresh) / ref_overhead,
                        "cpu_ratio": cpu_ratio,
                        "release_ratio": release / ref_release,
                        "runs": [vars(r) for r in ours],
                    },
                )
            )
            naive = await naive_herd(emulator, session, callers)
            rows.append(_contender_herd_row(scenario, "naive lock-per-call manager", naive, total))
            if authlib_class is not None:
                theirs = await authlib_herd(emulator, authlib_class, callers)
                rows.append(_contender_herd_row(scenario, "Authlib", theirs, total))
            raw[str(callers)] = {
                "reference": [vars(r) for r in references],
                "zoomtoken": [vars(r) for r in ours],
                "naive": vars(naive),
            }
    return rows, raw


def _contender_herd_row(scenario: str, name: str, result: HerdResult, ours: float) -> Row:
    return Row(
        scenario,
        f"{result.callers:,} callers: {name}",
        f"{fmt_s(result.total)}; POSTs {result.posts}, invalid_grant {result.invalid_grant}"
        + (f", {result.errors} failed" if result.errors else ""),
        f"{result.total / ours:.2f}× zoomtoken",
        data=vars(result),
    )


# ------------------------------------------------------------------------------ outage


@dataclass
class OutageResult:
    posts: int
    waits: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)


async def _callers(get: Callable[[], Awaitable[str]], count: int) -> tuple[float, OutageResult]:
    """Run ``count`` concurrent callers; each records its own wait and outcome."""
    result = OutageResult(posts=0)

    async def caller() -> None:
        start = time.perf_counter()
        try:
            await get()
        except Exception as exc:
            result.outcomes[type(exc).__name__] += 1
        else:
            result.outcomes["token"] += 1
        result.waits.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(count)))
    return time.perf_counter() - start, result


async def _outage(mode: Mode) -> tuple[list[Row], dict[str, Any]]:
    del mode  # the outage is the same size in both modes
    scenario = "4 Outage (EXPIRED, endpoint answers 503)"
    rows: list[Row] = []
    policy = OUTAGE_POLICY
    # Worst case a caller can wait: a burst never starts a backoff that ends past its budget,
    # and the last attempt may then take one whole request timeout.
    deadline = max(policy.budget, 1.0) + OUTAGE_HTTP_TIMEOUT
    async with (
        ZoomOAuthEmulator(latency=0.0, reuse_detection=True) as emulator,
        aiohttp.ClientSession() as session,
    ):
        emulator.fail_always(Fault.status(503))
        seed = emulator.create_grant()
        manager = make_manager(
            client_id=emulator.client_id,
            client_secret=emulator.client_secret,
            refresh_token=seed,
            token_url=emulator.token_url,
            revoke_url=emulator.revoke_url,
            session=session,
            retry=policy,
            http_timeout=OUTAGE_HTTP_TIMEOUT,
            issued_at=time.time() - AGE_PAST_EXPIRY,
        )
        try:
            await manager.load()
            emulator.counters.reset()
            elapsed, first = await _callers(manager.get_token, OUTAGE_CALLERS)
            first.posts = emulator.counters.token_requests
            # A second wave inside the cool-down: must fail fast, without a single POST.
            emulator.counters.reset()
            elapsed2, second = await _callers(manager.get_token, OUTAGE_CALLERS)
            second.posts = emulator.counters.token_requests
        finally:
            await manager.aclose()

        # Contenders: every queued caller retries the dead endpoint itself.
        emulator.counters.reset()
        naive = _naive_on_expired(emulator, session, seed)
        _, naive_result = await _callers(naive.get_token, OUTAGE_CALLERS)
        naive_result.posts = emulator.counters.token_requests
        authlib_result: OutageResult | None = None
        authlib_class = load_authlib()
        if authlib_class is not None:
            side = AuthlibSide(
                authlib_class,
                client_id=emulator.client_id,
                client_secret=emulator.client_secret,
                token_url=emulator.token_url,
                refresh_token=seed,
                expires_at=time.time() - 600,
            )
            emulator.counters.reset()
            try:
                _, authlib_result = await _callers(side.get_token, OUTAGE_CALLERS)
            finally:
                await side.aclose()
            authlib_result.posts = emulator.counters.token_requests

    max_wait = max(first.waits)
    rows.append(
        Row(
            scenario,
            f"zoomtoken, {OUTAGE_CALLERS} callers: POSTs",
            f"{first.posts}",
            f"{first.posts / OUTAGE_CALLERS:.2f} per caller",
            f"1 burst ≤ max_attempts = {policy.max_attempts}",
            verdict(1 <= first.posts <= policy.max_attempts, invariant=True),
            data={"posts": first.posts, "policy": repr(policy)},
        )
    )
    typed = first.outcomes.get("TokenExpiredError", 0) == OUTAGE_CALLERS
    rows.append(
        Row(
            scenario,
            f"zoomtoken, {OUTAGE_CALLERS} callers: longest wait",
            f"{fmt_s(max_wait)} (median {fmt_s(median(first.waits))}); "
            + ", ".join(f"{k} ×{v}" for k, v in sorted(first.outcomes.items())),
            f"{max_wait / deadline:.2f}× deadline",
            f"≤ {fmt_s(deadline)} each, typed error",
            verdict(max_wait <= deadline and typed, invariant=True),
            data={
                "max_wait_s": max_wait,
                "median_wait_s": median(first.waits),
                "deadline_s": deadline,
                "elapsed_s": elapsed,
                "outcomes": dict(first.outcomes),
            },
        )
    )
    rows.append(
        Row(
            scenario,
            f"zoomtoken, {OUTAGE_CALLERS} more callers in the cool-down",
            f"POSTs {second.posts}; longest wait {fmt_s(max(second.waits))}",
            "",
            "0 POSTs, fail fast",
            verdict(second.posts == 0 and max(second.waits) < 0.1, invariant=True),
            data={
                "posts": second.posts,
                "max_wait_s": max(second.waits),
                "elapsed_s": elapsed2,
                "outcomes": dict(second.outcomes),
            },
        )
    )
    rows.append(
        Row(
            scenario,
            f"naive lock-per-call manager, {OUTAGE_CALLERS} callers (no retries)",
            f"POSTs {naive_result.posts}",
            f"{naive_result.posts / max(first.posts, 1):.0f}× zoomtoken",
            data={"posts": naive_result.posts, "outcomes": dict(naive_result.outcomes)},
        )
    )
    if authlib_result is not None:
        rows.append(
            Row(
                scenario,
                f"Authlib, {OUTAGE_CALLERS} callers (no retries)",
                f"POSTs {authlib_result.posts}",
                f"{authlib_result.posts / max(first.posts, 1):.0f}× zoomtoken",
                data={"posts": authlib_result.posts, "outcomes": dict(authlib_result.outcomes)},
            )
        )
    raw = {
        "first_wave": {"posts": first.posts, "waits_s": first.waits},
        "second_wave": {"posts": second.posts, "waits_s": second.waits},
    }
    return rows, raw


def run_herd(mode: Mode) -> tuple[list[Row], dict[str, Any]]:
    return asyncio.run(_herd(mode))


def run_outage(mode: Mode) -> tuple[list[Row], dict[str, Any]]:
    return asyncio.run(_outage(mode))
