"""The command line: parse arguments, call the engine, turn the result into output and an exit code.

Exit codes are a contract, the same for every command: 0 success; 1 error (bad input, API error,
conflict, failed change, misuse of the command line); 2 only from ``plan --detailed-exitcode`` when
changes are pending; 130/143 when SIGINT/SIGTERM interrupted an apply or destroy.
"""

from __future__ import annotations

import datetime
import gc
import os
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import replace
from typing import Any

import click

from . import __version__, engine
from .apply import ApplySettings
from .client import ClientSettings
from .errors import Interrupted, ProvisionerError, UserError, ValidationFailed
from .interrupt import StopFlag, stop_on_signals
from .manifest import DEFAULT_MAX_FOREACH, Limits
from .outputs import format_env, format_json, write_outputs
from .plan import PlanOptions
from .progress import ProgressReporter
from .report import JsonReporter, RedactingWriter, TextReporter
from .secret import REDACTOR
from .yamlload import DEFAULT_MAX_BYTES

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def _input_options(f: Callable) -> Callable:
    options = [
        click.argument("manifest", type=click.Path(dir_okay=False)),
        click.option("--inputs", "inputs", multiple=True, type=click.Path(dir_okay=False),
                     help="YAML file of inputs, merged over the manifest's inputs (repeatable; later wins)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Set one input (dotted keys nest; the value is read as a YAML scalar). Repeatable."),
        click.option("--schemas", "schemas", multiple=True, type=click.Path(file_okay=False),
                     help="Directory of extra element schemas (<element>.json). Repeatable."),
        click.option("--max-foreach", type=click.IntRange(1), default=DEFAULT_MAX_FOREACH, show_default=True,
                     help="Refuse a forEach that expands past this many items."),
        click.option("--max-file-bytes", type=click.IntRange(1), default=DEFAULT_MAX_BYTES, show_default=True,
                     help="Refuse manifest, inputs and template files larger than this."),
        click.option("-o", "--output", "output", type=click.Choice(["text", "json"]), default="text",
                     show_default=True, help="Output format on stdout."),
        click.option("-v", "--verbose", is_flag=True, help="Trace every HTTP request on stderr (secrets redacted)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _api_options(f: Callable) -> Callable:
    options = [
        click.option("--local", is_flag=True,
                     help="Use an embedded emulator whose state persists in ./.provisioner/ (no account needed)."),
        click.option("--parallelism", type=click.IntRange(1, 256), default=16, show_default=True,
                     help="Requests in flight at once (the shared rate budget still slows down on 429)."),
        click.option("--timeout", type=click.FloatRange(0.1), default=30.0, show_default=True,
                     help="Read timeout of each request, in seconds."),
        click.option("--connect-timeout", type=click.FloatRange(0.1), default=5.0, show_default=True,
                     help="Connect timeout of each request, in seconds."),
        click.option("--max-attempts", type=click.IntRange(1), default=10, show_default=True,
                     help="Attempts per request, first included (GET, PUT, PATCH, DELETE retry on 429/5xx/network)."),
        click.option("--max-retry-time", type=click.FloatRange(0), default=120.0, show_default=True,
                     help="Give up retrying one request after this many seconds."),
        click.option("--max-rate", type=click.FloatRange(0.1), default=None,
                     help="Never exceed this many requests per second (default: no ceiling until a 429)."),
        click.option("--settle", type=click.FloatRange(0), default=None,
                     help="Seconds to wait before looking up a create whose response was lost (default: --timeout)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _plan_options(f: Callable) -> Callable:
    options = [
        click.option("--prune", is_flag=True, help="Delete instances the stack owns that are no longer declared."),
        click.option("--allow-replace", is_flag=True,
                     help="Allow replacing an instance whose element changed (its token changes)."),
        click.option("--force", is_flag=True, help="Allow --prune with a manifest that declares no instance."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


class _Run:
    """What one command invocation shares: reporter, streams and the stop flag."""

    def __init__(self, command: str, output: str, verbose: bool):
        self.command = command
        self.json = output == "json"
        self.verbose = verbose
        self.reporter: Any = (JsonReporter(sys.stdout, sys.stderr) if self.json
                              else TextReporter(sys.stdout, sys.stderr, verbose))
        self.stderr = RedactingWriter(sys.stderr)
        self._lock = threading.Lock()
        self.stop = StopFlag()

    def trace(self, line: str) -> None:
        with self._lock:
            self.stderr.write(line + "\n")
            self.stderr.flush()


def _options(run: _Run, params: dict[str, Any], local: Any = None) -> engine.Options:
    limits = Limits(max_file_bytes=params["max_file_bytes"], max_foreach=params["max_foreach"])
    common = {"manifest": params["manifest"], "inputs": tuple(params["inputs"]), "sets": tuple(params["sets"]),
              "schemas": tuple(params["schemas"]), "limits": limits}
    if "parallelism" not in params:
        return engine.Options(**common)
    client = ClientSettings(connect_timeout=params["connect_timeout"], read_timeout=params["timeout"],
                            max_attempts=params["max_attempts"], max_retry_time=params["max_retry_time"],
                            parallelism=params["parallelism"], max_rate=params["max_rate"])
    settle = params["settle"] if params["settle"] is not None else params["timeout"]
    plan = PlanOptions(prune=params.get("prune", False), allow_replace=params.get("allow_replace", False),
                       force=params.get("force", False))
    return engine.Options(**common, local=local, client=client,
                          apply=ApplySettings(parallelism=params["parallelism"], settle_seconds=settle),
                          plan=plan, trace=run.trace if params.get("verbose") else None)


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="provisioner")
def cli() -> None:
    """Declare Cloud Elements element instances in a YAML manifest; validate, plan, apply and destroy them."""


@cli.command()
@_input_options
def validate(**params: Any) -> None:
    """Check a manifest offline: structure, rendering, element schemas. Makes no network call."""
    run = _Run("validate", params["output"], params["verbose"])

    def body() -> int:
        validated = _validated(run, params)
        run.reporter.validated(validated.manifest.display, len(validated.desired), validated.problems)
        return EXIT_OK

    sys.exit(_finish(run, body))


@cli.command()
@_input_options
@_api_options
@_plan_options
@click.option("--detailed-exitcode", is_flag=True, help="Exit 2 when changes are pending (0: none, 1: error).")
def plan(**params: Any) -> None:
    """Show what apply would change, without changing anything."""
    run = _Run("plan", params["output"], params["verbose"])

    def body() -> int:
        validated = _validated(run, params)
        with _local(params) as local, stop_on_signals(run.stop):
            options = _options(run, params, local)
            with engine.connect(validated, options, run.stop) as connection:
                the_plan = engine.plan(validated, connection, options)
        run.reporter.plan(the_plan)
        if the_plan.has_conflicts:
            return EXIT_ERROR
        return EXIT_CHANGES if params["detailed_exitcode"] and the_plan.has_changes else EXIT_OK

    sys.exit(_finish(run, body))


@cli.command()
@_input_options
@_api_options
@_plan_options
@click.option("--outputs", "outputs_path", type=click.Path(dir_okay=False),
              help="Write id, element and token of every declared instance to FILE (JSON, mode 0600).")
@click.option("--progress/--no-progress", default=True, help="Show progress on stderr for long runs.")
def apply(**params: Any) -> None:
    """Make the live instances match the manifest, and deliver their tokens."""
    run = _Run("apply", params["output"], params["verbose"])
    sys.exit(_finish(run, lambda: _apply_like(run, params, destroy=False)))


@cli.command()
@_input_options
@_api_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (required without a terminal).")
@click.option("--progress/--no-progress", default=True, help="Show progress on stderr for long runs.")
def destroy(**params: Any) -> None:
    """Delete every instance the manifest's stack owns (and nothing else)."""
    run = _Run("destroy", params["output"], params["verbose"])
    sys.exit(_finish(run, lambda: _apply_like(run, params, destroy=True)))


def _apply_like(run: _Run, params: dict[str, Any], destroy: bool) -> int:
    validated = _validated(run, params)
    with ExitStack() as stack:
        local = stack.enter_context(_local(params))
        stack.enter_context(stop_on_signals(run.stop))
        options = _options(run, params, local)
        if destroy:
            options = replace(options, plan=PlanOptions(destroy=True))
        connection = stack.enter_context(engine.connect(validated, options, run.stop))
        the_plan = engine.plan(validated, connection, options)
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
        return EXIT_OK if result.ok and not the_plan.has_conflicts else EXIT_ERROR


def _confirmed(run: _Run, the_plan: Any, params: dict[str, Any]) -> bool:
    if params["yes"]:
        return True
    count = sum(1 for c in the_plan.changes if c.action == "delete")
    if not sys.stdin.isatty():
        raise UserError(f"destroy would delete {count} instance(s) of stack {the_plan.stack!r} and needs confirmation",
                        hint="pass --yes to confirm when there is no terminal")
    run.reporter.plan(the_plan, "destroy")
    answer = click.prompt(f"Delete {count} instance(s) of stack {the_plan.stack!r}? Type 'yes' to confirm",
                          default="", show_default=False, err=True)
    if answer.strip() != "yes":
        run.reporter.error("destroy", "not confirmed; nothing was deleted")
        return False
    return True


@cli.command()
@_input_options
@_api_options
@click.argument("name", required=False)
@click.option("--format", "fmt", type=click.Choice(["json", "env"]), default="json", show_default=True,
              help="json: the outputs-file document; env: NAME_ID, NAME_ELEMENT, NAME_TOKEN shell lines.")
def output(**params: Any) -> None:
    """Print id, element and token of the declared instances, read from the API."""
    run = _Run("output", params["output"], params["verbose"])

    def body() -> int:
        validated = _validated(run, params)
        with _local(params) as local, stop_on_signals(run.stop):
            options = replace(_options(run, params, local), plan=PlanOptions(destroy=True))
            with engine.connect(validated, options, run.stop) as connection:
                live = engine.read_state(connection, validated.manifest.stack, owned_only=True)
                entries = engine.instance_outputs(validated, None, connection, live)
        selected = engine.select_outputs(entries, validated, params["name"])
        text = format_env(selected) if params["fmt"] == "env" else format_json(selected)
        sys.stdout.write(text)  # the one place tokens are printed: the user asked for them
        sys.stdout.flush()
        return EXIT_OK

    sys.exit(_finish(run, body))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port (0 picks a free one; the URL is printed on stdout).")
@click.option("--db", "db_path", default=".provisioner/emulator.db", show_default=True, help="SQLite file.")
@click.option("--user-secret", envvar="CE_USER_SECRET", help="User secret to accept [env CE_USER_SECRET].")
@click.option("--organization-secret", envvar="CE_ORGANIZATION_SECRET",
              help="Organization secret to accept [env CE_ORGANIZATION_SECRET].")
@click.option("--faults", "fault_text", default=None, metavar="SPEC",
              help="Fault injection, e.g. latency=20,error=0.1,throttle=0.05,retry_after=0.5,reset=0.05,lost=0.05,"
                   "slow=0.02,slow_ms=3000,methods=POST,ratelimit=100,burst=100,seed=42 "
                   "[env PROVISIONER_EMULATOR_FAULTS].")
@click.option("--latency-ms", type=click.FloatRange(0), default=None, help="Added latency on every request.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible faults.")
@click.option("--quiet", is_flag=True, help="Do not log requests on stderr.")
def emulator(**params: Any) -> None:
    """Run the Cloud Elements API emulator on loopback (SQLite persistence, optional fault injection)."""
    from .emulator import Emulator, FaultConfig

    run = _Run("emulator", "text", False)

    def body() -> int:
        if not params["user_secret"] or not params["organization_secret"]:
            raise UserError("the emulator needs the secrets it will accept",
                            hint="set CE_USER_SECRET and CE_ORGANIZATION_SECRET, or pass --user-secret and "
                                 "--organization-secret")
        try:
            faults = FaultConfig.parse(params["fault_text"]) if params["fault_text"] else FaultConfig.from_env()
        except ValueError as exc:
            raise UserError(f"bad fault specification: {exc}", hint="see provisioner emulator --help") from None
        overrides = {k: v for k, v in (("latency_ms", params["latency_ms"]), ("seed", params["seed"])) if v is not None}
        faults = faults.merged(**overrides) if overrides else faults
        directory = os.path.dirname(os.path.abspath(params["db_path"]))
        os.makedirs(directory, exist_ok=True)
        try:
            server = Emulator(params["db_path"], params["user_secret"], params["organization_secret"],
                              host=params["host"], port=params["port"], faults=faults,
                              log_stream=None if params["quiet"] else run.stderr)
        except (ValueError, OSError) as exc:
            raise UserError(f"cannot start the emulator: {exc}",
                            hint="choose a loopback host and a free port") from None
        url = server.start()
        sys.stdout.write(f"{url}\n")
        sys.stdout.flush()
        run.reporter.info(f"emulator listening on {url} (db {params['db_path']}; faults: {faults.describe()}); "
                          "Ctrl-C stops it")
        try:
            with stop_on_signals(run.stop):
                while not run.stop.wait(0.5):
                    pass
        finally:
            server.stop()
        return EXIT_OK

    sys.exit(_finish(run, body))


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's usage errors exit 1 (never 2), bugs write a redacted crash file."""
    # A run builds one large, long-lived object graph (10,000 instances: desired, live, plan) and
    # little cyclic garbage; the default collector thresholds rescan it hundreds of times.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        code = cli.main(args=argv, prog_name="provisioner", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
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
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _crash(exc: BaseException) -> int:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = REDACTOR.redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    fd, path = tempfile.mkstemp(prefix=f"provisioner-crash-{stamp}-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"provisioner {__version__}, python {sys.version.split()[0]}\n{text}")
    message = REDACTOR.redact(f"{type(exc).__name__}: {exc}")
    sys.stderr.write(f"internal error: {message}\nThis is a bug in provisioner. The traceback is in {path}; "
                     "please attach it to a bug report.\n")
    return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    main()
