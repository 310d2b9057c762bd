"""Executes a compiled graph: one node per step, checkpointed at every step boundary."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import json
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ValidationError

from . import runtime
from ._gate import run_tool_calls
from ._run import NO_ANSWER, RunHandle
from .context import RunContext
from .errors import ConfigError, GraphInterrupt, LoopLimitExceeded, RunError, ToolError
from .graph import END, Graph, NodeSpec, Reducer
from .messages import ToolCall
from .stores._base import Checkpoint

if TYPE_CHECKING:
    from pydantic_core import SchemaValidator


class _Answers:
    __slots__ = ("answers", "pos")

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.pos = 0


_current: ContextVar[_Answers | None] = ContextVar("cadenza_answers", default=None)


def next_answer() -> tuple[bool, Any]:
    """The next human answer available to the running node, if any."""
    box = _current.get()
    if box is None or box.pos >= len(box.answers):
        return False, None
    box.pos += 1
    return True, box.answers[box.pos - 1]


class GraphRunner:
    """Drives runs of one compiled graph."""

    def __init__(self, graph: Graph[Any], first: str, static: dict[str, str]) -> None:
        self.graph = graph
        self.first = first
        self.static = static
        self.state_type: type[BaseModel] = graph.state
        self.validator = cast("SchemaValidator", graph.state.__pydantic_validator__)
        self.fields = frozenset(graph.state.model_fields)
        self.reducers: dict[str, Reducer] = {}
        # Fields whose values need no validation when their type is exactly the annotation.
        self.exact: dict[str, type] = {}
        for fname, info in graph.state.model_fields.items():
            for meta in info.metadata:
                if isinstance(meta, Reducer):
                    self.reducers[fname] = meta
            ann: Any = info.annotation
            if ann in (int, str, float, bool) and not info.metadata:
                self.exact[fname] = ann
        self.tools = graph.tools

    # --- input ---------------------------------------------------------------------------

    def input_json(self, input: Any) -> Any:
        if isinstance(input, BaseModel):
            return input.model_dump(mode="json")
        if isinstance(input, dict):
            return input  # pyright: ignore[reportUnknownVariableType]
        if isinstance(input, str):
            key = self.graph.input_key
            if key is not None:
                # Text is always the input field, even text that looks like JSON: whoever
                # writes the message must not be able to set the rest of the state.
                return {key: input}
            try:
                parsed = json.loads(input)
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                return cast(dict[str, Any], parsed)
            raise ConfigError(
                f"graph {self.graph.name!r} takes a JSON object as input (fields of "
                f"{self.state_type.__name__}: {', '.join(sorted(self.fields))}); got plain text. "
                "Pass JSON, or declare Graph(..., input_key='field') to accept text"
            )
        raise ConfigError(
            f"graph input must be a {self.state_type.__name__}, a dict or text, got {input!r}"
        )

    async def _thread_state(self, run: RunHandle, input: Any) -> BaseModel:
        """The input laid over the final state of the thread's previous run of this graph."""
        data: Any = self.input_json(input) if isinstance(input, str) else input
        if isinstance(data, BaseModel):
            data = data.model_dump()
        for prior in await run.store.list_runs(
            thread=run.record.thread, status="finished", limit=20
        ):
            if (
                prior.kind == "graph"
                and prior.workflow == self.graph.name
                and prior.id != run.run_id
            ):
                base = cast(dict[str, Any], prior.output or {})
                data = {**base, **cast(dict[str, Any], data)}
                break
        return self.validate_input(data)

    def validate_input(self, input: Any) -> BaseModel:
        """The initial state from a run's input (raises ConfigError naming the bad field)."""
        data: Any = self.input_json(input) if isinstance(input, str) else input
        if isinstance(data, self.state_type):
            return data
        try:
            return self.state_type.model_validate(data)
        except ValidationError as exc:
            e = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in e["loc"]) or "(input)"
            raise ConfigError(
                f"invalid input for graph {self.graph.name!r}: {where}: {e['msg']}; expected the "
                f"fields of {self.state_type.__name__}: {', '.join(sorted(self.fields))}"
            ) from None

    # --- the loop ------------------------------------------------------------------------

    async def drive(
        self, run: RunHandle, cp: Checkpoint | None, input: Any, answer: Any
    ) -> tuple[Any, Any]:
        if cp is not None:
            st = cp.state
            state = st if isinstance(st, self.state_type) else self.state_type.model_validate(st)
            node: str = cp.data["next"]
            visits: dict[str, int] = dict(cp.data["visits"])
            answers: list[Any] = list(cp.data.get("answers", ()))
        else:
            if run.record.thread and not run.replaying:
                state = await self._thread_state(run, input)
            else:
                state = self.validate_input(input)
            node, visits, answers = self.first, {}, []  # no checkpoint: the input is the start
        if answer is not NO_ANSWER:
            answers.append(answer)
        box = _Answers(run.recording.answers) if run.recording is not None else _Answers(answers)
        token = _current.set(box)
        replaying = run.recording is not None
        try:
            while node != END:
                state, node, visits = await self._step(
                    run, state, node, visits, answers, box, replaying
                )
                if answers:
                    answers = []
        finally:
            _current.reset(token)
        return state, state.model_dump(mode="json")

    async def _step(
        self,
        run: RunHandle,
        state: BaseModel,
        node: str,
        visits: dict[str, int],
        answers: list[Any],
        box: _Answers,
        replaying: bool,
    ) -> tuple[BaseModel, str, dict[str, int]]:
        """Run one node; stage its event and checkpoint (committed unless it was the last)."""
        g = self.graph
        spec = g.nodes[node]
        step = run.step + 1
        if step > g.max_steps:
            raise LoopLimitExceeded(
                f"graph {g.name!r} ran {g.max_steps} steps without reaching END (last node "
                f"{node!r}); fix the loop's exit condition or raise Graph(max_steps=...)"
            )
        v = visits.get(node, 0)
        if spec.max_visits is not None and v >= spec.max_visits:
            raise LoopLimitExceeded(
                f"node {node!r} already ran {v} times, its max_visits; fix the loop's exit "
                "condition or raise max_visits"
            )
        run.step = step
        start_seq = run.seq  # the journal position before this attempt
        if not replaying:
            box.answers, box.pos = answers, 0
        child: str | None = None
        try:
            if spec.simple:
                fn: Any = spec.fn
                update: Any = await fn(state) if spec.is_async else fn(state)
                if update is not None and type(update) is not dict and inspect.isawaitable(update):
                    update = await update
            else:
                update, child = await self._execute(spec, run, state, step, answers)
        except Exception as exc:
            failed: dict[str, Any] = {
                "step": step, "node": node, "error": f"{type(exc).__name__}: {exc}",
            }  # fmt: skip
            if spec.kind != "function":
                failed["child"] = f"{run.run_id}.{step}"
            run.emit("node.failed", failed)
            raise
        except GraphInterrupt:
            run.step = step - 1
            # The node runs again on resume: what this attempt journaled (tool calls) is
            # superseded by the redo, so the checkpoint closes the journal before it.
            run.stage(
                {"next": node, "visits": visits, "answers": answers},
                state=state, state_changed=True, journal_seq=start_seq,
            )  # fmt: skip
            raise
        state, changed = self._apply(node, state, update, spec.fan_out is None)
        visits = {**visits, node: v + 1}  # a new dict: the staged checkpoint keeps the old one
        nxt = self._next(node, state)
        data: dict[str, Any] = {
            "step": step, "node": node,
            "update": _update_json(update),
            "next": nxt,
        }  # fmt: skip
        if child is not None:
            data["child"] = child
        run.emit("node.finished", data)
        run.stage_checkpoint({"next": nxt, "visits": visits}, state, changed)
        if nxt != END and not run.commit_now():
            await run.commit()
        return state, nxt, visits

    async def _execute(
        self, spec: NodeSpec, run: RunHandle, state: BaseModel, step: int, answers: list[Any]
    ) -> tuple[Any, str | None]:
        if spec.kind != "function":
            return await self._child(spec, run, state, step, answers)
        fn = spec.fn
        assert fn is not None
        args: list[Any] = [state]
        if spec.fan_out is not None:
            items = list(spec.fan_out(state))
            # Each branch numbers its tool calls in its own range: stable across resumes,
            # whatever order the concurrent branches reach the Gate in.
            settled = await asyncio.gather(
                *(
                    self._call(
                        spec,
                        [state, it, self._ctx(run, state, step, (b + 1) * 1000)]
                        if spec.takes_ctx
                        else [state, it],
                    )
                    for b, it in enumerate(items)
                ),
                return_exceptions=True,
            )
            # Every branch settles before the node ends: a branch waiting for a human (or one
            # that failed) never leaves a sibling's tool call running unjournaled.
            for outcome in settled:
                if isinstance(outcome, Exception):
                    raise outcome
            for outcome in settled:
                if isinstance(outcome, BaseException):
                    raise outcome
            return self._merge(spec.name, state, list(settled)), None
        if spec.takes_ctx:
            args.append(self._ctx(run, state, step))
        return await self._call(spec, args), None

    def _ctx(self, run: RunHandle, state: BaseModel, step: int, base: int = 0) -> RunContext:
        tools = self.tools
        counter = itertools.count(base)

        async def call_tool(name: str, arguments: dict[str, Any]) -> Any:
            index = next(counter)
            call = ToolCall(f"node-{step}-{index}", name, arguments)
            (result,) = await run_tool_calls(run, tools, [call], first_index=index)
            if result.is_error:
                raise ToolError(f"{name}: {result.content}")
            return result.content

        return dataclasses.replace(run.ctx, state=state, step=step, tool_caller=call_tool)

    async def _call(self, spec: NodeSpec, args: list[Any]) -> Any:
        fn = spec.fn
        assert fn is not None
        if spec.is_async:
            return await fn(*args)
        result: Any = fn(*args)  # a sync node returning an awaitable is awaited too
        if result is None or type(result) is dict or not inspect.isawaitable(result):  # pyright: ignore[reportUnknownArgumentType]
            return cast(Any, result)
        return await result

    async def _child(
        self, spec: NodeSpec, run: RunHandle, state: BaseModel, step: int, answers: list[Any]
    ) -> tuple[Any, str]:
        wf: Any = spec.workflow
        child_id = f"{run.run_id}.{step}"
        if spec.input is not None:
            child_input = spec.input(state)
        else:
            child_input = state
        opts = runtime.RunOptions(store=run.store, run_id=child_id)
        if run.recording is not None:
            result = await runtime.replay(wf, child_id, opts, parent=run)
            if result.status == "interrupted":
                raise GraphInterrupt(result.interrupt)
        else:
            existing = await run.store.get_run(child_id)
            if existing is None:
                result = await runtime.start(wf, child_input, opts, parent=run)
            elif existing.status == "finished":
                result = runtime.RunResult(child_id, "finished", _revive(wf, existing.output))
            else:
                result = await runtime.resume(
                    wf, child_id, opts, answer=answers[-1] if answers else None,
                    has_answer=bool(answers), parent=run,
                )  # fmt: skip
        out = result.output
        if spec.output is None:
            return out, child_id
        if isinstance(spec.output, str):
            return {spec.output: out}, child_id
        return spec.output(out, state), child_id

    def _merge(self, node: str, state: BaseModel, results: list[Any]) -> dict[str, Any]:
        acc: dict[str, Any] = {}
        for upd in results:
            if upd is None:
                continue
            if not isinstance(upd, dict):
                raise RunError(
                    f"fan-out node {node!r} must return dicts of field updates, got {upd!r}"
                )
            for k, v in cast(dict[str, Any], upd).items():
                r = self.reducers.get(k)
                if r is not None:
                    acc[k] = r.fn(acc[k] if k in acc else getattr(state, k), v)
                elif k in acc:
                    raise RunError(
                        f"fan-out node {node!r}: several branches wrote field {k!r}, which has no "
                        f"reducer; declare it as Annotated[..., Reducer(fn)] to combine them"
                    )
                else:
                    acc[k] = v
        return acc

    def _apply(
        self, node: str, state: BaseModel, update: Any, reduce: bool
    ) -> tuple[BaseModel, bool]:
        if update is None:
            return state, False
        if isinstance(update, self.state_type):
            return update, True
        if not isinstance(update, dict):
            raise RunError(
                f"node {node!r} returned {type(update).__name__}; return a dict of field updates, "
                f"a {self.state_type.__name__}, or None"
            )
        upd: dict[str, Any] = update  # pyright: ignore[reportUnknownVariableType]
        if not upd:
            return state, False
        fields = self.fields
        if not upd.keys() <= fields:
            unknown = upd.keys() - fields
            raise RunError(
                f"node {node!r} updated unknown field(s) {', '.join(sorted(unknown))}; "
                f"{self.state_type.__name__} has {', '.join(sorted(self.fields))}"
            )
        values = dict(state.__dict__)
        slow: list[str] | None = None
        exact = self.exact
        for k, v in upd.items():
            if reduce and k in self.reducers:
                v = self.reducers[k].fn(getattr(state, k), v)
            values[k] = v
            if type(v) is not exact.get(k):
                slow = [k] if slow is None else [*slow, k]
        # A shallow copy without re-validating the unchanged fields (model_copy is 3x slower).
        new = _new(self.state_type)
        _set(new, "__dict__", values)
        fields_set: set[str] = state.__pydantic_fields_set__
        if slow or not upd.keys() <= fields_set:
            fields_set = fields_set | upd.keys()
        _set(new, "__pydantic_fields_set__", fields_set)
        _set(new, "__pydantic_extra__", state.__pydantic_extra__)
        private = state.__pydantic_private__
        _set(new, "__pydantic_private__", None if private is None else dict(private))
        try:
            for k in slow or ():
                self.validator.validate_assignment(new, k, values[k])
        except ValidationError as exc:
            e = exc.errors(include_url=False)[0]
            raise RunError(
                f"node {node!r} wrote an invalid value to {'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            ) from None
        return new, True

    def _next(self, node: str, state: BaseModel) -> str:
        route = self.graph.routes.get(node)
        if route is None:
            return self.static[node]
        router, mapping = route
        key = router(state)
        target = mapping.get(key) if isinstance(key, str) else None
        if target is None:
            raise RunError(
                f"route from {node!r} returned {key!r}; expected one of {', '.join(map(repr, mapping))}"
            )
        return target


_new = object.__new__
_set = object.__setattr__


def _update_json(update: Any) -> Any:
    if type(update) is dict:
        return update  # pyright: ignore[reportUnknownVariableType]
    if isinstance(update, BaseModel):
        return update.model_dump(mode="json")
    return update


def _revive(wf: Any, output: Any) -> Any:
    if wf.kind == "graph":
        return wf.graph.state.model_validate(output)
    adapter = getattr(wf, "_adapter", None)
    return adapter.validate_python(output) if adapter is not None else output
