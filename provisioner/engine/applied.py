"""What provisioner last applied, recorded on the instance itself: ``provisioner:applied=<digests>``, a
short keyed digest per non-secret field as written, in effective form (docs/ownership.md, Drift reports).
The same digest, longer, gives a saved plan's field digests.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..manifest.elements import ElementSchema
from ..ownership import APPLIED_TAG, PROTECT_TAG, user_tags
from ..secret import reveal
from .diff import FieldPath, FingerprintContext

RECORD_CHARS = 4  # 3 bytes: a chance collision per field is 1 in 16 million
_RECORD_BYTES = 3
MAX_REMEMBERED = 8_192  # values shared by many instances come first; unique ones need not be kept


def record_digest(fp: FingerprintContext, path: FieldPath, value: Any) -> str:
    """The short digest of one field in the applied record, kept in the run's ``fp.digests``."""
    message = _message(path, value)
    found = fp.digests.get(message)
    if found is None:
        found = _digest(fp.key, message, _RECORD_BYTES)
        if len(fp.digests) < MAX_REMEMBERED:
            fp.digests[message] = found
    return found


def _digest(key: bytes, message: str, size: int) -> str:
    raw = hashlib.blake2b(message.encode(), key=key[:64], digest_size=size).digest()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _message(path: Any, value: Any) -> str:
    return f"{path}\0{_canonical(reveal(value))}"


def _canonical(value: Any) -> str:
    """An unambiguous text for a value: a type letter, then the value (JSON for containers)."""
    if isinstance(value, str):
        return "s" + value
    if value is None or isinstance(value, bool):
        return "n" if value is None else "b" + str(value)
    if isinstance(value, (int, float)):
        return "i" + repr(value)
    return "j" + json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def desired_fields(desired: Any, schema: ElementSchema) -> dict[FieldPath, Any]:
    """The non-secret fields of a desired instance that provisioner compares, in effective form."""
    return _fields(desired, schema, desired.tags, desired.protect, set(schema.defaults))


def _fields(desired: Any, schema: ElementSchema, tags: Any, protect: Any, keys: set[str]) -> dict[FieldPath, Any]:
    """The element, the tags and protection (unless None) and the non-secret configuration keys
    (declared, and ``keys``), each in effective form."""
    fields: dict[FieldPath, Any] = {FieldPath("element"): desired.element}
    if tags is not None:
        fields[FieldPath("tags")] = sorted(set(tags))
    if protect is not None:
        fields[FieldPath("protect")] = bool(protect)
    for key in sorted((keys | set(desired.configuration)) - schema.secret_keys):
        fields[FieldPath.config(key)] = schema.effective(key, desired.configuration.get(key))
    return fields


def live_value(live: Any, path: FieldPath, schema: ElementSchema | None) -> Any:
    """The live instance's tags, protection or configuration key, in the effective form of ``desired_fields``
    (its element, name and enabled state are compared apart, never through this)."""
    if path.section == "tags":
        return sorted(set(user_tags(live.tags)))
    if path.section == "protect":
        return PROTECT_TAG in live.tags
    assert path.section == "configuration" and path.key is not None
    value = (live.configuration or {}).get(path.key)
    return schema.effective(path.key, value) if schema is not None else value


def applied_tag(desired: Any, schema: ElementSchema, fp: FingerprintContext, tags: Iterable[str], protect: bool) -> str:
    """The record tag: every non-secret field as a write with these user tags and protection leaves it
    (every non-secret schema property, and any other declared key)."""
    fields = _fields(desired, schema, tags, protect, set(schema.properties))
    return APPLIED_TAG + "".join(sorted(record_digest(fp, path, value) for path, value in fields.items()))


def applied_record(tags: Iterable[Any]) -> frozenset[str]:
    """The digests recorded on a live instance (none when it carries no record)."""
    for tag in tags:
        if isinstance(tag, str) and tag.startswith(APPLIED_TAG):
            text = tag[len(APPLIED_TAG) :]
            return frozenset(text[i : i + RECORD_CHARS] for i in range(0, len(text), RECORD_CHARS))
    return frozenset()


def field_digests(key: bytes, fields: Mapping[str, Any], size: int = 16) -> dict[str, str]:
    return {path: _digest(key, _message(path, value), size) for path, value in sorted(fields.items())}
