"""The things measured side by side: a floor, a naive lock-per-call manager, Authlib, zoomtoken.

Every contender answers ``await get_token() -> str``, on the real clocks.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from zoomtoken import RetryPolicy, Token, TokenManager
from zoomtoken._oauth import OAuthClient
from zoomtoken.stores import MemoryStore

__all__ = [
    "LIFETIME",
    "AuthlibSide",
    "NaiveLockManager",
    "floor",
    "load_authlib",
    "make_token",
    "minimal_get_token",
]

#: Lifetime of every benchmark token, seconds (Zoom's).
LIFETIME = 3599
#: Far enough to push any benchmark token past its hard deadline.
AGE_PAST_EXPIRY = 2 * 3600.0

GetToken = Callable[[], Awaitable[str]]


async def floor() -> str:
    """The floor: a bare ``await`` of an ``async def`` returning a constant."""
    return "floor-token"


def make_token(refresh_token: str, *, issued_at: float | None = None) -> Token:
    """A token carrying ``refresh_token``, issued now (FRESH) unless told otherwise."""
    return Token.issue(
        access_token="bench-access-token-old",
        refresh_token=refresh_token,
        expires_in=LIFETIME,
        issued_at=time.time() if issued_at is None else issued_at,
        jitter=0.0,
    )


def make_manager(
    *,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    token_url: str = "https://zoom.us/oauth/token",
    revoke_url: str = "https://zoom.us/oauth/revoke",
    session: aiohttp.ClientSession | None = None,
    retry: RetryPolicy | None = None,
    http_timeout: float = 10.0,
    on_event: Any = None,
    issued_at: float | None = None,
) -> TokenManager:
    """A TokenManager whose store holds a token carrying ``refresh_token``, issued at
    ``issued_at`` (default: now, so FRESH)."""
    return TokenManager(
        client_id=client_id,
        client_secret=client_secret,
        store=MemoryStore(make_token(refresh_token, issued_at=issued_at)),
        token_url=token_url,
        revoke_url=revoke_url,
        session=session,
        retry=retry,
        http_timeout=http_timeout,
        on_event=on_event,
    )


class NaiveLockManager:
    """What one writes first: an ``asyncio.Lock`` around every call, refresh under the lock.

    Correct (double-checked under the lock, so one POST per expiry), but every call pays for
    the lock, a herd is released one waiter at a time, and during an outage every queued
    caller POSTs again once the previous one failed.
    """

    def __init__(
        self,
        token: Token,
        *,
        oauth: OAuthClient | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._token = token
        self._lock = asyncio.Lock()
        self._oauth = oauth
        self._session = session
        self._wall = time.time

    async def get_token(self) -> str:
        async with self._lock:
            token = self._token
            if self._wall() < token.refresh_at:
                return token.access_token
            assert self._oauth is not None
            assert self._session is not None
            assert token.refresh_token is not None
            fresh = await self._oauth.refresh(self._session, token.refresh_token, jitter=0.0)
            self._token = fresh
            return fresh.access_token


def minimal_get_token(token: Token) -> GetToken:
    """The least any manager honouring DESIGN §2 can do per call: one attribute read and one
    wall-clock comparison, as a module-level coroutine function (no ``self``)."""
    wall = time.time

    async def get_token() -> str:
        if wall() < token.refresh_at:
            return token.access_token
        raise RuntimeError("the benchmark token went stale")

    return get_token


def load_authlib() -> Any | None:
    """``authlib.integrations.httpx_client.AsyncOAuth2Client``, or ``None`` if not installed."""
    with warnings.catch_warnings():
        # Authlib >= 1.7 prefers httpx2 and warns at import when it falls back to httpx;
        # authlib.deprecate installs an "always" filter for that warning when imported, so
        # import it first and silence the warning after.
        try:
            import authlib.deprecate

            warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
            from authlib.integrations.httpx_client import AsyncOAuth2Client
        except ImportError:
            return None
    return AsyncOAuth2Client


class AuthlibSide:
    """Authlib's ``AsyncOAuth2Client`` (httpx), reduced to the path a request takes for its
    token: ``AsyncOAuth2Client.request()`` checks ``self.token``, awaits
    ``ensure_active_token(self.token)`` (an ``anyio.Lock`` held around an expiry check, and the
    refresh when due), then signs with ``self.token``."""

    def __init__(
        self,
        client_class: Any,
        *,
        client_id: str,
        client_secret: str,
        token_url: str,
        refresh_token: str,
        expires_at: float,
    ) -> None:
        self.client = client_class(
            client_id=client_id,
            client_secret=client_secret,
            token={
                "access_token": "bench-access-token-old",
                "refresh_token": refresh_token,
                "token_type": "bearer",
                "expires_at": int(expires_at),
            },
            token_endpoint=token_url,
        )

    async def get_token(self) -> str:
        client = self.client
        if not client.token:
            raise RuntimeError("no token")
        await client.ensure_active_token(client.token)
        return str(client.token["access_token"])

    async def aclose(self) -> None:
        await self.client.aclose()
