"""Bad input through the real CLI: never a wait, never an internal error, always a located message
and exit 1, and nothing sent to the API. (The runs' timeouts only guard against a hang; nothing
here measures time.)"""

from __future__ import annotations

import json
import os
import socket
import threading
import tracemalloc

import pytest
from conftest import Cli, manifest_text, write

from provisioner.manifest.yamlload import load_yaml

HUGE = "9" * 5000


def _clean(proc) -> str:
    both = proc.stdout + proc.stderr
    assert "Traceback" not in both and "internal error" not in both, both
    assert proc.returncode == 1, (proc.returncode, both)
    return proc.stderr


def _no_requests(db) -> None:
    assert db.requests() == [], "a request was sent for bad input"


# -- files that are not regular files ----------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "plan", "apply", "destroy", "show"])
def test_a_fifo_manifest_is_refused_without_waiting(cli, db, command):
    fifo = cli.cwd / "m.yaml"
    os.mkfifo(fifo)
    stderr = _clean(cli.run(command, "m.yaml", timeout=30))
    assert "m.yaml: cannot read file: it is a FIFO (named pipe), not a regular file" in stderr
    _no_requests(db)


@pytest.mark.parametrize("path", ["/dev/zero", "fifo", "dir"])
def test_inputs_that_are_devices_fifos_or_directories_are_refused(cli, db, path):
    write(cli.cwd, "m.yaml", manifest_text(count=1))
    os.mkfifo(cli.cwd / "fifo")
    (cli.cwd / "dir").mkdir()
    stderr = _clean(cli.run("plan", "m.yaml", "--inputs", path, timeout=30))
    assert "cannot read file" in stderr or path == "dir"  # click refuses a directory itself
    assert {"/dev/zero": "character device", "fifo": "FIFO", "dir": "directory"}[path] in stderr
    _no_requests(db)


def test_dev_zero_as_manifest_is_refused(cli, db):
    stderr = _clean(cli.run("validate", "/dev/zero", timeout=30))
    assert "character device" in stderr


def test_a_fifo_with_a_writer_is_still_refused_and_the_cap_holds_for_regular_files(cli, db):
    write(cli.cwd, "m.yaml", manifest_text(count=1))
    big = cli.cwd / "big.yaml"
    big.write_text("a: " + "x" * 5000 + "\n")
    stderr = _clean(cli.run("validate", "m.yaml", "--inputs", "big.yaml", "--max-file-bytes", "1000"))
    assert "big.yaml: file is 5004 bytes, over the limit of 1000 bytes" in stderr
    fifo = cli.cwd / "feed"
    os.mkfifo(fifo)
    stop = threading.Event()

    def feed():  # an endless writer: the reader must not even start reading
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        try:
            while not stop.is_set():
                try:
                    os.write(fd, b"x: 1\n" * 1000)
                except BlockingIOError:
                    stop.wait(0.01)
                except OSError:
                    return
        finally:
            os.close(fd)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        stderr = _clean(cli.run("validate", "m.yaml", "--inputs", "feed", timeout=30))
    finally:
        stop.set()
    assert "FIFO" in stderr


def test_a_template_that_is_a_fifo_is_refused(cli, db):
    write(
        cli.cwd,
        "m.yaml",
        "apiVersion: provisioner/v1\nstack: tests\ninstances:\n  - name: t\n    template: body.yaml\n",
    )
    os.mkfifo(cli.cwd / "body.yaml")
    stderr = _clean(cli.run("plan", "m.yaml", timeout=30))
    assert "m.yaml:5 instance=t: template file 'body.yaml': cannot read file: it is a FIFO" in stderr
    _no_requests(db)


# -- rendering budget -------------------------------------------------------------------------------

NESTED = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def test_a_runaway_loop_in_a_manifest_string_fails_with_its_location(cli, db):
    text = manifest_text(count=1).replace(
        "helpdesk.connectwise.company: acme", f'helpdesk.connectwise.company: "{NESTED}acme"'
    )
    write(cli.cwd, "m.yaml", text)
    stderr = _clean(cli.run("plan", "m.yaml", timeout=60))
    assert (
        "instance=helpdesk-0 configuration.helpdesk.connectwise.company: template exceeds its rendering budget"
        in stderr
    )
    _no_requests(db)


EMIT = "{{ '' }}{% endfor %}{% endfor %}"


def test_a_runaway_loop_in_a_template_file_names_the_template_line(cli, db):
    write(
        cli.cwd,
        "m.yaml",
        "apiVersion: provisioner/v1\nstack: tests\ninstances:\n  - name: t\n    template: body.yaml\n",
    )
    write(
        cli.cwd,
        "body.yaml",
        f"""
        element: connectwisehd
        configuration:
          helpdesk.connectwise.username: "{NESTED.replace("{% endfor %}{% endfor %}", EMIT)}"
        """,
    )
    stderr = _clean(cli.run("validate", "m.yaml", timeout=60))
    assert "m.yaml:5 (template body.yaml:3) instance=t: template exceeds its rendering budget" in stderr


@pytest.mark.parametrize("expression", ["'x' * 10**10", "7 ** 1000000", "[1] * 10**9", "10**4000 * 10**4000"])
def test_huge_values_built_in_one_step_are_refused(cli, db, expression):
    text = manifest_text(count=1).replace(
        "helpdesk.connectwise.company: acme", f'helpdesk.connectwise.company: "{{{{ {expression} }}}}"'
    )
    write(cli.cwd, "m.yaml", text)
    stderr = _clean(cli.run("validate", "m.yaml", timeout=60))
    assert "template exceeds its rendering budget" in stderr


def test_template_yaml_errors_show_the_users_text_not_placeholders(cli, db):
    write(
        cli.cwd,
        "m.yaml",
        "apiVersion: provisioner/v1\nstack: tests\ninputs:\n  k: company\ninstances:\n"
        "  - name: t\n    template: body.yaml\n",
    )
    write(
        cli.cwd,
        "body.yaml",
        """
        element: connectwisehd
        configuration:
          helpdesk.connectwise.{{ inputs.k }}: {{ inputs.k }}: x
        """,
    )
    stderr = _clean(cli.run("validate", "m.yaml"))
    assert "__pv" not in stderr
    assert "(template body.yaml:3)" in stderr
    assert "{{ inputs.k }}" in stderr
    write(
        cli.cwd,
        "body.yaml",
        """
        element: connectwisehd
        configuration:
          "{{ inputs.k }}": 1
          "{{ inputs.k }}": 2
        """,
    )
    stderr = _clean(cli.run("validate", "m.yaml"))
    assert "__pv" not in stderr
    assert "(template body.yaml:4) instance=t: key '{{ inputs.k }}' renders to the same key as another key" in stderr


# -- huge integers ------------------------------------------------------------------------------------


def test_reading_many_numbers_holds_no_parsed_node_beyond_its_own_value():
    """PyYAML's constructor remembers every node it constructs until its document ends; the reader builds
    scalar by scalar, so without care a file of numbers held a node and a mark per number until the end
    of the load (here 31 MB on top of the 15 MB of data, now under 5)."""
    text = "xs:\n" + "".join(f"  - {i}\n" for i in range(100_000))
    tracemalloc.start()
    try:
        loaded = load_yaml(text, "inputs.yaml")
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loaded.data["xs"][99_999] == 99_999 and not loaded.problems
    assert peak - held < 5_000_000, f"the load peaked {(peak - held) / 1e6:.1f} MB above what it keeps"


def test_huge_integers_in_set_manifest_and_inputs_are_located_errors(cli, db):
    text = manifest_text(count=1).replace("instances:", f"inputs:\n  big: {HUGE}\ninstances:")
    write(cli.cwd, "m.yaml", text)
    write(cli.cwd, "in.yaml", f"other: {HUGE}\n")
    stderr = _clean(cli.run("plan", "m.yaml", "--inputs", "in.yaml", "--set", f"n={HUGE}"))
    assert "m.yaml:4: this number is too long to read as an integer" in stderr
    assert "in.yaml:1: this number is too long to read as an integer" in stderr
    assert "--set 'n': this number is too long to read as an integer" in stderr
    _no_requests(db)
    quoted = _quoted_ok(cli)
    assert quoted.returncode == 0, quoted.stderr


def _quoted_ok(cli: Cli):
    text = manifest_text(count=1).replace("instances:", f"inputs:\n  big: '{HUGE}'\ninstances:")
    write(cli.cwd, "m.yaml", text)
    return cli.run("validate", "m.yaml", "--set", f'n="{HUGE}"')


# -- --set forms ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form, message",
    [
        ("=x", "'=x' has an empty key"),
        ("a", "'a' is not KEY=VALUE"),
        ("", "'' is not KEY=VALUE"),
        ("a.=1", "--set 'a.': every part of a dotted key"),
        ("..=1", "--set '..': every part"),
        ("a[0]=1", "--set 'a[0]': every part"),
        (" =1", "has an empty key"),
    ],
)
def test_odd_set_forms_are_clear_errors(cli, db, form, message):
    write(cli.cwd, "m.yaml", manifest_text(count=1))
    stderr = _clean(cli.run("plan", "m.yaml", "--set", form))
    assert message in stderr and "(hint: " in stderr
    _no_requests(db)


# -- credentials with control characters ---------------------------------------------------------------


@pytest.mark.parametrize("variable", ["CE_USER_SECRET", "CE_ORGANIZATION_SECRET"])
@pytest.mark.parametrize("output", ["text", "json"])
def test_a_credential_with_a_newline_names_the_variable_never_the_value(cli, db, variable, output):
    write(cli.cwd, "m.yaml", manifest_text(count=1))
    value = "pasted-credential-41c9\n"
    proc = cli.run("plan", "m.yaml", "-o", output, env={variable: value})
    _clean(proc)
    both = proc.stdout + proc.stderr
    assert "pasted-credential" not in both
    if output == "json":
        document = json.loads(proc.stdout)  # exactly one JSON document
        assert document["ok"] is False
        problem = document["problems"][0]
        assert "contains a line break" in problem["message"] and variable in problem["hint"]
    else:
        assert variable in proc.stderr and "contains a line break" in proc.stderr
    _no_requests(db)


def test_a_target_secret_from_the_manifest_with_a_control_character_is_refused(cli, db):
    text = manifest_text(count=1) + (
        'targets:\n  default:\n    url: "{{ env.CE_API_URL }}"\n'
        '    userSecret: "{{ env.MY_USER }}"\n    organizationSecret: "{{ env.CE_ORGANIZATION_SECRET }}"\n'
    )
    write(cli.cwd, "m.yaml", text)
    proc = cli.run("plan", "m.yaml", env={"MY_USER": "abc\x1b[2Jdef-secret"})
    stderr = _clean(proc)
    assert "userSecret of target 'default' contains a line break or another control character" in stderr
    assert "MY_USER" in stderr and "def-secret" not in stderr
    _no_requests(db)


# -- emulator on a busy port -------------------------------------------------------------------------


def test_emulator_on_a_port_in_use_says_so(cli, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = cli.run("emulator", "--port", str(port), "--db", str(tmp_path / "e.db"), timeout=30)
    stderr = _clean(proc)
    assert f"port {port} on 127.0.0.1 is already in use" in stderr and "--port 0" in stderr


# -- output: one format option, names that collide -----------------------------------------------------

COLLIDING = """
apiVersion: provisioner/v1
stack: tests
instances:
""" + "".join(
    f"""  - name: {name}
    element: connectwisehd
    configuration:
      helpdesk.connectwise.username: api1
      helpdesk.connectwise.password: pw-1
      helpdesk.connectwise.server.url: api-na.myconnectwise.net
      helpdesk.connectwise.company: acme
"""
    for name in ("crm-acme", "crm.acme", "CRM_ACME", "other")
)


def test_output_env_refuses_names_that_collide(cli, db):
    write(cli.cwd, "m.yaml", COLLIDING)
    assert cli.run("apply", "m.yaml", "--no-progress").returncode == 0
    for args in (["-o", "env"], ["--format", "env"]):
        proc = cli.run("output", "m.yaml", *args)
        stderr = _clean(proc)
        assert proc.stdout == ""
        assert "CRM_ACME, crm-acme, crm.acme -> CRM_ACME_*" in stderr
    one = cli.run("output", "m.yaml", "other", "-o", "env")
    assert one.returncode == 0 and one.stdout.startswith("OTHER_ID="), one.stderr


def test_output_has_one_format_option(cli, db):
    write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("apply", "m.yaml", "--no-progress").returncode == 0
    as_json = cli.run("output", "m.yaml", "-o", "json")
    assert as_json.returncode == 0 and "helpdesk-0" in json.loads(as_json.stdout)["instances"]
    default = cli.run("output", "m.yaml")
    assert json.loads(default.stdout) == json.loads(as_json.stdout)
    env = cli.run("output", "m.yaml", "-o", "env")
    assert env.returncode == 0, env.stderr
    assert env.stdout.startswith("HELPDESK_0_ID=") and "\nHELPDESK_0_ELEMENT=" in env.stdout, env.stdout
    assert cli.run("output", "m.yaml", "--format", "env").stdout == env.stdout
    conflict = cli.run("output", "m.yaml", "-o", "json", "--format", "env")
    assert "disagree" in _clean(conflict) and conflict.stdout == ""
