"""Shared pieces: result rows, run modes, the machine description, timing helpers."""

from __future__ import annotations

import contextlib
import enum
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "Mode",
    "Row",
    "Status",
    "fmt_bytes",
    "fmt_ns",
    "fmt_s",
    "machine_info",
    "median",
    "no_gc",
    "slope",
]


class Status(enum.Enum):
    """How a row fares against its target."""

    #: Met its target.
    PASS = "pass"
    #: Missed a timing or size target: reported, never fatal.
    MISS = "MISS"
    #: Broke an invariant (a count that must hold exactly, a caller past its deadline,
    #: a scenario that crashed): the run exits 1.
    FAIL = "FAIL"
    #: A reference figure or a contender: no target.
    INFO = "info"
    #: Could not run (an optional contender is not installed).
    SKIP = "skipped"


@dataclass
class Row:
    """One line of the results table (and of the JSON)."""

    scenario: str
    subject: str
    measured: str
    ratio: str = ""
    target: str = ""
    status: Status = Status.INFO
    #: Raw numbers for the JSON (seconds, nanoseconds, bytes, counts: named by unit).
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "subject": self.subject,
            "measured": self.measured,
            "ratio": self.ratio,
            "target": self.target,
            "status": self.status.value,
            "data": self.data,
        }


def verdict(ok: bool, *, invariant: bool = False) -> Status:
    """PASS, or MISS for a missed target (FAIL when ``invariant``)."""
    if ok:
        return Status.PASS
    return Status.FAIL if invariant else Status.MISS


@dataclass(frozen=True)
class Mode:
    """Sizes of one run: ``full()`` for ``make bench``, ``quick()`` for the CI smoke run."""

    name: str
    #: Hot path: timed runs (median taken), awaits per run, and awaits per run for Authlib
    #: (about 200 times slower per call, so fewer calls give the same run length).
    hot_runs: int
    hot_calls: int
    authlib_calls: int
    #: Contended hot path: tasks, get_token()/sleep(0) rounds per task, timed runs.
    contended_tasks: int
    contended_rounds: int
    contended_runs: int
    #: Herd: caller counts, and paired (reference, zoomtoken) runs per count.
    herd_sizes: tuple[int, ...]
    herd_repeats: int
    #: Long run: simulated days.
    days: int
    #: Footprint: managers created, import-time subprocess runs.
    managers: int
    import_runs: int
    #: Herd size profiled with cProfile.
    profile_herd: int

    @classmethod
    def full(cls) -> Mode:
        return cls(
            name="full",
            hot_runs=9,
            hot_calls=200_000,
            authlib_calls=10_000,
            contended_tasks=1_000,
            contended_rounds=100,
            contended_runs=7,
            herd_sizes=(1_000, 10_000, 100_000),
            herd_repeats=3,
            days=30,
            managers=1_000,
            import_runs=7,
            profile_herd=100_000,
        )

    @classmethod
    def quick(cls) -> Mode:
        return cls(
            name="quick",
            hot_runs=5,
            hot_calls=50_000,
            authlib_calls=2_000,
            contended_tasks=1_000,
            contended_rounds=20,
            contended_runs=3,
            herd_sizes=(1_000, 10_000),
            herd_repeats=2,
            days=3,
            managers=1_000,
            import_runs=3,
            profile_herd=10_000,
        )


# ------------------------------------------------------------------------------ formatting


def fmt_ns(ns: float) -> str:
    """Nanoseconds, scaled to ns / µs / ms."""
    if ns >= 1e6:
        return f"{ns / 1e6:,.2f} ms"
    if ns >= 1e4:
        return f"{ns / 1e3:,.1f} µs"
    return f"{ns:,.0f} ns"


def fmt_s(seconds: float) -> str:
    """Seconds, scaled to µs / ms / s."""
    if seconds >= 1.0:
        return f"{seconds:,.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:,.1f} ms"
    return f"{seconds * 1e6:,.0f} µs"


def fmt_bytes(count: float) -> str:
    """Bytes, scaled to B / KiB / MiB, sign kept."""
    size = abs(count)
    sign = "-" if count < 0 else ""
    if size >= 1024 * 1024:
        return f"{sign}{size / (1024 * 1024):,.2f} MiB"
    if size >= 10 * 1024:
        return f"{sign}{size / 1024:,.1f} KiB"
    return f"{sign}{size:,.0f} B"


# ------------------------------------------------------------------------------ statistics


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (0 with fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mean_x = statistics.fmean(xs)
    mean_y = statistics.fmean(ys)
    den = sum((x - mean_x) ** 2 for x in xs)
    if den == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / den


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Collect, then keep the cyclic GC off for a timed section (restored afterwards)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ------------------------------------------------------------------------------ machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' (src modified)' if dirty else ''}"


def _clocksource() -> str:
    path = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
    try:
        with open(path, encoding="utf-8") as source:
            return source.read().strip()
    except OSError:
        return "unknown"


def _clock_read_ns() -> float:
    """Median cost of one ``time.time()`` call, ns (loop overhead subtracted)."""
    wall = time.time
    calls = 200_000
    samples = []
    with no_gc():
        for _ in range(5):
            start = time.perf_counter_ns()
            for _ in range(calls):
                pass
            empty = time.perf_counter_ns() - start
            start = time.perf_counter_ns()
            for _ in range(calls):
                wall()
            samples.append((time.perf_counter_ns() - start - empty) / calls)
    return median(samples)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_build": " ".join(platform.python_build()),
        "aiohttp": _version("aiohttp"),
        "authlib": _version("authlib"),
        "httpx": _version("httpx"),
        "tenacity": _version("tenacity"),
        "zoomtoken": _version("zoomtoken"),
        "git": _git_commit(),
        "clocksource": _clocksource(),
        "time_time_ns": round(_clock_read_ns(), 1),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "executable": sys.executable,
    }
