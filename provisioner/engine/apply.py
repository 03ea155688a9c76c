"""Stage 6: execute a plan, and nothing else: writes run in ``parallelism`` workers that return what they
learned, and only the main thread records it. The guarantees (a create sent again only after a refusal, each
created name settled on its oldest copy) are told in docs/reliability.md.
"""

from __future__ import annotations

import concurrent.futures as futures
import functools
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ..api.live import LiveInstance, read_live
from ..closedsets import StrEnum, assert_never
from ..errors import (
    AmbiguousCreate,
    ApiError,
    InconsistentListing,
    Interrupted,
    ProvisionerError,
    SendLater,
    TransportError,
    Unauthorized,
    WaitTooLong,
)
from ..interrupt import WORKER_PREFIX, StopFlag
from ..manifest.desired import DesiredInstance
from ..manifest.elements import ElementRegistry, ElementSchema
from ..ownership import run_tag, stack_marker
from ..secret import Secret
from .bodies import create_body, modify_body, modify_verb
from .diff import FingerprintContext
from .plan import REFUSALS, Action, Change, Plan, copies_by_name


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
UNKNOWN = "create outcome unknown: no instance of this name was found after any of its attempts (run apply again)"
ANSWERED = "create outcome unknown: answered 2xx without an instance, and no instance of this name was found; not sent "
ANSWERED += "again (run apply again)"

LISTING_ERRORS = (ApiError, TransportError, Interrupted, InconsistentListing)  # a listing or read that failed


@dataclass
class _Outcome:
    """What a worker learned from one change, for the main thread to record. ``result`` None: a create
    of unknown outcome; ``posted``: a create was sent; ``abort``: why the whole run stops."""

    change: Change
    result: ChangeResult | None = None
    posted: bool = False
    unanswered: float | None = None  # when an attempt of unknown outcome ended with no answer (time.monotonic())
    resendable: bool = True  # False after a 2xx answer: never sent again
    abort: str | None = None
    later: SendLater | None = None  # refused with 429: the create is sent again in the next round


Step = Callable[[Change, Any, _Outcome], tuple[Any, Secret | None]]  # one change's requests: the id and token left


@dataclass(frozen=True)
class Unfinished:
    """An item the workers had not finished: ``started`` or not when the run stopped, or ``held``: its
    request is past its deadline (a server holding it), with ``held`` workers so held at that moment."""

    started: bool
    held: int = 0


T = TypeVar("T")
R = TypeVar("R")


def in_workers(
    work: Callable[[T], R], items: Sequence[T], parallelism: int, stop: StopFlag
) -> Iterator[tuple[T, R | Unfinished]]:
    """Run ``work`` on every item in ``parallelism`` threads; yield each item and its result in order, waiting a
    short while at a time (the main thread stays free for signals). An item not done ``STOP_GRACE`` after a signal
    or its request's deadline is yielded ``Unfinished``, its worker not waited for; ``work``'s exceptions raise."""
    pool = futures.ThreadPoolExecutor(max_workers=max(1, parallelism), thread_name_prefix=WORKER_PREFIX)
    held: list[futures.Future[R]] = []
    try:
        submitted = [(stop.submit(pool, work, item), item) for item in items]
        for future, item in submitted:
            if stop.settle(future) and not future.cancelled():
                yield item, future.result()
            elif not stop.is_set():  # held past its deadline
                held.append(future)
                yield item, Unfinished(started=True, held=sum(not f.done() for f in held))
            else:  # still running, or never started (then cancelled)
                yield item, Unfinished(started=not future.cancel())
    finally:  # a worker blocked on the network (after a signal, or held) is not waited for
        pool.shutdown(wait=not stop.is_set() and not held, cancel_futures=True)


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
        progress: Callable[[ChangeResult], None] | None = None,
    ):
        self.plan = plan
        self.clients = clients
        self.fingerprints = fingerprints
        self.registry = registry
        self.settings = settings
        self.stop = stop
        self.progress = progress or (lambda _result: None)
        self.aborted: str | None = None
        self._results: dict[int, ChangeResult] = {}  # by id() of the plan's change
        self._unknown: list[_Outcome] = []  # creates of unknown outcome, not looked up yet
        self._later: list[_Outcome] = []  # creates refused with 429 in this round: sent again in the next
        self._posted: Counter[tuple[str, str]] = Counter()  # names a create was sent for: how many times
        self._made: set[tuple[str, str, str]] = set()  # (target, name, id) of the copies this run was told it made
        self._settle_until = -math.inf  # an attempt that got no answer was not found: wait for it until then
        self.run_tag = run_tag(secrets.token_hex(6))
        self._known_ids = {(c.target, c.live.id) for c in plan.changes if c.live is not None}

    def run(self) -> ApplyResult:
        writes = []
        for change in self.plan.changes:
            if change.action == Action.NOOP:
                self._results[id(change)] = ChangeResult(change, Status.OK, id=change.id, token=_live_token(change))
            elif change.action in REFUSALS:
                self._results[id(change)] = ChangeResult(change, Status.SKIPPED, error=change.reason, id=change.id)
            else:
                writes.append(change)
        self._round(writes, self._dispatch)
        while self._unknown or self._later:  # the creates to send again, in rounds (docs/reliability.md)
            later, self._later = self._later, []
            step = functools.partial(self._create, later={id(o.change): o.later for o in later})
            self._round([*self._not_found(), *(o.change for o in later)], step)
        notes = self._final_check()
        results = [self._results[id(c)] for c in self.plan.changes]
        if self.aborted:
            results = [replace(r, error=self.aborted) if r.error == NOT_STARTED else r for r in results]
        interrupted = self.stop.signum if self.stop.is_set() and not self.aborted else None
        return ApplyResult(self.plan, results, interrupted, self.aborted, notes)

    def _stop_run(self, why: str) -> None:
        """No new request starts, and the run reports ``why`` (the first reason given)."""
        self.stop.set()
        self.aborted = self.aborted or why

    # -- the pool ------------------------------------------------------------------------------

    def _round(self, writes: list[Change], step: Step) -> None:
        """Run ``step`` for each change in the workers and record each outcome here, in order."""
        work = functools.partial(self._execute, step=step)
        for change, outcome in in_workers(work, writes, self.settings.parallelism, self.stop):
            if not isinstance(outcome, Unfinished):
                self._record(outcome)
            elif not outcome.held:
                error = IN_FLIGHT if outcome.started else NOT_STARTED
                self._results[id(change)] = ChangeResult(change, Status.SKIPPED, error=error)
            else:  # held past its deadline: failed, or a create of unknown outcome
                if change.action == Action.CREATE:
                    self._record(_Outcome(change, posted=True, unanswered=time.monotonic()))
                else:
                    self._results[id(change)] = ChangeResult(change, Status.FAILED, error=HELD, id=change.id)
                if outcome.held >= self.settings.parallelism:  # no worker left
                    self._stop_run("the API holds every worker's request past its deadline")

    def _record(self, outcome: _Outcome) -> None:
        change, key = outcome.change, (outcome.change.target, outcome.change.name)
        if outcome.posted:
            self._posted[key] += 1
        if outcome.abort is not None:
            self._stop_run(outcome.abort)
        if outcome.later is not None:
            self._later.append(outcome)
            return
        result = outcome.result
        if result is None:
            self._unknown.append(outcome)
            return
        if outcome.posted and result.status == Status.OK:
            self._made.add((*key, str(result.id)))
        self._results[id(change)] = result
        self.progress(result)

    def _execute(self, change: Change, step: Step) -> _Outcome:
        """Run one change (``step``: all of it, or its create alone) in a worker; it records nothing itself."""
        if self.stop.is_set():
            return _Outcome(change, ChangeResult(change, Status.SKIPPED, error=NOT_STARTED))
        outcome = _Outcome(change)
        try:
            id_, token = step(change, self.clients[change.target], outcome)
            outcome.result = ChangeResult(change, Status.OK, id=id_, token=token)
        except SendLater as exc:  # refused with 429, so not made
            outcome.posted, outcome.later = False, exc
        except AmbiguousCreate as exc:
            outcome.unanswered = None if exc.answered else time.monotonic()
            outcome.resendable = not (isinstance(exc.cause, ApiError) and exc.cause.status < 300)  # 2xx: never again
        except Interrupted as exc:
            outcome.posted &= exc.sent
            outcome.result = ChangeResult(change, Status.SKIPPED, error=IN_FLIGHT if exc.sent else NOT_STARTED)
        except WaitTooLong as exc:  # not done: sent and refused (429), or never sent
            self.stop.set()
            done_part = change.action == Action.REPLACE and outcome.posted  # its delete went through
            outcome.posted, outcome.abort = False, exc.message
            outcome.result = ChangeResult(change, Status.FAILED if done_part else Status.SKIPPED, error=exc.message)
        except (ApiError, TransportError) as exc:
            # A 401/403 stops the run; to a re-authentication, the provider refused that instance's credentials.
            if isinstance(exc, Unauthorized) and change.action != Action.REAUTHENTICATE:
                self.stop.set()
                outcome.abort = f"the API refused the credentials of target {change.target!r}"
            outcome.result = _failed(change, exc)
        return outcome

    def _dispatch(self, change: Change, client: Any, outcome: _Outcome) -> tuple[Any, Secret | None]:
        match change.action:
            case Action.DELETE:
                client.delete_instance(change.id)
                return change.id, None
            case Action.CREATE:
                return self._create(change, client, outcome)
            case Action.REPLACE:
                client.delete_instance(change.id)
                return self._create(change, client, outcome)
            case Action.DISABLE | Action.ENABLE:  # the enabled endpoint, and nothing else
                client.set_enabled(change.id, change.action == Action.ENABLE)
                return change.id, _live_token(change)
            case Action.ADOPT | Action.UPDATE | Action.RENAME | Action.REAUTHENTICATE:
                return self._modify(change, client)
            case Action.NOOP | Action.CONFLICT | Action.PROTECTED:
                raise AssertionError(f"{change.action} is not a write: apply never sends it")
            case _:
                assert_never(change.action)

    def _modify(self, change: Change, client: Any) -> tuple[Any, Secret | None]:
        """Adopt, update, rename or re-authenticate an instance in place: its id and token stay. An
        ``enabled`` field in the diff is set afterwards, with the enabled endpoint."""
        desired, schema, fp = self._body_parts(change)
        body = modify_body(change, schema, fp)
        if change.action == Action.REAUTHENTICATE:  # the full body, for the provider to check again
            data = client.reauthenticate_instance(change.id, body)
        elif modify_verb(change) == "PATCH":  # adopt, or no configuration value differs
            data = client.patch_instance(change.id, body)
        else:
            data = client.update_instance(change.id, body)
        if any(d.path.section == "enabled" for d in change.diff):
            client.set_enabled(change.id, desired.enabled)
        return change.id, _token(data) or _live_token(change)

    def _create(
        self, change: Change, client: Any, outcome: _Outcome, later: Mapping[int, SendLater | None] | None = None
    ) -> tuple[Any, Secret | None]:
        desired, schema, fp = self._body_parts(change)
        outcome.posted = True
        data = client.create_instance(create_body(desired, schema, fp, self.run_tag), (later or {}).get(id(change)))
        if not desired.enabled:  # declared disabled from the start
            client.set_enabled(data["id"], False)
        return data["id"], _token(data)

    def _body_parts(self, change: Change) -> tuple[DesiredInstance, ElementSchema, FingerprintContext]:
        assert change.desired is not None
        schema = self.registry.get(change.desired.element)
        assert schema is not None
        return change.desired, schema, self.fingerprints[change.target]

    # -- creates whose outcome is unknown ------------------------------------------------------

    def _not_found(self) -> list[Change]:
        """Look up the creates of unknown outcome, one listing per target: record those found (or failed),
        and return those to send again."""
        batch, self._unknown = self._unknown, []
        resend = []
        for target in sorted({u.change.target for u in batch}):
            mine = [u for u in batch if u.change.target == target]
            found = {} if self.stop.is_set() else self._owned_new(target, [u.change for u in mine])
            if found is None:  # the lookup failed: each change says why
                continue
            attempts = self.clients[target].settings.max_attempts
            for u in mine:
                live = found.get(u.change.name)
                several = self._posted[(target, u.change.name)] > 1  # the copy found may be an earlier one
                if u.unanswered is not None and (live is None or several):
                    self._settle_until = max(self._settle_until, u.unanswered + self.settings.settle_seconds)
                if self.stop.is_set():
                    result = ChangeResult(u.change, Status.SKIPPED, error=IN_FLIGHT)
                elif live is not None:
                    result = ChangeResult(u.change, Status.OK, id=live.id, token=live.token)
                elif u.resendable and self._posted[(target, u.change.name)] < attempts:
                    resend.append(u.change)
                    continue
                else:
                    result = ChangeResult(u.change, Status.FAILED, error=UNKNOWN if u.resendable else ANSWERED)
                self._results[id(u.change)] = result
                self.progress(result)
        return resend

    def _owned_new(self, target: str, changes: list[Change]) -> dict[str, LiveInstance | None] | None:
        """The oldest instance per name that the stack owns and that is new since the plan; None when
        the listing failed (each change then fails with its error)."""
        try:
            copies = self._copies(target)
        except WaitTooLong as exc:
            self._stop_run(exc.message)
            return {}
        except LISTING_ERRORS as exc:
            for change in changes:
                self._results[id(change)] = _failed(change, exc)
            return None
        new = {c.name: [i for i in copies.get(c.name, []) if (target, i.id) not in self._known_ids] for c in changes}
        return {name: found[0] if found else None for name, found in new.items()}

    def _copies(self, target: str) -> dict[str, list[LiveInstance]]:
        """The stack's own instances on ``target`` by name, oldest first (one listing, no configuration)."""
        return copies_by_name(read_live(self.clients[target], self.plan.stack, owned_only=True, configuration=False))

    # -- the final check -----------------------------------------------------------------------

    def _final_check(self) -> list[str]:
        """List the stack once more and settle every created name on its oldest copy (docs/reliability.md:
        the final check); if the listing fails, the created names fail too."""
        created: dict[str, dict[str, Change]] = {}  # by target and name: the creates sent and not skipped
        for c in (r.change for r in self._results.values() if r.status != Status.SKIPPED):
            if c.action in (Action.CREATE, Action.REPLACE) and (c.target, c.name) in self._posted:
                created.setdefault(c.target, {})[c.name] = c
        if not created or self.stop.is_set() or self.stop.wait(max(0.0, self._settle_until - time.monotonic())):
            return []
        notes: list[str] = []
        for target, names in sorted(created.items()):
            if self._count_agrees(target, names.values()):
                continue
            try:
                copies = self._copies(target)
            except WaitTooLong as exc:
                self._stop_run(exc.message + "; the created instances were not checked with a final listing")
                return notes
            except LISTING_ERRORS as exc:
                failed = f"could not check the created instance with a final listing ({exc}); run apply again"
                for change in names.values():
                    self._results[id(change)] = ChangeResult(change, Status.FAILED, error=failed)
                continue
            for name, change in sorted(names.items()):
                notes.extend(self._settle_name(target, copies.get(name, []), change))
        return notes

    def _count_agrees(self, target: str, created: Iterable[Change]) -> bool:
        """Whether the final listing of ``target`` can be spared: the API's count proves that no other writer
        added a copy (docs/reliability.md, when the count proves there is nothing to settle)."""
        writes = [c for c in self.plan.changes if c.target == target and c.is_write]
        listed = self.plan.listed.get(target)
        if listed is None or any(self._results[id(c)].status != Status.OK for c in writes):
            return False
        for change in created:
            result = self._results[id(change)]
            made = (target, change.name, str(result.id)) in self._made
            if not made or self._posted[(target, change.name)] != 1 or result.token is None:
                return False
        delta = sum(c.action == Action.CREATE for c in writes) - sum(c.action == Action.DELETE for c in writes)
        tags = (stack_marker(self.plan.stack),) if self.plan.options.destroy else ()  # the plan's listing
        try:
            return self.clients[target].instance_total(tags) == listed + delta
        except (WaitTooLong, *LISTING_ERRORS):  # the listing decides, and says what is wrong
            return False

    def _settle_name(self, target: str, copies: list[LiveInstance], change: Change) -> list[str]:
        """Deliver the oldest copy of one created name, and delete the extra copies this run made."""
        result = self._results[id(change)]
        if not copies:
            if result.status == Status.OK:
                gone = f"instance id {result.id} was deleted while this run was applying (a concurrent destroy or "
                gone += "prune?); its token is not delivered"
                self._results[id(change)] = ChangeResult(change, Status.FAILED, id=result.id, error=gone)
            return []
        winner, notes = copies[0], []
        if result.status != Status.OK or result.id != winner.id:
            made = result.status == Status.OK and result.id is not None
            was = f" instead of this run's id {result.id}" if made else ""
            result = ChangeResult(change, Status.OK, id=winner.id, token=winner.token)
            notes.append(f"{winner.name}: delivering the oldest copy, id {winner.id}{was}")
        for extra in copies[1:]:
            if (target, change.name, str(extra.id)) in self._made or self.run_tag in extra.tags:
                try:
                    self.clients[target].delete_instance(extra.id)
                    notes.append(f"{extra.name}: deleted extra copy id {extra.id} made by this run")
                except ProvisionerError as exc:
                    notes.append(f"{extra.name}: extra copy id {extra.id} made by this run could not be deleted: {exc}")
        self._results[id(change)] = result if result.token is not None else self._with_token(target, result)
        return notes

    def _with_token(self, target: str, result: ChangeResult) -> ChangeResult:
        """A created instance listed without a token: its token from ``GET /instances/{id}``, or a
        failure that names the instance (it is kept: the next apply finds it)."""
        try:
            token = LiveInstance.from_api(self.clients[target].get_instance(result.id)).token
        except WaitTooLong as exc:
            self._stop_run(exc.message)
            token = None
        except LISTING_ERRORS as exc:
            return replace(result, status=Status.FAILED, error=f"instance id {result.id} was created; its token: {exc}")
        if token is not None:
            return replace(result, token=token)
        why = f"instance id {result.id} was created, but the API gave no token for it (neither the create answer, "
        return replace(result, status=Status.FAILED, error=why + f"the listing nor GET /instances/{result.id})")


def _failed(change: Change, exc: Exception) -> ChangeResult:
    if isinstance(exc, ApiError):  # the API's own message, with its request id and status
        return ChangeResult(change, Status.FAILED, str(exc.message), exc.request_id, exc.status, change.id)
    return ChangeResult(change, Status.FAILED, error=str(exc), id=change.id)


def _token(data: Any) -> Secret | None:
    token = data.get("token") if isinstance(data, Mapping) else None
    return Secret(token, token=True) if isinstance(token, str) and token else None


def _live_token(change: Change) -> Secret | None:
    return change.live.token if change.live is not None else None
