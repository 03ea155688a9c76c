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


_WORD_CHARS = r"A-Za-z0-9+/=_\-.~"
_WORD_SECRET = re.compile(f"[{_WORD_CHARS}]+")


class Redactor:
    """Knows every secret value of this process and masks them in text.

    There can be many secrets (every instance token of a 10,000-instance organization), so the search
    is linear in the text: secrets made only of word characters (tokens, most passwords) are found by
    looking up the text's word runs in a set; the few others (with spaces, quotes, newlines) go
    through one regular expression.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._words: set[str] = set()
        self._lengths: list[int] = []
        self._others: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._known: set[str] = set()  # values add() has registered with all their forms

    def add(self, value: Any) -> None:
        """Register a secret, with the forms it may be printed in: JSON-escaped, and line by line."""
        if not isinstance(value, str) or len(value) < MIN_REDACT_LENGTH or value in self._known:
            return  # (a set read needs no lock; a value seen already changes nothing)
        forms = {value, json.dumps(value)[1:-1], *value.splitlines()}
        with self._lock:
            for form in forms:
                self._add_locked(form)
            self._known.add(value)

    def _add_locked(self, value: str) -> None:
        if len(value) < MIN_REDACT_LENGTH or value in self._words or value in self._others:
            return
        if _WORD_SECRET.fullmatch(value):
            self._words.add(value)
            if len(value) not in self._lengths:
                self._lengths = sorted({*self._lengths, len(value)}, reverse=True)
        else:
            self._others.add(value)
            self._pattern = None

    def redact(self, text: str) -> str:
        if not text:
            return text
        with self._lock:
            if self._others and self._pattern is None:
                ordered = sorted(self._others, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(v) for v in ordered))
            pattern, words, lengths = self._pattern, self._words, self._lengths
        if pattern is not None:
            text = pattern.sub(MASK, text)
        if words:
            shortest = lengths[-1]
            text = _WORD_SECRET.sub(lambda m: _mask_run(m.group(), words, lengths, shortest), text)
        return text

    def clear(self) -> None:
        with self._lock:
            self._words.clear()
            self._others.clear()
            self._known.clear()
            self._lengths = []
            self._pattern = None


def _mask_run(run: str, words: set[str], lengths: list[int], shortest: int) -> str:
    """Mask every secret inside one run of word characters (longest first, left to right)."""
    if len(run) < shortest:
        return run
    if run in words:
        return MASK
    out: list[str] = []
    start = index = 0
    while index <= len(run) - shortest:
        for length in lengths:
            if run[index:index + length] in words:
                out.append(run[start:index])
                out.append(MASK)
                index += length
                start = index
                break
        else:
            index += 1
    if not out:
        return run
    out.append(run[start:])
    return "".join(out)


REDACTOR = Redactor()


_CONTROL = __import__("re").compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?|[\x00-\x1f\x7f-\x9f]")


def sanitize(text: str) -> str:
    """Text from a server, made safe to print on one line: ANSI escape sequences and control
    characters removed (CR, LF and tabs become spaces), so it can neither forge output nor clear a
    screen."""
    return _CONTROL.sub(lambda m: " " if m.group() in ("\r", "\n", "\t") else "", text)
