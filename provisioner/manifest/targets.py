"""Resolve the manifest's targets (a base URL, the user and organization secrets) into API endpoints and
credentials. Without ``targets:``, one target, ``default``: ``CE_API_URL`` or the US production API, with
``CE_USER_SECRET`` and ``CE_ORGANIZATION_SECRET``. Credentials are rendered only when a command needs the
API (never by ``validate``), and only for the targets some instance uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import Location, Problem, UserError
from ..secret import Secret
from ..urls import check_base_url
from .load import DEFAULT_TARGET, DEFAULT_URL, Manifest
from .render import Renderer, RenderError

# C0 and C1 control characters, DEL and Unicode line separators: never valid in a URL or a header
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ENV_REFERENCE = re.compile(r"env(?:\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*['\"]([^'\"]+)['\"]\s*\])")
_DEFAULTS = {  # a target's fields when the manifest does not write them
    "url": "{{ env.CE_API_URL | default('" + DEFAULT_URL + "', true) }}",
    "userSecret": "{{ env.CE_USER_SECRET }}",
    "organizationSecret": "{{ env.CE_ORGANIZATION_SECRET }}",
}


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    user_secret: Secret
    organization_secret: Secret
    credential_sources: str  # which variables to check on a 401, never their values


def resolve_targets(manifest: Manifest, renderer: Renderer, names: set[str]) -> tuple[dict[str, Target], list[Problem]]:
    """Render URL and secrets of each named target; report missing variables by name."""
    targets: dict[str, Target] = {}
    problems: list[Problem] = []
    declared = manifest.targets or {DEFAULT_TARGET: {}}
    for name in sorted(names):
        raw = declared.get(name)
        if raw is None:
            continue  # reported by validation
        values = {key: _field(name, raw, key, manifest, renderer, problems, problems) for key in _DEFAULTS}
        if None not in values.values():
            secrets = Secret(values["userSecret"]), Secret(values["organizationSecret"])
            sources = f"{_sources(raw, 'userSecret')} and {_sources(raw, 'organizationSecret')}"
            targets[name] = Target(name, check_base_url(values["url"]), *secrets, sources)
    return targets, problems


def _field(
    name: str, raw: dict, key: str, manifest: Manifest, renderer: Renderer, problems: list, unrendered: list
) -> Any:
    """A target's url or secret rendered and checked; None (the problem added) if unusable."""
    line_of = getattr(raw, "line_of", lambda _key: manifest.data.line_of("targets") if manifest.targets else None)
    at = Location(manifest.display, line_of(key), path=f"targets.{name}.{key}")
    try:
        value = renderer.value(raw.get(key, _DEFAULTS[key]), renderer.context())
    except RenderError as exc:
        unrendered.append(exc.at(at))
        return None
    problem = _value_problem(name, key, value, _sources(raw, key), at)
    problems.extend([problem] if problem else [])
    return None if problem else value


def url_problems(manifest: Manifest, renderer: Renderer) -> list[Problem]:
    """Each declared target's URL, checked offline by the rule the client applies before any request
    (``validate`` reads no secret; a URL that reads an unset variable is left to the commands that connect)."""
    problems: list[Problem] = []
    for name, raw in (manifest.targets or {DEFAULT_TARGET: {}}).items():
        if isinstance(raw, dict):  # else reported by the structure check
            _field(name, raw, "url", manifest, renderer, problems, [])
    return problems


def _value_problem(name: str, key: str, value: object, sources: str, at: Location) -> Problem | None:
    """What is wrong with a target's rendered url or secret, if anything (a secret is never shown)."""
    if not isinstance(value, str) or not value:
        return Problem(f"{key} of target {name!r} is empty", at, f"set it, or the variables it reads: {sources}")
    if _CONTROL.search(value):
        message = f"{key} of target {name!r} contains a line break or another control character"
        hint = (
            f"check {sources}: a value pasted or read from a file often ends with a newline "
            '(e.g. use "$(cat file)", which drops it)'
        )
        return Problem(message, at, hint)
    if key == "url":
        try:
            check_base_url(value)
        except UserError as exc:
            return Problem(f"url of target {name!r}: {exc.problem.message}", at, exc.problem.hint)
    return None


def _sources(raw: dict, key: str) -> str:
    """The environment variables a target's field reads, for error messages."""
    value = raw.get(key, _DEFAULTS[key])
    names = [a or b for a, b in _ENV_REFERENCE.findall(value)] if isinstance(value, str) else []
    return ", ".join(names) if names else "the value written in the manifest"


def local_target(name: str, url: str, user_secret: str, organization_secret: str) -> Target:
    return Target(name, url, Secret(user_secret), Secret(organization_secret), "the --local emulator's secrets")
