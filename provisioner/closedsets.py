"""Closed sets are types: ``StrEnum`` (3.11's, on 3.10 too: ``str()``, ``format()`` and ``json.dumps``
give the plain value) and ``assert_never``, which ends a ``match`` so that the type check fails wherever
a new member is not handled.
"""

from __future__ import annotations

from enum import Enum
from typing import NoReturn


class StrEnum(str, Enum):
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


def assert_never(value: NoReturn) -> NoReturn:
    raise AssertionError(f"unhandled member: {value!r}")
