"""`Graph`: typed-state workflows, validated by `compile()` and drawn as Mermaid.

Nodes, static edges, conditional routes, bounded loops, fan-out with reducers, sub-graphs and
human interrupts.

```python
g = Graph(State)
g.add_node("classify", classify).add_node("answer", answer)
g.add_edge(START, "classify")
g.add_route("classify", lambda s: s.intent, {"faq": "answer", "other": END})
g.add_edge("answer", END)
app = g.compile()
```
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from pydantic import BaseModel

from ._run import NO_ANSWER
from .errors import ConfigError, GraphInterrupt, GraphValidationError
from .models import resolve_model
from .safety import Guards, Policy, load_policy
from .tools import Tool, ToolRegistry, resolve_tools

if TYPE_CHECKING:
    from ._run import Listener
    from .budgets import Budget
    from .context import Principal
    from .models import Model
    from .runtime import RunResult
    from .stores import StateStore

__all__ = ["END", "START", "CompiledGraph", "Graph", "Reducer", "interrupt"]

START = "__start__"
"""The virtual node a graph starts from."""
END = "__end__"
"""The virtual node that ends a run."""

S = TypeVar("S", bound=BaseModel)


@dataclass(slots=True, frozen=True)
class Reducer:
    """Declares how parallel (or successive) writes to a state field combine.

    `items: Annotated[list[str], Reducer(operator.add)] = []` appends instead of replacing.
    """

    fn: Callable[[Any, Any], Any]
    """`fn(current, update) -> new value`."""


class NodeSpec:
    """One node as declared (internal)."""

    __slots__ = (
        "fan_out",
        "fn",
        "input",
        "is_async",
        "kind",
        "max_visits",
        "name",
        "output",
        "simple",
        "takes_ctx",
        "workflow",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.kind = "function"  # function | agent | graph
        self.fn: Callable[..., Any] | None = None
        self.workflow: Any = None
        self.is_async = False
        self.takes_ctx = False
        self.max_visits: int | None = None
        self.fan_out: Callable[[Any], Sequence[Any]] | None = None
        self.input: Callable[[Any], Any] | None = None
        self.output: str | Callable[[Any, Any], Any] | None = None
        self.simple = False
        """A plain `fn(state)` function node: the executor calls it directly."""


class Graph(Generic[S]):
    """A workflow of nodes over a typed state.

    Args:
        state: The pydantic model every node reads; nodes return updates to it.
        name: Recorded with every run.
        max_steps: Bound on node executions per run (guards every loop).
        input_key: Field that a plain-text input fills (e.g. from the CLI).
        output_key: Field the CLI shows as the answer.
        tools: Tools (or requirement strings) that nodes may call through the Gate with
            `ctx.call_tool(name, **arguments)`.
        registry: Where requirement strings are resolved.
        policy: Decides every tool call of the run, its agent nodes' included (allow, deny,
            or ask a human): a `Policy` or a YAML/TOML file, checked against `tools` now.
        guards: Input, argument and output guards (default: `Guards()`).

    """

    def __init__(
        self,
        state: type[S],
        *,
        name: str = "graph",
        max_steps: int = 100,
        input_key: str | None = None,
        output_key: str | None = None,
        tools: Iterable[Tool | str] = (),
        registry: ToolRegistry | None = None,
        policy: Policy | str | Path | None = None,
        guards: Guards | None = None,
    ) -> None:
        if not (isinstance(state, type) and issubclass(state, BaseModel)):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ConfigError(f"Graph state must be a pydantic BaseModel subclass, got {state!r}")
        if input_key is not None and input_key not in state.model_fields:
            raise ConfigError(f"input_key {input_key!r} is not a field of {state.__name__}")
        self.state = state
        self.tools = resolve_tools(tools, registry)
        """The tools nodes may call with `ctx.call_tool` (resolved now: fails at start-up)."""
        self.policy = load_policy(policy, self.tools)
        self.guards = guards
        self.name = name
        self.max_steps = max_steps
        self.input_key = input_key
        if output_key is not None and output_key not in state.model_fields:
            raise ConfigError(f"output_key {output_key!r} is not a field of {state.__name__}")
        self.output_key = output_key
        """The field the CLI prints as the run's answer (`--json` prints the whole state)."""
        self.nodes: dict[str, NodeSpec] = {}
        self.edges: list[tuple[str, str]] = []
        self.routes: dict[str, tuple[Callable[[Any], Any], dict[str, str]]] = {}
        self._problems: list[str] = []

    def add_node(
        self,
        name: str,
        action: Any,
        *,
        max_visits: int | None = None,
        fan_out: Callable[[S], Sequence[Any]] | None = None,
        input: Callable[[S], Any] | None = None,
        output: str | Callable[[Any, S], Any] | None = None,
    ) -> Graph[S]:
        """Add a node.

        Args:
            name: Unique node name.
            action: A function `(state[, ctx]) -> update` (sync or async), an `Agent`, or
                another `Graph`/`CompiledGraph` (a sub-graph). An update is a dict of fields, a
                whole new state, or None.
            max_visits: Bound on how often this node may run in one run.
            fan_out: Run the function once per item of `fan_out(state)`, concurrently, as
                `(state, item[, ctx]) -> update`; updates merge through field reducers.
            input: For agents, the prompt from the state; for sub-graphs, the sub-graph's input.
            output: For agents and sub-graphs: a field name that receives the result, or
                `(result, state) -> update`. A sub-graph over the same state needs neither.

        """
        if name in (START, END) or not name:
            self._problems.append(f"node name {name!r} is reserved or empty")
            return self
        if name in self.nodes:
            self._problems.append(f"node {name!r} is added twice")
            return self
        spec = NodeSpec(name)
        spec.max_visits, spec.fan_out, spec.input, spec.output = max_visits, fan_out, input, output
        from .agent import Agent

        if isinstance(action, Agent):
            spec.kind, spec.workflow = "agent", action
            if input is None or output is None:
                self._problems.append(
                    f"agent node {name!r} needs input= (state -> prompt) and output= (a field "
                    "or a function) to connect it to the state"
                )
        elif isinstance(action, Graph | CompiledGraph):
            compiled: Any = action.compile() if isinstance(action, Graph) else action  # pyright: ignore[reportUnknownVariableType]
            sub = cast("CompiledGraph[Any]", compiled)
            spec.kind, spec.workflow = "graph", sub
            if sub.graph.state is not self.state and (input is None or output is None):
                self._problems.append(
                    f"sub-graph node {name!r} has a different state type; give input= and output="
                )
        elif callable(action):
            spec.fn = action
            spec.is_async = inspect.iscoroutinefunction(action)
            n_params = len(inspect.signature(action).parameters)
            spec.takes_ctx = n_params >= (3 if fan_out else 2)
            spec.simple = fan_out is None and not spec.takes_ctx
        else:
            self._problems.append(f"node {name!r}: {action!r} is not a function, Agent or Graph")
            return self
        self.nodes[name] = spec
        return self

    def add_edge(self, source: str, target: str) -> Graph[S]:
        """Always go from `source` to `target` (use START and END for the ends)."""
        self.edges.append((source, target))
        return self

    def add_route(
        self,
        source: str,
        router: Callable[[S], Any],
        targets: Sequence[str] | dict[str, str],
    ) -> Graph[S]:
        """Choose the next node after `source` at run time.

        Args:
            source: The node the route leaves from.
            router: `state -> key`; the key is a node name (or END), or a key of `targets`.
            targets: The possible next nodes, or a mapping from router keys to nodes.

        """
        if source in self.routes:
            self._problems.append(f"node {source!r} has two routes; merge them into one router")
        mapping = dict(targets) if isinstance(targets, dict) else {t: t for t in targets}
        self.routes[source] = (router, mapping)
        return self

    def add_sequence(self, *names: str) -> Graph[S]:
        """Static edges through `names` in order (a linear chain)."""
        for a, b in itertools.pairwise(names):
            self.add_edge(a, b)
        return self

    def compile(self) -> CompiledGraph[S]:
        """Validate the graph and freeze it for running.

        Tool requirements of agent nodes were already resolved when each `Agent` was built.

        Raises:
            GraphValidationError: listing every problem found, each naming its node.

        """
        problems = list(self._problems)
        known = set(self.nodes)
        nexts: dict[str, list[str]] = {}
        seen_edges: set[tuple[str, str]] = set()
        for src, dst in self.edges:
            if (src, dst) in seen_edges:
                problems.append(f"duplicate edge {src} -> {dst}")
                continue
            seen_edges.add((src, dst))
            if src != START and src not in known:
                problems.append(f"edge {src} -> {dst} starts at unknown node {src!r}")
            if dst != END and dst not in known:
                problems.append(f"edge {src} -> {dst} points to unknown node {dst!r}")
            if src == END:
                problems.append(f"edge {src} -> {dst} leaves END")
            nexts.setdefault(src, []).append(dst)
        for src, (_, mapping) in self.routes.items():
            if src not in known:
                problems.append(f"route from unknown node {src!r}")
            for key, dst in mapping.items():
                if dst != END and dst not in known:
                    problems.append(
                        f"route from {src!r} has target {dst!r} (key {key!r}), which is not a node"
                    )
            if src in nexts:
                problems.append(
                    f"node {src!r} has both a route and a static edge; put every target in the route"
                )
        for src, dsts in nexts.items():
            if len(dsts) > 1:
                problems.append(
                    f"node {src!r} has {len(dsts)} static edges ({', '.join(dsts)}); a node has one "
                    "next step: use add_route to choose, or fan_out= for parallel work"
                )
        if START not in nexts:
            problems.append("no edge from START; add_edge(START, first_node)")
        for name in self.nodes:
            if name not in nexts and name not in self.routes:
                problems.append(
                    f"node {name!r} has no outgoing edge; add one (to END if it is the last)"
                )
        succ: dict[str, set[str]] = {n: set(d) for n, d in nexts.items()}
        for src, (_, mapping) in self.routes.items():
            succ.setdefault(src, set()).update(mapping.values())
        reach = _closure(START, succ)
        for name in self.nodes:
            if name not in reach:
                problems.append(f"node {name!r} is unreachable from START")
        pred: dict[str, set[str]] = {}
        for a, bs in succ.items():
            for b in bs:
                pred.setdefault(b, set()).add(a)
        can_end = _closure(END, pred)
        stuck = sorted(n for n in reach if n in known and n not in can_end)
        if stuck and not any("no outgoing edge" in p for p in problems):
            problems.append(
                f"node(s) {', '.join(stuck)} can never reach END (a cycle with no way out); "
                "add a route to END"
            )
        if problems:
            raise GraphValidationError(self.name, problems)
        first = nexts[START][0]
        static = {src: dsts[0] for src, dsts in nexts.items() if src != START}
        return CompiledGraph(self, first, static)

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart (without validating it)."""
        return _mermaid(self)


def _closure(start: str, succ: dict[str, set[str]]) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for b in succ.get(todo.pop(), ()):
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return seen


def _mermaid(g: Graph[Any]) -> str:
    def ref(n: str) -> str:
        if n == START:
            return "__start__([START])"
        if n == END:
            return "__end__([END])"
        spec = g.nodes.get(n)
        label = (
            n
            if spec is None
            else {"agent": f"{n} (agent)", "graph": f"{n} (sub-graph)"}.get(spec.kind, n)
        )
        if spec is not None and spec.fan_out is not None:
            label += " ×N"
        return f'{_mid(n)}["{label}"]'

    lines = ["flowchart TD"]
    for src, dst in g.edges:
        lines.append(f"    {ref(src)} --> {ref(dst)}")
    for src, (_, mapping) in g.routes.items():
        for key, dst in mapping.items():
            label = key.replace('"', "'")
            lines.append(f'    {ref(src)} -. "{label}" .-> {ref(dst)}')
    return "\n".join(lines)


def _mid(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


class CompiledGraph(Generic[S]):
    """A validated graph, ready to run. Built by `Graph.compile()`."""

    def __init__(self, graph: Graph[S], first: str, static: dict[str, str]) -> None:
        from ._graph_run import GraphRunner

        self.graph = graph
        self._runner = GraphRunner(graph, first, static)

    @property
    def name(self) -> str:
        """The graph's name."""
        return self.graph.name

    @property
    def kind(self) -> str:
        """Always 'graph'."""
        return "graph"

    @property
    def policy(self) -> Policy | None:
        """The graph's policy, if any."""
        return self.graph.policy

    @property
    def guards(self) -> Guards | None:
        """The graph's guards, if any."""
        return self.graph.guards

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart."""
        return _mermaid(self.graph)

    def _input_json(self, input: Any) -> Any:
        return self._runner.input_json(input)

    async def _drive(self, run: Any, cp: Any, input: Any, answer: Any) -> tuple[Any, Any]:
        return await self._runner.drive(run, cp, input, answer)

    async def run(
        self,
        input: S | dict[str, Any] | str,
        *,
        store: StateStore | None = None,
        thread: str | None = None,
        model: str | Model | None = None,
        deps: Any = None,
        principal: Principal | None = None,
        budget: Budget | None = None,
        run_id: str | None = None,
        listeners: list[Listener] | None = None,
        ref: str | None = None,
        policy: Policy | None = None,
        stream: bool = False,
    ) -> RunResult:
        """Run the graph from START to END (or to an interrupt).

        Args:
            input: The initial state: a model instance, a dict of fields, or text for the
                graph's `input_key`.
            store: Where the run is journaled (default: the embedded SQLite store).
            thread: Continue from the final state of the thread's previous run.
            model: Overrides the model of every agent node.
            deps: Dependencies for nodes and tools (`RunContext.deps`).
            principal: Who the run acts for.
            budget: Limits shared by every agent in the run.
            run_id: Use this id instead of a fresh one.
            listeners: Called with every journal event as it happens.
            ref: How to load this graph again (`file.py:name`), for resume from the CLI.
            policy: Replaces the graph's policy for this run (checked against its tools).
            stream: Ask models for streams; listeners get `model.delta` events (seq 0, not
                journaled) as text arrives, and `model.tool_call` events.

        """
        from . import runtime

        if model is not None:
            resolve_model(model)  # an unknown model fails before the run starts
        opts = runtime.RunOptions(
            store=store, thread=thread, principal=principal, deps=deps, budget=budget,
            run_id=run_id, ref=ref, listeners=listeners, model=model,
            policy=load_policy(policy, self.graph.tools), stream=stream,
        )  # fmt: skip
        if thread is not None:
            return await runtime.start(self, input, opts)  # validated once merged with the thread
        record_input = input if type(input) is dict else self._runner.input_json(input)
        state = self._runner.validate_input(input)  # bad input fails before the run starts
        return await runtime.start(self, state, opts, input_json=record_input)

    def run_sync(self, input: S | dict[str, Any] | str, **kwargs: Any) -> RunResult:
        """`run` for synchronous code (starts its own event loop)."""
        return asyncio.run(self.run(input, **kwargs))

    async def resume(
        self,
        run_id: str,
        *,
        answer: Any = NO_ANSWER,
        store: StateStore | None = None,
        model: str | Model | None = None,
        deps: Any = None,
        budget: Budget | None = None,
        listeners: list[Listener] | None = None,
        policy: Policy | None = None,
    ) -> RunResult:
        """Continue a run after a crash, a failure, an interrupt or a wait for approvals.

        Give the `answer` an `interrupt()` awaits; a run waiting for approvals resumes once
        every one of them is decided.
        """
        from . import runtime

        opts = runtime.RunOptions(
            store=store, deps=deps, budget=budget, model=model, listeners=listeners,
            policy=load_policy(policy, self.graph.tools),
        )  # fmt: skip
        has_answer = answer is not NO_ANSWER
        return await runtime.resume(
            self, run_id, opts, answer=answer if has_answer else None, has_answer=has_answer
        )

    async def replay(self, run_id: str, *, store: StateStore | None = None) -> RunResult:
        """Re-drive a recorded run with no model or tool call.

        Raises:
            ReplayDivergence: the graph's code now behaves differently from the recording.

        """
        from . import runtime

        return await runtime.replay(self, run_id, runtime.RunOptions(store=store))

    def __repr__(self) -> str:
        return f"<CompiledGraph {self.name} nodes={list(self.graph.nodes)}>"


def interrupt(prompt: Any) -> Any:
    """Pause the run until a human answers `prompt`; return the answer once resumed.

    Call it inside a node. The run is checkpointed with status 'interrupted'; resume it with
    `graph.resume(run_id, answer=...)` (or `cadenza runs resume ID --answer ...`), in any
    process, at any time. The node then runs again from its start and this call returns the
    answer, so code before it must be safe to repeat.
    """
    from ._graph_run import next_answer

    found, value = next_answer()
    if found:
        return value
    raise GraphInterrupt(prompt)
