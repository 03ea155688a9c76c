"""The command line's options, declared once, and the typed values click builds from them.

Each command's callback receives one frozen value (``Source`` for offline commands, ``Online`` for
the ones that read the API, ``PlanArgs``, ``ApplyArgs``, ...) built from its click parameters by
``parsed``: the command bodies never read a dict of parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from ..api.client import ClientSettings
from ..engine.plan import PlanOptions
from ..manifest.load import DEFAULT_MAX_FOREACH, Limits
from ..manifest.yamlload import DEFAULT_MAX_BYTES

FORMATS = ("text", "json")
ENV_RENDER = (
    "Environment: the variables the manifest reads as env.NAME (an unset one is an error that names it). "
    "No credentials are needed."
)
ENV_API = (  # click keeps \b blocks as written; their lines stay under 80 columns
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


class Command(click.Command):
    """A command whose line in the command list is its whole first sentence (click would cut it short)."""

    def get_short_help_str(self, limit: int = 45) -> str:
        if self.short_help or not self.help:
            return super().get_short_help_str(limit)
        paragraph = " ".join(self.help.split("\n\n")[0].split())
        end = paragraph.find(". ")
        return paragraph if end < 0 else paragraph[: end + 1]


class Group(click.Group):
    command_class = Command


# -- the typed values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where the manifest and its inputs come from, and how to report: every command that reads one."""

    manifest: str
    inputs: tuple[str, ...]
    sets: tuple[str, ...]
    schemas: tuple[str, ...]
    limits: Limits
    output: str
    verbose: bool

    @classmethod
    def of(cls, p: dict[str, Any]) -> Source:
        limits = Limits(max_file_bytes=p["max_file_bytes"], max_foreach=p["max_foreach"])
        return cls(p["manifest"], tuple(p["inputs"]), tuple(p["sets"]), tuple(p["schemas"]), limits, *_report(p))


@dataclass(frozen=True)
class Online:
    """A command that reads the API: its manifest, the network settings and the plan's options."""

    source: Source
    local: bool
    client: ClientSettings
    settle: float  # --settle, else --timeout
    plan: PlanOptions = PlanOptions()

    @classmethod
    def of(cls, p: dict[str, Any]) -> Online:
        client = ClientSettings(
            connect_timeout=p["connect_timeout"],
            read_timeout=p["timeout"],
            deadline=p["deadline"],
            max_attempts=p["max_attempts"],
            max_retry_time=p["max_retry_time"],
            parallelism=p["parallelism"],
            max_rate=p["max_rate"],
        )
        plan = PlanOptions(
            prune=p.get("prune", False),
            allow_replace=p.get("allow_replace", False),
            force=p.get("force", False),
            adopt=p.get("adopt", False),
            targets=tuple(p.get("targets", ())),
            excludes=tuple(p.get("excludes", ())),
            allow_destroy=tuple(p.get("allow_destroy", ())),
        )
        settle = p["settle"] if p["settle"] is not None else p["timeout"]
        return cls(Source.of(p), p["local"], client, settle, plan)


@dataclass(frozen=True)
class Validate:
    manifests: tuple[str, ...]
    source: Source  # the settings shared by every manifest; its manifest is the first

    @classmethod
    def of(cls, p: dict[str, Any]) -> Validate:
        return cls(tuple(p["manifest"]), Source.of({**p, "manifest": p["manifest"][0]}))


@dataclass(frozen=True)
class PlanArgs:
    online: Online
    detailed_exitcode: bool
    out: str | None

    @classmethod
    def of(cls, p: dict[str, Any]) -> PlanArgs:
        return cls(Online.of(p), p["detailed_exitcode"], p["out"])


@dataclass(frozen=True)
class ApplyArgs:
    """apply and destroy."""

    online: Online
    progress: bool
    outputs_path: str | None = None  # apply
    yes: bool = False  # destroy

    @classmethod
    def of(cls, p: dict[str, Any]) -> ApplyArgs:
        return cls(Online.of(p), p["progress"], p.get("outputs_path"), p.get("yes", False))


@dataclass(frozen=True)
class OutputArgs:
    online: Online
    format: str  # json or env
    name: str | None

    @classmethod
    def of(cls, p: dict[str, Any]) -> OutputArgs:
        """-o, or the older --format; both at once must agree. Errors are JSON only when -o json is given."""
        chosen, older = p["output"], p["fmt"]
        if chosen and older and chosen != older:
            raise click.UsageError(
                f"-o {chosen} and --format {older} disagree; --format is the older spelling of -o: give only -o"
            )
        online = Online.of({**p, "output": "json" if chosen == "json" else "text"})
        return cls(online, chosen or older or "json", p["name"])


@dataclass(frozen=True)
class ImportArgs:
    online: Online
    out_path: str
    element: str | None
    name_glob: str | None

    @classmethod
    def of(cls, p: dict[str, Any]) -> ImportArgs:
        return cls(Online.of(p), p["out_path"], p["element"], p["name_glob"])


@dataclass(frozen=True)
class RenderArgs:
    source: Source  # its output is the reporter's: json, or text for yaml
    format: str  # yaml or json

    @classmethod
    def of(cls, p: dict[str, Any]) -> RenderArgs:
        return cls(Source.of({**p, "output": "json" if p["output"] == "json" else "text"}), p["output"])


@dataclass(frozen=True)
class CatalogArgs:
    """schemas pull and schemas list."""

    local: bool
    schemas: tuple[str, ...]
    output: str
    verbose: bool
    keys: tuple[str, ...] = ()
    all_keys: bool = False
    out_dir: str = "schemas"

    @classmethod
    def of(cls, p: dict[str, Any]) -> CatalogArgs:
        pull = (tuple(p["keys"]), p["all_keys"], p["out_dir"]) if "keys" in p else ()
        return cls(p["local"], tuple(p["schemas"]), *_report(p), *pull)


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

    @classmethod
    def of(cls, p: dict[str, Any]) -> EmulatorArgs:
        return cls(**p)


def _report(p: dict[str, Any]) -> tuple[str, bool]:
    return p["output"], p["verbose"]


T = TypeVar("T")


def parsed(build: Callable[[dict[str, Any]], T]) -> Callable[[Callable[[T], None]], Callable[..., None]]:
    """Give a click callback one typed value, built by ``build`` from its parameters."""

    def wrap(body: Callable[[T], None]) -> Callable[..., None]:
        @functools.wraps(body)
        def callback(**params: Any) -> None:
            body(build(params))

        return callback

    return wrap


# -- the options -----------------------------------------------------------------------------------


def _apply(f: Callable, options: list[Callable]) -> Callable:
    for option in reversed(options):
        f = option(f)
    return f


def _output_option(formats: tuple[str, ...]) -> Callable:
    help_text = "Output format on stdout."
    choice = click.Choice(list(formats))
    return click.option("-o", "--output", "output", type=choice, default=formats[0], show_default=True, help=help_text)


def input_options(f: Callable | None = None, output: Any = None, *, api: bool = True, many: bool = False) -> Callable:
    """The options of every command that reads a manifest; ``output`` is the -o option, or the
    tuple of formats it offers (text and json by default). Without ``f``, a decorator with these
    settings: ``@input_options(api=False, many=True)``."""
    if f is None:
        return lambda g: input_options(g, output, api=api, many=many)
    if output is None or isinstance(output, tuple):
        output = _output_option(output or FORMATS)
    verbose_help = (
        "Trace every HTTP request on stderr (secrets redacted), and the order the inputs were layered."
        if api
        else "Print on stderr the order in which the inputs were layered (later wins)."
    )
    path = click.Path(dir_okay=False)
    return _apply(
        f,
        [
            click.argument("manifest", type=path, nargs=-1 if many else 1, required=True),
            click.option(
                "--inputs",
                "inputs",
                multiple=True,
                type=path,
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
        ],
    )


def _number(name: str, kind: click.ParamType, default: Any, text: str, show: bool = True) -> Callable:
    return click.option(name, type=kind, default=default, show_default=show, help=text)


def api_options(f: Callable) -> Callable:
    local_help = "Use an embedded emulator whose state persists in ./.provisioner/ (no account needed)."
    return _apply(
        f,
        [
            click.option("--local", is_flag=True, help=local_help),
            _number(
                "--parallelism",
                click.IntRange(1, 256),
                16,
                "Requests in flight at once (the shared rate budget still slows down on 429).",
            ),
            _number("--timeout", click.FloatRange(0.1), 30.0, "Read timeout of each request, in seconds."),
            _number("--connect-timeout", click.FloatRange(0.1), 5.0, "Connect timeout of each request, in seconds."),
            _number(
                "--deadline",
                click.FloatRange(0.1),
                60.0,
                "Whole-request bound (connect, send, complete answer), in seconds, per attempt.",
            ),
            _number(
                "--max-attempts",
                click.IntRange(1),
                10,
                "Attempts per request, first included (GET, PUT, PATCH, DELETE retry on 429/5xx/network).",
            ),
            _number(
                "--max-retry-time", click.FloatRange(0), 120.0, "Give up retrying one request after this many seconds."
            ),
            _number(
                "--max-rate",
                click.FloatRange(0.1),
                None,
                "Never exceed this many requests per second (default: no ceiling until a 429).",
                show=False,
            ),
            _number(
                "--settle",
                click.FloatRange(0),
                None,
                "Seconds to wait before looking up a create whose response was lost (default: --timeout).",
                show=False,
            ),
        ],
    )


def plan_options(f: Callable | None = None, *, planning: bool = False) -> Callable:
    """The options that shape a plan; ``planning``: worded for plan, which deletes nothing itself."""
    if f is None:
        return lambda g: plan_options(g, planning=planning)
    prune = (
        "Also plan the deletion of instances the stack owns that are no longer declared (apply --prune deletes them)."
        if planning
        else "Delete instances the stack owns that are no longer declared."
    )
    return _apply(
        f,
        [
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
            allow_destroy_option(),
        ],
    )


def allow_destroy_option() -> Callable:
    return click.option(
        "--allow-destroy",
        "allow_destroy",
        multiple=True,
        metavar="NAME",
        help="Lift the protection (protect: true) of instance NAME for this run (repeatable).",
    )


def progress_option() -> Callable:
    return click.option("--progress/--no-progress", default=True, help="Show progress on stderr for long runs.")


def output_format_options(formats: tuple[str, ...]) -> Callable[[Callable], Callable]:
    """``provisioner output``'s -o (json or env), and --format, its older hidden spelling."""
    choice = click.Choice(sorted(formats))
    older = "Same as -o (kept for scripts written before -o env)."
    newer = "json (default): the outputs-file document; env: NAME_ID, NAME_ELEMENT, NAME_TOKEN shell lines."
    return lambda f: input_options(
        click.option("--format", "fmt", type=choice, default=None, hidden=True, help=older)(f),
        click.option("-o", "--output", "output", type=choice, default=None, help=newer),
    )


def catalog_options(f: Callable) -> Callable:
    return _apply(
        f,
        [
            click.option("--local", is_flag=True, help="Read the built-in emulator's catalog instead of the API."),
            click.option(
                "--schemas",
                "schemas",
                multiple=True,
                type=click.Path(file_okay=False),
                help="Directory of extra element schemas counted as local (repeatable).",
            ),
            _output_option(FORMATS),
            click.option(
                "-v", "--verbose", is_flag=True, help="Trace every HTTP request on stderr (secrets redacted)."
            ),
        ],
    )
