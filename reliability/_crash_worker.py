"""The processes the crash run kills: each refreshes in a loop until SIGKILL, logging times.

:mod:`reliability.crash` starts this module once (``python -m reliability._crash_worker``)
as a fork server: it imports everything, then for each line ``go <seed|-> <log path>`` on
stdin forks a worker and answers its pid on stdout. Forking skips the half second of imports
per kill; the server has no thread and no event loop, so the fork is clean. Each worker
writes ``<tag> <time.monotonic()>`` lines with one unbuffered ``write`` each, so a kill loses
none:

* ``Q``: a token request is about to be sent;
* ``R``: the token endpoint's answer (status and headers) arrived;
* ``S``: the store's ``save`` began; ``D``: it returned (the pair is durable);
* ``E <error>``: a refresh failed (the parent reports it).

The last entries tell the parent where the worker died: between refreshes, with a request
out, or between an answer and the save that makes it durable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp

from zoomtoken import Lease, RetryPolicy, Token, TokenManager, TokenStore, ZoomTokenError
from zoomtoken.stores import FileStore


class _Log:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def mark(self, tag: str) -> None:
        self.write(f"{tag} {time.monotonic():.9f}")

    def write(self, line: str) -> None:
        os.write(self._fd, f"{line}\n".encode())


class _TimedStore:
    """Delegates to a real store and logs when each save begins and returns."""

    def __init__(self, inner: TokenStore, log: _Log) -> None:
        self._inner = inner
        self._log = log
        self.shared = inner.shared

    async def load(self) -> Token | None:
        return await self._inner.load()

    async def save(
        self, token: Token, *, expected_generation: int | None, lease: Lease | None = None
    ) -> None:
        self._log.mark("S")
        await self._inner.save(token, expected_generation=expected_generation, lease=lease)
        self._log.mark("D")

    async def clear(self) -> None:
        await self._inner.clear()

    async def try_acquire_lease(self, *, ttl: float) -> Lease | None:
        return await self._inner.try_acquire_lease(ttl=ttl)

    def watch(self) -> AsyncIterator[None] | None:
        return None

    async def aclose(self) -> None:
        await self._inner.aclose()


def _store(spec: str) -> TokenStore:
    kind, _, where = spec.partition(":")
    if kind == "file":
        return FileStore(where)
    if kind == "redis":
        from zoomtoken.stores.redis import RedisStore

        return RedisStore.from_url(where, grant="crash")
    raise SystemExit(f"unknown store {spec!r}")


async def _run(args: argparse.Namespace, seed: str | None, log: _Log) -> None:

    async def on_request_start(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: object
    ) -> None:
        log.mark("Q")

    async def on_request_end(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: object
    ) -> None:
        log.mark("R")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    trace.on_request_end.append(on_request_end)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        manager = TokenManager(
            client_id=args.client_id,
            client_secret=args.client_secret,
            refresh_token=seed,
            store=_TimedStore(_store(args.store), log),
            close_store=True,
            token_url=args.token_url,
            session=session,
            http_timeout=2.0,
            # One attempt per refresh: a failure must show, not be retried away.
            retry=RetryPolicy(max_attempts=1, budget=2.0),
            lease_ttl=5.0,
        )
        async with manager:
            while True:
                try:
                    await manager.refresh(force=True)
                except ZoomTokenError as exc:
                    log.write(f"E {type(exc).__name__}: {exc.message}")
                    raise SystemExit(3) from None


def _worker(args: argparse.Namespace, seed: str | None, log_path: str) -> None:
    """The forked child: refresh until killed; never returns into the server's loop."""
    status = 0
    try:
        asyncio.run(_run(args, seed, _Log(log_path)))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        status = 2
    finally:
        os._exit(status)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--token-url", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--store", required=True, help="file:PATH or redis:URL")
    args = parser.parse_args()
    _store(args.store)  # imports the store's module before any fork
    # Children are reaped by the kernel: the parent watches their pids disappear.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for line in sys.stdin:
        words = line.split()
        if len(words) != 3 or words[0] != "go":
            break
        seed = None if words[1] == "-" else words[1]
        pid = os.fork()
        if pid == 0:
            _worker(args, seed, words[2])
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
