"""Taint tracking: which tool-call arguments were copied from untrusted content.

Everything a tool returns (search results, documents, e-mails, order notes) is untrusted: it may
carry instructions planted by someone other than the user. The tracker keeps that content, and
the trusted content (the user's own request), so the Gate can tell the policy engine, for each
argument of a call, whether its value came from untrusted data and not from the user.

A value is *tainted* when it occurs in untrusted content and not in trusted content:

- strings of 4+ characters: the whole value, case-insensitively; longer values (over 48
  characters, e.g. an e-mail body) also when any 32-character window of them does;
- numbers of 3+ digits: as a whole token (so `2500` is found in "send 2500 EUR");
- spacing and dashes are ignored for values of 6+ characters, so `FR1420041010050500013M02606`
  is found in "FR14 2004 1010 0505 0001 3M02 606".

Short values (`"yes"`, `7`) are never tainted: they occur everywhere by chance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic_core import to_json

__all__ = ["TaintTracker"]

_MIN_STR = 4
_WINDOW = 32
_LONG = 48


_SPACING = re.compile(r"[\s\-]+")


def _compact(text: str) -> str:
    return _SPACING.sub("", text)


_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?(?![\w])")


def _numbers(text: str) -> set[float]:
    """Every number written in `text`, by value: `2,500.00`, `2500` and `2.5e3` are one."""
    out: set[float] = set()
    for m in _NUMBER.finditer(text):
        try:
            out.add(float(m.group().replace(",", "")))
        except ValueError:
            pass
    return out


def _text(value: Any) -> str:
    """The text of a value as a model would copy from it: its strings and numbers, unescaped."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return "\n".join(_text(v) for v in value.values())  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    if isinstance(value, list | tuple):
        return "\n".join(_text(v) for v in value)  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, int | float):
        return repr(value)
    return to_json(value, fallback=str).decode()


class TaintTracker:
    """What a run has read from untrusted sources, shared by the run and its child runs.

    Recording is cheap (values are kept as they are); the searchable text is built on the
    first `tainted` question, so runs without a policy never pay for it.
    """

    __slots__ = ("_numbers", "_pending", "_trusted", "_trusted_compact", "_untrusted",
                 "_untrusted_compact", "injection", "sources")  # fmt: skip

    def __init__(self, trusted: Iterable[Any] = ()) -> None:
        self._pending: list[tuple[bool, Any]] = [(True, t) for t in trusted]
        self._trusted = self._trusted_compact = ""
        self._untrusted = self._untrusted_compact = ""
        self._numbers: tuple[set[float], set[float]] = (set(), set())  # (trusted, untrusted)
        self.injection = False
        """Prompt-injection markers were seen in untrusted content."""
        self.sources: list[str] = []
        """Names of the tools whose output entered the run, in order."""

    @property
    def untrusted(self) -> bool:
        """Whether any untrusted content has entered the run."""
        return bool(self.sources)

    def add_trusted(self, value: Any) -> None:
        """Record content the user (or the developer) supplied."""
        self._pending.append((True, value))

    def add_untrusted(self, source: str, value: Any, *, injection: bool = False) -> None:
        """Record content a tool returned (`injection`: guards flagged it)."""
        self._pending.append((False, value))
        self.sources.append(source)
        self.injection = self.injection or injection

    def _index(self) -> None:
        for trusted, value in self._pending:
            text = "\n" + _text(value).casefold()
            self._numbers[0 if trusted else 1].update(_numbers(text))
            if trusted:
                self._trusted += text
                self._trusted_compact += _compact(text)
            else:
                self._untrusted += text
                self._untrusted_compact += _compact(text)
        self._pending.clear()

    def tainted(self, arguments: Mapping[str, Any]) -> frozenset[str]:
        """Names of the arguments whose value (or part of it) came from untrusted content."""
        if not self.sources:
            return frozenset()
        if self._pending:
            self._index()
        return frozenset(k for k, v in arguments.items() if self._is_tainted(v))

    def _is_tainted(self, value: Any) -> bool:
        if isinstance(value, bool) or value is None:
            return False
        if isinstance(value, int | float):
            if abs(value) < 100:  # two digits occur everywhere by chance
                return False
            trusted, untrusted = self._numbers
            return float(value) in untrusted and float(value) not in trusted
        if isinstance(value, str):
            return self._str_tainted(value.casefold())
        if isinstance(value, Mapping):
            return any(self._is_tainted(v) for v in value.values())  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
        if isinstance(value, list | tuple):
            return any(self._is_tainted(v) for v in value)  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
        return False

    def _str_tainted(self, s: str) -> bool:
        s = s.strip()
        if len(s) < _MIN_STR:
            return False
        if s in self._untrusted and s not in self._trusted:
            return True
        c = _compact(s)
        if len(c) >= 6 and c in self._untrusted_compact and c not in self._trusted_compact:
            return True
        if len(s) > _LONG:
            for i in range(0, len(s) - _WINDOW + 1, _WINDOW // 2):
                w = s[i : i + _WINDOW]
                if w in self._untrusted and w not in self._trusted:
                    return True
        return False
