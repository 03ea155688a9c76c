"""`-o markdown` for plan, apply and drift, through the real CLI against the emulator: a summary table, a diff per
changed instance, secrets as (sensitive), nothing secret anywhere in the document."""

from __future__ import annotations

import re

from conftest import ORG_SECRET, USER_SECRET, write
from hypothesis import given
from hypothesis import strategies as st
from safety_helpers import Api

from provisioner.cli.markdown import cell, code, fenced

PASSWORD = "md-canary-password-4711"
NEW_PASSWORD = "md-canary-password-4712"

MANIFEST = """
    apiVersion: provisioner/v1
    stack: md
    instances:
      - name: helpdesk-a
        element: connectwisehd
        tags: [helpdesk]
        configuration:
          helpdesk.connectwise.username: api1
          helpdesk.connectwise.password: "{{ env.CW_PASSWORD }}"
          helpdesk.connectwise.server.url: api-na.myconnectwise.net
          helpdesk.connectwise.company: "{{ env.COMPANY | default('acme') }}"
      - name: helpdesk-b
        element: connectwisehd
        configuration:
          helpdesk.connectwise.username: api2
          helpdesk.connectwise.password: "{{ env.CW_PASSWORD }}"
          helpdesk.connectwise.server.url: api-na.myconnectwise.net
          helpdesk.connectwise.company: acme
"""


def _tables(text: str) -> list[list[str]]:
    """Every Markdown table: consecutive lines starting with '|'."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _assert_table_shape(table: list[str]) -> None:
    columns = [len(re.split(r"(?<!\\)\|", row)) for row in table]
    assert len(set(columns)) == 1, table
    assert re.fullmatch(r"\|(---\|)+", table[1]), table


def test_plan_markdown_has_a_summary_table_and_diffs_and_no_secret(cli, db):
    write(cli.cwd, "m.yaml", MANIFEST)
    env = {"CW_PASSWORD": PASSWORD}
    proc = cli.run("plan", "m.yaml", "-o", "markdown", "--detailed-exitcode", env=env)
    assert proc.returncode == 2, proc.stderr
    text = proc.stdout
    assert text.startswith("### provisioner plan: stack `md`\n")
    tables = _tables(text)
    assert len(tables) == 1
    _assert_table_shape(tables[0])
    assert tables[0][0] == "| action | instances |"
    assert "| create | 2 |" in tables[0] and "| unchanged | 0 |" in tables[0]
    assert "#### `+ create` `helpdesk-a` (`connectwisehd`)" in text
    assert "+ configuration.helpdesk.connectwise.password: (sensitive)" in text
    assert text.count("```diff\n") == 2 and text.count("\n```\n") == 2
    for secret in (PASSWORD, USER_SECRET, ORG_SECRET):
        assert secret not in text + proc.stderr

    assert cli.run("apply", "m.yaml", env=env).returncode == 0
    env = {"CW_PASSWORD": NEW_PASSWORD, "COMPANY": "globex"}
    text = cli.run("plan", "m.yaml", "--output", "markdown", env=env).stdout
    assert "| update | 2 |" in text
    company = "configuration.helpdesk.connectwise.company"
    assert f'- {company}: "acme"\n+ {company}: "globex"' in text
    assert (
        "- configuration.helpdesk.connectwise.password: (sensitive)\n"
        "+ configuration.helpdesk.connectwise.password: (sensitive)" in text
    )
    for secret in (PASSWORD, NEW_PASSWORD, USER_SECRET, ORG_SECRET):
        assert secret not in text


def test_apply_markdown_reports_what_was_done_without_tokens(cli, db):
    write(cli.cwd, "m.yaml", MANIFEST)
    proc = cli.run("apply", "m.yaml", "-o", "markdown", "--outputs", "tokens.json", env={"CW_PASSWORD": PASSWORD})
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("### provisioner apply: stack `md`\n\nOK. ")
    (table,) = _tables(text)
    _assert_table_shape(table)
    assert "| created | 2 |" in table and "| failed | 0 |" in table
    assert "Outputs written to `tokens.json` (mode 0600)." in text
    assert text.count("declared, not found **done**") == 2
    for row in db.instances():
        assert row["token"] not in text + proc.stderr
    assert PASSWORD not in text
    again = cli.run("plan", "m.yaml", "-o", "markdown", env={"CW_PASSWORD": PASSWORD}).stdout
    assert "No changes: the instances match the manifest." in again and "```diff" not in again


@given(st.text())
def test_a_cell_never_breaks_its_table_row(text):
    escaped = cell(text)
    assert "\n" not in escaped and "<" not in escaped
    assert not re.search(r"(?<!\\)\|", escaped)


@given(st.text(alphabet=st.sampled_from("a`b \n")))
def test_code_spans_and_fences_hold_any_backticks(text):
    span = code(text)
    ticks = re.match(r"`+", span).group()
    assert span.endswith(ticks) and ticks not in span[len(ticks) : -len(ticks)]
    block = fenced("diff", [text])
    fence = block.split("diff", 1)[0]
    assert block.endswith("\n" + fence) and fence not in block[len(fence) : -len(fence)]


def test_drift_markdown_has_findings_by_category_and_a_field_table_and_no_secret(cli, db, emulator):
    write(cli.cwd, "m.yaml", MANIFEST)
    env = {"CW_PASSWORD": PASSWORD}
    assert cli.run("apply", "m.yaml", env=env).returncode == 0
    db.clear_requests()
    clean = cli.run("drift", "m.yaml", "-o", "markdown", env=env)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.startswith("### provisioner drift: stack `md`\n\nNo drift: the 2 declared instance(s) match")
    (summary,) = _tables(clean.stdout)
    assert summary[0] == "| category | drift | pending |" and "| changed | 0 | 0 |" in summary

    api, rows = Api(emulator.url), {r["name"]: r for r in db.instances()}
    api.put_changed(rows["helpdesk-a"], **{"helpdesk.connectwise.company": "someone|else <b>x</b>"})
    b = rows["helpdesk-b"]
    api.put_changed({**b, "tags": [t for t in b["tags"] if not t.startswith("provisioner:fp:")]})
    db.clear_requests()
    proc = cli.run("drift", "m.yaml", "-o", "markdown", env={"CW_PASSWORD": NEW_PASSWORD})
    assert proc.returncode == 2, proc.stderr
    text = proc.stdout
    assert {r["method"] for r in db.requests()} == {"GET"}
    tables = _tables(text)
    for table in tables:
        _assert_table_shape(table)
    summary = tables[0]
    assert "| changed | 1 | 0 |" in summary and "| secret | 1 | 1 |" in summary and "| missing | 0 | 0 |" in summary
    assert text.splitlines()[2].startswith("**Drift: 2 finding(s) changed behind provisioner's back")
    assert f"#### `drift` `changed` `helpdesk-a` (`connectwisehd`, id `{rows['helpdesk-a']['id']}`)" in text
    assert "| field | live | manifest | kind |" in tables[1]
    assert (
        '| configuration.helpdesk.connectwise.company | "someone\\|else &lt;b&gt;x&lt;/b&gt;" | "acme" | drift |'
        in tables[1]
    )
    assert "| configuration.helpdesk.connectwise.password | (sensitive) | (sensitive) | drift |" in text
    assert "| configuration.helpdesk.connectwise.password | (sensitive) | (sensitive) | pending |" in text
    assert text.rstrip().endswith("retries.") and "Read only: " in text
    stand_in = "value-re-entered-by-hand"  # what Api sent for the sealed secrets
    for secret in (PASSWORD, NEW_PASSWORD, USER_SECRET, ORG_SECRET, stand_in, *(r["token"] for r in rows.values())):
        assert secret not in text + proc.stderr
