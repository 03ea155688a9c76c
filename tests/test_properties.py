"""Property-based tests of the pure stages: rendering, validation once per shape and the configuration diff.

No server, no subprocess: these call ``provisioner.manifest.render.Renderer`` and
``provisioner.engine.diff.diff_configuration`` directly, with Hypothesis generating the data. The server's
side of the diff is built with the emulator's own pure storage rules (``to_property_value`` and the
catalog's ``render_configuration``), so "as the server would store it" means what the emulator does.
"""

from __future__ import annotations

import warnings

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from provisioner.emulator.api import default_catalog, to_property_value
from provisioner.engine.diff import FieldDiff, FieldPath, FingerprintContext, diff_configuration
from provisioner.errors import Location
from provisioner.manifest.elements import ElementRegistry
from provisioner.manifest.render import Renderer
from provisioner.manifest.starter import required_keys
from provisioner.manifest.yamlload import load_yaml
from provisioner.ownership import fingerprint_tags, fingerprints_of
from provisioner.secret import SENSITIVE, Secret, reveal

# On a failure Hypothesis's pytest plugin imports libcst (to suggest an @example patch), which warns
# a DeprecationWarning (mypy_extensions.TypedDict) while importing; with filterwarnings=error that
# turns every property failure into a pytest INTERNALERROR. Import it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import libcst  # noqa: F401
    except ImportError:  # pragma: no cover - libcst is optional for Hypothesis
        pass

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WHERE = Location("m.yaml", 1)

# Strings that have broken renderers before: quotes, backslashes, newlines, Jinja syntax, YAML syntax,
# placeholders that look like the renderer's own, unicode.
TRICKY = st.sampled_from(
    [
        "",
        " ",
        "'",
        '"',
        "\\",
        "\\n",
        "\n",
        "\r\n",
        "\t",
        "{{ 7*7 }}",
        "{% raw %}",
        "{#",
        "}}",
        "${X}",
        "a: b",
        "- x",
        "# c",
        "&anchor",
        "*alias",
        "!!python/object",
        "null",
        "~",
        "true",
        "015",
        "1e3",
        "__pv000000000000_0_",
        "é",
        "日本語",
        "\u2028",
        "\x00",
        "💥",
        "\ufeff",
    ]
)
TEXT = st.one_of(st.text(), TRICKY, st.lists(TRICKY, max_size=6).map("".join))

TEMPLATE = """\
configuration:
  whole: {{ env.X }}
  quoted: "{{ env.X }}"
  single: '{{ env.X }}'
  embedded: pre-{{ env.X }}-post
  twice: "{{ env.X }}{{ env.X }}"
tags:
  - {{ env.X }}
"""


@pytest.fixture(scope="module")
def template_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("templates")
    (directory / "body.yaml.j2").write_text(TEMPLATE, encoding="utf-8")
    return directory


# -- rendering ----------------------------------------------------------------------------------


@SETTINGS
@given(value=TEXT)
def test_an_env_value_reaches_an_inline_value_byte_for_byte(value, template_dir):
    renderer = Renderer(str(template_dir), {"X": value}, {})
    scope = renderer.context()
    whole = renderer.value("{{ env.X }}", scope)
    assert type(whole) is str and whole.encode("utf-8") == value.encode("utf-8")
    assert renderer.value("pre-{{ env.X }}-post", scope) == f"pre-{value}-post"
    assert renderer.value({"configuration": {"k": "{{ env.X }}"}, "tags": ["{{ env.X }}"]}, scope) == {
        "configuration": {"k": value},
        "tags": [value],
    }


@SETTINGS
@given(value=TEXT)
def test_an_input_and_an_item_reach_an_inline_value_byte_for_byte(value, template_dir):
    renderer = Renderer(str(template_dir), {}, {"v": value})
    assert renderer.value("{{ inputs.v }}", renderer.context()) == value
    assert renderer.value("{{ item.v }}-{{ item.v }}", renderer.context({"v": value})) == value + "-" + value


@SETTINGS
@given(value=TEXT)
def test_an_env_value_reaches_a_template_file_body_byte_for_byte(value, template_dir):
    renderer = Renderer(str(template_dir), {"X": value}, {})
    body = renderer.template_file("body.yaml.j2", renderer.context(), WHERE)
    assert body["configuration"] == {
        "whole": value,
        "quoted": value,
        "single": value,
        "embedded": f"pre-{value}-post",
        "twice": value + value,
    }
    assert all(type(v) is str for v in body["configuration"].values())
    assert list(body["tags"]) == [value]


# -- the diff -----------------------------------------------------------------------------------

REGISTRY = ElementRegistry.load()
CATALOG = default_catalog()
FP = FingerprintContext(b"property-test-fingerprint-key-32", "props")
NAME = "inst-1"
SECRET_PREFIX = "CANARY-SECRET-"


def _value_strategy(prop: dict, secret: bool) -> st.SearchStrategy:
    """Values the element schema accepts for one property."""
    if secret:
        return st.text(min_size=1, max_size=20).map(lambda s: SECRET_PREFIX + s)
    if "enum" in prop:
        return st.sampled_from(prop["enum"])
    types = prop.get("type", "string")
    types = [types] if isinstance(types, str) else types
    if "integer" in types:
        return st.one_of(st.integers(min_value=1, max_value=10**9), st.from_regex(r"\A[0-9]{1,9}\Z"))
    if prop.get("pattern") == "^https?://":
        return st.text(max_size=30).map(lambda s: "https://" + s)
    return st.text(min_size=prop.get("minLength", 0), max_size=min(prop.get("maxLength", 40), 40))


@st.composite
def declared(draw, element: str) -> dict:
    """A configuration the element schema accepts, with Secret objects for secret keys (as the
    desired state holds them)."""
    schema = REGISTRY.get(element)
    required = set(schema.schema.get("required", [])) | set(schema.schema.get("else", {}).get("required", []))
    for rule in schema.schema.get("allOf", []):  # keys required only with authentication.type custom
        if "custom" in rule["if"]["properties"].get("authentication.type", {}).get("enum", []):
            required |= set(rule["then"]["required"])
    config = {}
    for key, prop in sorted(schema.properties.items()):
        if key == "authentication.type":  # oauth2 needs a different required set: keep "custom"
            if draw(st.booleans()):
                config[key] = "custom"
            continue
        if key in required or draw(st.booleans()):
            config[key] = draw(_value_strategy(prop, key in schema.secret_keys))
    assume(not list(schema.validator.iter_errors(config)))
    return {k: Secret(v) if k in schema.secret_keys else v for k, v in config.items()}


EXTRA_KEYS = st.dictionaries(
    st.text(min_size=1, max_size=20).map(lambda s: "server." + s),
    st.one_of(st.none(), st.text(max_size=10)),
    max_size=3,
)


def server_view(element: str, configuration: dict, extra: dict) -> dict:
    """The configuration map the API answers with after storing ``configuration``: values as
    strings, defaults filled, nulls for listed keys never set, PASSWORD values masked, plus keys
    only the server has."""
    stored = {k: to_property_value(reveal(v)) for k, v in configuration.items()}
    return {**extra, **CATALOG.find(element).render_configuration(stored)}


def effective(schema, key: str, value):
    """What a value means: its normalised form; null, "" and absent mean the schema default."""
    value = schema.normalize(key, value)
    return schema.normalize(key, schema.defaults.get(key)) if value is None else value


def live_fingerprints(element: str, configuration: dict) -> dict:
    return fingerprints_of(fingerprint_tags(FP.key, FP.stack, NAME, configuration, REGISTRY.get(element).secret_keys))


def no_secret_in(diffs: list[FieldDiff], configuration: dict) -> None:
    secrets = [reveal(v) for v in configuration.values() if isinstance(v, Secret)]
    for diff in diffs:
        shown = repr(diff.old) + repr(diff.new)
        assert SECRET_PREFIX not in shown and not any(s in shown for s in secrets), diff


ELEMENTS = pytest.mark.parametrize("element", ["connectwisehd", "dynamicscrmadfs"])


@ELEMENTS
@SETTINGS
@given(data=st.data(), extra=EXTRA_KEYS)
def test_a_configuration_does_not_differ_from_what_the_server_stores_for_it(element, data, extra):
    schema = REGISTRY.get(element)
    desired = data.draw(declared(element))
    live = server_view(element, desired, extra)
    diffs = diff_configuration(desired, live, schema, live_fingerprints(element, desired), FP, NAME)
    assert diffs == []


@ELEMENTS
@SETTINGS
@given(data=st.data(), extra=EXTRA_KEYS, server_side=st.booleans())
def test_one_changed_declared_value_gives_exactly_one_field_diff(element, data, extra, server_side):
    schema = REGISTRY.get(element)
    desired = data.draw(declared(element))
    plain = sorted(k for k in desired if k not in schema.secret_keys)
    key = data.draw(st.sampled_from(plain))
    new = data.draw(_value_strategy(schema.properties[key], False))
    assume(effective(schema, key, new) != effective(schema, key, desired[key]))
    changed = {**desired, key: new}
    if server_side:  # someone changed it on the server: the manifest still says desired[key]
        ours, theirs = desired, changed
    else:  # the manifest changed: the server still holds desired[key]
        ours, theirs = changed, desired
    live = server_view(element, theirs, extra)
    diffs = diff_configuration(ours, live, schema, live_fingerprints(element, theirs), FP, NAME)
    old, new = effective(schema, key, theirs[key]), effective(schema, key, ours[key])
    op = "add" if old is None else "remove" if new is None else "change"
    assert diffs == [FieldDiff(op, FieldPath.config(key), old, new)]
    no_secret_in(diffs, {**ours, **theirs})


@ELEMENTS
@SETTINGS
@given(data=st.data(), extra=EXTRA_KEYS)
def test_a_changed_secret_gives_one_sensitive_diff_without_its_value(element, data, extra):
    schema = REGISTRY.get(element)
    desired = data.draw(declared(element))
    secret_keys = sorted(k for k in desired if k in schema.secret_keys)
    key = data.draw(st.sampled_from(secret_keys))
    new = Secret(data.draw(_value_strategy(schema.properties[key], True)))
    assume(new != desired[key])
    changed = {**desired, key: new}
    live = server_view(element, desired, extra)
    diffs = diff_configuration(changed, live, schema, live_fingerprints(element, desired), FP, NAME)
    assert diffs == [FieldDiff("change", FieldPath.config(key), SENSITIVE, SENSITIVE, True)]
    no_secret_in(diffs, {**desired, **changed})
    # the same secret declared on an instance the server holds without any fingerprint: "add"
    bare = diff_configuration(changed, {**live, key: None}, schema, {}, FP, NAME)
    assert [d.path for d in bare] == [FieldPath.config(k) for k in secret_keys]
    assert all(d.sensitive and d.new == SENSITIVE and d.old in (None, SENSITIVE) for d in bare)
    no_secret_in(bare, {**desired, **changed})


def test_an_empty_value_for_a_key_with_a_default_does_not_differ_from_what_the_server_stores():
    schema = REGISTRY.get("connectwisehd")
    desired = {
        "helpdesk.connectwise.username": "u",
        "helpdesk.connectwise.password": Secret("p-word"),
        "helpdesk.connectwise.server.url": "x",
        "helpdesk.connectwise.company": "c",
        "helpdesk.connectwise.wsdl.path": "",
    }  # the schema accepts it (no minLength)
    assert not list(schema.validator.iter_errors({k: reveal(v) for k, v in desired.items()}))
    live = server_view("connectwisehd", desired, {})
    assert diff_configuration(desired, live, schema, live_fingerprints("connectwisehd", desired), FP, NAME) == []


# -- validation once per shape ------------------------------------------------------------------

REGISTRY = ElementRegistry.load()
SHAPED = {key: REGISTRY.get(key).validator for key in REGISTRY.keys()}  # one memo for all the examples
CONSTANTS = st.sampled_from(["true", "false", "webhook", "polling", "oauth2", "custom", "http://x", "15", True, 0])
SCALARS = st.one_of(
    st.text(alphabet="ab9:/", min_size=1, max_size=4),
    st.text(max_size=3),
    st.text(alphabet="a", min_size=30, max_size=35),
    st.text(alphabet="9", min_size=126, max_size=130),
    st.integers(-3, 3),
    st.floats(allow_nan=False, min_value=-2, max_value=2),
    st.booleans(),
    st.none(),
    CONSTANTS,
)


@SETTINGS
@given(element=st.sampled_from(sorted(SHAPED)), data=st.data())
def test_a_shape_validator_agrees_with_jsonschema_on_every_value(element, data):
    """A configuration is valid through the memo of valid shapes exactly when jsonschema finds it valid."""
    keys = list(REGISTRY.get(element).properties) + ["unknown.key"]
    configuration = dict.fromkeys(required_keys(REGISTRY.get(element)), "x")  # valid, then changed
    configuration.update(data.draw(st.dictionaries(st.sampled_from(keys), SCALARS, max_size=2)))
    expected = Draft202012Validator(REGISTRY.get(element).schema).is_valid(configuration)
    assert (SHAPED[element].iter_errors(configuration) == []) == expected


# -- loading: what PyYAML's safe loader reads ----------------------------------------------------

YAML_SAMPLES = [
    "a: 1\nb: 1.5\nc: true\nd: yes\ne: null\nf: ~\ng: 2024-01-02\nh: '12'\ni: \"x\\ty\"\nj: 0o17\nk: .inf",
    '- [1, two, {three: 3}]\n- {a: [], b: {}}\n- "quoted: yes"\n',
    "base: &b {x: 1, y: 2}\nuse: *b\nmerged:\n  <<: *b\n  y: 3\n",
    "s: !!str 123\ni: !!int '7'\nb: !!binary aGVsbG8=\nm: !!map {a: 1}\nl: !!seq [1]\n",
    "base: &b [{x: 1}, {x: 2, y: 2}]\nmerged: {<<: *b, z: 3}\nscalar: &s 5\nagain: *s\n",
    "text: |\n  line one\n  line two\nfolded: >\n  a\n  b\n",
    "",
    "# only a comment\n",
    "---\nkey: value\n...\n",
    "just a scalar",
    "- 1\n- -2\n- 0x1F\n- 1_000\n- 6.02e23\n- .NaN\n",
    "- 0\n- 010\n- 08\n- +5\n- 123456789012345678901234567890\n- 1:30\n- '15'\n- ! 15\n- 15: id\n",
    "- \u0661\u0662\n- \u00b2\n- 2024\n",  # digits that are not ASCII: text
]


@pytest.mark.parametrize("text", YAML_SAMPLES)
def test_the_loader_reads_what_the_safe_loader_reads(text):
    loaded = load_yaml(text, "m.yaml")
    assert loaded.problems == []
    expected = yaml.safe_load(text)
    assert repr(loaded.data) == repr(expected)  # repr: NaN equals itself there
