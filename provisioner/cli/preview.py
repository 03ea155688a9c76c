"""``provisioner render``: the bodies apply would send, offline, as ``helm template`` shows them.

Built with the same function apply uses (``bodies.create_body``), for every instance after
``forEach``. Nothing is sent and no credential is read. Two things only apply can know are shown as
placeholders: secret values (``(sensitive)``) and the digests of the fingerprint tags, which are
keyed with the target's organization secret. Keys the manifest leaves out are shown with their
schema default: apply does not send them, the API fills them in.
"""

from __future__ import annotations

from typing import Any

from ..engine.bodies import create_body
from ..engine.diff import FingerprintContext
from ..manifest.desired import DesiredInstance
from ..manifest.elements import ElementRegistry
from ..ownership import FP_TAG
from ..secret import SENSITIVE, Secret

FINGERPRINT_PLACEHOLDER = "(computed at apply)"
_NO_KEY = FingerprintContext(b"render: no key", "")


def rendered(stack: str, desired: list[DesiredInstance], registry: ElementRegistry) -> list[dict[str, Any]]:
    """One entry per instance: target, request line and body, secrets masked."""
    fp = FingerprintContext(_NO_KEY.key, stack)
    out = []
    for instance in desired:
        schema = registry.get(instance.element)
        assert schema is not None  # validation guarantees the element
        body = create_body(instance, schema, fp)
        body["tags"] = [
            f"{t.rpartition('=')[0]}={FINGERPRINT_PLACEHOLDER}" if t.startswith(FP_TAG) else t for t in body["tags"]
        ]
        defaults = {k: v for k, v in schema.defaults.items() if k not in body["configuration"]}
        body["configuration"] = dict(sorted({**defaults, **body["configuration"]}.items()))
        out.append({"target": instance.target, "request": "POST /instances", "body": _masked(body)})
    return out


def _masked(value: Any) -> Any:
    if isinstance(value, Secret):
        return SENSITIVE
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value
