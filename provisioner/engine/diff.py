"""Diffs are data, over declared fields only: ``diff_instance`` is a pure function from (desired, live)
to ``FieldDiff``s (docs/ownership.md, What is compared); secrets compare through their fingerprint tags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from ..closedsets import StrEnum
from ..manifest.elements import ElementSchema
from ..ownership import PROTECT_TAG, fingerprint, fingerprints_of, user_tags
from ..secret import SENSITIVE


class DiffOp(StrEnum):
    """What happens to one field: it gets a value, its value changes, or its value goes."""

    ADD = "add"
    CHANGE = "change"
    REMOVE = "remove"


Section = Literal["element", "name", "tags", "protect", "configuration", "enabled"]


class FieldPath(NamedTuple):
    """Where a field is: its section, and for ``configuration`` the key inside it (a key may hold dots
    itself, ``helpdesk.connectwise.password``, so the two are never joined and split again)."""

    section: Section
    key: str | None = None

    def __str__(self) -> str:
        """The dotted text shown in every output: ``tags``, ``configuration.<key>``."""
        return self.section if self.key is None else f"{self.section}.{self.key}"

    @classmethod
    def config(cls, key: str) -> FieldPath:
        return cls("configuration", key)


@dataclass(frozen=True)
class FieldDiff:
    op: DiffOp
    path: FieldPath
    old: Any
    new: Any
    sensitive: bool = False

    def to_json(self) -> dict:
        return {"op": self.op, "path": str(self.path), "old": self.old, "new": self.new, "sensitive": self.sensitive}


@dataclass(frozen=True)
class FingerprintContext:
    """The fingerprint key and the stack, one per target and run; it keeps the run's field digests
    (``applied.py``): a forEach writes the same few values thousands of times."""

    key: bytes
    stack: str
    digests: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


def diff_configuration(
    desired: Mapping[str, Any],
    live: Mapping[str, Any] | None,
    schema: ElementSchema,
    live_fingerprints: Mapping[str, str],
    fp: FingerprintContext,
    name: str,
) -> list[FieldDiff]:
    live = live or {}
    diffs: list[FieldDiff] = []
    for key in sorted(set(desired) | set(schema.defaults)):  # declared keys and schema defaults
        if key in schema.secret_keys:
            value = desired.get(key)
            if value is not None and live_fingerprints.get(key) != fingerprint(fp.key, fp.stack, name, key, value):
                known = key in live_fingerprints or live.get(key) not in (None, "")
                op, old = (DiffOp.CHANGE, SENSITIVE) if known else (DiffOp.ADD, None)
                diffs.append(FieldDiff(op, FieldPath.config(key), old, SENSITIVE, True))
            continue
        mine, theirs = desired.get(key), live.get(key)
        if type(mine) is type(theirs) and mine == theirs:  # the same value: the same meaning
            continue
        want = schema.effective(key, mine)
        have = schema.effective(key, theirs)
        if want != have:
            op = DiffOp.ADD if have is None else DiffOp.REMOVE if want is None else DiffOp.CHANGE
            diffs.append(FieldDiff(op, FieldPath.config(key), have, want))
    return diffs


def diff_instance(desired: Any, live: Any, schema: ElementSchema, fp: FingerprintContext) -> list[FieldDiff]:
    """Configuration, then user tags (as a set) and protection, each only when declared."""
    diffs = diff_configuration(
        desired.configuration, live.configuration, schema, fingerprints_of(live.tags), fp, desired.name
    )
    tags = sorted(set(user_tags(live.tags)))
    if desired.tags is not None and sorted(set(desired.tags)) != tags:
        diffs.append(FieldDiff(DiffOp.CHANGE, FieldPath("tags"), tags, sorted(set(desired.tags))))
    protected = PROTECT_TAG in live.tags
    if desired.protect is not None and desired.protect != protected:
        diffs.append(FieldDiff(DiffOp.CHANGE, FieldPath("protect"), protected, desired.protect))
    return diffs
