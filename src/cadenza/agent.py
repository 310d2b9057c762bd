"""`Agent`: the perceive → plan → act → observe loop around one model and its tools."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from pydantic import TypeAdapter, ValidationError

from . import runtime
from ._gate import call_key, run_tool_calls
from ._run import Listener, RunHandle
from .budgets import Budget
from .context import Principal
from .errors import BudgetExceeded, ModelError, OutputValidationError, ReplayDivergence
from .messages import Message, ToolCall, Usage
from .models import (
    Model,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    TextDelta,
    ToolCallEvent,
    resolve_model,
)
from .prompts import Instructions, render_instructions
from .safety import Guards, Policy, load_policy
from .stores import StateStore
from .stores._base import Checkpoint
from .tools import Tool, ToolRegistry, resolve_tools

__all__ = ["Agent"]

OutputT = TypeVar("OutputT")


class Agent(Generic[OutputT]):
    """An LLM that calls tools until it can answer.

    Args:
        model: A `Model` or a model string such as `scripted:demo`.
        name: Recorded with every run.
        instructions: System prompt: text, a `Template`, or a function of the run context.
        tools: `@tool` functions, or requirement strings (`create_ticket>=1.2,<2`) resolved in
            `registry` right here, so a missing or incompatible tool fails at start-up.
        registry: Where requirement strings are resolved.
        output_type: A type (usually a pydantic model) the final answer must validate as.
        budget: Default limits for each run.
        settings: Sampling settings for every request.
        max_retries: How many invalid tool calls or invalid final answers the model may
            correct before the run fails.
        examples: Few-shot pairs (input text, ideal answer: text, or a value of
            `output_type`), shown to the model as earlier turns of the conversation.
        policy: Decides every tool call (allow, deny, or ask a human); a `Policy` or the path
            of a YAML/TOML policy file, checked against `tools` now. None: the tools given
            are the allow-list and every call to them is allowed.
        guards: Input, argument and output guards (default: `Guards()`).
        refuse_repeats: Refuse a tool call identical to one the model made in its previous
            turn (a small model looping), telling it to use the result it has. Set False for
            agents that poll.

    """

    def __init__(
        self,
        model: str | Model,
        *,
        name: str = "agent",
        instructions: Instructions = "",
        tools: Iterable[Tool | str] = (),
        registry: ToolRegistry | None = None,
        output_type: type[OutputT] | None = None,
        budget: Budget | None = None,
        settings: ModelSettings | None = None,
        max_retries: int = 3,
        examples: Iterable[tuple[str, Any]] = (),
        policy: Policy | str | Path | None = None,
        guards: Guards | None = None,
        refuse_repeats: bool = True,
    ) -> None:
        self.model = model
        self.refuse_repeats = refuse_repeats
        self._name = name
        self.instructions = instructions
        self.tools = resolve_tools(tools, registry)
        self.policy = load_policy(policy, self.tools)
        self.guards = guards
        self._specs = [t.spec for t in self.tools.values()]
        self._tool_names = [t.name for t in self._specs]
        self.output_type = output_type
        self._adapter: TypeAdapter[Any] | None = None
        self._schema: dict[str, Any] | None = None
        if output_type is not None and output_type is not str:
            self._adapter = TypeAdapter(output_type)
            self._schema = self._adapter.json_schema()
        self.budget = budget
        self.settings = settings or ModelSettings()
        self.max_retries = max_retries
        self.examples = [
            m
            for prompt, answer in examples
            for m in (Message.user(prompt), Message.assistant(_example_text(answer)))
        ]
        """Few-shot turns shown after the instructions (user input, then the ideal answer)."""

    @property
    def name(self) -> str:
        """The agent's name."""
        return self._name

    @property
    def kind(self) -> str:
        """Always 'agent'."""
        return "agent"

    # --- public entry points -------------------------------------------------------------

    async def run(
        self,
        prompt: str,
        *,
        store: StateStore | None = None,
        thread: str | None = None,
        model: str | Model | None = None,
        deps: Any = None,
        principal: Principal | None = None,
        budget: Budget | None = None,
        vars: dict[str, Any] | None = None,
        run_id: str | None = None,
        listeners: list[Listener] | None = None,
        ref: str | None = None,
        policy: Policy | None = None,
        stream: bool = False,
    ) -> runtime.RunResult:
        """Run the agent on `prompt` to a final answer.

        Args:
            prompt: The user's message.
            store: Where the run is journaled (default: the embedded SQLite store).
            thread: Conversation thread; the run sees the earlier runs' messages.
            model: Overrides the agent's model for this run.
            deps: Dependencies injected into tools through `RunContext.deps`.
            principal: Who the run acts for.
            budget: Limits for this run (default: the agent's).
            vars: Values for a `Template` in the instructions.
            run_id: Use this id instead of a fresh one.
            listeners: Called with every journal event as it happens.
            ref: How to load this agent again (`file.py:name`), for resume from the CLI.
            policy: Replaces the agent's policy for this run (checked against its tools).
            stream: Ask models for streams; listeners get `model.delta` events (seq 0, not
                journaled) as text arrives, and `model.tool_call` events.

        Raises:
            BudgetExceeded: a budget ran out (the run is checkpointed and can be resumed).
            OutputValidationError: the final answer never matched `output_type`.

        """
        resolve_model(model or self.model)  # an unknown model fails before the run starts
        opts = runtime.RunOptions(
            store=store, thread=thread, principal=principal, deps=deps,
            budget=budget or self.budget, run_id=run_id, ref=ref, listeners=listeners,
            model=model, policy=load_policy(policy, self.tools), stream=stream,
        )  # fmt: skip
        input_: Any = {"prompt": prompt, "vars": vars} if vars else prompt
        return await runtime.start(self, input_, opts)

    def run_sync(self, prompt: str, **kwargs: Any) -> runtime.RunResult:
        """`run` for synchronous code (starts its own event loop)."""
        return asyncio.run(self.run(prompt, **kwargs))

    async def resume(
        self,
        run_id: str,
        *,
        store: StateStore | None = None,
        model: str | Model | None = None,
        deps: Any = None,
        budget: Budget | None = None,
        listeners: list[Listener] | None = None,
        policy: Policy | None = None,
    ) -> runtime.RunResult:
        """Continue a crashed, failed, budget-stopped or approval-waiting run from its last checkpoint."""
        opts = runtime.RunOptions(
            store=store, deps=deps, budget=budget or self.budget, model=model,
            listeners=listeners, policy=load_policy(policy, self.tools),
        )  # fmt: skip
        return await runtime.resume(self, run_id, opts)

    async def replay(self, run_id: str, *, store: StateStore | None = None) -> runtime.RunResult:
        """Re-drive a recorded run without calling the model or any tool.

        Raises:
            ReplayDivergence: the agent's code or configuration no longer matches the recording.

        """
        return await runtime.replay(self, run_id, runtime.RunOptions(store=store))

    # --- the loop ------------------------------------------------------------------------

    def _input_json(self, input: Any) -> Any:
        return input

    async def _drive(
        self, run: RunHandle, cp: Checkpoint | None, input: Any, answer: Any
    ) -> tuple[Any, Any]:
        model = resolve_model(run.model_override or self.model)
        if cp is not None:
            messages = cp.messages
            retries = int(cp.data.get("retries", 0))
        else:
            messages = await self._opening(run, input)
            retries = 0
            run.stage({"retries": 0}, messages=messages)  # committed with the first answer
        run.messages = messages
        while True:
            last = messages[-1]
            if last.role == "assistant" and last.tool_calls:
                results = await run_tool_calls(
                    run, self.tools, last.tool_calls, agent=self.name,
                    model=_model_name(run, model),
                    repeated=_previous_calls(messages) if self.refuse_repeats else frozenset(),
                )  # fmt: skip
                messages.append(Message.tool(results))
                bad = sum(1 for r in results if r.is_error and _is_refusal(r.content))
                if bad:
                    retries += 1
                    if retries > self.max_retries:
                        run.stage({"retries": retries}, messages=messages)
                        raise ModelError(
                            f"agent {self.name!r}: the model made invalid tool calls "
                            f"{retries} times (last: {results[-1].content}); giving up"
                        )
                run.stage({"retries": retries}, messages=messages)
                await run.commit()
                continue
            if last.role == "assistant":
                # A final answer that failed validation: ask for a corrected one.
                ok, value, problem = self._parse_output(last.text)
                if ok:
                    return value, _output_json(value)
                retries += 1
                if retries > self.max_retries:
                    raise OutputValidationError(
                        f"agent {self.name!r}: the final answer did not match "
                        f"{_type_name(self.output_type)} after {self.max_retries} retries: {problem}"
                    )
                messages.append(
                    Message.user(
                        f"Your answer does not match the required JSON schema: {problem}. "
                        "Reply again with only a JSON value that matches the schema."
                    )
                )
            response = await self._call_model(run, model, messages)
            messages.append(response.message())
            run.stage({"retries": retries}, messages=messages)
            if not response.tool_calls:
                ok, value, _ = self._parse_output(response.text)
                if ok:
                    return value, _output_json(value)  # committed with run.finished
            await run.commit()

    async def _opening(self, run: RunHandle, input: Any) -> list[Message]:
        prompt: Any = input
        values: dict[str, Any] | None = None
        if isinstance(input, dict):
            d = cast(dict[str, Any], input)
            prompt, values = d["prompt"], d.get("vars")
        system = render_instructions(self.instructions, run.ctx, values)
        messages: list[Message] = [Message.system(system)] if system else []
        messages.extend(self.examples)
        if run.record.thread and not run.replaying:
            for prior in reversed(await run.store.list_runs(thread=run.record.thread, limit=1000)):
                if prior.id != run.run_id and prior.status == "finished" and prior.kind == "agent":
                    # Earlier turns only: not their instructions or few-shot examples.
                    prior_msgs = [
                        m for m in await run.store.messages(prior.id) if m.role != "system"
                    ]
                    messages.extend(prior_msgs[len(self.examples) :])
        messages.append(Message.user(str(prompt)))
        return messages

    async def _call_model(
        self, run: RunHandle, model: Model, messages: list[Message]
    ) -> ModelResponse:
        s = self.settings
        if run.budget.caps_output:  # the budget will lower max_tokens: work on a copy
            s = ModelSettings(s.temperature, s.max_tokens, s.seed, s.extra)
        request = ModelRequest(list(messages), self._specs, self._schema, s)
        if not run.replaying:
            price = getattr(model, "price", None)
            run.budget.before_model(request, price)
            if run.budget.meter is not None:
                await run.budget.quota_before_model(request, price)
        run.step += 1
        step = run.step
        run.emit(
            "model.requested",
            {"step": step, "agent": self.name, "model": model.name, "messages": len(messages),
             "tools": self._tool_names},
        )  # fmt: skip
        start = time.perf_counter()
        if run.recording is not None:
            response = _recorded_response(run, step)
        else:
            left = run.budget.remaining_time()
            deadline = None if left is None else asyncio.timeout(max(left, 0.0))
            ask = _streamed(run, model, request, step) if run.streaming else model.request(request)
            try:
                if deadline is None:
                    response = await ask
                else:
                    async with deadline:
                        response = await ask
            except (ModelError, BudgetExceeded):
                raise
            except TimeoutError as exc:
                if deadline is not None and deadline.expired():
                    b = run.budget.budget
                    raise BudgetExceeded(
                        "time", b.timeout or 0, b.timeout or 0, "during a model call"
                    ) from None
                raise ModelError(f"model {model.name!r} timed out at step {step}") from exc
            except Exception as exc:
                raise ModelError(
                    f"model {model.name!r} failed at step {step}: {type(exc).__name__}: {exc}"
                ) from exc
        run.budget.after_model(response.usage)
        if run.budget.meter is not None and not run.replaying:
            await run.budget.meter.spend("tokens", response.usage.total_tokens)
            await run.budget.meter.spend("cost", response.usage.cost)
        run.emit(
            "model.responded",
            {"step": step, "agent": self.name, "model": response.model_name or model.name,
             "text": response.text,
             "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in response.tool_calls],
             "usage": response.usage.to_dict(), "finish_reason": response.finish_reason,
             "duration_ms": round((time.perf_counter() - start) * 1000, 3)},
        )  # fmt: skip
        return response

    def _parse_output(self, text: str) -> tuple[bool, Any, str]:
        if self._adapter is None:
            return True, text, ""
        try:
            return True, self._adapter.validate_json(_strip_fences(text)), ""
        except ValidationError as exc:
            parts = [
                f"{'.'.join(str(p) for p in e['loc']) or '(value)'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            ]
            return False, None, "; ".join(parts)

    def __repr__(self) -> str:
        return f"<Agent {self.name} tools={list(self.tools)}>"


def _previous_calls(messages: list[Message]) -> frozenset[str]:
    """The calls the model made in its previous turn (a model repeating them is looping)."""
    turns = [m for m in messages if m.role == "assistant"]
    if len(turns) < 2 or not turns[-2].tool_calls:
        return frozenset()
    return frozenset(call_key(c) for c in turns[-2].tool_calls)


async def _streamed(
    run: RunHandle, model: Model, request: ModelRequest, step: int
) -> ModelResponse:
    """Ask for a stream; tell the run's listeners each piece as it comes (not journaled).

    Only a complete stream (ending with `StreamDone`) is an answer: a provider raises when its
    stream is cut, so partial text never becomes a final answer or a tool call.
    """
    async for event in model.stream(request):
        if isinstance(event, TextDelta):
            run.notify("model.delta", {"step": step, "text": event.text})
        elif isinstance(event, ToolCallEvent):
            c = event.call
            run.notify("model.tool_call", {"step": step, "name": c.name, "arguments": c.arguments})
        else:
            return event.response
    raise ModelError(f"model {model.name!r} ended its stream without a final response")


def _model_name(run: RunHandle, model: Model) -> str:
    """The model that asked for the calls: the last response's, else the configured one."""
    for e in reversed(run.batch.events):
        if e.type == "model.responded":
            return str(e.data["model"])
    return model.name


def _recorded_response(run: RunHandle, step: int) -> ModelResponse:
    rec = run.recording
    assert rec is not None
    if rec.pos >= len(rec.events) or rec.events[rec.pos].type != "model.responded":
        got = rec.events[rec.pos].type if rec.pos < len(rec.events) else "end of recording"
        raise ReplayDivergence(step, "event", got, "model.responded")
    d = rec.events[rec.pos].data
    return ModelResponse(
        d["text"],
        [ToolCall(c["id"], c["name"], c["arguments"]) for c in d["tool_calls"]],
        Usage.from_dict(d["usage"]),
        d["model"],
        d["finish_reason"],
    )


_REFUSAL_PREFIXES = (
    "unknown tool ", "invalid arguments for ", "denied by policy rule ", "you already called ",
)  # fmt: skip


def _is_refusal(content: Any) -> bool:
    return isinstance(content, str) and content.startswith(_REFUSAL_PREFIXES)


def _example_text(answer: Any) -> str:
    if isinstance(answer, str):
        return answer
    from pydantic_core import to_json

    return to_json(answer).decode()


def _strip_fences(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        if t.rstrip().endswith("```"):
            t = t.rstrip()[:-3]
    return t


def _output_json(value: Any) -> Any:
    from pydantic_core import to_jsonable_python

    return value if isinstance(value, str) else to_jsonable_python(value, fallback=str)


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", repr(t))
