"""``python -m reliability [--quick]``: the fault matrix, crash consistency and the soak.

Prints one markdown report (a figures table, then each part's own table) and writes it to
``reliability/results.md``. Exits 1 if any check failed. ``--quick`` is the bounded form for
CI (10-minute tokens in the matrix, 20 kills per store, a 5-day soak): well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from . import crash, faults, soak

RESULTS = Path(__file__).resolve().parent / "results.md"
# Seconds between two refreshes of Zoom's one-hour token (refresh at 75–80 % of 3599 s).
REFRESH_INTERVAL = 0.78 * 3599


def _figures(
    matrix: list[faults.FaultResult],
    crashes: list[crash.CrashResult],
    soaked: soak.SoakResult,
    durations: dict[str, float],
) -> list[str]:
    lost = sum(r.tokens_lost for r in matrix)
    by_rotation = sum(r.lost_by_rotation for r in matrix)
    rows = [
        (
            "fault cases passing / failing as a known bug",
            f"{sum(r.ok and not r.known for r in matrix)} / {sum(bool(r.known) for r in matrix)}"
            f" of {len(matrix)}",
        ),
        (
            "caller errors while a valid token existed",
            str(sum(r.errors_while_valid for r in matrix)),
        ),
        (
            "expired tokens served",
            str(sum(r.served_expired for r in matrix) + soaked.served_expired),
        ),
        ("refresh tokens lost (must be 0)", str(lost)),
        ("lost by server rotation (answer never arrived)", str(by_rotation)),
        ("get_token() calls judged (matrix)", f"{sum(r.caller_calls for r in matrix):,}"),
    ]
    for c in crashes:
        rows += [
            (
                f"{c.store}: SIGKILLs → store holds the live pair / the pair before a "
                "rotation the kill lost / anything else",
                f"{c.kills} → {c.consistent} / {c.lost} / {c.inconsistent}",
            ),
            (
                f"{c.store}: kills between answer and durable save (share)",
                f"{c.kills_after_answer} ({c.window_share:.0%})",
            ),
            (f"{c.store}: kills with a request out, no answer yet", str(c.kills_in_flight)),
            (
                f"{c.store}: grants lost to a kill (after answer / request out)",
                f"{c.lost} ({c.lost_after_answer} / {c.lost_in_flight})",
            ),
            (f"{c.store}: answer → durable save, ms (median / p99 / max)", c.window_summary()),
            (f"{c.store}: request out → durable save, ms", c.exposure_summary()),
            (f"{c.store}: the save alone, ms", c.save_summary()),
            (
                f"{c.store}: chance a crash at a random moment loses the grant, "
                "with Zoom's hourly token (median request→durable / 47 min)",
                f"{c.loss_chance(REFRESH_INTERVAL):.1e}",
            ),
        ]
        if c.store == "file":
            rows.append(
                (
                    "file: temp files a kill left / still there after the next save (must be 0)",
                    f"{c.orphan_temp_files} / {c.orphans_outliving_a_save}",
                )
            )
    rows += [
        (
            f"soak: {soaked.days:g} simulated days, refreshes / server rotations",
            f"{soaked.refreshes} / {soaked.server_rotations}",
        ),
        ("soak: faults served / invalid_grant", f"{soaked.faults_served} / {soaked.invalid_grant}"),
        ("soak: caller errors while valid", str(soaked.caller_errors_while_valid)),
        (
            "soak: manager memory slope, bytes/day (least squares / lower envelope)",
            f"{soaked.memory_slope:,.0f} / {soaked.settled_memory_slope:,.0f}"
            if soaked.days >= 10
            else "— (run too short)",
        ),
        ("soak: task count slope, tasks/day", f"{soaked.task_slope:.3f}"),
    ]
    rows += [(f"duration: {name}", f"{seconds:.1f} s") for name, seconds in durations.items()]
    lines = ["| figure | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return lines


def _crash_table(crashes: list[crash.CrashResult]) -> list[str]:
    lines = [
        "| store | kills | store holds the live pair | lost: after answer | lost: request out "
        "| anything else "
        "| kills after answer | refreshes | answer→durable ms (median / p99 / max) "
        "| request→durable ms | ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|:-:|",
    ]
    for c in crashes:
        lines.append(
            f"| {c.store} | {c.kills} | {c.consistent} | {c.lost_after_answer} "
            f"| {c.lost_in_flight} | {c.inconsistent} | {c.kills_after_answer} | {c.refreshes} "
            f"| {c.window_summary()} | {c.exposure_summary()} | {'✓' if c.ok else '✗'} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="bounded run for CI (< 60 s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show zoomtoken's logs")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the report")
    args = parser.parse_args()
    # The runs provoke hundreds of failures on purpose: the library's warnings are noise here.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL)

    durations: dict[str, float] = {}
    started = time.perf_counter()
    matrix = asyncio.run(faults.run_matrix(quick=args.quick))
    durations["fault matrix"] = time.perf_counter() - started
    print(f"fault matrix: {durations['fault matrix']:.1f} s", file=sys.stderr)

    started = time.perf_counter()
    crashes = crash.run_crash(quick=args.quick)
    durations["crash consistency"] = time.perf_counter() - started
    print(f"crash consistency: {durations['crash consistency']:.1f} s", file=sys.stderr)

    started = time.perf_counter()
    soaked = asyncio.run(soak.run_soak(days=5 if args.quick else 30))
    durations["soak"] = time.perf_counter() - started
    print(f"soak: {durations['soak']:.1f} s", file=sys.stderr)

    problems = [f"{r.name}: {p}" for r in matrix for p in r.problems]
    problems += [f"crash ({c.store}): {p}" for c in crashes for p in c.problems]
    problems += [f"soak: {p}" for p in soaked.problems]
    known = [f"{r.name}: {k}" for r in matrix for k in r.known]
    mode = "quick" if args.quick else "full"
    lifetime, callers = faults.matrix_settings(quick=args.quick)
    report = [
        f"# Reliability figures ({mode} run)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}. Produced by `python -m reliability"
        f"{' --quick' if args.quick else ''}`.",
        "",
        *_figures(matrix, crashes, soaked, durations),
        "",
        "## Fault matrix",
        "",
        f"Emulator over real HTTP on loopback, tokens of {lifetime} s, `http_timeout` "
        f"{faults.HTTP_TIMEOUT} s, {callers} callers hammering `get_token()`, a FileStore per "
        "case, a FakeClock that jumps whenever everything sleeps. POSTs are the manager's "
        "attempts; *until expiry* counts those made before the token's hard deadline, from "
        "the first failure on. *lost by server rotation*: the server rotated and its "
        "answer never arrived — the old pair is dead by construction, and the error must say so.",
        "",
        faults.table(matrix),
        "",
        "## Crash consistency",
        "",
        "A process refreshing back to back (one attempt per refresh) is SIGKILLed at a random "
        "moment; the emulator runs in the parent. *lost*: the server had rotated, the new pair "
        "was not durable yet — with a request out (the server acted on it) or after the "
        "answer, before the save returned. Lost grants are re-authorised before the next "
        "worker starts.",
        "",
        *_crash_table(crashes),
        "",
        "## Checks that failed" if problems else "All checks passed.",
        *([""] if problems else []),
        *(f"- {problem}" for problem in problems),
        *(["", "## Known bugs (reproduced here, pinned by xfail tests)", ""] if known else []),
        *(f"- {bug}" for bug in known),
    ]
    text = "\n".join(report).rstrip() + "\n"
    print(text)
    args.output.write_text(text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
