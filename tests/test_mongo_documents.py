"""What the MongoDB document store does beyond the shared contract: its documents, its
lookups collection (the layout of a sharded cluster, ``mongo_layout.py``), crashes between
its writes, and the migration of a store written before that collection."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import make_document_store
from pymongo import MongoClient, monitoring
from pymongo.errors import ConnectionFailure

from profilestore.cli import main
from profilestore.documents import DatasetSchema, SectionWrite
from profilestore.errors import DocumentsUnavailable
from profilestore.mongo_documents import MongoDocumentStore
from profilestore.mongo_layout import mongosh_script, shard_plan
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


# --- the lookups collection: the layout of a sharded cluster ----------------------------------


def identity(customer_id: str, position: int, *keys: str) -> SectionWrite:
    return SectionWrite(customer_id, Identities(), position, keys)


def entries(store: MongoDocumentStore) -> dict[tuple[str, str], list[str]]:
    """Every lookup entry: (key, customer) -> its holders, sorted."""
    return {(str(e["k"]), str(e["c"])): sorted(e["h"]) for e in store.lookups.find({})}


def carried(store: MongoDocumentStore) -> dict[tuple[str, str], list[str]]:
    """What the entries must be: every key the documents carry, with who carries it."""
    expected: dict[tuple[str, str], list[str]] = {}
    for document in store.profiles.find({}, {"_keys": 1, "_staging_keys": 1}):
        for field, suffix in (("_keys", ""), ("_staging_keys", ":staging")):
            for dataset, keys in (document.get(field) or {}).items():
                for key in keys:
                    holders = expected.setdefault((key, str(document["_id"])), [])
                    holders.append(dataset + suffix)
    return {pair: sorted(holders) for pair, holders in expected.items()}


def test_lookup_entries_follow_the_keys_through_writes_regroups_rebuilds_and_erasure(
    mongo_store: MongoDocumentStore,
) -> None:
    s = mongo_store
    s.write(
        "identities",
        [identity("c1", 1, "email:a", "phone:1"), identity("c2", 1, "email:b")],
        refreshed_at=T0,
    )
    assert (
        entries(s)
        == carried(s)
        == {
            ("email:a", "c1"): ["identities"],
            ("phone:1", "c1"): ["identities"],
            ("email:b", "c2"): ["identities"],
        }
    )
    # A newer section drops a key and gains one; a stale one (refused) adds nothing.
    s.write("identities", [identity("c1", 2, "email:a", "phone:2")], refreshed_at=T0)
    s.write("identities", [identity("c2", 0, "email:stale")], refreshed_at=T0)
    assert entries(s) == carried(s)
    assert ("phone:1", "c1") not in entries(s) and ("email:stale", "c2") not in entries(s)

    s.regroup("identities", [identity("c1", 3, "email:a", "email:b")], ["c2"], refreshed_at=T0)
    assert entries(s) == carried(s)
    assert s.find("email:b") == ["c1"]

    s.start_staging("identities")
    s.write("identities", [identity("c3", 4, "email:a")], refreshed_at=T0, staging=True)
    assert entries(s) == carried(s)
    assert entries(s)[("email:a", "c3")] == ["identities:staging"]
    assert s.find("email:a") == ["c1"]  # staging is never found
    s.advance("identities", 4, refreshed_at=T0, staging=True)
    s.promote_staging("identities")
    assert entries(s) == carried(s) == {("email:a", "c3"): ["identities"]}
    assert s.find("email:a") == ["c3"] and s.find("email:b") == []

    s.erase(["c3"])
    assert entries(s) == {}


def test_a_crash_between_the_lookup_entries_and_the_section_never_makes_find_lie(
    mongo_store: MongoDocumentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = mongo_store
    s.write("identities", [identity("c1", 1, "email:a")], refreshed_at=T0)

    def crash(*args: object, **kwargs: object) -> None:
        raise ConnectionFailure("the process died here")

    # The entry for the new key is written, the section is not.
    monkeypatch.setattr(s.profiles, "bulk_write", crash)
    with pytest.raises(DocumentsUnavailable):
        s.write("identities", [identity("c2", 1, "email:b")], refreshed_at=T0)
    monkeypatch.undo()
    assert ("email:b", "c2") in entries(s)
    assert s.find("email:b") == []  # an entry without its section is not believed
    assert s.get("c2") is None

    # The retry (the same fold, after a restart) makes the entry true.
    s.write("identities", [identity("c2", 1, "email:b")], refreshed_at=T0)
    assert s.find("email:b") == ["c2"]
    assert entries(s) == carried(s)


def test_a_crash_before_the_stale_entries_are_released_never_makes_find_lie(
    mongo_store: MongoDocumentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = mongo_store
    s.write("identities", [identity("c1", 1, "email:old")], refreshed_at=T0)

    def crash(*args: object, **kwargs: object) -> None:
        raise ConnectionFailure("the process died here")

    monkeypatch.setattr(s.lookups, "bulk_write", crash)
    s.write("identities", [identity("c1", 2, "email:old")], refreshed_at=T0)  # no change
    # The section moves to a new key; the entries cannot be written.
    with pytest.raises(DocumentsUnavailable):
        s.write("identities", [identity("c1", 3, "email:new")], refreshed_at=T0)
    monkeypatch.undo()
    # Nothing was written: entries first, so the section did not move either.
    assert s.find("email:old") == ["c1"] and s.find("email:new") == []

    # Now the crash comes after the section write, before the release.
    original = s.lookups.bulk_write
    calls: list[int] = []

    def crash_on_release(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) > 1:  # the first is the hold of the new key
            raise ConnectionFailure("the process died here")
        return original(*args, **kwargs)

    monkeypatch.setattr(s.lookups, "bulk_write", crash_on_release)
    with pytest.raises(DocumentsUnavailable):
        s.write("identities", [identity("c1", 3, "email:new")], refreshed_at=T0)
    monkeypatch.undo()
    assert ("email:old", "c1") in entries(s)  # left behind
    assert s.find("email:old") == []  # but not believed
    assert s.find("email:new") == ["c1"]
    # An erasure takes the entry a crash left behind too.
    s.erase(["c1"])
    assert entries(s) == {}


@pytest.mark.mongo_wire
def test_find_is_one_read_by_key_then_one_by_customer_id(
    mongo_wire_uri: str, schemas: dict[str, DatasetSchema]
) -> None:
    """On a sharded cluster both reads are targeted: ``k`` leads the lookups' shard key,
    ``_id`` is the profiles' (see ``mongo_layout.py``)."""
    listener = CommandLog()
    client: MongoClient[dict[str, Any]] = MongoClient(
        mongo_wire_uri, tz_aware=True, event_listeners=[listener]
    )
    name = f"profilestore_test_{uuid.uuid4().hex[:10]}"
    store = MongoDocumentStore(client[name], schemas, client=client)
    try:
        store.write(
            "identities",
            [identity("c1", 1, "email:a"), identity("c2", 1, "email:b")],
            refreshed_at=T0,
        )
        listener.commands.clear()

        assert store.find("email:a") == ["c1"]

        assert [(c["find"], c["filter"]) for c in listener.commands] == [
            ("profiles_lookups", {"k": "email:a"}),
            ("profiles", {"_id": {"$in": ["c1"]}, "$or": [{"_keys.identities": "email:a"}]}),
        ]
    finally:
        client.drop_database(name)
        store.close()


class CommandLog(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.commands.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def legacy_store(store: MongoDocumentStore) -> None:
    """Make ``store``'s database look as a previous version left it: keys in ``_keys``
    only, no lookup entry, no marker."""
    store.lookups.delete_many({})
    store.tracking_records.delete_many({})


def test_a_store_written_before_the_lookups_collection_is_backfilled_on_open(
    mongo_store: MongoDocumentStore, schemas: dict[str, DatasetSchema]
) -> None:
    s = mongo_store
    s.write("identities", [identity("c1", 1, "email:a", "phone:1")], refreshed_at=T0)
    s.start_staging("identities")
    s.write("identities", [identity("c2", 1, "email:a")], refreshed_at=T0, staging=True)
    expected = carried(s)
    legacy_store(s)
    database = s.profiles.database

    # Read-only: nothing is written; find reads the documents' keys as it used to.
    reader = MongoDocumentStore(database, schemas, read_only=True)
    assert reader.find("email:a") == ["c1"] and reader.find("phone:1") == ["c1"]
    assert entries(s) == {}

    # Any writable open backfills, once.
    writer = MongoDocumentStore(database, schemas)
    assert entries(s) == expected
    assert writer.backfill_lookups() == 0
    assert writer.find("email:a") == ["c1"]
    # The reader, opened before, sees the marker and goes through the lookups from now on.
    s.lookups.delete_many({"k": "phone:1"})
    assert reader.find("phone:1") == []
    # A rebuild promoted after the migration carries the backfilled staging entries.
    writer.advance("identities", 1, refreshed_at=T0, staging=True)
    writer.promote_staging("identities")
    assert writer.find("email:a") == ["c2"]


def test_the_store_creates_the_indexes_of_the_shard_plan(
    mongo_store: MongoDocumentStore,
) -> None:
    database = mongo_store.profiles.database
    for plan in shard_plan("profiles"):
        info = database[plan.name].index_information()
        created = {
            name: (
                tuple((f, int(d) if not isinstance(d, str) else d) for f, d in spec["key"]),
                bool(spec.get("unique", False)),
            )
            for name, spec in info.items()
            if name != "_id_"
        }
        assert created == {i.name: (i.keys, i.unique) for i in plan.indexes}, plan.name
        for index in plan.indexes:
            if index.unique:  # a unique index of a sharded collection begins with its key
                assert plan.shard_key is not None
                assert index.keys[: len(plan.shard_key)] == plan.shard_key


def test_the_deploy_script_shards_the_collections_per_the_plan(tmp_path: Path) -> None:
    script = Path(__file__).parent.parent / "deploy" / "mongo" / "shard-collections.js"
    # With the generations of the default config's derived dataset, the scores.
    assert script.read_text() == mongosh_script("profilestore", "profiles", ["scores"])
    # `profilestore documents shard-plan` prints it for the configured URL and collection.
    printed = CliRunner().invoke(
        main,
        ["--home", str(tmp_path), "documents", "shard-plan"],
        env={"PROFILESTORE_DOCUMENTS__URL": "mongodb://mongos:27017/profilestore"},
    )
    assert printed.exit_code == 0, printed.output
    assert printed.output == script.read_text()
    text = mongosh_script("profilestore", "profiles", ["scores"])
    assert 'sh.shardCollection(database + ".profiles__scores__1", {_id: "hashed"});' in text
    for plan in shard_plan("profiles", ["scores"]):
        sharded = f'sh.shardCollection(database + ".{plan.name}"' in text
        assert sharded == (plan.shard_key is not None), plan.name
    assert 'sh.shardCollection(database + ".profiles", {_id: "hashed"});' in text
    assert (
        'sh.shardCollection(database + ".profiles_lookups", {k: 1, c: 1}, {unique: true});' in text
    )
