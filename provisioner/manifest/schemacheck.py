"""Turn JSON Schema validation errors into problems a person can act on.

jsonschema's own messages print the offending value (a password, sometimes) and speak in schema
terms. Here every error becomes a ``Problem`` at the line of the key it concerns, with a short
message, a hint, a did-you-mean for unknown keys, and no value of a secret key ever shown. All
missing required keys of one object are reported together, as the API itself does.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable
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
) -> list[Problem]:
    """One problem per error, with missing required keys of the same object merged."""
    problems: list[Problem] = []
    missing: dict[tuple, list[str]] = {}
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        path = tuple(error.absolute_path)
        if error.validator == "required":
            missing.setdefault(path, []).extend(_missing_keys(error))
            continue
        if error.validator == "additionalProperties":
            problems.extend(unknown_key_problems(error, path, location_for, prefix))
            continue
        problems.append(_problem(error, path, location_for, secret_keys, prefix))
    for path, keys in missing.items():
        keys = sorted(set(keys))
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


def _problem(
    error: ValidationError, path: tuple, location_for: LocationFor, secret_keys: frozenset[str], prefix: str
) -> Problem:
    message, hint = _describe(error, bool(path) and path[-1] in secret_keys)
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


def _describe(error: ValidationError, secret: bool) -> tuple[str, str | None]:
    """A message and a hint for one validator; the value is shown only when it is not secret."""
    kind, expected, value = error.validator, error.validator_value, error.instance
    if kind == "type":
        wanted = [expected] if isinstance(expected, str) else list(expected)
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in wanted)
        return f"expected {names}, got {_type_of(value)} {_shown(value, secret)}", _type_hint(wanted, value)
    if kind == "enum" and set(map(repr, expected)) == {"True", "False", "'true'", "'false'"}:
        return f"expected true or false, got {_shown(value, secret)}", "write true or false without quotes"
    if kind == "enum":
        allowed = ", ".join(json.dumps(v) for v in expected)
        return f"{_shown(value, secret)} is not one of the allowed values: {allowed}", None
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
    options = error.validator_value or []
    if all(set(o) == {"required"} for o in options if isinstance(o, dict)):
        keys = [k for o in options for k in o["required"]]
        return f"needs one of: {', '.join(keys)}", None
    return (
        f"got {_type_of(value)} {_shown(value, secret)}, which is not an accepted form",
        "give a mapping or list as documented, or a single {{ expression }} that evaluates to one",
    )


def _type_hint(wanted: list[str], value: Any) -> str | None:
    if "boolean" in wanted and isinstance(value, str):
        return "write true or false without quotes"
    if "string" in wanted and not isinstance(value, str):
        return "quote the value to make it a string"
    return None


def _pattern_hint(pattern: str) -> str | None:
    if pattern.startswith("^https?://"):
        return "give a full URL starting with http:// or https://"
    if "a-z0-9" in pattern:
        return "use lowercase letters, digits, '.', '_' and '-'"
    return None


def _dotted(prefix: str, path: tuple) -> str:
    parts = [prefix] if prefix else []
    for part in path:
        parts.append(f"[{part}]" if isinstance(part, int) else str(part))
    return ".".join(parts).replace(".[", "[")
