"""The redactor masks a known secret in every common encoding, and ``sanitize`` makes server text
safe to print. Unit and property tests (pure functions), and one canary through the real CLI."""

from __future__ import annotations

import base64
import html
import json
import urllib.parse

import pytest
from conftest import write
from hypothesis import given, settings
from hypothesis import strategies as st
from scripted_server import Reply, ScriptedServer

from provisioner.secret import MASK, Redactor, escape, sanitize

TRICKY = 'Pa$$ "w0rd" <&> it\'s\n\t  ok/é\\x'


def _lower_hex(text: str) -> str:
    import re

    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def encodings(secret: str) -> dict[str, str]:
    """The spellings of ``secret`` a server may echo back, as a server would write them."""
    raw = secret.encode("utf-8")
    body = json.dumps({"password": secret})
    return {
        "raw": secret,
        "json": json.dumps(secret)[1:-1],
        "json-unicode": json.dumps(secret, ensure_ascii=False)[1:-1],
        "html": html.escape(secret),
        "html-noquote": html.escape(secret, quote=False),
        "url-%20": urllib.parse.quote(secret, safe=""),
        "url-+": urllib.parse.quote_plus(secret),
        "url-lower": _lower_hex(urllib.parse.quote_plus(secret, safe="")),
        "url-slash-safe": urllib.parse.quote(secret),
        "base64": base64.b64encode(raw).decode(),
        "base64-nopad": base64.b64encode(raw).decode().rstrip("="),
        "base64-urlsafe": base64.urlsafe_b64encode(raw).decode(),
        "base64-urlsafe-nopad": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "base64-of-body": base64.b64encode(body.encode()).decode(),
        "base64-of-body-offset1": base64.b64encode(b"x" + body.encode()).decode(),
        "base64-of-body-offset2": base64.b64encode(b"xy" + body.encode()).decode(),
        "repr": repr(secret),
        "repr-in-dict": repr({"password": secret, "other": 'it\'s "quoted"'}),
        "repr-bytes": repr(raw),
        "ascii": ascii(secret),
        "collapsed": " ".join(secret.split()),
        "body-url": urllib.parse.quote_plus(body),
        "body-html": html.escape(body),
    }


def leaks(text: str, secret: str, forms: dict[str, str]) -> list[str]:
    """Which spellings of the secret (of at least 6 characters) still appear in ``text``."""
    return [name for name, form in forms.items() if len(form) >= 6 and form in text and form not in MASK]


@pytest.mark.parametrize(
    "secret",
    ["tok+en/With=Padding==", TRICKY, "correct horse  battery\nstaple", "pässwörd-ünicode", "x" * 40, "a'b\"c\\d"],
)
@pytest.mark.parametrize("kind", sorted(encodings("seed")))
def test_every_encoding_is_masked_inside_other_text(secret, kind):
    redactor = Redactor()
    redactor.add(secret)
    form = encodings(secret)[kind]
    text = f"error 400: bad request {form} (echoed)"
    out = redactor.redact(text)
    assert MASK in out, (kind, form, out)
    assert not leaks(out, secret, encodings(secret)), (kind, out)


def test_base64_in_any_alignment_of_a_longer_string():
    secret = "s3cr3t-Password!"
    redactor = Redactor()
    redactor.add(secret)
    for prefix in (b"", b"a", b"ab", b"abc", b"abcd"):
        for suffix in (b"", b"z", b"zz"):
            blob = prefix + secret.encode() + suffix
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                text = encode(blob).decode()
                out = redactor.redact(f"data={text}.")
                assert MASK in out, (prefix, suffix, out)
                # whatever is left decodes to no more than a character or two of the secret
                assert base64.b64encode(secret.encode()).decode()[2:-4] not in out


def test_words_around_a_secret_are_kept():
    redactor = Redactor()
    redactor.add("hunter22")
    assert redactor.redact("user=bob password=hunter22, retry") == f"user=bob password={MASK}, retry"
    assert redactor.redact("nothing here") == "nothing here"


def test_short_values_are_not_registered():
    redactor = Redactor()
    redactor.add("abc")
    assert redactor.redact("abc abcd") == "abc abcd"


@settings(max_examples=150, deadline=None)
@given(
    secret=st.text(min_size=6, max_size=40).filter(lambda s: len(" ".join(s.split())) >= 6),
    kind=st.sampled_from(sorted(encodings("seed"))),
    before=st.text(max_size=10),
    after=st.text(max_size=10),
)
def test_property_no_encoding_survives(secret, kind, before, after):
    redactor = Redactor()
    redactor.add(secret)
    form = encodings(secret)[kind]
    out = redactor.redact(f"{before} {form} {after}")
    assert form not in out or len(form) < 6


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_property_sanitized_text_has_no_control_characters(text):
    clean = sanitize(text)
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in clean)
    assert "\x1b" not in clean


def test_sanitize_removes_escapes_and_line_breaks():
    hostile = "bad\r\nerror: forged line\x1b[2J\x1b[1;31mred\x1b[0m\x1b]0;title\x07\tend\x00\u202e"
    assert sanitize(hostile) == "bad error: forged linered end"
    assert sanitize("plain text, kept: é ü") == "plain text, kept: é ü"


def _symbol_secret(i: int) -> str:
    """A person's password: letters, digits, symbols and a space, different for each ``i``."""
    return f"Pa$$ w0rd!{i}@#(x)&<\"'>*"


@pytest.mark.parametrize(
    "make",
    [lambda i: base64.b64encode(bytes([i % 256, i // 256]) * 16).decode(), _symbol_secret],
    ids=["tokens", "symbols-and-spaces"],
)
def test_many_secrets_still_redact(make):
    """Registering thousands of secrets keeps every one of them findable through the index of first
    characters: none grows a regex (one alternation of thousands took minutes over a plan's output)."""
    redactor = Redactor()
    secrets = [make(i) for i in range(3000)]
    for secret in secrets:
        redactor.add(secret)
    text = "\n".join(
        f"id={i} secret={s} b64={base64.b64encode(s.encode()).decode()} json={json.dumps(s)}"
        for i, s in enumerate(secrets[::300])
    )
    out = redactor.redact(text)
    for secret in secrets[::300]:
        assert not leaks(out, secret, encodings(secret)), out


def test_a_listings_tokens_are_indexed_once_a_text_could_hold_one():
    """A token's forms are runs of non-space characters at least as long as it: a short line does not
    need the 3,000 tokens of a listing indexed; a text holding one does, and masks it."""
    secrets = [base64.b64encode(bytes([i % 256, i // 256]) * 16).decode() for i in range(3000)]
    text = "\n".join(
        f"id={i} secret={s} b64={base64.b64encode(s.encode()).decode()} json={json.dumps(s)}"
        for i, s in enumerate(secrets[::300])
    )
    tokens = Redactor()
    for secret in secrets:
        tokens.add(secret, token=True)
    assert tokens.redact("No changes. 3000 unchanged.") == "No changes. 3000 unchanged."
    assert len(tokens._tokens) == 3000  # a short line did not need them
    out = tokens.redact(text)
    assert not tokens._tokens and all(not leaks(out, s, encodings(s)) for s in secrets[::300]), out


def test_a_multi_line_secret_is_masked_line_by_line():
    multi_line = Redactor()  # each line of a secret is a form
    multi_line.add("first line\r\nsecond line")
    assert multi_line.redact("x first line\r\nsecond line y") == f"x {MASK}\r\n{MASK} y"


def test_a_secret_anywhere_in_a_long_run_is_masked():
    """A run of text is looked up by pieces (a hostile API's name of megabytes costs time linear in it):
    a token on either side of a piece's edge is still found."""
    redactor = Redactor()
    tokens = [base64.b64encode(bytes([i]) * 32).decode() for i in range(100)]  # many: each position looked up
    for token in tokens:
        redactor.add(token, token=True)
    for at in (0, 65_530, 65_536, 200_000):
        assert redactor.redact("x" * at + tokens[42] + "y" * 99) == "x" * at + MASK + "y" * 99


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.sampled_from(["", "\n"]))
def test_property_escaped_text_is_printable_and_encodes(text, keep):
    shown = escape(text, keep)
    assert all(c.isprintable() or c in keep for c in shown)
    shown.encode("utf-8")
    assert shown.count("\n") == (text.count("\n") if keep else 0)
    assert escape(text) == text or not text.isprintable()


def test_escape_keeps_a_name_recognisable():
    assert escape("hd-4\x1b[2J\r\nApply: 0 created") == r"hd-4\x1b[2J\r\nApply: 0 created"
    assert escape("hd-3\ud800 \u202eexe \u2028 é ü") == r"hd-3\ud800 \u202eexe \u2028 é ü"


# -- through the real CLI ---------------------------------------------------------------------------

CANARY = 'Canary "pw" <7>&\n  it\'s-9f3e'


def _echo_everything(received):
    body = received.body.decode("utf-8")
    password = json.loads(body)["configuration"]["helpdesk.connectwise.password"]
    forms = encodings(password)
    # one short message per request, each shorter than the client's cut (the cut is the lead's fix)
    kind = sorted(forms)[_echo_everything.count % len(forms)]
    _echo_everything.count += 1
    return Reply(400, body={"message": f"rejected {forms[kind][:250]}", "requestId": "r1"})


_echo_everything.count = 0


def _list_empty(received):
    return Reply(404, body={"message": "No instances found"})


@pytest.mark.parametrize("offset", range(0, 24, 6))
def test_canary_password_echoed_in_a_400_never_reaches_the_output(tmp_path, offset):
    from conftest import Cli, base_env

    manifest = "apiVersion: provisioner/v1\nstack: canary\ninstances:\n" + "".join(
        f"""  - name: hd-{i}
    element: connectwisehd
    configuration:
      helpdesk.connectwise.username: api1
      helpdesk.connectwise.password: "{{{{ env.CANARY_PW }}}}"
      helpdesk.connectwise.server.url: api-na.myconnectwise.net
      helpdesk.connectwise.company: acme
"""
        for i in range(6)
    )
    write(tmp_path, "manifest.yaml", manifest)
    _echo_everything.count = offset

    def step(received):
        if received.method == "GET":
            return _list_empty(received)
        return _echo_everything(received)

    with ScriptedServer(default=step) as server:
        env = {
            **base_env(),
            "CE_API_URL": server.base_url,
            "CE_USER_SECRET": "user-secret-canary-1",
            "CE_ORGANIZATION_SECRET": "org-secret-canary-2",
            "CANARY_PW": CANARY,
        }
        cli = Cli(tmp_path, env)
        for output in ("text", "json"):
            proc = cli.run("apply", "manifest.yaml", "--no-progress", "--max-attempts", "1", "-o", output, "-v")
            assert proc.returncode == 1, proc.stdout + proc.stderr
            both = proc.stdout + proc.stderr
            assert "rejected" in both
            assert not leaks(both, CANARY, encodings(CANARY)), (leaks(both, CANARY, encodings(CANARY)), both)


SHARED = """\
apiVersion: provisioner/v1
stack: tests
instances:
  - name: helpdesk
    element: connectwisehd
    configuration:
      helpdesk.connectwise.username: "{{ env.PW }}"
      helpdesk.connectwise.password: "{{ env.PW }}"
      helpdesk.connectwise.server.url: api-na.myconnectwise.net
      helpdesk.connectwise.company: acme
      event.poller.refresh_interval: "{{ env.PW }}"
      event.notification.callback.url: "{{ env.PW }}"
"""


@pytest.mark.parametrize(
    "secret", ["sec-Canary'9\"x", "abc\\def-Canary", "é-Canary-<&>", 'Canary "pw" <7>&  it\'s-9f3e']
)
@pytest.mark.parametrize("output", ["text", "json"])
def test_a_validation_problem_never_shows_a_secret_also_used_in_a_plain_key(cli, db, secret, output):
    """The secret is also the value of non-secret keys whose schema refuses it: the problem quotes the
    value (its repr). JSON escaping used to respell that repr past the redactor."""
    write(cli.cwd, "m.yaml", SHARED)
    for command in ("validate", "plan"):
        proc = cli.run(command, "m.yaml", "-o", output, env={"PW": secret})
        assert proc.returncode == 1, proc.stdout + proc.stderr
        both = proc.stdout + proc.stderr
        assert "configuration.event.notification.callback.url" in both and "expected form" in both
        assert "Canary" not in both, both
        if output == "json":
            assert [p["line"] for p in json.loads(proc.stdout)["problems"]] == [11, 12]
    assert db.requests() == []
