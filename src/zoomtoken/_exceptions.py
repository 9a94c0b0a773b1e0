"""The exceptions zoomtoken raises, all rooted in :class:`ZoomTokenError`.

::

    ZoomTokenError
    ├── AuthorizationError            first authorisation failed: denied, bad state, bad code
    ├── ConfigurationError            missing / empty / insecure settings
    │   └── InsecureEndpointError     plain http:// to a non-loopback host
    ├── ManagerClosedError            the manager was used after aclose()
    ├── RefreshError                  one refresh (or revoke) attempt failed
    │   ├── TransportError            no usable answer: connection, DNS, TLS
    │   │   └── OutcomeUnknownError   sent, then timed out: the server may have rotated
    │   ├── OAuthError                the endpoint answered with an error
    │   │   └── ReauthorizationRequiredError   the grant or the client is dead
    │   └── InvalidResponseError      a 2xx whose body is not a usable token
    ├── TokenExpiredError             no valid token left; __cause__ is the last failure
    └── StoreError                    the token store failed
        ├── StoreCorruptError         the stored data cannot be parsed
        ├── InsecureStoreError        the store file is readable by group or others
        ├── StaleGenerationError      compare-and-set refused: someone saved first
        ├── LeaseLostError            the refresh lease expired or was taken over
        └── StoreUnavailableError     the store cannot be reached right now

Every error carries ``status``, ``error``, ``reason`` and ``retryable`` (``None`` where they
do not apply). No message, ``repr`` or attribute ever holds a token or a client secret.
"""

from __future__ import annotations

__all__ = [
    "AuthorizationError",
    "ConfigurationError",
    "InsecureEndpointError",
    "InvalidResponseError",
    "LeaseLostError",
    "ManagerClosedError",
    "OAuthError",
    "OutcomeUnknownError",
    "ReauthorizationRequiredError",
    "RefreshError",
    "StaleGenerationError",
    "StoreCorruptError",
    "StoreError",
    "StoreUnavailableError",
    "TokenExpiredError",
    "TransportError",
    "ZoomTokenError",
]


class ZoomTokenError(Exception):
    """Root of every error zoomtoken raises."""

    #: Default retryability of the class; instances may override it.
    default_retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        reason: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error = error
        self.reason = reason
        self.retryable = self.default_retryable if retryable is None else retryable

    def __repr__(self) -> str:
        parts = [repr(self.message)]
        for name in ("status", "error", "reason"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


class AuthorizationError(ZoomTokenError):
    """The authorisation did not produce a usable grant: consent denied, ``state`` mismatch,
    no code in the redirect, no redirect in time, or a code refused (expired, reused)."""


class ConfigurationError(ZoomTokenError):
    """A required setting is missing, empty or invalid."""


class InsecureEndpointError(ConfigurationError):
    """An endpoint uses plain HTTP on a host other than loopback."""


class ManagerClosedError(ZoomTokenError):
    """The TokenManager was used after ``aclose()``."""


class RefreshError(ZoomTokenError):
    """An attempt to talk to the token or revoke endpoint failed."""


class TransportError(RefreshError):
    """No usable answer arrived: connection refused or reset, DNS, TLS, timeout."""

    default_retryable = True


class OutcomeUnknownError(TransportError):
    """The request was sent but no answer arrived in time.

    The server may have rotated the refresh token; a retry that then gets ``invalid_grant``
    means the outcome was lost, not that the grant was revoked.
    """


class OAuthError(RefreshError):
    """The endpoint answered with an HTTP error; ``status``, ``error`` and ``reason`` say which."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        reason: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, error=error, reason=reason, retryable=retryable)
        #: Seconds the server asked us to wait (``Retry-After``), if it said.
        self.retry_after = retry_after


class ReauthorizationRequiredError(OAuthError):
    """The grant is dead (``invalid_grant``) or the client is rejected (``invalid_client``).

    No further refresh is attempted: the user must authorise the app again (or the client
    credentials must be fixed). A still-valid access token keeps being served until it expires.
    """


class InvalidResponseError(RefreshError):
    """A 2xx answer whose body is not a usable token (no ``access_token``, bad ``expires_in``)."""


class TokenExpiredError(ZoomTokenError):
    """No valid access token is left; ``__cause__`` is the last refresh failure, if any."""


class StoreError(ZoomTokenError):
    """The token store failed to load, save or coordinate."""


class StoreCorruptError(StoreError):
    """The store holds data that cannot be parsed; it is never silently reset."""


class InsecureStoreError(StoreError):
    """The store file can be read by its group or by others."""


class StaleGenerationError(StoreError):
    """A compare-and-set save was refused because the stored generation moved on."""


class LeaseLostError(StoreError):
    """The refresh lease expired or is held by someone else."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached right now (for example Redis is down)."""

    default_retryable = True
