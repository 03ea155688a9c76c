"""The orchestrator: load manifest -> render -> validate -> read live state -> plan -> apply -> report.
Every command validates first (``validate`` stops there, offline): bad input exits 1 before any request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from ..api.client import Client, ClientSettings, ReadOnlyClient
from ..api.live import LiveInstance, read_live
from ..api.ratelimit import RateBudget
from ..api.stats import RequestStats
from ..errors import CredentialsRefused, Problem, Unauthorized, UserError, ValidationFailed
from ..interrupt import StopFlag
from ..manifest.desired import DesiredInstance, build_desired
from ..manifest.elements import ElementRegistry
from ..manifest.load import DEFAULT_TARGET, Limits, Manifest, load_manifest
from ..manifest.render import Renderer
from ..manifest.targets import Target, local_target, resolve_targets, url_problems
from ..ownership import FINGERPRINT_KEY_ENV, fingerprint_key, is_unmanaged
from .apply import Applier, ApplyResult, ApplySettings, ChangeResult, Status
from .diff import FingerprintContext
from .drift import DriftReport, detect
from .plan import Action, Plan, PlanOptions, make_plan

_ENTRY = re.compile(r"^instances\[(\d+)\](?:\.([^.\[]+))?")  # the entry, and its field


@dataclass(frozen=True)
class Options:
    manifest: str
    inputs: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()
    schemas: tuple[str, ...] = ()
    limits: Limits = Limits()
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    local: Any = None  # a local.LocalApi when --local
    client: ClientSettings = ClientSettings()
    apply: ApplySettings = ApplySettings()
    plan: PlanOptions = PlanOptions()
    trace: Callable[[str], None] | None = None
    notice: Callable[[str], None] | None = None  # a line on stderr while requests are being retried


@dataclass
class Validated:
    manifest: Manifest  # without its instance entries: ``desired`` holds what they declare
    registry: ElementRegistry
    renderer: Renderer
    desired: list[DesiredInstance]


def validate(options: Options) -> Validated:
    """Stages 1-3, offline. Raises ValidationFailed with every problem found."""
    manifest, problems = load_manifest(options.manifest, options.inputs, options.sets, options.limits)
    if manifest is None:
        raise ValidationFailed(_sorted(problems))
    registry = ElementRegistry.load([*manifest.schema_dirs, *options.schemas])
    problems.extend(registry.problems)
    renderer = Renderer(manifest.base_dir, options.environ, manifest.inputs, options.limits.max_file_bytes)
    broken = frozenset((int(m[1]), m[2]) for p in problems if (m := _ENTRY.match(p.location.path or "")))
    desired, render_problems = build_desired(manifest, registry, renderer, options.limits, broken)
    problems.extend([*render_problems, *url_problems(manifest, renderer)])
    if problems:
        raise ValidationFailed(_sorted(problems))
    manifest.data.pop("instances", None)  # read into ``desired``: a third of a run's memory at 10,000 entries
    return Validated(manifest, registry, renderer, desired)


def _sorted(problems: list[Problem]) -> list[Problem]:
    """By file and line, and the same problem of many forEach items once, with a count."""
    alike: dict[tuple, list[Problem]] = {}
    for p in problems:
        alike.setdefault((replace(p.location, instance=None), p.message, p.hint), []).append(p)
    merged = [
        first if not rest else replace(first, message=f"{first.message} (and {len(rest)} more instances)")
        for first, *rest in alike.values()
    ]
    return sorted(merged, key=lambda p: (p.location.file or "", p.location.line or 0))


@dataclass
class Connection:
    """Clients for the targets of one run, sharing one rate budget and one set of statistics."""

    targets: dict[str, Target]
    clients: dict[str, Any]  # Client, or ReadOnlyClient for read-only commands
    stats: RequestStats
    fingerprints: dict[str, FingerprintContext]
    stop: StopFlag


@contextmanager
def connect(validated: Validated, options: Options, stop: StopFlag, read_only: bool = False) -> Iterator[Connection]:
    """Resolve credentials (and check the targets) and open one client per target; ``read_only``: clients
    that cannot write (``ReadOnlyClient``), for plan and drift."""
    names = set(validated.manifest.targets) or {DEFAULT_TARGET}
    if (local := options.local) is not None:
        targets = {n: local_target(n, local.url, local.user_secret, local.organization_secret) for n in names}
    else:
        targets, problems = resolve_targets(validated.manifest, validated.renderer, names)
        if problems:
            raise ValidationFailed(_sorted(problems))
    stats = RequestStats()
    budget = RateBudget(options.client.max_rate)
    override = options.environ.get(FINGERPRINT_KEY_ENV) or None
    with ExitStack() as stack:
        kind = ReadOnlyClient if read_only else Client
        client = partial(kind, budget=budget, stats=stats, trace=options.trace, stop=stop, notice=options.notice)
        clients = {
            name: stack.enter_context(client(t.url, t.user_secret, t.organization_secret, options.client))
            for name, t in targets.items()
        }
        fingerprints = {
            name: FingerprintContext(fingerprint_key(t.organization_secret, override), validated.manifest.stack)
            for name, t in targets.items()
        }
        yield Connection(targets, clients, stats, fingerprints, stop)


def read_state(
    connection: Connection,
    stack: str,
    owned_only: bool,
    hydrate: Callable[[LiveInstance], bool] | None = None,
    configuration: bool = True,
) -> dict[str, list[LiveInstance]]:
    """Stage 4: one paged listing per target (``hydrate`` and ``configuration``: see read_live). A
    401/403 stops the run naming the variables."""
    live = {}
    for name, client in connection.clients.items():
        try:
            live[name] = read_live(client, stack, owned_only=owned_only, hydrate=hydrate, configuration=configuration)
        except Unauthorized as exc:
            raise CredentialsRefused(name, connection.targets[name].credential_sources, exc) from None
    return live


def plan(validated: Validated, connection: Connection, options: Options) -> Plan:
    """Stages 4-5: read the live state, then compare."""
    stack = validated.manifest.stack
    declared = {d.name for d in validated.desired}
    adoptable = (lambda i: i.name in declared and is_unmanaged(i.tags)) if options.plan.adopt else None
    live = read_state(connection, stack, options.plan.destroy, hydrate=adoptable)
    return make_plan(stack, validated.desired, live, validated.registry, connection.fingerprints, options.plan)


def drift(validated: Validated, connection: Connection) -> DriftReport:
    """Stages 4-5 with default options, then drift apart from pending changes."""
    stack = validated.manifest.stack
    live = read_state(connection, stack, owned_only=False)
    the_plan = make_plan(stack, validated.desired, live, validated.registry, connection.fingerprints, PlanOptions())
    return detect(the_plan, live, validated.registry, connection.fingerprints, len(validated.desired))


def apply(
    validated: Validated,
    connection: Connection,
    the_plan: Plan,
    options: Options,
    stop: StopFlag,
    progress: Callable[[ChangeResult], None] | None = None,
) -> ApplyResult:
    """Stage 6: execute the plan."""
    result = Applier(
        the_plan, connection.clients, connection.fingerprints, validated.registry, options.apply, stop, progress
    ).run()
    if result.aborted:
        target = next((r.change.target for r in result.failed if r.http_status in (401, 403)), None)
        if target is not None:
            result.aborted += f": check {connection.targets[target].credential_sources}"
    return result


def instance_outputs(
    validated: Validated,
    result: ApplyResult | None,
    connection: Connection,
    live: Mapping[str, list[LiveInstance]] | None = None,
) -> dict[str, dict]:
    """id, element and token of every declared instance that exists, new or existing."""
    found: dict[str, tuple[str, Any, Any]] = {}  # name -> target, id, token
    declared = {(d.target, d.name): d for d in validated.desired}
    for r in result.results if result is not None else []:
        identity = r.change.desired is not None  # not an extra copy of a duplicated instance
        exists = r.status == Status.OK and r.change.action != Action.DELETE and r.id is not None
        if identity and (r.change.target, r.change.name) in declared and exists:
            found[r.change.name] = (r.change.target, r.id, r.token)
    for target, instances in (live or {}).items():
        for instance in sorted(instances, key=lambda i: i.age_key, reverse=True):
            if (target, instance.name) in declared and instance.owned_by(validated.manifest.stack):
                found[instance.name] = (target, instance.id, instance.token)
    entries = {}
    for name, (target, id_, token) in found.items():
        if token is None:  # an API whose list leaves tokens out: read the one instance
            token = LiveInstance.from_api(connection.clients[target].get_instance(id_)).token
        entries[name] = {"id": id_, "element": declared[(target, name)].element, "token": token}
    return entries


def select_outputs(entries: dict[str, dict], validated: Validated, name: str | None) -> dict[str, dict]:
    """Outputs for ``provisioner output``: all, or one declared name (an error if unknown or absent)."""
    if name is None:
        missing = sorted({d.name for d in validated.desired} - set(entries))
        if missing:
            raise UserError(f"not created yet: {', '.join(missing)}", hint="run apply first")
        return entries
    if name not in {d.name for d in validated.desired}:
        raise UserError(
            f"no instance named {name!r} in {validated.manifest.display}",
            hint="declared: " + ", ".join(sorted(d.name for d in validated.desired)[:20]),
        )
    if name not in entries:
        raise UserError(f"instance {name!r} does not exist yet", hint="run apply first")
    return {name: entries[name]}
