"""``provisioner check`` (docs/health.md): each declared instance's status from one listing of the stack's
instances, and what to run when it is not fine; ``--ping`` pings them in apply's workers. It only reads.
"""

from __future__ import annotations

import glob
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args

from ..api.live import LiveInstance
from ..errors import ApiError, TransportError
from ..interrupt import StopFlag
from ..manifest.desired import DesiredInstance
from .apply import Unfinished, in_workers
from .plan import copies_by_name
from .stages import Connection, Validated, read_state

Status = Literal["healthy", "invalid", "disabled", "missing", "unreachable"]
STATUSES: tuple[Status, ...] = get_args(Status)  # in this order in the JSON summary
HELD = "no complete answer within the request deadline (the API held the request)"


@dataclass(frozen=True)
class Health:
    name: str
    target: str
    element: str | None
    id: Any
    status: Status
    ok: bool  # healthy, or disabled as declared
    detail: str
    command: str | None = None  # what to run about it
    live: LiveInstance | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:  # every field but the live instance, in their order
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "live"}


@dataclass(frozen=True)
class HealthReport:
    stack: str
    instances: tuple[Health, ...]  # the declared ones
    undeclared: tuple[Health, ...]  # owned by the stack, no longer declared: listed apart
    pinged: bool = False

    @property
    def healthy(self) -> bool:
        return all(h.ok for h in self.instances)

    def summary(self) -> dict[str, Any]:
        by_status = dict.fromkeys(STATUSES, 0) | Counter(h.status for h in self.instances)
        ok = sum(1 for h in self.instances if h.ok)
        return {"declared": len(self.instances), "ok": ok, "notOk": len(self.instances) - ok, "byStatus": by_status}

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "healthy": self.healthy,
            "pinged": self.pinged,
            "instances": [h.to_json() for h in self.instances],
            "undeclared": [h.to_json() for h in self.undeclared],
            "summary": self.summary(),
        }


def check(
    validated: Validated, connection: Connection, ping: bool, parallelism: int, apply_command: Sequence[str]
) -> HealthReport:
    """Assess each declared instance from one listing (one owned only under a previous name is that
    instance; of several copies, the oldest is), and ping them if asked."""
    stack = validated.manifest.stack
    owned = {
        (target, name): copies
        for target, instances in read_state(connection, stack, owned_only=True, configuration=False).items()
        for name, copies in copies_by_name(instances).items()
    }
    entries, claimed = [], set()
    for d in validated.desired:
        key = next((k for k in ((d.target, n) for n in (d.name, *d.previous_names)) if k in owned), None)
        claimed.add(key)
        oauth = (schema := validated.registry.get(d.element)) is not None and schema.uses_oauth(d.configuration)
        entries.append(_assess(d.target, owned[key][0] if key else None, d, oauth, apply_command))
    undeclared = [
        _assess(target, copies[0], None, False, apply_command)
        for (target, name), copies in sorted(owned.items())
        if (target, name) not in claimed
    ]
    report = HealthReport(stack, tuple(entries), tuple(undeclared))
    return ping_all(report, connection.clients, parallelism, connection.stop) if ping else report


def _assess(
    target: str, live: LiveInstance | None, desired: DesiredInstance | None, oauth: bool, apply_command: Sequence[str]
) -> Health:
    def run(*extra: str) -> str:
        return shlex.join([*apply_command, *extra])

    if live is None:
        assert desired is not None
        detail = "declared, not found among the stack's instances; apply creates it"
        command = run("--target", glob.escape(desired.name))
        return Health(desired.name, target, desired.element, None, "missing", False, detail, command)
    name, element = (desired.name, desired.element) if desired else (live.name, live.element)
    common: dict[str, Any] = {"name": name, "target": target, "element": element, "id": live.id, "live": live}
    meant_off = desired is not None and not desired.enabled
    invalid = "" if live.valid else "; its credentials are refused too (valid: false)"
    if live.disabled and meant_off:
        return Health(status="disabled", ok=True, detail="disabled, as declared (enabled: false)" + invalid, **common)
    if live.disabled:
        detail = "disabled on the server (its hub calls answer 403); apply enables it again" + invalid
        fix = run("--target", glob.escape(name)) if desired is not None else None
        return Health(status="disabled", ok=False, detail=detail, command=fix, **common)
    if not live.valid:
        detail = "the provider refused its credentials (valid: false)"
        if oauth:
            detail += "; an OAuth instance: re-authorize it in the Cloud Elements console (id and token are kept)"
        fix = run("--reauthenticate", name) if desired is not None and not oauth else None
        if fix:
            detail += "; fix the credentials if they changed, then re-send them"
        return Health(status="invalid", ok=False, detail=detail, command=fix, **common)
    extra = " (declared enabled: false; apply disables it)" if meant_off else ""
    return Health(status="healthy", ok=True, detail="valid and enabled" + extra, **common)


def ping_all(report: HealthReport, clients: Mapping[str, Any], parallelism: int, stop: StopFlag) -> HealthReport:
    """Ping each existing instance not disabled as declared, in ``parallelism`` workers; after a signal, Interrupted."""
    hubs: dict[tuple[str, str | None], str | None] = {}  # an API whose listing leaves the hub out: one read per element
    todo: dict[int, str | None] = {}  # the index of each entry to ping: its hub
    for i, h in enumerate(report.instances):
        if h.live is not None and not (h.live.disabled and h.ok):
            if h.live.hub is None and h.live.element and (h.target, h.element) not in hubs:
                hubs[(h.target, h.element)] = (clients[h.target].get_element(h.live.element) or {}).get("hub")
            todo[i] = h.live.hub or hubs.get((h.target, h.element))

    def ping(index: int) -> str | None:  # why the ping failed, or None
        live, client, hub = report.instances[index].live, clients[report.instances[index].target], todo[index]
        assert live is not None
        try:
            token = live.token or LiveInstance.from_api(client.get_instance(live.id)).token
            if not (hub and token):
                return "the API gave no hub or no token for it"
            client.ping(hub, token)
        except ApiError as exc:
            return f"HTTP {exc.status}: {exc.message}"
        except TransportError as exc:
            return exc.message
        return None

    done: dict[int, Health] = {}
    for i, failed in in_workers(ping, list(todo), parallelism, stop):
        if not isinstance(failed, Unfinished) or failed.held:  # held: the main thread stopped waiting for it
            done[i] = _pinged(report.instances[i], todo[i], HELD if isinstance(failed, Unfinished) else failed)
    stop.check()  # the run was interrupted: no report
    instances = tuple(done.get(i, h) for i, h in enumerate(report.instances))
    return replace(report, instances=instances, pinged=True)


def _pinged(entry: Health, hub: str | None, failed: str | None) -> Health:
    if failed is None:
        return replace(entry, detail=f"{entry.detail}; ping {hub}: ok")
    failed = f"ping {hub or '?'} failed: {failed}"
    if entry.status == "healthy":
        return replace(entry, status="unreachable", ok=False, detail=failed)
    return replace(entry, detail=f"{entry.detail}; {failed}")


def text_lines(report: HealthReport) -> list[tuple[str, str]]:
    """(style, line) pairs for the text reporter: every declared instance, then the undeclared ones."""
    lines: list[tuple[str, str]] = []
    for title, entries in (("", report.instances), ("owned by the stack, no longer declared:", report.undeclared)):
        if title and entries:
            lines.append(("", title))
        for h in entries:
            style = "green" if h.ok and h.status == "healthy" else "" if h.ok else "red"
            ident = f" id {h.id}" if h.id is not None else ""
            lines.append((style, f"{h.status}: {h.name} ({h.element}){ident}: {h.detail}"))
            if h.command:
                lines.append(("", f"    run: {h.command}"))
    return lines


def summary_line(report: HealthReport) -> str:
    s = report.summary()
    counts = ", ".join(f"{n} {status}" for status, n in s["byStatus"].items() if n)
    ping = " (pinged)" if report.pinged else ""
    verdict = "All healthy" if report.healthy else "Not healthy"
    need = "" if report.healthy else f"{s['notOk']} of {s['declared']} need attention; "
    extra = f"; {len(report.undeclared)} owned but no longer declared" if report.undeclared else ""
    return f"{verdict}{ping}: {need}{counts or 'no instance declared'}{extra}."
