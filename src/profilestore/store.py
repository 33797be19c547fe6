"""The application service and its composition root.

:func:`open_store` reads nothing but the settings it is given, builds the event log, the
document store and the projector, and returns a :class:`ProfileStore`: the one object the
CLI, the HTTP API and Python callers use. Nothing connects to a database at import time.

Batch semantics of :meth:`ProfileStore.append`: every event of the batch is validated
first; if any is invalid, :class:`~profilestore.errors.InvalidEvent` names its index, the
field path and the reason, and nothing of the batch is appended. A valid batch commits in
one transaction; events already stored (same ``event_id``) are skipped and counted as
duplicates, so retrying a batch is always safe.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from profilestore.audit import Auditor
from profilestore.config import Settings
from profilestore.documents import DatasetSchema, DocumentStore, Profile, open_document_store
from profilestore.errors import (
    AmbiguousIdentifier,
    CustomerNotFound,
    IdentifierNotFound,
    InvalidEvent,
    UnknownDataset,
)
from profilestore.eventlog import (
    AppendResult,
    EventLog,
    event_json,
    open_postgres_log,
    open_sqlite_log,
)
from profilestore.events import AnyEvent, Event, normalise_identifier
from profilestore.projection import Projection, check_projections, load_projection
from profilestore.projector import Clock, PassReport, Progress, Projector, utcnow
from profilestore.replay import VerifyReport, choose_customers, profile_as_of, verify_profiles
from profilestore.runs import RunRecord, Trigger
from profilestore.schedule import next_due, parse_cadence, zone

IDENTIFIER_KINDS = ("email", "phone", "handle", "device")
_LEADING_FIELD = re.compile(r"^`(\w+)`")


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


class EventValidator:
    """Turns client input (dicts, JSON bytes or Structs) into validated events."""

    def __init__(self) -> None:
        self._json = msgspec.json.Decoder(AnyEvent)
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._typed: dict[type[Event], msgspec.json.Decoder[Any]] = {}

    def validate(self, items: Iterable[Any], recorded_at: dt.datetime) -> list[Event]:
        events: list[Event] = []
        for index, item in enumerate(items):
            try:
                event = self._one(item)
            except msgspec.ValidationError as e:
                raise _validation_error(index, item, e) from None
            except msgspec.DecodeError as e:
                raise InvalidEvent(index, "$", f"not valid JSON: {e}") from None
            events.append(msgspec.structs.replace(event, recorded_at=recorded_at))
        return events

    def _one(self, item: Any) -> Event:
        if isinstance(item, bytes | str | msgspec.Raw):
            event: Event = self._json.decode(item)
            return event
        if isinstance(item, Event):
            # Struct constructors do not check constraints: a round trip through the
            # decoder does, so Python callers get the same validation as JSON clients.
            decoder = self._typed.get(type(item))
            if decoder is None:
                decoder = self._typed[type(item)] = msgspec.json.Decoder(type(item))
            checked: Event = decoder.decode(self._encoder.encode(item))
            return checked
        if isinstance(item, Mapping):
            converted: Event = msgspec.convert(item, AnyEvent)
            return converted
        raise msgspec.ValidationError(f"Expected an event object, got `{type(item).__name__}`")


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


class SubjectExport(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    exported_at: dt.datetime
    profile: Profile | None
    events: list[msgspec.Raw]


class ProfileStore:
    """Append events, refresh and rebuild datasets, read profiles."""

    def __init__(
        self,
        settings: Settings,
        log: EventLog,
        documents: DocumentStore,
        projections: Mapping[str, Projection[Any]],
        *,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.log = log
        self.documents = documents
        self.projections = dict(projections)
        self.clock = clock
        self.validator = EventValidator()
        self.projector = Projector(
            log,
            documents,
            projections,
            clock=clock,
            page_size=settings.projector.page_size,
            cache_sections=settings.projector.cache_sections,
            lease_ttl=dt.timedelta(seconds=settings.schedule.lease_ttl_s),
        )
        self.journal = self.projector.journal
        self.timezone = zone(settings.schedule.timezone)

    # --- writing ----------------------------------------------------------------------

    def append(self, events: Iterable[Any]) -> AppendResult:
        """Validate and append a batch, all or nothing (see the module docstring)."""
        validated = self.validator.validate(events, self.clock())
        return self.log.append(validated)

    # --- projections ------------------------------------------------------------------

    def datasets(self, names: Sequence[str] | None = None) -> list[str]:
        if names is None:
            return list(self.projections)
        for name in names:
            if name not in self.projections:
                raise UnknownDataset(name, list(self.projections))
        return list(names)

    def cadence(self, dataset: str) -> str:
        """How often ``dataset`` is refreshed: its config line, else its module's default."""
        configured = self.settings.datasets[self.datasets([dataset])[0]].cadence
        return configured or self.projections[dataset].default_refresh

    def refresh(
        self,
        datasets: Sequence[str] | None = None,
        *,
        progress: Progress | None = None,
        trigger: Trigger = "manual",
    ) -> PassReport:
        """Fold new events into ``datasets`` now, up to the log head as it is now.

        Each dataset is refreshed under its lease: one held by another process (a
        scheduled run, the follower) is skipped and listed in ``skipped_locked``. Each
        refreshed dataset gets a run record (see ``status``).
        """
        names = self.datasets(datasets)
        locked = self.projector.acquire(names, required=False)
        held = [n for n in names if n not in locked]
        started = self.clock()
        runs = {
            n: RunRecord(
                dataset=n, trigger=trigger, holder=self.projector.holder, started_at=started
            )
            for n in held
        }
        for run in runs.values():
            self.journal.record(run)
        try:
            report = self.projector.run_pass(held, progress=progress)
        except Exception as error:
            for run in runs.values():
                self.journal.record(
                    msgspec.structs.replace(
                        run, status="failed", finished_at=self.clock(), error=repr(error)
                    )
                )
            raise
        finally:
            self.projector.release(held)
        finished = self.clock()
        for name, run in runs.items():
            self.journal.record(
                msgspec.structs.replace(
                    run,
                    status="succeeded",
                    finished_at=finished,
                    high_water=report.high_water,
                    events_applied=report.events_applied.get(name, 0),
                    sections_written=report.sections_written.get(name, 0),
                    dead_letters=report.dead_letters.get(name, 0),
                )
            )
        report.skipped_locked = locked
        return report

    def retry_dead_letters(self, dataset: str) -> tuple[int, int]:
        """Refold the customers parked by poison events; returns (released, still failing)."""
        return self.projector.retry_dead_letters(self.datasets([dataset])[0])

    def rebuild(
        self, datasets: Sequence[str] | None = None, *, progress: Progress | None = None
    ) -> PassReport:
        names = self.datasets(datasets)
        report = self.projector.rebuild(names, progress=progress)
        self.refresh(names, trigger="rebuild")
        return report

    # --- freshness ----------------------------------------------------------------------

    def freshness(self, datasets: Sequence[str] | None = None) -> dict[str, Freshness]:
        """How far behind the log head each dataset is, in events and in seconds."""
        head = self.log.head()
        now = self.clock()
        found: dict[str, Freshness] = {}
        for name in self.datasets(datasets):
            tracked = self.documents.tracking(name)
            position = tracked.position if tracked else 0
            behind = 0.0
            if position < head:
                # The age of the oldest event this dataset has not applied yet.
                pending = self.log.changes(
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

    def status(self) -> list[DatasetStatus]:
        """Per dataset: cadence, last and next run, lag, lease holder, dead letters."""
        now = self.clock()
        lags = self.freshness()
        rows = []
        for name in self.projections:
            cadence = parse_cadence(self.cadence(name))
            last = self.journal.last_run(name)
            success = self.journal.last_success(name)
            failure = self.journal.last_failure(name)
            letters = self.journal.dead_letters(name)
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
                    running_holder=self.documents.lease_holder(f"dataset:{name}", now),
                    lag=lags[name],
                    dead_letters=len(letters),
                    dead_letter_error=letters[-1].error if letters else None,
                )
            )
        return rows

    # --- reading ----------------------------------------------------------------------

    def profile(
        self,
        customer_id: str,
        datasets: Sequence[str] | None = None,
        *,
        as_of: dt.datetime | None = None,
    ) -> Profile:
        """The stored profile; with ``as_of``, the profile folded from the customer's
        events recorded at or before that time (every dataset as if fresh then)."""
        names = None if datasets is None else self.datasets(datasets)
        if as_of is not None:
            projections = {n: p for n, p in self.projections.items() if names is None or n in names}
            replayed = profile_as_of(self.log, projections, customer_id, as_of)
            if replayed is None:
                raise CustomerNotFound(customer_id)
            return replayed
        found = self.documents.get(customer_id, names)
        if found is None:
            raise CustomerNotFound(customer_id)
        return found

    def find(self, kind: str, value: str, datasets: Sequence[str] | None = None) -> Profile:
        """The profile holding an identifier; kind is email, phone, handle or device.

        A handle is given as ``network:handle`` (``twitter:@ann``). Values are normalised
        as on ingest (emails lower-cased, phones reduced to digits).
        """
        if kind not in IDENTIFIER_KINDS:
            raise IdentifierNotFound(kind, value)
        network = None
        handle = value
        if kind == "handle":
            network, sep, handle = value.partition(":")
            if not sep:
                raise IdentifierNotFound(kind, value)
        try:
            key = normalise_identifier(kind, handle, network)
        except ValueError:
            raise IdentifierNotFound(kind, value) from None
        customer_ids = self.documents.find(key)
        if not customer_ids:
            raise IdentifierNotFound(kind, value)
        if len(customer_ids) > 1:
            raise AmbiguousIdentifier(kind, value, customer_ids)
        return self.profile(customer_ids[0], datasets)

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
            for event in self.log.stream(customer_id)
            if (wanted is None or event.type_name in wanted)
            and (since is None or (event.recorded_at is not None and event.recorded_at >= since))
            and (until is None or (event.recorded_at is not None and event.recorded_at <= until))
        ]

    def export(self, customer_id: str) -> SubjectExport:
        """Everything the store holds on a customer, for a data subject access request."""
        events = self.history(customer_id)
        profile = self.documents.get(customer_id)
        if not events and profile is None:
            raise CustomerNotFound(customer_id)
        return SubjectExport(
            customer_id=customer_id,
            exported_at=self.clock(),
            profile=profile,
            events=[msgspec.Raw(event_json(e)) for e in events],
        )

    def verify(
        self,
        *,
        sample: int | None = None,
        customer_ids: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> VerifyReport:
        """Refold customers from the log and diff them with the stored documents."""
        chosen = (
            list(customer_ids)
            if customer_ids is not None
            else choose_customers(self.log, self.documents, self.projections, sample)
        )
        return verify_profiles(
            self.log, self.documents, self.projections, chosen, progress=progress
        )

    def auditor(self) -> Auditor:
        return Auditor(self.log, clock=self.clock)

    def close(self) -> None:
        self.documents.close()
        self.log.close()

    def __enter__(self) -> ProfileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sqlite_path(url: str, settings: Settings) -> str:
    path = settings.url(url).removeprefix("sqlite:///").removeprefix("sqlite://")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return path


def load_projections(settings: Settings, source: str = "config") -> dict[str, Projection[Any]]:
    projections = {
        name: load_projection(ds.projection, source=source, path=f"datasets.{name}.projection")
        for name, ds in settings.datasets.items()
    }
    check_projections(projections, source=source)
    return projections


def open_documents(settings: Settings, projections: Mapping[str, Projection[Any]]) -> DocumentStore:
    schemas = {
        name: DatasetSchema(p.section, keyed=p.lookup_keys is not None)
        for name, p in projections.items()
    }
    return open_document_store(settings.url(settings.documents.url), schemas, settings.documents)


def open_log(settings: Settings) -> EventLog:
    url = settings.url(settings.event_log.url)
    if url.startswith("sqlite:"):
        return open_sqlite_log(
            _sqlite_path(url, settings), lock_timeout=settings.event_log.lock_timeout_s
        )
    if url.startswith(("postgresql://", "postgres://")):
        return open_postgres_log(url, schema=settings.event_log.postgres_schema)
    raise ValueError(f"event_log.url {url!r}: expected sqlite:///PATH or postgresql://...")


def open_store(settings: Settings | None = None, *, clock: Clock = utcnow) -> ProfileStore:
    """Build a ProfileStore from settings (default: :func:`load_settings` of the cwd)."""
    if settings is None:
        from profilestore.config import load_settings

        settings = load_settings()
    projections = load_projections(settings)
    log = open_log(settings)
    try:
        documents = open_documents(settings, projections)
    except BaseException:
        log.close()
        raise
    return ProfileStore(settings, log, documents, projections, clock=clock)
