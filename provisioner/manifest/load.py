"""Stage 1: load the manifest, check its structure, and layer the inputs: the manifest's ``inputs``,
then each ``--inputs FILE``, then each ``--set KEY=VALUE``, in order (later wins, nested mappings
merge); ``layers`` records that order for ``--verbose``.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from ..errors import Location, Problem
from .elements import builtin_schemas
from .schemacheck import ShapeValidator, problems_from_errors
from .yamlload import (
    DEFAULT_MAX_BYTES,
    ENV_TAG,
    EnvRef,
    YDict,
    YList,
    load_yaml,
    read_text,
    short,
    too_long_number,
)

API_VERSION = "provisioner/v1"
DEFAULT_URL = "https://api.cloud-elements.com/elements/api-v2"
DEFAULT_TARGET = "default"
DEFAULT_MAX_FOREACH = 50_000


@dataclass(frozen=True)
class Limits:
    """Caps on hostile or runaway input, all configurable from the command line."""

    max_file_bytes: int = DEFAULT_MAX_BYTES
    max_foreach: int = DEFAULT_MAX_FOREACH


@dataclass
class Manifest:
    """A loaded manifest: the raw (unrendered) data with positions, and the layered inputs."""

    path: str
    display: str
    base_dir: str
    data: YDict
    stack: str
    inputs: dict
    layers: list[str] = field(default_factory=list)

    @property
    def instances(self) -> YList:
        value = self.data.get("instances")
        return value if isinstance(value, YList) else YList()  # the loader builds every sequence as a YList

    @property
    def targets(self) -> dict:
        value = self.data.get("targets")
        return value if isinstance(value, dict) else {}

    @property
    def schema_dirs(self) -> list[str]:
        dirs = self.data.get("schemas") or []
        return [os.path.join(self.base_dir, d) for d in dirs if isinstance(d, str)]


def manifest_schema_text() -> str:
    """The manifest's JSON Schema as shipped in the package (``provisioner schema manifest`` prints it)."""
    return builtin_schemas().joinpath("manifest.schema.json").read_text(encoding="utf-8")


def load_manifest(
    path: str, inputs_files: tuple[str, ...] = (), sets: tuple[str, ...] = (), limits: Limits = Limits()
) -> tuple[Manifest | None, list[Problem]]:
    """Read, parse and structurally check a manifest, then layer its inputs."""
    display = os.path.relpath(path) if not os.path.isabs(path) else path
    text, problems = read_text(path, display, limits.max_file_bytes)
    if text is None:
        return None, problems
    loaded = load_yaml(text, display, env_tags=True)
    problems = list(loaded.problems)
    data = loaded.data
    if data is None and not problems:
        problems.append(Problem("the manifest is empty", Location(display), f"start with apiVersion: {API_VERSION}"))
    if data is None:
        return None, problems
    if not isinstance(data, YDict):  # the loader builds every mapping as a YDict
        kind = "a list" if isinstance(data, list) else f"a single value ({type(data).__name__})"
        message = f"the manifest must be a mapping of keys, got {kind}"
        problems.append(Problem(message, Location(display, 1), f"start with apiVersion: {API_VERSION}"))
        return None, problems
    problems.extend(check_structure(data, display, loaded.env_refs))
    inputs, layers, input_problems = layer_inputs(data.get("inputs"), inputs_files, sets, limits, display)
    problems.extend(input_problems)
    stack = data.get("stack")
    base_dir = os.path.dirname(os.path.abspath(path))
    return Manifest(path, display, base_dir, data, stack if isinstance(stack, str) else "", inputs, layers), problems


def check_structure(data: YDict, display: str, env_refs: list[EnvRef]) -> list[Problem]:
    """Validate against schemas/manifest.schema.json, with lines: the top level, then each instance entry
    (thousands alike: a ``ShapeValidator``); ``!env`` is accepted only as an entry's configuration value."""
    schema = json.loads(manifest_schema_text())
    entries = data.get("instances")
    entries = entries if isinstance(entries, list) else None
    errors = list(Draft202012Validator(schema).iter_errors(data if entries is None else {**data, "instances": []}))
    entry_schema = ShapeValidator({"$defs": schema["$defs"], **schema["properties"]["instances"]["items"]})
    placed: set[int] = set()  # the !env references written as configuration values
    for index, entry in enumerate(entries or ()):
        for error in entry_schema.iter_errors(entry):
            error.path.extendleft(reversed(("instances", index)))
            errors.append(error)
        configuration = entry.get("configuration") if isinstance(entry, dict) else None
        if env_refs and isinstance(configuration, dict):
            placed.update(id(v) for v in configuration.values() if isinstance(v, EnvRef))

    def location_for(path: tuple) -> Location:
        return Location(display, line_at(data, path), instance=_instance_name(data, path))

    problems = problems_from_errors(errors, location_for)
    if data.get("apiVersion") not in (None, API_VERSION):  # one problem, in our words, not the schema's
        problems = [p for p in problems if p.location.path != "apiVersion"]
        at = Location(display, data.line_of("apiVersion"), path="apiVersion")
        hint = f"this version of provisioner reads apiVersion: {API_VERSION}"
        problems.append(Problem(f"unsupported apiVersion {data.get('apiVersion')!r}", at, hint))
    hint = f'write {ENV_TAG} NAME as a value under configuration:; elsewhere "{{{{ env.NAME }}}}" reads the variable'
    message = f"{ENV_TAG} is accepted only as a configuration value"
    return problems + [Problem(message, Location(display, r.line), hint) for r in env_refs if id(r) not in placed]


def line_at(data: Any, path: tuple) -> int:
    """The line of the deepest key or item along ``path`` that has a recorded position."""
    line = getattr(data, "line", 0)
    node = data
    for part in path:
        in_list = isinstance(node, YList) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_list or isinstance(node, YDict) and part in node):
            break
        line = node.line_of(part)
        node = node[part]
    return line


def _instance_name(data: YDict, path: tuple) -> str | None:
    if len(path) >= 2 and path[0] == "instances" and isinstance(path[1], int):
        entries = data.get("instances")
        if isinstance(entries, list) and path[1] < len(entries) and isinstance(entries[path[1]], dict):
            name = entries[path[1]].get("name")
            return name if isinstance(name, str) else f"#{path[1] + 1}"
    return None


def layer_inputs(
    manifest_inputs: Any, files: tuple[str, ...], sets: tuple[str, ...], limits: Limits, display: str
) -> tuple[dict, list[str], list[Problem]]:
    """Merge the manifest's inputs, each --inputs file, then each --set, in that order."""
    problems: list[Problem] = []
    merged: dict = copy.deepcopy(dict(manifest_inputs)) if isinstance(manifest_inputs, dict) else {}
    layers = [f"{display} (inputs:)"]
    for path in files:
        text, read_problems = read_text(path, path, limits.max_file_bytes)
        problems.extend(read_problems)
        if text is None:
            continue
        loaded = load_yaml(text, path)
        problems.extend(loaded.problems)
        if loaded.data is None:
            continue
        if not isinstance(loaded.data, dict):
            hint = "write key: value pairs at the top level"
            problems.append(Problem("an inputs file must hold a YAML mapping", Location(path, 1), hint))
            continue
        deep_merge(merged, loaded.data)
        layers.append(f"--inputs {path}")
    for assignment in sets:
        keys, value, problem = parse_set(assignment)
        if problem is not None:
            problems.append(problem)
            continue
        for key in reversed(keys):
            value = {key: value}
        deep_merge(merged, value)
        layers.append(f"--set {'.'.join(keys)}")
    return merged, layers, problems


_KEY_PART = re.compile(r"[^\s.\[\]=]+")
_SET_HINT = "write --set KEY=VALUE, for example --set environment=staging or --set customers.acme.plan=gold"


def parse_set(assignment: str) -> tuple[list[str], Any, Problem | None]:
    """One ``--set KEY=VALUE``: the dotted key split in parts and the value read as a YAML scalar,
    or the problem with it (no '=', an empty key or key part, brackets, a too-long number)."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    where = Location("--set", path=short(key) if key else None)
    if not sep:
        return [], None, Problem(f"--set {short(assignment)} is not KEY=VALUE (no '=')", Location(), _SET_HINT)
    if not key:
        return [], None, Problem(f"--set {short(assignment)} has an empty key", Location(), _SET_HINT)
    if not all(_KEY_PART.fullmatch(part) for part in key.split(".")):
        message = "every part of a dotted key must be a non-empty name without spaces or brackets"
        hint = (
            "nest with dots (customers.acme.plan=gold); a list cannot be set one item at a time: use an --inputs file"
        )
        return [], None, Problem(message, where, hint)
    try:
        return key.split("."), _scalar(raw), None
    except ValueError as exc:
        return [], None, too_long_number(exc, where, f"quote it to keep it as a string: --set '{key}=\"...\"'")


def _scalar(raw: str) -> Any:
    """A --set value read as a YAML scalar (true, 42, null), else the text; ValueError for a too-long integer."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, (str, int, float, bool)) or value is None else raw


def deep_merge(into: dict, other: dict) -> None:
    """Merge ``other`` into ``into``: mappings merge key by key, anything else replaces."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value
