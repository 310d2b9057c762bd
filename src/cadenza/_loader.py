"""Load a workflow named `path/file.py:name` or `package.module:name`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, cast

from .errors import WorkflowLoadError

BUILTIN_WORKFLOWS = {
    "support": "cadenza.apps.support:bot",
    "desk": "cadenza.apps.support.desk:assistant",
}
"""Workflows shipped with Cadenza, runnable by name: `cadenza run support "..."`."""


def load_workflow(ref: str) -> Any:
    """The Agent or CompiledGraph `ref` names (a `Graph` is compiled on the way).

    Raises:
        WorkflowLoadError: the file, module or name does not exist, or is not a workflow.
    """
    from .agent import Agent
    from .graph import CompiledGraph, Graph

    ref = BUILTIN_WORKFLOWS.get(ref, ref)
    target, sep, name = ref.rpartition(":")
    if not sep or not target or not name:
        raise WorkflowLoadError(
            f"workflow {ref!r} must look like 'path/file.py:name' or 'package.module:name' "
            f"(or be a built-in: {', '.join(BUILTIN_WORKFLOWS)})"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise WorkflowLoadError(f"workflow file {target!r} does not exist")
        mod_name = f"_cadenza_wf_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise WorkflowLoadError(f"cannot import {target!r} as Python")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            sys.path.insert(0, str(path.resolve().parent))
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[mod_name]
                raise WorkflowLoadError(
                    f"importing {target!r} failed: {type(exc).__name__}: {exc}"
                ) from exc
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise WorkflowLoadError(f"cannot import module {target!r}: {exc}") from exc
        except Exception as exc:
            raise WorkflowLoadError(
                f"importing {target!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    obj = getattr(module, name, None)
    if obj is None:
        found = sorted(
            n for n, v in vars(module).items() if isinstance(v, Agent | Graph | CompiledGraph)
        )
        hint = f"; workflows there: {', '.join(found)}" if found else ""
        raise WorkflowLoadError(f"{target!r} has no attribute {name!r}{hint}")
    if isinstance(obj, Graph):
        return obj.compile()  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    if not isinstance(obj, Agent | CompiledGraph):  # pyright: ignore[reportUnknownArgumentType]
        raise WorkflowLoadError(
            f"{ref!r} is a {type(obj).__name__}, not an Agent, Graph or CompiledGraph"
        )
    return cast(Any, obj)
