"""Semantic versions and constraints such as `>=1.2,<2`, `^1.4`, `~=1.2`, `==1.2.3`.

As in PEP 440 and npm, an upper bound `<2` (also implied by `^1.4` and `~=1.4`) excludes the
pre-releases of 2.0.0 itself: they belong to the next, breaking release.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import total_ordering

from .errors import ConfigError

_VERSION = re.compile(
    r"^(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)
_CLAUSE = re.compile(r"^\s*(>=|<=|==|!=|~=|>|<|\^|~)?\s*([0-9][0-9A-Za-z.+-]*)\s*$")
_REQUIREMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(.*)$")


@total_ordering
class Version:
    """A parsed semantic version; a missing minor or patch counts as 0."""

    __slots__ = ("major", "minor", "patch", "pre", "text")

    def __init__(self, text: str) -> None:
        m = _VERSION.match(text.strip())
        if m is None:
            raise ConfigError(f"{text!r} is not a semantic version (expected e.g. '1.2.0')")
        self.text = text.strip()
        self.major = int(m.group(1))
        self.minor = int(m.group(2) or 0)
        self.patch = int(m.group(3) or 0)
        self.pre: tuple[tuple[int, int | str], ...] = tuple(
            (0, int(p)) if p.isdigit() else (1, p) for p in (m.group(4) or "").split(".") if p
        )

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        # A release sorts after all of its pre-releases.
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, self.pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Version({self.text!r})"

    def __str__(self) -> str:
        return self.text


def _below(upper: Version) -> Callable[[Version], bool]:
    """`x < upper`, where pre-releases of a release `upper` count as not below it (PEP 440)."""
    if upper.pre:
        return lambda x: x < upper
    key = (upper.major, upper.minor, upper.patch)
    return lambda x: x < upper and not (x.pre and (x.major, x.minor, x.patch) == key)


def _clause(op: str, v: Version) -> Callable[[Version], bool]:
    if op in ("", "=="):
        return lambda x: x == v
    if op == "!=":
        return lambda x: x != v
    if op == ">=":
        return lambda x: x >= v
    if op == "<=":
        return lambda x: x <= v
    if op == ">":
        return lambda x: x > v
    if op == "<":
        return _below(v)
    if op == "^":  # compatible within the left-most non-zero component
        if v.major:
            upper = Version(f"{v.major + 1}.0.0")
        elif v.minor:
            upper = Version(f"0.{v.minor + 1}.0")
        else:
            upper = Version(f"0.0.{v.patch + 1}")
        below = _below(upper)
        return lambda x: v <= x and below(x)
    # "~=" and "~": same minor (same major when only major.minor was given with ~=)
    parts = v.text.split("-")[0].split(".")
    if op == "~=" and len(parts) == 2:
        upper = Version(f"{v.major + 1}.0.0")
    else:
        upper = Version(f"{v.major}.{v.minor + 1}.0")
    below = _below(upper)
    return lambda x: v <= x and below(x)


class Constraint:
    """A conjunction of version clauses, e.g. `>=1.2,<2`; the empty constraint allows all."""

    __slots__ = ("_checks", "text")

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        self._checks: list[Callable[[Version], bool]] = []
        if not self.text:
            return
        for raw in self.text.split(","):
            m = _CLAUSE.match(raw)
            if m is None:
                raise ConfigError(
                    f"bad version constraint {text!r}: clause {raw.strip()!r} should look like "
                    "'>=1.2', '<2', '^1.4', '~=1.2' or '==1.2.3'"
                )
            self._checks.append(_clause(m.group(1) or "", Version(m.group(2))))

    def allows(self, version: Version) -> bool:
        """True when `version` satisfies every clause."""
        return all(check(version) for check in self._checks)

    def __str__(self) -> str:
        return self.text


def parse_requirement(text: str) -> tuple[str, Constraint]:
    """Split `create_ticket>=1.2,<2` into its name and constraint."""
    m = _REQUIREMENT.match(text)
    if m is None:
        raise ConfigError(
            f"bad tool requirement {text!r}: expected a name optionally followed by a "
            "constraint, e.g. 'create_ticket>=1.2,<2'"
        )
    return m.group(1), Constraint(m.group(2))
