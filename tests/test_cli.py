"""The `cadenza` command, driven for real: in-process through Typer's CliRunner and, for
process boundaries and tracebacks, as a subprocess of the installed console script.

Every invocation passes `--store` (a SQLite file in tmp_path) and runs with tmp_path as the
working directory, so the repository's default `.cadenza/` store is never touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cadenza import stores
from cadenza.cli import app

CADENZA = Path(sys.executable).parent / "cadenza"

FLOWS = '''
from pydantic import BaseModel

from cadenza import END, START, Agent, Budget, Graph, interrupt, tool
from cadenza.errors import ModelError
from cadenza.testing import ScriptedModel, call


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def _calculator(request):
    last = request.messages[-1]
    if last.role == "tool":
        return f"The sum is {last.tool_results[0].content}."
    a, b = (int(x) for x in last.text.split("+"))
    return call("add", a=a, b=b)


def _history(request):
    return " | ".join(m.text for m in request.messages if m.role == "user")


def _down(request):
    raise ModelError("provider returned HTTP 503")


def _crash(request):
    raise RuntimeError("connection reset by peer")


ScriptedModel(_calculator, name="cli_calculator")
ScriptedModel(_history, name="cli_history")
ScriptedModel(_down, name="cli_down")
ScriptedModel(_crash, name="cli_crash")

agent = Agent("scripted:cli_calculator", name="calculator", tools=[add])
stingy = Agent("scripted:cli_calculator", name="stingy", tools=[add], budget=Budget(max_steps=1))
flaky = Agent("scripted:cli_down", name="flaky")
crashy = Agent("scripted:cli_crash", name="crashy")


class Counter(BaseModel):
    n: int = 0


counter = Graph(Counter, name="counter")
counter.add_node("inc", lambda s: {"n": s.n + INC})
counter.add_node("double", lambda s: {"n": s.n * 2})
counter.add_edge(START, "inc").add_edge("inc", "double")
counter.add_route("double", lambda s: "done" if s.n >= 10 else "again", {"done": END, "again": "inc"})


class Ticket(BaseModel):
    text: str = ""
    priority: int = 0
    summary: str = ""
    approved: bool | None = None


triage = Graph(Ticket, name="triage", input_key="text")
triage.add_node("summarise", lambda s: {"summary": s.text.upper()})
triage.add_edge(START, "summarise").add_edge("summarise", END)


def _approve(s):
    answer = interrupt({"question": f"ship {s.text}?"})
    return {"approved": answer == "yes"}


approval = Graph(Ticket, name="approval", input_key="text")
approval.add_node("summarise", lambda s: {"summary": s.text.upper()})
approval.add_node("approve", _approve)
approval.add_sequence(START, "summarise", "approve", END)

not_a_workflow = {"name": "not a workflow"}
'''


def write_flows(path: Path, *, inc: int = 1, instructions: str = "") -> Path:
    src = FLOWS.replace("+ INC}", f"+ {inc}}}")
    if instructions:
        src = src.replace(
            'name="calculator", tools=[add])',
            f'name="calculator", instructions={instructions!r}, tools=[add])',
        )
    path.write_text(textwrap.dedent(src))
    return path


@dataclass
class Out:
    code: int
    stdout: str
    stderr: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def json(self) -> Any:
        return json.loads(self.stdout)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Cli:
    """Runs `cadenza` against one store in tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.store = str(tmp_path / "runs.db")
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("CADENZA_", "FORCE_COLOR"))
        }

    def __call__(self, *args: str, store: bool = True) -> Out:
        argv = [*args, "--store", self.store] if store else list(args)
        r = CliRunner().invoke(app, argv)
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            # an exception escaped the command: show it like the terminal would
            tb = "".join(traceback.format_exception(r.exception))
            return Out(r.exit_code, ANSI.sub("", r.stdout), ANSI.sub("", r.stderr) + tb)
        return Out(r.exit_code, ANSI.sub("", r.stdout), ANSI.sub("", r.stderr))

    def popen(self, *args: str, store: bool = True, env: dict[str, str] | None = None) -> Any:
        argv = [str(CADENZA), *args, *(["--store", self.store] if store else [])]
        return subprocess.Popen(
            argv,
            cwd=self.dir,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def proc(self, *args: str, store: bool = True, env: dict[str, str] | None = None) -> Out:
        p = self.popen(*args, store=store, env=env)
        stdout, stderr = p.communicate(timeout=60)
        return Out(p.returncode, stdout, stderr)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    monkeypatch.chdir(tmp_path)
    for var in ("CADENZA_STORE", "CADENZA_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    write_flows(tmp_path / "flows.py")
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    c = Cli(tmp_path)
    yield c
    # the loader imports workflow files for good: undo it, and close this test's store
    sys.path[:] = saved_path
    for name in set(sys.modules) - saved_modules:
        if name.startswith("_cadenza_wf_") or name.startswith("cz_cli_"):
            del sys.modules[name]
    for key in [k for k in stores._opened if k.startswith(str(tmp_path))]:  # pyright: ignore[reportPrivateUsage]
        asyncio.run(stores._opened.pop(key).close())  # pyright: ignore[reportPrivateUsage]
    assert not (tmp_path / ".cadenza").exists(), "a command ignored --store"


def assert_one_error_line(out: Out, code: int = 2) -> str:
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    assert out.code == code, f"exit {out.code}, stdout={out.stdout!r} stderr={out.stderr!r}"
    assert len(out.err_lines) == 1, out.stderr
    line = out.err_lines[0]
    assert line.startswith("error: "), line
    return line


def run_id_of(out: Out) -> str:
    """The run id from the 'run ID · N model call(s) · T tokens' line on stderr."""
    m = re.search(r"^run (\S+) · (\d+) model call", out.stderr, re.M)
    assert m, out.stderr
    return m.group(1)


# --- run ----------------------------------------------------------------------------------------


def test_run_agent_prints_the_answer(cli: Cli) -> None:
    out = cli("run", "flows.py:agent", "2+3")
    assert out.code == 0, out.stderr
    assert out.stdout == "The sum is 5.\n"
    rid = run_id_of(out)
    assert re.search(r"· 2 model call\(s\) · \d+ tokens", out.stderr)
    runs = cli("runs", "list", "--json").json()
    assert [(r["id"], r["status"], r["workflow"], r["kind"]) for r in runs] == [
        (rid, "finished", "calculator", "agent")
    ]
    assert runs[0]["ref"] == f"{cli.dir / 'flows.py'}:agent"  # absolute: resumable from anywhere


def test_run_json_output(cli: Cli) -> None:
    out = cli("run", "flows.py:agent", "20+22", "--json")
    assert out.code == 0, out.stderr
    data = out.json()
    assert set(data) >= {"run_id", "status", "output", "usage"}
    assert data["status"] == "finished"
    assert data["output"] == "The sum is 42."
    assert data["thread"] is None
    u = data["usage"]
    assert u["requests"] == 2
    assert u["input_tokens"] > 0 and u["output_tokens"] > 0
    # the usage is the journal's
    shown = cli("runs", "show", data["run_id"], "--json").json()
    assert shown["run"]["id"] == data["run_id"]
    responded = [e for e in shown["events"] if e["type"] == "model.responded"]
    assert sum(e["data"]["usage"]["input_tokens"] for e in responded) == u["input_tokens"]
    assert sum(e["data"]["usage"]["output_tokens"] for e in responded) == u["output_tokens"]


def test_run_model_override(cli: Cli) -> None:
    out = cli("run", "flows.py:agent", "what is 2+3?", "--model", "scripted:echo", "--json")
    assert out.code == 0, out.stderr
    data = out.json()
    assert data["output"] == "what is 2+3?"  # echoed, not computed by the calculator
    assert data["usage"]["requests"] == 1
    events = cli("runs", "show", data["run_id"], "--json").json()["events"]
    models = {e["data"]["model"] for e in events if e["type"].startswith("model.")}
    assert models == {"scripted"}  # the echo model, not scripted:cli_calculator


def test_run_thread_continues_the_conversation(cli: Cli) -> None:
    first = cli("run", "flows.py:agent", "1+2", "--thread", "t1")
    assert first.stdout == "The sum is 3.\n"
    second = cli("run", "flows.py:agent", "4+5", "-t", "t1", "-m", "scripted:cli_history", "--json")
    assert second.code == 0, second.stderr
    assert second.json()["output"] == "1+2 | 4+5"  # the model saw the first run's messages
    assert second.json()["thread"] == "t1"
    alone = cli("run", "flows.py:agent", "4+5", "-m", "scripted:cli_history", "--json")
    assert alone.json()["output"] == "4+5"
    other = cli("run", "flows.py:agent", "6+7", "-t", "t2", "-m", "scripted:cli_history", "--json")
    assert other.json()["output"] == "6+7"
    in_t1 = cli("runs", "list", "--thread", "t1", "--json").json()
    assert [r["id"] for r in in_t1] == [second.json()["run_id"], run_id_of(first)]


def test_run_graph_with_json_input(cli: Cli) -> None:
    out = cli("run", "flows.py:counter", '{"n": 3}', "--json")
    assert out.code == 0, out.stderr
    data = out.json()
    assert data["status"] == "finished"
    assert data["output"] == {"n": 18}  # 3 -> 4 -> 8 -> 9 -> 18
    assert data["usage"]["requests"] == 0
    text = cli("run", "flows.py:counter", "{}")
    assert text.code == 0
    assert json.loads(text.stdout) == {"n": 14}  # 0 -> 1 -> 2 -> 3 -> 6 -> 7 -> 14


def test_run_graph_with_text_for_input_key(cli: Cli) -> None:
    out = cli("run", "flows.py:triage", "printer on fire", "--json")
    assert out.code == 0, out.stderr
    assert out.json()["output"] == {
        "text": "printer on fire",
        "priority": 0,
        "summary": "PRINTER ON FIRE",
        "approved": None,
    }


def test_run_graph_with_input_key_takes_json_only_when_asked(cli: Cli) -> None:
    # Text always fills the input_key (whoever writes it must not set the rest of the state);
    # --input-json passes a whole JSON state.
    text = cli("run", "flows.py:triage", '{"text": "x", "priority": 2}', "--json")
    assert text.code == 0, text.stderr
    assert text.json()["output"]["text"] == '{"text": "x", "priority": 2}'
    assert text.json()["output"]["priority"] == 0
    out = cli(
        "run", "flows.py:triage", '{"text": "disk full", "priority": 2}', "--input-json", "--json"
    )
    assert out.code == 0, out.stderr
    assert out.json()["output"] == {
        "text": "disk full",
        "priority": 2,
        "summary": "DISK FULL",
        "approved": None,
    }


def test_run_interrupted_graph_says_how_to_answer(cli: Cli) -> None:
    out = cli("run", "flows.py:approval", "release 2.0")
    assert out.code == 0, out.stderr
    m = re.search(r"cadenza runs resume (\S+) --answer", out.stdout)
    assert m, out.stdout
    assert "waiting for input" in out.stdout
    assert "ship release 2.0?" in out.stdout
    data = cli("run", "flows.py:approval", "other", "--json").json()
    assert data["status"] == "interrupted"
    assert data["interrupt"] == {"question": "ship other?"}
    assert data["output"] is None


# --- runs list / show ---------------------------------------------------------------------------


def test_runs_list(cli: Cli) -> None:
    assert cli("runs", "list").stderr.startswith("no runs yet")
    ok = run_id_of(cli("run", "flows.py:agent", "2+3"))
    failed = cli("run", "flows.py:stingy", "2+3")
    assert failed.code == 1
    waiting = cli("run", "flows.py:approval", "x", "--json").json()["run_id"]

    data = cli("runs", "list", "--json").json()
    assert [r["status"] for r in data] == ["interrupted", "failed", "finished"]  # newest first
    assert data[0]["id"] == waiting and data[2]["id"] == ok
    failed_id = data[1]["id"]
    assert data[1]["workflow"] == "stingy"
    assert data[1]["error"]["type"] == "BudgetExceeded"

    only_failed = cli("runs", "list", "--status", "failed", "--json").json()
    assert [r["id"] for r in only_failed] == [failed_id]
    only_waiting = cli("runs", "list", "--status", "interrupted", "--json").json()
    assert [r["id"] for r in only_waiting] == [waiting]
    assert len(cli("runs", "list", "--limit", "2", "--json").json()) == 2

    table = cli("runs", "list")
    assert table.code == 0
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) == {ok, failed_id, waiting}
    assert "calculator (agent)" in rows[ok]
    for rid, status in ((ok, "finished"), (failed_id, "failed"), (waiting, "interrupted")):
        assert re.search(rf"\b{status}\b", rows[rid]), f"status of {rid} not shown: {rows[rid]!r}"

    filtered = cli("runs", "list", "--status", "failed")
    assert [line.split()[0] for line in filtered.stdout.splitlines()[1:]] == [failed_id]


def test_runs_show_timeline(cli: Cli) -> None:
    rid = run_id_of(cli("run", "flows.py:agent", "2+3"))
    out = cli("runs", "show", rid)
    assert out.code == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"run {rid}")
    assert "calculator (agent)" in lines[0] and "status: finished" in lines[0]
    timeline = [re.sub(r"^\s*\+\s*[\d.]+ ms\s+", "", line) for line in lines[1:]]
    assert timeline == [
        "started calculator with 2+3",
        "step 1: ask scripted:cli_calculator (1 messages)",
        timeline[2],
        'step 1: call add({"a": 2, "b": 3})',
        "step 1: add ok: 5",
        "step 2: ask scripted:cli_calculator (3 messages)",
        timeline[6],
        "finished",
    ]
    assert re.fullmatch(r"step 1: model calls add \(\d+\+\d+ tokens\)", timeline[2])
    assert re.fullmatch(r"step 2: model answers The sum is 5\. \(\d+\+\d+ tokens\)", timeline[6])
    offsets = [float(re.search(r"\+\s*([\d.]+) ms", line).group(1)) for line in lines[1:]]  # type: ignore[union-attr]
    assert offsets[0] == 0.0 and offsets == sorted(offsets)


def test_runs_show_failed_run(cli: Cli) -> None:
    failed = cli("run", "flows.py:stingy", "2+3")
    rid = cli("runs", "list", "--json").json()[0]["id"]
    assert rid in failed.stderr
    out = cli("runs", "show", rid)
    assert out.code == 0
    assert "status: failed" in out.stdout
    assert "failed: BudgetExceeded: steps budget exhausted" in out.stdout
    assert out.stdout.rstrip().splitlines()[-1].startswith("error: BudgetExceeded:")


def test_runs_show_prints_journal_text_verbatim(cli: Cli) -> None:
    prompt = "What does list[int] mean? See [docs](https://example.com)"
    rid = cli("run", "flows.py:agent", prompt, "-m", "scripted:echo", "--json").json()["run_id"]
    out = cli("runs", "show", rid)
    assert out.code == 0, out.stderr
    assert f"started calculator with {prompt}" in out.stdout
    assert f"model answers {prompt}" in out.stdout


def test_interrupt_prompt_printed_verbatim(cli: Cli) -> None:
    out = cli("run", "flows.py:approval", "[urgent] fix")
    assert out.code == 0, out.stderr
    assert "ship [urgent] fix?" in out.stdout


# --- resume / replay ----------------------------------------------------------------------------


def test_runs_resume_answers_an_interrupt(cli: Cli) -> None:
    rid = cli("run", "flows.py:approval", "v2", "--json").json()["run_id"]
    out = cli("runs", "resume", rid, "--answer", "yes", "--json")
    assert out.code == 0, out.stderr
    data = out.json()
    assert (data["run_id"], data["status"]) == (rid, "finished")
    assert data["output"] == {"text": "v2", "priority": 0, "summary": "V2", "approved": True}
    show = cli("runs", "show", rid).stdout
    assert "status: finished" in show
    assert "resumed from step 1 with answer yes" in show
    assert 'node approve → {"approved": true} → next __end__' in show
    # a JSON answer is parsed: "no" as JSON is a string, false is not "yes"
    rid2 = cli("run", "flows.py:approval", "v3", "--json").json()["run_id"]
    data2 = cli("runs", "resume", rid2, "--answer", '"no"', "--json").json()
    assert data2["output"]["approved"] is False


@pytest.mark.parametrize("state", ["finished", "waiting without --answer"])
def test_runs_resume_refused_is_a_user_mistake(cli: Cli, state: str) -> None:
    if state == "finished":
        rid = run_id_of(cli("run", "flows.py:agent", "2+3"))
        out = cli("runs", "resume", rid)
        want = "already finished"
    else:
        rid = cli("run", "flows.py:approval", "x", "--json").json()["run_id"]
        out = cli("runs", "resume", rid)
        want = "--answer"
    line = assert_one_error_line(out, 2)
    assert rid in line and want in line


def test_runs_resume_answer_on_agent_run(cli: Cli) -> None:
    failed = cli("run", "flows.py:stingy", "2+3")
    assert failed.code == 1
    rid = cli("runs", "list", "--json").json()[0]["id"]
    line = assert_one_error_line(cli("runs", "resume", rid, "--answer", "yes"))
    assert "--answer is for graph runs" in line


def test_runs_replay_matches(cli: Cli) -> None:
    rid = run_id_of(cli("run", "flows.py:agent", "2+3"))
    out = cli("runs", "replay", rid)
    assert out.code == 0, out.stderr
    assert "replay matches the recording" in out.stderr
    assert out.stdout == "The sum is 5.\n"
    graph_rid = cli("run", "flows.py:counter", '{"n": 3}', "--json").json()["run_id"]
    data = cli("runs", "replay", graph_rid, "--json").json()
    assert data["output"] == {"n": 18}
    # nothing was written by the replays
    events = cli("runs", "show", rid, "--json").json()["events"]
    assert [e["type"] for e in events].count("run.finished") == 1
    assert len(cli("runs", "list", "--json").json()) == 2


@pytest.mark.parametrize(
    ("workflow", "change", "what"),
    [
        ("counter", {"inc": 2}, "step 1 (node.finished update): expected {'n': 4}, got {'n': 5}"),
        ("agent", {"instructions": "Be brief."}, "step 1 (model.requested messages)"),
    ],
)
def test_runs_replay_reports_divergence(
    cli: Cli, workflow: str, change: dict[str, Any], what: str
) -> None:
    write_flows(cli.dir / "changed.py", **change)
    arg = '{"n": 3}' if workflow == "counter" else "2+3"
    rid = cli("run", f"flows.py:{workflow}", arg, "--json").json()["run_id"]
    same = cli("runs", "replay", rid, "--workflow", f"flows.py:{workflow}")
    assert same.code == 0, same.stderr
    out = cli("runs", "replay", rid, "--workflow", f"changed.py:{workflow}")
    assert out.code != 0
    line = assert_one_error_line(out, out.code)
    assert "ReplayDivergence" in line and f"replay diverged at {what}" in line
    assert "matches" not in out.stderr
    assert out.stdout == ""


# --- trace / graph ------------------------------------------------------------------------------


def test_trace_prints_jsonl_spans(cli: Cli) -> None:
    rid = run_id_of(cli("run", "flows.py:agent", "2+3"))
    out = cli("trace", rid)
    assert out.code == 0, out.stderr
    spans = [json.loads(line) for line in out.stdout.splitlines()]
    assert [s["kind"] for s in spans] == ["run", "model", "tool", "model"]
    root = spans[0]
    assert (root["span_id"], root["parent_id"], root["name"]) == (rid, None, "run calculator")
    assert root["attributes"]["gen_ai.operation.name"] == "invoke_agent"
    for s in spans[1:]:
        assert s["parent_id"] == rid
        assert s["duration_ms"] >= 0 and s["end"] >= s["start"]
    for m in (spans[1], spans[3]):
        a = m["attributes"]
        assert m["name"] == "chat scripted:cli_calculator"
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.request.model"] == "scripted:cli_calculator"
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    t = spans[2]
    assert t["name"] == "execute_tool add"
    assert t["attributes"]["gen_ai.operation.name"] == "execute_tool"
    assert t["attributes"]["gen_ai.tool.name"] == "add"
    assert t["error"] is None
    # --otel with no provider configured exports nowhere but changes nothing
    assert cli("trace", rid, "--otel").stdout == out.stdout


def test_trace_of_failed_run_and_of_interrupted_graph(cli: Cli) -> None:
    cli("run", "flows.py:flaky", "hi")
    rid = cli("runs", "list", "--json").json()[0]["id"]
    (root,) = [json.loads(line) for line in cli("trace", rid).stdout.splitlines()]
    assert root["error"] == "ModelError: provider returned HTTP 503"
    g = cli("run", "flows.py:approval", "x", "--json").json()["run_id"]
    cli("runs", "resume", g, "--answer", "yes")
    spans = [json.loads(line) for line in cli("trace", g).stdout.splitlines()]
    assert [s["name"] for s in spans] == ["run approval", "node summarise", "node approve"]
    assert all(s["parent_id"] == g for s in spans[1:])


def test_graph_prints_mermaid(cli: Cli) -> None:
    out = cli("graph", "flows.py:counter", store=False)
    assert out.code == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "flowchart TD"
    assert sorted(line.strip() for line in lines[1:]) == sorted(
        [
            '__start__([START]) --> inc["inc"]',
            'inc["inc"] --> double["double"]',
            'double["double"] -. "done" .-> __end__([END])',
            'double["double"] -. "again" .-> inc["inc"]',
        ]
    )


# --- package.module refs ------------------------------------------------------------------------


def write_package(root: Path, name: str) -> None:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    write_flows(pkg / "flows.py")


def test_module_ref_in_process(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    write_package(cli.dir, "cz_cli_pkg_inproc")
    monkeypatch.syspath_prepend(str(cli.dir))
    out = cli("run", "cz_cli_pkg_inproc.flows:agent", "2+3")
    assert out.code == 0, out.stderr
    assert out.stdout == "The sum is 5.\n"
    runs = cli("runs", "list", "--json").json()
    assert runs[0]["ref"] == "cz_cli_pkg_inproc.flows:agent"
    assert cli("graph", "cz_cli_pkg_inproc.flows:triage", store=False).stdout.startswith(
        "flowchart TD"
    )


# --- user mistakes ------------------------------------------------------------------------------

MISTAKES = {
    "missing file": (["run", "missing.py:agent", "x"], "workflow file 'missing.py' does not exist"),
    "missing module": (["run", "cz_cli_no_such_pkg.flows:agent", "x"], "cannot import module"),
    "missing attribute": (
        ["run", "flows.py:nope", "x"],
        "'flows.py' has no attribute 'nope'; workflows there: agent, approval, counter",
    ),
    "not a workflow": (["run", "flows.py:not_a_workflow", "x"], "not an Agent, Graph or"),
    "malformed ref": (["run", "flows.py", "x"], "must look like 'path/file.py:name'"),
    "empty name": (["run", "flows.py:", "x"], "must look like"),
    "unknown model provider": (
        ["run", "flows.py:agent", "x", "--model", "nosuch:big"],
        "unknown model provider 'nosuch'",
    ),
    "model string without provider": (["run", "flows.py:agent", "x", "-m", "big"], "provider:name"),
    "unknown scripted model": (["run", "flows.py:agent", "x", "-m", "scripted:zz"], "'zz'"),
    "graph input not JSON": (["run", "flows.py:counter", "hello"], "takes a JSON object"),
    "graph input of wrong type": (
        ["run", "flows.py:counter", '{"n": "lots"}'],
        "invalid input for graph 'counter': n:",
    ),
    "unknown run (show)": (["runs", "show", "nope"], "no run 'nope' in the store"),
    "unknown run (resume)": (["runs", "resume", "nope"], "no run 'nope' in the store"),
    "unknown run (replay)": (["runs", "replay", "nope"], "no run 'nope' in the store"),
    "unknown run (trace)": (["trace", "nope"], "no run 'nope' in the store"),
    "bad store url": (["runs", "list", "--store", "postgres://x/y"], "unsupported store URL"),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_user_mistake_is_one_error_line(cli: Cli, case: str) -> None:
    args, want = MISTAKES[case]
    out = cli(*args, store="--store" not in args)
    line = assert_one_error_line(out, 2)
    assert want in line
    assert out.stdout == ""


def test_graph_on_an_agent_is_a_user_mistake(cli: Cli) -> None:
    out = cli("graph", "flows.py:agent", store=False)
    line = assert_one_error_line(out, 2)
    assert "is an agent, not a graph" in line


def test_run_without_recorded_ref_needs_workflow(cli: Cli) -> None:
    from cadenza import Agent, open_store
    from cadenza.testing import ScriptedModel

    async def started_from_python() -> str:
        agent = Agent(ScriptedModel(["hi"]), name="py")
        return (await agent.run("x", store=open_store(cli.store))).run_id

    rid = asyncio.run(started_from_python())
    line = assert_one_error_line(cli("runs", "replay", rid))
    assert "does not record where its workflow lives; pass --workflow" in line


@pytest.mark.parametrize(
    "args",
    [
        ["run", "flows.py:agent", "x", "-m", "scripted:[/]"],
        ["run", "flows[/]v2.py:agent", "x"],
    ],
    ids=["model name", "file name"],
)
def test_error_text_with_brackets_is_printed_not_parsed(cli: Cli, args: list[str]) -> None:
    line = assert_one_error_line(cli(*args), 2)
    assert "[/]" in line


# --- runs that fail -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workflow", "want"),
    [
        ("stingy", "BudgetExceeded"),
        ("flaky", "ModelError"),
        ("crashy", "connection reset by peer"),
    ],
)
def test_failed_run_exits_1_naming_the_run(cli: Cli, workflow: str, want: str) -> None:
    out = cli("run", f"flows.py:{workflow}", "2+3")
    line = assert_one_error_line(out, 1)
    runs = cli("runs", "list", "--json").json()
    assert [r["status"] for r in runs] == ["failed"]
    assert runs[0]["id"] in line, line
    assert want in line


# --- real processes -----------------------------------------------------------------------------


def test_subprocess_run_prints_the_answer(cli: Cli) -> None:
    out = cli.proc("run", "flows.py:agent", "2+3")
    assert out.code == 0, out.stderr
    assert out.stdout == "The sum is 5.\n"
    assert re.fullmatch(r"run \S+ · 2 model call\(s\) · \d+ tokens\n", out.stderr)


def test_subprocess_resume_in_a_later_process(cli: Cli) -> None:
    started = cli.proc("run", "flows.py:approval", "release", "--json")
    assert started.code == 0, started.stderr
    data = json.loads(started.stdout)
    assert data["status"] == "interrupted"
    rid = data["run_id"]

    resumed = cli.proc("runs", "resume", rid, "--answer", "yes", "--json")
    assert resumed.code == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert (out["run_id"], out["status"]) == (rid, "finished")
    assert out["output"]["approved"] is True and out["output"]["summary"] == "RELEASE"

    replayed = cli.proc("runs", "replay", rid)
    assert replayed.code == 0, replayed.stderr
    assert "replay matches the recording" in replayed.stderr
    again = cli.proc("runs", "resume", rid, "--answer", "yes")
    assert "Traceback" not in again.stderr and again.code != 0
    assert "already finished" in again.stderr


def test_subprocess_module_ref_on_pythonpath(cli: Cli) -> None:
    write_package(cli.dir, "cz_cli_pkg_proc")
    env = {"PYTHONPATH": str(cli.dir)}
    out = cli.proc("run", "cz_cli_pkg_proc.flows:agent", "7+8", env=env)
    assert out.code == 0, out.stderr
    assert out.stdout == "The sum is 15.\n"
    rid = run_id_of(out)
    # a later process loads the workflow again from the recorded module ref
    replayed = cli.proc("runs", "replay", rid, env=env)
    assert replayed.code == 0, replayed.stderr
    assert replayed.stdout == "The sum is 15.\n"
    missing = cli.proc("runs", "replay", rid)  # without PYTHONPATH the module is not found
    line = assert_one_error_line(missing, 2)
    assert "cannot import module 'cz_cli_pkg_proc.flows'" in line


def test_subprocess_user_mistakes_have_no_traceback(cli: Cli) -> None:
    cases = {
        "missing file": ["run", "missing.py:agent", "x"],
        "malformed ref": ["run", "flows.py", "x"],
        "unknown model provider": ["run", "flows.py:agent", "x", "--model", "nosuch:big"],
        "bad graph input": ["run", "flows.py:counter", "hello"],
        "unknown run id": ["runs", "resume", "nope"],
    }
    procs = {name: cli.popen(*args) for name, args in cases.items()}
    procs["graph on an agent"] = cli.popen("graph", "flows.py:agent", store=False)
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=60)
        out = Out(p.returncode, stdout, stderr)
        try:
            assert_one_error_line(out, 2)
            assert stdout == ""
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_subprocess_failed_run_names_the_run(cli: Cli) -> None:
    out = cli.proc("run", "flows.py:stingy", "2+3")
    line = assert_one_error_line(out, 1)
    m = re.search(r"\(run (\S+)\)", line)
    assert m, line
    shown = cli.proc("runs", "show", m.group(1))
    assert "status: failed" in shown.stdout


def test_subprocess_error_with_brackets_has_no_traceback(cli: Cli) -> None:
    out = cli.proc("run", "flows.py:agent", "x", "--model", "scripted:[/]")
    line = assert_one_error_line(out, 2)
    assert "no ScriptedModel named '[/]'" in line
