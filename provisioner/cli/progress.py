"""Progress of long applies, on stderr only: a live bar on a terminal; without one (CI logs), a plain
line every few seconds, none at all for shorter runs."""

from __future__ import annotations

import time
from typing import IO, Any

from ..engine.apply import ChangeResult, Status


class ProgressReporter:
    interval = 5.0  # seconds between two plain lines

    def __init__(self, stream: IO[str], total: int, label: str, enabled: bool = True):
        self.stream = stream
        self.total = total
        self.label = label
        self.done = 0
        self.errors = 0
        self.started = time.monotonic()
        self._last_line = self.started
        self._bar: Any = None  # a rich Progress, imported only when there is a terminal to draw on
        self._task: Any = None
        self.enabled = enabled and total > 0

    def __enter__(self) -> ProgressReporter:
        if self.enabled and self.stream.isatty():
            from rich import progress as rich
            from rich.console import Console

            self._bar = rich.Progress(
                rich.TextColumn("{task.description}"),
                rich.BarColumn(),
                rich.MofNCompleteColumn(),
                rich.TaskProgressColumn(),
                rich.TextColumn("{task.fields[rate]:.0f}/s"),
                rich.TextColumn("[red]{task.fields[errors]} errors"),
                rich.TimeElapsedColumn(),
                console=Console(file=self.stream, stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, rate=0.0, errors=0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled and time.monotonic() - self.started >= self.interval:
            self._line()

    def __call__(self, result: ChangeResult) -> None:
        self.done += 1
        self.errors += result.status == Status.FAILED
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=self.rate, errors=self.errors)
        elif self.enabled and time.monotonic() - self._last_line >= self.interval:
            self._line()

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def _line(self) -> None:
        self._last_line = time.monotonic()
        self.stream.write(
            f"{self.label}: {self.done}/{self.total} done, {self.errors} errors, "
            f"{self.rate:.0f}/s, {self._last_line - self.started:.0f}s elapsed\n"
        )
        self.stream.flush()
