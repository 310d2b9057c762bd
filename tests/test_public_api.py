"""The shape of the public API: `cadenza.__all__`, lazy exports and the error tree."""

import ast
import builtins
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cadenza
from cadenza import errors

INIT = Path(cadenza.__file__).read_text(encoding="utf-8")


def _groups(assignment: str) -> list[tuple[str, list[str]]]:
    """The `# comment`-delimited groups of a top-level list/dict literal, in source order."""
    m = re.search(rf"^{re.escape(assignment)}[^=]*= [\[{{]\n(.*?)^[\]}}]", INIT, re.M | re.S)
    assert m is not None, f"{assignment} not found in cadenza/__init__.py"
    groups: list[tuple[str, list[str]]] = []
    for line in m.group(1).splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            groups.append((line.lstrip("# ").strip(), []))
            continue
        name = re.match(r'"([^"]+)"', line)
        assert name is not None, f"unexpected line in {assignment}: {line!r}"
        assert groups, f"{name.group(1)!r} in {assignment} is not under a comment"
        groups[-1][1].append(name.group(1))
    return groups


def _isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 isort-style order: CONSTANTS, then Classes, then functions."""
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_all_matches_exports():
    assert set(cadenza.__all__) == set(cadenza._EXPORTS)


def test_all_has_no_duplicates():
    dupes = sorted({n for n in cadenza.__all__ if cadenza.__all__.count(n) > 1})
    assert dupes == []


def test_all_is_the_runtime_value_of_the_source():
    tree = ast.parse(INIT)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            assert ast.literal_eval(node.value) == cadenza.__all__
            break
    else:
        pytest.fail("no __all__ assignment in cadenza/__init__.py")


@pytest.mark.parametrize("name", cadenza.__all__)
def test_every_public_name_resolves(name: str):
    value = getattr(cadenza, name)
    assert value is not None
    module = cadenza._EXPORTS[name]
    assert value is getattr(__import__(f"cadenza.{module}", fromlist=[name]), name)
    assert name in dir(cadenza)


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = cadenza.no_such_name  # type: ignore[attr-defined]


def test_each_all_group_is_sorted():
    groups = _groups("__all__")
    assert len(groups) >= 2
    for title, names in groups:
        assert names, f"empty group {title!r}"
        assert names == sorted(names, key=_isort_key), f"__all__ group {title!r} is not sorted"


def test_all_groups_mirror_export_groups():
    all_groups = _groups("__all__")
    export_groups = _groups("_EXPORTS: dict[str, str]")
    assert [t for t, _ in all_groups] == [t for t, _ in export_groups]
    for (title, names), (_, exported) in zip(all_groups, export_groups, strict=True):
        assert set(names) == set(exported), f"group {title!r} differs between __all__ and _EXPORTS"


def test_the_group_parser_notices_disorder():
    # Guard against a parser that finds nothing and therefore passes vacuously.
    names = [n for _, ns in _groups("__all__") for n in ns]
    assert sorted(names) == sorted(cadenza.__all__)
    assert ["b", "a"] != sorted(["b", "a"], key=_isort_key)
    assert sorted(["tool", "Tool", "END"], key=_isort_key) == ["END", "Tool", "tool"]


# --- errors ----------------------------------------------------------------------------------

SIGNALS = {"CadenzaSignal", "GraphInterrupt", "ApprovalRequired"}


@pytest.mark.parametrize("name", errors.__all__)
def test_error_classes_derive_from_cadenza_error(name: str):
    cls = getattr(errors, name)
    assert isinstance(cls, type)
    assert issubclass(cls, BaseException)
    if name in SIGNALS:
        assert not issubclass(cls, Exception), f"{name} must not be caught by except Exception"
        assert not issubclass(cls, errors.CadenzaError)
    else:
        assert issubclass(cls, errors.CadenzaError)


def test_every_exception_class_in_errors_is_listed():
    defined = {
        n
        for n, v in vars(errors).items()
        if isinstance(v, type) and issubclass(v, BaseException) and v.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)


def test_exported_errors_are_the_errors_module_classes():
    for name, module in cadenza._EXPORTS.items():
        if module == "errors":
            assert getattr(cadenza, name) is getattr(errors, name)


def test_error_tree_matches_its_documentation():
    doc = errors.__doc__ or ""
    block = doc.split("```")[1]
    stack: list[str] = []
    checked = 0
    for line in block.splitlines():
        m = re.match(r"^([│ ├└─]*)(\w+)(?: \((\w+)\))?", line)
        if m is None or not m.group(2):
            continue
        depth = len(m.group(1)) // 4
        name, extra = m.group(2), m.group(3)
        cls = getattr(errors, name)
        del stack[depth:]
        if stack:
            parent = getattr(errors, stack[-1])
            assert cls.__bases__[0] is parent, f"{name} should derive from {stack[-1]}"
        if extra:
            assert issubclass(cls, getattr(builtins, extra)), f"{name} should be a {extra}"
        stack.append(name)
        checked += 1
    assert checked == len(errors.__all__) - len(SIGNALS)


def test_graph_interrupt_escapes_except_exception():
    with pytest.raises(errors.GraphInterrupt):
        try:
            raise errors.GraphInterrupt("approve?")
        except Exception:
            pytest.fail("GraphInterrupt was caught by except Exception")


def test_import_cadenza_does_not_import_pydantic():
    code = (
        "import sys, cadenza\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core'))\n"
        "print(repr(heavy))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]", f"import cadenza pulled in {proc.stdout.strip()}"
