"""import (issue 17, points 1 and 2): text from the server is data, never a template, and the
manifest import writes never replaces a special file, an existing file without --force, or its input.

Every flow runs the real CLI against the emulator over loopback and checks what the emulator holds.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import load_imported, write

CANARY = "AKIA-canary-never-sent-7731"
# every Jinja delimiter, a raw block escape and the expressions an attacker would use
HOSTILE = "acme {{ 7*7 }} }} {% if 1 %}x{% endif %} %} {# n #} #} {% endraw %}{{ env.AWS_SECRET_ACCESS_KEY }}{% raw %}"
HOSTILE_USER = "{% endraw %}{{ env.AWS_SECRET_ACCESS_KEY }}{% raw %}"
HOSTILE_NAME = "hd-{{ env.AWS_SECRET_ACCESS_KEY }}-{% raw %}{#"
HOSTILE_TAG = "t-{% endraw %}{{ env.AWS_SECRET_ACCESS_KEY }}"
BASE = "apiVersion: provisioner/v1\nstack: ops\ninstances: []\n"


def _by_hand(api, name: str, company: str, username: str, tags: list[str]) -> dict:
    configuration = {
        "helpdesk.connectwise.username": username,
        "helpdesk.connectwise.password": "pw-by-hand-1",
        "helpdesk.connectwise.server.url": "api-na.myconnectwise.net",
        "helpdesk.connectwise.company": company,
    }
    body = {"name": name, "element": {"key": "connectwisehd"}, "tags": tags, "configuration": configuration}
    return api("POST", "/instances", json=body)


def test_server_text_with_every_jinja_delimiter_is_sent_back_byte_for_byte(cli, db, api):
    made = _by_hand(api, HOSTILE_NAME, HOSTILE, HOSTILE_USER, [HOSTILE_TAG])
    env = {"AWS_SECRET_ACCESS_KEY": CANARY}
    write(cli.cwd, "base.yaml", BASE)
    proc = cli.run("import", "base.yaml", "--out", "imported.yaml", env=env)
    assert proc.returncode == 0, proc.stderr
    text = (cli.cwd / "imported.yaml").read_text()
    assert "{% raw %}{{" not in text and CANARY not in text  # plain strings, no wrapper to escape from
    assert stat.S_IMODE(os.stat(cli.cwd / "imported.yaml").st_mode) == 0o644
    assert "{{" not in text.replace(HOSTILE, "").replace(HOSTILE_USER, "").replace(HOSTILE_NAME, "").replace(
        HOSTILE_TAG, ""
    )  # the secret is written as !env NAME: no template of import's own
    [entry] = load_imported(text)["instances"]
    assert entry["literal"] is True and entry["name"] == HOSTILE_NAME and entry["tags"] == [HOSTILE_TAG]
    configuration = entry["configuration"]
    assert configuration["helpdesk.connectwise.company"] == HOSTILE
    assert configuration["helpdesk.connectwise.username"] == HOSTILE_USER
    secret_var = next(n for n in proc.stderr.split() if n.endswith("_HELPDESK_CONNECTWISE_PASSWORD"))
    assert configuration["helpdesk.connectwise.password"] == {"!env": secret_var}
    env[secret_var] = "pw-by-hand-1"

    rendered = cli.run("render", "imported.yaml", "-o", "json", env=env)
    assert rendered.returncode == 0, rendered.stdout
    assert CANARY not in rendered.stdout
    code, plan = cli.json("plan", "imported.yaml", "--adopt", env=env)
    assert code == 0 and [(c["action"], c["diff"]) for c in plan["changes"]] == [("adopt", [])]
    assert CANARY not in json.dumps(plan)

    # the console changes two values: apply --adopt must send the imported bytes back, unrendered
    api("PATCH", f"/instances/{made['id']}", json={"configuration": {"helpdesk.connectwise.company": "changed"}})
    applied = cli.run("apply", "imported.yaml", "--adopt", "--outputs", "out.json", env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert CANARY not in applied.stdout + applied.stderr
    [row] = db.instances()
    assert row["id"] == made["id"] and row["name"] == HOSTILE_NAME
    assert row["configuration"]["helpdesk.connectwise.company"] == HOSTILE
    assert row["configuration"]["helpdesk.connectwise.username"] == HOSTILE_USER
    assert HOSTILE_TAG in row["tags"] and "provisioner:stack=ops" in row["tags"]
    assert CANARY not in json.dumps(row, default=str)


def test_a_literal_entry_reads_only_its_env_tags(cli, db):
    """``literal: true`` written by hand: the name and plain values stay text, even a "{{ env.X }}",
    and ``!env NAME`` reads the environment (what import writes for a secret)."""
    write(
        cli.cwd,
        "m.yaml",
        """
        apiVersion: provisioner/v1
        stack: ops
        instances:
          - name: "hd-{{ 1 + 1 }}"
            element: connectwisehd
            literal: true
            tags: ["{{ env.HOME }}"]
            configuration:
              helpdesk.connectwise.username: "{{ env.PW }}"
              helpdesk.connectwise.password: !env PW
              helpdesk.connectwise.server.url: "{% raw %}x"
              helpdesk.connectwise.company: "{#"
        """,
    )
    proc = cli.run("apply", "m.yaml", env={"PW": "pw-from-env-5521"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pw-from-env-5521" not in proc.stdout + proc.stderr
    [row] = db.instances()
    assert row["name"] == "hd-{{ 1 + 1 }}" and "{{ env.HOME }}" in row["tags"]
    assert row["configuration"]["helpdesk.connectwise.username"] == "{{ env.PW }}"
    assert row["configuration"]["helpdesk.connectwise.password"] == "pw-from-env-5521"
    assert row["configuration"]["helpdesk.connectwise.server.url"] == "{% raw %}x"
    assert row["configuration"]["helpdesk.connectwise.company"] == "{#"


def test_env_tag_is_read_at_render_time_and_never_printed(cli, db):
    """``!env NAME`` (literal or not): unset, a located error and nothing sent; set, the emulator
    receives the value, no output shows it, and the next plan has nothing to change."""
    write(
        cli.cwd,
        "m.yaml",
        """
        apiVersion: provisioner/v1
        stack: ops
        instances:
          - name: hd
            element: connectwisehd
            configuration:
              helpdesk.connectwise.username: api1
              helpdesk.connectwise.password: !env HD_PASSWORD
              helpdesk.connectwise.server.url: api-na.myconnectwise.net
              helpdesk.connectwise.company: acme
        """,
    )
    for command in ("validate", "plan", "apply"):
        proc = cli.run(command, "m.yaml")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        where = "m.yaml:8 instance=hd configuration.helpdesk.connectwise.password"
        assert f"{where}: environment variable HD_PASSWORD is not set" in proc.stderr
        assert "export HD_PASSWORD=" in proc.stderr
    assert db.requests() == []
    env = {"HD_PASSWORD": "Canary-env-tag-4417"}
    outputs = [cli.run(command, "m.yaml", env=env) for command in ("validate", "plan", "apply")]
    assert [p.returncode for p in outputs] == [0, 0, 0], [p.stdout + p.stderr for p in outputs]
    assert not [p for p in outputs if "Canary-env-tag-4417" in p.stdout + p.stderr]
    [row] = db.instances()
    assert row["configuration"]["helpdesk.connectwise.password"] == "Canary-env-tag-4417"
    assert "No changes" in cli.run("plan", "m.yaml", env=env).stdout


def test_a_literal_secret_written_as_a_template_is_refused(cli, db):
    """Before ``!env``, import wrote a secret as "{{ env.NAME }}"; under literal that is text now, and
    sending it would overwrite the password: a located error, nothing sent."""
    entry = "\n  - name: a\n    element: connectwisehd\n    literal: true\n    configuration:\n"
    entry += "      helpdesk.connectwise.password: '{{ env.PW }}'"
    write(cli.cwd, "m.yaml", BASE.replace(" []", entry))
    proc = cli.run("apply", "m.yaml", env={"PW": "pw-from-env-5521"})
    assert proc.returncode == 1 and "m.yaml:8 instance=a configuration.helpdesk.connectwise.password" in proc.stderr
    assert "!env NAME" in proc.stderr and db.requests() == []


def test_literal_must_be_a_boolean(cli, db):
    write(cli.cwd, "m.yaml", BASE.replace("[]", "\n  - name: a\n    element: connectwisehd\n    literal: yes-please"))
    proc = cli.run("validate", "m.yaml")
    assert proc.returncode == 1 and "m.yaml:6" in proc.stderr and "literal" in proc.stderr, proc.stderr


# -- import --out (point 2) ---------------------------------------------------------------------


def _no_writes(db) -> None:
    assert [r for r in db.requests() if r["method"] != "GET"] == []


def test_import_refuses_an_existing_file_unless_forced(cli, db, api):
    _by_hand(api, "hd-a", "acme", "u", [])
    write(cli.cwd, "base.yaml", BASE)
    (cli.cwd / "taken.yaml").write_text("keep me\n")
    db.clear_requests()
    proc = cli.run("import", "base.yaml", "--out", "taken.yaml")
    assert proc.returncode == 1 and "taken.yaml" in proc.stderr and "--force" in proc.stderr, proc.stderr
    assert (cli.cwd / "taken.yaml").read_text() == "keep me\n"
    assert db.requests() == []  # refused before the API was read
    proc = cli.run("import", "base.yaml", "--out", "taken.yaml", "--force")
    assert proc.returncode == 0, proc.stderr
    assert [i["name"] for i in load_imported((cli.cwd / "taken.yaml").read_text())["instances"]] == ["hd-a"]


@pytest.mark.parametrize("spelling", ["same", "dot-slash", "absolute", "symlink", "hardlink", "inputs"])
def test_import_never_writes_over_its_own_input_even_with_force(cli, db, spelling):
    write(cli.cwd, "base.yaml", BASE)
    write(cli.cwd, "in.yaml", "x: 1\n")
    extra = []
    out = {"same": "base.yaml", "dot-slash": "./sub/../base.yaml", "absolute": str(cli.cwd / "base.yaml")}.get(spelling)
    if spelling in ("symlink", "hardlink"):
        (cli.cwd / "sub").mkdir(exist_ok=True)
        link = cli.cwd / "link.yaml"
        link.symlink_to(cli.cwd / "base.yaml") if spelling == "symlink" else os.link(cli.cwd / "base.yaml", link)
        out = "link.yaml"
    elif spelling == "inputs":
        extra, out = ["--inputs", "in.yaml"], "in.yaml"
    (cli.cwd / "sub").mkdir(exist_ok=True)
    proc = cli.run("import", "base.yaml", *extra, "--out", out, "--force")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "which import reads" in proc.stderr and "Traceback" not in proc.stderr
    assert (cli.cwd / "base.yaml").read_text() == BASE and (cli.cwd / "in.yaml").read_text() == "x: 1\n"
    assert db.requests() == []


@pytest.mark.parametrize("kind", ["fifo", "directory", "missing-directory", "dangling-symlink"])
def test_import_out_that_is_not_a_regular_file_is_refused_before_any_request(cli, db, kind):
    write(cli.cwd, "base.yaml", BASE)
    path = cli.cwd / kind
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling-symlink":
        path.symlink_to(cli.cwd / "nowhere")
    else:
        path = path / "m.yaml"
    proc = cli.run("import", "base.yaml", "--out", str(path), "--force")
    assert proc.returncode == 1 and kind in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert db.requests() == []
    assert not os.path.exists(cli.cwd / "nowhere") and not os.path.exists(cli.cwd / "missing-directory")
    _no_writes(db)
