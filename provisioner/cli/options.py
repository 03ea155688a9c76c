"""The command line's options, declared once, and the typed values click builds from them: each command
body receives one frozen value whose fields are its click parameters (``run.command`` builds it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import click

from ..api.client import MAX_ANSWER_BYTES, ClientSettings
from ..engine import stages as engine
from ..engine.apply import ApplySettings
from ..engine.plan import PlanOptions
from ..engine.targeting import Selection
from ..manifest.load import DEFAULT_MAX_FOREACH, Limits
from ..manifest.yamlload import DEFAULT_MAX_BYTES

FORMATS = ("text", "json")
WITH_MARKDOWN = (*FORMATS, "markdown")
ENV_RENDER = (
    "Environment: the variables the manifest reads as env.NAME (an unset one is an error that names it). "
    "No credentials are needed."
)
_ENV_WIRE = (  # click keeps \b blocks as written; their lines stay under 80 columns
    "  CE_CLIENT_CERT, CE_CLIENT_KEY  client certificate and key (PEM)\n"
    "  HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY  proxies\n"
    "  REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE  CA bundle (default: certifi's)\n"
    "  NO_COLOR                no colour, even on a terminal"
)
ENV_API = (
    "Environment:\n\n\b\n"
    "  CE_USER_SECRET          user secret of the default target\n"
    "  CE_ORGANIZATION_SECRET  organization secret of the default target\n"
    "  CE_API_URL              API base URL of the default target\n"
    "  PROVISIONER_FINGERPRINT_KEY  key of the secret fingerprints\n"
    f"{_ENV_WIRE}\n"
    "  and every variable the manifest reads as env.NAME"
)
ENV_CATALOG = (  # schemas pull and list read no manifest
    "Environment (not read with --local):\n\n\b\n"
    "  CE_USER_SECRET          user secret\n"
    "  CE_ORGANIZATION_SECRET  organization secret\n"
    "  CE_API_URL              API base URL (default: the US production API)\n"
    f"{_ENV_WIRE}"
)
ENV_EMULATOR = (
    "Environment:\n\n\b\n"
    "  CE_USER_SECRET, CE_ORGANIZATION_SECRET  the secrets to accept\n"
    "  PROVISIONER_EMULATOR_FAULTS  fault specification (as --faults)"
)


class Command(click.Command):
    """A command whose line in the command list is its whole first sentence (click would cut it short),
    and whose options without a help text take HELP's."""

    def __init__(self, name: str | None, **attrs: Any):
        super().__init__(name, **attrs)
        for param in self.params:
            if isinstance(param, click.Option) and param.help is None and not param.hidden:
                long = next(o for o in param.opts if o.startswith("--"))
                param.help = HELP.get(f"{name} {long}") or HELP[long]

    def get_short_help_str(self, limit: int = 45) -> str:
        if self.short_help or not self.help:
            return super().get_short_help_str(limit)
        paragraph = " ".join(self.help.split("\n\n")[0].split())
        end = paragraph.find(". ")
        return paragraph if end < 0 else paragraph[: end + 1]


def _shared(value: Any, kind: Any) -> dict[str, Any]:
    """The fields of the dataclass ``kind`` that ``value`` has too, by name."""
    return {f.name: getattr(value, f.name) for f in fields(kind) if hasattr(value, f.name)}


@dataclass(frozen=True)
class Inputs:
    """What every command that reads a manifest takes, besides the manifest."""

    inputs: tuple[str, ...]
    sets: tuple[str, ...]
    schemas: tuple[str, ...]
    max_foreach: int
    max_file_bytes: int
    output: str | None
    verbose: bool

    @property
    def reporter(self) -> str:  # see run.REPORTERS
        return self.output or "text"


@dataclass(frozen=True)
class ValidateArgs(Inputs):
    manifest: tuple[str, ...]

    def source(self, manifest: str) -> Source:
        return Source(manifest=manifest, **_shared(self, Inputs))


@dataclass(frozen=True)
class Source(Inputs):
    manifest: str

    def engine_options(self, trace: Callable[[str], None], local: Any = None) -> engine.Options:
        limits = Limits(max_file_bytes=self.max_file_bytes, max_foreach=self.max_foreach)
        return engine.Options(self.manifest, self.inputs, self.sets, self.schemas, limits)


@dataclass(frozen=True)
class Online(Source):
    """A command that reads the API."""

    local: bool
    parallelism: int
    timeout: float
    connect_timeout: float
    deadline: float
    max_attempts: int
    max_retry_time: float
    max_rate: float | None
    settle: float | None
    max_answer_bytes: int

    @property
    def plan(self) -> PlanOptions:
        return PlanOptions()

    def engine_options(self, trace: Callable[[str], None], local: Any = None) -> engine.Options:
        Selection.of(self.plan.targets, self.plan.excludes)  # a malformed pattern: a usage error, first
        client = ClientSettings(read_timeout=self.timeout, **_shared(self, ClientSettings))
        settle = self.settle if self.settle is not None else self.timeout
        return replace(
            super().engine_options(trace),
            local=local,
            client=client,
            apply=ApplySettings(parallelism=self.parallelism, settle_seconds=settle),
            plan=self.plan,
            trace=trace if self.verbose else None,
            notice=None if self.verbose else trace,
        )


@dataclass(frozen=True)
class Shaped(Online):
    """A command whose plan the options shape (plan, apply): its fields are ``PlanOptions``'."""

    prune: bool
    allow_replace: bool
    force: bool
    adopt: bool
    targets: tuple[str, ...]
    excludes: tuple[str, ...]
    allow_destroy: tuple[str, ...]
    reauthenticate: tuple[str, ...]

    @property
    def plan(self) -> PlanOptions:
        return PlanOptions(**_shared(self, PlanOptions))


@dataclass(frozen=True)
class PlanArgs(Shaped):
    detailed_exitcode: bool
    out: str | None


@dataclass(frozen=True)
class ApplyArgs(Shaped):
    outputs_path: str | None
    yes: bool
    progress: bool


@dataclass(frozen=True)
class DestroyArgs(Online):
    yes: bool
    allow_destroy: tuple[str, ...]
    progress: bool
    outputs_path: None = None

    @property
    def plan(self) -> PlanOptions:
        return PlanOptions(destroy=True, allow_destroy=self.allow_destroy)


@dataclass(frozen=True)
class OutputArgs(Online):
    fmt: str | None  # --format, the older spelling of -o
    name: str | None

    def __post_init__(self) -> None:
        if self.output and self.fmt and self.output != self.fmt:
            raise click.UsageError(
                f"-o {self.output} and --format {self.fmt} disagree; --format is the older spelling of -o: give only -o"
            )

    @property
    def format(self) -> str:
        return self.output or self.fmt or "json"


@dataclass(frozen=True)
class CheckArgs(Online):
    ping: bool

    def apply_command(self) -> list[str]:
        """The apply command of this manifest and inputs, for the fixes ``check`` suggests."""
        command = ["provisioner", "apply", self.manifest, *(a for f in self.inputs for a in ("--inputs", f))]
        command += [a for s in self.sets for a in ("--set", s)] + [a for d in self.schemas for a in ("--schemas", d)]
        return command + (["--local"] if self.local else [])


@dataclass(frozen=True)
class ImportArgs(Online):
    out_path: str
    element: str | None
    name_glob: str | None
    force: bool


@dataclass(frozen=True)
class CatalogArgs:
    """schemas pull and schemas list."""

    local: bool
    schemas: tuple[str, ...]
    reporter: str  # -o
    verbose: bool
    keys: tuple[str, ...] = ()
    all_keys: bool = False
    out_dir: str = "schemas"


@dataclass(frozen=True)
class ShowArgs:
    file: str
    reporter: str  # -o
    verbose: bool = False


@dataclass(frozen=True)
class InitArgs:
    elements: tuple[str, ...]
    out: str
    stack: str | None
    schemas: tuple[str, ...]
    ci: str | None
    reporter: str = "text"
    verbose: bool = False


@dataclass(frozen=True)
class EmulatorArgs:
    host: str
    port: int
    db_path: str
    user_secret: str | None
    organization_secret: str | None
    fault_text: str | None
    latency_ms: float | None
    seed: int | None
    quiet: bool
    reporter: str = "text"
    verbose: bool = False


HELP = {  # each option's help text, by its first long name, or by "COMMAND --name" where commands differ
    "--output": "Output format on stdout.",
    "--inputs": "YAML file of inputs, merged over the manifest's inputs (repeatable; later wins).",
    "--set": "Set one input (dotted keys nest; the value is read as a YAML scalar). Repeatable.",
    "--schemas": "Directory of extra element schemas (<element>.json). Repeatable.",
    "--max-foreach": "Refuse a forEach that expands past this many items.",
    "--max-file-bytes": "Refuse manifest, inputs and template files larger than this.",
    "--local": "Use an embedded emulator whose state persists in ./.provisioner/ (no account needed).",
    "--parallelism": "Requests in flight at once (the shared rate budget still slows down on 429).",
    "--timeout": "Read timeout of each request, in seconds.",
    "--connect-timeout": "Connect timeout of each request, in seconds.",
    "--deadline": "Whole-request bound (connect, send, complete answer), in seconds, per attempt.",
    "--max-attempts": "Attempts per request, first included (GET, PUT, PATCH, DELETE retry on 429/5xx/network).",
    "--max-retry-time": "Give up retrying one request after this many seconds.",
    "--max-rate": "Never exceed this many requests per second (default: no ceiling until a 429).",
    "--settle": "Seconds to wait before looking up a create whose response was lost (default: --timeout).",
    "--max-answer-bytes": "Refuse an API answer larger than this once decompressed.",
    "plan --prune": "Also plan the deletion of instances the stack owns that are no longer declared "
    "(apply --prune deletes them).",
    "apply --prune": "Delete instances the stack owns that are no longer declared.",
    "--allow-replace": "Allow replacing an instance whose element changed (its token changes).",
    "--force": "Allow --prune with a manifest that declares no instance.",
    "--adopt": "Take over unmanaged instances (no provisioner:stack= tag) with declared names, "
    "keeping their ids and tokens.",
    "--target": "Only the declared instances matching PATTERN: a name glob, element=KEY or tag=T (repeatable). "
    "Prune and duplicate clean-up stay inside the selection.",
    "--exclude": "Leave out the declared instances matching PATTERN (same forms as --target; repeatable).",
    "--allow-destroy": "Lift the protection (protect: true) of instance NAME for this run (repeatable).",
    "--reauthenticate": "Send the declared credentials of instance NAME again for the provider to check "
    "(PUT ?reAuthenticate=true; id and token kept). Repeatable; not for OAuth instances.",
    "--detailed-exitcode": "Exit 2 when changes are pending (0: none, 1: error).",
    "plan --out": "Save the plan to FILE (no secret, mode 0600) for 'apply FILE', which executes exactly it.",
    "--outputs": "Write id, element and token of every declared instance to FILE (JSON, mode 0600).",
    "--auto-approve": "Do not ask for confirmation on a terminal.",
    "destroy --yes": "Do not ask (required without a terminal).",
    "--progress": "Show progress on stderr for long runs.",
    "--ping": "Also call each instance's hub ping with its own token, in parallel (--parallelism).",
    "output --output": "json (default): the outputs-file document; env: NAME_ID, NAME_ELEMENT, NAME_TOKEN shell lines.",
    "import --out": "Manifest file to write (same apiVersion, stack and targets as MANIFEST).",
    "--element": "Only instances of this element key.",
    "--name": "Only instances whose name matches GLOB.",
    "import --force": "Replace --out FILE if it exists (never the manifest import reads).",
    "--all": "Pull every element the API offers (GET /elements/keys).",
    "pull --out": "Directory to write <key>.json into (use it with --schemas DIR).",
    "--host": "Loopback address to listen on.",
    "--port": "Port (0 picks a free one; the URL is printed on stdout).",
    "--db": "SQLite file.",
    "--user-secret": "User secret to accept (default: $CE_USER_SECRET).",
    "--organization-secret": "Organization secret to accept (default: $CE_ORGANIZATION_SECRET).",
    "--faults": "Fault injection: comma-separated NAME=VALUE pairs, for example error=0.1,seed=42. Names: "
    "latency, jitter, error, throttle, retry_after, reset, lost, slow, slow_ms, ratelimit, burst, "
    "methods, seed (default: $PROVISIONER_EMULATOR_FAULTS).",
    "--latency-ms": "Added latency on every request.",
    "--seed": "Seed for reproducible faults.",
    "--quiet": "Do not log requests on stderr.",
    "init --out": "Manifest to write.",
    "--stack": "Stack name (default: from the manifest's directory name).",
    "init --schemas": "Directory of extra element schemas (repeatable).",
    "--ci": "Also write a pipeline that validates, plans, applies and reports drift: for GitHub Actions "
    "(in .github/workflows) or GitLab CI (at the top of the repository).",
}


def options(*decorators: Callable) -> Callable:
    """The click decorators given, as one (in --help, options appear in the order given)."""

    def apply(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def output_option(*formats: str) -> Callable:
    return click.option("-o", "--output", "reporter", type=click.Choice(formats), default=formats[0], show_default=True)


def input_options(*formats: str, api: bool = True, many: bool = False, output: Callable | None = None) -> Callable:
    """The options of every command that reads a manifest: -o offers ``formats`` (text and json by
    default), or is ``output``; ``api``: the command reads the API (-v traces its requests)."""
    verbose = (
        "Trace every HTTP request on stderr (secrets redacted), and the order the inputs were layered."
        if api
        else "Print on stderr the order in which the inputs were layered (later wins)."
    )
    formats = formats or FORMATS
    path, positive = click.Path(dir_okay=False), click.IntRange(1)
    return options(
        click.argument("manifest", type=path, nargs=-1 if many else 1, required=True),
        click.option("--inputs", multiple=True, type=path),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE"),
        click.option("--schemas", multiple=True, type=click.Path(file_okay=False)),
        click.option("--max-foreach", type=positive, default=DEFAULT_MAX_FOREACH, show_default=True),
        click.option("--max-file-bytes", type=positive, default=DEFAULT_MAX_BYTES, show_default=True),
        output or click.option("-o", "--output", type=click.Choice(formats), default=formats[0], show_default=True),
        click.option("-v", "--verbose", is_flag=True, help=verbose),
    )


API_OPTIONS = options(
    click.option("--local", is_flag=True),
    click.option("--parallelism", type=click.IntRange(1, 256), default=16, show_default=True),
    click.option("--timeout", type=click.FloatRange(0.1), default=30.0, show_default=True),
    click.option("--connect-timeout", type=click.FloatRange(0.1), default=5.0, show_default=True),
    click.option("--deadline", type=click.FloatRange(0.1), default=60.0, show_default=True),
    click.option("--max-attempts", type=click.IntRange(1), default=10, show_default=True),
    click.option("--max-retry-time", type=click.FloatRange(0), default=120.0, show_default=True),
    click.option("--max-rate", type=click.FloatRange(0.1), default=None),
    click.option("--settle", type=click.FloatRange(0), default=None),
    click.option("--max-answer-bytes", type=click.IntRange(1024), default=MAX_ANSWER_BYTES, show_default=True),
)
ALLOW_DESTROY = click.option("--allow-destroy", multiple=True, metavar="NAME")
PROGRESS = click.option("--progress/--no-progress", default=True)
PLAN_OPTIONS = options(  # the options that shape a plan
    click.option("--prune", is_flag=True),
    click.option("--allow-replace", is_flag=True),
    click.option("--force", is_flag=True),
    click.option("--adopt", is_flag=True),
    click.option("--target", "targets", multiple=True, metavar="PATTERN"),
    click.option("--exclude", "excludes", multiple=True, metavar="PATTERN"),
    ALLOW_DESTROY,
    click.option("--reauthenticate", multiple=True, metavar="NAME"),
)
CATALOG_OPTIONS = options(  # schemas pull and schemas list
    click.option("--local", is_flag=True, help="Read the built-in emulator's catalog instead of the API."),
    click.option(
        "--schemas",
        multiple=True,
        type=click.Path(file_okay=False),
        help="Directory of extra element schemas counted as local (repeatable).",
    ),
    output_option(*FORMATS),
    click.option("-v", "--verbose", is_flag=True, help="Trace every HTTP request on stderr (secrets redacted)."),
)
