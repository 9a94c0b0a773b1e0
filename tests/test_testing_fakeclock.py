"""FakeClock: virtual wall and monotonic clocks with a virtual sleep."""

from __future__ import annotations

import asyncio

import pytest

from zoomtoken._clock import Clock
from zoomtoken.testing import FakeClock

WALL = 1_700_000_000.0
MONO = 1000.0


def test_fake_clock_satisfies_the_clock_protocol_and_starts_where_told() -> None:
    """A FakeClock is a Clock whose two readings start at the constructor's values."""
    clock: Clock = FakeClock(wall=123.0, monotonic=4.5)
    assert clock.time() == 123.0
    assert clock.monotonic() == 4.5


async def test_advance_moves_both_clocks_by_the_same_amount() -> None:
    """advance() moves the wall and the monotonic clock forward together."""
    clock = FakeClock()
    await clock.advance(90.5)
    assert clock.time() == WALL + 90.5
    assert clock.monotonic() == MONO + 90.5


async def test_advance_rejects_negative_durations() -> None:
    """Time never runs backwards through advance()."""
    clock = FakeClock()
    with pytest.raises(ValueError, match="non-negative"):
        await clock.advance(-1)


async def test_sleep_blocks_until_the_clock_reaches_its_deadline() -> None:
    """A sleeper stays blocked while the clock is short of its deadline and wakes on it."""
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(10))
    await clock.advance(9.999)
    assert not task.done()
    assert clock.pending_sleepers == 1
    assert clock.next_deadline == MONO + 10
    await clock.advance(0.001)
    assert task.done()
    assert clock.pending_sleepers == 0
    assert clock.next_deadline is None


async def test_advance_wakes_sleepers_in_deadline_order_at_their_own_deadline() -> None:
    """Each sleeper wakes in deadline order and sees the clocks at its own deadline."""
    clock = FakeClock()
    woke: list[tuple[str, float, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic(), clock.time()))

    tasks = [
        asyncio.create_task(sleeper("c", 30)),
        asyncio.create_task(sleeper("a", 10)),
        asyncio.create_task(sleeper("b", 20)),
    ]
    await clock.advance(100)
    await asyncio.gather(*tasks)
    assert woke == [
        ("a", MONO + 10, WALL + 10),
        ("b", MONO + 20, WALL + 20),
        ("c", MONO + 30, WALL + 30),
    ]
    assert clock.monotonic() == MONO + 100


async def test_advance_honours_chained_sleeps_started_inside_the_window() -> None:
    """Sleeps started by a woken task that end inside the window also complete, on time."""
    clock = FakeClock()
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            await clock.sleep(10)
            ticks.append(clock.monotonic() - MONO)

    task = asyncio.create_task(ticker())
    await clock.advance(35)
    assert ticks == [10, 20, 30]
    assert clock.pending_sleepers == 1
    assert clock.next_deadline == MONO + 40
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_advance_lets_a_woken_task_finish_work_behind_other_awaits() -> None:
    """A task waiting on a task that sleeps sees the result before advance() returns."""
    clock = FakeClock()

    async def inner() -> str:
        await clock.sleep(5)
        return "done"

    async def outer() -> str:
        return await asyncio.create_task(inner())

    task = asyncio.create_task(outer())
    await clock.advance(5)
    assert task.done()
    assert task.result() == "done"


async def test_sleep_records_every_requested_duration_with_negatives_as_zero() -> None:
    """sleeps lists each requested duration, negative values recorded as 0."""
    clock = FakeClock()
    await clock.sleep(0)
    await clock.sleep(-3)
    task = asyncio.create_task(clock.sleep(2.5))
    await clock.advance(2.5)
    await task
    assert clock.sleeps == [0.0, 0.0, 2.5]


async def test_sleep_zero_yields_once_without_moving_the_clock() -> None:
    """sleep(0) lets other ready tasks run and leaves both clocks alone."""
    clock = FakeClock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    await clock.sleep(0)
    assert ran == ["other"]
    assert (clock.time(), clock.monotonic()) == (WALL, MONO)
    await task


async def test_suspend_moves_only_the_wall_clock_and_wakes_nobody() -> None:
    """A suspended machine's wall clock jumps while monotonic time and sleepers stand still."""
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(60))
    await asyncio.sleep(0)
    clock.suspend(7200)
    await asyncio.sleep(0)
    assert clock.time() == WALL + 7200
    assert clock.monotonic() == MONO
    assert not task.done()
    assert clock.pending_sleepers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_suspend_rejects_negative_durations() -> None:
    """A machine cannot be suspended for negative time."""
    with pytest.raises(ValueError, match="non-negative"):
        FakeClock().suspend(-1)


def test_jump_wall_steps_the_wall_clock_both_ways_and_leaves_monotonic_alone() -> None:
    """An NTP step moves the wall clock forward or back; monotonic time does not move."""
    clock = FakeClock()
    clock.jump_wall(-300)
    assert clock.time() == WALL - 300
    clock.jump_wall(500)
    assert clock.time() == WALL + 200
    assert clock.monotonic() == MONO


async def test_advance_after_a_wall_jump_keeps_the_offset() -> None:
    """After a wall-clock step, advance() moves both clocks by the same amount from there."""
    clock = FakeClock()
    clock.jump_wall(-60)
    await clock.advance(10)
    assert clock.time() == WALL - 50
    assert clock.monotonic() == MONO + 10


async def test_cancelling_a_sleeper_removes_it() -> None:
    """A cancelled sleeper no longer counts as pending and never wakes."""
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(10))
    await asyncio.sleep(0)
    assert clock.pending_sleepers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending_sleepers == 0
    assert clock.next_deadline is None
    await clock.advance(20)
    assert clock.monotonic() == MONO + 20


async def test_many_cancelled_sleepers_do_not_accumulate() -> None:
    """Cancelled sleepers are dropped from the queue, so repeated restarts leak nothing."""
    clock = FakeClock()
    for _ in range(500):
        task = asyncio.create_task(clock.sleep(10))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert clock.pending_sleepers == 0
    assert len(clock._heap) <= 64


async def test_autojump_sleep_returns_at_once_with_both_clocks_at_its_deadline() -> None:
    """With autojump, a sleep moves both clocks to its deadline and returns immediately."""
    clock = FakeClock(autojump=True)
    await clock.sleep(3600)
    assert clock.monotonic() == MONO + 3600
    assert clock.time() == WALL + 3600
    assert clock.sleeps == [3600]
    assert clock.pending_sleepers == 0


async def test_autojump_simulates_thirty_days_of_hourly_work_instantly() -> None:
    """Autojump runs a month of hourly sleeps in virtual time without real waiting."""
    clock = FakeClock(autojump=True)
    for _ in range(30 * 24):
        await clock.sleep(3600)
    assert clock.time() == WALL + 30 * 86400
    assert len(clock.sleeps) == 720


async def test_autojump_wakes_sleepers_registered_before_it_was_turned_on() -> None:
    """An autojump past a pending sleeper's deadline wakes that sleeper too."""
    clock = FakeClock()
    early = asyncio.create_task(clock.sleep(10))
    await asyncio.sleep(0)
    clock.autojump = True
    await clock.sleep(50)
    await asyncio.sleep(0)
    assert early.done()
    assert clock.monotonic() == MONO + 50


def test_fake_clock_can_be_created_outside_a_loop_and_used_in_several() -> None:
    """No loop is captured at construction: one clock serves sleeps in successive loops."""
    clock = FakeClock()

    async def one_sleep() -> None:
        task = asyncio.create_task(clock.sleep(1))
        await clock.advance(1)
        await task

    asyncio.run(one_sleep())
    asyncio.run(one_sleep())
    assert clock.monotonic() == MONO + 2


def test_fake_clock_repr_shows_both_clocks() -> None:
    """The repr names both clock readings and the autojump mode."""
    text = repr(FakeClock(wall=5.0, monotonic=6.0))
    assert text == "FakeClock(wall=5.0, monotonic=6.0, autojump=False, pending_sleepers=0)"


async def test_stall_moves_both_clocks_and_wakes_sleepers_only_on_the_next_advance() -> None:
    """stall() jumps wall and monotonic time together; due sleepers run at advance(0)."""
    clock = FakeClock()
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.sleep(5)
        woke.append(clock.monotonic())

    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0)
    wall, mono = clock.time(), clock.monotonic()
    clock.stall(60)
    assert (clock.time() - wall, clock.monotonic() - mono) == (60, 60)
    assert woke == []
    await clock.advance(0)
    await task
    assert woke == [mono + 60]
