"""The element registry: which elements exist, and what their configuration may hold. One JSON Schema
(2020-12) per element, built in or from ``--schemas DIR`` and the manifest's ``schemas:`` (later ones
win); docs/manifest.md#element-schemas tells ``x-provisioner`` and ``writeOnly`` (secret keys).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from ..errors import Location, Problem
from .schemacheck import ShapeValidator, types_of

OAUTH_REFRESH_TOKEN = "oauth.user.refresh_token"


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
    reported_keys: frozenset[str] = field(default_factory=frozenset)

    @cached_property
    def validator(self) -> ShapeValidator:
        return ShapeValidator(self.schema)

    @cached_property
    def properties(self) -> dict[str, Any]:  # a user's schema may hold anything under a key
        return dict(self.schema.get("properties", {}))

    @cached_property
    def secret_keys(self) -> frozenset[str]:
        return frozenset(k for k, p in self.properties.items() if isinstance(p, dict) and p.get("writeOnly"))

    @cached_property
    def defaults(self) -> dict[str, Any]:
        return {k: p["default"] for k, p in self.properties.items() if isinstance(p, dict) and "default" in p}

    @cached_property
    def oauth(self) -> Any:  # x-provisioner.oauth: true, or {"when": ...}; None for other elements
        meta = self.schema.get("x-provisioner")
        return meta.get("oauth") if isinstance(meta, dict) else None

    def uses_oauth(self, configuration: Mapping[str, Any]) -> bool:
        """Whether this configuration authenticates with OAuth (``x-provisioner.oauth``, if its ``when`` holds)."""
        when = self.oauth.get("when", {}) if isinstance(self.oauth, dict) else {} if self.oauth else None
        return when is not None and all(
            self.effective(key, configuration.get(key)) in [self.normalize(key, v) for v in values]
            for key, values in when.items()
        )

    def oauth_problem(self, configuration: Mapping[str, Any], adopting: bool) -> tuple[str, str] | None:
        """Why a new instance of this configuration cannot be created unattended (message, hint), if so: OAuth
        needs a code from a browser redirect, unless a refresh token is given or ``adopt:`` takes one over."""
        if adopting or configuration.get(OAUTH_REFRESH_TOKEN) not in (None, "") or not self.uses_oauth(configuration):
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
        """The value that counts: null, empty and absent all mean the schema default (if any)."""
        normal = self.normalize(key, value)
        return self._normal_defaults.get(key) if normal is None else normal

    @cached_property
    def _types(self) -> dict[str, tuple[str, ...]]:
        return {key: tuple(types_of(prop)) if isinstance(prop, dict) else () for key, prop in self.properties.items()}

    @cached_property
    def _normal_defaults(self) -> dict[str, Any]:
        return {key: self.normalize(key, value) for key, value in self.defaults.items()}


def _canonical_json(value: Any) -> Any:
    """A JSON-valued key (``event.poller.configuration``) compares by meaning: an object and its escaped JSON
    text (even a string of a string) give the same canonical text; other strings stay as they are."""
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
            hint = "--schemas takes a directory of <element>.json files"
            self.problems.append(Problem(f"schema directory {directory} does not exist", Location(directory), hint))
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
            hint = 'add "x-provisioner": {"element": "<key>", "reportedKeys": [...]}'
            self.problems.append(Problem("element schema has no x-provisioner.element key", Location(source), hint))
            return
        key = meta["element"]
        reported = frozenset(meta.get("reportedKeys", [])) | {key}
        self._by_key[key] = ElementSchema(key, schema, reported)

    def get(self, key: str) -> ElementSchema | None:
        return self._by_key.get(key)

    def keys(self) -> list[str]:
        return sorted(self._by_key)
