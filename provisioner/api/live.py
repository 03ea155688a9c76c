"""Stage 4: read the live instances of a target, once, paged, into ``LiveInstance`` values at this
boundary: the planner never sees raw JSON, and tokens become ``Secret``s the moment they are read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from ..errors import InconsistentListing
from ..ownership import stack_marker
from ..secret import Secret, sanitize
from .answers import usable_id
from .client import ReadOnlyClient

LISTING_TRIES = 3  # a listing read while other runs write may shift between pages: read it again


@dataclass(frozen=True)
class LiveInstance:
    id: Any
    name: str
    element: str | None
    tags: tuple[str, ...]
    configuration: Mapping[str, Any] | None
    token: Secret | None
    created: str
    valid: bool = True  # false: the provider refused its credentials
    disabled: bool = False
    hub: str | None = None  # its element's hub, for the hub ping

    @classmethod
    def from_api(cls, data: Mapping[str, Any], configuration: bool = True) -> LiveInstance:
        """An instance from the API's decoded JSON, fields of the wrong type left out. ``configuration=False``
        leaves the configuration out: a read that needs none then keeps none of the listed objects alive."""
        element = data.get("element")
        info = element if isinstance(element, dict) else {}
        tag_names = (t.get("name") if isinstance(t, dict) else t for t in data.get("tags") or ())
        token, config, hub = data.get("token"), data.get("configuration"), info.get("hub")
        return cls(
            id=data.get("id"),
            name=str(data.get("name") or ""),
            element=element if isinstance(element, str) else info.get("key"),
            tags=tuple(t for t in tag_names if isinstance(t, str)),
            configuration=config if configuration and isinstance(config, dict) else None,
            token=Secret(token, token=True) if isinstance(token, str) and token else None,
            created=str(data.get("createdDate") or ""),
            valid=data.get("valid") is not False,
            disabled=data.get("disabled") is True,
            hub=hub if isinstance(hub, str) else None,
        )

    def owned_by(self, stack: str) -> bool:
        return stack_marker(stack) in self.tags

    @property
    def age_key(self) -> tuple:
        """Oldest first: creation date, then id (ids grow over time)."""
        return (self.created, self.id if usable_id(self.id) else 0)


def read_live(
    client: ReadOnlyClient,
    stack: str,
    owned_only: bool = False,
    hydrate: Callable[[LiveInstance], bool] | None = None,
    configuration: bool = True,
) -> list[LiveInstance]:
    """All instances of the target (or only those the stack owns), with configuration unless ``configuration=False``.
    An untrusted listing is read again (docs/reliability.md), then raises InconsistentListing; a list without
    configuration costs a GET per owned instance and per other one ``hydrate`` asks for (docs/limits.md)."""
    instances: list[LiveInstance] = []
    started, limits = time.monotonic(), client.settings
    for attempt in range(1, LISTING_TRIES + 1):
        instances, seen = [], set[int]()
        pages = client.instance_pages((stack_marker(stack),) if owned_only else (), hydrate=configuration)
        try:
            with closing(pages):
                for page in pages:
                    first = len(instances)  # the position of the page's first item in the listing
                    instances.extend(_checked(item, n, seen, configuration) for n, item in enumerate(page, first))
            break
        except InconsistentListing:
            if attempt >= min(LISTING_TRIES, limits.max_attempts) or time.monotonic() - started > limits.max_retry_time:
                raise
    if owned_only:  # the server's tag filter is trusted only as far as we check it
        instances = [i for i in instances if i.owned_by(stack)]
    if not configuration:
        return instances
    return [  # an API whose list omits configuration: one GET per instance that needs it (ours never does)
        LiveInstance.from_api(client.get_instance(i.id))
        if i.configuration is None and (i.owned_by(stack) or (hydrate is not None and hydrate(i)))
        else i
        for i in instances
    ]


_FIELD_TYPES: dict[str, tuple[type, ...]] = {  # of a listed item's fields, if present: the types JSON decodes to
    "tags": (list,),
    "configuration": (dict,),
    "token": (str,),
    "element": (dict, str),
    "createdDate": (str,),
    "valid": (bool,),
    "disabled": (bool,),
}


def _checked(item: Any, position: int, seen: set[int], configuration: bool = True) -> LiveInstance:
    """One listed item as a LiveInstance, or InconsistentListing if it cannot be trusted."""
    if not isinstance(item, dict):
        raise InconsistentListing(f"item {position} is {type(item).__name__}, not an instance object")
    ident = item.get("id")
    if not usable_id(ident):
        shown = sanitize(repr(ident))[:80]
        raise InconsistentListing(f"item {position} has no usable id ({shown}; the API's ids are integers)")
    if not isinstance(item.get("name"), str):
        raise InconsistentListing(f"instance id {ident} has no name")
    for key, types in _FIELD_TYPES.items():
        value = item.get(key)
        if value is not None and not isinstance(value, types):
            raise InconsistentListing(f"instance id {ident}: {key!r} is {type(value).__name__}")
    if not all(isinstance(tag, (str, dict)) for tag in item.get("tags") or ()):
        raise InconsistentListing(f"instance id {ident}: a tag is neither a string nor an object")
    if ident in seen:
        raise InconsistentListing(f"instance id {ident} is listed twice (a repeated item is not a duplicate)")
    seen.add(ident)
    return LiveInstance.from_api(item, configuration)
