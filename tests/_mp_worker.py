"""Worker side of the multi-process tests: code a ``spawn``-ed process can import.

A worker builds one :class:`~zoomtoken.TokenManager` on a shared store and a
:class:`SharedClock`, then serves commands from its queue until told to stop. Answers carry
SHA-256 fingerprints of tokens, never the tokens themselves.

Commands (tuples) and their answers:

* ``("burst", n)``: wait on the shared barrier, then ``n`` concurrent ``get_token()`` calls;
  answers ``("burst", fingerprints, tokens_returned, errors)``.
* ``("get",)``: one ``get_token()``; answers ``("get", fingerprint)``.
* ``("refresh",)``: ``refresh(force=True)``; answers ``("refresh", fingerprint)``.
* ``("status",)``: answers ``("status", {...})`` with generation, state and counters.
* ``("stop",)``: closes the manager; answers ``("stopped",)`` and exits.

A command that raises answers ``("error", type name, message)`` (zoomtoken messages hold no
secret). The worker first answers ``("ready", pid)`` once its manager exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any, Protocol

from zoomtoken import TokenManager, TokenStore

__all__ = ["SharedClock", "WorkerSpec", "fingerprint", "worker_main"]

# Seconds a worker waits for its next command or for the other workers at the barrier before
# it gives up: a parent that died or a test that failed must not leave processes behind.
COMMAND_TIMEOUT = 60.0
BARRIER_TIMEOUT = 30.0


def fingerprint(token: str) -> str:
    """SHA-256 of a token, hex: comparable across processes, and safe to print."""
    return hashlib.sha256(token.encode()).hexdigest()


class _DoubleCell(Protocol):
    """A shared C double, as ``multiprocessing.RawValue('d')`` makes."""

    value: float


class SharedClock:
    """A zoomtoken ``Clock`` every process reads from one shared memory cell.

    Both clocks are a fixed base plus the shared offset (seconds): time stands still until the
    parent calls :meth:`advance`, and then moves at once for every process. Pass it to
    ``Process(args=...)``: the cell travels with the spawn, not through a queue.
    """

    __slots__ = ("_cell", "_monotonic_base", "_wall_base")

    def __init__(
        self,
        cell: _DoubleCell,
        *,
        wall_base: float = 1_700_000_000.0,
        monotonic_base: float = 1000.0,
    ) -> None:
        self._cell = cell
        self._wall_base = wall_base
        self._monotonic_base = monotonic_base

    def time(self) -> float:
        """Shared wall-clock time, epoch seconds."""
        return self._wall_base + self._cell.value

    def monotonic(self) -> float:
        """Shared monotonic time, seconds."""
        return self._monotonic_base + self._cell.value

    def advance(self, seconds: float) -> None:
        """Move both clocks forward for every process (only the parent calls this)."""
        if not seconds >= 0:
            raise ValueError("advance() needs a non-negative number of seconds")
        self._cell.value += seconds

    def __repr__(self) -> str:
        return f"SharedClock(offset={self._cell.value!r})"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """How a worker builds its manager and its store."""

    token_url: str
    client_id: str
    client_secret: str
    #: Seed for an empty store; every worker gets it, the lease lets only one use it.
    refresh_token: str
    #: ``"file"`` (``path``) or ``"redis"`` (``redis_url``, ``namespace``, ``grant``).
    store: str
    path: str = ""
    redis_url: str = ""
    namespace: str = "zoomtoken"
    grant: str = "default"
    #: Seconds; ``None`` keeps the manager's default.
    lease_ttl: float | None = None
    #: Start the background refresher and the store watcher (``manager.start()``).
    start: bool = False


def _build_store(spec: WorkerSpec) -> TokenStore:
    if spec.store == "file":
        from zoomtoken.stores.file import FileStore

        return FileStore(spec.path)
    if spec.store == "redis":
        from zoomtoken.stores.redis import RedisStore

        return RedisStore.from_url(spec.redis_url, namespace=spec.namespace, grant=spec.grant)
    raise ValueError(f"unknown store kind {spec.store!r}")


async def _burst(manager: TokenManager, barrier: Barrier, callers: int) -> tuple[Any, ...]:
    # The barrier blocks, so it waits in a thread: the loop stays free meanwhile.
    await asyncio.to_thread(barrier.wait, BARRIER_TIMEOUT)
    results = await asyncio.gather(
        *(manager.get_token() for _ in range(callers)), return_exceptions=True
    )
    tokens = [r for r in results if isinstance(r, str)]
    errors = sorted({f"{type(r).__name__}: {r}" for r in results if not isinstance(r, str)})
    return ("burst", sorted({fingerprint(t) for t in tokens}), len(tokens), errors)


def _status(manager: TokenManager) -> dict[str, Any]:
    status = manager.status()
    return {
        "generation": status.generation,
        "state": None if status.state is None else status.state.value,
        "adopted": status.adopted,
        "refreshes": status.refreshes,
        "failures": status.failures,
        "stale_serves": status.stale_serves,
        "token_posts": status.token_posts,
    }


async def _serve(
    spec: WorkerSpec,
    clock: SharedClock,
    barrier: Barrier,
    commands: Queue[tuple[Any, ...]],
    replies: Queue[tuple[Any, ...]],
) -> None:
    manager = TokenManager(
        client_id=spec.client_id,
        client_secret=spec.client_secret,
        refresh_token=spec.refresh_token,
        token_url=spec.token_url,
        store=_build_store(spec),
        close_store=True,
        clock=clock,
        # Real waiting: lease polls must let other processes' time pass.
        sleep=asyncio.sleep,
        lease_ttl=spec.lease_ttl,
    )
    try:
        if spec.start:
            await manager.start()
        replies.put(("ready", os.getpid()))
        while True:
            try:
                command = await asyncio.to_thread(commands.get, True, COMMAND_TIMEOUT)
            except queue.Empty:
                return  # the parent is gone or stuck: do not outlive it
            name = command[0]
            if name == "stop":
                break
            try:
                if name == "burst":
                    reply = await _burst(manager, barrier, int(command[1]))
                elif name == "get":
                    reply = ("get", fingerprint(await manager.get_token()))
                elif name == "refresh":
                    reply = ("refresh", fingerprint(await manager.refresh(force=True)))
                elif name == "status":
                    reply = ("status", _status(manager))
                else:
                    reply = ("error", "ValueError", f"unknown command {name!r}")
            except Exception as exc:
                reply = ("error", type(exc).__name__, str(exc))
            replies.put(reply)
    finally:
        await manager.aclose()
    replies.put(("stopped",))


def worker_main(
    spec: WorkerSpec,
    clock: SharedClock,
    barrier: Barrier,
    commands: Queue[tuple[Any, ...]],
    replies: Queue[tuple[Any, ...]],
) -> None:
    """Entry point of a worker process (``Process(target=worker_main, args=...)``)."""
    asyncio.run(_serve(spec, clock, barrier, commands, replies))
