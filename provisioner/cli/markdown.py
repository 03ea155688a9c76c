"""The Markdown reporter (``--output markdown``) for a pull request comment or a CI step summary. Text
from the manifest or the server cannot change the document's structure: non-printable characters are
escaped, table cells escape ``|`` and HTML, and a fence is longer than any run of backticks inside.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ..engine import health
from ..engine.apply import ApplyResult, ChangeResult, Status
from ..engine.diff import DiffOp, FieldDiff
from ..engine.drift import CATEGORIES, DriftReport, Finding
from ..engine.plan import ACTIONS, REFUSALS, WRITES, Action, Change, Plan
from ..secret import escape
from .report import _PAST, _SYMBOLS, LIST_LIMIT, TextReporter, _request, done_counts, drift_summary, shown

T = TypeVar("T")


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


def _diff_lines(diffs: Iterable[FieldDiff]) -> list[str]:
    """A field diff as unified-diff lines: ``-`` the live value, ``+`` the declared one."""
    lines: list[str] = []
    for diff in diffs:
        if diff.op != DiffOp.ADD:
            lines.append(f"- {diff.path}: {shown(diff, diff.old)}")
        if diff.op != DiffOp.REMOVE:
            lines.append(f"+ {diff.path}: {shown(diff, diff.new)}")
    return lines


def _heading(words: Iterable[Any], element: str | None, ident: Any) -> str:
    details = ", ".join(p for p in (element and code(element), ident is not None and f"id {code(ident)}") if p)
    return "#### " + " ".join(code(w) for w in words) + (f" ({details})" if details else "")


def _change_section(change: Change, status: str | None = None) -> str:
    """One instance: heading, reason (and status after an apply), and its field diff."""
    heading = _heading((f"{_SYMBOLS[change.action][0]} {change.action}", change.name), change.element, change.id)
    parts = [heading, "", cell(change.reason) + (f" **{cell(status)}**" if status else "")]
    if change.diff:
        parts += ["", fenced("diff", _diff_lines(change.diff))]
    return "\n".join(parts)


def _finding_section(finding: Finding) -> str:
    """One drift finding: heading (kind, category, name, element, id), its detail, and a table of fields."""
    parts = [_heading((finding.kind, finding.category, finding.name), finding.element, finding.id), ""]
    parts.append(cell(finding.detail))
    if finding.fields:
        rows = [(f.path, shown(f, f.live), shown(f, f.manifest), f.kind) for f in finding.fields]
        parts += ["", table(("field", "live", "manifest", "kind"), rows)]
    return "\n".join(parts)


def _capped(items: Sequence[T], section: Callable[[T], str], verbose: bool, noun: str) -> list[str]:
    """A section per item, the first LIST_LIMIT only unless verbose, then how many more there are."""
    sections = [section(i) for i in (items if verbose else items[:LIST_LIMIT])]
    more = len(items) - len(sections)
    return sections + ([f"_… and {more} more; `--output json` lists every {noun}._"] if more else [])


def _traffic(stats: dict[str, Any]) -> str:
    return f"{stats.get('requests', 0)} request(s), {stats.get('retries', 0)} retries."


def _status_text(r: ChangeResult) -> str:
    if r.status == Status.OK:
        return "done"
    return f"{r.status}: {r.error}{_request(r)}" if r.error else r.status


class MarkdownReporter(TextReporter):
    def _write(self, *blocks: str) -> None:
        self.out.raw.write("\n\n".join(blocks) + "\n")  # redacted and escaped, never styled

    def plan(self, plan: Plan, command: str = "plan") -> None:
        counts = plan.counts()
        changed = [c for c in plan.changes if c.action != Action.NOOP or c.warning or self.verbose]
        self._write(
            f"### provisioner {command}: stack {code(plan.stack)}",
            "No changes: the instances match the manifest."
            if not plan.has_changes and not plan.has_refusals
            else f"{sum(counts[a] for a in WRITES)} change(s) pending.",
            table(("action", "instances"), [("unchanged" if a == Action.NOOP else a, counts[a]) for a in ACTIONS]),
            *_warnings(plan.warnings),
            *_capped(changed, _change_section, self.verbose, "change"),
        )

    def applied(self, result: ApplyResult, stats: dict[str, Any], command: str, outputs: str | None) -> None:
        status = {s: sum(1 for r in result.results if r.status == s) for s in (Status.FAILED, Status.SKIPPED)}
        rows = [
            *((_PAST[a], n) for a, n in done_counts(result).items()),
            *status.items(),
            ("unchanged", result.plan.counts()[Action.NOOP]),
        ]
        writes = [r for r in result.results if r.change.is_write or r.change.action in REFUSALS]
        blocks = [
            f"### provisioner {command}: stack {code(result.plan.stack)}",
            ("OK." if result.ok and not result.plan.has_refusals else "**Failed.**") + " " + _traffic(stats),
            table(("result", "instances"), rows),
            *_warnings(result.plan.warnings, result.notes),
        ]
        if result.aborted:
            blocks.append(f"> **Stopped:** {cell(result.aborted)}")
        if result.interrupted:
            blocks.append(f"> **Interrupted** by signal {result.interrupted}: run apply again to converge.")
        if outputs:
            blocks.append(f"Outputs written to {code(outputs)} (mode 0600).")
        blocks += _capped(writes, lambda r: _change_section(r.change, _status_text(r)), self.verbose, "change")
        self._write(*blocks)
        if status[Status.FAILED]:
            self.err.print(f"{status[Status.FAILED]} change(s) failed; see the Markdown report.")

    def drift(self, report: DriftReport, stats: dict[str, Any]) -> None:
        counts = Counter((finding.category, finding.kind) for finding in report.findings)
        rows = [(category, counts[category, "drift"], counts[category, "pending"]) for category in CATEGORIES]
        verdict = drift_summary(report)
        self._write(
            f"### provisioner drift: stack {code(report.stack)}",
            f"**{verdict}**" if report.has_drift else verdict,
            table(("category", "drift", "pending"), rows),
            *_capped(report.findings, _finding_section, self.verbose, "finding"),
            f"Read only: {_traffic(stats)}",
        )

    def health(self, report: health.HealthReport, stats: dict[str, Any]) -> None:
        def listed(entries: Sequence[health.Health]) -> str:
            rows = [
                (h.name, h.element, "" if h.id is None else h.id, h.status, h.detail, h.command or "") for h in entries
            ]
            return table(("instance", "element", "id", "status", "detail", "run"), rows)

        verdict = health.summary_line(report)
        blocks = [f"### provisioner check: stack {code(report.stack)}", verdict if report.healthy else f"**{verdict}**"]
        blocks.append(listed(report.instances))
        if report.undeclared:
            blocks += ["Owned by the stack, no longer declared:", listed(report.undeclared)]
        self._write(*blocks, f"Read only: {_traffic(stats)}")


def _warnings(warnings: Iterable[str], notes: Iterable[str] = ()) -> list[str]:
    return [f"> **Warning:** {cell(w)}" for w in warnings] + [f"> **Note:** {cell(n)}" for n in notes]
