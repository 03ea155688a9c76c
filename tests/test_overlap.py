"""Overlapping pipelines: several applies of one stack at once, with and without faults, and an
apply racing a destroy. After they end, every token delivered by a run that exited 0 belongs to an
instance that still exists, and one more apply leaves exactly one copy of each declared instance."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qsl

import pytest
from reliability_helpers import Harness, names

from provisioner.emulator import FaultConfig

COUNT = 120
FLAGS = ("--timeout", "2", "--connect-timeout", "1", "--settle", "1", "--parallelism", "8")


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path).start()
    yield harness
    harness.stop()


def delivered(h: Harness, path: str) -> dict:
    file = h.work / path
    return json.loads(file.read_text(encoding="utf-8")) if file.exists() else {"instances": {}}


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param(FaultConfig(latency_ms=20), id="quiet"),
        pytest.param(FaultConfig(latency_ms=20, error_rate=0.1, reset_rate=0.1, lost_rate=0.1, seed=11), id="faults"),
    ],
)
def test_overlapping_applies_deliver_only_live_tokens_and_converge(h, faults):
    h.write_manifest(COUNT)
    h.faults(faults)
    procs = [h.popen("apply", *FLAGS, "--outputs", f"out/run{i}.json") for i in range(3)]
    runs = [h.record(proc, ("apply",), 0, timeout=300) for proc in procs]
    h.faults(None)
    for i, run in enumerate(runs):
        assert run.returncode in (0, 1), run.stderr[-2000:]
        assert "internal error" not in run.stderr
        if run.returncode == 0:
            document = delivered(h, f"out/run{i}.json")
            assert sorted(document["instances"]) == sorted(names(COUNT))
            h.assert_tokens_match(document)  # every token delivered is a live instance's
    again = h.run("apply", "--outputs", "out/tokens.json")
    assert again.returncode == 0, again.stderr
    h.assert_converged(names(COUNT))
    for i, run in enumerate(runs):  # what a successful run delivered is still there after convergence
        if run.returncode == 0:
            h.assert_tokens_match(delivered(h, f"out/run{i}.json"))
    for i in range(3):  # outputs files the user asked for; the canary search covers everything else
        (h.work / f"out/run{i}.json").unlink(missing_ok=True)
    assert h.leaks() == []


def test_an_apply_racing_a_destroy_never_exits_0_with_deleted_tokens(h):
    # the apply takes about 9 s (150 ms a request, 2 at once); the destroy starts once it has made a few
    # instances and has about 8 s to finish before the apply's final check, even on a loaded machine
    h.write_manifest(COUNT)
    h.faults(FaultConfig(latency_ms=150))
    apply = h.popen("apply", *FLAGS[:-1], "2", "--outputs", "out/apply.json")
    deadline = time.monotonic() + 60
    while len(h.instances()) < 5 and time.monotonic() < deadline and apply.poll() is None:
        time.sleep(0.01)
    destroy = h.run("destroy", "--yes", "--parallelism", "8")
    run = h.record(apply, ("apply",), 0, timeout=300)
    assert destroy.returncode in (0, 1), destroy.stderr
    assert "internal error" not in run.stderr
    assert run.returncode == 1, "the apply's instances were deleted under it, yet it reported success"
    assert "was deleted while this run was applying (a concurrent destroy or prune?)" in run.stderr
    h.assert_tokens_match(delivered(h, "out/apply.json"))  # only tokens of instances that still exist
    h.faults(None)
    again = h.run("apply", "--outputs", "out/tokens.json")
    assert again.returncode == 0, again.stderr
    h.assert_converged(names(COUNT))


def test_a_destroy_refused_for_an_instance_in_use_reports_it_and_deletes_the_others(h):
    h.write_manifest(3)
    assert h.run("apply", "--outputs", "out/tokens.json").returncode == 0
    used = next(r for r in h.instances() if r["name"] == "hd-1")
    h.db.mark_in_use(used["id"], "formula instance 'nightly-sync'")
    run = h.run("destroy", "--yes")
    assert run.returncode == 1
    assert "hd-1" in run.stderr and "in use" in run.stderr and "nightly-sync" in run.stderr
    assert [r["name"] for r in h.instances()] == ["hd-1"]  # the other two are gone
    deletes = [r for r in h.db.requests() if r["method"] == "DELETE"]
    assert len(deletes) == 3  # the refused delete is not retried


def _check_filters(h: Harness) -> list[str]:
    """The tags[] filters of the listings the last apply made after its last create (its final check)."""
    log = h.db.requests()
    last_post = max(i for i, r in enumerate(log) if r["method"] == "POST")
    check = [r for r in log[last_post + 1 :] if r["method"] == "GET"]
    assert all(r["status"] == 200 for r in check)
    return sorted(value for r in check for key, value in parse_qsl(r["query"]) if key == "tags[]")


def test_the_final_check_and_the_lookups_read_the_stacks_own_listing(h):
    """After its last create, a run lists its stack (filtered by the stack marker alone, page after
    page); a create of unknown outcome is looked up the same way. No other tag is written for it."""
    h.write_manifest(450)
    h.faults(FaultConfig(lost_rate=0.02, methods=("POST",), seed=3))
    run = h.run("apply", "--parallelism", "16", "--settle", "0.5")
    h.faults(None)
    assert run.returncode == 0, run.stderr
    instances = h.instances()
    assert sorted(i["name"] for i in instances) == sorted(names(450))
    assert not [t for i in instances for t in i["tags"] if t.startswith("provisioner:shard")]
    marker = f"provisioner:stack={h.stack}"
    log = h.db.requests()
    first_post = min(i for i, r in enumerate(log) if r["method"] == "POST")
    listed = [v for r in log[first_post:] if r["method"] == "GET" for k, v in parse_qsl(r["query"]) if k == "tags[]"]
    # 450 instances: each listing is three pages of the stack's own; lookups of lost creates, then the check
    assert set(listed) == {marker} and len(listed) % 3 == 0 and len(listed) > 3


def test_a_clean_run_checks_its_creates_with_one_count_and_no_listing(h):
    """Every create answered with its instance, nothing else written: the API's count (a page of one
    item, the query of the plan's listing) equals the plan's listing plus the creates, so no other
    copy can exist and the stack is not listed again."""
    h.write_manifest(450)
    h.post_instance("someone-elses")  # counted by the plan's listing too
    run = h.run("apply", "--parallelism", "8")
    assert run.returncode == 0, run.stderr
    log = h.db.requests()
    last_post = max(i for i, r in enumerate(log) if r["method"] == "POST")
    after = [dict(parse_qsl(r["query"])) for r in log[last_post + 1 :]]
    assert after == [{"pageSize": "1", "hydrate": "false"}]
    assert len(h.instances()) == 451


def test_a_count_that_disagrees_makes_the_final_check_list_the_stack(h):
    """An instance created by someone else while the run was creating changes the count: the final
    check then lists the stack, page after page."""
    h.write_manifest(12)
    h.faults(FaultConfig(latency_ms=100))
    apply = h.popen("apply", "--parallelism", "1")
    deadline = time.monotonic() + 30
    while not any(r["method"] == "POST" for r in h.db.requests()) and time.monotonic() < deadline:
        time.sleep(0.05)
    h.post_instance("appeared-meanwhile")
    assert apply.wait(60) == 0
    h.faults(None)
    assert _check_filters(h) == [f"provisioner:stack={h.stack}"]


def test_a_copy_another_run_made_first_is_found_by_the_final_check_and_ours_deleted(h):
    """Another run created hd-7 while this one was creating it: the older copy wins, this run
    deletes its own copy and delivers the other's token."""
    h.write_manifest(12)
    h.faults(FaultConfig(latency_ms=150))
    apply = h.popen("apply", "--parallelism", "1", "--outputs", "out/run.json")
    deadline = time.monotonic() + 30
    while not h.instances() and time.monotonic() < deadline:  # the run is creating: plan done, hd-7 not made
        time.sleep(0.01)
    other = h.post_instance("hd-7", "helpdesk", f"provisioner:stack={h.stack}", "provisioner:run=other")
    run = h.record(apply, ("apply",), 0, timeout=120)
    h.faults(None)
    assert run.returncode == 0, run.stderr
    copies = [i for i in h.instances() if i["name"] == "hd-7"]
    assert [c["id"] for c in copies] == [other["id"]]
    assert "hd-7: delivering the oldest copy" in run.stdout + run.stderr
    assert delivered(h, "out/run.json")["instances"]["hd-7"]["token"] == other["token"]
    h.assert_converged(names(12), delivered(h, "out/run.json"))


def test_in_a_big_stack_a_copy_another_run_made_first_is_found_by_the_final_check(h):
    """440 instances exist; this run adds hd-440, and another run's copy of hd-440 is committed after
    this run's listing and before its create: the final check lists the stack (three pages), finds
    the older copy, delivers its token and deletes its own."""
    h.write_manifest(440)
    assert h.run("apply", "--parallelism", "16").returncode == 0
    h.write_manifest(441)
    h.db.clear_requests()
    h.faults(FaultConfig(latency_ms=300))
    apply = h.popen("apply", "--parallelism", "1", "--outputs", "out/run.json")
    deadline = time.monotonic() + 30
    while sum(r["method"] == "GET" for r in h.db.requests()) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)  # the run's listing (3 pages) is answered: its create comes next, 300 ms late
    assert h.emulator is not None and h.emulator.store is not None
    configuration = {
        "helpdesk.connectwise.username": "api1",
        "helpdesk.connectwise.password": h.password("hd-440"),
        "helpdesk.connectwise.server.url": "api-na.myconnectwise.net",
        "helpdesk.connectwise.company": "acme",
    }
    tags = ["helpdesk", f"provisioner:stack={h.stack}", "provisioner:run=other"]
    other = h.emulator.store.create_instance("hd-440", "connectwisehd", "connectwisehd", tags, configuration)
    run = h.record(apply, ("apply",), 0, timeout=120)
    h.faults(None)
    assert run.returncode == 0, run.stderr
    assert [c["id"] for c in h.instances() if c["name"] == "hd-440"] == [other.id]
    assert delivered(h, "out/run.json")["instances"]["hd-440"]["token"] == other.token
    assert _check_filters(h) == [f"provisioner:stack={h.stack}"] * 3
    h.assert_converged(names(441), delivered(h, "out/run.json"))
