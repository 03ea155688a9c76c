"""Secrets masked by construction, and a last-line redactor for everything that leaves the process.

A ``Secret`` holds a sensitive string (an API secret, a secret configuration value, an instance
token). Its ``str`` and ``repr`` are masked; the raw value takes an explicit ``reveal()``. The JSON
encoder of the HTTP client is the only place that reveals secrets on the way out (``json_default``).

The ``Redactor`` is a second, independent guard: every secret value that is created is registered
with it, and every stream provisioner writes to (stdout, stderr, log and crash files, JSON output)
passes its text through ``redact`` before writing it.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

MASK = "********"
SENSITIVE = "(sensitive)"

# Values shorter than this are not searched for in output: a one-letter "secret" would mask every
# occurrence of that letter and make output unreadable while protecting nothing.
MIN_REDACT_LENGTH = 4


class Secret:
    """A sensitive string. ``str()`` and ``repr()`` are masked; ``reveal()`` returns the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if isinstance(value, Secret):
            value = value.reveal()
        self._value = value
        REDACTOR.add(value)

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self):  # pickling would write the value somewhere: refuse
        raise TypeError("a Secret cannot be pickled")


def reveal(value: Any) -> Any:
    """The raw value of a Secret, or the value itself."""
    return value.reveal() if isinstance(value, Secret) else value


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` hook used only where a request body is serialised for the API."""
    if isinstance(value, Secret):
        return value.reveal()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def masked(value: Any) -> Any:
    """A copy of a JSON-like value with every Secret replaced by the mask (for output)."""
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(v) for v in value]
    return value


class Redactor:
    """Knows every secret value of this process and masks them in text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: Any) -> None:
        if not isinstance(value, str) or len(value) < MIN_REDACT_LENGTH:
            return
        with self._lock:
            if value in self._values:
                return
            self._values.add(value)
            self._pattern = None
        # The same value may be printed JSON-escaped, or line by line: mask those forms too.
        escaped = json.dumps(value)[1:-1]
        if escaped != value:
            self.add(escaped)
        for part in value.splitlines():
            if part != value:
                self.add(part)

    def redact(self, text: str) -> str:
        if not text:
            return text
        with self._lock:
            if not self._values:
                return text
            if self._pattern is None:
                ordered = sorted(self._values, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(v) for v in ordered))
            pattern = self._pattern
        return pattern.sub(MASK, text)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._pattern = None


REDACTOR = Redactor()
