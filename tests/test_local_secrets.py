"""``--local`` keeps no secret in clear: a private directory out of git, files 0600, and an emulator
database that stores only keyed digests of secret values (through the real CLI)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from conftest import Cli, base_env, write

from provisioner.emulator import Emulator, EmulatorDB, FaultConfig

CANARY = "Canary-Pw-7c41e9d2b8"

MANIFEST = """
apiVersion: provisioner/v1
stack: local
instances:
  - name: hd
    element: connectwisehd
    configuration:
      helpdesk.connectwise.username: api1
      helpdesk.connectwise.password: "{{ env.CANARY_PW }}"
      helpdesk.connectwise.server.url: api-na.myconnectwise.net
      helpdesk.connectwise.company: acme
  - name: crm
    element: dynamicscrmadfs
    configuration:
      user.username: u
      user.password: "{{ env.CANARY_PW }}-crm"
      dynamics.tenant: t
"""


def _cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path, {**base_env(), "CANARY_PW": CANARY})


def _state_files(state: Path) -> list[Path]:
    return [p for p in state.iterdir() if p.is_file()]


def _assert_no_canary(state: Path) -> None:
    for path in _state_files(state):
        data = path.read_bytes()
        for needle in (CANARY, CANARY + "-crm"):
            for form in (needle.encode(), base64.b64encode(needle.encode()), needle.encode("utf-16-le")):
                assert form not in data, f"{path.name} holds the password ({form[:12]!r}...)"


def test_apply_local_keeps_the_state_private_and_no_password_in_clear(tmp_path):
    write(tmp_path, "m.yaml", MANIFEST)
    cli = _cli(tmp_path)
    first = cli.run("apply", "m.yaml", "--local", "--no-progress")
    assert first.returncode == 0, first.stdout + first.stderr
    state = tmp_path / ".provisioner"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert (state / ".gitignore").read_text(encoding="utf-8").splitlines()[-1] == "*"
    names = {p.name for p in _state_files(state)}
    assert {"emulator.db", ".gitignore"} <= names
    for path in _state_files(state):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path.name, oct(path.stat().st_mode))
    _assert_no_canary(state)

    # the emulator still masks and still knows the value: a second apply changes nothing, a changed
    # password is an update, and the stored digest is the new password's
    second = cli.run("plan", "m.yaml", "--local", "--detailed-exitcode")
    assert second.returncode == 0, second.stdout + second.stderr
    changed = cli.run("apply", "m.yaml", "--local", "--no-progress", env={"CANARY_PW": CANARY + "x"})
    assert changed.returncode == 0 and "2 updated" in changed.stdout, changed.stdout + changed.stderr
    rows = {r["name"]: r for r in EmulatorDB(state / "emulator.db").instances()}
    assert rows["hd"]["configuration"]["helpdesk.connectwise.password"] == CANARY + "x"
    assert rows["hd"]["configuration"]["helpdesk.connectwise.password"] != CANARY
    assert rows["hd"]["configuration"]["helpdesk.connectwise.username"] == "api1"
    for path in _state_files(state):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    _assert_no_canary(state)


def test_a_state_directory_made_earlier_with_loose_modes_is_tightened(tmp_path):
    state = tmp_path / ".provisioner"
    state.mkdir(mode=0o755)
    (state / "emulator.db").touch(mode=0o644)
    os.chmod(state, 0o755)
    os.chmod(state / "emulator.db", 0o644)
    write(tmp_path, "m.yaml", MANIFEST)
    proc = _cli(tmp_path).run("plan", "m.yaml", "--local")
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "emulator.db").stat().st_mode) == 0o600
    assert (state / ".gitignore").is_file()


def test_emulator_masks_and_compares_without_keeping_the_value(tmp_path):
    import requests

    db_path = tmp_path / "e.db"
    server = Emulator(db_path, "user-secret-1", "org-secret-2", faults=FaultConfig())
    server.start()
    try:
        headers = {"Authorization": "User user-secret-1, Organization org-secret-2"}
        body = {
            "element": {"key": "connectwisehd"},
            "name": "x",
            "configuration": {
                "helpdesk.connectwise.username": "api1",
                "helpdesk.connectwise.password": CANARY,
                "helpdesk.connectwise.server.url": "u",
                "helpdesk.connectwise.company": "c",
            },
        }
        created = requests.post(server.url + "/instances", json=body, headers=headers, timeout=10)
        assert created.status_code == 200, created.text
        assert created.json()["configuration"]["helpdesk.connectwise.password"] == "********"
        got = requests.get(f"{server.url}/instances/{created.json()['id']}", headers=headers, timeout=10).json()
        assert got["configuration"]["helpdesk.connectwise.password"] == "********"
        missing = requests.patch(
            f"{server.url}/instances/{created.json()['id']}",
            headers=headers,
            timeout=10,
            json={"configuration": {"helpdesk.connectwise.password": ""}},
        )
        assert missing.status_code == 400
    finally:
        server.stop()
    stored = EmulatorDB(db_path).instances()[0]["configuration"]["helpdesk.connectwise.password"]
    assert stored == CANARY and stored != "other"
    for path in tmp_path.iterdir():
        assert CANARY.encode() not in path.read_bytes(), path.name
