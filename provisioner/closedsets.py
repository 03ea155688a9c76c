"""Closed sets are types: the base of provisioner's enums, and the check that a match handles them all.

``StrEnum`` behaves as Python 3.11's ``enum.StrEnum`` on 3.10 too: a member is its string, and
``str()``, ``format()`` and ``json.dumps`` give the plain value, so output and saved plans read as
they did with bare strings. ``assert_never`` (``typing.assert_never`` from 3.11 on) ends a ``match``:
when a member is added, the type check fails at every match that does not handle it.
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
