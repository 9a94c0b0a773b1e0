"""Token stores: where a grant's token pair lives between refreshes and across processes."""

from ._base import Lease, TokenStore
from .file import FileStore
from .memory import MemoryStore

__all__ = ["FileStore", "Lease", "MemoryStore", "TokenStore"]
