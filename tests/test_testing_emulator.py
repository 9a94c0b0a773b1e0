"""ZoomOAuthEmulator: Zoom's OAuth and API endpoints over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from yarl import URL

from zoomtoken.testing import EmulatorCounters, FakeClock, Fault, ZoomOAuthEmulator

INVALID_GRANT = {"reason": "Invalid Token!", "error": "invalid_grant"}
INVALID_CLIENT = {"reason": "Invalid client_id or client_secret", "error": "invalid_client"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def zoom(clock: FakeClock) -> AsyncIterator[ZoomOAuthEmulator]:
    async with ZoomOAuthEmulator(clock=clock) as emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def basic(zoom: ZoomOAuthEmulator) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(zoom.client_id, zoom.client_secret)}


async def post_form(
    session: aiohttp.ClientSession,
    url: str | URL,
    form: dict[str, str],
    headers: dict[str, str],
    **kwargs: Any,
) -> tuple[int, dict[str, Any]]:
    async with session.post(url, data=form, headers=headers, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def refresh(
    session: aiohttp.ClientSession, zoom: ZoomOAuthEmulator, refresh_token: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return await post_form(session, zoom.token_url, form, basic(zoom), **kwargs)


async def call_api(
    session: aiohttp.ClientSession,
    zoom: ZoomOAuthEmulator,
    access_token: str | None,
    *,
    method: str = "GET",
    path: str = "/v2/users/me",
    data: bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = {} if access_token is None else {"Authorization": f"Bearer {access_token}"}
    url = zoom.api_base_url + path
    async with session.request(method, url, headers=headers, data=data) as response:
        return response.status, await response.json()


async def until(condition: Callable[[], bool]) -> None:
    """Let real socket I/O happen until ``condition`` holds (bounded, no fixed waits)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never became true")


# -- rotation ------------------------------------------------------------------------------


async def test_refresh_returns_zooms_token_body_with_a_new_refresh_token(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """A refresh answers 200 with every field Zoom sends and a brand-new refresh token."""
    first = zoom.create_grant(scope="meeting:read")
    status, body = await refresh(session, zoom, first)
    assert status == 200
    assert set(body) == {
        "access_token",
        "token_type",
        "refresh_token",
        "expires_in",
        "scope",
        "api_url",
    }
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3599
    assert body["scope"] == "meeting:read"
    assert body["api_url"] == zoom.api_base_url
    assert body["refresh_token"] != first
    assert zoom.last_issued_refresh_token(first) == body["refresh_token"]
    assert zoom.grant_info(first).access_token == body["access_token"]


async def test_refresh_tokens_are_single_use(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """The refresh token used for a refresh dies at once: a second use gets invalid_grant."""
    first = zoom.create_grant()
    status, body = await refresh(session, zoom, first)
    assert status == 200
    assert await refresh(session, zoom, first) == (400, INVALID_GRANT)
    status, _ = await refresh(session, zoom, body["refresh_token"])
    assert status == 200
    assert zoom.counters.refreshes == 2
    assert zoom.counters.invalid_grant == 1
    assert zoom.counters.reuse_detected == 0


async def test_concurrent_refreshes_with_one_token_let_exactly_one_win(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """Two simultaneous refreshes with the same token: one 200, one invalid_grant."""
    first = zoom.create_grant()
    results = await asyncio.gather(refresh(session, zoom, first), refresh(session, zoom, first))
    assert sorted(status for status, _ in results) == [200, 400]


async def test_unknown_refresh_token_gets_invalid_grant(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """A refresh token the server never issued is answered with invalid_grant."""
    assert await refresh(session, zoom, "never-issued") == (400, INVALID_GRANT)


async def test_reuse_detection_revokes_the_whole_grant(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """With reuse detection, presenting a rotated refresh token kills every token of the grant."""
    async with ZoomOAuthEmulator(clock=clock, reuse_detection=True) as zoom:
        first = zoom.create_grant()
        _, body = await refresh(session, zoom, first)
        assert await refresh(session, zoom, first) == (400, INVALID_GRANT)
        assert await refresh(session, zoom, body["refresh_token"]) == (400, INVALID_GRANT)
        status, _ = await call_api(session, zoom, body["access_token"])
        assert status == 401
        assert zoom.grant_info(first).revoked
        assert zoom.counters.reuse_detected == 1
        assert zoom.counters.invalid_grant == 2


async def test_without_reuse_detection_a_replay_leaves_the_current_token_alive(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """Without reuse detection, a replayed old token fails but the grant lives on."""
    first = zoom.create_grant()
    _, body = await refresh(session, zoom, first)
    await refresh(session, zoom, first)
    status, _ = await refresh(session, zoom, body["refresh_token"])
    assert status == 200


async def test_authorising_a_user_again_revokes_the_earlier_grant(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """A second grant for the same user invalidates the first, as Zoom does (error 4741)."""
    old = zoom.create_grant(user_id="alice")
    new = zoom.create_grant(user_id="alice")
    assert await refresh(session, zoom, old) == (400, INVALID_GRANT)
    status, _ = await refresh(session, zoom, new)
    assert status == 200


async def test_configure_changes_the_lifetime_of_later_tokens(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """configure(expires_in=...) applies to tokens issued afterwards."""
    first = zoom.create_grant()
    zoom.configure(expires_in=5)
    _, body = await refresh(session, zoom, first)
    assert body["expires_in"] == 5


# -- request validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        aiohttp.encode_basic_auth("emulator-client-id", "wrong-secret"),
        aiohttp.encode_basic_auth("someone-else", "emulator-client-secret"),
        "Basic !!!not-base64!!!",
        "Bearer emulator-client-secret",
    ],
    ids=["missing", "wrong-secret", "wrong-id", "garbage", "wrong-scheme"],
)
async def test_bad_client_authentication_gets_invalid_client(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession, authorization: str | None
) -> None:
    """Missing or wrong Basic client credentials are refused with 401 invalid_client."""
    first = zoom.create_grant()
    headers = {} if authorization is None else {"Authorization": authorization}
    form = {"grant_type": "refresh_token", "refresh_token": first}
    assert await post_form(session, zoom.token_url, form, headers) == (401, INVALID_CLIENT)
    assert zoom.counters.invalid_client == 1
    status, _ = await refresh(session, zoom, first)
    assert status == 200


async def test_token_in_the_query_string_is_rejected_without_consuming_it(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """A refresh token sent in the URL gets invalid_request, and the token stays valid."""
    first = zoom.create_grant()
    url = URL(zoom.token_url).with_query(grant_type="refresh_token", refresh_token=first)
    status, body = await post_form(session, url, {"grant_type": "refresh_token"}, basic(zoom))
    assert (status, body["error"]) == (400, "invalid_request")
    status, _ = await refresh(session, zoom, first)
    assert status == 200


async def test_json_body_is_rejected_because_zoom_wants_a_form(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """The token endpoint accepts only application/x-www-form-urlencoded bodies."""
    first = zoom.create_grant()
    payload = {"grant_type": "refresh_token", "refresh_token": first}
    async with session.post(zoom.token_url, json=payload, headers=basic(zoom)) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"unrelated": "x"}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "password", "username": "u"}, "unsupported_grant_type"),
        ({"grant_type": "account_credentials"}, "invalid_request"),
    ],
    ids=["no-grant-type", "no-refresh-token", "unsupported", "no-account-id"],
)
async def test_malformed_token_requests_get_the_matching_error(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession, form: dict[str, str], error: str
) -> None:
    """Missing parameters and unknown grant types are 400s with the OAuth error code."""
    status, body = await post_form(session, zoom.token_url, form, basic(zoom))
    assert (status, body["error"]) == (400, error)


# -- Server-to-Server ----------------------------------------------------------------------


async def test_account_credentials_issue_a_token_without_refresh_token(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """Server-to-Server OAuth returns an hour-long access token and no refresh token."""
    zoom.create_s2s_account("acct-1")
    form = {"grant_type": "account_credentials", "account_id": "acct-1"}
    status, body = await post_form(session, zoom.token_url, form, basic(zoom))
    assert status == 200
    assert "refresh_token" not in body
    assert body["expires_in"] == 3600
    assert zoom.counters.s2s_issued == 1
    status, me = await call_api(session, zoom, body["access_token"])
    assert (status, me["id"]) == (200, "acct-1")


async def test_account_credentials_for_an_unknown_account_fail(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """An account the emulator does not know gets a 400."""
    form = {"grant_type": "account_credentials", "account_id": "nobody"}
    status, _ = await post_form(session, zoom.token_url, form, basic(zoom))
    assert status == 400


# -- revoke --------------------------------------------------------------------------------


async def test_revoking_the_access_token_kills_the_whole_grant(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """Revoke answers success and afterwards neither the refresh nor the access token works."""
    first = zoom.create_grant()
    _, pair = await refresh(session, zoom, first)
    form = {"token": pair["access_token"]}
    assert await post_form(session, zoom.revoke_url, form, basic(zoom)) == (
        200,
        {"status": "success"},
    )
    assert await refresh(session, zoom, pair["refresh_token"]) == (400, INVALID_GRANT)
    status, _ = await call_api(session, zoom, pair["access_token"])
    assert status == 401
    assert zoom.counters.revokes == 1


async def test_revoke_requires_client_authentication(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """Revoke without Basic auth is refused and leaves the grant alive."""
    first = zoom.create_grant()
    status, _ = await post_form(session, zoom.revoke_url, {"token": first}, {})
    assert status == 401
    assert not zoom.grant_info(first).revoked


# -- API -----------------------------------------------------------------------------------


async def test_api_echoes_the_request_for_a_valid_bearer_token(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """A valid bearer token gets 200 with the user, the method, the path and the body size."""
    first = zoom.create_grant(user_id="bob")
    access_token = zoom.grant_info(first).access_token
    status, body = await call_api(
        session, zoom, access_token, method="PATCH", path="/v2/users/me/settings", data=b"12345"
    )
    assert status == 200
    assert body == {
        "id": "bob",
        "email": "bob@example.com",
        "method": "PATCH",
        "path": "/v2/users/me/settings",
        "body_length": 5,
    }


@pytest.mark.parametrize("token", [None, "not-a-token"], ids=["missing", "unknown"])
async def test_api_refuses_missing_or_unknown_bearer_tokens(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession, token: str | None
) -> None:
    """Without a known bearer token the API answers 401 with Zoom's code 124."""
    assert await call_api(session, zoom, token) == (
        401,
        {"code": 124, "message": "Invalid access token."},
    )
    assert (zoom.counters.api_calls, zoom.counters.api_unauthorized) == (1, 1)


async def test_access_tokens_expire_on_the_injected_wall_clock(
    clock: FakeClock, zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """An access token works until expires_in seconds of wall-clock time have passed."""
    first = zoom.create_grant()
    _, pair = await refresh(session, zoom, first)
    clock.suspend(3598)
    status, _ = await call_api(session, zoom, pair["access_token"])
    assert status == 200
    clock.suspend(1)
    status, body = await call_api(session, zoom, pair["access_token"])
    assert (status, body["code"]) == (401, 124)


async def test_old_access_tokens_stay_valid_after_a_rotation(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """Refreshing does not kill earlier access tokens; they live until they expire."""
    first = zoom.create_grant()
    old_access = zoom.grant_info(first).access_token
    await refresh(session, zoom, first)
    status, _ = await call_api(session, zoom, old_access)
    assert status == 200


# -- authorization code --------------------------------------------------------------------


async def authorize(session: aiohttp.ClientSession, zoom: ZoomOAuthEmulator, challenge: str) -> str:
    params = {
        "response_type": "code",
        "client_id": zoom.client_id,
        "redirect_uri": "http://127.0.0.1:1/callback",
        "state": "xyz",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    url = URL(zoom.authorize_url).with_query(params)
    async with session.get(url, allow_redirects=False) as response:
        assert response.status == 302
        location = URL(response.headers["Location"])
    assert location.query["state"] == "xyz"
    return location.query["code"]


async def test_authorization_code_with_pkce_is_exchanged_once(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """A code obtained with an S256 challenge buys one token pair, and only once."""
    verifier = "v" * 50
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    code = await authorize(session, zoom, challenge)
    assert zoom.last_authorize_query is not None
    assert zoom.last_authorize_query["code_challenge_method"] == "S256"
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://127.0.0.1:1/callback",
        "code_verifier": verifier,
    }
    status, body = await post_form(session, zoom.token_url, form, basic(zoom))
    assert status == 200
    assert zoom.grant_info(body["refresh_token"]).user_id == zoom.authorize_user_id
    status, body = await post_form(session, zoom.token_url, form, basic(zoom))
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_authorization_code_with_a_wrong_verifier_is_refused(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """A code_verifier that does not match the challenge gets invalid_grant."""
    code = await authorize(session, zoom, "a" * 43)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://127.0.0.1:1/callback",
        "code_verifier": "wrong" * 10,
    }
    status, body = await post_form(session, zoom.token_url, form, basic(zoom))
    assert (status, body["error"]) == (400, "invalid_grant")


# -- faults --------------------------------------------------------------------------------


async def test_status_fault_is_served_once_and_does_not_consume_the_token(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """A queued 503 answers one request; the refresh token still works on the next one."""
    first = zoom.create_grant()
    zoom.inject(Fault.status(503))
    assert await refresh(session, zoom, first) == (
        503,
        {"error": "temporarily_unavailable", "reason": "Service Unavailable"},
    )
    status, _ = await refresh(session, zoom, first)
    assert status == 200
    assert (zoom.counters.token_requests, zoom.counters.faults_served) == (2, 1)


async def test_faults_are_consumed_in_fifo_order(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """Queued faults answer successive requests in the order they were injected."""
    first = zoom.create_grant()
    zoom.inject(Fault.status(500), Fault.status(502), Fault.status(504))
    assert zoom.pending_faults == 3
    statuses = [(await refresh(session, zoom, first))[0] for _ in range(4)]
    assert statuses == [500, 502, 504, 200]


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        (7, "7"),
        (1.5, "1.5"),
        (datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), "Wed, 02 Jan 2030 03:04:05 GMT"),
        ("2030-01-02T03:04:05Z", "2030-01-02T03:04:05Z"),
        (None, None),
    ],
    ids=["seconds", "fractional", "http-date", "iso-8601", "missing"],
)
async def test_rate_limit_fault_sends_retry_after_in_each_format(
    zoom: ZoomOAuthEmulator,
    session: aiohttp.ClientSession,
    retry_after: float | str | datetime | None,
    header: str | None,
) -> None:
    """A 429 fault carries Retry-After as delta-seconds, HTTP-date, ISO-8601, or not at all."""
    zoom.inject(Fault.rate_limited(retry_after))
    form = {"grant_type": "refresh_token", "refresh_token": zoom.create_grant()}
    async with session.post(zoom.token_url, data=form, headers=basic(zoom)) as response:
        assert response.status == 429
        assert response.headers.get("Retry-After") == header


async def test_status_fault_accepts_custom_body_and_headers(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """A status fault can carry any body, content type and headers, e.g. an HTML 502 page."""
    html = "<html><body>Bad Gateway</body></html>"
    zoom.inject(Fault.status(502, html, {"X-Edge": "1"}, content_type="text/html"))
    form = {"grant_type": "refresh_token", "refresh_token": zoom.create_grant()}
    async with session.post(zoom.token_url, data=form, headers=basic(zoom)) as response:
        assert response.status == 502
        assert response.content_type == "text/html"
        assert response.headers["X-Edge"] == "1"
        assert await response.text() == html


async def test_reset_fault_is_seen_as_a_connection_error_and_keeps_the_token(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """A reset drops the connection (ServerDisconnectedError) and nothing rotates."""
    first = zoom.create_grant()
    zoom.inject(Fault.reset())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await refresh(session, zoom, first)
    assert isinstance(aiohttp.ServerDisconnectedError(), aiohttp.ClientConnectionError)
    status, _ = await refresh(session, zoom, first)
    assert status == 200


async def test_rotating_reset_loses_the_new_pair(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """reset(rotate=True) rotates server-side, then drops the answer: the old token is dead."""
    first = zoom.create_grant()
    zoom.inject(Fault.reset(rotate=True))
    with pytest.raises(aiohttp.ClientConnectionError):
        await refresh(session, zoom, first)
    assert await refresh(session, zoom, first) == (400, INVALID_GRANT)
    lost = zoom.last_issued_refresh_token(first)
    assert lost != first
    status, _ = await refresh(session, zoom, lost)
    assert status == 200
    assert zoom.counters.refreshes == 2


async def test_rotating_status_fault_rotates_then_answers_the_error(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """status(500, rotate=True) models a server that rotated and then failed to answer."""
    first = zoom.create_grant()
    zoom.inject(Fault.status(500, rotate=True))
    status, _ = await refresh(session, zoom, first)
    assert status == 500
    assert zoom.grant_info(first).refreshes == 1
    assert await refresh(session, zoom, first) == (400, INVALID_GRANT)


async def test_hang_fault_holds_the_request_until_released(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """A hung request gets no answer; release_hung() then drops its connection."""
    zoom.inject(Fault.hang())
    task = asyncio.create_task(refresh(session, zoom, zoom.create_grant()))
    await until(lambda: zoom.hung_requests == 1)
    assert not task.done()
    zoom.release_hung()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await task
    assert zoom.hung_requests == 0


async def test_rotating_hang_lets_a_client_timeout_fire_after_the_rotation(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """hang(rotate=True) plus a client timeout is the "outcome unknown" case: rotated, unseen."""
    first = zoom.create_grant()
    zoom.inject(Fault.hang(rotate=True))
    with pytest.raises(TimeoutError):
        await refresh(session, zoom, first, timeout=aiohttp.ClientTimeout(total=0.05))
    assert zoom.grant_info(first).refreshes == 1
    assert zoom.hung_requests == 1  # still held: aclose() in the fixture must end it


async def test_aclose_ends_hung_requests(session: aiohttp.ClientSession) -> None:
    """Closing the emulator drops a hung request instead of waiting for it."""
    zoom = ZoomOAuthEmulator()
    await zoom.start()
    zoom.inject(Fault.hang())
    task = asyncio.create_task(refresh(session, zoom, zoom.create_grant()))
    await until(lambda: zoom.hung_requests == 1)
    await zoom.aclose()
    with pytest.raises(aiohttp.ClientConnectionError):
        await task


@pytest.mark.parametrize(
    ("body", "status", "content_type"),
    [
        (b'{"access_token": "abc", "expi', 200, "application/json"),
        (b"<html><body>Welcome to Zoom</body></html>", 200, "text/html"),
        (b'{"token_type": "bearer", "expires_in": 3599}', 200, "application/json"),
        (b'{"access_token": 42, "expires_in": "soon"}', 200, "application/json"),
        (b"x" * (3 * 1024 * 1024), 200, "application/json"),
        (b"<html>502 Bad Gateway</html>", 502, "text/html"),
    ],
    ids=["truncated", "html-200", "missing-fields", "wrong-types", "enormous", "html-502"],
)
async def test_malformed_fault_serves_exactly_the_given_body(
    zoom: ZoomOAuthEmulator,
    session: aiohttp.ClientSession,
    body: bytes,
    status: int,
    content_type: str,
) -> None:
    """A malformed fault answers with the given status, content type and raw bytes."""
    zoom.inject(Fault.malformed(body, status=status, content_type=content_type))
    form = {"grant_type": "refresh_token", "refresh_token": zoom.create_grant()}
    async with session.post(zoom.token_url, data=form, headers=basic(zoom)) as response:
        assert response.status == status
        assert response.content_type == content_type
        assert await response.read() == body


async def test_drip_fault_delivers_the_real_answer_slowly(
    session: aiohttp.ClientSession,
) -> None:
    """drip serves the real token answer in small chunks, one sleep per chunk."""
    sleeps: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(0)

    async with ZoomOAuthEmulator(sleep=recording_sleep) as zoom:
        first = zoom.create_grant()
        zoom.inject(Fault.drip(0.25, chunk_size=16))
        status, body = await refresh(session, zoom, first)
        assert status == 200
        assert body["refresh_token"] == zoom.last_issued_refresh_token(first)
        assert len(sleeps) > 5
        assert set(sleeps) == {0.25}


async def test_drip_with_a_read_timeout_loses_the_rotated_pair(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """A client whose read timeout fires mid-drip never sees the pair the server rotated to."""
    emulator = ZoomOAuthEmulator(clock=clock, sleep=clock.sleep)
    async with emulator as zoom:
        first = zoom.create_grant()
        zoom.inject(Fault.drip(60))
        timeout = aiohttp.ClientTimeout(sock_read=0.05)
        with pytest.raises(TimeoutError):
            await refresh(session, zoom, first, timeout=timeout)
        assert zoom.grant_info(first).refreshes == 1


async def test_fail_always_serves_the_fault_until_cleared(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """fail_always() answers every request with the fault; clear_faults() stops it."""
    first = zoom.create_grant()
    zoom.fail_always(Fault.status(503))
    for _ in range(3):
        status, _ = await refresh(session, zoom, first)
        assert status == 503
    zoom.clear_faults()
    status, _ = await refresh(session, zoom, first)
    assert status == 200
    assert zoom.counters.faults_served == 3


# -- latency -------------------------------------------------------------------------------


async def test_latency_delays_the_answer_after_the_rotation_took_effect(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """With latency, the server has already rotated while the answer is still on its way."""
    async with ZoomOAuthEmulator(clock=clock, sleep=clock.sleep, latency=5) as zoom:
        first = zoom.create_grant()
        task = asyncio.create_task(refresh(session, zoom, first))
        await until(lambda: clock.pending_sleepers == 1)
        assert zoom.counters.refreshes == 1
        assert not task.done()
        await clock.advance(5)
        status, _ = await task
        assert status == 200
        assert clock.sleeps == [5]


# -- counters, lifecycle, hygiene ----------------------------------------------------------


async def test_counters_add_up_over_a_mixed_session(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """Every endpoint outcome lands in its own counter."""
    first = zoom.create_grant()
    zoom.inject(Fault.status(503))
    await refresh(session, zoom, first)
    _, pair = await refresh(session, zoom, first)
    await refresh(session, zoom, first)
    await post_form(session, zoom.token_url, {"grant_type": "refresh_token"}, {})
    await call_api(session, zoom, pair["access_token"])
    await call_api(session, zoom, None)
    await post_form(session, zoom.revoke_url, {"token": pair["access_token"]}, basic(zoom))
    assert zoom.counters == EmulatorCounters(
        token_requests=4,
        refreshes=1,
        invalid_grant=1,
        invalid_client=1,
        revokes=1,
        api_calls=2,
        api_unauthorized=1,
        faults_served=1,
    )
    zoom.counters.reset()
    assert zoom.counters == EmulatorCounters()


async def test_base_url_is_loopback_with_a_port_and_unavailable_when_stopped() -> None:
    """The emulator listens on 127.0.0.1 only while running; aclose() is idempotent."""
    zoom = ZoomOAuthEmulator()
    with pytest.raises(RuntimeError):
        _ = zoom.base_url
    async with zoom:
        url = URL(zoom.base_url)
        assert (url.scheme, url.host) == ("http", "127.0.0.1")
        assert url.port
        assert zoom.token_url == zoom.base_url + "/oauth/token"
        assert zoom.revoke_url == zoom.base_url + "/oauth/revoke"
        assert zoom.authorize_url == zoom.base_url + "/oauth/authorize"
    await zoom.aclose()
    with pytest.raises(RuntimeError):
        _ = zoom.base_url


async def test_repr_never_shows_tokens_or_secrets(
    zoom: ZoomOAuthEmulator, session: aiohttp.ClientSession
) -> None:
    """Neither the emulator's nor a grant's repr contains a token or the client secret."""
    first = zoom.create_grant()
    _, pair = await refresh(session, zoom, first)
    texts = repr(zoom) + repr(zoom.grant_info(first))
    for secret in (zoom.client_secret, first, pair["access_token"], pair["refresh_token"]):
        assert secret not in texts


def test_faults_are_frozen_values() -> None:
    """Faults are immutable and compare by value, so a test can reuse and compare them."""
    assert Fault.status(503) == Fault.status(503)
    assert Fault.reset(rotate=True).rotate
    with pytest.raises(AttributeError):
        Fault.reset().rotate = True  # type: ignore[misc]
    assert json.loads(Fault.status(500).body) == {
        "error": "server_error",
        "reason": "Internal Server Error",
    }
