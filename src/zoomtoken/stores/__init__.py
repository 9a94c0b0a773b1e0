"""Token stores: where a grant's token pair lives between refreshes and across processes."""

from ._base import Lease, TokenStore
from .memory import MemoryStore

__all__ = ["Lease", "MemoryStore", "TokenStore"]
