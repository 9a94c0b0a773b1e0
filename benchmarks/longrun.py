"""Scenario 5: 30 simulated days of background refreshes, memory and tasks sampled per day.

The manager and the emulator share one :class:`FakeClock` with ``autojump=True``: every
virtual sleep (the refresher sleeps in chunks of at most 15 s) moves both clocks to its own
deadline at once, so a day passes in a fraction of a second while each refresh is still a real
HTTP round trip on 127.0.0.1. A driver coroutine calls ``get_token()`` between the
refresher's steps, the way an application would, and samples once per simulated day.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any

from zoomtoken import TokenManager
from zoomtoken.testing import FakeClock, ZoomOAuthEmulator

from ._common import Mode, Row, Status, fmt_bytes, slope, verdict

__all__ = ["MEMORY_SLOPE_LIMIT", "TASK_SLOPE_LIMIT", "run_long"]

DAY = 86_400.0
#: "Flat": less than this many bytes per simulated day (about 30 refreshes a day, so a leak
#: of one small object per refresh already crosses it) ...
MEMORY_SLOPE_LIMIT = 1024.0
#: ... and no task added per day.
TASK_SLOPE_LIMIT = 0.01
#: The memory curve is a sawtooth of about 20 KiB: every refresh leaves a few cancelled
#: timer handles (aiohttp's request timeouts) in the event loop, which asyncio purges only
#: once they outnumber the live ones, every three or four simulated days (in real time they
#: would simply expire). A slope is judged only over enough days to average that out.
MIN_JUDGED_DAYS = 14
#: tracemalloc keeps this many frames: enough to see that a token string made in
#: ``secrets.token_urlsafe`` was made for the emulator (more frames make sampling slow).
TRACE_FRAMES = 3


@dataclass
class Sample:
    day: int
    memory: int
    memory_without_emulator: int
    tasks: int
    refreshes: int
    wall_seconds: float


def _sample(day: int, clock: FakeClock, emulator: ZoomOAuthEmulator, started: float) -> Sample:
    # FakeClock records every sleep in .sleeps for tests to inspect: a test tool's history,
    # not the manager's memory. Cleared before each sample.
    clock.sleeps.clear()
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            # The sampler's own bookkeeping is not the manager's.
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "*/benchmarks/*"),
        ]
    )
    # The emulator keeps every token it ever issued (to tell a reused refresh token from an
    # unknown one): that growth is the emulator's, so it is also reported apart.
    without = snapshot.filter_traces(
        [tracemalloc.Filter(False, "*/zoomtoken/testing.py", all_frames=True)]
    )
    return Sample(
        day=day,
        memory=sum(stat.size for stat in snapshot.statistics("filename")),
        memory_without_emulator=sum(stat.size for stat in without.statistics("filename")),
        tasks=len(asyncio.all_tasks()),
        refreshes=emulator.counters.refreshes,
        wall_seconds=time.perf_counter() - started,
    )


async def _simulate(days: int) -> tuple[list[Sample], dict[str, Any]]:
    clock = FakeClock(wall=time.time(), autojump=True)
    started = time.perf_counter()
    async with ZoomOAuthEmulator(reuse_detection=True, clock=clock, sleep=clock.sleep) as zoom:
        seed = zoom.create_grant()
        manager = TokenManager(
            client_id=zoom.client_id,
            client_secret=zoom.client_secret,
            refresh_token=seed,
            token_url=zoom.token_url,
            revoke_url=zoom.revoke_url,
            clock=clock,
            sleep=clock.sleep,
        )
        samples: list[Sample] = []
        async with manager:
            await manager.get_token()
            origin = clock.time()
            samples.append(_sample(0, clock, zoom, started))
            day = 1
            while day <= days:
                await manager.get_token()
                # One real yield: the refresher's autojumping sleep moves the clock meanwhile.
                await asyncio.sleep(0)
                if clock.time() >= origin + day * DAY:
                    samples.append(_sample(day, clock, zoom, started))
                    day += 1
            status = manager.status()
        counters = zoom.counters
    # Both closed (the emulator's connection handlers end with the manager's session).
    await asyncio.sleep(0)
    extra = {
        "refreshes": counters.refreshes,
        "token_requests": counters.token_requests,
        "invalid_grant": counters.invalid_grant,
        "reuse_detected": counters.reuse_detected,
        "manager_failures": status.failures,
        "tasks_after_close": len(asyncio.all_tasks()) - 1,  # minus this coroutine's own
    }
    return samples, extra


def run_long(mode: Mode) -> tuple[list[Row], dict[str, Any]]:
    scenario = f"5 Long run ({mode.days} simulated days, FakeClock autojump)"
    tracemalloc.start(TRACE_FRAMES)
    try:
        samples, extra = asyncio.run(_simulate(mode.days))
    finally:
        tracemalloc.stop()
    # Day 0 is the warm-up (first connection, first caches): slopes start at day 1.
    steady = samples[1:] if len(samples) > 2 else samples
    days = [float(s.day) for s in steady]
    memory_slope = slope(days, [float(s.memory) for s in steady])
    own_slope = slope(days, [float(s.memory_without_emulator) for s in steady])
    task_slope = slope(days, [float(s.tasks) for s in steady])
    per_day = extra["refreshes"] / mode.days
    judged = mode.days >= MIN_JUDGED_DAYS
    rows = [
        Row(
            scenario,
            "zoomtoken: refreshes, POSTs, invalid_grant, failures",
            f"{extra['refreshes']} ({per_day:.1f}/day), {extra['token_requests']}, "
            f"{extra['invalid_grant']}, {extra['manager_failures']}",
            "",
            "POSTs = refreshes; 0; 0",
            verdict(
                extra["refreshes"] == extra["token_requests"]
                and extra["invalid_grant"] == 0
                and extra["manager_failures"] == 0
                and extra["refreshes"] >= mode.days * 24,
                invariant=True,
            ),
            data=extra,
        ),
        Row(
            scenario,
            "memory slope, manager + session (emulator's token log excluded)",
            f"{fmt_bytes(own_slope)}/day",
            f"{own_slope / max(per_day, 1):+.1f} B/refresh",
            f"|slope| < {fmt_bytes(MEMORY_SLOPE_LIMIT)}/day"
            if judged
            else f"judged from {MIN_JUDGED_DAYS} days up",
            verdict(abs(own_slope) < MEMORY_SLOPE_LIMIT) if judged else Status.INFO,
            data={
                "bytes_per_day": own_slope,
                "per_day": [s.memory_without_emulator for s in samples],
            },
        ),
        Row(
            scenario,
            "memory slope, whole process (emulator included)",
            f"{fmt_bytes(memory_slope)}/day",
            f"{memory_slope / max(per_day, 1):+.1f} B/refresh",
            data={"bytes_per_day": memory_slope, "per_day": [s.memory for s in samples]},
        ),
        Row(
            scenario,
            "`len(asyncio.all_tasks())` slope; tasks left after `aclose()`",
            f"{task_slope:+.3f}/day (days: {min(s.tasks for s in samples)}–"
            f"{max(s.tasks for s in samples)}); {extra['tasks_after_close']}",
            "",
            f"|slope| < {TASK_SLOPE_LIMIT}/day; 0 left",
            verdict(abs(task_slope) < TASK_SLOPE_LIMIT and extra["tasks_after_close"] == 0),
            data={"tasks_per_day": task_slope, "tasks_after_close": extra["tasks_after_close"]},
        ),
    ]
    raw = {"samples": [vars(s) for s in samples], **extra}
    return rows, raw
