"""What the embedded document store does beyond the shared contract."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path

import msgspec
import pytest

from profilestore.documents import DatasetSchema
from profilestore.sqlite_documents import SQLiteDocumentStore


def indexes(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'i_%'"
        ).fetchall()
    return sorted(name for (name,) in rows)


def test_opening_a_store_again_creates_no_more_schema(
    tmp_path: Path, schemas: dict[str, DatasetSchema]
) -> None:
    path = tmp_path / "documents.sqlite"
    SQLiteDocumentStore(str(path), schemas).close()
    first = indexes(path)
    for _ in range(3):
        SQLiteDocumentStore(str(path), schemas).close()
    assert len(first) == sum(1 for s in schemas.values() if s.keyed)
    assert indexes(path) == first


def test_a_promoted_rebuild_keeps_one_index_per_keyed_table(
    tmp_path: Path, schemas: dict[str, DatasetSchema]
) -> None:
    path = tmp_path / "documents.sqlite"
    store = SQLiteDocumentStore(str(path), schemas)
    for _ in range(2):
        store.start_staging("identities")
        store.advance("identities", 0, refreshed_at=dt.datetime.now(dt.UTC), staging=True)
        store.promote_staging("identities")
    store.close()
    with sqlite3.connect(path) as conn:
        on_keys = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'k_identities' "
            "AND name LIKE 'i_%'"
        ).fetchall()
    assert len(on_keys) == 1


def test_raw_reads_hand_out_the_stored_bytes_untouched(
    tmp_path: Path, schemas: dict[str, DatasetSchema]
) -> None:
    from profilestore.documents import SectionWrite
    from projections.consents import Consent, Consents

    store = SQLiteDocumentStore(str(tmp_path / "documents.sqlite"), schemas)
    at = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    section = Consents(
        consents=(
            Consent(
                channel="email", purpose="marketing", granted=True, changed_at=at, source="web"
            ),
        )
    )
    store.write("consents", [SectionWrite("c1", section, 3)], refreshed_at=at)
    # Equivalent JSON laid out differently: only an untouched copy returns these bytes.
    with sqlite3.connect(tmp_path / "documents.sqlite") as conn:
        (compact,) = conn.execute("SELECT body FROM sections WHERE dataset = 'consents'").fetchone()
        stored = msgspec.json.format(compact, indent=1)
        conn.execute("UPDATE sections SET body = ? WHERE dataset = 'consents'", (stored,))
    raw = store.get_raw("c1")
    store.close()
    assert raw is not None
    assert bytes(raw.sections["consents"]) == stored  # spliced as is, never re-encoded
    assert raw.freshness["consents"].position == 3


def test_a_store_with_one_table_per_dataset_is_moved_into_the_sections_table(
    tmp_path: Path, schemas: dict[str, DatasetSchema]
) -> None:
    from projections.consents import Consent, Consents

    at = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    section = Consents(
        consents=(
            Consent(channel="sms", purpose="service", granted=False, changed_at=at, source="app"),
        )
    )
    path = tmp_path / "documents.sqlite"
    with sqlite3.connect(path) as conn:  # the layout stores were written in before
        conn.execute(
            "CREATE TABLE s_consents (customer_id TEXT PRIMARY KEY, "
            "position INTEGER NOT NULL, refreshed_at TEXT NOT NULL, body BLOB NOT NULL)"
        )
        conn.execute(
            "INSERT INTO s_consents VALUES ('c1', 7, ?, ?)",
            (at.isoformat(timespec="microseconds"), msgspec.json.encode(section)),
        )
    store = SQLiteDocumentStore(str(path), schemas)
    profile = store.get("c1")
    assert list(store.customer_ids("consents")) == ["c1"]
    store.close()
    assert profile is not None
    assert profile.sections == {"consents": section}
    assert profile.freshness["consents"].position == 7
    with sqlite3.connect(path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert "s_consents" not in tables


def test_sections_come_in_the_configured_order_and_unconfigured_ones_stay_out(
    tmp_path: Path, schemas: dict[str, DatasetSchema]
) -> None:
    from profilestore.documents import SectionWrite

    path = str(tmp_path / "documents.sqlite")
    at = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    store = SQLiteDocumentStore(path, schemas)
    for position, name in enumerate(reversed(list(schemas)), start=1):
        store.write(name, [SectionWrite("c1", schemas[name].section(), position)], refreshed_at=at)
    profile = store.get("c1")
    assert profile is not None and list(profile.sections) == list(schemas)
    first, *_, last = schemas
    named = store.get("c1", [last, first])
    assert named is not None and list(named.sections) == [last, first]
    store.close()
    # A dataset dropped from the configuration: its stored rows are not served.
    dropped = next(iter(schemas))
    fewer = {name: schema for name, schema in schemas.items() if name != dropped}
    store = SQLiteDocumentStore(path, fewer)
    profile = store.get("c1")
    store.close()
    assert profile is not None and list(profile.sections) == list(fewer)


def test_lookups_read_through_a_memory_map_of_the_configured_size(
    tmp_path: Path, schemas: dict[str, DatasetSchema]
) -> None:
    store = SQLiteDocumentStore(str(tmp_path / "documents.sqlite"), schemas, mmap_bytes=2**24)
    (size,) = store._connection().execute("PRAGMA mmap_size").fetchone()
    store.close()
    assert size == 2**24


def test_a_new_store_another_process_is_creating_waits_for_its_switch_to_wal(
    tmp_path: Path, schemas: dict[str, DatasetSchema]
) -> None:
    # Another process writes the new file (still in rollback-journal mode): SQLite refuses
    # the switch to WAL at once ("database is locked") rather than wait; opening must wait.
    path = tmp_path / "documents.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE other_process (x INTEGER)")
    released = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    released.start()
    try:
        store = SQLiteDocumentStore(str(path), schemas)
        store.close()
    finally:
        released.join()
        other.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_scores_kept_in_the_sections_table_move_to_their_own_and_read_the_same(
    tmp_path: Path, schemas: dict[str, DatasetSchema]
) -> None:
    from profilestore.documents import SectionWrite
    from projections.scores import Scores

    at = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    section = Scores(computed_at=at, fit_version="fit-1", value_tier="gold")
    path = tmp_path / "documents.sqlite"
    # A store written before derived datasets had a table of their own.
    older = {name: DatasetSchema(s.section, keyed=s.keyed) for name, s in schemas.items()}
    store = SQLiteDocumentStore(str(path), older)
    store.write("scores", [SectionWrite("c1", section, 4)], refreshed_at=at)
    store.close()
    # An auditor's read-only copy of it reads the scores where they are.
    audit = SQLiteDocumentStore(str(path), schemas, read_only=True)
    profile = audit.get("c1", ["scores"])
    audit.close()
    assert profile is not None and profile.sections == {"scores": section}

    store = SQLiteDocumentStore(str(path), schemas)
    moved = store.get("c1")
    assert list(store.customer_ids("scores")) == ["c1"]
    store.close()
    assert moved is not None and moved.sections == {"scores": section}
    assert moved.freshness["scores"].position == 4
    with sqlite3.connect(path) as conn:
        left = conn.execute("SELECT COUNT(*) FROM sections WHERE dataset = 'scores'").fetchone()
        (inline,) = conn.execute("SELECT COUNT(*) FROM d_scores").fetchone()
    assert left == (0,) and inline == 1


def test_a_write_ahead_log_grown_by_a_large_transaction_is_cut_back_once_checkpointed(
    tmp_path: Path, schemas: dict[str, DatasetSchema], monkeypatch: pytest.MonkeyPatch
) -> None:
    from profilestore import sqlite_documents
    from profilestore.documents import SectionWrite
    from projections.consents import Consent, Consents

    monkeypatch.setattr(sqlite_documents, "WAL_LIMIT_BYTES", 256 << 10)
    path = tmp_path / "documents.sqlite"
    store = SQLiteDocumentStore(str(path), schemas)
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    try:
        big = [  # one transaction of ~4 MB, as a promotion writes
            SectionWrite(
                f"cust-{i:05d}",
                Consents(
                    consents=(
                        Consent(
                            channel="email",
                            purpose="x" * 400,
                            granted=True,
                            changed_at=at,
                            source="test",
                        ),
                    )
                ),
                1,
            )
            for i in range(8_000)
        ]
        store.write("consents", big, refreshed_at=at)
        wal = Path(f"{path}-wal")
        assert wal.stat().st_size > 2 << 20
        store._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
        store.write("consents", [SectionWrite("cust-00000", Consents(), 2)], refreshed_at=at)
        assert wal.stat().st_size <= 256 << 10
    finally:
        store.close()
