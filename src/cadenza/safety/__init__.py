"""The safety layer: the policy engine, guards and taint tracking the Gate applies to every call.

- `Policy` / `Rule`: declarative rules (Python, YAML or TOML) deciding allow / deny / approve
  over the principal, the tool, its arguments and the run's context.
- `Guards`: input size limits, PII redaction, prompt-injection markers, moderation hook.
- `TaintTracker`: which arguments were copied from untrusted content (tool outputs).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .guards import Guards, Moderation, as_data, find_pii, injection_markers, redact, redact_value
from .policy import ALLOW_ALL, CallFacts, Decision, Policy, Rule
from .taint import TaintTracker

if TYPE_CHECKING:
    from ..tools import Tool

__all__ = [
    "ALLOW_ALL",
    "CallFacts",
    "Decision",
    "Guards",
    "Moderation",
    "Policy",
    "Rule",
    "TaintTracker",
    "as_data",
    "find_pii",
    "injection_markers",
    "load_policy",
    "redact",
    "redact_value",
]


def load_policy(policy: Policy | str | Path | None, tools: Mapping[str, Tool]) -> Policy | None:
    """A policy (loaded from its file when given a path), checked against the tools it governs.

    Raises:
        PolicyError: the file cannot be read, or a rule names an unknown tool or argument.

    """
    if policy is None:
        return None
    loaded = policy if isinstance(policy, Policy) else Policy.from_file(policy)
    loaded.check(tools)
    return loaded
