"""``provisioner render``: the create bodies apply would send (``bodies.create_body``), offline, as
``helm template`` shows them. What only a run can know is a placeholder, named by ``AT_APPLY_NOTE``.
"""

from __future__ import annotations

from typing import Any

from ..engine.bodies import create_body
from ..engine.diff import FingerprintContext
from ..manifest.desired import DesiredInstance
from ..manifest.elements import ElementRegistry
from ..ownership import APPLIED_TAG, FP_TAG, RUN_TAG
from ..secret import SENSITIVE, masked

AT_APPLY = "(computed at apply)"
_AT_APPLY_TAGS = (FP_TAG, APPLIED_TAG, RUN_TAG)
AT_APPLY_NOTE = (
    f"{SENSITIVE}: secret values; {AT_APPLY}: the digests of the {FP_TAG}* and {APPLIED_TAG} tags "
    f"(keyed with the organization secret) and the id of the run in {RUN_TAG}"
)


def rendered(stack: str, desired: list[DesiredInstance], registry: ElementRegistry) -> list[dict[str, Any]]:
    """One entry per instance: target, request line, body as apply sends it (secrets masked), and the
    schema defaults of the keys it leaves to the API."""
    fp = FingerprintContext(b"render: no key", stack)
    out = []
    for instance in desired:
        schema = registry.get(instance.element)
        assert schema is not None  # validation guarantees the element
        body = masked(create_body(instance, schema, fp, RUN_TAG + AT_APPLY), SENSITIVE)
        body["tags"] = [t[: t.index("=") + 1] + AT_APPLY if t.startswith(_AT_APPLY_TAGS) else t for t in body["tags"]]
        defaults = {k: v for k, v in sorted(schema.defaults.items()) if k not in body["configuration"]}
        out.append({"target": instance.target, "request": "POST /instances", "body": body, "defaults": defaults})
    return out
