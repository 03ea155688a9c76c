"""Diffs are data, over declared fields only.

``diff_instance`` is a pure function from (desired, live) to a tuple of ``FieldDiff``. Only what the
manifest declares is compared: keys only the server has are ignored; schema defaults apply to both
sides; null equals absent; values compare by meaning ("false" equals false, "15" equals 15); the
element may be reported under an alias. Secret values are compared through their fingerprint tags,
and a secret diff shows ``(sensitive)`` on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..closedsets import StrEnum
from ..manifest.elements import ElementSchema
from ..ownership import PROTECT_TAG, fingerprint, fingerprints_of, user_tags
from ..secret import SENSITIVE


class DiffOp(StrEnum):
    """What happens to one field: it gets a value, its value changes, or its value goes."""

    ADD = "add"
    CHANGE = "change"
    REMOVE = "remove"


@dataclass(frozen=True)
class FieldDiff:
    op: DiffOp
    path: str
    old: Any
    new: Any
    sensitive: bool = False

    def to_json(self) -> dict:
        return {"op": self.op, "path": self.path, "old": self.old, "new": self.new, "sensitive": self.sensitive}


@dataclass(frozen=True)
class FingerprintContext:
    """What a fingerprint needs besides the value: the keyed HMAC key and the stack."""

    key: bytes
    stack: str


def diff_configuration(
    desired: Mapping[str, Any],
    live: Mapping[str, Any] | None,
    schema: ElementSchema,
    live_fingerprints: Mapping[str, str],
    fp: FingerprintContext,
    name: str,
) -> list[FieldDiff]:
    """Differences on declared configuration keys (and keys with schema defaults)."""
    live = live or {}
    diffs: list[FieldDiff] = []
    secret_keys = schema.secret_keys
    for key in _compared_keys(desired, schema):
        if key in secret_keys:
            if key in desired and desired[key] is not None:
                want = fingerprint(fp.key, fp.stack, name, key, desired[key])
                if live_fingerprints.get(key) != want:
                    known = key in live_fingerprints or live.get(key) not in (None, "")
                    op = DiffOp.CHANGE if known else DiffOp.ADD
                    diffs.append(
                        FieldDiff(
                            op, f"configuration.{key}", SENSITIVE if op == DiffOp.CHANGE else None, SENSITIVE, True
                        )
                    )
            continue
        mine, theirs = desired.get(key), live.get(key)
        if type(mine) is type(theirs) and mine == theirs:  # the same value: the same meaning
            continue
        want = schema.effective(key, mine)
        have = schema.effective(key, theirs)
        if want != have:
            op = DiffOp.ADD if have is None else DiffOp.REMOVE if want is None else DiffOp.CHANGE
            diffs.append(FieldDiff(op, f"configuration.{key}", have, want))
    return diffs


_KEYS: dict[tuple[int, tuple[str, ...]], tuple[ElementSchema, list[str]]] = {}


def _compared_keys(desired: Mapping[str, Any], schema: ElementSchema) -> list[str]:
    """The declared keys and the schema's defaults, sorted; memoised per schema and key sequence (a
    forEach declares the same keys thousands of times)."""
    memo = (id(schema), tuple(desired))
    found = _KEYS.get(memo)
    if found is None or found[0] is not schema:
        found = (schema, sorted(set(desired) | set(schema.defaults)))
        if len(_KEYS) < 1024:
            _KEYS[memo] = found
    return found[1]


def diff_tags(desired_tags: tuple[str, ...] | None, live_tags: tuple[str, ...]) -> list[FieldDiff]:
    """User tags compare as sets (when declared); provisioner's own tags are not the user's concern."""
    if desired_tags is None:
        return []
    want, have = sorted(set(desired_tags)), sorted(set(user_tags(live_tags)))
    return [] if want == have else [FieldDiff(DiffOp.CHANGE, "tags", have, want)]


def diff_protect(protect: bool | None, live_tags: tuple[str, ...]) -> list[FieldDiff]:
    """The protection marker, when the manifest says protect: true or false."""
    have = PROTECT_TAG in live_tags
    return [] if protect is None or protect == have else [FieldDiff(DiffOp.CHANGE, "protect", have, protect)]


def diff_instance(desired: Any, live: Any, schema: ElementSchema, fp: FingerprintContext) -> list[FieldDiff]:
    """All field differences between a desired instance and the live instance it is matched to."""
    diffs = diff_configuration(
        desired.configuration, live.configuration, schema, fingerprints_of(live.tags), fp, desired.name
    )
    diffs.extend(diff_tags(desired.tags, live.tags))
    diffs.extend(diff_protect(desired.protect, live.tags))
    return diffs


def element_matches(schema: ElementSchema, live_element: str | None) -> bool:
    return schema.accepts_key(live_element)
