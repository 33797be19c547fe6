"""The embedded document store: profile documents in one SQLite file, no server.

Each dataset has a table of sections (``s_<dataset>``: customer id, position, refreshed
at, section JSON) and, when keyed, a table of lookup keys (``k_<dataset>``). A profile is
read with one statement that unions the requested datasets' rows for the customer, so a
lookup is a handful of primary-key probes inside one SQLite call.

A rebuild writes ``s_<dataset>__staging`` tables; promotion drops the live tables and
renames the staging ones in one transaction, so readers see the old or the new dataset,
never a mix. Sections are stored as the same JSON the MongoDB adapter stores as BSON.

WAL mode lets lookups read while a refresh writes. ``synchronous=NORMAL`` is enough here:
documents are derived from the log and a lost last transaction is replayed on restart.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import msgspec

from profilestore.documents import (
    DatasetSchema,
    DocumentStore,
    Profile,
    RawProfile,
    SectionMeta,
    SectionWrite,
    StoredSection,
    Tracking,
    newest_per_customer,
)

_STAGING = "__staging"
_CHUNK = 500


def _tables(dataset: str, staging: bool) -> tuple[str, str, str]:
    suffix = _STAGING if staging else ""
    return f"s_{dataset}{suffix}", f"k_{dataset}{suffix}", f"{dataset}{suffix}"


class SQLiteDocumentStore(DocumentStore):
    def __init__(self, path: str, schemas: Mapping[str, DatasetSchema]) -> None:
        super().__init__(schemas)
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoders = {
            name: msgspec.json.Decoder(schema.section) for name, schema in self.schemas.items()
        }
        self._profile_sql: dict[tuple[str, ...], str] = {}
        self._find_sql = " UNION ".join(
            f"SELECT customer_id FROM k_{name} WHERE key = ?1"
            for name, schema in self.schemas.items()
            if schema.keyed
        )
        with self._transaction() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS tracking ("
                "name TEXT PRIMARY KEY, position INTEGER NOT NULL, refreshed_at TEXT NOT NULL)"
            )
            c.execute(
                "CREATE TABLE IF NOT EXISTS leases ("
                "name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at TEXT NOT NULL)"
            )
            c.execute(
                "CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, key TEXT NOT NULL, "
                "body BLOB NOT NULL, PRIMARY KEY (kind, key)) WITHOUT ROWID"
            )
            for name in self.schemas:
                self._create_tables(c, name, staging=False)

    # --- connections ------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, cached_statements=256
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        conn = self._connection()
        cursor = conn.cursor()
        # IMMEDIATE takes the write lock up front, so read-then-write cannot deadlock
        # against another process and the busy timeout applies.
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield cursor
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()
        finally:
            cursor.close()

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def _create_tables(self, c: sqlite3.Cursor, dataset: str, *, staging: bool) -> None:
        sections, keys, _ = _tables(dataset, staging)
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {sections} (customer_id TEXT PRIMARY KEY, "
            "position INTEGER NOT NULL, refreshed_at TEXT NOT NULL, body BLOB NOT NULL)"
        )
        exists = c.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (keys,)
        ).fetchone()
        if self.schemas[dataset].keyed and not exists:
            c.execute(
                f"CREATE TABLE {keys} (key TEXT NOT NULL, customer_id TEXT NOT NULL, "
                "PRIMARY KEY (key, customer_id)) WITHOUT ROWID"
            )
            # Index names are global and survive a table rename: make each one unique.
            c.execute(f"CREATE INDEX i_{keys}_{uuid.uuid4().hex[:8]} ON {keys} (customer_id)")

    # --- reads --------------------------------------------------------------------------

    def _profile_rows(
        self, customer_id: str, datasets: Sequence[str] | None
    ) -> list[tuple[str, int, str, bytes]]:
        # One statement unions the datasets' rows: a lookup is one SQLite call.
        names = tuple(datasets) if datasets is not None else tuple(self.schemas)
        if not names:
            return []  # no dataset named: nothing to read (and no statement to build)
        sql = self._profile_sql.get(names)
        if sql is None:
            for name in names:
                self.check_dataset(name)
            sql = self._profile_sql[names] = " UNION ALL ".join(
                f"SELECT '{name}', position, refreshed_at, body FROM s_{name} "
                "WHERE customer_id = ?1"
                for name in names
            )
        rows: list[tuple[str, int, str, bytes]] = (
            self._connection().execute(sql, (customer_id,)).fetchall()
        )
        return rows

    @staticmethod
    def _freshness(rows: list[tuple[str, int, str, bytes]]) -> dict[str, SectionMeta]:
        return {
            name: SectionMeta(position=position, refreshed_at=_parse_time(refreshed_at))
            for name, position, refreshed_at, _ in rows
        }

    def get(self, customer_id: str, datasets: Sequence[str] | None = None) -> Profile | None:
        rows = self._profile_rows(customer_id, datasets)
        if not rows:
            return None
        decoders = self._decoders
        return Profile(
            customer_id=customer_id,
            sections={name: decoders[name].decode(body) for name, _, _, body in rows},
            freshness=self._freshness(rows),
        )

    def get_raw(self, customer_id: str, datasets: Sequence[str] | None = None) -> RawProfile | None:
        # The stored JSON is what the API sends: no decode, no re-encode.
        rows = self._profile_rows(customer_id, datasets)
        if not rows:
            return None
        return RawProfile(
            customer_id=customer_id,
            sections={name: msgspec.Raw(body) for name, _, _, body in rows},
            freshness=self._freshness(rows),
        )

    def find(self, lookup_key: str) -> list[str]:
        if not self._find_sql:
            return []
        rows = self._connection().execute(self._find_sql, (lookup_key,)).fetchall()
        return sorted(row[0] for row in rows)

    def load(
        self, dataset: str, customer_ids: Iterable[str], *, staging: bool = False
    ) -> dict[str, StoredSection]:
        sections, _, _ = _tables(dataset, staging)
        decoder = self._decoders[dataset]
        ids = list(customer_ids)
        found: dict[str, StoredSection] = {}
        conn = self._connection()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            rows = conn.execute(
                f"SELECT customer_id, position, body FROM {sections} "
                f"WHERE customer_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for customer_id, position, body in rows:
                found[customer_id] = StoredSection(decoder.decode(body), position)
        return found

    def customer_ids(self, dataset: str) -> Iterator[str]:
        self.check_dataset(dataset)
        cursor = self._connection().execute(f"SELECT customer_id FROM s_{dataset}")
        for (customer_id,) in cursor:
            yield customer_id

    def tracking(self, dataset: str, *, staging: bool = False) -> Tracking | None:
        _, _, name = _tables(dataset, staging)
        row = (
            self._connection()
            .execute("SELECT position, refreshed_at FROM tracking WHERE name = ?", (name,))
            .fetchone()
        )
        if row is None:
            return None
        return Tracking(position=row[0], refreshed_at=_parse_time(row[1]))

    # --- writes -------------------------------------------------------------------------

    def write(
        self,
        dataset: str,
        writes: Sequence[SectionWrite],
        *,
        refreshed_at: dt.datetime,
        staging: bool = False,
    ) -> int:
        if not writes:
            return 0
        sections, keys, _ = _tables(dataset, staging)
        keyed = self.check_dataset(dataset).keyed
        writes = newest_per_customer(writes)
        stamp = _format_time(refreshed_at)
        encode = self._encoder.encode
        with self._transaction() as c:
            stored: dict[str, int] = {}
            ids = [w.customer_id for w in writes]
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                c.execute(
                    f"SELECT customer_id, position FROM {sections} "
                    f"WHERE customer_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                stored.update(c.fetchall())
            # The position guard: only sections newer than what is stored are written.
            fresh = [w for w in writes if w.position > stored.get(w.customer_id, -1)]
            c.executemany(
                f"INSERT INTO {sections} (customer_id, position, refreshed_at, body) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (customer_id) DO UPDATE SET "
                "position = excluded.position, refreshed_at = excluded.refreshed_at, "
                f"body = excluded.body WHERE excluded.position > {sections}.position",
                [(w.customer_id, w.position, stamp, encode(w.section)) for w in fresh],
            )
            if keyed:
                c.executemany(
                    f"DELETE FROM {keys} WHERE customer_id = ?",
                    [(w.customer_id,) for w in fresh],
                )
                c.executemany(
                    f"INSERT OR IGNORE INTO {keys} (key, customer_id) VALUES (?, ?)",
                    [(key, w.customer_id) for w in fresh for key in w.lookup_keys],
                )
        return len(fresh)

    def advance(
        self, dataset: str, position: int, *, refreshed_at: dt.datetime, staging: bool = False
    ) -> None:
        _, _, name = _tables(dataset, staging)
        with self._transaction() as c:
            c.execute(
                "INSERT INTO tracking (name, position, refreshed_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET position = MAX(position, excluded.position), "
                "refreshed_at = excluded.refreshed_at",
                (name, position, _format_time(refreshed_at)),
            )

    def start_staging(self, dataset: str) -> None:
        self.check_dataset(dataset)
        sections, keys, name = _tables(dataset, staging=True)
        with self._transaction() as c:
            c.execute(f"DROP TABLE IF EXISTS {sections}")
            c.execute(f"DROP TABLE IF EXISTS {keys}")
            c.execute("DELETE FROM tracking WHERE name = ?", (name,))
            self._create_tables(c, dataset, staging=True)

    def promote_staging(self, dataset: str) -> None:
        self.check_dataset(dataset)
        live_sections, live_keys, live_name = _tables(dataset, staging=False)
        sections, keys, name = _tables(dataset, staging=True)
        with self._transaction() as c:
            row = c.execute(
                "SELECT position, refreshed_at FROM tracking WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                raise RuntimeError(f"no staging area to promote for dataset {dataset!r}")
            c.execute(f"DROP TABLE {live_sections}")
            c.execute(f"ALTER TABLE {sections} RENAME TO {live_sections}")
            if self.schemas[dataset].keyed:
                c.execute(f"DROP TABLE {live_keys}")
                c.execute(f"ALTER TABLE {keys} RENAME TO {live_keys}")
            # Not MAX(): the live tracking becomes exactly what the rebuild covered.
            c.execute(
                "INSERT INTO tracking (name, position, refreshed_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position, "
                "refreshed_at = excluded.refreshed_at",
                (live_name, row[0], row[1]),
            )
            c.execute("DELETE FROM tracking WHERE name = ?", (name,))

    # --- records ------------------------------------------------------------------------

    def put_record(self, kind: str, key: str, value: Mapping[str, Any]) -> None:
        with self._transaction() as c:
            c.execute(
                "INSERT INTO records (kind, key, body) VALUES (?, ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body",
                (kind, key, self._encoder.encode(value)),
            )

    def get_records(self, kind: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        rows = (
            self._connection()
            .execute(
                "SELECT key, body FROM records WHERE kind = ? AND substr(key, 1, ?) = ? "
                "ORDER BY key",
                (kind, len(prefix), prefix),
            )
            .fetchall()
        )
        return {key: msgspec.json.decode(body) for key, body in rows}

    def delete_record(self, kind: str, key: str) -> None:
        with self._transaction() as c:
            c.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))

    # --- leases -------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl: dt.timedelta, now: dt.datetime) -> bool:
        with self._transaction() as c:
            row = c.execute(
                "SELECT holder, expires_at FROM leases WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and row[0] != holder and _parse_time(row[1]) > now:
                return False
            c.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at",
                (name, holder, _format_time(now + ttl)),
            )
            return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._transaction() as c:
            c.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def lease_holder(self, name: str, now: dt.datetime) -> str | None:
        row = (
            self._connection()
            .execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,))
            .fetchone()
        )
        if row is None or _parse_time(row[1]) <= now:
            return None
        holder: str = row[0]
        return holder


def _format_time(value: dt.datetime) -> str:
    # Fixed-width UTC text sorts and compares correctly as a string.
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _parse_time(value: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(value)
