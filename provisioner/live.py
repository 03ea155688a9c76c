"""Stage 4: read the live instances of a target, once, paged.

The API's list answers are turned into ``LiveInstance`` values at this boundary, so the planner
never sees raw JSON. Tokens become ``Secret``s the moment they are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .ownership import stack_marker
from .secret import Secret


class InstanceReader(Protocol):
    def instance_pages(self, tags: tuple[str, ...] | list[str] = ()) -> Iterator[list]: ...

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
    def from_api(cls, data: Mapping[str, Any]) -> LiveInstance:
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
            configuration=config if isinstance(config, Mapping) else None,
            token=Secret(token) if isinstance(token, str) and token else None,
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


def read_live(client: InstanceReader, stack: str, owned_only: bool = False,
              on_page: Callable[[list[LiveInstance]], object] | None = None) -> list[LiveInstance]:
    """All instances of the target (or only those the stack owns), with configuration filled in.
    ``on_page`` sees each page's instances as it arrives, while the next page is being fetched."""
    marker = stack_marker(stack)
    instances: list[LiveInstance] = []
    for page in client.instance_pages(tags=(marker,) if owned_only else ()):
        converted = [LiveInstance.from_api(item) for item in page if isinstance(item, Mapping)]
        if on_page is not None:
            on_page(converted)
        instances.extend(converted)
    if owned_only:  # the server's tag filter is trusted only as far as we check it
        instances = [i for i in instances if i.owned_by(stack)]
    return [_hydrated(client, i) if i.configuration is None and i.owned_by(stack) else i for i in instances]


def _hydrated(client: InstanceReader, instance: LiveInstance) -> LiveInstance:
    """An API whose list omits configuration costs one GET per owned instance; ours never does."""
    return LiveInstance.from_api(client.get_instance(instance.id))
