"""`@tool` turns a typed function into a tool; `ToolRegistry` resolves versioned requirements.

A tool's signature and docstring are its schema: type hints (pydantic models included) become
the JSON Schema of its arguments, the docstring's summary its description and its `Args:`
section the description of each argument. A parameter annotated `RunContext` is injected, never
shown to the model.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import to_jsonable_python

from ._semver import Constraint, Version, parse_requirement
from .context import RunContext
from .errors import ConfigError, ToolDefinitionError, ToolVersionError
from .models import ToolSpec

__all__ = ["Tool", "ToolRegistry", "tool"]

_PRIMITIVES = (str, int, float, bool, type(None))


class Tool:
    """A function the model may call, with its schema, version and execution settings."""

    __slots__ = (
        "_arg_names",
        "_ctx_param",
        "_validator",
        "args_model",
        "description",
        "fn",
        "is_async",
        "name",
        "side_effects",
        "spec",
        "timeout",
        "version",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        version: str = "1.0.0",
        side_effects: bool = False,
        timeout: float | None = 30.0,
    ) -> None:
        if not callable(fn):
            raise ToolDefinitionError(f"@tool needs a function, got {fn!r}")
        self.fn = fn
        self.name: str = fn.__name__ if name is None else name
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", self.name):
            raise ToolDefinitionError(
                f"tool name {self.name!r} must start with a letter or '_' and contain only "
                "letters, digits, '_', '.', '-' (max 64 characters)"
            )
        try:
            self.version = Version(version)
        except ConfigError as exc:
            raise ToolDefinitionError(f"tool {self.name!r}: {exc}") from None
        self.side_effects = side_effects
        """True when the tool changes the world; such calls run at most once per logical call."""
        if timeout is not None and timeout <= 0:
            raise ToolDefinitionError(f"tool {self.name!r}: timeout must be > 0 or None")
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(fn)
        summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
        self.description = description or summary or self.name
        self._ctx_param, self.args_model = _args_model(fn, self.name, arg_docs)
        self._validator = self.args_model.__pydantic_validator__
        self._arg_names = tuple(self.args_model.model_fields)
        schema = self.args_model.model_json_schema()
        _strip_titles(schema)
        self.spec = ToolSpec(self.name, self.description, schema)

    @property
    def parameters(self) -> dict[str, Any]:
        """JSON Schema of the arguments."""
        return self.spec.parameters

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Validate model-supplied arguments; return the keyword arguments for the function.

        Raises:
            pydantic.ValidationError: the arguments do not satisfy the schema.

        """
        inst = self._validator.validate_python(arguments)
        return {k: getattr(inst, k) for k in self._arg_names}

    def invoke(self, kwargs: dict[str, Any], ctx: RunContext | None) -> Awaitable[Any]:
        """Call the function with validated arguments (sync functions run in a worker thread).

        Returns the awaitable of the call itself (no wrapper coroutine on the hot path).
        """
        if self._ctx_param is not None:
            kwargs = {**kwargs, self._ctx_param: ctx}
        if self.is_async:
            return cast(Awaitable[Any], self.fn(**kwargs))
        import asyncio

        return asyncio.to_thread(self.fn, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly (handy in unit tests)."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        flags = ", side_effects" if self.side_effects else ""
        return f"<Tool {self.name} {self.version}{flags}>"


def to_json_result(value: Any) -> Any:
    """Turn a tool's return value into JSON-compatible data."""
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return to_jsonable_python(value, fallback=repr)


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    version: str = "1.0.0",
    side_effects: bool = False,
    timeout: float | None = 30.0,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    version: str = "1.0.0",
    side_effects: bool = False,
    timeout: float | None = 30.0,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a typed function (sync or async) into a `Tool`.

    Use bare (`@tool`) or with options (`@tool(version="1.2.0", side_effects=True)`).

    Args:
        fn: The function, when used bare.
        name: Tool name shown to the model (default: the function's name).
        description: Overrides the docstring summary.
        version: Semantic version, checked against workflows' requirements.
        side_effects: The tool changes the world: its completed calls are journaled and never
            executed twice, even across crashes.
        timeout: Seconds before the call is abandoned with an error result (None: no limit).

    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool(
            f,
            name=name,
            description=description,
            version=version,
            side_effects=side_effects,
            timeout=timeout,
        )

    return wrap(fn) if fn is not None else wrap


class ToolRegistry:
    """Holds several versions of tools and resolves requirements such as `name>=1.2,<2`."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, dict[Version, Tool]] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool) -> Tool:
        """Register a tool version; registering the same name and version twice is an error."""
        versions = self._tools.setdefault(t.name, {})
        if t.version in versions and versions[t.version] is not t:
            raise ConfigError(f"tool {t.name!r} version {t.version} is already registered")
        versions[t.version] = t
        return t

    def versions(self, name: str) -> list[str]:
        """The registered versions of `name`, oldest first."""
        return [str(v) for v in sorted(self._tools.get(name, {}))]

    def names(self) -> list[str]:
        """Every registered tool name, sorted."""
        return sorted(self._tools)

    def resolve(self, requirement: str | Tool) -> Tool:
        """The newest tool matching a requirement such as `create_ticket>=1.2,<2`.

        Raises:
            ToolVersionError: no such tool, or no version satisfies the constraint.

        """
        if isinstance(requirement, Tool):
            return requirement
        name, constraint = parse_requirement(requirement)
        candidates = self._tools.get(name, {})
        matching = [v for v in candidates if constraint.allows(v)]
        if not matching:
            raise ToolVersionError(name, constraint.text, self.versions(name))
        return candidates[max(matching)]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return sum(len(v) for v in self._tools.values())


def resolve_tools(tools: Iterable[Tool | str], registry: ToolRegistry | None) -> dict[str, Tool]:
    """Turn a mix of tools and requirement strings into a name → tool map, checking versions."""
    out: dict[str, Tool] = {}
    for t in tools:
        if isinstance(t, str):
            if registry is None:
                name, constraint = parse_requirement(t)
                raise ToolVersionError(name, Constraint(constraint.text).text, [])
            t = registry.resolve(t)
        elif not isinstance(t, Tool):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ToolDefinitionError(
                f"tools must be @tool functions or requirement strings, got {t!r}; "
                "decorate the function with @cadenza.tool"
            )
        if t.name in out and out[t.name] is not t:
            raise ConfigError(f"two tools are named {t.name!r}; tool names must be unique")
        out[t.name] = t
    return out


# --- schema building -------------------------------------------------------------------------

_ARGS_HEADER = re.compile(r"^(Args|Arguments|Parameters):\s*$")
_SECTION = re.compile(r"^[A-Z][A-Za-z ]+:\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Summary (first paragraph) and Google-style `Args:` descriptions."""
    lines = doc.splitlines()
    summary_lines: list[str] = []
    for line in lines:
        if not line.strip():
            break
        summary_lines.append(line.strip())
    args: dict[str, str] = {}
    in_args = False
    current: str | None = None
    base_indent = 0
    for line in lines:
        if _ARGS_HEADER.match(line.strip()) and not line.startswith(" "):
            in_args, current = True, None
            continue
        if not in_args:
            continue
        if line.strip() and not line.startswith(" ") and _SECTION.match(line.strip()):
            break
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        m = _ARG_LINE.match(line.strip())
        if m and (current is None or indent <= base_indent):
            name = m.group(1).lstrip("*")
            current, base_indent = name, indent
            args[name] = m.group(2).strip()
        elif current is not None:
            args[current] = f"{args[current]} {line.strip()}".strip()
    return " ".join(summary_lines), args


def _is_context(annotation: Any) -> bool:
    return annotation is RunContext or typing.get_origin(annotation) is RunContext


def _args_model(
    fn: Callable[..., Any], name: str, arg_docs: dict[str, str]
) -> tuple[str | None, type[BaseModel]]:
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise ToolDefinitionError(f"tool {name!r}: cannot resolve type hints: {exc}") from exc
    ctx_param: str | None = None
    fields: dict[str, Any] = {}
    for pname, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"tool {name!r}: *{pname} / **{pname} cannot be described to a model; "
                "declare each argument explicitly"
            )
        if pname not in hints:
            raise ToolDefinitionError(
                f"tool {name!r}: argument {pname!r} has no type annotation; annotate it so "
                "its JSON Schema can be built"
            )
        annotation = hints[pname]
        if _is_context(annotation):
            ctx_param = pname
            continue
        default = ... if param.default is param.empty else param.default
        fields[pname] = (annotation, Field(default, description=arg_docs.get(pname)))
    model: type[BaseModel] = create_model(  # pyright: ignore[reportCallIssue, reportUnknownVariableType]
        f"{name}_arguments",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    return ctx_param, model


def _strip_titles(schema: Any) -> None:
    if isinstance(schema, dict):
        d = typing.cast(dict[str, Any], schema)
        title = d.get("title")
        if isinstance(title, str):
            del d["title"]
        for v in d.values():
            _strip_titles(v)
    elif isinstance(schema, list):
        for v in typing.cast(list[Any], schema):
            _strip_titles(v)


def format_validation_error(exc: ValidationError) -> str:
    """A compact, model-readable description of what was wrong with the arguments."""
    parts: list[str] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
