"""The contract every token store keeps.

A store holds one grant's token pair. Saves are compare-and-set on the token's generation, so
two writers can never silently overwrite each other. Shared stores (a file on one host, Redis
across hosts) also hand out a *lease*: the cross-process single flight. The refresh path is::

    lease = await store.try_acquire_lease(ttl=...)   # None: somebody else is refreshing
    current = await store.load()                     # re-read: adopt a newer pair if present
    ... refresh ...
    await store.save(new, expected_generation=current.generation, lease=lease)
    await lease.release()

All durations are seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, runtime_checkable

from .._token import Token

__all__ = ["Lease", "TokenStore"]


@runtime_checkable
class Lease(Protocol):
    """Proof that this process may refresh the grant until the lease lapses."""

    @property
    def owner(self) -> str:
        """A random value identifying the holder (never a secret)."""
        ...

    async def extend(self, ttl: float) -> None:
        """Keep the lease for another ``ttl`` seconds; :class:`LeaseLostError` if it lapsed."""
        ...

    async def release(self) -> None:
        """Give the lease up; a no-op if it already lapsed or was released."""
        ...


@runtime_checkable
class TokenStore(Protocol):
    """Durable home of one grant's token pair."""

    #: True when other processes or hosts may use the same store: the manager then never
    #: refreshes without holding the lease.
    shared: bool

    async def load(self) -> Token | None:
        """The stored token, or ``None`` if nothing is stored.

        Raises :class:`StoreCorruptError` for unreadable data (never silently reset) and
        :class:`StoreUnavailableError` when the store cannot be reached.
        """
        ...

    async def save(
        self, token: Token, *, expected_generation: int | None, lease: Lease | None = None
    ) -> None:
        """Store ``token`` durably if the stored generation is still ``expected_generation``.

        ``expected_generation`` is ``None`` when the caller believes nothing is stored. A
        mismatch raises :class:`StaleGenerationError` and writes nothing. Shared stores also
        refuse (:class:`LeaseLostError`) when ``lease`` is not the current holder.
        """
        ...

    async def clear(self) -> None:
        """Forget the stored token (after a revoke)."""
        ...

    async def try_acquire_lease(self, *, ttl: float) -> Lease | None:
        """Take the refresh lease for ``ttl`` seconds, or ``None`` if another holder has it."""
        ...

    def watch(self) -> AsyncIterator[None] | None:
        """An iterator that yields whenever another process saved a token, if the store can
        tell; ``None`` when it cannot (the manager then re-reads on STALE)."""
        ...

    async def aclose(self) -> None:
        """Release connections and file handles."""
        ...


#: A factory the manager can call to build the store lazily inside the running loop.
StoreFactory = Callable[[], Awaitable[TokenStore]]
