"""The CLI against a scripted API that answers what a real one should not: repeated, malformed or
short listings, odd create answers, the wrong base URL, refused deletes, nobody listening. Each
test asserts on the exit code, on what was printed, and on the requests the server received."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import ORG_SECRET, USER_SECRET, base_env, manifest_text, write
from scripted_server import Drip, Reply, ScriptedServer, closed_port

STACK = "tests"
MARKER = f"provisioner:stack={STACK}"


def item(ident, name: str, owned: bool = True, **extra) -> dict:
    created = f"2026-01-01T00:00:{ident:02d}Z" if isinstance(ident, int) else "2026-01-01T00:00:00Z"
    base = {
        "id": ident,
        "name": name,
        "element": {"key": "connectwisehd"},
        "createdDate": created,
        "tags": [MARKER] if owned else [],
        "token": f"tok-{ident}-Qz81",
        "configuration": {},
    }
    base.update(extra)
    return base


def run_cli(
    tmp_path, url: str, *args: str, count: int = 2, extra_env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    write(work, "m.yaml", manifest_text(STACK, count))
    env = {
        **base_env(),
        "CE_API_URL": url,
        "CE_USER_SECRET": USER_SECRET,
        "CE_ORGANIZATION_SECRET": ORG_SECRET,
        **(extra_env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "provisioner", args[0], "m.yaml", *args[1:]],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


FAST = ("--timeout", "1", "--connect-timeout", "0.5", "--settle", "0.2", "--max-retry-time", "3", "--max-attempts", "3")


def writes(server: ScriptedServer) -> list[str]:
    return [f"{r.method} {r.path}" for r in server.requests if r.method != "GET"]


def pages(*contents: list, total: int | None = None) -> list[Reply]:
    replies = []
    for n, content in enumerate(contents):
        headers = {"elements-next-page-token": f"p{n + 1}" if n + 1 < len(contents) else ""}
        if total is not None:
            headers["elements-total-count"] = str(total)
        replies.append(Reply(200, headers, content))
    return replies


# -- point 1: a listing is checked before anything is decided from it ----------------------------

BAD_LISTINGS = {
    "repeated-item": (
        pages(
            [item(1, "helpdesk-0"), item(2, "x"), item(3, "helpdesk-1")],
            [item(3, "helpdesk-1"), item(4, "y"), item(5, "z")],
        ),
        "listed twice",
    ),
    "no-id": (pages([item(1, "helpdesk-0"), {**item(2, "helpdesk-1"), "id": None}]), "no usable id"),
    "two-without-id": (
        pages(
            [{k: v for k, v in item(1, "a").items() if k != "id"}, {k: v for k, v in item(2, "b").items() if k != "id"}]
        ),
        "no usable id",
    ),
    "tags-not-a-list": (pages([item(1, "helpdesk-0", tags=5)]), "'tags' is int"),
    "item-not-an-object": (pages([item(1, "helpdesk-0"), "helpdesk-1"]), "not an instance object"),
    "ends-early": (pages([item(1, "helpdesk-0"), item(2, "helpdesk-1")], total=5), "announced 5"),
    "cut-short": ([Reply(200, {}, '[{"id": 1, "name": "helpdesk-0", "token": "tok-cut-Qz81"')], "not JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_LISTINGS))
def test_an_inconsistent_listing_stops_the_run_before_any_write(tmp_path, case):
    script, message = BAD_LISTINGS[case]
    with ScriptedServer() as srv:
        for _ in range(3):  # the listing is read up to three times before giving up
            srv.add(*script)
        result = run_cli(tmp_path, srv.base_url, "apply", "--prune", "--outputs", "out.json", *FAST)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "listing is inconsistent" in result.stderr and message in result.stderr, result.stderr
    assert writes(srv) == []
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "tok-" not in result.stdout + result.stderr


def test_a_listing_read_while_another_run_writes_is_read_again(tmp_path):
    owned = [item(1, "helpdesk-0"), item(2, "helpdesk-1")]
    script = [*pages([owned[0]], [owned[0]], total=2), *pages(owned, total=2)]
    with ScriptedServer(script) as srv:
        result = run_cli(tmp_path, srv.base_url, "plan", *FAST)
    assert result.returncode == 0, result.stderr
    assert [r.method for r in srv.requests] == ["GET"] * 3


# -- point 3: odd answers to a create ------------------------------------------------------------

ODD_CREATE_ANSWERS = {
    "empty": b"",
    "null": "null",
    "list": "[]",
    "string": '"created"',
    "no-id": '{"name": "x"}',
    "no-token": '{"id": 9, "name": "helpdesk-0"}',
}


@pytest.mark.parametrize("case", sorted(ODD_CREATE_ANSWERS))
def test_a_create_answered_2xx_without_an_instance_is_looked_up_never_counted(tmp_path, case):
    body = ODD_CREATE_ANSWERS[case]
    made = item(41, "helpdesk-0")
    empty = Reply(404, body={"message": "No instances found"})
    script = [
        empty,
        Reply(200, {"Content-Type": "application/json"}, body),
        Reply(200, {"elements-total-count": "1"}, [made]),  # the lookup finds it: adopted
        Reply(200, {"elements-total-count": "1"}, [made]),
    ]  # the final check
    with ScriptedServer(script) as srv:
        result = run_cli(tmp_path, srv.base_url, "apply", "--outputs", "out.json", *FAST, count=1)
        out = json.loads((tmp_path / "work" / "out.json").read_text())
    assert result.returncode == 0, result.stderr
    assert writes(srv) == ["POST /instances"]  # never sent twice: the lookup found it
    assert out["instances"]["helpdesk-0"]["id"] == 41 and out["instances"]["helpdesk-0"]["token"] == "tok-41-Qz81"
    assert "Traceback" not in result.stderr


def test_a_create_that_stays_unknown_fails_with_a_summary_and_outputs_written(tmp_path):
    empty = Reply(404, body={"message": "No instances found"})
    with ScriptedServer([empty], default=lambda r: empty if r.method == "GET" else Reply(200, body=[])) as srv:
        result = run_cli(tmp_path, srv.base_url, "apply", "--outputs", "out.json", *FAST, count=1)
        out = json.loads((tmp_path / "work" / "out.json").read_text())
    assert result.returncode == 1
    assert "helpdesk-0" in result.stderr and "internal error" not in result.stderr
    assert out["instances"] == {}


# -- point 6: the wrong target is named ----------------------------------------------------------


def test_a_base_url_without_the_api_path_is_an_error_naming_the_url(tmp_path):
    with ScriptedServer(default=Reply(404, body={"message": "No resource found at /instances"})) as srv:
        url = srv.base_url.removesuffix("/elements/api-v2")
        result = run_cli(tmp_path, url, "plan", *FAST)
    assert result.returncode == 1, result.stdout
    assert f"{url}/instances is not an instance listing" in result.stderr
    assert "/elements/api-v2" in result.stderr and "create" not in result.stdout


def test_plain_http_to_another_host_sends_nothing(tmp_path):
    result = run_cli(tmp_path, "http://api.cloud-elements.com/elements/api-v2", "plan")
    assert result.returncode == 1
    assert "refusing to send credentials in clear" in result.stderr and "https://" in result.stderr
    assert USER_SECRET not in result.stderr


def test_nobody_listening_names_the_url_the_attempts_and_the_variables(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/elements/api-v2"
    result = run_cli(tmp_path, url, "plan", "--max-attempts", "4", "--max-retry-time", "30")
    assert result.returncode == 1
    assert url in result.stderr and "connection refused (4 attempts over" in result.stderr
    assert "CE_API_URL" in result.stderr and "--local" in result.stderr
    assert "retrying:" in result.stderr  # said without -v
    assert "Traceback" not in result.stderr


# -- point 9: deletes the API refuses ------------------------------------------------------------


def test_a_delete_refused_as_in_use_is_reported_and_the_others_proceed(tmp_path):
    listing = [item(1, "old-a"), item(2, "old-b"), item(3, "old-c")]
    in_use = Reply(409, body={"requestId": "r409", "message": "Instance 2 is in use by formula instance 77"})

    def answer(received):
        if received.method == "GET":
            return Reply(200, {"elements-total-count": "3"}, listing)
        return in_use if received.path == "/instances/2" else Reply(200, body={})

    with ScriptedServer(default=answer) as srv:
        result = run_cli(tmp_path, srv.base_url, "apply", "--prune", "--force", *FAST, count=0)
    assert result.returncode == 1
    assert sorted(writes(srv)) == ["DELETE /instances/1", "DELETE /instances/2", "DELETE /instances/3"]
    assert "old-b" in result.stderr and "in use by formula instance 77" in result.stderr


# -- point 5: a signal ends any run, whatever the server does ------------------------------------


@pytest.mark.parametrize(("command", "signum", "code"), [("plan", signal.SIGTERM, 143), ("apply", signal.SIGINT, 130)])
def test_a_signal_ends_the_run_even_while_the_server_drips(tmp_path, command, signum, code):
    empty = Reply(404, body={"message": "No instances found"})
    script = [] if command == "plan" else [empty]
    with ScriptedServer(script, default=Drip(0.3)) as srv:
        work = tmp_path / "work"
        work.mkdir()
        write(work, "m.yaml", manifest_text(STACK, 2))
        env = {
            **base_env(),
            "CE_API_URL": srv.base_url,
            "CE_USER_SECRET": USER_SECRET,
            "CE_ORGANIZATION_SECRET": ORG_SECRET,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "provisioner", command, "m.yaml", "--outputs", "o.json"]
            if command == "apply"
            else [sys.executable, "-m", "provisioner", command, "m.yaml"],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while len([r for r in srv.requests if r.method == ("GET" if command == "plan" else "POST")]) == 0:
            assert time.monotonic() < deadline and proc.poll() is None, "the run never reached the dripping request"
            time.sleep(0.05)
        # the dripping request has arrived: from here on the server answers it one byte at a time
        signalled = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - signalled
    assert proc.returncode == code, stderr
    assert took < 5, f"the run took {took:.1f} s to end after the signal (designed for 2 s)"
    assert "Traceback" not in stderr


@pytest.mark.parametrize("command", ["drift", "plan"])
def test_a_listed_token_echoed_as_a_name_or_a_message_never_reaches_the_output(tmp_path, command):
    """A listing's tokens are indexed by the redactor only once a text could hold one: an API that
    echoes one as another instance's name (drift lists it; plan warns of it) or inside server text
    still gets it masked, in text and in JSON."""
    token = "Tk9ULUEtUkVBTC1UT0tFTi1idXQtbG9va3MtbGlrZS1vbmU="
    listing = [
        item(1, "helpdesk-0", token=token),
        item(2, token),  # an owned, undeclared instance named after the token
        item(3, f"helpdesk-1 ({token})", owned=False),
    ]
    with ScriptedServer(default=Reply(200, {"elements-next-page-token": ""}, listing)) as srv:
        for output in ([], ["-o", "json"]):
            result = run_cli(tmp_path, srv.base_url, command, *output, *FAST)
            assert "Traceback" not in result.stderr and result.returncode in (0, 1, 2), result.stderr
            assert token not in result.stdout + result.stderr
            assert "********" in result.stdout + result.stderr, result.stdout + result.stderr
