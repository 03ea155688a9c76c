"""``provisioner schemas pull`` and ``schemas list`` (docs/manifest.md): the catalog of ``GET /elements/keys``,
each element's schema made by ``schemagen``, a file written only when its text changes.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest, NotFound, Unauthorized, UserError
from ..manifest.load import DEFAULT_URL
from ..manifest.targets import Target
from ..privatefile import write_private
from ..secret import Secret
from .client import ClientSettings, ReadOnlyClient
from .schemagen import element_schema, schema_text


@dataclass(frozen=True)
class Pulled:
    key: str
    path: str
    changed: bool


def env_target(environ: Mapping[str, str]) -> Target:
    """The API these commands read, from the same variables a manifest's default target uses."""
    names = ("CE_USER_SECRET", "CE_ORGANIZATION_SECRET")
    missing = [n for n in names if not environ.get(n)]
    if missing:
        raise UserError(
            f"{' and '.join(missing)} not set: schemas commands read the API's element catalog",
            hint="set CE_USER_SECRET and CE_ORGANIZATION_SECRET (and CE_API_URL for another "
            "environment), or use --local for the built-in emulator",
        )
    url = (environ.get("CE_API_URL") or DEFAULT_URL).rstrip("/")
    user, organization = (Secret(environ[n]) for n in names)
    return Target("default", url, user, organization, " and ".join(names))


@contextmanager
def reader(target: Target, trace: Callable[[str], None] | None = None) -> Iterator[ReadOnlyClient]:
    """A read-only client of the target; refused credentials become a user error naming the variables."""
    with ReadOnlyClient(
        target.url, target.user_secret, target.organization_secret, ClientSettings(), trace=trace
    ) as client:
        try:
            yield client
        except Unauthorized as exc:
            raise UserError(
                f"the API refused the credentials (HTTP {exc.status})", hint=f"check {target.credential_sources}"
            ) from None


_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def catalog_keys(client: ReadOnlyClient) -> list[str]:
    """Every element key the API offers, sorted."""
    answer = client.element_keys()
    if not isinstance(answer, list):
        raise UserError("GET /elements/keys did not answer a list of keys", hint="check CE_API_URL")
    keys = (k.get("key") if isinstance(k, Mapping) else k for k in answer)  # plain keys, or {key: ...}
    return sorted({k for k in keys if isinstance(k, str) and _KEY.match(k)})


def fetch_schema(client: ReadOnlyClient, key: str) -> dict[str, Any]:
    """One element's schema, from its element object and its configuration definitions."""
    try:
        element = client.get_element(key)
    except NotFound:
        raise UserError(
            f"element {key!r} is not in the API's catalog", hint="provisioner schemas list shows the keys it offers"
        ) from None
    if not isinstance(element, Mapping) or not element.get("key"):
        raise UserError(f"GET /elements/{key} did not answer an element", hint="check CE_API_URL")
    try:
        answer = client.element_configuration(key)
    except (NotFound, BadRequest):  # no separate definitions: the element object carries them
        answer = None
    records = answer.get("configuration") if isinstance(answer, Mapping) else answer
    if not isinstance(records, list) or not records:
        records = element.get("configuration") or []
    return element_schema(element, [r for r in records if isinstance(r, Mapping)])


def pull(client: ReadOnlyClient, keys: list[str], all_keys: bool, out_dir: str) -> list[Pulled]:
    """Write ``<out_dir>/<key>.json`` for each key (or every key of the catalog with ``all_keys``)."""
    if all_keys:
        keys = catalog_keys(client)
    if not keys:
        raise UserError("no element key given", hint="name the keys, e.g. schemas pull zendesk, or pass --all")
    bad = [k for k in keys if not _KEY.match(k)]
    if bad:
        raise UserError(f"not an element key: {bad[0]!r}", hint="keys are letters, digits, '.', '_' and '-'")
    os.makedirs(out_dir, exist_ok=True)
    return [
        _write(os.path.join(out_dir, f"{key}.json"), key, schema_text(fetch_schema(client, key)))
        for key in sorted(dict.fromkeys(keys))
    ]


def _write(path: str, key: str, text: str) -> Pulled:
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as handle:
        if handle.read() == text:
            return Pulled(key, path, False)
    write_private(path, text, f"schema of {key}", mode=0o644)
    return Pulled(key, path, True)


def listing(client: ReadOnlyClient, local_keys: list[str]) -> list[tuple[str, bool]]:
    """(key, has a local schema) for every key the API offers."""
    return [(key, key in local_keys) for key in catalog_keys(client)]
