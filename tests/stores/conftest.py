"""Fixtures for the `StateStore` conformance suite.

Every backend is one entry of `BACKENDS`: a name and a factory that opens a fresh, empty store
(an async context manager, so it can clean up). The `store` fixture is parametrized over all of
them, so every conformance test runs against every backend.

Adding a backend (postgres, redis, ...) means adding one factory here. A backend that needs a
running service calls `require_service(...)` (or `backend_unavailable(...)`) first: the tests
are skipped with a clear reason when the service is absent on a developer machine, and fail
instead when `CI=true`, so CI can never silently stop testing a backend. For example::

    @asynccontextmanager
    async def _postgres(tmp_path: Path) -> AsyncIterator[StateStore]:
        url = require_service("postgres", "CADENZA_TEST_POSTGRES_URL", "postgresql://localhost:5432/cadenza_test")
        from cadenza.stores.postgres import PostgresStore
        store = await PostgresStore.open(url, schema=f"t_{uuid.uuid4().hex[:12]}")
        try:
            yield store
        finally:
            await store.drop_schema()
            await store.close()

    BACKENDS["postgres"] = _postgres
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from cadenza.stores import MemoryStore, SQLiteStore, StateStore

StoreFactory = Callable[[Path], AbstractAsyncContextManager[StateStore]]
"""Opens a fresh, empty store (given a private temporary directory) and closes it after."""


@asynccontextmanager
async def _memory(tmp_path: Path) -> AsyncIterator[StateStore]:
    store = MemoryStore()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def _sqlite(tmp_path: Path) -> AsyncIterator[StateStore]:
    store = SQLiteStore(tmp_path / "conformance.db")
    try:
        yield store
    finally:
        await store.close()


BACKENDS: dict[str, StoreFactory] = {
    "memory": _memory,
    "sqlite": _sqlite,
}
"""Every store backend under test, by name. Add one entry per new backend."""


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    return request.param


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[StateStore]:
    """A fresh, empty store of each backend in turn."""
    async with BACKENDS[backend](tmp_path) as s:
        yield s
