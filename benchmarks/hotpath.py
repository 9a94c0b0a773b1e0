"""Scenarios 1 and 2: ``await get_token()`` on a FRESH token, alone and among 1,000 tasks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ._common import Mode, Row, Status, fmt_ns, median, no_gc, verdict
from ._contenders import (
    AuthlibSide,
    NaiveLockManager,
    floor,
    load_authlib,
    make_manager,
    make_token,
    minimal_get_token,
)

__all__ = ["CHUNKS", "CONTENDED_TARGET", "HOT_TARGET", "run_contended", "run_hot_path"]

HOT_TARGET = 1.6
CONTENDED_TARGET = 1.15
#: A hot-path run is cut into this many chunks, floor and subject alternating chunk by chunk.
CHUNKS = 10


class _HasGetToken(Protocol):
    async def get_token(self) -> str: ...


class _FunctionAdapter:
    """Gives a plain coroutine function (the floor, the design minimum) a name to loop on."""

    def __init__(self, function: Callable[[], Awaitable[str]]) -> None:
        self.function = function


@dataclass
class _Subject:
    key: str
    label: str
    #: A contender, called as users call it: ``await subject.get_token()``.
    target: _HasGetToken | _FunctionAdapter
    #: Awaits per run (Authlib gets fewer: each of its calls is ~100 times longer).
    calls: int


async def _loop(target: _HasGetToken | _FunctionAdapter, calls: int) -> float:
    """ns per await over ``calls`` awaits in this one coroutine, the loop itself included.

    Contenders are called the way an application calls them, ``await manager.get_token()``
    (attribute lookup included); the floor is ``await floor()`` on a local name.
    """
    if isinstance(target, _FunctionAdapter):
        function = target.function
        start = time.perf_counter_ns()
        for _ in range(calls):
            await function()
        return (time.perf_counter_ns() - start) / calls
    start = time.perf_counter_ns()
    for _ in range(calls):
        await target.get_token()
    return (time.perf_counter_ns() - start) / calls


_FLOOR = _FunctionAdapter(floor)

Measure = Callable[[_HasGetToken | _FunctionAdapter, int], Awaitable[float]]


async def _paired_runs(
    subjects: list[_Subject], runs: int, measure: Measure, floor_calls: int, chunks: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each run measures every subject against the floor, chunk by chunk.

    A run of a subject alternates ``chunks`` floor chunks with ``chunks`` subject chunks (so
    both see the same background load) and keeps the fastest chunk of each: interference from
    other processes only ever adds time. Returns, per subject key, the per-call figure of each
    run and its ratio to the floor of the same run. The order of subjects rotates from run to
    run so none always runs first.
    """
    values: dict[str, list[float]] = {s.key: [] for s in subjects}
    values["floor"] = []
    ratios: dict[str, list[float]] = {s.key: [] for s in subjects}
    # Warm-up: let the specialising interpreter settle on every code path.
    for subject in subjects:
        await measure(subject.target, max(1, subject.calls // chunks))
    await measure(_FLOOR, max(1, floor_calls // chunks))
    for run in range(runs):
        shift = run % len(subjects)
        for subject in subjects[shift:] + subjects[:shift]:
            base = value = float("inf")
            with no_gc():
                for _ in range(chunks):
                    base = min(base, await measure(_FLOOR, max(1, floor_calls // chunks)))
                    value = min(
                        value, await measure(subject.target, max(1, subject.calls // chunks))
                    )
            values["floor"].append(base)
            values[subject.key].append(value)
            ratios[subject.key].append(value / base)
    return values, ratios


def _authlib_side() -> AuthlibSide | None:
    authlib_class = load_authlib()
    if authlib_class is None:
        return None
    return AuthlibSide(
        authlib_class,
        client_id="bench-client",
        client_secret="bench-secret",
        token_url="https://zoom.us/oauth/token",
        refresh_token="bench-refresh-token",
        expires_at=time.time() + 3600,
    )


def _rows(
    scenario: str,
    floor_label: str,
    subjects: list[_Subject],
    values: dict[str, list[float]],
    ratios: dict[str, list[float]],
    target: float,
    extra: dict[str, object],
) -> list[Row]:
    floor_ns = median(values["floor"])
    rows = [
        Row(
            scenario,
            floor_label,
            f"{fmt_ns(floor_ns)}/call",
            "1.00×",
            data={"key": "floor", "ns_per_call": floor_ns, "runs_ns": values["floor"], **extra},
        )
    ]
    for subject in subjects:
        ratio = median(ratios[subject.key])
        is_target = subject.key == "zoomtoken"
        rows.append(
            Row(
                scenario,
                subject.label,
                f"{fmt_ns(median(values[subject.key]))}/call",
                f"{ratio:.2f}×",
                f"≤ {target}× floor" if is_target else "",
                verdict(ratio <= target) if is_target else Status.INFO,
                data={
                    "key": subject.key,
                    "ns_per_call": median(values[subject.key]),
                    "ratio_to_floor": ratio,
                    "runs_ns": values[subject.key],
                    "runs_ratio": ratios[subject.key],
                    "calls_per_run": subject.calls,
                    **extra,
                },
            )
        )
    return rows


async def _hot_path(mode: Mode) -> list[Row]:
    scenario = "1 Hot path (FRESH)"
    token = make_token("bench-refresh-token")
    manager = make_manager(
        client_id="bench-client", client_secret="bench-secret", refresh_token="unused"
    )
    authlib = _authlib_side()
    try:
        async with manager:  # the background refresher runs, as in production
            subjects = [
                _Subject(
                    "zoomtoken", "zoomtoken `await manager.get_token()`", manager, mode.hot_calls
                ),
                _Subject(
                    "minimal",
                    "design minimum: `async def` reading a token + `time.time()` compare",
                    _FunctionAdapter(minimal_get_token(token)),
                    mode.hot_calls,
                ),
                _Subject(
                    "naive",
                    "naive manager: `asyncio.Lock` per call",
                    NaiveLockManager(token),
                    mode.hot_calls,
                ),
            ]
            if authlib is not None:
                subjects.append(
                    _Subject(
                        "authlib",
                        "Authlib `AsyncOAuth2Client` (`ensure_active_token` + token)",
                        authlib,
                        mode.authlib_calls,
                    )
                )
            await manager.get_token()  # loads the store: FRESH from now on
            values, ratios = await _paired_runs(
                subjects, mode.hot_runs, _loop, mode.hot_calls, CHUNKS
            )
    finally:
        if authlib is not None:
            await authlib.aclose()
    rows = _rows(
        scenario,
        "floor: bare `await` of `async def` returning a constant",
        subjects,
        values,
        ratios,
        HOT_TARGET,
        {"chunks": CHUNKS},
    )
    if authlib is None:
        rows.append(
            Row(
                scenario,
                "Authlib",
                "not installed: pip install -e '.[bench]'",
                status=Status.SKIP,
            )
        )
    return rows


def _contended_measure(tasks: int, rounds: int) -> Measure:
    async def measure(target: _HasGetToken | _FunctionAdapter, _calls: int) -> float:
        """ns per call when ``tasks`` tasks each interleave it with ``sleep(0)``."""
        if isinstance(target, _FunctionAdapter):
            function = target.function

            async def worker() -> None:
                for _ in range(rounds):
                    await function()
                    await asyncio.sleep(0)

        else:
            contender = target

            async def worker() -> None:
                for _ in range(rounds):
                    await contender.get_token()
                    await asyncio.sleep(0)

        start = time.perf_counter_ns()
        await asyncio.gather(*(worker() for _ in range(tasks)))
        return (time.perf_counter_ns() - start) / (tasks * rounds)

    return measure


async def _contended(mode: Mode) -> list[Row]:
    scenario = "2 Contended hot path"
    tasks, rounds = mode.contended_tasks, mode.contended_rounds
    token = make_token("bench-refresh-token")
    manager = make_manager(
        client_id="bench-client", client_secret="bench-secret", refresh_token="unused"
    )
    authlib = _authlib_side()
    try:
        async with manager:
            subjects = [
                _Subject("zoomtoken", "zoomtoken", manager, 0),
                _Subject(
                    "naive", "naive manager: `asyncio.Lock` per call", NaiveLockManager(token), 0
                ),
            ]
            if authlib is not None:
                subjects.append(_Subject("authlib", "Authlib", authlib, 0))
            await manager.get_token()
            # Whole runs, not chunks: each run is already a full 1,000-task gather.
            values, ratios = await _paired_runs(
                subjects, mode.contended_runs, _contended_measure(tasks, rounds), 0, chunks=1
            )
    finally:
        if authlib is not None:
            await authlib.aclose()
    shape = f"{tasks:,} tasks × {rounds} × (`await get_token()`; `await sleep(0)`)"
    return _rows(
        scenario,
        f"floor, {shape}",
        subjects,
        values,
        ratios,
        CONTENDED_TARGET,
        {"tasks": tasks, "rounds": rounds},
    )


def run_hot_path(mode: Mode) -> list[Row]:
    return asyncio.run(_hot_path(mode))


def run_contended(mode: Mode) -> list[Row]:
    return asyncio.run(_contended(mode))
