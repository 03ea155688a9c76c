"""Issue 17, the API side: the real CLI against a stateful scripted API that answers what the real
one should not. Each test counts what the server received (POSTs per name above all) and holds, and
reads everything the run printed.

* a create is sent again only after an attempt the server refused (429, or a 5xx or no answer
  followed by a listing without a copy of the name), and a 2xx answer is never a refusal;
* only the documented empty answer is an empty organization;
* answers are bounded (size, nesting, a dripping head) and listings obey --max-attempts;
* a day-long Retry-After stops the run at once, with one message, tracing only what was sent;
* ids are integers; server text is redacted at its cut edges.
"""

from __future__ import annotations

import json
import time
import tracemalloc
import zlib
from collections import Counter
from typing import Any

import pytest
from conftest import ORG_SECRET, USER_SECRET, listed, manifest_text, write
from scripted_server import RESET, Drip, Received, Reply, ScriptedServer
from test_hostile_api import FAST, STACK, item, pages, run_cli, writes

from provisioner.api.client import Client, ClientSettings
from provisioner.errors import InconsistentListing, TransportError
from provisioner.secret import Secret

EMPTY = Reply(404, body={"message": "No instances found"})
PASSWORD = "Zq8hunter2Lx93Pw7Tk"


class FakeApi:
    """A small stateful API: the listing (tags[] filter, the documented empty 404), creates answered
    by ``create(made)``, GET and DELETE by id. ``copies`` instances are made per create; ``hidden``
    ones are never listed; ``tokens`` says where a token is given ("list", "get")."""

    def __init__(self, create=lambda made: Reply(201, body=made), copies=1, hidden=False, tokens=("list", "get")):
        self.create, self.copies, self.hidden, self.tokens = create, copies, hidden, tokens
        self.instances: dict[int, dict] = {}
        self.posts: Counter[str] = Counter()
        self.events: list[tuple[str, Any, float]] = []  # ("POST", name) or ("LIST", names listed), when
        self.next_id = 100

    def __call__(self, r: Received) -> Any:
        if r.path == "/instances" and r.method == "GET":
            wanted = r.query.get("tags[]", [])
            listed = [i for i in self.instances.values() if all(t in i["tags"] for t in wanted)]
            self.events.append(("LIST", set() if self.hidden else {i["name"] for i in listed}, r.time))
            if self.hidden or not listed:
                return EMPTY
            return Reply(200, {"elements-total-count": str(len(listed))}, [self._shown(i, "list") for i in listed])
        if r.path == "/instances" and r.method == "POST":
            body = r.json()
            self.posts[body["name"]] += 1
            self.events.append(("POST", body["name"], r.time))
            made = [self._make(body) for _ in range(self.copies)]
            return self.create(made[0])
        ident = int(r.path.rsplit("/", 1)[1])
        if ident not in self.instances:
            return Reply(404, body={"message": f"No instance found with ID {ident}"})
        if r.method == "DELETE":
            del self.instances[ident]
            return Reply(200, body={})
        return Reply(200, body=self._shown(self.instances[ident], "get"))

    def _make(self, body: dict) -> dict:
        self.next_id += 1
        made = {**item(self.next_id % 60, body["name"]), "id": self.next_id, "tags": body["tags"]}
        made["token"] = f"tok-{self.next_id}-Qz81"
        self.instances[self.next_id] = made
        return made

    def _shown(self, instance: dict, where: str) -> dict:
        return instance if where in self.tokens else {k: v for k, v in instance.items() if k != "token"}

    def names(self) -> Counter[str]:
        return Counter(i["name"] for i in self.instances.values())

    def assert_sent_again_only_when_refused(self) -> None:
        """Each POST of a name after its first follows a listing without a copy of it, taken after
        the previous POST."""
        last: dict[str, float] = {}
        refused: dict[str, bool] = {}
        for kind, what, when in self.events:
            if kind == "LIST":
                refused.update({name: name not in what for name, t in last.items() if when >= t})
            else:
                assert what not in last or refused.get(what), f"{what} sent again with no listing proving a refusal"
                last[what], refused[what] = when, False


def apply(tmp_path, srv, *args: str, count: int = 1, env: dict | None = None):
    result = run_cli(tmp_path, srv.base_url, "apply", "--outputs", "out.json", *FAST, *args, count=count, extra_env=env)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    return result


def outputs(tmp_path) -> dict:
    return json.loads((tmp_path / "work" / "out.json").read_text())["instances"]


@pytest.mark.parametrize("body", [b'[{"id": 1', b"", b'{"id": 1}'], ids=["cut", "empty", "object"])
def test_a_count_whose_page_is_not_a_list_is_not_trusted_and_the_stack_is_listed(tmp_path, body):
    """The final check's count (a page of one item) announces the right total, but its page is cut short
    or not a list: the header of such an answer is not trusted, and the stack is listed instead."""
    api = FakeApi()

    def answer(r: Received) -> Any:
        if r.method == "GET" and r.query.get("pageSize") == ["1"]:
            return Reply(200, {"elements-total-count": str(len(api.instances))}, body)
        return api(r)

    with ScriptedServer(default=answer) as srv:
        result = apply(tmp_path, srv, count=3)
        after = [r.query for r in srv.requests if r.method == "GET"][-2:]
    assert result.returncode == 0, result.stderr
    assert after[0].get("pageSize") == ["1"] and after[1].get("pageSize") != ["1"]  # the count, then the listing
    assert api.names() == Counter({f"helpdesk-{n}": 1 for n in range(3)})


# -- point 3: every create ends in exactly one instance or a clear report -------------------------

ODD = {
    "empty": b"",
    "null": "null",
    "list": "[]",
    "string": '"created"',
    "no-id": '{"name": "x"}',
    "no-token": '{"id": 9, "name": "helpdesk-0"}',
    "token-null": '{"id": 9, "token": null}',
}


@pytest.mark.parametrize("case", sorted(ODD))
def test_an_odd_create_answer_is_never_sent_again_even_when_the_listing_never_shows_it(tmp_path, case):
    api = FakeApi(create=lambda _made: Reply(200, {"Content-Type": "application/json"}, ODD[case]), hidden=True)
    with ScriptedServer(default=api) as srv:
        result = apply(tmp_path, srv, count=6)
    assert result.returncode == 1
    assert api.posts == Counter({f"helpdesk-{n}": 1 for n in range(6)})  # once: 78 instances before
    for n in range(6):
        assert f"helpdesk-{n}: create outcome unknown" in result.stderr, result.stderr
    assert "tok-" not in result.stdout + result.stderr


def test_a_5xx_create_that_was_made_is_looked_up_not_sent_again_and_a_429_is_retried(tmp_path):
    answers = iter(["429", "201", "503"])

    def create(made):
        answer = next(answers, "201")
        if answer == "429":  # refused: nothing made
            del api.instances[made["id"]]
            return Reply(429, {"Retry-After": "0"}, {"message": "slow"})
        return Reply(201, body=made) if answer == "201" else Reply(503, body={"message": "made, then failed"})

    api = FakeApi(create=create)
    with ScriptedServer(default=api) as srv:
        result = apply(tmp_path, srv, "--parallelism", "1", count=2)
    # helpdesk-0: 429 then created (2 POSTs, one instance); helpdesk-1: 503 after the server made it
    assert api.posts == Counter({"helpdesk-0": 2, "helpdesk-1": 1})
    assert result.returncode == 0, result.stderr
    assert api.names() == Counter({"helpdesk-0": 1, "helpdesk-1": 1})
    assert set(outputs(tmp_path)) == {"helpdesk-0", "helpdesk-1"}


def test_a_5xx_create_that_made_nothing_is_sent_again_after_a_listing_without_it_within_max_attempts(tmp_path):
    def create(made):
        del api.instances[made["id"]]  # refused, which the next listing proves
        return Reply(500, body={"message": "x"})

    api = FakeApi(create=create)
    with ScriptedServer(default=api) as srv:
        result = apply(tmp_path, srv, count=3)
    assert result.returncode == 1 and api.instances == {}
    assert api.posts == Counter({f"helpdesk-{n}": 3 for n in range(3)})  # FAST: --max-attempts 3
    api.assert_sent_again_only_when_refused()
    assert result.stderr.count("create outcome unknown") == 3, result.stderr


@pytest.mark.parametrize("made", [False, True], ids=["reset-unprocessed", "made-then-reset"])
def test_a_create_that_got_no_answer_is_sent_again_only_after_a_listing_without_it(tmp_path, made):
    first: set[str] = set()

    def create(instance):
        if instance["name"] in first:
            return Reply(201, body=instance)
        first.add(instance["name"])
        if not made:
            del api.instances[instance["id"]]
        return RESET

    api = FakeApi(create=create)
    with ScriptedServer(default=api) as srv:
        result = apply(tmp_path, srv, "--settle", "0.5", count=3)
    assert result.returncode == 0, result.stderr
    assert api.names() == Counter({f"helpdesk-{n}": 1 for n in range(3)})
    assert api.posts == Counter({f"helpdesk-{n}": 1 if made else 2 for n in range(3)})
    api.assert_sent_again_only_when_refused()
    assert set(outputs(tmp_path)) == {f"helpdesk-{n}" for n in range(3)}


def test_a_created_instance_with_no_token_anywhere_is_reported_by_name_with_its_id(tmp_path):
    api = FakeApi(create=lambda made: Reply(200, body={"id": made["id"]}), tokens=())
    with ScriptedServer(default=api) as srv:
        result = apply(tmp_path, srv, "--parallelism", "1", count=2)
    assert result.returncode == 1
    assert api.posts == Counter({"helpdesk-0": 1, "helpdesk-1": 1}) and api.names() == api.posts
    for name, ident in (("helpdesk-0", 101), ("helpdesk-1", 102)):
        assert f"{name}: instance id {ident} was created, but the API gave no token" in result.stderr, result.stderr
    assert sorted(r.path for r in srv.requests if r.path.startswith("/instances/")) == [
        "/instances/101",
        "/instances/102",
    ]
    assert outputs(tmp_path) == {}


def test_a_token_missing_from_the_answer_and_the_listing_is_read_by_id(tmp_path):
    api = FakeApi(create=lambda made: Reply(200, body={"id": made["id"]}), tokens=("get",))
    with ScriptedServer(default=api) as srv:
        result = apply(tmp_path, srv, count=1)
    assert result.returncode == 0, result.stderr
    assert api.posts == Counter({"helpdesk-0": 1})
    assert outputs(tmp_path)["helpdesk-0"] == {"id": 101, "element": "connectwisehd", "token": "tok-101-Qz81"}


def test_copies_this_run_made_beyond_the_one_reported_are_deleted(tmp_path):
    api = FakeApi(create=lambda _made: Reply(200, body={}), copies=3)  # one POST, three instances
    with ScriptedServer(default=api) as srv:
        result = apply(tmp_path, srv, count=1)
    assert result.returncode == 0, result.stderr
    assert api.posts == Counter({"helpdesk-0": 1}) and list(api.instances) == [101]
    assert sorted(w for w in writes(srv) if w.startswith("DELETE")) == [
        "DELETE /instances/102",
        "DELETE /instances/103",
    ]
    assert outputs(tmp_path)["helpdesk-0"]["id"] == 101


# -- point 4: only the documented empty answer is empty ------------------------------------------

OTHER_404 = [
    "No instances found.",
    "No instances found for account 7",
    "no instances found",
    "No element instances found",
]


@pytest.mark.parametrize("message", OTHER_404)
@pytest.mark.parametrize("command", ["plan", "apply", "destroy"])
def test_any_other_404_on_the_listing_is_an_error_naming_the_url(tmp_path, message, command):
    with ScriptedServer(default=Reply(404, body={"message": message})) as srv:
        extra = ("--yes",) if command == "destroy" else ()
        result = run_cli(tmp_path, srv.base_url, command, *FAST, *extra)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{srv.base_url}/instances is not an instance listing" in result.stderr, result.stderr
    assert writes(srv) == [] and "to create" not in result.stdout
    assert "Traceback" not in result.stderr


def test_the_documented_empty_answer_is_an_empty_organization(tmp_path):
    with ScriptedServer(default=EMPTY) as srv:
        result = run_cli(tmp_path, srv.base_url, "plan", *FAST)
    assert result.returncode == 0, result.stderr
    assert "2 to create" in result.stdout


def test_a_next_page_answered_404_is_an_inconsistent_listing(tmp_path):
    first = Reply(200, {"elements-next-page-token": "p2"}, [item(1, "other", owned=False)])
    with ScriptedServer([first, EMPTY] * 3) as srv:
        result = run_cli(tmp_path, srv.base_url, "apply", *FAST)
    assert result.returncode == 1 and "a next page answered 404" in result.stderr, result.stderr
    assert writes(srv) == []


# -- point 7: bounded reading --------------------------------------------------------------------


def test_an_answer_over_max_answer_bytes_is_an_error_naming_the_url_and_the_limit(tmp_path):
    big = [item(n, f"other-{n}", owned=False, notes="x" * 200) for n in range(50)]
    with ScriptedServer(default=Reply(200, {}, big)) as srv:
        result = run_cli(tmp_path, srv.base_url, "plan", *FAST, "--max-answer-bytes", "4096")
    assert result.returncode == 1
    assert f"{srv.base_url}/instances" in result.stderr
    assert "larger than the limit of 4096 bytes (--max-answer-bytes)" in result.stderr, result.stderr
    assert len(srv.requests) == 1  # not retried: the same answer would come back


def test_a_gzip_bomb_costs_at_most_the_cap():
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip
    spaces = b" " * (1 << 20)
    bomb = b"".join(packer.compress(spaces) for _ in range(256)) + packer.flush()  # 256 MB, 256 KB packed
    gzip = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    settings = ClientSettings(max_attempts=1, max_answer_bytes=8 << 20)
    with ScriptedServer(default=Reply(200, gzip, bomb)) as srv:
        client = Client(srv.base_url, Secret("user-secret-x1"), Secret("org-secret-y2"), settings)
        tracemalloc.start()
        with client, pytest.raises(TransportError) as info:
            listed(client)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert f"larger than the limit of {8 << 20} bytes (--max-answer-bytes)" in str(info.value)
    assert f"GET {srv.base_url}/instances" in str(info.value)
    assert peak < 24 << 20, f"peak {peak >> 20} MB for an 8 MB cap"


@pytest.mark.parametrize("depth", [101, 100_000])
def test_json_nested_past_the_limit_is_a_clear_error(tmp_path, depth):
    nested = '[{"id": 1, "name": "x", "configuration": {"a": ' + "[" * depth + "]" * depth + "}}]"
    with ScriptedServer(default=Reply(200, {"Content-Type": "application/json"}, nested)) as srv:
        result = run_cli(tmp_path, srv.base_url, "plan", *FAST)
    assert result.returncode == 1
    assert "nested deeper than the limit of 100 levels" in result.stderr and srv.base_url in result.stderr
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr


def test_a_create_answered_with_deep_json_is_looked_up_not_sent_again(tmp_path):
    deep = "[" * 5000 + "]" * 5000
    api = FakeApi(create=lambda _made: Reply(200, {"Content-Type": "application/json"}, deep))
    with ScriptedServer(default=api) as srv:
        result = apply(tmp_path, srv, count=1)
    assert result.returncode == 0, result.stderr
    assert api.posts == Counter({"helpdesk-0": 1}) and outputs(tmp_path)["helpdesk-0"]["id"] == 101


def test_a_delete_whose_head_drips_past_the_deadline_is_not_reported_done(tmp_path):
    listing = Reply(200, {"elements-total-count": "1"}, [item(1, "old")])
    drip = Drip(0.02, head=True, body=b"{}")  # about 90 bytes: 1.8 s, against a 0.5 s deadline

    def answer(r: Received) -> Any:
        return listing if r.method == "GET" else drip

    with ScriptedServer(default=answer) as srv:
        args = ("--prune", "--force", "--deadline", "0.5", "--max-attempts", "2", "--max-retry-time", "1")
        result = run_cli(tmp_path, srv.base_url, "apply", *FAST, *args, count=0)
    assert result.returncode == 1
    assert "old" in result.stderr and "within the request deadline" in result.stderr, result.stderr
    assert writes(srv) == ["DELETE /instances/1"]  # the retry budget (1 s) was spent by the first attempt
    assert "1 deleted" not in result.stdout


def test_max_attempts_bounds_the_rereading_of_an_inconsistent_listing(tmp_path):
    repeated = pages([item(1, "a"), item(2, "b")], [item(2, "b")])
    with ScriptedServer(repeated * 3) as srv:
        result = run_cli(tmp_path, srv.base_url, "plan", *FAST[:-2], "--max-attempts", "1")
    assert result.returncode == 1 and "listed twice" in result.stderr
    assert len(srv.requests) == 2  # one reading of two pages, not three readings


HEAD_DRIP = Drip(0.2, head=True)  # a status line and headers that never end: hours, a byte at a time


@pytest.mark.parametrize(
    ("limits", "most"),
    [(("--max-attempts", "2", "--max-retry-time", "60"), 2), (("--max-attempts", "20", "--max-retry-time", "2.5"), 4)],
    ids=["max-attempts", "max-retry-time"],
)
def test_a_listing_whose_head_drips_without_end_fails_within_its_attempts(tmp_path, limits, most):
    """In the main thread an alarm cuts the read of the head at the deadline: the listing is bounded
    by --deadline x --max-attempts, and by --max-retry-time."""
    with ScriptedServer(default=HEAD_DRIP) as srv:
        started = time.monotonic()
        result = run_cli(tmp_path, srv.base_url, "plan", *FAST[:-4], "--deadline", "1", *limits)
        took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert f"GET {srv.base_url}/instances?pageSize=200: no complete answer within the request deadline of 1 s" in (
        result.stderr
    )
    assert 2 <= len(srv.requests) <= most and took < 30


def test_a_delete_whose_head_drips_without_end_is_of_unknown_outcome_and_the_others_proceed(tmp_path):
    """A worker's read cannot be cut: the main thread stops waiting for it a second after its deadline,
    reports the change failed, of unknown outcome, and the other workers go on."""
    listing = Reply(200, {"elements-total-count": "2"}, [item(1, "old"), item(2, "older")])

    def answer(r: Received) -> Any:
        return listing if r.method == "GET" else HEAD_DRIP if r.path == "/instances/1" else Reply(200, body={})

    with ScriptedServer(default=answer) as srv:
        started = time.monotonic()
        args = ("--prune", "--force", "--deadline", "1", "--parallelism", "2")
        result = run_cli(tmp_path, srv.base_url, "apply", *FAST, *args, count=0)
        took = time.monotonic() - started
    assert result.returncode == 1 and took < 30
    assert "old: no complete answer within the request deadline (the API held the request)" in result.stderr
    assert "deleted older id 2" in result.stdout and "1 deleted, 1 failed" in result.stdout, result.stdout
    assert sorted(writes(srv)) == ["DELETE /instances/1", "DELETE /instances/2"]  # neither sent twice


def test_when_the_api_holds_every_worker_the_run_stops(tmp_path):
    listing = Reply(200, {"elements-total-count": "3"}, [item(n, f"old-{n}") for n in (1, 2, 3)])
    with ScriptedServer(default=lambda r: listing if r.method == "GET" else HEAD_DRIP) as srv:
        started = time.monotonic()
        args = ("--prune", "--force", "--deadline", "1", "--parallelism", "1")
        result = run_cli(tmp_path, srv.base_url, "apply", *FAST, *args, count=0)
        took = time.monotonic() - started
    assert result.returncode == 1 and took < 30
    assert "stopped: the API holds every worker's request past its deadline" in result.stderr, result.stderr
    assert "0 deleted, 1 failed, 2 skipped" in result.stdout
    assert writes(srv) == ["DELETE /instances/1"]


@pytest.mark.parametrize("made", [True, False], ids=["made", "not-made"])
def test_a_create_whose_answer_drips_without_end_is_looked_up_and_sent_again_only_if_not_found(tmp_path, made):
    def create(instance: dict) -> Drip:
        if not made:
            del api.instances[instance["id"]]
        return HEAD_DRIP

    api = FakeApi(create=create)
    with ScriptedServer(default=api) as srv:
        started = time.monotonic()
        result = apply(tmp_path, srv, "--deadline", "1", count=1)
        took = time.monotonic() - started
    # no answer, and no copy in the listing after it: sent again, up to --max-attempts (3)
    assert api.posts == Counter({"helpdesk-0": 1 if made else 3}) and took < 30
    if made:
        assert result.returncode == 0, result.stderr
        assert outputs(tmp_path)["helpdesk-0"] == {"id": 101, "element": "connectwisehd", "token": "tok-101-Qz81"}
    else:
        assert result.returncode == 1 and "helpdesk-0: create outcome unknown" in result.stderr, result.stderr
        assert outputs(tmp_path) == {}


def test_a_ping_whose_head_drips_without_end_is_unreachable(tmp_path):
    hub = {"element": {"key": "connectwisehd", "hub": "helpdesk"}}
    listing = Reply(200, {"elements-total-count": "2"}, [item(n + 1, f"helpdesk-{n}", **hub) for n in range(2)])

    def answer(r: Received) -> Any:
        return listing if r.path == "/instances" else HEAD_DRIP if "tok-1-" in r.headers["authorization"] else Reply()

    with ScriptedServer(default=answer) as srv:
        started = time.monotonic()
        result = run_cli(tmp_path, srv.base_url, "check", "--ping", "-o", "json", "--deadline", "1")
        took = time.monotonic() - started
    assert result.returncode == 2 and took < 30, result.stderr
    found = {e["name"]: e for e in json.loads(result.stdout)["instances"]}
    assert found["helpdesk-0"]["status"] == "unreachable" and found["helpdesk-1"]["status"] == "healthy"
    assert found["helpdesk-0"]["detail"] == (
        "ping helpdesk failed: no complete answer within the request deadline (the API held the request)"
    )


# -- point 10: a Retry-After longer than the retry budget stops the run --------------------------


def test_a_day_long_retry_after_stops_the_run_at_once_with_one_message(tmp_path):
    day = Reply(429, {"Retry-After": "86400"}, {"message": "slow down"})
    created = iter([True])

    def answer(r: Received) -> Any:
        if r.method == "GET":
            return EMPTY
        if next(created, False):
            return Reply(201, body={**item(7, r.json()["name"]), "tags": r.json()["tags"]})
        return day

    with ScriptedServer(default=answer) as srv:
        result = apply(tmp_path, srv, "--parallelism", "1", "-v", "--output", "json", count=6)
    doc = json.loads(result.stdout)
    assert result.returncode == 1
    assert [f"{r.method} {r.path}" for r in srv.requests] == ["GET /instances", "POST /instances", "POST /instances"]
    traces = [line for line in result.stderr.splitlines() if line.startswith("HTTP ")]
    assert len(traces) == 3, traces  # no trace for a request that was never sent
    message = "the API asked to wait 86400 s (Retry-After), longer than the retry budget of 3 s"
    assert doc["aborted"] == message
    assert doc["status"] == {"ok": 1, "failed": 0, "skipped": 5}
    skipped = [c for c in doc["changes"] if c["status"] == "skipped"]
    assert [c["name"] for c in skipped] == [f"helpdesk-{n}" for n in range(1, 6)]
    assert all(c["error"]["message"] == message for c in skipped), skipped
    assert "final listing" not in result.stdout + result.stderr


def test_a_day_long_retry_after_stops_parallel_creates_and_only_sent_ones_are_traced(tmp_path):
    day = Reply(429, {"Retry-After": "86400"}, {"message": "slow down"})
    with ScriptedServer(default=lambda r: EMPTY if r.method == "GET" else day) as srv:
        result = apply(tmp_path, srv, "-v", count=6)
    assert result.returncode == 1
    sent = [r for r in srv.requests if r.method == "POST"]
    traces = [line for line in result.stderr.splitlines() if line.startswith("HTTP POST")]
    assert 1 <= len(sent) == len(traces) <= 6, (len(sent), traces)
    assert result.stderr.count("stopped: the API asked to wait 86400 s") == 1, result.stderr
    assert "failed" not in result.stderr and "final listing" not in result.stderr


def test_a_day_long_retry_after_on_the_listing_ends_plan_with_the_reason(tmp_path):
    day = Reply(429, {"Retry-After": "86400"}, {"message": "slow down"})
    with ScriptedServer(default=day) as srv:
        result = run_cli(tmp_path, srv.base_url, "plan", *FAST)
    assert result.returncode == 1 and len(srv.requests) == 1
    assert "the API asked to wait 86400 s (Retry-After), longer than the retry budget of 3 s" in result.stderr


# -- point 11: ids are the API's ids ---------------------------------------------------------------


@pytest.mark.parametrize("ident", ["../622700?x=1#", "622700", 1.5, -3, True])
def test_an_id_that_is_not_an_integer_makes_the_listing_inconsistent(tmp_path, ident):
    listing = Reply(200, {"elements-total-count": "1"}, [{**item(1, "old"), "id": ident}])
    with ScriptedServer(default=listing) as srv:
        result = run_cli(tmp_path, srv.base_url, "apply", "--prune", "--force", *FAST, count=0)
    assert result.returncode == 1
    assert "listing is inconsistent" in result.stderr and "the API's ids are integers" in result.stderr
    assert writes(srv) == []


def test_the_emulator_answers_integer_ids(cli, emulator):
    write(cli.cwd, "m.yaml", manifest_text(STACK, 2))
    assert cli.run("apply", "m.yaml").returncode == 0
    with Client(emulator.url, Secret(USER_SECRET), Secret(ORG_SECRET), ClientSettings()) as client:
        instances = listed(client)
        assert len(instances) == 2 and all(type(i["id"]) is int for i in instances)
        assert type(client.get_instance(instances[0]["id"])["id"]) is int


def test_a_path_like_id_is_never_put_in_a_url():
    with ScriptedServer(default=Reply(200, body={})) as srv:
        with Client(srv.base_url, Secret("user-secret-x1"), Secret("org-secret-y2"), ClientSettings()) as client:
            for call in (client.delete_instance, client.get_instance):
                with pytest.raises(InconsistentListing, match="not an integer"):
                    call("../622700?x=1#")
    assert srv.requests == []


# -- point 5, the API side: server text is redacted at its cut edges -------------------------------


def _echo(cut: int | None = None, half: str | None = None):
    """A server that refuses creates, echoing the request body cut ``cut`` characters into the
    password (padded so that our own cut at 300 falls there too when ``cut`` is negative), or
    quoting one half of the password."""

    def answer(r: Received) -> Any:
        if r.method == "GET":
            return EMPTY
        text = r.body.decode()
        at = text.index(PASSWORD)
        if half is not None:
            return Reply(400, body={"message": f"the password '{half}' is weak", "requestId": "r1"})
        if cut is not None and cut < 0:
            pad = "p" * (297 + cut)  # our cut keeps 297 characters, -cut of them in the password
            return Reply(400, body={"message": pad + text[at:]})
        return Reply(400, body={"message": "invalid: " + text[at - 40 : at + (cut or 0)]})

    return answer


@pytest.mark.parametrize(
    "echo",
    [_echo(cut=7), _echo(cut=12), _echo(cut=-8), _echo(half=PASSWORD[:10]), _echo(half=PASSWORD[9:])],
    ids=["server-cut-7", "server-cut-12", "our-cut-8", "first-half", "second-half"],
)
def test_a_server_echoing_part_of_a_password_never_shows_it(tmp_path, echo):
    with ScriptedServer(default=echo) as srv:
        result = apply(tmp_path, srv, "-v", count=1, env={"CW_PASSWORD": PASSWORD})
        json_run = run_cli(
            tmp_path, srv.base_url, "apply", *FAST, "--output", "json", extra_env={"CW_PASSWORD": PASSWORD}, count=1
        )
    assert result.returncode == 1 and json_run.returncode == 1
    printed = result.stdout + result.stderr + json_run.stdout + json_run.stderr
    assert "create helpdesk-0 failed" in result.stdout and "********" in printed
    for start in range(len(PASSWORD) - 5):  # no piece of 6 characters
        assert PASSWORD[start : start + 6] not in printed, (PASSWORD[start : start + 6], printed)
