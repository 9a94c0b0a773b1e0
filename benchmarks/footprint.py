"""Scenario 6: bytes per TokenManager (shared session excluded) and the import time."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import aiohttp

from zoomtoken import TokenManager
from zoomtoken.stores import MemoryStore

from ._common import Mode, Row, fmt_bytes, fmt_s, median
from ._contenders import make_token

__all__ = ["import_times", "manager_bytes", "run_footprint"]


async def manager_bytes(count: int, *, with_token: bool) -> tuple[float, list[str]]:
    """Bytes per manager over ``count`` managers sharing one session; top allocation sites."""
    async with aiohttp.ClientSession() as session:
        keep: list[Any] = [None] * count  # allocated before the baseline
        tokens = [make_token(f"refresh-{i}") for i in range(count)] if with_token else []
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            base = tracemalloc.get_traced_memory()[0]
            for i in range(count):
                manager = TokenManager(
                    client_id="bench-client",
                    client_secret="bench-secret",
                    refresh_token=None if with_token else "bench-refresh-token",
                    store=MemoryStore(tokens[i]) if with_token else None,
                    session=session,
                )
                if with_token:
                    await manager.get_token()  # loads the stored token: a manager at work
                keep[i] = manager
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - base
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        top = [
            f"{stat.size_diff / count:8.0f} B  {stat.traceback.format()[0].strip()}"
            for stat in after.compare_to(before, "lineno")[:8]
        ]
        for manager in keep:
            await manager.aclose()
    return used / count, top


def _importtime_us(module: str) -> tuple[int, dict[str, int]]:
    """Cumulative µs to import ``module`` in a fresh interpreter (``-X importtime``), and the
    cumulative µs of each top-level package it pulled in."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    )
    total = 0
    packages: dict[str, int] = {}
    for line in completed.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(fields) != 3:
            continue
        cumulative_text, name_field = fields[1].strip(), fields[2]
        if not cumulative_text.isdigit():
            continue  # the header line
        cumulative, name = int(cumulative_text), name_field.strip()
        if name == module:
            total = cumulative
        elif "." not in name and name != "site":
            # Top-level packages, each counted where it was first imported (they nest, so
            # the figures overlap: aiohttp includes yarl, multidict ...).
            packages[name] = max(packages.get(name, 0), cumulative)
    return total, packages


def _wall_import_s(module: str) -> float:
    """Seconds for a fresh interpreter to import ``module`` and exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - start


def import_times(runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for module in ("zoomtoken", "aiohttp", "authlib.integrations.httpx_client"):
        try:
            samples = [_importtime_us(module) for _ in range(runs)]
        except subprocess.CalledProcessError:
            continue
        breakdown = samples[-1][1]
        results[module] = {
            "importtime_us": median([s[0] for s in samples]),
            "runs_us": [s[0] for s in samples],
            "largest": sorted(breakdown.items(), key=lambda kv: -kv[1])[:6],
        }
    bare = median([_wall_import_s("sys") for _ in range(runs)])
    results["zoomtoken"]["wall_s"] = median([_wall_import_s("zoomtoken") for _ in range(runs)])
    results["zoomtoken"]["bare_interpreter_s"] = bare
    return results


def run_footprint(mode: Mode) -> tuple[list[Row], dict[str, Any]]:
    scenario = "6 Footprint"
    per_manager, top = asyncio.run(manager_bytes(mode.managers, with_token=False))
    per_loaded, top_loaded = asyncio.run(manager_bytes(mode.managers, with_token=True))
    imports = import_times(mode.import_runs)
    ours = imports["zoomtoken"]
    rows = [
        Row(
            scenario,
            f"bytes per TokenManager ({mode.managers:,} sharing one session)",
            fmt_bytes(per_manager),
            data={"bytes": per_manager, "top_sites": top},
        ),
        Row(
            scenario,
            "bytes per TokenManager holding a token (own MemoryStore, token loaded)",
            fmt_bytes(per_loaded),
            data={"bytes": per_loaded, "top_sites": top_loaded},
        ),
    ]
    aiohttp_us = imports.get("aiohttp", {}).get("importtime_us")
    rows.append(
        Row(
            scenario,
            "`import zoomtoken` (`-X importtime`, cumulative; fresh interpreter)",
            f"{fmt_s(ours['importtime_us'] / 1e6)}; wall {fmt_s(ours['wall_s'])} "
            f"(bare interpreter {fmt_s(ours['bare_interpreter_s'])})",
            f"{ours['importtime_us'] / aiohttp_us:.2f}× `import aiohttp`" if aiohttp_us else "",
            data=ours,
        )
    )
    for module in ("aiohttp", "authlib.integrations.httpx_client"):
        if module in imports:
            rows.append(
                Row(
                    scenario,
                    f"`import {module}` (reference)",
                    fmt_s(imports[module]["importtime_us"] / 1e6),
                    data=imports[module],
                )
            )
    return rows, {"imports": imports, "top_sites": top, "top_sites_loaded": top_loaded}
