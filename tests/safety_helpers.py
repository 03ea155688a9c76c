"""Helpers shared by the change-safety tests: direct access to the emulator, behind the tool's back."""

from __future__ import annotations

import json

import requests
from conftest import ORG_SECRET, USER_SECRET

WRITES = ("POST", "PUT", "PATCH", "DELETE")


class Api:
    """Direct HTTP to the emulator, as another tool or a person in the console would change things."""

    def __init__(self, url: str):
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"User {USER_SECRET}, Organization {ORG_SECRET}"

    def __call__(self, method: str, path: str, **kw):
        if "json" in kw:  # a stored secret is only a digest (Sealed): send a stand-in value, as a person would
            kw["data"] = json.dumps(kw.pop("json"), default=lambda v: "value-re-entered-by-hand")
            kw["headers"] = {"Content-Type": "application/json"}
        response = self.session.request(method, self.url + path, timeout=10, **kw)
        assert response.status_code == 200, response.text
        return response.json() if response.content else None

    def put_changed(self, row: dict, **configuration) -> None:
        """PUT the instance back with some configuration changed and its tags as they are."""
        body = {
            "name": row["name"],
            "element": {"key": row["element"]},
            "tags": row["tags"],
            "configuration": {**row["configuration"], **configuration},
        }
        self("PUT", f"/instances/{row['id']}", json=body)


def writes(db) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in db.requests() if r["method"] in WRITES]


def methods(db) -> set[str]:
    return {r["method"] for r in db.requests()}


def by_name(db) -> dict[str, dict]:
    return {r["name"]: r for r in db.instances()}
