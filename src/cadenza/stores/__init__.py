"""State stores: the journal of runs (events, checkpoints, messages, idempotency records) and
the append-only audit log.

`open_store("memory:")`, `open_store("sqlite:///path/to.db")` or a bare path; with no argument
the embedded default, `.cadenza/cadenza.db` in the working directory (or `$CADENZA_STORE`).
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from ._base import AuditRow, Batch, Checkpoint, Event, RunRecord, RunStatus, StateStore, ToolRecord
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "AuditRow",
    "Batch",
    "Checkpoint",
    "Event",
    "MemoryStore",
    "RunRecord",
    "RunStatus",
    "SQLiteStore",
    "StateStore",
    "ToolRecord",
    "default_store",
    "open_store",
]

DEFAULT_PATH = ".cadenza/cadenza.db"
_opened: dict[str, StateStore] = {}


def open_store(url: str | None = None) -> StateStore:
    """Open (or reuse, within this process) the store a URL names.

    Args:
        url: `memory:`, `sqlite:///path.db`, or a file path. Default: `$CADENZA_STORE`, else
            `.cadenza/cadenza.db` in the working directory.
    """
    url = url or os.environ.get("CADENZA_STORE") or DEFAULT_PATH
    if url == "memory:":
        return MemoryStore()
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
    elif "://" in url:
        raise ConfigError(
            f"unsupported store URL {url!r}; use 'memory:', 'sqlite:///path.db' or a file path"
        )
    else:
        path = url
    key = os.path.abspath(path)
    store = _opened.get(key)
    if store is None:
        store = _opened[key] = SQLiteStore(path)
    return store


def default_store() -> StateStore:
    """The embedded default store (see `open_store`)."""
    return open_store(None)
