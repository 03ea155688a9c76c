"""Request bodies for the API, built from a desired instance; pure functions. ``PUT`` replaces the whole
instance, ``PATCH`` serves when no configuration value differs, and to adopt (``modify_verb``). Secret
values stay ``Secret`` objects: the HTTP client reveals them only when it serialises the request.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from ..manifest.desired import DesiredInstance
from ..manifest.elements import OAUTH_REFRESH_TOKEN, ElementSchema
from ..ownership import PROTECT_TAG, fingerprint_tags, stack_marker, user_tags
from .applied import applied_tag
from .diff import FieldDiff, FingerprintContext
from .plan import Action, Change


def modify_verb(change: Change) -> Literal["PUT", "PATCH"]:
    """PUT when a configuration value differs (the whole instance is sent), else PATCH (name and tags)."""
    if change.action != Action.ADOPT and any(d.path.section == "configuration" for d in change.diff):
        return "PUT"
    return "PATCH"


def create_body(desired: DesiredInstance, schema: ElementSchema, fp: FingerprintContext, run: str) -> dict[str, Any]:
    """The create body: the full instance, with ``run``, the creating run's tag (see ``ownership.run_tag``)."""
    body = put_body(desired, schema, fp, (), ())
    body["tags"].append(run)
    if schema.oauth and desired.configuration.get(OAUTH_REFRESH_TOKEN) not in (None, ""):
        body["externalAuthentication"] = "initial"  # an existing refresh token: no browser redirect
    return body


def put_body(
    desired: DesiredInstance,
    schema: ElementSchema,
    fp: FingerprintContext,
    live_tags: tuple[str, ...],
    diff: tuple[FieldDiff, ...],
) -> dict[str, Any]:
    """The full instance: the user tags, stack marker, fingerprints, protection marker and applied record (tags
    and protection the manifest does not declare kept from the live instance); the configuration as the API
    stores it (a mapping or list as compact JSON text) plus the default of a diff's key the manifest leaves out."""
    configuration = {
        k: json.dumps(v, separators=(",", ":"), ensure_ascii=False) if isinstance(v, (dict, list)) else v
        for k, v in desired.configuration.items()
    }
    for change in diff:
        key = change.path.key  # only a configuration path has one
        if key is not None and key not in configuration and key in schema.defaults:
            configuration[key] = schema.defaults[key]
    mine = list(dict.fromkeys(desired.tags if desired.tags is not None else user_tags(live_tags)))
    fps = fingerprint_tags(fp.key, fp.stack, desired.name, desired.configuration, schema.secret_keys)
    protect = desired.protect if desired.protect is not None else PROTECT_TAG in live_tags
    applied = applied_tag(desired, schema, fp, mine, protect)
    return {
        "name": desired.name,
        "element": {"key": desired.element},
        "tags": [*mine, stack_marker(fp.stack), *fps, *([PROTECT_TAG] if protect else []), applied],
        "configuration": configuration,
    }


def modify_body(change: Change, schema: ElementSchema, fp: FingerprintContext) -> dict[str, Any]:
    """The body of a change in place: the full instance for a PUT and a re-authentication, else a PATCH
    of the whole tag list (marker and fingerprints too) with a rename's new name, or an adopt's declared
    configuration (PATCH merges: keys not declared, such as an OAuth token the platform keeps, stay)."""
    assert change.desired is not None
    body = put_body(change.desired, schema, fp, change.live.tags if change.live else (), change.diff)
    if change.action == Action.REAUTHENTICATE or modify_verb(change) == "PUT":
        return body
    kept = {Action.ADOPT: "configuration", Action.RENAME: "name"}.get(change.action)
    return {key: value for key, value in body.items() if key in ("tags", kept)}
