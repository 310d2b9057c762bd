"""The predicate language of policy rules: strings compiled, via `ast`, into closures on `CallFacts`.

`compile_predicate` parses one condition, accepts only the constructs `Rule` documents (literals,
`args`/`tool`/`principal`/`context` fields, comparisons, boolean operators and a few helpers such
as `domain`, `under` and `matches`) and returns a closure; nothing is ever passed to `eval`.
"""

from __future__ import annotations

import ast
import operator
import posixpath
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .policy import CallFacts

__all__ = ["Predicate", "PredicateError", "compile_predicate"]

Predicate = Callable[["CallFacts"], Any]
"""A compiled condition: true when it holds for the call."""


class PredicateError(Exception):
    """A predicate uses something the language does not allow."""


_FIELDS: dict[str, dict[str, Predicate]] = {
    "tool": {
        "name": operator.attrgetter("tool"),
        "version": operator.attrgetter("version"),
        "side_effects": operator.attrgetter("side_effects"),
    },
    "principal": {k: operator.attrgetter(f"principal.{k}") for k in ("user_id", "roles", "tenant")},
    "context": {
        k: operator.attrgetter(k)
        for k in ("workflow", "agent", "untrusted", "tainted", "injection")
    },
}

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}

_FORBIDDEN: dict[type[ast.AST], str] = {
    **dict.fromkeys((ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp), "comprehensions"),
    ast.Subscript: "subscripts (x[...])",
    ast.Lambda: "lambdas",
    ast.Dict: "dict literals",
    ast.BinOp: "arithmetic operators",
    ast.IfExp: "conditional expressions",
    ast.NamedExpr: "assignment expressions",
    ast.JoinedStr: "f-strings",
}

_NOT_LITERAL = object()


def _text(value: Any, fn: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{fn}() needs a string, got {type(value).__name__}")
    return value


def _affix(value: Any, fn: str) -> str | tuple[str, ...]:
    if isinstance(value, list | tuple):
        return tuple(_text(v, fn) for v in cast(Iterable[Any], value))
    return _text(value, fn)


def _domain(email: Any) -> str:
    _, at, host = _text(email, "domain").rpartition("@")
    return host.lower() if at else ""


def _path_parts(path: Any) -> tuple[bool, list[str]]:
    norm = posixpath.normpath(_text(path, "under"))
    # Dropping empty parts makes "//etc" (kept by normpath, as POSIX allows) equal "/etc".
    return norm.startswith("/"), [p for p in norm.split("/") if p not in ("", ".")]


def _under(path: Any, prefix: Any) -> bool:
    p_abs, parts = _path_parts(path)
    q_abs, base = _path_parts(prefix)
    if p_abs != q_abs:
        return False
    # A relative path that climbs out ("../x") is never under a prefix that climbs less.
    if parts.count("..") != base.count(".."):
        return False
    return parts[: len(base)] == base


_UNARY: dict[str, Callable[[Any], Any]] = {
    "domain": _domain,
    "lower": lambda s: _text(s, "lower").lower(),
    "len": len,
}
_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "under": _under,
    "matches": lambda s, rx: rx.fullmatch(_text(s, "matches")) is not None,
    "startswith": lambda s, p: _text(s, "startswith").startswith(_affix(p, "startswith")),
    "endswith": lambda s, p: _text(s, "endswith").endswith(_affix(p, "endswith")),
}
_HELPERS = (*_UNARY, *_BINARY)


def _literal(node: ast.expr) -> Any:
    """The value of a literal node, or `_NOT_LITERAL`."""
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise PredicateError(f"literal {value!r} is not allowed")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal(node.operand)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        items = [_literal(e) for e in node.elts]
        if any(i is _NOT_LITERAL for i in items):
            raise PredicateError("lists, tuples and sets may hold only literals")
        if isinstance(node, ast.List):
            return items
        try:
            return tuple(items) if isinstance(node, ast.Tuple) else frozenset(items)
        except TypeError as exc:
            raise PredicateError(f"invalid set literal: {exc}") from None
    return _NOT_LITERAL


class _Compiler:
    """Turns one predicate's AST into a closure over `CallFacts`."""

    def __init__(self) -> None:
        self.arg_names: set[str] = set()

    def compile(self, node: ast.expr) -> Predicate:
        value = _literal(node)
        if value is not _NOT_LITERAL:
            return lambda f: value
        if isinstance(node, ast.Attribute):
            return self._attribute(node)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.BoolOp):
            parts = tuple(self.compile(v) for v in node.values)
            conj = isinstance(node.op, ast.And)
            if len(parts) == 2:
                a, b = parts
                if conj:
                    return lambda f: bool(a(f) and b(f))
                return lambda f: bool(a(f) or b(f))
            if conj:
                return lambda f: all(p(f) for p in parts)
            return lambda f: any(p(f) for p in parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
            inner = self.compile(node.operand)
            if isinstance(node.op, ast.Not):
                return lambda f: not inner(f)
            return lambda f: -inner(f)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Name):
            if node.id in _FIELDS or node.id == "args":
                raise PredicateError(
                    f"{node.id!r} must be followed by an attribute, e.g. {node.id}.x"
                )
            if node.id in _HELPERS:
                raise PredicateError(f"helper {node.id!r} must be called")
            raise PredicateError(
                f"unknown name {node.id!r} (known: args, tool, principal, context)"
            )
        what = _FORBIDDEN.get(type(node), f"{type(node).__name__} expressions")
        raise PredicateError(f"{what} are not allowed")

    def _attribute(self, node: ast.Attribute) -> Predicate:
        if node.attr.startswith("_"):
            raise PredicateError(
                f"attribute {node.attr!r} is not allowed (private and dunder names)"
            )
        if not isinstance(node.value, ast.Name):
            raise PredicateError(
                f"attribute {node.attr!r} must be read from args, tool, principal or context"
            )
        base = node.value.id
        if base == "args":
            name = node.attr
            self.arg_names.add(name)
            return lambda f: f.args.get(name)
        fields = _FIELDS.get(base)
        if fields is None:
            raise PredicateError(f"unknown name {base!r} (known: args, tool, principal, context)")
        getter = fields.get(node.attr)
        if getter is None:
            raise PredicateError(
                f"unknown attribute '{base}.{node.attr}' (known: {', '.join(fields)})"
            )
        return getter

    def _compare(self, node: ast.Compare) -> Predicate:
        ops: list[Callable[[Any, Any], Any]] = []
        for op in node.ops:
            fn = _COMPARE.get(type(op))
            if fn is None:
                raise PredicateError(
                    f"operator {type(op).__name__} is not allowed (use ==, !=, <, in, ...)"
                )
            ops.append(fn)
        left = self.compile(node.left)
        rights = [self.compile(c) for c in node.comparators]
        if len(ops) == 1:
            op, right = ops[0], rights[0]
            const = _literal(node.comparators[0])
            if const is not _NOT_LITERAL:
                return lambda f: op(left(f), const)
            return lambda f: op(left(f), right(f))
        chain = tuple(zip(ops, rights, strict=True))

        def chained(f: CallFacts) -> bool:
            a = left(f)
            for op, right in chain:
                b = right(f)
                if not op(a, b):
                    return False
                a = b
            return True

        return chained

    def _call(self, node: ast.Call) -> Predicate:
        helpers = ", ".join(f"{h}()" for h in _HELPERS)
        if not isinstance(node.func, ast.Name) or node.func.id not in _HELPERS:
            called = ast.unparse(node.func)
            raise PredicateError(
                f"calling {called!r} is not allowed; only the helpers {helpers} are"
            )
        name = node.func.id
        arity = 1 if name in _UNARY else 2
        if node.keywords or len(node.args) != arity:
            raise PredicateError(f"{name}() takes exactly {arity} positional argument(s)")
        if name == "matches":
            pattern = _literal(node.args[1])
            if not isinstance(pattern, str):
                raise PredicateError("matches() needs a string literal as its regex")
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise PredicateError(f"invalid regex {pattern!r}: {exc}") from None
            subject, match = self.compile(node.args[0]), _BINARY[name]
            return lambda f: match(subject(f), regex)
        a = self.compile(node.args[0])
        if arity == 1:
            unary = _UNARY[name]
            return lambda f: unary(a(f))
        b, binary = self.compile(node.args[1]), _BINARY[name]
        return lambda f: binary(a(f), b(f))


def compile_predicate(text: str) -> tuple[Predicate, frozenset[str]]:
    """Compile one predicate string; raises `PredicateError` naming what is wrong."""
    compiler = _Compiler()
    try:
        fn = compiler.compile(ast.parse(text.strip(), mode="eval").body)
    except SyntaxError as exc:
        raise PredicateError(f"syntax error: {exc.msg} (column {exc.offset})") from None
    except (RecursionError, MemoryError):
        raise PredicateError("expression is nested too deeply") from None
    return fn, frozenset(compiler.arg_names)
