"""A store that keeps the token pair in Redis, shared by processes on any number of hosts.

Needs redis-py (``pip install 'zoomtoken[redis]'``). Each grant uses three names::

    {{namespace}:{grant}}:token     the token pair, JSON (holds the secrets)
    {{namespace}:{grant}}:lease     the refresh lease: a random owner id, with a TTL
    {{namespace}:{grant}}:updates   pub/sub channel: "<generation> <publisher id>" after a save,
                                  "cleared <publisher id>" after a clear; never a token

Every write is one Lua script, so the checks and the write are atomic on the server: a save
happens only while the lease (if given) is still ours *and* the stored generation is still the
expected one, and announces itself on the channel in the same step. Scripts are sent with
EVALSHA and loaded again when the server answers NOSCRIPT (after a restart or SCRIPT FLUSH).

Durations are seconds; Redis is given milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import secrets
from collections.abc import AsyncGenerator, Iterator
from typing import Any, Self

try:
    import redis.asyncio as aioredis
    import redis.exceptions as redis_errors
    from redis.asyncio.retry import Retry
    from redis.backoff import EqualJitterBackoff
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("RedisStore needs redis-py: pip install 'zoomtoken[redis]'") from exc

from .._exceptions import (
    ConfigurationError,
    LeaseLostError,
    StaleGenerationError,
    StoreCorruptError,
    StoreError,
    StoreUnavailableError,
)
from .._token import Token, token_from_json, token_to_dict
from ._base import Lease

__all__ = ["DEFAULT_KEY_TTL", "RedisStore"]

logger = logging.getLogger("zoomtoken")

#: Default lifetime of the token key, seconds: Zoom refresh tokens die after 90 days unused,
#: and a key outliving its refresh token would only hold a dead grant.
DEFAULT_KEY_TTL = 90 * 24 * 3600.0

# Clients the store builds itself answer within these bounds (seconds) or fail: a hung Redis
# must turn into StoreUnavailableError, not a refresh that never ends.
_SOCKET_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 5.0
# A couple of quick retries cover a pooled connection the server closed (a restart); more
# would only delay the StoreUnavailableError the manager needs to see.
_CLIENT_RETRIES = 2
# Pauses (seconds) between watch() reconnection attempts: first, doubling up to the largest.
_WATCH_RETRY_FIRST = 0.1
_WATCH_RETRY_MAX = 5.0
# watch() reads with this timeout (seconds) rather than blocking forever, so that older
# redis-py versions, whose blocking read obeys socket_timeout, never see a spurious error.
_WATCH_READ_TIMEOUT = 10.0
# A token pair is a few hundred bytes; a value far larger under our key is not ours.
_MAX_SIZE = 1 << 20

# Return codes of the save script.
_SAVED = 1
_LEASE_LOST = -1
_STALE = -2
_CORRUPT = -3

# KEYS: token, lease. ARGV: expected generation ('' = nothing stored), lease owner ('' = no
# lease), token JSON, key TTL in ms ('0' = none), channel, message.
_SAVE_SCRIPT = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return {-1, ''}
end
local raw = redis.pcall('GET', KEYS[1])
local stored = ''
if type(raw) == 'table' then
  return {-3, ''}
end
if raw then
  local ok, data = pcall(cjson.decode, raw)
  if not ok or type(data) ~= 'table' then
    return {-3, ''}
  end
  local generation = data['generation']
  if type(generation) ~= 'number' or generation < 0 or generation ~= math.floor(generation) then
    return {-3, ''}
  end
  stored = string.format('%d', generation)
end
if stored ~= ARGV[1] then
  return {-2, stored}
end
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {1, ''}
"""

# KEYS: lease. ARGV: owner, TTL in ms. 1 if extended, 0 if the lease is not ours.
_EXTEND_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: owner. 1 if deleted, 0 if it had lapsed or is someone else's.
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: token. ARGV: channel, message.
_CLEAR_SCRIPT = """
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""

# Connection trouble: the server may well answer again soon.
_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    # A replica promoted during failover refuses writes for a moment.
    redis_errors.ReadOnlyError,
    OSError,
)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _check_ttl(ttl: float) -> int:
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError("ttl must be a positive number of seconds")
    return _ms(ttl)


def _parse(raw: bytes | str) -> Token:
    if len(raw) > _MAX_SIZE:
        raise StoreCorruptError("stored token: value is larger than 1 MiB")
    return token_from_json(raw)


class _RedisLease:
    """The refresh lease: ``{{namespace}:{grant}}:lease`` holding our random owner id."""

    __slots__ = ("_owner", "_released", "_store")

    def __init__(self, store: RedisStore, owner: str) -> None:
        self._store = store
        self._owner = owner
        self._released = False

    def __repr__(self) -> str:
        return f"<RedisLease owner={self._owner!r} released={self._released}>"

    @property
    def owner(self) -> str:
        return self._owner

    async def extend(self, ttl: float) -> None:
        """Keep the lease ``ttl`` more seconds from now; :class:`LeaseLostError` if it lapsed
        or another holder has it."""
        ttl_ms = _check_ttl(ttl)
        if self._released:
            raise LeaseLostError("the redis lease was released")
        store = self._store
        store._check_open()
        with store._errors("extend the lease"):
            extended = await store._extend(keys=[store.lease_key], args=[self._owner, ttl_ms])
        if extended != 1:
            raise LeaseLostError("the redis lease lapsed or was taken over")

    async def release(self) -> None:
        """Delete the lease key if it is still ours; a no-op once released or lapsed."""
        if self._released:
            return
        store = self._store
        with store._errors("release the lease"):
            await store._release(keys=[store.lease_key], args=[self._owner])
        self._released = True


class RedisStore:
    """Keeps one grant's token pair in Redis, shared by every process that uses the same
    ``namespace`` and ``grant``.

    Give either a ``redis.asyncio.Redis`` ``client`` (the caller keeps owning it) or a ``url``
    (``redis://``, ``rediss://`` for TLS, passwords in the URL; the store owns that client and
    closes it in :meth:`aclose`). The token key expires ``key_ttl`` seconds after the last save
    (default 90 days, a Zoom refresh token's life); ``None`` or ``0`` keeps it forever.
    Connection failures and timeouts raise :class:`StoreUnavailableError`.
    """

    #: Processes on any host may share the store: the manager refreshes only under the lease.
    shared = True

    def __init__(
        self,
        client: aioredis.Redis | None = None,
        *,
        url: str | None = None,
        namespace: str = "zoomtoken",
        grant: str = "default",
        key_ttl: float | None = DEFAULT_KEY_TTL,
    ) -> None:
        if (client is None) == (url is None):
            raise ConfigurationError("give RedisStore exactly one of client and url")
        if not namespace or not grant:
            raise ConfigurationError("RedisStore namespace and grant must not be empty")
        if key_ttl is not None and not (math.isfinite(key_ttl) and key_ttl >= 0):
            raise ConfigurationError("key_ttl must be a non-negative number of seconds or None")
        if client is None:
            assert url is not None
            try:
                # URL query options (?socket_timeout=...) override these defaults in redis-py.
                client = aioredis.Redis.from_url(
                    url,
                    socket_timeout=_SOCKET_TIMEOUT,
                    socket_connect_timeout=_CONNECT_TIMEOUT,
                    socket_keepalive=True,
                    retry=Retry(EqualJitterBackoff(cap=0.5, base=0.05), _CLIENT_RETRIES),
                )
            except ValueError as exc:
                # redis-py names the faulty part (scheme, port, db), never the password.
                raise ConfigurationError(f"invalid redis url: {exc}") from None
            self._owns_client = True
        else:
            self._owns_client = False
        self._client = client
        self._namespace = namespace
        self._grant = grant
        self._key_ttl_ms = 0 if not key_ttl else _ms(key_ttl)
        # A hash tag: Redis Cluster puts every key of one grant in the same slot, which the
        # save script (it reads the lease and writes the token) needs.
        prefix = f"{{{namespace}:{grant}}}"
        self._token_key = f"{prefix}:token"
        self._lease_key = f"{prefix}:lease"
        self._channel = f"{prefix}:updates"
        # Tags our own announcements, so watch() reports only other publishers' saves.
        self._origin = secrets.token_hex(8)
        # register_script only hashes the text: no I/O until the first call.
        self._save = client.register_script(_SAVE_SCRIPT)
        self._extend = client.register_script(_EXTEND_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)
        self._clear = client.register_script(_CLEAR_SCRIPT)
        self._closed = False
        # Created in the running loop, on first need.
        self._stop: asyncio.Event | None = None
        # Releases of leases whose acquiring caller was cancelled (kept referenced until done).
        self._cleanups: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "zoomtoken",
        grant: str = "default",
        key_ttl: float | None = DEFAULT_KEY_TTL,
    ) -> Self:
        """A store with its own client for ``url`` (closed by :meth:`aclose`)."""
        return cls(url=url, namespace=namespace, grant=grant, key_ttl=key_ttl)

    def __repr__(self) -> str:
        # Built field by field from the connection settings: the URL (and so the password)
        # is never kept or shown.
        kwargs: dict[str, Any] = getattr(self._client.connection_pool, "connection_kwargs", {})
        if "path" in kwargs:
            where = f"path={kwargs['path']!r}"
        else:
            where = f"host={kwargs.get('host')!r}, port={kwargs.get('port')!r}"
        return (
            f"RedisStore({where}, db={kwargs.get('db', 0)!r}, "
            f"namespace={self._namespace!r}, grant={self._grant!r})"
        )

    @property
    def token_key(self) -> str:
        """The key holding the token JSON."""
        return self._token_key

    @property
    def lease_key(self) -> str:
        """The key holding the refresh lease."""
        return self._lease_key

    @property
    def channel(self) -> str:
        """The pub/sub channel announcing saves and clears."""
        return self._channel

    # ------------------------------------------------------------------ TokenStore

    async def load(self) -> Token | None:
        """The stored token, or ``None`` if the key does not exist.

        Raises :class:`StoreCorruptError` for unreadable contents (the key is left as it is).
        """
        self._check_open()
        with self._errors("read the token"):
            raw = await self._client.get(self._token_key)
        if raw is None:
            return None
        return _parse(raw)

    async def save(
        self, token: Token, *, expected_generation: int | None, lease: Lease | None = None
    ) -> None:
        """Write ``token`` if the stored generation is still ``expected_generation`` and, when
        ``lease`` is given, the lease is still its; then announce the new generation.

        Check, write and announcement are one Lua script. Refusals write nothing:
        :class:`StaleGenerationError`, :class:`LeaseLostError`, or :class:`StoreCorruptError`
        when the stored value cannot be read (fix or :meth:`clear` it; it is never overwritten).
        """
        self._check_open()
        owner = ""
        if lease is not None:
            if isinstance(lease, _RedisLease) and lease._released:
                raise LeaseLostError("save refused: the lease was released")
            owner = lease.owner
        data = json.dumps(token_to_dict(token), separators=(",", ":"))
        expected = "" if expected_generation is None else str(int(expected_generation))
        with self._errors("save the token"):
            code, stored = await self._save(
                keys=[self._token_key, self._lease_key],
                args=[
                    expected,
                    owner,
                    data,
                    self._key_ttl_ms,
                    self._channel,
                    f"{token.generation} {self._origin}",
                ],
            )
        if code == _SAVED:
            return
        if code == _LEASE_LOST:
            raise LeaseLostError("save refused: the redis lease lapsed or was taken over")
        if code == _STALE:
            shown = _text(stored) or None
            raise StaleGenerationError(
                f"save refused: stored generation is {shown}, expected {expected_generation}"
            )
        if code == _CORRUPT:
            raise StoreCorruptError("save refused: the stored token cannot be read")
        raise StoreError(f"save script answered an unknown code {code!r}")

    async def clear(self) -> None:
        """Delete the token key (a missing key is fine) and announce it."""
        self._check_open()
        with self._errors("clear the token"):
            await self._clear(
                keys=[self._token_key], args=[self._channel, f"cleared {self._origin}"]
            )

    async def try_acquire_lease(self, *, ttl: float) -> Lease | None:
        """Take the refresh lease for ``ttl`` seconds (``SET NX PX``), or ``None`` if someone
        holds it. A holder that crashes blocks others at most ``ttl`` seconds."""
        ttl_ms = _check_ttl(ttl)
        self._check_open()
        owner = secrets.token_hex(16)
        # Its own task: if our caller is cancelled after the SET went out, the answer still
        # arrives, and a lease we took must be given back rather than block everyone for ttl.
        attempt = asyncio.ensure_future(self._set_lease(owner, ttl_ms))
        try:
            acquired = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(lambda done: self._release_abandoned(done, owner))
            raise
        return _RedisLease(self, owner) if acquired else None

    async def _set_lease(self, owner: str, ttl_ms: int) -> bool:
        with self._errors("take the lease"):
            return bool(await self._client.set(self._lease_key, owner, nx=True, px=ttl_ms))

    def _release_abandoned(self, attempt: asyncio.Future[bool], owner: str) -> None:
        if attempt.cancelled() or attempt.exception() is not None or not attempt.result():
            return
        task = asyncio.ensure_future(self._release_quietly(owner))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _release_quietly(self, owner: str) -> None:
        try:
            await _RedisLease(self, owner).release()
        except StoreError as exc:
            # The lease lapses on its own after its ttl.
            logger.warning("could not give back an abandoned redis lease: %s", exc.message)

    def watch(self) -> AsyncGenerator[None, None]:
        """An iterator that yields ``None`` each time another process saves or clears.

        It also yields once after reconnecting (announcements made meanwhile are lost), so the
        reader should re-read the store then. Reconnects with backoff through Redis restarts
        and ends when :meth:`aclose` is called (or its own ``aclose()``).
        """
        return self._watch()

    async def aclose(self) -> None:
        """Stop watchers, give back abandoned leases and close the client if the store made it.

        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self._stop is not None:
            self._stop.set()
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the RedisStore is closed")

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn redis-py errors into store errors whose messages hold no data."""
        try:
            yield
        except _UNAVAILABLE as exc:
            # Chained: connection errors name the address and the OS error, never a value.
            raise StoreUnavailableError(
                f"cannot {action}: redis is unreachable ({type(exc).__name__})"
            ) from exc
        except redis_errors.ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                raise StoreCorruptError(
                    f"cannot {action}: a redis key of this store has the wrong type"
                ) from None
            # Not chained: a server error message may quote what we sent.
            raise StoreError(f"cannot {action}: redis refused ({type(exc).__name__})") from None
        except redis_errors.RedisError as exc:
            raise StoreError(f"cannot {action}: redis failed ({type(exc).__name__})") from None

    def _stop_event(self) -> asyncio.Event:
        if self._stop is None:
            self._stop = asyncio.Event()
            if self._closed:
                self._stop.set()
        return self._stop

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True as soon as :meth:`aclose` is called."""
        try:
            await asyncio.wait_for(self._stop_event().wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _from_others(self, data: bytes | str) -> bool:
        # Anyone may publish on the channel: junk must not end the watch.
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        _, _, origin = text.partition(" ")
        return origin != self._origin

    async def _watch(self) -> AsyncGenerator[None, None]:
        stop = self._stop_event()
        delay = _WATCH_RETRY_FIRST
        # Announcements made while we were not subscribed are lost: the reader must re-read.
        missed = False
        while not self._closed:
            pubsub = self._client.pubsub()
            stopper = asyncio.ensure_future(stop.wait())
            subscribed = False
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    reader = asyncio.ensure_future(pubsub.get_message(timeout=_WATCH_READ_TIMEOUT))
                    try:
                        await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        if not reader.done():
                            reader.cancel()
                            await asyncio.gather(reader, return_exceptions=True)
                    if stopper.done():
                        return
                    message = reader.result()
                    kind = None if message is None else message.get("type")
                    if kind == "subscribe":
                        # redis-py may reconnect and resubscribe by itself: any confirmation
                        # after the first means we were away for a while.
                        if subscribed:
                            missed = True
                        subscribed = True
                        delay = _WATCH_RETRY_FIRST
                        if missed:
                            logger.info("redis watch reconnected")
                            missed = False
                            yield None
                    elif (
                        kind == "message"
                        and message is not None
                        and self._from_others(message["data"])
                    ):
                        yield None
            except (*_UNAVAILABLE, redis_errors.RedisError) as exc:
                if not missed:
                    logger.warning(
                        "redis watch lost its connection (%s); reconnecting", type(exc).__name__
                    )
                missed = True
            finally:
                stopper.cancel()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            if await self._stopped_within(delay * random.uniform(0.5, 1.0)):
                return
            delay = min(delay * 2, _WATCH_RETRY_MAX)
