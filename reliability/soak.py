"""Soak: one manager, 30 simulated days, random faults, callers all along.

A :class:`FakeClock` with autojump lets the background refresher run about 900 rotations of
Zoom's one-hour tokens in seconds. Each refresh has a chance of meeting a few faults the server
recovers from (5xx, 429, resets, timeouts, malformed answers — never one that rotates, which
would lose the grant by construction). Once a simulated day, the run samples the memory the
manager side holds (tracemalloc, the emulator's own allocations left out: it remembers every
token it ever issued) and the number of asyncio tasks, and reports their slopes.
"""

from __future__ import annotations

import asyncio
import gc
import random
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

from zoomtoken import Event, EventKind, TokenManager, TokenState, ZoomTokenError
from zoomtoken.stores import FileStore
from zoomtoken.testing import FakeClock, Fault, ZoomOAuthEmulator

from ._harness import Callers, memory_backed_dir, slope

__all__ = ["SoakResult", "run_soak"]

DAY = 86_400.0
USER = "soak-user"
# Chance that a refresh meets faults, and the chance that a faulted refresh meets enough of
# them to exhaust a whole burst (then the cool-down has to carry it).
FAULT_CHANCE = 0.3
LONG_OUTAGE_CHANCE = 0.05
# Chance per refresh that an API call answers 401 and a caller invalidates the token.
INVALIDATE_CHANCE = 0.02
HTTP_TIMEOUT = 0.2


def _random_fault(rng: random.Random) -> Fault:
    choice = rng.randrange(10)
    if choice < 4:
        return Fault.status(rng.choice((500, 502, 503, 504)))
    if choice == 4:
        return Fault.rate_limited(rng.choice((None, rng.randint(1, 30))))
    if choice == 5:
        return Fault.reset()
    if choice == 6:
        return Fault.hang()
    if choice == 7:
        return Fault.malformed('{"access_token": "x", "expires_')
    if choice == 8:
        return Fault.malformed("<html>busy</html>", content_type="text/html")
    return Fault.malformed(b"[" * (256 * 1024))


@dataclass
class SoakResult:
    """Figures of one soak."""

    days: float = 0.0
    refreshes: int = 0
    server_rotations: int = 0
    generations: int = 0
    faults_served: int = 0
    invalid_grant: int = 0
    reuse_detected: int = 0
    caller_calls: int = 0
    caller_errors_while_valid: int = 0
    served_expired: int = 0
    invalidations: int = 0
    invalidate_errors: list[str] = field(default_factory=list)
    memory_points: list[tuple[float, float]] = field(default_factory=list)
    task_points: list[tuple[float, float]] = field(default_factory=list)
    #: The largest allocation sites at the last sample: where to look if memory grows.
    top_allocations: list[tuple[str, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def memory_slope(self) -> float:
        """Bytes per simulated day, least squares over the whole run."""
        return slope(self.memory_points)

    @property
    def settled_memory_slope(self) -> float:
        """Bytes per simulated day of the lower envelope: the least sample of each 5-day
        window after a 3-day warm-up.

        The emulator's server drops and opens connections at simulation speed; each leaves a
        cancelled 75 s keep-alive timer in the loop's heap until asyncio purges them, a
        sawtooth that says nothing about the manager. A leak lifts the minima too.
        """
        settled = [(day, size) for day, size in self.memory_points if day > 3]
        windows: dict[int, list[tuple[float, float]]] = {}
        for day, size in settled:
            windows.setdefault(int((day - 3) // 5), []).append((day, size))
        minima = [min(points, key=lambda point: point[1]) for points in windows.values()]
        return slope(minima) if len(minima) >= 3 else 0.0

    @property
    def task_slope(self) -> float:
        """Tasks per simulated day."""
        return slope(self.task_points)

    @property
    def ok(self) -> bool:
        """True when the soak kept every promise."""
        return not self.problems


# Allocations the manager does not own, left out of its figure: what the emulator keeps for
# ever (every token it issued), its aiohttp server, the fake clock's record of every sleep,
# and this harness. One frame per trace keeps tracemalloc's overhead near 3x (three frames,
# enough to tell who called ``call_at``, cost 10x).
_NOT_OURS = (
    "*/zoomtoken/testing.py",
    "*/aiohttp/web_*.py",
    "*/reliability/*",
    "*/secrets.py",
    "*/base64.py",
    tracemalloc.__file__,
)
_FRAMES = 1


def _manager_memory() -> tuple[int, list[tuple[str, int]]]:
    """Bytes traced outside the emulator, and the five largest allocation sites."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, pattern, all_frames=True) for pattern in _NOT_OURS]
    )
    stats = snapshot.statistics("lineno")
    top = [(str(stat.traceback[0]), stat.size) for stat in stats[:5]]
    return sum(stat.size for stat in stats), top


async def run_soak(*, days: float = 30.0, seed: int = 7, lifetime: int = 3599) -> SoakResult:
    """Run one manager for ``days`` simulated days against a flaky emulator."""
    started = time.perf_counter()
    rng = random.Random(seed)
    result = SoakResult(days=days)
    clock = FakeClock(autojump=True)
    with tempfile.TemporaryDirectory(prefix="soak-", dir=memory_backed_dir()) as tmp:
        async with ZoomOAuthEmulator(
            clock=clock, sleep=asyncio.sleep, reuse_detection=True, expires_in=lifetime
        ) as emulator:
            refresh_token = emulator.create_grant(user_id=USER)
            pending_invalidate = False

            def on_event(event: Event) -> None:
                nonlocal pending_invalidate
                if event.kind is not EventKind.REFRESH_STARTED:
                    return
                if rng.random() < INVALIDATE_CHANCE:
                    pending_invalidate = True
                if rng.random() < FAULT_CHANCE:
                    count = (
                        rng.randint(6, 9)
                        if rng.random() < LONG_OUTAGE_CHANCE
                        else rng.randint(1, 3)
                    )
                    emulator.inject(*(_random_fault(rng) for _ in range(count)))

            manager = TokenManager(
                client_id=emulator.client_id,
                client_secret=emulator.client_secret,
                refresh_token=refresh_token,
                store=FileStore(Path(tmp) / "soak.json"),
                close_store=True,
                token_url=emulator.token_url,
                revoke_url=emulator.revoke_url,
                clock=clock,
                sleep=clock.sleep,
                http_timeout=HTTP_TIMEOUT,
                rng=random.Random(seed + 1),
                on_event=on_event,
            )
            async with manager, Callers(manager, 4, pause=0.0005) as callers:
                await manager.get_token()
                first_generation = manager.generation or 0
                origin = clock.time()
                end = origin + days * DAY
                # The first day warms up (caches, pools, first connections), untraced.
                next_sample = origin + DAY
                try:
                    while clock.time() < end:
                        await asyncio.sleep(0.001)
                        # A hung request holds a server task until released; the client gave
                        # up on it long ago.
                        emulator.release_hung()
                        if pending_invalidate:
                            pending_invalidate = False
                            result.invalidations += 1
                            try:
                                await manager.invalidate(await manager.get_token())
                            except ZoomTokenError as exc:
                                # An explicit refresh reports its failure; callers do not.
                                result.invalidate_errors.append(type(exc).__name__)
                        # Sampled between refreshes, so no request's buffers are counted.
                        if clock.time() >= next_sample and manager.state is TokenState.FRESH:
                            day = (clock.time() - origin) / DAY
                            # The fake clock records every sleep it served (and keeps the
                            # floats alive): harness memory, not the manager's.
                            clock.sleeps.clear()
                            gc.collect()
                            if not tracemalloc.is_tracing():
                                tracemalloc.start(_FRAMES)
                            size, result.top_allocations = _manager_memory()
                            result.memory_points.append((day, float(size)))
                            result.task_points.append((day, float(len(asyncio.all_tasks()))))
                            next_sample += DAY
                finally:
                    tracemalloc.stop()
                await callers.stop()
                result.caller_calls = callers.calls
                result.caller_errors_while_valid = len(callers.errors_while_valid)
                result.served_expired = callers.served_expired
                result.refreshes = manager.status().refreshes
                result.generations = (manager.generation or 0) - first_generation + 1
            counters = emulator.counters
            result.server_rotations = counters.refreshes
            result.faults_served = counters.faults_served
            result.invalid_grant = counters.invalid_grant
            result.reuse_detected = counters.reuse_detected
    _judge(result)
    result.seconds = time.perf_counter() - started
    return result


def _judge(result: SoakResult) -> None:
    if result.server_rotations != result.generations:
        result.problems.append(
            f"{result.server_rotations} server rotations for {result.generations} generations"
        )
    if result.invalid_grant or result.reuse_detected:
        result.problems.append(
            f"invalid_grant {result.invalid_grant}, reuse detected {result.reuse_detected}"
        )
    if result.caller_errors_while_valid:
        result.problems.append(f"{result.caller_errors_while_valid} caller errors while valid")
    if result.served_expired:
        result.problems.append(f"{result.served_expired} expired tokens served")
    # Flat: under 1 KiB a day once settled (one small object kept per refresh would be
    # ~3 KiB a day), and under 0.05 tasks a day.
    if result.settled_memory_slope > 1024:
        result.problems.append(f"memory grows {result.settled_memory_slope:.0f} bytes/day")
    if len(result.task_points) >= 3 and result.task_slope > 0.05:
        result.problems.append(f"task count grows {result.task_slope:.2f} tasks/day")
