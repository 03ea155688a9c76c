"""``provisioner drift`` (docs/ownership.md, Drift reports): what changed behind provisioner's back (drift)
apart from what changed in the manifest (pending), a pure function over a plan made with default options
and the live listing: a changed field is pending when its live value's digest is in the applied record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

from ..api.live import LiveInstance
from ..manifest.elements import ElementRegistry
from ..ownership import fingerprints_of, is_unmanaged
from ..secret import SENSITIVE
from .applied import applied_record, live_value, record_digest
from .diff import FieldDiff, FieldPath, FingerprintContext
from .plan import Action, Change, Plan, element_aliases

Kind = Literal["drift", "pending"]
Category = Literal[
    "changed", "secret", "missing", "extra-copy", "unmanaged-namesake", "undeclared", "renamed", "disabled", "enabled"
]
CATEGORIES: tuple[Category, ...] = get_args(Category)  # in this order in the JSON summary
_CHANGED = {
    "drift": "changed on the server since provisioner applied it",
    "pending": "the manifest changed since the last apply; plan shows the change",
}


@dataclass(frozen=True)
class DriftField:
    path: FieldPath
    live: Any
    manifest: Any
    sensitive: bool
    kind: Kind

    def to_json(self) -> dict:
        masked = {"live": SENSITIVE, "manifest": SENSITIVE} if self.sensitive else {}
        return {**asdict(self), "path": str(self.path), **masked}


@dataclass(frozen=True)
class Finding:
    category: Category
    kind: Kind
    name: str
    target: str
    element: str | None
    id: Any
    detail: str
    fields: tuple[DriftField, ...] = ()

    def to_json(self) -> dict:
        return {**asdict(self), "fields": [f.to_json() for f in self.fields]}


@dataclass(frozen=True)
class DriftReport:
    stack: str
    findings: tuple[Finding, ...]
    declared: int
    in_sync: int

    @property
    def has_drift(self) -> bool:
        return any(f.kind == "drift" for f in self.findings)

    def summary(self) -> dict[str, Any]:
        return {
            "declared": self.declared,
            "inSync": self.in_sync,
            "drift": sum(1 for f in self.findings if f.kind == "drift"),
            "pending": sum(1 for f in self.findings if f.kind == "pending"),
            "byCategory": dict.fromkeys(CATEGORIES, 0) | Counter(f.category for f in self.findings),
        }

    def to_json(self) -> dict:
        return {
            "stack": self.stack,
            "drift": self.has_drift,
            "pending": any(f.kind == "pending" for f in self.findings),
            "findings": [f.to_json() for f in self.findings],
            "summary": self.summary(),
        }


def detect(
    plan: Plan,
    live_by_target: Mapping[str, list[LiveInstance]],
    registry: ElementRegistry,
    fingerprints: Mapping[str, FingerprintContext],
    declared: int,
) -> DriftReport:
    findings: list[Finding] = []
    in_sync = 0
    for change in plan.changes:
        found = _findings(change, registry, fingerprints.get(change.target))
        in_sync += 1 if change.action == Action.NOOP and not found else 0
        findings.extend(found)
    findings.extend(_namesakes(plan, live_by_target, registry))
    return DriftReport(plan.stack, tuple(findings), declared, in_sync)


def _findings(change: Change, registry: ElementRegistry, fp: FingerprintContext | None) -> list[Finding]:
    element = change.desired.element if change.desired is not None else _canonical_element(registry, change.element)
    common = {"name": change.name, "target": change.target, "element": element, "id": change.id}
    if change.action == Action.CREATE:
        return [Finding("missing", "drift", detail="declared, not found among the stack's instances", **common)]
    if change.action == Action.DELETE:  # with default options, only extra copies of a declared instance
        return [Finding("extra-copy", "drift", detail=change.reason, **common)]
    if change.action == Action.NOOP and change.desired is None:
        return [Finding("undeclared", "pending", detail=change.reason, **common)]
    if change.action == Action.CONFLICT and change.live is not None and is_unmanaged(change.live.tags):
        why = f"declared, but the only instance named {change.name!r} has no stack marker; provisioner never touches it"
        return [Finding("unmanaged-namesake", "drift", detail=why, **common)]
    found = []
    if change.action == Action.RENAME:
        old = change.live.name if change.live is not None else "?"
        found.append(Finding("renamed", "pending", detail=f"owned as {old!r}; apply renames it", **common))
    live = change.live
    if live is None or change.desired is None or fp is None:  # then it has no field diff either
        return found
    schema, record = registry.get(change.desired.element), applied_record(live.tags)
    plain: dict[Kind, list[DriftField]] = {"pending": [], "drift": []}
    secrets = []
    for diff in change.diff:
        if diff.path.section == "enabled":
            state, declared = ("disabled", "enabled") if diff.new else ("enabled", "disabled (enabled: false)")
            detail = f"{state} on the server behind provisioner's back; the manifest declares it {declared}"
            found.append(Finding(cast(Category, state), "drift", detail=detail, **common))
        elif diff.sensitive:
            secrets.append(_secret(diff, live, common))
        elif diff.path.section != "name":
            of_element = diff.path.section == "element"
            value = _canonical_element(registry, live.element) if of_element else live_value(live, diff.path, schema)
            kind: Kind = "pending" if record_digest(fp, diff.path, value) in record else "drift"
            plain[kind].append(DriftField(diff.path, diff.old, diff.new, False, kind))
    changed = [Finding("changed", k, detail=_CHANGED[k], fields=tuple(f), **common) for k, f in plain.items() if f]
    return found + changed + secrets


def _secret(diff: FieldDiff, live: LiveInstance, common: dict[str, Any]) -> Finding:
    kind: Kind = "pending" if diff.path.key in fingerprints_of(live.tags) else "drift"
    detail = {
        "pending": "the secret differs from the one last applied (changed in the manifest or its environment)",
        "drift": "the fingerprint tag is gone: the instance was rewritten behind provisioner's back",
    }[kind]
    return Finding("secret", kind, detail=detail, fields=(DriftField(diff.path, None, None, True, kind),), **common)


def _canonical_element(registry: ElementRegistry, reported: str | None) -> str | None:
    """The element key as a manifest declares it, for a key the API reports (dynamicscrm: dynamicscrmadfs)."""
    return min(element_aliases(registry).get(reported, ()), default=reported)


def _namesakes(
    plan: Plan, live_by_target: Mapping[str, list[LiveInstance]], registry: ElementRegistry
) -> list[Finding]:
    """Unmanaged namesakes next to an owned declared instance (the plan shows only those in a create's way)."""
    declared = {(c.target, c.name) for c in plan.changes if c.desired is not None and c.action != Action.CONFLICT}
    why = "an instance with a declared name but without the stack marker exists next to the owned one; "
    why += "provisioner never touches it"
    return [
        Finding(
            "unmanaged-namesake", "drift", live.name, target, _canonical_element(registry, live.element), live.id, why
        )
        for target, instances in sorted(live_by_target.items())
        for live in instances
        if (target, live.name) in declared and is_unmanaged(live.tags)
    ]
