"""What every `cadenza` sub-command shares: consoles, common options, error handling, stores."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NoReturn, TypeVar, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import CadenzaError, RunError, UserError
from .stores import StateStore, open_store

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="Store URL: a SQLite path, sqlite:///path or memory: "
                 "(default: $CADENZA_STORE or .cadenza/cadenza.db)."),
]  # fmt: skip
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; turn every failure into one readable line and an exit code."""
    try:
        return asyncio.run(_awaited(fn))
    except typer.Exit:
        raise
    except UserError as exc:
        fail(str(exc), 2)
    except RunError as exc:
        rid = f" (run {exc.run_id})" if exc.run_id else ""
        fail(f"{type(exc).__name__}{rid}: {exc}", 1)
    except CadenzaError as exc:
        fail(f"{type(exc).__name__}: {exc}", 1)
    except KeyboardInterrupt:
        fail("interrupted; resume the run with `cadenza runs resume ID`", 130)
    except Exception as exc:
        if os.environ.get("CADENZA_DEBUG"):
            raise
        fail(
            f"unexpected {type(exc).__name__}: {exc} (set CADENZA_DEBUG=1 to see the traceback)",
            1,
        )


async def _awaited(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


def cli_store(url: str | None) -> StateStore:
    try:
        return open_store(url)
    except CadenzaError as exc:
        fail(str(exc))


def load_wf(ref: str) -> Any:
    from ._loader import load_workflow

    try:
        return load_workflow(ref)
    except CadenzaError as exc:
        fail(str(exc))


def jsonable(value: Any) -> Any:
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value, fallback=str)


def listed_elsewise(rows: list[Any], as_json: bool, empty: str) -> bool:
    """Print `rows` as JSON, or say there are none; False when a table is still wanted."""
    if as_json:
        out.print_json(data=[jsonable(r) for r in rows])
        return True
    if not rows:
        err.print(empty)
        return True
    return False


def print_table(table: Table) -> None:
    # A pipe gets whole lines (ids are copied from there), a terminal its own width.
    (out if out.is_terminal else Console(width=10_000, highlight=False)).print(table)


def clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def short(value: Any, n: int = 80) -> str:
    """`value` as text, cut to `n` characters and escaped for Rich markup."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return escape(text if len(text) <= n else text[: n - 1] + "…")


def json_object(text: str, not_json: str, not_object: str) -> dict[str, Any]:
    """Parse an option's JSON object, or fail with `not_json (why)` / `not_object`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{not_json} ({exc})")
    if not isinstance(value, dict):
        fail(not_object)
    return cast(dict[str, Any], value)
