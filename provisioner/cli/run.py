"""What one command invocation shares: its reporter, its streams, its stop flag, and the one place
where errors become messages and exit codes."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import click

from ..engine import stages as engine
from ..engine.plan import check_reauthenticate
from ..errors import Interrupted, ProvisionerError, UserError, ValidationFailed
from ..interrupt import StopFlag, stop_on_signals
from .local import local_api
from .markdown import MarkdownReporter
from .options import FORMATS, Command, Online, Source, params
from .report import JsonReporter, RedactingWriter, TextReporter

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2

# The reporter of each -o value; any other (text, render's yaml, output's env) prints text.
REPORTERS: dict[str, type[JsonReporter | TextReporter]] = {"json": JsonReporter, "markdown": MarkdownReporter}


A = TypeVar("A")


class Run:
    """One command invocation: reporter, redacted stderr and the stop flag."""

    def __init__(self, command: str, output: str, verbose: bool):
        self.command = command
        self.reporter = REPORTERS.get(output, TextReporter)(sys.stdout, sys.stderr, verbose)
        self.stderr = RedactingWriter(sys.stderr)
        self.stop = StopFlag()

    def trace(self, line: str) -> None:
        """One whole line per write (lines of several threads never interleave), escaped."""
        self.stderr.write_lines([line])

    def finish(self, body: Callable[[], int]) -> int:
        """Run a command body; every error becomes its exit code and a located message."""
        try:
            return body()
        except ValidationFailed as exc:
            self.reporter.problems(self.command, exc.problems)
            return EXIT_ERROR
        except Interrupted as exc:
            self.reporter.error(self.command, f"interrupted by signal {exc.signum}; no new request was started")
            return exc.exit_code
        except UserError as exc:  # its located message, and its hint apart
            self.reporter.error(self.command, replace(exc.problem, hint=None).format(), exc.problem.hint)
            return EXIT_ERROR
        except ProvisionerError as exc:
            self.reporter.error(self.command, str(exc))
            return EXIT_ERROR

    @contextmanager
    def connected(
        self, args: Online, read_only: bool = False
    ) -> Iterator[tuple[engine.Validated, engine.Options, engine.Connection]]:
        """Stages 1-3, then the run's clients: --reauthenticate checked before any request, --local's
        emulator started, SIGINT/SIGTERM caught."""
        validated = self.validated(args)
        check_reauthenticate(validated.desired, validated.registry, args.plan)
        with local_api(args.local) as local, stop_on_signals(self.stop):
            options = args.engine_options(self.trace, local)
            with engine.connect(validated, options, self.stop, read_only=read_only) as connection:
                yield validated, options, connection

    def validated(self, source: Source) -> engine.Validated:
        """Stages 1-3; with --verbose, say in which order the inputs were layered."""
        validated = engine.validate(source.engine_options(self.trace))
        if source.verbose:
            self.trace("inputs, later wins: " + " < ".join(validated.manifest.layers))
        return validated


def command(
    kind: type[A], name: str | None = None, formats: tuple[str, ...] = FORMATS, **attrs: Any
) -> Callable[[Callable[[Run, A], int]], click.Command]:
    """A click command with the fields of ``kind`` as parameters (-o offers ``formats``); its body takes
    them as one typed value, with the invocation's ``Run`` (named by its path), and returns the exit code."""

    def wrap(body: Callable[[Run, A], int]) -> click.Command:
        @functools.wraps(body)
        def callback(**values: Any) -> None:
            args = kind(**values)  # its -o (the reporter's name) and -v, if it has them, tell the Run
            path = click.get_current_context().command_path.partition(" ")[2]
            run = Run(path, values.get("output") or "text", values.get("verbose", False))
            sys.exit(run.finish(lambda: body(run, args)))

        return click.command(name, cls=Command, params=params(kind, formats), **attrs)(callback)

    return wrap
