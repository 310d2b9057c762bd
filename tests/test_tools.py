"""`@tool` schemas and definitions, and `ToolRegistry` version resolution."""

import asyncio
import itertools
import re
import threading
from typing import Literal

import pydantic
import pytest
from pydantic import BaseModel

import cadenza
from cadenza import Agent, MemoryStore, RunContext, Tool, ToolRegistry, tool
from cadenza._semver import Constraint, Version
from cadenza.errors import ConfigError, ToolDefinitionError, ToolVersionError
from cadenza.testing import ScriptedModel

# --- schemas -----------------------------------------------------------------------------------


class Address(BaseModel):
    street: str
    city: str
    zip_code: str | None = None


def test_schema_from_primitive_type_hints_and_defaults():
    @tool
    def search(query: str, limit: int = 10, exact: bool = False, boost: float = 1.5) -> list[str]:
        """Search the knowledge base."""
        return []

    params = search.parameters
    assert params["type"] == "object"
    props = params["properties"]
    assert set(props) == {"query", "limit", "exact", "boost"}
    assert props["query"]["type"] == "string"
    assert props["limit"]["type"] == "integer"
    assert props["exact"]["type"] == "boolean"
    assert props["boost"]["type"] == "number"
    assert params["required"] == ["query"]
    assert props["limit"]["default"] == 10
    assert props["exact"]["default"] is False
    assert props["boost"]["default"] == 1.5
    assert "default" not in props["query"]
    # Extra arguments are refused, and the schema says so.
    assert params["additionalProperties"] is False
    assert search.spec.name == "search"
    assert search.spec.parameters is params


def test_schema_optional_list_and_dict_arguments():
    @tool
    def tag(labels: list[str], meta: dict[str, int], note: str | None = None) -> None:
        """Tag something."""

    props = tag.parameters["properties"]
    assert props["labels"] == {"type": "array", "items": {"type": "string"}}
    assert props["meta"]["type"] == "object"
    assert props["meta"]["additionalProperties"] == {"type": "integer"}
    assert {"type": "null"} in props["note"]["anyOf"]
    assert props["note"]["default"] is None
    assert sorted(tag.parameters["required"]) == ["labels", "meta"]


def test_schema_has_no_titles_but_keeps_an_argument_named_title():
    @tool
    def create_ticket(title: str, body: str, address: Address) -> str:
        """Open a ticket."""
        return "T-1"

    params = create_ticket.parameters
    assert "title" in params["properties"]
    assert params["properties"]["title"]["type"] == "string"
    assert sorted(params["required"]) == ["address", "body", "title"]

    def no_string_titles(node: object) -> bool:
        if isinstance(node, dict):
            if isinstance(node.get("title"), str):
                return False
            return all(no_string_titles(v) for v in node.values())
        if isinstance(node, list):
            return all(no_string_titles(v) for v in node)
        return True

    assert no_string_titles(params)


def test_pydantic_model_argument_schema_and_validation():
    @tool
    def ship(address: Address, express: bool = False) -> str:
        """Ship a parcel."""
        return f"{address.street}, {address.city}"

    params = ship.parameters
    ref = params["properties"]["address"]["$ref"]
    assert ref == "#/$defs/Address"
    address_schema = params["$defs"]["Address"]
    assert set(address_schema["properties"]) == {"street", "city", "zip_code"}
    assert sorted(address_schema["required"]) == ["city", "street"]

    kwargs = ship.validate({"address": {"street": "1 Main St", "city": "Springfield"}})
    assert isinstance(kwargs["address"], Address)
    assert kwargs["address"].city == "Springfield"
    assert kwargs["express"] is False

    with pytest.raises(pydantic.ValidationError) as info:
        ship.validate({"address": {"street": "1 Main St"}})
    assert "city" in str(info.value)


def test_literal_argument_becomes_enum():
    @tool
    def set_priority(level: Literal["low", "normal", "high"], ticket: int) -> str:
        """Set a ticket's priority."""
        return level

    prop = set_priority.parameters["properties"]["level"]
    assert prop["enum"] == ["low", "normal", "high"]
    assert set_priority.validate({"level": "high", "ticket": 3}) == {"level": "high", "ticket": 3}
    with pytest.raises(pydantic.ValidationError):
        set_priority.validate({"level": "urgent", "ticket": 3})


def test_validate_rejects_extra_and_missing_arguments_and_coerces_nothing_wrong():
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    assert add.validate({"a": 1, "b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(pydantic.ValidationError) as info:
        add.validate({"a": 1, "b": 2, "c": 3})
    assert "c" in str(info.value)
    with pytest.raises(pydantic.ValidationError) as info:
        add.validate({"a": 1})
    assert "b" in str(info.value)
    with pytest.raises(pydantic.ValidationError):
        add.validate({"a": 1, "b": "not a number"})


def test_google_docstring_descriptions_land_in_schema():
    @tool
    def book_flight(origin: str, destination: str, seats: int = 1, cabin: str = "economy") -> str:
        """Book a flight between two airports.

        The booking is held for 24 hours.

        Args:
            origin: IATA code of the departure airport.
            destination (str): IATA code of the arrival
                airport, e.g. CDG.
            seats: How many seats to book.

        Returns:
            The booking reference.

        Raises:
            ValueError: never.
        """
        return "ABC123"

    assert book_flight.description == "Book a flight between two airports."
    assert book_flight.spec.description == book_flight.description
    props = book_flight.parameters["properties"]
    assert props["origin"]["description"] == "IATA code of the departure airport."
    assert props["destination"]["description"] == "IATA code of the arrival airport, e.g. CDG."
    assert props["seats"]["description"] == "How many seats to book."
    # Not documented: no description; later sections do not leak into arguments.
    assert "description" not in props["cabin"]
    assert "ValueError" not in str(props)
    assert "booking reference" not in str(props)


def test_description_and_name_overrides():
    @tool(name="lookup-user.v2", description="Find a user by e-mail.")
    def find_user(email: str) -> dict[str, str]:
        """Something else entirely."""
        return {"email": email}

    assert find_user.name == "lookup-user.v2"
    assert find_user.description == "Find a user by e-mail."
    assert find_user.spec.name == "lookup-user.v2"


def test_tool_without_docstring_uses_its_name_as_description():
    @tool
    def ping(host: str) -> bool:
        return True

    assert ping.description == "ping"


async def test_run_context_parameter_is_injected_and_hidden():
    seen: list[RunContext] = []

    @tool
    async def whoami(ctx: RunContext, greeting: str = "hi") -> str:
        """Say who the run acts for."""
        seen.append(ctx)
        return f"{greeting} {ctx.principal.user_id}"

    params = whoami.parameters
    assert set(params["properties"]) == {"greeting"}
    assert "ctx" not in params.get("required", [])
    assert "ctx" not in str(params)
    # The model cannot pass it either.
    with pytest.raises(pydantic.ValidationError):
        whoami.validate({"ctx": {"run_id": "x"}})

    ctx = RunContext("run-1", None, cadenza.Principal("alice"))
    kwargs = whoami.validate({})
    assert await whoami.invoke(kwargs, ctx) == "hi alice"
    assert seen == [ctx]


async def test_async_and_sync_tools_are_invoked():
    main_thread = threading.get_ident()
    threads: list[int] = []

    @tool
    async def double(x: int) -> int:
        """Double asynchronously."""
        await asyncio.sleep(0)
        return 2 * x

    @tool
    def triple(x: int) -> int:
        """Triple in a worker thread."""
        threads.append(threading.get_ident())
        return 3 * x

    assert double.is_async is True
    assert triple.is_async is False
    assert await double.invoke({"x": 4}, None) == 8
    assert await triple.invoke({"x": 4}, None) == 12
    assert threads and threads[0] != main_thread
    # Calling the tool object directly calls the function.
    assert triple(5) == 15


def test_version_side_effects_timeout_attributes():
    @tool
    def plain(x: int) -> int:
        """Plain."""
        return x

    assert isinstance(plain, Tool)
    assert str(plain.version) == "1.0.0"
    assert plain.side_effects is False
    assert plain.timeout == 30.0

    @tool(version="2.3.1-beta.1", side_effects=True, timeout=2.5)
    def charge(amount: float) -> str:
        """Charge a card."""
        return "ok"

    assert charge.version == Version("2.3.1-beta.1")
    assert str(charge.version) == "2.3.1-beta.1"
    assert charge.side_effects is True
    assert charge.timeout == 2.5
    assert "side_effects" in repr(charge)

    @tool(timeout=None)
    def forever(x: int) -> int:
        """No time limit."""
        return x

    assert forever.timeout is None


# --- bad definitions ---------------------------------------------------------------------------


def test_missing_annotation_is_a_definition_error():
    def f(a: int, b) -> int:  # type: ignore[no-untyped-def]
        return a

    with pytest.raises(ToolDefinitionError, match="'b'"):
        tool(f)


def test_var_positional_and_var_keyword_are_definition_errors():
    def f(*items: int) -> int:
        return 0

    def g(a: int, **extra: int) -> int:
        return 0

    with pytest.raises(ToolDefinitionError, match="items"):
        tool(f)
    with pytest.raises(ToolDefinitionError, match="extra"):
        tool(g)


@pytest.mark.parametrize("version", ["1.x", "v1.0.0", "", "01.2.3", "1.2.3.4", "latest"])
def test_bad_version_is_a_definition_error(version: str):
    def f(a: int) -> int:
        return a

    with pytest.raises(ToolDefinitionError):
        tool(version=version)(f)


@pytest.mark.parametrize(
    "name", ["has space", "1starts_with_digit", "a" * 65, "semi;colon", "tab\there"]
)
def test_bad_name_is_a_definition_error(name: str):
    def f(a: int) -> int:
        return a

    with pytest.raises(ToolDefinitionError):
        tool(name=name)(f)


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_non_positive_timeout_is_a_definition_error(timeout: float):
    def f(a: int) -> int:
        return a

    with pytest.raises(ToolDefinitionError, match="timeout"):
        tool(timeout=timeout)(f)


def test_unresolvable_type_hint_is_a_definition_error():
    def f(a: "NoSuchType") -> int:  # type: ignore[name-defined]  # noqa: F821
        return 0

    with pytest.raises(ToolDefinitionError):
        tool(f)


def test_definition_errors_are_type_errors_and_cadenza_errors():
    def f(a) -> int:  # type: ignore[no-untyped-def]
        return 0

    with pytest.raises(TypeError):
        tool(f)
    with pytest.raises(cadenza.UserError):
        tool(f)


# --- versions and constraints -------------------------------------------------------------------


def test_prerelease_ordering_follows_semver():
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.1.0",
        "2.0.0",
    ]
    versions = [Version(v) for v in ordered]
    assert sorted(versions[1::2] + versions[::2]) == versions
    for lo, hi in itertools.pairwise(versions):
        assert lo < hi, (lo, hi)
    assert Version("1.2") == Version("1.2.0")
    assert Version("1.0.0+build.5") == Version("1.0.0")


def _fn(a: int) -> int:
    """A tool body."""
    return a


def _version(name: str, version: str) -> Tool:
    return Tool(_fn, name=name, version=version)


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry(
        _version("create_ticket", v)
        for v in ["0.9.0", "1.0.0", "1.2.0", "1.4.2", "1.9.0", "2.0.0", "2.1.0", "3.0.0-rc.1"]
    )


def test_registry_holds_several_versions(registry: ToolRegistry):
    assert registry.versions("create_ticket") == [
        "0.9.0",
        "1.0.0",
        "1.2.0",
        "1.4.2",
        "1.9.0",
        "2.0.0",
        "2.1.0",
        "3.0.0-rc.1",
    ]
    assert registry.names() == ["create_ticket"]
    assert "create_ticket" in registry
    assert "delete_ticket" not in registry
    assert len(registry) == 8
    assert registry.versions("delete_ticket") == []


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ("create_ticket>=1.2,<2", "1.9.0"),
        ("create_ticket >= 1.2 , < 2", "1.9.0"),
        ("create_ticket>=1.0,<1.4", "1.2.0"),
        ("create_ticket^1.2", "1.9.0"),
        ("create_ticket^0.9", "0.9.0"),
        ("create_ticket^1.4.2", "1.9.0"),
        ("create_ticket>=2,<2.1", "2.0.0"),
        ("create_ticket~=1.2", "1.9.0"),
        ("create_ticket~=1.4.0", "1.4.2"),
        ("create_ticket~1.4", "1.4.2"),
        ("create_ticket==1.2", "1.2.0"),
        ("create_ticket==1.4.2", "1.4.2"),
        ("create_ticket>=1,<2,!=1.9.0", "1.4.2"),
        ("create_ticket!=3.0.0-rc.1", "2.1.0"),
        ("create_ticket<=2.0.0", "2.0.0"),
        ("create_ticket>2.1.0", "3.0.0-rc.1"),
        ("create_ticket>=3.0.0-alpha", "3.0.0-rc.1"),
        ("create_ticket", "3.0.0-rc.1"),
    ],
)
def test_resolve_picks_newest_matching_version(
    registry: ToolRegistry, requirement: str, expected: str
):
    resolved = registry.resolve(requirement)
    assert resolved.name == "create_ticket"
    assert str(resolved.version) == expected


def test_resolve_passes_tool_objects_through(registry: ToolRegistry):
    t = _version("other", "1.0.0")
    assert registry.resolve(t) is t


def test_release_sorts_after_its_prereleases_in_registry():
    reg = ToolRegistry(_version("x", v) for v in ["1.0.0-beta", "1.0.0-alpha", "1.0.0-rc.1"])
    assert str(reg.resolve("x").version) == "1.0.0-rc.1"
    assert reg.versions("x") == ["1.0.0-alpha", "1.0.0-beta", "1.0.0-rc.1"]
    reg.add(_version("x", "1.0.0"))
    assert str(reg.resolve("x").version) == "1.0.0"
    # PEP 440: `<1.0.0` excludes the pre-releases of 1.0.0 itself; `<1.0.0-rc.1` does not.
    with pytest.raises(ToolVersionError):
        reg.resolve("x<1.0.0")
    assert str(reg.resolve("x<1.0.0-rc.1").version) == "1.0.0-beta"
    assert str(reg.resolve("x==1.0.0-beta").version) == "1.0.0-beta"


@pytest.mark.parametrize("requirement", ["x^1.4", "x~=1.4", "x>=1.2,<2", "x<2"])
def test_upper_bound_excludes_prereleases_of_the_next_major(requirement: str):
    # 2.0.0-alpha is a pre-release of the *next*, breaking major: `^1.4` ("compatible within
    # the left-most non-zero component") and `<2` must not pick it over 1.5.0 (npm and PEP 440
    # both exclude it).
    reg = ToolRegistry([_version("x", "1.5.0"), _version("x", "2.0.0-alpha")])
    assert str(reg.resolve(requirement).version) == "1.5.0"


def test_missing_tool_raises_tool_version_error(registry: ToolRegistry):
    with pytest.raises(ToolVersionError) as info:
        registry.resolve("delete_ticket>=1")
    err = info.value
    assert err.name == "delete_ticket"
    assert err.constraint == ">=1"
    assert err.found == []
    assert "delete_ticket" in str(err)
    assert "not registered" in str(err)


def test_incompatible_version_error_names_tool_constraint_and_versions():
    reg = ToolRegistry([_version("create_ticket", "1.0.0"), _version("create_ticket", "1.5.0")])
    with pytest.raises(ToolVersionError) as info:
        reg.resolve("create_ticket>=2,<3")
    err = info.value
    msg = str(err)
    assert "create_ticket" in msg
    assert ">=2,<3" in msg
    assert "1.0.0" in msg and "1.5.0" in msg
    assert err.name == "create_ticket"
    assert err.constraint == ">=2,<3"
    assert err.found == ["1.0.0", "1.5.0"]


def test_registering_same_version_twice_is_an_error():
    t = _version("x", "1.0.0")
    reg = ToolRegistry([t])
    reg.add(t)  # the same object again is harmless
    assert len(reg) == 1
    with pytest.raises(ConfigError, match="already registered"):
        reg.add(_version("x", "1.0.0"))


@pytest.mark.parametrize("requirement", ["x>>1", "x>=abc", "x>=1,,<2", "-x"])
def test_bad_requirements_are_config_errors(requirement: str):
    reg = ToolRegistry([_version("x", "1.0.0")])
    with pytest.raises(ConfigError):
        reg.resolve(requirement)


def test_empty_constraint_allows_everything():
    c = Constraint("")
    assert c.allows(Version("0.0.1"))
    assert c.allows(Version("99.0.0-rc.1"))


# --- agents resolve their tool requirements at start-up ---------------------------------------


def test_agent_with_unsatisfiable_requirement_fails_at_construction():
    reg = ToolRegistry([_version("create_ticket", "1.0.0"), _version("create_ticket", "1.7.0")])
    model = ScriptedModel(["never used"])
    with pytest.raises(ToolVersionError) as info:
        Agent(model, tools=["create_ticket>=2"], registry=reg)
    msg = str(info.value)
    assert "create_ticket" in msg and ">=2" in msg
    assert "1.0.0" in msg and "1.7.0" in msg
    assert model.requests == []


def test_agent_with_requirement_and_no_registry_fails_at_construction():
    with pytest.raises(ToolVersionError, match="create_ticket"):
        Agent(ScriptedModel(["x"]), tools=["create_ticket>=2"])


async def test_agent_resolves_requirement_to_newest_compatible_version():
    calls: list[str] = []

    def make(version: str) -> Tool:
        def create_ticket(title: str) -> str:
            """Open a ticket."""
            calls.append(version)
            return f"{version}:{title}"

        return Tool(create_ticket, version=version)

    reg = ToolRegistry(make(v) for v in ["1.0.0", "2.0.0", "2.4.0", "3.0.0"])
    from cadenza.testing import call

    model = ScriptedModel([call("create_ticket", title="printer"), "done"])
    agent = Agent(model, tools=["create_ticket>=2,<3"], registry=reg)
    assert str(agent.tools["create_ticket"].version) == "2.4.0"
    result = await agent.run("open one", store=MemoryStore())
    assert result.output == "done"
    assert calls == ["2.4.0"]


def test_agent_rejects_undecorated_functions_and_duplicate_names():
    def plain(a: int) -> int:
        return a

    with pytest.raises(ToolDefinitionError, match=re.escape("@cadenza.tool")):
        Agent(ScriptedModel(["x"]), tools=[plain])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="unique"):
        Agent(ScriptedModel(["x"]), tools=[_version("x", "1.0.0"), _version("x", "2.0.0")])
