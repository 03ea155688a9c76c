"""The command line: parse arguments, call the engine, turn the result into output and an exit code.

Exit codes are a contract, the same for every command: 0 success; 1 error (bad input, API error,
conflict, protected instance refused, failed change, stale saved plan, misuse of the command line);
2 only from ``plan --detailed-exitcode`` when changes are pending and from ``drift`` when something
changed behind provisioner's back; 130/143 when SIGINT/SIGTERM interrupted an apply or destroy.
"""

from __future__ import annotations

import datetime
import errno
import gc
import os
import sqlite3
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import replace
from typing import Any

import click

from .. import __version__
from ..api.client import ClientSettings
from ..engine import savedplan
from ..engine import stages as engine
from ..engine.apply import ApplySettings
from ..engine.outputs import format_env, format_json, write_outputs
from ..engine.plan import Action, PlanOptions
from ..engine.targeting import Selection
from ..errors import Interrupted, ProvisionerError, UserError, ValidationFailed
from ..interrupt import StopFlag, exit_process, stop_on_signals
from ..manifest.load import DEFAULT_MAX_FOREACH, Limits, manifest_schema_text
from ..manifest.yamlload import DEFAULT_MAX_BYTES
from ..ownership import is_unmanaged
from ..secret import REDACTOR
from .markdown import MarkdownReporter
from .progress import ProgressReporter
from .report import JsonReporter, RedactingWriter, TextReporter

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
FORMATS = ("text", "json")

# The environment each kind of command reads, named at the end of its --help (click keeps \b blocks as written;
# their lines stay under 80 columns).
ENV_RENDER = (
    "Environment: the variables the manifest reads as env.NAME (an unset one is an error that names it). "
    "No credentials are needed."
)
ENV_API = (
    "Environment:\n\n\b\n"
    "  CE_USER_SECRET          user secret of the default target\n"
    "  CE_ORGANIZATION_SECRET  organization secret of the default target\n"
    "  CE_API_URL              API base URL of the default target\n"
    "  CE_CLIENT_CERT, CE_CLIENT_KEY  client certificate and key (PEM)\n"
    "  PROVISIONER_FINGERPRINT_KEY  key of the secret fingerprints\n"
    "  HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY  proxies\n"
    "  REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE  CA bundle (default: certifi's)\n"
    "  NO_COLOR                no colour, even on a terminal\n"
    "  and every variable the manifest reads as env.NAME"
)
ENV_EMULATOR = (
    "Environment:\n\n\b\n"
    "  CE_USER_SECRET, CE_ORGANIZATION_SECRET  the secrets to accept\n"
    "  PROVISIONER_EMULATOR_FAULTS  fault specification (as --faults)"
)
_OUTPUT_HELP = "Output format on stdout."


def _input_options(f: Callable | None = None, output: Any = None, *, api: bool = True, many: bool = False) -> Callable:
    """The options of every command that reads a manifest; ``output`` is the -o option, or the
    tuple of formats it offers (text and json by default). Without ``f``, a decorator with these
    settings: ``@_input_options(api=False, many=True)``."""
    if f is None:
        return lambda g: _input_options(g, output, api=api, many=many)
    if output is None or isinstance(output, tuple):
        formats = output or FORMATS
        output = click.option(
            "-o",
            "--output",
            "output",
            type=click.Choice(list(formats)),
            default=formats[0],
            show_default=True,
            help=_OUTPUT_HELP,
        )
    verbose_help = (
        "Trace every HTTP request on stderr (secrets redacted), and the order the inputs were layered."
        if api
        else "Print on stderr the order in which the inputs were layered (later wins)."
    )
    options = [
        click.argument("manifest", type=click.Path(dir_okay=False), nargs=-1 if many else 1, required=True),
        click.option(
            "--inputs",
            "inputs",
            multiple=True,
            type=click.Path(dir_okay=False),
            help="YAML file of inputs, merged over the manifest's inputs (repeatable; later wins).",
        ),
        click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="KEY=VALUE",
            help="Set one input (dotted keys nest; the value is read as a YAML scalar). Repeatable.",
        ),
        click.option(
            "--schemas",
            "schemas",
            multiple=True,
            type=click.Path(file_okay=False),
            help="Directory of extra element schemas (<element>.json). Repeatable.",
        ),
        click.option(
            "--max-foreach",
            type=click.IntRange(1),
            default=DEFAULT_MAX_FOREACH,
            show_default=True,
            help="Refuse a forEach that expands past this many items.",
        ),
        click.option(
            "--max-file-bytes",
            type=click.IntRange(1),
            default=DEFAULT_MAX_BYTES,
            show_default=True,
            help="Refuse manifest, inputs and template files larger than this.",
        ),
        output,
        click.option("-v", "--verbose", is_flag=True, help=verbose_help),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _api_options(f: Callable) -> Callable:
    options = [
        click.option(
            "--local",
            is_flag=True,
            help="Use an embedded emulator whose state persists in ./.provisioner/ (no account needed).",
        ),
        click.option(
            "--parallelism",
            type=click.IntRange(1, 256),
            default=16,
            show_default=True,
            help="Requests in flight at once (the shared rate budget still slows down on 429).",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(0.1),
            default=30.0,
            show_default=True,
            help="Read timeout of each request, in seconds.",
        ),
        click.option(
            "--connect-timeout",
            type=click.FloatRange(0.1),
            default=5.0,
            show_default=True,
            help="Connect timeout of each request, in seconds.",
        ),
        click.option(
            "--deadline",
            type=click.FloatRange(0.1),
            default=60.0,
            show_default=True,
            help="Whole-request bound (connect, send, complete answer), in seconds, per attempt.",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(1),
            default=10,
            show_default=True,
            help="Attempts per request, first included (GET, PUT, PATCH, DELETE retry on 429/5xx/network).",
        ),
        click.option(
            "--max-retry-time",
            type=click.FloatRange(0),
            default=120.0,
            show_default=True,
            help="Give up retrying one request after this many seconds.",
        ),
        click.option(
            "--max-rate",
            type=click.FloatRange(0.1),
            default=None,
            help="Never exceed this many requests per second (default: no ceiling until a 429).",
        ),
        click.option(
            "--settle",
            type=click.FloatRange(0),
            default=None,
            help="Seconds to wait before looking up a create whose response was lost (default: --timeout).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _plan_options(f: Callable | None = None, *, planning: bool = False) -> Callable:
    """The options that shape a plan; ``planning``: worded for plan, which deletes nothing itself."""
    if f is None:
        return lambda g: _plan_options(g, planning=planning)
    prune = (
        "Also plan the deletion of instances the stack owns that are no longer declared (apply --prune deletes them)."
        if planning
        else "Delete instances the stack owns that are no longer declared."
    )
    options = [
        click.option("--prune", is_flag=True, help=prune),
        click.option(
            "--allow-replace",
            is_flag=True,
            help="Allow replacing an instance whose element changed (its token changes).",
        ),
        click.option("--force", is_flag=True, help="Allow --prune with a manifest that declares no instance."),
        click.option(
            "--adopt",
            is_flag=True,
            help="Take over unmanaged instances (no provisioner:stack= tag) with declared names, "
            "keeping their ids and tokens.",
        ),
        click.option(
            "--target",
            "targets",
            multiple=True,
            metavar="PATTERN",
            help="Only the declared instances matching PATTERN: a name glob, element=KEY or tag=T "
            "(repeatable). Prune and duplicate clean-up stay inside the selection.",
        ),
        click.option(
            "--exclude",
            "excludes",
            multiple=True,
            metavar="PATTERN",
            help="Leave out the declared instances matching PATTERN (same forms as --target; repeatable).",
        ),
        _allow_destroy_option(),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _allow_destroy_option() -> Callable:
    return click.option(
        "--allow-destroy",
        "allow_destroy",
        multiple=True,
        metavar="NAME",
        help="Lift the protection (protect: true) of instance NAME for this run (repeatable).",
    )


class _Run:
    """What one command invocation shares: reporter, streams and the stop flag."""

    def __init__(self, command: str, output: str, verbose: bool):
        self.command = command
        self.json = output == "json"
        self.verbose = verbose
        self.reporter: Any = (
            JsonReporter(sys.stdout, sys.stderr)
            if self.json
            else MarkdownReporter(sys.stdout, sys.stderr, verbose)
            if output == "markdown"
            else TextReporter(sys.stdout, sys.stderr, verbose)
        )
        self.stderr = RedactingWriter(sys.stderr)
        self._lock = threading.Lock()
        self.stop = StopFlag()

    def trace(self, line: str) -> None:
        with self._lock:
            self.stderr.write(line + "\n")
            self.stderr.flush()


def _options(run: _Run, params: dict[str, Any], local: Any = None) -> engine.Options:
    limits = Limits(max_file_bytes=params["max_file_bytes"], max_foreach=params["max_foreach"])
    common = {
        "manifest": params["manifest"],
        "inputs": tuple(params["inputs"]),
        "sets": tuple(params["sets"]),
        "schemas": tuple(params["schemas"]),
        "limits": limits,
    }
    if "parallelism" not in params:
        return engine.Options(**common)
    client = ClientSettings(
        connect_timeout=params["connect_timeout"],
        read_timeout=params["timeout"],
        deadline=params["deadline"],
        max_attempts=params["max_attempts"],
        max_retry_time=params["max_retry_time"],
        parallelism=params["parallelism"],
        max_rate=params["max_rate"],
    )
    settle = params["settle"] if params["settle"] is not None else params["timeout"]
    targets, excludes = tuple(params.get("targets", ())), tuple(params.get("excludes", ()))
    Selection.of(targets, excludes)  # a malformed pattern is a usage error, before anything else
    plan = PlanOptions(
        prune=params.get("prune", False),
        allow_replace=params.get("allow_replace", False),
        force=params.get("force", False),
        adopt=params.get("adopt", False),
        targets=targets,
        excludes=excludes,
        allow_destroy=tuple(params.get("allow_destroy", ())),
    )
    return engine.Options(
        **common,
        local=local,
        client=client,
        apply=ApplySettings(parallelism=params["parallelism"], settle_seconds=settle),
        plan=plan,
        trace=run.trace if params.get("verbose") else None,
        notice=None if params.get("verbose") else run.trace,
    )


def _validated(run: _Run, params: dict[str, Any]) -> engine.Validated:
    """Stages 1-3; with --verbose, say in which order the inputs were layered."""
    validated = engine.validate(_options(run, params))
    if params.get("verbose"):
        run.trace("inputs, later wins: " + " < ".join(validated.manifest.layers))
    return validated


def _local(params: dict[str, Any]) -> Any:
    if not params.get("local"):
        return nullcontext(None)
    from .local import local_api

    return local_api()


def _finish(run: _Run, func: Callable[[], int]) -> int:
    """Run a command body; map every error to its exit code and a located message."""
    try:
        return func()
    except ValidationFailed as exc:
        run.reporter.problems(run.command, exc.problems)
        return EXIT_ERROR
    except Interrupted as exc:
        run.reporter.error(run.command, f"interrupted by signal {exc.signum}; no new request was started")
        return exc.exit_code
    except UserError as exc:
        where = exc.problem.location.format()
        run.reporter.error(run.command, f"{where + ': ' if where else ''}{exc.problem.message}", exc.problem.hint)
        return EXIT_ERROR
    except ProvisionerError as exc:
        run.reporter.error(run.command, str(exc))
        return EXIT_ERROR


class _Command(click.Command):
    """A command whose line in the command list is its whole first sentence (click would cut it short)."""

    def get_short_help_str(self, limit: int = 45) -> str:
        if self.short_help or not self.help:
            return super().get_short_help_str(limit)
        paragraph = " ".join(self.help.split("\n\n")[0].split())
        end = paragraph.find(". ")
        return paragraph if end < 0 else paragraph[: end + 1]


class _Group(click.Group):
    command_class = _Command


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog="Each command's --help names the environment variables it reads. Shell completion: "
    'eval "$(_PROVISIONER_COMPLETE=bash_source provisioner)" (zsh_source, fish_source).',
)
@click.version_option(__version__, prog_name="provisioner")
def cli() -> None:
    """Declare Cloud Elements element instances in a YAML manifest; validate, plan, apply and destroy them."""


@cli.command(epilog=ENV_RENDER)
@_input_options(api=False, many=True)
def validate(**params: Any) -> None:
    """Check manifests offline: structure, rendering, element schemas; makes no network call.

    Several MANIFEST files are checked one after the other (text output only); the exit code is 1 if
    any of them has an error.
    """
    run = _Run("validate", params["output"], params["verbose"])
    manifests = params["manifest"]
    if run.json and len(manifests) > 1:
        sys.exit(
            _finish(
                run,
                _refuse(
                    UserError(
                        "--output json takes one manifest",
                        hint="run validate once per manifest, or use the text output",
                    )
                ),
            )
        )

    def one(manifest: str) -> Callable[[], int]:
        def body() -> int:
            validated = _validated(run, {**params, "manifest": manifest})
            run.reporter.validated(validated.manifest.display, len(validated.desired), validated.problems)
            return EXIT_OK

        return body

    sys.exit(max(_finish(run, one(manifest)) for manifest in manifests))


def _refuse(error: UserError) -> Callable[[], int]:
    def body() -> int:
        raise error

    return body


@cli.command(epilog=ENV_API)
@_input_options(output=(*FORMATS, "markdown"))
@_api_options
@_plan_options(planning=True)
@click.option("--detailed-exitcode", is_flag=True, help="Exit 2 when changes are pending (0: none, 1: error).")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Save the plan to FILE (no secret, mode 0600) for 'apply FILE', which executes exactly it.",
)
def plan(**params: Any) -> None:
    """Show what apply would change, without changing anything.

    -o markdown prints a summary table and a diff per changed instance, for a pull request comment or a
    CI step summary.
    """
    run = _Run("plan", params["output"], params["verbose"])

    def body() -> int:
        validated = _validated(run, params)
        with _local(params) as local, stop_on_signals(run.stop):
            options = _options(run, params, local)
            with engine.connect(validated, options, run.stop, read_only=True) as connection:
                the_plan = engine.plan(validated, connection, options)
                saved = (
                    savedplan.document(the_plan, validated, connection, _sources(params))
                    if params["out"] and not the_plan.has_refusals
                    else None
                )
        run.reporter.plan(the_plan)
        if the_plan.has_refusals:
            if params["out"]:
                run.reporter.info(f"no plan saved to {params['out']}: the plan has refused changes")
            return EXIT_ERROR
        if saved is not None:
            savedplan.write(params["out"], saved)
            run.reporter.info(
                f"Plan saved to {params['out']} (mode 0600); apply it with: provisioner apply {params['out']}"
            )
        return EXIT_CHANGES if params["detailed_exitcode"] and the_plan.has_changes else EXIT_OK

    sys.exit(_finish(run, body))


@cli.command(epilog=ENV_API)
@_input_options(output=(*FORMATS, "markdown"))
@_api_options
@_plan_options
@click.option(
    "--outputs",
    "outputs_path",
    type=click.Path(dir_okay=False),
    help="Write id, element and token of every declared instance to FILE (JSON, mode 0600).",
)
@click.option("--progress/--no-progress", default=True, help="Show progress on stderr for long runs.")
def apply(**params: Any) -> None:
    """Make the live instances match the manifest, and deliver their tokens.

    MANIFEST may also be a plan saved with 'plan --out FILE': then exactly that plan is executed, or
    nothing at all if the manifest, its inputs or a touched instance changed since.

    -o markdown prints a summary table and a diff per change made, for a CI step summary. Tokens are
    written only to the --outputs file, never to stdout or stderr.
    """
    run = _Run("apply", params["output"], params["verbose"])

    def body() -> int:
        saved = savedplan.load_if_plan(params["manifest"], params["max_file_bytes"])
        if saved is None:
            return _apply_like(run, params, destroy=False)
        return _apply_like(run, savedplan.params_for(saved, params), destroy=False, saved=saved)

    sys.exit(_finish(run, body))


@cli.command(epilog=ENV_API)
@_input_options
@_api_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (required without a terminal).")
@_allow_destroy_option()
@click.option("--progress/--no-progress", default=True, help="Show progress on stderr for long runs.")
def destroy(**params: Any) -> None:
    """Delete every instance the manifest's stack owns (and nothing else)."""
    run = _Run("destroy", params["output"], params["verbose"])
    sys.exit(_finish(run, lambda: _apply_like(run, params, destroy=True)))


def _apply_like(run: _Run, params: dict[str, Any], destroy: bool, saved: Any = None) -> int:
    validated = _validated(run, params)
    with ExitStack() as stack:
        local = stack.enter_context(_local(params))
        stack.enter_context(stop_on_signals(run.stop))
        options = _options(run, params, local)
        if destroy:
            options = replace(options, plan=PlanOptions(destroy=True, allow_destroy=options.plan.allow_destroy))
        connection = stack.enter_context(engine.connect(validated, options, run.stop))
        if saved is not None:
            savedplan.check_before_reading(saved, validated, connection, local is not None)
        the_plan = engine.plan(validated, connection, options)
        if saved is not None:
            savedplan.check_plan(saved, the_plan, validated, connection)
        if destroy and the_plan.has_changes and not _confirmed(run, the_plan, params):
            return EXIT_ERROR
        writes = sum(1 for c in the_plan.changes if c.is_write)
        progress = ProgressReporter(sys.stderr, writes, run.command, enabled=params["progress"])
        with progress:
            result = engine.apply(validated, connection, the_plan, options, run.stop, progress)
        outputs_path = params.get("outputs_path")
        if outputs_path:
            entries = engine.instance_outputs(validated, result, connection)
            write_outputs(outputs_path, entries)
        run.reporter.applied(result, connection.stats.as_dict(), run.command, outputs_path)
        if result.interrupted:
            return 128 + result.interrupted
        return EXIT_OK if result.ok and not the_plan.has_refusals else EXIT_ERROR


def _sources(params: dict[str, Any]) -> savedplan.Sources:
    return savedplan.Sources(
        params["manifest"],
        tuple(params["inputs"]),
        tuple(sorted({s.partition("=")[0].strip() for s in params["sets"]})),
        tuple(params["schemas"]),
        bool(params.get("local")),
    )


def _confirmed(run: _Run, the_plan: Any, params: dict[str, Any]) -> bool:
    if params["yes"]:
        return True
    count = sum(1 for c in the_plan.changes if c.action == Action.DELETE)
    if not sys.stdin.isatty():
        raise UserError(
            f"destroy would delete {count} instance(s) of stack {the_plan.stack!r} and needs confirmation",
            hint="pass --yes to confirm when there is no terminal",
        )
    run.reporter.plan(the_plan, "destroy")
    answer = click.prompt(
        f"Delete {count} instance(s) of stack {the_plan.stack!r}? Type 'yes' to confirm",
        default="",
        show_default=False,
        err=True,
    )
    if answer.strip() != "yes":
        run.reporter.error("destroy", "not confirmed; nothing was deleted")
        return False
    return True


_OUTPUT_FORMATS = {"json": format_json, "env": format_env}


def _output_format_options(f: Callable) -> Callable:
    f = click.option(
        "--format",
        "fmt",
        type=click.Choice(sorted(_OUTPUT_FORMATS)),
        default=None,
        hidden=True,
        help="Same as -o (kept for scripts written before -o env).",
    )(f)
    return _input_options(
        f,
        click.option(
            "-o",
            "--output",
            "output",
            type=click.Choice(sorted(_OUTPUT_FORMATS)),
            default=None,
            help="json (default): the outputs-file document; env: NAME_ID, NAME_ELEMENT, NAME_TOKEN shell lines.",
        ),
    )


def _output_format(params: dict[str, Any]) -> str:
    """The one format of ``output``: -o, or the older --format; both at once must agree."""
    chosen, older = params["output"], params.pop("fmt")
    if chosen and older and chosen != older:
        raise click.UsageError(
            f"-o {chosen} and --format {older} disagree; --format is the older spelling of -o: give only -o"
        )
    return chosen or older or "json"


@cli.command(epilog=ENV_API)
@_input_options(output=(*FORMATS, "markdown"))
@_api_options
def drift(**params: Any) -> None:
    """Report what changed behind provisioner's back, apart from pending manifest changes; it never writes.

    Exit 0: no drift; 2: drift found; 1: error. Pending changes alone exit 0 (plan shows them).

    -o markdown prints a table of findings by category and a table of fields per finding, for a CI step
    summary or an issue.
    """
    run = _Run("drift", params["output"], params["verbose"])

    def body() -> int:
        validated = _validated(run, params)
        with _local(params) as local, stop_on_signals(run.stop):
            options = _options(run, params, local)
            with engine.connect(validated, options, run.stop, read_only=True) as connection:
                report = engine.drift(validated, connection)
        run.reporter.drift(report, connection.stats.as_dict())
        return EXIT_CHANGES if report.has_drift else EXIT_OK

    sys.exit(_finish(run, body))


@cli.command(epilog=ENV_API)
@_output_format_options
@_api_options
@click.argument("name", required=False)
def output(**params: Any) -> None:
    """Print id, element and token of the declared instances, read from the API."""
    explicit = params["output"]
    params["output"] = fmt = _output_format(params)
    run = _Run("output", "json" if explicit == "json" else "text", params["verbose"])  # errors: JSON only if asked

    def body() -> int:
        validated = _validated(run, params)
        with _local(params) as local, stop_on_signals(run.stop):
            options = _options(run, params, local)
            with engine.connect(validated, options, run.stop, read_only=True) as connection:
                live = engine.read_state(connection, validated.manifest.stack, owned_only=True)
                entries = engine.instance_outputs(validated, None, connection, live)
        selected = engine.select_outputs(entries, validated, params["name"])
        text = _OUTPUT_FORMATS[fmt](selected)
        sys.stdout.write(text)  # the one place tokens are printed: the user asked for them
        sys.stdout.flush()
        return EXIT_OK

    sys.exit(_finish(run, body))


@cli.command("import", epilog=ENV_API)
@_input_options
@_api_options
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Manifest file to write (same apiVersion, stack and targets as MANIFEST).",
)
@click.option("--element", "element", default=None, help="Only instances of this element key.")
@click.option("--name", "name_glob", default=None, metavar="GLOB", help="Only instances whose name matches GLOB.")
def import_(**params: Any) -> None:
    """Write a manifest declaring the unmanaged instances the target already has (take them over with --adopt)."""
    from ..engine.importer import import_manifest

    run = _Run("import", params["output"], params["verbose"])

    def body() -> int:
        validated = _validated(run, params)
        with _local(params) as local, stop_on_signals(run.stop):
            options = _options(run, params, local)
            with engine.connect(validated, options, run.stop) as connection:
                live = engine.read_state(
                    connection, validated.manifest.stack, owned_only=False, hydrate=lambda i: is_unmanaged(i.tags)
                )
        imported = import_manifest(
            validated.manifest, validated.registry, live, params["out_path"], params["element"], params["name_glob"]
        )
        _write_text(params["out_path"], imported.text)
        for note in imported.skipped:
            run.reporter.info(f"skipped: {note}")
        if imported.variables:
            run.reporter.info(
                "set these variables to the secret values before plan --adopt (the API never returns them):"
            )
            for name, instance, key in imported.variables:
                run.reporter.info(f"  {name}  ({instance}: {key})")
        data = {
            "out": params["out_path"],
            "instances": imported.count,
            "variables": [{"name": n, "instance": i, "key": k} for n, i, k in imported.variables],
            "skipped": imported.skipped,
        }
        run.reporter.document(run.command, data, [f"wrote {params['out_path']}: {imported.count} instance(s)"])
        return EXIT_OK

    sys.exit(_finish(run, body))


def _write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".import-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(temp, 0o644)
    os.replace(temp, path)


def _render_options(f: Callable) -> Callable:
    return _input_options(f, ("yaml", "json"))


@cli.command(epilog=ENV_RENDER)
@_render_options
def render(**params: Any) -> None:
    """Print, offline, the request bodies apply would send for every instance (secrets as (sensitive))."""
    import json

    import yaml

    from .preview import rendered

    run = _Run("render", "json" if params["output"] == "json" else "text", params["verbose"])

    def body() -> int:
        validated = _validated(run, params)
        requests = rendered(validated.manifest.stack, validated.desired, validated.registry)
        text = (
            json.dumps(requests, indent=2, ensure_ascii=False)
            if params["output"] == "json"
            else yaml.safe_dump(requests, sort_keys=False, allow_unicode=True, width=1000)
        ).rstrip("\n")
        run.reporter.document(
            run.command, {"stack": validated.manifest.stack, "requests": requests}, text.split("\n") if requests else []
        )
        return EXIT_OK

    sys.exit(_finish(run, body))


@cli.group(cls=_Group, epilog=ENV_API)
def schemas() -> None:
    """Element schemas written from the API's own element definitions."""


def _catalog_options(f: Callable) -> Callable:
    options = [
        click.option("--local", is_flag=True, help="Read the built-in emulator's catalog instead of the API."),
        click.option(
            "--schemas",
            "schemas",
            multiple=True,
            type=click.Path(file_okay=False),
            help="Directory of extra element schemas counted as local (repeatable).",
        ),
        click.option(
            "-o",
            "--output",
            "output",
            type=click.Choice(["text", "json"]),
            default="text",
            show_default=True,
            help="Output format on stdout.",
        ),
        click.option("-v", "--verbose", is_flag=True, help="Trace every HTTP request on stderr (secrets redacted)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _catalog_target(local: Any) -> Any:
    from ..api.pull import env_target
    from ..manifest.targets import local_target

    if local is not None:
        return local_target("default", local.url, local.user_secret, local.organization_secret)
    return env_target(os.environ)


@schemas.command("pull")
@click.argument("keys", nargs=-1)
@click.option("--all", "all_keys", is_flag=True, help="Pull every element the API offers (GET /elements/keys).")
@click.option(
    "--out",
    "out_dir",
    default="schemas",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory to write <key>.json into (use it with --schemas DIR).",
)
@_catalog_options
def schemas_pull(**params: Any) -> None:
    """Write one JSON Schema per element KEY from the API's definitions (stable: a second pull changes nothing)."""
    from ..api import pull

    run = _Run("schemas pull", params["output"], params["verbose"])

    def body() -> int:
        with _local(params) as local:
            with pull.reader(_catalog_target(local), run.trace if params["verbose"] else None) as client:
                pulled = pull.pull(client, list(params["keys"]), params["all_keys"], params["out_dir"])
        lines = [f"{'wrote' if p.changed else 'unchanged'} {p.path}" for p in pulled]
        data = {"schemas": [{"element": p.key, "path": p.path, "changed": p.changed} for p in pulled]}
        run.reporter.document(run.command, data, lines)
        return EXIT_OK

    sys.exit(_finish(run, body))


@schemas.command("list")
@_catalog_options
def schemas_list(**params: Any) -> None:
    """Print the element keys the API offers, and which have a local schema (built in or --schemas)."""
    from ..api import pull
    from ..manifest.elements import ElementRegistry

    run = _Run("schemas list", params["output"], params["verbose"])

    def body() -> int:
        registry = ElementRegistry.load(params["schemas"])
        if registry.problems:
            raise ValidationFailed(registry.problems)
        with _local(params) as local:
            with pull.reader(_catalog_target(local), run.trace if params["verbose"] else None) as client:
                keys = pull.listing(client, registry.keys())
        lines = [f"{key}{'  (local schema)' if local else ''}" for key, local in keys]
        data = {"elements": [{"key": key, "localSchema": local} for key, local in keys]}
        run.reporter.document(run.command, data, lines)
        return EXIT_OK

    sys.exit(_finish(run, body))


@cli.command(epilog=ENV_EMULATOR)
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port (0 picks a free one; the URL is printed on stdout).",
)
@click.option("--db", "db_path", default=".provisioner/emulator.db", show_default=True, help="SQLite file.")
@click.option("--user-secret", envvar="CE_USER_SECRET", help="User secret to accept (default: $CE_USER_SECRET).")
@click.option(
    "--organization-secret",
    envvar="CE_ORGANIZATION_SECRET",
    help="Organization secret to accept (default: $CE_ORGANIZATION_SECRET).",
)
@click.option(
    "--faults",
    "fault_text",
    default=None,
    metavar="SPEC",
    help="Fault injection: comma-separated NAME=VALUE pairs, for example error=0.1,seed=42. Names: "
    "latency, jitter, error, throttle, retry_after, reset, lost, slow, slow_ms, ratelimit, burst, "
    "methods, seed (default: $PROVISIONER_EMULATOR_FAULTS).",
)
@click.option("--latency-ms", type=click.FloatRange(0), default=None, help="Added latency on every request.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible faults.")
@click.option("--quiet", is_flag=True, help="Do not log requests on stderr.")
def emulator(**params: Any) -> None:
    """Run the Cloud Elements API emulator on loopback (SQLite persistence, optional fault injection)."""
    from ..emulator import Emulator, FaultConfig

    run = _Run("emulator", "text", False)

    def body() -> int:
        if not params["user_secret"] or not params["organization_secret"]:
            raise UserError(
                "the emulator needs the secrets it will accept",
                hint="set CE_USER_SECRET and CE_ORGANIZATION_SECRET, or pass --user-secret and --organization-secret",
            )
        try:
            faults = FaultConfig.parse(params["fault_text"]) if params["fault_text"] else FaultConfig.from_env()
        except ValueError as exc:
            raise UserError(f"bad fault specification: {exc}", hint="see provisioner emulator --help") from None
        overrides = {k: v for k, v in (("latency_ms", params["latency_ms"]), ("seed", params["seed"])) if v is not None}
        faults = faults.merged(**overrides) if overrides else faults
        try:
            _private_db(params["db_path"])
            server = Emulator(
                params["db_path"],
                params["user_secret"],
                params["organization_secret"],
                host=params["host"],
                port=params["port"],
                faults=faults,
                log_stream=None if params["quiet"] else run.stderr,
            )
            url = server.start()
        except (ValueError, OSError, sqlite3.Error) as exc:
            raise _emulator_start_error(exc, params) from None
        sys.stdout.write(f"{url}\n")
        sys.stdout.flush()
        run.reporter.info(
            f"emulator listening on {url} (db {params['db_path']}; faults: {faults.describe()}); Ctrl-C stops it"
        )
        try:
            with stop_on_signals(run.stop):
                while not run.stop.wait(0.5):
                    pass
        finally:
            server.stop()
        return EXIT_OK

    sys.exit(_finish(run, body))


def _private_db(db_path: str) -> None:
    """A new database directory is made 0700 and the database file 0600 before SQLite opens it
    (its journal files get the same mode): it may hold tokens."""
    if db_path == ":memory:":
        return
    os.makedirs(os.path.dirname(os.path.abspath(db_path)), mode=0o700, exist_ok=True)
    os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT, 0o600))


def _emulator_start_error(exc: Exception, params: dict[str, Any]) -> UserError:
    """A located error for an emulator that cannot start: port in use, bad host, unusable db."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return UserError(
            f"cannot start the emulator: port {params['port']} on {params['host']} is already in use",
            hint="stop what listens there, choose another --port, or pass --port 0 to pick a free one",
        )
    if isinstance(exc, sqlite3.Error):
        return UserError(
            f"cannot start the emulator: database {params['db_path']}: {exc}",
            hint="give a path to a writable SQLite file with --db",
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return UserError(
        f"cannot start the emulator on {params['host']}:{params['port']}: {reason}",
        hint="choose a loopback host and a free port (--port 0 picks one)",
    )


@cli.command()
@click.argument("name", type=click.Choice(["manifest"]))
def schema(name: str) -> None:
    """Print a JSON Schema shipped with provisioner: manifest, the manifest format.

    Its $id is a stable identifier, not a download location. To point an editor at the schema,
    save it and name it on a manifest's first line:

    \b
      provisioner schema manifest > manifest.schema.json
      # yaml-language-server: $schema=manifest.schema.json
    """
    sys.stdout.write(manifest_schema_text())
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's usage errors exit 1 (never 2), bugs write a redacted crash file."""
    # A run builds one large, long-lived object graph (10,000 instances: desired, live, plan) and
    # little cyclic garbage; the default collector thresholds rescan it hundreds of times.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        code = cli.main(args=argv, prog_name="provisioner", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help(), err=True)
        code = EXIT_ERROR
    except click.UsageError as exc:
        hint = f" (hint: see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        code = EXIT_ERROR
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = EXIT_ERROR
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        code = EXIT_ERROR
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - a bug: one line, traceback to a file
        code = _crash(exc)
    exit_process(code if isinstance(code, int) else EXIT_OK)


def _crash(exc: BaseException) -> int:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = REDACTOR.redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    fd, path = tempfile.mkstemp(prefix=f"provisioner-crash-{stamp}-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"provisioner {__version__}, python {sys.version.split()[0]}\n{text}")
    message = REDACTOR.redact(f"{type(exc).__name__}: {exc}")
    sys.stderr.write(
        f"internal error: {message}\nThis is a bug in provisioner. The traceback is in {path}; "
        "please attach it to a bug report.\n"
    )
    return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    main()
