"""Element schemas from the API's own element definitions (``provisioner schemas pull``; the mapping is
in docs/manifest.md). ``element_schema`` is a pure function, and ``schema_text`` writes sorted keys and
no timestamp, so pulling twice changes nothing. What the records cannot say comes from the research
notes (sections 7 to 9, 14), in one place: ``COMMON_KEYS`` and ``SECRET_KEYS``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..manifest.elements import OAUTH_REFRESH_TOKEN

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "https://github.com/provisioner/provisioner/schemas/elements/{key}.json"
_BOOLEAN = {"type": ["boolean", "string"], "enum": [True, False, "true", "false"]}
_URL = "^https?://"
_TEXTFIELD = re.compile(r"^TEXTFIELD_(\d+)$")

# Keys every element may carry, with the rules the docs give and the records do not (notes section 9).
COMMON_KEYS: dict[str, dict[str, Any]] = {
    "event.vendor.type": {
        "type": "string",
        "enum": ["webhook", "webhooks", "polling"],
        "description": "How Cloud Elements gets changes from the vendor. The docs spell the "
        "webhook value both 'webhook' and 'webhooks'.",
    },
    "event.notification.type": {"type": "string", "enum": ["webhook"]},
    "event.notification.callback.url": {"pattern": _URL},
    "oauth.callback.url": {"pattern": _URL},
    "event.poller.refresh_interval": {"type": ["integer", "string"], "pattern": "^[0-9]+$", "minimum": 1},
    "event.poller.configuration": {
        "type": ["object", "string"],
        "description": "Resources to poll, keyed by resource: a mapping, or the same as JSON text. Sent as "
        "compact JSON text; compared by meaning.",
    },
}
# Internal keys a manifest may still set: documented as a user setting (section 9).
SETTABLE_INTERNAL_KEYS = frozenset({"event.vendor.type"})
# Values the API masks (section 8) or that are secret by nature: writeOnly, compared by fingerprint.
SECRET_KEYS = frozenset(
    {
        "oauth.api.key",
        "oauth.api.secret",
        "oauth.user.token",
        "oauth.user.token.secret",
        OAUTH_REFRESH_TOKEN,
        "aws.api.secret",
        "event.notification.signature.key",
    }
)
_REFRESH_TOKEN_RECORD = {
    "key": OAUTH_REFRESH_TOKEN,
    "name": "OAuth Refresh Token",
    "type": "TEXTFIELD_1000",
    "description": "An existing OAuth refresh token: the instance is then created with "
    "externalAuthentication: initial, without a browser redirect.",
}


def record_field(record: Mapping[str, Any], name: str) -> Any:
    """A field of a definition record under either spelling: ``GET /elements/{key}`` says ``required``
    and ``type``, ``GET /elements/{key}/configuration`` says ``mandatory`` and ``configDataType``."""
    other = {"required": "mandatory", "type": "configDataType"}.get(name)
    return record.get(name) if record.get(name) is not None or other is None else record.get(other)


def element_schema(element: Mapping[str, Any], records: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON Schema of one element's instance configuration."""
    key = str(element["key"])
    oauth = bool(element.get("typeOauth"))
    kept = [r for r in records if _kept(r, oauth)]
    if oauth and not any(r.get("key") == OAUTH_REFRESH_TOKEN for r in kept):
        kept.append(_REFRESH_TOKEN_RECORD)
    conditions = {str(r["key"]): r.get("x-requiredWhen") for r in kept if record_field(r, "required")}
    reported = element.get("x-reportedKey")
    reported_keys = list(dict.fromkeys([key, *([reported] if reported else [])]))
    meta: dict[str, Any] = {"element": key, "reportedKeys": reported_keys}
    if oauth:
        when = conditions.get("oauth.api.key")  # the OAuth path is the one that needs the app's key
        meta["oauth"] = {"when": when} if when else True
    schema: dict[str, Any] = {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID.format(key=key),
        "title": f"{element.get('name') or key} ({key}) instance configuration",
        "type": "object",
        "additionalProperties": False,
        "properties": {str(r["key"]): _property(r, str(r["key"]) in conditions) for r in kept},
        "x-provisioner": meta,
    }
    if element.get("description"):
        schema["description"] = str(element["description"])
    if always := [k for k, when in conditions.items() if not when and "default" not in schema["properties"][k]]:
        schema["required"] = always
    if rules := _conditional(conditions, schema["properties"]):
        schema["allOf"] = rules
    return schema


def schema_text(schema: Mapping[str, Any]) -> str:
    """Stable text: sorted keys, two-space indent, a trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _kept(record: Mapping[str, Any], oauth: bool) -> bool:
    """Internal keys are the platform's (OAuth tokens, refresh times): left out of manifests, except
    the documented user settings and, for an OAuth element, the refresh token one may bring."""
    if not isinstance(record.get("key"), str) or not record["key"]:
        return False
    if not record.get("internal"):
        return True
    return record["key"] in SETTABLE_INTERNAL_KEYS or (oauth and record["key"] == OAUTH_REFRESH_TOKEN)


def _property(record: Mapping[str, Any], required: bool) -> dict[str, Any]:
    key, api_type = str(record["key"]), str(record_field(record, "type") or "")
    prop: dict[str, Any] = {"title": str(record.get("name") or key), "x-apiType": api_type}
    if record.get("description"):
        prop["description"] = str(record["description"])
    prop.update(_type_rules(api_type))
    prop.update(COMMON_KEYS.get(key, {}))
    if api_type == "PASSWORD" or key in SECRET_KEYS:
        prop["writeOnly"] = True
    if record.get("x-allowedValues"):
        prop["enum"] = list(record["x-allowedValues"])
    if record.get("hideFromConsole"):
        prop["x-hideFromConsole"] = True
    if (default := _default(record.get("defaultValue"), prop)) is not None:
        prop["default"] = default
    elif required and prop.get("type") == "string" and "pattern" not in prop and "enum" not in prop:
        prop["minLength"] = 1
    return prop


def _type_rules(api_type: str) -> dict[str, Any]:
    """JSON Schema rules of one API configuration type (notes section 7)."""
    if length := _TEXTFIELD.match(api_type):
        return {"type": "string", "maxLength": int(length[1])}
    if api_type == "BOOLEAN":
        return dict(_BOOLEAN)
    if api_type in ("NUMBER", "NUMERIC", "DECIMAL"):
        return {"type": ["number", "string"]}
    if api_type == "INTEGER":
        return {"type": ["integer", "string"], "pattern": "^-?[0-9]+$"}
    return {"type": "string"}  # TEXTAREA, PASSWORD, and any type the notes have not seen


def _default(value: Any, prop: Mapping[str, Any]) -> Any:
    """The API gives every default as a string ("false", "15"): typed here as the property is."""
    if value is None or value == "":
        return None
    types = prop.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    text = str(value)
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "integer" in types and text.strip().lstrip("-").isdigit():
        return int(text)
    return text


def _conditional(conditions: Mapping[str, Any], properties: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Keys required only when another key has one of some values (``x-requiredWhen``, only the emulator's):
    one if/then per condition, which also holds while that key is absent if its default is among the values."""
    groups: dict[str, tuple[Mapping[str, Any], list[str]]] = {}  # keys by the condition they share
    for key, when in conditions.items():
        if when and "default" not in properties[key]:
            groups.setdefault(json.dumps(when, sort_keys=True), (when, []))[1].append(key)
    rules = []
    for when, keys in groups.values():
        test: dict[str, Any] = {"properties": {k: {"enum": list(v)} for k, v in when.items()}}
        absent_ok = all(properties.get(k, {}).get("default") in v for k, v in when.items())
        if not absent_ok:
            test["required"] = sorted(when)
        rules.append({"if": test, "then": {"required": keys}})
    return rules
