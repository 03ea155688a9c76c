"""Stage 6: execute a plan, and nothing else.

Writes run in one pool of ``parallelism`` workers (one rate budget shared by all); the workers
return what they learned and only the main thread records it. One failing instance does not stop
the others.

A create is sent again only after an attempt the server refused, and a name is sent at most
``--max-attempts`` times. Refused means: it answered 429 or the connection was refused (the client
retries those within a send), or the attempt's outcome is unknown (an answered 5xx, or no answer: a
reset, a timeout, a lost answer) and a listing of the stack taken after it ended shows no copy of
the name. The names of unknown outcome are looked up in rounds, one listing per round: a copy found
is taken, a name not found is sent again at once, and its unknown outcomes make the next round. A
2xx answer is never a refusal: a create answered 2xx without an instance with an id and a token is
never sent again; a name with no copy then fails, its outcome unknown.

A slow server may still commit an attempt that got no answer after the listing that did not show
it. So when such an attempt was never found, the final check first waits ``settle`` seconds, once;
then it settles every created name on one copy, the oldest, which every overlapping run agrees on.
A run deletes only extra copies it made itself (by id, or by this run's tag), and reads
``GET /instances/{id}`` for a copy listed without a token. A commit later than ``settle`` is left to
the next apply, which deletes it as a duplicate.

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
import functools
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
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
UNKNOWN = "create outcome unknown: no instance of this name was found after any of its attempts (run apply again)"
ANSWERED = "create outcome unknown: answered 2xx without an instance, and no instance of this name was found; not sent "
ANSWERED += "again (run apply again)"


@dataclass(frozen=True)
class _Unknown:
    """A create whose outcome is unknown."""

    change: Change
    unanswered: float | None  # when its attempt ended with no answer (time.monotonic())
    resendable: bool  # False after a 2xx answer: never sent again


@dataclass
class _Outcome:
    """What a worker learned from one change; the main thread records it. ``result`` None: a create
    of unknown outcome (``unknown`` says how); ``posted``: a create was sent; ``abort``: why the
    whole run stops."""

    result: ChangeResult | None
    posted: bool = False
    unknown: _Unknown | None = None
    abort: str | None = None


Step = Callable[[Change, Any, _Outcome], ChangeResult]  # one change's requests, in a worker


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
    """Run ``work`` on every item in ``parallelism`` threads and yield each item with its result, in
    order, waiting a short while at a time (the main thread stays free for signals). The main thread
    stops waiting for an item ``STOP_GRACE`` after a signal, or after its request's deadline: it is
    yielded ``Unfinished`` and its worker is not waited for (``exit_process`` knows the threads by
    their name). ``work``'s exceptions are raised."""
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
        self._unknown: list[_Unknown] = []  # creates of unknown outcome, not looked up yet
        self._index = {id(c): i for i, c in enumerate(plan.changes)}
        self._posted: Counter[tuple[str, str]] = Counter()  # names a create was sent for: how many times
        self._made: set[tuple[str, str, str]] = set()  # (target, name, id) of the copies this run was told it made
        self._settle_until = -math.inf  # an attempt that got no answer was not found: wait for it until then
        self.run_tag = run_tag(secrets.token_hex(6))
        self._known_ids = {(c.target, c.live.id) for c in plan.changes if c.live is not None}

    def run(self) -> ApplyResult:
        results: dict[int, ChangeResult] = {}
        writes = []
        for index, change in enumerate(self.plan.changes):
            if change.action == Action.NOOP:
                results[index] = ChangeResult(change, Status.OK, id=change.id, token=_live_token(change))
            elif change.action == Action.CONFLICT:
                results[index] = ChangeResult(change, Status.SKIPPED, error=change.reason, id=change.id)
            else:
                writes.append(change)
        self._run_batch(writes, results, self._dispatch)
        self._resolve_unknown(results)
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

    def _run_batch(self, writes: list[Change], results: dict[int, ChangeResult], step: Step) -> None:
        """Run ``step`` for each change in the workers and record each outcome here, in order. After a
        signal, the changes not done are reported as skipped; a change held past its deadline failed
        (a create: looked up, as any create of unknown outcome)."""
        work = functools.partial(self._execute, step=step)
        for change, outcome in in_workers(work, writes, self.settings.parallelism, self.stop):
            index = self._index[id(change)]
            if isinstance(outcome, Unfinished) and outcome.held:  # a create is looked up, the rest fail
                if change.action == Action.CREATE:
                    unknown = _Unknown(change, unanswered=time.monotonic(), resendable=True)
                    self._record(index, change, _Outcome(None, posted=True, unknown=unknown), results)
                else:
                    results[index] = ChangeResult(change, Status.FAILED, error=HELD, id=change.id)
                if outcome.held >= self.settings.parallelism:  # no worker left
                    self.stop.set()
                    self.aborted = self.aborted or "the API holds every worker's request past its deadline"
            elif isinstance(outcome, Unfinished):
                results[index] = ChangeResult(
                    change, Status.SKIPPED, error=IN_FLIGHT if outcome.started else NOT_STARTED
                )
            else:
                self._record(index, change, outcome, results)

    def _record(self, index: int, change: Change, outcome: _Outcome, results: dict[int, ChangeResult]) -> None:
        key = (change.target, change.name)
        if outcome.posted:
            self._posted[key] += 1
        if outcome.abort is not None and self.aborted is None:
            self.aborted = outcome.abort
        result = outcome.result
        if result is None:
            assert outcome.unknown is not None
            self._unknown.append(outcome.unknown)
            results.pop(index, None)
            return
        if outcome.posted and result.status == Status.OK:
            self._made.add((*key, str(result.id)))
        if result.http_status in (401, 403) and self.aborted is None and change.action != Action.REAUTHENTICATE:
            self.aborted = f"the API refused the credentials of target {change.target!r}"
        results[index] = result
        self.progress(result)

    def _execute(self, change: Change, step: Step) -> _Outcome:
        """Run one change (``step``: all of it, or its create alone) in a worker; it records nothing itself."""
        if self.stop.is_set():
            return _Outcome(ChangeResult(change, Status.SKIPPED, error=NOT_STARTED))
        client = self.clients[change.target]
        outcome = _Outcome(None)
        try:
            outcome.result = step(change, client, outcome)
        except AmbiguousCreate as exc:
            answered_2xx = isinstance(exc.cause, ApiError) and exc.cause.status < 300
            outcome.unknown = _Unknown(change, None if exc.answered else time.monotonic(), not answered_2xx)
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

    def _resolve_unknown(self, results: dict[int, ChangeResult]) -> None:
        """Look up the creates of unknown outcome in rounds, one listing per target a round, and take
        the copy found. A name not found was refused: it is sent again at once, within
        ``--max-attempts`` (never after a 2xx answer). An attempt that got no answer and was not found,
        or was one of several sent for a name, makes the final check wait ``settle`` for it."""
        while self._unknown:
            batch, self._unknown = self._unknown, []
            resend = []
            for target in sorted({u.change.target for u in batch}):
                mine = [u for u in batch if u.change.target == target]
                found = {} if self.stop.is_set() else self._owned_new(target, results, [u.change for u in mine])
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
                    results[self._index[id(u.change)]] = result
                    self.progress(result)
            self._run_batch(resend, results, self._create)

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
