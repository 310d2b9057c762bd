"""GBNF grammars (llama.cpp) that make a local model's output well-formed by construction.

With tools offered, the model may only produce a final answer (text that does not open like a
call) or one or more `{"name": ..., "arguments": ...}` calls (bare or in `<tool_call>` tags),
where the name is one of the offered tools and the arguments satisfy that tool's JSON Schema. With an
output schema, it may only produce a JSON value of that schema.
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

from ..models import ToolSpec


def tool_call_schema(tools: list[ToolSpec]) -> dict[str, Any]:
    """JSON Schema of one tool call: a known name with arguments valid for that name."""
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": _closed(t.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return variants[0] if len(variants) == 1 else {"oneOf": variants}


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    if out.get("type") == "object":
        out.setdefault("properties", {})
        out.setdefault("additionalProperties", False)
    return out


def schema_rules(schema: dict[str, Any], root: str) -> str:
    """GBNF rules matching `schema`, with the top rule renamed `root` (prefixing the others)."""
    converter: Any = importlib.import_module("llama_cpp.llama_grammar").json_schema_to_gbnf
    gbnf: str = converter(json.dumps(schema))
    # Rename every rule so several converted grammars can live in one file.
    names = re.findall(r"^([a-zA-Z0-9-]+) ::=", gbnf, flags=re.MULTILINE)
    mapping = {n: (root if n == "root" else f"{root}-{n}") for n in names}
    pattern = re.compile(
        r"(?<![a-zA-Z0-9-\"])("
        + "|".join(map(re.escape, sorted(names, key=len, reverse=True)))
        + r")(?![a-zA-Z0-9-])"
    )
    out_lines: list[str] = []
    for line in gbnf.splitlines():
        # Only rename outside string literals and character classes.
        parts = re.split(r'("(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\])', line)
        parts = [
            p if p.startswith(('"', "[")) else pattern.sub(lambda m: mapping[m.group(1)], p)
            for p in parts
        ]
        out_lines.append("".join(parts))
    return "\n".join(out_lines)


def tools_grammar(tools: list[ToolSpec]) -> str:
    """Grammar for 'a final answer, or tool calls to known tools with valid arguments'.

    A call is one line of JSON, optionally inside `<tool_call>` tags (models trained on either
    style find their natural path); several calls go on separate lines. An answer cannot open
    like a call (`{`, `[`, `<`) or with a code fence, so a call cannot hide inside one.
    """
    call = schema_rules(tool_call_schema(tools), "call")
    return "\n".join(
        [
            "root ::= calls | answer",
            'calls ::= one ("\\n" one)*',
            'one ::= call | "<tool_call>\\n" call "\\n</tool_call>"',
            "answer ::= [^<{[` \\t\\n\\x00] [^\\x00]*",
            call,
        ]
    )


def output_grammar(schema: dict[str, Any]) -> str:
    """Grammar for a JSON value of `schema` (structured output)."""
    return schema_rules(schema, "root")
