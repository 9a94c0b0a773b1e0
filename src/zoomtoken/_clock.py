"""The two clocks zoomtoken reads, behind one injectable object.

Token deadlines live on the **wall clock** (``time.time()``, seconds since the epoch) because
tokens expire in real time, including while a machine is suspended. The background refresher
also watches the **monotonic clock** (``time.monotonic()``, seconds), which keeps counting when
someone sets the wall clock back. Tests swap both for :class:`zoomtoken.testing.FakeClock`.
"""

from __future__ import annotations

import asyncio
import time as _time
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["Clock", "Sleep", "SystemClock"]

#: ``await sleep(seconds)``: the pause used by the refresher and the retry policy.
Sleep = Callable[[float], Awaitable[None]]


class Clock(Protocol):
    """Where zoomtoken reads the time."""

    def time(self) -> float:
        """Wall-clock time, seconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Monotonic time, seconds from an arbitrary origin."""
        ...


class SystemClock:
    """The real clocks: ``time.time()`` and ``time.monotonic()``."""

    __slots__ = ()

    # Builtins bound as attributes: the hot path calls them with no Python frame in between.
    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)

    def __repr__(self) -> str:
        return "SystemClock()"


async def real_sleep(seconds: float) -> None:
    """``asyncio.sleep`` with negative values treated as zero."""
    await asyncio.sleep(max(0.0, seconds))
