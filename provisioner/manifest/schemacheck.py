"""JSON Schema validation at scale, and its errors as problems a person can act on.

``ShapeValidator`` runs jsonschema once per distinct *shape* of value (``_Observed``): thousands of
entries alike are validated once. Each error becomes a ``Problem`` at the line of its key, with a short
message, a hint and a did-you-mean, never a secret's value (jsonschema's own messages print the value);
the missing required keys of one object are reported together.
"""

from __future__ import annotations

import bisect
import difflib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from ..errors import Location, Problem

LocationFor = Callable[[tuple], Location]


class ShapeValidator:
    """A Draft 2020-12 validator that validates a value in full only when no value of its shape was
    valid before (errors are always those of the value itself). One per schema, owned by the run."""

    def __init__(self, schema: dict):
        self._validator = Draft202012Validator(schema)  # no format checker: format is an annotation
        self._observed = _Observed.of(schema)
        self._valid: set[Any] = set()

    def iter_errors(self, value: Any) -> list[ValidationError]:
        shape = self._observed.shape(value) if self._observed else None
        if shape is not None and shape in self._valid:
            return []
        errors = list(self._validator.iter_errors(value))
        if not errors and shape is not None:
            self._valid.add(shape)
        return errors


# A shape keeps a mapping's keys and its values' shapes, a list's items' shapes; of a string, whether it is a
# schema constant, which patterns it matches and how its length compares with the length bounds; of a number,
# its type, whether it is whole or a constant and how it compares with the bounds. That decides these keywords
# (the first take data, the second subschemas, the third named subschemas); jsonschema ignores "x-" keywords.
_DATA_KEYWORDS = frozenset(
    "type required dependentRequired minProperties maxProperties minItems maxItems minContains maxContains"
    " $schema $id $comment title description default examples readOnly writeOnly deprecated format".split()
)
_SUBSCHEMA_KEYWORDS = frozenset(
    "additionalProperties propertyNames items prefixItems contains not allOf anyOf oneOf if then else"
    " unevaluatedProperties unevaluatedItems".split()
)
_NAMED_SUBSCHEMAS = frozenset("properties patternProperties dependentSchemas $defs definitions".split())
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_SCALARS = (str, int, float, bool, type(None))

# How messages name types: a schema's (_TYPE_NAMES), and a value's (_type_of: _JSON_TYPES, _JSON_NAMES for a schema's)
_TYPE_NAMES = {
    "string": "a string",
    "boolean": "a boolean (true or false)",
    "integer": "an integer",
    "number": "a number",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}

_JSON_NAMES = {"object": "mapping", "array": "list", "number": "number"}
_JSON_TYPES = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (dict, "mapping"),
    (list, "list"),
)


class _Observed:
    """What the keywords of a schema can see of a scalar: patterns, length and number bounds, constants."""

    def __init__(self) -> None:
        self.patterns: dict[str, re.Pattern] = {}
        self.lengths: list[int] = []  # sorted: a string of at least each many characters, or not
        self.bounds: set[float] = set()  # a number at least, and over, each
        self.constants: set[Any] = set()  # of enum and const
        self.strings: dict[str, tuple] = {}  # the shape of each string seen
        self.scalars: dict[tuple, tuple] = {}  # of each other scalar seen, by type and value

    @classmethod
    def of(cls, schema: Any) -> _Observed | None:
        """None if the schema has a keyword a shape does not decide (``uniqueItems``, a remote ``$ref``)."""
        seen, todo = cls(), [schema]
        while todo:
            node = todo.pop()
            if isinstance(node, list):
                todo.extend(node)
            elif isinstance(node, dict) and not seen._add(node, todo):
                return None
        seen.lengths.sort()
        return seen

    def _add(self, node: dict, todo: list) -> bool:
        for key, value in node.items():
            if key in _NAMED_SUBSCHEMAS and isinstance(value, dict):
                todo.extend(value.values())
            elif key in _SUBSCHEMA_KEYWORDS:
                todo.append(value)
            elif key in ("enum", "const"):
                values = value if key == "enum" and isinstance(value, list) else [value]
                if not all(isinstance(v, _SCALARS) for v in values):
                    return False
                self.constants.update(values)
            elif key == "pattern" and isinstance(value, str):
                self.patterns.setdefault(value, re.compile(value))
            elif key in ("minLength", "maxLength") and isinstance(value, int):
                self.lengths.append(value if key == "minLength" else value + 1)
            elif key in _BOUNDS and isinstance(value, int | float):
                self.bounds.add(value)
            elif not (key in _DATA_KEYWORDS or key.startswith("x-") or key == "$ref" and str(value).startswith("#")):
                return False
        return True

    def shape(self, value: Any) -> Any:
        """A tuple (a mapping's: its keys, then its values' shapes; a string's is remembered)."""
        if isinstance(value, str):
            if value not in self.strings:
                matches = [pattern.search(value) is None for pattern in self.patterns.values()]
                length = bisect.bisect_right(self.lengths, len(value))
                self.strings[value] = (str, value if value in self.constants else None, length, *matches)
            return self.strings[value]
        if isinstance(value, dict):
            return (dict, *value, *map(self.shape, value.values()))
        if isinstance(value, list):
            return (list, *map(self.shape, value))
        if not isinstance(value, _SCALARS):
            return type(value), None
        known = self.scalars.get((type(value), value))  # by type: True == 1, and they differ
        if known is None:
            known = (type(value), value if value in self.constants else None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                whole = isinstance(value, int) or value.is_integer()
                known = (*known, whole, *((value >= n, value > n) for n in self.bounds))
            self.scalars[(type(value), value)] = known
        return known


def problems_from_errors(
    errors: Iterable[ValidationError],
    location_for: LocationFor,
    secret_keys: frozenset[str] = frozenset(),
    prefix: str = "",
    unknown: frozenset[str] = frozenset(),
    expressions: Mapping[str, str] | None = None,
) -> list[Problem]:
    """One problem per error, with missing required keys of the same object merged. ``unknown``: top
    keys whose value could not be rendered (already reported: nothing more about them, not even
    missing); ``expressions``: top keys whose value a {{ expression }} gave (its type is kept), with its text."""
    problems: list[Problem] = []
    missing: dict[tuple, list[str]] = {}

    def at(path: tuple) -> Location:
        return replace(location_for(path), path=_dotted(prefix, path) or None)

    for error in sorted(_fitting(errors), key=lambda e: [str(p) for p in e.absolute_path]):
        path = tuple(error.absolute_path)
        if path and path[0] in unknown:
            continue
        if error.validator == "required":  # the schemas are checked: its value is a list
            present = error.instance if isinstance(error.instance, dict) else {}
            missing.setdefault(path, []).extend(key for key in error.validator_value if key not in present)
            continue
        if error.validator == "additionalProperties":
            problems.extend(unknown_key_problems(error, path, at))
            continue
        secret = bool(path) and path[-1] in secret_keys
        expression = (expressions or {}).get(path[0]) if path else None
        message, hint = _describe(error, secret, "" if secret and expression is not None else expression)
        problems.append(Problem(message, at(path), hint))
    for path, keys in missing.items():
        keys = sorted(set(keys) - (unknown if not path else set()))
        if keys:
            place = "the configuration" if prefix == "configuration" else _dotted("", path) or "the top of the manifest"
            message = f"missing required key{'s' * (len(keys) > 1)}: {', '.join(keys)}"
            problems.append(Problem(message, at(path), f"add {'it' if len(keys) == 1 else 'them'} to {place}"))
    return problems


def _fitting(errors: Iterable[ValidationError]) -> Iterator[ValidationError]:
    """Each error, except that an ``anyOf`` whose value has the type of one of its structured forms gives
    that form's own errors: ``tags: [1, 2]`` is reported as a list whose items are not strings."""
    for error in errors:
        options = error.validator_value if error.validator == "anyOf" else []
        fits = [i for i, o in enumerate(options) if isinstance(o, dict) and _fits(o, error.instance)]
        inner = [e for e in error.context or [] if fits and e.relative_schema_path[0] == fits[0]]
        if inner:
            yield from _fitting(inner)
        else:
            yield error


def _fits(option: dict, value: Any) -> bool:
    return not _is_expression(option) and _type_of(value) in [_JSON_NAMES.get(k, k) for k in types_of(option)]


def types_of(schema: dict) -> list[str]:
    """The types a schema's ``type`` keyword names (a name, or a list of them)."""
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _is_expression(option: dict) -> bool:
    """The form ``"{{ expression }}"`` the manifest schema offers besides each structured one."""
    return "\\{\\{" in str(option.get("pattern", ""))


def unknown_key_problems(error: ValidationError, path: tuple, at: LocationFor) -> list[Problem]:
    """Every unexpected key of an additionalProperties error, each with its own did-you-mean."""
    known = list((error.schema or {}).get("properties", {}))
    listed = "known keys: " + ", ".join(sorted(known)[:12]) + ("..." if len(known) > 12 else "")
    out = []
    for key in [k for k in error.instance if k not in known] if isinstance(error.instance, dict) else []:
        suggestion = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = f"did you mean {suggestion[0]!r}?" if suggestion else listed
        out.append(Problem(f"unknown key {key!r}", at((*path, key)), hint))
    return out


def _type_of(value: Any) -> str:
    found = next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), None)
    return found or ("null" if value is None else type(value).__name__)


def shown(value: Any, secret: bool = False, limit: int = 60) -> str:
    """The value as a message shows it: its repr, cut to ``limit`` characters, never a secret."""
    if secret:
        return "(sensitive value)"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: ValidationError, secret: bool, expression: str | None = None) -> tuple[str, str | None]:
    """A message and a hint for one validator; the value is shown only when it is not secret."""
    kind, expected, value = error.validator, error.validator_value, error.instance
    if kind == "type":
        wanted = [expected] if isinstance(expected, str) else list(expected)
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in wanted)
        return f"expected {names}, got {_type_of(value)} {shown(value, secret)}", _type_hint(wanted, value, expression)
    if kind == "enum" and set(map(repr, expected)) == {"True", "False", "'true'", "'false'"}:
        return f"expected true or false, got {shown(value, secret)}", _type_hint(["boolean"], value)
    if kind == "enum":
        allowed = ", ".join(json.dumps(v) for v in expected)
        close = difflib.get_close_matches(str(value), [str(v) for v in expected], n=1) if not secret else []
        hint = f"did you mean {close[0]!r}?" if close else f"write one of: {allowed}"
        return f"{shown(value, secret)} is not one of the allowed values: {allowed}", hint
    if kind == "const":
        return f"{shown(value, secret)} must be {expected!r}", None
    if kind == "pattern":
        return f"{shown(value, secret)} does not have the expected form ({expected})", _pattern_hint(expected)
    if kind == "minLength":
        return "must not be empty" if expected == 1 else f"must be at least {expected} characters", None
    if kind == "maxLength":
        return f"is longer than {expected} characters", None
    if kind in ("minimum", "maximum"):
        side = "below the minimum" if kind == "minimum" else "above the maximum"
        return f"{shown(value, secret)} is {side} of {expected}", None
    if kind == "anyOf":
        return _any_of(error, value, secret)
    return error.message if not secret else f"invalid value ({kind})", None


def _any_of(error: ValidationError, value: Any, secret: bool) -> tuple[str, str | None]:
    options = [o for o in error.validator_value or [] if isinstance(o, dict)]
    if all(set(o) == {"required"} for o in options):
        keys = [k for o in options for k in o["required"]]
        return f"needs one of: {', '.join(keys)}", f"add {' or '.join(keys)}"
    forms = " or ".join(_form(o) for o in options)
    hints = [_type_hint(types_of(o), value) for o in options if not _is_expression(o)]
    return f"expected {forms}, got {_type_of(value)} {shown(value, secret)}", next((h for h in hints if h), None)


def _form(option: dict) -> str:
    """How the schema's form reads in a message: 'a list of strings', 'a single "{{ expression }}"'."""
    if _is_expression(option):
        return 'a single "{{ expression }}"'
    items = option.get("items")
    if types_of(option) == ["array"] and isinstance(items, dict) and isinstance(items.get("type"), str):
        return f"a list of {_JSON_NAMES.get(items['type'], items['type'])}s"
    return " or ".join(_TYPE_NAMES.get(k, k) for k in types_of(option)) or "a value of another form"


def _type_hint(wanted: list[str], value: Any, expression: str | None = None) -> str | None:
    """How to write a value of the wanted type, from what was written (``expression``: the text of the
    {{ expression }} that gave the value, "" when not seen)."""
    if "boolean" in wanted and isinstance(value, str):
        quoted = value.strip().lower() in ("true", "false")
        return "write true or false without quotes" if quoted else "write true or false"
    if "string" in wanted and not isinstance(value, (str, dict, list)):
        if expression is not None:
            example = "{{ " + (expression[:60] or "inputs.port") + " | string }}"
            return f'an {{{{ expression }}}} keeps its value\'s type, quoted or not: convert it, e.g. "{example}"'
        return "write a value after the colon" if value is None else "quote the value to make it a string"
    if isinstance(value, (dict, list)) and not {"array", "object"} & set(wanted):
        return f"write one value on the key's own line, not a {_type_of(value)}"
    if "array" in wanted and not isinstance(value, list):
        return "write a list, e.g. [a, b], or one item per line starting with '- '"
    if "object" in wanted and not isinstance(value, dict):
        return "write key: value lines indented under the key"
    if {"integer", "number"} & set(wanted) and isinstance(value, str):
        return "write the number without quotes" if value.strip().lstrip("-").isdigit() else "write a number"
    return None


def _pattern_hint(pattern: str) -> str | None:
    if pattern.startswith("^https?://"):
        return "give a full URL starting with http:// or https://"
    if pattern == "^[0-9]+$":
        return "write digits only, e.g. 15"
    if "a-z0-9" in pattern:
        return f"use {'letters' if 'A-Z' in pattern else 'lowercase letters'}, digits, '.', '_' and '-'"
    return None


def _dotted(prefix: str, path: tuple) -> str:
    parts = [prefix] if prefix else []
    for part in path:
        parts.append(f"[{part}]" if isinstance(part, int) else str(part))
    return ".".join(parts).replace(".[", "[")
