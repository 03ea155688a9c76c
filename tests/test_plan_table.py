"""Table-driven plan tests: manifest + live state in, list of changes out, with no server.

Each directory under ``tests/plan-cases/`` holds:

* ``manifest.yaml``: loaded, rendered and validated with ``engine.validate`` (offline);
* ``live.json``: the instances as GET /instances returns them (secrets masked as ``********``). A tag
  written ``{{fp:KEY=VALUE}}`` stands for the fingerprint tag provisioner would have written for
  that secret VALUE on that instance; the test computes it with a fixed fingerprint key;
* ``options.json`` (optional): ``PlanOptions`` fields (prune, allow_replace, force, destroy);
* ``expected.json``: the changes in order, each ``{action, name, id, reason, diff, method?, warning?}``
  (``reason`` and ``warning`` are substrings, ``diff`` is compared exactly; ``method`` is the verb apply
  chooses for a change in place, from the change), or
  ``{"error": ..., "hint": ...}`` (substrings) when planning must refuse with a UserError.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from provisioner.api.live import LiveInstance
from provisioner.engine import stages as engine
from provisioner.engine.bodies import modify_verb
from provisioner.engine.diff import FingerprintContext
from provisioner.engine.plan import Action, PlanOptions, make_plan
from provisioner.errors import UserError
from provisioner.ownership import fingerprint_tags

CASES_DIR = Path(__file__).resolve().parent / "plan-cases"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "expected.json").is_file())
FP_KEY = hashlib.sha256(b"plan-table fingerprint key").digest()
SECRET_VALUES = ("pw-123456", "crm-pw-987", "old-password")  # the secrets the cases declare or had
IN_PLACE = (Action.UPDATE, Action.RENAME, Action.ADOPT)  # the changes apply sends as PUT or PATCH
FP_PLACEHOLDER = re.compile(r"^\{\{fp:(?P<key>[^=]+)=(?P<value>.*)\}\}$")


def live_instances(path: Path, stack: str) -> list[LiveInstance]:
    """live.json as LiveInstance values, fingerprint placeholders replaced by the real tags."""
    instances = []
    for data in json.loads(path.read_text(encoding="utf-8")):
        tags = []
        for tag in data.get("tags") or []:
            match = FP_PLACEHOLDER.match(tag) if isinstance(tag, str) else None
            if match:
                tags.extend(
                    fingerprint_tags(FP_KEY, stack, data["name"], {match["key"]: match["value"]}, [match["key"]])
                )
            else:
                tags.append(tag)
        instances.append(LiveInstance.from_api({**data, "tags": tags}))
    return instances


def actual_changes(plan) -> list[dict]:
    return [
        {
            "action": c.action,
            "name": c.name,
            "id": c.id,
            "reason": c.reason,
            "method": modify_verb(c) if c.action in IN_PLACE else None,
            "warning": c.warning,
            "diff": [d.to_json() for d in c.diff],
        }
        for c in plan.changes
    ]


def matches(actual: dict, expected: dict) -> bool:
    for key, want in expected.items():
        have = actual.get(key)
        if key in ("reason", "warning"):
            if not isinstance(have, str) or want not in have:
                return False
        elif have != want:
            return False
    return "warning" in expected or actual["warning"] is None  # an unexpected warning is a difference


def build(case: str):
    """make_plan for the case, as a function of nothing."""
    directory = CASES_DIR / case
    validated = engine.validate(engine.Options(manifest=str(directory / "manifest.yaml"), environ={}))
    stack = validated.manifest.stack
    live = live_instances(directory / "live.json", stack)
    options_path = directory / "options.json"
    options = PlanOptions(**json.loads(options_path.read_text())) if options_path.exists() else PlanOptions()
    fingerprints = {"default": FingerprintContext(FP_KEY, stack)}
    return lambda: make_plan(stack, validated.desired, {"default": live}, validated.registry, fingerprints, options)


def test_every_case_is_complete():
    assert len(CASES) >= 20
    for case in CASES:
        names = {p.name for p in (CASES_DIR / case).iterdir()}
        assert {"manifest.yaml", "live.json", "expected.json"} <= names, case


@pytest.mark.parametrize("case", CASES)
def test_plan(case):
    expected = json.loads((CASES_DIR / case / "expected.json").read_text(encoding="utf-8"))
    plan = build(case)
    if isinstance(expected, dict):  # the plan must be refused
        with pytest.raises(UserError) as refused:
            plan()
        problem = refused.value.problem
        assert expected["error"] in problem.message, problem.format()
        assert expected.get("hint", "") in (problem.hint or ""), problem.format()
        return
    actual = actual_changes(plan())
    shown = json.dumps(actual, default=str)
    assert not [s for s in SECRET_VALUES if s in shown], "a secret value is in the plan"
    ok = len(actual) == len(expected) and all(matches(a, e) for a, e in zip(actual, expected, strict=True))
    assert ok, (
        f"\ncase {case}\n--- expected ---\n{json.dumps(expected, indent=2)}\n"
        f"--- actual ---\n{json.dumps(actual, indent=2, default=str)}"
    )


def test_fingerprint_placeholder_matches_what_apply_writes():
    """The placeholder stands for exactly the tag provisioner computes: the all-match case is a noop
    only because of it, and a wrong value or another instance's name gives another digest."""
    [tag] = fingerprint_tags(
        FP_KEY, "tests", "helpdesk", {"helpdesk.connectwise.password": "pw-123456"}, ["helpdesk.connectwise.password"]
    )
    assert tag.startswith("provisioner:fp:helpdesk.connectwise.password=") and "pw-123456" not in tag
    other = {"helpdesk.connectwise.password": "other"}
    assert tag not in fingerprint_tags(FP_KEY, "tests", "helpdesk", other, ["helpdesk.connectwise.password"])
    assert tag not in fingerprint_tags(
        FP_KEY, "tests", "crm", {"helpdesk.connectwise.password": "pw-123456"}, ["helpdesk.connectwise.password"]
    )
