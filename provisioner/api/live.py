"""Stage 4: read the live instances of a target, once, paged.

The API's list answers are turned into ``LiveInstance`` values at this boundary, so the planner
never sees raw JSON. Tokens become ``Secret``s the moment they are read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import InconsistentListing
from ..ownership import SHARDS, shard_tag, stack_marker
from ..secret import Secret

SHARD_READS = 8  # shard listings read at once (their pages are parsed one at a time, see read_names)
LISTING_TRIES = 3  # a listing read while other runs write may shift between pages: read it again


class InstanceReader(Protocol):
    def instance_pages(
        self, tags: tuple[str, ...] | list[str] = (), hold: threading.Lock | None = None, prefetch: bool = True
    ) -> Generator[list, None, None]: ...

    def get_instance(self, instance_id: int | str) -> dict: ...


@dataclass(frozen=True)
class LiveInstance:
    id: Any
    name: str
    element: str | None
    tags: tuple[str, ...]
    configuration: Mapping[str, Any] | None
    token: Secret | None
    created: str

    @classmethod
    def from_api(cls, data: Mapping[str, Any], configuration: bool = True) -> LiveInstance:
        """``configuration=False`` leaves the configuration out (None): a read that needs only ids,
        names, tags and tokens then keeps none of the listed objects alive."""
        element = data.get("element")
        key = element.get("key") if isinstance(element, Mapping) else element if isinstance(element, str) else None
        tags = data.get("tags") or []
        tag_names = tuple(t.get("name") if isinstance(t, Mapping) else t for t in tags)
        token = data.get("token")
        config = data.get("configuration")
        return cls(
            id=data.get("id"),
            name=str(data.get("name") or ""),
            element=key,
            tags=tuple(t for t in tag_names if isinstance(t, str)),
            configuration=config if configuration and isinstance(config, Mapping) else None,
            token=Secret(token, token=True) if isinstance(token, str) and token else None,
            created=str(data.get("createdDate") or ""),
        )

    def owned_by(self, stack: str) -> bool:
        return stack_marker(stack) in self.tags

    @property
    def age_key(self) -> tuple:
        """Oldest first: creation date, then id (ids grow over time)."""
        return (self.created, _numeric(self.id))


def _numeric(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def read_live(
    client: InstanceReader,
    stack: str,
    owned_only: bool = False,
    on_page: Callable[[list[LiveInstance]], object] | None = None,
    hydrate: Callable[[LiveInstance], bool] | None = None,
    tag: str | None = None,
    configuration: bool = True,
    hold: threading.Lock | None = None,
) -> list[LiveInstance]:
    """All instances of the target (or only those the stack owns), with configuration filled in.
    ``tag`` narrows an ``owned_only`` listing to the stack's instances that carry it (a shard);
    ``configuration=False`` reads everything but the configuration (and so never hydrates). With
    ``hold`` (a listing read side by side with others), the lock is held while each page is parsed
    and converted, and pages are not fetched ahead (see ``instance_pages``).
    ``on_page`` sees each page's instances as it arrives, while the next page is being fetched.

    Nothing is decided from a listing that cannot be trusted: a repeated id, an item without a
    usable id or with fields of the wrong type, or pages the client found inconsistent raise
    InconsistentListing (after reading it again, in case other writers shifted the pages).

    An API whose list answers leave ``configuration`` out costs one ``GET /instances/{id}`` for each
    instance the stack owns, and for each other one ``hydrate`` asks for (the unmanaged instances
    ``import`` and ``--adopt`` take over)."""
    for attempt in range(1, LISTING_TRIES + 1):
        try:
            return _read_once(client, stack, owned_only, on_page, hydrate, tag, configuration, hold)
        except InconsistentListing:
            if attempt == LISTING_TRIES:
                raise
    raise AssertionError("unreachable")


def _read_once(
    client: InstanceReader,
    stack: str,
    owned_only: bool,
    on_page: Callable[[list[LiveInstance]], object] | None,
    hydrate: Callable[[LiveInstance], bool] | None,
    tag: str | None = None,
    configuration: bool = True,
    hold: threading.Lock | None = None,
) -> list[LiveInstance]:
    marker = stack_marker(stack)
    instances: list[LiveInstance] = []
    seen: set[Any] = set()
    tags = (tag or marker,) if owned_only else ()
    shared = hold is not None  # read side by side with other listings: no fetcher thread of its own
    pages = client.instance_pages(tags, hold, prefetch=False) if shared else client.instance_pages(tags)
    with closing(pages):
        for page in pages:
            converted = [_checked(item, len(instances) + n, seen, configuration) for n, item in enumerate(page)]
            if on_page is not None:
                on_page(converted)
            instances.extend(converted)
    if owned_only:  # the server's tag filter is trusted only as far as we check it
        instances = [i for i in instances if i.owned_by(stack)]
    if not configuration:
        return instances
    wanted = hydrate or (lambda _instance: False)
    return [
        _hydrated(client, i) if i.configuration is None and (i.owned_by(stack) or wanted(i)) else i for i in instances
    ]


def read_names(
    client: InstanceReader, stack: str, names: Iterable[str], parallelism: int, stack_size: int, page_size: int
) -> list[LiveInstance]:
    """Every instance the stack owns under ``names`` (at least; configuration left out), read the
    faster way for a stack of about ``stack_size`` instances, listed ``page_size`` a page:

    * one listing per shard those names fall in (``ownership.shard_tag``), up to ``SHARD_READS``
      (and ``parallelism``) at once: a run that created 10,000 instances, or one instance in a stack
      of 10,000, reads a few small listings side by side instead of the whole stack page after page;
    * the stack's own listing when that takes no more round trips (a small stack: one page).

    Shard listings parse one page at a time and fetch their own pages in turn (no fetcher threads:
    every thread costs memory). Only instances provisioner wrote carry a shard tag; a copy made by
    hand, or by a version before shards, is not found through them."""
    tags = sorted({shard_tag(stack, name) for name in names})
    if not tags:
        return []
    workers = max(1, min(len(tags), parallelism, SHARD_READS))
    page = max(1, page_size)
    whole = max(1, -(-stack_size // page))  # round trips of the stack's listing
    sharded = -(-len(tags) // workers) * max(1, -(-stack_size // (SHARDS * page)))
    if whole <= sharded:
        return read_live(client, stack, owned_only=True, configuration=False)
    hold = threading.Lock()  # one parsed page alive at a time: the GIL parses one at a time anyway
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard") as pool:
        parts = list(
            pool.map(lambda t: read_live(client, stack, owned_only=True, tag=t, configuration=False, hold=hold), tags)
        )
    found: list[LiveInstance] = []
    seen: set[str] = set()
    for part in parts:
        for instance in part:
            if str(instance.id) not in seen:
                seen.add(str(instance.id))
                found.append(instance)
    return found


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "tags": (list,),
    "configuration": (Mapping,),
    "token": (str,),
    "element": (Mapping, str),
    "createdDate": (str,),
}


def _checked(item: Any, position: int, seen: set[Any], configuration: bool = True) -> LiveInstance:
    """One listed item as a LiveInstance, or InconsistentListing if it cannot be trusted."""
    if not isinstance(item, Mapping):
        raise InconsistentListing(f"item {position} is {type(item).__name__}, not an instance object")
    ident = item.get("id")
    if type(ident) is not int and (  # the common case first: a plain non-negative integer
        isinstance(ident, bool)
        or not (isinstance(ident, int) or isinstance(ident, str) and ident.strip() and len(ident) <= 200)
    ):
        raise InconsistentListing(f"item {position} has no usable id")
    if isinstance(ident, int) and ident < 0:
        raise InconsistentListing(f"item {position} has no usable id")
    if not isinstance(item.get("name"), str):
        raise InconsistentListing(f"instance id {ident} has no name")
    for key, types in _FIELD_TYPES.items():
        value = item.get(key)
        if value is not None and not isinstance(value, types):
            raise InconsistentListing(f"instance id {ident}: {key!r} is {type(value).__name__}")
    for tag in item.get("tags") or ():
        if not isinstance(tag, (str, Mapping)):
            raise InconsistentListing(f"instance id {ident}: a tag is neither a string nor an object")
    key = str(ident)
    if key in seen:
        raise InconsistentListing(f"instance id {ident} is listed twice (a repeated item is not a duplicate)")
    seen.add(key)
    return LiveInstance.from_api(item, configuration)


def _hydrated(client: InstanceReader, instance: LiveInstance) -> LiveInstance:
    """An API whose list omits configuration costs one GET per owned instance; ours never does."""
    return LiveInstance.from_api(client.get_instance(instance.id))
