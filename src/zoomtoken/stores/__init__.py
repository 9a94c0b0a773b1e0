"""Token stores: where a grant's token pair lives between refreshes and across processes."""

from typing import TYPE_CHECKING, Any

from ._base import Lease, TokenStore
from .file import FileStore
from .memory import MemoryStore

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["FileStore", "Lease", "MemoryStore", "RedisStore", "TokenStore"]


def __getattr__(name: str) -> Any:
    # Imported on first use: redis-py is an optional extra (zoomtoken[redis]), and
    # `import zoomtoken` must work without it.
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
