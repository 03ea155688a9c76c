"""Turn JSON Schema validation errors into problems a person can act on.

jsonschema's own messages print the offending value (a password, sometimes) and speak in schema
terms. Here every error becomes a ``Problem`` at the line of the key it concerns, with a short
message, a hint, a did-you-mean for unknown keys, and no value of a secret key ever shown. All
missing required keys of one object are reported together, as the API itself does.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from jsonschema.exceptions import ValidationError

from ..errors import Location, Problem

LocationFor = Callable[[tuple], Location]


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
    for error in sorted(_fitting(errors), key=lambda e: [str(p) for p in e.absolute_path]):
        path = tuple(error.absolute_path)
        if path and path[0] in unknown:
            continue
        if error.validator == "required":
            missing.setdefault(path, []).extend(_missing_keys(error))
            continue
        if error.validator == "additionalProperties":
            problems.extend(unknown_key_problems(error, path, location_for, prefix))
            continue
        expression = (expressions or {}).get(path[0]) if path else None
        problems.append(_problem(error, path, location_for, secret_keys, prefix, expression))
    for path, keys in missing.items():
        keys = sorted(set(keys) - (unknown if not path else set()))
        if not keys:
            continue
        noun = "key" if len(keys) == 1 else "keys"
        where = replace(location_for(path), path=_dotted(prefix, path) or None)
        place = (
            "the configuration"
            if prefix == "configuration"
            else (f"{_dotted('', path)}" if path else "the top of the manifest")
        )
        problems.append(
            Problem(
                f"missing required {noun}: {', '.join(keys)}",
                where,
                "add " + ("it" if len(keys) == 1 else "them") + f" to {place}",
            )
        )
    return problems


def _missing_keys(error: ValidationError) -> list[str]:
    required = error.validator_value if isinstance(error.validator_value, list) else []
    present = error.instance if isinstance(error.instance, dict) else {}
    return [key for key in required if key not in present]


def _fitting(errors: Iterable[ValidationError]) -> Iterator[ValidationError]:
    """Each error, except that an ``anyOf`` whose value has the type of one of its forms (not the
    single-expression form) gives that form's own errors: ``tags: [1, 2]`` is a list whose items are
    not strings, and is reported so."""
    for error in errors:
        options = error.validator_value if error.validator == "anyOf" else []
        fits = [i for i, o in enumerate(options) if isinstance(o, dict) and _fits(o, error.instance)]
        inner = [e for e in error.context or [] if fits and e.relative_schema_path[0] == fits[0]]
        if inner:
            yield from _fitting(inner)
        else:
            yield error


def _fits(option: dict, value: Any) -> bool:
    kinds = _kinds(option)
    return not _is_expression(option) and any(_type_of(value) == _JSON_NAMES.get(k, k) for k in kinds)


def _kinds(option: dict) -> list[str]:
    kind = option.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _is_expression(option: dict) -> bool:
    """The form ``"{{ expression }}"`` the manifest schema offers besides each structured one."""
    return "\\{\\{" in str(option.get("pattern", ""))


def _problem(
    error: ValidationError,
    path: tuple,
    location_for: LocationFor,
    secret_keys: frozenset[str],
    prefix: str,
    expression: str | None = None,
) -> Problem:
    secret = bool(path) and path[-1] in secret_keys
    message, hint = _describe(error, secret, "" if secret and expression is not None else expression)
    return Problem(message, replace(location_for(path), path=_dotted(prefix, path) or None), hint)


def unknown_key_problems(error: ValidationError, path: tuple, location_for: LocationFor, prefix: str) -> list[Problem]:
    """Every unexpected key of an additionalProperties error, each with its own did-you-mean."""
    known = list((error.schema or {}).get("properties", {}))
    out = []
    for key in _unexpected_keys(error):
        suggestion = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = (
            f"did you mean {suggestion[0]!r}?"
            if suggestion
            else ("known keys: " + ", ".join(sorted(known)[:12]) + ("..." if len(known) > 12 else ""))
        )
        where = replace(location_for((*path, key)), path=_dotted(prefix, (*path, key)))
        out.append(Problem(f"unknown key {key!r}", where, hint))
    return out


def _unexpected_keys(error: ValidationError) -> list[str]:
    allowed = set((error.schema or {}).get("properties", {}))
    instance = error.instance if isinstance(error.instance, dict) else {}
    return [key for key in instance if key not in allowed]


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


def _type_of(value: Any) -> str:
    found = next((name for kind, name in (*_JSON_TYPES, (list, "list")) if isinstance(value, kind)), None)
    return found or ("null" if value is None else type(value).__name__)


def _shown(value: Any, secret: bool) -> str:
    if secret:
        return "(sensitive value)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: ValidationError, secret: bool, expression: str | None = None) -> tuple[str, str | None]:
    """A message and a hint for one validator; the value is shown only when it is not secret."""
    kind, expected, value = error.validator, error.validator_value, error.instance
    if kind == "type":
        wanted = [expected] if isinstance(expected, str) else list(expected)
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in wanted)
        return f"expected {names}, got {_type_of(value)} {_shown(value, secret)}", _type_hint(wanted, value, expression)
    if kind == "enum" and set(map(repr, expected)) == {"True", "False", "'true'", "'false'"}:
        return f"expected true or false, got {_shown(value, secret)}", _type_hint(["boolean"], value)
    if kind == "enum":
        allowed = ", ".join(json.dumps(v) for v in expected)
        close = difflib.get_close_matches(str(value), [str(v) for v in expected], n=1) if not secret else []
        hint = f"did you mean {close[0]!r}?" if close else f"write one of: {allowed}"
        return f"{_shown(value, secret)} is not one of the allowed values: {allowed}", hint
    if kind == "const":
        return f"{_shown(value, secret)} must be {expected!r}", None
    if kind == "pattern":
        return f"{_shown(value, secret)} does not have the expected form ({expected})", _pattern_hint(expected)
    if kind == "minLength":
        return "must not be empty" if expected == 1 else f"must be at least {expected} characters", None
    if kind == "maxLength":
        return f"is longer than {expected} characters", None
    if kind in ("minimum", "maximum"):
        return (
            f"{_shown(value, secret)} is {'below the minimum' if kind == 'minimum' else 'above the maximum'} "
            f"of {expected}",
            None,
        )
    if kind == "anyOf":
        return _any_of(error, value, secret)
    return error.message if not secret else f"invalid value ({kind})", None


def _any_of(error: ValidationError, value: Any, secret: bool) -> tuple[str, str | None]:
    options = [o for o in error.validator_value or [] if isinstance(o, dict)]
    if all(set(o) == {"required"} for o in options):
        keys = [k for o in options for k in o["required"]]
        return f"needs one of: {', '.join(keys)}", f"add {' or '.join(keys)}"
    forms = " or ".join(_form(o) for o in options)
    hints = [_type_hint(_kinds(o), value) for o in options if not _is_expression(o)]
    return f"expected {forms}, got {_type_of(value)} {_shown(value, secret)}", next((h for h in hints if h), None)


def _form(option: dict) -> str:
    """How the schema's form reads in a message: 'a list of strings', 'a single "{{ expression }}"'."""
    if _is_expression(option):
        return 'a single "{{ expression }}"'
    items = option.get("items")
    if _kinds(option) == ["array"] and isinstance(items, dict) and isinstance(items.get("type"), str):
        return f"a list of {_JSON_NAMES.get(items['type'], items['type'])}s"
    return " or ".join(_TYPE_NAMES.get(k, k) for k in _kinds(option)) or "a value of another form"


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
