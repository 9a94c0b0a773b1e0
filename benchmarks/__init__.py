"""Benchmarks: run with ``make bench`` (``python -m benchmarks``) or ``make bench-smoke``
(``python -m benchmarks --quick``, under a minute, for CI).

``python -m benchmarks [--quick] [--out DIR] [--only SCENARIO,...]`` (scenarios: hot,
contended, herd, outage, long, footprint, profile) writes ``results/latest.md`` (the table,
with the machine described on top), ``results/latest.json`` (every raw figure) and
``results/profile.txt``, and prints the table.
With ``--only`` nothing is written unless ``--out`` is given.

Method
======

One process, one run. Absolute times drift on shared machines; ratios between contenders
measured seconds apart in the same process hold. So every target is a ratio to a reference
measured in the same run, and each scenario's reference is measured next to it.

Contenders: the *floor* (a bare ``await`` of an ``async def`` returning a constant); a *naive
manager* taking an ``asyncio.Lock`` around every call (double-checked, so one POST per
expiry); *Authlib*'s ``AsyncOAuth2Client`` (httpx), reduced to the path a request takes for
its token (``ensure_active_token`` under its ``anyio.Lock``, then ``client.token``); and
*zoomtoken*. Contenders are called as applications call them: ``await manager.get_token()``.

1. Hot path: each run alternates 10 chunks of floor awaits with 10 chunks of contender awaits
   (one coroutine, a tight ``for`` loop, the loop's own cost included in both) and keeps the
   fastest chunk of each, since interference only ever adds time; the figure is the median
   over the runs of the per-run ratio. The cyclic GC is collected, then off, while timing.
   A "design minimum" (a plain ``async def`` reading a token and comparing ``time.time()``
   with its deadline: the least DESIGN §2 allows) shows what the clock read alone costs.
2. Contended: 1,000 tasks each interleave the call with ``asyncio.sleep(0)``; ns per call of
   the whole gather, paired run by run with the same gather on the floor; median ratio.
3. Herd: N concurrent ``get_token()`` on an EXPIRED token (read with ``load()``, which
   refreshes nothing) against ``zoomtoken.testing.ZoomOAuthEmulator`` on 127.0.0.1 with
   50 ms latency and reuse detection, in real time on the production clocks. The reference is
   the very same herd awaiting one bare ``asyncio.Future`` that a task started by the first
   caller resolves after 50 ms. "Overhead" is everything but the refresh round trip (getting
   N callers to wait, then releasing them); target: zoomtoken's total ≤ its measured refresh
   round trip + 1.3 × the reference's overhead. Process CPU time is reported too (it is not
   inflated when other processes steal the CPU). POSTs and ``invalid_grant`` are counted by
   the emulator.
4. Outage: real time with a small ``RetryPolicy`` (4 attempts, 1 s budget), the emulator
   answering 503 to everything: POSTs of the burst, and each caller's wait against its
   deadline (burst budget + one request timeout); then a second wave inside the cool-down.
5. Long run: ``FakeClock(autojump=True)`` shared by the manager and the emulator; the
   background refresher's sleeps move virtual time, each refresh is still real HTTP on
   loopback. tracemalloc (3 frames) and ``len(asyncio.all_tasks())`` are sampled once per
   simulated day; slopes are least-squares over days 1..N. The emulator's ever-growing record
   of issued tokens is excluded from the manager's figure (and reported with it separately).
6. Footprint: tracemalloc over 1,000 managers sharing one ``aiohttp.ClientSession``, divided;
   import time from ``python -X importtime -c "import zoomtoken"`` in fresh interpreters
   (median), with ``import aiohttp`` as the reference.

Profiles: cProfile of 100,000 hot-path calls (exact call counts: what runs per call) and of
one herd next to the bare-future herd (event-loop callbacks per caller), in ``profile.txt``.

Exit status: 0 when every invariant holds (POST counts, ``invalid_grant``, typed errors,
deadlines, no task left behind), even if a timing target is missed (marked **MISS**, in both
modes); 1 when an invariant breaks or a scenario crashes (marked **FAIL**).
"""
