"""Load YAML safely, and remember where every key and item came from (``YDict``, ``YList``), so that a
later error is reported at ``file:line``. Only plain YAML is accepted (and in a manifest ``!env NAME``,
``EnvRef``), as UTF-8 text under a size cap, with aliases capped (billion laughs). Problems a user can
fix are collected, not raised.
"""

from __future__ import annotations

import gc
import os
import re
import stat
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import yaml
from yaml import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from ..errors import Location, Problem, UserError
from ..privatefile import kind_of

if TYPE_CHECKING:  # both construct alike (SafeConstructor); the type check reads the pure Python one
    _BaseLoader = yaml.SafeLoader
else:  # libyaml's, an order of magnitude faster on large input files, where PyYAML was built with it
    _BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_ALIAS_NODES = 100_000
CURLY_QUOTES = "\u201c\u201d\u2018\u2019"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Lines:
    """Its own line and the line of each key or item (``lines``, by key or index)."""

    line: int = 0
    lines: dict

    def line_of(self, key: Any) -> int:
        return self.__dict__.get("lines", {}).get(key, self.line)


class YDict(_Lines, dict):
    """A mapping that knows its own line and the line of each of its keys."""


class YList(_Lines, list):
    """A sequence that knows its own line and the line of each item."""


ENV_TAG = "!env"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvRef(str):
    """``!env NAME``: the value of environment variable NAME, read at rendering as ``{{ env.NAME }}`` is but
    without a template (so ``literal: true`` accepts it). Its text is NAME: the schema sees a string."""

    line: int = 0

    def __repr__(self) -> str:
        return f"{ENV_TAG} {self!s}"


@dataclass
class Loaded:
    """One file loaded: its data (None if unusable), every problem found, and the ``!env`` references made."""

    data: Any
    problems: list[Problem] = field(default_factory=list)
    env_refs: list[EnvRef] = field(default_factory=list)


_TOO_LARGE = "split the file, or raise the limit with --max-file-bytes"


def read_capped(path: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (else a UserError), reading at most one byte more
    and never waiting: opened without blocking (a FIFO with no writer), refused unless regular (/dev/zero)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UserError(
                    f"cannot read file: it is {kind_of(info.st_mode)}, not a regular file",
                    hint="give a regular file (save the output of a command to a file first)",
                )
            if info.st_size > max_bytes:
                raise UserError(f"file is {info.st_size} bytes, over the limit of {max_bytes} bytes", hint=_TOO_LARGE)
            chunks, size = [], 0
            while size <= max_bytes:
                chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UserError(f"cannot read file: {exc.strerror or exc}", hint="check the path") from None
    if size > max_bytes:  # it grew after fstat, or it does not report its size
        raise UserError(f"file is over the limit of {max_bytes} bytes", hint=_TOO_LARGE)
    return b"".join(chunks)


def read_text(path: str, display: str, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str | None, list[Problem]]:
    """Read a file as UTF-8 text, refusing what is too large, binary, not UTF-8 or not a regular file."""
    try:
        raw = read_capped(path, max_bytes)
    except UserError as exc:
        return None, [replace(exc.problem, location=Location(file=display))]
    return decode_text(raw, display)


def decode_text(raw: bytes, display: str) -> tuple[str | None, list[Problem]]:
    """Decode bytes as UTF-8 (a BOM is allowed), rejecting binary content with its line."""
    if b"\x00" in raw:
        at = Location(display, raw[: raw.index(b"\x00")].count(b"\n") + 1)
        return None, [Problem("this is binary data, not text (NUL byte found)", at, "give a YAML text file")]
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        at = Location(display, raw[: exc.start].count(b"\n") + 1)
        message = f"not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        return None, [Problem(message, at, "save the file as UTF-8")]


def load_yaml(
    text: str, display: str, max_alias_nodes: int = DEFAULT_MAX_ALIAS_NODES, env_tags: bool = False
) -> Loaded:
    """Parse one YAML document, keeping positions and collecting every problem found. ``env_tags``:
    accept ``!env NAME`` (a manifest does; inputs and template files do not)."""
    reader = _Reader(text, display, max_alias_nodes, env_tags)
    collecting = gc.isenabled()
    gc.disable()  # tens of thousands of new objects: the cyclic collector would rescan them over and over
    try:
        data = reader.document()
    except yaml.MarkedYAMLError as exc:
        return Loaded(None, [*reader.problems, _syntax_problem(exc, display)])
    except yaml.YAMLError as exc:
        return Loaded(None, [*reader.problems, Problem(f"not valid YAML: {exc}", Location(display))])
    except RecursionError:
        return Loaded(None, [Problem("YAML nesting is too deep", Location(display))])
    except UserError as exc:  # refused while reading (an alias bomb, a misused !env)
        return Loaded(None, [*reader.problems, exc.problem])
    finally:
        reader.parser.dispose()
        if collecting:
            gc.enable()
    return Loaded(data, reader.problems, reader.env_refs)


_MERGE = object()  # the key << (a merge of other mappings)
_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_RESOLVED_FIRST = frozenset(_BaseLoader.yaml_implicit_resolvers)  # first characters a plain non-string may have


class _Reader:
    """The data of one YAML document, built from the parser's events (PyYAML's composer would first
    build a graph of nodes, twice the memory, calling the resolver for every node)."""

    def __init__(self, text: str, display: str, max_alias_nodes: int, env_tags: bool):
        self.parser: Any = _BaseLoader(text)  # Any: PyYAML's event API has no types
        self.display, self.max_alias_nodes, self.env_tags = display, max_alias_nodes, env_tags
        self.curly = any(q in text for q in CURLY_QUOTES)  # plain scalars are checked for curly quotes
        self.problems: list[Problem] = []
        self.env_refs: list[EnvRef] = []
        self.anchored: dict[str, tuple[Any, int | None]] = {}  # value, and the nodes it stands for (None: being read)
        self.expanded = 0  # nodes read so far, each alias counted as what it stands for
        self.aliased = 0  # of those, the nodes aliases added
        self.root_line = 0
        self.tags: dict[str, str] = {}  # of plain text: the tag the resolver gives it (some: _remember)
        self.scalars: dict[tuple[str, str], Any] = {}  # (tag, text): its value, immutable (some: _remember)

    def document(self) -> Any:
        self.parser.get_event()  # the stream's start
        if self.parser.check_event(StreamEndEvent):
            return None
        self.parser.get_event()  # the document's start
        root = self.parser.get_event()
        self.root_line = root.start_mark.line + 1
        data = self.value(root)
        self.parser.get_event()  # the document's end
        if not self.parser.check_event(StreamEndEvent):
            mark = self.parser.peek_event().start_mark
            raise yaml.composer.ComposerError(
                "expected a single document in the stream", None, "but found another document", mark
            )
        return data

    def value(self, event: Any, key: bool = False) -> Any:
        """The value that starts with ``event``. An alias is the same object, as PyYAML gives, counted as
        large as what it stands for (a billion laughs is refused while it is being read)."""
        kind = type(event)  # (not isinstance: mypy would narrow to PyYAML's loosely typed events)
        if kind is AliasEvent:
            return self.alias(event)
        self.expanded += 1
        tag = event.tag
        if tag == ENV_TAG and self.env_tags:
            value: Any = self.env_ref(event)
        elif kind is ScalarEvent:
            value = self.scalar(event, tag, key)
            if value is _MERGE:
                return value
        elif tag not in (None, "!", _SEQ_TAG if kind is SequenceStartEvent else _MAP_TAG):
            message = f"could not determine a constructor for the tag {tag!r}"
            raise yaml.constructor.ConstructorError(None, None, message, event.start_mark)
        else:
            return self.collection(event, kind)
        if event.anchor is not None:
            self.anchored[event.anchor] = (value, 1)
        return value

    def scalar(self, event: Any, tag: str | None, key: bool) -> Any:
        """A scalar as PyYAML's safe loader reads it (plain text that no implicit resolver can claim is
        a string); an integer too long for Python (over 4,300 digits) is a located problem, not a crash."""
        text = event.value
        if self.curly and (problem := _curly_problem(event, self.display)):
            self.problems.append(problem)
        if tag is None or tag == "!":
            if event.implicit[0] and text[:1] in _RESOLVED_FIRST:  # plain: its tag depends on its text alone
                if text.isdigit() and text.isascii() and text[0] != "0" and len(text) < 4300:
                    return int(text)  # an id: a decimal integer, as the resolver and constructor read it
                tag = self.tags.get(text)
                if tag is None:
                    tag = self.parser.resolve(yaml.ScalarNode, text, event.implicit)
                    _remember(self.tags, text, tag)
            else:
                tag = _STR_TAG  # quoted, or plain text that no implicit resolver can claim
        if tag == _STR_TAG:
            return text
        if tag == _MERGE_TAG and key:
            return _MERGE
        value = self.scalars.get((tag, text), _UNREAD)
        if value is not _UNREAD:
            return value
        try:
            value = self.parser.construct_document(yaml.ScalarNode(tag, text, event.start_mark))
            _remember(self.scalars, (tag, text), value)
            return value
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:  # an explicit tag on text it cannot read
            where = Location(self.display, event.start_mark.line + 1)  # built only for a problem: ids are many
            if isinstance(exc, ValueError) and "digits" in str(exc):
                self.problems.append(too_long_number(exc, where))
            else:
                hint = "remove the tag, or quote the value to keep it as a string"
                self.problems.append(Problem(f"{short(text)} cannot be read as {tag.rsplit(':', 1)[-1]}", where, hint))
            return None

    def alias(self, event: Any) -> Any:
        if event.anchor not in self.anchored:
            raise yaml.composer.ComposerError(None, None, f"found undefined alias {event.anchor!r}", event.start_mark)
        value, size = self.anchored[event.anchor]
        if size is None:  # the anchor's own value is still being read
            at = Location(self.display, event.start_mark.line + 1)
            raise UserError("recursive YAML alias", at, "an anchor may not refer to itself")
        self.expanded += size
        self.aliased += size
        if self.aliased > self.max_alias_nodes:
            limit = f"limit: {self.max_alias_nodes} added by aliases"
            message = f"YAML aliases expand to {self.expanded} nodes from {self.expanded - self.aliased} ({limit})"
            hint = "this looks like an alias bomb; write the data out instead of nesting aliases"
            raise UserError(message, Location(self.display, self.root_line), hint)
        return value

    def collection(self, event: Any, kind: type) -> YList | YDict:
        """A sequence or a mapping, with the line of each item or key."""
        before = self.expanded - 1
        value = YList() if kind is SequenceStartEvent else YDict()
        value.line = event.start_mark.line + 1
        if event.anchor is not None:
            self.anchored[event.anchor] = (value, None)
        if isinstance(value, YList):
            lines: dict[int, int] = {}
            value.lines, get = lines, self.parser.get_event
            child = get()
            while type(child) is not SequenceEndEvent:
                lines[len(value)] = child.start_mark.line + 1
                value.append(self.value(child))
                child = get()
        else:
            value = self.mapping(value)
        if event.anchor is not None:
            self.anchored[event.anchor] = (value, self.expanded - before)
        return value

    def mapping(self, data: YDict) -> YDict:
        """The keys and values of a mapping; a key must be a plain value, and a duplicate one is a problem
        (YAML keeps only the last). ``<<`` merges as PyYAML does (merged keys first, the mapping's own
        keys win, the first of a list of merged mappings wins)."""
        lines = data.lines = {}
        merges: list[tuple[Any, Any]] = []
        get = self.parser.get_event
        key_event = get()
        while type(key_event) is not MappingEndEvent:
            key, line = self.value(key_event, key=True), key_event.start_mark.line + 1
            item = self.value(get())
            if key is _MERGE:
                merges.append((item, key_event.start_mark))
            elif isinstance(key, (dict, list)):  # unhashable: a list or mapping as a key
                self.problems.append(Problem("a mapping key must be a plain value", Location(self.display, line)))
            else:
                if key in lines:
                    message = f"duplicate key {key!r} (first defined on line {lines[key]})"
                    hint = "remove one of them: YAML keeps only the last"
                    self.problems.append(Problem(message, Location(self.display, line), hint))
                else:
                    lines[key] = line
                data[key] = item
            key_event = get()
        return _merged(data, merges) if merges else data

    def env_ref(self, tagged: Any) -> EnvRef:
        """``!env NAME``: a reference resolved at render time; a misused tag ends the load, as bad YAML does."""
        line = tagged.start_mark.line + 1
        name = tagged.value if type(tagged) is ScalarEvent else None
        if name is None or not _ENV_NAME.fullmatch(name):
            kind = "a mapping" if type(tagged) is MappingStartEvent else "a sequence"
            message = f"{ENV_TAG} takes the name of an environment variable (letters, digits and _), got "
            hint = "write the variable's name after the tag, e.g. password: !env CW_PASSWORD"
            raise UserError(message + (kind if name is None else short(name)), Location(self.display, line), hint)
        ref = EnvRef(name)
        ref.line = line
        self.env_refs.append(ref)
        return ref


_REMEMBERED = 1024  # distinct texts: enough for the values every entry repeats (false, 15), not for every id
_UNREAD = object()


def _remember(memo: dict, key: Any, value: Any) -> None:
    if len(memo) < _REMEMBERED:
        memo[key] = value


def _merged(own: YDict, merges: list[tuple[Any, Any]]) -> YDict:
    merged = YDict()
    merged.line, merged.lines = own.line, {}
    for item, mark in merges:
        for source in [item] if isinstance(item, dict) else reversed(item) if isinstance(item, list) else [None]:
            if not isinstance(source, YDict):
                message = "expected a mapping or list of mappings for merging"
                raise yaml.constructor.ConstructorError("while constructing a mapping", None, message, mark)
            merged.update(source)
            merged.lines.update((k, source.line_of(k)) for k in source)
    merged.update(own)
    merged.lines.update(own.lines)
    return merged


def _syntax_problem(exc: yaml.MarkedYAMLError, display: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else None
    message = "; ".join(str(part) for part in (exc.context, exc.problem) if part)
    hint = "check the indentation and quoting around this line"
    if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in (exc.problem or ""):
        message = f"unsupported YAML tag: {exc.problem}"
        hint = "only plain YAML is accepted: remove the !tag"
    elif any(q in (exc.problem or "") for q in CURLY_QUOTES):
        hint = "replace curly quotes with straight ones (\" or ')"
    return Problem(f"not valid YAML: {message}", Location(display, line), hint)


def too_long_number(exc: ValueError, where: Location, hint: str = "quote it to keep it as a string") -> Problem:
    digits = re.search(r"(\d+) digits", str(exc))
    limit = f" (the limit is {digits[1]} digits)" if digits else ""
    return Problem(f"this number is too long to read as an integer{limit}", where, hint)


def _curly_problem(node: Any, display: str) -> Problem | None:  # a scalar event
    value = node.value
    if not any(q in value for q in CURLY_QUOTES):
        return None
    if node.style or value[0] not in CURLY_QUOTES or value[-1] not in CURLY_QUOTES:  # not plain (None or "")
        return None  # a curly quote inside {{ }} is reported by rendering, with the instance and key
    message = f"value {short(value)} is wrapped in curly quotes, which YAML does not treat as quotes"
    hint = "replace curly quotes (\u201c \u201d \u2018 \u2019) with straight ones (\" or ')"
    return Problem(message, Location(display, node.start_mark.line + 1), f"{hint}; they often come from a web page")


def short(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")
