"""Load YAML safely, and remember where every key and item came from.

Only plain YAML is accepted (safe loading: no python/object tags), and in a manifest the one tag of
our own, ``!env NAME`` (``EnvRef``: an environment variable, read at render time). Input must be
UTF-8 text under a size cap; aliases may not expand past a cap (billion laughs). Mappings come back
as ``YDict`` and sequences as ``YList``, which carry the line of each key and item, so that an error
found later (a JSON Schema path, a rendering error) can be reported at ``file:line``.

Problems a user can fix (duplicate keys, curly quotes where straight ones are needed, syntax errors)
are collected, not raised, so validation reports them all at once.
"""

from __future__ import annotations

import gc
import os
import re
import stat
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import Location, Problem, UserError

if TYPE_CHECKING:  # both construct alike (SafeConstructor); the type check reads the pure Python one
    _BaseLoader = yaml.SafeLoader
else:
    try:  # libyaml is an order of magnitude faster on large inputs files
        _BaseLoader = yaml.CSafeLoader
    except AttributeError:  # pragma: no cover - pure Python fallback
        _BaseLoader = yaml.SafeLoader

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_ALIAS_NODES = 100_000
CURLY_QUOTES = "\u201c\u201d\u2018\u2019"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YDict(dict):
    """A mapping that knows its own line and the line of each of its keys."""

    line: int = 0
    key_lines: dict

    def line_of(self, key: Any) -> int:
        return self.__dict__.get("key_lines", {}).get(key, self.line)


class YList(list):
    """A sequence that knows its own line and the line of each item."""

    line: int = 0
    item_lines: list

    def line_of(self, index: int) -> int:
        lines = self.__dict__.get("item_lines", [])
        return lines[index] if 0 <= index < len(lines) else self.line


ENV_TAG = "!env"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvRef(str):
    """``!env NAME`` in a manifest: the value of environment variable NAME, read when the manifest is
    rendered, as ``{{ env.NAME }}`` is, but without a template (so ``literal: true`` accepts it). Its
    text is NAME, so the manifest's schema sees a string."""

    line: int = 0

    def __repr__(self) -> str:
        return f"{ENV_TAG} {self!s}"


@dataclass
class Loaded:
    """The result of loading one file: the data (None if unusable), every problem found, and each
    ``!env`` reference made (when the loader was asked to accept them)."""

    data: Any
    problems: list[Problem] = field(default_factory=list)
    env_refs: list[EnvRef] = field(default_factory=list)


class FileRefused(Exception):
    """A file that cannot be read as input: missing, not a regular file, or over the size cap."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message = message
        self.hint = hint


_TOO_LARGE = "split the file, or raise the limit with --max-file-bytes"
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_capped(path: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, never waiting and never reading more
    than ``max_bytes + 1``: the file is opened without blocking (a FIFO with no writer would wait
    forever) and refused unless it is a regular file (/dev/zero, a pipe, a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise FileRefused(f"cannot read file: {exc.strerror or exc}", "check the path") from None
    try:
        info = os.fstat(fd)
        mode = info.st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise FileRefused(
                f"cannot read file: it is {kind}, not a regular file",
                "give a regular file (save the output of a command to a file first)",
            )
        if info.st_size > max_bytes:
            raise FileRefused(f"file is {info.st_size} bytes, over the limit of {max_bytes} bytes", _TOO_LARGE)
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise FileRefused(f"cannot read file: {exc.strerror or exc}", "check the path") from None
    finally:
        os.close(fd)
    if size > max_bytes:  # it grew after fstat, or it does not report its size
        raise FileRefused(f"file is over the limit of {max_bytes} bytes", _TOO_LARGE)
    return b"".join(chunks)


def read_text(path: str, display: str, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str | None, list[Problem]]:
    """Read a file as UTF-8 text, refusing what is too large, binary, not UTF-8 or not a regular file."""
    try:
        raw = read_capped(path, max_bytes)
    except FileRefused as exc:
        return None, [Problem(exc.message, Location(file=display), exc.hint)]
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
    loader = _PositionLoader(text)
    loader.display, loader.problems, loader.env_tags, loader.env_refs = display, [], env_tags, []
    loader.curly, loader.max_alias_nodes = any(q in text for q in CURLY_QUOTES), max_alias_nodes
    loader.anchored, loader.nodes, loader.expanded = {}, 0, 0
    collecting = gc.isenabled()
    gc.disable()  # tens of thousands of new objects: the cyclic collector would rescan them over and over
    try:
        data = _document(loader)
    except yaml.MarkedYAMLError as exc:
        return Loaded(None, [*loader.problems, _syntax_problem(exc, display)])
    except yaml.YAMLError as exc:
        return Loaded(None, [*loader.problems, Problem(f"not valid YAML: {exc}", Location(display))])
    except RecursionError:
        return Loaded(None, [Problem("YAML nesting is too deep", Location(display))])
    except UserError as exc:  # refused while reading (an alias bomb, a misused !env)
        return Loaded(None, [*loader.problems, exc.problem])
    except ValueError as exc:  # a too-long integer under an explicit tag
        return Loaded(None, [*loader.problems, too_long_number(exc, Location(display))])
    finally:
        loader.dispose()
        if collecting:
            gc.enable()
    return Loaded(data, loader.problems, loader.env_refs)


def _document(loader: Any) -> Any:  # Any: PyYAML's event API has no types
    """The data of the one document, built from the parser's events (PyYAML's composer would first
    build a graph of nodes, twice the memory, calling the resolver for every node)."""
    loader.get_event()  # the stream's start
    if loader.check_event(yaml.StreamEndEvent):
        return None
    loader.get_event()  # the document's start
    loader.root_line = loader.peek_event().start_mark.line + 1
    data = _from_event(loader, loader.get_event())
    loader.get_event()  # the document's end
    if not loader.check_event(yaml.StreamEndEvent):
        mark = loader.peek_event().start_mark
        raise yaml.composer.ComposerError(
            "expected a single document in the stream", None, "but found another document", mark
        )
    return data


_MERGE = object()  # the key << (a merge of other mappings)


def _from_event(loader: Any, event: Any, key: bool = False) -> Any:
    """The value that starts with ``event``. An alias is the same object, as PyYAML gives, counted as
    large as what it stands for (a billion laughs is refused while it is being read)."""
    kind = type(event)  # (not isinstance: mypy would narrow to PyYAML's loosely typed events)
    if kind is yaml.AliasEvent:
        return _alias(loader, event)
    loader.nodes += 1
    loader.expanded += 1
    tag = event.tag
    if tag == ENV_TAG and loader.env_tags:
        value: Any = _env_ref(loader, event)
    elif kind is yaml.ScalarEvent:
        if loader.curly and (problem := _curly_problem(event, loader.display)):
            loader.problems.append(problem)
        if tag in (None, "!"):
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag == _MERGE_TAG and key:
            return _MERGE
        value = event.value if tag == _STR_TAG else _scalar(loader, yaml.ScalarNode(tag, event.value, event.start_mark))
    elif tag not in (None, "!", _SEQ_TAG if kind is yaml.SequenceStartEvent else _MAP_TAG):
        message = f"could not determine a constructor for the tag {tag!r}"
        raise yaml.constructor.ConstructorError(None, None, message, event.start_mark)
    else:
        return _collection(loader, event, kind)
    if event.anchor is not None:
        loader.anchored[event.anchor] = (value, 1)
    return value


def _alias(loader: Any, event: Any) -> Any:
    if event.anchor not in loader.anchored:
        raise yaml.composer.ComposerError(None, None, f"found undefined alias {event.anchor!r}", event.start_mark)
    value, size = loader.anchored[event.anchor]
    if size is None:  # the anchor's own value is still being read
        at = Location(loader.display, event.start_mark.line + 1)
        raise UserError("recursive YAML alias", at, "an anchor may not refer to itself")
    loader.expanded += size
    if loader.expanded - loader.nodes > loader.max_alias_nodes:
        limit = f"limit: {loader.max_alias_nodes} added by aliases"
        message = f"YAML aliases expand to {loader.expanded} nodes from {loader.nodes} ({limit})"
        hint = "this looks like an alias bomb; write the data out instead of nesting aliases"
        raise UserError(message, Location(loader.display, loader.root_line), hint)
    return value


def _collection(loader: Any, event: Any, kind: type) -> YList | YDict:
    """A sequence or a mapping, with the line of each item or key; ``<<`` merges as PyYAML does
    (merged keys first, the mapping's own keys win, the first of a list of merged mappings wins)."""
    value: YList | YDict = YList() if kind is yaml.SequenceStartEvent else YDict()
    value.line, before = event.start_mark.line + 1, loader.expanded - 1
    if event.anchor is not None:
        loader.anchored[event.anchor] = (value, None)
    merges: list[tuple[Any, Any]] = []
    if isinstance(value, YList):
        value.item_lines = []
        while not loader.check_event(yaml.SequenceEndEvent):
            child = loader.get_event()
            value.item_lines.append(child.start_mark.line + 1)
            value.append(_from_event(loader, child))
    else:
        value.key_lines = {}
        while not loader.check_event(yaml.MappingEndEvent):
            key_event = loader.get_event()
            key, line = _from_event(loader, key_event, key=True), key_event.start_mark.line + 1
            item = _from_event(loader, loader.get_event())
            if key is _MERGE:
                merges.append((item, key_event.start_mark))
            else:
                _add_key(loader, value, key, line, item)
    loader.get_event()
    if merges and isinstance(value, YDict):
        value = _merged(value, merges)
    if event.anchor is not None:
        loader.anchored[event.anchor] = (value, loader.expanded - before)
    return value


def _merged(own: YDict, merges: list[tuple[Any, Any]]) -> YDict:
    merged = YDict()
    merged.line, merged.key_lines = own.line, {}
    for item, mark in merges:
        for source in [item] if isinstance(item, dict) else reversed(item) if isinstance(item, list) else [None]:
            if not isinstance(source, YDict):
                message = "expected a mapping or list of mappings for merging"
                raise yaml.constructor.ConstructorError("while constructing a mapping", None, message, mark)
            merged.update(source)
            merged.key_lines.update((k, source.line_of(k)) for k in source)
    merged.update(own)
    merged.key_lines.update(own.key_lines)
    return merged


def _add_key(loader: Any, data: YDict, key: Any, line: int, value: Any) -> None:
    """A mapping key must be a plain value, and a duplicate one is a problem (YAML keeps only the last)."""
    if not isinstance(key, Hashable):  # a list or mapping as a key
        loader.problems.append(Problem("a mapping key must be a plain value", Location(loader.display, line)))
        return
    if key in data.key_lines:
        message = f"duplicate key {key!r} (first defined on line {data.key_lines[key]})"
        hint = "remove one of them: YAML keeps only the last"
        loader.problems.append(Problem(message, Location(loader.display, line), hint))
    else:
        data.key_lines[key] = line
    data[key] = value


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


class _PositionLoader(_BaseLoader):
    display: str
    problems: list[Problem]
    env_tags: bool
    env_refs: list[EnvRef]
    curly: bool  # the text has curly quotes: plain scalars are checked for them
    anchored: dict[str, tuple[Any, int | None]]  # value, and how many nodes it stands for (None: being read)
    nodes: int  # read so far
    expanded: int  # the same, with each alias counted as what it stands for
    max_alias_nodes: int
    root_line: int


_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


def _scalar(loader: _PositionLoader, node: yaml.ScalarNode) -> Any:
    """A plain scalar through PyYAML's safe constructors; an integer too long for Python to read
    (over 4,300 digits) is a located problem, not a crash."""
    try:
        return loader.construct_object(node, deep=True)
    except ValueError as exc:
        loader.problems.append(too_long_number(exc, Location(loader.display, node.start_mark.line + 1)))
        return None


def _env_ref(loader: _PositionLoader, tagged: Any) -> EnvRef:
    """``!env NAME``: a reference resolved at render time; a misused tag ends the load, as bad YAML does."""
    line = tagged.start_mark.line + 1
    name = tagged.value if type(tagged) is yaml.ScalarEvent else None
    if name is None or not _ENV_NAME.fullmatch(name):
        kind = "a mapping" if type(tagged) is yaml.MappingStartEvent else "a sequence"
        message = f"{ENV_TAG} takes the name of an environment variable (letters, digits and _), got "
        hint = "write the variable's name after the tag, e.g. password: !env CW_PASSWORD"
        raise UserError(message + (kind if name is None else short(name)), Location(loader.display, line), hint)
    ref = EnvRef(name)
    ref.line = line
    loader.env_refs.append(ref)
    return ref


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
