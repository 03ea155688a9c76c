"""Stage 5: the plan is a value.

``make_plan`` compares the desired instances with the live ones of each target and returns an
immutable ``Plan``: one ``Change`` per instance (create, update, replace, delete, noop, conflict),
each with its reason and field diff. Every noop says why. It does no I/O; ``apply`` executes a plan
and does nothing else.

Identity is the stack marker plus the name. Stacks are isolated: an instance carrying another
stack's marker is invisible to this one (never a conflict, never touched), so two stacks may declare
the same names in one organization. A live instance with a declared name and no marker at all is
unmanaged: a conflict, never touched, unless ``--adopt`` takes it over (action ``adopt``). Two owned
instances with a declared name are duplicates: the oldest is kept and the others are deleted. Owned
instances the manifest no longer declares are deleted only with ``--prune``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .desired import DesiredInstance
from .diff import FieldDiff, FingerprintContext, diff_instance, element_matches
from .elements import ElementRegistry
from .errors import UserError
from .live import LiveInstance
from .ownership import is_unmanaged
from .secret import MASK, SENSITIVE, Secret

ACTIONS = ("create", "update", "replace", "delete", "noop", "conflict", "adopt")
WRITES = ("create", "update", "replace", "delete", "adopt")


@dataclass(frozen=True)
class Change:
    action: str
    name: str
    target: str
    element: str | None
    reason: str
    diff: tuple[FieldDiff, ...] = ()
    id: Any = None
    method: str | None = None  # for updates: "PUT" (configuration) or "PATCH" (tags only)
    desired: DesiredInstance | None = field(default=None, compare=False)
    live: LiveInstance | None = field(default=None, compare=False)
    warning: str | None = None

    @property
    def is_write(self) -> bool:
        return self.action in WRITES


@dataclass(frozen=True)
class PlanOptions:
    prune: bool = False
    allow_replace: bool = False
    force: bool = False
    destroy: bool = False
    adopt: bool = False  # take over unmanaged namesakes of declared instances


@dataclass(frozen=True)
class Plan:
    stack: str
    changes: tuple[Change, ...]
    options: PlanOptions = PlanOptions()

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(ACTIONS, 0)
        for change in self.changes:
            counts[change.action] += 1
        return counts

    @property
    def has_changes(self) -> bool:
        return any(c.is_write for c in self.changes)

    @property
    def has_conflicts(self) -> bool:
        return any(c.action == "conflict" for c in self.changes)

    @property
    def warnings(self) -> list[str]:
        return [f"{c.name}: {c.warning}" for c in self.changes if c.warning]


class EarlyDiffs:
    """Field diffs of declared instances against their owned live namesakes, computed page by page
    while the listing is still on the wire (the main thread is otherwise idle between pages).
    ``make_plan`` takes them instead of comparing again. Only a cache of a pure function: a plan is
    the same with or without it (an entry is used only for the very same desired and live objects)."""

    def __init__(self, stack: str, desired: Iterable[DesiredInstance], registry: ElementRegistry,
                 fingerprints: Mapping[str, FingerprintContext]):
        self._stack = stack
        self._registry = registry
        self._fingerprints = fingerprints
        self._declared = {(d.target, d.name): d for d in desired}
        self._diffs: dict[int, tuple[DesiredInstance, LiveInstance, tuple[FieldDiff, ...]]] = {}

    def see(self, target: str, page: Iterable[LiveInstance]) -> None:
        """Compare the instances of one page that a declared instance may be matched to."""
        fp = self._fingerprints.get(target)
        for live in page:
            desired = self._declared.get((target, live.name))
            if desired is None or fp is None or live.configuration is None or not live.owned_by(self._stack):
                continue
            schema = self._registry.get(desired.element)
            if schema is not None and element_matches(schema, live.element):
                self._diffs[id(live)] = (desired, live, tuple(diff_instance(desired, live, schema, fp)))

    def get(self, desired: DesiredInstance, live: LiveInstance) -> tuple[FieldDiff, ...] | None:
        entry = self._diffs.get(id(live))
        return entry[2] if entry is not None and entry[0] is desired and entry[1] is live else None


def make_plan(stack: str, desired: Iterable[DesiredInstance], live_by_target: Mapping[str, list[LiveInstance]],
              registry: ElementRegistry, fingerprints: Mapping[str, FingerprintContext],
              options: PlanOptions = PlanOptions(), early: EarlyDiffs | None = None) -> Plan:
    """Compare desired with live, target by target, and decide what to do with each instance."""
    desired = list(desired)
    if options.prune and not desired and not options.force and not options.destroy:
        raise UserError("--prune with a manifest that declares no instance would delete every instance of the stack",
                        hint="declare the instances to keep, use destroy, or add --force if this is intended")
    changes: list[Change] = []
    by_target: dict[str, list[DesiredInstance]] = {}
    for instance in desired:
        by_target.setdefault(instance.target, []).append(instance)
    for target in sorted(set(by_target) | set(live_by_target)):
        changes.extend(_plan_target(stack, target, by_target.get(target, []), live_by_target.get(target, []),
                                    registry, fingerprints.get(target), options, early))
    return Plan(stack, tuple(changes), options)


def _plan_target(stack: str, target: str, desired: list[DesiredInstance], live: list[LiveInstance],
                 registry: ElementRegistry, fp: FingerprintContext | None, options: PlanOptions,
                 early: EarlyDiffs | None) -> list[Change]:
    owned: dict[str, list[LiveInstance]] = {}
    unmanaged: dict[str, list[LiveInstance]] = {}
    for item in live:
        if item.owned_by(stack):
            owned.setdefault(item.name, []).append(item)
        elif is_unmanaged(item.tags):  # another stack's instances are invisible here
            unmanaged.setdefault(item.name, []).append(item)
    changes: list[Change] = []
    declared = set()
    for instance in ([] if options.destroy else desired):
        declared.add(instance.name)
        matches = sorted(owned.get(instance.name, []), key=lambda i: i.age_key)
        if matches:
            changes.append(_compare(instance, matches[0], registry, fp, options, early))
            changes.extend(_duplicates(matches, target))
        elif instance.name in unmanaged or instance.adopt is not None:
            namesakes = sorted(unmanaged.get(instance.name, []), key=lambda i: i.age_key)
            changes.append(_unmanaged(stack, instance, namesakes, registry, fp, options))
        else:
            changes.append(Change("create", instance.name, target, instance.element, "declared, not found",
                                  _create_diff(instance), desired=instance))
    for name in sorted(set(owned) - declared):
        for extra in sorted(owned[name], key=lambda i: i.age_key):
            changes.append(_undeclared(extra, target, options))
    return changes


def _unmanaged(stack: str, instance: DesiredInstance, namesakes: list[LiveInstance], registry: ElementRegistry,
               fp: FingerprintContext | None, options: PlanOptions) -> Change:
    """A declared name held by unmanaged instance(s): a conflict, or with --adopt, one adopt action."""
    chosen = _adoptable(instance, namesakes)
    if isinstance(chosen, str):
        return _conflict(instance, namesakes[0] if namesakes else None, chosen)
    if not options.adopt:
        return _conflict(instance, chosen, (
            f"an instance named {instance.name!r} (id {chosen.id}) exists without the marker of stack {stack!r} "
            "(unmanaged: it has no provisioner:stack= tag); provisioner never touches instances it does not own. "
            f"To take it over, keeping its id and token, run plan/apply with --adopt"))
    return _adopt(instance, chosen, registry, fp)


def _adoptable(instance: DesiredInstance, namesakes: list[LiveInstance]) -> LiveInstance | str:
    """The one unmanaged instance to take over, or why there is none."""
    ids = ", ".join(str(i.id) for i in namesakes)
    if instance.adopt is not None:
        wanted = [i for i in namesakes if str(i.id) == str(instance.adopt)]
        if wanted:
            return wanted[0]
        return (f"adopt: {instance.adopt} names no unmanaged instance called {instance.name!r}"
                + (f" (unmanaged namesakes: id {ids})" if namesakes else "")
                + "; fix the id, or remove adopt: to create a new instance")
    if len(namesakes) > 1:
        return (f"{len(namesakes)} unmanaged instances are named {instance.name!r} (ids {ids}); "
                "declare which one to take over with adopt: <id> on the instance")
    return namesakes[0]


def _conflict(instance: DesiredInstance, live: LiveInstance | None, reason: str) -> Change:
    return Change("conflict", instance.name, instance.target, instance.element, reason,
                  id=live.id if live is not None else None, desired=instance, live=live)


def _adopt(instance: DesiredInstance, live: LiveInstance, registry: ElementRegistry,
           fp: FingerprintContext | None) -> Change:
    """Take over an unmanaged instance: one PATCH adds the marker and fingerprints and sets the declared
    configuration. Secret values come back masked, so they are not compared (and always sent); neither is
    any other value the API masks."""
    schema = registry.get(instance.element)
    assert schema is not None and fp is not None
    if not element_matches(schema, live.element):
        return _conflict(instance, live, f"unmanaged instance id {live.id} named {instance.name!r} is of element "
                                         f"{live.element}, not {instance.element}; it cannot be adopted")
    diffs = tuple(d for d in diff_instance(instance, live, schema, fp) if not d.sensitive and d.old != MASK)
    secrets = sorted(k for k in schema.secret_keys if instance.configuration.get(k) is not None)
    reason = (f"unmanaged instance id {live.id} is taken over: the stack's marker and fingerprints are added, "
              "its id and token are kept")
    if secrets:
        reason += f"; secret values ({', '.join(secrets)}) cannot be read back and are sent as declared"
    return Change("adopt", instance.name, instance.target, instance.element, reason, diffs, id=live.id,
                  method="PATCH", desired=instance, live=live)


def _compare(instance: DesiredInstance, live: LiveInstance, registry: ElementRegistry,
             fp: FingerprintContext | None, options: PlanOptions, early: EarlyDiffs | None = None) -> Change:
    schema = registry.get(instance.element)
    assert schema is not None and fp is not None  # validation guarantees the element; apply gives fp
    common = {"name": instance.name, "target": instance.target, "element": instance.element, "id": live.id,
              "desired": instance, "live": live}
    if not element_matches(schema, live.element):
        diff = (FieldDiff("change", "element", live.element, instance.element),)
        if options.allow_replace:
            return Change("replace", reason=f"element changes from {live.element} to {instance.element} "
                          "(the application's token will change)", diff=diff, **common)
        return Change("conflict", reason=f"element changes from {live.element} to {instance.element}, which needs "
                      "a replace (and a new token); run with --allow-replace to allow it", diff=diff, **common)
    diffs = early.get(instance, live) if early is not None else None
    if diffs is None:
        diffs = tuple(diff_instance(instance, live, schema, fp))
    if not diffs:
        return Change("noop", reason="up to date", **common)
    if any(d.path.startswith("configuration.") for d in diffs):
        return Change("update", reason="configuration differs", diff=diffs, method="PUT", **common)
    return Change("update", reason="tags differ", diff=diffs, method="PATCH", **common)


def _duplicates(matches: list[LiveInstance], target: str) -> list[Change]:
    """Extra copies of a declared instance (left by a crash or another tool) are the same instance
    by identity: the oldest is kept, and its token is the one delivered; the others are deleted, so
    an interrupted run always converges to exactly one copy."""
    keep = matches[0]
    return [Change("delete", extra.name, target, extra.element, f"duplicate of id {keep.id} (the oldest is kept)",
                   id=extra.id, live=extra, warning=f"duplicate instance id {extra.id} of id {keep.id}")
            for extra in matches[1:]]


def _undeclared(instance: LiveInstance, target: str, options: PlanOptions) -> Change:
    common = {"name": instance.name, "target": target, "element": instance.element, "id": instance.id,
              "live": instance}
    if options.destroy:
        return Change("delete", reason="destroy deletes every instance the stack owns", **common)
    if options.prune:
        return Change("delete", reason="owned by the stack, no longer declared", **common)
    return Change("noop", reason="owned by the stack but no longer declared; --prune deletes it",
                  warning="owned but not declared (use --prune to delete it)", **common)


def _create_diff(instance: DesiredInstance) -> tuple[FieldDiff, ...]:
    diffs = [FieldDiff("add", "element", None, instance.element)]
    if instance.tags is not None:
        diffs.append(FieldDiff("add", "tags", None, list(instance.tags)))
    for key in sorted(instance.configuration):
        value = instance.configuration[key]
        secret = isinstance(value, Secret)
        diffs.append(FieldDiff("add", f"configuration.{key}", None, SENSITIVE if secret else value, secret))
    return tuple(diffs)
