"""The ``zoomtoken`` command line (also ``python -m zoomtoken``).

::

    zoomtoken demo                      # the whole story against a local Zoom emulator
    zoomtoken token                     # a valid access token on stdout, nothing else
    zoomtoken refresh | revoke | status [--json]
    zoomtoken authorize | call          # see _cli_extra.py

``token``, ``refresh``, ``revoke`` and ``status`` read the ``ZOOM_*`` environment variables
(see :meth:`TokenManager.from_env`). Only ``token`` ever prints a token, and only to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from ._events import Event, EventKind, ManagerStatus
from ._exceptions import (
    ConfigurationError,
    ReauthorizationRequiredError,
    RefreshError,
    ZoomTokenError,
)
from ._manager import TokenManager
from ._retry import RetryPolicy

if TYPE_CHECKING:
    from .testing import ZoomOAuthEmulator

__all__ = ["main", "run", "run_async"]

logger = logging.getLogger("zoomtoken.cli")

PROG = "zoomtoken"
# Exit codes: an expected failure, a configuration error (as argparse uses for usage), Ctrl-C.
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


# ------------------------------------------------------------------------------ entry points


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: run the command line and exit with its status."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line in a new event loop; return the exit status."""
    try:
        return asyncio.run(run_async(argv))
    except KeyboardInterrupt:
        _error_line("interrupted")
        return EXIT_INTERRUPTED


async def run_async(
    argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> int:
    """Run the command line in the running loop; return the exit status.

    ``environ`` replaces ``os.environ`` (tests run the CLI next to an emulator this way).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    command: Callable[[argparse.Namespace, Mapping[str, str]], Awaitable[int]] = args.func
    with _logging_to_stderr(verbose=args.verbose):
        try:
            return await command(args, os.environ if environ is None else environ)
        except ZoomTokenError as exc:
            # Messages of zoomtoken errors never hold a token or a secret: safe to print.
            _error_line(exc.message)
            return EXIT_CONFIG if isinstance(exc, ConfigurationError) else EXIT_FAILURE


def _error_line(message: str) -> None:
    # One line, whatever the message holds: a traceback-free answer a script can log.
    text = " ".join(message.split())
    print(f"{PROG}: error: {text}", file=sys.stderr, flush=True)


def _warning_line(message: str) -> None:
    text = " ".join(message.split())
    print(f"{PROG}: warning: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _logging_to_stderr(*, verbose: bool) -> Iterator[None]:
    # Our own handler on the library's logger (not the root logger), removed afterwards, so
    # that running the CLI twice in one process (tests) logs every line once.
    library = logging.getLogger("zoomtoken")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    previous_level = library.level
    # Quiet by default: a failure the CLI reports in its one error line is not logged too.
    library.setLevel(logging.INFO if verbose else logging.CRITICAL)
    library.addHandler(handler)
    try:
        yield
    finally:
        library.removeHandler(handler)
        library.setLevel(previous_level)


# ------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``zoomtoken`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Keep a Zoom OAuth access token fresh; inspect and drive it by hand.",
        epilog=(
            "token, refresh, revoke and status read ZOOM_CLIENT_ID, ZOOM_CLIENT_SECRET and one "
            "of ZOOM_TOKEN_STORE (+ ZOOM_REFRESH_TOKEN to seed it) or ZOOM_ACCOUNT_ID; "
            "ZOOM_TOKEN_URL and ZOOM_REVOKE_URL override the endpoints."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what happens (INFO) to stderr"
    )
    # Also accepted after the subcommand; SUPPRESS keeps the subparser from resetting it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--store",
        metavar="PATH",
        help="token file to use (overrides ZOOM_TOKEN_STORE)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        parents=[verbose],
        help="run the whole story against a local Zoom emulator (no account needed)",
        description=(
            "Start a local Zoom OAuth emulator (with refresh-token reuse detection) and show "
            "single-flight refreshes, background rotation, retries and revocation."
        ),
    )
    demo.add_argument(
        "--callers",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="concurrent get_token() callers in the herd (default: %(default)s)",
    )
    demo.add_argument(
        "--lifetime",
        type=_lifetime,
        default=4,
        metavar="SECONDS",
        help="lifetime of the emulator's tokens, at least 2 (default: %(default)s)",
    )
    demo.add_argument(
        "--cycles",
        type=_positive_int,
        default=3,
        metavar="N",
        help="background rotations to show (default: %(default)s)",
    )
    demo.set_defaults(func=_cmd_demo)

    token = commands.add_parser(
        "token",
        parents=[verbose, store],
        help="print a valid access token on stdout (and nothing else)",
        description='For scripts: curl -H "Authorization: Bearer $(zoomtoken token)" ...',
    )
    token.set_defaults(func=_cmd_token)

    refresh = commands.add_parser(
        "refresh",
        parents=[verbose, store],
        help="refresh now; print the new generation and expiry",
    )
    refresh.set_defaults(func=_cmd_refresh)

    revoke = commands.add_parser(
        "revoke",
        parents=[verbose, store],
        help="revoke the grant (Zoom uninstalls the app for the user) and clear the store",
    )
    revoke.set_defaults(func=_cmd_revoke)

    status = commands.add_parser(
        "status",
        parents=[verbose, store],
        help="show state, expiry, generation, last error and counters (never the token)",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)

    # Defined next door, with the same (args, environ) -> exit status handlers.
    from ._cli_extra import add_authorize_parser, add_call_parser

    add_authorize_parser(commands, parents=[verbose])
    add_call_parser(commands, parents=[verbose])
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _lifetime(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        # Background refreshes are at least a second apart: a 1 s token would expire between.
        raise argparse.ArgumentTypeError("must be at least 2 seconds")
    return value


# ------------------------------------------------------------------------------ env commands


def _build_manager(
    args: argparse.Namespace, environ: Mapping[str, str], *, needs_store: bool
) -> TokenManager:
    options: dict[str, Any] = {}
    if args.store:
        # Imported here: only commands given --store need it.
        from .stores.file import FileStore

        options["store"] = FileStore(args.store)
        options["close_store"] = True
    manager = TokenManager.from_env(environ, **options)
    if needs_store and not _has_store(args, environ) and not _env(environ, "ZOOM_ACCOUNT_ID"):
        # Checked after from_env() so that missing credentials are reported first.
        raise ConfigurationError(
            "set ZOOM_TOKEN_STORE or pass --store PATH: Zoom refresh tokens are single-use, so "
            "the new pair must be saved or this refresh would lose the grant"
        )
    return manager


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _has_store(args: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    return bool(args.store) or _env(environ, "ZOOM_TOKEN_STORE") is not None


async def _cmd_token(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    manager = _build_manager(args, environ, needs_store=True)
    try:
        try:
            # refresh() without force is free on a FRESH token and otherwise waits for the
            # refresh to be saved: get_token() on a STALE token would start one in the
            # background that aclose() then cancels.
            access_token = await manager.refresh()
        except RefreshError as exc:
            # A still-valid (STALE) token beats an error; get_token() raises if none is left.
            access_token = await manager.get_token()
            _warning_line(f"refresh failed, printing the still-valid token: {exc.message}")
    finally:
        await manager.aclose()
    print(access_token, flush=True)
    return 0


async def _cmd_refresh(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    manager = _build_manager(args, environ, needs_store=True)
    try:
        await manager.refresh(force=True)
        status = manager.status()
    finally:
        await manager.aclose()
    print(f"refreshed: generation {status.generation}, {_expiry_text(status)}", flush=True)
    return 0


async def _cmd_revoke(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    manager = _build_manager(args, environ, needs_store=False)
    try:
        try:
            # Revoke with a live access token: Zoom may refuse an expired one, which would
            # leave the grant alive upstream while we forget it here.
            await manager.refresh()
        except ZoomTokenError as exc:
            logger.info(
                "no fresh token to revoke with (%s); revoking with what is stored", exc.message
            )
        generation = manager.generation
        try:
            await manager.revoke()
        except RefreshError as exc:
            raise type(exc)(
                f"revoke failed: {exc.message} (the local tokens were cleared anyway)",
                status=exc.status,
                error=exc.error,
                reason=exc.reason,
            ) from exc
    finally:
        await manager.aclose()
    if generation is None:
        print("nothing to revoke: no token was stored; local tokens cleared", flush=True)
        return 0
    print(
        f"revoked: the grant is dead (generation {generation}) and the stored tokens are "
        "cleared; authorise the app again to get a new grant",
        flush=True,
    )
    return 0


async def _cmd_status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    manager = _build_manager(args, environ, needs_store=False)
    try:
        # Load the stored pair, nothing more: status must never trigger a refresh (it
        # rotates the grant).
        await manager.load()
        status = manager.status()
    finally:
        await manager.aclose()
    if args.json:
        print(json.dumps(status_to_dict(status), indent=2, sort_keys=True), flush=True)
    else:
        print(format_status(status), flush=True)
    return 0


def _expiry_text(status: ManagerStatus) -> str:
    seconds = status.seconds_to_expiry
    if seconds is None:
        return "no token"
    until = datetime.fromtimestamp(time.time() + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if seconds <= 0:
        return f"expired {-seconds:.0f} s ago ({until})"
    return f"valid for {seconds:.0f} s (until {until})"


def _error_dict(error: ZoomTokenError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {
        "type": type(error).__name__,
        "message": error.message,
        "status": error.status,
        "error": error.error,
        "reason": error.reason,
        "retryable": error.retryable,
    }


def status_to_dict(status: ManagerStatus) -> dict[str, Any]:
    """A JSON-ready view of a :class:`ManagerStatus` (which holds no secret)."""
    result: dict[str, Any] = {}
    for field in dataclasses.fields(status):
        value = getattr(status, field.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, ZoomTokenError):
            value = _error_dict(value)
        result[field.name] = value
    return result


def format_status(status: ManagerStatus) -> str:
    """The human-readable ``status`` report: one aligned ``name  value`` line each."""
    error = status.last_error
    rows = [
        ("state", "no token" if status.state is None else status.state.value),
        ("expiry", _expiry_text(status)),
        ("generation", "-" if status.generation is None else str(status.generation)),
        ("last error", "none" if error is None else f"{type(error).__name__}: {error.message}"),
        ("re-authorisation", "REQUIRED" if status.reauthorization_required else "not required"),
        ("cool-down", f"{status.cooldown_remaining:.1f} s"),
        ("refreshes", str(status.refreshes)),
        ("failures", str(status.failures)),
        ("retries", str(status.retries)),
        ("stale serves", str(status.stale_serves)),
        ("adopted", str(status.adopted)),
        ("token POSTs", str(status.token_posts)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


# ------------------------------------------------------------------------------ demo


async def _cmd_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return await run_demo(callers=args.callers, lifetime=args.lifetime, cycles=args.cycles)


def fingerprint(token: str) -> str:
    """A short SHA-256 fingerprint: tells tokens apart without showing one."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


class _Console:
    """Progress lines, plus a status line redrawn in place when the output is a terminal."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        isatty = getattr(out, "isatty", None)
        self.live = bool(isatty()) if callable(isatty) else False
        self._status = ""

    def line(self, text: str = "") -> None:
        if self.live and self._status:
            self._out.write("\r\x1b[K")
        self._out.write(text + "\n")
        if self.live and self._status:
            self._out.write(self._status)
        self._out.flush()

    def status(self, text: str) -> None:
        if not self.live:
            return  # plain output (a pipe, a CI log): the progress lines say it all
        self._status = text
        self._out.write("\r\x1b[K" + text)
        self._out.flush()

    def clear_status(self) -> None:
        if self.live and self._status:
            self._out.write("\r\x1b[K")
            self._out.flush()
        self._status = ""


@dataclasses.dataclass
class _Row:
    scenario: str
    posts: int
    callers: int
    calls: int
    errors: int
    invalid_grant: int
    elapsed: float
    ok: bool


@dataclasses.dataclass
class _Calls:
    """What the demo's callers saw; reset per scenario."""

    calls: int = 0
    errors: int = 0
    during_refresh: int = 0
    fingerprints: set[str] = dataclasses.field(default_factory=set)


# Pause between two get_token() calls of one background caller, seconds.
_CALLER_PAUSE = 0.01
# Concurrent callers that keep using the token during the rotation scenarios.
_BACKGROUND_CALLERS = 100
_DEMO_USER = "demo-user"


async def run_demo(
    *, callers: int = 10_000, lifetime: int = 4, cycles: int = 3, out: TextIO | None = None
) -> int:
    """Run the demo against a local emulator; 0 if every expectation held, 1 otherwise."""
    # Imported here: the emulator pulls in aiohttp.web, which no other command needs.
    from .testing import ZoomOAuthEmulator

    console = _Console(sys.stdout if out is None else out)
    async with ZoomOAuthEmulator(expires_in=lifetime, reuse_detection=True) as zoom:
        demo = _Demo(console, zoom, callers=callers, lifetime=lifetime, cycles=cycles)
        return await demo.run()


class _Demo:
    def __init__(
        self,
        console: _Console,
        zoom: ZoomOAuthEmulator,
        *,
        callers: int,
        lifetime: int,
        cycles: int,
    ) -> None:
        self.console = console
        self.zoom = zoom
        self.herd_size = callers
        self.lifetime = lifetime
        self.cycles = cycles
        self.rows: list[_Row] = []
        self.failures: list[str] = []
        self.calls = _Calls()
        self.refreshing = False
        self.announce = False
        # Set on every published refresh; created here, inside the running loop.
        self.published = asyncio.Event()
        self.manager = TokenManager(
            client_id=zoom.client_id,
            client_secret=zoom.client_secret,
            refresh_token=zoom.create_grant(user_id=_DEMO_USER),
            token_url=zoom.token_url,
            revoke_url=zoom.revoke_url,
            on_event=self.on_event,
            # Short backoffs: a short-lived demo token leaves well under a second to retry.
            retry=RetryPolicy(max_attempts=6, backoff_base=0.05, backoff_cap=0.25),
        )

    # -- helpers -------------------------------------------------------------------------

    def expect(self, condition: bool, what: str) -> bool:
        if not condition:
            self.failures.append(what)
            self.console.line(f"  ✗ expected: {what}")
        return condition

    def posts(self) -> int:
        counters = self.zoom.counters
        return counters.token_requests + counters.revokes

    def on_event(self, event: Event) -> None:
        kind = event.kind
        if kind is EventKind.REFRESH_STARTED:
            self.refreshing = True
        elif kind is EventKind.REFRESH_SUCCEEDED:
            self.refreshing = False
            self.published.set()
            if self.announce:
                counters = self.zoom.counters
                self.console.line(
                    f"  ↻ rotated → generation {event.generation}   "
                    f"POSTs so far {counters.token_requests}   "
                    f"invalid_grant {counters.invalid_grant}   "
                    f"caller errors {self.calls.errors}"
                )
        elif kind is EventKind.REFRESH_FAILED:
            self.refreshing = False
            error = event.error
            self.console.line(f"  ! refresh failed: {error.message if error else 'unknown'}")
        elif kind is EventKind.RETRY_SCHEDULED:
            error = event.error
            what = f"HTTP {error.status}" if error is not None and error.status else "error"
            if error is not None and error.error:
                what += f" {error.error}"
            self.console.line(
                f"  ⚠ attempt {event.attempt} got {what}; retrying in {event.wait or 0:.2f} s "
                f"— callers keep getting generation {event.generation}"
            )

    async def caller(self) -> None:
        manager = self.manager
        while True:
            try:
                token = await manager.get_token()
            except ZoomTokenError:
                self.calls.errors += 1
            else:
                self.calls.calls += 1
                if self.refreshing:
                    self.calls.during_refresh += 1
                self.calls.fingerprints.add(fingerprint(token))
            await asyncio.sleep(_CALLER_PAUSE)

    async def ticker(self) -> None:
        while self.console.live:
            status = self.manager.status()
            state = "-" if status.state is None else status.state.value
            expiry = (
                "-" if status.seconds_to_expiry is None else f"{status.seconds_to_expiry:4.1f}s"
            )
            generation = "-" if status.generation is None else status.generation
            self.console.status(
                f"  [gen {generation} | {state:<7} | deadline in {expiry} | POSTs {self.posts()} "
                f"| calls {self.calls.calls:,} | errors {self.calls.errors}]"
            )
            await asyncio.sleep(0.1)

    async def reach_generation(self, target: int, *, within: float) -> bool:
        """Wait (``within`` seconds at most) until the manager publishes ``target``."""
        manager = self.manager
        try:
            async with asyncio.timeout(within):
                while (generation := manager.generation) is None or generation < target:
                    self.published.clear()
                    await self.published.wait()
        except TimeoutError:
            return False
        return True

    def record(
        self, scenario: str, *, started: float, posts0: int, grants0: int, callers: int, ok: bool
    ) -> None:
        self.rows.append(
            _Row(
                scenario=scenario,
                posts=self.posts() - posts0,
                callers=callers,
                calls=self.calls.calls,
                errors=self.calls.errors,
                invalid_grant=self.zoom.counters.invalid_grant - grants0,
                elapsed=time.perf_counter() - started,
                ok=ok,
            )
        )

    # -- the story -----------------------------------------------------------------------

    async def run(self) -> int:
        zoom = self.zoom
        line = self.console.line
        line(
            f"zoomtoken demo: local Zoom OAuth emulator at {zoom.base_url} "
            f"(refresh-token reuse detection ON), tokens live {self.lifetime} s"
        )
        line("No token or secret is printed; tokens are shown as SHA-256 fingerprints.")
        manager = self.manager
        ticker = asyncio.create_task(self.ticker())
        workers: list[asyncio.Task[None]] = []
        try:
            await self.herd()
            await manager.start()
            workers = [asyncio.create_task(self.caller()) for _ in range(_BACKGROUND_CALLERS)]
            await self.rotations()
            await self.retries()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            workers = []
            await self.revoke()
        finally:
            for task in [*workers, ticker]:
                task.cancel()
            await asyncio.gather(*workers, ticker, return_exceptions=True)
            self.console.clear_status()
            await manager.aclose()
        self.summary()
        return 0 if not self.failures else EXIT_FAILURE

    async def herd(self) -> None:
        manager = self.manager
        n = self.herd_size
        self.console.line()
        self.console.line(f"1. Thundering herd: {n:,} concurrent get_token() calls, no token yet")
        self.calls = _Calls()
        posts0, grants0 = self.posts(), self.zoom.counters.invalid_grant
        started = time.perf_counter()
        results = await asyncio.gather(
            *(manager.get_token() for _ in range(n)), return_exceptions=True
        )
        elapsed = time.perf_counter() - started
        tokens = [r for r in results if isinstance(r, str)]
        self.calls.calls = len(tokens)
        self.calls.errors = n - len(tokens)
        prints = {fingerprint(t) for t in tokens}
        posts = self.posts() - posts0
        shown = ", ".join(sorted(prints)[:3]) + (", ..." if len(prints) > 3 else "")
        self.console.line(
            f"  {len(tokens):,} callers got {len(prints)} distinct token ({shown or 'none'}) "
            f"from {posts} POST in {elapsed:.2f} s; errors {self.calls.errors}"
        )
        ok = all(
            [
                self.expect(posts == 1, f"one POST for the herd (got {posts})"),
                self.expect(len(prints) == 1, "every caller got the same token"),
                self.expect(self.calls.errors == 0, "no caller error in the herd"),
            ]
        )
        self.record(
            "thundering herd", started=started, posts0=posts0, grants0=grants0, callers=n, ok=ok
        )

    async def rotations(self) -> None:
        manager = self.manager
        self.console.line()
        self.console.line(
            f"2. Background rotation: {self.cycles} refresh cycle{'s' * (self.cycles > 1)} "
            f"while {_BACKGROUND_CALLERS} callers keep calling get_token()"
        )
        self.calls = _Calls()
        self.announce = True
        posts0, grants0 = self.posts(), self.zoom.counters.invalid_grant
        start_generation = manager.generation or 0
        started = time.perf_counter()
        reached = await self.reach_generation(
            start_generation + self.cycles, within=self.cycles * (self.lifetime + 2) + 5
        )
        posts = self.posts() - posts0
        # A few caller pauses, so that the callers have met the newest token too.
        await asyncio.sleep(5 * _CALLER_PAUSE)
        generations = f"{start_generation}–{start_generation + self.cycles}"
        self.console.line(
            f"  {self.calls.calls:,} calls saw {len(self.calls.fingerprints)} distinct tokens "
            f"(generations {generations}); caller errors {self.calls.errors}"
        )
        ok = all(
            [
                self.expect(reached, f"{self.cycles} rotations in time"),
                self.expect(posts == self.cycles, f"one POST per rotation (got {posts})"),
                self.expect(self.calls.errors == 0, "no caller error during rotation"),
                self.expect(self.zoom.counters.invalid_grant == grants0, "no invalid_grant answer"),
            ]
        )
        self.record(
            "background rotation",
            started=started,
            posts0=posts0,
            grants0=grants0,
            callers=_BACKGROUND_CALLERS,
            ok=ok,
        )

    async def retries(self) -> None:
        from .testing import Fault

        manager = self.manager
        self.console.line()
        self.console.line("3. Zoom hiccups: the next refresh gets 503, 503, 502 before it succeeds")
        self.zoom.inject(Fault.status(503), Fault.status(503), Fault.status(502))
        self.calls = _Calls()
        posts0, grants0 = self.posts(), self.zoom.counters.invalid_grant
        retries0 = manager.status().retries
        target = (manager.generation or 0) + 1
        started = time.perf_counter()
        reached = await self.reach_generation(target, within=self.lifetime * 2 + 5)
        posts = self.posts() - posts0
        retries = manager.status().retries - retries0
        self.console.line(
            f"  {self.calls.during_refresh:,} calls were served a valid token while the refresh "
            f"was retrying; caller errors {self.calls.errors}; retries (status()) {retries}"
        )
        ok = all(
            [
                self.expect(reached, "the refresh succeeded after the faults"),
                self.expect(posts == 4, f"3 failed POSTs + 1 good one (got {posts})"),
                self.expect(retries == 3, f"status().retries went up by 3 (got {retries})"),
                self.expect(self.calls.errors == 0, "no caller error during the 5xx burst"),
            ]
        )
        self.record(
            "5xx burst + retry",
            started=started,
            posts0=posts0,
            grants0=grants0,
            callers=_BACKGROUND_CALLERS,
            ok=ok,
        )

    async def revoke(self) -> None:
        manager = self.manager
        self.console.line()
        self.console.line("4. Revoke: the grant dies upstream and the manager says so")
        self.announce = False
        self.calls = _Calls()
        posts0, grants0 = self.posts(), self.zoom.counters.invalid_grant
        started = time.perf_counter()
        await manager.revoke()
        dead_upstream = self.zoom.grant_info(_DEMO_USER).revoked
        status = manager.status()
        try:
            await manager.get_token()
        except ReauthorizationRequiredError:
            refused = True  # the expected answer, not a caller error
        else:
            refused = False
        self.calls.calls = 1
        self.console.line(
            f"  emulator grant revoked: {'yes' if dead_upstream else 'NO'}; "
            f"status: re-authorisation "
            f"{'required' if status.reauthorization_required else 'NOT required'}; "
            f"get_token() now raises ReauthorizationRequiredError: {'yes' if refused else 'NO'}"
        )
        ok = all(
            [
                self.expect(dead_upstream, "the emulator's grant is revoked"),
                self.expect(status.reauthorization_required, "status says re-authorise"),
                self.expect(refused, "get_token() refuses with ReauthorizationRequiredError"),
            ]
        )
        self.record("revoke", started=started, posts0=posts0, grants0=grants0, callers=1, ok=ok)

    def summary(self) -> None:
        counters = self.zoom.counters
        header = (
            "scenario",
            "POSTs",
            "callers",
            "calls",
            "errors",
            "invalid_grant",
            "elapsed",
            "result",
        )
        table = [header] + [
            (
                row.scenario,
                str(row.posts),
                f"{row.callers:,}",
                f"{row.calls:,}",
                str(row.errors),
                str(row.invalid_grant),
                f"{row.elapsed:.2f} s",
                "ok" if row.ok else "FAILED",
            )
            for row in self.rows
        ]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]

        def fmt(cells: Sequence[str]) -> str:
            # Text left-aligned, numbers right-aligned.
            parts = [
                cell.ljust(width) if i in (0, len(cells) - 1) else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
            ]
            return "  ".join(parts).rstrip()

        line = self.console.line
        line()
        line("Summary")
        line(fmt(header))
        line(fmt(["-" * w for w in widths]))
        for cells in table[1:]:
            line(fmt(cells))
        line()
        line(
            f"emulator totals: token POSTs {counters.token_requests}, rotations "
            f"{counters.refreshes}, faults {counters.faults_served}, invalid_grant "
            f"{counters.invalid_grant}, reuse detected {counters.reuse_detected}"
        )
        self.expect(counters.reuse_detected == 0, "no refresh token was ever used twice")
        if self.failures:
            line(f"FAILED: {len(self.failures)} expectation(s) did not hold:")
            for what in self.failures:
                line(f"  - {what}")
        else:
            line("OK: every expectation held.")
