"""Client against a real loopback server: retries, ambiguous creates, paging, errors, interruption,
secrets and statistics."""

from __future__ import annotations

import base64
import errno
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from conftest import listed
from scripted_server import CLOSE, RESET, Hang, Reply, ScriptedServer, TunnelProxy, closed_port

from provisioner import __version__
from provisioner.api.client import Client, ClientSettings
from provisioner.api.ratelimit import RateBudget
from provisioner.api.stats import RequestStats
from provisioner.api.transport import classify
from provisioner.errors import (
    AmbiguousCreate,
    ApiError,
    BadRequest,
    Conflict,
    InconsistentListing,
    Interrupted,
    NotFound,
    RateLimited,
    SendLater,
    ServerError,
    TransportError,
    Unauthorized,
    UserError,
)
from provisioner.interrupt import StopFlag
from provisioner.secret import Secret

USER = "user-secret-7Hq2ZpX9"
ORG = "org-secret-Lm4Kd81Q"
FAST = ClientSettings(
    connect_timeout=0.5,
    read_timeout=0.5,
    max_attempts=5,
    max_retry_time=5.0,
    backoff_base=0.01,
    backoff_cap=0.05,
    parallelism=4,
    page_size=2,
)
OK = Reply(200, body={"id": 7, "name": "crm"})


@pytest.fixture
def server():
    with ScriptedServer() as srv:
        yield srv


@pytest.fixture
def lines():
    return []


def make_client(base_url: str, lines: list[str] | None = None, settings: ClientSettings = FAST, **kwargs) -> Client:
    trace = lines.append if lines is not None else None
    return Client(base_url, Secret(USER), Secret(ORG), settings, trace=trace, **kwargs)


@pytest.fixture
def client(server, lines):
    with make_client(server.base_url, lines) as cli:
        yield cli


def methods(server: ScriptedServer) -> list[str]:
    return [r.method for r in server.requests]


# -- retries --------------------------------------------------------------------------------


def test_get_retries_503_then_succeeds(server, client, lines):
    server.add(Reply(503), Reply(503), OK)
    assert client.get_instance(7) == {"id": 7, "name": "crm"}
    assert [r.path for r in server.requests] == ["/instances/7"] * 3
    assert len(lines) == 3
    assert lines[0].startswith("HTTP GET /instances/7 -> 503 (") and "retrying in" in lines[0]
    assert "(attempt 2/5)" in lines[0] and "(attempt 3/5)" in lines[1]
    assert lines[2].startswith("HTTP GET /instances/7 -> 200 (")


def test_retry_after_is_honoured(server, client):
    server.add(Reply(503, {"Retry-After": "0.3"}), OK)
    client.get_instance(7)
    first, second = server.requests
    assert second.time - first.time >= 0.25


def test_429_retry_after_and_exception_field(server, lines):
    server.add(*[Reply(429, {"Retry-After": "0.05"}, {"message": "slow down"})] * 3)
    settings = ClientSettings(**{**FAST.__dict__, "max_attempts": 3})
    with make_client(server.base_url, lines, settings) as cli, pytest.raises(RateLimited) as info:
        cli.get_element("sfdc")
    assert info.value.retry_after == pytest.approx(0.05)
    assert len(server.requests) == 3
    assert "giving up after 3 attempts" in lines[-1]


def test_429_pause_is_shared_across_threads(server, lines, monkeypatch):
    monkeypatch.setattr("provisioner.api.ratelimit.LONG_PAUSE", 0.2)  # a "long" Retry-After, kept short for the test
    throttled = threading.Event()
    trace_lock = threading.Lock()

    def trace(line: str) -> None:
        with trace_lock:
            lines.append(line)
        if "-> 429" in line:
            throttled.set()

    server.add(Reply(429, {"Retry-After": "0.3"}, {"message": "too many"}))
    server._default = OK
    with Client(server.base_url, Secret(USER), Secret(ORG), FAST, trace=trace) as cli:
        results = []
        first = threading.Thread(target=lambda: results.append(cli.get_instance(1)))
        first.start()
        assert throttled.wait(5)
        t_429 = server.requests[0].time
        results.append(cli.get_instance(2))  # another worker, not throttled itself
        first.join(5)
    assert len(results) == 2
    later = [r.time for r in server.requests[1:]]
    assert len(later) == 2 and min(later) - t_429 >= 0.25


def test_read_timeout_on_get_is_retried(server, client, lines):
    server.add(Hang(3), OK)
    assert client.get_instance(7)["id"] == 7
    assert len(server.requests) == 2
    assert lines[0].startswith("HTTP GET /instances/7 -> error: read timeout (")


def test_connection_reset_on_put_is_retried(server, client):
    server.add(RESET, OK)
    client.update_instance(7, {"name": "crm"})
    assert methods(server) == ["PUT", "PUT"]


def test_max_attempts_respected(server, client):
    server._default = Reply(502, body={"message": "bad gateway"})
    with pytest.raises(ServerError) as info:
        client.patch_instance(7, {"name": "x"})
    assert len(server.requests) == FAST.max_attempts
    assert info.value.status == 502 and info.value.message == "bad gateway"


def test_retry_time_budget_respected(server, lines):
    server._default = Reply(503, {"Retry-After": "0.3"})
    settings = ClientSettings(**{**FAST.__dict__, "max_attempts": 10, "max_retry_time": 0.5})
    with make_client(server.base_url, lines, settings) as cli, pytest.raises(ServerError):
        cli.get_instance(7)
    assert len(server.requests) == 2  # a third start would need 0.6 s > 0.5 s
    assert "retry time budget" in lines[-1]


@pytest.mark.parametrize("status, error", [(400, BadRequest), (404, NotFound), (409, Conflict), (422, ApiError)])
def test_no_retry_on_other_4xx(server, client, status, error):
    server.add(Reply(status, body={"message": "no", "requestId": "abc123"}))
    with pytest.raises(error) as info:
        client.update_instance(7, {"name": "x"})
    assert type(info.value) is error
    assert len(server.requests) == 1
    assert info.value.request_id == "abc123"


def test_401_is_unauthorized_with_request_id_and_message(server, client):
    server.add(Reply(401, body={"requestId": "5f1e0c", "message": "Invalid Organization or User secret"}))
    with pytest.raises(Unauthorized) as info:
        client.get_instance(7)
    assert info.value.status == 401
    assert info.value.request_id == "5f1e0c"
    assert info.value.message == "Invalid Organization or User secret"
    assert str(info.value) == ("GET /instances/7: HTTP 401: Invalid Organization or User secret (requestId 5f1e0c)")


def test_error_message_details(server, client):
    forbidden = {"message": "Forbidden", "providerMessage": "nope"}
    server.add(
        Reply(403, {"elements-request-id": "hdr-1"}, forbidden),
        Reply(400, body="x" * 1000),
        Reply(400, body={"message": "y" * 1000 + "\x1b[2J\r\nforged"}),
    )
    with pytest.raises(Unauthorized) as info:
        client.get_instance(1)
    assert info.value.message == "Forbidden (provider: nope)" and info.value.request_id == "hdr-1"
    with pytest.raises(BadRequest) as info:
        client.get_instance(1)
    assert "xxx" not in info.value.message  # a body that is not a JSON error is described, never shown
    assert info.value.message == "Bad Request, no JSON error message (1000 bytes of text/plain)"
    with pytest.raises(BadRequest) as info:
        client.get_instance(1)
    assert len(info.value.message) == 300 and "\x1b" not in info.value.message


# -- creates --------------------------------------------------------------------------------


def test_post_500_is_ambiguous_after_one_request(server, client, lines):
    server.add(Reply(500, body={"message": "boom"}))
    with pytest.raises(AmbiguousCreate) as info:
        client.create_instance({"name": "crm"})
    assert len(server.requests) == 1
    assert isinstance(info.value.cause, ServerError)
    assert "not retried" in lines[-1]


def test_post_reset_is_ambiguous(server, client):
    server.add(RESET)
    with pytest.raises(AmbiguousCreate) as info:
        client.create_instance({"name": "crm"})
    assert isinstance(info.value.cause, TransportError) and info.value.cause.ambiguous
    assert len(server.requests) == 1


def test_post_lost_answer_is_ambiguous(server, client):
    server.add(CLOSE)
    with pytest.raises(AmbiguousCreate):
        client.create_instance({"name": "crm"})
    assert len(server.requests) == 1


def test_post_read_timeout_is_ambiguous(server, client):
    server.add(Hang(3))
    with pytest.raises(AmbiguousCreate):
        client.create_instance({"name": "crm"})
    assert len(server.requests) == 1


def test_post_429_is_retried_in_place_while_refusals_may_follow_the_rate(server, client):
    server.add(Reply(429, {"Retry-After": "0.05"}), Reply(200, body={"id": 9, "token": "tk-9"}))
    assert client.create_instance({"name": "crm"}) == {"id": 9, "token": "tk-9"}
    assert methods(server) == ["POST", "POST"]


def random_refusals() -> RateBudget:
    """A rate budget that found the API's 429s random: 4 s of answers, a third refused whatever the rate."""
    now = [0.0]
    budget = RateBudget(clock=lambda: now[0])
    for i in range(400):
        budget.on_throttle(1.0) if i % 3 == 0 else budget.on_success()
        now[0] += 0.01
    assert budget.refusals_random and budget.limit is None
    return budget


def test_post_429_is_sent_again_later_after_its_retry_after(server, lines):
    """Once 429s are known not to follow the rate, a create refused with one is not retried in place (its
    worker takes other work): SendLater says when it may go again, and the call given it waits until then
    and counts on from its attempts."""
    server.add(Reply(429, {"Retry-After": "0.3"}), Reply(200, body={"id": 9, "token": "tk-9"}))
    with make_client(server.base_url, lines, budget=random_refusals()) as client:
        before = time.monotonic()
        with pytest.raises(SendLater) as later:
            client.create_instance({"name": "crm"})
        assert later.value.attempt == 1 and later.value.at >= before + 0.3
        assert methods(server) == ["POST"]
        assert client.create_instance({"name": "crm"}, later.value) == {"id": 9, "token": "tk-9"}
        assert time.monotonic() >= before + 0.3  # not sent again before its Retry-After
    assert methods(server) == ["POST", "POST"]
    assert client.stats.as_dict()["retries"] == 1


def test_post_429_counts_its_attempts_across_sends(server, lines):
    settings = ClientSettings(**{**FAST.__dict__, "max_attempts": 3})
    server.add(*[Reply(429, {"Retry-After": "0"}) for _ in range(3)])
    with make_client(server.base_url, lines, settings, budget=random_refusals()) as cli:
        with pytest.raises(SendLater) as first:
            cli.create_instance({"name": "crm"})
        with pytest.raises(SendLater) as second:
            cli.create_instance({"name": "crm"}, first.value)
        assert second.value.attempt == 2 and second.value.started == first.value.started
        with pytest.raises(RateLimited):  # the third attempt was the last
            cli.create_instance({"name": "crm"}, second.value)
    assert methods(server) == ["POST"] * 3
    assert "giving up after 3 attempts" in lines[-1]


def test_post_400_is_not_retried(server, client):
    server.add(Reply(400, body={"message": "missing configuration: username"}))
    with pytest.raises(BadRequest):
        client.create_instance({"name": "crm"})
    assert len(server.requests) == 1


def test_post_to_closed_port_is_retried_then_unambiguous(lines):
    settings = ClientSettings(**{**FAST.__dict__, "max_attempts": 3})
    with make_client(f"http://127.0.0.1:{closed_port()}/elements/api-v2", lines, settings) as cli:
        with pytest.raises(TransportError) as info:
            cli.create_instance({"name": "crm"})
    assert info.value.ambiguous is False
    assert info.value.message.startswith("connection refused (3 attempts over ")
    assert info.value.url == f"http://127.0.0.1:{cli.base_url.split(':')[2].split('/')[0]}/elements/api-v2"
    assert "CE_API_URL" in str(info.value) and "--local" in str(info.value)
    assert len(lines) == 3 and cli.stats.as_dict()["byStatus"] == {"error": 3}


# -- deletes --------------------------------------------------------------------------------


def test_delete(server, client):
    server.add(Reply(200), Reply(404, body={"message": "No instance found with id 7"}))
    assert client.delete_instance(7) is True
    assert client.delete_instance(7) is False
    assert methods(server) == ["DELETE", "DELETE"]


def test_delete_lost_answer_then_404_counts_as_deleted(server, client):
    server.add(RESET, Reply(404, body={"message": "not found"}))
    assert client.delete_instance(7) is False
    assert len(server.requests) == 2


# -- listing --------------------------------------------------------------------------------


def test_list_pages_with_tags(server, client, lines):
    server.add(
        Reply(200, {"elements-next-page-token": "tok-A"}, [{"id": 1}, {"id": 2}]),
        Reply(200, {"elements-next-page-token": "tok-B"}, [{"id": 3}, {"id": 4}]),
        Reply(200, {"elements-next-page-token": ""}, [{"id": 5}]),
    )
    assert [i["id"] for i in listed(client, ["owner:me", "env:prod"])] == [1, 2, 3, 4, 5]
    got = server.requests
    assert [r.path for r in got] == ["/instances"] * 3
    for r in got:
        assert r.query["tags[]"] == ["owner:me", "env:prod"]
        assert r.query["pageSize"] == ["2"]
    assert "nextPage" not in got[0].query
    assert got[1].query["nextPage"] == ["tok-A"] and got[2].query["nextPage"] == ["tok-B"]
    assert not any("tok-" in line for line in lines)


def test_list_404_no_instances_found_is_empty(server, client):
    server.add(Reply(404, body={"requestId": "r1", "message": "No instances found"}))
    assert listed(client) == []


def test_list_other_404_raises(server, client):
    server.add(Reply(404, body={"message": "Resource not found"}))
    with pytest.raises(ApiError, match="is not an instance listing") as info:
        listed(client)
    assert "/elements/api-v2" in info.value.hint


def test_list_repeated_page_token_is_an_error(server, client):
    server._default = Reply(200, {"elements-next-page-token": "same"}, [{"id": 1}])
    with pytest.raises(InconsistentListing, match="repeated a page token"):
        listed(client)
    assert len(server.requests) == 2


def test_list_non_list_answer_is_an_error(server, client):
    server.add(Reply(200, body={"id": 1}))
    with pytest.raises(InconsistentListing, match="expected a JSON list"):
        listed(client)


# -- interruption ---------------------------------------------------------------------------


def test_stop_flag_set_before_call(server, lines):
    stop = StopFlag()
    stop.set(15)
    with make_client(server.base_url, lines, stop=stop) as cli, pytest.raises(Interrupted) as info:
        cli.get_instance(7)
    assert info.value.exit_code == 143
    assert server.requests == [] and lines == []


def test_stop_flag_cuts_backoff_short(server, lines):
    stop = StopFlag()
    server._default = Reply(503, {"Retry-After": "3"})
    settings = ClientSettings(**{**FAST.__dict__, "max_retry_time": 30.0})
    timer = threading.Timer(0.2, stop.set)
    with make_client(server.base_url, lines, settings, stop=stop) as cli:
        timer.start()
        with pytest.raises(Interrupted):
            cli.get_instance(7)
        timer.join()
    assert len(server.requests) == 1


def test_stop_flag_cuts_rate_budget_pause_short(server, lines):
    stop = StopFlag()
    budget = RateBudget()
    budget.on_throttle(30.0)
    timer = threading.Timer(0.2, stop.set)
    patient = ClientSettings(**{**FAST.__dict__, "max_retry_time": 60.0})
    with make_client(server.base_url, lines, patient, stop=stop, budget=budget) as cli:
        timer.start()
        with pytest.raises(Interrupted):
            cli.get_instance(7)
        timer.join()
    assert server.requests == []


# -- wire format and secrets ----------------------------------------------------------------


def test_headers_and_revealed_body_on_the_wire(server, client):
    server.add(Reply(200, body={"id": 1, "token": "tk-1"}))
    client.create_instance({"name": "crm", "configuration": {"password": Secret("pw-Zx81-very-secret")}})
    (req,) = server.requests
    assert req.headers["authorization"] == f"User {USER}, Organization {ORG}"
    assert req.headers["accept"] == "application/json"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"] == f"provisioner/{__version__}"
    assert req.json() == {"name": "crm", "configuration": {"password": "pw-Zx81-very-secret"}}


def test_secrets_absent_from_traces_and_errors(server, client, lines):
    echo = f"bad header User {USER}, Organization {ORG}; token tok-Qw3rtyUi0p"
    server.add(
        Reply(200, body={"id": 3, "token": "tok-Qw3rtyUi0p"}),
        Reply(401, body={"message": echo}),
        Reply(500, body=echo),
        Reply(500, body=echo),
    )
    client.get_instance(3)  # registers the instance token with the redactor
    with pytest.raises(Unauthorized) as unauthorized:
        client.get_instance(3)
    settings = ClientSettings(**{**FAST.__dict__, "max_attempts": 2})
    with make_client(server.base_url, lines, settings) as cli, pytest.raises(ServerError) as server_error:
        cli.get_instance(3)
    texts = lines + [str(unauthorized.value), repr(unauthorized.value), str(server_error.value), repr(client)]
    for text in texts:
        for secret in (USER, ORG, "tok-Qw3rtyUi0p"):
            assert secret not in text
    assert "********" in str(unauthorized.value)


def test_body_secret_revealed_only_on_the_wire(server, client, lines):
    server.add(Reply(400, body={"message": "bad"}))
    with pytest.raises(BadRequest) as info:
        client.create_instance({"configuration": {"password": Secret("pw-Kq77-hidden")}})
    assert "pw-Kq77-hidden" in server.requests[0].body.decode()
    assert "pw-Kq77-hidden" not in str(info.value) and not any("pw-Kq77" in line for line in lines)


# -- statistics and misc --------------------------------------------------------------------


def test_stats_counts(server, lines):
    stats = RequestStats()
    server.add(
        Reply(503), OK, Reply(200, body={"id": 2, "token": "t2"}), Reply(200, body={"id": 3, "token": "t3"}), Reply(404)
    )
    with make_client(server.base_url, lines, stats=stats) as cli:
        cli.get_instance(1)
        cli.create_instance({"name": "a"})
        cli.create_instance({"name": "b"})
        cli.delete_instance(4)
    assert stats.as_dict() == {
        "requests": 5,
        "retries": 1,
        "byMethod": {"DELETE": 1, "GET": 2, "POST": 2},
        "byStatus": {"200": 3, "404": 1, "503": 1},
    }


def test_paths_are_quoted_and_base_url_slash_stripped(server, lines):
    server.add(Reply(200, body={"key": "a/b"}))
    with make_client(server.base_url + "/", lines) as cli:
        cli.get_element("a/b")
    assert server.requests[0].path == "/elements/a%2Fb"


def test_bad_base_url():
    with pytest.raises(UserError):
        make_client("ftp://example.com/api")


def test_classify_maybe_sent_errors():
    assert classify(TimeoutError("timed out"), "")[:2] == ("read timeout", True)
    assert classify(ConnectionResetError(104, "reset"), "")[:2] == ("connection reset", True)
    assert classify(BrokenPipeError(32, "pipe"), "")[1] is True


def test_classify_failures_while_connecting_as_not_sent():
    wrapped = OSError("failed to establish a new connection")
    wrapped.__cause__ = ConnectionRefusedError(111, "refused")
    assert classify(wrapped, "") == ("connection refused", False, True)
    assert classify(socket.gaierror(-2, "Name or service not known"), "") == ("DNS lookup failed", False, True)
    assert classify(OSError(errno.EHOSTUNREACH, "No route to host"), "") == ("could not connect", False, True)


def test_no_warnings_or_leaks_with_many_threads(server):
    server._default = OK
    with make_client(server.base_url) as cli:
        threads = [threading.Thread(target=cli.get_instance, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
    assert len(server.requests) == 12


# -- TLS and proxies --------------------------------------------------------------------------

TLS_DIR = Path(__file__).parent / "tls"


@pytest.fixture
def tls_server():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(TLS_DIR / "server.pem", TLS_DIR / "server.key")
    with ScriptedServer(default=OK, tls=context) as srv:
        yield srv


@pytest.fixture
def clean_proxy_env(monkeypatch):
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_https_verifies_against_the_named_ca_bundle(tls_server, clean_proxy_env):
    clean_proxy_env.setenv("REQUESTS_CA_BUNDLE", str(TLS_DIR / "ca.pem"))
    with make_client(f"https://localhost:{tls_server.port}/elements/api-v2") as cli:
        assert cli.get_instance(7) == {"id": 7, "name": "crm"}
        assert cli.get_instance(7) == {"id": 7, "name": "crm"}
    assert [r.path for r in tls_server.requests] == ["/instances/7"] * 2
    assert tls_server.requests[0].headers["host"] == f"localhost:{tls_server.port}"


def test_https_untrusted_certificate_fails_at_once_and_sends_nothing(tls_server, clean_proxy_env, lines):
    with make_client(tls_server.base_url, lines) as cli, pytest.raises(TransportError) as info:
        cli.create_instance({"name": "crm"})
    assert info.value.message == "TLS certificate verification failed"
    assert info.value.ambiguous is False
    assert len(lines) == 1 and tls_server.requests == []


def test_missing_ca_bundle_is_a_user_error(clean_proxy_env, tmp_path):
    clean_proxy_env.setenv("CURL_CA_BUNDLE", str(tmp_path / "nowhere.pem"))
    with pytest.raises(UserError, match="cannot load the CA bundle"):
        make_client("https://localhost:1/elements/api-v2")


def test_http_through_a_forward_proxy_with_credentials(server, clean_proxy_env, lines):
    proxy_secret = "pr0xy-Pa55-Zq81"
    clean_proxy_env.setenv("HTTP_PROXY", f"http://ops:{proxy_secret}@127.0.0.1:{server.port}")
    server.add(OK, Reply(500, body={"message": "boom"}), OK)
    with make_client("http://localhost:8080/elements/api-v2", lines) as cli:
        assert cli.get_instance(7)["id"] == 7
        assert cli.get_instance(8)["id"] == 7
    first = server.requests[0]
    assert first.target == "http://localhost:8080/elements/api-v2/instances/7"
    assert first.headers["host"] == "localhost:8080"
    assert first.headers["proxy-authorization"] == "Basic " + base64.b64encode(f"ops:{proxy_secret}".encode()).decode()
    assert len(server.requests) == 3
    assert all(proxy_secret not in line for line in lines)


def test_no_proxy_sends_directly(server, clean_proxy_env):
    clean_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    clean_proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1")
    server.add(OK)
    with make_client(server.base_url) as cli:
        assert cli.get_instance(7)["id"] == 7
    assert server.requests[0].target == "/elements/api-v2/instances/7"


def test_https_through_a_connect_tunnel(tls_server, clean_proxy_env):
    clean_proxy_env.setenv("REQUESTS_CA_BUNDLE", str(TLS_DIR / "ca.pem"))
    with TunnelProxy() as proxy:
        clean_proxy_env.setenv("HTTPS_PROXY", proxy.url.replace("http://", "http://ops:s3cret@"))
        with make_client(f"https://localhost:{tls_server.port}/elements/api-v2") as cli:
            assert cli.get_instance(7)["id"] == 7
            assert cli.get_instance(7)["id"] == 7
    assert len(proxy.connects) == 1  # one tunnel, kept alive for both requests
    line, headers = proxy.connects[0]
    assert line == f"CONNECT localhost:{tls_server.port}"
    assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"ops:s3cret").decode()
    assert [r.target for r in tls_server.requests] == ["/elements/api-v2/instances/7"] * 2


def test_unsupported_proxy_scheme_is_a_user_error(clean_proxy_env):
    clean_proxy_env.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    with pytest.raises(UserError, match="unsupported proxy"):
        make_client("https://localhost:1/elements/api-v2")


def test_a_connection_the_server_closed_while_idle_is_not_reused(server, client):
    server.add(Reply(200, {"Connection": "keep-alive"}, {"id": 1}))
    assert client.get_instance(1) == {"id": 1}
    for conn in list(server._connections):  # the server side closes the idle connection
        conn.shutdown(socket.SHUT_RDWR)
    time.sleep(0.1)
    server.add(Reply(201, body={"id": 2, "token": "t2"}))
    assert client.create_instance({"name": "crm"})["id"] == 2  # not an ambiguous create
    assert methods(server) == ["GET", "POST"]
