"""Reporters, not prints: text and JSON here (Markdown in ``markdown.py``), a method per outcome of a
command, chosen by ``--output`` (``run.REPORTERS``). Results go to stdout, problems and logs to stderr,
every byte redacted, then escaped (``RedactingWriter``, ``printable``); colour, from rich, only on a terminal.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterable
from typing import IO, Any, cast

from ..api.stats import plural
from ..closedsets import assert_never
from ..engine import health
from ..engine.apply import ApplyResult, ChangeResult, Status
from ..engine.diff import DiffOp, FieldDiff
from ..engine.drift import DriftField, DriftReport
from ..engine.plan import REFUSALS, WRITES, Action, Change, Plan
from ..errors import Problem
from ..secret import MASK, MIN_REDACT_LENGTH, REDACTOR, SENSITIVE, Secret, escape

FORMAT_VERSION = 1


_LOOKS: dict[Action, tuple[str, str, str | None]] = {  # symbol, colour, past tense once done (writes only)
    Action.CREATE: ("+", "green", "created"),
    Action.UPDATE: ("~", "yellow", "updated"),
    Action.RENAME: (">", "yellow", "renamed"),
    Action.REPLACE: ("-/+", "magenta", "replaced"),
    Action.DELETE: ("-", "red", "deleted"),
    Action.ADOPT: ("<=", "cyan", "adopted"),
    Action.DISABLE: ("||", "yellow", "disabled"),
    Action.ENABLE: ("|>", "green", "enabled"),
    Action.REAUTHENTICATE: ("@", "cyan", "re-authenticated"),
    Action.CONFLICT: ("!", "red", None),
    Action.NOOP: ("=", "dim", None),
    Action.PROTECTED: ("#", "red", None),
}
_SYMBOLS: dict[Action, tuple[str, str]] = {a: _LOOKS[a][:2] for a in Action}  # every action: a KeyError at import
_PAST: dict[Action, str] = {a: past for a in Action if (past := _LOOKS[a][2]) is not None}
_SUMMARY = (Action.ADOPT, *(a for a in WRITES if a != Action.ADOPT))  # apply's summary line: adoptions first
_ALWAYS = (Action.CREATE, Action.UPDATE, Action.REPLACE, Action.DELETE)  # the other writes: only when some are
_REFUSED = {Action.CONFLICT: "conflict(s)", Action.PROTECTED: "protected, refused"}
LIST_LIMIT = 100  # successful changes listed one by one up to this many (all with --verbose)


class RedactingWriter(io.TextIOBase):
    """A text stream that masks every known secret, escapes every non-printable character but the line
    break (``styled``: rich's output, whose text ``StyledStream`` escaped first) and flushes each write."""

    def __init__(self, stream: IO[str], styled: bool = False):
        self._stream = stream
        self._styled = styled

    def write(self, text: str) -> int:
        redacted = REDACTOR.redact(text)
        self._put(redacted if self._styled else escape(redacted, keep="\n"))
        return len(text)

    def write_lines(self, lines: Iterable[str]) -> None:
        """Lines that each stay one line: a line break inside one is escaped too."""
        self._put("".join(escape(REDACTOR.redact(line)) + "\n" for line in lines))

    def _put(self, text: str) -> None:  # a stream may not encode every printable character (LANG=C)
        self._stream.write(text.encode(self.encoding, "backslashreplace").decode(self.encoding))
        self._stream.flush()

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return bool(getattr(self._stream, "isatty", lambda: False)())

    @property
    def encoding(self) -> str:  # type: ignore[override]  # typeshed declares it a plain attribute
        return getattr(self._stream, "encoding", "utf-8") or "utf-8"


class StyledStream:
    """One output stream: rich styling on a terminal, plain redacted lines otherwise."""

    def __init__(self, stream: IO[str]):
        self.raw = RedactingWriter(stream)
        self._console: Any = None
        if self.raw.isatty():
            from rich.console import Console

            file = cast(IO[str], RedactingWriter(stream, styled=True))  # a TextIOBase, not declared an IO[str]
            self._console = Console(file=file, highlight=False, soft_wrap=True, markup=False, emoji=False)

    def print(self, text: str, style: str | None = None) -> None:
        """Text of one or more lines (its line breaks kept)."""
        if self._console is not None:
            self._console.print(escape(REDACTOR.redact(text), keep="\n"), style=style)
        else:
            self.raw.write(text + "\n")

    def lines(self, lines: list[tuple[str, str]]) -> None:
        """(style, text) lines, each kept one line: styled on a terminal, else one write (fast for 10,000)."""
        if self._console is not None:
            for style, text in lines:
                self._console.print(escape(REDACTOR.redact(text)), style=style or None)
        elif lines:
            self.raw.write_lines(text for _, text in lines)


def result_json(result: ChangeResult) -> dict[str, Any]:
    data = result.change.to_json() | {"status": result.status, "error": None}
    data["id"] = result.id if result.id is not None else data["id"]
    if result.error is not None:
        data["error"] = dict(message=result.error, requestId=result.request_id, httpStatus=result.http_status)
        data["error"]["hint"] = failure_hint(result)
    return data


IN_USE_HINT = (
    "something on the platform uses this instance (the message names it, e.g. a formula instance): "
    "delete that user or point it at another instance, then run the command again"
)


def failure_hint(result: ChangeResult) -> str | None:
    """What to do about a failure the API explains only in its own words: a DELETE answered 409."""
    deleting = result.change.action in (Action.DELETE, Action.REPLACE)
    return IN_USE_HINT if deleting and result.http_status == 409 and result.status == Status.FAILED else None


class JsonReporter:
    """One JSON document on stdout per command; nothing else there."""

    def __init__(self, out: IO[str], err: IO[str], verbose: bool = False):
        self.out = out  # not redacted again: that could only break the JSON (a secret spelled "true")
        self.err = RedactingWriter(err)

    def _emit(self, command: str, ok: bool, **fields: Any) -> None:
        document = {"formatVersion": FORMAT_VERSION, "command": command, "ok": ok, **fields}
        self.out.write(json.dumps(printable(document), indent=2) + "\n")
        self.out.flush()

    def validated(self, manifest: str, count: int) -> None:
        self._emit("validate", True, manifest=manifest, instances=count, problems=[])

    def problems(self, command: str, problems: list[Problem]) -> None:
        self._emit(command, False, problems=[p.to_json() for p in problems])

    def plan(self, plan: Plan, command: str = "plan") -> None:
        self._emit(
            command,
            not plan.has_refusals,
            stack=plan.stack,
            changes=[c.to_json() for c in plan.changes],
            summary=plan.counts(),
            warnings=plan.warnings,
        )

    def applied(self, result: ApplyResult, stats: dict[str, Any], command: str, outputs: str | None) -> None:
        self._emit(
            command,
            result.ok and not result.plan.has_refusals,
            stack=result.plan.stack,
            changes=[result_json(r) for r in result.results],
            summary=result.plan.counts(),
            status=_status_counts(result.results),
            warnings=result.plan.warnings,
            interrupted=result.interrupted,
            aborted=result.aborted,
            notes=result.notes,
            outputs=outputs,
            requests=stats,
        )

    def drift(self, report: DriftReport, stats: dict[str, Any]) -> None:
        self._emit("drift", True, **report.to_json(), requests=stats)

    def health(self, report: health.HealthReport, stats: dict[str, Any]) -> None:
        self._emit("check", True, **report.to_json(), requests=stats)

    def error(self, command: str, message: str, hint: str | None = None) -> None:
        self._emit(command, False, error={"message": message, "hint": hint})

    def document(self, command: str, data: dict[str, Any], lines: list[str]) -> None:
        self._emit(command, True, **data)

    def info(self, text: str) -> None:
        self.err.write_lines([text])


def printable(value: Any) -> Any:
    """A JSON-like value as it may be printed: secrets masked, every string (keys too) and number
    redacted before JSON escaping could respell it, lone surrogates as escapes (valid Unicode)."""
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, dict):
        return {printable(str(k)): printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        shown = str(value)
        return value if len(shown) < MIN_REDACT_LENGTH or REDACTOR.redact(shown) == shown else MASK
    return REDACTOR.redact(str(value)).encode("utf-8", "backslashreplace").decode("utf-8")


class TextReporter:
    """Readable output: a diff per instance and a summary line; colour only on a terminal."""

    def __init__(self, out: IO[str], err: IO[str], verbose: bool = False):
        self.out = StyledStream(out)
        self.err = StyledStream(err)
        self.verbose = verbose
        self.warned: set[str] = set()  # apply's warnings, once shown with its plan

    def validated(self, manifest: str, count: int) -> None:
        self.out.print(f"{manifest}: valid ({plural(count, 'instance')})")

    def problems(self, command: str, problems: list[Problem]) -> None:
        for problem in problems:
            self.err.print(f"error: {problem.format()}", style="red")
        self.err.print(f"{plural(len(problems), 'problem')} found; nothing was sent to the API.")

    def plan(self, plan: Plan, command: str = "plan") -> None:
        listed = [c for c in plan.changes if c.action != Action.NOOP or c.warning or self.verbose]
        self.out.lines([line for change in listed for line in _change_lines(change)])
        self.err.lines([("yellow", f"warning: {warning}") for warning in plan.warnings])
        self.warned.update(plan.warnings)
        self.out.print(plan_summary(plan.counts()) if command != "destroy" else _destroy_summary(plan.counts()))
        if not plan.has_changes and not plan.has_refusals and command != "destroy":
            self.out.print("No changes: the instances match the manifest.")

    def applied(self, result: ApplyResult, stats: dict[str, Any], command: str, outputs: str | None) -> None:
        writes = [r for r in result.results if r.change.is_write or r.change.action in REFUSALS]
        every = self.verbose or len(writes) <= LIST_LIMIT  # else the failures only
        self.out.lines([_result_line(r) for r in writes if every or r.status != Status.OK])
        self.err.lines([("yellow", f"warning: {w}") for w in result.plan.warnings if w not in self.warned])
        self.err.lines([("", f"note: {note}") for note in result.notes])
        self.out.print(_apply_summary(result, stats, command))
        if outputs:
            self.out.print(f"Outputs written to {outputs} (mode 0600).")
        if result.failed:
            self.err.print(f"{len(result.failed)} change(s) failed:", style="red")
            self.err.lines([("", f"  {r.change.name}: {r.error}{_request(r)}{_hinted(r)}") for r in result.failed])
        if result.aborted:
            self.err.lines([("red", f"stopped: {result.aborted}")])
        if result.interrupted:
            self.err.print(
                f"interrupted by signal {result.interrupted}: no new request was started; run apply again to converge.",
                style="yellow",
            )

    def drift(self, report: DriftReport, stats: dict[str, Any]) -> None:
        lines: list[tuple[str, str]] = []
        for f in report.findings:
            style = "red" if f.kind == "drift" else "yellow"
            lines.append((style, f"{f.kind}: {f.category} {_named(f.name, f.element, f.id)}: {f.detail}"))
            for d in f.fields:
                lines.append(("", f"    ~ {d.path}: live {shown(d, d.live)}, manifest {shown(d, d.manifest)}"))
        self.out.lines(lines)
        self.out.print(drift_summary(report))

    def health(self, report: health.HealthReport, stats: dict[str, Any]) -> None:
        self.out.lines(health.text_lines(report))
        self.out.print(health.summary_line(report))

    def error(self, command: str, message: str, hint: str | None = None) -> None:
        self.err.print(f"error: {message}" + (f" (hint: {hint})" if hint else ""), style="red")

    def document(self, command: str, data: dict[str, Any], lines: list[str]) -> None:
        """The result of a command that is neither a plan nor an apply (schemas, import, render)."""
        self.out.lines([("", line) for line in lines])

    def info(self, text: str) -> None:
        self.err.lines([("", text)])


def plan_summary(counts: dict[Action, int]) -> str:
    """``Plan: 1 to create, ... (3 unchanged).``; the other writes and the refusals only when there are some."""
    planned = [f"{counts[a]} to {_PAST[a].removesuffix('d')}" for a in WRITES if counts[a] or a in _ALWAYS]
    extra = [f"{counts[Action.NOOP]} unchanged"] + [f"{counts[a]} {_REFUSED[a]}" for a in REFUSALS if counts[a]]
    return f"Plan: {', '.join(planned)} ({', '.join(extra)})."


def _destroy_summary(counts: dict[Action, int], done: dict[Status, int] | None = None) -> str:
    """destroy only deletes: ``Destroy: 2 to delete (1 protected, refused).``, once done
    ``Destroy: 2 deleted, 1 failed``; ``done``: the status counts of the deletions made."""
    refused = f", {counts[Action.PROTECTED]} protected, refused" if counts.get(Action.PROTECTED) else ""
    if not counts[Action.DELETE]:
        return f"Destroy: nothing to delete, the stack owns no instance{refused}."
    if done is None:
        return f"Destroy: {counts[Action.DELETE]} to delete{refused}."
    unfinished = "".join(f", {done[status]} {status}" for status in (Status.FAILED, Status.SKIPPED) if done[status])
    return f"Destroy: {done[Status.OK]} deleted{unfinished}{refused}."


def drift_summary(report: DriftReport) -> str:
    s = report.summary()
    if not report.findings:
        return f"No drift: the {s['declared']} declared instance(s) match what provisioner applied."
    return (
        f"Drift: {s['drift']} finding(s) changed behind provisioner's back; pending: {s['pending']} "
        f"(the manifest changed, run plan); {s['inSync']} in sync."
    )


def _named(name: str, element: str | None, ident: Any) -> str:
    """``name (element) id 7``."""
    return name + (f" ({element})" if element else "") + (f" id {ident}" if ident is not None else "")


def _change_lines(change: Change) -> list[tuple[str, str]]:
    symbol, style = _SYMBOLS[change.action]
    lines = [(style, f"{symbol} {change.action} {_named(change.name, change.element, change.id)}: {change.reason}")]
    lines.extend(("", "    " + _diff_line(diff)) for diff in change.diff)
    return lines


def _result_line(r: ChangeResult) -> tuple[str, str]:
    action = r.change.action
    symbol, style = _SYMBOLS[action]
    named = _named(r.change.name, None, r.id)
    if r.status == Status.OK:
        return style, f"{symbol} {_PAST.get(action, action)} {named}"
    if action == Action.PROTECTED:
        return style, f"{symbol} protected {named}, not touched: {r.error}"
    return "red", f"x {action} {named} {r.status}: {r.error}{_request(r)}"


def _request(r: ChangeResult) -> str:
    return f" (requestId {r.request_id})" if r.request_id else ""


def shown(field: FieldDiff | DriftField, value: Any) -> str:
    """A value of a field diff or drift field as printed: JSON, or ``(sensitive)`` for a secret's."""
    return SENSITIVE if field.sensitive else json.dumps(value, default=str)


def _diff_line(diff: FieldDiff) -> str:
    match diff.op:
        case DiffOp.ADD:
            return f"+ {diff.path} = {shown(diff, diff.new)}"
        case DiffOp.REMOVE:
            return f"- {diff.path} (was {shown(diff, diff.old)})"
        case DiffOp.CHANGE:
            return f"~ {diff.path}: {shown(diff, diff.old)} -> {shown(diff, diff.new)}"
        case _:
            assert_never(diff.op)


def _status_counts(results: Iterable[ChangeResult]) -> dict[Status, int]:
    return dict.fromkeys(Status, 0) | Counter(r.status for r in results)


def done_counts(result: ApplyResult) -> dict[Action, int]:
    """The changes made, per action that has a past tense (in ``_PAST``'s order)."""
    done = Counter(r.change.action for r in result.results if r.status == Status.OK)
    return {action: done[action] for action in _PAST}


def _apply_summary(result: ApplyResult, stats: dict[str, Any], command: str) -> str:
    traffic = f"{plural(stats.get('requests', 0), 'request')}, {plural(stats.get('retries', 0), 'retry', 'retries')}."
    if command == "destroy":
        deletions = _status_counts(r for r in result.results if r.change.action == Action.DELETE)
        return f"{_destroy_summary(result.plan.counts(), deletions)} {traffic}"
    if not result.plan.has_changes and not result.plan.has_refusals:
        return f"Apply: no changes, the instances match the manifest. {traffic}"
    done = done_counts(result)
    refused = {a: sum(1 for r in result.results if r.change.action == a) for a in REFUSALS}
    parts = [f"{done[a]} {_PAST[a]}" for a in _SUMMARY if done[a] or a in _ALWAYS]
    status = _status_counts(result.results)
    parts += [f"{status[Status.FAILED]} failed", f"{status[Status.SKIPPED] - sum(refused.values())} skipped"]
    parts += [f"{n} {_REFUSED[a]}" for a, n in refused.items() if n]
    return f"Apply: {', '.join(parts)}. {traffic}"


def _hinted(r: ChangeResult) -> str:
    hint = failure_hint(r)
    return f" (hint: {hint})" if hint else ""
