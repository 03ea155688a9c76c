"""Stages 2 and 3, offline: render every declared instance and validate it against its element schema,
into the ``DesiredInstance`` values the planner compares with the live state and every problem found,
each at its file:line (and template file:line), with the instance name and configuration key.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jinja2

from ..errors import Location, Problem
from ..ownership import TAG_PREFIX
from ..secret import REDACTOR, Secret, escape
from .elements import ElementRegistry, ElementSchema
from .load import DEFAULT_TARGET, Limits, Manifest
from .render import Renderer, RenderError
from .schemacheck import problems_from_errors
from .yamlload import ENV_TAG, EnvRef, YDict

_MARKUP = re.compile(r"<[^>]*>")
_EXPRESSION = re.compile(r"\{\{(.*?)\}\}")


@dataclass(frozen=True)
class DesiredInstance:
    """One instance as the manifest declares it, rendered. Secret values are ``Secret``s."""

    name: str
    element: str
    target: str
    tags: tuple[str, ...] | None  # None: the manifest does not declare tags, so they are not compared
    configuration: Mapping[str, Any]
    location: Location = field(compare=False)
    adopt: int | str | None = None  # id of the unmanaged instance ``--adopt`` takes over
    protect: bool | None = None  # None: not declared, the live protection marker is kept as it is
    previous_names: tuple[str, ...] = ()  # names it had before: a rename keeps the instance
    enabled: bool = True  # false: the instance is declared disabled


def build_desired(
    manifest: Manifest,
    registry: ElementRegistry,
    renderer: Renderer,
    limits: Limits,
    broken: frozenset[tuple[int, str | None]] = frozenset(),
) -> tuple[list[DesiredInstance], list[Problem]]:
    """Render and validate every entry (forEach expanded), collecting all problems. ``broken``: the (entry,
    field) pairs the structure check refused (None: the whole entry), not reported again; the rest is checked."""
    desired: list[DesiredInstance] = []
    problems: list[Problem] = []
    for index, entry in enumerate(manifest.instances):
        if not isinstance(entry, YDict):  # the loader builds every mapping as a YDict
            continue
        fields = {f for i, f in broken if i == index}
        where = Location(manifest.display, manifest.instances.line_of(index))
        items = [] if "forEach" in fields else _items(entry, renderer, limits, where, problems)
        for item in items:
            one = _Entry(entry, where, problems, fields, f"#{index + 1}", renderer)
            instance = _build_one(one, item, manifest, registry)
            if instance is not None and not fields:
                desired.append(instance)
    problems.extend(_duplicates(desired))
    return desired, problems


_NO_ITEM = jinja2.utils.missing
_UNKNOWN = object()  # a field whose value could not be read (refused by the structure check, or not rendered)


def _items(entry: YDict, renderer: Renderer, limits: Limits, where: Location, problems: list[Problem]) -> list:
    if "forEach" not in entry:
        return [_NO_ITEM]
    at = Location(where.file, entry.line_of("forEach"), path="forEach")
    try:
        items = renderer.value(entry["forEach"], renderer.context())
    except RenderError as exc:
        problems.append(exc.at(at))
        return []
    if isinstance(items, Mapping):
        items = [{"key": k, "value": v} for k, v in items.items()]
    if not isinstance(items, list):
        hint = 'point it at a list, e.g. forEach: "{{ inputs.customers }}"'
        if callable(items):  # inputs.items, inputs.keys ... are mapping methods in Jinja
            hint = "that name is a method of the mapping; write it with brackets, e.g. inputs['items']"
        kind = "a method" if callable(items) else type(items).__name__
        problems.append(Problem(f"forEach must give a list, got {kind}", at, hint))
        return []
    if len(items) > limits.max_foreach:
        message = f"forEach gives {len(items)} items, over the limit of {limits.max_foreach}"
        problems.append(Problem(message, at, "raise the limit with --max-foreach if this is intended"))
        return []
    return items


class _Entry:
    """One instance entry (one forEach item) being rendered and checked, and where to report.
    ``broken``: its fields the structure check refused; ``label``: its name while none is known."""

    def __init__(
        self, entry: YDict, where: Location, problems: list[Problem], broken: set, label: str, renderer: Renderer
    ):
        self.entry, self.file, self.line, self.problems, self.broken = entry, where.file, where.line, problems, broken
        self.renderer = renderer
        self.name: str | None = None  # the rendered name, or the label once the name is known not to render
        self.label, self.named = label, False
        self.literal = entry.get("literal") is True  # text written by import: data, never a template

    def at(self, key: str, path: str | None = "") -> Location:
        """The line of ``key`` in the entry, the instance name and a path (``key`` unless given)."""
        return Location(self.file, self.entry.line_of(key), instance=self.name, path=key if path == "" else path)

    def add(self, key: str, message: str, hint: str | None = None) -> None:
        self.problems.append(Problem(message, self.at(key), hint))

    def render(self, raw: Any, scope: dict, key: str) -> Any:
        """The value of ``key`` rendered (taken as written under ``literal: true``); _UNKNOWN if it did not render."""
        if self.literal:
            return raw
        try:
            return self.renderer.value(raw, scope)
        except RenderError as exc:
            self.problems.append(exc.at(self.at(key)))
            return _UNKNOWN

    def field(self, key: str, scope: dict) -> Any:
        """A field of the entry rendered; _UNKNOWN if refused by the structure check or not rendered."""
        if key in self.broken:
            return _UNKNOWN
        return self.render(self.entry[key], scope, key)


def _build_one(one: _Entry, item: Any, manifest: Manifest, registry: ElementRegistry) -> DesiredInstance | None:
    """Render one entry and check it; every field that can be read is checked, whatever failed before."""
    scope = one.renderer.context(item)
    before = len(one.problems)
    name = one.field("name", scope) if "name" in one.entry else _UNKNOWN
    if isinstance(name, str) and name.strip():
        one.name, one.named = name, True
        _check_printable(one, "name", [name])
    else:
        if name is not _UNKNOWN:
            hint = 'write a name, e.g. name: crm-acme, or an expression that gives one: "crm-{{ item.name }}"'
            one.add("name", f"name must render to a non-empty string, got {name!r}", hint)
        one.name = one.label
    body: dict[str, Any] = {}
    if isinstance(one.entry.get("template"), str) and "template" not in one.broken:
        rendered = _template_body(one, scope)
        body = {"element": _UNKNOWN, "configuration": _UNKNOWN} if rendered is None else rendered
    for key in ("element", "target", "tags", "adopt", "protect", "previousNames", "enabled"):
        if key in one.entry:
            body[key] = one.field(key, scope)
    if "configuration" in one.entry:
        inline = _UNKNOWN if "configuration" in one.broken else _configuration(one, scope)
        known = body.get("configuration")
        if isinstance(inline, _Partial) and isinstance(known, Mapping):
            body["configuration"] = _Partial({**known, **inline}, inline.unknown)
        elif isinstance(inline, Mapping) and isinstance(known, Mapping):
            body["configuration"] = {**known, **inline}
        elif isinstance(inline, Mapping) and known is _UNKNOWN:
            body["configuration"] = _Partial(inline)  # the template's part is unknown
        else:
            body["configuration"] = inline
    instance = _checked(one, body, manifest, registry)
    return instance if len(one.problems) == before and one.named else None


class _Partial(dict):
    """A configuration only partly known: the keys that rendered (the template's, or some inline
    keys, did not). Its keys are checked; what it lacks is not reported missing."""

    def __init__(self, known: Mapping, unknown: frozenset[str] = frozenset()):
        super().__init__(known)
        self.unknown = unknown


def _template_body(one: _Entry, scope: dict) -> dict | None:
    """The mapping a template file renders (None if it failed)."""
    name = one.entry["template"]
    at = one.at("template", None)
    try:
        body = dict(one.renderer.template_file(name, scope, at))
    except RenderError as exc:
        one.problems.append(exc.problem)
        return None
    unknown = ", ".join(sorted(map(str, set(body) - {"element", "tags", "configuration"})))
    if unknown:
        hint = "a template may render element, tags and configuration"
        one.problems.append(Problem(f"template renders unknown field(s): {unknown}", replace(at, template=name), hint))
    return body


def _configuration(one: _Entry, scope: dict) -> Any:
    """Render an inline configuration key by key (each error at its key's line), leaving out and remembering
    the keys that do not render (``_Partial``). Under ``literal: true`` only ``!env NAME`` is read."""
    raw = one.entry["configuration"]
    if not isinstance(raw, YDict):
        return one.render(raw, scope, "configuration")
    rendered = {}
    failed = set()
    for key, value in raw.items():
        if one.literal and not isinstance(value, EnvRef):
            rendered[key] = value
            continue
        try:
            rendered[key] = one.renderer.value(value, scope)
        except RenderError as exc:
            at = Location(one.file, raw.line_of(key), instance=one.name, path=f"configuration.{key}")
            one.problems.append(exc.at(at))
            failed.add(key)
    return _Partial(rendered, frozenset(failed)) if failed else rendered


def _checked(one: _Entry, body: dict, manifest: Manifest, registry: ElementRegistry) -> DesiredInstance | None:
    problems, before, entry, name = one.problems, len(one.problems), one.entry, one.name or one.label
    known = {key: value for key, value in body.items() if value is not _UNKNOWN}
    target, tags = known.get("target") or DEFAULT_TARGET, known.get("tags")
    configuration = body.get("configuration") or {}
    schema = None
    if body.get("element") is not _UNKNOWN and ("element" in entry or "template" in entry):
        schema = _element(one, known.get("element"), registry)
    if not isinstance(target, str) or target not in (manifest.targets or {DEFAULT_TARGET: None}):
        declared = ", ".join(sorted(manifest.targets) or [DEFAULT_TARGET])
        one.add("target", f"unknown target {target!r}", f"targets declared: {declared}")
    if tags is not None:
        _check_tags(one, tags)
    if one.named and _MARKUP.search(name):
        one.add("name", f"name {name!r} contains markup, which the API strips", "remove <...> from the name")
    protect = _boolean(one, known, "protect", None)
    previous = _previous_names(one, known.get("previousNames"))
    enabled = bool(_boolean(one, known, "enabled", True))
    adopt = _adopt_id(one, known.get("adopt"))
    if configuration is _UNKNOWN:
        return None
    if not isinstance(configuration, Mapping):
        hint = "write key: value lines under configuration:, or one expression that gives a mapping"
        one.add("configuration", f"configuration must be a mapping, got {type(configuration).__name__}", hint)
        return None
    if schema is None:
        return None
    _secrets(one, schema, configuration)
    errors = schema.validator.iter_errors(dict(configuration))
    unknown = configuration.unknown if isinstance(configuration, _Partial) else frozenset()
    if isinstance(configuration, _Partial) and not unknown:  # the template's part is unknown: none is missing
        errors = [e for e in errors if e.validator != "required"]
    if errors:
        expressions = _from_expressions(one, configuration)
        locate = _config_locator(one)
        found = problems_from_errors(errors, locate, schema.secret_keys, "configuration", unknown, expressions)
        problems.extend(one.renderer.scrub(p) for p in found)  # values from the environment are never echoed
    if len(problems) > before or isinstance(configuration, _Partial):
        return None
    config = {k: (Secret(v) if k in schema.secret_keys and isinstance(v, str) else v) for k, v in configuration.items()}
    oauth = schema.oauth_problem(configuration, adopt is not None)
    if oauth is not None:
        problems.append(Problem(oauth[0], _element_at(one), oauth[1]))
        return None
    here = Location(one.file, one.line, instance=name)
    tag_tuple = None if tags is None else tuple(tags)
    return DesiredInstance(name, schema.key, target, tag_tuple, config, here, adopt, protect, previous, enabled)


def _secrets(one: _Entry, schema: ElementSchema, configuration: Mapping) -> None:
    """Register the secret values (masked in any message from here on); under ``literal: true`` a
    secret that looks like a template (as import wrote them before ``!env``) would be sent as text."""
    for key in schema.secret_keys & set(configuration):
        REDACTOR.add(configuration[key])
        if one.literal and "{{" in str(configuration[key]):
            at = replace(_config_locator(one)((key,)), path=f"configuration.{key}")
            hint = f"under literal: true a value is text, never a template: write {key}: {ENV_TAG} NAME"
            one.problems.append(Problem("this secret is a template, taken as text", at, hint))


def _adopt_id(one: _Entry, value: Any) -> int | str | None:
    """``adopt: <id>``: which unmanaged instance ``--adopt`` takes over (an id, as the API gives it)."""
    if value is None or type(value) is int and value >= 0:  # none, or an id as import writes it
        return value
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        hint = "write the numeric id of the unmanaged instance to take over, e.g. adopt: 1234"
        one.add("adopt", f"adopt must be an instance id, got {value!r}", hint)
        return None
    return int(str(value).strip())


_BOOLEAN_HINTS = {  # the fields that must render to true or false, and how to write them
    "protect": "write protect: true, or an expression such as \"{{ inputs.environment == 'prod' }}\"",
    "enabled": "write enabled: false, or an expression such as \"{{ inputs.environment != 'retired' }}\"",
}


def _boolean(one: _Entry, known: dict, key: str, default: bool | None) -> bool | None:
    value = known.get(key, default)
    if value is default or isinstance(value, bool):
        return value
    one.add(key, f"{key} must be true or false, got {value!r}", _BOOLEAN_HINTS[key])
    return default


def _previous_names(one: _Entry, previous: Any) -> tuple[str, ...]:
    """``previousNames``: the names the instance had before, not this one."""
    if previous is None:
        return ()
    if not isinstance(previous, list) or not all(isinstance(n, str) and n.strip() for n in previous):
        hint = "list the names this instance had before, e.g. previousNames: [crm-old]"
        one.add("previousNames", "previousNames must be a list of non-empty names", hint)
        return ()
    _check_printable(one, "previousNames", previous)
    if one.named and one.name in previous:
        message = f"previousNames lists the instance's own name {one.name!r}"
        one.add("previousNames", message, "list only the names it had before")
    return tuple(dict.fromkeys(previous))


def _check_printable(one: _Entry, key: str, names: list[str]) -> None:
    """A name is printed in logs and terminals: a control, format (bidi) or other non-printable
    character, or a lone surrogate, could forge or hide output, so it is refused (shown escaped)."""
    for name in names:
        if not name.isprintable():
            bad = next(c for c in name if not c.isprintable())
            kind = {"Cc": "a control character", "Cs": "a lone surrogate"}.get(unicodedata.category(bad), "")
            what = f"U+{ord(bad):04X}, {unicodedata.name(bad, '') or kind or 'not printable'}"
            if key == "name":
                one.name = escape(name)  # the location shows it too
            hint = "write names with visible characters only; spaces are fine"
            one.add(key, f"name '{escape(name)}' contains a non-printable character ({what})", hint)


def _element(one: _Entry, key: Any, registry: ElementRegistry) -> ElementSchema | None:
    if not isinstance(key, str) or not key:
        hint = "set element: (e.g. connectwisehd), or render it from the template"
        one.problems.append(Problem("no element given", _element_at(one), hint))
        return None
    schema = registry.get(key)
    if schema is None:
        hint = f"known elements: {', '.join(registry.keys())}; add one with --schemas DIR"
        one.problems.append(Problem(f"unknown element {key!r}", _element_at(one), hint))
    return schema


def _element_at(one: _Entry) -> Location:
    return one.at("element" if "element" in one.entry else "template", "element")


def _check_tags(one: _Entry, tags: Any) -> None:
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        hint = "write a list of strings, e.g. tags: [billing, team-a], or an expression that gives one"
        one.add("tags", f"tags must be a list of strings, got {type(tags).__name__}", hint)
        return
    for tag in tags:
        if tag.startswith(TAG_PREFIX):
            hint = "provisioner writes those tags itself; choose another tag"
            one.add("tags", f"tag {tag!r} uses the reserved prefix {TAG_PREFIX!r}", hint)
        elif _MARKUP.search(tag) or not tag.strip():
            message = f"tag {tag!r} is empty or contains markup, which the API strips"
            one.add("tags", message, "remove <...> from the tag")


def _config_locator(one: _Entry) -> Callable[[tuple], Location]:
    """Map a configuration key to the manifest line that declares it, or the template line."""
    entry, template_name = one.entry, one.entry.get("template")
    inline = entry.get("configuration") if isinstance(entry.get("configuration"), YDict) else None

    def locate(path: tuple) -> Location:
        key = path[0] if path else None
        if inline is not None and key in inline:
            return Location(one.file, inline.line_of(key), instance=one.name)
        if isinstance(template_name, str):
            line = _line_in(one.renderer.template_lines(template_name), key)
            return Location(one.file, entry.line_of("template"), template_name, line, one.name)
        return Location(one.file, entry.line_of("configuration"), instance=one.name)

    return locate


def _from_expressions(one: _Entry, configuration: Mapping) -> dict[str, str]:
    """The configuration keys whose value a {{ expression }} gave (it keeps its value's type, quoted or not),
    with the expression's text where seen: inline, in the template file, or the whole configuration."""
    inline, template = one.entry.get("configuration"), one.entry.get("template")
    if isinstance(inline, str):
        return dict.fromkeys(configuration, "")
    written = dict(inline) if isinstance(inline, dict) else {}
    if isinstance(template, str):
        lines = one.renderer.template_lines(template)
        for key in set(configuration) - set(written):
            line = _line_in(lines, key)
            written[key] = lines[line - 1] if line else ""
    found = {k: _EXPRESSION.search(v) for k, v in written.items() if isinstance(v, str)}
    return {k: m[1].strip() for k, m in found.items() if m}


def _line_in(lines: list[str], key: Any) -> int | None:
    """The template line that writes ``key:``, or the line of ``configuration:``."""
    for wanted in ([f"{key}:", f'"{key}":', f"'{key}':"] if key else []) + ["configuration:"]:
        for number, text in enumerate(lines, start=1):
            if text.strip().startswith(wanted):
                return number
    return None


def _duplicates(desired: list[DesiredInstance]) -> list[Problem]:
    """Names are unique within a target; a previous name is neither declared now nor claimed twice."""
    problems: list[Problem] = []
    declared = {(d.target, d.name) for d in desired}
    claimed: dict[tuple[str, str], DesiredInstance] = {}
    for instance in desired:
        for old in instance.previous_names:
            at = replace(instance.location, path="previousNames")
            key = (instance.target, old)
            if key in declared and old != instance.name:
                hint = "a rename needs the old name to be gone from the manifest"
                problems.append(Problem(f"previous name {old!r} is declared by another instance", at, hint))
            elif key in claimed:
                message = f"previous name {old!r} is also listed by {claimed[key].name!r}"
                problems.append(Problem(message, at, "one old instance can be renamed into one new name only"))
            claimed.setdefault(key, instance)
    first: dict[tuple[str, str], DesiredInstance] = {}
    for instance in desired:
        seen = first.setdefault((instance.target, instance.name), instance)
        if seen is not instance:
            where = f"{seen.location.file}:{seen.location.line}"
            message = f"duplicate instance name {instance.name!r} (first declared at {where})"
            hint = "names identify instances within a stack; make them unique"
            problems.append(Problem(message, instance.location, hint))
    return problems
