"""The tags provisioner writes on the instances it owns (the table is in docs/ownership.md): identity is
the stack marker plus the name; a secret value shows only as its keyed fingerprint (docs/secrets.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

from .secret import Secret, reveal

TAG_PREFIX = "provisioner:"
STACK_TAG = "provisioner:stack="
FP_TAG = "provisioner:fp:"
RUN_TAG = "provisioner:run="
PROTECT_TAG = "provisioner:protect"
APPLIED_TAG = "provisioner:applied="
FINGERPRINT_KEY_ENV = "PROVISIONER_FINGERPRINT_KEY"


def stack_marker(stack: str) -> str:
    return f"{STACK_TAG}{stack}"


def run_tag(run_id: str) -> str:
    return f"{RUN_TAG}{run_id}"


def is_unmanaged(tags: Iterable[Any]) -> bool:
    """No stack marker at all (made by hand): the only kind ``--adopt`` takes over."""
    return not any(isinstance(t, str) and t.startswith(STACK_TAG) for t in tags)


def user_tags(tags: Iterable[Any]) -> list[str]:
    return [t for t in tags if isinstance(t, str) and not t.startswith(TAG_PREFIX)]


def fingerprint_key(organization_secret: Secret, override: str | None = None) -> bytes:
    material = override if override else organization_secret.reveal()
    return hmac.new(material.encode("utf-8"), b"provisioner fingerprint key v1", hashlib.sha256).digest()


def fingerprint(key: bytes, stack: str, name: str, config_key: str, value: Any) -> str:
    message = "\0".join((stack, name, config_key, str(reveal(value)))).encode("utf-8")
    digest = hmac.new(key, message, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def fingerprint_tags(
    key: bytes, stack: str, name: str, configuration: Mapping[str, Any], secret_keys: Iterable[str]
) -> list[str]:
    """One tag per declared secret value, sorted by key."""
    return [
        f"{FP_TAG}{k}={fingerprint(key, stack, name, k, configuration[k])}"
        for k in sorted(secret_keys)
        if configuration.get(k) is not None
    ]


def fingerprints_of(tags: Iterable[Any]) -> dict[str, str]:
    pairs = (t[len(FP_TAG) :].rpartition("=") for t in tags if isinstance(t, str) and t.startswith(FP_TAG))
    return {key: digest for key, sep, digest in pairs if sep}
