"""Secret canaries: credentials and tokens never reach logs, errors, reprs, CLI output or any
file but the token store, through a whole manager life against the emulator.

The emulator mints canary-looking tokens (its ``secrets`` module is swapped for one that
records what it hands out), so every token that ever exists in a run is known and searched
for, not only the fixed ``CANARY_*`` values.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import stat
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import zoomtoken.testing
from conftest import (
    CANARY_ACCESS_TOKEN,
    CANARY_CLIENT_ID,
    CANARY_CLIENT_SECRET,
    CANARY_REFRESH_TOKEN,
)
from zoomtoken import (
    Event,
    OAuthError,
    ReauthorizationRequiredError,
    RetryPolicy,
    TokenManager,
    ZoomTokenError,
)
from zoomtoken.stores import FileStore
from zoomtoken.testing import FakeClock, Fault, ZoomOAuthEmulator

WRONG_SECRET = CANARY_CLIENT_SECRET + "-but-wrong"
MINTED_PREFIX = "canary-minted-"


class Mint:
    """Stands in for ``secrets`` inside the emulator: canary tokens, all remembered."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        self._numbers = itertools.count()
        self.compare_digest = secrets.compare_digest

    def token_urlsafe(self, nbytes: int | None = None) -> str:
        number = next(self._numbers)
        # The first grant's pair is the fixed canaries; everything after is numbered.
        fixed = {0: CANARY_REFRESH_TOKEN, 1: CANARY_ACCESS_TOKEN}
        value = fixed.get(number) or f"{MINTED_PREFIX}{number:04d}-{secrets.token_hex(6)}"
        self.issued.append(value)
        return value


@pytest.fixture
def mint(monkeypatch: pytest.MonkeyPatch) -> Mint:
    minted = Mint()
    monkeypatch.setattr(zoomtoken.testing, "secrets", minted)
    return minted


def _secrets(mint: Mint) -> list[str]:
    return [CANARY_CLIENT_SECRET, WRONG_SECRET, *mint.issued]


def _exception_texts(exc: BaseException) -> list[str]:
    """str, repr and the full formatted chain (what a traceback in a log would show)."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        texts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return texts


def _assert_clean(texts: list[str], forbidden: list[str], where: str) -> None:
    blob = "\n".join(texts)
    for secret in forbidden:
        assert secret not in blob, f"a secret reached {where}"
    assert MINTED_PREFIX not in blob, f"a minted token reached {where}"


def _files_except(root: Path, keep: Path) -> Iterator[Path]:
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if path != keep:
                yield path


async def test_no_secret_leaks_through_a_whole_manager_life(
    mint: Mint, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Refresh, failures, invalid_client, invalid_grant, expiry and revoke: no secret leaks."""
    caplog.set_level(logging.DEBUG)  # the root logger: zoomtoken, aiohttp.*, asyncio
    # A real log file too, so the file sweep below covers what a deployment would keep.
    file_log = logging.FileHandler(tmp_path / "app.log")
    file_log.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(file_log)
    store_path = tmp_path / "state" / "token.json"
    clock = FakeClock()
    events: list[Event] = []
    texts: list[str] = []
    errors: list[BaseException] = []
    try:
        async with ZoomOAuthEmulator(
            client_id=CANARY_CLIENT_ID,
            client_secret=CANARY_CLIENT_SECRET,
            clock=clock,
            reuse_detection=True,
        ) as emulator:
            seed = emulator.create_grant(user_id="canary-user")
            assert seed == CANARY_REFRESH_TOKEN

            def manager(secret: str = CANARY_CLIENT_SECRET) -> TokenManager:
                return TokenManager(
                    client_id=CANARY_CLIENT_ID,
                    client_secret=secret,
                    refresh_token=seed,
                    store=FileStore(store_path),
                    close_store=True,
                    token_url=emulator.token_url,
                    revoke_url=emulator.revoke_url,
                    clock=clock,
                    sleep=clock.sleep,
                    http_timeout=0.2,
                    on_event=events.append,
                    # A roomy budget: with autojump, the background refresher's sleeps move
                    # virtual time while a request is on the wire.
                    retry=RetryPolicy(max_attempts=2, budget=600, backoff_base=0.01),
                )

            # invalid_client with a wrong secret (which contains the real one).
            async with manager(WRONG_SECRET) as wrong:
                with pytest.raises(ReauthorizationRequiredError) as rejected:
                    await wrong.get_token()
                errors.append(rejected.value)
                texts += [repr(wrong), repr(wrong.status())]

            async with manager() as live:
                await live.get_token()
                texts += [repr(live), repr(live.status())]
                # Failures whose bodies carry secrets the client must not repeat.
                echo = (
                    f"<html>{CANARY_REFRESH_TOKEN} {mint.issued[-1]} {CANARY_CLIENT_SECRET}</html>"
                )
                emulator.inject(
                    Fault.status(503, body={"error": "server_error", "debug": mint.issued[-2]}),
                    Fault.malformed(echo),
                    Fault.reset(),
                    Fault.hang(),
                    Fault.malformed(echo, status=502, content_type="text/html"),
                )
                # Retries and cool-downs now pass in virtual time.
                clock.autojump = True
                for _ in range(2):
                    with pytest.raises(ZoomTokenError) as failed:
                        await live.refresh(force=True)
                    emulator.release_hung()
                    errors.append(failed.value)
                await live.refresh(force=True)  # the server is healthy again
                # The answer to a real refresh is lost: outcome unknown, then invalid_grant.
                emulator.inject(Fault.reset(rotate=True))
                with pytest.raises(ReauthorizationRequiredError) as lost:
                    await live.refresh(force=True)
                errors.append(lost.value)
                # Past the deadline: the typed error callers get.
                await clock.advance(4000)
                with pytest.raises(ZoomTokenError) as expired:
                    await live.get_token()
                errors.append(expired.value)
                texts += [repr(live), repr(live.status()), repr(live.last_error)]

            # A new grant, then revoke it.
            emulator.reuse_detection = False
            fresh_seed = emulator.create_grant(user_id="canary-user-2")
            revoker = TokenManager(
                client_id=CANARY_CLIENT_ID,
                client_secret=CANARY_CLIENT_SECRET,
                refresh_token=fresh_seed,
                token_url=emulator.token_url,
                revoke_url=emulator.revoke_url,
                clock=clock,
                sleep=clock.sleep,
            )
            async with revoker:
                await revoker.get_token()
                await revoker.revoke()
                texts.append(repr(revoker))
            store = FileStore(store_path)
            stored = await store.load()
            lease = await store.try_acquire_lease(ttl=5)
            texts += [repr(store), repr(stored), repr(lease), repr(emulator), repr(clock)]
            texts += [repr(emulator.counters), repr(emulator.grant_info("canary-user-2"))]
            texts += [repr(RetryPolicy())]
            if lease is not None:
                await lease.release()
            await store.aclose()
    finally:
        logging.getLogger().removeHandler(file_log)
        file_log.close()

    assert len(mint.issued) > 6 and errors and caplog.records
    forbidden = _secrets(mint)
    texts += [repr(event) for event in events]
    for error in errors:
        texts += _exception_texts(error)
    _assert_clean(texts, forbidden, "a repr, event or error")
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    _assert_clean([formatter.format(r) for r in caplog.records], forbidden, "the logs")
    for path in _files_except(tmp_path, store_path):
        _assert_clean([path.read_bytes().decode(errors="replace")], forbidden, path.name)
    # The store holds the secrets, so it is private.
    assert stat.S_IMODE(store_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store_path.parent.stat().st_mode) == 0o700


async def test_an_error_reason_echoing_the_refresh_token_is_redacted(mint: Mint) -> None:
    """The library knows the secrets it sent: an answer repeating one never reaches a message."""
    clock = FakeClock(autojump=True)
    async with ZoomOAuthEmulator(
        client_id=CANARY_CLIENT_ID, client_secret=CANARY_CLIENT_SECRET, clock=clock
    ) as emulator:
        seed = emulator.create_grant()
        emulator.inject(
            Fault.status(400, body={"error": "invalid_request", "reason": f"bad token {seed}"})
        )
        async with TokenManager(
            client_id=CANARY_CLIENT_ID,
            client_secret=CANARY_CLIENT_SECRET,
            refresh_token=seed,
            token_url=emulator.token_url,
            clock=clock,
            sleep=clock.sleep,
        ) as manager:
            with pytest.raises(OAuthError) as failed:
                await manager.refresh()
    _assert_clean(_exception_texts(failed.value), _secrets(mint), "the error")


async def test_cli_output_never_shows_a_secret(
    mint: Mint, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """refresh, status, a failing refresh and revoke print no token or secret (-v included)."""
    cli: Any = pytest.importorskip("zoomtoken._cli")
    if not hasattr(cli, "run_async"):
        pytest.skip("the CLI has no run_async(argv, environ=...) entry point")
    async with ZoomOAuthEmulator(
        client_id=CANARY_CLIENT_ID, client_secret=CANARY_CLIENT_SECRET
    ) as emulator:
        environ = {
            "ZOOM_CLIENT_ID": CANARY_CLIENT_ID,
            "ZOOM_CLIENT_SECRET": CANARY_CLIENT_SECRET,
            "ZOOM_REFRESH_TOKEN": emulator.create_grant(),
            "ZOOM_TOKEN_STORE": str(tmp_path / "token.json"),
            "ZOOM_TOKEN_URL": emulator.token_url,
            "ZOOM_REVOKE_URL": emulator.revoke_url,
        }
        outputs: list[str] = []
        for argv in (["-v", "refresh"], ["status"], ["status", "--json"], ["-v", "refresh"]):
            await cli.run_async(argv, environ=environ)
            captured = capsys.readouterr()
            outputs += [captured.out, captured.err]
        # A 4xx is not retried, so the command fails at once, with the page in hand.
        emulator.inject(Fault.malformed(f"<html>{mint.issued[-1]}</html>", status=400))
        status = await cli.run_async(["-v", "refresh"], environ=environ)
        captured = capsys.readouterr()
        outputs += [captured.out, captured.err]
        assert status != 0
        wrong = {**environ, "ZOOM_CLIENT_SECRET": WRONG_SECRET}
        assert await cli.run_async(["-v", "refresh"], environ=wrong) != 0
        captured = capsys.readouterr()
        outputs += [captured.out, captured.err]
        await cli.run_async(["-v", "revoke"], environ=environ)
        captured = capsys.readouterr()
        outputs += [captured.out, captured.err]
    assert any(outputs)
    _assert_clean(outputs, _secrets(mint), "the CLI output")
    await asyncio.sleep(0)
