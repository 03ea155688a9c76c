"""``provisioner import`` (docs/commands.md): a manifest declaring a target's unmanaged instances, each with
``adopt: <id>``; text from the API is data (``literal: true``), a secret key an ``!env NAME``, never a value.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..api.live import LiveInstance
from ..manifest.elements import ElementRegistry, ElementSchema
from ..manifest.load import API_VERSION, Manifest
from ..manifest.yamlload import ENV_TAG, EnvRef, YDict, YList
from ..ownership import is_unmanaged, user_tags
from ..secret import MASK


@dataclass
class Imported:
    """The manifest text, the variables it reads, and what was left out and why."""

    text: str
    count: int
    variables: list[tuple[str, str, str]] = field(default_factory=list)  # (NAME, instance, key)
    skipped: list[str] = field(default_factory=list)


def env_name(instance: str, key: str) -> str:
    """The variable holding one secret: ``helpdesk-acme`` + ``user.password`` -> HELPDESK_ACME_USER_PASSWORD."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", f"{instance}_{key}").strip("_").upper()
    return name if name and not name[0].isdigit() else f"SECRET_{name}"


def import_manifest(
    manifest: Manifest,
    registry: ElementRegistry,
    live: Mapping[str, list[LiveInstance]],
    out_path: str,
    element: str | None = None,
    name_glob: str | None = None,
) -> Imported:
    """A manifest declaring every unmanaged live instance of the manifest's targets (filtered)."""
    result = Imported("", 0)
    entries: list[dict[str, Any]] = []
    for target in sorted(live):
        for instance, schema in _chosen(live[target], registry, element, name_glob, result.skipped):
            entries.append(_entry(instance, schema, target, result))
    result.count = len(entries)
    document = {**_header(manifest, out_path), "instances": entries}
    result.text = (
        "# Written by provisioner import: unmanaged instances, to take over with apply --adopt.\n"
        + yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
    )
    return result


class _Dumper(yaml.SafeDumper):
    """Safe YAML, with a secret's ``EnvRef`` written as ``!env NAME`` and the manifest's own mappings and
    lists (its targets) as plain ones, written out where the manifest shared them through an alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Dumper.add_representer(EnvRef, lambda dumper, ref: dumper.represent_scalar(ENV_TAG, str(ref)))
_Dumper.add_representer(YDict, yaml.SafeDumper.represent_dict)
_Dumper.add_representer(YList, yaml.SafeDumper.represent_list)


def _chosen(
    instances: Iterable[LiveInstance],
    registry: ElementRegistry,
    element: str | None,
    name_glob: str | None,
    skipped: list[str],
) -> list[tuple[LiveInstance, ElementSchema]]:
    """Unmanaged instances that pass the filters, the oldest of each name (names identify instances)."""
    chosen: dict[str, tuple[LiveInstance, ElementSchema]] = {}  # by name
    for instance in sorted(instances, key=lambda i: i.age_key):
        if not is_unmanaged(instance.tags) or (name_glob and not fnmatch.fnmatchcase(instance.name, name_glob)):
            continue
        schema = _schema_of(registry, instance.element)
        if element and (schema is None or schema.key != element):
            continue
        if schema is None:
            why = (
                f"no schema for element {instance.element!r} "
                f"(hint: provisioner schemas pull {instance.element}, then --schemas DIR)"
            )
        elif not instance.name.isprintable():  # a manifest refuses it: it could forge or hide output
            why = "the name holds a non-printable character; rename it in the console"
        elif instance.name in chosen:
            why = (
                f"another unmanaged instance has this name (id {chosen[instance.name][0].id} is imported); "
                "rename one of them in the console"
            )
        else:
            chosen[instance.name] = (instance, schema)
            continue
        skipped.append(f"{instance.name} (id {instance.id}): {why}")
    return list(chosen.values())


def _schema_of(registry: ElementRegistry, reported: str | None) -> ElementSchema | None:
    """The schema of the element the API reports (an exact key first, then a reported alias)."""
    exact = registry.get(reported) if reported else None
    return exact or next((s for k in registry.keys() if (s := registry.get(k)) and reported in s.reported_keys), None)


def _entry(instance: LiveInstance, schema: ElementSchema, target: str, result: Imported) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": instance.name, "element": schema.key}
    if target != "default":
        entry["target"] = target
    entry["literal"] = True  # every value below is text from the API, never a template
    entry["adopt"] = instance.id
    entry["tags"] = list(user_tags(instance.tags))
    configuration: dict[str, Any] = {}
    for key, value in (instance.configuration or {}).items():
        if key not in schema.properties or value is None or value == "":
            continue  # keys the schema leaves out (internal ones) are not the manifest's
        if key in schema.secret_keys:
            name = env_name(instance.name, key)
            result.variables.append((name, instance.name, key))
            configuration[key] = EnvRef(name)
        elif value == MASK:  # masked, yet not a secret key: no value to write, and no template may stand in
            result.skipped.append(f"{instance.name} (id {instance.id}): {key} is masked by the API; declare it")
        else:  # as the schema types it ("false" -> false), but text stays the API's text (a JSON-valued key too)
            normal = schema.normalize(key, value)
            configuration[key] = value if isinstance(value, str) and isinstance(normal, str) else normal
    entry["configuration"] = configuration
    return entry


def _header(manifest: Manifest, out_path: str) -> dict[str, Any]:
    """apiVersion, stack, targets (unrendered: credentials stay expressions) and schema directories."""
    header: dict[str, Any] = {"apiVersion": API_VERSION, "stack": manifest.stack}
    if manifest.targets:
        header["targets"] = manifest.targets
    if manifest.schema_dirs:
        out_dir = os.path.dirname(os.path.abspath(out_path))
        header["schemas"] = [os.path.relpath(path, out_dir) for path in manifest.schema_dirs]
    return header
