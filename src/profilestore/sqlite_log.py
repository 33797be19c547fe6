"""The event log on an SQLite file (the default backend): a recorder and its factory.

:class:`SQLiteEventRecorder` implements the log's port (:class:`~profilestore.eventlog.
EventRecorder`) on the ``eventsourcing`` library's SQLite application recorder, adding the
event-id table and the stream directory (see :mod:`profilestore.eventlog`). SQLite has no
subscription: the real-time follower polls. Stream ids are stored as hex text, as the
library stores them. :func:`open_url` is what :func:`profilestore.eventlog.open_log` calls
for a ``sqlite:///PATH`` URL. Nothing here imports a PostgreSQL driver.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import OperationalError, StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore

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
from profilestore.keys import KeyStore, SQLiteKeyStore, sqlite_key_path
from profilestore.sqlite_files import read_only_uri


def _position_range(
    statement: str, params: list[Any], until: int | None, topics: Sequence[str]
) -> tuple[str, list[Any]]:
    """``statement`` narrowed to positions up to ``until`` and to ``topics`` (if given)."""
    if until is not None:
        statement += " AND rowid <= ?"
        params.append(until)
    if topics:
        statement += f" AND topic IN ({','.join('?' * len(topics))})"
        params.extend(topics)
    return statement, params


class SQLiteEventRecorder(SQLiteApplicationRecorder, EventRecorder):
    """The library's SQLite application recorder plus the event-id table."""

    backend = "SQLite"
    driver_errors = (sqlite3.Error,)

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
            "head_version INTEGER NOT NULL, head_hash BLOB NOT NULL, first_seen INTEGER)"
        )
        return statements

    def scan_chain(self, streams: Sequence[UUID] | None = None) -> Iterator[ChainRow]:
        where, params = "", []
        if streams is not None:
            # Few streams (an erasure's): one IN list, read through the primary key.
            params = [s.hex for s in streams]
            where = f"WHERE e.originator_id IN ({','.join('?' * len(params))}) "
        with self.datastore.transaction(commit=False) as c:
            cursor = c.sqlite_cursor
            cursor.execute(
                f"SELECT e.rowid, e.originator_id, e.originator_version, e.topic, e.state, "
                f"i.hash FROM {EVENTS_TABLE} e LEFT JOIN {EVENT_IDS_TABLE} i "
                "ON i.originator_id = e.originator_id "
                "AND i.originator_version = e.originator_version "
                f"{where}ORDER BY e.originator_id, e.originator_version",
                params,
            )
            ids: dict[str, UUID] = {}
            while rows := cursor.fetchmany(5000):
                for nid, originator, version, topic, state, link in rows:
                    stream = ids.get(originator)
                    if stream is None:
                        stream = ids[originator] = UUID(originator)
                    # A tampered row may hold text where bytes were stored: report, not crash.
                    stored = state if isinstance(state, bytes) else str(state).encode()
                    yield nid, stream, version, str(topic), stored, link

    def directory_heads(self) -> dict[UUID, tuple[int, bytes]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT originator_id, head_version, head_hash FROM {STREAMS_TABLE}")
            return {UUID(row[0]): (row[1], row[2]) for row in c.fetchall()}

    def directory_names(self) -> list[tuple[UUID, str]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT originator_id, customer_id FROM {STREAMS_TABLE}")
            return [(UUID(row[0]), row[1]) for row in c.fetchall()]

    def create_table(self) -> None:
        super().create_table()
        self.check_table()
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"PRAGMA table_info({STREAMS_TABLE})")
            current = "first_seen" in {row[1] for row in c.fetchall()}
        if not current:
            # A directory from before the column: its rows stay without one (read as 0).
            try:
                with self.datastore.transaction(commit=True) as c:
                    c.execute(f"ALTER TABLE {STREAMS_TABLE} ADD COLUMN first_seen INTEGER")
            except (sqlite3.OperationalError, OperationalError) as error:
                if "duplicate column" not in str(error):
                    raise  # else another process opening it at once added it first

    def check_table(self) -> None:
        """Raise unless the log's tables are there, with the chain's hash column."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"PRAGMA table_info({EVENT_IDS_TABLE})")
            columns = {row[1] for row in c.fetchall()}
        if not columns:
            raise StoreMissing("SQLite event log", self.location)
        if "hash" not in columns:
            raise OutdatedLog(self.location or self.datastore.pool.db_name)

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # Same transaction as the events: a duplicate event_id rolls the whole batch back.
        # Without our keyword arguments (an empty batch, the library's own callers) there
        # is nothing of ours to write, as in the library's recorder.
        c.executemany(
            f"INSERT INTO {EVENT_IDS_TABLE} VALUES (?,?,?,?)",
            [(e, o.hex, v, h) for e, o, v, h in kwargs.get("event_ids", ())],
        )
        c.executemany(
            f"INSERT INTO {STREAMS_TABLE} (originator_id, customer_id, head_version, "
            "head_hash, first_seen) VALUES (?,?,?,?,?) ON CONFLICT (originator_id) "
            "DO UPDATE SET head_version = excluded.head_version, head_hash = excluded.head_hash",
            [
                (o.hex, customer, v, h, seen)
                for o, customer, v, h, seen in kwargs.get("streams", ())
            ],
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

    def append_heads(self, originator_ids: Sequence[UUID]) -> dict[UUID, tuple[int, bytes, int]]:
        heads: dict[UUID, tuple[int, bytes, int]] = {}
        with self.datastore.transaction(commit=False) as c:
            for chunk in _chunks(originator_ids, 500):
                c.execute(
                    "SELECT originator_id, head_version, head_hash, first_seen "
                    f"FROM {STREAMS_TABLE} "
                    f"WHERE originator_id IN ({','.join('?' * len(chunk))})",
                    [o.hex for o in chunk],
                )
                heads.update((UUID(row[0]), (row[1], row[2], row[3] or 0)) for row in c.fetchall())
        return heads

    def select_stream_states(
        self,
        originator_id: UUID,
        after: int,
        until: int | None,
        topics: Sequence[str],
        limit: int | None = None,
    ) -> list[StateRow]:
        statement, params = _position_range(
            f"SELECT rowid, originator_version, topic, state FROM {EVENTS_TABLE} "
            "WHERE originator_id = ? AND rowid > ?",
            [originator_id.hex, after],
            until,
            topics,
        )
        statement += " ORDER BY originator_version"
        if limit is not None:
            statement += " LIMIT ?"
            params.append(limit)
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, params)
            return [(row[0], originator_id, row[1], row[2], row[3]) for row in c.fetchall()]

    def select_states(
        self, after: int, limit: int, until: int | None, topics: Sequence[str]
    ) -> list[StateRow]:
        statement, params = _position_range(
            f"SELECT rowid, originator_id, originator_version, topic, state FROM {EVENTS_TABLE} "
            "WHERE rowid > ?",
            [after],
            until,
            topics,
        )
        statement += " ORDER BY rowid LIMIT ?"
        params.append(limit)
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, params)
            rows = c.fetchall()
        # A page holds few streams, each many times: parse each stream's hex id once.
        streams: dict[str, UUID] = {}
        states: list[StateRow] = []
        for nid, originator, version, topic, state in rows:
            stream = streams.get(originator)
            if stream is None:
                stream = streams[originator] = UUID(originator)
            states.append((nid, stream, version, topic, state))
        return states

    def select_states_by_stream(
        self, after: UUID | None, limit: int, until: int | None, topics: Sequence[str]
    ) -> list[StateRow]:
        # Along the primary key (originator_id, originator_version): no sort.
        statement, params = _position_range(
            f"SELECT rowid, originator_id, originator_version, topic, state FROM {EVENTS_TABLE} "
            "WHERE originator_id > ?",
            ["" if after is None else after.hex],
            until,
            topics,
        )
        statement += " ORDER BY originator_id, originator_version LIMIT ?"
        params.append(limit)
        return self._stream_rows(statement, params)

    def select_streams_states(
        self, streams: Sequence[UUID], until: int | None, topics: Sequence[str]
    ) -> list[StateRow]:
        states: list[StateRow] = []
        for chunk in _chunks(sorted(streams, key=lambda s: s.hex), 500):
            statement, params = _position_range(
                f"SELECT rowid, originator_id, originator_version, topic, state "
                f"FROM {EVENTS_TABLE} WHERE originator_id IN ({','.join('?' * len(chunk))})",
                [s.hex for s in chunk],
                until,
                topics,
            )
            statement += " ORDER BY originator_id, originator_version"
            states.extend(self._stream_rows(statement, params))
        return states

    def _stream_rows(self, statement: str, params: list[Any]) -> list[StateRow]:
        with self.datastore.transaction(commit=False) as c:
            cursor = _mapped(c)
            rows = cursor.execute(statement, params).fetchall()
        states: list[StateRow] = []
        current, stream = "", UUID(int=0)
        for nid, originator, version, topic, state in rows:
            if originator != current:  # rows come stream by stream: parse each id once
                current, stream = originator, UUID(originator)
            states.append((nid, stream, version, topic, state))
        return states

    def subscribe_states(self, after: int, topics: Sequence[str]) -> StateSubscription | None:
        return None  # SQLite cannot notify other processes: the follower polls

    def key_store(self, *, create: bool, read_only: bool) -> KeyStore | None:
        path = sqlite_key_path(self.location)
        if not create and not Path(path).exists():
            return None
        return SQLiteKeyStore(path, read_only=read_only)

    def local_files(self) -> list[str]:
        main = [self.location, sqlite_key_path(self.location)]
        return [f"{path}{suffix}" for path in main for suffix in ("", "-wal", "-shm", "-journal")]

    def first_state(self) -> bytes | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT state FROM {EVENTS_TABLE} ORDER BY rowid LIMIT 1")
            row = c.fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self.datastore.close()


READ_MMAP_BYTES = 1 << 31
"""How much of the log file reads map into memory (SQLite caps it at its build's maximum,
2 GB here). Reading streams jumps from page to page of the file; through the map each
page costs no system call: a third of the time per row, measured at 100k customers."""


def _mapped(c: SQLiteCursor) -> sqlite3.Cursor:
    """The driver's cursor under ``c``, with plain tuples for rows (the library's
    connections make ``sqlite3.Row`` objects) and its connection reading through a map."""
    cursor = c.sqlite_cursor
    cursor.row_factory = None
    (current,) = cursor.execute("PRAGMA mmap_size").fetchone()
    if not current:  # setting it again would drop the map: once per connection
        cursor.execute(f"PRAGMA mmap_size={READ_MMAP_BYTES}")
    return cursor


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sqlite_datastore(path: str, *, lock_timeout: int = 30) -> SQLiteDatastore:
    """The library's SQLite datastore, configured as the log uses it."""
    return SQLiteDatastore(path, lock_timeout=lock_timeout, pool_size=4)


def open_sqlite_log(path: str, *, lock_timeout: int = 30, read_only: bool = False) -> EventLog:
    """Open (creating if need be) the log in an SQLite file; the directory must exist.

    ``read_only``: open the existing file read-only (see :mod:`profilestore.sqlite_files`):
    no table is created, the journal mode is left as it is, and appends are refused.
    """
    recorder = SQLiteEventRecorder
    with database_errors(recorder.backend, "open", recorder.driver_errors, path):
        if read_only:
            return _open_read_only(path, lock_timeout)
        return _open_retrying(path, lock_timeout)


def _open_read_only(path: str, lock_timeout: int) -> EventLog:
    if not Path(path).exists():
        raise StoreMissing("SQLite event log", path)
    datastore = sqlite_datastore(read_only_uri(path), lock_timeout=lock_timeout)
    # The library switches a file to WAL on its first connection unless it was told the
    # file is in WAL mode already: a read-only file must not be switched (a copy opened
    # "immutable" reports another mode).
    datastore.pool.is_journal_mode_wal = True
    recorder = SQLiteEventRecorder(datastore)
    recorder.location = path
    try:
        recorder.check_table()
    except BaseException:
        datastore.close()
        raise
    return EventLog(recorder, read_only=True)


def _open_retrying(path: str, lock_timeout: int) -> EventLog:
    # Processes opening a new file at once race to switch it to WAL, which SQLite
    # refuses at once ("database is locked") instead of waiting: try again, briefly. Each
    # try gets a fresh datastore: when the WAL switch fails inside the library's pool,
    # the pool keeps its writer lock (eventsourcing 9.5.6), and a retry on the same pool
    # would wait 5 s for it and fail with "Timed out waiting for return of writer".
    for attempt in range(1, 41):
        recorder = SQLiteEventRecorder(sqlite_datastore(path, lock_timeout=lock_timeout))
        recorder.location = path
        try:
            recorder.create_table()
            return EventLog(recorder)
        except (sqlite3.OperationalError, OperationalError) as error:
            recorder.datastore.close()
            if "locked" not in str(error) or attempt == 40:
                raise
            time.sleep(0.01 * attempt)
    raise AssertionError("unreachable")  # the last attempt returns or raises


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///PATH`` URL (``sqlite:////abs/path`` for an absolute one)."""
    if not url.startswith("sqlite://"):
        raise LogUrlError("an SQLite URL starts with sqlite:// and then the file's path")
    path = url.removeprefix("sqlite:///").removeprefix("sqlite://")
    if not path:
        raise LogUrlError("the SQLite URL has no file path")
    return path


def check_url(url: str) -> None:
    """Raise :class:`LogUrlError` unless ``url`` names an SQLite file."""
    sqlite_path(url)


def open_url(url: str, options: LogOptions) -> EventLog:
    """The factory :func:`profilestore.eventlog.open_log` calls for ``sqlite:`` URLs."""
    path = sqlite_path(url)  # checked before anything is created
    if not options.read_only:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open_sqlite_log(path, lock_timeout=options.lock_timeout_s, read_only=options.read_only)
