"""Keep a Zoom OAuth access token fresh in the background for asyncio services.

::

    async with zoomtoken.TokenManager.from_env() as manager:
        token = await manager.get_token()
"""

from ._authorize import (
    ZOOM_AUTHORIZE_URL,
    authorization_url,
    authorize_interactive,
    exchange_code,
    new_pkce_pair,
    parse_callback,
)
from ._clock import Clock, SystemClock
from ._events import Event, EventHook, EventKind, ManagerStatus
from ._exceptions import (
    AuthorizationError,
    ConfigurationError,
    InsecureEndpointError,
    InvalidResponseError,
    LeaseLostError,
    ManagerClosedError,
    OAuthError,
    OutcomeUnknownError,
    ReauthorizationRequiredError,
    RefreshError,
    StaleGenerationError,
    StoreCorruptError,
    StoreError,
    StoreUnavailableError,
    TokenExpiredError,
    TransportError,
    ZoomTokenError,
)
from ._manager import TokenManager
from ._oauth import ZOOM_REVOKE_URL, ZOOM_TOKEN_URL
from ._retry import RetryPolicy, is_retryable, parse_retry_after
from ._token import Token, TokenState
from .stores import Lease, MemoryStore, TokenStore

__version__ = "0.1.0"

__all__ = [
    "ZOOM_AUTHORIZE_URL",
    "ZOOM_REVOKE_URL",
    "ZOOM_TOKEN_URL",
    "AuthorizationError",
    "Clock",
    "ConfigurationError",
    "Event",
    "EventHook",
    "EventKind",
    "InsecureEndpointError",
    "InvalidResponseError",
    "Lease",
    "LeaseLostError",
    "ManagerClosedError",
    "ManagerStatus",
    "MemoryStore",
    "OAuthError",
    "OutcomeUnknownError",
    "ReauthorizationRequiredError",
    "RefreshError",
    "RetryPolicy",
    "StaleGenerationError",
    "StoreCorruptError",
    "StoreError",
    "StoreUnavailableError",
    "SystemClock",
    "Token",
    "TokenExpiredError",
    "TokenManager",
    "TokenState",
    "TokenStore",
    "TransportError",
    "ZoomTokenError",
    "__version__",
    "authorization_url",
    "authorize_interactive",
    "exchange_code",
    "is_retryable",
    "new_pkce_pair",
    "parse_callback",
    "parse_retry_after",
]
