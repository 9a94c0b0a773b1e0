"""The wire format of the token and revoke calls, and how answers are read."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from zoomtoken import (
    InsecureEndpointError,
    InvalidResponseError,
    OAuthError,
    OutcomeUnknownError,
    ReauthorizationRequiredError,
    TransportError,
)
from zoomtoken._oauth import (
    MAX_BODY_BYTES,
    OAuthClient,
    basic_authorization,
    check_endpoint,
    error_from_response,
    parse_token_response,
    refresh_request,
)
from zoomtoken.testing import FakeClock

TOKEN_URL = "https://zoom.us/oauth/token"
REVOKE_URL = "https://zoom.us/oauth/revoke"
SENT_AT = 1_700_000_000.0
GOOD = {
    "access_token": "new-access",
    "token_type": "bearer",
    "refresh_token": "new-refresh",
    "expires_in": 3599,
    "scope": "user:read",
    "api_url": "https://api.zoom.us",
}


def _parse(body: bytes, status: int = 200, previous: str | None = "old-refresh") -> Any:
    return parse_token_response(
        status, {}, body, sent_at=SENT_AT, previous_refresh_token=previous, jitter=0.0
    )


def test_refresh_request_uses_basic_auth_and_the_form_body() -> None:
    """Credentials go in a Basic header, the grant in the form body, nothing in the URL."""
    request = refresh_request(URL(TOKEN_URL), basic_authorization("id", "secret"), "RT")
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"id:secret").decode()
    assert dict(request.form) == {"grant_type": "refresh_token", "refresh_token": "RT"}
    assert request.url.query_string == ""
    assert "RT" not in repr(request) and "secret" not in repr(request)


@pytest.mark.parametrize(
    "url",
    ["http://zoom.us/oauth/token", "ftp://zoom.us/x", "/oauth/token", "https://zoom.us/t?x=1"],
)
def test_insecure_or_odd_endpoints_are_refused(url: str) -> None:
    """Plain http to a remote host, other schemes, relative URLs and query strings fail."""
    with pytest.raises(InsecureEndpointError):
        check_endpoint(url)


@pytest.mark.parametrize(
    "url", ["https://zoom.us/oauth/token", "http://127.0.0.1:9/t", "http://[::1]:9/t"]
)
def test_https_and_loopback_endpoints_are_accepted(url: str) -> None:
    """HTTPS anywhere, plain HTTP on loopback only."""
    assert check_endpoint(url) == URL(url)


def test_success_counts_expiry_from_the_send_time() -> None:
    """expires_at is the send time + expires_in, not a hard-coded 3599."""
    token = _parse(b'{"access_token":"a","refresh_token":"r","expires_in":1234}')
    assert token.expires_at == SENT_AT + 1234
    assert token.refresh_token == "r"


def test_success_without_refresh_token_keeps_the_current_one() -> None:
    """RFC 6749 §6: no refresh_token in the answer means the old one stays valid."""
    token = _parse(b'{"access_token":"a","expires_in":60}')
    assert token.refresh_token == "old-refresh"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>maintenance</html>",
        b'{"access_token": "a", "expires_in": 3599',
        b"[]",
        b'{"expires_in": 3599}',
        b'{"access_token": 42, "expires_in": 3599}',
        b'{"access_token": "a"}',
        b'{"access_token": "a", "expires_in": 0}',
        b'{"access_token": "a", "expires_in": -5}',
        b'{"access_token": "a", "expires_in": "soon"}',
        b'{"access_token": "a", "expires_in": true}',
        b'{"access_token": "a", "expires_in": 60, "refresh_token": 7}',
    ],
)
def test_unusable_success_bodies_are_typed_errors(body: bytes) -> None:
    """A 200 without a usable token raises InvalidResponseError (retryable: it may have rotated)."""
    with pytest.raises(InvalidResponseError) as info:
        _parse(body)
    assert info.value.retryable


def test_dead_refresh_token_is_reauthorization() -> None:
    """400 invalid_grant 'Invalid Token!' means the user must authorise again."""
    error = error_from_response(
        400, {}, b'{"reason":"Invalid Token!","error":"invalid_grant"}', now=SENT_AT
    )
    assert isinstance(error, ReauthorizationRequiredError)
    assert (error.status, error.error, error.reason) == (400, "invalid_grant", "Invalid Token!")
    assert not error.retryable


def test_rate_limit_carries_retry_after() -> None:
    """429 with Retry-After is retryable and carries the delay in seconds."""
    error = error_from_response(429, {"Retry-After": "12"}, b"", now=SENT_AT)
    assert error.retryable and error.retry_after == 12


def test_html_on_5xx_is_a_transient_error() -> None:
    """An HTML page with 502 is retryable and its body is not echoed."""
    error = error_from_response(502, {}, b"<html>bad gateway secret</html>", now=SENT_AT)
    assert error.retryable and error.status == 502
    assert "secret" not in str(error)


async def test_refresh_posts_exactly_the_documented_request(mock_http: aioresponses) -> None:
    """One POST with Basic auth and form body; the answer becomes a token."""
    mock_http.post(TOKEN_URL, payload=GOOD)
    clock = FakeClock()
    client = OAuthClient(client_id="id", client_secret="secret", clock=clock)
    async with aiohttp.ClientSession() as session:
        token = await client.refresh(session, "RT", jitter=0.0)
    assert token.access_token == "new-access"
    assert token.issued_at == clock.time()
    ((method, url), calls) = next(iter(mock_http.requests.items()))
    assert method == "POST" and str(url) == TOKEN_URL
    kwargs = calls[0].kwargs
    assert kwargs["data"] == {"grant_type": "refresh_token", "refresh_token": "RT"}
    assert kwargs["headers"]["Authorization"] == basic_authorization("id", "secret")
    assert kwargs["allow_redirects"] is False


async def test_revoke_posts_the_token_in_the_form_body(mock_http: aioresponses) -> None:
    """Revoke sends token=... with Basic auth and accepts {"status":"success"}."""
    mock_http.post(REVOKE_URL, payload={"status": "success"})
    client = OAuthClient(client_id="id", client_secret="secret", clock=FakeClock())
    async with aiohttp.ClientSession() as session:
        await client.revoke(session, "AT")
    calls = next(iter(mock_http.requests.values()))
    assert calls[0].kwargs["data"] == {"token": "AT"}


async def test_revoke_error_is_typed(mock_http: aioresponses) -> None:
    """A failed revoke raises OAuthError with the status."""
    mock_http.post(REVOKE_URL, status=500, body="oops")
    client = OAuthClient(client_id="id", client_secret="secret", clock=FakeClock())
    async with aiohttp.ClientSession() as session:
        with pytest.raises(OAuthError) as info:
            await client.revoke(session, "AT")
    assert info.value.status == 500


async def test_timeout_after_sending_is_outcome_unknown(mock_http: aioresponses) -> None:
    """A timeout may hide a rotation: it is OutcomeUnknownError, and retryable."""
    mock_http.post(TOKEN_URL, timeout=True)
    client = OAuthClient(client_id="id", client_secret="secret", clock=FakeClock())
    async with aiohttp.ClientSession() as session:
        with pytest.raises(OutcomeUnknownError) as info:
            await client.refresh(session, "RT", jitter=0.0)
    assert info.value.retryable


async def test_connection_refused_is_a_transport_error(mock_http: aioresponses) -> None:
    """Failing to connect is a plain TransportError: nothing was sent."""
    mock_http.post(
        TOKEN_URL,
        exception=aiohttp.ClientConnectorError(
            aiohttp.client_reqrep.ConnectionKey("zoom.us", 443, True, True, None, None, None),
            OSError(111, "refused"),
        ),
    )
    client = OAuthClient(client_id="id", client_secret="secret", clock=FakeClock())
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TransportError) as info:
            await client.refresh(session, "RT", jitter=0.0)
    assert not isinstance(info.value, OutcomeUnknownError)


async def test_enormous_body_is_not_read_whole(mock_http: aioresponses) -> None:
    """A body over MAX_BODY_BYTES raises InvalidResponseError instead of filling memory."""
    mock_http.post(TOKEN_URL, body=b"x" * (MAX_BODY_BYTES + 10))
    client = OAuthClient(client_id="id", client_secret="secret", clock=FakeClock())
    async with aiohttp.ClientSession() as session:
        with pytest.raises(InvalidResponseError):
            await client.refresh(session, "RT", jitter=0.0)


def test_an_error_echoing_a_sent_secret_is_masked() -> None:
    """A reason that repeats the refresh token or client secret never reaches the message."""
    body = b'{"error":"invalid_request","reason":"bad token RT-secret-123 for s3cret-xyz"}'
    error = error_from_response(400, {}, body, now=SENT_AT, redact=("RT-secret-123", "s3cret-xyz"))
    for text in (str(error), repr(error), error.reason or ""):
        assert "RT-secret-123" not in text
        assert "s3cret-xyz" not in text
    assert error.reason == "bad token *** for ***"
