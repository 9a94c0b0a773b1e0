"""Shared fixtures: aioresponses made to work with aiohttp >= 3.14, and canary secrets."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import aioresponses.core
import pytest
from aioresponses import aioresponses as _aioresponses

# The TokenManager test fixtures (clock, zoom, managers, make) live with their doubles.
from manager_fakes import clock, make, managers, zoom  # noqa: F401


class _CompatClientResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without ``stream_writer``, which aiohttp 3.14
    requires (aioresponses issue #289, fix unreleased). A stand-in that reports no upload
    is all a mocked response needs."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


# aioresponses falls back to the module-global name when a registration gives no class.
aioresponses.core.ClientResponse = _CompatClientResponse  # type: ignore[attr-defined]

# Canary values: tests look for these strings in logs, reprs, errors and CLI output.
CANARY_CLIENT_ID = "canary-client-id-7Q2"
CANARY_CLIENT_SECRET = "canary-client-secret-Zx91kP"
CANARY_REFRESH_TOKEN = "canary-refresh-token-Hh38vN"
CANARY_ACCESS_TOKEN = "canary-access-token-Mm5Lq0"
CANARIES = (CANARY_CLIENT_SECRET, CANARY_REFRESH_TOKEN, CANARY_ACCESS_TOKEN)


@pytest.fixture
def mock_http() -> Iterator[_aioresponses]:
    """aioresponses, patched for aiohttp >= 3.14."""
    with _aioresponses() as mocked:
        yield mocked
