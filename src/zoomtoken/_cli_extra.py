"""The ``authorize`` and ``call`` subcommands of the ``zoomtoken`` command line.

::

    zoomtoken authorize --redirect-uri http://127.0.0.1:8765/callback [--open] [--store PATH]
    zoomtoken call GET /v2/users/me [--data JSON]

Both read ``ZOOM_CLIENT_ID`` and ``ZOOM_CLIENT_SECRET``; ``authorize`` also
``ZOOM_AUTHORIZE_URL`` and ``ZOOM_TOKEN_URL``, ``call`` the variables of
:meth:`TokenManager.from_env` and ``ZOOM_API_URL``. Handlers take ``(args, environ)`` and
return the exit status; their :class:`ZoomTokenError` messages are safe to print.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from ._authorize import ZOOM_AUTHORIZE_URL, authorize_interactive
from ._exceptions import ConfigurationError
from ._manager import TokenManager
from ._oauth import ZOOM_TOKEN_URL

__all__ = [
    "add_authorize_parser",
    "add_call_parser",
    "run_authorize",
    "run_call",
]

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
# An API answer is printed whole; anything beyond this is cut rather than flood a terminal.
_MAX_PRINTED_BYTES = 1 << 20


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _require_env(environ: Mapping[str, str], *names: str) -> list[str]:
    missing = [name for name in names if _env(environ, name) is None]
    if missing:
        raise ConfigurationError(f"missing or empty environment variable(s): {missing}")
    return [environ[name].strip() for name in names]


def _store_path(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    path: str | None = getattr(args, "store", None)
    return path or _env(environ, "ZOOM_TOKEN_STORE")


def _add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", metavar="PATH", help="token file to use (overrides ZOOM_TOKEN_STORE)"
    )


# ------------------------------------------------------------------------------ authorize


def add_authorize_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """Add ``zoomtoken authorize`` (handler :func:`run_authorize`, as ``func``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "authorize",
        parents=list(parents),
        help="authorise the app in a browser (PKCE) and save the first token pair",
        description=(
            "Print (or --open) Zoom's authorize URL, receive the redirect on a loopback "
            "listener at --redirect-uri (allow-list exactly that URL for the app), exchange "
            "the code and save the token pair. Reads ZOOM_CLIENT_ID, ZOOM_CLIENT_SECRET, and "
            "ZOOM_AUTHORIZE_URL / ZOOM_TOKEN_URL to override the endpoints."
        ),
    )
    parser.add_argument(
        "--redirect-uri",
        required=True,
        metavar="URL",
        help="the app's allow-listed loopback redirect URL, e.g. http://127.0.0.1:8765/callback",
    )
    parser.add_argument(
        "--open", dest="open_browser", action="store_true", help="open the URL in a browser"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for the redirect (default: %(default)s; a code lives 300 s)",
    )
    _add_store_option(parser)
    parser.set_defaults(func=run_authorize)
    return parser


async def run_authorize(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """``zoomtoken authorize``: the authorization-code flow; prints no token."""
    client_id, client_secret = _require_env(environ, "ZOOM_CLIENT_ID", "ZOOM_CLIENT_SECRET")
    path = _store_path(args, environ)
    if path is None:
        raise ConfigurationError(
            "set ZOOM_TOKEN_STORE or pass --store PATH: the new token pair must be saved"
        )
    from .stores.file import FileStore

    store = FileStore(path)
    try:
        token = await authorize_interactive(
            client_id=client_id,
            client_secret=client_secret,
            redirect_uri=args.redirect_uri,
            store=store,
            authorize_url=_env(environ, "ZOOM_AUTHORIZE_URL") or ZOOM_AUTHORIZE_URL,
            token_url=_env(environ, "ZOOM_TOKEN_URL") or ZOOM_TOKEN_URL,
            open_browser=args.open_browser,
            timeout=args.timeout,
            print_fn=lambda text: print(text, flush=True),
        )
    finally:
        await store.aclose()
    print(
        f"authorised: token pair saved to {store.path} (generation {token.generation}, "
        f"scope {token.scope or 'unknown'}, access token valid {token.expires_in:.0f}s)",
        flush=True,
    )
    return 0


# ------------------------------------------------------------------------------ call


def add_call_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """Add ``zoomtoken call METHOD PATH`` (handler :func:`run_call`, as ``func``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "call",
        parents=list(parents),
        help="make one authenticated API request and print the JSON answer",
        description=(
            "One request through the bearer middleware, e.g. `zoomtoken call GET /v2/users/me`, "
            "to check a set-up. Uses the manager from the environment (see `token`); "
            "ZOOM_API_URL overrides https://api.zoom.us."
        ),
    )
    parser.add_argument("method", type=str.upper, choices=_METHODS, metavar="METHOD")
    parser.add_argument("path", metavar="PATH", help="API path, e.g. /v2/users/me")
    parser.add_argument("--data", metavar="JSON", help="JSON request body")
    _add_store_option(parser)
    parser.set_defaults(func=run_call)
    return parser


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _print_body(body: bytes, content_type: str) -> None:
    truncated = len(body) > _MAX_PRINTED_BYTES
    body = body[:_MAX_PRINTED_BYTES]
    if "json" in content_type and not truncated:
        try:
            print(json.dumps(json.loads(body), indent=2, ensure_ascii=False), flush=True)
            return
        except ValueError:
            pass
    if body:
        print(body.decode("utf-8", errors="replace"), flush=True)
    if truncated:
        print(f"(answer cut at {_MAX_PRINTED_BYTES} bytes)", file=sys.stderr, flush=True)


async def run_call(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """``zoomtoken call``: one API request; prints the answer, exit status 1 unless 2xx."""
    from .aiohttp import ZOOM_API_URL, zoom_session

    payload: object = None
    if args.data is not None:
        try:
            payload = json.loads(args.data)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"--data is not valid JSON ({exc.msg})") from None
    options: dict[str, Any] = {}
    path = _store_path(args, environ)
    if path is not None:
        from .stores.file import FileStore

        options["store"] = FileStore(path)
        options["close_store"] = True
    manager = TokenManager.from_env(environ, **options)
    try:
        if path is None and _env(environ, "ZOOM_ACCOUNT_ID") is None:
            # Refresh tokens are single-use: a refresh here would rotate the grant and the
            # new pair would die with this process.
            raise ConfigurationError(
                "set ZOOM_TOKEN_STORE or pass --store PATH (or use ZOOM_ACCOUNT_ID): a "
                "refresh rotates the token and the new pair must be saved"
            )
        target = args.path if "://" in args.path else "/" + args.path.lstrip("/")
        api_url = _env(environ, "ZOOM_API_URL") or ZOOM_API_URL
        async with (
            zoom_session(manager, base_url=api_url) as session,
            session.request(args.method, target, json=payload) as response,
        ):
            status = response.status
            content_type = response.headers.get("Content-Type", "")
            body = await _read_bounded(response, _MAX_PRINTED_BYTES + 1)
    finally:
        await manager.aclose()
    _print_body(body, content_type)
    if not 200 <= status < 300:
        print(f"zoomtoken: error: the API answered HTTP {status}", file=sys.stderr, flush=True)
        return 1
    return 0
