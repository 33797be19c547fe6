"""The immutable event log: one ``eventsourcing`` stream per customer.

This module is the log's service and its port; the adapters live beside it, one module
per backend, each ending with its factory: :mod:`profilestore.sqlite_log` (an SQLite
file, the default) and :mod:`profilestore.postgres_log` (PostgreSQL). :func:`open_log`
picks one by the URL's scheme through :data:`LOG_BACKENDS` and imports it only then, so
a SQLite-only user never imports psycopg.

- :class:`EventRecorder` (the port) is what :class:`EventLog` needs from a recorder beyond
  the library's application recorder: the adapters extend the library's recorders, which
  give us gap-free stream versions (a unique ``(originator_id, originator_version)`` key),
  a notification log ordered by commit, and driver errors translated to the library's own
  error tree. They extend them in one way only: the library's ``_insert_events`` hook,
  which runs inside the insert transaction, also records each event's ``event_id`` in a
  table with a unique key, so a retried batch appends nothing twice.
- :class:`EventLog` (the service) appends and reads. It is the door to the log: every
  database error leaving it is a :class:`~profilestore.errors.LogUnavailable` (neither a
  driver's nor the library's error), and after :meth:`EventLog.close` every call raises
  :class:`~profilestore.errors.StoreClosed`.

Concurrency is optimistic, as in the library: a batch reads each stream's head version
(one query for the whole batch, never a replay), writes the next versions, and if another
writer got there first the unique keys reject the transaction and the batch is planned
again from fresh heads. Nothing of a rejected transaction is visible.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import hashlib
import importlib
import random
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol, cast
from uuid import UUID, uuid5

import msgspec
from eventsourcing.persistence import (
    ConnectionPoolClosedError,
    IntegrityError,
    PersistenceError,
    StoredEvent,
)

from profilestore.errors import (
    AppendConflict,
    CustomerErased,
    InvalidSetting,
    KeyStoreError,
    LogUnavailable,
    LogUrlError,
    NotEncrypted,
    ReadOnlyStore,
    StoreClosed,
)
from profilestore.events import Event
from profilestore.keys import Keyring, KeyStore, Wrapped, load_kek
from profilestore.mapper import (
    NONCE_BYTES,
    SEALED,
    EventMapper,
    Forgotten,
    aad_prefix,
    sealed,
    sealed_header,
)

STREAM_NAMESPACE = UUID("6f1f3c3e-8d0c-5b7e-9a43-3c1e6f0d2b71")
"""Namespace of stream ids; changing it would orphan every stored stream."""

EVENTS_TABLE = "profilestore_events"
EVENT_IDS_TABLE = "profilestore_event_ids"
STREAMS_TABLE = "profilestore_streams"
GENESIS = bytes(32)
"""The chain hash before a stream's first event."""


def chain_hash(
    previous: bytes, originator_id: UUID, version: int, topic: str, state: bytes
) -> bytes:
    """The tamper-evident hash of a stored event: over the previous event's hash in its
    stream and the event's own stored bytes (the ciphertext, when encrypted, so making a
    payload unreadable later leaves the chain intact), with its stream, version and topic.
    """
    digest = hashlib.sha256(previous)
    digest.update(originator_id.bytes)
    digest.update(version.to_bytes(8, "big"))
    digest.update(topic.encode())
    digest.update(b"\0")
    digest.update(state)
    return digest.digest()


ChainRow = tuple[int, UUID, int, str, bytes, bytes | None]
"""(notification id, stream, version, topic, stored state, recorded chain hash)."""

StateRow = tuple[int, UUID, int, str, bytes]
"""(notification id, stream, version, topic, stored state): a stored event before decoding."""


MAX_APPEND_ATTEMPTS = 50


@functools.lru_cache(maxsize=65_536)
def stream_id(customer_id: str) -> UUID:
    """The stable stream id of a customer key: every writer derives it without a lookup."""
    return uuid5(STREAM_NAMESPACE, customer_id)


@dataclass(frozen=True)
class AppendResult:
    """What an append did: how many events were new and which ids were already stored."""

    appended: int
    duplicates: int
    duplicate_event_ids: list[str] = field(default_factory=list)
    notification_ids: list[int] = field(default_factory=list)
    attempts: int = 1
    erased_event_ids: list[str] = field(default_factory=list)
    """Events skipped because their customer was forgotten (``skip_erased``)."""


class Notified(NamedTuple):
    """An event as the projector reads it: its notification id, stream and stored topic."""

    notification_id: int
    stream_id: UUID
    """The customer's stream (the originator id): what a per-customer cipher is keyed by."""
    topic: str
    event: Event


class Page(NamedTuple):
    """What :meth:`EventLog.page` read: the events kept, how many rows it read, and the
    notification id of the last of them (None: nothing after ``after``)."""

    events: list[Notified]
    rows: int
    through: int | None


class EventRecorder(ABC):
    """What the log needs from a recorder beyond the library's ApplicationRecorder."""

    backend: ClassVar[str]
    """The backend's name in error messages, e.g. "SQLite"."""
    driver_errors: ClassVar[tuple[type[Exception], ...]]
    """The driver's error classes: :class:`EventLog` translates them where they escape."""
    conflicts: ClassVar[tuple[type[Exception], ...]] = ()
    """Driver errors that mean "a concurrent writer got in the way" (a deadlock, a
    serialisation failure): the append is planned again, as for a taken version."""
    location: str = ""
    """Where the log is (a file; a host, database and schema; never a password)."""
    keys_in_transaction: ClassVar[bool] = False
    """The key store shares the log's database: :meth:`insert_events` takes the batch's
    new data keys (``keys``) and inserts them in its transaction (a stream's key stored
    first by another writer fails it, as a taken version does)."""

    @abstractmethod
    def existing_event_ids(self, event_ids: Sequence[str]) -> set[str]: ...

    @abstractmethod
    def append_heads(self, originator_ids: Sequence[UUID]) -> dict[UUID, tuple[int, bytes, int]]:
        """Each existing stream's head version, chain hash and when it was first seen (in
        milliseconds; 0 if the directory does not know): one query, no replay."""

    def stream_heads(self, originator_ids: Sequence[UUID]) -> dict[UUID, tuple[int, bytes]]:
        """Each existing stream's head version and chain hash (one query, no replay)."""
        return {s: (v, h) for s, (v, h, _) in self.append_heads(originator_ids).items()}

    @abstractmethod
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None: ...

    @abstractmethod
    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]: ...

    @abstractmethod
    def max_notification_id(self) -> int | None: ...

    @abstractmethod
    def select_stream_states(
        self,
        originator_id: UUID,
        after: int,
        until: int | None,
        topics: Sequence[str],
        limit: int | None = None,
    ) -> list[StateRow]:
        """Like :meth:`select_states`, for one stream, in stream order (the first
        ``limit``, if given)."""

    @abstractmethod
    def select_states(
        self, after: int, limit: int, until: int | None, topics: Sequence[str]
    ) -> list[StateRow]:
        """Stored events after ``after``, oldest first: the library's notification query
        without building a Notification per row, which costs more than decoding the
        event (the projector's hot path)."""

    @abstractmethod
    def select_states_by_stream(
        self, after: UUID | None, limit: int, until: int | None, topics: Sequence[str]
    ) -> list[StateRow]:
        """Stored events of the streams after stream ``after`` (from the first: None), in
        stream id order, each stream's in version order, with positions up to ``until``
        (of ``topics``, or all): the first ``limit``. Many customers' whole streams in one
        query, read along the stream key; the last stream may be cut at ``limit``."""

    @abstractmethod
    def select_streams_states(
        self, streams: Sequence[UUID], until: int | None, topics: Sequence[str]
    ) -> list[StateRow]:
        """:meth:`select_stream_states` of several streams in one query: stream by
        stream, each in version order."""

    @abstractmethod
    def subscribe_states(self, after: int, topics: Sequence[str]) -> StateSubscription | None:
        """Stored events after ``after`` as they are recorded; None when the backend has no
        subscription (its callers poll :meth:`select_states` instead)."""

    @abstractmethod
    def create_table(self) -> None: ...

    @abstractmethod
    def scan_chain(self, streams: Sequence[UUID] | None = None) -> Iterator[ChainRow]:
        """Every stored event (of ``streams``, if given) with its recorded chain hash,
        stream by stream in order."""

    @abstractmethod
    def directory_heads(self) -> dict[UUID, tuple[int, bytes]]:
        """Every stream's head version and hash, as the stream directory records them."""

    @abstractmethod
    def directory_names(self) -> list[tuple[UUID, str]]:
        """Every stream with the customer name its directory row keeps (see
        :meth:`EventLog.customers`)."""

    @abstractmethod
    def key_store(self, *, create: bool, read_only: bool) -> KeyStore | None:
        """The log's key store (see :mod:`profilestore.keys`): None where there is none and
        ``create`` is false."""

    def local_files(self) -> list[str]:
        """The files this log keeps on this machine (an embedded log); [] for a server."""
        return []

    @abstractmethod
    def first_state(self) -> bytes | None:
        """The stored state of the log's first event (None for an empty log)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


class StateSubscription(Iterator[StateRow]):
    """A recorder's subscription: stored events as they are recorded, until stopped."""

    @abstractmethod
    def stop(self) -> None:
        """End the iteration (from any thread)."""


class Subscription(Iterator[Notified]):
    """New events, decoded, as they are recorded (see :meth:`EventLog.subscribe`).

    Iterating blocks until the next event; :meth:`stop`, from any thread, ends it.
    """

    def __init__(self, log: EventLog, states: StateSubscription) -> None:
        self._log = log
        self._states = states

    def __next__(self) -> Notified:
        with self._log.translated("follow new events"):
            row = next(self._states, None)
        if row is None:
            raise StopIteration
        return self._log._decoded([row])[0]

    def positions(self) -> Iterator[int]:
        """The new events' log positions only (nothing decoded): enough to wake a reader."""
        while True:
            with self._log.translated("follow new events"):
                row = next(self._states, None)
            if row is None:
                return
            yield row[0]

    def stop(self) -> None:
        self._states.stop()


@contextlib.contextmanager
def database_errors(
    backend: str, operation: str, driver_errors: tuple[type[Exception], ...], where: str = ""
) -> Iterator[None]:
    """Turn the library's and the driver's database errors into :class:`LogUnavailable`:
    the adapters' factories and :class:`EventLog` use it, so none escapes the log."""
    try:
        yield
    except _caught(driver_errors) as error:
        raise LogUnavailable(backend, operation, error, where=where) from error


def _caught(driver_errors: tuple[type[Exception], ...]) -> tuple[type[Exception], ...]:
    """The errors :func:`database_errors` turns into :class:`LogUnavailable`."""
    return (PersistenceError, ConnectionPoolClosedError, *driver_errors)


class EventLog:
    """Appends validated events to customer streams and reads them back."""

    def __init__(
        self,
        recorder: EventRecorder,
        mapper: EventMapper | None = None,
        *,
        read_only: bool = False,
        keyring: Keyring | None = None,
    ) -> None:
        self.recorder = recorder
        self.mapper = mapper or EventMapper()
        self.read_only = read_only
        """Opened read-only: nothing was created, and :meth:`append` raises ReadOnlyStore."""
        self.keyring = keyring
        """Per-customer encryption (None: a plain log, written before encryption)."""
        self._closed = False
        self._database_errors = _caught(recorder.driver_errors)
        self._stream_id = keyring.stream_id if keyring else stream_id
        self._event_keyer: Callable[[bytes, int], Callable[[str], str]] = (
            keyring.event_keyer if keyring else _plain_event_keyer
        )
        self._sealed_names: dict[UUID, str] = {}

    def use_keys(self, keyring: Keyring) -> None:
        """Encrypt per customer from now on (done once, when the log is opened)."""
        self.keyring = keyring
        self._stream_id = keyring.stream_id
        self._event_keyer = keyring.event_keyer

    @property
    def encrypted(self) -> bool:
        return self.keyring is not None

    def stream_of(self, customer_id: str) -> UUID:
        """The stream id of a customer key (a keyed hash on an encrypted log)."""
        return self._stream_id(customer_id)

    @contextlib.contextmanager
    def translated(self, operation: str) -> Iterator[None]:
        """The guard of every public method: refuse when closed, translate database errors."""
        if self._closed:
            raise StoreClosed("the event log")
        recorder = self.recorder
        with database_errors(
            recorder.backend, operation, recorder.driver_errors, recorder.location
        ):
            yield

    def append(self, events: Sequence[Event], *, skip_erased: bool = False) -> AppendResult:
        """Append validated events; events whose ``event_id`` is already stored are skipped.

        The batch commits in one transaction or not at all. Events of one customer keep
        their order in the batch; the first of several events sharing an ``event_id`` wins.
        An event of a forgotten customer is refused (:class:`CustomerErased`, nothing of
        the batch appended) or, with ``skip_erased``, left out and reported.
        """
        with self.translated("append events"):
            if self.read_only:
                backend = self.recorder.backend
                raise ReadOnlyStore(
                    f"the {backend} event log", self.recorder.location, "append events"
                )
            if not events:
                return AppendResult(appended=0, duplicates=0)
            for attempt in range(1, MAX_APPEND_ATTEMPTS + 1):
                try:
                    return self._append_once(events, attempt, skip_erased)
                except Exception as error:
                    # Another writer took a version or an event id first, or the database
                    # chose this transaction as a deadlock's victim: plan again.
                    if not self._conflicted(error):
                        raise
                    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise AppendConflict(MAX_APPEND_ATTEMPTS)

    def _conflicted(self, error: BaseException) -> bool:
        if isinstance(error, IntegrityError):
            return True
        cause: BaseException | None = error
        while cause is not None:  # the library wraps the driver's error: look beneath
            if isinstance(cause, self.recorder.conflicts):
                return True
            cause = cause.__cause__
        return False

    def _append_once(
        self, events: Sequence[Event], attempt: int, skip_erased: bool = False
    ) -> AppendResult:
        # Each customer's stream once (a keyed hash on an encrypted log), and its head:
        # the version and link to follow, and when the stream was first seen, which
        # an encrypted log's event-id keys begin with (a new stream's is now).
        stream_of = self._stream_id
        every_stream: dict[str, UUID] = {}
        for event in events:
            if event.customer_id not in every_stream:
                every_stream[event.customer_id] = stream_of(event.customer_id)
        heads = self.recorder.append_heads(list(every_stream.values()))
        now = time.time_ns() // 1_000_000
        # Each event's stored id (on an encrypted log a keyed hash of its id and stream).
        event_keyer = self._event_keyer
        keyers: dict[str, Callable[[str], str]] = {}
        unique: dict[str, Event] = {}
        in_batch_duplicates: list[str] = []
        for event in events:
            customer = event.customer_id
            event_key = keyers.get(customer)
            if event_key is None:
                stream = every_stream[customer]
                head = heads.get(stream)
                first_seen = now if head is None else head[2]
                event_key = keyers[customer] = event_keyer(stream.bytes, first_seen)
            key = event_key(event.event_id)
            if key in unique:
                in_batch_duplicates.append(event.event_id)
            else:
                unique[key] = event
        stored_keys = self.recorder.existing_event_ids(list(unique))
        new = [(k, e) for k, e in unique.items() if k not in stored_keys]  # (stored id, event)
        duplicates = [e.event_id for k, e in unique.items() if k in stored_keys]
        duplicates += in_batch_duplicates
        if not new:
            return AppendResult(0, len(duplicates), duplicates, [], attempt)
        streams = {e.customer_id: every_stream[e.customer_id] for _, e in new}
        erased: list[str] = []
        ciphers: dict[UUID, Any] = {}
        new_keys: dict[UUID, Wrapped] | None = None
        if self.keyring is not None:
            new_keys = {} if self.recorder.keys_in_transaction else None
            ciphers = self.keyring.for_append(set(streams.values()), deferred=new_keys)
            if any(c is None for c in ciphers.values()):
                if not skip_erased:
                    index = next(
                        i
                        for i, e in enumerate(events)
                        if e.customer_id in streams and ciphers[streams[e.customer_id]] is None
                    )
                    raise CustomerErased(index)
                erased = [e.event_id for _, e in new if ciphers[streams[e.customer_id]] is None]
                new = [(k, e) for k, e in new if ciphers[streams[e.customer_id]] is not None]
                if not new:
                    return AppendResult(0, len(duplicates), duplicates, [], attempt, erased)
        stored_events: list[StoredEvent] = []
        event_ids: list[tuple[str, UUID, int, bytes]] = []
        # Per customer of the batch, made once: its stream (and the stream's bytes), its
        # cipher and the constant part of its events' associated data, and its head.
        plan: dict[str, list[Any]] = {}
        for customer, originator_id in streams.items():
            version, previous, _ = heads.get(originator_id, (0, GENESIS, now))
            cipher = ciphers.get(originator_id)
            prefix = aad_prefix(originator_id) if cipher is not None else b""
            plan[customer] = [originator_id, originator_id.bytes, cipher, prefix, version, previous]
        # One read of the system's random source for every nonce of the batch.
        nonces = secrets.token_bytes(NONCE_BYTES * len(new)) if ciphers else b""
        stored_state = self.mapper.stored_state
        topic_bytes: dict[str, bytes] = {}
        sha256 = hashlib.sha256
        for n, (key, event) in enumerate(new):
            step = plan[event.customer_id]
            originator_id, stream_bytes, cipher, prefix, version, previous = step
            version += 1
            topic, state = stored_state(event)
            topic_b = topic_bytes.get(topic)
            if topic_b is None:
                topic_b = topic_bytes[topic] = topic.encode()
            version_b = version.to_bytes(8, "big")
            if cipher is not None:
                at = n * NONCE_BYTES
                state = sealed(
                    cipher,
                    prefix,
                    version_b,
                    topic_b,
                    sealed_header(event.occurred_at),
                    nonces[at : at + NONCE_BYTES],
                    state,
                )
            # chain_hash(previous, originator_id, version, topic, state), in one call
            link = sha256(previous + stream_bytes + version_b + topic_b + b"\0" + state).digest()
            step[4], step[5] = version, link
            stored_events.append(StoredEvent(originator_id, version, topic, state))
            event_ids.append((key, originator_id, version, link))
        touched = sorted(
            (plan[customer] + [customer] for customer in {e.customer_id for _, e in new}),
            key=lambda step: step[1],  # the stream's bytes
        )
        # Sorted: concurrent batches lock directory rows in one order, so cannot deadlock.
        # A new stream's row is first seen now; an existing row keeps its own.
        stream_rows = [
            (o, self._directory_name(o, customer, cipher), version, link, now)
            for o, _, cipher, _, version, link, customer in touched
        ]
        keys_rows = sorted(new_keys.items(), key=lambda item: item[0].bytes) if new_keys else []
        notification_ids = self.recorder.insert_events(
            stored_events, event_ids=event_ids, streams=stream_rows, keys=keys_rows
        )
        if new_keys and self.keyring is not None:  # committed: the new keys are stored
            self.keyring.remember({s: ciphers[s] for s in new_keys})
        return AppendResult(
            appended=len(stored_events),
            duplicates=len(duplicates),
            duplicate_event_ids=duplicates,
            notification_ids=list(notification_ids or []),
            attempts=attempt,
            erased_event_ids=erased,
        )

    _DIRECTORY_AAD = b"profilestore/directory/1"
    _SEALED_NAME = "sealed:"

    def _directory_name(self, stream: UUID, customer_id: str, cipher: Any) -> str:
        """What the stream directory keeps of a stream's customer key: the key itself on a
        plain log; on an encrypted one, the key sealed with the stream's own data key (so
        forgetting the customer makes it unreadable too). Only a new row takes it (an
        existing row keeps its name), so one sealing per stream is kept for the next
        batches."""
        if cipher is None:
            return customer_id
        name = self._sealed_names.get(stream)
        if name is None:
            nonce = secrets.token_bytes(12)
            aad = self._DIRECTORY_AAD + stream.bytes
            sealed = cipher.encrypt(nonce, customer_id.encode(), aad)
            name = self._SEALED_NAME + base64.b64encode(nonce + sealed).decode()
            if len(self._sealed_names) >= 65_536:
                self._sealed_names.clear()
            self._sealed_names[stream] = name
        return name

    def head(self) -> int:
        """The notification id of the newest event (0 for an empty log)."""
        with self.translated("read the log head"):
            return self.recorder.max_notification_id() or 0

    def changes(
        self,
        after: int,
        limit: int,
        *,
        until: int | None = None,
        topics: Sequence[str] = (),
        checked: bool = True,
    ) -> list[Notified]:
        """Events with notification ids in ``(after, until]`` (of ``topics``, or all),
        oldest first: what folding needs and nothing else. ``checked=False`` (the
        consumer loop) decodes them without the catalogue's checks (see
        :meth:`~profilestore.mapper.EventMapper.decode_unchecked`)."""
        with self.translated("read events"):
            rows = self.recorder.select_states(after, limit, until, topics)
        return self._decoded(rows, checked=checked)

    def stream_pages(
        self,
        size: int,
        *,
        until: int,
        topics: Sequence[str] = (),
        skip: Collection[UUID] = (),
    ) -> Iterator[list[Notified]]:
        """Every stream's events with positions up to ``until`` (of ``topics``, or all),
        whole streams in stream id order, about ``size`` events per page, one query each;
        the streams in ``skip`` are left out (their rows are not decoded). What a rebuild
        folds: each customer's events together, so each section is folded at once and
        written once, where pages in log order touch every customer again and again.
        Events are decoded without the catalogue's checks (see
        :meth:`~profilestore.mapper.EventMapper.decode_unchecked`); a forgotten
        customer's read back as :class:`~profilestore.mapper.Forgotten`."""
        recorder = self.recorder
        after: UUID | None = None
        while True:
            with self.translated("read events"):
                rows = recorder.select_states_by_stream(after, size, until, topics)
                last = len(rows) < size
                if not last:
                    # The page may end inside a stream: leave that stream to the next
                    # page (read again there), unless it fills the page on its own.
                    tail = rows[-1][1]
                    cut = len(rows)
                    while cut and rows[cut - 1][1] == tail:
                        cut -= 1
                    if cut:
                        rows = rows[:cut]
                    else:
                        rows = recorder.select_stream_states(tail, 0, until, topics)
            if not rows:
                return
            after = rows[-1][1]
            page = [row for row in rows if row[1] not in skip] if skip else rows
            if page:
                yield self._decoded(page, checked=False)
            if last:
                return

    def streams_changes(
        self,
        customer_ids: Sequence[str],
        *,
        until: int | None = None,
        topics: Sequence[str] = (),
        recorded_by: dt.datetime | None = None,
    ) -> dict[str, list[Notified]]:
        """Several customers' events with positions up to ``until``, each customer's in
        order, read in one query per few hundred customers (not one each); forgotten
        customers' events are left out. Decoded without the catalogue's checks, for a
        fold (see :meth:`~profilestore.mapper.EventMapper.decode_unchecked`).

        ``recorded_by``: only the events recorded at or before that time (a profile as
        of then); the others are not decoded past their ``recorded_at``.
        """
        streams = {self._stream_id(c): c for c in customer_ids}
        with self.translated("read the customers' events"):
            rows = self.recorder.select_streams_states(list(streams), until, topics)
        found: dict[str, list[Notified]] = {c: [] for c in customer_ids}
        for logged in self._decoded(rows, checked=False, recorded_by=recorded_by):
            if type(logged.event) is not Forgotten:
                found[streams[logged.stream_id]].append(logged)
        return found

    def page(
        self,
        after: int,
        limit: int,
        *,
        until: int | None = None,
        topics: Sequence[str] = (),
        keep: Callable[[UUID], bool] | None = None,
        checked: bool = True,
    ) -> Page:
        """Like :meth:`changes`, decoding only the events of the streams ``keep`` accepts
        (a partition's customers), and saying how far it read: the rows of other streams
        are skipped undecoded, yet read through."""
        with self.translated("read events"):
            rows = self.recorder.select_states(after, limit, until, topics)
        kept = rows if keep is None else [row for row in rows if keep(row[1])]
        return Page(self._decoded(kept, checked=checked), len(rows), rows[-1][0] if rows else None)

    def customer_changes(
        self,
        customer_id: str,
        *,
        after: int = 0,
        until: int | None = None,
        topics: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[Notified]:
        """One customer's events with notification ids in ``(after, until]``, in order
        (the first ``limit``, if given)."""
        with self.translated("read a customer's events"):
            rows = self.recorder.select_stream_states(
                self._stream_id(customer_id), after, until, topics, limit
            )
        return [n for n in self._decoded(rows) if type(n.event) is not Forgotten]

    def _decoded(
        self,
        rows: Sequence[StateRow],
        *,
        checked: bool = True,
        recorded_by: dt.datetime | None = None,
    ) -> list[Notified]:
        """Rows as events: as the catalogue's classes (``checked``), or as their lenient
        twins without the checks for a fold (see :meth:`EventMapper.decode_unchecked`).
        With ``recorded_by``, only those recorded by then (the others, and forgotten
        ones, which say nothing of when, are left out after reading ``recorded_at``)."""
        decode = self.mapper.decode if checked else self.mapper.decode_unchecked
        if self.keyring is None and recorded_by is None:
            return [
                Notified(nid, stream, topic, decode(topic, state))
                for nid, stream, _, topic, state in rows
            ]
        ciphers: dict[UUID, Any] = {}
        if self.keyring is not None:
            with self.translated("read the customers' keys"):
                ciphers = self.keyring.ciphers({row[1] for row in rows})
        unseal = self.mapper.unseal
        peek = _RECORDED.decode
        decoded: list[Notified] = []
        # Rows come a stream at a time: its cipher and associated-data prefix, once.
        last: UUID | None = None
        cipher: Any = None
        prefix = b""
        for nid, stream, version, topic, state in rows:
            if stream is not last:
                last, cipher, prefix = stream, ciphers.get(stream), aad_prefix(stream)
            plain = unseal(cipher, stream, version, topic, state, prefix)
            if recorded_by is not None:
                if isinstance(plain, Forgotten):
                    continue
                recorded = peek(plain).recorded_at
                if recorded is None or recorded > recorded_by:
                    continue
            event = plain if isinstance(plain, Forgotten) else decode(topic, plain)
            decoded.append(Notified(nid, stream, topic, event))
        return decoded

    def scrub_keys(self) -> None:
        """Make destroyed keys physically gone from the key store's files."""
        if self.keyring is not None:
            with self.translated("scrub the key store"):
                self.keyring.store.scrub()

    def erased(self, customer_ids: Sequence[str]) -> set[str]:
        """The customers among ``customer_ids`` who were forgotten (their keys destroyed)."""
        if self.keyring is None or not customer_ids:
            return set()
        if self._closed:
            raise StoreClosed("the event log")
        streams = {self._stream_id(c): c for c in customer_ids}
        try:
            gone = self.keyring.destroyed(streams)
        except self._database_errors as error:
            raise self._keys_unreadable(error) from error
        return {streams[s] for s in gone}

    def is_erased(self, customer_id: str) -> bool:
        """:meth:`erased` of one customer: the check of every profile read, kept short."""
        keyring = self.keyring
        if keyring is None:
            return False
        # translated(), inline: every read of a profile asks, and its two context
        # managers cost as much as the key store's read itself.
        if self._closed:
            raise StoreClosed("the event log")
        try:
            return keyring.is_destroyed(self._stream_id(customer_id))
        except self._database_errors as error:
            raise self._keys_unreadable(error) from error

    def _keys_unreadable(self, error: Exception) -> LogUnavailable:
        """What a key-store error in :meth:`erased` or :meth:`is_erased` becomes (they
        translate inline: :meth:`translated` costs as much as their read)."""
        recorder = self.recorder
        return LogUnavailable(
            recorder.backend, "read the customers' keys", error, where=recorder.location
        )

    def destroy_keys(self, customer_ids: Sequence[str], at: dt.datetime) -> int:
        """Destroy the data keys of these customers' streams (crypto-shredding): their
        events read back as :class:`~profilestore.mapper.Forgotten` from now on, in every
        process, and appending to their streams is refused. Returns how many keys were
        destroyed."""
        if self.keyring is None:
            raise NotEncrypted()
        with self.translated("destroy the customers' keys"):
            return self.keyring.destroy([self._stream_id(c) for c in customer_ids], at)

    def subscribe(self, after: int, topics: Sequence[str]) -> Subscription | None:
        """Events after ``after`` (of ``topics``, or all) as they are recorded; None when
        the backend has no subscription (SQLite): the caller polls :meth:`changes`."""
        with self.translated("subscribe to new events"):
            states = self.recorder.subscribe_states(after, topics)
        return None if states is None else Subscription(self, states)

    def stream(
        self, customer_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> list[Event]:
        """One customer's events after a stream version, oldest first."""
        originator_id = self._stream_id(customer_id)
        with self.translated("read a customer's stream"):
            stored = self.recorder.select_events(
                originator_id, gt=after_version or None, limit=limit
            )
        if self.keyring is None:
            return [self.mapper.from_stored(s) for s in stored]
        rows = [(0, originator_id, s.originator_version, s.topic, s.state) for s in stored]
        return [n.event for n in self._decoded(rows) if type(n.event) is not Forgotten]

    def scan_chain(self, streams: Sequence[UUID] | None = None) -> Iterator[ChainRow]:
        """Every stored event (of ``streams``, if given) with its recorded chain hash,
        stream by stream (the audit)."""
        with self.translated("scan the hash chain"):
            yield from self.recorder.scan_chain(streams)

    def directory_heads(
        self, streams: Sequence[UUID] | None = None
    ) -> dict[UUID, tuple[int, bytes]]:
        """Every stream's (of ``streams``, if given) head version and hash, as the stream
        directory records them."""
        with self.translated("read the stream directory"):
            if streams is not None:
                return self.recorder.stream_heads(streams)
            return self.recorder.directory_heads()

    def customers(self) -> list[str]:
        """Every customer id with a stream, sorted."""
        with self.translated("list the customers"):
            names = self.recorder.directory_names()
            if self.keyring is None:
                return sorted(name for _, name in names)
            ciphers = self.keyring.ciphers(stream for stream, _ in names)
        found = []
        for stream, name in names:
            if not name.startswith(self._SEALED_NAME):
                found.append(name)  # a stream written before the log was encrypted
                continue
            cipher = ciphers.get(stream)
            if cipher is None:
                continue  # forgotten
            blob = base64.b64decode(name[len(self._SEALED_NAME) :])
            aad = self._DIRECTORY_AAD + stream.bytes
            found.append(cipher.decrypt(blob[:12], blob[12:], aad).decode())
        return sorted(found)

    def close(self) -> None:
        """Release the connections; later calls raise StoreClosed. Closing again does nothing."""
        if self._closed:
            return
        try:
            with self.translated("close"):
                if self.keyring is not None:
                    self.keyring.close()
                self.recorder.close()
        finally:
            self._closed = True


LOG_BACKENDS: dict[str, str] = {
    "sqlite": "profilestore.sqlite_log",
    "postgresql": "profilestore.postgres_log",
    "postgres": "profilestore.postgres_log",
}
"""URL scheme -> the module of its backend, imported only when a log on it is opened.

A backend module defines ``open_url(url: str, options: LogOptions) -> EventLog``, which
checks the URL before it creates anything (raising
:class:`~profilestore.errors.LogUrlError`, whose reason never quotes the URL) and then opens
the log."""

LOG_URL_FORMS = "sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}(?=:)")


@dataclass(frozen=True, kw_only=True)
class LogOptions:
    """How to open a log, beyond its URL; each backend reads the options it has."""

    lock_timeout_s: int = 30
    """SQLite: how long a writer waits for the file's write lock."""
    postgres_schema: str = ""
    """PostgreSQL: the schema of the log's tables (empty: the search path's first)."""
    read_only: bool = False
    """Open an existing log without creating or changing anything; appends are refused."""
    encryption: bool = False
    """Encrypt a *new* log per customer (an encrypted log stays encrypted, a plain one
    plain: see :func:`attach_keys`)."""
    kek: str = "default"
    """The key-encryption key (see :func:`profilestore.keys.load_kek`)."""
    previous_keks: tuple[str, ...] = ()


class _Backend(Protocol):
    def check_url(self, url: str) -> None: ...
    def open_url(self, url: str, options: LogOptions) -> EventLog: ...


def _backend(url: str, setting: str) -> _Backend:
    scheme = _SCHEME.match(url)
    module = LOG_BACKENDS.get(scheme.group().lower()) if scheme else None
    if module is None:
        named = f"the URL scheme {scheme.group()!r}" if scheme else "a URL without a scheme"
        raise InvalidSetting(setting, f"{named} names no log backend; use {LOG_URL_FORMS}")
    return cast(_Backend, importlib.import_module(module))


def check_log_url(url: str, *, setting: str = "event_log.url") -> None:
    """Raise :class:`~profilestore.errors.InvalidSetting` unless a backend accepts ``url``;
    creates and connects to nothing (so every setting can be checked before any store is
    opened)."""
    try:
        _backend(url, setting).check_url(url)
    except LogUrlError as error:
        raise InvalidSetting(setting, f"{error}; use {LOG_URL_FORMS}") from None


def open_log(
    url: str,
    *,
    lock_timeout_s: int = 30,
    postgres_schema: str = "",
    read_only: bool = False,
    setting: str = "event_log.url",
    encryption: bool = False,
    kek: str = "default",
    previous_keks: Sequence[str] = (),
) -> EventLog:
    """Open the event log a URL names, on the backend :data:`LOG_BACKENDS` has for its scheme.

    A URL no backend accepts raises :class:`~profilestore.errors.InvalidSetting` naming
    ``setting``, before anything (a file, a connection) is created.
    """
    backend = _backend(url, setting)
    options = LogOptions(
        lock_timeout_s=lock_timeout_s,
        postgres_schema=postgres_schema,
        read_only=read_only,
        encryption=encryption,
        kek=kek,
        previous_keks=tuple(previous_keks),
    )
    try:
        log = backend.open_url(url, options)
    except LogUrlError as error:
        raise InvalidSetting(setting, f"{error}; use {LOG_URL_FORMS}") from None
    try:
        attach_keys(log, options)
    except BaseException:
        log.close()
        raise
    return log


KEK_SETTING = "privacy.key_encryption_key"


def _same(event_id: str) -> str:
    return event_id


def _plain_event_keyer(stream: bytes, first_seen: int = 0) -> Callable[[str], str]:
    """A plain log's event-id table holds the id itself: unique across the log."""
    return _same


def attach_keys(log: EventLog, options: LogOptions) -> None:
    """Give ``log`` its keyring when it is encrypted: it has a key store, or it is new
    (empty) and ``options.encryption`` asks for it. A log with events and no key store is
    a plain one, written before encryption; unless its events are sealed, which means its
    key store went missing: that is refused, not silently read as plain."""
    recorder = log.recorder
    with log.translated("open the key store"):
        store = recorder.key_store(create=False, read_only=options.read_only)
        if store is None:
            first = recorder.first_state()
            if first is not None and first[:1] == bytes([SEALED]):
                raise KeyStoreError(
                    "the event log is encrypted but its key store is missing; restore the "
                    "key store from its backup (README: Privacy)"
                )
            if first is not None or not options.encryption or options.read_only:
                return  # a plain log
            store = recorder.key_store(create=True, read_only=False)
            assert store is not None
    try:
        kek = load_kek(options.kek, setting=KEK_SETTING, create=True)
        previous = [
            load_kek(spec, setting=f"privacy.previous_key_encryption_keys[{i}]")
            for i, spec in enumerate(options.previous_keks)
        ]
        with log.translated("open the key store"):
            log.use_keys(Keyring(store, kek, previous))
    except BaseException:
        store.close()
        raise


_EVENT_ENCODER = msgspec.json.Encoder(decimal_format="string")


class _Recorded(msgspec.Struct):
    """An event's ``recorded_at`` alone: decoding it skips the rest of the JSON."""

    recorded_at: dt.datetime | None = None


_RECORDED = msgspec.json.Decoder(_Recorded)


def event_json(event: Event) -> bytes:
    """Canonical JSON of an event, as written to the log and printed by the CLI."""
    return _EVENT_ENCODER.encode(event)
