"""A real ``redis-server`` on a free 127.0.0.1 port, for the RedisStore tests.

Import the fixture into a test module with
``from redis_server import redis_server_fixture  # noqa: F401`` (``tests/`` is on ``sys.path``
under pytest, as for ``conftest``); tests then ask for ``redis_server``, a name that does not
clash with the import. The server keeps nothing on
disk (``--save '' --appendonly no``) and can be stopped and started again on the same port,
to play a Redis restart. Without ``redis-server`` on PATH the tests are skipped, except on CI
(``CI=true``), where a missing server must not pass silently.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server_fixture", "require_redis_server"]

# Seconds to wait for the server to answer PING (it usually takes ~10 ms), and between polls.
_START_TIMEOUT = 10.0
_POLL = 0.01
# Seconds to wait for the killed server to exit.
_STOP_TIMEOUT = 5.0


def require_redis_server() -> str:
    """Path of ``redis-server``; skips the test (fails it on CI) when it is not installed."""
    executable = shutil.which("redis-server")
    if executable is None:
        message = "redis-server not installed (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return executable


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; :meth:`stop` and :meth:`start` again keep
    the port (the data is lost: nothing is persisted)."""

    host = "127.0.0.1"

    def __init__(self, executable: str, directory: Path, *, password: str | None = None) -> None:
        self._executable = executable
        self._directory = directory
        self._password = password
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log = directory / "redis.log"

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, running={self.running})"

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0``."""
        auth = f":{self._password}@" if self._password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait (bounded) until it answers PING."""
        if self.running:
            return
        args = [
            self._executable,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self._directory),
            "--logfile",
            str(self._log),
        ]
        if self._password:
            args += ["--requirepass", self._password]
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not self.ping():
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode() if self._process.stderr else ""
                log = self._log.read_text() if self._log.exists() else ""
                self._process = None
                raise RuntimeError(f"redis-server exited at start:\n{stderr}\n{log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within {_START_TIMEOUT}s")
            time.sleep(_POLL)

    def stop(self) -> None:
        """Kill the server and wait until it has exited (the port is free again)."""
        process, self._process = self._process, None
        if process is None:
            return
        # SIGKILL, not SIGTERM: there is nothing to save, and redis acts on SIGTERM only at
        # its next cron tick, which costs ~100 ms per test.
        process.kill()
        process.wait(_STOP_TIMEOUT)
        if process.stderr is not None:
            process.stderr.close()

    def ping(self) -> bool:
        """True if the server answers PING (or asks for a password, which also means up)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                reply = conn.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))


@pytest.fixture(name="redis_server")
def redis_server_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    """A running ``redis-server`` of its own for one test, stopped at teardown."""
    server = RedisServer(require_redis_server(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
