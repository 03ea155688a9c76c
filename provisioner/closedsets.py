"""Closed sets are types: the base of provisioner's enums, and the check that a match handles them all.

The plan's actions, an apply's statuses, a diff's operations and a problem's severities are enums
built on ``StrEnum``, which behaves as Python 3.11's ``enum.StrEnum`` on 3.10 too: a member is its
string (``Action.CREATE == "create"``), and ``str()``, ``format()`` and ``json.dumps`` give the plain
value, so text output, JSON documents and saved plans read exactly as they did with bare strings.

``assert_never`` (``typing.assert_never`` from Python 3.11 on) ends a ``match`` over a member: when a
member is added, the type check fails at every match that does not handle it.
"""

from __future__ import annotations

from enum import Enum
from typing import NoReturn


class StrEnum(str, Enum):
    """An enum whose members are strings and print as their value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


def assert_never(value: NoReturn) -> NoReturn:
    """Mark the end of an exhaustive match: the type check proves it is unreachable."""
    raise AssertionError(f"unhandled member: {value!r}")
