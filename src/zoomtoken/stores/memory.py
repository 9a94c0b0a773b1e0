"""A store that lives in this process's memory: for tests and single-process scripts."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

from .._exceptions import StaleGenerationError
from .._token import Token
from ._base import Lease

__all__ = ["MemoryStore"]


class _MemoryLease:
    __slots__ = ("_owner", "_store")

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._owner = secrets.token_hex(8)

    @property
    def owner(self) -> str:
        return self._owner

    async def extend(self, ttl: float) -> None:
        return None

    async def release(self) -> None:
        if self._store._lease_owner == self._owner:
            self._store._lease_owner = None


class MemoryStore:
    """Keeps the token in a Python attribute. Not shared: one process only."""

    shared = False

    def __init__(self, token: Token | None = None) -> None:
        self._token = token
        self._lease_owner: str | None = None
        #: How many successful saves this store has taken (handy in tests).
        self.saves = 0

    def __repr__(self) -> str:
        return f"MemoryStore(generation={None if self._token is None else self._token.generation})"

    async def load(self) -> Token | None:
        return self._token

    async def save(
        self, token: Token, *, expected_generation: int | None, lease: Lease | None = None
    ) -> None:
        stored = None if self._token is None else self._token.generation
        if stored != expected_generation:
            raise StaleGenerationError(
                f"save refused: stored generation is {stored}, expected {expected_generation}"
            )
        self._token = token
        self.saves += 1

    async def clear(self) -> None:
        self._token = None

    async def try_acquire_lease(self, *, ttl: float) -> Lease | None:
        # One process only: the manager's own single flight already serialises refreshes,
        # so the lease exists just to keep the refresh path identical for every store.
        if self._lease_owner is not None:
            return None
        lease = _MemoryLease(self)
        self._lease_owner = lease.owner
        return lease

    def watch(self) -> AsyncIterator[None] | None:
        return None

    async def aclose(self) -> None:
        return None
