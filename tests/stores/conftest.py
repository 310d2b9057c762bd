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

import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

from cadenza.stores import MemoryStore, SQLiteStore, StateStore

StoreFactory = Callable[[Path], AbstractAsyncContextManager[StateStore]]
"""Opens a fresh, empty store (given a private temporary directory) and closes it after."""


def in_ci() -> bool:
    """True when running under CI (`CI=true`), where an unavailable backend is an error."""
    return os.environ.get("CI", "").strip().lower() == "true"


def backend_unavailable(backend: str, reason: str) -> NoReturn:
    """Skip the current test because `backend`'s service is absent; under `CI=true`, fail."""
    message = f"{backend} store backend unavailable: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: every store backend must be tested in CI)", pytrace=False)
    pytest.skip(message)


def require_service(backend: str, env_var: str, default_url: str, *, timeout: float = 0.5) -> str:
    """The URL of the service `backend` needs (from `env_var`, else `default_url`).

    Checks that something listens at the URL's host and port; when nothing does, the test is
    skipped (or, under `CI=true`, failed) with a reason naming the backend, URL and variable.
    """
    url = os.environ.get(env_var) or default_url
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port
    if port is None:
        backend_unavailable(backend, f"{env_var}={url!r} has no port")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        backend_unavailable(
            backend, f"no server at {host}:{port} ({exc}); start one or set {env_var}"
        )
    return url


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
