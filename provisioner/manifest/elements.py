"""The element registry: which elements exist, and what their configuration may hold.

Each element is described by a JSON Schema (2020-12) file named after its key, in ``schemas/elements``
(built in) or in a directory the user names with ``--schemas DIR`` or the manifest's ``schemas:``
list (later directories win). The schema's ``x-provisioner`` object gives the element key and the
keys the API may report back for an instance of it (``reportedKeys``: the API answers a create of
``dynamicscrmadfs`` with element ``dynamicscrm``). ``writeOnly: true`` marks secret keys: their
values are masked everywhere and compared through fingerprints, never read back. ``oauth`` marks an
element whose new instances need an OAuth authorization code from a browser redirect (``true``, or
``{"when": {"key": ["value", ...]}}`` when only some configurations take the OAuth path).

Validators are compiled once per element and reused for every instance.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from ..errors import Location, Problem

# Object-level keywords whose verdict depends only on which keys are present (x-* are annotations).
_SHAPE_KEYWORDS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "x-provisioner",
        "type",
        "properties",
        "required",
        "additionalProperties",
        "minProperties",
        "maxProperties",
    }
)

_UNSEEN = object()
OAUTH_REFRESH_TOKEN = "oauth.user.refresh_token"

# Keywords of a property schema that the string fast path fully understands (the rest are annotations).
_STRING_KEYWORDS = frozenset(
    {
        "type",
        "minLength",
        "maxLength",
        "title",
        "description",
        "default",
        "examples",
        "writeOnly",
        "readOnly",
        "deprecated",
        "$comment",
    }
)


def builtin_schemas() -> Any:
    """The built-in schemas directory: packaged as provisioner.schemas, or schemas/ in a checkout."""
    try:
        return resources.files("provisioner.schemas")
    except ModuleNotFoundError:
        return resources.files("provisioner") / ".." / "schemas"


@dataclass
class ElementSchema:
    """One element's configuration schema and what provisioner derives from it."""

    key: str
    schema: dict
    source: str
    reported_keys: frozenset[str] = field(default_factory=frozenset)

    @cached_property
    def validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.schema)

    @cached_property
    def properties(self) -> dict[str, Any]:  # a user's schema may hold anything under a key
        return dict(self.schema.get("properties", {}))

    @cached_property
    def secret_keys(self) -> frozenset[str]:
        return frozenset(k for k, p in self.properties.items() if isinstance(p, dict) and p.get("writeOnly"))

    @cached_property
    def defaults(self) -> dict[str, Any]:
        return {k: p["default"] for k, p in self.properties.items() if isinstance(p, dict) and "default" in p}

    def iter_errors(self, configuration: dict) -> Iterator[ValidationError]:
        """Every schema error of one configuration.

        Object-level rules (required keys, unknown keys, if/then/else) are checked on every call;
        each property value is checked against its own subschema once per distinct value: across a
        forEach most values repeat (a server URL, a company, a password), and jsonschema need not be
        asked the same question 10,000 times."""
        if not self.properties:
            yield from self.validator.iter_errors(configuration)
            return
        shape = frozenset(configuration) if self._shape_only else None
        if shape is None or shape not in self._valid_shapes:
            errors = list(self._object_validator.iter_errors(configuration))
            yield from errors
            if not errors and shape is not None and len(self._valid_shapes) < 10_000:
                self._valid_shapes.add(shape)
        for key, value in configuration.items():
            if key not in self.properties:
                continue
            memo = (key, value) if isinstance(value, (str, int, float, bool, type(None))) else None
            if memo is not None and memo in self._valid_values:
                continue
            bounds = self._string_bounds.get(key)
            if bounds is not None and isinstance(value, str) and bounds[0] <= len(value) <= bounds[1]:
                continue  # a plain length-bounded string: jsonschema would say the same
            errors = list(self._property_validator(key).iter_errors(value))
            for error in errors:
                error.path.appendleft(key)
                yield error
            if not errors and memo is not None and len(self._valid_values) < 100_000:
                self._valid_values.add(memo)

    @cached_property
    def _shape_only(self) -> bool:
        """Do the object-level rules look at the key set alone (required, additionalProperties: false,
        ...), never at values (if/then/else, dependentSchemas, ...)? Then one answer per key set."""
        return set(self.schema) <= _SHAPE_KEYWORDS and isinstance(self.schema.get("additionalProperties", True), bool)

    @cached_property
    def _string_bounds(self) -> dict[str, tuple[float, float]]:
        """(minLength, maxLength) of each property whose schema is only a length-bounded string (most
        are): checked in Python, jsonschema is asked only to describe a failure."""
        bounds = {}
        for key, prop in self.properties.items():
            if (
                isinstance(prop, dict)
                and prop.get("type") == "string"
                and all(k in _STRING_KEYWORDS or k.startswith("x-") for k in prop)
            ):
                low, high = prop.get("minLength", 0), prop.get("maxLength", math.inf)
                if all(isinstance(b, int) and not isinstance(b, bool) for b in (low, high) if b != math.inf):
                    bounds[key] = (low, high)
        return bounds

    @cached_property
    def _valid_shapes(self) -> set[frozenset]:
        return set()

    @cached_property
    def _object_validator(self) -> Draft202012Validator:
        object_only = {**self.schema, "properties": dict.fromkeys(self.properties, True)}
        return Draft202012Validator(object_only)

    def _property_validator(self, key: str) -> Draft202012Validator:
        validator = self._property_validators.get(key)
        if validator is None:
            validator = self.validator.evolve(schema=self.properties[key])
            self._property_validators[key] = validator
        return validator

    @cached_property
    def _property_validators(self) -> dict[str, Draft202012Validator]:
        return {}

    @cached_property
    def _valid_values(self) -> set[tuple]:
        return set()

    @property
    def is_oauth(self) -> bool:
        return bool(self._oauth)

    @cached_property
    def _oauth(self) -> Any:
        meta = self.schema.get("x-provisioner")
        return meta.get("oauth") if isinstance(meta, dict) else None

    def oauth_problem(self, configuration: Mapping[str, Any], adopting: bool) -> tuple[str, str] | None:
        """Why a new instance of this configuration cannot be created unattended (message, hint), if so:
        an OAuth element needs a code from a browser redirect, unless a refresh token is given or an
        existing instance is taken over (``adopt:``)."""
        when = self._oauth.get("when", {}) if isinstance(self._oauth, dict) else {} if self._oauth else None
        if when is None or adopting or configuration.get(OAUTH_REFRESH_TOKEN) not in (None, ""):
            return None
        for key, values in when.items():
            if self.effective(key, configuration.get(key)) not in [self.normalize(key, v) for v in values]:
                return None
        return (
            f"element {self.key!r} authenticates with OAuth: a new instance needs an authorization code "
            "from a browser redirect, which provisioner cannot obtain",
            f"give a refresh token you already hold as configuration {OAUTH_REFRESH_TOKEN} (the instance is "
            "then created with externalAuthentication: initial), or create the instance in the console and "
            "take it over: provisioner import, then apply --adopt (README: OAuth elements)",
        )

    def accepts_key(self, reported: str | None) -> bool:
        """Whether an instance the API reports with element key ``reported`` is of this element."""
        return reported is None or reported == self.key or reported in self.reported_keys

    def normalize(self, key: str, value: Any) -> Any:
        """The comparable form of a configuration value: the API stores every value as a string
        ("true", "15"), so a boolean or integer property compares by meaning, not spelling."""
        if value is None or value == "":
            return None
        types = self._types.get(key, ())
        if isinstance(value, str) and types == ("string",):
            return value  # the common case: a string property holding a string
        if "object" in types:
            return _canonical_json(value)
        if isinstance(value, float) and value.is_integer() and "integer" in types:
            value = int(value)
        if "boolean" in types and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if "integer" in types and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, bool) and "string" in types and "boolean" not in types:
            return "true" if value else "false"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and types == ("string",):
            return str(value)
        return value

    def effective(self, key: str, value: Any) -> Any:
        """The value that counts: null, empty and absent all mean the schema default (if any).
        Memoised per (key, type, value): a plan compares the same few values thousands of times."""
        memo = (key, type(value), value) if isinstance(value, (str, int, float, bool, type(None))) else None
        if memo is not None:
            known = self._effective_memo.get(memo, _UNSEEN)
            if known is not _UNSEEN:
                return known
        normal = self.normalize(key, value)
        result = self._normal_defaults.get(key) if normal is None else normal
        if memo is not None and len(self._effective_memo) < 100_000:
            self._effective_memo[memo] = result
        return result

    @cached_property
    def _effective_memo(self) -> dict[tuple, Any]:
        return {}

    @cached_property
    def _types(self) -> dict[str, tuple[str, ...]]:
        types = {}
        for key, prop in self.properties.items():
            declared = prop.get("type", ()) if isinstance(prop, dict) else ()
            types[key] = (declared,) if isinstance(declared, str) else tuple(declared)
        return types

    @cached_property
    def _normal_defaults(self) -> dict[str, Any]:
        return {key: self.normalize(key, value) for key, value in self.defaults.items()}


def _canonical_json(value: Any) -> Any:
    """A JSON-valued key (``event.poller.configuration``) compares by meaning: the API and the docs give
    it as an object or as an escaped JSON string (even a string of a string); both become the same
    canonical text. A string that is not the JSON of a mapping or list stays as it is."""
    decoded = value
    for _ in range(3):
        if not isinstance(decoded, str):
            break
        try:
            decoded = json.loads(decoded)
        except ValueError:
            return value
    if isinstance(decoded, (dict, list)):
        return json.dumps(decoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return value  # JSON text of a number, NaN or a plain string: compared as written


class ElementRegistry:
    """Element schemas by key, from the built-in directory then each extra directory in order."""

    def __init__(self) -> None:
        self._by_key: dict[str, ElementSchema] = {}
        self.problems: list[Problem] = []

    @classmethod
    def load(cls, extra_dirs: list[str] | tuple[str, ...] = ()) -> ElementRegistry:
        registry = cls()
        for entry in sorted(builtin_schemas().joinpath("elements").iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".json"):
                # Shipped schemas are checked against the metaschema by the test suite, not on every run.
                registry._add_text(entry.read_text(encoding="utf-8"), f"(built in) {entry.name}", checked=True)
        for directory in extra_dirs:
            registry.add_directory(directory)
        return registry

    def add_directory(self, directory: str) -> None:
        if not os.path.isdir(directory):
            self.problems.append(
                Problem(
                    f"schema directory {directory} does not exist",
                    Location(directory),
                    "--schemas takes a directory of <element>.json files",
                )
            )
            return
        for name in sorted(os.listdir(directory)):
            if name.endswith(".json"):
                path = os.path.join(directory, name)
                try:
                    with open(path, encoding="utf-8") as handle:
                        self._add_text(handle.read(), path)
                except (OSError, UnicodeDecodeError) as exc:
                    self.problems.append(Problem(f"cannot read element schema: {exc}", Location(path)))

    def _add_text(self, text: str, source: str, checked: bool = False) -> None:
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            self.problems.append(Problem(f"element schema is not valid JSON: {exc.msg}", Location(source, exc.lineno)))
            return
        try:
            if not checked:
                Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            self.problems.append(Problem(f"element schema is not a valid JSON Schema: {exc.message}", Location(source)))
            return
        meta = schema.get("x-provisioner") if isinstance(schema, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("element"), str):
            self.problems.append(
                Problem(
                    "element schema has no x-provisioner.element key",
                    Location(source),
                    'add "x-provisioner": {"element": "<key>", "reportedKeys": [...]}',
                )
            )
            return
        key = meta["element"]
        reported = frozenset(meta.get("reportedKeys", [])) | {key}
        self._by_key[key] = ElementSchema(key, schema, source, reported)

    def get(self, key: str) -> ElementSchema | None:
        return self._by_key.get(key)

    def keys(self) -> list[str]:
        return sorted(self._by_key)
