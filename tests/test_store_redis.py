"""RedisStore against a real redis-server: compare-and-set, leases, key TTL, watch, outages."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from conftest import CANARIES, CANARY_ACCESS_TOKEN, CANARY_REFRESH_TOKEN
from redis_server import (
    RedisServer,
    redis_server_fixture,  # noqa: F401  (pytest finds fixtures in globals)
    require_redis_server,
)
from zoomtoken import TokenManager
from zoomtoken._exceptions import (
    ConfigurationError,
    LeaseLostError,
    StaleGenerationError,
    StoreCorruptError,
    StoreError,
    StoreUnavailableError,
)
from zoomtoken._token import Token
from zoomtoken.stores import Lease, RedisStore, TokenStore
from zoomtoken.stores.redis import DEFAULT_KEY_TTL
from zoomtoken.testing import ZoomOAuthEmulator

pytestmark = pytest.mark.redis

MakeStore = Callable[..., RedisStore]
# Seconds a test waits for something that should happen within milliseconds.
SOON = 5.0


def make_token(generation: int = 0, access_token: str = CANARY_ACCESS_TOKEN) -> Token:
    return Token.issue(
        access_token=access_token,
        refresh_token=CANARY_REFRESH_TOKEN,
        expires_in=3599,
        issued_at=1_700_000_000.0,
        jitter=0.5,
        scope="meeting:read",
        api_url="https://api.zoom.us",
        generation=generation,
        extra={"user": "u1"},
    )


def error_texts(exc: BaseException) -> Iterator[str]:
    """str and repr of an exception and of everything it is chained to."""
    seen: BaseException | None = exc
    while seen is not None:
        yield str(seen)
        yield repr(seen)
        seen = seen.__cause__ or seen.__context__


def assert_no_secrets(exc: BaseException) -> None:
    for text in error_texts(exc):
        for canary in CANARIES:
            assert canary not in text


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float = SOON) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client to look at and tamper with what the store wrote."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def make_store(redis_server: RedisServer) -> AsyncIterator[MakeStore]:
    """Builds stores with their own client on the test server; closes them all at teardown."""
    made: list[RedisStore] = []

    def make(**options: Any) -> RedisStore:
        store = RedisStore.from_url(redis_server.url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


async def subscribers(raw: aioredis.Redis, store: RedisStore) -> int:
    [(_, count)] = await raw.pubsub_numsub(store.channel)
    return int(count)


# ---------------------------------------------------------------------------- basics


def test_store_satisfies_the_token_store_protocol() -> None:
    """RedisStore satisfies the TokenStore protocol and declares itself shared."""
    store = RedisStore.from_url("redis://127.0.0.1:1/0")
    assert isinstance(store, TokenStore)
    assert store.shared is True


def test_constructor_requires_exactly_one_of_client_and_url() -> None:
    """Giving both a client and a url, or neither, is a configuration error."""
    client = aioredis.Redis()
    with pytest.raises(ConfigurationError):
        RedisStore(client, url="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigurationError):
        RedisStore()


def test_invalid_url_is_a_configuration_error_without_the_password() -> None:
    """A URL redis-py cannot use is refused at construction, its password not repeated."""
    for url in ("http://:pw-Secret9@host:6379/0", "redis://:pw-Secret9@host:notaport/0"):
        with pytest.raises(ConfigurationError) as refused:
            RedisStore.from_url(url)
        assert all("pw-Secret9" not in text for text in error_texts(refused.value))


def test_keys_and_channel_are_named_after_namespace_and_grant() -> None:
    """Names follow {namespace:grant}:kind, one hash tag so a cluster keeps them in one slot."""
    store = RedisStore.from_url("redis://127.0.0.1:1/0", namespace="acme", grant="user-7")
    assert (store.token_key, store.lease_key, store.channel) == (
        "{acme:user-7}:token",
        "{acme:user-7}:lease",
        "{acme:user-7}:updates",
    )


def test_repr_never_shows_the_password_of_the_url() -> None:
    """repr shows host, port, db, namespace and grant, never credentials (redis:// or rediss://)."""
    for url in (
        "redis://alice:hunter2-secret@cache.internal:6380/3",
        "rediss://:hunter2-secret@cache.internal:6380/3",
        "redis://cache.internal:6380/3?password=hunter2-secret",
    ):
        text = repr(RedisStore.from_url(url, namespace="ns", grant="g"))
        assert "hunter2-secret" not in text
        assert "alice" not in text
        assert text == (
            "RedisStore(host='cache.internal', port=6380, db=3, namespace='ns', grant='g')"
        )


def test_import_zoomtoken_works_without_redis_installed() -> None:
    """`import zoomtoken` needs no redis-py; only touching RedisStore says how to install it."""
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "import zoomtoken, zoomtoken.stores\n"
        "try:\n"
        "    zoomtoken.stores.RedisStore\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "zoomtoken[redis]" in result.stdout


# ---------------------------------------------------------------------------- load / save


async def test_saved_token_loads_back_unchanged(make_store: MakeStore) -> None:
    """A saved token loads back equal, extras and generation included; nothing stored is None."""
    store = make_store()
    assert await store.load() is None
    token = make_token(generation=0)
    await store.save(token, expected_generation=None)
    loaded = await store.load()
    assert loaded == token
    assert loaded is not None and loaded.extra == {"user": "u1"}
    await store.save(make_token(generation=1), expected_generation=0)
    loaded = await store.load()
    assert loaded is not None and loaded.generation == 1


async def test_other_store_instances_see_the_saved_token(make_store: MakeStore) -> None:
    """Two stores with the same namespace and grant share the token; another grant does not."""
    writer, reader, other = make_store(), make_store(), make_store(grant="someone-else")
    await writer.save(make_token(), expected_generation=None)
    assert await reader.load() == make_token()
    assert await other.load() is None


async def test_corrupt_json_raises_store_corrupt_error_and_leaves_the_key(
    make_store: MakeStore, raw: aioredis.Redis
) -> None:
    """Unparsable data raises StoreCorruptError on load and save, and is never overwritten."""
    store = make_store()
    garbage = b'{"access_token": "' + CANARY_ACCESS_TOKEN.encode() + b'", oops'
    await raw.set(store.token_key, garbage)
    with pytest.raises(StoreCorruptError) as loading:
        await store.load()
    assert_no_secrets(loading.value)
    with pytest.raises(StoreCorruptError) as saving:
        await store.save(make_token(), expected_generation=None)
    assert_no_secrets(saving.value)
    assert await raw.get(store.token_key) == garbage


async def test_json_that_is_not_a_token_is_corrupt(
    make_store: MakeStore, raw: aioredis.Redis
) -> None:
    """Valid JSON of the wrong shape, or a non-string key type, also raises StoreCorruptError."""
    store = make_store()
    await raw.set(store.token_key, json.dumps({"generation": 3, "format": 99}))
    with pytest.raises(StoreCorruptError):
        await store.load()
    await raw.delete(store.token_key)
    await raw.hset(store.token_key, "access_token", CANARY_ACCESS_TOKEN)
    with pytest.raises(StoreCorruptError):
        await store.load()
    with pytest.raises(StoreCorruptError):
        await store.save(make_token(), expected_generation=None)
    assert await raw.type(store.token_key) == b"hash"


async def test_save_with_a_stale_generation_is_refused_and_writes_nothing(
    make_store: MakeStore, raw: aioredis.Redis
) -> None:
    """A compare-and-set save whose expected generation is not the stored one changes nothing."""
    store = make_store()
    await store.save(make_token(generation=4), expected_generation=None)
    before = await raw.get(store.token_key)
    for expected in (None, 3, 5):
        with pytest.raises(StaleGenerationError) as refused:
            await store.save(make_token(5, access_token="new-access"), expected_generation=expected)
        assert "stored generation is 4" in str(refused.value)
        assert_no_secrets(refused.value)
    assert await raw.get(store.token_key) == before


async def test_save_expecting_a_token_when_none_is_stored_is_refused(make_store: MakeStore) -> None:
    """expected_generation=N while nothing is stored is stale too (someone cleared the store)."""
    store = make_store()
    with pytest.raises(StaleGenerationError):
        await store.save(make_token(1), expected_generation=0)
    assert await store.load() is None


async def test_clear_deletes_the_token(make_store: MakeStore) -> None:
    """clear() forgets the stored token, and is fine when nothing is stored."""
    store = make_store()
    await store.save(make_token(), expected_generation=None)
    await store.clear()
    assert await store.load() is None
    await store.clear()


# ---------------------------------------------------------------------------- key TTL


async def test_token_key_expires_after_key_ttl(make_store: MakeStore, raw: aioredis.Redis) -> None:
    """Each save sets the token key's TTL to key_ttl: 90 days by default, none for None or 0."""
    cases: list[tuple[float | None, float | None]] = [
        (DEFAULT_KEY_TTL, 90 * 24 * 3600.0),
        (120.0, 120.0),
        (None, None),
        (0, None),
    ]
    for number, (key_ttl, expected) in enumerate(cases):
        store = make_store(grant=f"g{number}", key_ttl=key_ttl)
        await store.save(make_token(), expected_generation=None)
        pttl = await raw.pttl(store.token_key)
        if expected is None:
            assert pttl == -1
        else:
            assert expected * 1000 - 5000 < pttl <= expected * 1000
    assert DEFAULT_KEY_TTL == 90 * 24 * 3600


async def test_default_store_sets_a_90_day_ttl(make_store: MakeStore, raw: aioredis.Redis) -> None:
    """Without key_ttl the key lives about as long as a Zoom refresh token, 90 days."""
    store = make_store()
    await store.save(make_token(), expected_generation=None)
    pttl = await raw.pttl(store.token_key)
    assert 89.9 * 24 * 3600 * 1000 < pttl <= 90 * 24 * 3600 * 1000


def test_negative_key_ttl_is_a_configuration_error() -> None:
    """key_ttl below zero (or not finite) is refused at construction."""
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigurationError):
            RedisStore.from_url("redis://127.0.0.1:1/0", key_ttl=bad)


# ---------------------------------------------------------------------------- leases


async def test_lease_is_exclusive_until_released(
    make_store: MakeStore, raw: aioredis.Redis
) -> None:
    """While one store holds the lease, another gets None; after release it gets the lease."""
    first, second = make_store(), make_store()
    lease = await first.try_acquire_lease(ttl=30)
    assert isinstance(lease, Lease)
    assert await second.try_acquire_lease(ttl=30) is None
    assert await first.try_acquire_lease(ttl=30) is None
    assert await raw.get(first.lease_key) == lease.owner.encode()
    assert 29_000 < await raw.pttl(first.lease_key) <= 30_000
    await lease.release()
    assert await raw.exists(first.lease_key) == 0
    assert await second.try_acquire_lease(ttl=30) is not None


async def test_lease_lapses_after_its_ttl(make_store: MakeStore) -> None:
    """A lease nobody releases (a crashed holder) frees itself after its ttl."""
    first, second = make_store(), make_store()
    assert await first.try_acquire_lease(ttl=0.05) is not None
    assert await second.try_acquire_lease(ttl=30) is None
    await asyncio.sleep(0.1)
    assert await second.try_acquire_lease(ttl=30) is not None


async def test_extend_renews_the_lease_ttl(make_store: MakeStore, raw: aioredis.Redis) -> None:
    """extend() by the holder pushes the lease's expiry to ttl seconds from now."""
    store = make_store()
    lease = await store.try_acquire_lease(ttl=1)
    assert lease is not None
    await lease.extend(60)
    assert 59_000 < await raw.pttl(store.lease_key) <= 60_000


async def test_extend_by_a_former_holder_is_refused(
    make_store: MakeStore, raw: aioredis.Redis
) -> None:
    """Once a lease lapsed and another store took it, the old holder cannot extend it."""
    first, second = make_store(), make_store()
    old = await first.try_acquire_lease(ttl=30)
    assert old is not None
    await raw.delete(first.lease_key)  # lapsed
    new = await second.try_acquire_lease(ttl=30)
    assert new is not None
    with pytest.raises(LeaseLostError):
        await old.extend(30)
    assert await raw.get(first.lease_key) == new.owner.encode()
    await old.release()
    with pytest.raises(LeaseLostError):
        await old.extend(30)


async def test_release_is_idempotent_and_spares_another_holders_lease(
    make_store: MakeStore, raw: aioredis.Redis
) -> None:
    """Releasing twice is a no-op, and releasing a lapsed lease never frees the new holder's."""
    first, second = make_store(), make_store()
    lease = await first.try_acquire_lease(ttl=30)
    assert lease is not None
    await lease.release()
    await lease.release()
    stale = await first.try_acquire_lease(ttl=30)
    assert stale is not None
    await raw.delete(first.lease_key)  # lapsed
    holder = await second.try_acquire_lease(ttl=30)
    assert holder is not None
    await stale.release()
    assert await raw.get(first.lease_key) == holder.owner.encode()


async def test_save_under_a_lost_lease_is_refused_and_writes_nothing(
    make_store: MakeStore, raw: aioredis.Redis
) -> None:
    """A save with a lease that lapsed, was taken over or was released changes nothing."""
    first, second = make_store(), make_store()
    await first.save(make_token(0), expected_generation=None)
    before = await raw.get(first.token_key)
    lease = await first.try_acquire_lease(ttl=30)
    assert lease is not None
    await raw.delete(first.lease_key)  # lapsed
    with pytest.raises(LeaseLostError) as lapsed:
        await first.save(make_token(1), expected_generation=0, lease=lease)
    assert_no_secrets(lapsed.value)
    foreign = await second.try_acquire_lease(ttl=30)
    assert foreign is not None
    with pytest.raises(LeaseLostError):
        await first.save(make_token(1), expected_generation=0, lease=lease)
    await foreign.release()
    with pytest.raises(LeaseLostError):
        await second.save(make_token(1), expected_generation=0, lease=foreign)
    assert await raw.get(first.token_key) == before


async def test_save_under_the_held_lease_succeeds(make_store: MakeStore) -> None:
    """The refresh path of the protocol works: lease, re-read, save with CAS, release."""
    store = make_store()
    await store.save(make_token(0), expected_generation=None)
    lease = await store.try_acquire_lease(ttl=30)
    assert lease is not None
    current = await store.load()
    assert current is not None
    await store.save(make_token(1), expected_generation=current.generation, lease=lease)
    await lease.release()
    loaded = await store.load()
    assert loaded is not None and loaded.generation == 1


async def test_lease_of_a_cancelled_acquisition_is_given_back(
    make_store: MakeStore, raw: aioredis.Redis
) -> None:
    """A caller cancelled while taking the lease leaves no lease behind to block the others."""
    store, other = make_store(), make_store()
    for yields in range(6):
        task = asyncio.ensure_future(store.try_acquire_lease(ttl=30))
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async def lease_gone() -> bool:
            return await raw.exists(store.lease_key) == 0

        await wait_until(lease_gone)
    lease = await other.try_acquire_lease(ttl=30)
    assert lease is not None


async def test_lease_ttl_must_be_positive() -> None:
    """A zero, negative or non-finite ttl is a ValueError, before any I/O."""
    store = RedisStore.from_url("redis://127.0.0.1:1/0")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="ttl"):
            await store.try_acquire_lease(ttl=bad)
    await store.aclose()


# ---------------------------------------------------------------------------- watch


async def test_watch_yields_when_another_store_saves_but_not_for_its_own(
    make_store: MakeStore, raw: aioredis.Redis
) -> None:
    """watch() wakes for another store's save and clear, not for its own store's saves."""
    mine, theirs = make_store(), make_store()
    updates = mine.watch()
    pending = asyncio.ensure_future(anext(updates))
    await wait_until(lambda: _has_subscriber(raw, mine))
    await mine.save(make_token(0), expected_generation=None)
    await asyncio.sleep(0.1)
    assert not pending.done()
    await theirs.save(make_token(1), expected_generation=0)
    await asyncio.wait_for(pending, SOON)  # yielded
    await theirs.clear()
    await asyncio.wait_for(anext(updates), SOON)  # yielded
    await updates.aclose()


async def _has_subscriber(raw: aioredis.Redis, store: RedisStore) -> bool:
    try:
        return await subscribers(raw, store) > 0
    except redis.exceptions.ConnectionError:
        return False  # the raw client's pooled connection died with a restarted server


async def test_watch_announcements_carry_no_token(
    make_store: MakeStore, raw: aioredis.Redis
) -> None:
    """The update message names the generation (and an opaque publisher id), never a secret."""
    store = make_store()
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(store.channel)
    await store.save(make_token(7), expected_generation=None)
    message = None
    deadline = time.monotonic() + SOON
    while message is None and time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
    assert message is not None
    generation, _, origin = message["data"].decode().partition(" ")
    assert generation == "7"
    assert origin and all(canary not in message["data"].decode() for canary in CANARIES)
    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_watch_ends_when_the_store_is_closed(
    make_store: MakeStore, raw: aioredis.Redis
) -> None:
    """A watcher blocked on the channel stops iterating as soon as aclose() is called."""
    store = make_store()
    updates = store.watch()
    pending = asyncio.ensure_future(anext(updates))
    await wait_until(lambda: _has_subscriber(raw, store))
    await store.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, SOON)
    assert [item async for item in store.watch()] == []

    async def unsubscribed() -> bool:
        return await subscribers(raw, store) == 0

    await wait_until(unsubscribed)


async def test_watch_survives_a_redis_restart(
    redis_server: RedisServer, make_store: MakeStore, raw: aioredis.Redis
) -> None:
    """After Redis restarts, watch() reconnects, yields once (updates may be lost), and keeps
    reporting saves."""
    mine, theirs = make_store(), make_store()
    updates = mine.watch()
    pending = asyncio.ensure_future(anext(updates))
    await wait_until(lambda: _has_subscriber(raw, mine))
    redis_server.stop()
    redis_server.start()
    await asyncio.wait_for(pending, SOON)  # yielded
    await wait_until(lambda: _has_subscriber(raw, mine))
    pending = asyncio.ensure_future(anext(updates))
    await theirs.save(make_token(0), expected_generation=None)
    await asyncio.wait_for(pending, SOON)  # yielded
    await updates.aclose()


# ---------------------------------------------------------------------------- outages


async def test_stopped_redis_raises_store_unavailable_then_works_after_restart(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    """With Redis down every operation raises StoreUnavailableError (retryable, no secrets);
    after a restart they work again, the scripts being loaded anew."""
    store = make_store()
    await store.save(make_token(0), expected_generation=None)
    redis_server.stop()
    operations: list[Callable[[], Awaitable[object]]] = [
        store.load,
        lambda: store.save(make_token(1), expected_generation=0),
        lambda: store.try_acquire_lease(ttl=30),
        store.clear,
    ]
    for operation in operations:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as down:
            await operation()
        assert time.monotonic() - started < 3.0
        assert down.value.retryable is True
        assert_no_secrets(down.value)
    redis_server.start()
    assert await store.load() is None  # no persistence: the restart lost the data
    await store.save(make_token(0), expected_generation=None)  # NOSCRIPT → script reloaded
    lease = await store.try_acquire_lease(ttl=30)
    assert lease is not None
    await store.save(make_token(1), expected_generation=0, lease=lease)
    await lease.release()
    loaded = await store.load()
    assert loaded is not None and loaded.generation == 1


async def test_scripts_are_reloaded_after_script_flush(
    make_store: MakeStore, raw: aioredis.Redis
) -> None:
    """A flushed script cache (NOSCRIPT) is transparent: the script is loaded again."""
    store = make_store()
    await store.save(make_token(0), expected_generation=None)
    lease = await store.try_acquire_lease(ttl=30)
    assert lease is not None
    await raw.script_flush()
    await store.save(make_token(1), expected_generation=0, lease=lease)
    await raw.script_flush()
    await lease.extend(30)
    await raw.script_flush()
    await lease.release()
    assert await raw.exists(store.lease_key) == 0


async def test_wrong_password_is_unavailable_without_leaking_it(tmp_path: Path) -> None:
    """A password-protected Redis works with the right URL; a wrong one fails without the
    password appearing in the error or the repr."""
    server = RedisServer(require_redis_server(), tmp_path, password="right-pass-Q7z")
    server.start()
    try:
        good = RedisStore.from_url(server.url)
        wrong = RedisStore.from_url(f"redis://:wrong-pass-K2v@127.0.0.1:{server.port}/0")
        try:
            await good.save(make_token(), expected_generation=None)
            assert await good.load() == make_token()
            with pytest.raises(StoreUnavailableError) as refused:
                await wrong.load()
            for text in [*error_texts(refused.value), repr(wrong), repr(good)]:
                assert "wrong-pass-K2v" not in text
                assert "right-pass-Q7z" not in text
        finally:
            await good.aclose()
            await wrong.aclose()
    finally:
        server.stop()


# ---------------------------------------------------------------------------- ownership


async def test_store_closes_only_the_client_it_created(redis_server: RedisServer) -> None:
    """aclose() leaves a caller's client usable; a closed store refuses further use."""
    client = aioredis.Redis.from_url(redis_server.url)
    store = RedisStore(client, grant="mine")
    await store.save(make_token(), expected_generation=None)
    await store.aclose()
    await store.aclose()
    assert await client.exists(store.token_key) == 1
    with pytest.raises(StoreError):
        await store.load()
    await client.aclose()


# ---------------------------------------------------------------------------- with the manager


@pytest.mark.parametrize("watch", [True, False], ids=["watch", "no-watch"])
async def test_two_managers_needing_a_refresh_post_once_and_the_other_adopts(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch, watch: bool
) -> None:
    """Two managers sharing a grant through Redis refresh it once; the second adopts the result,
    so a reuse-detecting server sees no replayed refresh token (with or without watch())."""
    async with ZoomOAuthEmulator(reuse_detection=True, latency=0.2) as zoom:
        refresh_token = zoom.create_grant(user_id="shared-user")
        expired = Token.issue(
            access_token="long-expired-access-token",
            refresh_token=refresh_token,
            expires_in=3599,
            issued_at=time.time() - 7200,
            jitter=0.0,
        )
        seeder = make_store()
        await seeder.save(expired, expected_generation=None)

        def manager() -> TokenManager:
            store = make_store()
            if not watch:
                monkeypatch.setattr(store, "watch", lambda: None)
            return TokenManager(
                client_id=zoom.client_id,
                client_secret=zoom.client_secret,
                store=store,
                token_url=zoom.token_url,
                revoke_url=zoom.revoke_url,
            )

        async with manager() as first, manager() as second:
            tokens = await asyncio.gather(first.get_token(), second.get_token())
            assert tokens[0] == tokens[1] == zoom.grant_info("shared-user").access_token
            assert first.status().token_posts + second.status().token_posts == 1
            assert first.generation == second.generation == 1
        stored = await seeder.load()
        assert stored is not None and stored.generation == 1
        assert stored.refresh_token == zoom.grant_info("shared-user").refresh_token
        assert zoom.counters.refreshes == 1
        assert zoom.counters.invalid_grant == 0
        assert zoom.counters.reuse_detected == 0
