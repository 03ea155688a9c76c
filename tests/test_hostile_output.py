"""Server text is data, printed escaped: instance names holding ESC, CR, LF, bidi controls or a lone
surrogate, served by the emulator (injected into its store behind the tool's back) or by a scripted
server (a lone surrogate cannot be stored in SQLite), through every output mode of plan, apply,
destroy, drift and import. Output is read as bytes: it must be valid UTF-8 with no raw control, format
or surrogate character (Unicode categories Cc, Cf, Cs) but the line break, and each name must still be
recognisable, escaped (text, Markdown) or JSON-escaped (JSON). The runs are real processes: what is
under test is what reaches a real stdout and stderr, encoded, byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata

import pytest
from conftest import ORG_SECRET, USER_SECRET, base_env, manifest_text, write
from scripted_server import Reply, ScriptedServer

FORGED = "hd-4\x1b[2J\r\nApply: 0 created"
BIDI = "hd-5\u202etxt.exe"
SURROGATE = "hd-3\ud800"
SHOWN = {  # how text and Markdown show them
    FORGED: r"hd-4\x1b[2J\r\nApply: 0 created",
    BIDI: r"hd-5\u202etxt.exe",
    SURROGATE: r"hd-3\ud800",
}
MARKER = "provisioner:stack=tests"
CONFIGURATION = {
    "helpdesk.connectwise.username": "api1",
    "helpdesk.connectwise.password": "pw-hostile-1",
    "helpdesk.connectwise.server.url": "api-na.myconnectwise.net",
    "helpdesk.connectwise.company": "acme",
}
# (command and arguments, output modes); apply and destroy delete the stack's hostile instances
COMMANDS = {
    "plan": (("plan", "--verbose"), ("text", "json", "markdown")),
    "apply": (("apply", "--prune", "--force"), ("text", "json", "markdown")),
    "drift": (("drift",), ("text", "json", "markdown")),
    "destroy": (("destroy", "--yes"), ("text", "json")),
    "import": (("import", "--out", "imported.yaml"), ("text", "json")),
}
RUNS = [(command, mode) for command, (_, modes) in COMMANDS.items() for mode in modes]


def run(cwd, url: str, command: str, mode: str) -> tuple[int, str, str]:
    """The real CLI; stdout and stderr decoded strictly (invalid UTF-8 fails the test)."""
    env = {**base_env(), "CE_API_URL": url, "CE_USER_SECRET": USER_SECRET, "CE_ORGANIZATION_SECRET": ORG_SECRET}
    args = COMMANDS[command][0]
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner", args[0], "m.yaml", *args[1:], "--output", mode],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")


def raw_controls(text: str) -> list[str]:
    return sorted({f"U+{ord(c):04X}" for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs")})


def strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def check(code: int, out: str, err: str, mode: str, names: dict[str, str]) -> None:
    """No raw control anywhere, no forged line, every name recognisable: ``names`` maps the name to
    how a JSON consumer reads it back."""
    assert code == 0, out + err
    assert raw_controls(out) == [] and raw_controls(err) == [], (out, err)
    assert "Traceback" not in err and "internal error" not in err, err
    forged = [line for line in (out + err).splitlines() if line.startswith("Apply: 0 created")]
    assert all(line.startswith("Apply: 0 created, ") for line in forged), forged  # only our own summary
    if mode == "json":
        found = strings(json.loads(out))
        for read_back in names.values():
            assert any(read_back in s for s in found), (read_back, out)
    else:
        for name in names:
            assert SHOWN[name] in out + err, (SHOWN[name], out, err)


@pytest.mark.parametrize(("command", "mode"), RUNS)
def test_hostile_names_from_the_emulator_are_printed_escaped(command, mode, cli, emulator, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("apply", manifest).returncode == 0
    owned = command != "import"  # import takes unmanaged instances, the others the stack's own
    for name in (FORGED, BIDI):
        tags = [MARKER] if owned else ["by-hand"]
        emulator.store.create_instance(name, "connectwisehd", "connectwisehd", tags, CONFIGURATION)
    db.clear_requests()
    code, out, err = run(cli.cwd, emulator.url, command, mode)
    check(code, out, err, mode, {FORGED: FORGED, BIDI: BIDI})
    left = sorted(r["name"] for r in db.instances())
    deletes = sorted(r["path"] for r in db.requests() if r["method"] == "DELETE")
    if command in ("apply", "destroy"):  # both hostile instances were deleted, by id
        assert left == ([] if command == "destroy" else ["helpdesk-0"]) and len(deletes) == 2 + (command == "destroy")
    else:
        assert len(left) == 3 and deletes == []
    if command == "import":  # a name that a manifest would refuse is not written into one
        assert "the name holds a non-printable character" in (err if mode == "text" else out)
        assert FORGED not in (cli.cwd / "imported.yaml").read_text(encoding="utf-8")


def scripted_answer(listing: list[dict]):
    def answer(received):
        if received.method == "GET" and received.path == "/instances":
            return Reply(200, {"elements-total-count": str(len(listing))}, listing)
        if received.method == "GET":  # import reads each unmanaged instance whole
            return Reply(200, body=next(i for i in listing if f"/instances/{i['id']}" == received.path))
        return Reply(200, body={})

    return answer


@pytest.mark.parametrize(("command", "mode"), RUNS)
def test_a_lone_surrogate_in_a_name_never_raises_an_encoding_error(command, mode, tmp_path):
    """The API's JSON may hold "\\ud800": today's crash was UnicodeEncodeError, destroy's after its
    DELETEs were sent. Every command now reports, exit 0, with the name escaped."""
    listing = [
        {
            "id": ident,
            "name": name,
            "element": {"key": "connectwisehd"},
            "createdDate": f"2026-01-01T00:00:0{ident}Z",
            "tags": [MARKER] if ident == 1 else [],
            "token": f"tok-{ident}-Qz81",
            "configuration": {"helpdesk.connectwise.company": "acme"},
        }
        for ident, name in ((1, SURROGATE), (2, SURROGATE + "-by-hand"))
    ]
    write(tmp_path, "m.yaml", manifest_text(count=0))
    with ScriptedServer(default=scripted_answer(listing)) as srv:
        code, out, err = run(tmp_path, srv.base_url, command, mode)
    check(code, out, err, mode, {SURROGATE: r"hd-3\ud800"})
    deletes = [r.path for r in srv.requests if r.method == "DELETE"]
    assert deletes == (["/instances/1"] if command in ("apply", "destroy") else [])
    if command in ("apply", "destroy") and mode == "text":
        assert r"- deleted hd-3\ud800 id 1" in out
