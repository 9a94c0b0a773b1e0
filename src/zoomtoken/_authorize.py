"""The first authorisation: the authorization-code grant with PKCE (S256) and ``state``.

Pure pieces (:func:`new_pkce_pair`, :func:`authorization_url`, :func:`parse_callback`), the
code exchange for web apps that receive the callback themselves (:func:`exchange_code`), and
the interactive flow behind ``zoomtoken authorize`` (:func:`authorize_interactive`), which
listens for the redirect on loopback. Durations are seconds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import logging
import random
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:
    from aiohttp import web
from yarl import URL

from ._clock import Clock, SystemClock
from ._exceptions import (
    AuthorizationError,
    ConfigurationError,
    OAuthError,
    StaleGenerationError,
    ZoomTokenError,
)
from ._oauth import ZOOM_TOKEN_URL, OAuthClient, _is_loopback, check_endpoint
from ._token import Token
from .stores._base import TokenStore

__all__ = [
    "CODE_LIFETIME",
    "ZOOM_AUTHORIZE_URL",
    "AuthorizationError",
    "authorization_url",
    "authorize_interactive",
    "exchange_code",
    "new_pkce_pair",
    "parse_callback",
]

logger = logging.getLogger("zoomtoken")

ZOOM_AUTHORIZE_URL = "https://zoom.us/oauth/authorize"
#: Seconds an authorization code lives on Zoom (and is single use).
CODE_LIFETIME = 300.0
# 64 random bytes make an 86-character verifier: inside RFC 7636's 43..128, 512 bits.
_VERIFIER_BYTES = 64
# Longest error_description from the redirect that we repeat in a message.
_MAX_DESCRIPTION_CHARS = 200
# A concurrent writer (a running manager saving the old grant) may win a compare-and-set;
# the new grant supersedes it, so re-read and save again, a few times at most.
_SAVE_ATTEMPTS = 3
# Seconds the listener waits for the exchange before answering the browser anyway.
_PAGE_WAIT = 60.0


# ------------------------------------------------------------------------------ pure pieces


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_pkce_pair() -> tuple[str, str]:
    """A fresh PKCE ``(code_verifier, code_challenge)``: 86 random URL-safe characters and
    their S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(_VERIFIER_BYTES)
    return verifier, _s256(verifier)


def authorization_url(
    *,
    client_id: str,
    redirect_uri: str,
    state: str,
    code_challenge: str,
    authorize_url: str = ZOOM_AUTHORIZE_URL,
) -> str:
    """The URL to send the user to. Always ``code_challenge_method=S256``: Zoom's default
    method is ``plain``, which would make the challenge the verifier itself."""
    base = check_endpoint(authorize_url, name="authorize_url")
    for name, value in (
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("state", state),
        ("code_challenge", code_challenge),
    ):
        if not value:
            raise ConfigurationError(f"{name} is missing or empty")
    return str(
        base.with_query(
            {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "state": state,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
            }
        )
    )


def parse_callback(query: Mapping[str, str], *, expected_state: str) -> str:
    """The authorization code from the redirect's query, after checking ``state``.

    Raises :class:`AuthorizationError` for a ``state`` mismatch (a forged or stale redirect),
    an ``error`` (``access_denied``: the user refused) or a missing code. No message repeats
    the code or the state.
    """
    state = query.get("state")
    state_ok = state is not None and secrets.compare_digest(state.encode(), expected_state.encode())
    error = query.get("error")
    if error:
        if state is not None and not state_ok:
            raise AuthorizationError(
                "the redirect's state does not match this authorisation request "
                "(a forged or stale redirect); start again",
                error="state_mismatch",
            )
        description = (query.get("error_description") or "").strip()[:_MAX_DESCRIPTION_CHARS]
        error = error[:_MAX_DESCRIPTION_CHARS]
        if error == "access_denied":
            message = "the user denied access (consent was refused); nothing was saved"
        else:
            message = f"the authorisation server answered {error}; nothing was saved"
        if description:
            message += f" ({description})"
        raise AuthorizationError(message, error=error, reason=description or None)
    if not state_ok:
        raise AuthorizationError(
            "the redirect's state does not match this authorisation request "
            "(a forged or stale redirect); start again",
            error="state_mismatch",
        )
    code = query.get("code")
    if not code:
        raise AuthorizationError(
            "the redirect carries no authorization code; start again", error="missing_code"
        )
    return code


# ------------------------------------------------------------------------------ exchange


async def _save_new_grant(store: TokenStore, token: Token) -> Token:
    """Save ``token`` as the next generation of whatever the store holds."""
    for attempt in range(_SAVE_ATTEMPTS):
        current = await store.load()
        expected = None if current is None else current.generation
        fresh = token.with_generation(0 if expected is None else expected + 1)
        try:
            await store.save(fresh, expected_generation=expected)
        except StaleGenerationError:
            if attempt + 1 == _SAVE_ATTEMPTS:
                raise
            continue
        return fresh
    raise AssertionError("unreachable: the last attempt returns or raises")


async def exchange_code(
    *,
    client_id: str,
    client_secret: str,
    code: str,
    redirect_uri: str,
    code_verifier: str,
    token_url: str = ZOOM_TOKEN_URL,
    session: aiohttp.ClientSession | None = None,
    store: TokenStore | None = None,
    clock: Clock | None = None,
    http_timeout: float = 10.0,
) -> Token:
    """Exchange an authorization ``code`` for the grant's first token pair.

    ``redirect_uri`` must be the one of the authorize request, ``code_verifier`` the PKCE
    verifier whose challenge it carried. With ``store``, the pair is saved (the next
    generation of what it holds) before it is returned. A refused code (older than five
    minutes, used already, or a mismatch) raises :class:`AuthorizationError`; rejected client
    credentials raise :class:`ReauthorizationRequiredError`, and an unreachable endpoint a
    :class:`RefreshError`. ``http_timeout`` is in seconds.
    """
    oauth = OAuthClient(
        client_id=client_id,
        client_secret=client_secret,
        token_url=token_url,
        clock=clock if clock is not None else SystemClock(),
        timeout=http_timeout,
    )
    own_session = session is None
    http = aiohttp.ClientSession() if session is None else session
    try:
        token = await oauth.exchange_code(
            http,
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=code_verifier,
            # Spreads the refresh deadlines of many grants; not a secret.
            jitter=random.random(),
        )
    except OAuthError as exc:
        # Zoom refuses a stale code with invalid_grant or invalid_request; anything else
        # (rejected client credentials, an outage) is reported as it is.
        if exc.error not in ("invalid_grant", "invalid_request"):
            raise
        described = f"HTTP {exc.status} {exc.error}" + (f": {exc.reason}" if exc.reason else "")
        raise AuthorizationError(
            f"the authorization code was refused ({described}): a code works once and only "
            "for five minutes, with the same redirect_uri and PKCE verifier; start again",
            status=exc.status,
            error=exc.error,
            reason=exc.reason,
        ) from exc
    finally:
        if own_session:
            await http.close()
    if store is not None:
        token = await _save_new_grant(store, token)
        logger.info("new grant saved: generation %d", token.generation)
    return token


# ------------------------------------------------------------------------------ interactive


def _loopback_target(redirect_uri: str) -> tuple[str, int, str]:
    """The ``(host, port, path)`` to listen on for ``redirect_uri``: loopback http only."""
    try:
        url = URL(redirect_uri)
    except (ValueError, TypeError):
        url = URL()
    if (
        not url.is_absolute()
        or url.scheme != "http"
        or not _is_loopback(url.host)
        or url.port is None
        or url.fragment
    ):
        raise ConfigurationError(
            "redirect_uri must be a loopback http:// URL with the port and path allow-listed "
            "for the app, such as http://127.0.0.1:8765/callback: the redirect is received "
            "by a listener on this machine"
        )
    assert url.host is not None
    return url.host.strip("[]"), url.port, url.path or "/"


def _page(title: str, text: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )


class _Callback:
    """The listener's one job: hand the first redirect's query over, then answer the browser
    with the outcome."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.query: asyncio.Future[dict[str, str]] = loop.create_future()
        self.outcome: asyncio.Future[tuple[int, str, str]] = loop.create_future()

    def finish(self, status: int, title: str, text: str) -> None:
        if not self.outcome.done():
            self.outcome.set_result((status, title, text))

    async def handle(self, request: web.Request) -> web.Response:
        from aiohttp import web

        if self.query.done():
            return web.Response(
                status=409,
                text=_page("Already handled", "This authorisation is finished. Close this tab."),
                content_type="text/html",
            )
        self.query.set_result(dict(request.query))
        try:
            status, title, text = await asyncio.wait_for(asyncio.shield(self.outcome), _PAGE_WAIT)
        except TimeoutError:
            status, title, text = 504, "Still working", "Check the terminal for the outcome."
        return web.Response(status=status, text=_page(title, text), content_type="text/html")


async def _start_listener(host: str, port: int, path: str, callback: _Callback) -> web.AppRunner:
    # Imported here: the server half of aiohttp is needed only for an interactive authorise,
    # and importing it would slow every "import zoomtoken".
    from aiohttp import web

    app = web.Application()
    app.router.add_get(path, callback.handle)
    # No access log: the redirect's URL carries the authorization code.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        why = exc.strerror or type(exc).__name__
        raise ConfigurationError(
            f"cannot listen on {host} port {port} for the redirect ({why}): is another "
            f"program using port {port}? Stop it, or allow-list a redirect URL with a free "
            "port for the app and pass that"
        ) from None
    return runner


async def authorize_interactive(
    *,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    store: TokenStore,
    authorize_url: str = ZOOM_AUTHORIZE_URL,
    token_url: str = ZOOM_TOKEN_URL,
    open_browser: bool = False,
    # A bound on a person's click-through, not on one await: a parameter reads better here.
    timeout: float = CODE_LIFETIME,  # noqa: ASYNC109
    print_fn: Callable[[str], object] = print,
    session: aiohttp.ClientSession | None = None,
    clock: Clock | None = None,
) -> Token:
    """Run the authorization-code flow with PKCE for a person at this machine.

    Prints (and with ``open_browser`` opens) the authorize URL, receives the redirect on a
    loopback listener at ``redirect_uri``'s host, port and path, checks ``state``, exchanges
    the code and saves the pair into ``store``; the browser is told it may close the tab.
    Waits at most ``timeout`` seconds for the redirect. Raises :class:`ConfigurationError`
    for a redirect_uri that is not loopback http or a port in use, and
    :class:`AuthorizationError` for a denied consent, a bad state, a refused code or no
    redirect in time.
    """
    if not timeout > 0:
        raise ConfigurationError("timeout must be a positive number of seconds")
    host, port, path = _loopback_target(redirect_uri)
    verifier, challenge = new_pkce_pair()
    state = secrets.token_urlsafe(32)
    url = authorization_url(
        client_id=client_id,
        redirect_uri=redirect_uri,
        state=state,
        code_challenge=challenge,
        authorize_url=authorize_url,
    )
    # Fail on bad endpoints before anyone clicks through a consent screen.
    check_endpoint(token_url, name="token_url")
    callback = _Callback()
    runner = await _start_listener(host, port, path, callback)
    try:
        print_fn(f"Open this URL in a browser and approve the app:\n\n    {url}\n")
        print_fn(f"Waiting up to {timeout:.0f}s for the redirect to {redirect_uri} ...")
        import webbrowser

        if open_browser and not await asyncio.to_thread(webbrowser.open, url):
            print_fn("Could not open a browser: open the URL above by hand.")
        try:
            query = await asyncio.wait_for(asyncio.shield(callback.query), timeout)
        except TimeoutError:
            raise AuthorizationError(
                f"no redirect arrived within {timeout:.0f}s; start again (a code lives five "
                "minutes)",
                error="timeout",
            ) from None
        try:
            code = parse_callback(query, expected_state=state)
            token = await exchange_code(
                client_id=client_id,
                client_secret=client_secret,
                code=code,
                redirect_uri=redirect_uri,
                code_verifier=verifier,
                token_url=token_url,
                session=session,
                store=store,
                clock=clock,
            )
        except ZoomTokenError as exc:
            callback.finish(400, "Authorisation failed", exc.message)
            raise
        callback.finish(200, "Authorised", "The app is authorised. You can close this tab now.")
        return token
    finally:
        callback.finish(500, "Authorisation failed", "See the terminal for details.")
        # Lets the browser's page go out, then closes the port.
        await runner.cleanup()
