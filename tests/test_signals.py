"""Interruption: SIGTERM, SIGINT and SIGKILL sent to a real apply in the middle of its work.

SIGTERM/SIGINT must stop the run cooperatively (no new request after the signal, in-flight ones get
a second to finish), write the outputs file for what was done and exit 143/130, within 2 s even when
the server drips its answer. SIGKILL gives no chance to do anything: the next apply must still
converge with no duplicate, and every token must be retrievable with ``provisioner output``.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import ORG_SECRET, USER_SECRET, base_env, manifest_text, write
from reliability_helpers import Harness, names
from scripted_server import Drip, Reply, ScriptedServer

from provisioner.emulator import FaultConfig

OUT = "out/tokens.json"
COUNT = 300
PARALLELISM = 4
FLAGS = (
    "--timeout",
    "5",
    "--connect-timeout",
    "1",
    "--settle",
    "1",
    "--parallelism",
    str(PARALLELISM),
    "--outputs",
    OUT,
)


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path).start()
    yield harness
    harness.stop()


def wait_for_instances(h: Harness, proc, at_least: int, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while len(h.instances()) < at_least:
        assert proc.poll() is None, "apply ended before it could be interrupted"
        assert time.monotonic() < deadline, "apply did not start creating instances"
        time.sleep(0.02)


QUIET = FaultConfig(latency_ms=50)
# 5xx, resets and answers lost after the commit: a lost create in flight at the signal exists on the
# server without the run knowing it, and the next apply must adopt it, not create it again
FAULTY = FaultConfig(latency_ms=50, error_rate=0.15, reset_rate=0.15, lost_rate=0.15, seed=5)


@pytest.mark.parametrize(
    ("signum", "code", "output", "faults"),
    [
        pytest.param(signal.SIGTERM, 143, "text", QUIET, id="SIGTERM"),
        pytest.param(signal.SIGINT, 130, "json", QUIET, id="SIGINT"),
        pytest.param(signal.SIGTERM, 143, "json", FAULTY, id="SIGTERM-faults"),
    ],
)
def test_a_signal_stops_new_requests_delivers_what_was_done_and_the_next_apply_converges(
    h, signum, code, output, faults
):
    h.write_manifest(COUNT)
    h.faults(faults)
    args = ("apply", *FLAGS, "-v", *(("--output", "json") if output == "json" else ()))
    started = time.monotonic()
    proc = h.popen(*args)
    wait_for_instances(h, proc, 20)  # about a second in: startup, the listing, the first creates
    moment = time.time()
    proc.send_signal(signum)
    run = h.record(proc, args, time.monotonic() - started)
    assert run.returncode == code, run.stderr[-3000:]
    # no request started after the signal, except those already in flight (at most one per worker)
    late = h.requests_started_after(moment)
    assert len(late) <= PARALLELISM, late
    assert all(r["start"] < moment + 0.5 for r in late), late
    # what the run created is delivered with the server's tokens (all of it, unless an answer was lost)
    created = sorted(r["name"] for r in h.instances())
    assert 20 <= len(created) < COUNT
    document = h.outputs_document()
    h.assert_tokens_match(document)
    if faults is QUIET:
        assert sorted(document["instances"]) == created
    if output == "json":
        doc = run.json()
        assert doc["interrupted"] == signum and doc["ok"] is False
        assert doc["status"]["ok"] == len(document["instances"])
        assert doc["status"]["skipped"] + doc["status"]["failed"] == COUNT - len(document["instances"])
    else:
        assert f"interrupted by signal {signum}" in run.stderr
    h.faults(None)
    again = h.run("apply", *FLAGS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{COUNT - len(created)} created" in again.stdout
    h.assert_converged(names(COUNT))
    assert h.leaks() == []


def test_sigterm_while_refused_creates_wait_for_a_later_round_skips_them_and_the_next_apply_converges(h):
    """30% of POSTs refused with 429 at random: once the budget has found that, refused creates wait for
    a later round (their workers free); a signal then ends the run at once, those creates not sent again."""
    h.write_manifest(COUNT)
    h.faults(FaultConfig(latency_ms=50, throttle_rate=0.3, retry_after=1.0, methods=("POST",), seed=5))
    args = ("apply", *FLAGS, "--parallelism", "16", "-v", "--output", "json")  # enough answers a second to judge
    started = time.monotonic()
    proc = h.popen(*args)
    trace = h.root / f"run{len(h.procs) - 1}.err"
    while "sent again after the other writes" not in trace.read_text(encoding="utf-8"):  # the rounds have begun
        assert proc.poll() is None and time.monotonic() < started + 60, "no create was left for a later round"
        time.sleep(0.02)
    moment = time.time()
    proc.send_signal(signal.SIGTERM)
    run = h.record(proc, args, time.monotonic() - started)
    assert run.returncode == 143, run.stderr[-3000:]
    late = h.requests_started_after(moment)
    assert len(late) <= 16 and all(r["start"] < moment + 0.5 for r in late), late
    doc = run.json()
    assert doc["interrupted"] == signal.SIGTERM and doc["status"]["skipped"] > 0
    h.assert_tokens_match(h.outputs_document())
    h.faults(None)
    again = h.run("apply", *FLAGS)
    assert again.returncode == 0, again.stderr[-3000:]
    h.assert_converged(names(COUNT))
    assert h.leaks() == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_moment_then_apply_converges_and_every_token_is_retrievable(h, seed):
    """Killed while creates are in flight, some of them committed with their answer lost."""
    moment = random.Random(seed).uniform(0.0, 2.5)
    h.write_manifest(COUNT)
    h.faults(FaultConfig(latency_ms=50, lost_rate=0.1, seed=seed))
    args = ("apply", *FLAGS)
    started = time.monotonic()
    proc = h.popen(*args)
    wait_for_instances(h, proc, 1)
    time.sleep(moment)
    proc.kill()
    run = h.record(proc, args, time.monotonic() - started)
    assert run.returncode in (-signal.SIGKILL, 0, 1)  # 0/1 only if it finished before the kill
    h.faults(None)
    again = h.run("apply", *FLAGS)
    assert again.returncode == 0, again.stderr[-3000:]
    h.assert_converged(names(COUNT))
    output = h.run("output")
    assert output.returncode == 0, output.stderr
    h.assert_converged(names(COUNT), outputs=json.loads(output.stdout))
    assert h.leaks() == []


def test_an_apply_interrupted_before_its_final_check_still_converges_with_no_duplicate(h):
    # one instance: the create is slow (times out at 1 s, committed at 2 s); the lookup at once finds
    # nothing and --max-attempts 1 leaves no attempt to send it again. The final check waits for the
    # settle time (until about 5 s): the signal arrives between the late commit and it.
    h.write_manifest(1)
    h.faults(FaultConfig(slow_rate=1.0, slow_ms=2000, methods=("POST",)))
    args = (
        "apply",
        "--timeout",
        "1",
        "--connect-timeout",
        "1",
        "--settle",
        "4",
        "--max-attempts",
        "1",
        "--parallelism",
        "1",
        "--outputs",
        OUT,
    )
    started = time.monotonic()
    proc = h.popen(*args)
    wait_for_instances(h, proc, 1)
    proc.send_signal(signal.SIGTERM)
    run = h.record(proc, args, time.monotonic() - started)
    h.faults(None)
    assert run.returncode == 143 and len(h.instances()) == 1, run.stderr[-1000:]
    # the next apply takes the copy the interrupted run could not check for
    made = h.instances()[0]["id"]
    again = h.run("apply", "--outputs", OUT)
    assert again.returncode == 0, again.stderr
    assert [r["method"] for r in h.db.requests()].count("POST") == 1
    assert h.assert_converged(names(1))["hd-0"]["id"] == made
    assert h.leaks() == []


@pytest.mark.parametrize("head", [False, True], ids=["drip-body", "drip-head"])
@pytest.mark.parametrize("command", ["apply", "plan"])
def test_sigterm_ends_a_run_within_two_seconds_while_the_server_drips(tmp_path, command, head):
    """The server drips its answer one byte every 0.3 s (its head too, for ``drip-head``), which
    neither a read timeout nor the request deadline ends soon. A plan blocked on its listing ends at
    once; an apply stops waiting for its dripping creates a second after the signal, writes the
    token of the create that was answered, and exits 143 although a worker is still blocked."""
    empty = Reply(404, body={"message": "No instances found"})
    made = Reply(200, body={"id": 41, "name": "helpdesk-0", "token": "tok-41-Qz81"})
    script = [] if command == "plan" else [empty, made]
    write(tmp_path, "m.yaml", manifest_text("tests", 3))
    env = {**base_env(), "CE_USER_SECRET": USER_SECRET, "CE_ORGANIZATION_SECRET": ORG_SECRET}
    args = ["--parallelism", "1", "--outputs", "o.json"] if command == "apply" else []
    with ScriptedServer(script, default=Drip(0.3, head=head)) as srv:
        env["CE_API_URL"] = srv.base_url
        proc = subprocess.Popen(
            [sys.executable, "-m", "provisioner", command, "m.yaml", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        dripping = 1 if command == "plan" else 3  # the listing; or the listing, one create, the next
        stderr, took = sigterm_once_dripping(proc, srv, dripping)
    assert proc.returncode == 143, stderr
    assert took < 2.0, f"the run took {took:.1f} s to end after the signal"
    assert "Traceback" not in stderr
    assert len(srv.requests) == dripping  # nothing started after the signal
    if command == "apply":
        outputs = json.loads((tmp_path / "o.json").read_text())["instances"]
        assert outputs == {"helpdesk-0": {"id": 41, "element": "connectwisehd", "token": "tok-41-Qz81"}}


def test_sigterm_ends_check_ping_within_two_seconds_while_a_ping_drips(tmp_path):
    """check --ping runs its pings on the apply stage's workers: a ping blocked on a dripping answer
    is abandoned a second after the signal, and the command exits 143."""
    listed = [
        {
            "id": n,
            "name": f"helpdesk-{n}",
            "element": {"key": "connectwisehd", "hub": "helpdesk"},
            "tags": ["provisioner:stack=tests"],
            "token": f"tok-{n}-Qz81",
        }
        for n in range(3)
    ]
    write(tmp_path, "m.yaml", manifest_text("tests", 3))
    env = {**base_env(), "CE_USER_SECRET": USER_SECRET, "CE_ORGANIZATION_SECRET": ORG_SECRET}
    with ScriptedServer([Reply(200, body=listed)], default=Drip(0.3, head=True)) as srv:
        env["CE_API_URL"] = srv.base_url
        command = [sys.executable, "-m", "provisioner", "check", "m.yaml", "--ping", "--parallelism", "1"]
        proc = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        stderr, took = sigterm_once_dripping(proc, srv, 2)  # the listing, then the first ping
    assert proc.returncode == 143, stderr
    assert took < 2.0, f"check took {took:.1f} s to end after the signal"
    assert "Traceback" not in stderr and "interrupted by signal 15" in stderr
    assert [r.path for r in srv.requests] == ["/instances", "/hubs/helpdesk/ping"]  # nothing after the signal


def sigterm_once_dripping(proc: subprocess.Popen, srv: ScriptedServer, requests: int) -> tuple[str, float]:
    """SIGTERM half a second after the server got ``requests`` requests (the last one dripping): the
    run's stderr and the seconds it took to end after the signal."""
    deadline = time.monotonic() + 30
    while len(srv.requests) < requests:
        assert time.monotonic() < deadline and proc.poll() is None, "the run never reached the drip"
        time.sleep(0.02)
    time.sleep(0.5)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    return stderr, time.monotonic() - signalled
