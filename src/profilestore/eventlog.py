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
import hashlib
import random
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from uuid import UUID, uuid5

import msgspec
from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore
from psycopg.errors import DuplicateObject
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier, Literal

from profilestore.errors import AppendConflict, ProfileStoreError
from profilestore.events import Event
from profilestore.mapper import EventMapper

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


class OutdatedLog(ProfileStoreError):
    """An event log written by a profilestore without the tamper-evident chain."""

    def __init__(self, where: str) -> None:
        super().__init__(
            f"the event log in {where} predates profilestore's tamper-evident chain "
            "(no hash column); it was made by a development build: start a new log"
        )


class EventRecorder(ABC):
    """What the log needs from a recorder beyond the library's ApplicationRecorder."""

    @abstractmethod
    def existing_event_ids(self, event_ids: Sequence[str]) -> set[str]: ...

    @abstractmethod
    def stream_heads(self, originator_ids: Sequence[UUID]) -> dict[UUID, tuple[int, bytes]]:
        """Each existing stream's head version and chain hash (one query, no replay)."""

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
    def scan_chain(self) -> Iterator[ChainRow]:
        """Every stored event with its recorded chain hash, stream by stream in order."""

    @abstractmethod
    def directory_heads(self) -> dict[UUID, tuple[int, bytes]]:
        """Every stream's head version and hash, as the stream directory records them."""

    @abstractmethod
    def customers(self) -> list[str]:
        """Every customer id with a stream, sorted."""

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
            "originator_version INTEGER NOT NULL, hash BLOB NOT NULL) WITHOUT ROWID"
        )
        statements.append(
            f"CREATE INDEX IF NOT EXISTS {EVENT_IDS_TABLE}_stream "
            f"ON {EVENT_IDS_TABLE} (originator_id, originator_version)"
        )
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {STREAMS_TABLE} ("
            "originator_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, "
            "head_version INTEGER NOT NULL, head_hash BLOB NOT NULL)"
        )
        return statements

    def scan_chain(self) -> Iterator[ChainRow]:
        with self.datastore.transaction(commit=False) as c:
            cursor = c.sqlite_cursor
            cursor.execute(
                f"SELECT e.rowid, e.originator_id, e.originator_version, e.topic, e.state, "
                f"i.hash FROM {EVENTS_TABLE} e LEFT JOIN {EVENT_IDS_TABLE} i "
                "ON i.originator_id = e.originator_id "
                "AND i.originator_version = e.originator_version "
                "ORDER BY e.originator_id, e.originator_version"
            )
            streams: dict[str, UUID] = {}
            while rows := cursor.fetchmany(5000):
                for nid, originator, version, topic, state, link in rows:
                    stream = streams.get(originator)
                    if stream is None:
                        stream = streams[originator] = UUID(originator)
                    # A tampered row may hold text where bytes were stored: report, not crash.
                    stored = state if isinstance(state, bytes) else str(state).encode()
                    yield nid, stream, version, str(topic), stored, link

    def directory_heads(self) -> dict[UUID, tuple[int, bytes]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT originator_id, head_version, head_hash FROM {STREAMS_TABLE}")
            return {UUID(row[0]): (row[1], row[2]) for row in c.fetchall()}

    def customers(self) -> list[str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT customer_id FROM {STREAMS_TABLE} ORDER BY customer_id")
            return [row[0] for row in c.fetchall()]

    def create_table(self) -> None:
        super().create_table()
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"PRAGMA table_info({EVENT_IDS_TABLE})")
            columns = {row[1] for row in c.fetchall()}
        if "hash" not in columns:
            raise OutdatedLog(self.datastore.pool.db_name)

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # Same transaction as the events: a duplicate event_id rolls the whole batch back.
        c.executemany(
            f"INSERT INTO {EVENT_IDS_TABLE} VALUES (?,?,?,?)",
            [(e, o.hex, v, h) for e, o, v, h in kwargs["event_ids"]],
        )
        c.executemany(
            f"INSERT INTO {STREAMS_TABLE} VALUES (?,?,?,?) ON CONFLICT (originator_id) "
            "DO UPDATE SET head_version = excluded.head_version, head_hash = excluded.head_hash",
            [(o.hex, customer, v, h) for o, customer, v, h in kwargs["streams"]],
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

    def stream_heads(self, originator_ids: Sequence[UUID]) -> dict[UUID, tuple[int, bytes]]:
        heads: dict[UUID, tuple[int, bytes]] = {}
        with self.datastore.transaction(commit=False) as c:
            for chunk in _chunks(originator_ids, 500):
                c.execute(
                    f"SELECT originator_id, head_version, head_hash FROM {STREAMS_TABLE} "
                    f"WHERE originator_id IN ({','.join('?' * len(chunk))})",
                    [o.hex for o in chunk],
                )
                heads.update((UUID(row[0]), (row[1], row[2])) for row in c.fetchall())
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
        streams = Identifier(self.datastore.schema), Identifier(STREAMS_TABLE)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0}.{1} (event_id text PRIMARY KEY, "
                "originator_id uuid NOT NULL, originator_version bigint NOT NULL, "
                "hash bytea NOT NULL)"
            ).format(*table)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE INDEX IF NOT EXISTS {2} ON {0}.{1} (originator_id, originator_version)"
            ).format(*table, Identifier(f"{EVENT_IDS_TABLE}_stream"))
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0}.{1} (originator_id uuid PRIMARY KEY, "
                "customer_id text NOT NULL, head_version bigint NOT NULL, "
                "head_hash bytea NOT NULL)"
            ).format(*streams)
        )
        self._insert_event_ids = SQL(
            "INSERT INTO {0}.{1} (event_id, originator_id, originator_version, hash) "
            "SELECT * FROM unnest(%s::text[], %s::uuid[], %s::bigint[], %s::bytea[])"
        ).format(*table)
        self._upsert_streams = SQL(
            "INSERT INTO {0}.{1} (originator_id, customer_id, head_version, head_hash) "
            "SELECT * FROM unnest(%s::uuid[], %s::text[], %s::bigint[], %s::bytea[]) "
            "ON CONFLICT (originator_id) DO UPDATE SET head_version = EXCLUDED.head_version, "
            "head_hash = EXCLUDED.head_hash"
        ).format(*streams)
        self._select_stream_heads = SQL(
            "SELECT originator_id, head_version, head_hash FROM {0}.{1} "
            "WHERE originator_id = ANY(%s::uuid[])"
        ).format(*streams)
        self._scan_chain = SQL(
            "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, "
            "e.state, i.hash FROM {0}.{1} e LEFT JOIN {0}.{2} i "
            "ON i.originator_id = e.originator_id AND i.originator_version = e.originator_version "
            "ORDER BY e.originator_id, e.originator_version"
        ).format(
            Identifier(self.datastore.schema), Identifier(EVENTS_TABLE), Identifier(EVENT_IDS_TABLE)
        )
        self._directory = SQL("SELECT originator_id, head_version, head_hash FROM {0}.{1}").format(
            *streams
        )
        self._customers = SQL("SELECT customer_id FROM {0}.{1} ORDER BY customer_id").format(
            *streams
        )
        qualified = f"{self.datastore.schema}."
        self._schema_complete = SQL(
            "SELECT to_regclass({streams}) IS NOT NULL AND to_regclass({index}) IS NOT NULL "
            "AND to_regtype({event_type}) IS NOT NULL AND EXISTS (SELECT 1 FROM "
            "information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "AND column_name = 'hash') AS complete"
        ).format(
            streams=Literal(qualified + STREAMS_TABLE),
            index=Literal(f"{qualified}{EVENT_IDS_TABLE}_stream"),
            event_type=Literal(qualified + self.stored_event_type_name),
        )
        self._has_hash_column = SQL(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = %s AND column_name = 'hash'"
        )
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

    def create_table(self) -> None:
        # DDL takes table locks even when it has nothing to do ("IF NOT EXISTS"), which
        # deadlocks against writers holding row locks: when the schema is complete (a
        # lock-free catalog read), there is nothing to run.
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._schema_complete, (self.datastore.schema, EVENT_IDS_TABLE))
            row = curs.fetchone()
        if row is not None and row["complete"]:
            self.datastore.register_type_adapters()
            return
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
            curs.execute(self._has_hash_column, (self.datastore.schema, EVENT_IDS_TABLE))
            if curs.fetchone() is None:
                raise OutdatedLog(f"schema {self.datastore.schema}")
        self.datastore.register_type_adapters()

    def _insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # Runs in the library's insert transaction, before the events themselves.
        # Not prepared: a conflict aborts this pipelined transaction, and statements that
        # psycopg prepared inside it would be missing from the server ("_pg3_N does not
        # exist") when the batch is retried.
        event_ids = [list(column) for column in zip(*kwargs["event_ids"], strict=True)]
        curs.execute(self._insert_event_ids, event_ids, prepare=False)
        streams = [list(column) for column in zip(*kwargs["streams"], strict=True)]
        curs.execute(self._upsert_streams, streams, prepare=False)

    def existing_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_event_ids, (list(event_ids),))
            rows: list[DictRow] = curs.fetchall()
            return {row["event_id"] for row in rows}

    def scan_chain(self) -> Iterator[ChainRow]:
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor(name="profilestore_scan_chain") as curs,
        ):
            curs.itersize = 5000  # a server-side cursor: memory stays flat
            curs.execute(self._scan_chain)
            for r in curs:
                yield (
                    r["notification_id"],
                    r["originator_id"],
                    r["originator_version"],
                    r["topic"],
                    bytes(r["state"]),
                    bytes(r["hash"]) if r["hash"] is not None else None,
                )

    def directory_heads(self) -> dict[UUID, tuple[int, bytes]]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._directory)
            rows: list[DictRow] = curs.fetchall()
            return {r["originator_id"]: (r["head_version"], bytes(r["head_hash"])) for r in rows}

    def customers(self) -> list[str]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._customers)
            rows: list[DictRow] = curs.fetchall()
            return [r["customer_id"] for r in rows]

    def stream_heads(self, originator_ids: Sequence[UUID]) -> dict[UUID, tuple[int, bytes]]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_stream_heads, (list(originator_ids),))
            rows: list[DictRow] = curs.fetchall()
            return {r["originator_id"]: (r["head_version"], bytes(r["head_hash"])) for r in rows}

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
        heads = self.recorder.stream_heads(list(set(streams.values())))
        stored_events: list[StoredEvent] = []
        event_ids: list[tuple[str, UUID, int, bytes]] = []
        touched: dict[UUID, str] = {}
        for event in new_events:
            originator_id = streams[event.customer_id]
            version, previous = heads.get(originator_id, (0, GENESIS))
            stored = self.mapper.to_stored(originator_id, version + 1, event)
            link = chain_hash(previous, originator_id, version + 1, stored.topic, stored.state)
            heads[originator_id] = (version + 1, link)
            touched[originator_id] = event.customer_id
            stored_events.append(stored)
            event_ids.append((event.event_id, originator_id, version + 1, link))
        # Sorted: concurrent batches lock directory rows in one order, so cannot deadlock.
        stream_rows = [(o, touched[o], *heads[o]) for o in sorted(touched, key=lambda o: o.bytes)]
        notification_ids = self.recorder.insert_events(
            stored_events, event_ids=event_ids, streams=stream_rows
        )
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
    # Processes opening a new file at once race to switch it to WAL, which SQLite
    # refuses at once ("database is locked") instead of waiting: try again, briefly. Each
    # try gets a fresh datastore: when the WAL switch fails inside the library's pool,
    # the pool keeps its writer lock (eventsourcing 9.5.6), and a retry on the same pool
    # would wait 5 s for it and fail with "Timed out waiting for return of writer".
    for attempt in range(1, 41):
        recorder = SQLiteEventRecorder(sqlite_datastore(path, lock_timeout=lock_timeout))
        try:
            recorder.create_table()
            return EventLog(recorder)
        except (sqlite3.OperationalError, OperationalError) as error:
            recorder.datastore.close()
            if "locked" not in str(error) or attempt == 40:
                raise
            time.sleep(0.01 * attempt)
    raise AssertionError("unreachable")  # the last attempt returns or raises


def open_postgres_log(url: str, *, schema: str = "", pool_size: int = 2) -> EventLog:
    recorder = PostgresEventRecorder(postgres_datastore(url, schema=schema, pool_size=pool_size))
    recorder.create_table()
    return EventLog(recorder)


_EVENT_ENCODER = msgspec.json.Encoder(decimal_format="string")


def event_json(event: Event) -> bytes:
    """Canonical JSON of an event, as written to the log and printed by the CLI."""
    return _EVENT_ENCODER.encode(event)
