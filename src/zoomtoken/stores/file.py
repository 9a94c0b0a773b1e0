"""A store that keeps the token pair in a private JSON file, shared by processes on one host.

Saves are atomic and durable: a temp file (mode 0600) in the same directory is written,
fsynced and renamed over the target, then the directory is fsynced, so a crash leaves the old
pair or the new one, never a torn file. Processes coordinate with ``flock`` on two sibling
files, neither of which ever holds a secret:

* ``<path>.lock``, held for the few milliseconds of a compare-and-set save or a clear;
* ``<path>.lease``, the refresh lease: one holder at a time, and the kernel releases it when
  the holder exits or crashes.

``flock`` coordinates processes on one host, not reliably hosts sharing a network file system:
use the Redis store across hosts. Every blocking call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio.to_thread

from .._exceptions import (
    ConfigurationError,
    InsecureStoreError,
    LeaseLostError,
    StaleGenerationError,
    StoreCorruptError,
    StoreError,
)
from .._token import Token, token_from_json, token_to_dict
from ._base import Lease

if sys.platform != "win32":
    import fcntl

__all__ = ["FileStore"]

# A token file is a few hundred bytes. Anything far larger is not ours, and reading it whole
# could exhaust memory.
_MAX_SIZE = 1 << 20

#: ``(st_dev, st_ino)``: which file a name or a descriptor refers to.
_FileId = tuple[int, int]


def _file_id(st: os.stat_result) -> _FileId:
    return (st.st_dev, st.st_ino)


def _names_file(path: str, file_id: _FileId) -> bool:
    """Whether ``path`` still names the file ``file_id`` (not deleted, not replaced)."""
    try:
        return _file_id(os.stat(path, follow_symlinks=False)) == file_id
    except FileNotFoundError:
        return False


def _flock(path: str, operation: int) -> int | None:
    """A descriptor of ``path`` holding the flock ``operation``; ``None`` if ``LOCK_NB`` was
    asked and another open file holds the lock."""
    while True:
        # O_NOFOLLOW: a symlink planted at the lock's name must not make us create another file.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, operation)
            if _names_file(path, _file_id(os.fstat(fd))):
                return fd
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        # The file was deleted or replaced between open() and flock(): a lock on the orphan
        # excludes nobody, so start over on the file that now has the name.
        os.close(fd)


def _lock(path: str) -> int:
    """Wait for the exclusive lock on ``path``; closing the descriptor releases it."""
    fd = _flock(path, fcntl.LOCK_EX)
    assert fd is not None  # only LOCK_NB gives up
    return fd


def _try_lock(path: str) -> int | None:
    """The exclusive lock on ``path`` if nobody holds it, without waiting."""
    return _flock(path, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(fd: int) -> None:
    # LOCK_UN before close(): a child forked while the lock was held shares this open file
    # description, and close() alone would leave the lock with it.
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, 65536):
        size += len(chunk)
        if size > _MAX_SIZE:
            raise StoreCorruptError("stored token: file is larger than 1 MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems (certain FUSE and network ones) cannot fsync a directory; the
        # rename is then as durable as they make it, and failing every save would not help.
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class _Files:
    """The store's file names and the plain blocking operations on them (run in threads)."""

    path: str
    directory: str
    lock: str
    lease: str
    check_permissions: bool

    def read(self) -> Token | None:
        try:
            # O_NOFOLLOW: a save would replace a symlink with a file, so never read through one.
            # O_NONBLOCK: opening a FIFO planted at the name must not hang.
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return None
        except OSError:
            if os.path.islink(self.path):
                raise InsecureStoreError(
                    f"token file {self.path} is a symbolic link: point FileStore at the file itself"
                ) from None
            raise
        try:
            # fstat, not stat: the checks apply to the very file we read.
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"token file {self.path} is not a regular file")
            if self.check_permissions and st.st_mode & 0o077:
                raise InsecureStoreError(
                    f"token file {self.path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}): run `chmod 600 {self.path}`"
                )
            data = _read_all(fd)
        finally:
            os.close(fd)
        return token_from_json(data)

    def save(self, data: bytes, expected_generation: int | None, lease: _FileId | None) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = _lock(self.lock)
        try:
            if lease is not None and not _names_file(self.lease, lease):
                raise LeaseLostError(f"lease file {self.lease} was deleted or replaced")
            current = self.read()
            stored = None if current is None else current.generation
            if stored != expected_generation:
                raise StaleGenerationError(
                    f"save refused: stored generation is {stored}, expected {expected_generation}"
                )
            self._remove_abandoned_temp_files()
            self._write(data)
        finally:
            os.close(fd)  # releases the write lock

    def _remove_abandoned_temp_files(self) -> None:
        # Every write happens under the write lock we hold: a temp file still here belongs to
        # a writer killed mid-save, and would otherwise pile up (it holds secrets, too).
        prefix = f".{os.path.basename(self.path)}."
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.directory):
                if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def _write(self, data: bytes) -> None:
        name = os.path.basename(self.path)
        tmp = os.path.join(self.directory, f".{name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_directory(self.directory)

    def clear(self) -> None:
        if not os.path.isdir(self.directory):
            return
        fd = _lock(self.lock)
        try:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                return
            _fsync_directory(self.directory)
        finally:
            os.close(fd)

    def try_lock_lease(self) -> tuple[int, _FileId] | None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = _try_lock(self.lease)
        if fd is None:
            return None
        try:
            return fd, _file_id(os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise

    def lease_intact(self, lease: _FileId) -> bool:
        return _names_file(self.lease, lease)


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


class _FileLease:
    """The refresh lease: an exclusive flock on ``<path>.lease`` through one open descriptor."""

    __slots__ = ("_fd", "_file_id", "_owner", "_store")

    def __init__(self, store: FileStore, fd: int, file_id: _FileId) -> None:
        self._store = store
        self._fd: int | None = fd
        self._file_id = file_id
        self._owner = secrets.token_hex(8)

    def __repr__(self) -> str:
        return f"<FileLease owner={self._owner!r} held={self.held}>"

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def held(self) -> bool:
        """True until :meth:`release`."""
        return self._fd is not None

    async def extend(self, ttl: float) -> None:
        """Nothing to renew: the lock lasts until :meth:`release` or until this process exits,
        so ``ttl`` (seconds) is ignored. Raises :class:`LeaseLostError` once released, or if
        the lease file was deleted or replaced (a tmp cleaner, say) and the lock means nothing.
        """
        if self._fd is None:
            raise LeaseLostError("the file lease was released")
        try:
            intact = await anyio.to_thread.run_sync(self._store._files.lease_intact, self._file_id)
        except OSError as exc:
            raise StoreError(
                f"cannot check lease file {self._store._files.lease}: {_why(exc)}"
            ) from exc
        if not intact:
            raise LeaseLostError(f"lease file {self._store._files.lease} was deleted or replaced")

    async def release(self) -> None:
        """Unlock and close the descriptor; a no-op when already released."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._store._lease is self:
            self._store._lease = None
        # Inline, not in a thread: unlocking never blocks, and a thread call can be abandoned
        # by a cancellation before it runs, which would keep the lease until the process exits.
        _unlock(fd)


def _release_abandoned(attempt: asyncio.Future[tuple[int, _FileId] | None]) -> None:
    """Done-callback of a lease attempt whose caller was cancelled: free what it took."""
    if attempt.cancelled() or attempt.exception() is not None:
        return
    acquired = attempt.result()
    if acquired is not None:
        _unlock(acquired[0])


class FileStore:
    """Keeps the token pair in a JSON file (mode 0600) that processes on one host may share.

    ``path`` is the token file; ``<path>.lock`` and ``<path>.lease`` are created next to it,
    and the directory (mode 0700) if missing. With ``check_permissions`` (the default), a token
    file readable or writable by group or others raises :class:`InsecureStoreError`. A symbolic
    link at ``path`` is always refused: a save would replace it with a regular file.
    """

    #: Several processes on this host may use the same file.
    shared = True

    def __init__(self, path: str | os.PathLike[str], *, check_permissions: bool = True) -> None:
        if sys.platform == "win32":
            raise ConfigurationError("FileStore needs POSIX file locks (fcntl.flock)")
        # Absolute now: a later chdir() must not move the store.
        target = os.path.abspath(os.fspath(path))
        self._files = _Files(
            path=target,
            directory=os.path.dirname(target),
            lock=target + ".lock",
            lease=target + ".lease",
            check_permissions=check_permissions,
        )
        self._lease: _FileLease | None = None

    def __repr__(self) -> str:
        return f"FileStore(path={self._files.path!r})"

    @property
    def path(self) -> str:
        """Absolute path of the token file."""
        return self._files.path

    async def load(self) -> Token | None:
        """The stored token, or ``None`` if the file does not exist.

        Raises :class:`StoreCorruptError` for unreadable contents (the file is left as it is)
        and :class:`InsecureStoreError` for a group/world-accessible file or a symlink.
        """
        try:
            return await anyio.to_thread.run_sync(self._files.read)
        except StoreCorruptError as exc:
            raise self._corrupt(exc) from None
        except OSError as exc:
            raise StoreError(f"cannot read token file {self.path}: {_why(exc)}") from exc

    async def save(
        self, token: Token, *, expected_generation: int | None, lease: Lease | None = None
    ) -> None:
        """Write ``token`` atomically if the file still holds ``expected_generation``.

        The comparison and the write happen under ``<path>.lock``, so two processes never
        interleave them. ``lease``, when given, must be this store's unreleased lease
        (:class:`LeaseLostError` otherwise). A stored file that is corrupt or insecure is
        never overwritten: fix or :meth:`clear` it.
        """
        lease_id: _FileId | None = None
        if lease is not None:
            own = self._lease
            if own is None or lease is not own or not own.held:
                raise LeaseLostError("save refused: the lease is not held by this store")
            lease_id = own._file_id
        data = json.dumps(token_to_dict(token)).encode("utf-8")
        try:
            await anyio.to_thread.run_sync(self._files.save, data, expected_generation, lease_id)
        except StoreCorruptError as exc:
            raise self._corrupt(exc) from None
        except OSError as exc:
            raise StoreError(f"cannot save token to {self.path}: {_why(exc)}") from exc

    async def clear(self) -> None:
        """Delete the token file (under the write lock); a missing file is fine."""
        try:
            await anyio.to_thread.run_sync(self._files.clear)
        except OSError as exc:
            raise StoreError(f"cannot delete token file {self.path}: {_why(exc)}") from exc

    async def try_acquire_lease(self, *, ttl: float) -> Lease | None:
        """Take the refresh lease, or ``None`` if another open file (in any process, this one
        included) holds it.

        ``ttl`` (seconds) is advisory: the lock lasts until :meth:`Lease.release`, and the OS
        drops it when the holder's process dies, so a crash never blocks the others.
        """
        if self._lease is not None:
            # flock would refuse too (a new descriptor is a new open file); skip the I/O.
            return None
        # Its own task: if our caller is cancelled, the thread still runs to the end, and a
        # lock it took must be released rather than leaked until this process exits.
        attempt = asyncio.create_task(anyio.to_thread.run_sync(self._files.try_lock_lease))
        try:
            acquired = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(_release_abandoned)
            raise
        except OSError as exc:
            raise StoreError(f"cannot lock lease file {self._files.lease}: {_why(exc)}") from exc
        if acquired is None:
            return None
        lease = _FileLease(self, *acquired)
        self._lease = lease
        return lease

    def watch(self) -> AsyncIterator[None] | None:
        """``None``: files send no notifications (the manager re-reads the store when STALE)."""
        return None

    async def aclose(self) -> None:
        """Release the lease if this store holds it; no other descriptor stays open."""
        if self._lease is not None:
            await self._lease.release()

    def _corrupt(self, exc: StoreCorruptError) -> StoreCorruptError:
        return StoreCorruptError(
            f"token file {self.path} is corrupt ({exc.message.removeprefix('stored token: ')}): "
            "restore it, or delete it and authorise again"
        )
