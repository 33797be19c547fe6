"""The application service and its composition root.

:func:`open_store` reads nothing but the settings it is given, checks every store URL
before it creates anything, builds the event log and the document store, and returns a
:class:`ProfileStore`: the one door the CLI, the HTTP API, the worker, the follower and
Python callers use. Behind it, every reader of the log runs through the consumer loop of
:mod:`profilestore.pipeline` with a handler of :mod:`profilestore.projector`. Nothing
connects to a database at import time.

Batch semantics of :meth:`ProfileStore.append`: every event of the batch is validated
first; if any is invalid, :class:`~profilestore.errors.InvalidEvent` names its index, the
field path and the reason, and nothing of the batch is appended. A valid batch commits in
one transaction; events already stored (same ``event_id``) are skipped and counted as
duplicates, so retrying a batch is always safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, ParamSpec, TypeVar, get_args

import msgspec

from profilestore import segment
from profilestore.audit import Auditor
from profilestore.collection import bulk_collection
from profilestore.config import Settings
from profilestore.contact import ContactPolicy, latest_grant
from profilestore.documents import (
    DatasetSchema,
    DocumentStore,
    Profile,
    RawProfile,
    open_document_store,
)
from profilestore.errors import (
    AmbiguousIdentifier,
    ConfigError,
    CustomerErased,
    CustomerNotFound,
    IdentifierNotFound,
    InvalidArgument,
    InvalidEvent,
    InvalidLink,
    LeaseHeld,
    LinkNotFound,
    NoDatasetSelected,
    NotEncrypted,
    ScoringUnavailable,
    StoreClosed,
    UnknownDataset,
)
from profilestore.eventlog import (
    AppendResult,
    EventLog,
    Notified,
    Subscription,
    check_log_url,
    event_json,
)
from profilestore.eventlog import open_log as open_log_url
from profilestore.events import (
    EVENT_TYPES,
    RESERVED_PREFIX,
    AnyEvent,
    ConsentChannel,
    ErasureReceipt,
    ErasureRecorded,
    Event,
    IdentityLinked,
    IdentityUnlinked,
    event_type_name,
)
from profilestore.experiment import Experiment, ExperimentReport, Exposure
from profilestore.experiment import report as report_experiment
from profilestore.firing import LEASE_KIND as TRIGGER_LEASE
from profilestore.firing import TARGET as TRIGGER_TARGET
from profilestore.firing import (
    Firing,
    Outcome,
    TriggerHandler,
    count_timers,
    read_firings,
    read_messages,
    read_outcomes,
)
from profilestore.identifiers import lookup_key
from profilestore.identity import (
    LINK_TOPICS,
    TARGET,
    IdentityGraph,
    IdentityHandler,
    Link,
    LinkRules,
    Routing,
    aprofile_of,
    graph_position,
    is_canonical,
    iter_links,
    merged_changes,
    profile_of,
)
from profilestore.mapper import Forgotten, topics_for
from profilestore.normalise import configure, is_blocked, policy_from_settings
from profilestore.outbox import (
    Courier,
    Delivery,
    DrainReport,
    destinations,
    list_deliveries,
    redrive,
)
from profilestore.outbox import Status as OutboxStatus
from profilestore.partitions import COUNT as PARTITION_COUNT
from profilestore.partitions import COUNT_KEY as PARTITION_COUNT_KEY
from profilestore.partitions import LEASE_KIND as PARTITION_LEASE
from profilestore.partitions import WORKER as WORKER_HEARTBEAT
from profilestore.partitions import (
    Partition,
    all_partitions,
    fix_count,
    partition_of,
    stored_count,
)
from profilestore.partitions import positions as partition_positions
from profilestore.pipeline import (
    Clock,
    Consumer,
    Leases,
    Live,
    PassReport,
    Progress,
    new_holder,
    utcnow,
)
from profilestore.privacy import (
    RECEIPTS,
    PlaintextCheck,
    chain_intact,
    events_in,
    identifiers_of,
    probes_of,
    search_files,
)
from profilestore.projection import Projection, check_projections, load_projection
from profilestore.projector import (
    ProjectionHandler,
    PromoteHandler,
    RebuildHandler,
    RegroupHandler,
    RetryHandler,
    StagingHandler,
)
from profilestore.replay import VerifyReport, choose_customers, profile_as_of, verify_profiles
from profilestore.runs import DeadLetter, Journal, RunRecord, Trigger
from profilestore.schedule import next_due, parse_cadence, zone
from profilestore.scorer import TARGET as SCORES
from profilestore.scorer import ScoreHandler, current_fit, fit_of, summaries
from profilestore.scoring import ScoreFit, Summary
from profilestore.tally import Tally
from profilestore.trigger import EnabledTrigger, check_needs, load_trigger, settings_of
from profilestore.verification import TASK as VERIFY_TASK
from profilestore.verification import verify_in_processes

log = logging.getLogger(__name__)
OUTBOX_TARGET = "outbox"
"""The courier's lease target (kind ``delivery``): one process delivers at a time."""
P = ParamSpec("P")
R = TypeVar("R")
_LEADING_FIELD = re.compile(r"^`([\w.]+)`")
GRAPH_WAIT_S = 0.01
"""How often a link or unlink checks whether the graph's keeper has caught up."""


def _validation_error(index: int, item: Any, error: msgspec.ValidationError) -> InvalidEvent:
    message = str(error)
    reason, sep, path = message.rpartition(" - at `")
    event_id = (
        item.get("event_id") if isinstance(item, Mapping) else getattr(item, "event_id", None)
    )
    if not sep:
        # Checks in __post_init__ carry no path; their messages start with the field name.
        named = _LEADING_FIELD.match(message)
        path = f"$.{named.group(1)}" if named else "$"
        return InvalidEvent(index, path, message, event_id if isinstance(event_id, str) else None)
    return InvalidEvent(
        index, path.rstrip("`"), reason, event_id if isinstance(event_id, str) else None
    )


def _held_key(kind: str, value: str) -> str:
    """The lookup key of an identifier someone may hold; a blocked one is not found."""
    key = lookup_key(kind, value)
    if is_blocked(kind, key):
        # Asked directly, not left to the documents: ones folded before the value was
        # blocked may still list it until the identities dataset is rebuilt.
        raise IdentifierNotFound(kind, value)
    return key


class EventValidator:
    """Turns client input (dicts, JSON bytes or Structs) into validated events."""

    def __init__(self) -> None:
        self._json = msgspec.json.Decoder(AnyEvent)
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._typed: dict[type[Event], msgspec.json.Decoder[Any]] = {}

    def validate(self, items: Iterable[Any], recorded_at: dt.datetime) -> list[Event]:
        """Every item as an event; the first invalid one raises :class:`InvalidEvent`."""
        return [self.checked(index, item, recorded_at) for index, item in enumerate(items)]

    def validate_each(
        self, items: Iterable[Any], recorded_at: dt.datetime
    ) -> tuple[list[tuple[int, Event]], list[InvalidEvent]]:
        """The valid items as events (with their index in ``items``), and what is wrong
        with each of the others."""
        events: list[tuple[int, Event]] = []
        rejected: list[InvalidEvent] = []
        for index, item in enumerate(items):
            try:
                events.append((index, self.checked(index, item, recorded_at)))
            except InvalidEvent as e:
                rejected.append(e)
        return events, rejected

    def checked(self, index: int, item: Any, recorded_at: dt.datetime) -> Event:
        """One item (the ``index``-th of its batch) as a valid event, or InvalidEvent."""
        try:
            event = self._one(item)
        except msgspec.ValidationError as e:
            raise _validation_error(index, item, e) from None
        except msgspec.DecodeError as e:
            raise InvalidEvent(index, "$", f"not valid JSON: {e}") from None
        if event.customer_id.startswith(RESERVED_PREFIX):
            raise InvalidEvent(
                index,
                "$.customer_id",
                f"may not start with {RESERVED_PREFIX!r}: it begins the ids of merged "
                "profiles; send the customer key",
                event.event_id,
            )
        return msgspec.structs.replace(event, recorded_at=recorded_at)

    def _one(self, item: Any) -> Event:
        if isinstance(item, bytes | str | msgspec.Raw):
            event: Event = self._json.decode(item)
            return event
        if isinstance(item, Event):
            # Struct constructors do not check constraints: a round trip through the
            # decoder does, so Python callers get the same validation as JSON clients.
            # An event read back from a log may be a lenient twin (see mapper.lenient_type):
            # it is checked as its catalogue class.
            checked_as = EVENT_TYPES.get(item.type_name, type(item))
            decoder = self._typed.get(checked_as)
            if decoder is None:
                decoder = self._typed[checked_as] = msgspec.json.Decoder(checked_as)
            checked: Event = decoder.decode(self._encoder.encode(item))
            return checked
        if isinstance(item, Mapping):
            converted: Event = msgspec.convert(item, AnyEvent)
            return converted
        raise msgspec.ValidationError(f"Expected an event object, got `{type(item).__name__}`")


@dataclasses.dataclass(frozen=True)
class PartialAppend:
    """What :meth:`ProfileStore.append_valid` did: the valid events appended (or found
    already stored), and why each of the others was refused."""

    appended: int
    duplicates: int
    duplicate_event_ids: list[str]
    rejected: list[InvalidEvent]


class Freshness(msgspec.Struct, frozen=True, kw_only=True):
    """How stale a dataset is: its position, and how far the log head is ahead of it."""

    position: int
    refreshed_at: dt.datetime | None
    events_behind: int
    """Log positions between the dataset and the head (0 when none is an event it reads)."""
    seconds_behind: float
    """Age of the oldest event the dataset has not applied yet (0 when current)."""


class DatasetStatus(msgspec.Struct, frozen=True, kw_only=True):
    dataset: str
    cadence: str
    last_run: RunRecord | None
    last_success_at: dt.datetime | None
    next_run: dt.datetime | None
    failed: bool
    error: str | None
    running_holder: str | None
    """The process holding the dataset's lease: a run (or the follower) in progress."""
    lag: Freshness
    dead_letters: int
    dead_letter_error: str | None
    version: int = 1
    """The projection version of the code running now."""
    built_version: int | None = None
    """The projection version that built the stored documents (None: never built)."""
    outdated: bool = False
    """The stored documents were built by another version: a rebuild is due."""


class SubjectExport(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    canonical_id: str
    keys: list[str]
    """Every customer key of the profile (its events are all in ``events``)."""
    consents: list[Any] = msgspec.field(default_factory=list)
    """Every contact decision on record (channel, purpose, granted, when, which event)."""
    exported_at: dt.datetime
    profile: Profile | None
    events: list[msgspec.Raw]
    trigger_outcomes: list[Outcome] = msgspec.field(default_factory=list)
    """Every trigger decision about the customer (``profilestore triggers log``)."""
    messages: list[Firing] = msgspec.field(default_factory=list)
    """Every message fired to the customer, with what it said."""
    erasure: Literal["none", "erased"] = "none"
    """"erased": the customer was forgotten on request; nothing else is held (README:
    Privacy)."""


class EngineStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The trigger engine: how far it has decided the log, who runs it, what waits."""

    enabled: list[str]
    position: int
    events_behind: int
    running_holder: str | None
    last_run: RunRecord | None
    failed: bool
    error: str | None
    timers: int
    """Decisions waiting for a moment (abandoned carts, birthdays, deferrals)."""
    pending_deliveries: int
    dead_letters: int


class PartitionStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One partition: the worker holding it, and how far behind the log head it is."""

    partition: int
    count: int
    holder: str | None
    """The worker holding the partition's lease (None: nobody; a worker takes it soon)."""
    positions: dict[str, int]
    """Per target (each folded dataset, ``trigger-engine``): its position in the partition."""
    events_behind: int
    """Log positions between the least of them and the head."""


class WorkerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A partitioned worker that wrote a heartbeat recently."""

    holder: str
    beat_at: dt.datetime
    partitions: list[int]


class GraphStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How far the identity graph has applied the log, and who keeps it."""

    position: int
    events_behind: int
    running_holder: str | None
    last_run: RunRecord | None
    failed: bool
    error: str | None


class KeyStatus(msgspec.Struct, frozen=True, kw_only=True):
    encrypted: bool
    key_encryption_key_id: str | None = None
    """An id derived from the KEK (never the key)."""
    key_store: str | None = None
    live: int = 0
    destroyed: int = 0


class ContactDecision(msgspec.Struct, frozen=True, kw_only=True):
    """May we contact this customer on this channel for this purpose now, and why."""

    customer_id: str
    canonical_id: str
    channel: str
    purpose: str
    allowed: bool
    reason: Literal["granted", "withdrawn", "no decision recorded"]
    decided_by: str | None = None
    """The event that made the decision (``None``: none, or one folded before consents
    named their events)."""
    decided_at: dt.datetime | None = None
    source: str | None = None


class TriggerListing(msgspec.Struct, frozen=True, kw_only=True):
    """A configured trigger, as ``profilestore triggers list`` shows it."""

    trigger: str
    enabled: bool
    channel: str
    purpose: str
    transactional: bool
    reads: list[str]
    description: str
    since: dt.datetime | None = None
    settings: dict[str, Any] = msgspec.field(default_factory=dict)


class LinkResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a link or unlink did: the profile the key belongs to now, and how many link
    events were appended (0: it was so already)."""

    profile_id: str
    appended: int


class ScoreExplanation(msgspec.Struct, frozen=True, kw_only=True):
    """A profile's scores with what made them: the fit they name and the rules."""

    customer_id: str
    canonical_id: str
    scores: Any
    fit: ScoreFit | None
    """The fit the scores name (None: not scored yet, or that fit was since dropped)."""
    rules: dict[str, Any]
    """``lifecycle`` and ``journey`` rules as configured now, with their version."""
    facts: dict[str, float]
    """Every fact the rules may test, as of now, from the engagement section."""


class IdentityExplanation(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    """The key asked about."""
    canonical_id: str
    """The profile it belongs to."""
    keys: list[str]
    identifiers: list[Any]
    links: list[Link]
    """Every link naming a key of the profile: active, retracted and refused."""


ERASED_REASON = "the customer was forgotten (erased on request): their events are refused"
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


class _Gate:
    """Counts calls in flight, so closing waits for them and refuses new ones.

    A SQLite connection (read through a memory map) closed by one thread while another
    is inside it crashes the process; every call through the door holds the gate, and
    :meth:`ProfileStore.close` frees the stores only once no call is inside.
    """

    def __init__(self) -> None:
        # A plain lock under the condition (its default is reentrant, and slower): enter
        # and exit hold it for one counter update each, never nested.
        self._lock = threading.Condition(threading.Lock())
        self._active = 0
        self._closed = False

    def enter(self) -> None:
        with self._lock:
            if self._closed:
                raise StoreClosed()
            self._active += 1

    def exit(self) -> None:
        with self._lock:
            self._active -= 1
            if not self._active:
                self._lock.notify_all()

    def close(self, timeout: float) -> bool:
        """Refuse new calls; True once none is in flight (False: still busy at timeout)."""
        with self._lock:
            self._closed = True
            return self._lock.wait_for(lambda: self._active == 0, timeout)

    @property
    def closed(self) -> bool:
        return self._closed


def _guarded(method: Callable[P, R]) -> Callable[P, R]:
    """Run ``method`` inside the store's gate (see :class:`_Gate`)."""

    @functools.wraps(method)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        gate: _Gate = args[0]._gate  # type: ignore[attr-defined]
        gate.enter()
        try:
            return method(*args, **kwargs)
        finally:
            gate.exit()

    return guarded


class ProfileStore:
    """The one door: append events, refresh and rebuild datasets, read profiles.

    The CLI, the HTTP API, the worker and the follower use nothing else; the log, the
    documents, the consumer loop and the run journal are private. Every read names
    customers through :meth:`resolve` (or :meth:`aresolve`), where identity redirects
    apply; writes keep the customer keys the client sent (a merge routes their events).
    """

    def __init__(
        self,
        settings: Settings,
        log: EventLog,
        documents: DocumentStore,
        projections: Mapping[str, Projection[Any]],
        *,
        clock: Clock = utcnow,
        triggers: Mapping[str, EnabledTrigger] | None = None,
    ) -> None:
        self.settings = settings
        self._projections = dict(projections)
        self.projections: Mapping[str, Projection[Any]] = MappingProxyType(self._projections)
        """The configured datasets' projections, in config order (read-only)."""
        self._triggers = dict(triggers or {})
        self.triggers: Mapping[str, EnabledTrigger] = MappingProxyType(self._triggers)
        """The enabled triggers, in config order (read-only; see :func:`load_triggers`)."""
        self._policy = ContactPolicy(settings.contact)
        self._courier: Courier | None = None
        self.experiments: Mapping[str, Experiment] = MappingProxyType(
            {n: Experiment.from_settings(n, e) for n, e in settings.experiments.items()}
        )
        """The configured experiments, by name."""
        self.tally = Tally()
        """What the trigger engine and the courier did in this process (``/metrics``)."""
        self._transport: Any = None
        """An httpx transport for the courier (tests: a mock one); None: the network."""
        self.clock = clock
        self.timezone = zone(settings.schedule.timezone)
        self.holder = new_holder()
        """Who this store's leases name: host, process and a random suffix."""
        self._log = log
        self._documents = documents
        self._validator = EventValidator()
        self._journal = Journal(documents)
        self._leases = Leases(
            documents, self.holder, dt.timedelta(seconds=settings.schedule.lease_ttl_s), clock
        )
        self._consumer = Consumer(
            log, self._leases, self._journal, clock=clock, page_size=settings.projector.page_size
        )
        self._cache_sections = settings.projector.cache_sections
        self._rules = LinkRules.from_settings(settings.identity)
        self._routing = Routing()
        self._gate = _Gate()

    def _handler(
        self,
        kind: type[ProjectionHandler] = ProjectionHandler,
        partition: Partition | None = None,
    ) -> ProjectionHandler:
        return kind(
            self._log,
            self._documents,
            self._journal,
            self._projections,
            clock=self.clock,
            cache_sections=self._cache_sections,
            routing=self._routing,
            partition=partition,
            page_size=self._consumer.page_size,
        )

    # --- partitions ---------------------------------------------------------------------

    @_guarded
    def partition_count(self) -> int:
        """How many partitions customers are split into: the configured count, stored the
        first time it is more than one (another count later is refused, naming the fix)."""
        if self._documents.read_only:
            return stored_count(self._documents) or 1
        return fix_count(self._documents, self.settings.schedule.partitions)

    @_guarded
    def set_partition_count(self, count: int) -> int:
        """Split the store into ``count`` partitions from now on (the config must say the
        same). Refused while a partitioned worker is alive or holds a partition: every
        new partition starts from the least position of the old ones, which is safe only
        when no worker advances an old one meanwhile. Returns the previous count."""
        if not 1 <= count <= 1024:
            raise InvalidArgument("count", "must be 1 to 1024")
        alive = self.workers()
        previous = stored_count(self._documents) or 1
        held = [
            p.index
            for p in all_partitions(previous)
            if self._leases.holder_of(str(p.index), kind=PARTITION_LEASE)
        ]
        if alive or held:
            raise InvalidArgument(
                "count",
                f"cannot change while {len(alive)} worker(s) run and {len(held)} partition(s) "
                "are held: stop every worker (or wait for their leases to lapse) first",
            )
        self._documents.put_record(PARTITION_COUNT, PARTITION_COUNT_KEY, {"count": count})
        return previous

    def _partitions(self, indexes: Sequence[int] | None) -> list[Partition | None]:
        """The partitions a run covers: [None] (every customer, one position) on a store
        that is not partitioned, else each one of ``indexes`` (default: all)."""
        count = self.partition_count()
        if count == 1:
            return [None]
        chosen = range(count) if indexes is None else sorted(set(indexes))
        for index in chosen:
            if not 0 <= index < count:
                raise InvalidArgument("partition", f"must be 0 to {count - 1}")
        return [Partition(i, count, self._log.stream_of) for i in chosen]

    def partition_of(self, profile_id: str) -> int:
        """The partition of a profile (a customer key alone, or a merged profile's id)."""
        return partition_of(profile_id, self.partition_count(), self._log.stream_of)

    @contextlib.contextmanager
    def _every_partition(self, names: Sequence[str]) -> Iterator[None]:
        """Hold every partition's lease of ``names`` (a promotion swaps whole datasets:
        no partition may write with the old fold meanwhile); LeaseHeld if one is held."""
        count = self.partition_count()
        kinds = [f"dataset#{p.label}" for p in all_partitions(count)] if count > 1 else []
        taken: list[str] = []
        try:
            for kind in kinds:
                self._leases.acquire(names, required=True, kind=kind)
                taken.append(kind)
            yield
        finally:
            for kind in taken:
                self._leases.release(names, kind=kind)

    def take_partition(self, index: int) -> bool:
        """Take a partition's lease for this worker; False while another holds it."""
        return not self._leases.acquire([str(index)], required=False, kind=PARTITION_LEASE)

    def renew_partitions(self, indexes: Sequence[int]) -> list[int]:
        """Renew the partitions' leases; returns those lost (another worker took them)."""
        lost = []
        for index in indexes:
            try:
                self._leases.renew([str(index)], kind=PARTITION_LEASE)
            except LeaseHeld:
                lost.append(index)
        return lost

    def release_partition(self, index: int) -> None:
        self._leases.release([str(index)], kind=PARTITION_LEASE)

    def heartbeat(self, partitions: Sequence[int]) -> None:
        """Say this worker is alive and which partitions it holds."""
        self._documents.put_record(
            WORKER_HEARTBEAT,
            self.holder,
            {"beat_at": self.clock().isoformat(), "partitions": sorted(partitions)},
        )

    def leave(self) -> None:
        """Take this worker's heartbeat away (it stopped): the others rebalance at once."""
        self._documents.delete_record(WORKER_HEARTBEAT, self.holder)

    @_guarded
    def workers(self) -> list[WorkerStatus]:
        """The partitioned workers alive: a heartbeat within the lease time to live."""
        now = self.clock()
        ttl = dt.timedelta(seconds=self.settings.schedule.lease_ttl_s)
        found = []
        for holder, record in sorted(self._documents.get_records(WORKER_HEARTBEAT).items()):
            beat_at = dt.datetime.fromisoformat(record["beat_at"])
            if now - beat_at < ttl:
                found.append(
                    WorkerStatus(holder=holder, beat_at=beat_at, partitions=record["partitions"])
                )
        return found

    @_guarded
    def partition_status(self) -> list[PartitionStatus]:
        """Per partition: who holds it and how far behind the head it is (empty: the store
        is not partitioned)."""
        count = self.partition_count()
        if count == 1:
            return []
        head = self._log.head()
        targets = self._folded(list(self.projections))
        if self.triggers:
            targets.append(TRIGGER_TARGET)
        tracked = {t: partition_positions(self._documents, t, count) for t in targets}
        rows = []
        for partition in all_partitions(count):
            found = {t: tracked[t][partition.index] for t in targets}
            rows.append(
                PartitionStatus(
                    partition=partition.index,
                    count=count,
                    holder=self._leases.holder_of(str(partition.index), kind=PARTITION_LEASE),
                    positions=found,
                    events_behind=head - min(found.values(), default=head),
                )
            )
        return rows

    # --- identity -----------------------------------------------------------------------

    def _graph(self) -> IdentityGraph:
        return IdentityGraph(self._documents)

    def resolve(self, customer_id: str) -> str:
        """The id of the profile ``customer_id`` belongs to now: itself, or the canonical id
        of the profile its key was merged into (see :mod:`profilestore.identity`).

        Every read goes through here (or :meth:`aresolve`, its twin for an event loop):
        identity redirects apply in this one place.
        """
        if self._log.is_erased(customer_id):
            raise CustomerErased()
        return profile_of(self._documents, customer_id)

    async def aresolve(self, customer_id: str) -> str:
        """:meth:`resolve` for an event loop (the redirect read through the async client)."""
        if self._log.is_erased(customer_id):
            raise CustomerErased()
        return await aprofile_of(self._documents, customer_id)

    def members(self, profile_id: str) -> tuple[str, ...]:
        """The customer keys whose events fold into a profile (() for none)."""
        return self._graph().members(profile_id)

    @_guarded
    def resolve_identity(self, *, trigger: Trigger = "manual", rounds: int = 10) -> PassReport:
        """Bring the identity graph up to the log head: apply new links, run the rules, and
        apply the links the rules appended (a few rounds at most). Skipped (the report's
        ``skipped_locked``) while another process keeps the graph (a follower)."""
        handler = IdentityHandler(self._log, self._documents, self._rules, clock=self.clock)
        report = self._consumer.run(handler, [TARGET], trigger=trigger)
        for _ in range(rounds - 1):
            if report.skipped_locked or not report.released.get(TARGET):
                break
            report = self._consumer.run(handler, [TARGET], trigger=trigger)
        return report

    @_guarded
    def identity_status(self) -> GraphStatus:
        """The identity graph's position, lag, holder and last run (``status`` shows it)."""
        tracked = self._documents.tracking(TARGET)
        position = tracked.position if tracked else 0
        last = self._journal.last_run(TARGET)
        failure = self._journal.last_failure(TARGET)
        failed = last is not None and last.status == "failed"
        return GraphStatus(
            position=position,
            events_behind=max(0, self._log.head() - position),
            running_holder=self._leases.holder_of(TARGET, kind="graph"),
            last_run=last,
            failed=failed,
            error=failure.error if failed and failure else None,
        )

    def live_identity(self, *, batch: int) -> Live:
        """The identity graph's consumer, kept running by the follower."""
        handler = IdentityHandler(self._log, self._documents, self._rules, clock=self.clock)
        return self._consumer.live(handler, [TARGET], batch=batch, guard=self._entered)

    @_guarded
    def apply_identity(self, datasets: Sequence[str] | None = None) -> PassReport:
        """Regroup the profiles of ``datasets`` as the identity graph says now, without
        waiting for their next refresh. Datasets another process holds are skipped (its
        pass applies the changes itself). On a partitioned store, per partition: a regroup
        writes unguarded, so it must hold the lease the partition's writers hold."""
        report: PassReport | None = None
        for partition in self._partitions(None):
            ran = self._consumer.run(
                self._handler(RegroupHandler, partition),
                self._folded(self.datasets(datasets)),
                trigger="manual",
            )
            report = ran if report is None else _merged(report, ran)
        assert report is not None
        return report

    def _current_graph(self) -> IdentityGraph:
        """The graph once it has applied the log up to its head as it is now.

        Link and unlink decide on it (already linked? which links to retract? the new
        link's generation, in its event id), so it must hold every call made before: a
        graph kept by another process (a follower, another call) may not have applied the
        last link yet, and deciding on it would lose a relink after an unlink (the graph
        still says linked: nothing appended) or refuse an unlink of a link just made. We
        catch it up ourselves, else wait for its keeper; a keeper that died lets its lease
        lapse within the lease's time to live, and then we take over.
        """
        head = self._log.head()
        deadline = time.monotonic() + self._leases.ttl.total_seconds() + 1
        while True:
            report = self.resolve_identity()
            if not report.skipped_locked or graph_position(self._documents) >= head:
                return self._graph()
            if time.monotonic() > deadline:
                holder = self._leases.holder_of(TARGET, kind="graph")
                raise LeaseHeld("the identity graph", holder or "another process")
            time.sleep(GRAPH_WAIT_S)

    def _catch_up_identity(self) -> None:
        """Apply what a link or unlink just appended: the graph (ours, or its keeper's,
        waited for), then the datasets we can lease (a follower regroups its own)."""
        self._current_graph()
        self.apply_identity()

    def _known_key(self, key: str, name: str) -> None:
        if is_canonical(key):
            raise InvalidLink(name, "is the id of a merged profile; give one of its customer keys")
        if not self._log.stream(key, limit=1):
            raise InvalidLink(name, "no event names this customer key")

    @_guarded
    def link(self, key: str, other: str, *, actor: str, reason: str | None = None) -> LinkResult:
        """Make two customer keys one profile (an operator's link). Idempotent: keys already
        linked to each other append nothing. The merged profile is readable on return (unless
        another process holds the graph: its follower applies it within moments)."""
        self._known_key(key, "key")
        self._known_key(other, "other")
        if key == other:
            raise InvalidLink("other", "is the same customer key; a key is not linked to itself")
        graph = self._current_graph()
        between = [link for link in graph.links_of(key) if link.joins(key) == other]
        if any(link.status == "active" for link in between):
            return LinkResult(profile_id=graph.profile_of(key), appended=0)
        # Recorded even when another link already joins them: an operator's word keeps
        # them together should that other link be retracted.
        generation = len(between)
        event = self._validator.validate(
            [
                IdentityLinked(
                    event_id="link-" + _digest("operator", key, other, str(generation)),
                    customer_id=key,
                    other=other,
                    occurred_at=self.clock(),
                    source="profilestore.operator",
                    actor=actor,
                    reason=reason,
                )
            ],
            self.clock(),
        )
        appended = self._log.append(event).appended
        self._catch_up_identity()
        return LinkResult(profile_id=self.resolve(key), appended=appended)

    @_guarded
    def unlink(
        self, key: str, other: str | None = None, *, actor: str, reason: str | None = None
    ) -> LinkResult:
        """Retract the links between two keys; with no ``other``, every link of ``key`` (it
        is split out of its profile). Idempotent: nothing to retract is an error only if no
        link ever joined them; already retracted ones append nothing."""
        self._known_key(key, "key")
        if other is not None:
            self._known_key(other, "other")
        graph = self._current_graph()
        links = [
            link
            for link in graph.links_of(key)
            if link.status != "refused" and (other is None or link.joins(key) == other)
        ]
        if not links:
            raise LinkNotFound()
        active = [link for link in links if link.status == "active"]
        now = self.clock()
        events = [
            IdentityUnlinked(
                event_id="unlink-" + _digest(link.id),
                customer_id=key,
                other=link.joins(key),
                link_id=link.id,
                occurred_at=now,
                source="profilestore.operator",
                actor=actor,
                reason=reason,
            )
            for link in active
        ]
        appended = self._log.append(self._validator.validate(events, now)).appended if events else 0
        self._catch_up_identity()
        return LinkResult(profile_id=self.resolve(key), appended=appended)

    @_guarded
    def explain(self, customer_id: str) -> IdentityExplanation:
        """A profile's keys, identifiers and links (active, retracted and refused), each
        with its rule or operator, evidence, time and position."""
        profile_id = self.resolve(customer_id)
        graph = self._graph()
        members = graph.members(profile_id)
        if not members:
            raise CustomerNotFound(customer_id)
        found = self._documents.get(
            profile_id, ["identities"] if "identities" in self.projections else []
        )
        identifiers: list[Any] = []
        if found is not None and "identities" in found.sections:
            identifiers = list(getattr(found.sections["identities"], "identifiers", ()))
        links = sorted(iter_links(graph, members), key=lambda link: (link.position, link.id))
        return IdentityExplanation(
            customer_id=customer_id,
            canonical_id=profile_id,
            keys=list(members),
            identifiers=identifiers,
            links=links,
        )

    # --- triggers -------------------------------------------------------------------------

    def _trigger_handler(self, partition: Partition | None = None) -> TriggerHandler:
        delivery = self.settings.delivery
        return TriggerHandler(
            self._log,
            self._documents,
            self.projections,
            self.triggers,
            self._policy,
            clock=self.clock,
            routes=lambda channel: destinations(delivery, channel),
            tally=self.tally,
            experiments={e.trigger: e for e in self.experiments.values()},
            partition=partition,
        )

    @_guarded
    def experiment_report(self, name: str) -> ExperimentReport:
        """Per variant and the holdout: customers, conversions (an order within the
        window after the firing), the rate and its 95% interval."""
        experiment = self.experiments.get(name)
        if experiment is None:
            raise InvalidArgument(
                "experiment", f"is not configured; known: {', '.join(self.experiments) or 'none'}"
            )
        exposures = [
            Exposure(customer_id=f.customer_id, arm=f.variant, at=f.fired_at)
            for f in read_firings(self._documents)
            if f.experiment == name and f.variant is not None
        ]
        graph = self._graph()

        def members_of(key: str) -> Sequence[str]:
            return graph.members(graph.profile_of(key)) or (key,)

        return report_experiment(self._log, experiment, exposures, members_of)

    # --- the outbox -----------------------------------------------------------------------

    def _open_courier(self) -> Courier:
        if self._courier is None:
            file = self.settings.delivery.file
            self._courier = Courier(
                self._documents,
                self.settings.delivery,
                file=Path(self.settings.url(file)) if file else None,
                clock=self.clock,
                transport=self._transport,
                tally=self.tally,
            )
        return self._courier

    @_guarded
    def deliver(self, limit: int = 1000) -> DrainReport | None:
        """Deliver the messages due (webhooks, the file); None while another process
        delivers (one at a time, under the ``delivery`` lease)."""
        if self._leases.acquire([OUTBOX_TARGET], required=False, kind="delivery"):
            return None
        try:
            return self._open_courier().drain(limit)
        finally:
            self._leases.release([OUTBOX_TARGET], kind="delivery")

    @_guarded
    def outbox(self, status: OutboxStatus = "pending") -> list[Delivery]:
        """The deliveries ``pending`` (with their attempts), ``dead`` or ``delivered``."""
        return list_deliveries(self._documents, status)

    @_guarded
    def redrive(self, message_ids: Sequence[str] | None = None) -> int:
        """Queue dead letters again (all, or those of ``message_ids``), enabling their
        endpoints again; returns how many."""
        return redrive(self._documents, message_ids, self.clock())

    @_guarded
    def run_triggers(
        self,
        *,
        trigger: Trigger = "manual",
        until: int | None = None,
        progress: Progress | None = None,
    ) -> PassReport:
        """Decide every enabled trigger on the events recorded since the engine's last
        run (up to the log head now), then the timers due; skipped (``skipped_locked``)
        while another process runs the engine. The identity graph is brought up to date
        first, so a merged customer is decided as one."""
        if not self.triggers:
            head = self._log.head()
            return PassReport([], head, head)
        self.resolve_identity(trigger=trigger)
        report: PassReport | None = None
        for partition in self._partitions(None):
            ran = self._consumer.run(
                self._trigger_handler(partition),
                [TRIGGER_TARGET],
                trigger=trigger,
                until=until,
                progress=progress,
            )
            report = ran if report is None else _merged(report, ran)
        assert report is not None
        return report

    def live_triggers(self, *, batch: int, partition: int | None = None) -> Live | None:
        """The trigger engine's consumer, kept running by the follower (None: no trigger
        is enabled); with ``partition``, of that partition's customers only."""
        if not self.triggers:
            return None
        (chosen,) = [None] if partition is None else self._partitions([partition])
        return self._consumer.live(
            self._trigger_handler(chosen), [TRIGGER_TARGET], batch=batch, guard=self._entered
        )

    def trigger_catalogue(self) -> list[TriggerListing]:
        """Every configured trigger (enabled or not), in config order."""
        rows = []
        for name, entry in self.settings.triggers.items():
            enabled = self.triggers.get(name)
            trigger = (
                enabled.trigger
                if enabled
                else load_trigger(entry.trigger, source="config", path=f"triggers.{name}.trigger")
            )
            rows.append(
                TriggerListing(
                    trigger=name,
                    enabled=enabled is not None,
                    channel=trigger.channel,
                    purpose=trigger.purpose,
                    transactional=trigger.transactional,
                    reads=[event_type_name(c) for c in trigger.reads],
                    description=trigger.description,
                    since=entry.since,
                    settings=msgspec.to_builtins(enabled.settings) if enabled else entry.settings,
                )
            )
        return rows

    def trigger_topics(self) -> list[str]:
        """The event topics the enabled triggers read (a follower is woken by them too)."""
        return sorted({t for entry in self.triggers.values() for t in entry.trigger.topics})

    @_guarded
    def trigger_log(self, customer_id: str) -> list[Outcome]:
        """Every trigger decision recorded for the customer (every key of a merged
        profile): fired, duplicate, deferred or waiting until when, suppressed and why,
        cancelled, failed; oldest first."""
        profile_id = self.resolve(customer_id)
        members = self._graph().members(profile_id) or (profile_id,)
        return read_outcomes(self._documents, members)

    @_guarded
    def trigger_status(self) -> EngineStatus:
        """The engine's position, lag, holder, last run, timers and outbox (``status``)."""
        tracked = self._documents.tracking(TRIGGER_TARGET)
        position = tracked.position if tracked else 0
        last = self._journal.last_run(TRIGGER_TARGET)
        failure = self._journal.last_failure(TRIGGER_TARGET)
        failed = last is not None and last.status == "failed"
        return EngineStatus(
            enabled=list(self.triggers),
            position=position,
            events_behind=max(0, self._log.head() - position),
            running_holder=self._leases.holder_of(TRIGGER_TARGET, kind=TRIGGER_LEASE),
            last_run=last,
            failed=failed,
            error=failure.error if failed and failure else None,
            timers=count_timers(self._documents),
            pending_deliveries=len(list_deliveries(self._documents, "pending")),
            dead_letters=len(list_deliveries(self._documents, "dead")),
        )

    @_guarded
    def triggers_running(self) -> str | None:
        """The process running the trigger engine now, if any."""
        return self._leases.holder_of(TRIGGER_TARGET, kind=TRIGGER_LEASE)

    # --- writing ----------------------------------------------------------------------

    @_guarded
    def append(self, events: Iterable[Any]) -> AppendResult:
        """Validate and append a batch, all or nothing (see the module docstring)."""
        validated = self._validator.validate(events, self.clock())
        return self._append_validated(validated)

    @_guarded
    def append_valid(self, events: Iterable[Any]) -> PartialAppend:
        """Validate each event alone and append the valid ones, in one transaction.

        For sources whose clients would drop a whole batch on one error (the Segment
        endpoints): an invalid event is returned in ``rejected`` (its index in
        ``events``, field path and reason), not raised, and its valid siblings are
        stored. Retrying is as safe as with :meth:`append` (duplicates are skipped).
        """
        indexed, rejected = self._validator.validate_each(events, self.clock())
        validated = [event for _, event in indexed]
        result = self._log.append(validated, skip_erased=True) if validated else AppendResult(0, 0)
        if result.erased_event_ids:
            # A forgotten customer's events are refused, not stored (README: Privacy).
            erased = set(result.erased_event_ids)
            rejected += [
                InvalidEvent(index, "$.customer_id", ERASED_REASON, event.event_id)
                for index, event in indexed
                if event.event_id in erased
            ]
            rejected.sort(key=lambda e: e.index)
        return PartialAppend(
            appended=result.appended,
            duplicates=result.duplicates,
            duplicate_event_ids=result.duplicate_event_ids,
            rejected=rejected,
        )

    @_guarded
    def append_segment(
        self, messages: Sequence[Any], received: segment.Received, call: segment.Call | None = None
    ) -> tuple[segment.SegmentResult, list[str]]:
        """Map Segment Spec messages to events and append the valid ones (see
        :mod:`profilestore.segment`): the answer, and each message's call (for metrics).
        ``call`` is the one a single-call endpoint implies; None reads each ``type``."""
        mapped = segment.map_batch(messages, received, call)
        result = self.append_valid(mapped.events)
        answer = mapped.result(result.appended, result.duplicates, result.rejected)
        return answer, mapped.calls

    def _append_validated(self, validated: list[Event]) -> AppendResult:
        return self._log.append(validated)

    # --- projections ------------------------------------------------------------------

    def datasets(self, names: Sequence[str] | None = None) -> list[str]:
        if names is None:
            return list(self.projections)
        for name in names:
            if name not in self.projections:
                raise UnknownDataset(name, list(self.projections))
        return list(names)

    def _folded(self, names: Sequence[str]) -> list[str]:
        """The datasets of ``names`` folded from the log (not derived, like the scores)."""
        return [n for n in names if not self.projections[n].derived]

    def _folded_projections(self) -> dict[str, Projection[Any]]:
        return {n: p for n, p in self.projections.items() if not p.derived}

    def _selection(self, datasets: Sequence[str] | None) -> list[str] | None:
        """The datasets a read asked for: None for all; a selection naming none is an error."""
        if datasets is None:
            return None
        if not datasets:
            raise NoDatasetSelected(list(self.projections))
        return self.datasets(datasets)

    def cadence(self, dataset: str) -> str:
        """How often ``dataset`` is refreshed: its config line, else its module's default."""
        configured = self.settings.datasets[self.datasets([dataset])[0]].cadence
        return configured or self.projections[dataset].default_refresh

    @_guarded
    def refresh(
        self,
        datasets: Sequence[str] | None = None,
        *,
        progress: Progress | None = None,
        trigger: Trigger = "manual",
        until: int | None = None,
        partitions: Sequence[int] | None = None,
    ) -> PassReport:
        """Fold new events into ``datasets`` now, up to the log head as it is now.

        Each dataset is refreshed under its lease: one held by another process (a
        scheduled run, the follower) is skipped and listed in ``skipped_locked``. On a
        partitioned store each partition (of ``partitions``, default all) is a run of its
        own under its own lease (``carts#2/8`` when skipped). Each
        refreshed dataset gets a run record (see ``status``). The identity graph is brought
        up to date first (links regroup profiles before their events are folded).
        """
        names = self.datasets(datasets)
        self.resolve_identity(trigger=trigger)
        report: PassReport | None = None
        for partition in self._partitions(partitions):
            ran = self._consumer.run(
                self._handler(partition=partition),
                self._folded(names),
                trigger=trigger,
                until=until,
                progress=progress,
            )
            if partition is not None:
                ran.skipped_locked = [f"{n}#{partition.label}" for n in ran.skipped_locked]
            report = ran if report is None else _merged(report, ran)
        assert report is not None
        _derived_counts(report, names, self.projections)
        if SCORES in names and datasets is not None:
            # Scores are computed, not folded: asked for by name (the schedule, the CLI),
            # they are scored now; a refresh of everything leaves them to their schedule.
            scored = self.score(trigger=trigger)
            report.datasets.append(SCORES)
            report.sections_written[SCORES] = scored.sections_written.get(SCORES, 0)
            report.skipped_locked.extend(scored.skipped_locked)
        return report

    @_guarded
    def retry_dead_letters(self, dataset: str) -> tuple[int, int]:
        """Refold the customers parked by poison events; returns (released, still failing)."""
        name = self.datasets([dataset])[0]
        if self.projections[name].derived:
            return 0, 0  # computed, never folded: no dead letter
        # Every partition's lease too: a partition's pass keeps its parked customers in
        # memory, so none may run while they are released.
        with self._every_partition([name]):
            report = self._consumer.run(
                self._handler(RetryHandler), [name], trigger="manual", required=True
            )
        return report.released.get(name, 0), report.dead_letters.get(name, 0)

    @_guarded
    def rebuild(
        self, datasets: Sequence[str] | None = None, *, progress: Progress | None = None
    ) -> PassReport:
        """Refold ``datasets`` from the whole log into staging, then swap them in.

        Lookups keep reading the old sections until the swap. An event that cannot be
        folded is dead-lettered (``report.dead_letters``) and its customer parked in the
        new documents, as a refresh would; the rebuild finishes, and its letters replace
        the live ones (see :mod:`profilestore.projector`). Events appended meanwhile are
        folded by a refresh right after.
        """
        names = self._folded(self.datasets(datasets))
        if datasets is not None and SCORES in self.datasets(datasets):
            self.score(trigger="rebuild")  # named: scored again (nothing to refold)
        self.resolve_identity(trigger="rebuild")
        # The staging area is also a background rebuild's: hold its lease too.
        self._leases.acquire(names, required=True, kind="rebuild")
        try:
            with self._every_partition(names):
                report = self._consumer.run(
                    self._handler(RebuildHandler),
                    names,
                    trigger="rebuild",
                    required=True,
                    progress=progress,
                )
        finally:
            self._leases.release(names, kind="rebuild")
        self.refresh(names, trigger="rebuild")
        _derived_counts(report, self.datasets(datasets), self.projections)
        return report

    @_guarded
    def build_staging(
        self, datasets: Sequence[str], *, progress: Progress | None = None
    ) -> PassReport:
        """The first half of a background rebuild: refold ``datasets`` into staging under
        their ``rebuild`` leases, while the live documents keep being refreshed."""
        return self._consumer.run(
            self._handler(StagingHandler),
            self._folded(self.datasets(datasets)),
            trigger="rebuild",
            required=True,
            progress=progress,
        )

    @_guarded
    def promote(self, datasets: Sequence[str]) -> PassReport:
        """The second half: swap each built staging area in and fold what the live
        dataset had meanwhile, under the live lease (LeaseHeld while another holds it)."""
        names = self._folded(self.datasets(datasets))
        with self._every_partition(names):
            return self._consumer.run(
                self._handler(PromoteHandler), names, trigger="rebuild", required=True
            )

    @_guarded
    def built_versions(self) -> dict[str, int | None]:
        """Per dataset, the projection version that built its stored documents (None: never
        built). Documents built before versions were recorded count as version 1."""
        recorded = self._journal.built_versions()
        found: dict[str, int | None] = {}
        for name in self.projections:
            if name in recorded:
                found[name] = recorded[name]
            else:
                found[name] = 1 if self._documents.tracking(name) is not None else None
        return found

    def outdated(self) -> list[str]:
        """Datasets whose stored documents another projection version built."""
        built = self.built_versions()
        return [
            name
            for name, projection in self.projections.items()
            if built[name] is not None
            and built[name] != projection.version
            and not projection.derived
        ]

    def live(self, datasets: Sequence[str], *, batch: int, partition: int | None = None) -> Live:
        """A consumer of ``datasets`` kept running; the follower decides when it steps.
        With ``partition``, of that partition's customers only (None: every customer,
        from the datasets' plain positions)."""
        (chosen,) = [None] if partition is None else self._partitions([partition])
        return self._consumer.live(
            self._handler(partition=chosen),
            self._folded(self.datasets(datasets)),
            batch=batch,
            guard=self._entered,
        )

    @_guarded
    def subscribe(self, datasets: Sequence[str], *, triggers: bool = False) -> Subscription | None:
        """Notifications of new events of ``datasets`` (and, with ``triggers``, of the
        enabled triggers), to wake a follower; None where the log has no subscription
        (SQLite: poll). Iterate it; ``stop()`` ends it."""
        topics = {t for n in self.datasets(datasets) for t in self.projections[n].topics}
        topics.update(LINK_TOPICS)  # a link regroups profiles: wake for it too
        if triggers:
            topics.update(self.trigger_topics())
        return self._log.subscribe(self._log.head(), sorted(topics))

    # --- scores -------------------------------------------------------------------------

    def _scoring(self, *, refit: bool, trigger: Trigger, required: bool) -> PassReport:
        if SCORES not in self.projections:
            raise UnknownDataset(SCORES, list(self.projections))
        # Scores are computed from engagement: bring it up to the log first.
        if "engagement" in self.projections:
            self.refresh(["engagement"], trigger=trigger)
        handler = ScoreHandler(self._documents, self.settings.scores, clock=self.clock, refit=refit)
        return self._consumer.run(handler, [SCORES], trigger=trigger, required=required)

    @_guarded
    def score(self, *, trigger: Trigger = "manual", required: bool = False) -> PassReport:
        """Score every profile with the current fit (fitting one if there is none), into a
        staging area swapped in at once (see :mod:`profilestore.scorer`). Skipped (listed in
        ``skipped_locked``) while another process scores, unless ``required``."""
        return self._scoring(refit=False, trigger=trigger, required=required)

    @_guarded
    def fit_scores(self, *, trigger: Trigger = "manual", required: bool = True) -> PassReport:
        """Refit the population-wide parts, then score every profile with the new fit;
        the profiles switch to it together."""
        return self._scoring(refit=True, trigger=trigger, required=required)

    @_guarded
    def score_fit(self, version: str | None = None) -> ScoreFit | None:
        """The fit the live scores use (or the one named), with its diagnostics."""
        if version is not None:
            return fit_of(self._documents, version)
        return current_fit(self._documents)

    @_guarded
    def score_summaries(self) -> list[Summary]:
        """Every scoring run's summary, oldest first."""
        return summaries(self._documents)

    def scores_summary(self) -> Summary:
        """The last scoring run's summary: customers per stage and tier, the 4I and
        predicted value distributions, movement since the run before."""
        found = self.score_summaries()
        if not found:
            raise ScoringUnavailable("nothing has been scored yet (profilestore scores refresh)")
        return found[-1]

    @_guarded
    def explain_scores(self, customer_id: str) -> ScoreExplanation:
        """A profile's scores, the fit they were computed with, the rules and the facts."""
        from profilestore import scoring  # numpy and scipy: only when asked

        profile = self.profile(customer_id, [SCORES, "engagement"])
        section = profile.sections.get(SCORES)
        settings = self.settings.scores
        version = section.fit_version if section is not None else None
        facts: dict[str, float] = {}
        engagement = profile.sections.get("engagement")
        if engagement is not None:
            columns = scoring.facts(
                [profile.canonical_id or customer_id],
                [engagement],
                self.clock(),
                settings,
                settings.lifecycle.window_days,
            )
            facts = {name: float(values[0]) for name, values in columns.facts.items()}
        rules = {
            name: {"version": scoring.rules_version(rules), **msgspec.to_builtins(rules)}
            for name, rules in (("lifecycle", settings.lifecycle), ("journey", settings.journey))
        }
        return ScoreExplanation(
            customer_id=customer_id,
            canonical_id=profile.canonical_id or customer_id,
            scores=section,
            fit=fit_of(self._documents, version) if version else None,
            rules=rules,
            facts=facts,
        )

    # --- freshness ----------------------------------------------------------------------

    @_guarded
    def head(self) -> int:
        """The log's last position."""
        return self._log.head()

    @_guarded
    def freshness(self, datasets: Sequence[str] | None = None) -> dict[str, Freshness]:
        """How far behind the log head each dataset is, in events and in seconds."""
        head = self._log.head()
        now = self.clock()
        found: dict[str, Freshness] = {}
        for name in self.datasets(datasets):
            tracked = self._documents.tracking(name)
            position = tracked.position if tracked else 0
            behind = 0.0
            if position < head:
                # The age of the oldest event this dataset has not applied yet.
                pending = self._log.changes(
                    position, 1, until=head, topics=self.projections[name].topics
                )
                if pending and pending[0].event.recorded_at is not None:
                    behind = max(0.0, (now - pending[0].event.recorded_at).total_seconds())
                elif not pending:
                    position = head  # nothing it reads is pending: it is current
            found[name] = Freshness(
                position=position,
                refreshed_at=tracked.refreshed_at if tracked else None,
                events_behind=head - position,
                seconds_behind=round(behind, 3),
            )
        return found

    @_guarded
    def last_success(self, dataset: str) -> RunRecord | None:
        """The dataset's last successful run (the schedule catches up from it)."""
        return self._journal.last_success(self.datasets([dataset])[0])

    @_guarded
    def status(self) -> list[DatasetStatus]:
        """Per dataset: cadence, last and next run, lag, lease holder, dead letters."""
        now = self.clock()
        lags = self.freshness()
        built = self.built_versions()
        rows = []
        for name in self.projections:
            cadence = parse_cadence(self.cadence(name))
            last = self._journal.last_run(name)
            success = self._journal.last_success(name)
            failure = self._journal.last_failure(name)
            letters = self._journal.dead_letters(name)
            last_success_at = success.finished_at if success else None
            rows.append(
                DatasetStatus(
                    dataset=name,
                    cadence=cadence.text,
                    last_run=last,
                    last_success_at=last_success_at,
                    next_run=next_due(cadence, self.timezone, last_success_at, now),
                    failed=last is not None and last.status == "failed",
                    error=failure.error if failure and last and last.status == "failed" else None,
                    running_holder=self._leases.holder_of(name),
                    lag=lags[name],
                    dead_letters=len(letters),
                    dead_letter_error=letters[-1].error if letters else None,
                    version=self.projections[name].version,
                    built_version=built[name],
                    outdated=built[name] not in (None, self.projections[name].version),
                )
            )
        return rows

    @_guarded
    def dead_letters(self, dataset: str) -> list[DeadLetter]:
        """The events parked by a failing fold of ``dataset``."""
        return self._journal.dead_letters(self.datasets([dataset])[0])

    @_guarded
    def ready(self) -> list[str]:
        """Raise unless both stores answer (a read of each); returns :meth:`outdated`."""
        self._log.head()
        return self.outdated()

    # --- reading ----------------------------------------------------------------------

    @_guarded
    def profile(
        self,
        customer_id: str,
        datasets: Sequence[str] | None = None,
        *,
        as_of: dt.datetime | None = None,
    ) -> Profile:
        """The stored profile; with ``as_of``, the profile folded from the customer's
        events recorded at or before that time (every dataset as if fresh then)."""
        asked = customer_id
        profile_id = self.resolve(customer_id)
        names = self._selection(datasets)
        if as_of is not None:
            # A derived section (scores) has no past to replay: computed, not folded.
            projections = {
                n: p for n, p in self._folded_projections().items() if names is None or n in names
            }
            graph = self._graph()
            start = graph.members(profile_id)[:1] or (profile_id,)
            members = sorted(graph.component(start[0], at=as_of))
            then = graph.canonical(members, at=as_of)
            replayed = profile_as_of(self._log, projections, members, as_of)
            if replayed is None or (is_canonical(asked) and then != asked):
                # A merged profile's id names nobody before its keys were merged.
                raise CustomerNotFound(asked)
            return msgspec.structs.replace(replayed, customer_id=asked, canonical_id=then)
        found = self._documents.get(profile_id, names)
        if found is None:
            raise CustomerNotFound(asked)
        return msgspec.structs.replace(found, customer_id=asked, canonical_id=profile_id)

    def profile_raw(
        self,
        customer_id: str,
        datasets: Sequence[str] | None = None,
        *,
        as_of: dt.datetime | None = None,
    ) -> RawProfile:
        """:meth:`profile` with each section as JSON (served as stored when not ``as_of``)."""
        if as_of is not None:
            raw = DocumentStore.raw(self.profile(customer_id, datasets, as_of=as_of))
            assert raw is not None
            return raw
        with self._entered():
            names = self._selection(datasets)
            profile_id = self.resolve(customer_id)
            found = self._documents.get_raw(profile_id, names)
        if found is None:
            raise CustomerNotFound(customer_id)
        return msgspec.structs.replace(found, customer_id=customer_id, canonical_id=profile_id)

    async def aprofile_raw(
        self, customer_id: str, datasets: Sequence[str] | None = None
    ) -> RawProfile:
        """:meth:`profile_raw` for an event loop (MongoDB through its async client)."""
        names = self._selection(datasets)
        gate = self._gate
        gate.enter()
        try:
            profile_id = await self.aresolve(customer_id)
            found = await self._documents.aget_raw(profile_id, names)
        finally:
            gate.exit()
        if found is None:
            raise CustomerNotFound(customer_id)
        return msgspec.structs.replace(found, customer_id=customer_id, canonical_id=profile_id)

    def _holder_of(self, kind: str, customer_ids: Sequence[str]) -> str:
        resolved = sorted({self.resolve(c) for c in customer_ids})
        if not resolved:
            raise IdentifierNotFound(kind, "")
        if len(resolved) > 1:
            raise AmbiguousIdentifier(kind, "", resolved)
        return resolved[0]

    @_guarded
    def find(self, kind: str, value: str, datasets: Sequence[str] | None = None) -> Profile:
        """The profile holding an identifier (see :mod:`profilestore.identifiers`).

        A malformed value raises :class:`InvalidIdentifier`; one nobody holds, or a
        blocked one (:func:`~profilestore.normalise.is_blocked`),
        :class:`IdentifierNotFound`; one several customers hold,
        :class:`AmbiguousIdentifier`.
        """
        names = self._selection(datasets)
        customer_id = self._holder_of(kind, self._documents.find(_held_key(kind, value)))
        found = self._documents.get(customer_id, names)
        if found is None:
            raise IdentifierNotFound(kind, value)
        return msgspec.structs.replace(found, canonical_id=customer_id)

    async def afind_raw(
        self, kind: str, value: str, datasets: Sequence[str] | None = None
    ) -> RawProfile:
        """:meth:`find` for an event loop, with sections as stored JSON."""
        names = self._selection(datasets)
        key = _held_key(kind, value)
        gate = self._gate
        gate.enter()
        try:
            customer_id = self._holder_of(kind, await self._documents.afind(key))
            found = await self._documents.aget_raw(customer_id, names)
        finally:
            gate.exit()
        if found is None:
            raise IdentifierNotFound(kind, value)
        return msgspec.structs.replace(found, canonical_id=customer_id)

    @_guarded
    def may_contact(
        self, customer_id: str, channel: str, purpose: str = "marketing"
    ) -> ContactDecision:
        """May we contact the customer on ``channel`` for ``purpose`` now? From the
        consents dataset (a merged profile: the latest decision of any of its keys).
        Unknown means no: a customer with no decision for that channel and purpose, or
        with no profile at all, may not be contacted."""
        if channel not in get_args(ConsentChannel):
            raise InvalidArgument(
                "channel", f"is not a channel; one of {', '.join(get_args(ConsentChannel))}"
            )
        if not purpose or len(purpose) > 512:
            raise InvalidArgument("purpose", "must be 1 to 512 characters")
        name = self.datasets(["consents"])[0]  # UnknownDataset if not configured
        profile_id = self.resolve(customer_id)
        found = self._documents.load(name, [profile_id]).get(profile_id)
        grant = latest_grant(found.section if found else None, channel, purpose)
        if grant is None:
            return ContactDecision(
                customer_id=customer_id,
                canonical_id=profile_id,
                channel=channel,
                purpose=purpose,
                allowed=False,
                reason="no decision recorded",
            )
        return ContactDecision(
            customer_id=customer_id,
            canonical_id=profile_id,
            channel=channel,
            purpose=purpose,
            allowed=grant.granted,
            reason="granted" if grant.granted else "withdrawn",
            decided_by=grant.event_id,
            decided_at=grant.changed_at,
            source=grant.source,
        )

    @_guarded
    def history(
        self,
        customer_id: str,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        types: Sequence[str] | None = None,
    ) -> list[Event]:
        """The customer's events, oldest first; ``since``/``until`` bound when the store
        recorded them, ``types`` keeps only those event types."""
        wanted = set(types) if types else None
        return [
            event
            for event in self._events_of(self.resolve(customer_id))
            if (wanted is None or event.type_name in wanted)
            and (since is None or (event.recorded_at is not None and event.recorded_at >= since))
            and (until is None or (event.recorded_at is not None and event.recorded_at <= until))
        ]

    def _events_of(self, profile_id: str) -> list[Event]:
        """The events of every key of a profile, in log order."""
        members = self._graph().members(profile_id) or (profile_id,)
        if len(members) == 1:
            return self._log.stream(members[0])
        return [n.event for n in merged_changes(self._log, members)]

    @_guarded
    def history_page(
        self,
        customer_id: str,
        *,
        after: int = 0,
        limit: int = 100,
        types: Sequence[str] | None = None,
        occurred_since: dt.datetime | None = None,
        occurred_until: dt.datetime | None = None,
    ) -> tuple[list[msgspec.Raw], int | None]:
        """Up to ``limit`` of the profile's events as JSON (every key's, in log order) after
        log position ``after``, and the ``after`` of the next page (None on the last).

        ``types`` keeps only those event types (read by topic, so the log does the work);
        ``occurred_since``/``occurred_until`` keep events that occurred in that interval
        (inclusive; :meth:`history`'s bounds are when the store recorded them). Filters
        never turn an existing customer into "not found": a customer with events of which
        none match gets an empty page.
        """
        for name in types or ():
            if name not in EVENT_TYPES:
                raise InvalidArgument("types", "names an event type the catalogue lacks")
        topics = [t for name in types or () for t in topics_for(EVENT_TYPES[name])]
        profile_id = self.resolve(customer_id)
        members = self._graph().members(profile_id) or (profile_id,)
        # One cut for every page read below, so a page is a snapshot of the log.
        head = self._log.head()
        wanted: list[Notified] = []
        position = after
        more = False
        while True:
            found = merged_changes(
                self._log, members, after=position, until=head, topics=topics, limit=limit + 1
            )
            for notified in found:
                occurred = notified.event.occurred_at
                if (occurred_since is None or occurred >= occurred_since) and (
                    occurred_until is None or occurred <= occurred_until
                ):
                    if len(wanted) == limit:
                        more = True
                        break
                    wanted.append(notified)
                position = notified.notification_id
            if more or len(found) <= limit:
                break
        if not wanted and after == 0 and not merged_changes(self._log, members, limit=1):
            raise CustomerNotFound(customer_id)
        return [msgspec.Raw(event_json(n.event)) for n in wanted], (
            wanted[-1].notification_id if more else None
        )

    @_guarded
    def export(self, customer_id: str) -> SubjectExport:
        """Everything the store holds on a customer, for a data subject access request. A
        forgotten customer's export says so (``erasure``) and holds nothing else."""
        asked = customer_id
        if self._log.is_erased(customer_id):
            return SubjectExport(
                customer_id=asked,
                canonical_id=asked,
                keys=[asked],
                exported_at=self.clock(),
                profile=None,
                events=[],
                erasure="erased",
            )
        customer_id = self.resolve(customer_id)
        events = self._events_of(customer_id)
        profile = self._documents.get(customer_id)
        if not events and profile is None:
            raise CustomerNotFound(asked)
        consents: list[Any] = []
        if profile is not None:
            profile = msgspec.structs.replace(profile, customer_id=asked, canonical_id=customer_id)
            consents = list(getattr(profile.sections.get("consents"), "consents", ()))
        members = list(self._graph().members(customer_id) or (customer_id,))
        outcomes = read_outcomes(self._documents, members)
        return SubjectExport(
            trigger_outcomes=outcomes,
            messages=read_messages(self._documents, outcomes),
            consents=consents,
            customer_id=asked,
            canonical_id=customer_id,
            keys=list(self._graph().members(customer_id) or (customer_id,)),
            exported_at=self.clock(),
            profile=profile,
            events=[msgspec.Raw(event_json(e)) for e in events],
        )

    @_guarded
    def verify(
        self,
        *,
        sample: int | None = None,
        customer_ids: Sequence[str] | None = None,
        progress: Progress | None = None,
        workers: int | None = None,
    ) -> VerifyReport:
        """Refold customers from the log and diff them with the stored documents.

        The work is shared by ``workers`` processes (see :mod:`profilestore.verification`),
        each opening the stores read-only; by default one per core from
        ``VERIFY_PROCESSES_FROM`` customers, where their start (seconds each, to import
        and open the stores) is paid back. A store whose projections are not its
        settings' (replaced in this process) checks in this process, as workers would
        load the settings' ones.
        """
        chosen = (
            [self.resolve(c) for c in customer_ids]
            if customer_ids is not None
            else choose_customers(self._log, self._documents, self._folded_projections(), sample)
        )
        if workers is None:
            workers = (os.cpu_count() or 1) if len(chosen) >= VERIFY_PROCESSES_FROM else 1
        if (
            workers > 1
            and len(chosen) >= 2 * VERIFY_TASK
            and self._projections == load_projections(self.settings)
        ):
            return verify_in_processes(self.settings, chosen, workers, progress, local=self._verify)
        return self._verify(chosen, progress)

    def _verify(self, chosen: Sequence[str], progress: Progress | None = None) -> VerifyReport:
        graph = self._graph()
        with bulk_collection():  # a refold of every dataset, as in a rebuild
            return verify_profiles(
                self._log,
                self._documents,
                self._folded_projections(),
                chosen,
                members_of=graph.members,
                progress=progress,
            )

    def auditor(self) -> Auditor:
        return Auditor(self._log, clock=self.clock)

    # --- erasure ----------------------------------------------------------------------

    @_guarded
    def forget(self, customer_id: str, *, request_id: str) -> ErasureReceipt:
        """Erase a customer on request (README: Privacy): destroy the data key of every
        key of their profile, so their events read back as forgotten everywhere; delete
        everything derived (documents, lookup keys, identity, trigger and outbox records,
        dead letters); make the deletion physical; check that no readable copy is left in
        the embedded stores; and append the receipt. From then on their events are refused.

        Idempotent by ``request_id``: the same request returns its receipt, and a request
        interrupted before its receipt completes when it is made again.
        """
        if not _REQUEST_ID.fullmatch(request_id):
            raise InvalidArgument(
                "request_id", "must be 1 to 200 printable characters without spaces"
            )
        done = self._receipt(request_id)
        if done is not None:
            return done
        if not self._log.encrypted:
            raise NotEncrypted()
        received = self.clock()
        profile_id = profile_of(self._documents, customer_id)
        members = set(self._graph().members(profile_id)) | {customer_id, profile_id}
        keys = sorted(m for m in members if not is_canonical(m))
        events = [e for key in keys for e in self._log.stream(key)]
        if not events and not self._log.erased(keys):
            raise CustomerNotFound(customer_id)
        probes = probes_of(keys, events)
        position = self._log.head()
        destroyed = self._log.destroy_keys(keys, received)
        self._settle(position)
        # Every id the profile's sections may lie under: the keys, the canonical id, and
        # the ids the keys had before (a dataset may not have applied an unmerge yet).
        graph = self._graph()
        ids = set(members) | {p for key in keys for p in graph.profile_ids_of(key)}
        # Erased by the customer's keys and identifiers; names are searched for, not
        # erased by (a first name is shared by other customers' records).
        terms = sorted(set(keys) | identifiers_of(events))
        deleted = self._documents.erase(sorted(ids), terms)
        self._log.scrub_keys()
        files = [*self._log.recorder.local_files(), *self._documents.local_files()]
        embedded = bool(self._log.recorder.local_files()) and bool(self._documents.local_files())
        compact = compacted = False
        for attempt in range(3):
            # A reader in the middle of a transaction can keep the WAL from being
            # truncated: try again briefly (a server store: False at once, nothing to do).
            for _ in range(100):
                if self._documents.scrub(compact=compact) or not self._documents.local_files():
                    break
                compact = False  # done once; what remains is the checkpoint
                time.sleep(0.02)
            if not embedded:
                check = PlaintextCheck(applicable=False)
                break
            check = search_files(files, probes)
            if not check.found or attempt == 2:
                break
            # A copy is still readable: a write in flight landed after the deletion, the
            # WAL kept an old page, or a page split long ago left a stale copy of a moved
            # row in a page's unused space (secure_delete never saw it). Settle, erase
            # again, rebuild the file (see DocumentStore.scrub), then look again.
            log.warning("erasure %s: a readable copy remained; compacting", request_id)
            self._settle(self._log.head())
            for kind, count in self._documents.erase(sorted(ids), terms).items():
                deleted[kind] = deleted.get(kind, 0) + count
            compact = True
            compacted = True
        completed = self.clock()
        receipt = ErasureReceipt(
            request_id=request_id,
            received_at=received,
            completed_at=completed,
            keys=len(keys),
            data_keys_destroyed=destroyed,
            events_forgotten=events_in(self._log, keys),
            deleted={k: v for k, v in sorted(deleted.items()) if v},
            plaintext=msgspec.structs.replace(check, compacted=compacted),
            chain_intact=chain_intact(self._log, keys),
            log_position=position,
        )
        self._log.append(
            [
                ErasureRecorded(
                    event_id=f"erasure:{request_id}",
                    customer_id=RECEIPTS,
                    occurred_at=completed,
                    recorded_at=completed,
                    source="profilestore",
                    receipt=receipt,
                )
            ]
        )
        log.info("erasure %s completed: %d data keys destroyed", request_id, destroyed)
        return receipt

    @_guarded
    def encrypt_into(
        self, url: str, *, postgres_schema: str = "", progress: Progress | None = None
    ) -> int:
        """Copy every event, in log order, into a new, empty log at ``url`` encrypted per
        customer (README: Privacy, moving a plain store): event ids, times and payloads
        are kept; stream ids, chain hashes and positions are the new log's own. Returns
        the number of events copied. Point ``event_log.url`` at it, then rebuild."""
        privacy = self.settings.privacy
        target = open_log_url(
            url,
            postgres_schema=postgres_schema,
            encryption=True,
            kek=privacy.key_encryption_key,
            previous_keks=privacy.previous_key_encryption_keys,
            setting="url",
        )
        try:
            if target.head() or not target.encrypted:
                raise InvalidArgument("url", "names a log that is not new and empty")
            head = self._log.head()
            after = copied = 0
            while after < head:
                page = self._log.changes(after, 2000, until=head)
                if not page:
                    break
                events = [n.event for n in page if not isinstance(n.event, Forgotten)]
                copied += target.append(events).appended
                after = page[-1].notification_id
                if progress:
                    progress(after, head)
            return copied
        finally:
            target.close()

    @_guarded
    def key_status(self) -> KeyStatus:
        """Is the log encrypted; the KEK's id; live and destroyed data keys."""
        keyring = self._log.keyring
        if keyring is None:
            return KeyStatus(encrypted=False)
        with self._log.translated("count the keys"):
            live, destroyed = keyring.store.counts()
        return KeyStatus(
            encrypted=True,
            key_encryption_key_id=keyring.kek.id,
            key_store=keyring.store.location,
            live=live,
            destroyed=destroyed,
        )

    @_guarded
    def rotate_keys(self) -> int:
        """Re-wrap every data key with the current KEK; returns how many were re-wrapped."""
        keyring = self._log.keyring
        if keyring is None:
            raise NotEncrypted()
        with self._log.translated("re-wrap the keys"):
            return keyring.rotate()

    def _receipt(self, request_id: str) -> ErasureReceipt | None:
        for event in self._log.stream(RECEIPTS):
            if isinstance(event, ErasureRecorded) and event.receipt.request_id == request_id:
                return event.receipt
        return None

    @_guarded
    def erasures(self) -> list[ErasureReceipt]:
        """Every erasure receipt, oldest first (``profilestore audit erasures``)."""
        return [e.receipt for e in self._log.stream(RECEIPTS) if isinstance(e, ErasureRecorded)]

    def _settle(self, position: int) -> None:
        """Wait until every consumer running elsewhere has committed past ``position``:
        a page it read before the keys were destroyed is then written, and the deletion
        that follows removes it too. A consumer not running has nothing in flight (its
        next read finds the keys destroyed). Gives up after a lease's time to live (a
        holder that died)."""
        targets = [(name, "dataset") for name in self.projections]
        targets += [(TARGET, "graph"), (TRIGGER_TARGET, TRIGGER_LEASE)]
        deadline = time.monotonic() + self._leases.ttl.total_seconds() + 1
        for target, kind in targets:
            while self._leases.holder_of(target, kind=kind) is not None:
                tracked = self._documents.tracking(target)
                if (tracked.position if tracked else 0) >= position:
                    break
                if time.monotonic() > deadline:
                    log.warning("erasure: a %s consumer did not catch up; deleting anyway", kind)
                    return
                time.sleep(0.01)

    # --- lifecycle ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _entered(self) -> Iterator[None]:
        self._gate.enter()
        try:
            yield
        finally:
            self._gate.exit()

    @property
    def closed(self) -> bool:
        return self._gate.closed

    def close(self, timeout: float = 60.0) -> None:
        """Refuse new calls, wait for those in flight, then free the stores.

        Stop background work first (the worker, the API's tasks): their next call would
        get :class:`StoreClosed`. Should a call still be running after ``timeout``, the
        stores are left for the process to free at exit rather than pulled from under
        it. Closing twice does nothing.
        """
        if self._gate.closed:
            return
        if not self._gate.close(timeout):
            log.warning("store closed with calls still in flight; leaving its stores open")
            return
        try:
            if self._courier is not None:
                self._courier.close()
            self._documents.close()
        finally:
            self._log.close()

    async def aclose(self) -> None:
        """Free what the async reads opened (call from the event loop, before close)."""
        await self._documents.aclose()

    def __enter__(self) -> ProfileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _merged(first: PassReport, then: PassReport) -> PassReport:
    """Two runs over the same targets (two partitions) as one report."""
    first.start = min(first.start, then.start)
    first.high_water = max(first.high_water, then.high_water)
    first.events_read = max(first.events_read, then.events_read)  # the same pages
    for counts, more in (
        (first.events_applied, then.events_applied),
        (first.sections_written, then.sections_written),
        (first.dead_letters, then.dead_letters),
        (first.released, then.released),
        (first.outcomes, then.outcomes),
    ):
        for key, value in more.items():
            counts[key] = counts.get(key, 0) + value
    first.datasets = list(dict.fromkeys([*first.datasets, *then.datasets]))
    first.skipped_locked.extend(then.skipped_locked)
    return first


VERIFY_PROCESSES_FROM = 20_000
"""Customers from which ``verify`` shares its work between processes by default."""


def _derived_counts(
    report: PassReport, names: Sequence[str], projections: Mapping[str, Projection[Any]]
) -> None:
    """A run's report lists every dataset it was asked for: a derived one (scores) that a
    refresh or rebuild leaves to its job applied nothing and parked nothing."""
    for name in names:
        if projections[name].derived:
            report.events_applied.setdefault(name, 0)
            report.sections_written.setdefault(name, 0)
            report.dead_letters.setdefault(name, 0)


def load_projections(settings: Settings, source: str = "config") -> dict[str, Projection[Any]]:
    projections = {
        name: load_projection(ds.projection, source=source, path=f"datasets.{name}.projection")
        for name, ds in settings.datasets.items()
    }
    check_projections(projections, source=source)
    return projections


def load_triggers(settings: Settings, source: str = "config") -> dict[str, EnabledTrigger]:
    """Every configured trigger's module, loaded and checked (disabled ones too, so a
    mistake shows before it is enabled); returns the enabled ones, in config order."""
    enabled = {}
    for name, entry in settings.triggers.items():
        path = f"triggers.{name}"
        trigger = load_trigger(entry.trigger, source=source, path=f"{path}.trigger")
        if trigger.name != name:
            raise ConfigError(
                source, path, f"the module's TRIGGER is named {trigger.name!r}, not {name!r}"
            )
        tuned = settings_of(trigger, entry.settings, source=source, path=f"{path}.settings")
        if entry.enabled:
            stale = entry.stale_after_hours
            enabled[name] = EnabledTrigger(
                trigger, tuned, entry.since, dt.timedelta(hours=stale) if stale else None
            )
    check_needs(list(enabled.values()), list(settings.datasets), source=source)
    return enabled


def open_documents(
    settings: Settings, projections: Mapping[str, Projection[Any]], *, read_only: bool = False
) -> DocumentStore:
    schemas = {
        name: DatasetSchema(p.section, keyed=p.lookup_keys is not None, derived=p.derived)
        for name, p in projections.items()
    }
    return open_document_store(
        settings.url(settings.documents.url), schemas, settings.documents, read_only=read_only
    )


def open_log(settings: Settings, *, read_only: bool = False) -> EventLog:
    """The event log of ``event_log.url``, on the backend its scheme names."""
    return open_log_url(
        settings.url(settings.event_log.url),
        lock_timeout_s=settings.event_log.lock_timeout_s,
        postgres_schema=settings.event_log.postgres_schema,
        read_only=read_only,
        encryption=settings.privacy.encryption,
        kek=settings.privacy.key_encryption_key,
        previous_keks=settings.privacy.previous_key_encryption_keys,
    )


def open_store(
    settings: Settings | None = None, *, clock: Clock = utcnow, read_only: bool = False
) -> ProfileStore:
    """Build a ProfileStore from settings (default: :func:`load_settings` of the cwd).

    ``read_only``: open existing stores without writing anything to them (an auditor's
    copy, a snapshot, files the caller may not write): no table is created, no journal
    mode switched, no lease or run record written; reads work, and every write (append,
    refresh, rebuild) raises :class:`~profilestore.errors.ReadOnlyStore`.
    """
    if settings is None:
        from profilestore.config import load_settings

        settings = load_settings()
    # Folds cannot see the settings: the identifier policy they normalise by is the
    # process's, set before anything is opened (see profilestore.normalise).
    configure(policy_from_settings(settings.identity))
    projections = load_projections(settings)
    triggers = load_triggers(settings)
    # Every setting is checked before anything is created: the log's URL here, the
    # documents' by their factory (which checks before it creates), and only then the log.
    check_log_url(settings.url(settings.event_log.url))
    documents = open_documents(settings, projections, read_only=read_only)
    try:
        log = open_log(settings, read_only=read_only)
    except BaseException:
        documents.close()
        raise
    return ProfileStore(settings, log, documents, projections, clock=clock, triggers=triggers)
