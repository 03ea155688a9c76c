"""The emulator's rate limit, its in-use deletes and its gzip answers, over real HTTP on loopback.

An independent client (requests, or raw sockets where the bytes matter) talks to the emulator; the
assertions are on what it answered and on what its database holds. Nothing here depends on timing:
rate limits are set so low that no token comes back during a test, and the token bucket's refill
is checked with a clock the test moves.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from test_emulator import API, AUTH, ORG_SECRET, USER_SECRET, Client, Raw, assert_error, create, cw_body, raw_request

from provisioner.emulator import ENV_VAR, Emulator, EmulatorDB, FaultConfig
from provisioner.emulator.faults import RateLimiter, retry_after_header
from provisioner.emulator.server import accepts_gzip

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 10


@pytest.fixture
def emulator(tmp_path: Path):
    emu = Emulator(tmp_path / "emulator.db", USER_SECRET, ORG_SECRET)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def api(emulator: Emulator):
    client = Client(emulator.url)
    yield client
    client.close()


@pytest.fixture
def db(emulator: Emulator) -> EmulatorDB:
    return EmulatorDB(emulator.db_path)


@pytest.fixture
def raw(emulator: Emulator):
    connection = Raw(emulator)
    yield connection
    connection.close()


# -- configuration ------------------------------------------------------------------------------


def test_rate_limit_and_methods_settings_parse_and_describe():
    config = FaultConfig.parse("latency=20,ratelimit=50,burst=80,error=30%,methods=post+delete")
    assert (config.ratelimit_rps, config.burst, config.bucket_size) == (50, 80, 80)
    assert config.methods == ("POST", "DELETE") and config.error_rate == pytest.approx(0.3)
    assert config.describe() == (
        "latency 20 ms, error 30%, faults only on POST/DELETE, rate limit 50/s per organization (burst 80)"
    )
    assert FaultConfig.parse("ratelimit=0.5").bucket_size == 1  # at least one request
    assert FaultConfig.parse("ratelimit=100").bucket_size == 100  # one second's worth by default
    assert FaultConfig(ratelimit_rps=10).active
    assert FaultConfig.from_env({ENV_VAR: "ratelimit=7,burst=3"}) == FaultConfig(ratelimit_rps=7, burst=3)
    assert FaultConfig().merged(ratelimit=5, methods=("GET",)) == FaultConfig(ratelimit_rps=5, methods=("GET",))


@pytest.mark.parametrize(
    "text, match",
    [
        ("burst=0.5", "'burst' must be at least 1"),
        ("ratelimit=-1", "'ratelimit' must not be negative"),
        ("ratelimit=fast", "'ratelimit' must be a number"),
        ("methods=FETCH", "'methods' takes methods joined by '\\+'"),
        ("methods=", "'methods' takes methods"),
    ],
)
def test_rate_limit_setting_errors(text, match):
    with pytest.raises(ValueError, match=match):
        FaultConfig.parse(text)


def test_token_bucket_refills_at_the_rate_up_to_its_size():
    now = [100.0]
    bucket = RateLimiter(rate=4.0, size=2.0, clock=lambda: now[0])
    assert [bucket.take(b"org"), bucket.take(b"org")] == [0.0, 0.0]
    assert bucket.take(b"org") == pytest.approx(0.25)  # empty: a token comes in 1/4 s
    assert bucket.take(b"other") == 0.0  # buckets are per organization
    now[0] += 0.1
    assert bucket.take(b"org") == pytest.approx(0.15)  # refused requests take nothing
    now[0] += 0.15
    assert bucket.take(b"org") == 0.0
    now[0] += 60  # a long pause saves up no more than the bucket's size
    assert [bucket.take(b"org") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.25)]


def test_retry_after_is_whole_seconds_rounded_up():
    assert [retry_after_header(w) for w in (0.001, 0.5, 1.0, 1.01, 2.5, 99.2)] == ["1", "1", "1", "2", "3", "100"]


# -- the rate limit over HTTP -------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_and_commits_nothing(api: Client, db: EmulatorDB, emulator: Emulator):
    emulator.faults = FaultConfig(ratelimit_rps=0.01, burst=3)  # one token per 100 s: none comes back
    for i in range(3):
        assert api.post("/instances", json=cw_body(f"ok-{i}")).status_code == 200
    refused = [api.post("/instances", json=cw_body(f"refused-{i}")) for i in range(2)]
    refused.append(api.get("/instances"))  # every method draws from the same bucket
    for response in refused:
        body = assert_error(response, 429)
        assert "Rate limit exceeded" in body["message"] and "0.01 requests per second" in body["message"]
        assert response.headers["Retry-After"].isdigit() and 90 <= int(response.headers["Retry-After"]) <= 100
    assert [i["name"] for i in db.instances()] == ["ok-0", "ok-1", "ok-2"]  # nothing refused was created
    assert [(r["method"], r["status"], r["fault"]) for r in db.requests()] == [("POST", 200, None)] * 3 + [
        ("POST", 429, "ratelimit")
    ] * 2 + [("GET", 429, "ratelimit")]


def test_rate_limit_is_per_organization(api: Client, emulator: Emulator):
    emulator.faults = FaultConfig(ratelimit_rps=0.01, burst=1)
    assert api.get("/elements/keys").status_code == 200
    assert api.get("/elements/keys").status_code == 429
    other = Client(emulator.url, auth=f"User {USER_SECRET}, Organization another-org")
    try:  # its own full bucket: the request reaches the API, which refuses the secret
        assert_error(other.get("/elements/keys"), 401)
        assert other.get("/elements/keys").status_code == 429
    finally:
        other.close()
    emulator.faults = FaultConfig()  # a new configuration starts without limits
    assert api.get("/elements/keys").status_code == 200


def test_rate_limit_takes_tokens_only_from_requests_that_reach_the_api(api: Client, db: EmulatorDB, emulator: Emulator):
    emulator.faults = FaultConfig(ratelimit_rps=0.01, burst=1, error_rate=1.0, seed=1)
    assert api.get("/elements/keys").status_code in (500, 502, 503)  # stopped before the gateway's count
    emulator.faults = FaultConfig(ratelimit_rps=0.01, burst=1, lost_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        api.post("/instances", json=cw_body("lost"))  # reached the API: committed, answer lost
    assert_error(api.post("/instances", json=cw_body("late")), 429)  # refused: delivered, not lost
    assert [i["name"] for i in db.instances()] == ["lost"]
    assert [(r["status"], r["fault"]) for r in db.requests()][1:] == [(0, "lost"), (429, "ratelimit")]


def test_rate_limit_through_the_command_line(tmp_path: Path):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CE_USER_SECRET": USER_SECRET,
        "CE_ORGANIZATION_SECRET": ORG_SECRET,
        ENV_VAR: "ratelimit=0.01,burst=2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner", "emulator", "--port", "0", "--db", str(tmp_path / "e.db")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        client = Client(url)
        statuses = [client.get("/elements/keys").status_code for _ in range(3)]
        client.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=TIMEOUT)
    assert statuses == [200, 200, 429]
    assert "rate limit 0.01/s per organization (burst 2)" in err
    assert "GET /elements/api-v2/elements/keys -> 429" in err and "[ratelimit]" in err


def test_faults_limited_to_one_method(api: Client, db: EmulatorDB, emulator: Emulator):
    emulator.faults = FaultConfig(error_rate=1.0, methods=("POST",))
    assert_error(api.get("/instances"), 404, "No instances found")  # a GET is left alone
    assert api.post("/instances", json=cw_body()).status_code in (500, 502, 503)
    assert db.instances() == []
    assert [(r["method"], r["fault"]) for r in db.requests()] == [("GET", None), ("POST", "error")]


def test_a_method_filter_keeps_the_seeded_stream(api: Client, emulator: Emulator):
    def statuses(config: FaultConfig) -> list[int]:
        emulator.faults = config
        return [
            api.post("/elements/keys").status_code if i % 2 else api.get("/elements/keys").status_code
            for i in range(30)
        ]

    every = statuses(FaultConfig(error_rate=0.4, seed=5))
    posts_only = statuses(FaultConfig(error_rate=0.4, seed=5, methods=("POST",)))
    # the same draws: POSTs fail exactly where they failed before, GETs never do
    assert [s for i, s in enumerate(posts_only) if i % 2] == [s for i, s in enumerate(every) if i % 2]
    assert {s for i, s in enumerate(posts_only) if not i % 2} == {200}


# -- DELETE refused while in use ----------------------------------------------------------------


def test_delete_of_an_instance_in_use_is_409_and_keeps_it(api: Client, db: EmulatorDB):
    used, free = create(api, cw_body("used")), create(api, cw_body("free"))
    db.mark_in_use(used["id"])
    response = api.delete(f"/instances/{used['id']}")
    body = assert_error(response, 409)
    assert f"Element instance {used['id']} is in use" in body["message"]
    assert_error(api.delete(f"/elements/connectwisehd/instances/{used['id']}"), 409)
    assert api.delete(f"/instances/{free['id']}").status_code == 200  # the others are deleted
    assert [i["name"] for i in db.instances()] == ["used"]
    assert api.put(f"/instances/{used['id']}", json=cw_body("renamed")).status_code == 200  # only DELETE refuses
    db.release(used["id"])
    assert api.delete(f"/instances/{used['id']}").status_code == 200
    assert db.instances() == []
    assert [(r["method"], r["status"]) for r in db.requests() if r["method"] == "DELETE"] == [
        ("DELETE", 409),
        ("DELETE", 409),
        ("DELETE", 200),
        ("DELETE", 200),
    ]


def test_mark_in_use_names_the_user_and_needs_an_instance(api: Client, db: EmulatorDB):
    instance = create(api)
    db.mark_in_use(instance["id"], "formula instance 'sync-contacts'")
    assert "in use by formula instance 'sync-contacts'" in api.delete(f"/instances/{instance['id']}").json()["message"]
    with pytest.raises(KeyError, match="no instance with id 999"):
        db.mark_in_use(999)


# -- gzip ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, accepted",
    [
        ("gzip, deflate", True),
        ("GZIP", True),
        ("x-gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip;q=0.0, *", False),
        ("*;q=0", False),
        ("identity", False),
        ("deflate", False),
        ("", False),
        (None, False),
        ("gzip;q=bad", False),
        ("br;q=1, *;q=0.1", True),
    ],
)
def test_accept_encoding_parsing(value, accepted):
    assert accepts_gzip(value) is accepted


def _page_of(api: Client, count: int) -> None:
    for i in range(count):
        create(api, cw_body(f"gz-{i}", tags=["gz"]))


def test_large_answers_are_gzipped_for_clients_that_accept_it(api: Client, raw: Raw):
    _page_of(api, 5)
    path = f"{API}/instances?pageSize=200"
    raw.send(
        raw_request("GET", path, headers={"Accept-Encoding": "gzip, deflate"})
        + raw_request("GET", path)  # pipelined: a second answer in step after a compressed one
        + raw_request("GET", f"{API}/instances/count", headers={"Accept-Encoding": "gzip"})
    )
    (s1, h1, b1), (s2, h2, b2), (s3, h3, b3) = raw.response(), raw.response(), raw.response()
    assert (s1, s2, s3) == (200, 200, 200)
    assert h1["content-encoding"] == "gzip" and h1["vary"] == "Accept-Encoding"
    assert int(h1["content-length"]) == len(b1) < len(b2)
    assert "content-encoding" not in h2 and h2["vary"] == "Accept-Encoding" and len(b2) > 1024
    assert gzip.decompress(b1) == b2
    assert [i["name"] for i in json.loads(b2)] == [f"gz-{i}" for i in range(5)]
    assert h1["elements-total-count"] == "5"
    assert "content-encoding" not in h3 and "vary" not in h3 and json.loads(b3) == {"count": 5}  # small: as is


def test_requests_reads_gzipped_pages_transparently(api: Client):
    _page_of(api, 3)
    response = api.get("/instances", params={"pageSize": 200})  # requests sends "gzip, deflate"
    assert response.headers["Content-Encoding"] == "gzip"
    assert [i["name"] for i in response.json()] == ["gz-0", "gz-1", "gz-2"]
    identity = api.get("/instances", params={"pageSize": 200}, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in identity.headers and identity.json() == response.json()


def test_head_gets_the_headers_of_the_gzipped_answer(raw: Raw):
    long_path = f"{API}/{'x' * 2000}"  # a 404 whose message repeats the path: over 1 KB
    raw.send(
        raw_request("HEAD", long_path, headers={"Accept-Encoding": "gzip"})
        + raw_request("GET", long_path, headers={"Accept-Encoding": "gzip"})
    )
    head_status, head_headers, _ = raw.response(head=True)
    status, headers, body = raw.response()
    assert head_status == status == 404
    assert head_headers["content-encoding"] == headers["content-encoding"] == "gzip"
    assert int(headers["content-length"]) == len(body) < 1024  # the compressed size
    # HEAD announces the size its GET would have (the request ids differ, so a byte or two may too)
    assert abs(int(head_headers["content-length"]) - len(body)) <= 4
    assert json.loads(gzip.decompress(body))["message"] == f"No resource found at {long_path}"


def test_gzipped_error_answers_and_large_uploads(api: Client, db: EmulatorDB):
    response = api.post("/instances", json=cw_body("large-gz", **{"helpdesk.connectwise.company": "c" * 3000}))
    assert response.status_code == 200 and response.headers["Content-Encoding"] == "gzip"
    assert response.json()["name"] == "large-gz"
    missing = ",".join(f"k{i}" for i in range(400))
    error = api.get(f"/elements/{missing}")
    assert error.headers["Content-Encoding"] == "gzip"
    assert_error(error, 404, f"No element found with key or id '{missing}'")
    assert [i["name"] for i in db.instances()] == ["large-gz"]


def test_concurrent_gzip_clients(api: Client, emulator: Emulator):
    _page_of(api, 20)
    results: list[list[str]] = []

    def worker() -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = AUTH
            for _ in range(5):
                page = session.get(f"{emulator.url}/instances?pageSize=200", timeout=TIMEOUT)
                results.append([i["name"] for i in page.json()])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[f"gz-{i}" for i in range(20)]] * 20
