"""Redaction covers a fixed set of forms whatever the hash seed, and pieces of a secret at a cut edge
(issue 17, point 5). Each seed runs in its own interpreter: set iteration order is what varied."""

from __future__ import annotations

import base64
import html
import json
import os
import subprocess
import sys
from urllib.parse import quote, quote_plus

import pytest
from conftest import REPO

SECRET = "p@ss word+/&<\"x'y"


def forms(secret: str) -> dict[str, str]:
    """Each documented form, computed here independently of provisioner/secret.py."""
    raw = secret.encode()
    return {
        "raw": secret,
        "json": json.dumps(secret)[1:-1],
        "json-u": "".join(f"\\u{ord(c):04x}" if c in "<>&'\"=" else c for c in json.dumps(secret)[1:-1]),
        "json-slash": json.dumps(secret)[1:-1].replace("/", "\\/"),
        "quote": quote(secret, safe=""),
        "quote-lower-hex": quote(secret, safe="").replace("%2F", "%2f").replace("%3C", "%3c"),
        "quote_plus": quote_plus(secret, safe=""),
        "quote_plus-slash": quote_plus(secret),
        "base64": base64.b64encode(raw).decode(),
        "base64-urlsafe": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "base64-unaligned": base64.b64encode(b"\1" + raw + b"\2\3").decode(),
        "html": html.escape(secret),
        "html-decimal": "".join(f"&#{ord(c)};" if c in "&<>\"'" else c for c in secret),
        "html-hex": "".join(f"&#x{ord(c):x};" if c in "&<>\"'" else c for c in secret),
        "repr": repr(secret)[1:-1],
    }


PROBE = """
import json, sys
from provisioner.secret import REDACTOR
secret, forms = json.loads(sys.stdin.read())
REDACTOR.add(secret)
leaks = {name: out for name, form in forms.items() if form in (out := REDACTOR.redact(f"<<{form}>>"))}
print(json.dumps(leaks))
"""


@pytest.mark.parametrize("seed", range(6))
def test_every_form_is_masked_under_every_hash_seed(seed):
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        input=json.dumps([SECRET, forms(SECRET)]),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {}


@pytest.mark.parametrize(
    "text",
    [
        "invalid password p@ss wor",  # a message cut inside the secret
        'echoed {"password": "p@ss word+...',  # echoed JSON cut inside the value
        "'ss word+/&<\"x'y' is refused",  # the second half, quoted
    ],
)
def test_a_piece_of_a_secret_at_a_cut_edge_is_masked(text):
    from provisioner.secret import REDACTOR, Redactor

    redactor = Redactor()
    redactor.add(SECRET)
    out = redactor.redact(text, edges=True)
    assert "********" in out
    for piece in ("p@ss w", "ss word", "word+/", "p@ss wor"):
        assert piece not in out
    assert REDACTOR is not redactor  # the process-wide one is untouched by this test


def test_innocent_text_is_left_alone():
    from provisioner.secret import Redactor

    redactor = Redactor()
    redactor.add(SECRET)
    text = "the password was refused by the provider (HTTP 401)"
    assert redactor.redact(text, edges=True) == text
