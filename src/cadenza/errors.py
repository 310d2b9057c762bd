"""Every exception Cadenza raises, under one root.

```
CadenzaError
├── UserError                     misuse: fix the code or the command, then retry
│   ├── ConfigError (ValueError)      bad option, unknown model string, missing extra
│   ├── ToolDefinitionError (TypeError) a function that cannot become a tool
│   ├── ToolVersionError              a required tool is missing or has no compatible version
│   ├── GraphValidationError          compile() found problems (all of them, by node)
│   ├── WorkflowLoadError             `path/file.py:name` could not be loaded
│   ├── RunNotFound (LookupError)     no run with that id in the store
│   ├── ResumeError                   the run cannot be resumed (finished, or awaits an answer)
│   ├── PolicyError (ValueError)      a policy that cannot load: every bad rule, named
│   ├── ApprovalError                 no such pending approval, or it was already decided
│   └── InputRejected                 a guard refused the run's input (size, moderation)
├── RunError                      the run failed while executing
│   ├── BudgetExceeded                a step/tool-call/token/cost/time budget would be overspent
│   ├── ToolTimeout                   a tool ran past its timeout
│   ├── ToolError                     a tool raised (wraps the original in __cause__)
│   ├── ModelError                    the model failed or gave an unusable answer
│   │   ├── ScriptExhausted               a ScriptedModel was asked more than its script holds
│   │   └── ProviderError                 a hosted model's API failed (status, retryable, Retry-After)
│   ├── OutputValidationError         the final answer never matched output_type
│   ├── LoopLimitExceeded             a graph node or graph ran more times than allowed
│   └── ReplayDivergence              a replay differs from the recording (step, expected, got)
└── StoreError                    the state store failed or holds inconsistent data
```

Control-flow signals (`GraphInterrupt`, and `ApprovalRequired` under it) derive from `CadenzaSignal`, a `BaseException`, so an
`except CadenzaError` (or `except Exception`) in user code never swallows them.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApprovalError",
    "ApprovalRequired",
    "BudgetExceeded",
    "CadenzaError",
    "CadenzaSignal",
    "ConfigError",
    "GraphInterrupt",
    "GraphValidationError",
    "InputRejected",
    "LoopLimitExceeded",
    "ModelError",
    "OutputValidationError",
    "PolicyError",
    "ProviderError",
    "ReplayDivergence",
    "ResumeError",
    "RunError",
    "RunNotFound",
    "ScriptExhausted",
    "StoreError",
    "ToolDefinitionError",
    "ToolError",
    "ToolTimeout",
    "ToolVersionError",
    "UserError",
    "WorkflowLoadError",
]


class CadenzaError(Exception):
    """Root of every error Cadenza raises."""


class UserError(CadenzaError):
    """The caller misused Cadenza; the message says what to change."""


class ConfigError(UserError, ValueError):
    """An option, model string or environment setting is invalid, or an extra is missing."""


class ToolDefinitionError(UserError, TypeError):
    """A function cannot be turned into a tool (missing annotations, bad version, ...)."""


class ToolVersionError(UserError):
    """A workflow requires a tool that is missing or has no version matching the constraint."""

    def __init__(self, name: str, constraint: str, found: list[str]) -> None:
        self.name = name
        """The tool's name."""
        self.constraint = constraint
        """The version constraint that could not be met ('' for any version)."""
        self.found = found
        """The versions the registry holds for this name (empty when the tool is unknown)."""
        want = f"{name}{constraint}" if constraint else name
        if found:
            msg = (
                f"tool {want!r} is required but no registered version matches "
                f"(found: {', '.join(found)}); register a compatible version or relax the "
                "constraint"
            )
        else:
            msg = f"tool {want!r} is required but not registered; add it to the ToolRegistry"
        super().__init__(msg)


class GraphValidationError(UserError):
    """`Graph.compile()` found one or more problems; `problems` lists them all."""

    def __init__(self, graph: str, problems: list[str]) -> None:
        self.problems = problems
        """One readable line per problem, each naming the node or edge at fault."""
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"graph {graph!r} is invalid ({len(problems)} problem(s)):\n{lines}")


class WorkflowLoadError(UserError):
    """A workflow reference such as `flows.py:support` could not be loaded."""


class RunNotFound(UserError, LookupError):
    """No run with the given id exists in the store."""


class RunError(CadenzaError):
    """A run failed while executing. `run_id` is set once the run is known."""

    run_id: str | None = None


class BudgetExceeded(RunError):
    """The next model or tool call would overspend a budget; nothing was spent on it."""

    def __init__(self, kind: str, limit: float, used: float, detail: str = "") -> None:
        self.kind = kind
        """Which budget: steps, tool_calls, tokens, cost or time."""
        self.limit = limit
        """The configured limit."""
        self.used = used
        """What the run had used when it stopped."""
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"{kind} budget exhausted: used {used:g} of {limit:g}{extra}; the run stopped "
            "before the next call and was checkpointed; raise the limit and resume it"
        )


class ToolTimeout(RunError):
    """A tool call ran longer than its timeout."""


class ToolError(RunError):
    """A tool raised; the original exception is the `__cause__`."""


class ModelError(RunError):
    """A model call failed or returned something unusable."""


class ScriptExhausted(ModelError):
    """A `ScriptedModel` received more requests than its script has responses."""


class ProviderError(ModelError):
    """A model provider's API failed.

    It carries the HTTP status (None for connection errors and timeouts), whether retrying may
    help, and how long the server asked to wait.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.provider = provider
        """The provider prefix, e.g. openai or anthropic."""
        self.status = status
        """The HTTP status code, or None when no response arrived (timeout, reset)."""
        self.retryable = retryable
        """Whether the same request may succeed later (408, 409, 429 except spend limits, 5xx,
        connection errors and timeouts)."""
        self.retry_after = retry_after
        """Seconds the server asked to wait (Retry-After), if it said."""
        super().__init__(message)


class OutputValidationError(RunError):
    """The model's final answer did not validate against `output_type`, even after retries."""


class LoopLimitExceeded(RunError):
    """A graph node (or the whole graph) ran more times than its bound allows."""


class ResumeError(UserError):
    """A run cannot be resumed: it already finished, or it waits for an answer not given."""


class PolicyError(UserError, ValueError):
    """A policy could not be loaded: unknown tools, malformed predicates (all listed, by rule)."""

    def __init__(self, problems: list[str], source: str = "policy") -> None:
        self.problems = problems
        """One line per problem, each naming the rule."""
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} has {len(problems)} problem(s):\n{lines}")


class ApprovalError(UserError):
    """No pending approval with that id, or it was already decided."""


class InputRejected(UserError):
    """A guard refused the run's input before anything was spent (too large, moderation)."""


class ReplayDivergence(RunError):
    """Replaying a recorded run produced something different from the recording."""

    def __init__(self, step: int, what: str, expected: Any, got: Any) -> None:
        self.step = step
        """The step (1-based) at which the replay first diverged."""
        self.what = what
        """What was compared, e.g. 'node', 'state update', 'model request tools'."""
        self.expected = expected
        """What the recording holds."""
        self.got = got
        """What the current code produced."""
        super().__init__(
            f"replay diverged at step {step} ({what}): expected {expected!r}, got {got!r}"
        )


class StoreError(CadenzaError):
    """The state store failed, or holds data Cadenza cannot read."""


class CadenzaSignal(BaseException):
    """Base of control-flow signals; never an error, never caught by `except Exception`."""


class GraphInterrupt(CadenzaSignal):
    """Raised by `interrupt()` inside a node to pause the run for human input."""

    def __init__(self, prompt: Any) -> None:
        self.prompt = prompt
        """What the node asks the human (any JSON value)."""
        super().__init__(prompt)


class ApprovalRequired(GraphInterrupt):
    """Raised by the Gate: a tool call needs a human decision; the run pauses durably."""
