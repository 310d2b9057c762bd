"""The tamper-evident audit log of the safety Gate's decisions.

Every tool call the Gate sees (allowed, denied, approved; executed or not; its outcome) becomes
one entry. The store numbers entries globally and chains them with sha256 in the same
transaction as the step that made them (`_chain.py`); SQLite also refuses UPDATE and DELETE on
the table. A `Checkpointer` signs the chain's head with Ed25519 into a file outside the database
(`signing.py`); `verify` walks the chain against those signatures and says precisely which
entry was edited, re-hashed, deleted, swapped or cut off.

What it cannot see: entries after the last checkpoint are protected by the chain alone, so
deleting or rewriting the unsigned tail goes unnoticed. Runs sign when they end to keep that
tail short.
"""

from __future__ import annotations

import importlib
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._chain import Problem, canonical_json, verify_rows

if TYPE_CHECKING:
    from ..stores._base import StateStore
    from ._verify import AuditReport, entries, verify
    from .signing import AuditSettings, Checkpointer

__all__ = [
    "AuditReport",
    "AuditSettings",
    "Checkpointer",
    "Problem",
    "canonical_json",
    "checkpointer_for",
    "entries",
    "store_path",
    "verify",
    "verify_rows",
]

# The stores import `_chain` on every start-up: the rest loads on first use.
_LAZY = {
    "AuditReport": "_verify",
    "AuditSettings": "signing",
    "Checkpointer": "signing",
    "entries": "_verify",
    "verify": "_verify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


_checkpointers: weakref.WeakKeyDictionary[StateStore, Checkpointer | None] = (
    weakref.WeakKeyDictionary()
)


def store_path(store: StateStore) -> Path | None:
    """The SQLite file behind a store, or None (in memory, or another backend)."""
    from ..stores.sqlite import SQLiteStore

    return store.path if isinstance(store, SQLiteStore) else None


def checkpointer_for(store: StateStore) -> Checkpointer | None:
    """The store's `Checkpointer` with `AuditSettings.for_store` defaults (one per store).

    None when the store keeps no checkpoints (in memory).
    """
    from .signing import AuditSettings, Checkpointer

    try:
        return _checkpointers[store]
    except KeyError:
        pass
    settings = AuditSettings.for_store(store_path(store))
    cp = None
    if settings.checkpoints is not None:
        cp = Checkpointer(
            store,
            key=settings.key,
            path=settings.checkpoints,
            every=settings.every,
            interval=settings.interval,
        )
    _checkpointers[store] = cp
    return cp
