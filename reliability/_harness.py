"""Pieces the reliability runs share: callers that hammer a manager, bad endpoints, a proxy.

Times are real seconds unless a name says ``virtual`` (a :class:`FakeClock`'s seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from zoomtoken import TokenManager, ZoomTokenError

__all__ = [
    "Blackhole",
    "Callers",
    "RewritingProxy",
    "closed_port_url",
    "memory_backed_dir",
    "slope",
    "wait_until",
]


async def wait_until(condition: Callable[[], bool], *, limit: float, poll: float = 0.002) -> bool:
    """Poll ``condition`` every ``poll`` real seconds; False if ``limit`` seconds pass first."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll)
    return True


class Callers:
    """``count`` tasks calling ``get_token()`` in a loop, judging every answer, plus herds
    of concurrent calls fired on demand (at the moments the manager changes state).

    An error while the manager still holds an unexpired token, or a token handed out after
    its deadline, is a violation. Errors once the token is past its deadline are the
    expected typed errors; the first few are kept for the report.
    """

    def __init__(self, manager: TokenManager, count: int = 20, *, pause: float = 0.0) -> None:
        self._manager = manager
        self._count = count
        # Real seconds between two calls of one caller (0: just yield).
        self._pause = pause
        self._tasks: list[asyncio.Task[None]] = []
        self._herds: set[asyncio.Task[None]] = set()
        self._stop = False
        self.calls = 0
        self.served_expired = 0
        self.errors_while_valid: list[BaseException] = []
        self.errors_after_expiry: list[BaseException] = []

    async def __aenter__(self) -> Callers:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self._count)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop calling and wait for the callers and herds to finish."""
        self._stop = True
        await asyncio.gather(*self._tasks, *self._herds, return_exceptions=True)
        self._tasks = []

    def herd(self, size: int) -> None:
        """Fire ``size`` concurrent calls now (callable from a synchronous event hook)."""
        if self._stop:
            return
        task = asyncio.get_running_loop().create_task(self._herd(size))
        self._herds.add(task)
        task.add_done_callback(self._herds.discard)

    async def _herd(self, size: int) -> None:
        await asyncio.gather(*(self._call() for _ in range(size)))

    async def _run(self) -> None:
        while not self._stop:
            await self._call()
            await asyncio.sleep(self._pause)

    async def _call(self) -> None:
        manager = self._manager
        self.calls += 1
        try:
            await manager.get_token()
        except ZoomTokenError as exc:
            # No await between the answer and this snapshot: it is the state the answer
            # was given in.
            status = manager.status()
            if status.seconds_to_expiry is not None and status.seconds_to_expiry > 0:
                self.errors_while_valid.append(exc)
            elif len(self.errors_after_expiry) < 50:
                self.errors_after_expiry.append(exc)
        else:
            status = manager.status()
            if status.seconds_to_expiry is None or status.seconds_to_expiry <= 0:
                self.served_expired += 1


def memory_backed_dir() -> str | None:
    """``/dev/shm`` when it is a writable directory (tmpfs), else ``None`` (the default).

    The fault matrix and the soak test the manager, not the disk: on tmpfs an fsync cannot
    stall behind other processes' writes for a few hundred milliseconds and blur the timings.
    (The crash run keeps the real disk: its windows are the figures it reports.)
    """
    candidate = "/dev/shm"
    return candidate if os.path.isdir(candidate) and os.access(candidate, os.W_OK) else None


def closed_port_url() -> str:
    """A loopback token URL where nothing listens: connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/oauth/token"


class Blackhole:
    """A loopback port whose accept queue is full, so new connections hang in SYN-SENT.

    Linux drops a SYN when the listener's backlog is full: the client sees a real connect
    timeout, as with a firewall that drops packets, without leaving loopback.
    """

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._fillers: list[socket.socket] = []
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self._fillers.append(filler)

    @property
    def url(self) -> str:
        """The token URL on the blackholed port."""
        return f"http://127.0.0.1:{self.port}/oauth/token"

    def close(self) -> None:
        """Close the listener and the sockets that fill its queue."""
        for filler in self._fillers:
            filler.close()
        self._listener.close()


Transform = Callable[[dict[str, Any]], Mapping[str, Any]]


class RewritingProxy:
    """Forwards ``POST /oauth/token`` to ``upstream`` and rewrites the JSON of 2xx answers.

    The server really acted (rotated); only what reaches the client differs: extra fields,
    numbers sent as strings...
    """

    def __init__(self, upstream: str, transform: Transform) -> None:
        self._upstream = upstream
        self._transform = transform
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> RewritingProxy:
        app = web.Application()
        app.router.add_post("/oauth/token", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._session = aiohttp.ClientSession()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/oauth/token"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in ("authorization", "content-type", "accept")
        }
        async with self._session.post(
            self._upstream, data=await request.read(), headers=headers
        ) as upstream:
            body = await upstream.read()
            status = upstream.status
        if 200 <= status < 300:
            body = json.dumps(dict(self._transform(json.loads(body)))).encode()
        return web.Response(status=status, body=body, content_type="application/json")


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points (0 for fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = math.fsum(x for x, _ in points) / n
    mean_y = math.fsum(y for _, y in points) / n
    var = math.fsum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return math.fsum((x - mean_x) * (y - mean_y) for x, y in points) / var
