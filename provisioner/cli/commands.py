"""The commands that read a manifest (and ``show``, which reads a saved plan): each parses its options into
one typed value, calls the engine's stages in order and turns the result into output and an exit code."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from dataclasses import replace

import click
import yaml

from ..engine import savedplan
from ..engine import stages as engine
from ..engine.health import check as check_health
from ..engine.outputs import format_json
from ..engine.plan import Plan
from ..errors import UserError
from ..manifest.load import DEFAULT_MAX_FOREACH
from ..manifest.yamlload import DEFAULT_MAX_BYTES
from ..ownership import is_unmanaged
from ..privatefile import checked_path, write_private
from .options import (
    ENV_API,
    ENV_RENDER,
    OUTPUT_FORMATS,
    WITH_MARKDOWN,
    ApplyArgs,
    CheckArgs,
    DestroyArgs,
    ImportArgs,
    Online,
    OutputArgs,
    PlanArgs,
    ShowArgs,
    Source,
    ValidateArgs,
)
from .preview import AT_APPLY_NOTE, rendered
from .progress import ProgressReporter
from .report import TextReporter
from .run import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, Run, command


@command(ValidateArgs, epilog=ENV_RENDER)
def validate(run: Run, args: ValidateArgs) -> int:
    """Check manifests offline: structure, rendering, element schemas; makes no network call.

    Several MANIFEST files are checked one after the other (text output only); the exit code is 1 if
    any of them has an error.
    """
    if args.output == "json" and len(args.manifest) > 1:
        raise UserError(
            "--output json takes one manifest", hint="run validate once per manifest, or use the text output"
        )

    def one(source: Source) -> int:
        validated = run.validated(source)
        run.reporter.validated(validated.manifest.display, len(validated.desired))
        return EXIT_OK

    return max(run.finish(functools.partial(one, args.source(manifest))) for manifest in args.manifest)


@command(PlanArgs, epilog=ENV_API, formats=WITH_MARKDOWN)
def plan(run: Run, args: PlanArgs) -> int:
    """Show what apply would change, without changing anything.

    -o markdown prints a summary table and a diff per changed instance, for a pull request comment or a
    CI step summary.
    """
    if args.out:
        checked_path(args.out, "saved plan")  # before any request: a device or FIFO is refused now
    with run.connected(args, read_only=True) as (validated, options, connection):
        the_plan = engine.plan(validated, connection, options)
        saved = None
        if args.out and not the_plan.has_refusals:
            saved = savedplan.document(the_plan, validated, connection, _sources(args), args.out)
    run.reporter.plan(the_plan)
    if the_plan.has_refusals:
        if args.out:
            run.reporter.info(f"no plan saved to {args.out}: the plan has refused changes")
        return EXIT_ERROR
    if args.out and saved is not None:
        savedplan.write(args.out, saved)
        run.reporter.info(f"Plan saved to {args.out} (mode 0600); apply it with: {_apply_line(args, args.out)}")
    return EXIT_CHANGES if args.detailed_exitcode and the_plan.has_changes else EXIT_OK


def _apply_line(args: PlanArgs, out: str) -> str:
    """The command that applies the saved plan: with the options it cannot record (--set values are
    never saved; the manifest, --inputs and --schemas paths are, relative to the plan file)."""
    words = ["provisioner", "apply", out, *(["--local"] if args.local else [])]
    words += [word for value in args.sets for word in ("--set", value)]
    if args.max_foreach != DEFAULT_MAX_FOREACH:
        words += ["--max-foreach", str(args.max_foreach)]
    if args.max_file_bytes != DEFAULT_MAX_BYTES:
        words += ["--max-file-bytes", str(args.max_file_bytes)]
    return shlex.join(words)


@command(ShowArgs, formats=WITH_MARKDOWN)
def show(run: Run, args: ShowArgs) -> int:
    """Print a plan saved with 'plan --out FILE' as plan printed it; reads nothing else, sends nothing.

    What the plan was made from (manifest, inputs, options, targets, time) goes to stderr.
    """
    saved = savedplan.load_if_plan(args.file, DEFAULT_MAX_BYTES, required=True)
    if saved is None:
        raise UserError(f"{args.file}: not a saved plan", hint="make one with: provisioner plan MANIFEST --out FILE")
    run.reporter.plan(saved.as_plan())
    data, sources = saved.data, saved.sources
    options = [key if value is True else f"{key}={','.join(value)}" for key, value in data["options"].items() if value]
    run.reporter.info(
        f"Saved plan {args.file}: stack {data['stack']!r}, made {data['createdAt']} by provisioner "
        f"{data['provisionerVersion']} from {sources.manifest}"
        + (f" with inputs {', '.join(sources.inputs)}" if sources.inputs else "")
        + (f", --set {', '.join(sources.set_keys)} (give them again to apply)" if sources.set_keys else "")
        + (f", options: {', '.join(options)}" if options else "")
        + f"; targets: {', '.join(f'{n} {u}' for n, u in data['targets'].items())}."
    )
    return EXIT_OK


@command(ApplyArgs, epilog=ENV_API, formats=WITH_MARKDOWN)
def apply(run: Run, args: ApplyArgs) -> int:
    """Make the live instances match the manifest, and deliver their tokens.

    The plan is shown first; on a terminal, apply then asks for 'yes' before any write. MANIFEST may
    also be a plan saved with 'plan --out FILE': then exactly that plan is executed, without asking, or
    nothing at all if an instance it touches changed since.

    -o markdown prints a summary table and a diff per change made, for a CI step summary. Tokens are
    written only to the --outputs file, never to stdout or stderr.
    """
    saved = savedplan.load_if_plan(args.manifest, args.max_file_bytes)
    return _apply_like(run, args) if saved is None else _apply_like(run, _from_saved(saved, args), saved)


@command(DestroyArgs, epilog=ENV_API)
def destroy(run: Run, args: DestroyArgs) -> int:
    """Delete every instance the manifest's stack owns (and nothing else)."""
    return _apply_like(run, args)


def _apply_like(run: Run, args: ApplyArgs | DestroyArgs, saved: savedplan.SavedPlan | None = None) -> int:
    if args.outputs_path:
        checked_path(args.outputs_path, "outputs file")  # before any request, not after the writes
    with run.connected(args) as (validated, options, connection):
        if saved is not None:
            savedplan.check_before_reading(saved, validated, connection, args.local)
        the_plan = engine.plan(validated, connection, options)
        if saved is not None:
            the_plan = savedplan.check_plan(saved, the_plan, validated, connection)
        writes = sum(1 for c in the_plan.changes if c.is_write)
        if writes and not _confirmed(run, the_plan, args, writes, reviewed=saved is not None):
            return EXIT_ERROR
        with ProgressReporter(sys.stderr, writes, run.command, enabled=args.progress) as progress:
            result = engine.apply(validated, connection, the_plan, options, run.stop, progress)
        if args.outputs_path:
            outputs = engine.instance_outputs(validated, result, connection)
            write_private(args.outputs_path, format_json(outputs), "outputs file")
        run.reporter.applied(result, connection.stats.as_dict(), run.command, args.outputs_path)
        if result.interrupted:
            return 128 + result.interrupted
        return EXIT_OK if result.ok and not the_plan.has_refusals else EXIT_ERROR


def _sources(args: Online) -> savedplan.Sources:
    set_keys = tuple(sorted({s.partition("=")[0].strip() for s in args.sets}))
    return savedplan.Sources(args.manifest, args.inputs, set_keys, args.schemas, args.local)


def _from_saved(saved: savedplan.SavedPlan, args: ApplyArgs) -> ApplyArgs:
    """What ``apply FILE`` runs: what the plan fixed, and what may be given now."""
    for field, (_, option_name) in savedplan.OPTIONS.items():
        if getattr(args, field):
            raise UserError(
                f"{option_name} cannot be given with a saved plan: the plan fixed its options",
                hint=f"give {option_name} to plan --out instead",
            )
    sources = saved.sources
    set_keys = _sources(args).set_keys
    if set_keys != tuple(sorted(sources.set_keys)):
        raise UserError(
            f"the plan was made with --set {', '.join(sources.set_keys) or '(none)'}; this run sets "
            f"{', '.join(set_keys) or '(none)'}",
            hint="--set values are never saved in a plan: pass the same --set options again",
        )
    return replace(
        args,
        manifest=sources.manifest,
        inputs=args.inputs or sources.inputs,
        schemas=args.schemas or sources.schemas,
        **{field: getattr(saved.options, field) for field in savedplan.OPTIONS},
    )


def _confirmed(run: Run, the_plan: Plan, args: ApplyArgs | DestroyArgs, writes: int, reviewed: bool) -> bool:
    """Show the plan before any write (apply's text output always: the log records each diff) and, on a
    terminal, go on only after 'yes'; a saved plan was reviewed. destroy needs --yes without a terminal."""
    destroy = isinstance(args, DestroyArgs)
    terminal = sys.stdin.isatty() and (destroy or sys.stdout.isatty())
    ask = not args.yes and not reviewed and terminal
    text = args.output == "text"
    if (text and not destroy) or ask:  # -o json/markdown: stdout keeps one document, the plan goes to stderr
        (run.reporter if text else TextReporter(sys.stderr, sys.stderr)).plan(the_plan, run.command)
    if destroy and not args.yes and not terminal:
        raise UserError(  # destroy's only writes are deletions
            f"destroy would delete {writes} instance(s) of stack {the_plan.stack!r} and needs confirmation",
            hint="pass --yes to confirm when there is no terminal",
        )
    if not ask:
        return True
    question = f"Delete {writes} instance(s)" if destroy else f"Make these {writes} change(s)"
    question += f" in stack {the_plan.stack!r}? Only 'yes' is accepted"
    confirmed = click.prompt(question, default="", show_default=False, err=True).strip() == "yes"
    if not confirmed:
        run.reporter.error(run.command, f"not confirmed; nothing was {'deleted' if destroy else 'changed'}")
    return confirmed


@command(Online, epilog=ENV_API, formats=WITH_MARKDOWN)
def drift(run: Run, args: Online) -> int:
    """Report what changed behind provisioner's back, apart from pending manifest changes; it never writes.

    Exit 0: no drift; 2: drift found; 1: error. Pending changes alone exit 0 (plan shows them).

    -o markdown prints a table of findings by category and a table of fields per finding, for a CI step
    summary or an issue.
    """
    with run.connected(args, read_only=True) as (validated, _, connection):
        report = engine.drift(validated, connection)
    run.reporter.drift(report, connection.stats.as_dict())
    return EXIT_CHANGES if report.has_drift else EXIT_OK


@command(CheckArgs, epilog=ENV_API, formats=WITH_MARKDOWN)
def check(run: Run, args: CheckArgs) -> int:
    """Report whether each declared instance works: healthy, invalid, disabled or missing; it never writes.

    One listing of the stack's instances; --ping also calls each instance's hub ping with its own token.
    Exit 0: all healthy; 2: any is not; 1: error. An invalid instance comes with the command that sends
    its credentials again. -o markdown prints a table, for a CI step summary.
    """
    with run.connected(args, read_only=True) as (validated, _, connection):
        report = check_health(validated, connection, args.ping, args.parallelism, args.apply_command())
    run.reporter.health(report, connection.stats.as_dict())
    return EXIT_OK if report.healthy else EXIT_CHANGES


@command(OutputArgs, epilog=ENV_API)
def output(run: Run, args: OutputArgs) -> int:
    """Print id, element and token of the declared instances, read from the API."""
    with run.connected(args, read_only=True) as (validated, _, connection):
        live = engine.read_state(connection, validated.manifest.stack, owned_only=True)
        entries = engine.instance_outputs(validated, None, connection, live)
    selected = engine.select_outputs(entries, validated, args.name)
    sys.stdout.write(OUTPUT_FORMATS[args.format](selected))  # the one place tokens are printed: asked for
    sys.stdout.flush()
    return EXIT_OK


@command(ImportArgs, "import", epilog=ENV_API)
def import_(run: Run, args: ImportArgs) -> int:
    """Write a manifest declaring the unmanaged instances the target already has (take them over with --adopt)."""
    from ..engine.importer import import_manifest

    _check_import_out(args)
    with run.connected(args) as (validated, _, connection):
        stack = validated.manifest.stack
        live = engine.read_state(connection, stack, owned_only=False, hydrate=lambda i: is_unmanaged(i.tags))
    imported = import_manifest(
        validated.manifest, validated.registry, live, args.out_path, args.element, args.name_glob
    )
    _check_import_out(args)  # again: the file may have appeared while the API was read
    write_private(args.out_path, imported.text, "imported manifest", 0o644)
    for note in imported.skipped:
        run.reporter.info(f"skipped: {note}")
    if imported.variables:
        run.reporter.info("set these variables to the secret values before plan --adopt (the API never returns them):")
        for name, instance, key in imported.variables:
            run.reporter.info(f"  {name}  ({instance}: {key})")
    data = {
        "out": args.out_path,
        "instances": imported.count,
        "variables": [{"name": n, "instance": i, "key": k} for n, i, k in imported.variables],
        "skipped": imported.skipped,
    }
    run.reporter.document(run.command, data, [f"wrote {args.out_path}: {imported.count} instance(s)"])
    return EXIT_OK


def _check_import_out(args: ImportArgs) -> None:
    """import --out: a regular file or a new one, never one of its own inputs, replaced only with --force."""
    target = checked_path(args.out_path, "imported manifest")
    if not os.path.exists(target):
        return
    for source in (args.manifest, *args.inputs):
        if os.path.exists(source) and os.path.samefile(source, target):
            raise UserError(
                f"import --out {args.out_path} is {source}, which import reads",
                hint="write the imported manifest to a new file",
            )
    if not args.force:
        raise UserError(
            f"import --out {args.out_path}: the file exists", hint="name a new file, or pass --force to replace it"
        )


@command(Source, epilog=ENV_RENDER, formats=("yaml", "json"))
def render(run: Run, args: Source) -> int:
    """Print, offline, the request bodies apply would send to create every instance, as it sends them.

    What only apply can know is a placeholder, named on the first line: secret values, the digests of
    the fingerprint and applied-record tags, and the id of the run. The schema defaults of the keys the
    manifest leaves out are listed beside each body: apply does not send them, the API fills them in.
    """
    validated = run.validated(args)
    requests = rendered(validated.manifest.stack, validated.desired, validated.registry)
    data = {"stack": validated.manifest.stack, "requests": requests, "computedAtApply": AT_APPLY_NOTE}
    text = f"# {AT_APPLY_NOTE}\n" + yaml.safe_dump(requests, sort_keys=False, allow_unicode=True, width=1000)
    run.reporter.document(run.command, data, text.rstrip("\n").split("\n") if requests else [])  # -o json prints data
    return EXIT_OK


COMMANDS = (validate, plan, apply, destroy, drift, check, output, import_, render, show)
