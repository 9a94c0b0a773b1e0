"""aiohttp integration: a client middleware that sends the manager's bearer token.

::

    async with TokenManager.from_env() as manager, zoom_session(manager) as session:
        async with session.get("/v2/users/me") as response:
            me = await response.json()

The token goes only to the allowed origins (scheme, host and port), never to a redirect
target elsewhere. A 401 invalidates the token that was sent and the request is retried once
with the new one, if its body can be sent again. Timeouts are in seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import hdrs
from yarl import URL

from ._exceptions import ConfigurationError
from ._manager import TokenManager
from ._oauth import check_endpoint

__all__ = [
    "DEFAULT_TIMEOUT",
    "ZOOM_API_URL",
    "bearer_middleware",
    "zoom_session",
]

logger = logging.getLogger("zoomtoken")

ZOOM_API_URL = "https://api.zoom.us"
#: 30 s for a whole request, 10 s to connect: Zoom answers API calls in well under a second,
#: and a caller should not hang for minutes on a dead connection.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)

_Origin = tuple[str, str, int]


def _origin_of(url: URL) -> _Origin | None:
    # url.port is the scheme's default port when none is written, so
    # https://api.zoom.us and https://api.zoom.us:443 are the same origin.
    if url.scheme not in ("http", "https") or not url.host or url.port is None:
        return None
    return (url.scheme, url.host.lower(), url.port)


def _parse_origin(value: str | URL) -> _Origin:
    url = check_endpoint(str(value), name="allowed origin")
    if url.path not in ("", "/") or url.fragment or url.user is not None:
        raise ConfigurationError(
            "an allowed origin is scheme://host[:port] only (no path, user or fragment)"
        )
    origin = _origin_of(url)
    if origin is None:
        raise ConfigurationError("an allowed origin needs a host")
    return origin


def _replayable(body: object) -> bool:
    """Whether the request body can be sent a second time, identical.

    ``None``, bytes, str, urlencoded forms and JSON all become an in-memory ``BytesPayload``.
    An async iterator (or a stream) is consumed by the first send: retrying it would send an
    empty or truncated body, so such a request gets its 401 back instead.
    """
    return not isinstance(body, aiohttp.Payload) or isinstance(body, aiohttp.BytesPayload)


def bearer_middleware(
    manager: TokenManager,
    *,
    allowed_origins: Iterable[str | URL] = (ZOOM_API_URL,),
    retry_on_401: bool = True,
) -> aiohttp.ClientMiddlewareType:
    """An aiohttp client middleware adding ``Authorization: Bearer <token>`` from ``manager``.

    Only requests to ``allowed_origins`` (https, or http on loopback) get the token; aiohttp
    runs the middleware again on each redirect hop, so a hop to another origin carries none.
    A request that already has an ``Authorization`` header is left alone. On a 401 the sent
    token is invalidated and the request retried once with the new one, unless its body was
    streamed; a second 401 is returned as it is.
    """
    origins = frozenset(_parse_origin(origin) for origin in allowed_origins)
    if not origins:
        raise ConfigurationError("bearer_middleware needs at least one allowed origin")

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if _origin_of(request.url) not in origins or hdrs.AUTHORIZATION in request.headers:
            return await handler(request)
        token = await manager.get_token()
        request.headers[hdrs.AUTHORIZATION] = f"Bearer {token}"
        # Decided before sending: a streamed body is consumed by the send itself.
        replayable = _replayable(request.body)
        response = await handler(request)
        if response.status != 401 or not retry_on_401:
            return response
        if not replayable:
            logger.info("API answered 401 to a streamed request: not retried (body consumed)")
            return response
        try:
            fresh = await manager.invalidate(token)
        except BaseException:
            response.release()
            raise
        if fresh == token:
            # invalidate() declined to refresh (rate limit): the same token would fail again.
            return response
        # Free the connection of the first answer before the second request takes one.
        response.release()
        logger.info("API answered 401: retrying once with a refreshed token")
        request.headers[hdrs.AUTHORIZATION] = f"Bearer {fresh}"
        return await handler(request)

    return middleware


def zoom_session(
    manager: TokenManager,
    *,
    base_url: str = ZOOM_API_URL,
    allowed_origins: Iterable[str | URL] | None = None,
    retry_on_401: bool = True,
    timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
    **session_kwargs: Any,
) -> aiohttp.ClientSession:
    """A ``ClientSession`` for the Zoom API: ``base_url``, the bearer middleware, timeouts.

    ``allowed_origins`` defaults to the origin of ``base_url``. Other middlewares given in
    ``session_kwargs`` run inside the bearer middleware. Call it inside the running loop and
    close the session (``async with``) when done.
    """
    base = check_endpoint(base_url, name="base_url")
    if not base.path.endswith("/"):
        # aiohttp insists on a trailing slash before it joins relative paths onto a base.
        base = base.with_path(base.path + "/")
    if allowed_origins is None:
        allowed_origins = (base.origin(),)
    extra = tuple(session_kwargs.pop("middlewares", None) or ())
    middleware = bearer_middleware(
        manager, allowed_origins=allowed_origins, retry_on_401=retry_on_401
    )
    return aiohttp.ClientSession(
        base_url=base,
        middlewares=(middleware, *extra),
        timeout=timeout,
        **session_kwargs,
    )
