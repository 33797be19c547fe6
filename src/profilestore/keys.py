"""Per-customer data keys: what makes erasure possible on an immutable log.

Every customer stream has a data key of its own (256 bits, AES-GCM), generated when the
stream's first event is appended. The key is stored *wrapped* (encrypted) by a
key-encryption key (KEK) that is never stored with the data: it comes from the
environment, a file, or the config (see :class:`Kek`). Destroying a data key
("crypto-shredding") makes every event of its stream unreadable, wherever copies of the
log live (replicas, backups), while the stored bytes, and so the audit hash chain, stay as
they are.

The port is :class:`KeyStore`: one small table of wrapped keys and a few named values. A
destroyed key leaves a *tombstone* (the row, without the key), so a stream whose key was
destroyed can never get a new one: appending to it is refused
(:class:`~profilestore.errors.CustomerErased`), which is the suppression list, keyed by
the stream id (itself a keyed hash of the customer key, see :meth:`Keyring.stream_id`),
never by the customer key in clear. The embedded adapter is an SQLite file beside the log
(:class:`SQLiteKeyStore`); a PostgreSQL log keeps its keys in a table of its own database
(:class:`profilestore.postgres_log.PostgresKeyStore`).

:class:`Keyring` is the service the log uses: it names streams and event ids by keyed
hashes (so stream ids, the event-id table and the stream directory hold no customer key),
hands out a cipher per stream (cached, and dropped from every process's cache once a key
is destroyed anywhere: the store keeps an *erasure generation* that each read checks), and
creates, destroys and re-wraps keys. Rotating the KEK re-wraps data keys and touches no
event.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
from abc import ABC, abstractmethod
from binascii import b2a_base64
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from profilestore.errors import InvalidSetting, KeyStoreError

KEYS_TABLE = "profilestore_keys"
KEY_VALUES_TABLE = "profilestore_key_values"
NAMING = "naming"
"""The named value holding the (wrapped) secret of the keyed hashes."""
GENERATION = "generation"
"""The named value counting key destructions: a changed count empties every cache."""
EVENT_KEYS = "event-keys"
"""The named value saying how event ids are keyed (see :meth:`Keyring.event_keyer`). A
new store writes it before its naming secret, so whoever sees the secret sees it too; a
store from before it has none, and keeps its one keyed hash per event id."""

_WRAP_AAD = b"profilestore/data-key/1"
_NAMING_AAD = b"profilestore/naming-key/1"
_NONCE = 12


@dataclass(frozen=True)
class Wrapped:
    """A data key encrypted by a KEK: which one (``kek_id``), and the sealed bytes."""

    kek_id: str
    sealed: bytes


class Kek:
    """A key-encryption key: 32 bytes, and an id derived from it (never the key)."""

    def __init__(self, key: bytes, *, source: str) -> None:
        if len(key) != 32:
            raise InvalidSetting(
                source, f"a key-encryption key is 32 bytes (base64 or hex), not {len(key)}"
            )
        self._aead = AESGCM(key)
        self.id = hashlib.sha256(b"profilestore/kek-id\0" + key).hexdigest()[:16]
        self.source = source

    def wrap(self, key: bytes, aad: bytes) -> Wrapped:
        nonce = secrets.token_bytes(_NONCE)
        return Wrapped(self.id, nonce + self._aead.encrypt(nonce, key, aad))

    def unwrap(self, wrapped: Wrapped, aad: bytes) -> bytes:
        sealed = wrapped.sealed
        return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)


STORE_WIDE, PER_STREAM, FIRST_SEEN = "store-wide", "per-stream/1", "first-seen/2"
"""The formats of the event-id table's keys (:meth:`Keyring.event_keyer`): a new store's is
the last; the value of :data:`EVENT_KEYS` names it (not a secret: nothing is wrapped)."""


def default_kek_path() -> Path:
    """Where a KEK is kept when the config names none: the user's config directory,
    never beside the data (created on first use, readable by the user only)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "profilestore" / "key-encryption-key"


KEK_ENV = "PROFILESTORE_KEK"


def load_kek(spec: str, *, setting: str, create: bool = False) -> Kek:
    """The KEK a setting names: ``env:NAME`` (base64 or hex in that variable), ``file:PATH``
    (the same, in a file), ``base64:...``/``hex:...`` (inline: for tests only), or
    ``default``: ``$PROFILESTORE_KEK`` if set, else :func:`default_kek_path` (created
    with a new random key when ``create``)."""
    kind, _, rest = spec.partition(":")
    if spec == "default":
        if os.environ.get(KEK_ENV):
            return load_kek(f"env:{KEK_ENV}", setting=setting)
        path = default_kek_path()
        if not path.exists():
            if not create:
                raise InvalidSetting(
                    setting, f"no key-encryption key: set ${KEK_ENV} or create {path}"
                )
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        return load_kek(f"file:{path}", setting=setting)
    if kind == "env":
        value = os.environ.get(rest)
        if not value:
            raise InvalidSetting(setting, f"the environment variable {rest} is not set")
        return Kek(_key_bytes(value, setting), source=setting)
    if kind == "file":
        try:
            text = Path(rest).read_text()
        except OSError as error:
            raise InvalidSetting(
                setting, f"the key file cannot be read ({error.strerror})"
            ) from None
        return Kek(_key_bytes(text, setting), source=setting)
    if kind in ("base64", "hex"):
        return Kek(_key_bytes(spec, setting), source=setting)
    raise InvalidSetting(
        setting, "name a key as env:VARIABLE, file:PATH, base64:KEY, hex:KEY or default"
    )


def _key_bytes(text: str, setting: str) -> bytes:
    text = text.strip()
    try:
        if text.startswith("hex:"):
            return bytes.fromhex(text[4:])
        text = text.removeprefix("base64:")
        if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
            return bytes.fromhex(text)
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise InvalidSetting(setting, "the key is neither base64 nor hex") from None


def new_kek_text() -> str:
    """A new random KEK, as base64 text (``profilestore keys new-kek``)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


class KeyStore(ABC):
    """Wrapped data keys by stream, their tombstones, and a few named values."""

    location: str = ""

    @abstractmethod
    def load(self, streams: Sequence[UUID]) -> dict[UUID, Wrapped | None]:
        """Each known stream's wrapped key, or None where it was destroyed."""

    def load_with_generation(
        self, streams: Sequence[UUID]
    ) -> tuple[int, dict[UUID, Wrapped | None]]:
        """:meth:`generation`, then :meth:`load` of ``streams``: in one read where the
        backend can (the append path reads both for every batch with new customers)."""
        return self.generation(), self.load(streams)

    @abstractmethod
    def create(self, keys: Mapping[UUID, Wrapped]) -> dict[UUID, Wrapped | None]:
        """Store keys for streams that have none (nor a tombstone); keep existing ones.
        Returns what each of these streams holds afterwards: the given key where it was
        stored, else the key (or the tombstone, None) a concurrent writer stored first."""

    @abstractmethod
    def destroy(self, streams: Sequence[UUID], at: dt.datetime) -> int:
        """Replace the streams' keys by tombstones and count a generation; returns how many
        keys were destroyed (0 for streams already destroyed)."""

    @abstractmethod
    def generation(self) -> int:
        """How many destructions were recorded: a change invalidates cached keys."""

    @abstractmethod
    def value(self, name: str) -> Wrapped | None: ...

    @abstractmethod
    def put_value_if_absent(self, name: str, value: Wrapped) -> Wrapped:
        """Store a named value unless one exists; returns the stored one (first wins)."""

    @abstractmethod
    def all_keys(self) -> Iterator[tuple[UUID, Wrapped]]:
        """Every live wrapped key (for KEK rotation)."""

    @abstractmethod
    def replace(self, keys: Mapping[UUID, Wrapped], values: Mapping[str, Wrapped]) -> None:
        """Re-wrapped keys and values, written in one transaction (live keys only)."""

    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """(live keys, tombstones)."""

    @abstractmethod
    def scrub(self) -> None:
        """Make deletions physical where the backend can (SQLite: checkpoint the WAL)."""

    @abstractmethod
    def close(self) -> None: ...


class SQLiteKeyStore(KeyStore):
    """The embedded key store: an SQLite file beside the log (``<log>.keys``).

    ``secure_delete`` overwrites a destroyed key's bytes in the file, and :meth:`scrub`
    checkpoints the WAL, so no copy of a destroyed key stays in the file or its WAL. One
    connection, serialised by a lock: keys are read once per stream and cached.
    """

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        from profilestore.sqlite_files import read_only_uri, switch_to_wal

        self.location = path
        self.read_only = read_only
        self._lock = threading.Lock()
        if read_only:
            self._conn = sqlite3.connect(
                read_only_uri(path), uri=True, check_same_thread=False, isolation_level=None
            )
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA busy_timeout=30000")
            switch_to_wal(self._conn)
            self._conn.execute("PRAGMA secure_delete=ON")
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {KEYS_TABLE} (stream BLOB PRIMARY KEY, "
                "kek_id TEXT, sealed BLOB, destroyed_at TEXT) WITHOUT ROWID"
            )
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {KEY_VALUES_TABLE} (name TEXT PRIMARY KEY, "
                "kek_id TEXT, sealed BLOB, counter INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
            )

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def load(self, streams: Sequence[UUID]) -> dict[UUID, Wrapped | None]:
        with self._lock:
            return self._select(streams)

    def _select(self, streams: Sequence[UUID]) -> dict[UUID, Wrapped | None]:
        """:meth:`load`, under the lock already held."""
        found: dict[UUID, Wrapped | None] = {}
        for start in range(0, len(streams), 500):
            chunk = streams[start : start + 500]
            rows = self._conn.execute(
                f"SELECT stream, kek_id, sealed FROM {KEYS_TABLE} "
                f"WHERE stream IN ({','.join('?' * len(chunk))})",
                [s.bytes for s in chunk],
            ).fetchall()
            for stream, kek_id, sealed in rows:
                found[UUID(bytes=bytes(stream))] = (
                    None if sealed is None else Wrapped(str(kek_id), bytes(sealed))
                )
        return found

    def create(self, keys: Mapping[UUID, Wrapped]) -> dict[UUID, Wrapped | None]:
        with self._lock:
            # One write transaction: rows stored first (by another process) are read and
            # kept, the others inserted; no second read after the commit.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                stored = self._select(list(keys))
                self._conn.executemany(
                    f"INSERT INTO {KEYS_TABLE} (stream, kek_id, sealed) VALUES (?, ?, ?)",
                    [(s.bytes, w.kek_id, w.sealed) for s, w in keys.items() if s not in stored],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return {s: stored.get(s, w) for s, w in keys.items()}

    def destroy(self, streams: Sequence[UUID], at: dt.datetime) -> int:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                destroyed = 0
                for stream in streams:
                    cursor = self._conn.execute(
                        f"UPDATE {KEYS_TABLE} SET kek_id = NULL, sealed = NULL, destroyed_at = ? "
                        "WHERE stream = ? AND sealed IS NOT NULL",
                        (at.isoformat(), stream.bytes),
                    )
                    destroyed += cursor.rowcount
                    self._conn.execute(
                        f"INSERT INTO {KEYS_TABLE} (stream, destroyed_at) VALUES (?, ?) "
                        "ON CONFLICT (stream) DO NOTHING",
                        (stream.bytes, at.isoformat()),
                    )
                self._conn.execute(
                    f"INSERT INTO {KEY_VALUES_TABLE} (name, counter) VALUES (?, 1) "
                    "ON CONFLICT (name) DO UPDATE SET counter = counter + 1",
                    (GENERATION,),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return destroyed

    _GENERATION_SQL = f"SELECT counter FROM {KEY_VALUES_TABLE} WHERE name = '{GENERATION}'"

    def generation(self) -> int:
        # Read before every profile read (Keyring.destroyed): one statement, no list.
        with self._lock:
            row = self._conn.execute(self._GENERATION_SQL).fetchone()
        return int(row[0]) if row else 0

    def value(self, name: str) -> Wrapped | None:
        rows = self._rows(
            f"SELECT kek_id, sealed FROM {KEY_VALUES_TABLE} WHERE name = ? AND sealed IS NOT NULL",
            (name,),
        )
        return Wrapped(str(rows[0][0]), bytes(rows[0][1])) if rows else None

    def put_value_if_absent(self, name: str, value: Wrapped) -> Wrapped:
        with self._lock:
            self._conn.execute(
                f"INSERT INTO {KEY_VALUES_TABLE} (name, kek_id, sealed) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, value.kek_id, value.sealed),
            )
        stored = self.value(name)
        assert stored is not None
        return stored

    def all_keys(self) -> Iterator[tuple[UUID, Wrapped]]:
        rows = self._rows(
            f"SELECT stream, kek_id, sealed FROM {KEYS_TABLE} WHERE sealed IS NOT NULL"
        )
        for stream, kek_id, sealed in rows:
            yield UUID(bytes=bytes(stream)), Wrapped(str(kek_id), bytes(sealed))

    def replace(self, keys: Mapping[UUID, Wrapped], values: Mapping[str, Wrapped]) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    f"UPDATE {KEYS_TABLE} SET kek_id = ?, sealed = ? "
                    "WHERE stream = ? AND sealed IS NOT NULL",
                    [(w.kek_id, w.sealed, s.bytes) for s, w in keys.items()],
                )
                self._conn.executemany(
                    f"UPDATE {KEY_VALUES_TABLE} SET kek_id = ?, sealed = ? WHERE name = ?",
                    [(w.kek_id, w.sealed, n) for n, w in values.items()],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def counts(self) -> tuple[int, int]:
        rows = self._rows(f"SELECT COUNT(sealed), COUNT(*) - COUNT(sealed) FROM {KEYS_TABLE}")
        return int(rows[0][0]), int(rows[0][1])

    def scrub(self) -> None:
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def sqlite_key_path(log_path: str) -> str:
    """The embedded key store's file: beside the log (``events.db`` -> ``events.db.keys``)."""
    return f"{log_path}.keys"


_CACHE_LIMIT = 200_000
_UNKNOWN: Any = object()
_KEYER_CACHE_LIMIT = 16_384


class Keyring:
    """Keyed names and per-stream ciphers over a :class:`KeyStore` (see the module doc)."""

    def __init__(self, store: KeyStore, kek: Kek, previous: Sequence[Kek] = ()) -> None:
        self.store = store
        self.kek = kek
        self._keks = {k.id: k for k in (*previous, kek)}
        self._lock = threading.Lock()
        self._ciphers: dict[UUID, AESGCM | None] = {}
        self._generation = store.generation()
        naming = store.value(NAMING)
        if naming is None:
            # A new store: its format first, then the secret (first writer wins each).
            store.put_value_if_absent(EVENT_KEYS, Wrapped("", FIRST_SEEN.encode()))
            naming = store.put_value_if_absent(
                NAMING, kek.wrap(secrets.token_bytes(32), _NAMING_AAD)
            )
        self._naming = self._unwrap(naming, _NAMING_AAD)
        stored_format = store.value(EVENT_KEYS)
        self.event_key_format = (
            STORE_WIDE if stored_format is None else stored_format.sealed.decode()
        )
        """How this store keys event ids: :data:`FIRST_SEEN` (every store made since),
        :data:`PER_STREAM` or :data:`STORE_WIDE` (stores made before each)."""
        if self.event_key_format not in (STORE_WIDE, PER_STREAM, FIRST_SEEN):
            raise KeyStoreError(
                f"the key store keys event ids as {self.event_key_format!r}, which this "
                "version does not know: upgrade profilestore"
            )
        self._event_keyers: dict[tuple[bytes, int], Callable[[str], str]] = {}
        self.stream_id = functools.lru_cache(maxsize=65_536)(self._stream_id)
        """The stream of a customer key: a keyed hash, so the id reveals nothing."""

    def _unwrap(self, wrapped: Wrapped, aad: bytes) -> bytes:
        kek = self._keks.get(wrapped.kek_id)
        if kek is None:
            raise KeyStoreError(
                "a data key is wrapped by a key-encryption key that is not configured "
                f"(id {wrapped.kek_id}); add it to privacy.previous_key_encryption_keys"
            )
        try:
            return kek.unwrap(wrapped, aad)
        except InvalidTag:
            raise KeyStoreError(
                f"a wrapped key does not open with the key-encryption key {wrapped.kek_id}: "
                "the key store or the key was altered"
            ) from None

    # --- names ----------------------------------------------------------------------
    def _stream_id(self, customer_id: str) -> UUID:
        digest = hmac.digest(self._naming, b"stream\0" + customer_id.encode(), "sha256")
        return UUID(bytes=digest[:16])

    def event_key(self, event_id: str, stream: bytes, first_seen: int = 0) -> str:
        """What the event-id table stores for an event id of a stream (the stream id's
        16 bytes, first seen at ``first_seen``); :meth:`event_keyer` makes it."""
        return self.event_keyer(stream, first_seen)(event_id)

    def event_keyer(self, stream: bytes, first_seen: int = 0) -> Callable[[str], str]:
        """What makes the event-id table's entry of each event id of a stream (the
        stream id's 16 bytes), made once per stream and batch.

        The entry is a keyed hash (BLAKE2b with the naming secret, 64 bits) of the stream
        and the event id, after a prefix that puts entries written together side by side
        in the table's indexes, as a plain log's are when its sources' ids follow their
        customers (``cust-42-7``): a keyed hash alone puts each event on a random page of
        two indexes, and every page a batch touches is written to the WAL whole.

        - :data:`FIRST_SEEN` (stores made since): the stream's ``first_seen`` (when the
          log first appended to it, in milliseconds, kept in the stream directory; 40
          bits, so it wraps every 35 years) and the stream id's first 2 bytes, then the
          hash: 15 bytes as 20 characters of base64 (no padding). Customers first seen
          together are written together, as the events of a batch mostly are; against
          the per-stream prefix, encrypted ingest gained 2-3% on SQLite
          (bench/README.md, Privacy). The prefix reveals when the customer was first
          seen, which the log's positions and sealed headers already show. Two events
          are taken for one another only if they share a prefix (one customer's events,
          rarely two customers' first seen in one batch) and their 64-bit hashes collide
          (about 3e-8 for a million events under one prefix).
        - :data:`PER_STREAM`: the stream id's first 8 hex digits, then the hash in hex.
        - :data:`STORE_WIDE` (the first stores): a keyed hash of the event id alone, the
          same for every stream.
        """
        keyer_format = self.event_key_format
        if keyer_format == STORE_WIDE:
            return self._store_wide_event_key
        cached = (stream, first_seen if keyer_format == FIRST_SEEN else 0)
        made = self._event_keyers.get(cached)
        if made is not None:
            return made  # kept from an earlier batch: a keyed hash's start costs a block
        keyed = blake2b(digest_size=8, key=self._naming, person=b"event")
        keyed.update(stream)
        if keyer_format == FIRST_SEEN:
            head = (first_seen & 0xFF_FFFF_FFFF).to_bytes(5, "big") + stream[:2]

            def event_key(event_id: str) -> str:
                digest = keyed.copy()  # the key and the stream already absorbed
                digest.update(event_id.encode())
                return b2a_base64(head + digest.digest(), newline=False).decode()

        else:
            prefix = stream[:4].hex()

            def event_key(event_id: str) -> str:
                digest = keyed.copy()
                digest.update(event_id.encode())
                return prefix + digest.hexdigest()

        if len(self._event_keyers) >= _KEYER_CACHE_LIMIT:  # ~0.7 KB each
            self._event_keyers.clear()
        self._event_keyers[cached] = event_key
        return event_key

    def _store_wide_event_key(self, event_id: str) -> str:
        return hmac.digest(self._naming, b"event\0" + event_id.encode(), "sha256").hex()[:32]

    # --- ciphers --------------------------------------------------------------------
    def _fresh(self) -> None:
        generation = self.store.generation()
        if generation != self._generation:
            with self._lock:
                self._ciphers.clear()
                self._generation = generation

    def remember(self, found: Mapping[UUID, AESGCM | None]) -> None:
        """Cache ciphers (and tombstones, None) of streams."""
        with self._lock:
            if len(self._ciphers) + len(found) > _CACHE_LIMIT:
                self._ciphers.clear()
            self._ciphers.update(found)

    def ciphers(
        self, streams: Iterable[UUID], *, absent: set[UUID] | None = None
    ) -> dict[UUID, AESGCM | None]:
        """The cipher of each stream; None where the key was destroyed or never made
        (those never made are added to ``absent``, if given)."""
        cache = self._ciphers
        known: dict[UUID, AESGCM | None] = {}
        missing: list[UUID] = []
        for stream in set(streams):
            cipher = cache.get(stream, _UNKNOWN)
            if cipher is _UNKNOWN:
                missing.append(stream)
            else:
                known[stream] = cipher
        if missing:  # the erasure generation and the keys, in one read where it can
            generation, loaded = self.store.load_with_generation(missing)
        else:
            generation, loaded = self.store.generation(), {}
        if generation != self._generation:
            # A key was destroyed since the cache was filled: what it holds may be stale.
            with self._lock:
                cache.clear()
                self._generation = generation
            if known:
                loaded.update(self.store.load(list(known)))
                missing += known
                known = {}
        if missing:
            found = {
                s: (None if w is None else AESGCM(self._unwrap(w, _WRAP_AAD + s.bytes)))
                for s, w in loaded.items()
            }
            self.remember(found)
            known.update(found)
            never = [s for s in missing if s not in found]
            known.update((s, None) for s in never)
            if absent is not None:
                absent.update(never)
        return known

    def for_append(
        self, streams: Iterable[UUID], *, deferred: dict[UUID, Wrapped] | None = None
    ) -> dict[UUID, AESGCM | None]:
        """The cipher of each stream, creating keys for new streams; None where the key was
        destroyed (the customer was forgotten: appending is refused).

        A batch costs one read of the erasure generation and the keys not cached (one
        statement on PostgreSQL) and, when some streams are new, one write transaction
        creating all their keys (on PostgreSQL, in the append's own, see ``deferred``). A
        key created for a batch that then fails stays, unused by any event: harmless.

        With ``deferred`` (a log whose key store is in its own database), the new keys are
        not stored: they are put in ``deferred`` for the append to insert in its own
        transaction, where a concurrent writer's key for the same stream (a unique key)
        rolls the batch back to be planned again; call :meth:`remember` once committed."""
        absent: set[UUID] = set()
        ciphers = self.ciphers(streams, absent=absent)
        if not absent:
            return ciphers
        raw = {s: secrets.token_bytes(32) for s in absent}
        fresh = {s: self.kek.wrap(k, _WRAP_AAD + s.bytes) for s, k in raw.items()}
        if deferred is not None:
            deferred.update(fresh)
            ciphers.update((s, AESGCM(k)) for s, k in raw.items())
            return ciphers
        stored = self.store.create(fresh)
        found = {
            # Ours, unless a concurrent writer's key (or a tombstone) was there first.
            s: (
                AESGCM(raw[s])
                if w is fresh[s]
                else None
                if w is None
                else AESGCM(self._unwrap(w, _WRAP_AAD + s.bytes))
            )
            for s, w in stored.items()
        }
        self.remember(found)
        ciphers.update(found)
        return ciphers

    def destroy(self, streams: Sequence[UUID], at: dt.datetime) -> int:
        destroyed = self.store.destroy(streams, at)
        self._fresh()
        with self._lock:
            for stream in streams:
                self._ciphers[stream] = None
        return destroyed

    def is_destroyed(self, stream: UUID) -> bool:
        """:meth:`destroyed` of one stream, without its sets: every profile read asks."""
        self._fresh()
        cache = self._ciphers
        cipher = cache.get(stream, _UNKNOWN)
        if cipher is _UNKNOWN:
            self.ciphers((stream,))  # caches a live key or a tombstone; never made: neither
            cipher = cache.get(stream, _UNKNOWN)
        return cipher is None

    def destroyed(self, streams: Iterable[UUID]) -> set[UUID]:
        """The streams whose keys were destroyed (their customers were forgotten)."""
        self._fresh()
        cache = self._ciphers
        wanted = set(streams)
        gone = {s for s in wanted if s in cache and cache[s] is None}
        unknown = [s for s in wanted if s not in cache]
        if unknown:
            self.ciphers(unknown)  # caches live keys and tombstones alike
            gone.update(s for s in unknown if s in cache and cache[s] is None)
        return gone

    def rotate(self) -> int:
        """Re-wrap every data key (and the naming secret) by the current KEK; returns how
        many were re-wrapped. Events are not touched."""
        keys: dict[UUID, Wrapped] = {}
        for stream, wrapped in self.store.all_keys():
            if wrapped.kek_id != self.kek.id:
                aad = _WRAP_AAD + stream.bytes
                keys[stream] = self.kek.wrap(self._unwrap(wrapped, aad), aad)
        values: dict[str, Wrapped] = {}
        naming = self.store.value(NAMING)
        if naming is not None and naming.kek_id != self.kek.id:
            values[NAMING] = self.kek.wrap(self._unwrap(naming, _NAMING_AAD), _NAMING_AAD)
        if keys or values:
            self.store.replace(keys, values)
        return len(keys) + len(values)

    def close(self) -> None:
        self.store.close()
