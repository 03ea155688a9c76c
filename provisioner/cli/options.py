"""The command line's options, declared once, and the typed values click builds from them: each command
body receives one frozen value whose fields are its click parameters (``run.command`` builds it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import click

from ..api.client import MAX_ANSWER_BYTES, ClientSettings
from ..engine import stages as engine
from ..engine.apply import ApplySettings
from ..engine.outputs import format_env, format_json
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
    """A command whose line in the command list is its whole first sentence (click would cut it short)."""

    def get_short_help_str(self, limit: int = 45) -> str:
        if self.short_help or not self.help:
            return super().get_short_help_str(limit)
        sentence, end, _ = " ".join(self.help.split("\n\n")[0].split()).partition(". ")
        return sentence + "." if end else sentence


def option(*decls: str, **kw: Any) -> Any:
    """A field that click fills from the option ``decls`` (its help, unless given: HELP's)."""
    return field(metadata={"param": lambda name, formats: click.Option([*decls, name], **kw)})


def argument(**kw: Any) -> Any:
    return field(metadata={"param": lambda name, formats: click.Argument([name], **kw)})


def output_option() -> Any:
    """-o, offering the command's formats, the first by default."""

    def make(name: str, formats: tuple[str, ...]) -> click.Option:
        return click.Option(["-o", "--output", name], type=click.Choice(formats), default=formats[0])

    return field(metadata={"param": make})


def params(kind: type, formats: tuple[str, ...]) -> list[click.Parameter]:
    """The click parameters of a command whose value is ``kind`` (-o offering ``formats``), in the order
    of its fields; an option without a help text takes HELP's."""
    made = [f.metadata["param"](f.name, formats) for f in fields(kind) if "param" in f.metadata]
    for param in made:
        if isinstance(param, click.Option) and param.help is None and not param.hidden:
            long = next(o for o in param.opts if o.startswith("--"))
            keys = [f"{c.__name__} {long}" for c in kind.__mro__] + [long]  # the most specific first
            param.help = HELP[next(k for k in keys if k in HELP)]
    return made


def _shared(value: Any, kind: Any) -> dict[str, Any]:
    """The fields of the dataclass ``kind`` that ``value`` has too, by name."""
    return {f.name: getattr(value, f.name) for f in fields(kind) if hasattr(value, f.name)}


FILE, DIRECTORY, POSITIVE = click.Path(dir_okay=False), click.Path(file_okay=False), click.IntRange(1)


@dataclass(frozen=True)
class Inputs:
    """What every command that reads a manifest takes, besides the manifest."""

    inputs: tuple[str, ...] = option("--inputs", multiple=True, type=FILE)
    sets: tuple[str, ...] = option("--set", multiple=True, metavar="KEY=VALUE")
    schemas: tuple[str, ...] = option("--schemas", multiple=True, type=DIRECTORY)
    max_foreach: int = option("--max-foreach", type=POSITIVE, default=DEFAULT_MAX_FOREACH)
    max_file_bytes: int = option("--max-file-bytes", type=POSITIVE, default=DEFAULT_MAX_BYTES)
    output: str | None = output_option()
    verbose: bool = option("-v", "--verbose", is_flag=True)


@dataclass(frozen=True)
class ValidateArgs(Inputs):
    manifest: tuple[str, ...] = argument(type=FILE, nargs=-1, required=True)

    def source(self, manifest: str) -> Source:
        return Source(manifest=manifest, **_shared(self, Inputs))


@dataclass(frozen=True)
class Source(Inputs):
    manifest: str = argument(type=FILE, required=True)

    def engine_options(self, trace: Callable[[str], None], local: Any = None) -> engine.Options:
        limits = Limits(max_file_bytes=self.max_file_bytes, max_foreach=self.max_foreach)
        return engine.Options(self.manifest, self.inputs, self.sets, self.schemas, limits)


@dataclass(frozen=True)
class Online(Source):
    """A command that reads the API."""

    local: bool = option("--local", is_flag=True)
    parallelism: int = option("--parallelism", type=click.IntRange(1, 256), default=16)
    timeout: float = option("--timeout", type=click.FloatRange(0.1), default=30.0)
    connect_timeout: float = option("--connect-timeout", type=click.FloatRange(0.1), default=5.0)
    deadline: float = option("--deadline", type=click.FloatRange(0.1), default=60.0)
    max_attempts: int = option("--max-attempts", type=POSITIVE, default=10)
    max_retry_time: float = option("--max-retry-time", type=click.FloatRange(0), default=120.0)
    max_rate: float | None = option("--max-rate", type=click.FloatRange(0.1), default=None)
    settle: float | None = option("--settle", type=click.FloatRange(0), default=None)
    max_answer_bytes: int = option("--max-answer-bytes", type=click.IntRange(1024), default=MAX_ANSWER_BYTES)

    @property
    def plan(self) -> PlanOptions:
        return PlanOptions()

    def engine_options(self, trace: Callable[[str], None], local: Any = None) -> engine.Options:
        Selection.of(self.plan.targets, self.plan.excludes)  # a malformed pattern: a usage error, first
        settle = self.settle if self.settle is not None else self.timeout
        return replace(
            super().engine_options(trace),
            local=local,
            client=ClientSettings(read_timeout=self.timeout, **_shared(self, ClientSettings)),
            apply=ApplySettings(parallelism=self.parallelism, settle_seconds=settle),
            plan=self.plan,
            trace=trace if self.verbose else None,
            notice=None if self.verbose else trace,
        )


@dataclass(frozen=True)
class Shaped(Online):
    """A command whose plan the options shape (plan, apply): its fields are ``PlanOptions``'."""

    prune: bool = option("--prune", is_flag=True)
    allow_replace: bool = option("--allow-replace", is_flag=True)
    force: bool = option("--force", is_flag=True)
    adopt: bool = option("--adopt", is_flag=True)
    targets: tuple[str, ...] = option("--target", multiple=True, metavar="PATTERN")
    excludes: tuple[str, ...] = option("--exclude", multiple=True, metavar="PATTERN")
    allow_destroy: tuple[str, ...] = option("--allow-destroy", multiple=True, metavar="NAME")
    reauthenticate: tuple[str, ...] = option("--reauthenticate", multiple=True, metavar="NAME")

    @property
    def plan(self) -> PlanOptions:
        return PlanOptions(**_shared(self, PlanOptions))


@dataclass(frozen=True)
class PlanArgs(Shaped):
    detailed_exitcode: bool = option("--detailed-exitcode", is_flag=True)
    out: str | None = option("--out", type=FILE, metavar="FILE")


@dataclass(frozen=True)
class ApplyArgs(Shaped):
    outputs_path: str | None = option("--outputs", type=FILE)
    yes: bool = option("--auto-approve", "--yes", "-y", is_flag=True)
    progress: bool = option("--progress/--no-progress", default=True, show_default=False)


@dataclass(frozen=True)
class DestroyArgs(Online):
    yes: bool = option("--yes", "-y", "--auto-approve", is_flag=True)
    allow_destroy: tuple[str, ...] = option("--allow-destroy", multiple=True, metavar="NAME")
    progress: bool = option("--progress/--no-progress", default=True, show_default=False)
    outputs_path: None = None

    @property
    def plan(self) -> PlanOptions:
        return PlanOptions(destroy=True, allow_destroy=self.allow_destroy)


OUTPUT_FORMATS = {"json": format_json, "env": format_env}
_OUTPUT_CHOICE = click.Choice(sorted(OUTPUT_FORMATS))


@dataclass(frozen=True)
class OutputArgs(Online):
    output: str | None = option("-o", "--output", type=_OUTPUT_CHOICE, default=None)
    fmt: str | None = option("--format", type=_OUTPUT_CHOICE, hidden=True)  # -o's older spelling, for old scripts
    name: str | None = argument(required=False)

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
    ping: bool = option("--ping", is_flag=True)

    def apply_command(self) -> list[str]:
        """The apply command of this manifest and inputs, for the fixes ``check`` suggests."""
        command = ["provisioner", "apply", self.manifest, *(a for f in self.inputs for a in ("--inputs", f))]
        command += [a for s in self.sets for a in ("--set", s)] + [a for d in self.schemas for a in ("--schemas", d)]
        return command + (["--local"] if self.local else [])


@dataclass(frozen=True)
class ImportArgs(Online):
    out_path: str = option("--out", required=True, type=FILE)
    element: str | None = option("--element", default=None)
    name_glob: str | None = option("--name", default=None, metavar="GLOB")
    force: bool = option("--force", is_flag=True)


@dataclass(frozen=True)
class ShowArgs:
    file: str = argument(type=FILE)
    output: str = output_option()


HELP = {  # each option's help text, by its first long name, or by "CLASS --name" where the Args classes differ
    "--output": "Output format on stdout.",
    "Inputs --verbose": "Print on stderr the order in which the inputs were layered (later wins).",
    "Online --verbose": "Trace every HTTP request on stderr (secrets redacted), and the order the inputs were layered.",
    "CatalogArgs --verbose": "Trace every HTTP request on stderr (secrets redacted).",
    "CatalogArgs --local": "Read the built-in emulator's catalog instead of the API.",
    "CatalogArgs --schemas": "Directory of extra element schemas counted as local (repeatable).",
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
    "PlanArgs --prune": "Also plan the deletion of instances the stack owns that are no longer declared "
    "(apply --prune deletes them).",
    "ApplyArgs --prune": "Delete instances the stack owns that are no longer declared.",
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
    "PlanArgs --out": "Save the plan to FILE (no secret, mode 0600) for 'apply FILE', which executes exactly it.",
    "--outputs": "Write id, element and token of every declared instance to FILE (JSON, mode 0600).",
    "--auto-approve": "Do not ask for confirmation on a terminal.",
    "DestroyArgs --yes": "Do not ask (required without a terminal).",
    "--progress": "Show progress on stderr for long runs.",
    "--ping": "Also call each instance's hub ping with its own token, in parallel (--parallelism).",
    "OutputArgs --output": "json (default): the outputs-file document; "
    "env: NAME_ID, NAME_ELEMENT, NAME_TOKEN shell lines.",
    "ImportArgs --out": "Manifest file to write (same apiVersion, stack and targets as MANIFEST).",
    "--element": "Only instances of this element key.",
    "--name": "Only instances whose name matches GLOB.",
    "ImportArgs --force": "Replace --out FILE if it exists (never the manifest import reads).",
    "--all": "Pull every element the API offers (GET /elements/keys).",
    "PullArgs --out": "Directory to write <key>.json into (use it with --schemas DIR).",
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
    "InitArgs --out": "Manifest to write.",
    "--stack": "Stack name (default: from the manifest's directory name).",
    "InitArgs --schemas": "Directory of extra element schemas (repeatable).",
    "--ci": "Also write a pipeline that validates, plans, applies and reports drift: for GitHub Actions "
    "(in .github/workflows) or GitLab CI (at the top of the repository).",
}
