"""What the embedded document store does beyond the shared contract."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import msgspec

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
        (compact,) = conn.execute("SELECT body FROM s_consents").fetchone()
        stored = msgspec.json.format(compact, indent=1)
        conn.execute("UPDATE s_consents SET body = ?", (stored,))
    raw = store.get_raw("c1")
    store.close()
    assert raw is not None
    assert bytes(raw.sections["consents"]) == stored  # spliced as is, never re-encoded
    assert raw.freshness["consents"].position == 3
