"""`cadenza audit`: verify the audit log against its signed checkpoints, sign its head, explain a run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ._cli_common import JsonOpt, StoreOpt, fail, out, run_async
from .audit import AuditSettings, Checkpointer, store_path, verify
from .errors import CadenzaError
from .stores import DEFAULT_PATH, StateStore, open_store

audit_app = typer.Typer(
    help="The tamper-evident audit log of tool-call decisions: verify, sign, explain runs.",
    no_args_is_help=True,
)

CheckpointsOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoints",
        help="The signed checkpoints file (default: $CADENZA_AUDIT_CHECKPOINTS or "
        "<db>.audit-checkpoints.jsonl).",
    ),
]


def _existing_store(url: str | None) -> StateStore:
    """The store a URL names; an error (not a new empty database) when its file is missing."""
    url = url or os.environ.get("CADENZA_STORE") or DEFAULT_PATH
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    if url != "memory:" and "://" not in path and not Path(path).exists():
        fail(f"no store at {path}; pass --store PATH (or set CADENZA_STORE)")
    try:
        return open_store(url)
    except CadenzaError as exc:
        fail(str(exc))


@audit_app.command("verify")
def verify_cmd(
    store: StoreOpt = None,
    checkpoints: CheckpointsOpt = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="PEM public key of the checkpoints (default: <key>.pub of $CADENZA_AUDIT_KEY "
            "or ~/.config/cadenza/audit-ed25519.pem).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check that no audit entry was edited, re-hashed, deleted, reordered or cut off."""
    st = _existing_store(store)
    if checkpoints is None:
        default = AuditSettings.for_store(store_path(st)).checkpoints
        if default is not None and default.exists():
            checkpoints = default
    report = run_async(lambda: verify(st, checkpoints=checkpoints, public_key=public_key))
    if as_json:
        out.print_json(data=report.to_dict())
    else:
        out.print(escape(report.describe()))
        if checkpoints is None and report.ok:
            out.print(
                "note: no checkpoints file, so only the hash chain was checked (a rewrite that "
                "recomputes every hash would pass); pass --checkpoints PATH"
            )
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def checkpoint_cmd(
    store: StoreOpt = None,
    checkpoints: CheckpointsOpt = None,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="The Ed25519 private key, created if missing (default: $CADENZA_AUDIT_KEY "
            "or ~/.config/cadenza/audit-ed25519.pem).",
        ),
    ] = None,
) -> None:
    """Sign the audit log's head now, into the checkpoints file."""
    st = _existing_store(store)
    settings = AuditSettings.for_store(store_path(st))
    path = checkpoints or settings.checkpoints
    if path is None:
        fail("an in-memory store keeps no checkpoints; pass --checkpoints PATH")
    signer = Checkpointer(st, key=key or settings.key, path=path)
    cp = run_async(signer.sign)
    if cp is None:
        seq, _ = run_async(st.audit_head)
        out.print(f"nothing new to sign: the log's head (entry {seq}) is already signed or empty")
        return
    out.print(f"signed entry {cp['seq']} (hash {cp['hash'][:16]}…) into {escape(str(path))}")


@audit_app.command("explain")
def explain_cmd(
    run_id: Annotated[str, typer.Argument(help="The run to explain.")],
    store: StoreOpt = None,
) -> None:
    """Tell in plain language what a run did and why: tools, decisions, rules, approvers."""
    from .audit.explain import explain

    st = _existing_store(store)
    out.print(run_async(lambda: explain(st, run_id)), markup=False, highlight=False)
