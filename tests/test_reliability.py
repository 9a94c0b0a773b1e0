"""Transport security and time: plain HTTP refused, TLS always verified, no bearer token to
another origin through a redirect; suspend, wall-clock jumps and a blocked event loop serve no
expired token and cause no refresh storm. Also regression tests for the bugs the fault matrix
and the crash run (``python -m reliability``) found, each written first as a failing test.

Clocks are FakeClocks; the only real waits are loopback round trips and 0.2 s timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import zoomtoken
from conftest import CANARY_ACCESS_TOKEN
from zoomtoken import (
    ConfigurationError,
    Event,
    EventKind,
    InsecureEndpointError,
    MemoryStore,
    OutcomeUnknownError,
    ReauthorizationRequiredError,
    RetryPolicy,
    Token,
    TokenManager,
    TokenState,
    TransportError,
)
from zoomtoken.stores import FileStore
from zoomtoken.testing import FakeClock, Fault, ZoomOAuthEmulator

SRC = Path(zoomtoken.__file__).resolve().parent
LIFETIME = 3599

# ------------------------------------------------------------------------ transport security

REFUSED_URLS = [
    "http://zoom.us/oauth/token",
    "HTTP://ZOOM.US/oauth/token",
    "http://10.0.0.1/oauth/token",
    "http://0.0.0.0/oauth/token",
    "http://127.0.0.1.nip.io/oauth/token",
    "http://localhost.evil.example/oauth/token",
    "http://127.0.0.1@evil.example/oauth/token",
    "http://[::ffff:7f00:1]/oauth/token",
    "ftp://zoom.us/oauth/token",
    "file:///etc/passwd",
    "//zoom.us/oauth/token",
    "zoom.us/oauth/token",
    "https://zoom.us/oauth/token?refresh_token=x",
]
LOOPBACK_URLS = [
    "http://127.0.0.1:8080/oauth/token",
    "http://127.3.4.5/oauth/token",
    "http://localhost/oauth/token",
    "http://[::1]:8080/oauth/token",
    "https://zoom.us/oauth/token",
]


@pytest.mark.parametrize("field", ["token_url", "revoke_url"])
@pytest.mark.parametrize("url", REFUSED_URLS)
def test_non_https_endpoints_off_loopback_are_refused(field: str, url: str) -> None:
    """Plain http to anything but loopback (and any non-http scheme) fails at construction."""
    endpoints: dict[str, Any] = {field: url}
    with pytest.raises(ConfigurationError):
        TokenManager(client_id="id", client_secret="secret", refresh_token="rt", **endpoints)


@pytest.mark.parametrize("field", ["token_url", "revoke_url"])
@pytest.mark.parametrize("url", LOOPBACK_URLS)
def test_https_and_loopback_endpoints_are_accepted(field: str, url: str) -> None:
    """https anywhere, and http on loopback (tests, emulators), are accepted."""
    endpoints: dict[str, Any] = {field: url}
    TokenManager(client_id="id", client_secret="secret", refresh_token="rt", **endpoints)


def test_the_api_session_refuses_plain_http_off_loopback() -> None:
    """zoom_session and bearer_middleware apply the same rule to API origins."""
    middleware = pytest.importorskip("zoomtoken.aiohttp")
    manager = TokenManager(client_id="id", client_secret="secret", refresh_token="rt")
    with pytest.raises(InsecureEndpointError):
        middleware.bearer_middleware(manager, allowed_origins=["http://api.zoom.us"])
    with pytest.raises(InsecureEndpointError):
        middleware.zoom_session(manager, base_url="http://api.zoom.us")


_TLS_OFF = re.compile(
    r"ssl\s*=\s*False|verify_ssl|CERT_NONE|check_hostname\s*=\s*False|_create_unverified_context"
    r"|fingerprint\s*="
)


def test_no_source_file_turns_tls_verification_off() -> None:
    """No line of the library disables certificate or hostname verification."""
    offenders = [
        f"{path.relative_to(SRC)}:{number}"
        for path in sorted(SRC.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _TLS_OFF.search(line)
    ]
    assert offenders == []


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no trust store knows, and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed: cannot make a test certificate")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class _Recorder:
    """What a test server saw."""

    requests: int = 0
    authorization: list[str | None] | None = None

    def __post_init__(self) -> None:
        self.authorization = []


@asynccontextmanager
async def _server(
    routes: Callable[[web.Application, _Recorder], None], ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, _Recorder]]:
    """An aiohttp server on 127.0.0.1 with the given routes; yields its base URL."""
    recorder = _Recorder()
    app = web.Application()
    routes(app, recorder)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{runner.addresses[0][1]}", recorder
    finally:
        await runner.cleanup()


def _token_routes(app: web.Application, recorder: _Recorder) -> None:
    async def token(request: web.Request) -> web.Response:
        recorder.requests += 1
        assert recorder.authorization is not None
        recorder.authorization.append(request.headers.get("Authorization"))
        body = {"access_token": "at", "refresh_token": "rt2", "expires_in": 3599}
        return web.json_response(body)

    app.router.add_post("/oauth/token", token)
    app.router.add_get("/v2/users/me", token)


async def test_tls_is_verified_for_the_token_endpoint_and_the_api(tmp_path: Path) -> None:
    """A server with an untrusted certificate gets no request from the manager or the API
    session; the same server, trusted explicitly, does (so the refusal is the verification)."""
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    async with _server(_token_routes, server_context) as (base, seen):
        manager = TokenManager(
            client_id="id",
            client_secret="secret",
            refresh_token="rt",
            token_url=f"{base}/oauth/token",
            retry=RetryPolicy(max_attempts=1),
        )
        async with manager:
            with pytest.raises(TransportError) as refused:
                await manager.refresh()
            assert "cannot connect" in refused.value.message
            middleware = pytest.importorskip("zoomtoken.aiohttp")
            stale = Token.issue(
                access_token=CANARY_ACCESS_TOKEN,
                refresh_token="rt",
                expires_in=LIFETIME,
                issued_at=1e12,  # far future: fresh whatever the real clock says
                jitter=0,
            )
            api_manager = TokenManager(
                client_id="id", client_secret="secret", store=MemoryStore(stale)
            )
            async with api_manager, middleware.zoom_session(api_manager, base_url=base) as api:
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await api.get("/v2/users/me")
        assert seen.requests == 0
        # Positive control: trusting the certificate, the request goes through.
        trusting = ssl.create_default_context(cafile=str(cert))
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{base}/oauth/token", ssl=trusting) as response,
        ):
            assert response.status == 200
        assert seen.requests == 1


def _redirect_routes(app: web.Application, recorder: _Recorder) -> None:
    """``/v2/hop?to=URL&status=302|307`` redirects; ``/v2/capture`` records Authorization."""

    async def capture(request: web.Request) -> web.Response:
        recorder.requests += 1
        assert recorder.authorization is not None
        recorder.authorization.append(request.headers.get("Authorization"))
        return web.json_response({"ok": True})

    async def hop(request: web.Request) -> web.Response:
        target = request.query["to"]
        status = int(request.query.get("status", "302"))
        raise web.HTTPFound(target) if status == 302 else web.HTTPTemporaryRedirect(target)

    app.router.add_route("*", "/v2/capture", capture)
    app.router.add_route("*", "/v2/hop", hop)


async def test_a_bearer_token_never_follows_a_redirect_to_another_origin() -> None:
    """302 and 307 hops to another port or host carry no Authorization; same-origin hops do."""
    middleware = pytest.importorskip("zoomtoken.aiohttp")
    fresh = Token.issue(
        access_token=CANARY_ACCESS_TOKEN,
        refresh_token="rt",
        expires_in=LIFETIME,
        issued_at=1e12,
        jitter=0,
    )
    manager = TokenManager(client_id="id", client_secret="secret", store=MemoryStore(fresh))
    async with (
        _server(_redirect_routes) as (other, other_seen),
        _server(_redirect_routes) as (api, api_seen),
        manager,
        middleware.zoom_session(manager, base_url=api) as session,
    ):
        port = api.rsplit(":", 1)[1]
        targets = [
            f"{other}/v2/capture",  # same host, another port
            f"http://localhost:{port}/v2/capture",  # same port, another host
        ]
        for target in targets:
            for status in ("302", "307"):
                async with session.post(
                    "v2/hop", params={"to": target, "status": status}, data=b"payload"
                ) as response:
                    assert response.status == 200
        # Same origin: the token is still sent (the middleware is really in the way).
        async with session.get("v2/hop", params={"to": f"{api}/v2/capture"}) as response:
            assert response.status == 200
    assert other_seen.authorization == [None, None]
    assert api_seen.authorization is not None
    received = api_seen.authorization
    # The localhost hops reached the API server under another origin: no token there either.
    assert received[:-1] == [None, None]
    assert received[-1] == f"Bearer {CANARY_ACCESS_TOKEN}"


# ------------------------------------------------------------------------------------- time


class StallableClock(FakeClock):
    """A FakeClock that can also stall: both clocks jump while no task runs, as when the event
    loop is blocked (FakeClock.advance, by contrast, wakes each sleeper at its own deadline)."""

    def stall(self, seconds: float) -> None:
        """Both clocks jump ``seconds``; overdue sleepers wake at the next ``advance(0)``."""
        self._move_to(self.monotonic() + seconds)


@asynccontextmanager
async def _running(
    clock: FakeClock, **options: Any
) -> AsyncIterator[tuple[ZoomOAuthEmulator, TokenManager]]:
    """An emulator and a started manager holding a fresh first token (one POST so far)."""
    async with ZoomOAuthEmulator(clock=clock, reuse_detection=True, expires_in=LIFETIME) as zoom:
        seed = zoom.create_grant()
        async with TokenManager(
            client_id=zoom.client_id,
            client_secret=zoom.client_secret,
            refresh_token=seed,
            token_url=zoom.token_url,
            revoke_url=zoom.revoke_url,
            clock=clock,
            sleep=clock.sleep,
            **options,
        ) as manager:
            await manager.get_token()
            # Let the refresher go back to sleep: what follows happens while it sleeps.
            await clock.advance(0)
            assert zoom.counters.token_requests == 1
            yield zoom, manager


async def _valid_at_the_server(zoom: ZoomOAuthEmulator, token: str) -> bool:
    """Whether the emulator's API accepts ``token`` now (its clock is the test's)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{zoom.api_base_url}/v2/users/me", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        return response.status == 200


async def _settle(clock: FakeClock, seconds: float = 60, step: float = 5) -> None:
    """Let the refresher run for ``seconds`` of virtual time, ``step`` at a time, with a few
    real milliseconds after each step for its round trips."""
    for _ in range(int(seconds // step)):
        await clock.advance(step)
        await asyncio.sleep(0.003)


async def test_after_suspend_callers_get_a_new_token_from_one_refresh() -> None:
    """Two hours asleep (wall clock jumps, monotonic does not): 200 callers, one POST, and the
    token they get is valid at the server."""
    clock = FakeClock()
    async with _running(clock) as (zoom, manager):
        old = await manager.get_token()
        clock.suspend(2 * 3600)
        tokens = await asyncio.gather(*(manager.get_token() for _ in range(200)))
        assert set(tokens) != {old} and len(set(tokens)) == 1
        assert await _valid_at_the_server(zoom, tokens[0])
        await _settle(clock)
        assert zoom.counters.token_requests == 2
        assert zoom.counters.invalid_grant == 0


async def test_after_suspend_the_refresher_alone_renews_within_one_sleep_chunk() -> None:
    """With no caller at all, the background refresher notices the suspend when it wakes."""
    clock = FakeClock()
    events: list[Event] = []
    async with _running(clock, on_event=events.append) as (zoom, manager):

        def started() -> int:
            return sum(event.kind is EventKind.REFRESH_STARTED for event in events)

        before = started()
        resumed_at = clock.monotonic()
        clock.suspend(2 * 3600)
        while started() == before:
            assert clock.monotonic() - resumed_at <= 15, "the refresher slept through"
            await clock.advance(1)
        # Woken within its 15 s chunk; now let the one real round trip finish.
        for _ in range(2000):
            if manager.state is TokenState.FRESH:
                break
            await asyncio.sleep(0.001)
        assert zoom.counters.token_requests == 2
        assert await _valid_at_the_server(zoom, await manager.get_token())


@pytest.mark.parametrize("cycles", [10])
async def test_repeated_suspends_cause_one_refresh_each(cycles: int) -> None:
    """Ten suspend/resume cycles with a herd each: exactly one POST per cycle."""
    clock = FakeClock()
    async with _running(clock) as (zoom, manager):
        for cycle in range(cycles):
            clock.suspend(3 * 3600)
            tokens = await asyncio.gather(*(manager.get_token() for _ in range(50)))
            assert len(set(tokens)) == 1
            assert zoom.counters.token_requests == cycle + 2
        assert zoom.counters.invalid_grant == 0


async def test_wall_clock_jumping_forward_refreshes_once() -> None:
    """An NTP step of +1 h makes the token look expired: one refresh for all callers."""
    clock = FakeClock()
    async with _running(clock) as (zoom, manager):
        old = await manager.get_token()
        clock.jump_wall(3600)
        tokens = await asyncio.gather(*(manager.get_token() for _ in range(100)))
        assert set(tokens) != {old} and len(set(tokens)) == 1
        await _settle(clock)
        assert zoom.counters.token_requests == 2


async def test_wall_clock_jumping_back_does_not_delay_the_refresh() -> None:
    """An NTP step of -1 h must not keep an expiring token: the monotonic clock still moves,
    the refresh happens on time, once, and the old token is not served past its real end."""
    clock = FakeClock()
    async with _running(clock) as (zoom, manager):
        old = await manager.get_token()
        clock.jump_wall(-3600)
        # Real time passes to just past the hard deadline (monotonic-wise).
        await _settle(clock, seconds=LIFETIME * 0.99, step=30)
        assert zoom.counters.token_requests == 2
        assert await manager.get_token() != old
        # Nor does it refresh again early (no storm) in the next stretch.
        await _settle(clock, seconds=LIFETIME * 0.5, step=30)
        assert zoom.counters.token_requests == 2


@pytest.mark.parametrize(
    ("stall", "serves_old"),
    [(LIFETIME * 0.9, True), (LIFETIME * 0.99, False), (LIFETIME * 5, False)],
    ids=["into-stale", "past-deadline", "far-past"],
)
async def test_a_blocked_event_loop_serves_no_expired_token_and_refreshes_once(
    stall: float, serves_old: bool
) -> None:
    """The loop stalls past the refresh margin (both clocks jump, no task runs), then the
    overdue refresher and 200 callers all run at once: one POST, no expired token served."""
    clock = StallableClock()
    async with _running(clock) as (zoom, manager):
        old = await manager.get_token()
        clock.stall(stall)
        results = await asyncio.gather(clock.advance(0), *(manager.get_token() for _ in range(200)))
        tokens = set(results[1:])
        if serves_old:
            # Still valid (STALE): served while the one refresh runs.
            assert old in tokens
        else:
            assert tokens and old not in tokens
        await _settle(clock)
        assert zoom.counters.token_requests == 2
        assert await manager.get_token() != old
        assert await _valid_at_the_server(zoom, await manager.get_token())


# ----------------------------------------- bugs the matrix found (regression tests now)


def _blackhole() -> tuple[socket.socket, list[socket.socket]]:
    """A loopback port whose full accept queue makes new connections hang in SYN-SENT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(listener.getsockname())
        fillers.append(filler)
    return listener, fillers


async def test_a_connect_timeout_is_a_transport_error_not_an_unknown_outcome() -> None:
    """A server that never completes the TCP handshake got nothing: the outcome is known."""
    listener, fillers = _blackhole()
    try:
        port = listener.getsockname()[1]
        async with TokenManager(
            client_id="id",
            client_secret="secret",
            refresh_token="rt",
            token_url=f"http://127.0.0.1:{port}/oauth/token",
            http_timeout=0.2,
            retry=RetryPolicy(max_attempts=1),
        ) as manager:
            with pytest.raises(TransportError) as failed:
                await manager.refresh()
        assert not isinstance(failed.value, OutcomeUnknownError)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_lost_answer_is_named_even_when_it_ended_the_burst() -> None:
    """The server rotated, the answer was lost on the burst's last attempt: the invalid_grant
    of the next burst still says the answer was lost, not that the grant was revoked."""
    clock = FakeClock(autojump=True)
    async with ZoomOAuthEmulator(clock=clock) as zoom:
        seed = zoom.create_grant()
        zoom.inject(Fault.reset(rotate=True))
        manager = TokenManager(
            client_id=zoom.client_id,
            client_secret=zoom.client_secret,
            refresh_token=seed,
            token_url=zoom.token_url,
            clock=clock,
            sleep=clock.sleep,
            retry=RetryPolicy(max_attempts=1),
        )
        try:
            with pytest.raises(OutcomeUnknownError):
                await manager.refresh()
            with pytest.raises(ReauthorizationRequiredError) as dead:
                await manager.refresh()
        finally:
            await manager.aclose()
    assert re.search(r"\blost\b", dead.value.message)


_KILLED_MID_SAVE = """
import asyncio, os, signal, sys
from zoomtoken import Token
from zoomtoken.stores import FileStore
import zoomtoken.stores.file as file_store

def die(*args):  # the temp file is written and fsynced; the rename never happens
    os.kill(os.getpid(), signal.SIGKILL)

file_store.os.replace = die
token = Token.issue(access_token="at", refresh_token="rt", expires_in=60, issued_at=0, jitter=0)
asyncio.run(FileStore(sys.argv[1]).save(token, expected_generation=None))
"""


async def test_a_save_killed_before_its_rename_leaves_no_secret_behind(tmp_path: Path) -> None:
    """After a crash mid-save, the next save and a clear leave no temp file with a pair."""
    path = tmp_path / "token.json"
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", _KILLED_MID_SAVE, str(path))
    assert await child.wait() == -signal.SIGKILL
    assert list(tmp_path.glob(".token.json.*.tmp"))  # the crash left one
    store = FileStore(path)
    token = Token.issue(
        access_token="at2", refresh_token="rt2", expires_in=60, issued_at=0, jitter=0
    )
    await store.save(token, expected_generation=None)
    await store.clear()
    await store.aclose()
    assert list(tmp_path.glob(".token.json.*.tmp")) == []
