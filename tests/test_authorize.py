"""The authorization-code flow with PKCE: pure pieces, the code exchange, the interactive
loopback flow, and the ``authorize`` / ``call`` commands, end to end against the emulator.

A "browser" is an aiohttp client that GETs the authorize URL and follows the emulator's
redirect to the loopback listener.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import socket
import string
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from zoomtoken import (
    ConfigurationError,
    InsecureEndpointError,
    MemoryStore,
    ReauthorizationRequiredError,
    TokenManager,
    ZoomTokenError,
)
from zoomtoken._authorize import (
    AuthorizationError,
    authorization_url,
    authorize_interactive,
    exchange_code,
    new_pkce_pair,
    parse_callback,
)
from zoomtoken._cli_extra import add_authorize_parser, add_call_parser
from zoomtoken._oauth import authorization_code_request
from zoomtoken.stores.file import FileStore
from zoomtoken.testing import FakeClock, ZoomOAuthEmulator

# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def zoom(clock: FakeClock) -> AsyncIterator[ZoomOAuthEmulator]:
    async with ZoomOAuthEmulator(clock=clock) as emulator:
        yield emulator


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def redirect_uri() -> str:
    return f"http://127.0.0.1:{free_port()}/callback"


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port: int = holder.getsockname()[1]
        yield port


async def until(condition: Callable[[], bool]) -> None:
    """Let real I/O happen until ``condition`` holds (bounded: 20 s)."""
    for _ in range(4000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


def url_in(lines: list[str]) -> str:
    for line in lines:
        if match := re.search(r"https?://\S+/oauth/authorize\S*", line):
            return match.group(0)
    raise AssertionError("no authorize URL printed")


def has_url(lines: list[str]) -> bool:
    return any("/oauth/authorize" in line for line in lines)


async def get_code(
    browser: aiohttp.ClientSession, zoom: ZoomOAuthEmulator, challenge: str, redirect: str
) -> str:
    url = authorization_url(
        client_id=zoom.client_id,
        redirect_uri=redirect,
        state="s",
        code_challenge=challenge,
        authorize_url=zoom.authorize_url,
    )
    async with browser.get(url, allow_redirects=False) as response:
        assert response.status == 302
        return URL(response.headers["Location"]).query["code"]


async def visit(browser: aiohttp.ClientSession, url: str | URL) -> tuple[int, str]:
    async with browser.get(url) as response:
        return response.status, await response.text()


async def redirect_of(browser: aiohttp.ClientSession, url: str) -> URL:
    """The consent step only: where the emulator sends the browser back to."""
    async with browser.get(url, allow_redirects=False) as response:
        assert response.status == 302
        return URL(response.headers["Location"])


class Flow:
    """authorize_interactive() running as a task, with what it printed."""

    def __init__(self, zoom: ZoomOAuthEmulator, clock: FakeClock, **options: Any) -> None:
        self.printed: list[str] = []
        self.store = options.pop("store", None) or MemoryStore()
        kwargs: dict[str, Any] = {
            "client_id": zoom.client_id,
            "client_secret": zoom.client_secret,
            "store": self.store,
            "authorize_url": zoom.authorize_url,
            "token_url": zoom.token_url,
            "print_fn": self.printed.append,
            "clock": clock,
            "timeout": 30.0,
        }
        kwargs.update(options)
        self.task = asyncio.create_task(authorize_interactive(**kwargs))

    async def url(self) -> str:
        await until(lambda: has_url(self.printed) or self.task.done())
        if self.task.done():
            self.task.result()  # raise what failed
        return url_in(self.printed)


# ------------------------------------------------------------------------------ pure pieces


def test_pkce_pair_is_a_random_verifier_and_its_s256_challenge() -> None:
    """The verifier is 43-128 unreserved characters; the challenge is its SHA-256, base64url."""
    verifier, challenge = new_pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert set(verifier) <= set(string.ascii_letters + string.digits + "-._~")
    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert new_pkce_pair()[0] != verifier


def test_authorization_url_always_asks_for_s256_and_a_code() -> None:
    """Zoom's default PKCE method is plain, so S256 is always explicit."""
    url = URL(
        authorization_url(
            client_id="cid",
            redirect_uri="http://127.0.0.1:8765/callback",
            state="st",
            code_challenge="ch",
        )
    )
    assert url.origin() == URL("https://zoom.us")
    assert url.path == "/oauth/authorize"
    assert dict(url.query) == {
        "response_type": "code",
        "client_id": "cid",
        "redirect_uri": "http://127.0.0.1:8765/callback",
        "state": "st",
        "code_challenge": "ch",
        "code_challenge_method": "S256",
    }


def test_authorization_url_refuses_plain_http_off_loopback() -> None:
    """The authorize endpoint must be https (loopback aside)."""
    with pytest.raises(InsecureEndpointError):
        authorization_url(
            client_id="c",
            redirect_uri="http://127.0.0.1:1/cb",
            state="s",
            code_challenge="c",
            authorize_url="http://zoom.us/oauth/authorize",
        )


def test_parse_callback_returns_the_code_when_state_matches() -> None:
    """A matching state releases the code."""
    assert parse_callback({"code": "the-code", "state": "st"}, expected_state="st") == "the-code"


@pytest.mark.parametrize(
    ("query", "error", "words"),
    [
        ({"code": "the-code", "state": "ATTACKER-STATE"}, "state_mismatch", "state does not match"),
        ({"code": "the-code"}, "state_mismatch", "state does not match"),
        ({"state": "st"}, "missing_code", "no authorization code"),
        ({"code": "", "state": "st"}, "missing_code", "no authorization code"),
        ({"error": "access_denied", "state": "st"}, "access_denied", "denied access"),
        ({"error": "access_denied"}, "access_denied", "denied access"),
        ({"error": "access_denied", "state": "ATTACKER-STATE"}, "state_mismatch", "state does not"),
        ({"error": "server_error", "state": "st"}, "server_error", "answered server_error"),
    ],
)
def test_parse_callback_raises_a_clear_typed_error(
    query: dict[str, str], error: str, words: str
) -> None:
    """Forged state, missing code and refused consent each get their own message."""
    with pytest.raises(AuthorizationError, match=words) as caught:
        parse_callback(query, expected_state="st")
    assert caught.value.error == error
    assert isinstance(caught.value, ZoomTokenError)
    assert "the-code" not in caught.value.message
    assert "ATTACKER-STATE" not in caught.value.message


def test_authorization_code_request_is_a_form_post_that_hides_its_values() -> None:
    """The exchange is a form body (never a query string); its repr names fields only."""
    request = authorization_code_request(
        URL("https://zoom.us/oauth/token"),
        "Basic abc",
        code="the-code",
        redirect_uri="http://127.0.0.1:1/cb",
        code_verifier="the-verifier",
    )
    assert dict(request.form) == {
        "grant_type": "authorization_code",
        "code": "the-code",
        "redirect_uri": "http://127.0.0.1:1/cb",
        "code_verifier": "the-verifier",
    }
    assert request.url.query_string == ""
    assert request.headers["Authorization"] == "Basic abc"
    assert "the-code" not in repr(request) and "the-verifier" not in repr(request)


# ------------------------------------------------------------------------------ exchange


async def test_exchange_code_saves_the_new_grant_as_the_next_generation(
    zoom: ZoomOAuthEmulator, browser: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """An empty store gets generation 0; authorising again saves generation 1 over it."""
    store = MemoryStore()
    for expected_generation in (0, 1):
        verifier, challenge = new_pkce_pair()
        code = await get_code(browser, zoom, challenge, "http://127.0.0.1:1/cb")
        token = await exchange_code(
            client_id=zoom.client_id,
            client_secret=zoom.client_secret,
            code=code,
            redirect_uri="http://127.0.0.1:1/cb",
            code_verifier=verifier,
            token_url=zoom.token_url,
            store=store,
            clock=clock,
        )
        assert token.generation == expected_generation
        assert token.issued_at == clock.time()
        stored = await store.load()
        assert stored == token
        assert stored.refresh_token == zoom.grant_info(zoom.authorize_user_id).refresh_token
    assert zoom.counters.codes_exchanged == 2


async def test_exchange_code_sends_the_verifier_not_the_challenge(
    zoom: ZoomOAuthEmulator, browser: aiohttp.ClientSession
) -> None:
    """A verifier that does not match the S256 challenge is refused with a clear message."""
    _, challenge = new_pkce_pair()
    code = await get_code(browser, zoom, challenge, "http://127.0.0.1:1/cb")
    with pytest.raises(AuthorizationError, match="code was refused"):
        await exchange_code(
            client_id=zoom.client_id,
            client_secret=zoom.client_secret,
            code=code,
            redirect_uri="http://127.0.0.1:1/cb",
            code_verifier=new_pkce_pair()[0],
            token_url=zoom.token_url,
        )


async def test_an_expired_code_is_refused_with_a_clear_message(
    zoom: ZoomOAuthEmulator, browser: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A code older than five minutes (emulator clock) is refused; nothing is stored."""
    verifier, challenge = new_pkce_pair()
    code = await get_code(browser, zoom, challenge, "http://127.0.0.1:1/cb")
    await clock.advance(301)
    store = MemoryStore()
    with pytest.raises(AuthorizationError, match="five minutes") as caught:
        await exchange_code(
            client_id=zoom.client_id,
            client_secret=zoom.client_secret,
            code=code,
            redirect_uri="http://127.0.0.1:1/cb",
            code_verifier=verifier,
            token_url=zoom.token_url,
            store=store,
        )
    assert caught.value.error == "invalid_grant"
    assert code not in str(caught.value)
    assert await store.load() is None


async def test_rejected_client_credentials_are_not_blamed_on_the_code(
    zoom: ZoomOAuthEmulator, browser: aiohttp.ClientSession
) -> None:
    """invalid_client stays a ReauthorizationRequiredError about the credentials."""
    verifier, challenge = new_pkce_pair()
    code = await get_code(browser, zoom, challenge, "http://127.0.0.1:1/cb")
    with pytest.raises(ReauthorizationRequiredError, match="client credentials") as caught:
        await exchange_code(
            client_id=zoom.client_id,
            client_secret="wrong-secret-value",
            code=code,
            redirect_uri="http://127.0.0.1:1/cb",
            code_verifier=verifier,
            token_url=zoom.token_url,
        )
    assert "wrong-secret-value" not in str(caught.value)


# ------------------------------------------------------------------------------ interactive


async def test_full_round_trip_saves_a_grant_the_manager_can_use(
    zoom: ZoomOAuthEmulator,
    browser: aiohttp.ClientSession,
    clock: FakeClock,
    redirect_uri: str,
    tmp_path: Path,
) -> None:
    """Browser → emulator consent → loopback listener → exchange → FileStore → manager."""
    path = tmp_path / "tokens.json"
    flow = Flow(zoom, clock, redirect_uri=redirect_uri, store=FileStore(path))
    url = await flow.url()
    status, page = await visit(browser, url)
    token = await flow.task
    assert status == 200
    assert "close this tab" in page
    assert token.generation == 0
    assert zoom.counters.codes_exchanged == 1
    query = zoom.last_authorize_query
    assert query is not None
    assert query["code_challenge_method"] == "S256"
    assert query["redirect_uri"] == redirect_uri
    assert len(query["state"]) >= 32
    printed = "\n".join(flow.printed)
    assert zoom.client_secret not in printed and token.access_token not in printed
    # The listener is gone.
    port = URL(redirect_uri).port
    assert port is not None
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    # The saved pair is a working grant: a manager on the same file refreshes it.
    manager = TokenManager(
        client_id=zoom.client_id,
        client_secret=zoom.client_secret,
        store=FileStore(path),
        token_url=zoom.token_url,
        revoke_url=zoom.revoke_url,
        clock=clock,
        sleep=clock.sleep,
    )
    try:
        assert await manager.get_token() == token.access_token
        assert await manager.refresh(force=True) != token.access_token
    finally:
        await manager.aclose()
    assert zoom.counters.refreshes == 1


async def test_a_forged_state_is_refused_and_nothing_is_exchanged(
    zoom: ZoomOAuthEmulator, browser: aiohttp.ClientSession, clock: FakeClock, redirect_uri: str
) -> None:
    """A redirect whose state is not ours is refused; the browser is told so."""
    flow = Flow(zoom, clock, redirect_uri=redirect_uri)
    back = await redirect_of(browser, await flow.url())
    status, page = await visit(browser, back.update_query(state="forged-by-someone"))
    with pytest.raises(AuthorizationError, match="state does not match"):
        await flow.task
    assert status == 400
    assert "state does not match" in page
    assert zoom.counters.codes_exchanged == 0
    assert await flow.store.load() is None


async def test_an_expired_code_fails_the_flow_with_a_clear_message(
    zoom: ZoomOAuthEmulator, browser: aiohttp.ClientSession, clock: FakeClock, redirect_uri: str
) -> None:
    """The user took more than five minutes between consent and redirect: a clear error."""
    flow = Flow(zoom, clock, redirect_uri=redirect_uri)
    back = await redirect_of(browser, await flow.url())
    await clock.advance(301)
    status, page = await visit(browser, back)
    with pytest.raises(AuthorizationError, match="five minutes"):
        await flow.task
    assert status == 400
    assert "five minutes" in page
    assert await flow.store.load() is None


async def test_denied_consent_fails_the_flow_with_a_clear_message(
    zoom: ZoomOAuthEmulator, browser: aiohttp.ClientSession, clock: FakeClock, redirect_uri: str
) -> None:
    """The user clicked Decline: access_denied, nothing exchanged, nothing saved."""
    zoom.authorize_deny = True
    flow = Flow(zoom, clock, redirect_uri=redirect_uri)
    status, page = await visit(browser, await flow.url())
    with pytest.raises(AuthorizationError, match="denied access") as caught:
        await flow.task
    assert caught.value.error == "access_denied"
    assert status == 400
    assert "denied access" in page
    assert zoom.counters.token_requests == 0
    assert await flow.store.load() is None


async def test_a_redirect_port_in_use_is_named_in_the_error(
    zoom: ZoomOAuthEmulator, clock: FakeClock, occupied_port: int
) -> None:
    """Another program listens on the redirect port: a clear error naming the port."""
    flow = Flow(zoom, clock, redirect_uri=f"http://127.0.0.1:{occupied_port}/callback")
    with pytest.raises(ConfigurationError, match=f"port {occupied_port}"):
        await flow.task
    assert flow.printed == []  # nobody is sent to a consent screen we cannot receive


@pytest.mark.parametrize(
    "redirect",
    [
        "https://127.0.0.1:8765/callback",
        "http://example.com:8765/callback",
        "http://10.0.0.1:8765/callback",
        "127.0.0.1:8765/callback",
        "not a url",
    ],
)
async def test_redirect_uri_must_be_loopback_http(
    zoom: ZoomOAuthEmulator, clock: FakeClock, redirect: str
) -> None:
    """The listener runs here, so the redirect URL must be plain http on loopback."""
    flow = Flow(zoom, clock, redirect_uri=redirect)
    with pytest.raises(ConfigurationError, match="loopback http"):
        await flow.task


async def test_no_redirect_in_time_fails_and_frees_the_port(
    zoom: ZoomOAuthEmulator, clock: FakeClock, redirect_uri: str
) -> None:
    """The wait is bounded by timeout seconds; afterwards the port is free again."""
    flow = Flow(zoom, clock, redirect_uri=redirect_uri, timeout=0.2)
    with pytest.raises(AuthorizationError, match="no redirect arrived within"):
        await flow.task
    port = URL(redirect_uri).port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port or 0))


async def test_a_second_redirect_is_answered_but_ignored(
    zoom: ZoomOAuthEmulator, browser: aiohttp.ClientSession, clock: FakeClock, redirect_uri: str
) -> None:
    """Only the first redirect counts; a reload while it is handled gets a polite 409."""
    flow = Flow(zoom, clock, redirect_uri=redirect_uri)
    back = await redirect_of(browser, await flow.url())
    zoom.latency = 0.2  # keep the exchange busy while the second hit arrives
    first = asyncio.create_task(visit(browser, back))
    await until(lambda: zoom.counters.token_requests == 1)
    second_status, _ = await visit(browser, back)
    first_status, _ = await first
    await flow.task
    assert (first_status, second_status) == (200, 409)
    assert zoom.counters.codes_exchanged == 1


# ------------------------------------------------------------------------------ commands


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="zoomtoken")
    commands = parser.add_subparsers(dest="command", required=True)
    add_authorize_parser(commands)
    add_call_parser(commands)
    return parser.parse_args(argv)


def environment(zoom: ZoomOAuthEmulator, **extra: str) -> dict[str, str]:
    return {
        "ZOOM_CLIENT_ID": zoom.client_id,
        "ZOOM_CLIENT_SECRET": zoom.client_secret,
        "ZOOM_AUTHORIZE_URL": zoom.authorize_url,
        "ZOOM_TOKEN_URL": zoom.token_url,
        "ZOOM_REVOKE_URL": zoom.revoke_url,
        "ZOOM_API_URL": zoom.api_base_url,
        **extra,
    }


async def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    status: int = await args.func(args, environ)
    return status


async def test_authorize_command_saves_the_pair_and_prints_no_secret(
    zoom: ZoomOAuthEmulator,
    browser: aiohttp.ClientSession,
    redirect_uri: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`zoomtoken authorize` prints the URL, receives the redirect and saves the pair."""
    path = tmp_path / "cli.json"
    args = parse(["authorize", "--redirect-uri", redirect_uri, "--store", str(path)])
    task = asyncio.create_task(run(args, environment(zoom)))
    out: list[str] = []

    def printed() -> bool:
        out.append(capsys.readouterr().out)
        return has_url(out)

    await until(printed)
    status, _ = await visit(browser, url_in("".join(out).splitlines()))
    assert status == 200
    assert await task == 0
    out.append(capsys.readouterr().out)
    text = "".join(out)
    assert "authorised: token pair saved to" in text
    stored = await FileStore(path).load()
    assert stored is not None
    for secret in (zoom.client_secret, stored.access_token, stored.refresh_token or "-"):
        assert secret not in text


async def test_authorize_command_needs_a_store(zoom: ZoomOAuthEmulator) -> None:
    """Without --store or ZOOM_TOKEN_STORE the new pair would be lost: refused up front."""
    args = parse(["authorize", "--redirect-uri", "http://127.0.0.1:8765/callback"])
    with pytest.raises(ConfigurationError, match="ZOOM_TOKEN_STORE"):
        await run(args, environment(zoom))


async def test_authorize_command_needs_the_client_credentials(tmp_path: Path) -> None:
    """Missing ZOOM_CLIENT_ID / ZOOM_CLIENT_SECRET are named."""
    args = parse(["authorize", "--redirect-uri", "http://127.0.0.1:8765/cb", "--store", "x"])
    with pytest.raises(ConfigurationError, match="ZOOM_CLIENT_SECRET"):
        await run(args, {"ZOOM_CLIENT_ID": "id"})


@pytest.fixture
def seeded_store(zoom: ZoomOAuthEmulator, tmp_path: Path) -> dict[str, str]:
    """Environment for a user grant: a seed refresh token and a token file to keep it in."""
    return environment(
        zoom,
        ZOOM_REFRESH_TOKEN=zoom.create_grant(user_id="carol"),
        ZOOM_TOKEN_STORE=str(tmp_path / "call.json"),
    )


async def test_call_command_prints_the_apis_json(
    zoom: ZoomOAuthEmulator, seeded_store: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`zoomtoken call GET /v2/users/me` goes through the middleware and prints the JSON."""
    assert await run(parse(["call", "get", "/v2/users/me"]), seeded_store) == 0
    captured = capsys.readouterr()
    body = json.loads(captured.out)
    assert body["id"] == "carol"
    assert body["path"] == "/v2/users/me"
    info = zoom.grant_info("carol")
    for secret in (zoom.client_secret, info.access_token, info.refresh_token):
        assert secret not in captured.out + captured.err


async def test_call_command_sends_json_data(
    seeded_store: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--data is sent as a JSON body."""
    args = parse(["call", "PATCH", "v2/users/me", "--data", '{"first_name": "Carol"}'])
    assert await run(args, seeded_store) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["method"] == "PATCH"
    assert body["body_length"] == len(b'{"first_name": "Carol"}')


async def test_call_command_exits_1_on_an_error_status(
    seeded_store: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A non-2xx answer is printed and the exit status is 1."""
    assert await run(parse(["call", "GET", "/no/such/path"]), seeded_store) == 1
    assert "HTTP 404" in capsys.readouterr().err


async def test_call_command_uses_server_to_server_from_the_environment(
    zoom: ZoomOAuthEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """ZOOM_ACCOUNT_ID needs no store: an S2S token is fetched for the call."""
    zoom.create_s2s_account("acct-cli")
    environ = environment(zoom, ZOOM_ACCOUNT_ID="acct-cli")
    assert await run(parse(["call", "GET", "/v2/users/me"]), environ) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "acct-cli"
    assert zoom.counters.s2s_issued == 1


async def test_call_command_refuses_a_refresh_token_without_a_store(
    zoom: ZoomOAuthEmulator,
) -> None:
    """A refresh would rotate the grant and lose the new pair with the process: refused."""
    environ = environment(zoom, ZOOM_REFRESH_TOKEN=zoom.create_grant())
    with pytest.raises(ConfigurationError, match="must be saved"):
        await run(parse(["call", "GET", "/v2/users/me"]), environ)
    assert zoom.counters.token_requests == 0


async def test_call_command_refuses_data_that_is_not_json(seeded_store: dict[str, str]) -> None:
    """Bad --data is a configuration error before anything is sent."""
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        await run(parse(["call", "POST", "/v2/users", "--data", "{oops"]), seeded_store)
