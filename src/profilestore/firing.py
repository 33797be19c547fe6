"""The trigger engine: the second kind of handler of the pipeline.

:class:`TriggerHandler` reads the log after its own tracked position (target
:data:`TARGET`, lease kind ``triggers``; one engine at a time). For each event a trigger
reads, it builds the customer's :class:`~profilestore.trigger.ProfileView` (through the
identity graph: a merged customer is one customer), calls the trigger's pure decision,
and records what came of it:

- **Fire**: the contact policy (:mod:`profilestore.contact`) says send, defer or
  suppress. To send is to *claim* ``(trigger, customer key, dedupe key)`` in the record
  store with an atomic insert-if-absent (:meth:`RecordStore.insert_record_if_absent`):
  the claim is the message (its id is derived from the claim, so it is stable across
  retries), queued in the outbox (:mod:`profilestore.outbox`) for each destination. A
  claim under any key of the customer's profile makes a second firing a duplicate, so
  merged customers are one customer for dedupe whatever their canonical id becomes. A
  deferral (quiet hours) is a timer at the window's end.
- **Wait**: a durable timer in the record store, indexed by due time
  (:data:`TIMER_DUE`): the engine reads the due ones, never every timer. When it is due,
  the decision is made again with the same event, the profile as it is then and the
  time then, so it checks its exit conditions itself (the cart was ordered or emptied:
  nothing).
- Every outcome (fired, duplicate, deferred or waiting until T, suppressed and why,
  cancelled, failed) is a record under the customer key and the event's log position:
  ``profilestore triggers log CUSTOMER`` reads them.

**Once, whatever happens.** A claim is written the moment it is decided (its atomic
insert is the guard against firing twice); the page's other records (outcomes, timers,
contact ledgers, the claims' pending deliveries) are kept in :class:`_Writes` and
written together when the page commits (one batch, then the timers removed), and the
position advances only after them (:meth:`_TriggerPass.commit`). A crash in between
re-reads those events: an event whose outcome is recorded is skipped; one whose claim
was written but not its outcome finds the claim naming it as its origin and records the
outcome it had, so a replay, a restart or a second engine taking over after a lease
expired never fires twice and never loses a firing.

**Warm-up.** A trigger fires only for events recorded at or after its cut-off: its
``since`` setting, else the moment the engine first ran it enabled (a record kept in the
store), so enabling a trigger on a store with history, or replaying the log, sends
nothing about the past.

**The profile a decision sees** is at least as fresh as the event: each dataset's stored
section, and where a section is behind the event (a dataset refreshed hourly), the
customer's missing events folded into it in memory (the documents are the projector's
to write). A section already past the event is used as it is: decisions are about the
customer now, and the dedupe key keeps a later re-decision from firing twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from profilestore.contact import ContactPolicy, Sent, customer_zone
from profilestore.documents import DocumentStore
from profilestore.eventlog import EventLog, Notified
from profilestore.experiment import HOLDOUT, Experiment, assign
from profilestore.identity import KEY, IdentityGraph, merged_changes
from profilestore.mapper import Forgotten
from profilestore.outbox import FIRED, enqueue, pending_deliveries
from profilestore.partitions import Partition
from profilestore.partitions import advance as advance_partition
from profilestore.partitions import position as partition_position
from profilestore.pipeline import Clock, Handler, Pass, PassReport
from profilestore.projection import Projection
from profilestore.tally import Tally
from profilestore.trigger import (
    Decision,
    EnabledTrigger,
    Fire,
    ProfileView,
    Wait,
    check_decision,
)

TARGET = "trigger-engine"
"""The engine's target: its lease, tracked position and runs (not a valid dataset name)."""
LEASE_KIND = "triggers"

ENABLED = "trigger.enabled"
OUTCOME = "trigger.outcome"
TIMER = "trigger.timer"
TIMER_DUE = "trigger.due"
"""The timers by when they fall due: :func:`due_key` -> ``{}``. The engine reads the due
ones by key range, never every timer: a store holds a timer per customer for birthdays
alone. An entry whose timer was since dropped or moved is removed when it falls due."""
META = "trigger.meta"
TIMERS_INDEXED = "timers-by-due"
"""The record saying :data:`TIMER_DUE` covers every timer (written by the first engine
that ran after the index was introduced, which built it)."""
DUE_BATCH = 500
"""Entries of one trigger's due timers read at once (as many batches as are due)."""
CONTACTS = "trigger.contacts"

CONTEXT_DATASETS = ("consents", "attributes", "social")
"""Datasets the engine reads for every decision when they are configured: consent, the
customer's time zone, sensitive life events."""
RETRY_WAIT = dt.timedelta(minutes=1)
CONTACT_MEMORY = dt.timedelta(days=8)
"""How long a customer's contact ledger remembers a message (caps look back 7 days)."""

Status = Literal[
    "fired", "held_out", "duplicate", "deferred", "waiting", "suppressed", "cancelled", "failed"
]


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What one decision of one trigger came to, for one customer."""

    trigger: str
    customer_id: str
    """The customer key whose event (or timer) was decided."""
    profile_id: str
    status: Status
    decided_at: dt.datetime
    position: int
    """The log position of the event decided (a timer's: the event it looks again at)."""
    event_id: str
    channel: str
    transactional: bool = False
    dedupe_key: str | None = None
    reason: str | None = None
    until: dt.datetime | None = None
    """Deferred or waiting: when the decision is made again."""
    message_id: str | None = None
    variant: str | None = None
    """The experiment arm the customer is in (``holdout``: not sent), if any."""
    code: str | None = None
    """Why, as a short code (a metric's label): ``no_consent``, ``withdrawn``,
    ``sensitive_life_event``, ``frequency_cap``, ``quiet_hours``, ``too_late``,
    ``sensitive_content``, ``already_fired``, ``conditions_changed``, ``decision_raised``."""


class Firing(msgspec.Struct, frozen=True, kw_only=True):
    """A claimed firing: the message, sent once (the outbox delivers it)."""

    message_id: str
    trigger: str
    customer_id: str
    profile_id: str
    dedupe_key: str
    channel: str
    purpose: str
    transactional: bool
    payload: dict[str, Any]
    left_out: list[str] = msgspec.field(default_factory=list)
    """Paths the discretion rule took out of the trigger's payload (never sent)."""
    origin: str
    """What decided it (``event:<position>`` or ``timer:<position>:<due>``): a replay
    of the same origin finds its own claim."""
    event_id: str
    fired_at: dt.datetime
    experiment: str | None = None
    variant: str | None = None
    """Its experiment's arm; ``holdout``: claimed but never queued."""


class Timer(msgspec.Struct, frozen=True, kw_only=True):
    """A decision to make again when ``due``."""

    trigger: str
    customer_id: str
    dedupe_key: str
    due: dt.datetime
    position: int
    event_id: str
    set_at: dt.datetime
    reason: str | None = None


class Contact(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    channel: str
    at: dt.datetime


class Contacts(msgspec.Struct, frozen=True, kw_only=True):
    """The non-transactional messages fired to a customer key lately (caps count them)."""

    recent: tuple[Contact, ...] = ()


def claim_key(trigger: str, customer_id: str, dedupe_key: str) -> str:
    return f"{trigger}\x1f{customer_id}\x1f{dedupe_key}"


def due_key(trigger: str, due: dt.datetime, key: str) -> str:
    """A timer's entry in :data:`TIMER_DUE`: its trigger, its due time in UTC (fixed
    width, so keys sort by time) and the timer's key."""
    return f"{trigger}\x1f{due.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%S.%f}\x1f{key}"


def _due_until(trigger: str, now: dt.datetime) -> str:
    """The last possible :func:`due_key` of ``trigger`` due at ``now``."""
    return due_key(trigger, now, "\U0010ffff")


def _due_of(entry: str) -> dt.datetime:
    stamp = entry.split("\x1f", 2)[1]
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=dt.UTC)


def message_id(trigger: str, customer_id: str, dedupe_key: str) -> str:
    """The message's id: derived from its claim, so every retry names the same message."""
    digest = hashlib.sha256(claim_key(trigger, customer_id, dedupe_key).encode()).hexdigest()
    return f"msg_{digest[:32]}"


def outcome_key(customer_id: str, position: int, trigger: str, occasion: str) -> str:
    """Outcomes sort per customer key by log position; ``occasion`` is ``e`` for the
    event itself, the due time for a timer's decision."""
    return f"{customer_id}\x1f{position:020d}\x1f{trigger}\x1f{occasion}"


def _summary(error: BaseException) -> str:
    return traceback.format_exception_only(type(error), error)[-1].strip()[:500]


class TriggerHandler(Handler):
    """The enabled triggers over the log; see the module docstring."""

    lease_kind = LEASE_KIND

    def __init__(
        self,
        log: EventLog,
        documents: DocumentStore,
        projections: Mapping[str, Projection[Any]],
        triggers: Mapping[str, EnabledTrigger],
        policy: ContactPolicy,
        *,
        clock: Clock,
        routes: Callable[[str], list[str]] = lambda channel: [],
        tally: Tally | None = None,
        experiments: Mapping[str, Experiment] | None = None,
        partition: Partition | None = None,
    ) -> None:
        self.partition = partition
        """Only the events and timers of this partition's customers (None: every one);
        the claims keep a customer's firing once wherever it is decided."""
        if partition is not None:
            self.lease_kind = f"{LEASE_KIND}#{partition.label}"
        self.tally = tally or Tally()
        self.experiments = experiments or {}
        """Trigger name -> the experiment splitting its firings."""
        self.routes = routes
        """Channel -> the outbox destinations of its messages."""
        self.log = log
        self.documents = documents
        self.projections = projections
        self.triggers = triggers
        self.policy = policy
        self.clock = clock
        needed = {d for t in triggers.values() for d in t.trigger.needs}
        needed.update(d for d in CONTEXT_DATASETS if d in projections)
        self.datasets = [d for d in projections if d in needed]

    def begin(self, targets: Sequence[str]) -> _TriggerPass:
        assert list(targets) == [TARGET], targets
        if self.partition is not None:
            found = partition_position(self.documents, TARGET, self.partition)
            return _TriggerPass(self, found or 0)
        tracked = self.documents.tracking(TARGET)
        return _TriggerPass(self, tracked.position if tracked else 0)

    def cutoffs(self) -> dict[str, dt.datetime]:
        """Each trigger's warm-up cut-off: ``since``, else when the engine first ran it
        enabled (recorded now if this is that first time)."""
        now = self.clock()
        found = {}
        for name, entry in self.triggers.items():
            if entry.since is not None:
                found[name] = entry.since
                continue
            self.documents.insert_record_if_absent(ENABLED, name, {"since": now.isoformat()})
            record = self.documents.get_records_for(ENABLED, [name])[name]
            found[name] = dt.datetime.fromisoformat(record["since"])
        return found


class _Writes:
    """A page's records, written together when the pass commits: one write per page
    instead of several per decision. Reads of the pass go through it, so a decision sees
    what the page decided before it (a contact ledger, a timer)."""

    def __init__(self, documents: DocumentStore) -> None:
        self.documents = documents
        self.changed: dict[tuple[str, str], Mapping[str, Any] | None] = {}
        """(kind, key) -> the record to store, or None to remove it; the last one stays."""

    def put(self, kind: str, key: str, value: Mapping[str, Any]) -> None:
        self.changed[(kind, key)] = value

    def delete(self, kind: str, key: str) -> None:
        self.changed[(kind, key)] = None

    def holds(self, kind: str, key: str) -> bool:
        return self.changed.get((kind, key)) is not None

    def get_for(self, kind: str, keys: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        unseen = [k for k in keys if (kind, k) not in self.changed]
        found: dict[str, Mapping[str, Any]] = dict(self.documents.get_records_for(kind, unseen))
        for key in keys:
            value = self.changed.get((kind, key))
            if value is not None:
                found[key] = value
        return found

    def flush(self) -> None:
        """Store the records, then remove those removed (no key is in both)."""
        if not self.changed:
            return
        self.documents.put_records(
            [(kind, key, value) for (kind, key), value in self.changed.items() if value is not None]
        )
        removed: dict[str, list[str]] = {}
        for (kind, key), value in self.changed.items():
            if value is None:
                removed.setdefault(kind, []).append(key)
        for kind, keys in removed.items():
            self.documents.delete_records(kind, keys)
        self.changed = {}


@dataclass
class _Cached:
    """A profile's sections as the pass last built them, with what each covers."""

    profile_id: str
    members: tuple[str, ...]
    sections: dict[str, Any]
    positions: dict[str, int]


class _TriggerPass(Pass):
    def __init__(self, handler: TriggerHandler, position: int) -> None:
        self.handler = handler
        self.documents = handler.documents
        self.position = position
        self.start = position
        self.routes: dict[str, list[EnabledTrigger]] = {}
        for entry in handler.triggers.values():
            for topic in entry.trigger.topics:
                self.routes.setdefault(topic, []).append(entry)
        self.topics = sorted(self.routes)
        self.cutoffs = handler.cutoffs()
        self.graph = IdentityGraph(self.documents)
        self._index_timers()
        self._next_due: dt.datetime | None = None
        self._due_known = False
        self._cache: dict[str, _Cached] = {}
        self.writes = _Writes(self.documents)
        self._tallied: list[Outcome] = []
        """Outcomes to count once they are written."""
        self.decided = 0
        self.counts: dict[str, int] = {}

    def _owns(self, customer_id: str) -> bool:
        """Whether the customer's profile is in this pass's partition (or it has none)."""
        partition = self.handler.partition
        return partition is None or partition.owns(self.graph.profile_of(customer_id))

    # --- the pass contract ----------------------------------------------------------------

    def resume(self) -> None:
        self.decided = 0
        self.counts = {}
        self.graph.forget_cache()

    def _index_timers(self) -> None:
        """Build :data:`TIMER_DUE` from the timers of a store that had none (once)."""
        if self.documents.get_record(META, TIMERS_INDEXED) is not None:
            return
        entries: list[tuple[str, str, Mapping[str, Any]]] = [
            (TIMER_DUE, due_key(timer.trigger, timer.due, key), {})
            for key, value in self.documents.get_records(TIMER).items()
            for timer in [msgspec.convert(value, Timer)]
        ]
        self.documents.put_records([*entries, (META, TIMERS_INDEXED, {"version": 1})])

    def pending(self) -> bool:
        # Asked before every step of a live consumer: the earliest due time is kept, not
        # looked for each time. It may be a timer since dropped (its entry stays until
        # it falls due): a step then only removes the entry.
        if not self._due_known:
            entries = [  # a disabled trigger's timers wait for it
                entry for name in self.handler.triggers for entry in self._first_owned(name)
            ]
            entries += [  # and what this page set and has not written yet
                key
                for (kind, key), value in self.writes.changed.items()
                if kind == TIMER_DUE
                and value is not None
                and key.split("\x1f", 1)[0] in self.handler.triggers
            ]
            self._next_due = min(map(_due_of, entries), default=None)
            self._due_known = True
        return self._next_due is not None and self._next_due <= self.handler.clock()

    def handle(self, page: Sequence[Notified]) -> None:
        self._cache.clear()  # the graph or the documents may have moved since
        fresh = [n for n in page if n.notification_id > self.position]
        if fresh:
            self.graph.prefetch(KEY, {n.event.customer_id for n in fresh})
            if self.handler.partition is not None:
                fresh = [n for n in fresh if self._owns(n.event.customer_id)]
            wanted = [
                (logged, entry)
                for logged in fresh
                for entry in self.routes.get(logged.topic, ())
                if entry.trigger.warm_up == "plan" or self._after_cutoff(entry, logged)
            ]
            decided = self.documents.get_records_for(
                OUTCOME,
                [
                    outcome_key(n.event.customer_id, n.notification_id, e.name, "e")
                    for n, e in wanted
                ],
            )
            for logged, entry in wanted:
                key = outcome_key(logged.event.customer_id, logged.notification_id, entry.name, "e")
                if key not in decided:  # decided before a crash: its effects are stored
                    self._decide_event(entry, logged)
        self._cache.clear()
        self.run_due_timers()

    def should_commit(self) -> bool:
        # Every effect is written as it is decided: advancing after each page keeps a
        # restart from re-reading more than one page.
        return True

    def commit(self, through: int) -> None:
        self._flush()
        if through > self.position or self.position == 0:
            now = self.handler.clock()
            if self.handler.partition is None:
                self.documents.advance(TARGET, through, refreshed_at=now)
            else:
                advance_partition(self.documents, TARGET, self.handler.partition, through, now)
            self.position = max(self.position, through)

    def finish(self, through: int) -> None:
        self.run_due_timers()
        self._flush()

    def _flush(self) -> None:
        self.writes.flush()
        for outcome in self._tallied:
            self.handler.tally.outcome(outcome.trigger, outcome.status, outcome.code)
        self._tallied = []

    def report(self, report: PassReport) -> PassReport:
        report.events_applied = {TARGET: self.decided}
        report.sections_written = {TARGET: sum(self.counts.values())}
        report.outcomes = dict(self.counts)
        return report

    # --- deciding -----------------------------------------------------------------------

    def _after_cutoff(self, entry: EnabledTrigger, logged: Notified) -> bool:
        recorded = logged.event.recorded_at
        return recorded is not None and recorded >= self.cutoffs[entry.name]

    def _decide_event(self, entry: EnabledTrigger, logged: Notified) -> None:
        event = logged.event
        view = self.view(event.customer_id, logged.notification_id)
        self.decided += 1
        self._decide(
            entry,
            logged,
            view,
            origin=f"event:{logged.notification_id}",
            occasion="e",
            timer=None,
            planning=not self._after_cutoff(entry, logged),
        )

    def _decide(
        self,
        entry: EnabledTrigger,
        logged: Notified,
        view: ProfileView,
        *,
        origin: str,
        occasion: str,
        timer: Timer | None,
        planning: bool = False,
    ) -> None:
        """Decide, and record the outcome; ``planning``: an event before the cut-off of
        a trigger that plans ahead, of whose decision only a Wait to come is kept."""
        handler = self.handler
        trigger = entry.trigger
        event = logged.event
        customer_id = event.customer_id
        now = handler.clock()
        base = Outcome(
            trigger=trigger.name,
            customer_id=customer_id,
            profile_id=view.profile_id,
            status="failed",
            decided_at=now,
            position=logged.notification_id,
            event_id=event.event_id,
            channel=trigger.channel,
            transactional=trigger.transactional,
        )
        record = outcome_key(customer_id, logged.notification_id, trigger.name, occasion)
        timer_key = claim_key(trigger.name, timer.customer_id, timer.dedupe_key) if timer else None
        try:
            decision: Decision = check_decision(trigger.decide(event, view, now, entry.settings))
        except Exception as error:  # a decision's bug is this event's, not the engine's
            self._record(
                record,
                msgspec.structs.replace(base, reason=_summary(error), code="decision_raised"),
            )
            if timer_key:
                self._drop_timer(timer_key)
            return
        if planning:
            if isinstance(decision, Fire):
                decision = decision.then
            if decision is None or decision.until <= now:
                return  # history: nothing past is sent, nothing is recorded
        if isinstance(decision, Fire) and entry.stale_after is not None:
            # Decided long after the moment it was about (an engine down for days): a
            # welcome a week late is not sent. Triggers that plan ahead decide about now.
            moment = timer.due if timer is not None else event.recorded_at or now
            if trigger.warm_up == "skip" and now - moment > entry.stale_after:
                hours = (now - moment) / dt.timedelta(hours=1)
                reason = f"decided {hours:.0f} hours after the moment: too late to send"
                stale = msgspec.structs.replace(
                    base,
                    status="suppressed",
                    dedupe_key=decision.dedupe_key,
                    reason=reason,
                    code="too_late",
                )
                self._record(record, stale)
                self._drop_timer(timer_key)
                return
        if decision is None:
            if timer is not None:
                self._record(
                    record,
                    msgspec.structs.replace(
                        base,
                        status="cancelled",
                        dedupe_key=timer.dedupe_key,
                        reason="the trigger's conditions no longer hold",
                        code="conditions_changed",
                    ),
                )
                self._drop_timer(timer_key)
            return
        base = msgspec.structs.replace(base, dedupe_key=decision.dedupe_key)
        key = claim_key(trigger.name, customer_id, decision.dedupe_key)
        if isinstance(decision, Wait):
            until = decision.until
            if timer is not None:
                # A timer's decision that waits for a moment already past would be due
                # again at once, and again: it looks again a little later instead.
                until = max(until, now + RETRY_WAIT)
            self._set_timer(key, entry, logged, until, decision.dedupe_key, None)
            if timer_key and timer_key != key:
                self._drop_timer(timer_key)
            self._record(record, msgspec.structs.replace(base, status="waiting", until=until))
            return
        self._fire(entry, decision, logged, view, base, record, origin, now)
        if timer_key and timer_key != key:
            self._drop_timer(timer_key)
        then = decision.then
        if then is not None:
            # Set whatever became of the firing: next year's birthday does not depend on
            # whether this year's greeting was sent.
            until = max(then.until, now + RETRY_WAIT) if then.until <= now else then.until
            self._set_timer(
                claim_key(trigger.name, customer_id, then.dedupe_key),
                entry,
                logged,
                until,
                then.dedupe_key,
                None,
            )

    def _fire(
        self,
        entry: EnabledTrigger,
        decision: Fire,
        logged: Notified,
        view: ProfileView,
        base: Outcome,
        record: str,
        origin: str,
        now: dt.datetime,
    ) -> None:
        trigger = entry.trigger
        customer_id = logged.event.customer_id
        key = claim_key(trigger.name, customer_id, decision.dedupe_key)
        claims = self.documents.get_records_for(
            FIRED, [claim_key(trigger.name, m, decision.dedupe_key) for m in view.customer_ids]
        )
        own = claims.get(key)
        if own is not None and own.get("origin") == origin:
            # Fired by this very decision before a crash: finish what it started.
            firing = msgspec.convert(own, Firing)
            if firing.variant != HOLDOUT:
                self._enqueue(key, own, fresh=False)
                self._note_contact(firing)
            self._drop_timer(key)
            self._record(record, self._fired(base, firing))
            return
        if claims:
            first = next(iter(claims.values()))
            self._drop_timer(key)
            self._record(
                record,
                msgspec.structs.replace(
                    base,
                    status="duplicate",
                    message_id=first.get("message_id"),
                    reason=f"already fired for {decision.dedupe_key!r}",
                    code="already_fired",
                ),
            )
            return
        verdict = self.handler.policy.check(
            channel=trigger.channel,
            purpose=trigger.purpose,
            transactional=trigger.transactional,
            sections=view.sections,
            timezone=view.timezone,
            sent=self._sent(view.customer_ids, now),
            now=now,
        )
        if verdict.action == "defer":
            assert verdict.until is not None
            self._set_timer(key, entry, logged, verdict.until, decision.dedupe_key, verdict.reason)
            self._record(
                record,
                msgspec.structs.replace(
                    base,
                    status="deferred",
                    until=verdict.until,
                    reason=verdict.reason,
                    code=verdict.code,
                ),
            )
            return
        if verdict.action == "suppress":
            self._drop_timer(key)
            self._record(
                record,
                msgspec.structs.replace(
                    base, status="suppressed", reason=verdict.reason, code=verdict.code
                ),
            )
            return
        policy = self.handler.policy
        payload, left_out = policy.discreet(decision.payload, transactional=trigger.transactional)
        if policy.emptied(decision.payload, payload):
            self._drop_timer(key)
            reason = "nothing left to say once sensitive categories were left out"
            self._record(
                record,
                msgspec.structs.replace(
                    base, status="suppressed", reason=reason, code="sensitive_content"
                ),
            )
            return
        experiment = self.handler.experiments.get(trigger.name)
        variant = (
            assign(self.documents, experiment, view.customer_ids, customer_id, now)
            if experiment is not None
            else None
        )
        firing = Firing(
            experiment=experiment.name if experiment is not None else None,
            variant=variant,
            message_id=message_id(trigger.name, customer_id, decision.dedupe_key),
            trigger=trigger.name,
            customer_id=customer_id,
            profile_id=view.profile_id,
            dedupe_key=decision.dedupe_key,
            channel=trigger.channel,
            purpose=trigger.purpose,
            transactional=trigger.transactional,
            payload=msgspec.to_builtins(payload),
            left_out=left_out,
            origin=origin,
            event_id=logged.event.event_id,
            fired_at=now,
        )
        claimed = msgspec.to_builtins(firing)
        if not self.documents.insert_record_if_absent(FIRED, key, claimed):
            # Only another engine past an expired lease gets here: its claim stands.
            self._record(
                record,
                msgspec.structs.replace(
                    base,
                    status="duplicate",
                    reason=f"already fired for {decision.dedupe_key!r}",
                    code="already_fired",
                ),
            )
            return
        if variant != HOLDOUT:  # held out: decided once like the others, never sent
            self._enqueue(key, claimed, fresh=True)
            self._note_contact(firing)
        self._drop_timer(key)
        self._record(record, self._fired(base, firing))

    @staticmethod
    def _fired(base: Outcome, firing: Firing) -> Outcome:
        return msgspec.structs.replace(
            base,
            status="held_out" if firing.variant == HOLDOUT else "fired",
            message_id=firing.message_id,
            decided_at=firing.fired_at,
            variant=firing.variant,
        )

    # --- records ------------------------------------------------------------------------

    def _enqueue(self, claim: str, firing: Mapping[str, Any], *, fresh: bool) -> None:
        """Queue a claim's deliveries: with the page's records for a claim just made,
        at once (only those missing) for a claim found made before a crash."""
        routes = self.handler.routes(str(firing["channel"]))
        if not routes:
            return
        now = self.handler.clock()
        if not fresh:
            enqueue(self.documents, claim=claim, firing=firing, routes=routes, now=now)
            return
        for kind, key, value in pending_deliveries(
            claim=claim, firing=firing, routes=routes, now=now
        ):
            self.writes.put(kind, key, value)

    def _record(self, key: str, outcome: Outcome) -> None:
        # An outcome is decided once: events decided before are skipped (handle), and
        # within a page the first decision stays.
        if not self.writes.holds(OUTCOME, key):
            self.writes.put(OUTCOME, key, msgspec.to_builtins(outcome))
            self._tallied.append(outcome)
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1

    def _set_timer(
        self,
        key: str,
        entry: EnabledTrigger,
        logged: Notified,
        due: dt.datetime,
        dedupe_key: str,
        reason: str | None,
    ) -> None:
        timer = Timer(
            trigger=entry.name,
            customer_id=logged.event.customer_id,
            dedupe_key=dedupe_key,
            due=due.astimezone(dt.UTC),
            position=logged.notification_id,
            event_id=logged.event.event_id,
            set_at=self.handler.clock(),
            reason=reason,
        )
        self.writes.put(TIMER, key, msgspec.to_builtins(timer))
        self.writes.put(TIMER_DUE, due_key(timer.trigger, timer.due, key), {})
        if self._next_due is None or timer.due < self._next_due:
            self._next_due = timer.due  # (an earlier entry it replaces is removed when due)

    def _drop_timer(self, key: str | None) -> None:
        # Its entry by due time stays, and is removed when it falls due (no read here).
        if key is not None:
            self.writes.delete(TIMER, key)

    def _sent(self, members: Iterable[str], now: dt.datetime) -> list[Sent]:
        found = self.writes.get_for(CONTACTS, list(members))
        return [
            Sent(channel=c.channel, at=c.at, transactional=False)
            for value in found.values()
            for c in msgspec.convert(value, Contacts).recent
            if now - c.at < CONTACT_MEMORY
        ]

    def _note_contact(self, firing: Firing) -> None:
        """Add a non-transactional firing to its customer key's ledger (idempotent)."""
        if firing.transactional:
            return
        key = firing.customer_id
        stored = self.writes.get_for(CONTACTS, [key]).get(key)
        ledger = msgspec.convert(stored, Contacts) if stored else Contacts()
        if any(c.message_id == firing.message_id for c in ledger.recent):
            return
        recent = tuple(c for c in ledger.recent if firing.fired_at - c.at < CONTACT_MEMORY)
        contact = Contact(message_id=firing.message_id, channel=firing.channel, at=firing.fired_at)
        self.writes.put(CONTACTS, key, msgspec.to_builtins(Contacts(recent=(*recent, contact))))

    # --- timers -------------------------------------------------------------------------

    def _first_owned(self, trigger: str) -> list[str]:
        """The first entry by due time of ``trigger`` whose timer is this pass's (any
        timer's, unpartitioned; a partition's engine passes over the others')."""
        cursor = f"{trigger}\x1f"
        batch = 1 if self.handler.partition is None else 50
        while True:
            entries = list(
                self.documents.get_records_after(
                    TIMER_DUE, cursor, until=f"{trigger}\x20", limit=batch
                )
            )
            if not entries or self.handler.partition is None:
                return entries
            owned = self._owned_entries(entries)
            if owned:
                return owned[:1]
            cursor = entries[-1]

    def _owned_entries(self, entries: Sequence[str]) -> list[str]:
        """Those of ``entries`` whose timer (still there) is a customer of this pass's
        partition; an entry whose timer is gone is anyone's (whoever reads it removes it)."""
        keys = {entry: entry.split("\x1f", 2)[2] for entry in entries}
        timers = self.writes.get_for(TIMER, list(dict.fromkeys(keys.values())))
        return [
            entry
            for entry, key in keys.items()
            if key not in timers or self._owns(str(timers[key]["customer_id"]))
        ]

    def _due_timers(
        self, now: dt.datetime, cursors: dict[str, str], seen: set[str]
    ) -> list[tuple[str, Timer]]:
        """The next timers due at ``now``, oldest first: of each enabled trigger, the
        next :data:`DUE_BATCH` entries by due time after its cursor (moved on), with what
        this page set and has not written yet. Each entry read is removed: its timer is
        decided now, and set again if it waits. An entry whose timer was since dropped or
        set for another time is only removed. A disabled trigger's timers are kept for
        when it is enabled again."""
        unwritten = {k: v for (kind, k), v in self.writes.changed.items() if kind == TIMER_DUE}
        entries: dict[str, str] = {}  # entry -> timer key
        for name, cursor in list(cursors.items()):
            low, high = f"{name}\x1f", _due_until(name, now)
            stored = list(
                self.documents.get_records_after(TIMER_DUE, cursor, until=high, limit=DUE_BATCH)
            )
            if stored:
                cursors[name] = stored[-1]
            else:
                del cursors[name]
            if self.handler.partition is not None:  # another partition's are left to it
                stored = self._owned_entries(stored)
            for entry in [*stored, *unwritten]:
                if (
                    low < entry <= high
                    and entry not in seen
                    and unwritten.get(entry, {}) is not None
                ):
                    entries[entry] = entry.split("\x1f", 2)[2]
        seen.update(entries)
        timers = self.writes.get_for(TIMER, list(dict.fromkeys(entries.values())))
        due: list[tuple[dt.datetime, str, Timer]] = []
        for entry, key in entries.items():
            value = timers.get(key)
            timer = None if value is None else msgspec.convert(value, Timer)
            self.writes.delete(TIMER_DUE, entry)
            if timer is None or timer.due != _due_of(entry):
                continue  # dropped, or set for another time (its own entry says when)
            due.append((timer.due, key, timer))
        return [(key, timer) for _, key, timer in sorted(due, key=lambda d: (d[0], d[1]))]

    def run_due_timers(self) -> None:
        """Decide again for every timer due now, oldest first (a batch at a time)."""
        self._cache.clear()
        if not self.pending():
            return
        now = self.handler.clock()
        cursors = {name: f"{name}\x1f" for name in self.handler.triggers}
        seen: set[str] = set()
        while cursors:
            for key, timer in self._due_timers(now, cursors, seen):
                entry = self.handler.triggers[timer.trigger]  # due ones are of enabled triggers
                found = self.handler.log.changes(timer.position - 1, 1, until=timer.position)
                if not found or type(found[0].event) is Forgotten:  # its customer was forgotten
                    self._drop_timer(key)
                    continue
                self.decided += 1
                self._decide(
                    entry,
                    found[0],
                    self.view(timer.customer_id, None),
                    origin=f"timer:{timer.position}:{timer.due.isoformat()}",
                    occasion=timer.due.isoformat(),
                    timer=timer,
                )
        self._due_known = False  # decided, dropped or set again: look again

    # --- the profile a decision sees ----------------------------------------------------

    def view(self, customer_id: str, position: int | None) -> ProfileView:
        """The customer's profile with every section folded at least up to ``position``
        (None: the log head)."""
        handler = self.handler
        graph = self.graph
        profile_id = graph.profile_of(customer_id)
        until = position if position is not None else handler.log.head()
        cached = self._cache.get(profile_id)
        if cached is None:
            members = graph.members(profile_id) or (customer_id,)
            stored = (
                handler.documents.get(profile_id, handler.datasets) if handler.datasets else None
            )
            sections: dict[str, Any] = {}
            positions: dict[str, int] = {}
            for name in handler.datasets:
                if stored is not None and name in stored.sections:
                    sections[name] = stored.sections[name]
                    positions[name] = stored.freshness[name].position
                else:
                    sections[name] = handler.projections[name].empty()
                    positions[name] = 0
            cached = _Cached(profile_id, tuple(members), sections, positions)
            self._cache[profile_id] = cached
        self._catch_up(cached, until)
        zone = customer_zone(cached.sections.get("attributes"), handler.policy.default_zone)
        return ProfileView(
            profile_id=profile_id,
            customer_ids=cached.members,
            sections=dict(cached.sections),
            timezone=zone,
        )

    def _catch_up(self, cached: _Cached, until: int) -> None:
        """Fold into each section behind ``until`` the profile's events it lacks."""
        handler = self.handler
        behind = [n for n, p in cached.positions.items() if p < until]
        if not behind:
            return
        topics = sorted({t for n in behind for t in handler.projections[n].topics})
        after = min(cached.positions[n] for n in behind)
        events = merged_changes(
            handler.log, cached.members, after=after, until=until, topics=topics
        )
        broken: set[str] = set()
        for logged in events:
            for name in behind:
                projection = handler.projections[name]
                if (
                    name in broken
                    or logged.notification_id <= cached.positions[name]
                    or logged.topic not in projection.topics
                ):
                    continue
                try:
                    cached.sections[name] = projection.fold(cached.sections[name], logged.event)
                except Exception:
                    # The projector dead-letters it; the decision sees the last good state.
                    broken.add(name)
        for name in behind:
            cached.positions[name] = until


def read_outcomes(documents: DocumentStore, customer_ids: Iterable[str]) -> list[Outcome]:
    """Every outcome recorded for these customer keys, oldest decision first."""
    found = [
        msgspec.convert(value, Outcome)
        for customer_id in customer_ids
        for value in documents.get_records(OUTCOME, f"{customer_id}\x1f").values()
    ]
    return sorted(found, key=lambda o: (o.decided_at, o.position, o.trigger))


def read_firings(documents: DocumentStore) -> list[Firing]:
    """Every message fired, in no set order."""
    return [msgspec.convert(v, Firing) for v in documents.get_records(FIRED).values()]


def read_messages(documents: DocumentStore, outcomes: Iterable[Outcome]) -> list[Firing]:
    """The messages the ``fired`` (and ``held_out``) outcomes claimed, in their order."""
    keys = [
        claim_key(o.trigger, o.customer_id, o.dedupe_key)
        for o in outcomes
        if o.status in ("fired", "held_out") and o.dedupe_key is not None
    ]
    found = documents.get_records_for(FIRED, keys)
    return [msgspec.convert(found[k], Firing) for k in dict.fromkeys(keys) if k in found]


def count_timers(documents: DocumentStore) -> int:
    return len(documents.get_records(TIMER))
