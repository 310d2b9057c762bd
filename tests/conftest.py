"""Session-wide test settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _audit_key_in_a_temporary_place(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Runs sign their audit log's head; keep the signing key out of the developer's home."""
    if "CADENZA_AUDIT_KEY" not in os.environ:
        key: Path = tmp_path_factory.mktemp("audit-key") / "audit-ed25519.pem"
        os.environ["CADENZA_AUDIT_KEY"] = str(key)
