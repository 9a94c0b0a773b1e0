"""Crash consistency: a process refreshing in a loop is SIGKILLed at random moments.

The emulator runs in this process, on a thread with its own event loop; each worker
(:mod:`reliability._crash_worker`) refreshes as fast as it can through a FileStore (and a
RedisStore when ``redis-server`` is installed) until it is killed. After every kill:

* the store must parse, and its refresh token must be the grant's live one, or — when the
  server had rotated but the worker died before its save returned — the one just before;
* the kill is placed on the worker's own timeline (``Q`` request out, ``R`` answer in,
  ``S``/``D`` save began/returned): a grant may only be lost by a kill with a request out
  (the server acted on it, its sender is gone) or between the answer and the durable save —
  the windows no client can close, only keep short. A loss anywhere else is a bug.

A lost grant is re-created (a new authorisation) so that the next worker starts live.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from zoomtoken import Token, TokenStore, ZoomTokenError
from zoomtoken.stores import FileStore
from zoomtoken.testing import ZoomOAuthEmulator

__all__ = ["CrashResult", "run_crash"]

_T = TypeVar("_T")

USER = "crash-user"
# Real seconds: a worker lives this long at most (uniformly drawn) after it is told to go.
MAX_LIFE = 0.25
# Real seconds to let the emulator finish a request the dead worker had already sent.
SETTLE = 0.05


class EmulatorThread:
    """A :class:`ZoomOAuthEmulator` serving from its own thread and event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._emulator: ZoomOAuthEmulator | None = None

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        self._emulator = ZoomOAuthEmulator(reuse_detection=True)
        self._run(self._emulator.start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._emulator is not None:
            self._run(self._emulator.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def call(self, action: Callable[[ZoomOAuthEmulator], _T]) -> _T:
        """Run ``action(emulator)`` on the emulator's loop, between two requests."""
        emulator = self._emulator
        assert emulator is not None

        async def run() -> _T:
            return action(emulator)

        result: _T = self._run(run())
        return result


@dataclass
class CrashResult:
    """Figures of one store's crash run."""

    store: str
    kills: int = 0
    #: Store held the grant's live pair.
    consistent: int = 0
    #: Server had rotated, the answer never became durable (the pair before it was kept).
    lost: int = 0
    #: ... of those, killed after the answer arrived, before the save returned.
    lost_after_answer: int = 0
    #: ... of those, killed with the request out and no answer yet (the server acted on it).
    lost_in_flight: int = 0
    #: Kills the worker's log places between the answer and the save's return.
    kills_after_answer: int = 0
    #: Kills the worker's log places between sending the request and the answer.
    kills_in_flight: int = 0
    #: Anything else: torn or garbage store, a refresh token the server never issued...
    inconsistent: int = 0
    worker_errors: int = 0
    #: Temp files (each holding a pair) a kill left next to the token file ...
    orphan_temp_files: int = 0
    #: ... and those still there after a later worker saved (the store must remove them).
    orphans_outliving_a_save: int = 0
    refreshes: int = 0
    #: Answer received → save returned, per refresh (milliseconds).
    window_ms: list[float] = field(default_factory=list)
    #: Request about to be sent → save returned, per refresh (milliseconds).
    exposure_ms: list[float] = field(default_factory=list)
    #: Save began → save returned, per refresh (milliseconds).
    save_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every kill left a consistent store."""
        return not self.problems and self.inconsistent == 0 and self.worker_errors == 0

    def window_summary(self) -> str:
        """Median / p99 / max of the answer-to-durable window, milliseconds."""
        return _summary(self.window_ms)

    def save_summary(self) -> str:
        """Median / p99 / max of the save itself, milliseconds."""
        return _summary(self.save_ms)

    def exposure_summary(self) -> str:
        """Median / p99 / max of request sent → save returned, milliseconds."""
        return _summary(self.exposure_ms)

    def loss_chance(self, refresh_interval: float) -> float:
        """Chance that a crash at a random instant loses the grant when refreshes come every
        ``refresh_interval`` seconds: the median exposure (request out → durable) over it."""
        if not self.exposure_ms:
            return 0.0
        return statistics.median(self.exposure_ms) / 1000 / refresh_interval

    @property
    def window_share(self) -> float:
        """Fraction of kills that fell between the answer and the durable save."""
        return self.kills_after_answer / self.kills if self.kills else 0.0


def _summary(values: list[float]) -> str:
    if not values:
        return "—"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"{statistics.median(ordered):.2f} / {p99:.2f} / {ordered[-1]:.2f}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str | None]:
    """A throwaway ``redis-server`` (nothing saved to disk); ``None`` if not installed."""
    executable = shutil.which("redis-server")
    if executable is None:
        yield None
        return
    port = _free_port()
    # A fixed argument list and no shell: nothing here comes from outside.
    process = subprocess.Popen(
        [
            executable,
            *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--dir", str(directory), "--logfile", ""),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _StoreAccess:
    """The parent's view of the store the workers use."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.kind, _, self.where = spec.partition(":")

    def _open(self) -> TokenStore:
        if self.kind == "file":
            return FileStore(self.where)
        from zoomtoken.stores.redis import RedisStore

        return RedisStore.from_url(self.where, grant="crash")

    def load(self) -> Token | None:
        async def run() -> Token | None:
            store = self._open()
            try:
                return await store.load()
            finally:
                await store.aclose()

        return asyncio.run(run())

    def reset(self) -> None:
        """Forget the stored pair (the grant it belonged to is gone)."""

        async def run() -> None:
            store = self._open()
            try:
                await store.clear()
            finally:
                await store.aclose()

        asyncio.run(run())

    def drop_dead_lease(self) -> None:
        """A killed Redis holder's lease would lapse after its TTL; drop it to save time.

        (File leases are flocks: the kernel released it when the process died.)
        """
        if self.kind != "redis":
            return
        import redis

        from zoomtoken.stores.redis import RedisStore

        key = RedisStore.from_url(self.where, grant="crash").lease_key
        client = redis.Redis.from_url(self.where)
        try:
            client.delete(key)
        finally:
            client.close()

    def orphan_temp_files(self) -> list[Path]:
        """Temp files a killed save left next to the token file."""
        if self.kind != "file":
            return []
        path = Path(self.where)
        return sorted(path.parent.glob(f".{path.name}.*.tmp"))


class _ForkServer:
    """The worker fork server (:mod:`reliability._crash_worker`) and the workers it forks."""

    def __init__(self, args: list[str], stderr: Path) -> None:
        self._stderr = stderr.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reliability._crash_worker", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=Path(__file__).resolve().parent.parent,
        )

    def spawn(self, seed: str | None, log: Path) -> int:
        """Fork a worker refreshing from ``seed`` (or the store); returns its pid."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"go {seed or '-'} {log}\n".encode())
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError("the worker fork server died")
        return int(answer)

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill(pid: int) -> None:
    """SIGKILL a worker and wait until the kernel has reaped it (its server ignores
    SIGCHLD, so the pid disappears once the process is gone)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.0005)


def _read_log(path: Path) -> list[tuple[str, float | str]]:
    entries: list[tuple[str, float | str]] = []
    if not path.exists():
        return entries
    for line in path.read_text().splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "E":
            entries.append((tag, rest))
        elif rest:
            with contextlib.suppress(ValueError):
                entries.append((tag, float(rest)))
    return entries


def _timeline(entries: list[tuple[str, float | str]], result: CrashResult) -> str:
    """Collect the worker's windows; return the phase its last refresh died in.

    ``"answered"``: answer in, save not returned; ``"in flight"``: request out, no answer;
    ``"idle"``: between refreshes (the last one was durable). Entries logged after the
    parent's SIGKILL instant still count: they happened before the process died.
    """
    sent: float | None = None
    answered: float | None = None
    save_began: float | None = None
    for tag, value in entries:
        if not isinstance(value, float):
            continue
        if tag == "Q":
            sent, answered, save_began = value, None, None
        elif tag == "R":
            answered = value
        elif tag == "S":
            save_began = value
        elif tag == "D":
            result.refreshes += 1
            if answered is not None:
                result.window_ms.append((value - answered) * 1000)
            if sent is not None:
                result.exposure_ms.append((value - sent) * 1000)
            if save_began is not None:
                result.save_ms.append((value - save_began) * 1000)
            sent = answered = save_began = None
    if answered is not None:
        return "answered"
    return "in flight" if sent is not None else "idle"


def run_store(spec: str, kills: int, directory: Path, rng: random.Random) -> CrashResult:
    """Kill ``kills`` workers using the store ``spec`` (``file:PATH`` or ``redis:URL``)."""
    started = time.perf_counter()
    access = _StoreAccess(spec)
    result = CrashResult(access.kind)
    with EmulatorThread() as emulator:
        seed: str | None = emulator.call(lambda e: e.create_grant(user_id=USER))
        access.reset()
        client_id = emulator.call(lambda e: e.client_id)
        client_secret = emulator.call(lambda e: e.client_secret)
        token_url = emulator.call(lambda e: e.token_url)
        args = [
            "--token-url",
            token_url,
            "--client-id",
            client_id,
            "--client-secret",
            client_secret,
            "--store",
            spec,
        ]
        server = _ForkServer(args, directory / "fork-server.err")
        # Temp files seen after the previous kill: the next save must have removed them.
        pending: set[Path] = set()
        try:
            for number in range(1, kills + 1):
                log = directory / f"worker-{number}.log"
                pid = server.spawn(seed, log)
                # Kill at a random moment of the refresh loop, not during start-up.
                _wait_for_log(log, pid, timeout=10.0)
                time.sleep(rng.uniform(0.0, MAX_LIFE))
                if not _alive(pid):
                    result.worker_errors += 1
                    result.problems.append(
                        f"worker {number} exited by itself: {_errors(log) or 'no error logged'}"
                    )
                    break
                _kill(pid)
                result.kills += 1
                time.sleep(SETTLE)
                phase = _timeline(_read_log(log), result)
                result.kills_after_answer += phase == "answered"
                result.kills_in_flight += phase == "in flight"
                problems = len(result.problems)
                seed = _judge(access, emulator, result, phase, number)
                if len(result.problems) > problems:
                    tail = " ".join(tag for tag, _ in _read_log(log)[-6:])
                    result.problems[-1] += f" (worker's last log entries: {tail})"
                access.drop_dead_lease()
                orphans = set(access.orphan_temp_files())
                if any(tag == "D" for tag, _ in _read_log(log)):
                    outliving = pending & orphans
                    result.orphans_outliving_a_save += len(outliving)
                    if outliving:
                        result.problems.append(
                            f"kill {number}: {len(outliving)} temp file(s) with a token pair "
                            "outlived a later save"
                        )
                result.orphan_temp_files += len(orphans - pending)
                pending = orphans
        finally:
            server.close()
    result.seconds = time.perf_counter() - started
    return result


def _wait_for_log(log: Path, pid: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        with contextlib.suppress(FileNotFoundError):
            if log.stat().st_size:
                return
        time.sleep(0.001)


def _errors(log: Path) -> str:
    return "; ".join(str(value) for tag, value in _read_log(log) if tag == "E")


def _judge(
    access: _StoreAccess,
    emulator: EmulatorThread,
    result: CrashResult,
    phase: str,
    number: int,
) -> str | None:
    """Check the store after kill ``number``; returns the seed the next worker needs."""
    try:
        stored = access.load()
    except ZoomTokenError as exc:
        result.inconsistent += 1
        result.problems.append(f"kill {number}: store unreadable ({type(exc).__name__})")
        return _reauthorize(access, emulator)
    info = emulator.call(lambda e: e.grant_info(USER))
    # Generation g is the (g+1)-th rotation since the grant was created.
    saved_rotations = 0 if stored is None else stored.generation + 1
    if info.revoked:
        result.inconsistent += 1
        result.problems.append(f"kill {number}: the grant was revoked (a refresh token reused)")
        return _reauthorize(access, emulator)
    if stored is not None and stored.refresh_token == info.refresh_token:
        result.consistent += 1
        return None
    if stored is None and info.refreshes == 0:
        result.consistent += 1  # killed before the first refresh: the seed is still live
        return info.refresh_token
    if info.refreshes == saved_rotations + 1 and phase != "idle":
        # The server rotated once more than the store knows: the answer died with the worker.
        result.lost += 1
        result.lost_after_answer += phase == "answered"
        result.lost_in_flight += phase == "in flight"
        return _reauthorize(access, emulator)
    result.inconsistent += 1
    result.problems.append(
        f"kill {number} ({phase}): store generation "
        f"{None if stored is None else stored.generation}, server rotations {info.refreshes}"
    )
    return _reauthorize(access, emulator)


def _reauthorize(access: _StoreAccess, emulator: EmulatorThread) -> str:
    """The grant is lost: authorise again (a new grant) and start from an empty store."""
    access.reset()
    return emulator.call(lambda e: e.create_grant(user_id=USER))


def run_crash(*, quick: bool = False, seed: int = 1) -> list[CrashResult]:
    """200 kills per store (20 with ``quick``): FileStore, and RedisStore if available."""
    kills = 20 if quick else 200
    rng = random.Random(seed)
    results: list[CrashResult] = []
    with tempfile.TemporaryDirectory(prefix="crash-") as tmp:
        directory = Path(tmp)
        os.chmod(directory, 0o700)
        results.append(run_store(f"file:{directory / 'tokens.json'}", kills, directory, rng))
        with redis_server(directory) as url:
            if url is not None:
                logs = directory / "redis-run"
                logs.mkdir()
                results.append(run_store(f"redis:{url}", kills, logs, rng))
    return results
