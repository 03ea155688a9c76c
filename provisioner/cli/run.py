"""What one command invocation shares: its reporter, its streams, its stop flag, and the one place
where errors become messages and exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from ..engine import stages as engine
from ..errors import Interrupted, ProvisionerError, UserError, ValidationFailed
from ..interrupt import StopFlag, stop_on_signals
from .markdown import MarkdownReporter
from .options import Online, Source
from .report import JsonReporter, RedactingWriter, Reporter, TextReporter

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2

# The reporter of each -o/--output value (commands with other formats map theirs to text or json).
REPORTERS: dict[str, Callable[[Any, Any, bool], Reporter]] = {
    "text": TextReporter,
    "json": JsonReporter,
    "markdown": MarkdownReporter,
}


class Run:
    """One command invocation: reporter, redacted stderr and the stop flag."""

    def __init__(self, command: str, output: str, verbose: bool):
        self.command = command
        self.json = output == "json"
        self.reporter = REPORTERS[output](sys.stdout, sys.stderr, verbose)
        self.stderr = RedactingWriter(sys.stderr)
        self.stop = StopFlag()

    def trace(self, line: str) -> None:
        """One whole line per write, so that lines of several threads never interleave; server text
        in it cannot break it (escaped)."""
        self.stderr.write_lines([line])

    def finish(self, body: Callable[[], int]) -> int:
        """Run a command body; map every error to its exit code and a located message."""
        try:
            return body()
        except ValidationFailed as exc:
            self.reporter.problems(self.command, exc.problems)
            return EXIT_ERROR
        except Interrupted as exc:
            self.reporter.error(self.command, f"interrupted by signal {exc.signum}; no new request was started")
            return exc.exit_code
        except UserError as exc:
            where = exc.problem.location.format()
            message = f"{where + ': ' if where else ''}{exc.problem.message}"
            self.reporter.error(self.command, message, exc.problem.hint)
            return EXIT_ERROR
        except ProvisionerError as exc:
            self.reporter.error(self.command, str(exc))
            return EXIT_ERROR

    def exit(self, body: Callable[[], int]) -> None:
        sys.exit(self.finish(body))

    @contextmanager
    def connected(
        self, args: Online, validated: engine.Validated, read_only: bool = False
    ) -> Iterator[tuple[engine.Options, engine.Connection]]:
        """The run's engine options and clients: --local's emulator started, SIGINT/SIGTERM caught."""
        with local_api(args.local) as local, stop_on_signals(self.stop):
            options = args.engine_options(self.trace, local)
            with engine.connect(validated, options, self.stop, read_only=read_only) as connection:
                yield options, connection

    def validated(self, source: Source) -> engine.Validated:
        """Stages 1-3; with --verbose, say in which order the inputs were layered."""
        validated = engine.validate(source.engine_options(self.trace))
        if source.verbose:
            self.trace("inputs, later wins: " + " < ".join(validated.manifest.layers))
        return validated


def local_api(local: bool) -> AbstractContextManager[Any]:
    """The embedded emulator of --local (None without it)."""
    if not local:
        return nullcontext(None)
    from .local import local_api as start

    return start()
