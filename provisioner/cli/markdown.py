"""The Markdown reporter (``--output markdown``): a plan, an apply or a drift report fit for a pull request
comment or a CI step summary (GitHub's ``$GITHUB_STEP_SUMMARY``).

It takes the same data as the text reporter. A plan or an apply: a summary table of action counts, then
one section per changed instance with its reason and a fenced ``diff`` block. A drift report: a table of
findings by category and kind (drift or pending), then one section per finding with a table of its
fields. Secret values show as ``(sensitive)``, and every byte still passes through the redactor. Text
from the manifest or the server (names, reasons, values) is escaped so that it cannot change the
document's structure: non-printable characters are shown as escapes (``\\n``, ``\\x1b``), table cells
escape ``|`` and HTML, and a fence is always longer than any run of backticks inside it. Problems,
warnings and errors go to stderr as plain text, as the text reporter writes them. The building blocks
(``table``, ``fenced``, ``change_section``, ``plan_markdown``, ``finding_section``, ``drift_markdown``)
are public so that other commands can reuse them.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from typing import IO, Any

from ..closedsets import assert_never
from ..engine import health
from ..engine.apply import ApplyResult, ChangeResult
from ..engine.diff import DiffOp, FieldDiff
from ..engine.drift import CATEGORIES, DriftReport, Finding, summary_line
from ..engine.plan import ACTIONS, WRITES, Action, Change, Plan
from ..secret import SENSITIVE, escape
from .report import _PAST, _SYMBOLS, LIST_LIMIT, RedactingWriter, TextReporter, _request

_LABELS = {"noop": "unchanged", "conflict": "conflict"}


def cell(text: Any) -> str:
    """One table cell: no line break or other control character, no ``|``, no HTML."""
    return html.escape(" ".join(escape(str(text)).split()), quote=False).replace("|", "\\|")


def code(text: Any) -> str:
    """An inline code span that holds any text (CommonMark: the fence is longer than any inner run)."""
    text = " ".join(escape(str(text)).split())
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
    return "\n".join(lines)


def fenced(language: str, lines: Iterable[str]) -> str:
    body = "\n".join(lines)
    fence = "`" * max(3, max((len(run) + 1 for run in re.findall(r"`{3,}", body)), default=3))
    return f"{fence}{language}\n{body}\n{fence}"


def _show(diff: FieldDiff, value: Any) -> str:
    return SENSITIVE if diff.sensitive and value is not None else json.dumps(value, default=str)


def diff_lines(diffs: Iterable[FieldDiff]) -> list[str]:
    """A field diff as unified-diff lines: ``-`` the live value, ``+`` the declared one."""
    lines: list[str] = []
    for diff in diffs:
        match diff.op:
            case DiffOp.CHANGE:
                lines += [f"- {diff.path}: {_show(diff, diff.old)}", f"+ {diff.path}: {_show(diff, diff.new)}"]
            case DiffOp.REMOVE:
                lines.append(f"- {diff.path}: {_show(diff, diff.old)}")
            case DiffOp.ADD:
                lines.append(f"+ {diff.path}: {_show(diff, diff.new)}")
            case _:
                assert_never(diff.op)
    return lines


def change_section(change: Change, status: str | None = None) -> str:
    """One instance: heading, reason (and status after an apply), and its field diff."""
    symbol = _SYMBOLS[change.action][0]
    details = ", ".join(
        p for p in (change.element and code(change.element), change.id is not None and f"id {code(change.id)}") if p
    )
    heading = f"#### {code(symbol + ' ' + change.action)} {code(change.name)}" + (f" ({details})" if details else "")
    parts = [heading, "", cell(change.reason) + (f" **{cell(status)}**" if status else "")]
    if change.diff:
        parts += ["", fenced("diff", diff_lines(change.diff))]
    return "\n".join(parts)


def _sections(changes: Sequence[tuple[Change, str | None]], verbose: bool) -> list[str]:
    shown = changes if verbose else changes[:LIST_LIMIT]
    sections = [change_section(change, status) for change, status in shown]
    if len(shown) < len(changes):
        sections.append(f"_… and {len(changes) - len(shown)} more; `--output json` lists every change._")
    return sections


def _warnings(warnings: Iterable[str], notes: Iterable[str] = ()) -> list[str]:
    return [f"> **Warning:** {cell(w)}" for w in warnings] + [f"> **Note:** {cell(n)}" for n in notes]


def plan_markdown(plan: Plan, command: str = "plan", verbose: bool = False) -> str:
    """The plan as Markdown: title, action counts, warnings, then a section per instance that changes."""
    counts = plan.counts()
    rows = [(_LABELS.get(a, a), counts[a]) for a in ACTIONS]
    changed = [(c, None) for c in plan.changes if c.action != "noop" or c.warning or verbose]
    pending = sum(counts[a] for a in WRITES)
    verdict = (
        "No changes: the instances match the manifest."
        if not plan.has_changes and not plan.has_conflicts
        else f"{pending} change(s) pending."
    )
    blocks = [
        f"### provisioner {command}: stack {code(plan.stack)}",
        verdict,
        table(("action", "instances"), rows),
        *_warnings(plan.warnings),
        *_sections(changed, verbose),
    ]
    return "\n\n".join(blocks) + "\n"


def apply_markdown(
    result: ApplyResult,
    stats: dict[str, Any],
    command: str = "apply",
    outputs: str | None = None,
    verbose: bool = False,
) -> str:
    """An apply's outcome as Markdown: what was done per action and status, then a section per change."""
    done = {a: 0 for a in _PAST}
    status = {"ok": 0, "failed": 0, "skipped": 0}
    for r in result.results:
        status[r.status] = status.get(r.status, 0) + 1
        if r.status == "ok" and r.change.action in done:
            done[r.change.action] += 1
    rows = [
        *((_PAST[a], n) for a, n in done.items()),
        ("failed", status["failed"]),
        ("skipped", status["skipped"]),
        ("unchanged", result.plan.counts()[Action.NOOP]),
    ]
    writes = [(r.change, _status_text(r)) for r in result.results if r.change.is_write or r.change.action == "conflict"]
    traffic = f"{stats.get('requests', 0)} request(s), {stats.get('retries', 0)} retries."
    verdict = ("OK." if result.ok and not result.plan.has_conflicts else "**Failed.**") + " " + traffic
    blocks = [
        f"### provisioner {command}: stack {code(result.plan.stack)}",
        verdict,
        table(("result", "instances"), rows),
        *_warnings(result.plan.warnings, result.notes),
    ]
    if result.aborted:
        blocks.append(f"> **Stopped:** {cell(result.aborted)}")
    if result.interrupted:
        blocks.append(f"> **Interrupted** by signal {result.interrupted}: run apply again to converge.")
    if outputs:
        blocks.append(f"Outputs written to {code(outputs)} (mode 0600).")
    blocks.extend(_sections(writes, verbose))
    return "\n\n".join(blocks) + "\n"


def _status_text(r: ChangeResult) -> str:
    if r.status == "ok":
        return "done"
    return f"{r.status}: {r.error}{_request(r)}" if r.error else r.status


def finding_section(finding: Finding) -> str:
    """One drift finding: heading (kind, category, name, element, id), its detail, and a table of fields."""
    details = ", ".join(
        p for p in (finding.element and code(finding.element), finding.id is not None and f"id {code(finding.id)}") if p
    )
    heading = f"#### {code(finding.kind)} {code(finding.category)} {code(finding.name)}" + (
        f" ({details})" if details else ""
    )
    parts = [heading, "", cell(finding.detail)]
    if finding.fields:
        rows = [(f.path, *_field_values(f.sensitive, f.live, f.manifest), f.kind) for f in finding.fields]
        parts += ["", table(("field", "live", "manifest", "kind"), rows)]
    return "\n".join(parts)


def _field_values(sensitive: bool, live: Any, manifest: Any) -> tuple[str, str]:
    if sensitive:
        return SENSITIVE, SENSITIVE
    return json.dumps(live, default=str), json.dumps(manifest, default=str)


def drift_markdown(report: DriftReport, stats: dict[str, Any], verbose: bool = False) -> str:
    """A drift report as Markdown: verdict, findings by category and kind, then a section per finding."""
    counts = {category: {"drift": 0, "pending": 0} for category in CATEGORIES}
    for finding in report.findings:
        counts[finding.category][finding.kind] += 1
    rows = [(category, n["drift"], n["pending"]) for category, n in counts.items()]
    verdict = summary_line(report)
    if report.has_drift:
        verdict = f"**{verdict}**"
    shown = report.findings if verbose else report.findings[:LIST_LIMIT]
    sections = [finding_section(f) for f in shown]
    if len(shown) < len(report.findings):
        sections.append(f"_… and {len(report.findings) - len(shown)} more; `--output json` lists every finding._")
    traffic = f"Read only: {stats.get('requests', 0)} request(s), {stats.get('retries', 0)} retries."
    blocks = [
        f"### provisioner drift: stack {code(report.stack)}",
        verdict,
        table(("category", "drift", "pending"), rows),
        *sections,
        traffic,
    ]
    return "\n\n".join(blocks) + "\n"


def health_markdown(report: health.HealthReport, stats: dict[str, Any]) -> str:
    """A health check as Markdown: verdict, then one table row per declared instance (and one table of
    the instances the stack owns but no longer declares)."""
    headers = ("instance", "element", "id", "status", "detail", "run")

    def rows(entries: Sequence[health.Health]) -> list[tuple[Any, ...]]:
        return [
            (h.name, h.element, h.id if h.id is not None else "", h.status, h.detail, h.command or "") for h in entries
        ]

    verdict = health.summary_line(report)
    blocks = [f"### provisioner check: stack {code(report.stack)}", verdict if report.healthy else f"**{verdict}**"]
    blocks.append(table(headers, rows(report.instances)))
    if report.undeclared:
        blocks += ["Owned by the stack, no longer declared:", table(headers, rows(report.undeclared))]
    blocks.append(f"Read only: {stats.get('requests', 0)} request(s), {stats.get('retries', 0)} retries.")
    return "\n\n".join(blocks) + "\n"


class MarkdownReporter(TextReporter):
    """Plans, apply results and drift reports as Markdown on stdout; everything else as the text reporter
    writes it."""

    def __init__(self, out: IO[str], err: IO[str], verbose: bool = False):
        super().__init__(out, err, verbose)
        self.markdown = RedactingWriter(out)

    def _write(self, text: str) -> None:
        self.markdown.write(text)
        self.markdown.flush()

    def plan(self, plan: Plan, command: str = "plan") -> None:
        self._write(plan_markdown(plan, command, self.verbose))

    def applied(
        self, result: ApplyResult, stats: dict[str, Any], command: str = "apply", outputs: str | None = None
    ) -> None:
        self._write(apply_markdown(result, stats, command, outputs, self.verbose))
        failed = [r for r in result.results if r.status == "failed"]
        if failed:
            self.err.print(f"{len(failed)} change(s) failed; see the Markdown report.")

    def drift(self, report: DriftReport, stats: dict[str, Any]) -> None:
        self._write(drift_markdown(report, stats, self.verbose))

    def health(self, report: health.HealthReport, stats: dict[str, Any]) -> None:
        self._write(health_markdown(report, stats))
