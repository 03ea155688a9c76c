"""See before you apply: the plan first, with each change's field diff; on a terminal, 'yes' or nothing.

The terminal is a real pseudo-terminal (``pty``): the command's stdin, stdout and stderr are its slave
side, and the test types the answer on the master side once the question is shown, as a user would.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys

from conftest import manifest_text, write
from safety_helpers import by_name, methods, writes

QUESTION = "Only 'yes' is accepted"


def _in_terminal(cli, *args: str, answer: str | None = None) -> tuple[int, str]:
    """Run the command on a pseudo-terminal; type ``answer`` when it asks. Exit code and all it showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner", *args],
        cwd=cli.cwd,
        env=cli.env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    shown, answered = b"", False
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        assert ready, f"no output for 120 s:\n{shown.decode()}"
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        shown += chunk
        if QUESTION.encode() in shown and not answered:
            assert answer is not None, f"asked without an answer:\n{shown.decode()}"
            os.write(master, answer.encode() + b"\n")
            answered = True
    os.close(master)
    code = proc.wait(timeout=120)
    assert answered == (answer is not None), shown.decode()
    return code, shown.decode().replace("\r\n", "\n")


def _applied_then_changed(cli) -> None:
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    write(
        cli.cwd, "m.yaml", manifest_text(count=2).replace("pw-1", "pw-1b").replace("company: acme", "company: globex")
    )


def test_apply_on_a_terminal_shows_the_plan_and_no_sends_nothing(cli, db):
    write(cli.cwd, "m.yaml", manifest_text(count=2))
    code, shown = _in_terminal(cli, "apply", "m.yaml", answer="no")
    assert code == 1
    assert "+ create helpdesk-0 (connectwisehd)" in shown and "Plan: 2 to create" in shown
    assert "+ configuration.helpdesk.connectwise.password = (sensitive)" in shown and "pw-0" not in shown
    assert shown.index("Plan: 2 to create") < shown.index(QUESTION)
    assert "error: not confirmed; nothing was changed" in shown
    assert methods(db) == {"GET"} and db.instances() == []
    for other in ("", "y", "YES", "yes please"):
        assert _in_terminal(cli, "apply", "m.yaml", answer=other)[0] == 1, other
    assert methods(db) == {"GET"} and db.instances() == []


def test_apply_on_a_terminal_writes_after_yes(cli, db):
    _applied_then_changed(cli)
    db.clear_requests()
    code, shown = _in_terminal(cli, "apply", "m.yaml", answer="yes")
    assert code == 0, shown
    assert '~ configuration.helpdesk.connectwise.company: "acme" -> "globex"' in shown
    assert "~ configuration.helpdesk.connectwise.password: (sensitive) -> (sensitive)" in shown
    assert "pw-1b" not in shown
    assert shown.index(QUESTION) < shown.index("~ updated helpdesk-0")
    assert sorted(m for m, _ in writes(db)) == ["PUT", "PUT"]
    assert {r["configuration"]["helpdesk.connectwise.company"] for r in db.instances()} == {"globex"}


def test_auto_approve_and_a_saved_plan_do_not_ask(cli, db):
    write(cli.cwd, "m.yaml", manifest_text(count=1))
    code, shown = _in_terminal(cli, "apply", "m.yaml", "--auto-approve")
    assert code == 0 and "+ created helpdesk-0" in shown and len(db.instances()) == 1
    write(cli.cwd, "m.yaml", manifest_text(count=1).replace("company: acme", "company: globex"))
    assert cli.run("plan", "m.yaml", "--out", "plan.json").returncode == 0
    code, shown = _in_terminal(cli, "apply", "plan.json")  # reviewed already, as Terraform's apply PLANFILE
    assert code == 0 and "~ updated helpdesk-0" in shown
    assert by_name(db)["helpdesk-0"]["configuration"]["helpdesk.connectwise.company"] == "globex"


def test_without_a_terminal_apply_prints_each_change_with_its_diff_and_proceeds(cli, db):
    """A pipeline's log records what changed: the diff of every change, secrets as (sensitive)."""
    _applied_then_changed(cli)
    proc = cli.run("apply", "m.yaml")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "~ update helpdesk-1 (connectwisehd)" in out
    assert '    ~ configuration.helpdesk.connectwise.company: "acme" -> "globex"' in out
    assert "    ~ configuration.helpdesk.connectwise.password: (sensitive) -> (sensitive)" in out
    assert "pw-1b" not in out + proc.stderr
    assert out.index("Plan: 0 to create, 2 to update") < out.index("~ updated") < out.index("Apply: 0 created")
    assert {r["configuration"]["helpdesk.connectwise.company"] for r in db.instances()} == {"globex"}
    again = cli.run("apply", "m.yaml")
    assert again.stdout == "Apply: no changes, the instances match the manifest. 1 request, 0 retries.\n"


def test_apply_json_and_markdown_keep_stdout_one_document(cli, db):
    write(cli.cwd, "m.yaml", manifest_text(count=1))
    code, document = cli.json("apply", "m.yaml")
    assert code == 0 and document["command"] == "apply" and document["summary"]["create"] == 1
    write(cli.cwd, "m.yaml", manifest_text(count=1).replace("company: acme", "company: globex"))
    proc = cli.run("apply", "m.yaml", "-o", "markdown")
    assert proc.returncode == 0 and proc.stdout.startswith("### provisioner apply")
    assert proc.stdout.count("### provisioner") == 1 and "| updated | 1 |" in proc.stdout


def test_destroy_still_asks_through_the_same_question(cli, db):
    write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", "m.yaml").returncode == 0
    db.clear_requests()
    code, shown = _in_terminal(cli, "destroy", "m.yaml", answer="no")
    assert code == 1 and "- delete helpdesk-0" in shown and "nothing was deleted" in shown
    assert methods(db) == {"GET"} and len(db.instances()) == 2
    code, shown = _in_terminal(cli, "destroy", "m.yaml", answer="yes")
    assert code == 0 and db.instances() == []
    refused = cli.run("destroy", "m.yaml")  # no terminal, no --yes: nothing to delete now, nothing asked
    assert refused.returncode == 0
