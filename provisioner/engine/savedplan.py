"""Reviewed plans: ``plan --out FILE`` saves a plan, ``apply FILE`` executes exactly that plan.

A saved plan is a JSON document (``"kind": "provisioner-plan"``, ``formatVersion`` 1) written
atomically with mode 0600. It holds no secret value and no token: besides every change with its diff
(secrets shown as ``(sensitive)``), it holds keyed digests only (keyed BLAKE2b, with the key the
fingerprint tags use, so nothing in it can be checked against a guessed value without that key):

* ``manifest.digest`` and ``inputs.digest``: the manifest file and the layered inputs;
* ``desired``: per declared instance, one digest per field as rendered (secrets through their
  fingerprints), so a change of rendering is named field by field;
* per change that writes, ``live.fields``: one digest per live field the decision was based on (name,
  element, every tag, the enabled state, the compared configuration keys), for optimistic concurrency.

``apply FILE`` renders the manifest again (the secrets come from the environment as at plan time),
refuses before any request if any instance renders differently, then reads the live state, plans
again with the options recorded in the file, and refuses unless the new plan is the saved one: same
changes, same diffs, the same live fields for every instance it writes, no instance to create that now
exists. Only then is the new plan (equal to the reviewed one) executed.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..errors import UserError
from ..ownership import fingerprint
from ..privatefile import write_private
from ..secret import REDACTOR, masked
from .applied import desired_fields, field_digests, live_value
from .diff import FieldPath
from .plan import Action, Change, Plan, PlanOptions
from .stages import Connection, Validated

KIND = "provisioner-plan"
FORMAT_VERSION = 1
MAX_LISTED = 20


@dataclass(frozen=True)
class Sources:
    """Where the plan's inputs came from (paths and --set keys; never a value)."""

    manifest: str
    inputs: tuple[str, ...]
    set_keys: tuple[str, ...]
    schemas: tuple[str, ...]
    local: bool


@dataclass(frozen=True)
class SavedPlan:
    path: str
    data: dict

    @property
    def sources(self) -> Sources:
        inputs = self.data["inputs"]
        return Sources(
            self.data["manifest"]["path"],
            tuple(inputs["files"]),
            tuple(inputs["set"]),
            tuple(self.data["schemas"]),
            bool(self.data.get("local")),
        )

    @property
    def options(self) -> PlanOptions:
        o = self.data["options"]
        return PlanOptions(
            prune=o["prune"],
            allow_replace=o["allowReplace"],
            force=o["force"],
            targets=tuple(o["target"]),
            excludes=tuple(o["exclude"]),
            allow_destroy=tuple(o["allowDestroy"]),
            reauthenticate=tuple(o.get("reauthenticate", ())),
        )


# -- reading -------------------------------------------------------------------------------------


def load_if_plan(path: str, max_bytes: int) -> SavedPlan | None:
    """The saved plan at ``path``, or None when it is something else (a manifest)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(max_bytes + 1)
    except OSError:
        return None  # the manifest loader reports a missing file
    if not head.lstrip().startswith(b"{"):
        return None
    try:
        data = json.loads(head)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        return None
    if data.get("formatVersion") != FORMAT_VERSION or data.get("provisionerVersion") != __version__:
        raise UserError(
            f"{path}: saved plan format {data.get('formatVersion')!r} made by provisioner "
            f"{data.get('provisionerVersion')!r} cannot be applied by provisioner {__version__}",
            hint="make the plan with the provisioner version that applies it",
        )
    return SavedPlan(path, data)


# -- writing -------------------------------------------------------------------------------------


def document(plan: Plan, validated: Validated, connection: Connection, sources: Sources) -> dict:
    """The saved-plan document for ``plan``."""
    key = _plan_key(connection)
    return {
        "kind": KIND,
        "formatVersion": FORMAT_VERSION,
        "provisionerVersion": __version__,
        "createdAt": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "stack": plan.stack,
        "manifest": {"path": sources.manifest, "digest": _file_digest(key, sources.manifest)},
        "inputs": {
            "files": list(sources.inputs),
            "set": list(sources.set_keys),
            "digest": _digest(key, "inputs", validated.manifest.inputs),
        },
        "schemas": list(sources.schemas),
        "local": sources.local,
        "targets": _targets(connection, sources.local),
        "options": {
            "prune": plan.options.prune,
            "allowReplace": plan.options.allow_replace,
            "force": plan.options.force,
            "target": list(plan.options.targets),
            "exclude": list(plan.options.excludes),
            "allowDestroy": list(plan.options.allow_destroy),
            "reauthenticate": list(plan.options.reauthenticate),
        },
        "desired": desired_digests(validated, connection, plan.options),
        "changes": [_change(c, validated, connection) for c in plan.changes],
        "summary": plan.counts(),
        "leftOut": plan.left_out,
    }


def write(path: str, doc: dict) -> None:
    """Atomically, mode 0600; every known secret is masked once more on the way out."""
    text = REDACTOR.redact(json.dumps(masked(doc), indent=2, sort_keys=True, default=str)) + "\n"
    write_private(path, text, "saved plan")


def _change(change: Change, validated: Validated, connection: Connection) -> dict:
    data = change.to_json()
    data["warning"] = change.warning
    data["live"] = None
    if change.live is not None and (change.is_write or change.action == Action.PROTECTED):
        data["live"] = {"id": change.live.id, "fields": _live_digests(change, validated, connection)}
    return data


def _live_digests(change: Change, validated: Validated, connection: Connection) -> dict[str, str]:
    """Digests of the live fields the decision was based on."""
    live = change.live
    assert live is not None
    fields: dict[str, Any] = {"name": live.name, "element": live.element, "tags": sorted(live.tags)}
    fields["enabled"] = not live.disabled
    schema = validated.registry.get(change.desired.element) if change.desired is not None else None
    if change.desired is not None and schema is not None:
        for path in desired_fields(change.desired, schema):
            if path.section == "configuration":
                fields[str(path)] = live_value(live, path, schema)
    return field_digests(connection.fingerprints[change.target].key, fields)


def desired_digests(validated: Validated, connection: Connection, options: PlanOptions) -> dict[str, dict[str, str]]:
    """Per selected declared instance, one digest per rendered field (secrets through fingerprints)."""
    selection = options.selection
    found = {}
    for desired in validated.desired:
        if selection.active and not selection.selects_desired(desired):
            continue
        schema = validated.registry.get(desired.element)
        assert schema is not None  # validation guarantees the element
        fp = connection.fingerprints[desired.target]
        fields = {str(p): v for p, v in desired_fields(desired, schema).items()}
        fields["previousNames"] = list(desired.previous_names)
        fields["enabled"] = desired.enabled
        for key in sorted(schema.secret_keys & set(desired.configuration)):
            fields[str(FieldPath.config(key))] = fingerprint(
                fp.key, fp.stack, desired.name, key, desired.configuration[key]
            )
        found[f"{desired.target}/{desired.name}"] = field_digests(fp.key, fields)
    return found


def _plan_key(connection: Connection) -> bytes:
    material = b"".join(name.encode() + b"\0" + fp.key for name, fp in sorted(connection.fingerprints.items()))
    return hmac.new(material, b"provisioner saved plan v1", hashlib.sha256).digest()


def _digest(key: bytes, path: str, value: Any) -> str:
    return field_digests(key, {path: value})[path]


def _file_digest(key: bytes, path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return _digest(key, "manifest", handle.read().decode("utf-8", "replace"))
    except OSError:
        return None


def _targets(connection: Connection, local: bool) -> dict[str, str]:
    return {name: "local" if local else t.url for name, t in sorted(connection.targets.items())}


# -- applying ------------------------------------------------------------------------------------


def check_before_reading(saved: SavedPlan, validated: Validated, connection: Connection, local: bool) -> None:
    """Refuse, before any request, when the setup or the rendering differs from the plan's."""
    problems = []
    if validated.manifest.stack != saved.data["stack"]:
        problems.append(f"the stack is {validated.manifest.stack!r}, the plan was made for {saved.data['stack']!r}")
    now = _targets(connection, local)
    for name, url in sorted(saved.data["targets"].items()):
        if now.get(name) != url:
            problems.append(f"target {name!r} is {now.get(name) or 'not used'}, the plan was made against {url}")
    problems.extend(_desired_problems(saved, validated, connection))
    _refuse(saved, problems)


def check_plan(saved: SavedPlan, fresh: Plan, validated: Validated, connection: Connection) -> None:
    """Refuse unless the plan made now is the saved one, over the same live fields."""
    _refuse(saved, _change_problems(saved.data["changes"], fresh, validated, connection))


def _refuse(saved: SavedPlan, problems: list[str]) -> None:
    if not problems:
        return
    shown = problems[:MAX_LISTED] + (
        [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
    )
    raise UserError(
        f"the saved plan {saved.path} no longer matches, nothing was changed:\n  - " + "\n  - ".join(shown),
        hint="run plan --out again and review the new plan",
    )


def _desired_problems(saved: SavedPlan, validated: Validated, connection: Connection) -> list[str]:
    then = saved.data["desired"]
    now = desired_digests(validated, connection, saved.options)
    problems = []
    for key in sorted(set(then) | set(now)):
        name = key.split("/", 1)[1]
        if key not in now:
            problems.append(f"{name}: no longer declared (the manifest or its inputs changed)")
        elif key not in then:
            problems.append(f"{name}: newly declared (the manifest or its inputs changed)")
        elif then[key] != now[key]:
            paths = sorted(p for p in set(then[key]) | set(now[key]) if then[key].get(p) != now[key].get(p))
            problems.append(f"{name}: renders differently now: {', '.join(paths)}")
    if problems:
        key = _plan_key(connection)
        if saved.data["manifest"]["digest"] != _file_digest(key, validated.manifest.path):
            problems.append(f"the manifest file {validated.manifest.display} changed since the plan")
        if saved.data["inputs"]["digest"] != _digest(key, "inputs", validated.manifest.inputs):
            problems.append("the inputs (--inputs files, --set values, inputs:) changed since the plan")
    return problems


def _key(change: Mapping[str, Any]) -> tuple:
    return (change["target"], change["name"], change["id"])


def _change_problems(saved_changes: list[dict], fresh: Plan, validated: Validated, connection: Connection) -> list[str]:
    now = {_key(d): d for d in (_change(c, validated, connection) for c in fresh.changes)}
    then = {_key(d): d for d in saved_changes}
    by_name = {(c.target, c.name): c for c in fresh.changes if c.id is not None}
    problems = []
    for key, old in then.items():
        if key not in now:
            problems.append(_vanished(old, by_name.get((old["target"], old["name"]))))
            continue
        problems.extend(_compared(old, now[key]))
    for key, new in now.items():
        if key not in then and (new["target"], new["name"], None) not in then:
            problems.append(f"{new['name']}: now {new['action']} ({new['reason']}), which the saved plan does not have")
    return problems


def _vanished(old: dict, now: Change | None) -> str:
    name = old["name"]
    if old["action"] == Action.CREATE and now is not None:
        return f"{name}: the plan creates it, but an instance named {name!r} now exists (id {now.id})"
    return f"{name} (id {old['id']}): planned {old['action']}, but it no longer exists on the server as planned"


def _compared(old: dict, new: dict) -> list[str]:
    name = f"{old['name']}" + (f" (id {old['id']})" if old["id"] is not None else "")
    if old["live"] is not None and new["live"] is not None and old["live"]["fields"] != new["live"]["fields"]:
        a, b = old["live"]["fields"], new["live"]["fields"]
        paths = sorted(p for p in set(a) | set(b) if a.get(p) != b.get(p))
        return [f"{name}: changed on the server since the plan: {', '.join(paths)}"]
    if old["action"] != new["action"]:
        return [f"{name}: planned {old['action']}, now {new['action']} ({new['reason']})"]
    if old["diff"] != new["diff"]:  # a "method" that older files carry is not compared: apply chooses it
        return [f"{name}: the {old['action']} now has a different diff"]
    return []
