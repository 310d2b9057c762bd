"""Skip tests whose service is absent on a developer machine, but fail them under CI=true.

Store backends call `require_service` (or `backend_unavailable`) before they connect; the
real-server provider tests call `unavailable`.
"""

from __future__ import annotations

import os
import socket
from typing import NoReturn
from urllib.parse import urlsplit

import pytest


def in_ci() -> bool:
    """True when running under CI (`CI=true`), where an unavailable backend is an error."""
    return os.environ.get("CI", "").strip().lower() == "true"


def backend_unavailable(backend: str, reason: str) -> NoReturn:
    """Skip the current test because `backend`'s service is absent; under `CI=true`, fail."""
    unavailable(
        f"{backend} store backend unavailable: {reason}",
        "every store backend must be tested in CI",
    )


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


def unavailable(message: str, in_ci_because: str) -> NoReturn:
    """Skip the current test with `message`; under `CI=true`, fail it, saying why it must run."""
    if in_ci():
        pytest.fail(f"{message} (CI=true: {in_ci_because})", pytrace=False)
    pytest.skip(message)
