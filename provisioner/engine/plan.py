"""Stage 5: the plan is a value. ``make_plan`` compares the desired instances with the live ones of
each target, without I/O, and returns an immutable ``Plan``: one ``Change`` per instance with its
action, its reason (every noop says why) and its field diff, by the rules of docs/ownership.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..api.live import LiveInstance
from ..closedsets import StrEnum
from ..errors import UserError
from ..manifest.desired import DesiredInstance
from ..manifest.elements import ElementRegistry
from ..ownership import PROTECT_TAG, is_unmanaged
from ..secret import MASK, SENSITIVE, Secret
from .diff import DiffOp, FieldDiff, FieldPath, FingerprintContext, diff_instance
from .targeting import Selection, restrict


class Action(StrEnum):
    """What a plan does with one instance. The order is the order of the JSON summary."""

    CREATE = "create"
    UPDATE = "update"
    RENAME = "rename"
    REPLACE = "replace"
    DELETE = "delete"
    NOOP = "noop"
    CONFLICT = "conflict"
    PROTECTED = "protected"
    ADOPT = "adopt"
    DISABLE = "disable"
    ENABLE = "enable"
    REAUTHENTICATE = "reauthenticate"


REFUSALS = (Action.CONFLICT, Action.PROTECTED)  # shown, never executed, and the command exits 1
WRITES = tuple(a for a in Action if a not in (*REFUSALS, Action.NOOP))  # executed
ACTIONS = tuple(Action)


@dataclass(frozen=True)
class Change:
    action: Action
    name: str
    target: str
    element: str | None
    reason: str
    diff: tuple[FieldDiff, ...] = ()
    id: Any = None
    desired: DesiredInstance | None = field(default=None, compare=False)
    live: LiveInstance | None = field(default=None, compare=False)
    warning: str | None = None

    @property
    def is_write(self) -> bool:
        return self.action in WRITES

    def to_json(self) -> dict[str, Any]:
        """The change as the JSON output and saved plans show it."""
        shown = {key: getattr(self, key) for key in ("action", "name", "target", "element", "id", "reason")}
        return {**shown, "diff": [d.to_json() for d in self.diff]}


@dataclass(frozen=True)
class PlanOptions:
    prune: bool = False
    allow_replace: bool = False
    force: bool = False
    destroy: bool = False
    adopt: bool = False  # take over unmanaged namesakes of declared instances
    targets: tuple[str, ...] = ()  # --target patterns
    excludes: tuple[str, ...] = ()  # --exclude patterns
    allow_destroy: tuple[str, ...] = ()  # names whose protection is lifted for this run
    reauthenticate: tuple[str, ...] = ()  # names whose credentials are sent again (reAuthenticate=true)

    @property
    def selection(self) -> Selection:
        return Selection.of(self.targets, self.excludes)


@dataclass(frozen=True)
class Plan:
    stack: str
    changes: tuple[Change, ...]
    options: PlanOptions = PlanOptions()
    left_out: int = 0  # declared instances left out by --target/--exclude
    listed: Mapping[str, int] = field(default_factory=dict)  # instances each target's listing returned

    def counts(self) -> dict[Action, int]:
        return dict.fromkeys(ACTIONS, 0) | Counter(c.action for c in self.changes)

    @property
    def has_changes(self) -> bool:
        return any(c.is_write for c in self.changes)

    @property
    def has_refusals(self) -> bool:
        return any(c.action in REFUSALS for c in self.changes)

    @property
    def warnings(self) -> list[str]:
        found = [f"{c.name}: {c.warning}" for c in self.changes if c.warning]
        names = {c.name for c in self.changes} | {c.live.name for c in self.changes if c.live is not None}
        unknown = [name for name in self.options.allow_destroy if name not in names]
        found += [f"--allow-destroy {name}: no instance of this plan has that name" for name in unknown]
        if self.left_out:
            found.append(
                f"--target/--exclude left out {self.left_out} declared instance(s): they are not compared, "
                "and prune and duplicate clean-up do not touch them"
            )
        return found


def make_plan(
    stack: str,
    desired: Iterable[DesiredInstance],
    live_by_target: Mapping[str, list[LiveInstance]],
    registry: ElementRegistry,
    fingerprints: Mapping[str, FingerprintContext],
    options: PlanOptions = PlanOptions(),
) -> Plan:
    """Compare desired with live, target by target, and decide what to do with each instance."""
    desired = list(desired)
    check_reauthenticate(desired, registry, options)
    if options.prune and not desired and not options.force and not options.destroy:
        raise UserError(
            "--prune with a manifest that declares no instance would delete every instance of the stack",
            hint="declare the instances to keep, use destroy, or add --force if this is intended",
        )
    listed = {target: len(live) for target, live in live_by_target.items()}  # before --target narrows them
    left_out = 0
    selection = options.selection
    if selection.active:
        desired, live_by_target, left_out = restrict(selection, desired, live_by_target, element_aliases(registry))
    changes: list[Change] = []
    for target in sorted({d.target for d in desired} | set(live_by_target)):
        planner = _Target(stack, target, registry, fingerprints.get(target), options)
        changes += planner.changes([d for d in desired if d.target == target], live_by_target.get(target, []))
    if options.reauthenticate:
        changes = [_reauthenticated(c) if c.desired and c.name in options.reauthenticate else c for c in changes]
    return Plan(stack, tuple(changes), options, left_out, listed)


def is_protected(live: LiveInstance, desired: DesiredInstance | None, allow_destroy: Iterable[str]) -> bool:
    """The ``provisioner:protect`` marker (or declared protection) counts unless ``--allow-destroy NAME`` lifts it."""
    marked = PROTECT_TAG in live.tags or (desired is not None and desired.protect is True)
    names = {live.name} | ({desired.name} if desired is not None else set())
    return marked and not names & set(allow_destroy)


def refusal(what: str) -> str:
    return (
        f"protected ({PROTECT_TAG}): {what} refused; pass --allow-destroy NAME to allow it for this run, "
        "or set protect: false and apply first"
    )


def check_reauthenticate(desired: list[DesiredInstance], registry: ElementRegistry, options: PlanOptions) -> None:
    """Refuse, before any request, a ``--reauthenticate`` name that is not declared (or left out by
    --target/--exclude), or that is an OAuth instance: a new authorization code needs a browser."""
    problems, hints = [], []
    selection = options.selection
    for name in options.reauthenticate:
        found = [d for d in desired if d.name == name]
        if not found:
            problems.append(f"--reauthenticate {name}: no instance of that name is declared")
            hints.append("declared: " + ", ".join(sorted({d.name for d in desired})[:20]))
        elif selection.active and not any(selection.selects_desired(d) for d in found):
            problems.append(f"--reauthenticate {name}: the instance is left out by --target/--exclude")
            hints.append("select it with --target, or drop --reauthenticate")
        elif oauth := [
            d for d in found if (s := registry.get(d.element)) is not None and s.uses_oauth(d.configuration)
        ]:
            problems.append(
                f"--reauthenticate {name}: element {oauth[0].element!r} authenticates with OAuth, and a new "
                "authorization code needs a browser redirect, which provisioner cannot follow"
            )
            hints.append(
                "re-authorize the instance in the Cloud Elements console (its id and token are kept), then run "
                "provisioner check (docs: Manifest reference, OAuth elements)"
            )
    if problems:
        raise UserError("; ".join(problems), hint="; ".join(dict.fromkeys(hints)))


def _reauthenticated(change: Change) -> Change:
    """A declared instance named by ``--reauthenticate``: its full body is sent again (with any update)."""
    if change.action in (Action.NOOP, Action.UPDATE, Action.RENAME, Action.DISABLE, Action.ENABLE):
        why = "--reauthenticate: the declared credentials are sent again for the provider to check; id and token kept"
        return replace(change, action=Action.REAUTHENTICATE, reason=why + (f"; {change.reason}" if change.diff else ""))
    if change.action == Action.CREATE:
        return replace(change, warning="--reauthenticate: not created yet; the create sends its credentials")
    return replace(change, warning=f"--reauthenticate: not re-authenticated, it is planned as {change.action}")


def element_aliases(registry: ElementRegistry) -> dict[str | None, frozenset[str]]:
    """For each element key the API may report, the declared element keys it stands for."""
    found: dict[str | None, set[str]] = {}
    for key in registry.keys():
        schema = registry.get(key)
        for reported in (key, *(schema.reported_keys if schema is not None else ())):
            found.setdefault(reported, set()).add(key)
    return {k: frozenset(v) for k, v in found.items()}


def copies_by_name(instances: Iterable[LiveInstance]) -> dict[str, list[LiveInstance]]:
    """Instances by name, oldest first (creation date, then id): the first is the copy every run keeps."""
    copies: dict[str, list[LiveInstance]] = {}
    for instance in sorted(instances, key=lambda i: i.age_key):
        copies.setdefault(instance.name, []).append(instance)
    return copies


@dataclass(frozen=True)
class _Target:
    """The planning of one target's instances, with what every decision about them reads."""

    stack: str
    target: str
    registry: ElementRegistry
    fp: FingerprintContext | None
    options: PlanOptions

    def changes(self, desired: list[DesiredInstance], live: list[LiveInstance]) -> list[Change]:
        owned = copies_by_name(i for i in live if i.owned_by(self.stack))
        unmanaged = copies_by_name(i for i in live if is_unmanaged(i.tags))  # another stack's instances are invisible
        changes: list[Change] = []
        declared = set() if self.options.destroy else {d.name for d in desired}
        claimed: set[str] = set()  # old names an instance is renamed from
        for instance in [] if self.options.destroy else desired:
            old = next((n for n in instance.previous_names if n in owned and n not in declared), None)
            if instance.name in owned:
                changes.append(self._compare(instance, owned[instance.name][0]))
                changes.extend(self._duplicates(owned[instance.name]))
            elif old is not None:
                claimed.add(old)
                changes.append(self._rename(instance, owned[old][0]))
                changes.extend(self._duplicates(owned[old]))
            elif instance.name in unmanaged or instance.adopt is not None:
                changes.append(self._unmanaged(instance, unmanaged.get(instance.name, [])))
            else:
                changes.append(self._create(instance))
        for name in sorted(set(owned) - declared - claimed):
            changes.extend(self._undeclared(extra) for extra in owned[name])
        return changes

    def _create(self, instance: DesiredInstance) -> Change:
        diffs = [FieldDiff(DiffOp.ADD, FieldPath("element"), None, instance.element)]
        if instance.tags is not None:
            diffs.append(FieldDiff(DiffOp.ADD, FieldPath("tags"), None, list(instance.tags)))
        if instance.protect:
            diffs.append(FieldDiff(DiffOp.ADD, FieldPath("protect"), None, True))
        if not instance.enabled:
            diffs.append(FieldDiff(DiffOp.ADD, FieldPath("enabled"), None, False))
        for key, value in sorted(instance.configuration.items()):
            secret = isinstance(value, Secret)
            diffs.append(FieldDiff(DiffOp.ADD, FieldPath.config(key), None, SENSITIVE if secret else value, secret))
        return self._change(Action.CREATE, "declared, not found", instance, None, tuple(diffs))

    def _change(
        self,
        action: Action,
        reason: str,
        desired: DesiredInstance | None,
        live: LiveInstance | None,
        diff: tuple[FieldDiff, ...] = (),
        warning: str | None = None,
    ) -> Change:
        """A change named after its declared instance, or (when there is none) after the live one."""
        named = desired if desired is not None else live
        assert named is not None
        live_id = live.id if live else None
        return Change(action, named.name, self.target, named.element, reason, diff, live_id, desired, live, warning)

    def _unmanaged(self, instance: DesiredInstance, namesakes: list[LiveInstance]) -> Change:
        """A declared name held by unmanaged instance(s): a conflict, or with --adopt, one adopt action."""
        ids = ", ".join(str(i.id) for i in namesakes)
        chosen = namesakes[0] if namesakes else None
        if instance.adopt is not None:
            chosen = next((i for i in namesakes if str(i.id) == str(instance.adopt)), None)
            if chosen is None:
                why = (
                    f"adopt: {instance.adopt} names no unmanaged instance called {instance.name!r}"
                    + (f" (unmanaged namesakes: id {ids})" if namesakes else "")
                    + "; fix the id, or remove adopt: to create a new instance"
                )
                return self._change(Action.CONFLICT, why, instance, namesakes[0] if namesakes else None)
        elif len(namesakes) > 1:
            why = (
                f"{len(namesakes)} unmanaged instances are named {instance.name!r} (ids {ids}); "
                "declare which one to take over with adopt: <id> on the instance"
            )
            return self._change(Action.CONFLICT, why, instance, chosen)
        assert chosen is not None
        if not self.options.adopt:
            why = (
                f"an instance named {instance.name!r} (id {chosen.id}) exists without the marker of stack "
                f"{self.stack!r} (unmanaged: it has no provisioner:stack= tag); provisioner never touches instances "
                "it does not own. To take it over, keeping its id and token, run plan/apply with --adopt"
            )
            return self._change(Action.CONFLICT, why, instance, chosen)
        return self._adopt(instance, chosen)

    def _adopt(self, instance: DesiredInstance, live: LiveInstance) -> Change:
        """Take over an unmanaged instance (one PATCH); masked values, secrets among them, are always sent."""
        schema = self.registry.get(instance.element)
        assert schema is not None and self.fp is not None
        if not schema.accepts_key(live.element):
            why = (
                f"unmanaged instance id {live.id} named {instance.name!r} is of element "
                f"{live.element}, not {instance.element}; it cannot be adopted"
            )
            return self._change(Action.CONFLICT, why, instance, live)
        diffs = tuple(d for d in diff_instance(instance, live, schema, self.fp) if not d.sensitive and d.old != MASK)
        secrets = sorted(k for k in schema.secret_keys if instance.configuration.get(k) is not None)
        reason = (
            f"unmanaged instance id {live.id} is taken over: the stack's marker and fingerprints are added, "
            "its id and token are kept"
        )
        if secrets:
            reason += f"; secret values ({', '.join(secrets)}) cannot be read back and are sent as declared"
        return self._change(Action.ADOPT, reason, instance, live, diffs + _enabled_diff(instance, live))

    def _compare(self, instance: DesiredInstance, live: LiveInstance) -> Change:
        schema = self.registry.get(instance.element)
        assert schema is not None and self.fp is not None  # validation guarantees the element; apply gives fp
        if not schema.accepts_key(live.element):
            diff = (FieldDiff(DiffOp.CHANGE, FieldPath("element"), live.element, instance.element),)
            change = f"element changes from {live.element} to {instance.element}"
            if not self.options.allow_replace:
                why = f"{change}, which needs a replace (and a new token); run with --allow-replace to allow it"
                return self._change(Action.CONFLICT, why, instance, live, diff)
            if is_protected(live, instance, self.options.allow_destroy):
                what = f"replacing it (element {live.element} -> {instance.element})"
                return self._change(Action.PROTECTED, refusal(what), instance, live, diff)
            return self._change(Action.REPLACE, f"{change} (the application's token will change)", instance, live, diff)
        diffs = tuple(diff_instance(instance, live, schema, self.fp)) + _enabled_diff(instance, live)
        if not diffs:
            return self._change(Action.NOOP, "up to date", instance, live)
        if all(d.path.section == "enabled" for d in diffs):
            action, why = (Action.ENABLE, "disabled on the server") if instance.enabled else (Action.DISABLE, "enabled")
            why += f", declared enabled: {str(instance.enabled).lower()}"
            return self._change(action, why, instance, live, diffs)
        return self._change(Action.UPDATE, "; ".join(_differs(diffs, instance.enabled)), instance, live, diffs)

    def _rename(self, instance: DesiredInstance, live: LiveInstance) -> Change:
        """The instance under its old name is renamed in place: compared as if it kept the old name (so
        its fingerprints still match), then the new name is one more field to change."""
        compared = self._compare(replace(instance, name=live.name), live)
        moved = replace(compared, name=instance.name, desired=instance)
        if compared.action not in (Action.NOOP, Action.UPDATE, Action.DISABLE, Action.ENABLE):
            return replace(moved, reason=f"{compared.reason} (declared as {instance.name!r}, was {live.name!r})")
        diff = (FieldDiff(DiffOp.CHANGE, FieldPath("name"), live.name, instance.name), *compared.diff)
        why = [f"renamed from {live.name!r} (id and token kept)", *_differs(compared.diff, instance.enabled)]
        return replace(moved, action=Action.RENAME, diff=diff, reason="; ".join(why))

    def _duplicates(self, matches: list[LiveInstance]) -> list[Change]:
        """Delete all copies of a declared instance but the oldest (its token is delivered): runs converge to one."""
        keep = matches[0].id
        why, what = f"duplicate of id {keep} (the oldest is kept)", f"deleting duplicate of id {keep}"
        return [self._delete(copy, why, what, f"duplicate instance id {copy.id} of id {keep}") for copy in matches[1:]]

    def _undeclared(self, live: LiveInstance) -> Change:
        if self.options.destroy:
            return self._delete(live, "destroy deletes every instance the stack owns", "deleting it by destroy")
        if self.options.prune:
            why = "owned by the stack, no longer declared"
            return self._delete(live, why, "deleting it by --prune (no longer declared)")
        why = "owned by the stack but no longer declared; --prune deletes it"
        return self._change(Action.NOOP, why, None, live, warning="owned but not declared (use --prune to delete it)")

    def _delete(self, live: LiveInstance, why: str, what: str, warning: str | None = None) -> Change:
        """Delete an instance no declared one stands for (``why``), or refuse ``what`` when it is protected."""
        if is_protected(live, None, self.options.allow_destroy):
            return self._change(Action.PROTECTED, refusal(what), None, live, warning=warning)
        return self._change(Action.DELETE, why, None, live, warning=warning)


def _differs(diffs: tuple[FieldDiff, ...], enabled: bool) -> list[str]:
    """What an update changes, for its reason: the configuration or else the tags, then the enabled state."""
    sections = {d.path.section for d in diffs}
    what = ["configuration differs" if "configuration" in sections else "tags differ"] if sections - {"enabled"} else []
    return what + ([f"then {'enable' if enabled else 'disable'}"] if "enabled" in sections else [])


def _enabled_diff(instance: DesiredInstance, live: LiveInstance) -> tuple[FieldDiff, ...]:
    if live.disabled != instance.enabled:
        return ()
    return (FieldDiff(DiffOp.CHANGE, FieldPath("enabled"), not live.disabled, instance.enabled),)
