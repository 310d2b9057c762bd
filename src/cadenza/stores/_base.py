"""The `StateStore` protocol and the records it keeps: runs, events, checkpoints, messages,
idempotency records of side-effecting tool calls and the append-only audit log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..messages import Message

RunStatus = Literal["running", "interrupted", "finished", "failed"]


@dataclass(slots=True)
class RunRecord:
    """One execution of a workflow."""

    id: str
    """Unique run id."""
    workflow: str
    """The workflow's name."""
    kind: str
    """'agent' or 'graph'."""
    status: RunStatus = "running"
    """Where the run stands."""
    thread: str | None = None
    """Conversation thread the run belongs to."""
    ref: str | None = None
    """How to load the workflow again (`path/file.py:name`), for resume from the CLI."""
    input: Any = None
    """The run's input (JSON)."""
    output: Any = None
    """The final output (JSON) once finished."""
    error: dict[str, Any] | None = None
    """`{"type", "message"}` once failed."""
    principal: dict[str, Any] = field(default_factory=lambda: {})
    """Who the run acts for."""
    created_at: float = 0.0
    """Unix time the run started."""
    updated_at: float = 0.0
    """Unix time of the last status change."""


@dataclass(slots=True)
class Event:
    """One typed entry of a run's journal."""

    run_id: str
    """The run."""
    seq: int
    """Position in the run's journal, from 1."""
    type: str
    """e.g. run.started, node.entered, model.responded, tool.returned, run.finished."""
    ts: float
    """Unix time."""
    data: dict[str, Any]
    """Type-specific payload (JSON)."""


@dataclass(slots=True)
class Checkpoint:
    """What a run needs to continue after its last completed step."""

    seq: int
    """Step number the checkpoint closes."""
    data: dict[str, Any]
    """Workflow-specific position (small JSON)."""
    state: Any = None
    """Graph state at this point (a model in memory, JSON from durable stores)."""
    messages: list[Message] = field(default_factory=lambda: [])
    """The run's conversation at this point (rebuilt from the incremental message log)."""


@dataclass(slots=True)
class ToolRecord:
    """Journal of one side-effecting tool call, keyed by `run:step:call`."""

    key: str
    """Idempotency key."""
    run_id: str
    """The run."""
    status: Literal["started", "done"]
    """'started' before execution, 'done' once the result is known."""
    result: Any = None
    """The tool result (a `ToolResult` as JSON) once done."""


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One entry of the audit log, exactly as stored (see `cadenza.audit`)."""

    seq: int
    """Position in the log, from 1, across all runs."""
    prev: str
    """The previous entry's hash (64 zeros for the first)."""
    hash: str
    """sha256 of `prev`, `seq` and `body` (hex)."""
    body: str
    """The entry as canonical JSON, `seq` included."""


_NONE: list[Any] = []


class Batch:
    """Everything one step writes, committed in one transaction."""

    __slots__ = (
        "audit",
        "checkpoint",
        "events",
        "messages",
        "msg_start",
        "run",
        "run_new",
        "state_changed",
        "tool_records",
    )

    def __init__(self) -> None:
        self.run: RunRecord | None = None
        self.run_new = False
        """`run` is written for the first time (else only its status, output, error changed)."""
        self.events: list[Event] = []
        # Shared empty lists until a step has messages or tool records: never mutated in
        # place (writers assign new lists), so most batches allocate one list, not three.
        self.messages: list[Message] = _NONE
        self.msg_start = 0
        self.checkpoint: Checkpoint | None = None
        self.state_changed = False
        self.tool_records: list[ToolRecord] = _NONE
        self.audit: list[dict[str, Any]] = _NONE
        """Audit entry bodies (JSON, with "ts"); the store numbers and chains them."""

    def reset(self) -> None:
        """Empty the batch for the next step (stores never keep references to its lists)."""
        self.run = None
        self.run_new = False
        self.events.clear()
        self.messages = _NONE
        self.msg_start = 0
        self.checkpoint = None
        self.state_changed = False
        self.tool_records = _NONE
        self.audit = _NONE


@runtime_checkable
class StateStore(Protocol):
    """Where runs live. Every backend passes the same conformance suite (tests/stores)."""

    async def commit(self, run_id: str, batch: Batch) -> None:
        """Atomically write a step: run record, events, new messages, checkpoint, tool records.

        The batch is reused after the call returns: copy what you keep, never hold its lists.

        `batch.messages` are appended at index `batch.msg_start`; `batch.checkpoint.state` is
        stored only when `batch.state_changed` (otherwise the previous state stands).

        `batch.audit` entries get the next global seqs and are chained to the log's head in
        the same transaction (`cadenza.audit._chain.seal`), even with several writers.
        """
        ...

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or None."""
        ...

    async def list_runs(
        self, *, thread: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """Runs, newest first, optionally filtered."""
        ...

    async def events(self, run_id: str, *, after: int = 0) -> list[Event]:
        """The run's journal entries with seq > after, in order."""
        ...

    async def checkpoint(self, run_id: str) -> Checkpoint | None:
        """The latest checkpoint, with its state and messages rebuilt; None if there is none."""
        ...

    async def messages(self, run_id: str) -> list[Message]:
        """The run's full conversation log."""
        ...

    async def tool_record(self, key: str) -> ToolRecord | None:
        """The idempotency record for a side-effecting call, or None."""
        ...

    async def audit_entries(self, *, after: int = 0, limit: int | None = None) -> list[AuditRow]:
        """Audit log rows with seq > after, in seq order, as stored (at most `limit`)."""
        ...

    async def audit_head(self) -> tuple[int, str]:
        """The last audit entry's seq and hash; `(0, 64 zeros)` when the log is empty."""
        ...

    async def charge(
        self, key: str, amount: float, limit: float | None = None
    ) -> tuple[bool, float]:
        """Atomically add `amount` to the counter `key` (quotas; see `cadenza.quotas`).

        With a `limit`, nothing is added when the total would exceed it. Returns whether it was
        added, and the counter's value afterwards. `charge(key, 0)` reads a counter.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
