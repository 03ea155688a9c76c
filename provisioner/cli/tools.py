"""The commands around the manifest: element schemas from the API, the emulator, the manifest's schema."""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import click

from ..errors import UserError, ValidationFailed
from ..interrupt import stop_on_signals
from ..manifest.load import manifest_schema_text
from .local import local_api
from .options import DIRECTORY, ENV_CATALOG, ENV_EMULATOR, Command, argument, option, output_option
from .run import EXIT_OK, Run, command


@dataclass(frozen=True, kw_only=True)
class CatalogArgs:
    """schemas list; schemas pull declares the fields that are not options here."""

    keys: tuple[str, ...] = ()
    all_keys: bool = False
    out_dir: str = "schemas"
    local: bool = option("--local", is_flag=True)
    schemas: tuple[str, ...] = option("--schemas", multiple=True, type=DIRECTORY)
    output: str = output_option()
    verbose: bool = option("-v", "--verbose", is_flag=True)


@dataclass(frozen=True, kw_only=True)
class PullArgs(CatalogArgs):
    keys: tuple[str, ...] = argument(nargs=-1)
    all_keys: bool = option("--all", is_flag=True)
    out_dir: str = option("--out", default="schemas", type=DIRECTORY)


@contextmanager
def _catalog(run: Run, args: CatalogArgs) -> Iterator[Any]:
    from ..api import pull
    from ..manifest.targets import local_target

    with local_api(args.local) as local:
        target = pull.env_target(os.environ) if local is None else local_target("default", **asdict(local))
        with pull.reader(target, run.trace if args.verbose else None) as client:
            yield client


@command(PullArgs, "pull", epilog=ENV_CATALOG)
def schemas_pull(run: Run, args: PullArgs) -> int:
    """Write one JSON Schema per element KEY from the API's definitions (stable: a second pull changes nothing)."""
    from ..api import pull

    with _catalog(run, args) as client:
        pulled = pull.pull(client, list(args.keys), args.all_keys, args.out_dir)
    lines = [f"{'wrote' if p.changed else 'unchanged'} {p.path}" for p in pulled]
    data = {"schemas": [{"element": p.key, "path": p.path, "changed": p.changed} for p in pulled]}
    run.reporter.document(run.command, data, lines)
    return EXIT_OK


@command(CatalogArgs, "list", epilog=ENV_CATALOG)
def schemas_list(run: Run, args: CatalogArgs) -> int:
    """Print the element keys the API offers, and which have a local schema (built in or --schemas)."""
    from ..api import pull
    from ..manifest.elements import ElementRegistry

    registry = ElementRegistry.load(args.schemas)
    if registry.problems:
        raise ValidationFailed(registry.problems)
    with _catalog(run, args) as client:
        keys = pull.listing(client, registry.keys())
    lines = [f"{key}{'  (local schema)' if local else ''}" for key, local in keys]
    data = {"elements": [{"key": key, "localSchema": local} for key, local in keys]}
    run.reporter.document(run.command, data, lines)
    return EXIT_OK


@click.group(commands=[schemas_pull, schemas_list], epilog=ENV_CATALOG)
def schemas() -> None:
    """Element schemas written from the API's own element definitions."""


@dataclass(frozen=True)
class EmulatorArgs:
    host: str = option("--host", default="127.0.0.1")
    port: int = option("--port", type=click.IntRange(0, 65535), default=8080)
    db_path: str = option("--db", default=".provisioner/emulator.db")
    user_secret: str | None = option("--user-secret", envvar="CE_USER_SECRET")
    organization_secret: str | None = option("--organization-secret", envvar="CE_ORGANIZATION_SECRET")
    fault_text: str | None = option("--faults", default=None, metavar="SPEC")
    latency_ms: float | None = option("--latency-ms", type=click.FloatRange(0), default=None)
    seed: int | None = option("--seed", type=int, default=None)
    quiet: bool = option("--quiet", is_flag=True)


@command(EmulatorArgs, epilog=ENV_EMULATOR)
def emulator(run: Run, args: EmulatorArgs) -> int:
    """Run the Cloud Elements API emulator on loopback (SQLite persistence, optional fault injection)."""
    from ..emulator import Emulator, FaultConfig

    if not args.user_secret or not args.organization_secret:
        raise UserError(
            "the emulator needs the secrets it will accept",
            hint="set CE_USER_SECRET and CE_ORGANIZATION_SECRET, or pass --user-secret and --organization-secret",
        )
    try:
        faults = FaultConfig.parse(args.fault_text) if args.fault_text else FaultConfig.from_env()
    except ValueError as exc:
        raise UserError(f"bad fault specification: {exc}", hint="see provisioner emulator --help") from None
    faults = faults.merged(latency_ms=args.latency_ms, seed=args.seed)  # None: not given
    try:
        if args.db_path != ":memory:":  # a new directory 0700, the file 0600 before SQLite opens it: it may hold tokens
            os.makedirs(os.path.dirname(os.path.abspath(args.db_path)), mode=0o700, exist_ok=True)
            os.close(os.open(args.db_path, os.O_WRONLY | os.O_CREAT, 0o600))  # SQLite's journal files get its mode
        server = Emulator(
            args.db_path,
            args.user_secret,
            args.organization_secret,
            host=args.host,
            port=args.port,
            faults=faults,
            log_stream=None if args.quiet else run.stderr,
        )
        url = server.start()
    except (ValueError, OSError, sqlite3.Error) as exc:
        raise _emulator_start_error(exc, args) from None
    sys.stdout.write(f"{url}\n")
    sys.stdout.flush()
    run.reporter.info(f"emulator listening on {url} (db {args.db_path}; faults: {faults.describe()}); Ctrl-C stops it")
    try:
        with stop_on_signals(run.stop):
            while not run.stop.wait(0.5):
                pass
    finally:
        server.stop()
    return EXIT_OK


def _emulator_start_error(exc: Exception, args: EmulatorArgs) -> UserError:
    """A located error for an emulator that cannot start: port in use, bad host, unusable db."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return UserError(
            f"cannot start the emulator: port {args.port} on {args.host} is already in use",
            hint="stop what listens there, choose another --port, or pass --port 0 to pick a free one",
        )
    if isinstance(exc, sqlite3.Error):
        return UserError(
            f"cannot start the emulator: database {args.db_path}: {exc}",
            hint="give a path to a writable SQLite file with --db",
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return UserError(
        f"cannot start the emulator on {args.host}:{args.port}: {reason}",
        hint="choose a loopback host and a free port (--port 0 picks one)",
    )


@click.command(cls=Command)
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


COMMANDS = (schemas, emulator, schema)
