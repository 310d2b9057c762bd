"""Signed checkpoints: Ed25519 signatures over the audit chain's head, kept outside the database.

A checkpoint is one JSON line `{"seq", "hash", "ts", "key_id", "sig"}` appended to a
checkpoints file: `sig` is the base64 Ed25519 signature of the canonical JSON of
`{"seq", "hash", "ts"}`. Whoever can write the database can rewrite the whole chain and
recompute every hash; they cannot forge a signature over the old head without the private key.

The honest limit: entries after the last checkpoint are protected by the chain alone, so
deleting the unsigned tail (or rewriting it and its hashes) cannot be detected. That is why a
run signs the head when it ends, and why the key and the checkpoints file belong somewhere the
database's writers cannot reach.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import ConfigError
from ._chain import Problem, SignedHead, canonical_json

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from ..stores._base import StateStore

__all__ = ["AuditSettings", "Checkpointer", "load_public_key", "read_checkpoints"]

DEFAULT_KEY = "~/.config/cadenza/audit-ed25519.pem"


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Where the signing key and the checkpoints live, and how often to sign."""

    key: Path
    """The Ed25519 private key (PEM, created on first use, mode 0600); `<key>.pub` beside it."""
    checkpoints: Path | None
    """The checkpoints file (JSONL), or None: no checkpoints (an in-memory store)."""
    every: int = 100
    """Sign once this many entries were added since the last checkpoint..."""
    interval: float = 60.0
    """...or once this many seconds passed (and at least one entry was added)."""

    @classmethod
    def for_store(cls, db: Path | None) -> AuditSettings:
        """The defaults for a store: `db` is the SQLite file, None for an in-memory store.

        The key is `$CADENZA_AUDIT_KEY`, else `~/.config/cadenza/audit-ed25519.pem`; the
        checkpoints are `$CADENZA_AUDIT_CHECKPOINTS`, else `<db>.audit-checkpoints.jsonl`. An
        in-memory log dies with its process, so it never gets checkpoints.
        """
        key = Path(os.environ.get("CADENZA_AUDIT_KEY") or DEFAULT_KEY).expanduser()
        if db is None:
            return cls(key, None)
        env = os.environ.get("CADENZA_AUDIT_CHECKPOINTS")
        return cls(key, Path(env).expanduser() if env else Path(f"{db}.audit-checkpoints.jsonl"))

    @property
    def public_key(self) -> Path:
        """`<key>.pub`: what verifiers need."""
        return public_key_path(self.key)


def public_key_path(key: Path) -> Path:
    """Where the public half of the private key at `key` is saved."""
    return key.with_name(key.name + ".pub")


def key_id(public: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the sha256 of the raw public key."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The private key at `path`, generated (0600, with `<path>.pub`) when there is none."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = path.expanduser()
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made one first: use theirs
        except OSError as exc:
            raise ConfigError(f"cannot create the audit signing key at {path}: {exc}") from exc
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
    key = _load_private(path)
    pub = public_key_path(path)
    if not pub.exists():
        pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return key


def _load_private(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    for attempt in range(50):
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as exc:
            if attempt < 49:  # another process may be writing it right now
                time.sleep(0.02)
                continue
            raise ConfigError(f"{path} is not a PEM private key ({exc})") from exc
        except (OSError, TypeError) as exc:
            raise ConfigError(f"cannot read the audit signing key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 private key; the audit log needs one")
        return key
    raise AssertionError("unreachable")


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file (`<key>.pub`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.expanduser().read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the audit public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


def signed_text(seq: int, hash_: str, ts: str) -> bytes:
    """What a checkpoint's signature covers."""
    return canonical_json({"seq": seq, "hash": hash_, "ts": ts}).encode()


def make_checkpoint(key: Ed25519PrivateKey, seq: int, hash_: str) -> dict[str, Any]:
    """A signed checkpoint of entry `seq` with hash `hash_`, timestamped now."""
    ts = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    sig = key.sign(signed_text(seq, hash_, ts))
    return {
        "seq": seq,
        "hash": hash_,
        "ts": ts,
        "key_id": key_id(key.public_key()),
        "sig": base64.b64encode(sig).decode(),
    }


def check_checkpoint(
    line: str, number: int, public: Ed25519PublicKey, public_id: str
) -> SignedHead | Problem:
    """Verify one line of a checkpoints file: the head it vouches for, or what is wrong."""
    from cryptography.exceptions import InvalidSignature

    name = f"checkpoint #{number}"
    try:
        cp: Any = json.loads(line)
        seq, hash_, ts, kid, sig = cp["seq"], cp["hash"], cp["ts"], cp["key_id"], cp["sig"]
        if not (isinstance(seq, int) and all(isinstance(v, str) for v in (hash_, ts, kid, sig))):
            raise TypeError("a field has the wrong type")
        raw = base64.b64decode(sig, validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        return Problem(0, "bad-signature", f"{name} is not a valid checkpoint line ({exc})")
    label = f"{name} (entry {seq}, signed {ts})"
    if kid != public_id:
        return Problem(
            seq,
            "bad-signature",
            f"{label} was signed by key {kid}, not by the audit key {public_id}: forged or "
            "signed with another key",
        )
    try:
        public.verify(raw, signed_text(seq, hash_, ts))
    except InvalidSignature:
        return Problem(
            seq, "bad-signature", f"{label} has an invalid signature: the line was altered"
        )
    return SignedHead(number, seq, hash_, ts)


def read_checkpoints(path: Path) -> Iterator[str]:
    """The non-empty lines of a checkpoints file (none when it does not exist)."""
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if line.strip():
                yield line


def last_checkpoint(path: Path) -> dict[str, Any] | None:
    """The last line of a checkpoints file, parsed (None when there is none or it is bad)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read().splitlines()
    except FileNotFoundError:
        return None
    for raw in reversed(tail):
        if raw.strip():
            try:
                value: Any = json.loads(raw)
            except ValueError:
                return None
            return cast("dict[str, Any]", value) if isinstance(value, dict) else None
    return None


def append_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Append one line, in one write (O_APPEND: lines of concurrent writers never interleave)."""
    data = (json.dumps(checkpoint, ensure_ascii=False) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class Checkpointer:
    """Signs the audit chain's head into the checkpoints file, now (`sign`) or when due (`maybe`).

    Args:
        store: The store whose audit log is signed.
        key: The Ed25519 private key (PEM); generated on first use.
        path: The checkpoints file (JSONL), ideally out of the database writers' reach.
        every: Sign when this many entries were added since the last checkpoint...
        interval: ...or this many seconds passed since it (and at least one entry was added).

    """

    def __init__(
        self,
        store: StateStore,
        *,
        key: Path,
        path: Path,
        every: int = 100,
        interval: float = 60.0,
    ) -> None:
        self.store = store
        self.key_path = key
        self.path = path
        self.every = every
        self.interval = interval
        self._key: Ed25519PrivateKey | None = None
        self._last: tuple[int, float] | None = None  # seq and unix time of the last checkpoint

    def _last_signed(self) -> tuple[int, float]:
        if self._last is None:
            cp = last_checkpoint(self.path)
            seq, when = 0, float("-inf")
            if cp is not None and isinstance(cp.get("seq"), int):
                seq = cp["seq"]
                try:
                    when = dt.datetime.fromisoformat(str(cp.get("ts"))).timestamp()
                except ValueError:
                    pass
            self._last = (seq, when)
        return self._last

    async def maybe(self) -> bool:
        """Sign the head if `every` entries or `interval` seconds went by; True if it did."""
        seq, _ = await self.store.audit_head()
        last, when = self._last_signed()
        if seq <= last:
            return False
        if seq - last < self.every and time.time() - when < self.interval:
            return False
        return await self.sign() is not None

    async def sign(self) -> dict[str, Any] | None:
        """Sign the head now; the checkpoint written, or None when nothing new was added."""
        seq, hash_ = await self.store.audit_head()
        self._last = None  # another process may have signed since: read the file again
        if seq == 0 or seq <= self._last_signed()[0]:
            return None
        if self._key is None:
            self._key = load_or_create_key(self.key_path)
        cp = make_checkpoint(self._key, seq, hash_)
        try:
            append_checkpoint(self.path, cp)
        except OSError as exc:
            raise ConfigError(f"cannot write audit checkpoints to {self.path}: {exc}") from exc
        self._last = (seq, time.time())
        return cp
