"""The command line's group and entry point. Exit codes are a contract, the same for every command
(docs/commands.md, Exit codes): a usage error exits 1, never 2.
"""

from __future__ import annotations

import datetime
import gc
import os
import sys
import tempfile
import traceback

import click

from .. import __version__
from ..interrupt import exit_process
from ..secret import REDACTOR, escape
from . import commands, tools
from .init import init
from .run import EXIT_ERROR, EXIT_OK


@click.group(
    commands=[*commands.COMMANDS, init, *tools.COMMANDS],
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110, "show_default": True},
    epilog="Each command's --help names the environment variables it reads. Shell completion: "
    'eval "$(_PROVISIONER_COMPLETE=bash_source provisioner)" (zsh_source, fish_source).',
)
@click.version_option(__version__, prog_name="provisioner")
def cli() -> None:
    """Declare Cloud Elements element instances in a YAML manifest; validate, plan, apply and destroy them."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: a bug writes a redacted crash file."""
    # A run builds one large, long-lived object graph (10,000 instances: desired, live, plan) and
    # little cyclic garbage; the default collector thresholds rescan it hundreds of times.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        code = cli.main(args=argv, prog_name="provisioner", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help(), err=True)
        code = EXIT_ERROR
    except click.ClickException as exc:  # a usage error names its command's --help
        hint = f" (hint: see '{exc.ctx.command_path} --help')" if isinstance(exc, click.UsageError) and exc.ctx else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        code = EXIT_ERROR
    except click.exceptions.Abort as exc:  # click turns Ctrl-C (outside apply's own handler) into Abort
        interrupted = isinstance(exc.__context__, KeyboardInterrupt)
        click.echo("interrupted" if interrupted else "aborted", err=True)
        code = 130 if interrupted else EXIT_ERROR
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - a bug: one line, traceback to a file
        code = _crash(exc)
    exit_process(code if isinstance(code, int) else EXIT_OK)


def _crash(exc: BaseException) -> int:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = escape(REDACTOR.redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))), "\n")
    fd, path = tempfile.mkstemp(prefix=f"provisioner-crash-{stamp}-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"provisioner {__version__}, python {sys.version.split()[0]}\n{text}")
    message = escape(REDACTOR.redact(f"{type(exc).__name__}: {exc}"))
    sys.stderr.write(
        f"internal error: {message}\nThis is a bug in provisioner. The traceback is in {path}; "
        "please attach it to a bug report.\n"
    )
    return EXIT_ERROR
