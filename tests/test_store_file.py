"""FileStore: private atomic writes, compare-and-set, and flock-based locks across processes."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from conftest import CANARIES, CANARY_ACCESS_TOKEN, CANARY_REFRESH_TOKEN
from zoomtoken._exceptions import (
    InsecureStoreError,
    LeaseLostError,
    StaleGenerationError,
    StoreCorruptError,
    StoreError,
)
from zoomtoken._token import Token, token_to_dict
from zoomtoken.stores import FileStore, Lease, TokenStore
from zoomtoken.stores import file as file_module

# Holds an exclusive flock on argv[1] until stdin sees a line (or the process is killed), then
# writes argv[3] (if given) to argv[2] with mode 0600 before exiting and so unlocking.
_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
if len(sys.argv) > 3:
    out = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(out, sys.argv[3].encode())
    os.close(out)
"""

Spawn = Callable[..., "subprocess.Popen[str]"]


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


def serialized(token: Token) -> bytes:
    return json.dumps(token_to_dict(token)).encode()


def assert_no_secrets(text: str) -> None:
    for canary in CANARIES:
        assert canary not in text


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def leftovers(directory: Path) -> list[str]:
    """Names in ``directory`` other than the token file and its two lock files."""
    return sorted(
        p.name for p in directory.iterdir() if not p.name.endswith((".json", ".lock", ".lease"))
    )


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    return tmp_path / "token.json"


@pytest.fixture
def store(token_path: Path) -> FileStore:
    return FileStore(token_path)


@pytest.fixture
def spawn_holder() -> Iterator[Spawn]:
    """Start a process that holds a flock; returns once it holds it; kills it at teardown."""
    with ExitStack() as stack:

        def spawn(*args: str) -> subprocess.Popen[str]:
            proc = stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", _HOLDER, *args],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            stack.callback(proc.kill)
            assert proc.stdout is not None
            assert proc.stdout.readline() == "locked\n"
            return proc

        yield spawn


async def test_load_returns_none_when_the_file_is_missing(store: FileStore) -> None:
    """A store whose file does not exist yet holds nothing."""
    assert await store.load() is None


async def test_saved_token_loads_back_equal(store: FileStore) -> None:
    """A saved token loads back with every field, including generation and extras."""
    token = make_token(generation=1)
    await store.save(token, expected_generation=None)
    loaded = await store.load()
    assert loaded == token
    assert loaded is not None
    assert loaded.extra == {"user": "u1"}


async def test_saved_file_is_private_and_holds_exactly_the_token_json(
    store: FileStore, token_path: Path
) -> None:
    """The file has mode 0600 and holds exactly the JSON of token_to_dict."""
    token = make_token(generation=1)
    await store.save(token, expected_generation=None)
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    assert token_path.read_bytes() == serialized(token)
    assert stat.S_IMODE(Path(f"{token_path}.lock").stat().st_mode) == 0o600


async def test_missing_directory_is_created_private(tmp_path: Path) -> None:
    """A missing parent directory is created with mode 0700."""
    store = FileStore(tmp_path / "state" / "token.json")
    await store.save(make_token(1), expected_generation=None)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


async def test_save_replaces_the_directory_entry_and_leaves_no_temp_file(
    store: FileStore, token_path: Path
) -> None:
    """Each save renames a new file over the old one instead of rewriting it in place."""
    await store.save(make_token(1), expected_generation=None)
    first = token_path.stat().st_ino
    await store.save(make_token(2), expected_generation=1)
    assert token_path.stat().st_ino != first
    assert leftovers(token_path.parent) == []


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
async def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(
    store: FileStore, token_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A write that fails at any step raises StoreError, keeps the old file, removes the temp."""
    await store.save(make_token(1), expected_generation=None)
    before = token_path.read_bytes()

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(StoreError, match="Input/output error") as caught:
        await store.save(make_token(2), expected_generation=1)
    monkeypatch.undo()
    assert type(caught.value) is StoreError
    assert token_path.read_bytes() == before
    assert leftovers(token_path.parent) == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
async def test_file_open_to_group_or_others_is_refused(
    store: FileStore, token_path: Path, mode: int
) -> None:
    """A token file readable or writable by group or others raises InsecureStoreError."""
    await store.save(make_token(1), expected_generation=None)
    token_path.chmod(mode)
    with pytest.raises(InsecureStoreError, match="chmod 600"):
        await store.load()
    with pytest.raises(InsecureStoreError):
        await store.save(make_token(2), expected_generation=1)


async def test_permission_check_can_be_disabled(token_path: Path) -> None:
    """With check_permissions=False a group-readable file loads, and a save makes it private."""
    store = FileStore(token_path, check_permissions=False)
    await store.save(make_token(1), expected_generation=None)
    token_path.chmod(0o644)
    assert await store.load() == make_token(1)
    await store.save(make_token(2), expected_generation=1)
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600


async def test_symlink_is_refused_and_left_alone(tmp_path: Path, token_path: Path) -> None:
    """A symlink at the token path is neither read through nor replaced."""
    target = tmp_path / "elsewhere"
    target.write_bytes(serialized(make_token(1)))
    target.chmod(0o600)
    token_path.symlink_to(target)
    store = FileStore(token_path)
    with pytest.raises(InsecureStoreError, match="symbolic link"):
        await store.load()
    with pytest.raises(InsecureStoreError, match="symbolic link"):
        await store.save(make_token(2), expected_generation=1)
    assert token_path.is_symlink()
    assert target.read_bytes() == serialized(make_token(1))


_VALID = serialized(make_token(1)).decode()


@pytest.mark.parametrize(
    "contents",
    [
        pytest.param(b"", id="empty"),
        pytest.param(_VALID[: len(_VALID) // 2].encode(), id="truncated"),
        pytest.param(b"{not json " + CANARY_ACCESS_TOKEN.encode(), id="not-json"),
        pytest.param(b"\xff\xfe" + CANARY_ACCESS_TOKEN.encode(), id="not-utf8"),
        pytest.param(_VALID.replace('"generation": 1', '"generation": "1"').encode(), id="type"),
        pytest.param(_VALID.replace('"format": 1', '"format": 9').encode(), id="format"),
        pytest.param(_VALID.replace("3599", "9" * 400).encode(), id="huge-number"),
        pytest.param(b"[" * 100_000, id="deeply-nested"),
        pytest.param(b'["a list"]', id="not-an-object"),
    ],
)
async def test_corrupt_file_raises_and_is_left_byte_for_byte_unchanged(
    store: FileStore, token_path: Path, contents: bytes
) -> None:
    """Unparseable contents raise StoreCorruptError naming the path, and no save overwrites them."""
    token_path.write_bytes(contents)
    token_path.chmod(0o600)
    with pytest.raises(StoreCorruptError) as caught:
        await store.load()
    assert str(token_path) in str(caught.value)
    for link in exception_chain(caught.value):
        # JSONDecodeError and UnicodeDecodeError keep the whole document as an attribute.
        assert not isinstance(link, ValueError)
        assert_no_secrets(repr(link) + str(link))
    for expected in (None, 0, 1):
        with pytest.raises(StoreCorruptError):
            await store.save(make_token(2), expected_generation=expected)
    assert token_path.read_bytes() == contents


async def test_a_directory_at_the_path_is_refused(store: FileStore, token_path: Path) -> None:
    """A directory where the token file should be raises StoreError instead of being used."""
    token_path.mkdir()
    with pytest.raises(StoreError, match="not a regular file"):
        await store.load()


async def test_stale_generation_is_refused_and_nothing_is_written(
    store: FileStore, token_path: Path
) -> None:
    """A save whose expected generation is not the stored one raises and writes nothing."""
    await store.save(make_token(1), expected_generation=None)
    before = token_path.read_bytes()
    for expected in (None, 0, 2):
        with pytest.raises(StaleGenerationError, match="stored generation is 1"):
            await store.save(make_token(2), expected_generation=expected)
    assert token_path.read_bytes() == before


async def test_save_expecting_a_token_refused_when_nothing_is_stored(
    store: FileStore, token_path: Path
) -> None:
    """A save that expects a generation fails when the file does not exist."""
    with pytest.raises(StaleGenerationError, match="stored generation is None"):
        await store.save(make_token(1), expected_generation=0)
    assert not token_path.exists()


async def test_second_lease_is_refused_until_the_first_is_released(token_path: Path) -> None:
    """The same store and another store on the same file both get None while the lease is held."""
    store, other = FileStore(token_path), FileStore(token_path)
    lease = await store.try_acquire_lease(ttl=30)
    assert lease is not None
    assert await store.try_acquire_lease(ttl=30) is None
    assert await other.try_acquire_lease(ttl=30) is None
    await lease.release()
    again = await other.try_acquire_lease(ttl=30)
    assert again is not None
    await again.release()


async def test_concurrent_lease_attempts_yield_one_holder(store: FileStore) -> None:
    """Many concurrent attempts on one store hand the lease to exactly one of them."""
    leases = await asyncio.gather(*(store.try_acquire_lease(ttl=30) for _ in range(20)))
    held = [lease for lease in leases if lease is not None]
    assert len(held) == 1
    await held[0].release()


async def test_lease_held_by_another_process_blocks_until_that_process_is_killed(
    store: FileStore, token_path: Path, spawn_holder: Spawn
) -> None:
    """A lease flocked by another process blocks us, and its SIGKILL frees it."""
    holder = spawn_holder(f"{token_path}.lease")
    assert await store.try_acquire_lease(ttl=30) is None
    holder.kill()
    holder.wait()
    lease = await store.try_acquire_lease(ttl=30)
    assert lease is not None
    await lease.release()


def _blocked_on(path: Path) -> bool:
    """Whether /proc/locks shows a process waiting for a flock on ``path``."""
    inode = f":{path.stat().st_ino} "
    with open("/proc/locks") as locks:
        return any("-> FLOCK" in line and inode in line for line in locks)


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux /proc/locks")
async def test_save_waits_for_another_processes_write_lock_then_rechecks_generation(
    store: FileStore, token_path: Path, spawn_holder: Spawn
) -> None:
    """A save blocked on another process's write lock compares generations only after it."""
    theirs = make_token(1, access_token="theirs")
    holder = spawn_holder(f"{token_path}.lock", str(token_path), serialized(theirs).decode())
    save = asyncio.create_task(store.save(make_token(1), expected_generation=None))
    async with asyncio.timeout(10):
        while not _blocked_on(Path(f"{token_path}.lock")):
            await asyncio.sleep(0.001)
    assert not save.done()
    assert holder.stdin is not None
    holder.stdin.write("write and exit\n")
    holder.stdin.flush()
    with pytest.raises(StaleGenerationError):
        await save
    holder.wait()
    assert await store.load() == theirs


async def test_extend_keeps_a_held_lease(store: FileStore) -> None:
    """extend() on a held lease succeeds and the lease stays exclusive."""
    lease = await store.try_acquire_lease(ttl=1)
    assert lease is not None
    await lease.extend(30)
    assert await FileStore(store.path).try_acquire_lease(ttl=1) is None
    await lease.release()


async def test_release_is_idempotent_and_extend_afterwards_raises(store: FileStore) -> None:
    """A released lease can be released again, but extending it raises LeaseLostError."""
    lease = await store.try_acquire_lease(ttl=30)
    assert lease is not None
    await lease.release()
    await lease.release()
    with pytest.raises(LeaseLostError):
        await lease.extend(30)


async def test_deleted_lease_file_loses_the_lease(store: FileStore, token_path: Path) -> None:
    """If the lease file is deleted under us, extend() and a leased save raise LeaseLostError."""
    lease = await store.try_acquire_lease(ttl=30)
    assert lease is not None
    Path(f"{token_path}.lease").unlink()
    with pytest.raises(LeaseLostError):
        await lease.extend(30)
    with pytest.raises(LeaseLostError):
        await store.save(make_token(1), expected_generation=None, lease=lease)
    assert not token_path.exists()
    await lease.release()


async def test_save_with_the_held_lease_succeeds(store: FileStore) -> None:
    """A save under this store's live lease is written."""
    lease = await store.try_acquire_lease(ttl=30)
    assert lease is not None
    await store.save(make_token(1), expected_generation=None, lease=lease)
    await lease.release()
    assert await store.load() == make_token(1)


async def test_save_with_a_released_lease_raises_and_writes_nothing(
    store: FileStore, token_path: Path
) -> None:
    """A save passing a lease that was released raises LeaseLostError."""
    lease = await store.try_acquire_lease(ttl=30)
    assert lease is not None
    await lease.release()
    with pytest.raises(LeaseLostError):
        await store.save(make_token(1), expected_generation=None, lease=lease)
    assert not token_path.exists()


async def test_save_with_another_stores_lease_raises(token_path: Path) -> None:
    """A lease taken through another FileStore object does not authorise this store's save."""
    store, other = FileStore(token_path), FileStore(token_path)
    lease = await other.try_acquire_lease(ttl=30)
    assert lease is not None
    with pytest.raises(LeaseLostError):
        await store.save(make_token(1), expected_generation=None, lease=lease)
    await lease.release()


async def test_cancelled_lease_attempt_does_not_keep_the_lock(
    store: FileStore, token_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock taken by the thread of a cancelled try_acquire_lease is released, not leaked."""
    gate, took = threading.Event(), threading.Event()
    real_try_lock = file_module._try_lock

    def gated_try_lock(path: str) -> int | None:
        gate.wait(10)
        try:
            return real_try_lock(path)
        finally:
            took.set()

    monkeypatch.setattr(file_module, "_try_lock", gated_try_lock)
    attempt = asyncio.create_task(store.try_acquire_lease(ttl=30))
    await asyncio.sleep(0)  # let it hand the work to a thread
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    gate.set()
    # The thread runs although its caller is gone, and takes the lock.
    assert await anyio.to_thread.run_sync(took.wait, 10)
    others = asyncio.all_tasks() - {asyncio.current_task()}
    await asyncio.gather(*others)
    monkeypatch.undo()
    lease = await FileStore(token_path).try_acquire_lease(ttl=30)
    assert lease is not None
    await lease.release()


async def test_aclose_releases_the_lease(store: FileStore) -> None:
    """aclose() gives the lease up so another store can take it."""
    lease = await store.try_acquire_lease(ttl=30)
    assert lease is not None
    await store.aclose()
    with pytest.raises(LeaseLostError):
        await lease.extend(30)
    other = await FileStore(store.path).try_acquire_lease(ttl=30)
    assert other is not None
    await other.release()


async def test_clear_removes_the_file(store: FileStore, token_path: Path) -> None:
    """clear() deletes the token file, and a second clear() is a no-op."""
    await store.save(make_token(1), expected_generation=None)
    await store.clear()
    assert not token_path.exists()
    assert await store.load() is None
    await store.clear()


async def test_clear_deletes_a_corrupt_file(store: FileStore, token_path: Path) -> None:
    """clear() is the way out of a corrupt file: it deletes without parsing."""
    token_path.write_bytes(b"garbage")
    await store.clear()
    assert not token_path.exists()
    await store.save(make_token(1), expected_generation=None)


async def test_clear_without_a_directory_creates_nothing(tmp_path: Path) -> None:
    """clear() on a store whose directory does not exist neither fails nor creates it."""
    await FileStore(tmp_path / "absent" / "token.json").clear()
    assert not (tmp_path / "absent").exists()


async def test_relative_path_is_pinned_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path is resolved when the store is built, so a later chdir does not move it."""
    monkeypatch.chdir(tmp_path)
    store = FileStore("token.json")
    monkeypatch.chdir("/")
    await store.save(make_token(1), expected_generation=None)
    assert (tmp_path / "token.json").exists()


async def test_store_and_lease_satisfy_the_protocols(store: FileStore) -> None:
    """FileStore is a shared TokenStore without notifications, and its lease is a Lease."""
    assert isinstance(store, TokenStore)
    assert store.shared is True
    assert store.watch() is None
    lease = await store.try_acquire_lease(ttl=30)
    assert isinstance(lease, Lease)
    await lease.release()


async def test_repr_and_errors_never_show_token_strings(store: FileStore, token_path: Path) -> None:
    """repr of the store and lease, and store error messages, hold the path but no secret."""
    await store.save(make_token(1), expected_generation=None)
    lease = await store.try_acquire_lease(ttl=30)
    assert lease is not None
    texts = [repr(store), repr(lease)]
    with pytest.raises(StaleGenerationError) as stale:
        await store.save(make_token(2), expected_generation=None)
    token_path.chmod(0o644)
    with pytest.raises(InsecureStoreError) as insecure:
        await store.load()
    for error in (stale.value, insecure.value):
        texts += [str(error), repr(error)]
    await lease.release()
    assert str(token_path) in repr(store)
    assert_no_secrets("\n".join(texts))


async def test_a_save_removes_temp_files_left_by_a_killed_writer(tmp_path: Path) -> None:
    """Temp files of a writer killed mid-save (they hold secrets) are removed by the next save."""
    store = FileStore(tmp_path / "token.json")
    abandoned = tmp_path / ".token.json.0123456789abcdef.tmp"
    abandoned.write_bytes(b'{"half": "written')
    unrelated = tmp_path / ".other.json.0123456789abcdef.tmp"
    unrelated.write_bytes(b"keep")
    await store.save(make_token(), expected_generation=None)
    assert not abandoned.exists()
    assert unrelated.exists()
    assert await store.load() == make_token()
