"""Stage 2 and 3: render every declared instance and validate it against its element schema.

The result is the list of ``DesiredInstance`` values the planner compares with the live state,
plus every problem found, each at its file:line (and template file:line), with the instance name
and configuration key. Nothing here touches the network.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
        problems.append(
            Problem(
                f"forEach gives {len(items)} items, over the limit of {limits.max_foreach}",
                at,
                "raise the limit with --max-foreach if this is intended",
            )
        )
        return []
    return items


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

    def field_value(key: str, instance: str | None = None) -> Any:
        at = Location(where.file, entry.line_of(key), instance=instance, path=key)
        try:
            return renderer.value(entry[key], scope, at)
        except RenderError as exc:
            problems.append(exc.problem)
            return None

    name = field_value("name")
    if not isinstance(name, str) or not name.strip():
        if len(problems) == before:
            problems.append(
                Problem(
                    f"name must render to a non-empty string, got {name!r}",
                    Location(where.file, entry.line_of("name"), path="name"),
                )
            )
        return None
    here = Location(where.file, where.line, instance=name)
    template_name = entry.get("template")
    body = (
        _template_body(entry, scope, renderer, Location(where.file, entry.line_of("template"), instance=name), problems)
        if isinstance(template_name, str)
        else {}
    )
    if body is None:
        return None
    for key in ("element", "target", "tags", "adopt", "protect", "previousNames"):
        if key in entry:
            body[key] = field_value(key, name)
    if "configuration" in entry:
        inline = _configuration(entry, scope, renderer, Location(where.file, None, instance=name), problems)
        if isinstance(inline, Mapping) and isinstance(body.get("configuration"), Mapping):
            body["configuration"] = {**body["configuration"], **inline}
        else:
            body["configuration"] = inline
    if len(problems) > before:
        return None
    return _checked(name, body, entry, template_name, manifest, registry, renderer, here, problems)


def _template_body(entry: YDict, scope: dict, renderer: Renderer, at: Location, problems: list[Problem]) -> dict | None:
    """The mapping a template file renders (None if it failed)."""
    name = entry["template"]
    try:
        body = dict(renderer.template_file(name, scope, at))
    except RenderError as exc:
        problems.append(exc.problem)
        return None
    unknown = sorted(set(body) - {"element", "tags", "configuration"})
    if unknown:
        problems.append(
            Problem(
                f"template renders unknown field(s): {', '.join(map(str, unknown))}",
                Location(at.file, at.line, name, None, at.instance),
                "a template may render element, tags and configuration",
            )
        )
    return body


def _configuration(entry: YDict, scope: dict, renderer: Renderer, here: Location, problems: list[Problem]) -> Any:
    """Render an inline configuration key by key, so each error has the key's own line and path."""
    raw = entry["configuration"]
    if not isinstance(raw, YDict):
        try:
            return renderer.value(
                raw,
                scope,
                Location(here.file, entry.line_of("configuration"), None, None, here.instance, "configuration"),
            )
        except RenderError as exc:
            problems.append(exc.problem)
            return None
    rendered = {}
    for key, value in raw.items():
        at = Location(here.file, raw.line_of(key), None, None, here.instance, f"configuration.{key}")
        try:
            rendered[key] = renderer.value(value, scope, at)
        except RenderError as exc:
            problems.append(exc.problem)
    return rendered


def _checked(
    name: str,
    body: dict,
    entry: YDict,
    template_name: Any,
    manifest: Manifest,
    registry: ElementRegistry,
    renderer: Renderer,
    here: Location,
    problems: list[Problem],
) -> DesiredInstance | None:
    before = len(problems)
    element_key = body.get("element")
    target = body.get("target") or DEFAULT_TARGET
    tags = body.get("tags")
    configuration = body.get("configuration") or {}
    line = entry.line_of("element") if "element" in entry else entry.line_of("template")
    schema = _element(element_key, registry, Location(here.file, line, instance=name, path="element"), problems)
    if (
        not isinstance(target, str)
        or (manifest.targets and target not in manifest.targets)
        or (not manifest.targets and target != DEFAULT_TARGET)
    ):
        known = ", ".join(sorted(manifest.targets) or [DEFAULT_TARGET])
        problems.append(
            Problem(
                f"unknown target {target!r}",
                Location(here.file, entry.line_of("target"), None, None, name, "target"),
                f"targets declared: {known}",
            )
        )
    if tags is not None:
        _check_tags(tags, name, here, entry, problems)
    _check_name(name, here, entry, problems)
    if not isinstance(configuration, Mapping):
        problems.append(
            Problem(
                f"configuration must be a mapping, got {type(configuration).__name__}",
                Location(here.file, entry.line_of("configuration"), None, None, name, "configuration"),
            )
        )
        return None
    if schema is not None:
        for key in schema.secret_keys & set(configuration):  # masked in any message from here on
            REDACTOR.add(configuration[key])
        locate = _config_locator(entry, template_name, renderer, name, here)
        errors = schema.iter_errors(dict(configuration))
        found = problems_from_errors(errors, locate, schema.secret_keys, prefix="configuration")
        problems.extend(renderer.scrub(p) for p in found)  # values from the environment are never echoed
    protect, previous = _safety_fields(body, name, here, entry, problems)
    if len(problems) > before or schema is None:
        return None
    config = {k: (Secret(v) if k in schema.secret_keys and isinstance(v, str) else v) for k, v in configuration.items()}
    adopt = _adopt_id(body.get("adopt"), entry, here, problems)
    oauth = schema.oauth_problem(configuration, adopt is not None)
    if oauth is not None:
        problems.append(Problem(oauth[0], Location(here.file, line, None, None, name, "element"), oauth[1]))
    if len(problems) > before:
        return None
    return DesiredInstance(
        name, schema.key, target, None if tags is None else tuple(tags), config, here, adopt, protect, previous
    )


def _adopt_id(value: Any, entry: YDict, here: Location, problems: list[Problem]) -> int | str | None:
    """``adopt: <id>``: which unmanaged instance ``--adopt`` takes over (an id, as the API gives it)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        problems.append(
            Problem(
                f"adopt must be an instance id, got {value!r}",
                Location(here.file, entry.line_of("adopt"), None, None, here.instance, "adopt"),
                "write the numeric id of the unmanaged instance to take over, e.g. adopt: 1234",
            )
        )
        return None
    return int(str(value).strip())


def _safety_fields(
    body: dict, name: str, here: Location, entry: YDict, problems: list[Problem]
) -> tuple[bool | None, tuple[str, ...]]:
    """``protect`` (a boolean once rendered) and ``previousNames`` (names, not this one)."""
    protect = body.get("protect")
    if protect is not None and not isinstance(protect, bool):
        problems.append(
            Problem(
                f"protect must be true or false, got {protect!r}",
                Location(here.file, entry.line_of("protect"), None, None, name, "protect"),
                "write protect: true, or an expression such as \"{{ inputs.environment == 'prod' }}\"",
            )
        )
        protect = None
    previous = body.get("previousNames")
    if previous is None:
        return protect, ()
    at = Location(here.file, entry.line_of("previousNames"), None, None, name, "previousNames")
    if not isinstance(previous, list) or not all(isinstance(n, str) and n.strip() for n in previous):
        problems.append(
            Problem(
                "previousNames must be a list of non-empty names",
                at,
                "list the names this instance had before, e.g. previousNames: [crm-old]",
            )
        )
        return protect, ()
    if name in previous:
        problems.append(
            Problem(f"previousNames lists the instance's own name {name!r}", at, "list only the names it had before")
        )
    return protect, tuple(dict.fromkeys(previous))


def _element(key: Any, registry: ElementRegistry, at: Location, problems: list[Problem]) -> ElementSchema | None:
    if not isinstance(key, str) or not key:
        problems.append(
            Problem("no element given", at, "set element: (e.g. connectwisehd), or render it from the template")
        )
        return None
    schema = registry.get(key)
    if schema is None:
        problems.append(
            Problem(
                f"unknown element {key!r}",
                at,
                f"known elements: {', '.join(registry.keys())}; add one with --schemas DIR",
            )
        )
    return schema


def _check_tags(tags: Any, name: str, here: Location, entry: YDict, problems: list[Problem]) -> None:
    at = Location(here.file, entry.line_of("tags") if "tags" in entry else here.line, None, None, name, "tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        problems.append(Problem("tags must be a list of strings", at))
        return
    for tag in tags:
        if tag.startswith(TAG_PREFIX):
            problems.append(
                Problem(
                    f"tag {tag!r} uses the reserved prefix {TAG_PREFIX!r}",
                    at,
                    "provisioner writes those tags itself; choose another tag",
                )
            )
        elif _MARKUP.search(tag) or not tag.strip():
            problems.append(
                Problem(
                    f"tag {tag!r} is empty or contains markup, which the API strips", at, "remove <...> from the tag"
                )
            )


def _check_name(name: str, here: Location, entry: YDict, problems: list[Problem]) -> None:
    if _MARKUP.search(name):
        problems.append(
            Problem(
                f"name {name!r} contains markup, which the API strips",
                Location(here.file, entry.line_of("name"), None, None, name, "name"),
                "remove <...> from the name",
            )
        )


def _config_locator(
    entry: YDict, template_name: Any, renderer: Renderer, name: str, here: Location
) -> Callable[[tuple], Location]:
    """Map a configuration key to the manifest line that declares it, or the template line."""
    inline = entry.get("configuration") if isinstance(entry.get("configuration"), YDict) else None

    def locate(path: tuple) -> Location:
        key = path[0] if path else None
        if inline is not None and key in inline:
            return Location(here.file, inline.line_of(key), None, None, name)
        if isinstance(template_name, str):
            line = _line_in(renderer.template_lines(template_name), key)
            return Location(here.file, entry.line_of("template"), template_name, line, name)
        line = entry.line_of("configuration") if "configuration" in entry else here.line
        return Location(here.file, line, None, None, name)

    return locate


def _line_in(lines: list[str], key: Any) -> int | None:
    """The template line that writes ``key:``, or the line of ``configuration:``."""
    for wanted in ([f"{key}:", f'"{key}":', f"'{key}':"] if key else []) + ["configuration:"]:
        for number, text in enumerate(lines, start=1):
            if text.strip().startswith(wanted):
                return number
    return None


def _duplicates(desired: list[DesiredInstance]) -> list[Problem]:
    seen: dict[tuple[str, str], DesiredInstance] = {}
    problems = _previous_name_clashes(desired)
    for instance in desired:
        key = (instance.target, instance.name)
        first = seen.get(key)
        if first is None:
            seen[key] = instance
            continue
        problems.append(
            Problem(
                f"duplicate instance name {instance.name!r} (first declared at "
                f"{first.location.file}:{first.location.line})",
                instance.location,
                "names identify instances within a stack; make them unique",
            )
        )
    return problems


def _previous_name_clashes(desired: list[DesiredInstance]) -> list[Problem]:
    """A previous name must not be declared now, nor claimed by two instances of one target."""
    declared = {(d.target, d.name) for d in desired}
    claimed: dict[tuple[str, str], DesiredInstance] = {}
    problems = []
    for instance in desired:
        for old in instance.previous_names:
            key = (instance.target, old)
            at = Location(instance.location.file, instance.location.line, instance=instance.name, path="previousNames")
            if key in declared and old != instance.name:
                problems.append(
                    Problem(
                        f"previous name {old!r} is declared by another instance",
                        at,
                        "a rename needs the old name to be gone from the manifest",
                    )
                )
            elif key in claimed:
                problems.append(
                    Problem(
                        f"previous name {old!r} is also listed by {claimed[key].name!r}",
                        at,
                        "one old instance can be renamed into one new name only",
                    )
                )
            claimed.setdefault(key, instance)
    return problems
