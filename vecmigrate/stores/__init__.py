"""Vector store adapters behind one protocol, opened from a spec's store reference."""

from __future__ import annotations

from vecmigrate.config import resolve_store
from vecmigrate.errors import PreconditionError
from vecmigrate.spec import BuiltinStoreRef
from vecmigrate.stores.base import Batch, Scope, VectorStore
from vecmigrate.stores.builtin import BuiltinStore

__all__ = ["Batch", "BuiltinStore", "Scope", "VectorStore", "open_store"]


def open_store(ref: BuiltinStoreRef, scope: Scope, dimension: int | None = None) -> BuiltinStore:
    """Open ``scope`` in the store ``ref`` names; create it when ``dimension`` is given.

    Raises:
        PreconditionError: the store kind is not known to this release.
    """
    if ref.kind == "builtin":
        resolved = resolve_store(ref)
        assert resolved.url is not None
        return BuiltinStore.open(resolved.url, scope, dimension)
    raise PreconditionError(f"unknown store kind {ref.kind!r}; use one of: builtin")
