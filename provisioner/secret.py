"""Secrets masked by construction, and a last-line redactor for everything that leaves the process.

A ``Secret``'s ``str`` and ``repr`` are masked; only the HTTP client's JSON encoder (``json_default``)
and the outputs file reveal it. Every Secret is registered with ``REDACTOR``, which every stream
provisioner writes passes through (docs/secrets.md lists the encodings it masks).
"""

from __future__ import annotations

import base64
import html
import json
import re
import sys
import threading
from typing import Any, NoReturn
from urllib.parse import quote

# How a secret shows: the eight stars the API answers in place of a secret value (plan and import know them).
MASK = "********"
SENSITIVE = "(sensitive)"

# Shorter values are not searched for: a one-letter "secret" would mask that letter everywhere, protecting nothing.
MIN_REDACT_LENGTH = 4
# A piece of a secret this long or longer is masked where text from a server was cut or quoted
# (see Redactor.redact, edges=True): the start or end of the message, next to a quote, before "...".
FRAGMENT = 6
_CLOSE_EDGE = re.compile(r"""(?=["'`]|\.\.\.|\u2026)""")
_OPEN_EDGE = re.compile(r"""(?<=["'`])""")


class Secret:
    """A sensitive string, masked in ``str()`` and ``repr()``; ``token=True``: see ``Redactor.add``."""

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret, *, token: bool = False):
        if isinstance(value, Secret):
            value = value.reveal()
        self._value = value
        REDACTOR.add(value, token=token)

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __eq__(self, other: object) -> bool:
        return self._value == other._value if isinstance(other, Secret) else NotImplemented

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> NoReturn:  # pickling would write the value somewhere: refuse
        raise TypeError("a Secret cannot be pickled")


def reveal(value: Any) -> Any:
    """The raw value of a Secret, or the value itself."""
    return value.reveal() if isinstance(value, Secret) else value


json_default = reveal  # json.dumps(default=...) where a request body is serialised for the API


def masked(value: Any, mask: str = MASK) -> Any:
    """A copy of a JSON-like value with every Secret replaced by ``mask``."""
    if isinstance(value, Secret):
        return mask
    if isinstance(value, dict):
        return {k: masked(v, mask) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(v, mask) for v in value]
    return value


# A form is looked up inside the text's runs of characters other than whitespace (whole lines once a secret
# holds whitespace): a multi-line secret is masked line by line, each of its lines being a form.
_SPACE = re.compile(r"\s")
_PREFIX = MIN_REDACT_LENGTH  # forms are indexed by their first characters
_FEW, _PIECE = 32, 65536  # up to _FEW, a run is searched for each; else each position is looked up, by pieces
# URL encodings: quote() with nothing kept, with "/" kept, and with every RFC 3986 sub-delimiter kept;
# the same with quote_plus (space as +). Hex case is folded by _normalized.
_URL_SAFE_SETS = ("", "/", "/:@!$&'()*+,;=")
_URL_ESCAPES = {char: f"%{ord(char):02X}" for char in _URL_SAFE_SETS[-1]}
_TOKEN_TEXT = re.compile(r"[A-Za-z0-9+/=._~-]+")  # the API's tokens (base64, either alphabet) and unreserved characters
# Characters HTML escaping touches, and the ones JSON encoders commonly write as \u00XX (Go: <>&).
_HTML_SPECIAL = "&<>\"'"
_NUMERIC = ("{}", "x{:x}", "x{:X}")  # decimal, and hexadecimal in either case
_JSON_U_SPECIAL = "<>&'\"="


def _json_forms(value: str) -> list[str]:
    """JSON string escapes: ASCII-only and not, "/" as "\\/", and <>&'"= as \\u00XX (either case)."""
    escaped = json.dumps(value)[1:-1]
    cases = "xX" if not set(_JSON_U_SPECIAL).isdisjoint(escaped) else ""  # else both are ``escaped``
    return [
        escaped,
        json.dumps(value, ensure_ascii=False)[1:-1],
        escaped.replace("/", "\\/"),
        *("".join(f"\\u{ord(c):04{hexcase}}" if c in _JSON_U_SPECIAL else c for c in escaped) for hexcase in cases),
    ]


def _html_forms(value: str) -> list[str]:
    """HTML: named entities (with and without quotes escaped), decimal and hex numeric entities."""
    if set(_HTML_SPECIAL).isdisjoint(value):
        return []
    named = html.escape(value, quote=True)
    return [
        html.escape(value, quote=False),
        named,
        named.replace("&#x27;", "&#39;").replace("&quot;", "&#34;"),
        named.replace("&#x27;", "&apos;"),
        *("".join(f"&#{code.format(ord(c))};" if c in _HTML_SPECIAL else c for c in value) for code in _NUMERIC),
    ]


def _url_forms(value: str) -> list[str]:
    forms = []
    for spaces in ("", " ") if " " in value else ("",):  # with a space: also as quote_plus spells it ("+")
        encoded = quote(value, safe=spaces, errors="surrogatepass").replace(" ", "+")
        for kept in _URL_SAFE_SETS:  # quote() keeping more characters: their escapes undone
            for char in kept if "%" in encoded else ():
                encoded = encoded.replace(_URL_ESCAPES[char], char)
            forms.append(encoded)
    return forms


def _repr_forms(value: str) -> list[str]:
    """Python repr (and ascii, and repr of the UTF-8 bytes); repr escapes ' only in a string that
    also holds ", which depends on the text around the secret: both spellings."""
    forms = []
    for quoted, tail in ((value, 1), (value + "'\"", 4)):  # the second forces \' (cut off again)
        forms += [repr(quoted)[1:-tail], ascii(quoted)[1:-tail], repr(quoted.encode("utf-8", "surrogatepass"))[2:-tail]]
    return forms


def _base64_forms(data: bytes) -> list[str]:
    """base64 of ``data``, whole and, at each of the 3 alignments inside a longer encoded string, the
    characters that depend only on ``data`` (urlsafe and unpadded forms match through ``_normalized``)."""
    aligned = [base64.b64encode(b"\0" * k + data).decode("ascii") for k in range(3)]  # data after k bytes
    # after k bytes, the characters from ceil(8k/6) up to 8(k+size)/6 depend only on the data
    return [aligned[0], *(text[(8 * k + 5) // 6 : 8 * (k + len(data)) // 6] for k, text in enumerate(aligned))]


_LOWER_HEX = re.compile(r"%(?:[a-f][0-9a-fA-F]|[0-9A-F][a-f])")  # a lower-case hex digit: the rest is left alone


def _normalized(text: str) -> str:
    """The text with urlsafe base64 read as standard and percent-encoded hex in upper case: same length,
    so a match in it is a match at the same place; forms are registered normalized too."""
    if "%" in text:
        text = _LOWER_HEX.sub(lambda m: m.group().upper(), text)
    return text.replace("-", "+").replace("_", "/")


# Printable ASCII but for space, quotes, backslash, "/" and the characters HTML or JSON may escape (<>&=):
# the JSON, HTML, repr and whitespace forms of such a value are the value itself, only URL and base64 differ.
_PLAIN = re.compile(r"[A-Za-z0-9!#$%()*+,\-.:;?@\[\]^_`{|}~]+")


def encoded_forms(value: str) -> set[str]:
    """Every form a secret may be printed in (docs/secrets.md), a list that does not depend on the hash
    seed; also the same encodings of its JSON-escaped form (a request body echoed back)."""
    if _PLAIN.fullmatch(value):
        return {f for f in (value, *_url_forms(value), *_base64_forms(value.encode())) if len(f) >= MIN_REDACT_LENGTH}
    bases = [value, " ".join(value.split()), sanitize(value), *value.splitlines(), *_json_forms(value)]
    forms = list(bases)
    for base in dict.fromkeys(bases):
        forms += [*_url_forms(base), *_base64_forms(base.encode("utf-8", "surrogatepass"))]
        forms += [*_html_forms(base), *_repr_forms(base)]
    return {form for form in forms if len(form) >= MIN_REDACT_LENGTH}


def token_forms(value: str) -> set[str]:
    """The forms of an instance token (base64 text the API generated): its alphabet rules out the HTML,
    repr and whitespace forms; unaligned base64 is left to secrets a person chose."""
    encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
    return {value, value.replace("/", "\\/"), encoded, *_url_forms(value)}


class Redactor:
    """Knows every secret value of this process and masks them, in all their encodings, in text, in time
    linear in the text however many secrets (10,000 tokens or passwords): one scan of the text's runs
    through an index of the forms' first characters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._words: set[str] = set()
            self._by_prefix: dict[str, set[int]] = {}  # first characters -> lengths of the forms
            self._shortest = sys.maxsize
            self._spaced = False  # a form holds whitespace: runs are whole lines
            self._known: set[str] = set()  # values add() has registered with all their forms
            self._tokens: list[str] = []  # tokens not indexed yet, and the length of the shortest
            self._token_length = sys.maxsize
            self._heads: dict[str, list[str]] = {}  # first FRAGMENT characters -> forms (fragments at edges)
            self._tails: dict[str, list[str]] = {}  # last FRAGMENT characters -> forms
            self._unedged: list[str] = []  # forms registered since, not yet in _heads and _tails
            self._longest = 0

    def add(self, value: Any, token: bool = False) -> None:
        """Register a secret in every form it may be printed in; ``token``: an instance token (its forms, each a
        run of non-space characters as long or longer, are indexed once a text holds such a run)."""
        if not isinstance(value, str) or len(value) < MIN_REDACT_LENGTH or value in self._known:
            return
        forms = None if token and _TOKEN_TEXT.fullmatch(value) else encoded_forms(value)
        with self._lock:
            if forms is None:
                self._tokens.append(value)
                self._token_length = min(self._token_length, len(value))
            else:
                self._index(forms, spaced=bool(_SPACE.search(value)))
            self._known.add(value)

    def _index(self, forms: set[str], spaced: bool = False) -> None:
        """Index the forms of one secret (under the lock); ``spaced``: it holds whitespace, so may they."""
        indexed = [_normalized(f) for f in forms]
        self._words.update(indexed)
        for form in indexed:
            self._by_prefix.setdefault(form[:_PREFIX], set()).add(len(form))
        self._shortest = min([self._shortest, *map(len, indexed)])
        self._spaced = self._spaced or spaced
        self._unedged += forms  # indexed by the next redact(edges=True): most runs never need them

    def redact(self, text: str, edges: bool = False) -> str:
        """``text`` with every form of every secret masked; ``edges`` (server text, possibly cut inside a secret):
        also any piece of FRAGMENT or more characters of a form at its start or end, by a quote, or before "..."."""
        if not text:
            return text
        with self._lock:
            if self._tokens and (edges or re.search(f"\\S{{{self._token_length},}}", text)):
                for token in self._tokens:
                    self._index(token_forms(token))
                self._tokens, self._token_length = [], sys.maxsize
            if edges:
                self._index_edges()
            words, by_prefix, shortest = self._words, self._by_prefix, self._shortest
            run = r"[^\r\n]" if self._spaced else r"\S"  # a run holds every form without a line break (or a space)
        if words:
            runs = re.compile(f"{run}{{{shortest},}}")  # re caches it; shorter runs hold no form
            text = runs.sub(lambda m: _mask_run(m.group(), words, by_prefix, shortest), text)
        return self._mask_fragments(text) if edges and self._heads else text

    def _index_edges(self) -> None:
        """Index the forms registered since the last call by their first and last characters (under the lock)."""
        for form in set(self._unedged):  # lists (redact may read them while they grow)
            if len(form) >= FRAGMENT:
                self._heads.setdefault(form[:FRAGMENT], []).append(form)
                self._tails.setdefault(form[-FRAGMENT:], []).append(form)
                self._longest = max(self._longest, len(form))
        self._unedged = []

    def _mask_fragments(self, text: str) -> str:
        """Mask the longest piece of a secret's form that ends at a closing edge or starts at an opening one."""
        spans = []
        longest = self._longest
        for end in {len(text), *(m.start() for m in _CLOSE_EDGE.finditer(text))}:
            for start in range(max(0, end - longest), end - FRAGMENT + 1):
                forms = self._heads.get(text[start : start + FRAGMENT])
                if forms and any(form.startswith(text[start:end]) for form in forms):
                    spans.append((start, end))
                    break
        for start in {0, *(m.end() for m in _OPEN_EDGE.finditer(text))}:
            for end in range(min(len(text), start + longest), start + FRAGMENT - 1, -1):
                forms = self._tails.get(text[end - FRAGMENT : end])
                if forms and any(form.endswith(text[start:end]) for form in forms):
                    spans.append((start, end))
                    break
        out, last = [], 0
        for start, end in sorted(spans):
            if start >= last:  # a span that starts inside the last one extends it
                out += [text[last:start], MASK]
            last = max(last, end)
        return "".join(out) + text[last:] if spans else text


def _mask_run(run: str, words: set[str], by_prefix: dict[str, set[int]], shortest: int) -> str:
    """Mask every secret form inside one run of the text (longest first, left to right), with
    one index lookup per position of its normalized spelling."""
    view = _normalized(run)
    if view in words:
        return MASK
    end = len(run) - shortest
    if len(by_prefix) <= _FEW:  # few forms: search the run for the first characters of each
        if not any(prefix in view for prefix in list(by_prefix)):  # (a copy: add() may grow it meanwhile)
            return run
    elif all(  # many: look up each position, a bounded piece of a long run at a time
        by_prefix.keys().isdisjoint([view[i : i + _PREFIX] for i in range(start, min(start + _PIECE, end + 1))])
        for start in range(0, end + 1, _PIECE)
    ):
        return run
    out: list[str] = []
    start = index = 0
    while index <= end:
        lengths = by_prefix.get(view[index : index + _PREFIX])
        for length in sorted(lengths, reverse=True) if lengths else ():
            if view[index : index + length] in words:
                out += [run[start:index], MASK]
                start = index = index + length
                break
        else:
            index += 1
    return "".join(out) + run[start:] if out else run


# ANSI escape sequences: CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ST), other two-byte ESC
# sequences, and their 8-bit C1 forms.
_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[@-Z\\-_]?"
)
_LINE_BREAKS = re.compile(r"[\r\n\t\v\f\x85\u2028\u2029]+")
# other C0 and C1 controls, DEL, and the invisible bidirectional overrides that reorder a line
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def sanitize(text: str) -> str:
    """Server text on one line, ANSI sequences and controls removed, line breaks as spaces: a server
    cannot forge a line of our output, clear the screen or recolour the terminal."""
    if not text or text.isprintable():  # nothing a terminal acts on, and no line break
        return text
    text = _ANSI.sub("", text)
    text = _LINE_BREAKS.sub(" ", text)
    return _CONTROLS.sub("", text)


def escape(text: str, keep: str = "") -> str:
    """Text safe to print and still recognisable: every non-printable character but those in ``keep`` as
    its Python escape (``\\x1b``, ``\\u202e``, ``\\ud800``); the result always encodes as UTF-8."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


REDACTOR = Redactor()
