"""Test doubles and fixtures shared by the TokenManager tests (imported by their modules)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses

from zoomtoken import MemoryStore, StoreError, Token, TokenManager
from zoomtoken.testing import FakeClock

TOKEN_URL = "https://zoom.us/oauth/token"
REVOKE_URL = "https://zoom.us/oauth/revoke"


class FakeZoom:
    """An aioresponses callback that rotates refresh tokens like Zoom, optionally gated."""

    def __init__(self, refresh_token: str = "rt-0", *, expires_in: int = 3599) -> None:
        self.current = refresh_token
        self.expires_in = expires_in
        self.posts = 0
        self.invalid_grant = 0
        self.issued = 0
        #: Answers to serve before the normal behaviour: (status, body[, headers]).
        self.script: list[tuple[Any, ...]] = []
        #: When set, each POST waits for it (after being counted).
        self.gate: asyncio.Event | None = None
        self.arrived = asyncio.Event()

    async def __call__(self, url: Any, **kwargs: Any) -> CallbackResult:
        self.posts += 1
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.script:
            status, body, *headers = self.script.pop(0)
            return CallbackResult(
                status=status, body=json.dumps(body), headers=headers[0] if headers else None
            )
        form = kwargs["data"]
        if form.get("refresh_token") != self.current:
            self.invalid_grant += 1
            return CallbackResult(
                status=400, payload={"reason": "Invalid Token!", "error": "invalid_grant"}
            )
        self.issued += 1
        self.current = f"rt-{self.issued}"
        return CallbackResult(
            payload={
                "access_token": f"at-{self.issued}",
                "token_type": "bearer",
                "refresh_token": self.current,
                "expires_in": self.expires_in,
            }
        )


class FailingSaveStore(MemoryStore):
    """A MemoryStore whose next ``fail`` saves raise."""

    def __init__(self, token: Token | None, fail: int) -> None:
        super().__init__(token)
        self.fail = fail

    async def save(self, token: Token, **kwargs: Any) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise StoreError("disk full")
        await super().save(token, **kwargs)


def make_token(
    clock: FakeClock,
    *,
    age: float,
    lifetime: float = 3599,
    gen: int = 0,
    access: str | None = None,
    refresh: str = "rt-0",
) -> Token:
    """A token issued ``age`` seconds ago by the fake clock."""
    return Token.issue(
        access_token=access if access is not None else f"at-old-{gen}",
        refresh_token=refresh,
        expires_in=lifetime,
        issued_at=clock.time() - age,
        jitter=0.0,
        generation=gen,
    )


@pytest.fixture
def clock() -> FakeClock:
    """A fresh FakeClock (wall and monotonic time stand still until advanced)."""
    return FakeClock()


@pytest.fixture
def zoom(mock_http: aioresponses) -> FakeZoom:
    """A rotating fake token endpoint behind aioresponses."""
    fake = FakeZoom()
    register(mock_http, fake)
    return fake


def register(mock_http: aioresponses, fake: FakeZoom) -> None:
    async def callback(url: Any, **kwargs: Any) -> CallbackResult:
        return await fake(url, **kwargs)

    mock_http.post(TOKEN_URL, callback=callback, repeat=True)


@pytest.fixture
async def managers() -> AsyncIterator[list[TokenManager]]:
    """Managers built through make(); all closed after the test."""
    created: list[TokenManager] = []
    yield created
    for manager in created:
        await manager.aclose()


@pytest.fixture
def make(managers: list[TokenManager], clock: FakeClock) -> Callable[..., TokenManager]:
    def build(**options: Any) -> TokenManager:
        options.setdefault("client_id", "client")
        options.setdefault("client_secret", "secret")
        options.setdefault("clock", clock)
        options.setdefault("sleep", clock.sleep)
        options.setdefault("rng", random.Random(7))
        manager = TokenManager(**options)
        managers.append(manager)
        return manager

    return build
