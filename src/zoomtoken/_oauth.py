"""The HTTP calls to the token and revoke endpoints, and the pure parsing around them.

What to send (:func:`refresh_request`, :func:`revoke_request` ...) and what an answer means
(:func:`parse_token_response`, :func:`error_from_response`) are pure functions. Only
:class:`OAuthClient` does I/O. Times are wall-clock seconds since the epoch.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from ._clock import Clock
from ._exceptions import (
    InsecureEndpointError,
    InvalidResponseError,
    OAuthError,
    OutcomeUnknownError,
    ReauthorizationRequiredError,
    TransportError,
)
from ._retry import Disposition, classify_oauth_error, parse_retry_after
from ._token import Token

__all__ = [
    "MAX_BODY_BYTES",
    "ZOOM_REVOKE_URL",
    "ZOOM_TOKEN_URL",
    "OAuthClient",
    "OAuthRequest",
    "account_credentials_request",
    "authorization_code_request",
    "check_endpoint",
    "error_from_response",
    "parse_token_response",
    "refresh_request",
    "revoke_request",
]

ZOOM_TOKEN_URL = "https://zoom.us/oauth/token"
ZOOM_REVOKE_URL = "https://zoom.us/oauth/revoke"
# A token answer is a few hundred bytes; anything past 64 KiB is a misbehaving proxy, and
# reading it whole would let one bad answer eat the process's memory.
MAX_BODY_BYTES = 64 * 1024
# Longest error reason we repeat in a message: Zoom's are short sentences.
_MAX_REASON_CHARS = 200


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, *, name: str = "endpoint") -> URL:
    """Parse ``url`` and insist on HTTPS, except for loopback hosts (tests, emulators)."""
    parsed = URL(url)
    if not parsed.is_absolute() or parsed.scheme not in ("http", "https"):
        raise InsecureEndpointError(f"{name} must be an absolute http(s) URL")
    if parsed.scheme == "http" and not _is_loopback(parsed.host):
        raise InsecureEndpointError(
            f"{name} must use https:// (plain http is allowed only on loopback)"
        )
    if parsed.query_string:
        # Tokens never travel in a query string, and neither do our parameters.
        raise InsecureEndpointError(f"{name} must not carry a query string")
    return parsed


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` header value for HTTP Basic ``client_id:client_secret``."""
    raw = f"{client_id}:{client_secret}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True, repr=False)
class OAuthRequest:
    """What to POST: the URL, the headers and the form body. Never a query string."""

    url: URL
    headers: Mapping[str, str]
    form: Mapping[str, str]

    def __repr__(self) -> str:
        # Only the parameter names: the values are secrets.
        return f"OAuthRequest(url={str(self.url)!r}, form_fields={sorted(self.form)!r})"


def _headers(authorization: str) -> dict[str, str]:
    return {"Authorization": authorization, "Accept": "application/json"}


def refresh_request(url: URL, authorization: str, refresh_token: str) -> OAuthRequest:
    """The refresh_token grant (RFC 6749 §6)."""
    return OAuthRequest(
        url=url,
        headers=_headers(authorization),
        form={"grant_type": "refresh_token", "refresh_token": refresh_token},
    )


def account_credentials_request(url: URL, authorization: str, account_id: str) -> OAuthRequest:
    """Zoom's Server-to-Server grant: ``grant_type=account_credentials``."""
    return OAuthRequest(
        url=url,
        headers=_headers(authorization),
        form={"grant_type": "account_credentials", "account_id": account_id},
    )


def authorization_code_request(
    url: URL, authorization: str, *, code: str, redirect_uri: str, code_verifier: str
) -> OAuthRequest:
    """The authorization_code grant with PKCE (RFC 7636): the verifier proves the challenge."""
    return OAuthRequest(
        url=url,
        headers=_headers(authorization),
        form={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        },
    )


def revoke_request(url: URL, authorization: str, token: str) -> OAuthRequest:
    """Token revocation (RFC 7009): ``token=...`` in the form body."""
    return OAuthRequest(url=url, headers=_headers(authorization), form={"token": token})


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _short_text(value: object, redact: Collection[str] = ()) -> str | None:
    if not isinstance(value, str):
        return None
    for secret in redact:
        # A server or proxy may echo what it was sent; short values would mask innocent text.
        if len(secret) >= 4:
            value = value.replace(secret, "***")
    return value[:_MAX_REASON_CHARS]


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    redact: Collection[str] = (),
) -> OAuthError:
    """The typed error for an answer that is not a success (``now``: wall clock, epoch s).

    ``redact`` lists the secrets the request carried: any echo of them in the answer's
    ``error`` or ``reason`` is masked before it can reach a message.
    """
    data = _json_object(body) or {}
    error = _short_text(data.get("error"), redact)
    reason = _short_text(data.get("reason"), redact) or _short_text(
        data.get("error_description"), redact
    )
    retry_after = parse_retry_after(headers.get("Retry-After"), now)
    disposition = classify_oauth_error(status, error, reason)
    described = f"HTTP {status}" + (f" {error}" if error else "")
    described += f": {reason}" if reason else ""
    if disposition is Disposition.REAUTHORIZE:
        if error in ("invalid_client", "unauthorized_client"):
            message = f"the client credentials were rejected ({described}); check them"
        else:
            message = f"the refresh token is no longer valid ({described}); re-authorise the app"
        return ReauthorizationRequiredError(
            message, status=status, error=error, reason=reason, retryable=False
        )
    return OAuthError(
        f"token endpoint answered {described}",
        status=status,
        error=error,
        reason=reason,
        retryable=disposition is Disposition.RETRY,
        retry_after=retry_after,
    )


def parse_token_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    sent_at: float,
    previous_refresh_token: str | None,
    jitter: float,
    redact: Collection[str] = (),
) -> Token:
    """Turn a token endpoint answer into a :class:`Token`, or raise the typed error.

    ``sent_at`` is the wall-clock instant (epoch seconds) the request was sent: expiry counts
    from there, never from when the answer arrived. An answer without a ``refresh_token``
    keeps ``previous_refresh_token`` (RFC 6749 §6); a new one always replaces it.
    """
    if not 200 <= status < 300:
        raise error_from_response(status, headers, body, now=sent_at, redact=redact)
    data = _json_object(body)
    if data is None:
        # A 2xx whose body we cannot read may still have rotated the pair: retryable, and a
        # later invalid_grant must be read as "outcome unknown".
        raise InvalidResponseError(
            f"token endpoint answered HTTP {status} with a body that is not a JSON object",
            status=status,
            retryable=True,
        )
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise InvalidResponseError(
            f"token endpoint answered HTTP {status} without a string access_token",
            status=status,
            retryable=True,
        )
    expires_in = data.get("expires_in")
    if isinstance(expires_in, str):
        # Some servers send the number as a string; accept it only if it is a clean number.
        try:
            expires_in = float(expires_in)
        except ValueError:
            expires_in = None
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int | float)
        or not math.isfinite(expires_in)
        or expires_in <= 0
    ):
        raise InvalidResponseError(
            f"token endpoint answered HTTP {status} without a positive expires_in",
            status=status,
            retryable=True,
        )
    refresh_token = data.get("refresh_token")
    if refresh_token is not None and (not isinstance(refresh_token, str) or not refresh_token):
        raise InvalidResponseError(
            f"token endpoint answered HTTP {status} with a malformed refresh_token",
            status=status,
            retryable=True,
        )
    token_type = data.get("token_type")
    known = {"access_token", "refresh_token", "expires_in", "token_type", "scope", "api_url"}
    return Token.issue(
        access_token=access_token,
        refresh_token=refresh_token if refresh_token is not None else previous_refresh_token,
        expires_in=float(expires_in),
        issued_at=sent_at,
        jitter=jitter,
        token_type=token_type.lower() if isinstance(token_type, str) and token_type else "bearer",
        scope=_short_text(data.get("scope")),
        api_url=_short_text(data.get("api_url")),
        extra={
            key: value
            for key, value in data.items()
            if key not in known and isinstance(value, str | int | float | bool)
        },
    )


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise InvalidResponseError(
                f"token endpoint answered HTTP {response.status} with a body over {limit} bytes",
                status=response.status,
                retryable=response.status >= 500 or 200 <= response.status < 300,
            )
        chunks.append(chunk)
    return b"".join(chunks)


class OAuthClient:
    """Talks to one OAuth server with one client's credentials. Owns no session."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        token_url: str = ZOOM_TOKEN_URL,
        revoke_url: str = ZOOM_REVOKE_URL,
        clock: Clock,
        timeout: float = 10.0,
    ) -> None:
        self.token_url = check_endpoint(token_url, name="token_url")
        self.revoke_url = check_endpoint(revoke_url, name="revoke_url")
        self._authorization = basic_authorization(client_id, client_secret)
        self._client_secret = client_secret
        self._clock = clock
        #: Seconds one request may take, connect to last byte.
        self.timeout = timeout
        #: POSTs sent to the token endpoint (for status and tests).
        self.token_posts = 0

    def __repr__(self) -> str:
        return f"OAuthClient(token_url={str(self.token_url)!r})"

    async def _post(
        self, session: aiohttp.ClientSession, request: OAuthRequest
    ) -> tuple[int, Mapping[str, str], bytes]:
        # Half the budget for the TCP (and TLS) handshake: a connect that times out raises
        # ConnectionTimeoutError, which proves nothing was sent. Under `total` alone it would
        # be a bare TimeoutError, indistinguishable from a lost answer.
        timeout = aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.timeout / 2)
        try:
            # middlewares=(): the token request must never pass through a bearer middleware
            # installed on the user's session (it would wait for the very token it fetches).
            async with session.post(
                request.url,
                data=dict(request.form),
                headers=dict(request.headers),
                timeout=timeout,
                allow_redirects=False,
                middlewares=(),
            ) as response:
                body = await _read_bounded(response, MAX_BODY_BYTES)
                return response.status, response.headers, body
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(
                f"cannot connect to {request.url.host}: {type(exc).__name__}"
            ) from None
        except aiohttp.ConnectionTimeoutError:
            raise TransportError(f"timed out connecting to {request.url.host}") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # Sent, or possibly sent: the server may have acted on it.
            raise OutcomeUnknownError(
                f"no answer from {request.url.host} after sending ({type(exc).__name__}); "
                "the server may have rotated the refresh token"
            ) from None

    async def request_token(
        self, session: aiohttp.ClientSession, request: OAuthRequest, *, jitter: float
    ) -> Token:
        """POST a token request and parse the answer. Expiry counts from the send time."""
        sent_at = self._clock.time()
        self.token_posts += 1
        status, headers, body = await self._post(session, request)
        return parse_token_response(
            status,
            headers,
            body,
            sent_at=sent_at,
            previous_refresh_token=request.form.get("refresh_token"),
            jitter=jitter,
            redact=self._secrets(request),
        )

    def _secrets(self, request: OAuthRequest) -> tuple[str, ...]:
        """What an error answer must never repeat: the client secret and every form value
        but the grant type (refresh token, code, verifier, token to revoke)."""
        values = [value for key, value in request.form.items() if key != "grant_type"]
        return (self._client_secret, *values)

    async def refresh(
        self, session: aiohttp.ClientSession, refresh_token: str, *, jitter: float
    ) -> Token:
        """Exchange ``refresh_token`` for a new pair."""
        request = refresh_request(self.token_url, self._authorization, refresh_token)
        return await self.request_token(session, request, jitter=jitter)

    async def account_credentials(
        self, session: aiohttp.ClientSession, account_id: str, *, jitter: float
    ) -> Token:
        """Fetch a Server-to-Server token for ``account_id``."""
        request = account_credentials_request(self.token_url, self._authorization, account_id)
        return await self.request_token(session, request, jitter=jitter)

    async def exchange_code(
        self,
        session: aiohttp.ClientSession,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str,
        jitter: float,
    ) -> Token:
        """Exchange an authorization ``code`` (single use, five minutes) for a first pair."""
        request = authorization_code_request(
            self.token_url,
            self._authorization,
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=code_verifier,
        )
        return await self.request_token(session, request, jitter=jitter)

    async def revoke(self, session: aiohttp.ClientSession, token: str) -> None:
        """Revoke ``token`` (Zoom: the whole grant). Raises the typed error on failure."""
        request = revoke_request(self.revoke_url, self._authorization, token)
        status, headers, body = await self._post(session, request)
        if not 200 <= status < 300:
            raise error_from_response(
                status, headers, body, now=self._clock.time(), redact=self._secrets(request)
            )
        data = _json_object(body)
        if data is not None and data.get("status") not in (None, "success"):
            raise OAuthError(f"revoke answered HTTP {status} without success", status=status)
