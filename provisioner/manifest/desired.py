"""Stage 2 and 3: render every declared instance and validate it against its element schema.

The result is the list of ``DesiredInstance`` values the planner compares with the live state,
plus every problem found, each at its file:line (and template file:line), with the instance name
and configuration key. Nothing here touches the network.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jinja2

from ..errors import Location, Problem
from ..ownership import TAG_PREFIX
from ..secret import REDACTOR, Secret
from .elements import ElementRegistry, ElementSchema
from .load import DEFAULT_TARGET, Limits, Manifest
from .render import Renderer, RenderError
from .schemacheck import problems_from_errors
from .yamlload import YDict

_MARKUP = re.compile(r"<[^>]*>")


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
    skip: frozenset[int] = frozenset(),
) -> tuple[list[DesiredInstance], list[Problem]]:
    """Render and validate every instance entry (forEach expanded); collect all problems.
    Entries in ``skip`` already failed the structure check and are not reported twice."""
    desired: list[DesiredInstance] = []
    problems: list[Problem] = []
    for index, entry in enumerate(manifest.instances):
        if not isinstance(entry, YDict) or index in skip:  # the loader builds every mapping as a YDict
            continue
        where = Location(manifest.display, manifest.instances.line_of(index))
        for item in _items(entry, renderer, limits, where, problems):
            instance = _build_one(entry, item, manifest, registry, renderer, where, problems)
            if instance is not None:
                desired.append(instance)
    problems.extend(_duplicates(desired))
    return desired, problems


_NO_ITEM = jinja2.utils.missing


def _items(entry: YDict, renderer: Renderer, limits: Limits, where: Location, problems: list[Problem]) -> list:
    if "forEach" not in entry:
        return [_NO_ITEM]
    at = Location(where.file, entry.line_of("forEach"), path="forEach")
    try:
        items = renderer.value(entry["forEach"], renderer.context(), at)
    except RenderError as exc:
        problems.append(exc.problem)
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
    """One instance entry (one forEach item) being rendered and checked, and where to report."""

    def __init__(self, entry: YDict, file: str | None, line: int | None, problems: list[Problem]):
        self.entry, self.file, self.line, self.problems = entry, file, line, problems
        self.name: str | None = None

    def at(self, key: str, path: str | None = "") -> Location:
        """The line of ``key`` in the entry, the instance name and a path (``key`` unless given)."""
        return Location(self.file, self.entry.line_of(key), instance=self.name, path=key if path == "" else path)

    def add(self, key: str, message: str, hint: str | None = None) -> None:
        self.problems.append(Problem(message, self.at(key), hint))

    def render(self, renderer: Renderer, raw: Any, scope: dict, at: Location) -> Any:
        try:
            return renderer.value(raw, scope, at)
        except RenderError as exc:
            self.problems.append(exc.problem)
            return None


def _build_one(
    entry: YDict,
    item: Any,
    manifest: Manifest,
    registry: ElementRegistry,
    renderer: Renderer,
    where: Location,
    problems: list[Problem],
) -> DesiredInstance | None:
    scope = renderer.context(item)
    before = len(problems)
    one = _Entry(entry, where.file, where.line, problems)
    name = one.render(renderer, entry["name"], scope, one.at("name"))
    if not isinstance(name, str) or not name.strip():
        if len(problems) == before:
            one.add("name", f"name must render to a non-empty string, got {name!r}")
        return None
    one.name = name
    template_name = entry.get("template")
    body = _template_body(one, scope, renderer) if isinstance(template_name, str) else {}
    if body is None:
        return None
    for key in ("element", "target", "tags", "adopt", "protect", "previousNames", "enabled"):
        if key in entry:
            body[key] = one.render(renderer, entry[key], scope, one.at(key))
    if "configuration" in entry:
        inline = _configuration(one, scope, renderer)
        if isinstance(inline, Mapping) and isinstance(body.get("configuration"), Mapping):
            body["configuration"] = {**body["configuration"], **inline}
        else:
            body["configuration"] = inline
    if len(problems) > before:
        return None
    return _checked(one, body, manifest, registry, renderer)


def _template_body(one: _Entry, scope: dict, renderer: Renderer) -> dict | None:
    """The mapping a template file renders (None if it failed)."""
    name = one.entry["template"]
    at = one.at("template", None)
    try:
        body = dict(renderer.template_file(name, scope, at))
    except RenderError as exc:
        one.problems.append(exc.problem)
        return None
    unknown = sorted(set(body) - {"element", "tags", "configuration"})
    if unknown:
        one.problems.append(
            Problem(
                f"template renders unknown field(s): {', '.join(map(str, unknown))}",
                Location(at.file, at.line, name, None, at.instance),
                "a template may render element, tags and configuration",
            )
        )
    return body


def _configuration(one: _Entry, scope: dict, renderer: Renderer) -> Any:
    """Render an inline configuration key by key, so each error has the key's own line and path."""
    raw = one.entry["configuration"]
    if not isinstance(raw, YDict):
        return one.render(renderer, raw, scope, one.at("configuration"))
    rendered = {}
    for key, value in raw.items():
        at = Location(one.file, raw.line_of(key), instance=one.name, path=f"configuration.{key}")
        try:
            rendered[key] = renderer.value(value, scope, at)
        except RenderError as exc:
            one.problems.append(exc.problem)
    return rendered


def _checked(
    one: _Entry, body: dict, manifest: Manifest, registry: ElementRegistry, renderer: Renderer
) -> DesiredInstance | None:
    problems, before, entry, name = one.problems, len(one.problems), one.entry, one.name
    assert name is not None
    target = body.get("target") or DEFAULT_TARGET
    tags = body.get("tags")
    configuration = body.get("configuration") or {}
    element_at = Location(
        one.file, entry.line_of("element" if "element" in entry else "template"), None, None, name, "element"
    )
    schema = _element(body.get("element"), registry, element_at, problems)
    if not isinstance(target, str) or target not in (manifest.targets or {DEFAULT_TARGET: None}):
        known = ", ".join(sorted(manifest.targets) or [DEFAULT_TARGET])
        one.add("target", f"unknown target {target!r}", f"targets declared: {known}")
    if tags is not None:
        _check_tags(one, tags)
    if _MARKUP.search(name):
        one.add("name", f"name {name!r} contains markup, which the API strips", "remove <...> from the name")
    if not isinstance(configuration, Mapping):
        one.add("configuration", f"configuration must be a mapping, got {type(configuration).__name__}")
        return None
    if schema is not None:
        for key in schema.secret_keys & set(configuration):  # masked in any message from here on
            REDACTOR.add(configuration[key])
        errors = schema.validator.iter_errors(dict(configuration))
        locate = _config_locator(one, renderer)
        found = problems_from_errors(errors, locate, schema.secret_keys, prefix="configuration")
        problems.extend(renderer.scrub(p) for p in found)  # values from the environment are never echoed
    protect, previous = _safety_fields(one, body)
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        hint = "write enabled: false, or an expression such as \"{{ inputs.environment != 'retired' }}\""
        one.add("enabled", f"enabled must be true or false, got {enabled!r}", hint)
    if len(problems) > before or schema is None:
        return None
    config = {k: (Secret(v) if k in schema.secret_keys and isinstance(v, str) else v) for k, v in configuration.items()}
    adopt = _adopt_id(one, body.get("adopt"))
    oauth = schema.oauth_problem(configuration, adopt is not None)
    if oauth is not None:
        problems.append(Problem(oauth[0], element_at, oauth[1]))
    if len(problems) > before:
        return None
    here = Location(one.file, one.line, instance=name)
    tag_tuple = None if tags is None else tuple(tags)
    return DesiredInstance(name, schema.key, target, tag_tuple, config, here, adopt, protect, previous, enabled)


def _adopt_id(one: _Entry, value: Any) -> int | str | None:
    """``adopt: <id>``: which unmanaged instance ``--adopt`` takes over (an id, as the API gives it)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        hint = "write the numeric id of the unmanaged instance to take over, e.g. adopt: 1234"
        one.add("adopt", f"adopt must be an instance id, got {value!r}", hint)
        return None
    return int(str(value).strip())


def _safety_fields(one: _Entry, body: dict) -> tuple[bool | None, tuple[str, ...]]:
    """``protect`` (a boolean once rendered) and ``previousNames`` (names, not this one)."""
    protect = body.get("protect")
    if protect is not None and not isinstance(protect, bool):
        hint = "write protect: true, or an expression such as \"{{ inputs.environment == 'prod' }}\""
        one.add("protect", f"protect must be true or false, got {protect!r}", hint)
        protect = None
    previous = body.get("previousNames")
    if previous is None:
        return protect, ()
    if not isinstance(previous, list) or not all(isinstance(n, str) and n.strip() for n in previous):
        hint = "list the names this instance had before, e.g. previousNames: [crm-old]"
        one.add("previousNames", "previousNames must be a list of non-empty names", hint)
        return protect, ()
    if one.name in previous:
        message = f"previousNames lists the instance's own name {one.name!r}"
        one.add("previousNames", message, "list only the names it had before")
    return protect, tuple(dict.fromkeys(previous))


def _element(key: Any, registry: ElementRegistry, at: Location, problems: list[Problem]) -> ElementSchema | None:
    if not isinstance(key, str) or not key:
        hint = "set element: (e.g. connectwisehd), or render it from the template"
        problems.append(Problem("no element given", at, hint))
        return None
    schema = registry.get(key)
    if schema is None:
        hint = f"known elements: {', '.join(registry.keys())}; add one with --schemas DIR"
        problems.append(Problem(f"unknown element {key!r}", at, hint))
    return schema


def _check_tags(one: _Entry, tags: Any) -> None:
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        one.add("tags", "tags must be a list of strings")
        return
    for tag in tags:
        if tag.startswith(TAG_PREFIX):
            hint = "provisioner writes those tags itself; choose another tag"
            one.add("tags", f"tag {tag!r} uses the reserved prefix {TAG_PREFIX!r}", hint)
        elif _MARKUP.search(tag) or not tag.strip():
            one.add(
                "tags", f"tag {tag!r} is empty or contains markup, which the API strips", "remove <...> from the tag"
            )


def _config_locator(one: _Entry, renderer: Renderer) -> Callable[[tuple], Location]:
    """Map a configuration key to the manifest line that declares it, or the template line."""
    entry, template_name = one.entry, one.entry.get("template")
    inline = entry.get("configuration") if isinstance(entry.get("configuration"), YDict) else None

    def locate(path: tuple) -> Location:
        key = path[0] if path else None
        if inline is not None and key in inline:
            return Location(one.file, inline.line_of(key), instance=one.name)
        if isinstance(template_name, str):
            line = _line_in(renderer.template_lines(template_name), key)
            return Location(one.file, entry.line_of("template"), template_name, line, one.name)
        return Location(one.file, entry.line_of("configuration"), instance=one.name)

    return locate


def _line_in(lines: list[str], key: Any) -> int | None:
    """The template line that writes ``key:``, or the line of ``configuration:``."""
    for wanted in ([f"{key}:", f'"{key}":', f"'{key}':"] if key else []) + ["configuration:"]:
        for number, text in enumerate(lines, start=1):
            if text.strip().startswith(wanted):
                return number
    return None


def _duplicates(desired: list[DesiredInstance]) -> list[Problem]:
    """A previous name must not be declared now, nor claimed by two instances of one target; names are
    unique within a target."""
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
