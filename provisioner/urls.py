"""The rule for an API base URL, shared by the client (before any request) and validate (offline), so
that a URL validate accepts is one plan accepts."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .errors import UserError
from .secret import REDACTOR, sanitize


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8, ::1."""
    host = (host or "").strip("[]").lower()
    if host in ("localhost", "localhost.localdomain", "ip6-localhost") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str) -> str:
    """The base URL without its trailing slash; UserError unless it is https://, or http:// to this
    machine (the emulator): credentials are never sent in clear over a network."""
    url = (base_url or "").strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(
            f"the API base URL must be an https:// URL, got {sanitize(REDACTOR.redact(url))!r}",
            hint="e.g. https://api.cloud-elements.com/elements/api-v2 (set CE_API_URL or the target's url)",
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UserError(
            "the API base URL must not contain credentials, a query or a fragment",
            hint="put the secrets in CE_USER_SECRET and CE_ORGANIZATION_SECRET",
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise UserError(
            f"refusing to send credentials in clear to {parts.hostname}: the API base URL must be "
            "https:// (http:// is accepted only for this machine, e.g. the emulator)",
            hint=f"use https://{parts.netloc}{parts.path}",
        )
    return url
