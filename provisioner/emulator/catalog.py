"""The element catalog the emulator serves, and the configuration rules that come with it.

Cloud Elements describes each element (connector) with configuration definitions: key, type,
required flag, default value. The emulator needs them to answer ``GET /elements/...``, to reject a
create that misses required entries, to fill defaults and to mask ``PASSWORD`` values in instance
responses. The data lives in ``elements.json`` (a list of elements in Cloud Elements' own format:
the records ``GET /elements/{key}`` answers) so it can be read and extended without touching code. It
is the one source of element definitions: ``provisioner schemas pull --local`` writes the shipped
``schemas/elements/*.json`` from what the emulator serves, and a test keeps them equal.

Fields starting with ``x-`` are the emulator's own; the real API has none of them:

* ``x-source`` (element): where the definitions come from (public Cloud Elements documentation).
  Never served.
* ``x-reportedKey`` (element): instances of this element are reported with the element object of
  that key (``dynamicscrmadfs`` instances come back as ``dynamicscrm``, as in the docs' sample).
* ``x-requiredWhen`` (definition): ``{"other.key": ["value", ...]}``; a required key is only
  required when the effective value (sent value, else default) of ``other.key`` is in the list.
* ``x-allowedValues`` (definition): the values a key accepts; anything else is a 400.

The last three are rules the emulator enforces, and are served on the ``/elements`` endpoints (never
inside instances) so that a schema pulled from the emulator states the same rules. A schema pulled
from the real API has no such rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..secret import MASK  # the API answers the same eight stars in place of a secret value

SERVED_EXTENSIONS = frozenset({"x-reportedKey", "x-requiredWhen", "x-allowedValues"})
# Keys whose values responses mask although their type is not PASSWORD (notes section 8: the OAuth
# app credentials come back as ******** since 2017).
MASKED_KEYS = frozenset({"oauth.api.key", "oauth.api.secret"})
CONFIG_TYPES = frozenset(
    "TEXTFIELD_32 TEXTFIELD_64 TEXTFIELD_100 TEXTFIELD_128 TEXTFIELD_1000 TEXTAREA BOOLEAN PASSWORD".split()
)
CATALOG_PATH = Path(__file__).with_name("elements.json")
# An internal key that responses still list (as null until the platform sets it).
SHOWN_INTERNAL_KEYS = frozenset({"event.notification.subscription.id"})
# Config record ids of an instance are instance id * this + position (see ``Element.config_ids``).
CONFIG_ID_FACTOR = 100000
_UNKNOWN_KEY_OFFSET = 1000


def _require(ok: object, problem: str) -> None:
    """A check of elements.json, for whoever edits it."""
    if not ok:
        raise ValueError(f"elements.json: {problem}")


def strip_private(record: dict) -> dict:  # without the emulator-only ``x-`` fields
    return {k: v for k, v in record.items() if not k.startswith("x-")}


def served(record: dict) -> dict:
    """A copy of ``record`` as the ``/elements`` endpoints serve it: the rule extensions kept."""
    return {k: v for k, v in record.items() if not k.startswith("x-") or k in SERVED_EXTENSIONS}


def configuration_spelling(record: dict) -> dict:
    """A definition as ``GET /elements/{key}/configuration`` names its fields (notes section 14):
    ``mandatory`` and ``configDataType`` instead of ``required`` and ``type``."""
    renamed = {"required": "mandatory", "type": "configDataType"}
    return {renamed.get(k, k): v for k, v in record.items()}


def is_blank(value: object) -> bool:  # "not given" for required entries: absent, null or ""
    return value is None or value == ""


@dataclass(frozen=True)
class ConfigDefinition:
    """One configuration definition of an element, with the fields the emulator acts on."""

    key: str
    required: bool
    default: str | None
    internal: bool
    secret: bool  # PASSWORD values (and the OAuth app credentials) are masked in every response
    required_when: dict[str, tuple[str, ...]] | None
    allowed: tuple[str, ...] | None
    served: dict  # the record the /elements endpoints serve

    @classmethod
    def from_record(cls, element_key: str, rec: dict) -> ConfigDefinition:
        """Build and check a definition from its JSON record."""
        key, default, when = rec.get("key"), rec.get("defaultValue"), rec.get("x-requiredWhen")
        where = f"{element_key}: {key!r}"
        _require(isinstance(key, str) and key, f"{where}: a configuration definition needs a key")
        _require(rec.get("type") in CONFIG_TYPES, f"{where}: unknown type {rec.get('type')!r}")
        _require(default is None or isinstance(default, str), f"{where}: defaultValue must be a string or null")
        secret = rec["type"] == "PASSWORD" or key in MASKED_KEYS
        when = {k: tuple(v) for k, v in when.items()} if when is not None else None
        allowed = tuple(rec.get("x-allowedValues") or ()) or None
        return cls(
            rec["key"],
            bool(rec.get("required")),
            default,
            bool(rec.get("internal")),
            secret,
            when,
            allowed,
            served(rec),
        )


class Element:
    """One element of the catalog: its public object and its configuration definitions."""

    def __init__(self, raw: dict):
        for name in ("id", "key", "name"):
            _require(name in raw, f"an element has no {name!r}")
        self.id: int = int(raw["id"])
        self.key: str = raw["key"]
        self.reported_key: str = raw.get("x-reportedKey") or self.key
        self.definitions = [ConfigDefinition.from_record(self.key, r) for r in raw.get("configuration", [])]
        self.by_key = {d.key: d for d in self.definitions}
        _require(len(self.by_key) == len(self.definitions), f"{self.key}: duplicate configuration keys")
        self.public = {k: v for k, v in strip_private(raw).items() if k != "configuration"}
        self.served = {k: v for k, v in served(raw).items() if k != "configuration"}
        self.records = [d.served for d in self.definitions]
        # Definition keys an instance response lists even without a stored value.
        self._listed = {d.key for d in self.definitions if not d.internal or d.key in SHOWN_INTERNAL_KEYS}
        self._positions = {d.key: i + 1 for i, d in enumerate(self.definitions)}

    def with_configuration(self) -> dict:  # as ``GET /elements/{keyOrId}`` serves it
        return {**self.served, "configuration": self.records}

    def configuration_document(self) -> dict:
        """``GET /elements/{keyOrId}/configuration``: ``{configuration, providerData}`` (notes section 14)."""
        return {"configuration": [configuration_spelling(r) for r in self.records], "providerData": []}

    def effective(self, config: dict, key: str) -> str | None:
        """The value ``key`` has for an instance: the stored one, else the default."""
        value = config.get(key)
        if is_blank(value):
            definition = self.by_key.get(key)
            return definition.default if definition else value
        return value

    def missing_required(self, config: dict) -> list[str]:
        """Sorted keys that are required here (honouring x-requiredWhen) and not given."""
        missing = []
        for d in self.definitions:
            if not d.required or d.default not in (None, "") or not is_blank(config.get(d.key)):
                continue
            if d.required_when and not all(
                self.effective(config, other) in values for other, values in d.required_when.items()
            ):
                continue
            missing.append(d.key)
        return sorted(missing)

    def invalid_values(self, config: dict) -> list[str]:
        """Messages for values outside a definition's x-allowedValues."""
        problems = []
        for d in self.definitions:
            value = config.get(d.key)
            if d.allowed and not is_blank(value) and value not in d.allowed:
                problems.append(
                    f"Invalid value {value!r} for configuration entry {d.key}; expected one of: {', '.join(d.allowed)}"
                )
        return problems

    def listed_keys(self, config: dict) -> list[str]:
        """Keys an instance response shows: listed definition keys, internal keys that hold a
        stored value, then unknown keys in the order they were stored."""
        keys = [d.key for d in self.definitions if d.key in self._listed or config.get(d.key) is not None]
        keys.extend(k for k in config if k not in self.by_key)
        return keys

    def shown_value(self, config: dict, key: str) -> str | None:
        """The value a response shows for ``key``: stored (a stored null counts as no value), else
        the default, else null; PASSWORD values masked."""
        value = config.get(key)
        definition = self.by_key.get(key)
        if value is None and definition is not None:
            value = definition.default
        if definition is not None and definition.secret and value not in (None, ""):
            return MASK
        return value

    def render_configuration(self, config: dict) -> dict:  # of an instance response
        return {key: self.shown_value(config, key) for key in self.listed_keys(config)}

    def config_ids(self, instance_id: int, config: dict) -> list[tuple[int, str]]:
        """(record id, key) for each listed key: stable ids derived from the instance id and the
        key's position in the definitions (unknown keys: their position among stored keys)."""
        base = instance_id * CONFIG_ID_FACTOR
        result = []
        unknown = 0
        for key in self.listed_keys(config):
            if key in self._positions:
                result.append((base + self._positions[key], key))
            else:
                unknown += 1
                result.append((base + _UNKNOWN_KEY_OFFSET + unknown, key))
        return result


class Catalog:
    """All elements, addressable by key or numeric id."""

    def __init__(self, elements: list[dict]):
        self.elements = [Element(raw) for raw in elements]
        self._by_key = {e.key: e for e in self.elements}
        self._by_id = {str(e.id): e for e in self.elements}
        _require(len(self._by_key) == len(self._by_id) == len(elements), "element keys and ids must be unique")
        for e in self.elements:
            _require(e.reported_key in self._by_key, f"{e.key}: x-reportedKey {e.reported_key!r} is not an element")

    @classmethod
    def load(cls, path: str | Path | None = None) -> Catalog:
        """Load the packaged elements.json (or another file in the same format)."""
        with open(path or CATALOG_PATH, encoding="utf-8") as fh:
            data = json.load(fh)
        _require(isinstance(data, list), "must hold a JSON list of elements")
        return cls(data)

    def find(self, key_or_id: object) -> Element | None:
        """The element with that key or numeric id (int or digit string), else None."""
        if isinstance(key_or_id, bool):
            return None
        if isinstance(key_or_id, int):
            return self._by_id.get(str(key_or_id))
        if isinstance(key_or_id, str):
            return self._by_key.get(key_or_id) or self._by_id.get(key_or_id.strip())
        return None

    def secret_keys(self, element_key: str) -> frozenset[str]:
        """The keys whose values responses mask (the store keeps only their digest)."""
        element = self.find(element_key)
        return frozenset(d.key for d in element.definitions if d.secret) if element else frozenset()

    def keys(self) -> list[str]:
        return sorted(self._by_key)
