"""Resolve the manifest's targets into API endpoints and credentials.

A target is a Cloud Elements environment: a base URL and the user and organization secrets. With no
``targets:`` the manifest has one target, ``default``, at the US production API (``CE_API_URL`` when
set) with its secrets in ``CE_USER_SECRET`` and ``CE_ORGANIZATION_SECRET``. Credentials are rendered
only when a command needs the API (never by ``validate``), and only for the targets some instance uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import Location, Problem, UserError
from ..secret import Secret
from ..urls import check_base_url
from .load import DEFAULT_TARGET, DEFAULT_URL, Manifest
from .render import Renderer, RenderError

DEFAULT_URL_EXPRESSION = "{{ env.CE_API_URL | default('" + DEFAULT_URL + "', true) }}"
DEFAULT_USER_SECRET = "{{ env.CE_USER_SECRET }}"
DEFAULT_ORGANIZATION_SECRET = "{{ env.CE_ORGANIZATION_SECRET }}"
# C0 and C1 control characters, DEL and Unicode line separators: never valid in a URL or a header
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ENV_REFERENCE = re.compile(r"env(?:\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*['\"]([^'\"]+)['\"]\s*\])")


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
        target = _resolve_one(name, raw, manifest, renderer, problems)
        if target is not None:
            targets[name] = target
    return targets, problems


_FIELDS = (
    ("url", DEFAULT_URL_EXPRESSION),
    ("userSecret", DEFAULT_USER_SECRET),
    ("organizationSecret", DEFAULT_ORGANIZATION_SECRET),
)


def _resolve_one(
    name: str, raw: dict, manifest: Manifest, renderer: Renderer, problems: list[Problem]
) -> Target | None:
    values = {}
    for key, default in _FIELDS:
        at = _at(manifest, raw, name, key)
        try:
            value = renderer.value(raw.get(key, default), renderer.context(), at)
        except RenderError as exc:
            problems.append(exc.problem)
            continue
        problem = _value_problem(name, key, value, _sources(raw.get(key, default)), at)
        if problem is None:
            values[key] = value
        else:
            problems.append(problem)
    if len(values) < 3:
        return None
    sources = (
        f"{_sources(raw.get('userSecret', DEFAULT_USER_SECRET))} and "
        f"{_sources(raw.get('organizationSecret', DEFAULT_ORGANIZATION_SECRET))}"
    )
    url = check_base_url(values["url"])
    return Target(name, url, Secret(values["userSecret"]), Secret(values["organizationSecret"]), sources)


def url_problems(manifest: Manifest, renderer: Renderer) -> list[Problem]:
    """Each declared target's URL, checked offline by the rule the client applies before any request
    (``validate`` reads no secret; a URL that reads an unset variable is left to the commands that connect)."""
    problems = []
    for name, raw in (manifest.targets or {DEFAULT_TARGET: {}}).items():
        if not isinstance(raw, dict):
            continue  # reported by the structure check
        at = _at(manifest, raw, name, "url")
        try:
            value = renderer.value(raw.get("url", DEFAULT_URL_EXPRESSION), renderer.context(), at)
        except RenderError:
            continue
        problem = _value_problem(name, "url", value, _sources(raw.get("url", DEFAULT_URL_EXPRESSION)), at)
        problems.extend([problem] if problem else [])
    return problems


def _at(manifest: Manifest, raw: dict, name: str, key: str) -> Location:
    line_of = getattr(raw, "line_of", lambda _key: manifest.data.line_of("targets") if manifest.targets else None)
    return Location(manifest.display, line_of(key), path=f"targets.{name}.{key}")


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


def _sources(raw: object) -> str:
    """The environment variables a secret expression reads, for error messages."""
    if not isinstance(raw, str):
        return "the value in the manifest"
    names = [a or b for a, b in _ENV_REFERENCE.findall(raw)]
    return ", ".join(names) if names else "the value written in the manifest"


def local_target(name: str, url: str, user_secret: str, organization_secret: str) -> Target:
    return Target(name, url, Secret(user_secret), Secret(organization_secret), "the --local emulator's secrets")
