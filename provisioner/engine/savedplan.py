"""Reviewed plans (docs/saved-plans.md): ``plan --out FILE`` saves a plan, ``apply FILE`` executes
exactly that plan or nothing. The document holds no secret and no token, only keyed digests; a touched
instance that renders differently, or whose live fields or planned write changed, refuses the plan.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import itertools
import json
import os
from dataclasses import dataclass, replace
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .. import __version__
from ..errors import Location, UserError
from ..manifest.elements import builtin_schemas
from ..manifest.schemacheck import shown
from ..manifest.yamlload import read_capped
from ..ownership import fingerprint
from ..privatefile import write_private
from ..secret import REDACTOR, masked
from .applied import desired_fields, field_digests, live_value
from .diff import DiffOp, FieldDiff, FieldPath
from .plan import REFUSALS, WRITES, Action, Change, Plan, PlanOptions
from .stages import Connection, Validated

KIND = "provisioner-plan"
FORMAT_VERSION = 1
MAX_LISTED = 20
# The options a saved plan fixes: PlanOptions field -> JSON key and option (reauthenticate: absent in older files)
OPTIONS = {
    "prune": ("prune", "--prune"),
    "allow_replace": ("allowReplace", "--allow-replace"),
    "force": ("force", "--force"),
    "targets": ("target", "--target"),
    "excludes": ("exclude", "--exclude"),
    "allow_destroy": ("allowDestroy", "--allow-destroy"),
    "reauthenticate": ("reauthenticate", "--reauthenticate"),
}


@dataclass(frozen=True)
class Sources:
    """Where the plan's inputs came from: paths and --set keys, never a value."""

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
        """The recorded paths, read relative to the plan file's directory."""
        inputs, here = self.data["inputs"], os.path.dirname(self.path)
        return Sources(
            os.path.normpath(os.path.join(here, self.data["manifest"]["path"])),
            tuple(os.path.normpath(os.path.join(here, p)) for p in inputs["files"]),
            tuple(inputs["set"]),
            tuple(os.path.normpath(os.path.join(here, p)) for p in self.data["schemas"]),
            self.data["local"],
        )

    def as_plan(self) -> Plan:
        """The saved plan as the value ``plan`` showed (for ``show``)."""
        changes = tuple(
            Change(
                **{k: c[k] for k in ("name", "target", "element", "reason", "id", "warning")},
                action=Action(c["action"]),
                diff=tuple(_field_diff(d) for d in c["diff"]),
            )
            for c in self.data["changes"]
        )
        return Plan(self.data["stack"], changes, self.options, self.data["leftOut"])

    @property
    def options(self) -> PlanOptions:
        saved = self.data["options"]
        return PlanOptions(**{field: _listed(saved[key]) for field, (key, _) in OPTIONS.items() if key in saved})


def load_if_plan(path: str, max_bytes: int, required: bool = False) -> SavedPlan | None:
    """The saved plan at ``path``, or None when it is something else (a manifest). Untrusted input: it
    is checked against schemas/saved-plan.schema.json before any use; its defects are one UserError.
    A file that cannot be read (missing, not regular, too large) is None, or with ``required`` a UserError."""
    try:
        head = read_capped(path, max_bytes)  # never waits on a FIFO, never reads a device
    except UserError as exc:
        if required:
            raise UserError(exc.problem.message, Location(path), exc.problem.hint) from None
        return None  # the manifest loader reports it
    if not head.lstrip().startswith(b"{"):
        return None  # not JSON: a manifest
    try:
        data = json.loads(head)
    except RecursionError:
        raise _malformed(path, ["it is nested too deeply to be read"]) from None
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        return None
    if data.get("formatVersion") != FORMAT_VERSION or data.get("provisionerVersion") != __version__:
        raise UserError(
            f"{path}: saved plan format {shown(data.get('formatVersion'), limit=40)} made by provisioner "
            f"{shown(data.get('provisionerVersion'), limit=40)} cannot be applied by provisioner {__version__}",
            hint="make the plan with the provisioner version that applies it",
        )
    schema = json.loads(builtin_schemas().joinpath("saved-plan.schema.json").read_text(encoding="utf-8"))
    try:
        problems = [_described(e) for e in itertools.islice(Draft202012Validator(schema).iter_errors(data), MAX_LISTED)]
    except RecursionError:
        problems = ["it is nested too deeply to be read"]
    if problems:
        raise _malformed(path, problems)
    return SavedPlan(path, data)


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def _described(error: ValidationError) -> str:
    """One schema error in a line: where, and what is wrong (never the whole offending value)."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    if error.validator == "type":
        got = _JSON_TYPES.get(type(error.instance), "a number")
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        what = f"must be {' or '.join(map(str, wanted))}, not {got}"
    elif error.validator in ("required", "additionalProperties", "const", "enum", "propertyNames"):
        what = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    else:
        what = f"fails {error.validator} {shown(error.validator_value, limit=40)}"
    return f"{where or 'the document'}: {what}"


def _listed(value: Any) -> Any:
    """A list of the JSON document as the tuple of PlanOptions, and back; any other value as it is."""
    return tuple(value) if isinstance(value, list) else list(value) if isinstance(value, tuple) else value


def _malformed(path: str, problems: list[str]) -> UserError:
    return UserError(
        f"{path} is not a valid saved plan:\n  - " + "\n  - ".join(problems),
        hint="a saved plan is read as plan --out wrote it; make it again with plan --out FILE",
    )


def _field_diff(data: dict) -> FieldDiff:
    section, _, key = data["path"].partition(".")
    return FieldDiff(DiffOp(data["op"]), FieldPath(section, key or None), data["old"], data["new"], data["sensitive"])


def document(plan: Plan, validated: Validated, connection: Connection, sources: Sources, out: str) -> dict:
    key = _plan_key(connection)
    here = os.path.dirname(os.path.abspath(out))

    def relative(path: str) -> str:
        return os.path.relpath(os.path.abspath(path), here).replace(os.sep, "/")

    return {
        "kind": KIND,
        "formatVersion": FORMAT_VERSION,
        "provisionerVersion": __version__,
        "createdAt": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "stack": plan.stack,
        "manifest": {"path": relative(sources.manifest), "digest": _file_digest(key, sources.manifest)},
        "inputs": {
            "files": [relative(p) for p in sources.inputs],
            "set": list(sources.set_keys),
            "digest": _digest(key, "inputs", validated.manifest.inputs),
        },
        "schemas": [relative(p) for p in sources.schemas],
        "local": sources.local,
        "targets": _targets(connection, sources.local),
        "options": {key: _listed(getattr(plan.options, field)) for field, (key, _) in OPTIONS.items()},
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
    """The change as JSON, with, when it writes (or refuses to), a digest of each live field it was decided on."""
    live = change.live
    if live is None or not (change.is_write or change.action == Action.PROTECTED):
        return {**change.to_json(), "warning": change.warning, "live": None}
    fields: dict[str, Any] = {"name": live.name, "element": live.element, "tags": sorted(live.tags)}
    fields["enabled"] = not live.disabled
    if change.desired is not None and (schema := validated.registry.get(change.desired.element)) is not None:
        for path in desired_fields(change.desired, schema):
            if path.section == "configuration":
                fields[str(path)] = live_value(live, path, schema)
    digests = field_digests(connection.fingerprints[change.target].key, fields)
    return {**change.to_json(), "warning": change.warning, "live": {"id": live.id, "fields": digests}}


def desired_digests(validated: Validated, connection: Connection, options: PlanOptions) -> dict[str, dict[str, str]]:
    """Per selected declared instance, one digest per rendered field (secrets through fingerprints)."""
    found = {}
    for desired in filter(options.selection.selects_desired, validated.desired):
        schema = validated.registry.get(desired.element)
        assert schema is not None  # validation guarantees the element
        fp = connection.fingerprints[desired.target]
        fields = {str(p): v for p, v in desired_fields(desired, schema).items()}
        fields |= {"previousNames": list(desired.previous_names), "enabled": desired.enabled}
        for key in sorted(schema.secret_keys & set(desired.configuration)):
            value = desired.configuration[key]
            fields[str(FieldPath.config(key))] = fingerprint(fp.key, fp.stack, desired.name, key, value)
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


def check_before_reading(saved: SavedPlan, validated: Validated, connection: Connection, local: bool) -> None:
    """Refuse, before any request, a setup or a rendering of an instance the plan writes unlike the plan's."""
    problems = []
    if validated.manifest.stack != saved.data["stack"]:
        problems.append(f"the stack is {validated.manifest.stack!r}, the plan was made for {saved.data['stack']!r}")
    urls = _targets(connection, local)
    for name, url in sorted(saved.data["targets"].items()):
        if urls.get(name) != url:
            problems.append(f"target {name!r} is {urls.get(name) or 'not used'}, the plan was made against {url}")
    touched = {f"{c['target']}/{c['name']}" for c in saved.data["changes"] if c["action"] in WRITES}
    then = {k: v for k, v in saved.data["desired"].items() if k in touched}
    now = {k: v for k, v in desired_digests(validated, connection, saved.options).items() if k in touched}
    rendering = []
    for key in sorted(set(then) | set(now)):
        name = key.split("/", 1)[1]
        if key not in now:
            rendering.append(f"{name}: no longer declared (the manifest or its inputs changed)")
        elif key not in then:
            rendering.append(f"{name}: newly declared (the manifest or its inputs changed)")
        elif then[key] != now[key]:
            rendering.append(f"{name}: renders differently now: {_differing(then[key], now[key])}")
    if rendering:
        key = _plan_key(connection)
        if saved.data["manifest"]["digest"] != _file_digest(key, validated.manifest.path):
            rendering.append(f"the manifest file {validated.manifest.display} changed since the plan")
        if saved.data["inputs"]["digest"] != _digest(key, "inputs", validated.manifest.inputs):
            rendering.append("the inputs (--inputs files, --set values, inputs:) changed since the plan")
    _refuse(saved, problems + rendering)


def check_plan(saved: SavedPlan, fresh: Plan, validated: Validated, connection: Connection) -> Plan:
    """The plan to execute: the saved writes, unchanged over the same live fields, or a refusal. A change
    the saved plan does not have (drift elsewhere) becomes a noop with a warning, never executed."""
    planned = {(c["target"], c["name"], c["id"]): c for c in saved.data["changes"] if c["action"] in WRITES}
    problems, changes = [], []
    for change in fresh.changes:
        if (key := (change.target, change.name, change.id)) in planned:
            problems.extend(_compared(planned.pop(key), _change(change, validated, connection)))
        elif (change.is_write or change.action in REFUSALS) and (change.target, change.name, None) not in planned:
            note = f"now {change.action} ({change.reason}), which the saved plan does not have: left as is"
            change = replace(
                change, action=Action.NOOP, diff=(), reason="not in the saved plan", warning=f"{note}; run plan again"
            )
        changes.append(change)
    by_name = {(c.target, c.name): c for c in fresh.changes if c.id is not None}
    problems.extend(_vanished(old, by_name.get((old["target"], old["name"]))) for old in planned.values())
    _refuse(saved, problems)
    return replace(fresh, changes=tuple(changes))


def _refuse(saved: SavedPlan, problems: list[str]) -> None:
    if not problems:
        return
    more = [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
    listed = problems[:MAX_LISTED] + more
    raise UserError(
        f"the saved plan {saved.path} no longer matches, nothing was changed:\n  - " + "\n  - ".join(listed),
        hint="run plan --out again and review the new plan",
    )


def _vanished(old: dict, now: Change | None) -> str:
    name = old["name"]
    if old["action"] == Action.CREATE and now is not None:
        return f"{name}: the plan creates it, but an instance named {name!r} now exists (id {now.id})"
    return f"{name} (id {old['id']}): planned {old['action']}, but it no longer exists on the server as planned"


def _compared(old: dict, new: dict) -> list[str]:
    name = f"{old['name']}" + (f" (id {old['id']})" if old["id"] is not None else "")
    then, now = old["live"], new["live"]
    if then is not None and now is not None and then["fields"] != now["fields"]:
        return [f"{name}: changed on the server since the plan: {_differing(then['fields'], now['fields'])}"]
    if old["action"] != new["action"]:
        return [f"{name}: planned {old['action']}, now {new['action']} ({new['reason']})"]
    if old["diff"] != new["diff"]:  # a "method" that older files carry is not compared: apply chooses it
        return [f"{name}: the {old['action']} now has a different diff"]
    return []


def _differing(then: dict[str, str], now: dict[str, str]) -> str:
    """The fields whose digests differ, in order."""
    return ", ".join(sorted(p for p in set(then) | set(now) if then.get(p) != now.get(p)))
