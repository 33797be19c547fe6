"""Privacy: per-customer encryption of the log, erasure by crypto-shredding, suppression,
receipts (README: Privacy)."""

from __future__ import annotations

import base64
import datetime as dt
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import make_document_store

from profilestore.config import Settings, load_settings
from profilestore.documents import DatasetSchema
from profilestore.errors import (
    CustomerErased,
    CustomerNotFound,
    IdentifierNotFound,
    InvalidArgument,
    KeyStoreError,
    NotEncrypted,
    Undecryptable,
)
from profilestore.eventlog import EventLog, open_log, stream_id
from profilestore.events import PageViewed
from profilestore.keys import FIRST_SEEN, STORE_WIDE, SQLiteKeyStore
from profilestore.mapper import SEALED, Forgotten
from profilestore.store import ProfileStore, load_projections, open_store

NOW = dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC)
EMAIL = "zelda.quixote@example.org"
PHONE = "+14155550199"
NAME = "Zeldaquix"
KEY = "cust-zq-7781"
NEIGHBOUR = "cust-nb-4410"  # (a key containing the forgotten one would match the byte search)


def kek(seed: str) -> str:
    return "base64:" + base64.b64encode(seed.encode().ljust(32, b"k")[:32]).decode()


def history(customer: str, email: str, phone: str, name: str, n: int = 3) -> list[dict[str, Any]]:
    base: dict[str, Any] = {"customer_id": customer, "occurred_at": "2026-03-01T10:00:00Z"}
    events: list[dict[str, Any]] = [
        {
            **base,
            "type": "identifier.seen",
            "event_id": f"{customer}-e",
            "kind": "email",
            "value": email,
        },
        {
            **base,
            "type": "identifier.seen",
            "event_id": f"{customer}-p",
            "kind": "phone",
            "value": phone,
        },
        {**base, "type": "profile.name_set", "event_id": f"{customer}-n", "first_name": name},
        {**base, "type": "consent.given", "event_id": f"{customer}-c", "channel": "email"},
    ]
    for i in range(n):
        events.append(
            {
                **base,
                "type": "order.placed",
                "event_id": f"{customer}-o{i}",
                "order_id": f"o{i}",
                "total": "10.00",
                "currency": "USD",
                "items": [{"sku": "S1", "quantity": 1, "unit_price": "10.00"}],
            }
        )
    return events


# --- encryption of the log ----------------------------------------------------------------


def test_a_new_store_seals_every_event_and_names_no_customer_in_clear(settings: Settings) -> None:
    with open_store(settings, clock=lambda: NOW) as store:
        store.append(history(KEY, EMAIL, PHONE, NAME))
        assert store._log.encrypted
        assert store._log.recorder.first_state()[:1] == bytes([SEALED])  # type: ignore[index]
        assert store._log.stream_of(KEY) != stream_id(KEY)  # keyed, not a plain uuid5
        assert store._log.customers() == [KEY]  # the directory's sealed name opens
        assert [e.event_id for e in store._log.stream(KEY)][:2] == [f"{KEY}-e", f"{KEY}-p"]
        store._log.recorder.datastore.close()  # type: ignore[attr-defined]
        files = store._log.recorder.local_files()
    data = b"".join(Path(f).read_bytes() for f in files if Path(f).exists())
    for value in (EMAIL, PHONE, NAME, KEY, f"{KEY}-o1"):
        assert value.encode() not in data, value


def test_a_sealed_payload_moved_to_another_position_does_not_decrypt(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    log = open_log(url, encryption=True, kek=kek("a"))
    from profilestore.store import EventValidator

    log.append(EventValidator().validate(history(KEY, EMAIL, PHONE, NAME), NOW))
    log.close()
    with sqlite3.connect(tmp_path / "events.sqlite") as conn:
        rows = conn.execute(
            "SELECT rowid, state FROM profilestore_events ORDER BY rowid LIMIT 2"
        ).fetchall()
        conn.execute("UPDATE profilestore_events SET state = ? WHERE rowid = ?", (rows[0][1], 2))
    log = open_log(url, encryption=True, kek=kek("a"))
    try:
        with pytest.raises(Undecryptable):
            log.customer_changes(KEY)
    finally:
        log.close()


def _encrypted_log(log_backend: dict[str, Any]) -> EventLog:
    return open_log(
        log_backend["url"],
        postgres_schema=log_backend["schema"],
        encryption=True,
        kek=kek("a"),
    )


def _page_view(event_id: str, customer: str = KEY) -> dict[str, Any]:
    """A page view as a source sends it (validated before it is appended)."""
    return {
        "type": "browse.page_viewed",
        "event_id": event_id,
        "customer_id": customer,
        "occurred_at": "2026-03-01T10:00:00Z",
        "url": "/home",
    }


def test_event_ids_are_keyed_per_customer_and_retries_are_still_duplicates(
    log_backend: dict[str, Any],
) -> None:
    from profilestore.store import EventValidator

    validate = EventValidator().validate
    log = _encrypted_log(log_backend)
    try:
        assert log.keyring is not None and log.keyring.event_key_format == FIRST_SEEN
        before = time.time_ns() // 1_000_000
        # One id under two customer keys: two events (a source's id names an event of
        # its customer); the same id twice for one customer in a batch: the first wins.
        batch = [
            _page_view("shared-1", KEY),
            _page_view("shared-1", NEIGHBOUR),
            _page_view("shared-1", KEY),
        ]
        first = log.append(validate(batch, NOW))
        assert (first.appended, first.duplicates) == (2, 1)
        retried = log.append(validate(batch, NOW))
        assert (retried.appended, retried.duplicates) == (0, 3)
        assert sorted(retried.duplicate_event_ids) == ["shared-1"] * 3
        assert [len(list(log.stream(c))) for c in (KEY, NEIGHBOUR)] == [1, 1]
        # What the event-id table holds: when the stream was first seen (milliseconds, as
        # the directory keeps it), its first 2 bytes and a keyed hash; never the id.
        keyring, stream = log.keyring, log.stream_of(KEY)
        first_seen = log.recorder.append_heads([stream])[stream][2]
        assert before <= first_seen <= time.time_ns() // 1_000_000
        key = keyring.event_key("shared-1", stream.bytes, first_seen)
        raw = base64.b64decode(key, validate=True)
        assert len(key) == 20 and raw[:5] == (first_seen % 2**40).to_bytes(5, "big")
        assert raw[5:7] == stream.bytes[:2] and b"shared" not in raw
        neighbour = log.stream_of(NEIGHBOUR)
        assert key != keyring.event_key("shared-1", neighbour.bytes, first_seen)
        assert log.recorder.existing_event_ids([key, "shared-1"]) == {key}
    finally:
        log.close()
    # Opened again (another process, a restart): the same keys, so retries stay duplicates.
    log = _encrypted_log(log_backend)
    try:
        again = log.append(validate([_page_view("shared-1", KEY), _page_view("new-1", KEY)], NOW))
        assert (again.appended, again.duplicates) == (1, 1)
    finally:
        log.close()


def test_a_store_keyed_before_per_customer_event_ids_keeps_its_store_wide_keys(
    tmp_path: Path,
) -> None:
    """A key store made before the per-stream format has its naming secret and no format
    value: its event-id table holds store-wide hashes, so it keeps making them."""
    from profilestore.keys import EVENT_KEYS, NAMING, Keyring, load_kek

    path = str(tmp_path / "events.sqlite.keys")
    store = SQLiteKeyStore(path)
    key = load_kek(kek("a"), setting="test")
    older = Keyring(store, key)
    assert older.event_key_format == FIRST_SEEN
    with sqlite3.connect(path) as conn:  # as an older version left it: no format value
        conn.execute("DELETE FROM profilestore_key_values WHERE name = ?", (EVENT_KEYS,))
    reopened = Keyring(store, key)
    try:
        assert reopened.event_key_format == STORE_WIDE
        assert store.value(NAMING) is not None and store.value(EVENT_KEYS) is None
        a, b = stream_id(KEY).bytes, stream_id(NEIGHBOUR).bytes
        assert reopened.event_key("x-1", a, 1) == reopened.event_key("x-1", b, 2)
        assert len(reopened.event_key("x-1", a)) == 32
        # A new store writes the format before the secret: whoever sees one sees both.
        fresh = Keyring(SQLiteKeyStore(str(tmp_path / "new.keys")), key)
        assert fresh.event_key_format == FIRST_SEEN
        assert fresh.event_key("x-1", a) != fresh.event_key("x-1", b)
        fresh.close()
    finally:
        reopened.close()


def test_a_store_keyed_per_stream_keeps_its_keys_and_an_unknown_format_is_refused(
    log_backend: dict[str, Any],
) -> None:
    """A store made with the per-stream format (before first-seen prefixes) keeps making
    its keys, so a retried event is still a duplicate; a format from a newer version is
    refused rather than read as another."""
    from profilestore.keys import EVENT_KEYS, PER_STREAM, Keyring
    from profilestore.store import EventValidator

    def set_format(log: EventLog, value: bytes) -> None:
        assert log.keyring is not None
        store = log.keyring.store
        if isinstance(store, SQLiteKeyStore):
            with sqlite3.connect(store.location) as conn:
                conn.execute(
                    "UPDATE profilestore_key_values SET sealed = ? WHERE name = ?",
                    (value, EVENT_KEYS),
                )
        else:
            with store.datastore.transaction(commit=True) as curs:  # type: ignore[attr-defined]
                curs.execute(
                    f"UPDATE {log_backend['schema']}.profilestore_key_values "
                    "SET sealed = %s WHERE name = %s",
                    (value, EVENT_KEYS),
                )

    validate = EventValidator().validate
    log = _encrypted_log(log_backend)
    set_format(log, PER_STREAM.encode())  # as a store made before left it, still empty
    log.close()
    log = _encrypted_log(log_backend)
    try:
        assert log.keyring is not None and log.keyring.event_key_format == PER_STREAM
        assert log.append(validate([_page_view("a-1"), _page_view("a-2")], NOW)).appended == 2
        stream = log.stream_of(KEY)
        key = log.keyring.event_key("a-1", stream.bytes)
        assert key.startswith(stream.hex[:8]) and len(key) == 24
        assert log.recorder.existing_event_ids([key]) == {key}
    finally:
        log.close()
    log = _encrypted_log(log_backend)
    try:
        again = log.append(validate([_page_view("a-1"), _page_view("a-3")], NOW))
        assert (again.appended, again.duplicates) == (1, 1)
        set_format(log, b"sorted-by-moon/9")
        assert log.keyring is not None
        with pytest.raises(KeyStoreError, match=r"sorted-by-moon/9.*upgrade"):
            Keyring(log.keyring.store, log.keyring.kek)
    finally:
        log.close()


def test_a_directory_from_before_first_seen_gets_the_column_and_keeps_its_rows(
    log_backend: dict[str, Any],
) -> None:
    """Opening a log whose stream directory has no ``first_seen`` column (an older
    version's) adds it; the rows already there read as first seen at 0, the next new
    stream's as now."""
    from profilestore.store import EventValidator

    validate = EventValidator().validate
    log = log_backend["open"]()
    try:
        log.append(validate([_page_view("a-1", KEY)], NOW))
    finally:
        log.close()
    drop = "ALTER TABLE {}profilestore_streams DROP COLUMN first_seen"
    if log_backend["name"] == "sqlite":
        with sqlite3.connect(log_backend["url"].removeprefix("sqlite:///")) as conn:
            conn.execute(drop.format(""))
    else:
        import psycopg

        with psycopg.connect(log_backend["url"], autocommit=True) as conn:
            conn.execute(drop.format(log_backend["schema"] + "."))  # type: ignore[arg-type]
    log = log_backend["open"]()
    try:
        old, new = log.stream_of(KEY), log.stream_of(NEIGHBOUR)
        again = log.append(validate([_page_view("a-1", KEY), _page_view("b-1", NEIGHBOUR)], NOW))
        assert (again.appended, again.duplicates) == (1, 1)
        heads = log.recorder.append_heads([old, new])
        assert heads[old][:2] == (1, heads[old][1]) and heads[old][2] == 0
        assert heads[new][0] == 1 and heads[new][2] > 0
    finally:
        log.close()


def test_processes_opening_an_old_directory_at_once_all_open_it(tmp_path: Path) -> None:
    """Eight writers open a log whose directory has no ``first_seen`` column at the same
    moment: one adds it, and the others, finding it added under them, open as well."""
    from profilestore.sqlite_log import open_sqlite_log

    path = str(tmp_path / "events.sqlite")

    def opener(together: threading.Barrier, logs: list[EventLog], errors: list[Any]) -> None:
        try:
            together.wait()
            logs.append(open_sqlite_log(path))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    for round_ in range(3):
        open_sqlite_log(path).close()
        with sqlite3.connect(path) as conn:
            conn.execute("ALTER TABLE profilestore_streams DROP COLUMN first_seen")
        together = threading.Barrier(8, timeout=60)
        errors: list[BaseException] = []
        logs: list[EventLog] = []
        threads = [threading.Thread(target=opener, args=(together, logs, errors)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for log in logs:
            log.close()
        assert errors == [], f"round {round_}"
        assert len(logs) == 8
        with sqlite3.connect(path) as conn:
            columns = [row[1] for row in conn.execute("PRAGMA table_info(profilestore_streams)")]
        assert columns.count("first_seen") == 1


def test_a_plain_log_stays_plain_and_readable(tmp_path: Path) -> None:
    from profilestore.store import EventValidator

    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    log = open_log(url, encryption=False)
    log.append(EventValidator().validate(history(KEY, EMAIL, PHONE, NAME), NOW))
    log.close()
    log = open_log(url, encryption=True, kek=kek("a"))
    try:
        assert not log.encrypted
        assert len(log.stream(KEY)) == 7
        assert not Path(f"{tmp_path / 'events.sqlite'}.keys").exists()
        with pytest.raises(NotEncrypted):
            log.destroy_keys([KEY], NOW)
    finally:
        log.close()


def test_a_sealed_log_without_its_key_store_is_refused(tmp_path: Path) -> None:
    from profilestore.store import EventValidator

    path = tmp_path / "events.sqlite"
    log = open_log(f"sqlite:///{path}", encryption=True, kek=kek("a"))
    log.append(EventValidator().validate(history(KEY, EMAIL, PHONE, NAME), NOW))
    log.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}.keys{suffix}").unlink(missing_ok=True)
    with pytest.raises(KeyStoreError, match="key store is missing"):
        open_log(f"sqlite:///{path}", encryption=True, kek=kek("a"))


def test_rotating_the_kek_rewraps_keys_without_touching_events(
    log_backend: dict[str, Any],
) -> None:
    from profilestore.store import EventValidator

    url, schema = log_backend["url"], log_backend["schema"]
    log = open_log(url, postgres_schema=schema, encryption=True, kek=kek("old"))
    log.append(EventValidator().validate(history(KEY, EMAIL, PHONE, NAME), NOW))
    before = [row[4] for row in log.recorder.select_states(0, 100, None, ())]
    log.close()
    with pytest.raises(KeyStoreError, match="not configured"):
        open_log(url, postgres_schema=schema, encryption=True, kek=kek("new"))
    log = open_log(
        url, postgres_schema=schema, encryption=True, kek=kek("new"), previous_keks=[kek("old")]
    )
    assert log.keyring is not None
    assert log.keyring.store.counts() == (1, 0)
    assert log.keyring.rotate() == 2  # the customer's data key and the naming secret
    assert log.keyring.rotate() == 0
    log.close()
    log = open_log(url, postgres_schema=schema, encryption=True, kek=kek("new"))
    try:
        assert len(log.stream(KEY)) == 7
        assert [row[4] for row in log.recorder.select_states(0, 100, None, ())] == before
    finally:
        log.close()


def test_a_kek_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    from profilestore.keys import load_kek

    key = base64.b64encode(b"x" * 32).decode()
    (tmp_path / "kek").write_text(key + "\n")
    monkeypatch.setenv("MY_KEK", key)
    assert (
        load_kek(f"file:{tmp_path / 'kek'}", setting="s").id
        == load_kek("env:MY_KEK", setting="s").id
    )
    with pytest.raises(Exception, match="32 bytes"):
        load_kek("base64:" + base64.b64encode(b"short").decode(), setting="s")
    with pytest.raises(Exception, match="not set"):
        load_kek("env:NOPE_NOT_SET", setting="s")


# --- erasure --------------------------------------------------------------------------------


def _store(
    tmp_path: Path, request: pytest.FixtureRequest, log_kind: str, documents_kind: str
) -> ProfileStore:
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    settings: Settings = load_settings(environ={}, home=home)
    projections = load_projections(settings)
    schemas = {
        name: DatasetSchema(p.section, keyed=p.lookup_keys is not None)
        for name, p in projections.items()
    }
    # The log first: a PostgreSQL case skips here, before a document store is opened.
    if log_kind == "sqlite":
        log: EventLog = open_log(f"sqlite:///{home / 'events.sqlite'}", encryption=True)
    else:
        url, schema = request.getfixturevalue("postgres_schema")
        log = open_log(url, postgres_schema=schema, encryption=True)
    try:
        documents = make_document_store(documents_kind, request, home, schemas)
    except BaseException:
        log.close()
        raise
    return ProfileStore(settings, log, documents, projections, clock=lambda: NOW)


BACKENDS = [
    ("sqlite", "sqlite"),
    ("sqlite", "mongomock"),
    pytest.param(("postgres", "sqlite"), marks=pytest.mark.postgres),
    pytest.param(("postgres", "mongo_wire"), marks=[pytest.mark.postgres, pytest.mark.mongo_wire]),
]


@pytest.fixture(params=BACKENDS, ids=lambda p: f"{p[0]}-{p[1]}")
def erasable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProfileStore]:
    log_kind, documents_kind = request.param
    with _store(tmp_path, request, log_kind, documents_kind) as store:
        store.append(history(KEY, EMAIL, PHONE, NAME))
        store.append(history(NEIGHBOUR, "neighbour@example.org", "+14155550100", "Neighbour"))
        store.refresh()
        store.resolve_identity()
        yield store


def test_forget_leaves_the_events_unreadable_and_the_neighbour_untouched(
    erasable: ProfileStore,
) -> None:
    store = erasable
    neighbour_before = store.profile(NEIGHBOUR)
    receipt = store.forget(KEY, request_id="DSR-1")
    assert receipt.request_id == "DSR-1"
    assert receipt.keys == 1 and receipt.data_keys_destroyed == 1
    assert receipt.events_forgotten == 7
    assert receipt.chain_intact
    assert receipt.deleted  # sections, lookup keys, records
    assert receipt.plaintext.found == 0
    # Reads refuse the forgotten customer (410 over HTTP) and find nobody by identifier.
    with pytest.raises(CustomerErased):
        store.profile(KEY)
    with pytest.raises(CustomerErased):
        store.history(KEY)
    assert store.export(KEY).erasure == "erased"  # a subject access request says so
    with pytest.raises(IdentifierNotFound):
        store.find("email", EMAIL)
    # The log keeps the events: type, time and position, no payload.
    rows = store._log.changes(0, 100)
    forgotten = [n for n in rows if isinstance(n.event, Forgotten)]
    assert len(forgotten) == 7
    assert {f.event.stored_topic for f in forgotten} >= {"order.placed", "identifier.seen"}
    assert all(f.event.occurred_at == dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC) for f in forgotten)
    # The neighbour is as it was; the log still verifies; a rebuild agrees with the documents.
    assert store.profile(NEIGHBOUR).sections == neighbour_before.sections
    assert store.auditor().verify().ok
    store.rebuild()
    assert store.profile(NEIGHBOUR).sections == neighbour_before.sections
    with pytest.raises(CustomerErased):
        store.profile(KEY)
    assert store.verify().ok
    assert KEY not in store._log.customers()


def test_forget_is_idempotent_by_request_id_and_listed_for_auditors(erasable: ProfileStore) -> None:
    store = erasable
    first = store.forget(KEY, request_id="DSR-2")
    assert store.forget(KEY, request_id="DSR-2") == first
    assert [r.request_id for r in store.erasures()] == ["DSR-2"]
    encoded = msgspec.json.encode(store.erasures())
    for value in (EMAIL, PHONE, NAME, KEY):
        assert value.encode() not in encoded
    with pytest.raises(InvalidArgument, match="request_id"):
        store.forget(NEIGHBOUR, request_id="has space")


def test_events_for_a_forgotten_customer_are_refused_not_stored(erasable: ProfileStore) -> None:
    store = erasable
    store.forget(KEY, request_id="DSR-3")
    head = store.head()
    again = history(KEY, EMAIL, PHONE, NAME)
    again = [{**e, "event_id": e["event_id"] + "-retry"} for e in again]
    with pytest.raises(CustomerErased) as refused:
        store.append(again)
    assert refused.value.index == 0
    assert store.head() == head  # nothing of the batch
    # Per-event validation (the Segment endpoints): the erased ones are rejected, the
    # others stored.
    partial = store.append_valid(
        [again[0], history("someone-else", "x@example.org", PHONE, "X")[0]]
    )
    assert partial.appended == 1
    assert [(r.index, r.path) for r in partial.rejected] == [(0, "$.customer_id")]


def test_a_key_destroyed_by_another_process_is_refused_whether_cached_or_not(
    log_backend: dict[str, Any],
) -> None:
    """Two logs on one store (two processes, two key caches). Keys the second has cached
    are destroyed by the first: the second's next append to them is refused, whether the
    batch also has a new customer (the erasure generation read with the new keys) or not
    (read alone)."""
    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)

    def view(event_id: str, customer: str) -> PageViewed:
        return PageViewed(event_id=event_id, customer_id=customer, occurred_at=t0, url="/")

    first, second = _encrypted_log(log_backend), _encrypted_log(log_backend)
    try:
        assert second.append([view("a-1", KEY), view("b-1", NEIGHBOUR)]).appended == 2
        assert first.destroy_keys([KEY], t0) == 1
        with pytest.raises(CustomerErased) as refused:  # a new customer, then the cached
            second.append([view("c-1", "cust-new-0001"), view("a-2", KEY)])
        assert refused.value.index == 1
        assert first.destroy_keys([NEIGHBOUR], t0) == 1
        with pytest.raises(CustomerErased):  # only a cached customer: nothing to load
            second.append([view("b-2", NEIGHBOUR)])
        assert second.append([view("c-1", "cust-new-0001")]).appended == 1
        assert second.erased([KEY, NEIGHBOUR, "cust-new-0001"]) == {KEY, NEIGHBOUR}
        # The one-customer check of every read agrees, cached or not, and for a key never
        # made (a customer the log has not seen is not erased).
        fresh = _encrypted_log(log_backend)
        try:
            for log in (second, fresh):
                assert log.is_erased(KEY) and log.is_erased(NEIGHBOUR)
                assert not log.is_erased("cust-new-0001")
                assert not log.is_erased("cust-never-seen")
        finally:
            fresh.close()
    finally:
        first.close()
        second.close()


def test_forget_of_a_merged_profile_forgets_every_key(erasable: ProfileStore) -> None:
    store = erasable
    store.append(history("cust-zq-other", "other@example.org", "+14155550111", "Otherquix"))
    store.link(KEY, "cust-zq-other", actor="ops")
    store.refresh()
    receipt = store.forget("cust-zq-other", request_id="DSR-4")
    assert receipt.keys == 2 and receipt.data_keys_destroyed == 2
    for key in (KEY, "cust-zq-other"):
        with pytest.raises(CustomerErased):
            store.profile(key)
    assert store.profile(NEIGHBOUR).customer_id == NEIGHBOUR


def test_forget_refuses_a_plain_log_and_an_unknown_customer(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load_settings(environ={"PROFILESTORE_PRIVACY__ENCRYPTION": "false"}, home=home)
    with open_store(settings, clock=lambda: NOW) as store:
        store.append(history(KEY, EMAIL, PHONE, NAME))
        with pytest.raises(NotEncrypted):
            store.forget(KEY, request_id="DSR-5")
    other = load_settings(environ={}, home=tmp_path / "other")
    with open_store(other) as store, pytest.raises(CustomerNotFound):
        store.forget("nobody", request_id="DSR-6")


def test_no_readable_copy_is_left_in_any_file_of_the_embedded_stores(settings: Settings) -> None:
    """The issue's test: a byte search of every file (database, WAL, free pages) of the
    embedded stores for the customer's email, phone, name and key finds nothing."""
    with open_store(settings, clock=lambda: NOW) as store:
        store.append(history(KEY, EMAIL, PHONE, NAME))
        store.append(history(NEIGHBOUR, "neighbour@example.org", "+14155550100", "Neighbour"))
        store.refresh()
        store.resolve_identity()
        files = [*store._log.recorder.local_files(), *store._documents.local_files()]
        probes = [EMAIL, PHONE, NAME, KEY]

        def found() -> set[str]:
            data = b"".join(Path(f).read_bytes() for f in files if Path(f).exists())
            return {p for p in probes if p.encode() in data}

        assert found() == set(probes)  # the documents hold them: the search can fail
        store.forget(KEY, request_id="DSR-7")
        assert found() == set()
    assert sorted(os.listdir(Path(files[0]).parent))  # the files are still there


def _folded(store: ProfileStore, key: str) -> dict[str, Any]:
    """The sections folded from the events (scores are computed by their own job)."""
    return {k: v for k, v in store.profile(key).sections.items() if k != "scores"}


def test_a_plain_store_moves_to_an_encrypted_log_and_can_then_forget(tmp_path: Path) -> None:
    plain = load_settings(environ={"PROFILESTORE_PRIVACY__ENCRYPTION": "false"}, home=tmp_path)
    with open_store(plain, clock=lambda: NOW) as store:
        store.append(history(KEY, EMAIL, PHONE, NAME))
        store.append(history(NEIGHBOUR, "neighbour@example.org", "+14155550100", "Neighbour"))
        store.refresh()
        before = {k: _folded(store, k) for k in (KEY, NEIGHBOUR)}
        target = f"sqlite:///{tmp_path / 'encrypted.sqlite'}"
        assert store.encrypt_into(target) == 14
        with pytest.raises(InvalidArgument, match="not new and empty"):
            store.encrypt_into(target)
    moved = load_settings(
        environ={
            "PROFILESTORE_EVENT_LOG__URL": target,
            "PROFILESTORE_DOCUMENTS__URL": f"sqlite:///{tmp_path / 'moved-documents.sqlite'}",
        },
        home=tmp_path,
    )
    with open_store(moved, clock=lambda: NOW) as store:
        assert store._log.encrypted
        store.rebuild()
        assert {k: _folded(store, k) for k in (KEY, NEIGHBOUR)} == before
        store.forget(KEY, request_id="DSR-8")
        exported = store.export(KEY)
        assert exported.erasure == "erased" and exported.events == [] and exported.profile is None
        assert store.export(NEIGHBOUR).erasure == "none"


def test_a_copy_left_where_secure_delete_never_looked_is_compacted_away(
    settings: Settings,
) -> None:
    """A stale copy of a value that SQLite's ``secure_delete`` never zeroes (here: rows
    freed by a connection without it; in life: the old bytes of a row a page split moved)
    is found by forget's search, which then rebuilds the document file and looks again:
    the receipt says so, and finds nothing."""
    with open_store(settings, clock=lambda: NOW) as store:
        store.append(history(KEY, EMAIL, PHONE, NAME))
        store.append(history(NEIGHBOUR, "neighbour@example.org", "+14155550100", "Neighbour"))
        store.refresh()
        path = store._documents.local_files()[0]
        with sqlite3.connect(path) as raw:
            raw.execute("PRAGMA secure_delete=OFF")
            raw.execute("CREATE TABLE scratch (body TEXT)")
            raw.executemany("INSERT INTO scratch VALUES (?)", [(EMAIL * 40,)] * 50)
        with sqlite3.connect(path) as raw:
            raw.execute("PRAGMA secure_delete=OFF")
            raw.execute("DROP TABLE scratch")  # its pages are free, their bytes intact
        raw.close()
        files = [*store._log.recorder.local_files(), *store._documents.local_files()]

        receipt = store.forget(KEY, request_id="DSR-8")

        assert receipt.plaintext.compacted and receipt.plaintext.found == 0
        data = b"".join(Path(f).read_bytes() for f in files if Path(f).exists())
        assert EMAIL.encode() not in data and KEY.encode() not in data
        assert store.find("email", "neighbour@example.org").customer_id == NEIGHBOUR
        # Nothing left to find the next time: no rebuild for an erasure that needs none.
        store.append(history("cust-zz-0001", "zz@example.org", "+14155550111", "Zz"))
        store.refresh()
        assert not store.forget("cust-zz-0001", request_id="DSR-9").plaintext.compacted


def test_a_writer_that_saw_a_customer_new_too_late_plans_again_with_the_stored_start(
    log_backend: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers find a customer new; the second commits first. The first's batch,
    keyed with its own "first seen", conflicts and is planned again with the stored one,
    so each event has one key whichever writer sends it again."""
    from profilestore import eventlog

    clock = iter(range(10**18, 2 * 10**18, 7 * 10**9))  # each call 7 s later
    monkeypatch.setattr(eventlog.time, "time_ns", lambda: next(clock))
    early, late = _encrypted_log(log_backend), _encrypted_log(log_backend)
    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)

    def view(event_id: str) -> PageViewed:
        return PageViewed(event_id=event_id, customer_id=KEY, occurred_at=t0, url="/")

    planned = early.recorder.append_heads
    calls = 0

    def heads_then_late_writer(streams: Any) -> Any:
        nonlocal calls
        calls += 1
        found = planned(streams)
        if calls == 1:  # after early read the customer as new, late writes it first
            assert late.append([view("late-1")]).appended == 1
        return found

    monkeypatch.setattr(early.recorder, "append_heads", heads_then_late_writer)
    try:
        result = early.append([view("early-1")])
        assert (result.appended, result.attempts, calls) == (1, 2, 2)
        for log in (early, late):
            again = log.append([view("early-1"), view("late-1")])
            assert (again.appended, again.duplicates) == (0, 2)
        assert sorted(e.event_id for e in late.stream(KEY)) == ["early-1", "late-1"]
    finally:
        early.close()
        late.close()


@pytest.mark.parametrize(
    "log_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_writers_racing_to_key_the_same_new_customers_all_read_back(
    tmp_path: Path, request: pytest.FixtureRequest, log_kind: str
) -> None:
    """Four logs (four key caches) append to the same new customers at once: whichever
    writer's data key is stored first for a stream, every event of it decrypts."""
    if log_kind == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'events.sqlite'}", ""
    else:
        url, schema = request.getfixturevalue("postgres_schema")
    secret = kek("racing")
    first = open_log(url, postgres_schema=schema, encryption=True, kek=secret)
    logs = [first] + [
        open_log(url, postgres_schema=schema, encryption=True, kek=secret) for _ in range(3)
    ]
    errors: list[BaseException] = []
    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    together = threading.Barrier(4, timeout=60)

    def views(worker: int, batch: int) -> list[PageViewed]:
        return [
            PageViewed(
                event_id=f"w{worker}-{batch}-{c}",
                customer_id=f"new-{batch}-{c}",
                occurred_at=t0,
                url="https://shop.example/",
            )
            for c in range(8)
        ]

    def writer(worker: int) -> None:
        try:
            for batch in range(6):
                together.wait()  # every writer finds these customers new
                logs[worker].append(views(worker, batch))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        reader = open_log(url, postgres_schema=schema, encryption=True, kek=secret)
        try:
            for batch in range(6):
                for c in range(8):
                    events = reader.stream(f"new-{batch}-{c}")
                    assert sorted(e.event_id for e in events) == [
                        f"w{w}-{batch}-{c}" for w in range(4)
                    ]
        finally:
            reader.close()
        # Retried by each writer: every event is found again, whichever writer saw its
        # customer first (event-id keys begin with when the directory first saw a stream).
        for worker, log in enumerate(logs):
            for batch in range(6):
                retried = log.append(views(worker, batch))
                assert (retried.appended, retried.duplicates) == (0, 8)
    finally:
        for log in logs:
            log.close()
