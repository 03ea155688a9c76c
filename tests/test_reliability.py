"""Reliability: the real CLI against a misbehaving emulator over loopback.

Every test applies a manifest through ``python -m provisioner`` while the emulator injects faults,
then turns the faults off and checks the emulator's database: exactly the declared instances exist,
each once, each owned by the stack; every token delivered is the server's; and no secret (the API
secrets, the instance passwords, the tokens) shows up in anything the runs printed or wrote.

Set RELIABILITY_FIGURES=/path/file.jsonl to have each fault scenario append its figures (requests,
retries, POSTs, wall time) to that file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from reliability_helpers import FAST_FLAGS, REPO_SCHEMAS, Harness, names

from provisioner.emulator import FaultConfig

OUT = "out/tokens.json"
COUNT = 200
REQUEST_ID = re.compile(r"^[0-9a-f]{24}$")

# Throttling is kept low here only to keep the suite short: each throttled request waits its own
# Retry-After. Random throttling at 30% and a real rate limit are measured by benchmarks/run.py.
SCENARIOS = [
    pytest.param({"error_rate": 0.3}, id="error-30%"),
    pytest.param({"throttle_rate": 0.03, "retry_after": 0.1}, id="throttle-3%"),
    pytest.param({"reset_rate": 0.3}, id="reset-30%"),
    pytest.param({"lost_rate": 0.3}, id="lost-30%"),
    pytest.param({"slow_rate": 0.3, "slow_ms": 1500}, id="slow-30%"),
    # commits land 2 s after the client gave up: the lookup at once misses them and they are sent
    # again; the final check waits --settle (raised to cover the 2 s) and deletes the extra copies.
    pytest.param({"slow_rate": 0.2, "slow_ms": 3000}, id="slow-20%-commit-after-settle"),
    pytest.param(
        {
            "error_rate": 0.15,
            "reset_rate": 0.15,
            "lost_rate": 0.15,
            "slow_rate": 0.15,
            "throttle_rate": 0.02,
            "retry_after": 0.1,
            "slow_ms": 1500,
        },
        id="mixed",
    ),
]


def late_commit_settle(faults: dict) -> tuple[str, ...]:
    """A server that commits a create slow_ms after it arrived commits it slow_ms - timeout after the
    client gave up: --settle must cover that (the one promise the final check makes)."""
    late = faults.get("slow_ms", 0) / 1000 - 1.0  # FAST_FLAGS: --timeout 1
    return ("--settle", f"{late + 0.5:g}") if late > 1.0 else ()


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path).start()
    yield harness
    harness.stop()


def duplicates(h: Harness) -> dict[str, int]:
    return {n: c for n, c in Counter(r["name"] for r in h.instances()).items() if c > 1}


def record_figures(scenario: str, faults: FaultConfig, doc: dict, seconds: float, h: Harness) -> None:
    path = os.environ.get("RELIABILITY_FIGURES")
    if not path:
        return
    figures = {
        "scenario": scenario,
        "faults": faults.describe(),
        "instances": COUNT,
        "requests": doc["requests"]["requests"],
        "retries": doc["requests"]["retries"],
        "serverRequests": len(h.db.requests()),
        "posts": [r["method"] for r in h.db.requests()].count("POST"),
        "duplicates": sum(c - 1 for c in duplicates(h).values()),
        "notes": len(doc["notes"]),
        "seconds": round(seconds, 1),
    }
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(figures) + "\n")


@pytest.mark.parametrize("faults", SCENARIOS)
def test_a_faulted_apply_converges_in_one_run_with_no_duplicate_and_no_lost_token(h, faults, request):
    config = FaultConfig(seed=20240611, **faults)
    h.write_manifest(COUNT)
    h.faults(config)
    run = h.run("apply", *FAST_FLAGS, *late_commit_settle(faults), "--outputs", OUT, "--output", "json", "-v")
    doc = run.json()
    assert run.returncode == 0, run.stderr[-3000:]
    assert doc["ok"] is True and doc["status"] == {"ok": COUNT, "failed": 0, "skipped": 0}
    assert duplicates(h) == {}, "the run left duplicates behind"
    h.assert_tokens_match(h.outputs_document())  # every token delivered, and the server's
    # a create is sent again only after an attempt that failed: POSTs <= names + failed POSTs
    posts = [r for r in h.db.requests() if r["method"] == "POST"]
    assert len(posts) <= COUNT + sum(1 for r in posts if r["fault"] or r["status"] >= 429), len(posts)
    h.faults(None)
    record_figures(request.node.callspec.id, config, doc, run.seconds, h)
    h.assert_converged(names(COUNT))
    plan = h.run("plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout[-2000:] + plan.stderr[-2000:]
    assert h.leaks() == []


def test_creates_refused_at_random_with_429_free_their_workers_and_converge(h):
    # 30% of POSTs answered 429 whatever the rate: once the rate budget has found that, a refused create
    # frees its worker and is sent again in a later round (each after its Retry-After: test_client.py)
    count = 400
    h.write_manifest(count)
    h.faults(FaultConfig(throttle_rate=0.3, retry_after=0.2, methods=("POST",), seed=3))
    run = h.run("apply", "--parallelism", "4", "--outputs", OUT, "-v")
    h.faults(None)
    assert run.returncode == 0, run.stderr[-2000:]
    later = [line for line in run.stderr.splitlines() if "sent again after the other writes" in line]
    in_place = [line for line in run.stderr.splitlines() if "POST /instances -> 429" in line and "retrying" in line]
    assert later and in_place, "both ways were taken: in place at first, freed once the refusals were judged"
    posts = [r for r in h.db.requests() if r["method"] == "POST"]
    assert len(posts) == count + sum(r["status"] == 429 for r in posts)  # one more POST per refusal, no other
    h.assert_converged(names(count))
    assert h.leaks() == []


def test_a_create_committed_late_within_settle_leaves_one_copy_and_delivers_its_token(h):
    # every POST is committed 2.5 s after it arrived, its answer never comes (--timeout 1): the lookup
    # at once misses it, so it is sent again (--max-attempts 2); the final check waits --settle (2.5 s
    # from the last lost answer), keeps the oldest copy and deletes the one this run made besides
    h.write_manifest(2)
    h.faults(FaultConfig(slow_rate=1.0, slow_ms=2500, methods=("POST",)))
    flags = ("--timeout", "1", "--connect-timeout", "1", "--settle", "2.5", "--max-attempts", "2")
    run = h.run("apply", *flags, "--outputs", OUT, "--output", "json")
    h.faults(None)
    assert run.returncode == 0, run.stderr[-2000:]
    assert [r["method"] for r in h.db.requests()].count("POST") == 4  # two per name: both committed
    assert sum("deleted extra copy" in note for note in run.json()["notes"]) == 2
    h.assert_converged(names(2))  # one copy of each, its token delivered
    assert h.leaks() == []


def test_a_create_committed_after_the_settle_time_with_no_attempt_left_fails_and_the_next_apply_takes_it(h):
    # no copy 0.2 s after the lost answer: refused, but --max-attempts 1 leaves no attempt to send again
    h.write_manifest(1)
    h.faults(FaultConfig(slow_rate=1.0, slow_ms=3000, methods=("POST",)))
    flags = ("--timeout", "1", "--connect-timeout", "1", "--settle", "0.2", "--max-attempts", "1")
    run = h.run("apply", *flags, "--outputs", OUT)
    h.faults(None)
    assert run.returncode == 1
    assert "hd-0: create outcome unknown" in run.stderr, run.stderr[-2000:]
    deadline = time.monotonic() + 30
    while not h.instances():  # the server commits it later
        assert time.monotonic() < deadline, "the slow create was never committed"
        time.sleep(0.05)
    again = h.run("apply", "--outputs", OUT)
    assert again.returncode == 0, again.stderr
    assert [r["method"] for r in h.db.requests()].count("POST") == 1  # never sent again
    h.assert_converged(names(1))
    assert h.leaks() == []


def test_one_instance_the_server_refuses_does_not_stop_the_others(h):
    """Schema drift: a local schema (--schemas) that no longer requires a key the server requires.
    The server answers 400 for those instances; every other instance is created and delivered."""
    lenient = h.work / "lenient"
    lenient.mkdir()
    schema = json.loads((REPO_SCHEMAS / "connectwisehd.json").read_text(encoding="utf-8"))
    schema["required"].remove("helpdesk.connectwise.company")
    (lenient / "connectwisehd.json").write_text(json.dumps(schema), encoding="utf-8")
    refused = ["drift-a", "drift-b", "drift-c"]
    h.write_manifest(
        60,
        extra="""\
  - forEach: [a, b, c]
    name: "drift-{{ item }}"
    element: connectwisehd
    configuration:
      helpdesk.connectwise.username: api1
      helpdesk.connectwise.password: "{{ env.CANARY_PW }}-drift-{{ item }}"
      helpdesk.connectwise.server.url: api-na.myconnectwise.net
""",
    )
    assert h.run("validate", "--schemas", "lenient").returncode == 0
    h.faults(FaultConfig(error_rate=0.2, seed=7, methods=("GET",)))  # listings meet 5xx on the way
    run = h.run("apply", "--schemas", "lenient", *FAST_FLAGS, "--settle", "0.5", "--outputs", OUT)
    h.faults(None)
    assert run.returncode == 1, run.stderr[-2000:]
    assert f"{len(refused)} change(s) failed:" in run.stderr
    for name in refused:
        line = next(line for line in run.stderr.splitlines() if line.startswith(f"  {name}: "))
        assert "Missing required configuration entries: helpdesk.connectwise.company" in line, line
        request_id = re.search(r"\(requestId ([^)]*)\)$", line)
        assert request_id and REQUEST_ID.match(request_id[1]), line
    assert "60 created" in run.stdout and "3 failed" in run.stdout
    assert sorted(r["name"] for r in h.instances()) == sorted(names(60))
    h.assert_tokens_match(h.outputs_document())
    assert sorted(h.outputs_document()["instances"]) == sorted(names(60))
    # the same in JSON: each failure with its message, requestId and status
    again = h.run("apply", "--schemas", "lenient", *FAST_FLAGS, "--outputs", OUT, "--output", "json", "-v")
    assert again.returncode == 1
    doc = again.json()
    failed = {c["name"]: c["error"] for c in doc["changes"] if c["status"] == "failed"}
    assert sorted(failed) == refused
    assert all(e["httpStatus"] == 400 and REQUEST_ID.match(e["requestId"]) for e in failed.values())
    assert len({e["requestId"] for e in failed.values()}) == len(refused)
    assert doc["status"] == {"ok": 60, "failed": 3, "skipped": 0}
    h.assert_converged(names(60))
    assert h.leaks() == []


def test_duplicates_made_behind_the_back_are_reported_and_deleted_keeping_the_oldest(h):
    """Extra owned copies of a declared name are the same instance: plan shows them as deletes, apply
    keeps the oldest (and updates it), with or without --prune. An owned but undeclared instance is
    deleted only with --prune."""
    h.write_manifest(3)
    session = requests.Session()
    session.headers["Authorization"] = f"User {h.user_secret}, Organization {h.org_secret}"
    marker = f"provisioner:stack={h.stack}"

    def create(name: str, company: str) -> int:
        body = {
            "name": name,
            "element": {"key": "connectwisehd"},
            "tags": ["helpdesk", marker],
            "configuration": {
                "helpdesk.connectwise.username": "api1",
                "helpdesk.connectwise.password": h.password(name),
                "helpdesk.connectwise.server.url": "api-na.myconnectwise.net",
                "helpdesk.connectwise.company": company,
            },
        }
        answer = session.post(h.emulator.url + "/instances", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()["id"]

    try:
        oldest = {"hd-1": create("hd-1", "old-company"), "hd-2": create("hd-2", "acme")}
        extra = [create("hd-1", "acme"), create("hd-1", "acme"), create("hd-2", "acme")]
        undeclared = create("hd-9", "acme")
    finally:
        session.close()
    plan = h.run("plan", "--detailed-exitcode")
    assert plan.returncode == 2
    for copy in extra:
        assert re.search(rf"warning: hd-\d: duplicate instance id {copy} of id \d+", plan.stderr), plan.stderr
    doc = h.run("plan", "--output", "json").json()
    assert sorted(c["id"] for c in doc["changes"] if c["action"] == "delete") == sorted(extra)
    assert {c["id"]: c["action"] for c in doc["changes"] if c["name"] in oldest and c["id"] in oldest.values()} == {
        oldest["hd-1"]: "update",
        oldest["hd-2"]: "update",
    }  # both lack the password fingerprint
    applied = h.run("apply", "--outputs", OUT)
    assert applied.returncode == 0, applied.stderr
    assert sorted(r["id"] for r in h.instances() if r["name"] != "hd-0") == sorted([*oldest.values(), undeclared])
    assert h.run("apply", "--prune", "--outputs", OUT).returncode == 0
    rows = h.assert_converged(names(3))
    assert {n: rows[n]["id"] for n in oldest} == oldest
    assert rows["hd-1"]["configuration"]["helpdesk.connectwise.company"] == "acme"  # the oldest, updated
    assert h.run("plan", "--detailed-exitcode").returncode == 0
    assert h.leaks() == []


def test_with_duplicates_present_apply_delivers_the_token_of_the_copy_it_keeps(h):
    h.write_manifest(1)
    assert h.run("apply").returncode == 0
    first = h.instances()[0]
    session = requests.Session()
    session.headers["Authorization"] = f"User {h.user_secret}, Organization {h.org_secret}"
    body = {
        "name": "hd-0",
        "element": {"key": "connectwisehd"},
        "tags": first["tags"],
        "configuration": {**first["configuration"], "helpdesk.connectwise.password": h.password("hd-0")},
    }
    try:
        assert session.post(h.emulator.url + "/instances", json=body, timeout=10).status_code == 200
    finally:
        session.close()
    output = h.run("output")
    assert json.loads(output.stdout)["instances"]["hd-0"]["id"] == first["id"]
    assert h.run("apply", "--outputs", OUT).returncode == 0
    assert h.outputs_document()["instances"]["hd-0"]["id"] == first["id"], "apply delivered the duplicate"
    h.assert_converged(names(1))
    assert h.leaks() == []


def test_a_password_full_of_syntax_reaches_the_server_byte_for_byte_and_is_never_shown(h):
    c = h.pw_canary  # on every line: a secret may be printed line by line
    tricky = f"{c}-'\"\\ {{{{ 7*7 }}}} {{% raw %}}\n{c}: - # ünïcødé 💥\r\n{c}-end"
    (h.work / "templates").mkdir()
    (h.work / "templates" / "body.yaml.j2").write_text(
        "configuration:\n  helpdesk.connectwise.password: {{ env.TRICKY }}\n", encoding="utf-8"
    )
    h.write_manifest(
        1,
        extra="""\
  - name: templated
    element: connectwisehd
    template: templates/body.yaml.j2
    configuration:
      helpdesk.connectwise.username: api1
      helpdesk.connectwise.server.url: api-na.myconnectwise.net
      helpdesk.connectwise.company: acme
  - name: inline
    element: connectwisehd
    configuration:
      helpdesk.connectwise.username: api1
      helpdesk.connectwise.password: "{{ env.TRICKY }}"
      helpdesk.connectwise.server.url: api-na.myconnectwise.net
      helpdesk.connectwise.company: acme
""",
    )
    env = {"TRICKY": tricky}
    assert h.run("apply", "-v", "--outputs", OUT, env=env).returncode == 0
    stored = {r["name"]: r["configuration"]["helpdesk.connectwise.password"] for r in h.instances()}
    assert stored == {"hd-0": h.password("hd-0"), "templated": tricky, "inline": tricky}
    assert h.run("plan", "--detailed-exitcode", "-v", env=env).returncode == 0
    assert h.run("plan", "--output", "json", env=env).returncode == 0
    changed = h.run("plan", env={"TRICKY": tricky + "2"})
    assert "(sensitive) -> (sensitive)" in changed.stdout
    assert h.leaks() == []


def test_the_leak_search_finds_a_canary_and_a_token(h):
    """The leak search itself works: it finds what it looks for."""
    h.write_manifest(1)
    assert h.run("apply", "--outputs", OUT).returncode == 0
    token = h.instances()[0]["token"]
    shutil.copy(h.outputs, h.work / "copy-of-outputs.json")
    (h.tmp / "crash.log").write_text(f"{h.pw_canary}-0", encoding="utf-8")
    assert sorted(h.leaks()) == sorted(
        [f"canary {h.pw_canary} in tmp/crash.log", "a token in work/copy-of-outputs.json"]
    )
    assert token in Path(h.outputs).read_text(encoding="utf-8")
