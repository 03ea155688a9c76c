"""Stage 6: execute a plan, and nothing else.

Writes run in a bounded pool (``parallelism`` workers, one rate budget shared by all). One failing
instance does not stop the others. A create whose outcome is unknown (the response was lost, the
server answered 5xx, the read timed out) is never simply sent again: after a settle delay the stack's
instances are listed once, the ones that did get created are adopted, and only the rest are created
again, for a bounded number of rounds. If any create was sent twice for one name, a last listing
removes the extra copies this run made (a server may commit a request after the client gave up).

SIGINT/SIGTERM set the stop flag: no new request starts, in-flight ones finish or time out, and the
result still holds every token obtained so far.
"""

from __future__ import annotations

import concurrent.futures as futures
import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .bodies import create_body, patch_body, put_body
from .diff import FingerprintContext
from .elements import ElementRegistry
from .errors import AmbiguousCreate, ApiError, Interrupted, ProvisionerError, TransportError, Unauthorized
from .interrupt import StopFlag
from .live import LiveInstance, read_live
from .plan import Change, Plan
from .secret import Secret


@dataclass
class ChangeResult:
    change: Change
    status: str  # "ok", "failed" or "skipped"
    error: str | None = None
    request_id: str | None = None
    http_status: int | None = None
    id: Any = None
    token: Secret | None = None


@dataclass(frozen=True)
class ApplySettings:
    parallelism: int = 8
    settle_seconds: float = 30.0  # wait before looking up a create whose outcome is unknown
    max_create_rounds: int = 5


@dataclass
class ApplyResult:
    plan: Plan
    results: list[ChangeResult]
    interrupted: int | None = None
    aborted: str | None = None  # why the run stopped early (e.g. credentials refused)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[ChangeResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed and self.interrupted is None and self.aborted is None


Progress = Callable[[ChangeResult], None]


class Applier:
    """Runs the writes of one plan against the clients of its targets."""

    def __init__(self, plan: Plan, clients: Mapping[str, Any], fingerprints: Mapping[str, FingerprintContext],
                 registry: ElementRegistry, settings: ApplySettings, stop: StopFlag,
                 progress: Progress | None = None):
        self.plan = plan
        self.clients = clients
        self.fingerprints = fingerprints
        self.registry = registry
        self.settings = settings
        self.stop = stop
        self.progress = progress or (lambda _result: None)
        self.aborted: str | None = None
        self._ambiguous: list[tuple[Change, float]] = []
        self._posted: dict[tuple[str, str], int] = {}
        self._known_ids = {(c.target, c.live.id) for c in plan.changes if c.live is not None}

    def run(self) -> ApplyResult:
        results: dict[int, ChangeResult] = {}
        writes = []
        for index, change in enumerate(self.plan.changes):
            if change.action == "noop":
                results[index] = ChangeResult(change, "ok", id=change.id, token=_live_token(change))
            elif change.action == "conflict":
                results[index] = ChangeResult(change, "skipped", error=change.reason, id=change.id)
            else:
                writes.append((index, change))
        with futures.ThreadPoolExecutor(max_workers=max(1, self.settings.parallelism),
                                        thread_name_prefix="apply") as pool:
            self._run_batch(pool, writes, results)
            self._resolve_ambiguous(pool, results)
        notes = self._dedupe_after_retries(results)
        ordered = [results[i] for i in range(len(self.plan.changes))]
        return ApplyResult(self.plan, ordered, self.stop.signum if self.stop.is_set() and not self.aborted else None,
                           self.aborted, notes)

    # -- the pool ------------------------------------------------------------------------------

    def _run_batch(self, pool: futures.Executor, writes: list[tuple[int, Change]],
                   results: dict[int, ChangeResult]) -> None:
        """Run changes in the pool; the main thread collects results from a completion queue (one
        short wait at a time, so it stays free to receive signals)."""
        finished: queue.SimpleQueue = queue.SimpleQueue()
        for index, change in writes:
            future = pool.submit(self._execute, change)
            future.add_done_callback(lambda f, i=index: finished.put((i, f)))
        for _ in range(len(writes)):
            while True:
                try:
                    index, future = finished.get(timeout=0.2)
                    break
                except queue.Empty:
                    continue
            result = future.result()
            if result is not None:
                results[index] = result
                self.progress(result)
            else:
                results.pop(index, None)

    def _execute(self, change: Change) -> ChangeResult | None:
        if self.stop.is_set():
            return ChangeResult(change, "skipped", error=self._skip_reason())
        client = self.clients[change.target]
        try:
            return self._dispatch(change, client)
        except AmbiguousCreate:
            self._ambiguous.append((change, time.monotonic()))
            return None
        except Interrupted:
            return ChangeResult(change, "skipped", error=self._skip_reason())
        except Unauthorized as exc:
            self.aborted = self.aborted or f"the API refused the credentials of target {change.target!r}"
            self.stop.set()
            return _failed(change, exc)
        except (ApiError, TransportError) as exc:
            return _failed(change, exc)

    def _dispatch(self, change: Change, client: Any) -> ChangeResult:
        if change.action == "delete":
            client.delete_instance(change.id)
            return ChangeResult(change, "ok", id=change.id)
        desired = change.desired
        assert desired is not None
        schema = self.registry.get(desired.element)
        fp = self.fingerprints[change.target]
        assert schema is not None
        if change.action == "create":
            return self._create(change, client)
        if change.action == "replace":
            client.delete_instance(change.id)
            return self._create(change, client)
        live_tags = change.live.tags if change.live else ()
        if change.method == "PATCH":
            rename = change.action == "rename"  # PATCH name and tags: id and token stay
            data = client.patch_instance(change.id, patch_body(desired, schema, fp, live_tags, rename))
        else:
            data = client.update_instance(change.id, put_body(desired, schema, fp, live_tags, change.diff))
        return ChangeResult(change, "ok", id=change.id, token=_token(data) or _live_token(change))

    def _create(self, change: Change, client: Any) -> ChangeResult:
        desired = change.desired
        assert desired is not None
        schema = self.registry.get(desired.element)
        assert schema is not None
        key = (change.target, change.name)
        self._posted[key] = self._posted.get(key, 0) + 1
        data = client.create_instance(create_body(desired, schema, self.fingerprints[change.target]))
        return ChangeResult(change, "ok", id=data.get("id"), token=_token(data))

    def _skip_reason(self) -> str:
        return self.aborted or "not started: the run was interrupted"

    # -- creates whose outcome is unknown ------------------------------------------------------

    def _resolve_ambiguous(self, pool: futures.Executor, results: dict[int, ChangeResult]) -> None:
        index_of = {id(c): i for i, c in enumerate(self.plan.changes)}
        for _round in range(self.settings.max_create_rounds):
            if not self._ambiguous:
                return
            batch, self._ambiguous = self._ambiguous, []
            if self.stop.is_set() or self._settle(max(t for _, t in batch)):
                for change, _ in batch:
                    results[index_of[id(change)]] = ChangeResult(change, "skipped", error=self._skip_reason())
                return
            retry: list[tuple[int, Change]] = []
            for target in sorted({c.target for c, _ in batch}):
                found = self._owned_new(target, results, [c for c, _ in batch if c.target == target])
                if found is None:
                    return
                for change, _ in batch:
                    if change.target != target:
                        continue
                    live = found.get(change.name)
                    if live is not None:
                        result = ChangeResult(change, "ok", id=live.id, token=live.token)
                        results[index_of[id(change)]] = result
                        self.progress(result)
                    else:
                        retry.append((index_of[id(change)], change))
            self._run_batch(pool, retry, results)
        for change, _ in self._ambiguous:
            results[index_of[id(change)]] = ChangeResult(
                change, "failed", error=f"create outcome still unknown after {self.settings.max_create_rounds} rounds")
        self._ambiguous = []

    def _settle(self, last_failure: float) -> bool:
        """Give a slow server time to commit; True if a signal cut the wait short."""
        remaining = last_failure + self.settings.settle_seconds - time.monotonic()
        return remaining > 0 and self.stop.wait(remaining)

    def _owned_new(self, target: str, results: dict[int, ChangeResult],
                   changes: list[Change]) -> dict[str, LiveInstance] | None:
        """The oldest instance per name that the stack owns and that is new since the plan."""
        try:
            live = read_live(self.clients[target], self.plan.stack, owned_only=True)
        except (ApiError, TransportError, Interrupted) as exc:
            index_of = {id(c): i for i, c in enumerate(self.plan.changes)}
            for change in changes:
                results[index_of[id(change)]] = _failed(change, exc)
            return None
        names = {c.name for c in changes}
        found: dict[str, LiveInstance] = {}
        for instance in sorted(live, key=lambda i: i.age_key):
            if instance.name in names and (target, instance.id) not in self._known_ids:
                found.setdefault(instance.name, instance)
        return found

    def _dedupe_after_retries(self, results: dict[int, ChangeResult]) -> list[str]:
        """After a create was sent more than once for a name, list the stack once more: keep one copy
        (the one whose token this run holds, else the oldest; a create whose outcome stayed unknown
        is adopted here), delete the extra copies this run made. If that listing fails, those
        changes fail: success is never reported while a copy may be left behind."""
        twice = {key for key, count in self._posted.items() if count > 1}
        if not twice or self.stop.is_set() or self.stop.wait(self.settings.settle_seconds):
            return []
        notes: list[str] = []
        creates = {(r.change.target, r.change.name): i for i, r in results.items()
                   if r.change.action in ("create", "replace")}
        for target in sorted({t for t, _ in twice}):
            mine = sorted(name for t, name in twice if t == target)
            try:
                live = read_live(self.clients[target], self.plan.stack, owned_only=True)
            except (ApiError, TransportError, Interrupted) as exc:
                for name in mine:
                    index = creates[(target, name)]
                    results[index] = ChangeResult(results[index].change, "failed", error=(
                        f"could not check for a copy left by a retried create ({exc}); "
                        "run apply again to remove any"))
                continue
            copies: dict[str, list[LiveInstance]] = {}
            for instance in sorted(live, key=lambda i: i.age_key):
                if instance.name in mine and (target, instance.id) not in self._known_ids:
                    copies.setdefault(instance.name, []).append(instance)
            for name, found in copies.items():
                notes.extend(self._keep_one(target, found, creates[(target, name)], results))
        return notes

    def _keep_one(self, target: str, found: list[LiveInstance], index: int,
                  results: dict[int, ChangeResult]) -> list[str]:
        result = results[index]
        keep = next((c for c in found if result.status == "ok" and c.id == result.id), found[0])
        notes = []
        if result.status != "ok" or result.id != keep.id:
            results[index] = ChangeResult(result.change, "ok", id=keep.id, token=keep.token)
            notes.append(f"{keep.name}: the create was found by a final listing (id {keep.id})")
        notes.extend(self._delete_extra(target, extra) for extra in found if extra is not keep)
        return notes

    def _delete_extra(self, target: str, instance: LiveInstance) -> str:
        try:
            self.clients[target].delete_instance(instance.id)
        except ProvisionerError as exc:
            return f"{instance.name}: duplicate id {instance.id} from a retried create could not be deleted: {exc}"
        return f"{instance.name}: deleted duplicate id {instance.id} left by a retried create"


def _failed(change: Change, exc: Exception) -> ChangeResult:
    if isinstance(exc, ApiError):
        return ChangeResult(change, "failed", error=str(exc.message), request_id=exc.request_id,
                            http_status=exc.status, id=change.id)
    return ChangeResult(change, "failed", error=str(exc), id=change.id)


def _token(data: Any) -> Secret | None:
    token = data.get("token") if isinstance(data, Mapping) else None
    return Secret(token) if isinstance(token, str) and token else None


def _live_token(change: Change) -> Secret | None:
    return change.live.token if change.live is not None else None
