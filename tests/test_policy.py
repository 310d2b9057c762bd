"""`cadenza.safety.policy`: predicate language, rule combination, loading and `check()`."""

import ast
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest

from cadenza import tool
from cadenza.context import Principal
from cadenza.errors import PolicyError
from cadenza.safety.policy import ALLOW_ALL, CallFacts, Decision, Policy, Rule


def facts(
    tool: str = "t",
    args: dict[str, Any] | None = None,
    *,
    user: str = "u1",
    roles: tuple[str, ...] = (),
    tenant: str | None = None,
    version: str = "1.2.0",
    side_effects: bool = False,
    workflow: str = "support",
    agent: str | None = "helper",
    untrusted: bool = False,
    tainted: tuple[str, ...] = (),
    injection: bool = False,
) -> CallFacts:
    return CallFacts(
        tool=tool,
        version=version,
        side_effects=side_effects,
        args=args or {},
        principal=Principal(user_id=user, roles=roles, tenant=tenant),
        workflow=workflow,
        agent=agent,
        untrusted=untrusted,
        tainted=frozenset(tainted),
        injection=injection,
    )


def holds(expr: str, **kw: Any) -> bool:
    """True when an allow rule with this one predicate matches the call."""
    decision = Policy([Rule("r", "allow", when=(expr,))], version="1").decide(facts(**kw))
    return decision.rule == "r"


def problems_of(exc: pytest.ExceptionInfo[PolicyError]) -> str:
    return "\n".join(exc.value.problems)


# --- predicate language ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "args", "expected"),
    [
        ("args.n == 3", {"n": 3}, True),
        ("args.n == 3", {"n": 4}, False),
        ("args.n != 3", {"n": 4}, True),
        ("args.n != 3", {"n": 3}, False),
        ("args.n < 3", {"n": 2}, True),
        ("args.n < 3", {"n": 3}, False),
        ("args.n <= 3", {"n": 3}, True),
        ("args.n <= 3", {"n": 4}, False),
        ("args.n > 3", {"n": 4}, True),
        ("args.n > 3", {"n": 3}, False),
        ("args.n >= 3", {"n": 3}, True),
        ("args.n >= 3", {"n": 2}, False),
        ("1 < args.n <= 5", {"n": 5}, True),
        ("1 < args.n <= 5", {"n": 1}, False),
        ("1 < args.n <= 5", {"n": 6}, False),
        ("args.n > -2", {"n": -1}, True),
        ("-args.n == 4", {"n": -4}, True),
        ("args.s in ['a', 'b']", {"s": "b"}, True),
        ("args.s in ('a', 'b')", {"s": "c"}, False),
        ("args.s in {'a', 'b'}", {"s": "a"}, True),
        ("args.s not in ['a', 'b']", {"s": "c"}, True),
        ("args.s not in ['a', 'b']", {"s": "a"}, False),
        ("'x' in args.s", {"s": "axe"}, True),
        ("args.n > 1 and args.n < 3", {"n": 2}, True),
        ("args.n > 1 and args.n < 3", {"n": 3}, False),
        ("args.n < 1 or args.n > 3", {"n": 0}, True),
        ("args.n < 1 or args.n > 3", {"n": 2}, False),
        ("args.a and args.b and args.c", {"a": 1, "b": 1, "c": 1}, True),
        ("args.a or args.b or args.c", {"a": 0, "b": 0, "c": 0}, False),
        ("not args.flag", {"flag": False}, True),
        ("not args.flag", {"flag": True}, False),
        ("args.flag == True", {"flag": True}, True),
        ("args.missing == None", {}, True),
        ("args.tags == ['a', 'b']", {"tags": ["a", "b"]}, True),
        ("args.x == 1.5", {"x": 1.5}, True),
    ],
)
def test_operators(expr: str, args: dict[str, Any], expected: bool) -> None:
    assert holds(expr, args=args) is expected


@pytest.mark.parametrize(
    ("expr", "args", "expected"),
    [
        ("domain(args.to) == 'example.com'", {"to": "Ann@Example.COM"}, True),
        ("domain(args.to) == 'evil.com'", {"to": "a@example.com@evil.com"}, True),
        ("domain(args.to) == ''", {"to": "no-at-sign"}, True),
        ("under(args.p, '/srv/data')", {"p": "/srv/data/a/b.txt"}, True),
        ("under(args.p, '/srv/data')", {"p": "/srv/data"}, True),
        ("under(args.p, '/srv/data')", {"p": "/srv/database/x"}, False),
        ("under(args.p, '/srv/data/')", {"p": "/srv/data/x/../y"}, True),
        ("under(args.p, 'data')", {"p": "data/x"}, True),
        ("under(args.p, 'data')", {"p": "/data/x"}, False),
        ("lower(args.s) == 'abc'", {"s": "AbC"}, True),
        ("len(args.s) == 3", {"s": "abc"}, True),
        ("len(args.items) > 2", {"items": [1, 2]}, False),
        ("matches(args.s, '[a-z]+-[0-9]{3}')", {"s": "inv-123"}, True),
        ("matches(args.s, '[a-z]+')", {"s": "abc1"}, False),  # fullmatch, not search
        ("startswith(args.s, 'ab')", {"s": "abc"}, True),
        ("startswith(args.s, 'bc')", {"s": "abc"}, False),
        ("startswith(args.s, ('x', 'a'))", {"s": "abc"}, True),
        ("endswith(args.s, 'bc')", {"s": "abc"}, True),
        ("endswith(args.s, ['x', 'y'])", {"s": "abc"}, False),
    ],
)
def test_helpers(expr: str, args: dict[str, Any], expected: bool) -> None:
    assert holds(expr, args=args) is expected


@pytest.mark.parametrize(
    "path",
    [
        "/srv/data/../etc/passwd",
        "/srv/data/../../etc/passwd",
        "/srv/data/a/../../../etc",
        "/srv/data/..",
        "/srv/data-other/x",
        "srv/data/x",
        "/srv/./data/../x",
    ],
)
def test_under_cannot_be_escaped(path: str) -> None:
    assert not holds("under(args.p, '/srv/data')", args={"p": path})


@pytest.mark.parametrize(
    ("path", "prefix"),
    [("../secret", "."), ("data/../../x", "data"), ("../../x", ".."), ("", "/")],
)
def test_under_relative_paths_cannot_climb_out(path: str, prefix: str) -> None:
    assert not holds(f"under(args.p, {prefix!r})", args={"p": path})


def test_under_double_slash_is_still_under_root_prefix() -> None:
    # A deny rule on /etc must not be dodged with "//etc" or "/./etc".
    deny = Policy(
        [Rule("no-etc", "deny", when="under(args.p, '/etc')"), Rule("rest", "allow")],
        version="1",
    )
    for p in ("//etc/passwd", "/./etc/passwd", "/tmp/../etc/shadow", "/etc"):
        assert deny.decide(facts(args={"p": p})).effect == "deny", p
    assert deny.decide(facts(args={"p": "/etcetera"})).effect == "allow"


@pytest.mark.parametrize(
    ("expr", "kw"),
    [
        ("tool.name == 'send_email'", {"tool": "send_email"}),
        ("tool.version == '2.0.0'", {"version": "2.0.0"}),
        ("tool.side_effects", {"side_effects": True}),
        ("principal.user_id == 'ann'", {"user": "ann"}),
        ("'admin' in principal.roles", {"roles": ("staff", "admin")}),
        ("principal.tenant == 'acme'", {"tenant": "acme"}),
        ("context.workflow == 'billing'", {"workflow": "billing"}),
        ("context.agent == None", {"agent": None}),
        ("context.untrusted", {"untrusted": True}),
        ("'to' in context.tainted", {"tainted": ("to",)}),
        ("context.injection", {"injection": True}),
    ],
)
def test_attributes_of_tool_principal_and_context(expr: str, kw: dict[str, Any]) -> None:
    assert holds(expr, **kw)
    assert not holds(expr)  # the defaults of `facts()` make every one of them false


def test_bare_literals_and_constants() -> None:
    assert holds("True")
    assert not holds("False")
    assert not holds("None")


# --- combination ---------------------------------------------------------------------------------


def test_deny_overrides_approve_and_allow_in_any_order() -> None:
    rules = [
        Rule("a", "allow"),
        Rule("p", "approve", reason="check"),
        Rule("d", "deny", reason="no"),
    ]
    for order in (rules, rules[::-1], [rules[1], rules[2], rules[0]]):
        d = Policy(order, version="9").decide(facts())
        assert d == Decision("deny", "d", "no", "9")


def test_approve_overrides_allow() -> None:
    p = Policy([Rule("a", "allow"), Rule("p", "approve", reason="ask Bob")], version="1")
    assert p.decide(facts()) == Decision("approve", "p", "ask Bob", "1")


def test_first_matching_approve_in_file_order_decides() -> None:
    p = Policy(
        [Rule("p1", "approve", when="args.n > 5"), Rule("p2", "approve"), Rule("p3", "approve")],
        version="1",
    )
    assert p.decide(facts(args={"n": 9})).rule == "p1"
    assert p.decide(facts(args={"n": 1})).rule == "p2"


def test_first_matching_deny_in_file_order_decides() -> None:
    p = Policy(
        [
            Rule("d1", "deny", when="args.n > 10", reason="too big"),
            Rule("d2", "deny", when="args.n > 5", reason="big"),
            Rule("d3", "deny", when="args.n > 0", reason="positive"),
        ],
        version="1",
    )
    assert p.decide(facts(args={"n": 7})).rule == "d2"
    assert p.decide(facts(args={"n": 70})).rule == "d1"
    assert p.decide(facts(args={"n": 1})).reason == "positive"


def test_all_conditions_of_a_rule_must_hold() -> None:
    p = Policy([Rule("r", "allow", when=["args.a == 1", "args.b == 2"])], version="1")
    assert p.decide(facts(args={"a": 1, "b": 2})).effect == "allow"
    assert p.decide(facts(args={"a": 1, "b": 3})).effect == "deny"


@pytest.mark.parametrize("default", ["deny", "allow", "approve"])
def test_default_effect_when_no_rule_matches(default: Any) -> None:
    p = Policy([Rule("r", "allow", tools="other")], version="2026.1", default=default, name="desk")
    d = p.decide(facts(tool="x", user="ann"))
    assert (d.effect, d.rule, d.policy_version) == (default, "default", "2026.1")
    assert "desk@2026.1" in d.reason
    assert "'x'" in d.reason
    assert "'ann'" in d.reason


def test_default_deny_reason_reads_well() -> None:
    p = Policy([], version="2026.11.1", name="support-desk")
    assert p.decide(facts(tool="x", user="u")).reason == (
        "no rule of policy support-desk@2026.11.1 allows tool 'x' for user 'u'"
    )


def test_rules_apply_only_to_their_tools() -> None:
    p = Policy(
        [Rule("mail", "allow", tools=("send_email",)), Rule("any", "approve", tools="*")],
        version="1",
    )
    assert p.decide(facts(tool="send_email")).effect == "approve"  # "*" rules cover it too
    p2 = Policy([Rule("mail", "allow", tools="send_email")], version="1")
    assert p2.decide(facts(tool="send_email")).effect == "allow"
    assert p2.decide(facts(tool="delete_record")).effect == "deny"


def test_roles_restrict_a_rule() -> None:
    p = Policy(
        [Rule("admins", "allow", tools="delete_record", roles=["admin", "owner"])], version="1"
    )
    assert p.decide(facts(tool="delete_record", roles=("owner",))).effect == "allow"
    assert p.decide(facts(tool="delete_record", roles=("staff",))).effect == "deny"
    assert p.decide(facts(tool="delete_record")).rule == "default"


def test_deny_without_reason_gets_one_naming_rule_and_condition() -> None:
    p = Policy([Rule("big", "deny", when="args.n > 100")], version="1")
    reason = p.decide(facts(args={"n": 101})).reason
    assert "'big'" in reason
    assert "args.n > 100" in reason


def test_tainted_untrusted_and_injection_context() -> None:
    p = Policy(
        [
            Rule("tainted", "deny", tools=["send_email"], when="'to' in context.tainted"),
            Rule("inj", "approve", when="context.injection", reason="injection seen"),
            Rule("untrusted-effects", "approve", when=["context.untrusted", "tool.side_effects"]),
            Rule("ok", "allow"),
        ],
        version="1",
    )
    assert p.decide(facts(tool="send_email", tainted=("to",))).rule == "tainted"
    assert p.decide(facts(tool="send_email", tainted=("body",))).effect == "allow"
    assert p.decide(facts(tool="lookup", tainted=("to",))).effect == "allow"
    assert p.decide(facts(injection=True)).rule == "inj"
    assert p.decide(facts(untrusted=True, side_effects=True)).rule == "untrusted-effects"
    assert p.decide(facts(untrusted=True)).effect == "allow"


def test_python_callables_as_conditions() -> None:
    p = Policy(
        [Rule("weekday", "allow", when=(lambda f: f.args.get("day") != "sun", "args.n < 5"))],
        version="1",
    )
    assert p.decide(facts(args={"day": "mon", "n": 1})).effect == "allow"
    assert p.decide(facts(args={"day": "sun", "n": 1})).effect == "deny"


def test_allow_all() -> None:
    d = ALLOW_ALL.decide(facts(tool="anything", injection=True))
    assert (d.effect, d.policy_version) == ("allow", "allow-all")


def test_decide_touches_only_the_rules_of_the_tool() -> None:
    seen: list[str] = []

    def spy(name: str) -> Any:
        def cond(f: CallFacts) -> bool:
            seen.append(name)
            return False

        return cond

    p = Policy(
        [
            Rule("a", "deny", tools="a", when=spy("a")),
            Rule("b", "deny", tools="b", when=spy("b")),
            Rule("star", "deny", when=spy("star")),
        ],
        version="1",
    )
    p.decide(facts(tool="b"))
    assert seen == ["b", "star"]
    seen.clear()
    p.decide(facts(tool="unknown"))
    assert seen == ["star"]


# --- fail closed -------------------------------------------------------------------------------


def test_failing_allow_rule_does_not_match() -> None:
    p = Policy([Rule("small", "allow", when="args.amount <= 100")], version="1")
    d = p.decide(facts())  # amount not passed: None <= 100 raises TypeError
    assert (d.effect, d.rule) == ("deny", "default")
    p2 = Policy(
        [Rule("small", "allow", when="args.amount <= 100"), Rule("ask", "approve")], version="1"
    )
    assert p2.decide(facts(args={"amount": "lots"})).rule == "ask"


@pytest.mark.parametrize("effect", ["deny", "approve"])
def test_failing_deny_or_approve_rule_denies(effect: Any) -> None:
    p = Policy(
        [Rule("large", effect, when="args.amount > 100"), Rule("ok", "allow")],
        version="1",
    )
    d = p.decide(facts())
    assert (d.effect, d.rule) == ("deny", "large")
    assert "could not be evaluated" in d.reason
    assert "args.amount > 100" in d.reason
    assert p.decide(facts(args={"amount": 5})).effect == "allow"


def test_failing_approve_rule_wins_over_another_matching_approve() -> None:
    p = Policy(
        [Rule("ask", "approve"), Rule("bad", "approve", when="len(args.x) > 1")], version="1"
    )
    assert p.decide(facts()).rule == "bad"
    assert p.decide(facts()).effect == "deny"


def test_failing_helper_fails_closed() -> None:
    p = Policy([Rule("outside", "deny", when="domain(args.to) != 'example.com'")], version="1")
    d = p.decide(facts(args={"to": 42}))
    assert (d.effect, d.rule) == ("deny", "outside")
    assert "could not be evaluated" in d.reason


def test_raising_callable_fails_closed() -> None:
    def boom(f: CallFacts) -> bool:
        raise RuntimeError("backend down")

    deny = Policy([Rule("check", "deny", when=boom), Rule("ok", "allow")], version="1")
    d = deny.decide(facts())
    assert (d.effect, d.rule) == ("deny", "check")
    assert "backend down" in d.reason
    allow = Policy([Rule("check", "allow", when=boom)], version="1", default="approve")
    assert allow.decide(facts()).rule == "default"


# --- load-time errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("args.amount <=", "syntax error"),
        ("__import__('os')", "'__import__' is not allowed"),
        ("args.__class__", "'__class__' is not allowed"),
        ("tool.__class__.__mro__", "not allowed"),
        ("args.x[0] == 1", "subscripts"),
        ("(lambda: 1)()", "not allowed"),
        ("lambda: 1", "lambdas"),
        ("[x for x in args.y]", "comprehensions"),
        ("args.a + 1 > 2", "arithmetic"),
        ("open('/etc/passwd')", "'open' is not allowed"),
        ("os.system", "unknown name 'os'"),
        ("secret == 1", "unknown name 'secret'"),
        ("args == 1", "must be followed by an attribute"),
        ("tool.owner == 'x'", "unknown attribute 'tool.owner'"),
        ("principal.password", "unknown attribute 'principal.password'"),
        ("context.env", "unknown attribute 'context.env'"),
        ("args.to is None", "operator Is"),
        ("matches(args.s, args.pattern)", "string literal"),
        ("matches(args.s, '(unclosed')", "invalid regex"),
        ("len(args.a, args.b)", "exactly 1"),
        ("lower(s=args.a)", "exactly 1"),
        ("args.a == b'bytes'", "literal b'bytes'"),
        ("args.a in [args.b]", "only literals"),
        ("{'k': 1} == args.a", "dict literals"),
        ("f'{args.a}' == 'x'", "f-strings"),
        ("(y := 1)", "assignment"),
        ("args.a if args.b else args.c", "conditional"),
        ("domain", "must be called"),
    ],
)
def test_forbidden_or_malformed_predicates_fail_at_load(expr: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as exc:
        Policy([Rule("the-rule", "allow", when=expr)], version="1")
    msg = str(exc.value)
    assert "rule 'the-rule'" in msg
    assert repr(expr) in msg
    assert fragment in msg


def test_unknown_keys_are_errors_naming_rule_and_key() -> None:
    data = {
        "version": "1",
        "owner": "ops",
        "rules": [{"id": "r1", "effect": "allow", "tool": "send_email"}],
    }
    with pytest.raises(PolicyError) as exc:
        Policy.from_dict(data, source="desk.yaml")
    text = problems_of(exc)
    assert "unknown top-level key 'owner'" in text
    assert "rule 'r1': unknown key(s) 'tool'" in text
    assert str(exc.value).startswith("desk.yaml has 2 problem(s)")


def test_bad_effect_duplicate_id_missing_fields_and_version_all_reported_together() -> None:
    data = {
        "default": "maybe",
        "rules": [
            {"id": "r1", "effect": "permit"},
            {"id": "r2", "effect": "allow"},
            {"id": "r2", "effect": "deny"},
            {"effect": "deny"},
            {"id": "r4"},
            {"id": "r5", "effect": "allow", "when": "args.x ==="},
            {"id": "r6", "effect": "allow", "tools": 5},
            "not a rule",
        ],
    }
    with pytest.raises(PolicyError) as exc:
        Policy.from_dict(data)
    problems = exc.value.problems
    text = "\n".join(problems)
    assert "version is missing" in text
    assert "default 'maybe'" in text
    assert "rule 'r1': effect 'permit' must be one of allow, deny, approve" in text
    assert "rule 'r2': duplicate rule id" in text
    assert "rules[3]: missing 'id'" in text
    assert "rule 'r4': missing 'effect'" in text
    assert "rule 'r5': when 'args.x ===': syntax error" in text
    assert "rule 'r6': tools must be" in text
    assert "rules[7]: expected a mapping" in text
    assert len(problems) == 9


def test_policy_init_collects_all_problems() -> None:
    with pytest.raises(PolicyError) as exc:
        Policy(
            [
                Rule("a", "allow", when=["args.__dict__", "nope"]),
                Rule("b", "forbid"),  # type: ignore[arg-type]
                Rule("a", "deny"),
                Rule("", "deny"),
                Rule("c", "deny", tools=()),
            ],
            version="",
        )
    assert len(exc.value.problems) == 7
    text = problems_of(exc)
    assert "version must be a non-empty string" in text
    assert "rules[3]: id must be a non-empty string" in text
    assert "rule 'c': tools is empty" in text


def test_rule_accepts_strings_and_lists() -> None:
    r = Rule("r", "deny", tools="send_email", when="args.x == 1", roles=["admin"])
    assert r.tools == ("send_email",)
    assert r.when == ("args.x == 1",)
    assert r.roles == ("admin",)
    fn = bool
    assert Rule("r", "deny", when=fn).when == (fn,)
    assert Rule("r", "deny", tools=["a", "b"]).tools == ("a", "b")


@pytest.mark.parametrize("module", ["cadenza.safety.policy", "cadenza.safety._predicates"])
def test_module_never_calls_eval_or_exec(module: str) -> None:
    tree = ast.parse(inspect.getsource(importlib.import_module(module)))
    called = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not called & {"eval", "exec", "compile", "__import__"}


# --- check() against real tools -------------------------------------------------------------------


@tool(side_effects=True)
def send_email(to: str, subject: str, body: str) -> str:
    """Send an email."""
    return "sent"


@tool(side_effects=True)
def issue_refund(order_id: str, amount: float) -> str:
    """Refund an order."""
    return "ok"


TOOLS = {t.name: t for t in (send_email, issue_refund)}


def test_check_passes_for_matching_tools() -> None:
    p = Policy(
        [
            Rule("small", "allow", tools="issue_refund", when="args.amount <= 100"),
            Rule("mail", "deny", tools="send_email", when="domain(args.to) != 'example.com'"),
            Rule("inj", "deny", when="context.injection"),
        ],
        version="1",
    )
    assert p.check(TOOLS) is None


def test_check_reports_unknown_tools_and_arguments_all_at_once() -> None:
    p = Policy(
        [
            Rule("ghost", "allow", tools=["send_emial"]),
            Rule("typo", "allow", tools="issue_refund", when="args.amuont <= 100"),
            Rule("both", "deny", tools=["send_email", "issue_refund"], when="'x' in args.to"),
            Rule("star", "deny", when="args.amount > 5"),
        ],
        version="3",
        name="desk",
    )
    with pytest.raises(PolicyError) as exc:
        p.check(TOOLS)
    problems = exc.value.problems
    assert len(problems) == 4
    assert "rule 'ghost': unknown tool 'send_emial'" in problems[0]
    assert "issue_refund, send_email" in problems[0]
    assert "rule 'typo': args.amuont is not a parameter of tool 'issue_refund'" in problems[1]
    assert "order_id, amount" in problems[1]
    assert "rule 'both': args.to is not a parameter of tool 'issue_refund'" in problems[2]
    assert "rule 'star' uses args.amount but applies to every tool" in problems[3]
    assert str(exc.value).startswith("policy desk@3 has 4 problem(s)")


# --- files ----------------------------------------------------------------------------------------

YAML = """\
name: support-desk
version: "2026.11.1"
default: deny
rules:
  - id: refunds-small
    tools: issue_refund
    effect: allow
    when: ["args.amount <= 100", "not context.injection"]
  - id: refunds-large
    tools: [issue_refund]
    effect: approve
    when: "args.amount > 100"
    reason: refunds above 100 EUR need a supervisor
  - id: mail-outside
    tools: send_email
    effect: deny
    when: "domain(args.to) not in ['example.com', 'nimbus.example']"
    reason: mail may only go to our own domains
  - id: no-tainted-recipients
    tools: [send_email, transfer_money]
    effect: deny
    when: "'to' in context.tainted or 'iban' in context.tainted"
  - id: mail-ok
    tools: send_email
    effect: allow
  - id: admins-delete
    tools: delete_record
    roles: [admin]
    effect: allow
"""

TOML = """\
name = "support-desk"
version = "2026.11.1"
default = "deny"

[[rules]]
id = "refunds-small"
tools = "issue_refund"
effect = "allow"
when = ["args.amount <= 100", "not context.injection"]

[[rules]]
id = "refunds-large"
tools = ["issue_refund"]
effect = "approve"
when = "args.amount > 100"
reason = "refunds above 100 EUR need a supervisor"

[[rules]]
id = "mail-outside"
tools = "send_email"
effect = "deny"
when = "domain(args.to) not in ['example.com', 'nimbus.example']"
reason = "mail may only go to our own domains"

[[rules]]
id = "no-tainted-recipients"
tools = ["send_email", "transfer_money"]
effect = "deny"
when = "'to' in context.tainted or 'iban' in context.tainted"

[[rules]]
id = "mail-ok"
tools = "send_email"
effect = "allow"

[[rules]]
id = "admins-delete"
tools = "delete_record"
roles = ["admin"]
effect = "allow"
"""

CALLS = [
    (facts("issue_refund", {"amount": 50}), "allow", "refunds-small"),
    (facts("issue_refund", {"amount": 50}, injection=True), "deny", "default"),
    (facts("issue_refund", {"amount": 500}), "approve", "refunds-large"),
    (facts("send_email", {"to": "a@evil.com"}), "deny", "mail-outside"),
    (facts("send_email", {"to": "a@Nimbus.Example"}), "allow", "mail-ok"),
    (
        facts("send_email", {"to": "a@example.com"}, tainted=("to",)),
        "deny",
        "no-tainted-recipients",
    ),
    (facts("delete_record", roles=("admin",)), "allow", "admins-delete"),
    (facts("delete_record"), "deny", "default"),
]


def test_yaml_and_toml_files_load_to_equivalent_policies(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(YAML)
    (tmp_path / "p.toml").write_text(TOML)
    from_yaml = Policy.from_file(tmp_path / "p.yaml")
    from_toml = Policy.from_file(str(tmp_path / "p.toml"))
    assert from_yaml.rules == from_toml.rules
    assert (from_yaml.name, from_yaml.version, from_yaml.default) == (
        "support-desk",
        "2026.11.1",
        "deny",
    )
    assert (from_toml.name, from_toml.version, from_toml.default) == (
        from_yaml.name,
        from_yaml.version,
        from_yaml.default,
    )
    assert from_yaml.rules[1] == Rule(
        "refunds-large",
        "approve",
        tools=("issue_refund",),
        when=("args.amount > 100",),
        reason="refunds above 100 EUR need a supervisor",
    )
    for call, effect, rule in CALLS:
        for p in (from_yaml, from_toml):
            d = p.decide(call)
            assert (d.effect, d.rule, d.policy_version) == (effect, rule, "2026.11.1")
    assert from_yaml.decide(CALLS[2][0]).reason == "refunds above 100 EUR need a supervisor"


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("rules: [unclosed")
    bad_rule = tmp_path / "rules.yml"
    bad_rule.write_text(
        'version: "1"\nrules:\n  - id: r\n    effect: allow\n    when: args.__class__\n'
    )
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("version = ")
    for path, fragment in [
        (bad_yaml, "not valid YAML"),
        (bad_rule, "rule 'r': when 'args.__class__'"),
        (bad_toml, "not valid TOML"),
        (tmp_path / "missing.yaml", "cannot read the file"),
        (tmp_path / "p.json", "unsupported file type '.json'"),
    ]:
        with pytest.raises(PolicyError) as exc:
            Policy.from_file(path)
        assert str(exc.value).startswith(str(path)), str(exc.value)
        assert fragment in str(exc.value)


def test_empty_or_non_mapping_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(PolicyError, match="expected a mapping"):
        Policy.from_file(path)


def test_integer_version_is_accepted_but_float_must_be_quoted(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 3\nrules: []\n")
    assert Policy.from_file(path).version == "3"
    path.write_text("version: 1.10\nrules: []\n")
    with pytest.raises(PolicyError, match=r"version must be a \(quoted\) string, got 1.1"):
        Policy.from_file(path)
