"""cProfile of the hot path and of the herd; the top entries go to ``profile.txt``.

cProfile is deterministic: besides where the time goes, it gives exact call counts, which is
what proves "no lock, no task, no I/O" on the hot path and counts the event-loop callbacks a
herd costs per caller (zoomtoken against the bare-future reference).
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
from typing import Any

import aiohttp

from zoomtoken.testing import ZoomOAuthEmulator

from ._common import Mode, Row
from ._contenders import make_manager
from .herd import HERD_LATENCY, future_herd, zoomtoken_herd

__all__ = ["run_profiles"]

TOP = 22


def _table(profile: cProfile.Profile, sort: str, limit: int = TOP) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats(sort).print_stats(limit)
    # Drop pstats' preamble up to the column header.
    text = out.getvalue()
    start = text.find("   ncalls")
    return text[start:].rstrip() + "\n" if start >= 0 else text


def _calls(profile: cProfile.Profile) -> dict[str, int]:
    """Primitive call counts by ``file:function`` (directories stripped)."""
    stats = pstats.Stats(profile).strip_dirs()
    counts: dict[str, int] = {}
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, function), (primitive, *_rest) in raw.items():
        key = f"{filename}:{function}"
        counts[key] = counts.get(key, 0) + primitive
    return counts


def _callbacks(counts: dict[str, int]) -> int:
    """Event-loop callbacks run (``Handle._run``), i.e. task steps and future callbacks."""
    return counts.get("events.py:_run", 0)


async def _hot(calls: int) -> tuple[cProfile.Profile, dict[str, int]]:
    manager = make_manager(
        client_id="bench-client", client_secret="bench-secret", refresh_token="unused"
    )
    async with manager:
        await manager.get_token()
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(calls):
            await manager.get_token()
        profile.disable()
    return profile, _calls(profile)


async def _herd(callers: int) -> tuple[cProfile.Profile, cProfile.Profile]:
    async with (
        ZoomOAuthEmulator(latency=HERD_LATENCY, reuse_detection=True) as emulator,
        aiohttp.ClientSession() as session,
    ):
        await zoomtoken_herd(emulator, session, 100)  # warm the connection
        ours = cProfile.Profile()
        ours.enable()
        await zoomtoken_herd(emulator, session, callers)
        ours.disable()
        reference = cProfile.Profile()
        reference.enable()
        await future_herd(callers, HERD_LATENCY)
        reference.disable()
    return ours, reference


def run_profiles(mode: Mode) -> tuple[list[Row], str, dict[str, Any]]:
    """Profile both; return rows, the text for profile.txt, and raw counts."""
    hot_calls = 100_000
    hot, hot_counts = asyncio.run(_hot(hot_calls))
    callers = mode.profile_herd
    ours, reference = asyncio.run(_herd(callers))
    our_counts, ref_counts = _calls(ours), _calls(reference)

    hot_functions = {k: v for k, v in hot_counts.items() if v >= hot_calls}
    per_caller = _callbacks(our_counts) / callers
    ref_per_caller = _callbacks(ref_counts) / callers
    shields = our_counts.get("tasks.py:shield", 0)
    ensure_future = our_counts.get("tasks.py:ensure_future", 0)
    sections = [
        f"# Hot path: {hot_calls:,} x `await manager.get_token()` on a FRESH token\n",
        "Functions called once per get_token() or more:\n"
        + "".join(f"  {count:>9,}  {name}\n" for name, count in sorted(hot_functions.items())),
        "\nBy internal time:\n" + _table(hot, "tottime", 12),
        f"\n# Herd: {callers:,} callers on an EXPIRED token (zoomtoken)\n",
        "(cProfile counts a coroutine once per resumption: a caller that waits shows twice.)\n",
        f"event-loop callbacks (Handle._run): {_callbacks(our_counts):,} = "
        f"{per_caller:.2f} per caller; asyncio.shield calls: {shields:,}; "
        f"ensure_future calls: {ensure_future:,}\n",
        "\nBy internal time:\n" + _table(ours, "tottime"),
        "\nBy cumulative time:\n" + _table(ours, "cumulative"),
        f"\n# Herd reference: {callers:,} callers on one bare asyncio.Future\n",
        f"event-loop callbacks (Handle._run): {_callbacks(ref_counts):,} = "
        f"{ref_per_caller:.2f} per caller\n",
        "\nBy internal time:\n" + _table(reference, "tottime", 12),
    ]
    text = "".join(sections)
    rows = [
        Row(
            "Profile",
            "hot path: Python functions run per `get_token()`",
            ", ".join(
                f"{name} ×{count / hot_calls:g}" for name, count in sorted(hot_functions.items())
            ),
            data={"counts": hot_functions},
        ),
        Row(
            "Profile",
            f"herd of {callers:,}: event-loop callbacks per caller",
            f"zoomtoken {per_caller:.2f}, bare future {ref_per_caller:.2f}",
            f"{per_caller / ref_per_caller:.2f}×" if ref_per_caller else "",
            data={
                "zoomtoken_per_caller": per_caller,
                "reference_per_caller": ref_per_caller,
                "shield_calls": shields,
            },
        ),
    ]
    raw = {"hot": hot_functions, "herd": our_counts, "reference": ref_counts}
    return rows, text, raw
