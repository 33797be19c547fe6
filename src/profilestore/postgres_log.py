"""The event log on PostgreSQL: a recorder and its factory.

:class:`PostgresEventRecorder` implements the log's port (:class:`~profilestore.eventlog.
EventRecorder`) on the ``eventsourcing`` library's PostgreSQL application recorder, adding
the event-id table and the stream directory (see :mod:`profilestore.eventlog`), and the
library's LISTEN/NOTIFY subscription for the real-time follower. :func:`open_url` is what
:func:`profilestore.eventlog.open_log` calls for a ``postgresql://`` URL; this module (and
so psycopg) is imported only then.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import Notification, StoredEvent, Subscription
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg.conninfo import conninfo_to_dict
from psycopg.errors import DuplicateObject
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Composed, Identifier, Literal

from profilestore.errors import LogUrlError, OutdatedLog, StoreMissing
from profilestore.eventlog import (
    EVENT_IDS_TABLE,
    EVENTS_TABLE,
    STREAMS_TABLE,
    ChainRow,
    EventLog,
    EventRecorder,
    LogOptions,
    StateRow,
    StateSubscription,
    database_errors,
)
from profilestore.keys import (
    GENERATION,
    KEY_VALUES_TABLE,
    KEYS_TABLE,
    KeyStore,
    Wrapped,
)


class PostgresEventRecorder(PostgresApplicationRecorder, EventRecorder):
    """The library's PostgreSQL application recorder plus the event-id table."""

    backend = "PostgreSQL"
    driver_errors = (psycopg.Error,)
    conflicts = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
    keys_in_transaction = True

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
                "head_hash bytea NOT NULL, first_seen bigint)"
            ).format(*streams)
        )
        # A directory from before the column: its rows stay without one (read as 0).
        self._add_first_seen = SQL(
            "ALTER TABLE {0}.{1} ADD COLUMN IF NOT EXISTS first_seen bigint"
        ).format(*streams)
        self.sql_create_statements.append(self._add_first_seen)
        self._insert_event_ids = SQL(
            "INSERT INTO {0}.{1} (event_id, originator_id, originator_version, hash) "
            "SELECT * FROM unnest(%b::text[], %b::uuid[], %b::bigint[], %b::bytea[])"
        ).format(*table)
        self._insert_stored = SQL(
            "INSERT INTO {0}.{1} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[]) "
            "RETURNING notification_id"
        ).format(Identifier(self.datastore.schema), Identifier(EVENTS_TABLE))
        self._insert_keys = SQL(
            "INSERT INTO {0}.{1} (stream, kek_id, sealed) "
            "SELECT * FROM unnest(%b::uuid[], %b::text[], %b::bytea[])"
        ).format(Identifier(self.datastore.schema), Identifier(KEYS_TABLE))
        self._upsert_streams = SQL(
            "INSERT INTO {0}.{1} (originator_id, customer_id, head_version, head_hash, "
            "first_seen) SELECT * FROM unnest(%b::uuid[], %b::text[], %b::bigint[], "
            "%b::bytea[], %b::bigint[]) "
            "ON CONFLICT (originator_id) DO UPDATE SET head_version = EXCLUDED.head_version, "
            "head_hash = EXCLUDED.head_hash"
        ).format(*streams)
        self._select_stream_heads = SQL(
            "SELECT originator_id, head_version, head_hash, first_seen FROM {0}.{1} "
            "WHERE originator_id = ANY(%b::uuid[])"
        ).format(*streams)
        self._scan_chain = SQL(
            "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, "
            "e.state, i.hash FROM {0}.{1} e LEFT JOIN {0}.{2} i "
            "ON i.originator_id = e.originator_id AND i.originator_version = e.originator_version "
            "WHERE %s::uuid[] IS NULL OR e.originator_id = ANY(%s::uuid[]) "
            "ORDER BY e.originator_id, e.originator_version"
        ).format(
            Identifier(self.datastore.schema), Identifier(EVENTS_TABLE), Identifier(EVENT_IDS_TABLE)
        )
        self._directory = SQL("SELECT originator_id, head_version, head_hash FROM {0}.{1}").format(
            *streams
        )
        self._customers = SQL("SELECT originator_id, customer_id FROM {0}.{1}").format(*streams)
        qualified = f"{self.datastore.schema}."
        self._schema_complete = SQL(
            "SELECT to_regclass({streams}) IS NOT NULL AND to_regclass({index}) IS NOT NULL "
            "AND to_regtype({event_type}) IS NOT NULL AND EXISTS (SELECT 1 FROM "
            "information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "AND column_name = 'hash') AS complete, EXISTS (SELECT 1 FROM "
            "information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "AND column_name = 'first_seen') AS current"
        ).format(
            streams=Literal(qualified + STREAMS_TABLE),
            index=Literal(f"{qualified}{EVENT_IDS_TABLE}_stream"),
            event_type=Literal(qualified + self.stored_event_type_name),
        )
        # complete: readable (a read-only open needs no more); current: nothing to add.
        self._schema_tables = (
            self.datastore.schema,
            EVENT_IDS_TABLE,
            self.datastore.schema,
            STREAMS_TABLE,
        )
        self._has_hash_column = SQL(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = %s AND column_name = 'hash'"
        )
        self._select_event_ids = SQL(
            "SELECT event_id FROM {0}.{1} WHERE event_id = ANY(%b::text[])"
        ).format(*table)
        self._select_states = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state FROM {0}.{1} "
            "WHERE notification_id > %s "
            "AND notification_id <= %s AND (cardinality(%s::text[]) = 0 OR topic = ANY(%s)) "
            "ORDER BY notification_id LIMIT %s"
        ).format(Identifier(self.datastore.schema), Identifier(EVENTS_TABLE))
        # Along the primary key (originator_id, originator_version): many whole streams.
        by_stream = (
            "SELECT notification_id, originator_id, originator_version, topic, state FROM {0}.{1} "
            "WHERE %s AND notification_id <= %%s "
            "AND (cardinality(%%s::text[]) = 0 OR topic = ANY(%%s)) "
            "ORDER BY originator_id, originator_version"
        )
        self._select_states_by_stream = {
            first: SQL(
                by_stream % ("TRUE" if first else "originator_id > %s") + " LIMIT %s"
            ).format(Identifier(self.datastore.schema), Identifier(EVENTS_TABLE))
            for first in (True, False)
        }
        self._select_streams_states = SQL(by_stream % "originator_id = ANY(%s::uuid[])").format(
            Identifier(self.datastore.schema), Identifier(EVENTS_TABLE)
        )
        self._select_stream_states = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state FROM {0}.{1} "
            "WHERE originator_id = %s "
            "AND notification_id > %s AND notification_id <= %s "
            "AND (cardinality(%s::text[]) = 0 OR topic = ANY(%s)) ORDER BY originator_version "
            "LIMIT %s"  # NULL: no limit
        ).format(Identifier(self.datastore.schema), Identifier(EVENTS_TABLE))

    def check_table(self) -> None:
        """For a read-only open: raise unless the log's tables are complete; no DDL."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._schema_complete, self._schema_tables)
            row = curs.fetchone()
        if row is None or not row["complete"]:
            raise StoreMissing("PostgreSQL event log", self.location)
        self.datastore.register_type_adapters()

    def create_table(self) -> None:
        # DDL takes table locks even when it has nothing to do ("IF NOT EXISTS"), which
        # deadlocks against writers holding row locks: when the schema is complete (a
        # lock-free catalog read), there is nothing to run.
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._schema_complete, self._schema_tables)
            row = curs.fetchone()
        if row is not None and row["complete"] and row["current"]:
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
            # Checked again under the lock: a process that waited for another's DDL must
            # not run it again, as its table locks would deadlock against that process's
            # first appends (seen: "deadlock detected" with 4 processes starting at once).
            curs.execute(self._schema_complete, self._schema_tables)
            row = curs.fetchone()
            if row is None or not row["complete"]:
                for statement in self.sql_create_statements:
                    if "CREATE TYPE" in statement.as_string():
                        with contextlib.suppress(DuplicateObject), curs.connection.transaction():
                            curs.execute(statement, prepare=False)
                self._create_table(curs)
            elif not row["current"]:
                curs.execute(self._add_first_seen)
            curs.execute(self._has_hash_column, (self.datastore.schema, EVENT_IDS_TABLE))
            if curs.fetchone() is None:
                raise OutdatedLog(f"schema {self.datastore.schema}")
        self.datastore.register_type_adapters()

    def _insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # Runs in the library's insert transaction, before the events themselves. Nothing
        # is prepared on our connections (see UnpreparedDatastore). An empty batch (or a
        # call without our keyword arguments, as the library's own callers make) writes
        # nothing, as the library's recorder does.
        keys = kwargs.get("keys") or ()
        if keys:
            # The batch's new data keys, first (sorted by stream: concurrent batches take
            # key rows in one order). No ON CONFLICT: a key another writer stored first is
            # a unique violation, which rolls the batch back to be planned again with it.
            curs.execute(
                self._insert_keys,
                ([s for s, _ in keys], [w.kek_id for _, w in keys], [w.sealed for _, w in keys]),
            )
        event_ids = kwargs.get("event_ids") or ()
        if event_ids:
            columns = [list(column) for column in zip(*event_ids, strict=True)]
            curs.execute(self._insert_event_ids, columns)
        streams = kwargs.get("streams") or ()
        if streams:
            columns = [list(column) for column in zip(*streams, strict=True)]
            curs.execute(self._upsert_streams, columns)

    def _insert_stored_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # The library's (lock the table, notify, insert, then it reads the notification
        # ids RETURNING gives, in order), with the events bound as four binary arrays:
        # its array of a composite type goes as text, each element's state as hex run
        # through a regular expression, a fifth of a profiled ingest.
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(
            self._insert_stored,
            (
                [e.originator_id for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
        )

    def existing_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_event_ids, (list(event_ids),))
            rows: list[DictRow] = curs.fetchall()
            return {row["event_id"] for row in rows}

    def scan_chain(self, streams: Sequence[UUID] | None = None) -> Iterator[ChainRow]:
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor(name="profilestore_scan_chain") as curs,
        ):
            curs.itersize = 5000  # a server-side cursor: memory stays flat
            wanted = None if streams is None else list(streams)
            curs.execute(self._scan_chain, (wanted, wanted))
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

    def directory_names(self) -> list[tuple[UUID, str]]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._customers)
            rows: list[DictRow] = curs.fetchall()
            return [(r["originator_id"], r["customer_id"]) for r in rows]

    def append_heads(self, originator_ids: Sequence[UUID]) -> dict[UUID, tuple[int, bytes, int]]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_stream_heads, (list(originator_ids),))
            rows: list[DictRow] = curs.fetchall()
            return {
                r["originator_id"]: (
                    r["head_version"],
                    bytes(r["head_hash"]),
                    r["first_seen"] or 0,
                )
                for r in rows
            }

    def select_stream_states(
        self,
        originator_id: UUID,
        after: int,
        until: int | None,
        topics: Sequence[str],
        limit: int | None = None,
    ) -> list[StateRow]:
        stop = until if until is not None else 2**63 - 1
        return self._rows(
            self._select_stream_states,
            (originator_id, after, stop, list(topics), list(topics), limit),
        )

    def select_states(
        self, after: int, limit: int, until: int | None, topics: Sequence[str]
    ) -> list[StateRow]:
        stop = until if until is not None else 2**63 - 1
        return self._rows(self._select_states, (after, stop, list(topics), list(topics), limit))

    def select_states_by_stream(
        self, after: UUID | None, limit: int, until: int | None, topics: Sequence[str]
    ) -> list[StateRow]:
        stop = until if until is not None else 2**63 - 1
        first = after is None
        params: list[Any] = [] if first else [after]
        params += [stop, list(topics), list(topics), limit]
        return self._rows(self._select_states_by_stream[first], params)

    def select_streams_states(
        self, streams: Sequence[UUID], until: int | None, topics: Sequence[str]
    ) -> list[StateRow]:
        stop = until if until is not None else 2**63 - 1
        return self._rows(
            self._select_streams_states, [list(streams), stop, list(topics), list(topics)]
        )

    def _rows(self, statement: SQL | Composed, params: Sequence[Any]) -> list[StateRow]:
        # Every read of events comes here: plain tuples, and the binary protocol, in which
        # the server sends each state as its bytes rather than as hex text twice their
        # size (reading 397k events: 1.2 s against 1.6-2.0 with the library's dict rows).
        with (
            self.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as curs,
        ):
            curs.execute(statement, params, binary=True)
            rows = curs.fetchall()
        return [
            (nid, stream, version, topic, bytes(state))
            for nid, stream, version, topic, state in rows
        ]

    def subscribe_states(self, after: int, topics: Sequence[str]) -> StateSubscription | None:
        return _NotificationStates(self.subscribe(gt=after, topics=topics))

    def key_store(self, *, create: bool, read_only: bool) -> KeyStore | None:
        keys = PostgresKeyStore(self.datastore)
        if keys.exists():
            return keys
        if not create:
            return None
        keys.create_tables()
        return keys

    def first_state(self) -> bytes | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT state FROM {0}.{1} ORDER BY notification_id LIMIT 1").format(
                    Identifier(self.datastore.schema), Identifier(EVENTS_TABLE)
                )
            )
            row = curs.fetchone()
        return None if row is None else bytes(row["state"])

    def close(self) -> None:
        self.datastore.close()


class PostgresKeyStore(KeyStore):
    """The key store of a PostgreSQL log: two tables in the log's schema, on the log's
    connection pool. Its keys are wrapped by a KEK that is not in the database; a
    destroyed key's row is a tombstone without it (``VACUUM`` in :meth:`scrub` removes
    the dead row versions PostgreSQL keeps until then)."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore
        schema = Identifier(datastore.schema)
        self._keys = schema, Identifier(KEYS_TABLE)
        self._values = schema, Identifier(KEY_VALUES_TABLE)
        self.location = f"schema {datastore.schema}"
        # Composed once: the append path reads these for every batch.
        self._generation = SQL("SELECT counter FROM {0}.{1} WHERE name = %b").format(*self._values)
        self._load = SQL(
            "SELECT stream, kek_id, sealed FROM {0}.{1} WHERE stream = ANY(%b::uuid[])"
        ).format(*self._keys)
        self._load_with_generation = SQL(
            "SELECT NULL::uuid AS stream, NULL::text AS kek_id, NULL::bytea AS sealed, "
            "counter FROM {2}.{3} WHERE name = %b UNION ALL "
            "SELECT stream, kek_id, sealed, NULL FROM {0}.{1} WHERE stream = ANY(%b::uuid[])"
        ).format(*self._keys, *self._values)

    def exists(self) -> bool:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                "SELECT to_regclass(%s) IS NOT NULL AS found",
                (f"{self.datastore.schema}.{KEY_VALUES_TABLE}",),
            )
            row = curs.fetchone()
        return bool(row and row["found"])

    def create_tables(self) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"profilestore:{self.datastore.schema}.{KEYS_TABLE}",),
            )
            curs.execute(
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0}.{1} (stream uuid PRIMARY KEY, kek_id text, "
                    "sealed bytea, destroyed_at timestamptz)"
                ).format(*self._keys)
            )
            curs.execute(
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0}.{1} (name text PRIMARY KEY, kek_id text, "
                    "sealed bytea, counter bigint NOT NULL DEFAULT 0)"
                ).format(*self._values)
            )

    def _read(self, statement: Composed, params: Sequence[Any] = ()) -> list[DictRow]:
        """The rows of one read statement, on an autocommit connection: one round trip
        (a read in ``transaction()`` costs three: BEGIN, the statement, ROLLBACK). The
        append path reads the key store on every batch."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, params)
            rows: list[DictRow] = curs.fetchall()
            return rows

    def load(self, streams: Sequence[UUID]) -> dict[UUID, Wrapped | None]:
        rows = self._read(self._load, (list(streams),))
        return {
            r["stream"]: None if r["sealed"] is None else Wrapped(r["kek_id"], bytes(r["sealed"]))
            for r in rows
        }

    def load_with_generation(
        self, streams: Sequence[UUID]
    ) -> tuple[int, dict[UUID, Wrapped | None]]:
        # One statement, so one snapshot: the generation and the keys as of one moment.
        rows = self._read(self._load_with_generation, (GENERATION, list(streams)))
        generation = 0
        found: dict[UUID, Wrapped | None] = {}
        for r in rows:
            if r["stream"] is None:
                generation = int(r["counter"])
            else:
                sealed = r["sealed"]
                found[r["stream"]] = None if sealed is None else Wrapped(r["kek_id"], bytes(sealed))
        return generation, found

    def create(self, keys: Mapping[UUID, Wrapped]) -> dict[UUID, Wrapped | None]:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "INSERT INTO {0}.{1} (stream, kek_id, sealed) "
                    "SELECT * FROM unnest(%s::uuid[], %s::text[], %s::bytea[]) "
                    "ON CONFLICT (stream) DO NOTHING RETURNING stream"
                ).format(*self._keys),
                (list(keys), [w.kek_id for w in keys.values()], [w.sealed for w in keys.values()]),
            )
            inserted = {r["stream"] for r in curs.fetchall()}
        stored: dict[UUID, Wrapped | None] = {s: w for s, w in keys.items() if s in inserted}
        if len(stored) < len(keys):  # a concurrent writer stored some first: theirs win
            stored.update(self.load([s for s in keys if s not in inserted]))
        return stored

    def destroy(self, streams: Sequence[UUID], at: dt.datetime) -> int:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "UPDATE {0}.{1} SET kek_id = NULL, sealed = NULL, destroyed_at = %s "
                    "WHERE stream = ANY(%s) AND sealed IS NOT NULL"
                ).format(*self._keys),
                (at, list(streams)),
            )
            destroyed = curs.rowcount
            curs.execute(
                SQL(
                    "INSERT INTO {0}.{1} (stream, destroyed_at) SELECT s, %s FROM "
                    "unnest(%s::uuid[]) AS s ON CONFLICT (stream) DO NOTHING"
                ).format(*self._keys),
                (at, list(streams)),
            )
            curs.execute(
                SQL(
                    "INSERT INTO {0}.{1} (name, counter) VALUES (%s, 1) "
                    "ON CONFLICT (name) DO UPDATE SET counter = {0}.{1}.counter + 1"
                ).format(*self._values),
                (GENERATION,),
            )
        return int(destroyed)

    def generation(self) -> int:
        rows = self._read(self._generation, (GENERATION,))
        return int(rows[0]["counter"]) if rows else 0

    def value(self, name: str) -> Wrapped | None:
        rows = self._read(
            SQL("SELECT kek_id, sealed FROM {0}.{1} WHERE name = %s AND sealed IS NOT NULL").format(
                *self._values
            ),
            (name,),
        )
        return Wrapped(rows[0]["kek_id"], bytes(rows[0]["sealed"])) if rows else None

    def put_value_if_absent(self, name: str, value: Wrapped) -> Wrapped:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "INSERT INTO {0}.{1} (name, kek_id, sealed) VALUES (%s, %s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET kek_id = COALESCE({0}.{1}.kek_id, "
                    "excluded.kek_id), sealed = COALESCE({0}.{1}.sealed, excluded.sealed)"
                ).format(*self._values),
                (name, value.kek_id, value.sealed),
            )
        stored = self.value(name)
        assert stored is not None
        return stored

    def all_keys(self) -> Iterator[tuple[UUID, Wrapped]]:
        rows = self._read(
            SQL("SELECT stream, kek_id, sealed FROM {0}.{1} WHERE sealed IS NOT NULL").format(
                *self._keys
            )
        )
        for r in rows:
            yield r["stream"], Wrapped(r["kek_id"], bytes(r["sealed"]))

    def replace(self, keys: Mapping[UUID, Wrapped], values: Mapping[str, Wrapped]) -> None:
        with self.datastore.transaction(commit=True) as curs:
            for stream, wrapped in keys.items():
                curs.execute(
                    SQL(
                        "UPDATE {0}.{1} SET kek_id = %s, sealed = %s "
                        "WHERE stream = %s AND sealed IS NOT NULL"
                    ).format(*self._keys),
                    (wrapped.kek_id, wrapped.sealed, stream),
                )
            for name, wrapped in values.items():
                curs.execute(
                    SQL("UPDATE {0}.{1} SET kek_id = %s, sealed = %s WHERE name = %s").format(
                        *self._values
                    ),
                    (wrapped.kek_id, wrapped.sealed, name),
                )

    def counts(self) -> tuple[int, int]:
        (row,) = self._read(
            SQL(
                "SELECT COUNT(sealed) AS live, COUNT(*) - COUNT(sealed) AS dead FROM {0}.{1}"
            ).format(*self._keys)
        )
        return int(row["live"]), int(row["dead"])

    def scrub(self) -> None:
        with self.datastore.get_connection() as conn:
            conn.autocommit = True
            try:
                conn.execute(SQL("VACUUM {0}.{1}").format(*self._keys))
            finally:
                conn.autocommit = False

    def close(self) -> None:
        """The pool is the log's: the log closes it."""


class _NotificationStates(StateSubscription):
    """The library's LISTEN/NOTIFY subscription (its own thread and connection), as rows."""

    def __init__(self, subscription: Subscription[Any]) -> None:
        self._subscription = subscription

    def __next__(self) -> StateRow:
        notification: Notification = next(self._subscription)
        originator_id = notification.originator_id
        stream = originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
        version = notification.originator_version
        return notification.id, stream, int(version), notification.topic, notification.state

    def stop(self) -> None:
        self._subscription.stop()


class UnpreparedDatastore(PostgresDatastore):
    """The library's datastore, whose connections never prepare a statement.

    The library prepares its ``LOCK TABLE`` and its insert (``prepare=True``) inside the
    pipelined transaction that also runs our statements. When a concurrent writer makes
    that transaction fail, psycopg may keep a statement name the server never created,
    and the connection's next append fails with ``prepared statement "_pg3_N" does not
    exist`` (seen in 3 of 15 trials of 8 processes appending conflicting batches).
    psycopg's ``prepare_threshold = None`` turns preparing off on the connection, even
    where ``prepare=True`` is asked for: each statement is parsed on every run (for an
    append, a few statements per batch, not per event), and no name can go missing.
    """

    def __init__(self, *args: Any, read_only: bool = False, **kwargs: Any) -> None:
        self.read_only = read_only
        """Every transaction read-only (``default_transaction_read_only``): a read-only open."""
        super().__init__(*args, **kwargs)  # builds the pool, with after_connect_func()

    def after_connect_func(self) -> Callable[[psycopg.Connection[Any]], None]:
        configure = super().after_connect_func()
        read_only = self.read_only

        def after_connect(conn: psycopg.Connection[Any]) -> None:
            configure(conn)
            conn.prepare_threshold = None
            if read_only:
                conn.execute("SET default_transaction_read_only = on")

        return after_connect


def postgres_datastore(
    url: str, *, schema: str = "", pool_size: int = 2, read_only: bool = False
) -> PostgresDatastore:
    """The library's PostgreSQL datastore for a ``postgresql://`` URL (see
    :class:`UnpreparedDatastore`)."""
    params = connection_params(url)
    return UnpreparedDatastore(
        dbname=params.get("dbname", "postgres"),
        host=params.get("host", "127.0.0.1"),
        port=params.get("port", "5432"),
        user=params.get("user", "postgres"),
        password=params.get("password", ""),
        schema=schema,
        pool_size=pool_size,
        max_overflow=4,
        read_only=read_only,
    )


def location(url: str, schema: str) -> str:
    """Where a log is, for messages: host, port, database and schema (no user, no password)."""
    params = connection_params(url)
    return (
        f"{params.get('host', '127.0.0.1')}:{params.get('port', '5432')}/"
        f"{params.get('dbname', 'postgres')} schema {schema or 'public'}"
    )


def connection_params(url: str) -> dict[str, str]:
    """A ``postgresql://`` URL's connection parameters, checked before any connection is
    tried: a port that is not a number would otherwise surface only as the pool's
    connection timeout, 30 s later."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        params = None  # raised below, outside: psycopg's error quotes the URL's password
    if params is None:
        raise LogUrlError("the PostgreSQL URL cannot be parsed")
    port = str(params.get("port", "5432"))
    if not (port.isdigit() and 0 < int(port) < 65536):
        raise LogUrlError("the PostgreSQL URL's port is not a number from 1 to 65535")
    return {name: str(value) for name, value in params.items()}


def open_postgres_log(
    url: str, *, schema: str = "", pool_size: int = 2, read_only: bool = False
) -> EventLog:
    """Open (creating its tables if need be) the log in a PostgreSQL database.

    ``read_only``: no DDL (the tables must exist), every transaction read-only, and
    appends refused.
    """
    datastore = postgres_datastore(url, schema=schema, pool_size=pool_size, read_only=read_only)
    where = location(url, schema)
    with database_errors("PostgreSQL", "open", PostgresEventRecorder.driver_errors, where):
        recorder = PostgresEventRecorder(datastore)
        recorder.location = where
        try:
            if read_only:
                recorder.check_table()
            else:
                recorder.create_table()
        except BaseException:
            recorder.close()
            raise
    return EventLog(recorder, read_only=read_only)


def check_url(url: str) -> None:
    """Raise :class:`LogUrlError` unless ``url`` is a usable PostgreSQL URL."""
    connection_params(url)


def open_url(url: str, options: LogOptions) -> EventLog:
    """The factory :func:`profilestore.eventlog.open_log` calls for ``postgresql:`` URLs."""
    connection_params(url)  # checked before anything is created
    return open_postgres_log(url, schema=options.postgres_schema, read_only=options.read_only)
