"""``provisioner init``: a commented starter manifest for the elements named, from their schemas. Each
key the schema requires (found by validating the configuration as it grows, so ``if``/``then`` ones too)
reads an environment variable; the other keys are listed commented out, with their default.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from .elements import OAUTH_REFRESH_TOKEN, ElementRegistry, ElementSchema
from .load import API_VERSION, manifest_schema_text

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Starter:
    """The manifest text and the variables it reads, each with the instance and key it fills."""

    text: str
    variables: list[tuple[str, str, str]] = field(default_factory=list)  # (NAME, element, key)


def elements_named(registry: ElementRegistry, keys: tuple[str, ...]) -> list[ElementSchema]:
    """The schema of each key, in order, once each; a UserError with a did-you-mean for an unknown key."""
    found = []
    for key in dict.fromkeys(keys):
        schema = registry.get(key)
        if schema is None:
            close = difflib.get_close_matches(key, registry.keys(), n=1, cutoff=0.6)
            known = f"known elements: {', '.join(registry.keys())}"
            hint = f"did you mean {close[0]!r}? ({known})" if close else known
            raise UserError(f"unknown element {key!r}", hint=f"{hint}; pull another with: provisioner schemas pull KEY")
        found.append(schema)
    return found


def stack_name(wanted: str | None, directory: str) -> str:
    """The stack: the one given (checked against the manifest schema's rule), else from the directory's name."""
    pattern = re.compile(json.loads(manifest_schema_text())["properties"]["stack"]["pattern"])
    if wanted is not None:
        if not pattern.fullmatch(wanted):
            hint = "use lowercase letters, digits, '.', '_' and '-', at most 63 characters"
            raise UserError(f"--stack {wanted!r} is not a valid stack name", hint=hint)
        return wanted
    derived = re.sub(r"[^a-z0-9._-]+", "-", directory.lower()).strip("-._")[:63].strip("-._")
    return derived if pattern.fullmatch(derived) else "my-stack"


def starter_manifest(schemas: list[ElementSchema], stack: str, command: str, path: str) -> Starter:
    """The commented manifest declaring one instance of each element."""
    starter = Starter("")
    lines = [
        "# yaml-language-server: $schema=manifest.schema.json",
        "# (editor completion: write the schema next to this file with",
        "#  provisioner schema manifest > manifest.schema.json)",
        "#",
        f"# A starter manifest, written by: {command}",
        "# Each required key reads an environment variable (secrets never belong in a manifest): set them,",
        f"# then: provisioner validate {path}",
        "# plan and apply read the API with CE_USER_SECRET and CE_ORGANIZATION_SECRET (CE_API_URL for another",
        "# environment); try them with no account with --local. Optional keys are commented out, with defaults.",
        f"apiVersion: {API_VERSION}",
        f"stack: {stack}  # the ownership scope: provisioner touches only the instances tagged with it",
        "inputs:",
        "  environment: staging  # read below as inputs.environment; override with --set environment=prod",
        "instances:",
    ]
    for schema in schemas:
        lines.extend(_instance(schema, starter))
    starter.text = "\n".join(lines) + "\n"
    return starter


def _instance(schema: ElementSchema, starter: Starter) -> list[str]:
    name = f"{schema.key}-{{{{ inputs.environment }}}}"
    title = str(schema.schema.get("title") or schema.key)
    lines = [f'  - name: "{name}"', f"    element: {schema.key}  # {_one_line(title)}", "    configuration:"]
    required = required_keys(schema)
    for key in required:
        starter.variables.append((_variable(schema, key), schema.key, key))
        lines.append(f"      # {_about(schema, key, 'required')}")
        lines.append(f'      {_key(key)}: "{{{{ env.{_variable(schema, key)} }}}}"')
    optional = [k for k in schema.properties if k not in required]
    if optional:
        lines.append("      # optional:")
    for key in optional:
        secret = key in schema.secret_keys
        default = json.dumps(schema.defaults[key]) if key in schema.defaults else '""'
        value = f'"{{{{ env.{_variable(schema, key)} }}}}"' if secret else default
        lines.append(f"      # {_key(key)}: {value}  # {_about(schema, key, 'secret' * secret)}")
    return lines


def _variable(schema: ElementSchema, key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{schema.key}_{key}").strip("_").upper()


def required_keys(schema: ElementSchema) -> list[str]:
    """Every key the schema requires of a configuration holding them all, in the schema's order."""
    config: dict[str, Any] = {}
    for _ in range(8):  # each round adds the keys the previous ones made required
        missing = [
            key
            for error in schema.validator.iter_errors(config)
            if error.validator == "required" and not error.path
            for key in error.validator_value
            if key not in config
        ]
        if not missing:
            break
        config.update(dict.fromkeys(missing, "x"))
    if schema.oauth_problem(config, adopting=False) is not None:  # a new instance needs a refresh token
        config[OAUTH_REFRESH_TOKEN] = "x"
    order = list(schema.properties)
    return sorted(config, key=lambda k: order.index(k) if k in order else len(order))


def _about(schema: ElementSchema, key: str, kind: str) -> str:
    prop = schema.properties.get(key)
    prop = prop if isinstance(prop, dict) else {}
    text = str(prop.get("title") or key)
    if kind:
        text += f" ({kind}{', secret' if kind == 'required' and key in schema.secret_keys else ''})"
    if isinstance(prop.get("enum"), list):
        text += "; one of: " + ", ".join(dict.fromkeys(json.dumps(v).strip('"').lower() for v in prop["enum"]))
    if prop.get("description"):
        text += f". {prop['description']}"
    return _one_line(text)


def _one_line(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(key: str) -> str:
    return key if _PLAIN_KEY.fullmatch(key) else json.dumps(key)
