"""Overlapping pipelines: several applies of one stack at once, with and without faults, and an
apply racing a destroy. After they end, every token delivered by a run that exited 0 belongs to an
instance that still exists, and one more apply leaves exactly one copy of each declared instance."""

from __future__ import annotations

import json
import time

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
    # the apply takes about 3 s (100 ms a request, 4 at once); the destroy starts a third of the way in
    h.write_manifest(COUNT)
    h.faults(FaultConfig(latency_ms=100))
    apply = h.popen("apply", *FLAGS[:-1], "4", "--outputs", "out/apply.json")
    deadline = time.monotonic() + 60
    while len(h.instances()) < COUNT // 3 and time.monotonic() < deadline and apply.poll() is None:
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
