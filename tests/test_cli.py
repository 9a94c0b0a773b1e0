"""The ``zoomtoken`` command line: env-driven commands against the emulator, hygiene, the demo."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import CANARIES, CANARY_CLIENT_ID, CANARY_CLIENT_SECRET
from zoomtoken import Token, _cli
from zoomtoken.stores.file import FileStore
from zoomtoken.testing import ZoomOAuthEmulator

USER = "cli-user"
# What a token from the emulator looks like (secrets.token_urlsafe(32)): no output line of
# the demo may hold such a run of characters.
TOKEN_LIKE = re.compile(r"[A-Za-z0-9_-]{40,}")


@pytest.fixture
async def zoom() -> AsyncIterator[ZoomOAuthEmulator]:
    async with ZoomOAuthEmulator(
        client_id=CANARY_CLIENT_ID, client_secret=CANARY_CLIENT_SECRET, reuse_detection=True
    ) as emulator:
        yield emulator


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "zoom" / "token.json"


def zoom_env(
    zoom: ZoomOAuthEmulator, *, store: Path | None, refresh_token: str | None = None
) -> dict[str, str]:
    env = {
        "ZOOM_CLIENT_ID": zoom.client_id,
        "ZOOM_CLIENT_SECRET": zoom.client_secret,
        "ZOOM_TOKEN_URL": zoom.token_url,
        "ZOOM_REVOKE_URL": zoom.revoke_url,
    }
    if store is not None:
        env["ZOOM_TOKEN_STORE"] = str(store)
    if refresh_token is not None:
        env["ZOOM_REFRESH_TOKEN"] = refresh_token
    return env


async def cli(
    capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str]
) -> tuple[int, str, str]:
    code = await _cli.run_async(list(argv), environ=env)
    out, err = capsys.readouterr()
    return code, out, err


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ZOOM_")}


# ------------------------------------------------------------------------------ commands


async def test_token_prints_only_the_access_token_and_reuses_the_stored_one(
    zoom: ZoomOAuthEmulator, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`token` prints exactly the access token on stdout; a second run reuses the stored pair."""
    env = zoom_env(zoom, store=store_path, refresh_token=zoom.create_grant(user_id=USER))

    code, out, err = await cli(capsys, "token", env=env)
    again = await cli(capsys, "token", env=env)

    assert (code, err) == (0, "")
    assert out == zoom.grant_info(USER).access_token + "\n"
    assert again == (0, out, "")
    assert zoom.counters.token_requests == 1


async def test_refresh_rotates_once_and_prints_generation_not_token(
    zoom: ZoomOAuthEmulator, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each `refresh` is one rotation; it prints the generation and expiry, never a token."""
    env = zoom_env(zoom, store=store_path, refresh_token=zoom.create_grant(user_id=USER))

    first = await cli(capsys, "refresh", env=env)
    second = await cli(capsys, "refresh", env=env)

    info = zoom.grant_info(USER)
    assert first[0] == second[0] == 0
    assert first[1].startswith("refreshed: generation 0, valid for ")
    assert second[1].startswith("refreshed: generation 1, valid for ")
    assert info.refreshes == 2
    assert zoom.counters.invalid_grant == zoom.counters.reuse_detected == 0
    for text in (*first, *second):
        assert info.access_token not in str(text)
        assert info.refresh_token not in str(text)


async def test_status_json_loads_the_store_without_refreshing(
    zoom: ZoomOAuthEmulator, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --json` reports the stored token's state and generation and never POSTs."""
    env = zoom_env(zoom, store=store_path, refresh_token=zoom.create_grant(user_id=USER))
    await cli(capsys, "refresh", env=env)
    posts = zoom.counters.token_requests

    code, out, err = await cli(capsys, "status", "--json", env=env)

    status = json.loads(out)
    assert (code, err) == (0, "")
    assert status["state"] == "fresh"
    assert status["generation"] == 0
    assert 0 < status["seconds_to_expiry"] <= 3599
    assert status["last_error"] is None
    assert status["reauthorization_required"] is False
    assert status["token_posts"] == 0
    assert zoom.counters.token_requests == posts


async def test_status_text_is_aligned_and_says_when_nothing_is_stored(
    zoom: ZoomOAuthEmulator, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plain `status` on an empty store says "no token", in aligned name/value lines."""
    env = zoom_env(zoom, store=store_path, refresh_token=zoom.create_grant(user_id=USER))

    code, out, _ = await cli(capsys, "status", env=env)

    lines = out.splitlines()
    column = lines[0].index("no token")
    assert code == 0
    assert lines[0].split() == ["state", "no", "token"]
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in lines)
    assert any(line.startswith("token POSTs") for line in lines)
    assert zoom.counters.token_requests == 0


async def test_revoke_kills_the_grant_and_clears_the_store(
    zoom: ZoomOAuthEmulator, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`revoke` revokes upstream, deletes the token file, and later commands ask to re-authorise."""
    env = zoom_env(zoom, store=store_path, refresh_token=zoom.create_grant(user_id=USER))
    await cli(capsys, "token", env=env)

    code, out, err = await cli(capsys, "revoke", env=env)
    after = await cli(capsys, "refresh", env=env)

    assert (code, err) == (0, "")
    assert out.startswith("revoked: the grant is dead (generation 0)")
    assert zoom.grant_info(USER).revoked
    assert not store_path.exists()
    assert after[0] == 1
    assert after[2].count("\n") == 1
    assert after[2].startswith("zoomtoken: error: ") and "re-authorise" in after[2]


async def test_token_falls_back_to_a_still_valid_token_when_the_refresh_fails(
    zoom: ZoomOAuthEmulator, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A STALE token whose refresh is refused is still printed, with a warning on stderr."""
    zoom.create_grant(user_id=USER)
    access_token = zoom.grant_info(USER).access_token
    stale = Token.issue(
        access_token=access_token,
        refresh_token="refresh-token-the-server-does-not-know",
        expires_in=3600,
        issued_at=time.time() - 3000,  # refresh_at is at 2880 s, the hard deadline at 3540 s
        jitter=0.0,
    )
    await FileStore(store_path).save(stale, expected_generation=None)

    code, out, err = await cli(capsys, "token", env=zoom_env(zoom, store=store_path))

    assert (code, out) == (0, access_token + "\n")
    assert err.startswith("zoomtoken: warning: refresh failed, printing the still-valid token")
    assert access_token not in err


async def test_token_without_a_store_is_refused_before_any_post(
    zoom: ZoomOAuthEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a store a refresh would lose the rotated pair: `token` exits 2 and POSTs nothing."""
    env = zoom_env(zoom, store=None, refresh_token=zoom.create_grant(user_id=USER))

    code, out, err = await cli(capsys, "token", env=env)

    assert (code, out) == (2, "")
    assert err.startswith("zoomtoken: error: set ZOOM_TOKEN_STORE or pass --store PATH")
    assert zoom.counters.token_requests == 0


async def test_store_option_overrides_the_environment(
    zoom: ZoomOAuthEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--store PATH` wins over ZOOM_TOKEN_STORE."""
    env_store, option_store = tmp_path / "env.json", tmp_path / "option.json"
    env = zoom_env(zoom, store=env_store, refresh_token=zoom.create_grant(user_id=USER))

    code, _, _ = await cli(capsys, "refresh", "--store", str(option_store), env=env)

    assert code == 0
    assert option_store.exists()
    assert not env_store.exists()


async def test_invalid_grant_is_one_line_exit_1(
    zoom: ZoomOAuthEmulator, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dead refresh token gives one `zoomtoken: error:` line and exit 1, no traceback."""
    env = zoom_env(zoom, store=store_path, refresh_token="not-a-token-the-server-knows")

    code, out, err = await cli(capsys, "refresh", env=env)

    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("zoomtoken: error: the refresh token is no longer valid")


async def test_insecure_endpoint_is_a_configuration_error(
    zoom: ZoomOAuthEmulator, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plain http:// to a non-loopback host exits 2 with one line."""
    env = zoom_env(zoom, store=store_path, refresh_token="rt")
    env["ZOOM_TOKEN_URL"] = "http://zoom.example.com/oauth/token"

    code, _, err = await cli(capsys, "status", env=env)

    assert code == 2
    assert err.count("\n") == 1 and err.startswith("zoomtoken: error: ")


def test_missing_environment_is_one_line_exit_2_without_traceback() -> None:
    """`python -m zoomtoken status` with no ZOOM_* settings: one clear line, exit 2."""
    result = subprocess.run(
        [sys.executable, "-m", "zoomtoken", "status"],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("zoomtoken: error: missing or empty environment variable")
    assert "Traceback" not in result.stderr


async def test_token_in_a_subprocess_is_usable_in_a_bearer_header(
    zoom: ZoomOAuthEmulator, store_path: Path
) -> None:
    """`python -m zoomtoken token` prints the bare token: $(zoomtoken token) needs no cleanup."""
    env = clean_environ() | zoom_env(
        zoom, store=store_path, refresh_token=zoom.create_grant(user_id=USER)
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zoomtoken",
        "token",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)

    assert process.returncode == 0
    assert err == b""
    assert out.decode() == zoom.grant_info(USER).access_token + "\n"


def test_ctrl_c_is_one_line_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """KeyboardInterrupt ends the command with exit 130 and one line, no traceback."""

    async def interrupted(argv: object = None) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "run_async", interrupted)

    code = _cli.run(["status"])

    out, err = capsys.readouterr()
    assert (code, out, err) == (130, "", "zoomtoken: error: interrupted\n")


def test_usage_error_and_help_return_argparse_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """A usage error returns 2 and --help returns 0, both without raising SystemExit."""
    assert asyncio.run(_cli.run_async(["no-such-command"])) == 2
    assert asyncio.run(_cli.run_async(["--help"])) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("demo", "token", "status", "authorize", "call"))


# ------------------------------------------------------------------------------ canaries


def assert_no_secret(texts: list[str], secrets: list[str]) -> None:
    joined = "\n".join(texts)
    for secret in secrets:
        assert secret not in joined


async def test_canary_secrets_never_printed_on_success_paths(
    zoom: ZoomOAuthEmulator, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With -v, `refresh`, `status` and `revoke` print neither the secret nor any token."""
    env = zoom_env(zoom, store=store_path, refresh_token=zoom.create_grant(user_id=USER))
    secrets = [CANARY_CLIENT_SECRET, *CANARIES]
    texts: list[str] = []

    for argv in (["refresh"], ["status"], ["status", "--json"], ["refresh"], ["revoke"]):
        info = zoom.grant_info(USER)
        secrets += [info.access_token, info.refresh_token]
        code, out, err = await cli(capsys, "-v", *argv, env=env)
        assert code == 0, err
        texts += [out, err]
    info = zoom.grant_info(USER)
    secrets += [info.access_token, info.refresh_token]

    assert "token refreshed: generation 1" in "".join(texts)  # -v really logged
    assert_no_secret(texts, secrets)


async def test_token_prints_the_access_token_to_stdout_only(
    zoom: ZoomOAuthEmulator, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Even with -v, `token` logs nothing secret: the token appears on stdout alone."""
    seed = zoom.create_grant(user_id=USER)
    env = zoom_env(zoom, store=store_path, refresh_token=seed)

    code, out, err = await cli(capsys, "token", "-v", env=env)

    info = zoom.grant_info(USER)
    assert code == 0
    assert out.strip() == info.access_token
    assert_no_secret([err], [CANARY_CLIENT_SECRET, seed, info.access_token, info.refresh_token])
    assert_no_secret([out], [CANARY_CLIENT_SECRET, seed, info.refresh_token])


async def test_canary_tokens_never_printed_on_error_paths(
    zoom: ZoomOAuthEmulator, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stored pair of canary tokens the server rejects never shows up in any output."""
    expired = Token.issue(
        access_token=CANARIES[2],
        refresh_token=CANARIES[1],
        expires_in=3600,
        issued_at=time.time() - 7200,
        jitter=0.0,
    )
    await FileStore(store_path).save(expired, expected_generation=None)
    env = zoom_env(zoom, store=store_path)
    texts: list[str] = []
    codes: list[int] = []

    for argv in (["status"], ["status", "--json"], ["refresh"], ["token"], ["revoke"]):
        code, out, err = await cli(capsys, "-v", *argv, env=env)
        codes.append(code)
        texts += [out, err]

    assert codes == [0, 0, 1, 1, 1]
    assert zoom.counters.invalid_grant >= 1
    assert_no_secret(texts, [CANARY_CLIENT_SECRET, *CANARIES])


@pytest.mark.parametrize(
    ("change", "expected_code"),
    [
        pytest.param({"ZOOM_CLIENT_ID": ""}, 2, id="missing-client-id"),
        pytest.param({"ZOOM_CLIENT_SECRET": CANARY_CLIENT_SECRET + "-wrong"}, 1, id="bad-secret"),
        pytest.param({"ZOOM_TOKEN_URL": "http://zoom.example.com/oauth/token"}, 2, id="http"),
    ],
)
async def test_canary_secrets_never_printed_on_configuration_and_client_errors(
    zoom: ZoomOAuthEmulator,
    store_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, str],
    expected_code: int,
) -> None:
    """Missing settings, a rejected secret or a plain-http endpoint: one line, no secret."""
    env = zoom_env(zoom, store=store_path, refresh_token=CANARIES[1]) | change

    code, out, err = await cli(capsys, "-v", "refresh", env=env)

    assert code == expected_code
    assert out == ""
    assert err.splitlines()[-1].startswith("zoomtoken: error: ")
    assert_no_secret([out, err], [CANARY_CLIENT_SECRET, *CANARIES])


# ------------------------------------------------------------------------------ demo


async def test_demo_runs_to_completion_with_one_post_for_the_herd(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A small demo passes every expectation, shows the summary, and prints no token."""
    code = await _cli.run_async(["demo", "--callers", "500", "--lifetime", "2", "--cycles", "1"])

    out, err = capsys.readouterr()
    assert code == 0, out
    assert err == ""
    assert "Summary" in out
    assert re.search(r"^thundering herd\s+1\s+500\s+500\s+0\s+0\s", out, re.MULTILINE)
    assert re.search(r"^5xx burst \+ retry\s+4\s", out, re.MULTILINE)
    assert "reuse detected 0" in out
    assert "OK: every expectation held." in out
    assert "\r" not in out  # not a terminal: plain lines, no in-place status
    assert not TOKEN_LIKE.search(out)


async def test_demo_exits_non_zero_when_an_expectation_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """If the herd's callers saw different tokens, the demo says FAILED and exits 1."""
    counter = iter(range(1_000_000))
    monkeypatch.setattr(_cli, "fingerprint", lambda token: f"sha256:{next(counter)}")

    code = await _cli.run_async(["demo", "--callers", "50", "--lifetime", "2", "--cycles", "1"])

    out, _ = capsys.readouterr()
    assert code == 1
    assert "FAILED" in out
    assert "every caller got the same token" in out
