"""Deliver instance tokens: the outputs file of ``apply --outputs`` (``write_private``: atomic, mode 0600)
and ``provisioner output``, the only places where tokens are revealed.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

from ..errors import UserError
from ..secret import reveal


def env_name(name: str) -> str:
    """PREFIX for an instance in --format env: upper case, anything else than A-Z0-9 becomes _."""
    prefix = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper() or "INSTANCE"
    return prefix if not prefix[0].isdigit() else f"_{prefix}"


def format_env(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """Shell-quoted NAME_ID, NAME_ELEMENT and NAME_TOKEN lines; refused when two names give the same
    variables (``crm-acme``, ``crm.acme``): a script would use the wrong token."""
    by_prefix: dict[str, list[str]] = {}
    for name in sorted(entries):
        by_prefix.setdefault(env_name(name), []).append(name)
    collisions = {prefix: group for prefix, group in sorted(by_prefix.items()) if len(group) > 1}
    if collisions:
        listed = "; ".join(f"{', '.join(group)} -> {prefix}_*" for prefix, group in collisions.items())
        raise UserError(
            f"instance names collide as environment variables: {listed}",
            hint="rename the instances so that they differ in letters or digits, "
            "select one by name (provisioner output MANIFEST NAME -o env), or use -o json",
        )
    lines = []
    for name, entry in sorted(entries.items()):
        prefix = env_name(name)
        lines += [f"{prefix}_{k.upper()}={shlex.quote(str(reveal(entry.get(k))))}" for k in ("id", "element", "token")]
    return "\n".join(lines) + ("\n" if lines else "")


def format_json(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """The outputs document, tokens revealed (for writing to the user's chosen place only)."""
    instances = {
        name: {"id": e.get("id"), "element": e.get("element"), "token": reveal(e.get("token"))}
        for name, e in sorted(entries.items())
    }
    return json.dumps({"instances": instances}, indent=2, sort_keys=True) + "\n"
