"""The immutable event log: one ``eventsourcing`` stream per customer.

Appends go through the library's application recorders (SQLite file or PostgreSQL), which
give us gap-free stream versions (a unique ``(originator_id, originator_version)`` key), a
notification log ordered by commit, and driver errors translated to the library's own
error tree. The recorders are extended in one way only: the library's ``_insert_events``
hook, which runs inside the insert transaction, also records each event's ``event_id`` in
a table with a unique key, so a retried batch appends nothing twice.

Concurrency is optimistic, as in the library: a batch reads each stream's head version
(one query for the whole batch, never a replay), writes the next versions, and if another
writer got there first the unique keys reject the transaction and the batch is planned
again from fresh heads. Nothing of a rejected transaction is visible.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from uuid import UUID, uuid5

import msgspec
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore
from psycopg.errors import DuplicateObject
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from profilestore.errors import AppendConflict
from profilestore.events import Event
from profilestore.mapper import EventMapper

STREAM_NAMESPACE = UUID("6f1f3c3e-8d0c-5b7e-9a43-3c1e6f0d2b71")
"""Namespace of stream ids; changing it would orphan every stored stream."""

EVENTS_TABLE = "profilestore_events"
EVENT_IDS_TABLE = "profilestore_event_ids"
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


@dataclass(frozen=True)
class LoggedEvent:
    """An event as read back from the log, with its positions."""

    notification_id: int
    stream_id: UUID
    version: int
    topic: str
    event: Event


class Notified(NamedTuple):
    """An event as the projector reads it: its notification id and stored topic."""

    notification_id: int
    topic: str
    event: Event


class EventRecorder(ABC):
    """What the log needs from a recorder beyond the library's ApplicationRecorder."""

    @abstractmethod
    def existing_event_ids(self, event_ids: Sequence[str]) -> set[str]: ...

    @abstractmethod
    def head_versions(self, originator_ids: Sequence[UUID]) -> dict[UUID, int]: ...

    @abstractmethod
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None: ...

    @abstractmethod
    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Any]: ...

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
        self, originator_id: UUID, after: int, until: int | None, topics: Sequence[str]
    ) -> list[tuple[int, str, bytes]]:
        """Like :meth:`select_states`, for one stream, in stream order."""

    @abstractmethod
    def select_states(
        self, after: int, limit: int, until: int | None, topics: Sequence[str]
    ) -> list[tuple[int, str, bytes]]:
        """``(notification id, topic, state)`` rows after ``after``: the library's
        notification query without building a Notification and a UUID per row, which
        costs more than decoding the event (the projector's hot path)."""

    @abstractmethod
    def create_table(self) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


class SQLiteEventRecorder(SQLiteApplicationRecorder, EventRecorder):
    """The library's SQLite application recorder plus the event-id table."""

    def __init__(self, datastore: SQLiteDatastore) -> None:
        super().__init__(datastore, events_table_name=EVENTS_TABLE)

    def construct_create_table_statements(self) -> list[str]:
        statements: list[str] = super().construct_create_table_statements()
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {EVENT_IDS_TABLE} ("
            "event_id TEXT PRIMARY KEY, originator_id TEXT NOT NULL, "
            "originator_version INTEGER NOT NULL) WITHOUT ROWID"
        )
        return statements

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # Same transaction as the events: a duplicate event_id rolls the whole batch back.
        c.executemany(
            f"INSERT INTO {EVENT_IDS_TABLE} VALUES (?,?,?)",
            [(e, o.hex, v) for e, o, v in kwargs["event_ids"]],
        )
        ids: Sequence[int] | None = super()._insert_events(c, stored_events)
        return ids

    def existing_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self.datastore.transaction(commit=False) as c:
            for chunk in _chunks(event_ids, 500):
                c.execute(
                    f"SELECT event_id FROM {EVENT_IDS_TABLE} "
                    f"WHERE event_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                found.update(row[0] for row in c.fetchall())
        return found

    def head_versions(self, originator_ids: Sequence[UUID]) -> dict[UUID, int]:
        heads: dict[UUID, int] = {}
        with self.datastore.transaction(commit=False) as c:
            for chunk in _chunks(originator_ids, 500):
                c.execute(
                    f"SELECT originator_id, MAX(originator_version) FROM {EVENTS_TABLE} "
                    f"WHERE originator_id IN ({','.join('?' * len(chunk))}) "
                    "GROUP BY originator_id",
                    [o.hex for o in chunk],
                )
                heads.update((UUID(row[0]), row[1]) for row in c.fetchall())
        return heads

    def select_stream_states(
        self, originator_id: UUID, after: int, until: int | None, topics: Sequence[str]
    ) -> list[tuple[int, str, bytes]]:
        statement = (
            f"SELECT rowid, topic, state FROM {EVENTS_TABLE} WHERE originator_id = ? AND rowid > ?"
        )
        params: list[Any] = [originator_id.hex, after]
        if until is not None:
            statement += " AND rowid <= ?"
            params.append(until)
        if topics:
            statement += f" AND topic IN ({','.join('?' * len(topics))})"
            params.extend(topics)
        statement += " ORDER BY originator_version"
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, params)
            return [(row[0], row[1], row[2]) for row in c.fetchall()]

    def select_states(
        self, after: int, limit: int, until: int | None, topics: Sequence[str]
    ) -> list[tuple[int, str, bytes]]:
        statement = f"SELECT rowid, topic, state FROM {EVENTS_TABLE} WHERE rowid > ?"
        params: list[Any] = [after]
        if until is not None:
            statement += " AND rowid <= ?"
            params.append(until)
        if topics:
            statement += f" AND topic IN ({','.join('?' * len(topics))})"
            params.extend(topics)
        statement += " ORDER BY rowid LIMIT ?"
        params.append(limit)
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, params)
            return [(row[0], row[1], row[2]) for row in c.fetchall()]

    def close(self) -> None:
        self.datastore.close()


class PostgresEventRecorder(PostgresApplicationRecorder, EventRecorder):
    """The library's PostgreSQL application recorder plus the event-id table."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        super().__init__(datastore, events_table_name=EVENTS_TABLE)
        table = Identifier(self.datastore.schema), Identifier(EVENT_IDS_TABLE)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0}.{1} (event_id text PRIMARY KEY, "
                "originator_id uuid NOT NULL, originator_version bigint NOT NULL)"
            ).format(*table)
        )
        self._insert_event_ids = SQL(
            "INSERT INTO {0}.{1} (event_id, originator_id, originator_version) "
            "SELECT * FROM unnest(%s::text[], %s::uuid[], %s::bigint[])"
        ).format(*table)
        self._select_event_ids = SQL(
            "SELECT event_id FROM {0}.{1} WHERE event_id = ANY(%s::text[])"
        ).format(*table)
        self._select_states = SQL(
            "SELECT notification_id, topic, state FROM {0}.{1} WHERE notification_id > %s "
            "AND notification_id <= %s AND (cardinality(%s::text[]) = 0 OR topic = ANY(%s)) "
            "ORDER BY notification_id LIMIT %s"
        ).format(Identifier(self.datastore.schema), Identifier(EVENTS_TABLE))
        self._select_stream_states = SQL(
            "SELECT notification_id, topic, state FROM {0}.{1} WHERE originator_id = %s "
            "AND notification_id > %s AND notification_id <= %s "
            "AND (cardinality(%s::text[]) = 0 OR topic = ANY(%s)) ORDER BY originator_version"
        ).format(Identifier(self.datastore.schema), Identifier(EVENTS_TABLE))
        self._select_heads = SQL(
            "SELECT originator_id, MAX(originator_version) AS head FROM {0}.{1} "
            "WHERE originator_id = ANY(%s::uuid[]) GROUP BY originator_id"
        ).format(Identifier(self.datastore.schema), Identifier(EVENTS_TABLE))

    def create_table(self) -> None:
        # The library's DDL, serialised: processes starting together would otherwise race
        # on the catalog ("tuple concurrently updated", duplicate types). One transaction
        # under an advisory lock; each CREATE TYPE in a savepoint, as it has no IF NOT EXISTS.
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"profilestore:{self.datastore.schema}.{EVENTS_TABLE}",),
            )
            for statement in self.sql_create_statements:
                if "CREATE TYPE" in statement.as_string():
                    with contextlib.suppress(DuplicateObject), curs.connection.transaction():
                        curs.execute(statement, prepare=False)
            self._create_table(curs)
        self.datastore.register_type_adapters()

    def _insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # Runs in the library's insert transaction, before the events themselves.
        event_ids = kwargs["event_ids"]
        curs.execute(
            self._insert_event_ids,
            (
                [e for e, _, _ in event_ids],
                [o for _, o, _ in event_ids],
                [v for _, _, v in event_ids],
            ),
        )

    def existing_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_event_ids, (list(event_ids),))
            rows: list[DictRow] = curs.fetchall()
            return {row["event_id"] for row in rows}

    def head_versions(self, originator_ids: Sequence[UUID]) -> dict[UUID, int]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_heads, (list(originator_ids),))
            rows: list[DictRow] = curs.fetchall()
            return {row["originator_id"]: row["head"] for row in rows}

    def select_stream_states(
        self, originator_id: UUID, after: int, until: int | None, topics: Sequence[str]
    ) -> list[tuple[int, str, bytes]]:
        stop = until if until is not None else 2**63 - 1
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                self._select_stream_states,
                (originator_id, after, stop, list(topics), list(topics)),
            )
            rows: list[DictRow] = curs.fetchall()
            return [(r["notification_id"], r["topic"], bytes(r["state"])) for r in rows]

    def select_states(
        self, after: int, limit: int, until: int | None, topics: Sequence[str]
    ) -> list[tuple[int, str, bytes]]:
        stop = until if until is not None else 2**63 - 1
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_states, (after, stop, list(topics), list(topics), limit))
            rows: list[DictRow] = curs.fetchall()
            return [(r["notification_id"], r["topic"], bytes(r["state"])) for r in rows]

    def close(self) -> None:
        self.datastore.close()


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class EventLog:
    """Appends validated events to customer streams and reads them back."""

    def __init__(self, recorder: EventRecorder, mapper: EventMapper | None = None) -> None:
        self.recorder = recorder
        self.mapper = mapper or EventMapper()

    def append(self, events: Sequence[Event]) -> AppendResult:
        """Append validated events; events whose ``event_id`` is already stored are skipped.

        The batch commits in one transaction or not at all. Events of one customer keep
        their order in the batch; the first of several events sharing an ``event_id`` wins.
        """
        if not events:
            return AppendResult(appended=0, duplicates=0)
        for attempt in range(1, MAX_APPEND_ATTEMPTS + 1):
            try:
                return self._append_once(events, attempt)
            except IntegrityError:
                # Another writer took a version or an event id first: plan again.
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise AppendConflict(MAX_APPEND_ATTEMPTS)

    def _append_once(self, events: Sequence[Event], attempt: int) -> AppendResult:
        unique: dict[str, Event] = {}
        in_batch_duplicates: list[str] = []
        for event in events:
            if event.event_id in unique:
                in_batch_duplicates.append(event.event_id)
            else:
                unique[event.event_id] = event
        stored_ids = self.recorder.existing_event_ids(list(unique))
        new_events = [e for e in unique.values() if e.event_id not in stored_ids]
        duplicates = [e for e in unique if e in stored_ids] + in_batch_duplicates
        if not new_events:
            return AppendResult(0, len(duplicates), duplicates, [], attempt)
        streams = {e.customer_id: stream_id(e.customer_id) for e in new_events}
        heads = self.recorder.head_versions(list(set(streams.values())))
        stored_events: list[StoredEvent] = []
        event_ids: list[tuple[str, UUID, int]] = []
        for event in new_events:
            originator_id = streams[event.customer_id]
            version = heads.get(originator_id, 0) + 1
            heads[originator_id] = version
            stored_events.append(self.mapper.to_stored(originator_id, version, event))
            event_ids.append((event.event_id, originator_id, version))
        notification_ids = self.recorder.insert_events(stored_events, event_ids=event_ids)
        return AppendResult(
            appended=len(stored_events),
            duplicates=len(duplicates),
            duplicate_event_ids=duplicates,
            notification_ids=list(notification_ids or []),
            attempts=attempt,
        )

    def head(self) -> int:
        """The notification id of the newest event (0 for an empty log)."""
        return self.recorder.max_notification_id() or 0

    def read(
        self,
        after: int,
        limit: int,
        *,
        until: int | None = None,
        topics: Sequence[str] = (),
    ) -> list[LoggedEvent]:
        """Events with notification ids in ``(after, until]``, oldest first."""
        notifications = self.recorder.select_notifications(
            after, limit, stop=until, topics=topics, inclusive_of_start=False
        )
        from_stored = self.mapper.from_stored
        return [
            LoggedEvent(
                n.id, _as_uuid(n.originator_id), n.originator_version, n.topic, from_stored(n)
            )
            for n in notifications
        ]

    def changes(
        self,
        after: int,
        limit: int,
        *,
        until: int | None = None,
        topics: Sequence[str] = (),
    ) -> list[Notified]:
        """Like :meth:`read`, lean: what folding needs and nothing else."""
        return self._decoded(self.recorder.select_states(after, limit, until, topics))

    def customer_changes(
        self,
        customer_id: str,
        *,
        after: int = 0,
        until: int | None = None,
        topics: Sequence[str] = (),
    ) -> list[Notified]:
        """One customer's events with notification ids in ``(after, until]``, in order."""
        rows = self.recorder.select_stream_states(stream_id(customer_id), after, until, topics)
        return self._decoded(rows)

    def _decoded(self, rows: Sequence[tuple[int, str, bytes]]) -> list[Notified]:
        decode = self.mapper.decode
        return [Notified(nid, topic, decode(topic, state)) for nid, topic, state in rows]

    def stream(
        self, customer_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> list[Event]:
        """One customer's events after a stream version, oldest first."""
        stored = self.recorder.select_events(
            stream_id(customer_id), gt=after_version or None, limit=limit
        )
        return [self.mapper.from_stored(s) for s in stored]

    def close(self) -> None:
        self.recorder.close()


def _as_uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)


def sqlite_datastore(path: str, *, lock_timeout: int = 30) -> SQLiteDatastore:
    """The library's SQLite datastore, configured as the log uses it."""
    return SQLiteDatastore(path, lock_timeout=lock_timeout, pool_size=4)


def postgres_datastore(url: str, *, schema: str = "", pool_size: int = 2) -> PostgresDatastore:
    """The library's PostgreSQL datastore for a ``postgresql://`` URL."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    return PostgresDatastore(
        dbname=str(params.get("dbname", "postgres")),
        host=str(params.get("host", "127.0.0.1")),
        port=str(params.get("port", 5432)),
        user=str(params.get("user", "postgres")),
        password=str(params.get("password", "")),
        schema=schema,
        pool_size=pool_size,
        max_overflow=4,
    )


def open_sqlite_log(path: str, *, lock_timeout: int = 30) -> EventLog:
    recorder = SQLiteEventRecorder(sqlite_datastore(path, lock_timeout=lock_timeout))
    recorder.create_table()
    return EventLog(recorder)


def open_postgres_log(url: str, *, schema: str = "", pool_size: int = 2) -> EventLog:
    recorder = PostgresEventRecorder(postgres_datastore(url, schema=schema, pool_size=pool_size))
    recorder.create_table()
    return EventLog(recorder)


_EVENT_ENCODER = msgspec.json.Encoder(decimal_format="string")


def event_json(event: Event) -> bytes:
    """Canonical JSON of an event, as written to the log and printed by the CLI."""
    return _EVENT_ENCODER.encode(event)
