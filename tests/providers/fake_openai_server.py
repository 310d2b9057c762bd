"""A scriptable fake of the OpenAI chat-completions API on 127.0.0.1, for fault injection.

```python
with FakeOpenAI(rate_limited(retry_after=1), Reply("hello")) as server:
    model = OpenAIModel("gpt-fake", prefix="compat", base_url=server.base_url, api_key="x")
    ...
    assert len(server.requests) == 2
```

Each request to `POST /v1/chat/completions` takes the next item of the script (then `default`):
a normal answer (`Reply`, JSON or SSE as the request asks), an HTTP error (`Fail`,
`rate_limited`, `insufficient_quota`), a delay (`Slow`), a connection reset (`Reset`) or a
stream cut before its final chunk (`Cut`). Every request received is recorded. Standard library
only: `http.server` in a daemon thread.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "Cut",
    "Fail",
    "FakeOpenAI",
    "Item",
    "Recorded",
    "Reply",
    "Reset",
    "Slow",
    "insufficient_quota",
    "rate_limited",
]


@dataclass
class Reply:
    """A normal answer: text and/or tool calls (arguments as raw JSON text, possibly broken)."""

    text: str = "ok"
    tool_calls: list[tuple[str, str]] = field(default_factory=lambda: [])


@dataclass
class Fail:
    """An HTTP error with an OpenAI-style error body."""

    status: int
    message: str = "something went wrong"
    type: str = "server_error"
    code: str | None = None
    retry_after: float | None = None


def rate_limited(retry_after: float) -> Fail:
    """429 with a Retry-After header (seconds): retry later."""
    return Fail(
        429, "Rate limit reached for requests", "requests", "rate_limit_exceeded", retry_after
    )


def insufficient_quota() -> Fail:
    """429 that no retry can fix: the account is out of credit."""
    return Fail(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    )


@dataclass
class Slow:
    """Wait `seconds` (longer than the client's timeout), then answer with `then`."""

    seconds: float
    then: Item = field(default_factory=Reply)


@dataclass
class Reset:
    """Read the request, then reset the connection without a response."""


@dataclass
class Cut:
    """Stream `text`, then close the connection before the final chunk: no finish_reason, no
    [DONE]. By default the chunked body stops mid-transfer (an incomplete HTTP body);
    `clean=True` sends a close-delimited body instead, which ends validly but early."""

    text: str = "a partial answer that never"
    clean: bool = False


Item = Reply | Fail | Slow | Reset | Cut


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeOpenAI:
    """The server. Use as a context manager, or call `start()` and `close()`."""

    def __init__(self, *script: Item, default: Item | None = None) -> None:
        self.default: Item = default if default is not None else Reply()
        self.requests: list[Recorded] = []
        self._script = list(script)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._http = _Server(("127.0.0.1", 0), _Handler)
        self._http.fake = self
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        """What to pass as the client's `base_url`."""
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    def script(self, *items: Item) -> None:
        """Append items to the script."""
        with self._lock:
            self._script.extend(items)

    def start(self) -> FakeOpenAI:
        """Start serving in a daemon thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; wakes any `Slow` request still waiting."""
        self._stop.set()
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next(self, recorded: Recorded) -> Item:
        with self._lock:
            self.requests.append(recorded)
            return self._script.pop(0) if self._script else self.default


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is part of the script, not a failure


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body: dict[str, Any] = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_raw": raw.decode(errors="replace")}
        fake = self.server.fake
        item = fake._next(Recorded("POST", self.path, dict(self.headers.items()), body))
        if not self.path.endswith("/chat/completions"):
            item = Fail(404, f"no route {self.path}", "invalid_request_error", "not_found")
        while isinstance(item, Slow):
            if fake._stop.wait(item.seconds):
                return
            item = item.then
        model = str(body.get("model", "gpt-fake"))
        if isinstance(item, Fail):
            self._error(item)
        elif isinstance(item, Reset):
            self._reset()
        elif body.get("stream"):
            self._stream(item, model, body)
        elif isinstance(item, Cut):  # half a JSON body, then a reset
            data = json.dumps(_completion(item, model)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self._reset()
        else:
            self._json(200, _completion(item, model))

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, fail: Fail) -> None:
        error = {"message": fail.message, "type": fail.type, "param": None, "code": fail.code}
        headers = {} if fail.retry_after is None else {"Retry-After": f"{fail.retry_after:g}"}
        self._json(fail.status, {"error": error}, headers)

    def _reset(self) -> None:
        # SO_LINGER 0: close() sends RST instead of FIN, as a crashed proxy would.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.close()
            self.rfile.close()
            self.connection.close()

    def _stream(self, item: Reply | Cut, model: str, body: dict[str, Any]) -> None:
        clean_cut = isinstance(item, Cut) and item.clean
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if clean_cut:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = _chunks(item, model, body)
        for event in events:
            data = b"data: " + event.encode() + b"\n\n"
            self.wfile.write(data if clean_cut else b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        if isinstance(item, Cut):  # no terminating chunk: the body is incomplete
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")


def _completion(item: Reply | Cut, model: str) -> dict[str, Any]:
    reply = item if isinstance(item, Reply) else Reply(item.text)
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(reply.tool_calls)
        ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def _chunks(item: Reply | Cut, model: str, body: dict[str, Any]) -> list[str]:
    """The SSE `data:` payloads of a streamed answer (a cut one stops before its last chunk)."""

    def event(choices: list[Any], **more: Any) -> str:
        head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk"}
        return json.dumps(
            head | {"created": int(time.time()), "model": model, "choices": choices} | more
        )

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return event([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}])

    words = item.text.split(" ") if item.text else []
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
    if isinstance(item, Cut):
        return out
    for i, (name, args) in enumerate(item.tool_calls):
        head = {"index": i, "id": f"call_{i}", "type": "function"}
        out.append(chunk({"tool_calls": [head | {"function": {"name": name, "arguments": ""}}]}))
        half = len(args) // 2
        for part in (args[:half], args[half:]):
            out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]}))
    out.append(chunk({}, "tool_calls" if item.tool_calls else "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append(
            event([], usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
        )
    out.append("[DONE]")
    return out
