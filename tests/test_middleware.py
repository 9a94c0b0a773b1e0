"""zoomtoken.aiohttp: bearer injection, origin checks and one retry on 401.

Client middlewares do not run under aioresponses, so everything here talks real HTTP to
servers on 127.0.0.1: the Zoom emulator and small aiohttp.web apps of our own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from zoomtoken import ConfigurationError, InsecureEndpointError, TokenManager
from zoomtoken.aiohttp import DEFAULT_TIMEOUT, bearer_middleware, zoom_session
from zoomtoken.testing import FakeClock, ZoomOAuthEmulator


@dataclass
class Seen:
    """One request as a test app received it."""

    path: str
    authorization: str | None
    body: bytes


@dataclass
class App:
    """A small test server on 127.0.0.1 that records what it receives."""

    base_url: str = ""
    seen: list[Seen] = field(default_factory=list)
    #: Where /away redirects to.
    redirect_target: str = ""

    def bearer_hits(self) -> list[str | None]:
        return [s.authorization for s in self.seen]


def build_app(state: App) -> web.Application:
    async def record(request: web.Request) -> Seen:
        seen = Seen(request.path, request.headers.get("Authorization"), await request.read())
        state.seen.append(seen)
        return seen

    async def echo(request: web.Request) -> web.Response:
        seen = await record(request)
        return web.json_response({"authorization": seen.authorization, "body": len(seen.body)})

    async def unauthorized(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"code": 124, "message": "Invalid access token."}, status=401)

    async def away(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound(state.redirect_target)

    async def same(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/echo")

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/401", unauthorized)
    app.router.add_get("/away", away)
    app.router.add_get("/same", same)
    return app


async def serve(state: App) -> web.AppRunner:
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner


@pytest.fixture
async def apps() -> AsyncIterator[tuple[App, App]]:
    """Two apps on two ports: two different origins."""
    first, second = App(), App()
    runners = [await serve(first), await serve(second)]
    try:
        yield first, second
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
def server_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def zoom(server_clock: FakeClock) -> AsyncIterator[ZoomOAuthEmulator]:
    async with ZoomOAuthEmulator(clock=server_clock) as emulator:
        yield emulator


@pytest.fixture
async def manager(zoom: ZoomOAuthEmulator) -> AsyncIterator[TokenManager]:
    # Its own clock: the emulator's can expire tokens server-side while ours still trusts them.
    clock = FakeClock()
    token_manager = TokenManager(
        client_id=zoom.client_id,
        client_secret=zoom.client_secret,
        refresh_token=zoom.create_grant(user_id="alice"),
        token_url=zoom.token_url,
        revoke_url=zoom.revoke_url,
        clock=clock,
        sleep=clock.sleep,
    )
    try:
        yield token_manager
    finally:
        await token_manager.aclose()


def session_for(manager: TokenManager, *origins: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(middlewares=(bearer_middleware(manager, allowed_origins=origins),))


async def test_bearer_token_is_added_for_the_emulators_api(
    zoom: ZoomOAuthEmulator, manager: TokenManager
) -> None:
    """A request to the allowed origin carries the manager's token and the API accepts it."""
    async with (
        zoom_session(manager, base_url=zoom.api_base_url) as session,
        session.get("/v2/users/me") as response,
    ):
        assert response.status == 200
        body = await response.json()
    assert body["id"] == "alice"
    assert zoom.counters.api_unauthorized == 0


async def test_the_header_is_exactly_the_current_bearer_token(
    apps: tuple[App, App], manager: TokenManager
) -> None:
    """The injected header is ``Bearer`` plus the token get_token() returns."""
    api, _ = apps
    async with (
        session_for(manager, api.base_url) as session,
        session.get(api.base_url + "/echo") as response,
    ):
        assert response.status == 200
    assert api.bearer_hits() == [f"Bearer {await manager.get_token()}"]


async def test_a_request_to_an_origin_not_allowed_gets_no_token(
    apps: tuple[App, App], zoom: ZoomOAuthEmulator, manager: TokenManager
) -> None:
    """Another origin gets no Authorization header, and no token is even fetched for it."""
    _, other = apps
    async with (
        session_for(manager, zoom.base_url) as session,
        session.get(other.base_url + "/echo") as response,
    ):
        assert response.status == 200
    assert other.bearer_hits() == [None]
    assert zoom.counters.token_requests == 0


async def test_another_port_is_another_origin(apps: tuple[App, App], manager: TokenManager) -> None:
    """Scheme, host and port all count: the same host on another port gets no token."""
    api, other = apps
    async with session_for(manager, api.base_url) as session:
        for app in (api, other):
            async with session.get(app.base_url + "/echo") as response:
                assert response.status == 200
    assert api.bearer_hits()[0] is not None
    assert other.bearer_hits() == [None]


async def test_a_redirect_to_another_origin_carries_no_token(
    apps: tuple[App, App], manager: TokenManager
) -> None:
    """The allowed origin's first hop has the token; the hop to another origin has none."""
    api, other = apps
    api.redirect_target = other.base_url + "/echo"
    async with (
        session_for(manager, api.base_url) as session,
        session.get(api.base_url + "/away") as response,
    ):
        assert response.status == 200
        assert str(response.url).startswith(other.base_url)
    assert api.bearer_hits()[0] == f"Bearer {await manager.get_token()}"
    assert other.bearer_hits() == [None]


async def test_a_same_origin_redirect_keeps_the_token(
    apps: tuple[App, App], manager: TokenManager
) -> None:
    """Each hop to an allowed origin gets the token again (the middleware runs per hop)."""
    api, _ = apps
    async with (
        session_for(manager, api.base_url) as session,
        session.get(api.base_url + "/same") as response,
    ):
        assert response.status == 200
    token = await manager.get_token()
    assert [s.path for s in api.seen] == ["/same", "/echo"]
    assert api.bearer_hits() == [f"Bearer {token}", f"Bearer {token}"]


async def test_an_explicit_authorization_header_is_left_alone(
    apps: tuple[App, App], zoom: ZoomOAuthEmulator, manager: TokenManager
) -> None:
    """A caller's own Authorization header is sent as it is and not replaced."""
    api, _ = apps
    async with session_for(manager, api.base_url) as session:
        headers = {"Authorization": "Bearer the-callers-own"}
        async with session.get(api.base_url + "/echo", headers=headers) as response:
            assert response.status == 200
    assert api.bearer_hits() == ["Bearer the-callers-own"]
    assert zoom.counters.token_requests == 0


async def test_200_concurrent_401s_cause_exactly_one_refresh_and_all_succeed(
    zoom: ZoomOAuthEmulator, manager: TokenManager, server_clock: FakeClock
) -> None:
    """200 requests rejected for the old token share one refresh, then all succeed."""
    old = await manager.get_token()
    zoom.counters.reset()
    server_clock.suspend(3600)  # the server now considers the old token expired
    async with zoom_session(manager, base_url=zoom.api_base_url) as session:

        async def call() -> int:
            async with session.get("/v2/users/me") as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(call() for _ in range(200)))
    assert statuses == [200] * 200
    assert zoom.counters.refreshes == 1
    assert zoom.counters.token_requests == 1
    assert zoom.counters.api_unauthorized == 200
    assert zoom.counters.api_calls == 400
    assert await manager.get_token() != old


async def test_a_second_401_is_returned_without_another_retry(
    apps: tuple[App, App], zoom: ZoomOAuthEmulator, manager: TokenManager
) -> None:
    """A 401 that persists after the refresh is returned: one retry, never a loop."""
    api, _ = apps
    async with (
        session_for(manager, api.base_url) as session,
        session.get(api.base_url + "/401") as response,
    ):
        assert response.status == 401
        assert (await response.json())["code"] == 124
    first, second = api.bearer_hits()
    assert first != second  # retried once, with the refreshed token
    assert second == f"Bearer {await manager.get_token()}"
    assert zoom.counters.refreshes == 2  # the first token, and the one refresh after the 401


async def test_a_401_right_after_a_refresh_is_returned_without_refreshing_again(
    apps: tuple[App, App], zoom: ZoomOAuthEmulator, manager: TokenManager
) -> None:
    """invalidate() is rate-limited; when it keeps the token, the 401 comes back at once."""
    api, _ = apps
    async with session_for(manager, api.base_url) as session:
        for _ in range(2):
            async with session.get(api.base_url + "/401") as response:
                assert response.status == 401
    assert len(api.seen) == 3  # 2 for the first request, 1 for the second
    assert zoom.counters.refreshes == 2


async def test_retry_on_401_false_returns_the_first_401(
    apps: tuple[App, App], zoom: ZoomOAuthEmulator, manager: TokenManager
) -> None:
    """With retry_on_401=False a 401 is returned at once and nothing is refreshed."""
    api, _ = apps
    middleware = bearer_middleware(manager, allowed_origins=[api.base_url], retry_on_401=False)
    async with (
        aiohttp.ClientSession(middlewares=(middleware,)) as session,
        session.get(api.base_url + "/401") as response,
    ):
        assert response.status == 401
    assert len(api.seen) == 1
    assert zoom.counters.refreshes == 1


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": b"raw bytes"}, b"raw bytes"),
        ({"data": "some text"}, b"some text"),
        ({"data": {"field": "value"}}, b"field=value"),
        ({"json": {"k": 1}}, b'{"k": 1}'),
        ({}, b""),
    ],
    ids=["bytes", "str", "form", "json", "none"],
)
async def test_a_body_that_can_be_sent_again_is_retried_identically(
    apps: tuple[App, App], manager: TokenManager, kwargs: dict[str, object], expected: bytes
) -> None:
    """bytes, str, form, JSON and empty bodies are re-sent unchanged on the retry."""
    api, _ = apps
    async with (
        session_for(manager, api.base_url) as session,
        session.post(api.base_url + "/401", **kwargs) as response,  # type: ignore[arg-type]
    ):
        assert response.status == 401
    assert [s.body for s in api.seen] == [expected, expected]


async def test_a_streamed_body_is_not_resent_and_the_401_is_returned(
    apps: tuple[App, App], zoom: ZoomOAuthEmulator, manager: TokenManager
) -> None:
    """An async-generator body is consumed by the first send: the 401 comes back as it is."""
    api, _ = apps

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            yield part

    async with (
        session_for(manager, api.base_url) as session,
        session.post(api.base_url + "/401", data=chunks()) as response,
    ):
        assert response.status == 401
    assert [s.body for s in api.seen] == [b"one two three"]
    assert zoom.counters.refreshes == 1  # only the first token: nothing was invalidated


async def test_the_token_request_never_passes_through_the_sessions_middleware(
    zoom: ZoomOAuthEmulator,
) -> None:
    """A manager refreshing through the very session that carries its middleware does not
    deadlock, and its token POST skips the session's middlewares."""
    passed: list[str] = []
    inner: list[aiohttp.ClientMiddlewareType] = []

    async def spy(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        passed.append(request.url.path)
        return await inner[0](request, handler)

    clock = FakeClock()
    async with aiohttp.ClientSession(middlewares=(spy,)) as session:
        manager = TokenManager(
            client_id=zoom.client_id,
            client_secret=zoom.client_secret,
            refresh_token=zoom.create_grant(user_id="bob"),
            token_url=zoom.token_url,
            revoke_url=zoom.revoke_url,
            session=session,
            clock=clock,
            sleep=clock.sleep,
        )
        # The token endpoint shares the API's origin here: the worst case.
        inner.append(bearer_middleware(manager, allowed_origins=[zoom.base_url]))
        try:

            async def call() -> int:
                async with session.get(zoom.api_base_url + "/v2/users/me") as response:
                    return response.status

            assert await asyncio.wait_for(call(), timeout=10) == 200
        finally:
            await manager.aclose()
        assert not session.closed  # the manager does not close a session it was given
    assert passed == ["/v2/users/me"]
    assert zoom.counters.refreshes == 1


async def test_invalidate_failure_releases_the_401_and_raises_the_typed_error(
    apps: tuple[App, App], zoom: ZoomOAuthEmulator, manager: TokenManager
) -> None:
    """When the refresh after a 401 fails for good, the caller gets the typed error."""
    from zoomtoken import ReauthorizationRequiredError

    api, _ = apps
    await manager.get_token()
    zoom.revoke_grant("alice")
    async with session_for(manager, api.base_url) as session:
        with pytest.raises(ReauthorizationRequiredError):
            await session.get(api.base_url + "/401")
    assert len(api.seen) == 1


async def test_no_token_appears_in_logs_during_a_401_retry(
    apps: tuple[App, App], manager: TokenManager, caplog: pytest.LogCaptureFixture
) -> None:
    """The retry path logs what happened, never the token."""
    api, _ = apps
    caplog.set_level(logging.DEBUG, logger="zoomtoken")
    async with (
        session_for(manager, api.base_url) as session,
        session.get(api.base_url + "/401") as response,
    ):
        assert response.status == 401
    tokens = {hit.removeprefix("Bearer ") for hit in api.bearer_hits() if hit}
    assert len(tokens) == 2
    assert "retrying once" in caplog.text
    assert not any(token in caplog.text for token in tokens)


@pytest.mark.parametrize(
    ("origin", "error"),
    [
        ("http://api.zoom.us", InsecureEndpointError),
        ("ftp://api.zoom.us", InsecureEndpointError),
        ("https://api.zoom.us/v2", ConfigurationError),
        ("https://api.zoom.us?x=1", InsecureEndpointError),
    ],
)
async def test_allowed_origins_must_be_https_or_loopback_origins(
    manager: TokenManager, origin: str, error: type[Exception]
) -> None:
    """Plain http off loopback, other schemes, paths and queries are refused up front."""
    with pytest.raises(error):
        bearer_middleware(manager, allowed_origins=[origin])


async def test_no_allowed_origin_at_all_is_refused(manager: TokenManager) -> None:
    """An empty allow-list is a configuration mistake, not "send nowhere"."""
    with pytest.raises(ConfigurationError):
        bearer_middleware(manager, allowed_origins=[])


async def test_default_port_and_explicit_port_are_the_same_origin(
    manager: TokenManager,
) -> None:
    """https://api.zoom.us and https://api.zoom.us:443 name one origin."""
    seen: list[str | None] = []

    async def handler(request: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
        seen.append(request.headers.get("Authorization"))
        raise _Stop

    middleware = bearer_middleware(manager, allowed_origins=["https://api.zoom.us:443"])
    request = aiohttp.ClientRequest(
        "GET", URL("https://api.zoom.us/v2/users/me"), loop=asyncio.get_running_loop()
    )
    with pytest.raises(_Stop):
        await middleware(request, handler)
    assert seen == [f"Bearer {await manager.get_token()}"]


class _Stop(Exception):
    pass


async def test_zoom_session_sets_base_url_middleware_and_timeouts(
    zoom: ZoomOAuthEmulator, manager: TokenManager
) -> None:
    """The helper's session uses the default timeouts and joins paths onto base_url."""
    async with zoom_session(manager) as session:
        assert session.timeout == DEFAULT_TIMEOUT
    custom = aiohttp.ClientTimeout(total=5)
    base_url = zoom.api_base_url + "/v2"  # no trailing slash: the helper adds it
    async with (
        zoom_session(manager, base_url=base_url, timeout=custom) as session,
        session.get("users/me") as response,
    ):
        assert session.timeout == custom
        assert response.status == 200
        assert (await response.json())["path"] == "/v2/users/me"


async def test_zoom_session_refuses_plain_http_off_loopback(manager: TokenManager) -> None:
    """The API base URL must be https (loopback aside), like every endpoint."""
    with pytest.raises(InsecureEndpointError):
        zoom_session(manager, base_url="http://api.zoom.us")


async def test_zoom_session_runs_extra_middlewares_inside_the_bearer_one(
    zoom: ZoomOAuthEmulator, manager: TokenManager
) -> None:
    """Middlewares passed to zoom_session see the request with the token already set."""
    seen: list[bool] = []

    async def inner(
        request: aiohttp.ClientRequest,
        handler: Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]],
    ) -> aiohttp.ClientResponse:
        seen.append("Authorization" in request.headers)
        return await handler(request)

    async with (
        zoom_session(manager, base_url=zoom.api_base_url, middlewares=[inner]) as session,
        session.get("/v2/users/me") as response,
    ):
        assert response.status == 200
    assert seen == [True]
