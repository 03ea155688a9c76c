"""Stage 6: execute a plan, and nothing else.

Writes run in one pool of ``parallelism`` workers (one rate budget shared by all); the workers
return what they learned and only the main thread records it. One failing instance does not stop
the others. A create is sent once (retried only when the server provably refused it: 429, or the
connection refused). One whose outcome is unknown (the response was lost, the server answered 5xx,
the read timed out, a 2xx without an instance with an id and a token) is never sent again while an
earlier copy may exist: the stack's instances are listed at once and the copy found is taken; a name
with no copy fails, its outcome unknown. Then a final listing settles every created name on one
copy, the oldest, which every overlapping run agrees on (it waits ``settle`` seconds first, once, if
a create that got no answer was not found: a slow server may still commit it); a run deletes only
extra copies it made itself, and reads ``GET /instances/{id}`` for a copy listed without a token.

SIGINT/SIGTERM set the stop flag: no new request starts, and requests in flight get ``STOP_GRACE``
to finish. Then the main thread stops waiting for them: a change still in flight is reported as
skipped, its outcome unknown (the next run finds a create that was made), and the result still
holds every token obtained so far. A Retry-After longer than the retry budget (``WaitTooLong``)
stops the run the same way, with one message; the changes it did not send are skipped with it. A
change whose request the API holds ``STOP_GRACE`` past its deadline is abandoned too, of unknown
outcome (a create is looked up); when that holds every worker, the run stops.
"""

from __future__ import annotations

import concurrent.futures as futures
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..api.live import LiveInstance, read_live
from ..closedsets import StrEnum, assert_never
from ..errors import (
    AmbiguousCreate,
    ApiError,
    InconsistentListing,
    Interrupted,
    ProvisionerError,
    TransportError,
    Unauthorized,
    WaitTooLong,
)
from ..interrupt import WORKER_PREFIX, StopFlag
from ..manifest.elements import ElementRegistry
from ..ownership import run_tag
from ..secret import Secret
from .bodies import adopt_body, create_body, modify_verb, patch_body, put_body
from .diff import FingerprintContext
from .plan import Action, Change, Plan


class Status(StrEnum):
    """How one change of an apply ended. The order is the order of the JSON status counts."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass
class ChangeResult:
    change: Change
    status: Status
    error: str | None = None
    request_id: str | None = None
    http_status: int | None = None
    id: Any = None
    token: Secret | None = None


NOT_STARTED = "not started: the run was interrupted"
IN_FLIGHT = "sent when the run stopped: its outcome is unknown (the next apply finds it)"
HELD = "no complete answer within the request deadline (the API held the request): its outcome is unknown"
UNKNOWN = "create outcome unknown: no instance of this name was found after it; it was not sent again (run apply again)"


@dataclass
class _Outcome:
    """What a worker learned from one change; the main thread records it. ``result`` None: a create
    of unknown outcome; ``posted``: a create was sent; ``unanswered``: when one got no answer;
    ``abort``: why the whole run stops."""

    result: ChangeResult | None
    posted: bool = False
    unanswered: float | None = None
    abort: str | None = None


@dataclass(frozen=True)
class ApplySettings:
    parallelism: int = 8
    settle_seconds: float = 30.0  # how long a server may take to commit a create whose answer was lost


@dataclass
class ApplyResult:
    plan: Plan
    results: list[ChangeResult]
    interrupted: int | None = None
    aborted: str | None = None  # why the run stopped early (e.g. credentials refused)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[ChangeResult]:
        return [r for r in self.results if r.status == Status.FAILED]

    @property
    def ok(self) -> bool:
        return not self.failed and self.interrupted is None and self.aborted is None


Progress = Callable[[ChangeResult], None]


class Applier:
    """Runs the writes of one plan against the clients of its targets."""

    def __init__(
        self,
        plan: Plan,
        clients: Mapping[str, Any],
        fingerprints: Mapping[str, FingerprintContext],
        registry: ElementRegistry,
        settings: ApplySettings,
        stop: StopFlag,
        progress: Progress | None = None,
    ):
        self.plan = plan
        self.clients = clients
        self.fingerprints = fingerprints
        self.registry = registry
        self.settings = settings
        self.stop = stop
        self.progress = progress or (lambda _result: None)
        self.aborted: str | None = None
        self._ambiguous: list[Change] = []
        self._index = {id(c): i for i, c in enumerate(plan.changes)}
        self._posted: set[tuple[str, str]] = set()  # names a create was sent for
        self._made: set[tuple[str, str, str]] = set()  # (target, name, id) of the copies this run was told it made
        self._unanswered: dict[tuple[str, str], float] = {}  # names whose create got no answer: when
        self._settle_until = -math.inf  # a create that got no answer was not found: wait for it until then
        self.run_tag = run_tag(secrets.token_hex(6))
        self._known_ids = {(c.target, c.live.id) for c in plan.changes if c.live is not None}
        self._held: list[futures.Future] = []  # abandoned, their workers held by a request past its deadline

    def run(self) -> ApplyResult:
        results: dict[int, ChangeResult] = {}
        writes = []
        for index, change in enumerate(self.plan.changes):
            if change.action == Action.NOOP:
                results[index] = ChangeResult(change, Status.OK, id=change.id, token=_live_token(change))
            elif change.action == Action.CONFLICT:
                results[index] = ChangeResult(change, Status.SKIPPED, error=change.reason, id=change.id)
            else:
                writes.append((index, change))
        workers = max(1, self.settings.parallelism)
        pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=WORKER_PREFIX)
        try:
            self._run_batch(pool, writes, results)
            self._resolve_ambiguous(results)
        finally:  # after an interrupt, a worker may still be blocked on the network: not waited for
            pool.shutdown(wait=not self.stop.is_set() and not self._held, cancel_futures=True)
        notes = self._final_check(results)
        ordered = [results[i] for i in range(len(self.plan.changes))]
        if self.aborted:
            ordered = [replace(r, error=self.aborted) if r.error == NOT_STARTED else r for r in ordered]
        return ApplyResult(
            self.plan,
            ordered,
            self.stop.signum if self.stop.is_set() and not self.aborted else None,
            self.aborted,
            notes,
        )

    # -- the pool ------------------------------------------------------------------------------

    def _run_batch(
        self, pool: futures.Executor, writes: list[tuple[int, Change]], results: dict[int, ChangeResult]
    ) -> None:
        """Run changes in the pool and record each outcome here, in order, waiting a short while at a
        time (the main thread stays free for signals). After a signal, wait ``STOP_GRACE`` for the
        requests in flight, then report the rest as skipped; a request held past its deadline, too."""
        submitted = [(self.stop.submit(pool, self._execute, change), index, change) for index, change in writes]
        for future, index, change in submitted:
            if self.stop.settle(future) and not future.cancelled():
                self._record(index, change, future.result(), results)
            elif not self.stop.is_set():  # held past its deadline: a create is looked up, the rest fail
                self._held.append(future)
                failed = ChangeResult(change, Status.FAILED, error=HELD, id=change.id)
                unknown = _Outcome(None, posted=True, unanswered=time.monotonic())
                self._record(index, change, unknown if change.action == Action.CREATE else _Outcome(failed), results)
                if sum(not f.done() for f in self._held) >= self.settings.parallelism:  # no worker left
                    self.stop.set()
                    self.aborted = self.aborted or "the API holds every worker's request past its deadline"
            else:  # still running, or never started (then cancelled)
                results[index] = ChangeResult(
                    change, Status.SKIPPED, error=NOT_STARTED if future.cancel() else IN_FLIGHT
                )

    def _record(self, index: int, change: Change, outcome: _Outcome, results: dict[int, ChangeResult]) -> None:
        key = (change.target, change.name)
        if outcome.posted:
            self._posted.add(key)
        if outcome.unanswered is not None:
            self._unanswered[key] = outcome.unanswered
        if outcome.abort is not None and self.aborted is None:
            self.aborted = outcome.abort
        result = outcome.result
        if result is None:
            self._ambiguous.append(change)
            results.pop(index, None)
            return
        if outcome.posted and result.status == Status.OK:
            self._made.add((*key, str(result.id)))
        if result.http_status in (401, 403) and self.aborted is None and change.action != Action.REAUTHENTICATE:
            self.aborted = f"the API refused the credentials of target {change.target!r}"
        results[index] = result
        self.progress(result)

    def _execute(self, change: Change) -> _Outcome:
        """Run one change in a worker; it records nothing itself."""
        if self.stop.is_set():
            return _Outcome(ChangeResult(change, Status.SKIPPED, error=NOT_STARTED))
        client = self.clients[change.target]
        outcome = _Outcome(None)
        try:
            outcome.result = self._dispatch(change, client, outcome)
        except AmbiguousCreate as exc:
            outcome.unanswered = None if exc.answered else time.monotonic()
        except Interrupted as exc:
            outcome.posted &= exc.sent
            outcome.result = ChangeResult(change, Status.SKIPPED, error=IN_FLIGHT if exc.sent else NOT_STARTED)
        except WaitTooLong as exc:  # not done: sent and refused (429), or never sent
            self.stop.set()
            done_part = change.action == Action.REPLACE and outcome.posted  # its delete went through
            outcome.posted, outcome.abort = False, exc.message
            outcome.result = ChangeResult(change, Status.FAILED if done_part else Status.SKIPPED, error=exc.message)
        except Unauthorized as exc:
            if change.action != Action.REAUTHENTICATE:  # there, the provider refused that instance's credentials
                self.stop.set()
            outcome.result = _failed(change, exc)
        except (ApiError, TransportError) as exc:
            outcome.result = _failed(change, exc)
        return outcome

    def _dispatch(self, change: Change, client: Any, outcome: _Outcome) -> ChangeResult:
        match change.action:
            case Action.DELETE:
                client.delete_instance(change.id)
                return ChangeResult(change, Status.OK, id=change.id)
            case Action.CREATE:
                return self._create(change, client, outcome)
            case Action.REPLACE:
                assert change.desired is not None
                client.delete_instance(change.id)
                return self._create(change, client, outcome)
            case Action.DISABLE | Action.ENABLE:  # the enabled endpoint, and nothing else
                client.set_enabled(change.id, change.action == Action.ENABLE)
                return ChangeResult(change, Status.OK, id=change.id, token=_live_token(change))
            case Action.ADOPT | Action.UPDATE | Action.RENAME | Action.REAUTHENTICATE:
                return self._modify(change, client)
            case Action.NOOP | Action.CONFLICT | Action.PROTECTED:
                raise AssertionError(f"{change.action} is not a write: apply never sends it")
            case _:
                assert_never(change.action)

    def _modify(self, change: Change, client: Any) -> ChangeResult:
        """Adopt, update, rename or re-authenticate an instance in place: its id and token stay. An
        ``enabled`` field in the diff is set afterwards, with the enabled endpoint."""
        desired = change.desired
        assert desired is not None
        schema = self.registry.get(desired.element)
        fp = self.fingerprints[change.target]
        assert schema is not None
        live_tags = change.live.tags if change.live else ()
        if change.action == Action.REAUTHENTICATE:  # the full body, for the provider to check again
            data = client.reauthenticate_instance(change.id, put_body(desired, schema, fp, live_tags, change.diff))
        elif change.action == Action.ADOPT:  # one PATCH: marker, fingerprints, declared configuration
            data = client.patch_instance(change.id, adopt_body(desired, schema, fp, live_tags, change.diff))
        elif modify_verb(change) == "PATCH":
            rename = change.action == Action.RENAME  # PATCH name and tags: id and token stay
            data = client.patch_instance(change.id, patch_body(desired, schema, fp, live_tags, rename))
        else:
            data = client.update_instance(change.id, put_body(desired, schema, fp, live_tags, change.diff))
        if any(d.path.section == "enabled" for d in change.diff):
            client.set_enabled(change.id, desired.enabled)
        return ChangeResult(change, Status.OK, id=change.id, token=_token(data) or _live_token(change))

    def _create(self, change: Change, client: Any, outcome: _Outcome) -> ChangeResult:
        desired = change.desired
        assert desired is not None
        schema = self.registry.get(desired.element)
        assert schema is not None
        outcome.posted = True
        data = client.create_instance(create_body(desired, schema, self.fingerprints[change.target], self.run_tag))
        if not desired.enabled:  # declared disabled from the start
            client.set_enabled(data["id"], False)
        return ChangeResult(change, Status.OK, id=data["id"], token=_token(data))

    # -- creates whose outcome is unknown ------------------------------------------------------

    def _resolve_ambiguous(self, results: dict[int, ChangeResult]) -> None:
        """Look up at once every create whose outcome is unknown and take the copy found. A name with
        none fails (never sent again: an earlier copy may still exist); the final check still takes
        a copy a slow server commits late, after waiting ``settle`` for the ones that got no answer."""
        batch, self._ambiguous = self._ambiguous, []
        for target in sorted({c.target for c in batch}):
            mine = [c for c in batch if c.target == target]
            found = {} if self.stop.is_set() else self._owned_new(target, results, mine)
            if found is None:  # the lookup failed: each change says why
                continue
            for change in mine:
                live = found.get(change.name)
                if self.stop.is_set():
                    result = ChangeResult(change, Status.SKIPPED, error=IN_FLIGHT)
                elif live is not None:
                    result = ChangeResult(change, Status.OK, id=live.id, token=live.token)
                else:
                    result = ChangeResult(change, Status.FAILED, error=UNKNOWN)
                    sent = self._unanswered.get((target, change.name), -math.inf)
                    self._settle_until = max(self._settle_until, sent + self.settings.settle_seconds)
                results[self._index[id(change)]] = result
                self.progress(result)

    def _owned_new(
        self, target: str, results: dict[int, ChangeResult], changes: list[Change]
    ) -> dict[str, LiveInstance | None] | None:
        """The oldest instance per name that the stack owns and that is new since the plan."""
        try:
            copies = self._copies(target)
        except WaitTooLong as exc:
            self._stop_run(exc)
            return {}
        except (ApiError, TransportError, Interrupted, InconsistentListing) as exc:
            for change in changes:
                results[self._index[id(change)]] = _failed(change, exc)
            return None
        new = {c.name: [i for i in copies.get(c.name, []) if (target, i.id) not in self._known_ids] for c in changes}
        return {name: found[0] if found else None for name, found in new.items()}

    def _copies(self, target: str) -> dict[str, list[LiveInstance]]:
        """The stack's own instances on ``target`` by name, oldest first (one listing, no configuration)."""
        copies: dict[str, list[LiveInstance]] = {}
        live = read_live(self.clients[target], self.plan.stack, owned_only=True, configuration=False)
        for instance in sorted(live, key=lambda i: i.age_key):
            copies.setdefault(instance.name, []).append(instance)
        return copies

    # -- the final check -----------------------------------------------------------------------

    def _final_check(self, results: dict[int, ChangeResult]) -> list[str]:
        """List the stack once more, and settle every created name on one copy.

        The rule every run follows without talking to the others: the oldest copy (creation date,
        then id) wins. A run delivers the winner's token, whoever made it (read with
        ``GET /instances/{id}`` if the listing has none; a name whose token cannot be had fails), and
        deletes only the other copies it made itself (known by the id it was given, or by this run's
        tag when the answer was lost). A create whose answer never came may still be committed by a
        slow server: when one was not found, the check first waits ``settle`` seconds, once. A name
        with no copy left was deleted under the run (a concurrent destroy): that change fails. If the
        listing fails, the created names fail too: success is never reported while a copy may be
        left behind."""
        created = {
            (r.change.target, r.change.name): i
            for i, r in results.items()
            if r.change.action in (Action.CREATE, Action.REPLACE)
            and r.change.desired is not None
            and r.status in (Status.OK, Status.FAILED)
            and (r.change.target, r.change.name) in self._posted
        }
        if not created or self.stop.is_set():
            return []
        if self.stop.wait(max(0.0, self._settle_until - time.monotonic())):
            return []
        notes: list[str] = []
        for target in sorted({t for t, _ in created}):
            names = {name: index for (t, name), index in created.items() if t == target}
            try:
                copies = self._copies(target)
            except WaitTooLong as exc:
                self._stop_run(exc, "; the created instances were not checked with a final listing")
                return notes
            except (ApiError, TransportError, Interrupted, InconsistentListing) as exc:
                failed = f"could not check the created instance with a final listing ({exc}); run apply again"
                for index in names.values():
                    results[index] = ChangeResult(results[index].change, Status.FAILED, error=failed)
                continue
            for name, index in sorted(names.items()):
                notes.extend(self._settle_name(target, copies.get(name, []), index, results))
        return notes

    def _settle_name(
        self, target: str, copies: list[LiveInstance], index: int, results: dict[int, ChangeResult]
    ) -> list[str]:
        result = results[index]
        if not copies:
            if result.status == Status.OK:
                gone = f"instance id {result.id} was deleted while this run was applying (a concurrent destroy or "
                gone += "prune?); its token is not delivered"
                results[index] = ChangeResult(result.change, Status.FAILED, id=result.id, error=gone)
            return []
        winner = copies[0]
        notes = []
        if result.status != Status.OK or result.id != winner.id:
            made = result.status == Status.OK and result.id is not None
            was = f" instead of this run's id {result.id}" if made else ""
            results[index] = ChangeResult(result.change, Status.OK, id=winner.id, token=winner.token)
            notes.append(f"{winner.name}: delivering the oldest copy, id {winner.id}{was}")
        for extra in copies[1:]:
            if (target, result.change.name, str(extra.id)) in self._made or self.run_tag in extra.tags:
                notes.append(self._delete_extra(target, extra))
        if results[index].token is None:
            results[index] = self._with_token(target, results[index])
        return notes

    def _with_token(self, target: str, result: ChangeResult) -> ChangeResult:
        """A created instance listed without a token: its token from ``GET /instances/{id}``, or a
        failure that names the instance (it is kept: the next apply finds it)."""
        try:
            token = LiveInstance.from_api(self.clients[target].get_instance(result.id)).token
        except WaitTooLong as exc:
            self._stop_run(exc)
            token = None
        except (ApiError, TransportError, Interrupted, InconsistentListing) as exc:
            return replace(result, status=Status.FAILED, error=f"instance id {result.id} was created; its token: {exc}")
        if token is not None:
            return replace(result, token=token)
        why = f"instance id {result.id} was created, but the API gave no token for it (neither the create answer, "
        return replace(result, status=Status.FAILED, error=why + f"the listing nor GET /instances/{result.id})")

    def _stop_run(self, exc: WaitTooLong, more: str = "") -> None:
        """The API asked to wait longer than the retry budget: no new request starts."""
        self.stop.set()
        self.aborted = self.aborted or exc.message + more

    def _delete_extra(self, target: str, instance: LiveInstance) -> str:
        try:
            self.clients[target].delete_instance(instance.id)
        except ProvisionerError as exc:
            return f"{instance.name}: extra copy id {instance.id} made by this run could not be deleted: {exc}"
        return f"{instance.name}: deleted extra copy id {instance.id} made by this run"


def _failed(change: Change, exc: Exception) -> ChangeResult:
    if isinstance(exc, ApiError):
        return ChangeResult(
            change,
            Status.FAILED,
            error=str(exc.message),
            request_id=exc.request_id,
            http_status=exc.status,
            id=change.id,
        )
    return ChangeResult(change, Status.FAILED, error=str(exc), id=change.id)


def _token(data: Any) -> Secret | None:
    token = data.get("token") if isinstance(data, Mapping) else None
    return Secret(token, token=True) if isinstance(token, str) and token else None


def _live_token(change: Change) -> Secret | None:
    return change.live.token if change.live is not None else None
