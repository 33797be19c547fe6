"""What the MongoDB document store does beyond the shared contract: its documents."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_document_store

from profilestore.documents import DatasetSchema, SectionWrite
from profilestore.mongo_documents import MongoDocumentStore
from projections.carts import Carts
from projections.identities import Identities

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["mongomock", pytest.param("mongo_wire", marks=pytest.mark.mongo_wire)])
def mongo_store(
    request: pytest.FixtureRequest, tmp_path: Path, schemas: dict[str, DatasetSchema]
) -> Iterator[MongoDocumentStore]:
    store = make_document_store(request.param, request, tmp_path, schemas)
    assert isinstance(store, MongoDocumentStore)
    try:
        yield store
    finally:
        store.close()


def stored_ids(store: MongoDocumentStore) -> list[str]:
    return sorted(str(d["_id"]) for d in store.profiles.find({}, {"_id": 1}))


def test_a_regroup_deletes_the_documents_it_leaves_without_a_section(
    mongo_store: MongoDocumentStore,
) -> None:
    s = mongo_store
    s.write(
        "identities",
        [SectionWrite(c, Identities(), 1, (f"email:{c}@example.com",)) for c in ("c1", "c2")],
        refreshed_at=T0,
    )
    s.write("carts", [SectionWrite("c2", Carts(), 1)], refreshed_at=T0)

    s.regroup("identities", [], ["c1", "c2"], refreshed_at=T0)

    # c1 held nothing else; c2 keeps its document for its cart, without identities.
    assert stored_ids(s) == ["c2"]
    c2 = s.profiles.find_one({"_id": "c2"})
    assert c2 is not None
    assert "identities" not in c2 and "identities" not in c2["_meta"]
    assert "identities" not in c2.get("_keys", {})


def test_a_regroup_keeps_a_document_that_still_holds_a_staging_section(
    mongo_store: MongoDocumentStore,
) -> None:
    s = mongo_store
    s.write("carts", [SectionWrite("c1", Carts(), 1)], refreshed_at=T0)
    s.start_staging("carts")
    s.write("carts", [SectionWrite("c1", Carts(), 1)], refreshed_at=T0, staging=True)

    s.regroup("carts", [], ["c1"], refreshed_at=T0)

    assert stored_ids(s) == ["c1"]
    assert s.get("c1") is None
    assert list(s.load("carts", ["c1"], staging=True)) == ["c1"]

    s.regroup("carts", [], ["c1"], refreshed_at=T0, staging=True)

    assert stored_ids(s) == []
