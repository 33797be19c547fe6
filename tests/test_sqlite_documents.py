"""What the embedded document store does beyond the shared contract."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

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
