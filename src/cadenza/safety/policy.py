"""Declarative policy for tool calls: allow, deny, or ask a human first.

A `Policy` is an ordered list of `Rule`s. A rule covers some tools (`"*"` for all), may be
limited to principals holding one of its `roles`, and holds when every condition in `when` is
true. Of the rules that hold for a call, deny beats approve and approve beats allow (the first
such rule in file order decides); when none holds, the policy's `default` effect applies.

Conditions are Python callables on `CallFacts`, or strings in a small expression language
(`"args.amount <= 100 and not context.injection"`) that `_predicates` parses with `ast` and
compiles once, at load time, into closures; nothing is ever passed to `eval`. Policies load from YAML or TOML
files with `Policy.from_file`; every problem is reported at once, by rule, in a `PolicyError`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import yaml

from ..context import Principal
from ..errors import PolicyError
from ._predicates import Predicate, PredicateError, compile_predicate

if TYPE_CHECKING:
    from ..tools import Tool

__all__ = ["ALLOW_ALL", "CallFacts", "Decision", "Effect", "Policy", "Rule"]

Effect = Literal["allow", "deny", "approve"]
"""What a policy decides for a call: run it, refuse it, or ask a human first."""

_EFFECTS = ("allow", "deny", "approve")
_POLICY_KEYS = ("name", "version", "default", "rules")
_RULE_KEYS = ("id", "effect", "tools", "when", "roles", "reason")


@dataclass(frozen=True, slots=True)
class CallFacts:
    """Everything a rule may look at; the Gate builds one for each tool call."""

    tool: str
    """The tool's name."""
    version: str
    """The tool's version, e.g. "1.2.0"."""
    side_effects: bool
    """True when the tool changes the world."""
    args: Mapping[str, Any]
    """The validated arguments."""
    principal: Principal
    """Who the run acts for."""
    workflow: str
    """The workflow (agent or graph) name."""
    agent: str | None
    """The agent making the call (None for a graph node)."""
    untrusted: bool
    """Untrusted content (tool outputs, retrieved documents) has entered the run."""
    tainted: frozenset[str]
    """Names of the arguments whose value was copied from untrusted content."""
    injection: bool
    """Prompt-injection markers were seen in the run's untrusted content."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of `Policy.decide` for one call."""

    effect: Effect
    """allow, deny or approve (ask a human)."""
    rule: str
    """The deciding rule's id, or "default" when no rule matched."""
    reason: str
    """Shown to the model when denied, and to the approver when approval is required."""
    policy_version: str
    """The version of the policy that decided."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a policy; a single string (or a list) is accepted for `tools`, `when`, `roles`.

    Predicate strings may use literals (numbers, strings, True/False/None, lists, tuples and
    sets of literals), `args.<param>` (None when not passed), `tool.name|version|side_effects`,
    `principal.user_id|roles|tenant`, `context.workflow|agent|untrusted|tainted|injection`,
    comparisons (chained too), `in`/`not in`, `and`/`or`/`not`, unary minus, and the helpers
    `domain(email)`, `under(path, prefix)`, `lower(s)`, `len(x)`, `matches(s, 'regex')`,
    `startswith(s, prefix)` and `endswith(s, suffix)`. Anything else fails at load time.
    """

    id: str
    """Unique id, reported in decisions and errors."""
    effect: Effect
    """What the rule decides when it holds."""
    tools: tuple[str, ...] = ("*",)
    """The tool names it covers; "*" covers every tool."""
    when: tuple[str | Callable[[CallFacts], bool], ...] = ()
    """Conditions that must all hold: predicate strings or callables on `CallFacts`."""
    roles: tuple[str, ...] = ()
    """The rule applies only to principals holding one of these roles (empty: anyone)."""
    reason: str = ""
    """Why; generated from the rule id and conditions when empty."""

    def __post_init__(self) -> None:
        for field in ("tools", "when", "roles"):
            value = cast(object, getattr(self, field))
            if isinstance(value, str) or callable(value):
                object.__setattr__(self, field, (value,))
            elif isinstance(value, list):
                object.__setattr__(self, field, tuple(cast(list[Any], value)))


# --- the policy ---------------------------------------------------------------------------------


class _Compiled:
    """A validated rule with its conditions compiled and its match decision prepared."""

    __slots__ = ("arg_names", "conds", "decision", "roles", "rule")

    def __init__(
        self, rule: Rule, conds: list[tuple[Predicate, str]], args: set[str], version: str
    ):
        self.rule = rule
        self.roles = frozenset(rule.roles) if rule.roles else None
        self.conds = tuple(conds)
        self.arg_names = frozenset(args)
        self.decision = Decision(rule.effect, rule.id, rule.reason or self._reason(), version)

    def _reason(self) -> str:
        rule = self.rule
        cond = " and ".join(text for _, text in self.conds)
        when = f" (when {cond})" if cond else ""
        if rule.effect == "deny":
            return f"denied by rule {rule.id!r}{when}"
        if rule.effect == "approve":
            return f"rule {rule.id!r} requires human approval{when}"
        return f"allowed by rule {rule.id!r}"

    def test(self, facts: CallFacts) -> bool | str:
        """True or False; or, when a condition raised, a description of the failure."""
        if self.roles is not None and self.roles.isdisjoint(facts.principal.roles):
            return False
        for fn, text in self.conds:
            try:
                if not fn(facts):
                    return False
            except Exception as exc:
                return f"{text} ({type(exc).__name__}: {exc})"
        return True


_Bucket = tuple[tuple[_Compiled, ...], tuple[_Compiled, ...], tuple[_Compiled, ...]]


def _bucket(rules: Iterable[_Compiled]) -> _Bucket:
    rules = tuple(rules)
    return (
        tuple(r for r in rules if r.rule.effect == "deny"),
        tuple(r for r in rules if r.rule.effect == "approve"),
        tuple(r for r in rules if r.rule.effect == "allow"),
    )


def _is_str(value: object) -> bool:
    return isinstance(value, str) and bool(value)


class Policy:
    """Decides every tool call: allow it, deny it, or require a human's approval.

    Rules that hold combine as deny > approve > allow; when none holds, `default` applies.
    Evaluation fails closed: a condition that raises (e.g. `None <= 100` for a missing
    argument, or an exception inside a callable) never lets a call through. In an allow rule
    the rule simply does not match; in a deny or approve rule the call is denied, naming the
    rule and saying that its condition could not be evaluated. An `args.x` not passed is None.
    """

    __slots__ = ("_compiled", "_index", "_star", "default", "name", "path", "rules", "version")

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        version: str,
        default: Effect = "deny",
        name: str = "policy",
    ) -> None:
        """Validate every rule and compile its predicates.

        Raises:
            PolicyError: every problem found (bad effect, duplicate id, bad predicate, ...).

        """
        self.rules: tuple[Rule, ...] = tuple(rules)
        """The rules, in file order."""
        self.version = version
        """Reported in every decision."""
        self.default: Effect = default
        """The effect when no rule holds."""
        self.name = name
        """The policy's name, used in messages."""
        self.path: Path | None = None
        """The file it was loaded from (`from_file`), so a run can reload it on resume."""
        problems: list[str] = []
        if not _is_str(version):
            problems.append("version must be a non-empty string")
        if default not in _EFFECTS:
            problems.append(f"default {default!r} must be one of {', '.join(_EFFECTS)}")
        compiled: list[_Compiled] = []
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            label = f"rule {rule.id!r}" if _is_str(rule.id) else f"rules[{i}]"
            count = len(problems)
            if not _is_str(rule.id):
                problems.append(f"{label}: id must be a non-empty string")
            elif rule.id in seen:
                problems.append(f"{label}: duplicate rule id; ids must be unique")
            else:
                seen.add(rule.id)
            if rule.effect not in _EFFECTS:
                problems.append(
                    f"{label}: effect {rule.effect!r} must be one of allow, deny, approve"
                )
            for key in ("tools", "roles", "when"):
                value = cast(object, getattr(rule, key))
                if not isinstance(value, tuple) or (
                    key != "when" and not all(_is_str(v) for v in cast(tuple[object, ...], value))
                ):
                    problems.append(f"{label}: {key} must be a string or a list of strings")
            if not rule.tools:
                problems.append(f"{label}: tools is empty; name tools or use '*'")
            if not isinstance(cast(object, rule.reason), str):
                problems.append(f"{label}: reason must be a string")
            if len(problems) > count:
                continue
            conds: list[tuple[Predicate, str]] = []
            args: set[str] = set()
            for cond in rule.when:
                if isinstance(cond, str):
                    try:
                        fn, used = compile_predicate(cond)
                    except PredicateError as exc:
                        problems.append(f"{label}: when {cond!r}: {exc}")
                        continue
                    conds.append((fn, cond))
                    args |= used
                elif callable(cond):
                    conds.append((cond, f"<{getattr(cond, '__qualname__', repr(cond))}>"))
                else:
                    problems.append(f"{label}: when {cond!r} must be a string or a callable")
            if len(problems) == count:
                compiled.append(_Compiled(rule, conds, args, version))
        if problems:
            raise PolicyError(problems, f"policy {name!r}")
        self._compiled = tuple(compiled)
        star = [c for c in compiled if "*" in c.rule.tools]
        self._star: _Bucket = _bucket(star)
        names = {t for c in compiled for t in c.rule.tools if t != "*"}
        self._index: dict[str, _Bucket] = {
            n: _bucket(c for c in compiled if n in c.rule.tools or "*" in c.rule.tools)
            for n in names
        }

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        """Load a policy from a `.yaml`, `.yml` or `.toml` file.

        Raises:
            PolicyError: the file cannot be read or parsed, or its policy is invalid; the
                message names the file.

        """
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix not in (".yaml", ".yml", ".toml"):
            raise PolicyError(
                [f"unsupported file type {suffix!r}; use .yaml, .yml or .toml"], str(p)
            )
        try:
            text = p.read_text(encoding="utf-8")
            data = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
        except OSError as exc:
            raise PolicyError([f"cannot read the file: {exc.strerror or exc}"], str(p)) from exc
        except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
            kind = "TOML" if suffix == ".toml" else "YAML"
            raise PolicyError([f"not valid {kind}: {exc}"], str(p)) from exc
        policy = cls.from_dict(data, source=str(p))
        policy.path = p.resolve()
        return policy

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "policy") -> Policy:
        """Build a policy from parsed YAML/TOML data (keys: name, version, default, rules).

        Raises:
            PolicyError: every problem found: unknown or missing keys, invalid values, bad
                predicates; each names the rule.

        """
        if not isinstance(cast(object, data), Mapping):
            raise PolicyError(
                [f"expected a mapping at top level, got {type(data).__name__}"], source
            )
        problems: list[str] = []
        allowed = ", ".join(_POLICY_KEYS)
        problems += [
            f"unknown top-level key {k!r} (allowed: {allowed})"
            for k in data
            if k not in _POLICY_KEYS
        ]
        version = data.get("version")
        if version is None:
            problems.append('version is missing; add e.g. version: "1"')
        elif isinstance(version, bool) or not isinstance(version, str | int):
            # YAML reads `version: 1.10` as the float 1.1; insist on quotes instead.
            problems.append(f"version must be a (quoted) string, got {version!r}")
        name = data.get("name", "policy")
        if not _is_str(name):
            problems.append(f"name must be a non-empty string, got {name!r}")
        default = data.get("default", "deny")
        if default not in _EFFECTS:
            problems.append(f"default {default!r} must be one of {', '.join(_EFFECTS)}")
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            problems.append("rules must be a list")
            raw_rules = []
        rules: list[Rule] = []
        for i, raw in enumerate(cast(list[Any], raw_rules)):
            if not isinstance(raw, Mapping):
                problems.append(f"rules[{i}]: expected a mapping, got {type(raw).__name__}")
                continue
            entry = cast(Mapping[str, Any], raw)
            rid = entry.get("id")
            label = f"rule {rid!r}" if _is_str(rid) else f"rules[{i}]"
            count = len(problems)
            unknown = [k for k in entry if k not in _RULE_KEYS]
            if unknown:
                keys = ", ".join(repr(k) for k in unknown)
                problems.append(
                    f"{label}: unknown key(s) {keys} (allowed: {', '.join(_RULE_KEYS)})"
                )
            problems += [f"{label}: missing {k!r}" for k in ("id", "effect") if k not in entry]
            if len(problems) == count:
                rules.append(Rule(**entry))
        try:
            policy = cls(
                rules,
                version="?" if version is None else str(version),
                default=default if default in _EFFECTS else "deny",
                name=name if _is_str(name) else "policy",
            )
        except PolicyError as exc:
            problems.extend(exc.problems)
        else:
            if not problems:
                return policy
        raise PolicyError(problems, source)

    def check(self, tools: Mapping[str, Tool]) -> None:
        """Check the rules against the tools actually available (name → tool).

        Raises:
            PolicyError: every rule naming an unknown tool, using an `args.x` that is not a
                parameter of each tool it names, or using `args.x` on every tool ("*").

        """
        problems: list[str] = []
        available = ", ".join(sorted(tools)) or "none"
        for c in self._compiled:
            rid = c.rule.id
            used = sorted(c.arg_names)
            if "*" in c.rule.tools:
                if used:
                    refs = ", ".join(f"args.{a}" for a in used)
                    problems.append(
                        f"rule {rid!r} uses {refs} but applies to every tool ('*'); name its tools"
                    )
                continue
            for tname in c.rule.tools:
                t = tools.get(tname)
                if t is None:
                    problems.append(
                        f"rule {rid!r}: unknown tool {tname!r} (available: {available})"
                    )
                    continue
                params = t.args_model.model_fields
                for a in used:
                    if a not in params:
                        known = ", ".join(params) or "none"
                        problems.append(
                            f"rule {rid!r}: args.{a} is not a parameter of tool {tname!r} "
                            f"(parameters: {known})"
                        )
        if problems:
            raise PolicyError(problems, f"policy {self.name}@{self.version}")

    def decide(self, facts: CallFacts) -> Decision:
        """Decide one call; only the rules covering `facts.tool` (and "*" rules) are tested."""
        denies, approves, allows = self._index.get(facts.tool, self._star)
        for c in denies:
            result = c.test(facts)
            if result is True:
                return c.decision
            if result is not False:
                return self._failed(c, result)
        approved: Decision | None = None
        # Every approve rule runs: one that cannot be evaluated denies, overriding approval.
        for c in approves:
            result = c.test(facts)
            if result is True:
                approved = approved or c.decision
            elif result is not False:
                return self._failed(c, result)
        if approved is not None:
            return approved
        for c in allows:
            if c.test(facts) is True:
                return c.decision
        return Decision(self.default, "default", self._default_reason(facts), self.version)

    def _failed(self, c: _Compiled, failure: str) -> Decision:
        reason = (
            f"rule {c.rule.id!r} could not be evaluated: {failure}; the call is denied "
            "because the policy fails closed"
        )
        return Decision("deny", c.rule.id, reason, self.version)

    def _default_reason(self, facts: CallFacts) -> str:
        verb = {"deny": "allows", "approve": "decides", "allow": "restricts"}[self.default]
        call = f"tool {facts.tool!r} for user {facts.principal.user_id!r}"
        tail = {"deny": "", "approve": "; a human must approve it", "allow": "; allowed"}
        return f"no rule of policy {self.name}@{self.version} {verb} {call}{tail[self.default]}"

    def __repr__(self) -> str:
        return (
            f"<Policy {self.name}@{self.version}: {len(self.rules)} rules, default {self.default}>"
        )


ALLOW_ALL = Policy([], version="allow-all", default="allow", name="allow-all")
"""A policy that allows every call: what "policy switched off" means."""
