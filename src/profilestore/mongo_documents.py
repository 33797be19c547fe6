"""The production document store: one MongoDB document per customer, through pymongo.

A document is ``{_id: customer_id, <dataset>: section, _meta: {<dataset>: {position,
refreshed_at}}, _keys: {<dataset>: [lookup keys]}}``; sections are the same JSON shapes
the embedded store keeps (msgspec builtins: datetimes and decimals as strings), so both
stores hold equal documents. The layout is ready for a sharded cluster
(``mongo_layout.py`` states the shard keys and indexes, and this store creates those
indexes): every operation on a document names its ``_id``, the profiles' shard key.

**Lookups.** Identifier lookups go through a collection of their own,
``<collection>_lookups``, sharded on its key: one entry ``{k: lookup key, c: customer,
h: [holders]}`` per key and customer, held by the sections that carry the key (``h``:
``identities``, or ``identities:staging`` for a rebuild's). :meth:`find` reads the entries
of one key (targeted: ``k`` leads the shard key), then the candidates' documents by
``_id``, keeping those whose live keys carry it: an entry is a hint, the document the
truth, so an entry a crash left behind never makes a lookup lie.

The write order keeps the entries a superset of the documents' keys, so no lookup ever
misses either. A write first reads the keys its customers' documents keep (one read per
chunk), holds an entry for each key a section gains, then writes the sections, then
re-reads the changed documents and releases the keys they no longer carry (a key lost,
or one a write refused by the position guard would have added); an entry nobody holds
is deleted. A crash after the holds leaves entries the documents do not carry: ``find``
ignores them, the retried write (the same fold again) makes them true or releases them,
and an erasure deletes them. A crash before the releases leaves entries held for keys
no longer carried: also ignored, and released when the dataset is next rebuilt (the
promotion releases every live hold the rebuild did not produce) or the customer erased.
Only the dataset's lease holder writes its live (or staging) sections, and so only it
moves its holds: two writers never release each other's. Steady-state writes whose keys
do not change cost one read and no lookup write.

**Migration.** A store written before this collection existed keeps its keys in
``_keys`` only. The first writable open backfills the entries (every document's live and
staging keys; idempotent, so an interrupted one is simply redone) and then records a
marker in the tracking collection; until the marker is there, :meth:`find` reads the
documents' keys as it used to (a scatter-gather query). Stop processes of the previous
version before starting this one: they write sections without entries. On a large store,
let one process open it first (any writing command, e.g. ``profilestore refresh``): every
writable open that finds no marker backfills, so processes started together would all
scan the profiles.

Writes are guarded upserts: the filter matches the customer only while the stored
position is older, so a replayed write matches nothing, tries to insert, and is rejected
by the ``_id`` unique index (duplicate key, code 11000), which is ignored.

A regroup (identity resolution) writes unguarded upserts, then unsets the removed
customers' section, meta and keys of the dataset and deletes the documents that hold no
section any more. Each document changes atomically, but nothing spans documents: a crash
between the writes and the removals leaves sections that the caller's repeated (and
idempotent) regroup removes. Its lookup entries follow the write order above.

Rebuilds write the ``_staging`` fields of the same documents (one collection holds every
dataset, so a collection rename cannot swap one of them); lookups never read staging.

A **derived** dataset (the scores: rewritten whole by its job every run) has two
collections of its own instead, ``<collection>__<dataset>__0`` and ``..__1``, one
document per customer (``{_id, section, position, refreshed_at}``), and a **generation
pointer** (a tracking record, ``<dataset>:generation``) saying which one is live; the
other is the staging area. A run fills the staging generation and promotion moves the
pointer: one single-document write whatever the number of customers, so readers see
every profile on the old fit or every one on the new. (``renameCollection`` would be as
quick, but must run against the ``admin`` database, which a user of one database may not
be granted; the pointer needs nothing more than the store's own collections.) The
replaced generation stays until the next run starts (a reader that read the pointer just
before the switch still finds its sections). A profile read that asks for a derived
dataset reads the pointer and that collection too, by ``_id``: two more round trips,
not one snapshot with the profile document (no transaction spans them); each section is
read whole and names its fit.

Promotion first holds every staged key's entry as live, drops the live section of
documents the rebuild did not produce, renames the staging fields over the live ones,
then releases the live holds the rebuild did not produce and every staging hold. Each
document changes atomically; the dataset as a whole changes within those ``update_many``
calls (which go to every shard), during which the dataset's lease keeps refreshes out.

An erasure deletes the customers' documents, then their lookup entries by customer (the
one write that goes to every shard; the index on ``c`` serves it), so entries a crash
left behind go too.

``open_documents`` (last in the module) is the factory :data:`DOCUMENT_BACKENDS` calls for
``mongodb:`` and ``mongodb+srv:`` URLs; a malformed URL is an ``InvalidSetting`` (password
masked) before any client exists.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from pymongo import (
    AsyncMongoClient,
    DeleteOne,
    MongoClient,
    ReplaceOne,
    ReturnDocument,
    UpdateOne,
)
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, ConfigurationError, DuplicateKeyError, PyMongoError

from profilestore.documents import (
    ERASED_ALWAYS,
    DatasetSchema,
    DocumentStore,
    Profile,
    RawProfile,
    SectionMeta,
    SectionWrite,
    StoredSection,
    Tracking,
    guards_itself,
    newest_per_customer,
    regroup_plan,
    translate_errors,
    url_error,
    utc,
)
from profilestore.mongo_layout import LOOKUP_CUSTOMER, LOOKUP_HOLDERS, LOOKUP_KEY, shard_plan
from profilestore.redaction import Erasure, Verdict

if TYPE_CHECKING:
    from profilestore.config import DocumentSettings

DUPLICATE_KEY = 11000
_JSON = msgspec.json.Encoder(decimal_format="string")
_CHUNK = 1000
"""Operations a bulk write sends at once."""
_IN_CHUNK = 400
"""Ids a ``$in`` query names at once. MongoDB takes far more; mongoeco, the wire server
the contract suite runs against, compiles ``$in`` to one SQLite expression of about two
levels a value, and SQLite refuses one deeper than 1000 (so about 495 values)."""


_DERIVED_PROJECTION = {"section": 1, "position": 1, "refreshed_at": 1}


def _fields(dataset: str, staging: bool) -> tuple[str, str, str]:
    """Paths of a dataset's section, meta and keys (live or staging)."""
    if staging:
        return f"_staging.{dataset}", f"_staging_meta.{dataset}", f"_staging_keys.{dataset}"
    return dataset, f"_meta.{dataset}", f"_keys.{dataset}"


@translate_errors(PyMongoError)
class MongoDocumentStore(DocumentStore):
    backend = "mongodb"

    def __init__(
        self,
        database: Database[dict[str, Any]],
        schemas: Mapping[str, DatasetSchema],
        *,
        collection: str = "profiles",
        client: MongoClient[dict[str, Any]] | None = None,
        read_only: bool = False,
    ) -> None:
        super().__init__(schemas, read_only=read_only)
        self.location = f"{database.name}.{collection}"
        self._client = client
        self.profiles: Collection[dict[str, Any]] = database[collection]
        self.tracking_records: Collection[dict[str, Any]] = database[f"{collection}_tracking"]
        self.leases: Collection[dict[str, Any]] = database[f"{collection}_leases"]
        self.records: Collection[dict[str, Any]] = database[f"{collection}_records"]
        self.lookups: Collection[dict[str, Any]] = database[f"{collection}_lookups"]
        self._lookups_ready = False
        self._derived: set[str] = set()
        try:
            if not read_only:  # read-only: no index is created, nothing backfilled
                for plan in shard_plan(collection):
                    for index in plan.indexes:
                        database[plan.name].create_index(
                            list(index.keys), unique=index.unique, name=index.name
                        )
                self.backfill_lookups()
            self._derived = self._derived_datasets()
        except PyMongoError as e:
            failure = self.unavailable("open", e)
            self.close()
            raise failure from e

    @classmethod
    def connect(
        cls,
        url: str,
        schemas: Mapping[str, DatasetSchema],
        *,
        collection: str = "profiles",
        read_only: bool = False,
    ) -> MongoDocumentStore:
        try:
            client: MongoClient[dict[str, Any]] = MongoClient(url, tz_aware=True)
        except (ConfigurationError, ValueError) as e:  # a malformed URL; nothing was opened
            raise url_error(f"not a usable MongoDB URL: {e}", url) from None
        database = client.get_default_database("profilestore")
        store = cls(database, schemas, collection=collection, client=client, read_only=read_only)
        store._url = url
        return store

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._client is not None:
            self._client.close()

    # --- the async read path (HTTP API) -------------------------------------------------

    _url: str | None = None
    _async_client: AsyncMongoClient[dict[str, Any]] | None = None

    def _async_collection(self, name: str | None = None) -> AsyncCollection[dict[str, Any]] | None:
        """A collection (the profiles, by default) through pymongo's async client, opened
        on first use (it binds to the running event loop); None when built from a
        database object."""
        if self._url is None:
            return None
        if self._async_client is None:
            self._async_client = AsyncMongoClient(self._url, tz_aware=True)
        database = self._async_client.get_default_database("profilestore")
        return database[name or self.profiles.name]

    @guards_itself
    async def aget_raw(
        self, customer_id: str, datasets: Sequence[str] | None = None
    ) -> RawProfile | None:
        if self.closed:
            raise self.closed_error()
        collection = self._async_collection()
        if collection is None:
            return self.get_raw(customer_id, datasets)
        names = self._names(datasets)
        if any(name in self._derived for name in names):
            return await super().aget_raw(customer_id, datasets)  # two collections
        try:
            document = await collection.find_one({"_id": customer_id}, self._projection(names))
        except PyMongoError as e:
            raise self.unavailable("aget_raw", e) from e
        found = self._present(document, names)
        if found is None:
            return None
        meta, present = found
        assert document is not None
        return RawProfile(
            customer_id=customer_id,
            sections={n: msgspec.Raw(_JSON.encode(document.get(n, {}))) for n in present},
            freshness={n: self._meta(meta[n]) for n in present},
        )

    @guards_itself
    async def afind(self, lookup_key: str) -> list[str]:
        if self.closed:
            raise self.closed_error()
        profiles = self._async_collection()
        lookups = self._async_collection(self.lookups.name)
        if profiles is None or lookups is None:
            return self.find(lookup_key)
        try:
            if not self._lookups_usable():
                cursor = profiles.find(self._legacy_find_query(lookup_key), {"_id": 1})
                return sorted([str(d["_id"]) async for d in cursor])
            entries = lookups.find({LOOKUP_KEY: lookup_key}, {LOOKUP_CUSTOMER: 1, "_id": 0})
            candidates = [str(e[LOOKUP_CUSTOMER]) async for e in entries]
            found: list[str] = []
            for start in range(0, len(candidates), _IN_CHUNK):
                chunk = candidates[start : start + _IN_CHUNK]
                cursor = profiles.find(self._verified_query(lookup_key, chunk), {"_id": 1})
                found += [str(d["_id"]) async for d in cursor]
            return sorted(found)
        except PyMongoError as e:
            raise self.unavailable("afind", e) from e

    def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        found = self.records.find_one({"_id": _record_id(kind, key)})
        return None if found is None else dict(found["value"])

    @guards_itself
    async def aget_record(self, kind: str, key: str) -> dict[str, Any] | None:
        if self.closed:
            raise self.closed_error()
        collection = self._async_collection(self.records.name)
        if collection is None:
            return self.get_records_for(kind, [key]).get(key)
        try:
            found = await collection.find_one({"_id": _record_id(kind, key)})
        except PyMongoError as e:
            raise self.unavailable("aget_record", e) from e
        return None if found is None else dict(found["value"])

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.close()
            self._async_client = None

    # --- derived datasets' collections ---------------------------------------------------

    def _derived_datasets(self) -> set[str]:
        """The derived datasets kept in collections of their own, with the sections a
        store written before kept in the profile documents moved there (a read-only
        store leaves them, and reads them, where they are)."""
        derived = {n for n, s in self.schemas.items() if s.derived and not s.keyed}
        for name in sorted(derived):
            meta = f"_meta.{name}"
            if self.profiles.find_one({meta: {"$exists": True}}, {"_id": 1}) is None:
                continue
            if self.read_only:
                derived.discard(name)
                continue
            moved = [
                ReplaceOne(
                    {"_id": d["_id"]},
                    {
                        "section": d.get(name, {}),
                        "position": d["_meta"][name]["position"],
                        "refreshed_at": d["_meta"][name]["refreshed_at"],
                    },
                    upsert=True,
                )
                for d in self.profiles.find({meta: {"$exists": True}}, {name: 1, meta: 1})
            ]
            for start in range(0, len(moved), _CHUNK):
                self._sections(name).bulk_write(moved[start : start + _CHUNK], ordered=False)
            self.profiles.update_many({meta: {"$exists": True}}, {"$unset": {name: "", meta: ""}})
            self.profiles.delete_many(_HOLDS_NO_SECTION)
        return derived

    def _generation(self, dataset: str) -> int:
        """The live generation of a derived dataset (0 until a promotion moves it)."""
        pointer = self.tracking_records.find_one({"_id": f"{dataset}:generation"})
        return 0 if pointer is None else int(pointer["generation"])

    def _sections(self, dataset: str, staging: bool = False) -> Collection[dict[str, Any]]:
        """The live (or staging) generation's collection of a derived dataset."""
        generation = self._generation(dataset) ^ int(staging)
        return self.profiles.database[f"{self.profiles.name}__{dataset}__{generation}"]

    def _derived_read(
        self, customer_id: str, names: Sequence[str]
    ) -> dict[str, tuple[Any, SectionMeta]]:
        found = {}
        for name in names:
            document = self._sections(name).find_one({"_id": customer_id}, _DERIVED_PROJECTION)
            if document is not None:
                found[name] = (document.get("section", {}), _derived_meta(document))
        return found

    # --- codecs -------------------------------------------------------------------------

    def _decode(self, dataset: str, value: Any) -> Any:
        return msgspec.convert(value, self.schemas[dataset].section)

    @staticmethod
    def _encode(section: msgspec.Struct) -> Any:
        return msgspec.to_builtins(section)

    # --- reads --------------------------------------------------------------------------

    def _names(self, datasets: Sequence[str] | None) -> list[str]:
        names = list(datasets) if datasets is not None else list(self.schemas)
        for name in names:
            self.check_dataset(name)
        return names

    @staticmethod
    def _projection(names: Sequence[str]) -> dict[str, int]:
        return {name: 1 for name in names} | {f"_meta.{name}": 1 for name in names}

    @staticmethod
    def _present(
        document: Mapping[str, Any] | None, names: Sequence[str]
    ) -> tuple[Mapping[str, Any], list[str]] | None:
        """The document's meta and the requested datasets it has; None if it has none."""
        if document is None:
            return None
        meta = document.get("_meta") or {}
        present = [name for name in names if name in meta]
        return (meta, present) if present else None

    @staticmethod
    def _meta(meta: Mapping[str, Any]) -> SectionMeta:
        return SectionMeta(position=meta["position"], refreshed_at=utc(meta["refreshed_at"]))

    def _keyed(self) -> list[str]:
        return [name for name, schema in self.schemas.items() if schema.keyed]

    def _legacy_find_query(self, lookup_key: str) -> dict[str, Any]:
        """The lookup of a store whose lookups collection is not backfilled yet: the
        profiles' own keys (a scatter-gather query on a sharded cluster)."""
        return {"$or": [{f"_keys.{name}": lookup_key} for name in self._keyed()]}

    def _verified_query(self, lookup_key: str, customer_ids: Sequence[str]) -> dict[str, Any]:
        """Those of ``customer_ids`` whose live sections carry ``lookup_key``: a lookup
        entry is a hint, the profile document the truth (see the module docstring)."""
        return {"_id": {"$in": list(customer_ids)}, **self._legacy_find_query(lookup_key)}

    def _lookups_usable(self) -> bool:
        """Whether the lookups collection holds every key (backfilled); read until it is."""
        if not self._lookups_ready:
            self._lookups_ready = (
                self.tracking_records.find_one({"_id": _LOOKUPS_BACKFILLED}) is not None
            )
        return self._lookups_ready

    @guards_itself
    def get(self, customer_id: str, datasets: Sequence[str] | None = None) -> Profile | None:
        if self.closed:
            raise self.closed_error()
        names = self._names(datasets)
        folded = [name for name in names if name not in self._derived]
        read: dict[str, tuple[Any, SectionMeta]] = {}
        try:
            if folded:
                document = self.profiles.find_one({"_id": customer_id}, self._projection(folded))
                found = self._present(document, folded)
                if found is not None:
                    assert document is not None
                    meta, present = found
                    read = {n: (document.get(n, {}), self._meta(meta[n])) for n in present}
            read |= self._derived_read(customer_id, [n for n in names if n in self._derived])
        except PyMongoError as e:
            raise self.unavailable("get", e) from e
        if not read:
            return None
        ordered = [name for name in names if name in read]
        return Profile(
            customer_id=customer_id,
            sections={name: self._decode(name, read[name][0]) for name in ordered},
            freshness={name: read[name][1] for name in ordered},
        )

    @guards_itself
    def find(self, lookup_key: str) -> list[str]:
        if self.closed:
            raise self.closed_error()
        if not any(schema.keyed for schema in self.schemas.values()):
            return []
        try:
            if not self._lookups_usable():
                cursor = self.profiles.find(self._legacy_find_query(lookup_key), {"_id": 1})
                return sorted(str(d["_id"]) for d in cursor)
            # One read targeted by the lookups' shard key, then the candidates' documents
            # by _id (targeted too): an entry a crash left behind is not believed.
            entries = self.lookups.find({LOOKUP_KEY: lookup_key}, {LOOKUP_CUSTOMER: 1, "_id": 0})
            candidates = [str(e[LOOKUP_CUSTOMER]) for e in entries]
            found: list[str] = []
            for start in range(0, len(candidates), _IN_CHUNK):
                chunk = candidates[start : start + _IN_CHUNK]
                cursor = self.profiles.find(self._verified_query(lookup_key, chunk), {"_id": 1})
                found += [str(d["_id"]) for d in cursor]
            return sorted(found)
        except PyMongoError as e:
            raise self.unavailable("find", e) from e

    def load(
        self,
        dataset: str,
        customer_ids: Iterable[str],
        *,
        staging: bool = False,
        shape: type[msgspec.Struct] | None = None,
    ) -> dict[str, StoredSection]:
        self.check_dataset(dataset)
        section_path, meta_path, _ = _fields(dataset, staging)
        ids = list(customer_ids)
        found: dict[str, StoredSection] = {}
        if dataset in self._derived:
            target = self._sections(dataset, staging)
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = {"_id": {"$in": ids[start : start + _IN_CHUNK]}}
                for document in target.find(chunk, _DERIVED_PROJECTION):
                    value = document.get("section", {})
                    found[str(document["_id"])] = StoredSection(
                        self._decode(dataset, value)
                        if shape is None
                        else msgspec.convert(value, shape),
                        document["position"],
                    )
            return found
        for start in range(0, len(ids), _IN_CHUNK):
            cursor = self.profiles.find(
                {"_id": {"$in": ids[start : start + _IN_CHUNK]}, meta_path: {"$exists": True}},
                {section_path: 1, meta_path: 1},
            )
            for document in cursor:
                section = _dig(document, section_path)
                meta = _dig(document, meta_path)
                value = section if section is not None else {}
                found[str(document["_id"])] = StoredSection(
                    self._decode(dataset, value)
                    if shape is None
                    else msgspec.convert(value, shape),
                    meta["position"],
                )
        return found

    def customer_ids(self, dataset: str, *, staging: bool = False) -> Iterator[str]:
        self.check_dataset(dataset)
        if dataset in self._derived:
            for document in self._sections(dataset, staging).find({}, {"_id": 1}):
                yield str(document["_id"])
            return
        _, meta_path, _ = _fields(dataset, staging)
        for document in self.profiles.find({meta_path: {"$exists": True}}, {"_id": 1}):
            yield str(document["_id"])

    def tracking(self, dataset: str, *, staging: bool = False) -> Tracking | None:
        record = self.tracking_records.find_one({"_id": _tracking_id(dataset, staging)})
        if record is None:
            return None
        return Tracking(position=record["position"], refreshed_at=utc(record["refreshed_at"]))

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
        keyed = self.check_dataset(dataset).keyed
        writes = newest_per_customer(writes)
        paths = _fields(dataset, staging)
        position_path = f"{paths[1]}.position"
        target = self.profiles
        operations = []
        if dataset in self._derived:
            target = self._sections(dataset, staging)
            paths = ("section", "", "")
            position_path = "position"
        for w in writes:
            guard = {
                "_id": w.customer_id,
                "$or": [
                    {position_path: {"$lt": w.position}},
                    {position_path: {"$exists": False}},
                ],
            }
            update = self._section_update(w, paths, keyed, refreshed_at)
            operations.append(UpdateOne(guard, update, upsert=True))

        def store_sections() -> int:
            written = 0
            for start in range(0, len(operations), _CHUNK):
                chunk = operations[start : start + _CHUNK]
                try:
                    result = target.bulk_write(chunk, ordered=False)
                    written += result.modified_count + result.upserted_count
                except BulkWriteError as e:
                    # A duplicate key means the stored section is as new or newer: skip it.
                    errors = e.details.get("writeErrors", [])
                    if any(err.get("code") != DUPLICATE_KEY for err in errors):
                        raise
                    written += e.details.get("nModified", 0) + e.details.get("nUpserted", 0)
            return written

        if not keyed:
            return store_sections()
        new_keys = {w.customer_id: w.lookup_keys for w in writes}
        return self._keeping_lookups(dataset, staging, new_keys, store_sections)

    def regroup(
        self,
        dataset: str,
        writes: Sequence[SectionWrite],
        removed: Iterable[str],
        *,
        refreshed_at: dt.datetime,
        staging: bool = False,
    ) -> None:
        keyed = self.check_dataset(dataset).keyed
        writes, gone = regroup_plan(writes, removed)
        if dataset in self._derived:
            target = self._sections(dataset, staging)
            replaced = [
                UpdateOne(
                    {"_id": w.customer_id},
                    self._section_update(w, ("section", "", ""), False, refreshed_at),
                    upsert=True,
                )
                for w in writes
            ]
            for start in range(0, len(replaced), _CHUNK):
                target.bulk_write(replaced[start : start + _CHUNK], ordered=False)
            for start in range(0, len(gone), _IN_CHUNK):
                target.delete_many({"_id": {"$in": gone[start : start + _IN_CHUNK]}})
            return
        paths = _fields(dataset, staging)
        # Writes first, then removals: no transaction spans documents (a sharded cluster
        # would need a distributed one), so a failure in between leaves sections to be
        # removed, never a customer missing; the caller's repeated regroup removes them.
        operations = [
            UpdateOne(
                {"_id": w.customer_id},
                self._section_update(w, paths, keyed, refreshed_at),
                upsert=True,
            )
            for w in writes
        ]

        def store_sections() -> None:
            for start in range(0, len(operations), _CHUNK):
                self.profiles.bulk_write(operations[start : start + _CHUNK], ordered=False)
            for start in range(0, len(gone), _IN_CHUNK):
                chunk = gone[start : start + _IN_CHUNK]
                self.profiles.update_many(
                    {"_id": {"$in": chunk}}, {"$unset": dict.fromkeys(paths, "")}
                )
                # A document left with no section, live or staging, goes. Its emptiness
                # is tested by the delete itself, atomically: a section another dataset's
                # refresh writes meanwhile keeps the document.
                self.profiles.delete_many({"_id": {"$in": chunk}, **_HOLDS_NO_SECTION})

        if not keyed:
            store_sections()
            return
        new_keys: dict[str, Sequence[str]] = {c: () for c in gone}
        new_keys.update({w.customer_id: w.lookup_keys for w in writes})
        self._keeping_lookups(dataset, staging, new_keys, store_sections)

    # --- the lookups collection ---------------------------------------------------------

    def _keeping_lookups(
        self,
        dataset: str,
        staging: bool,
        new_keys: Mapping[str, Sequence[str]],
        store_sections: Callable[[], R],
    ) -> R:
        """Run ``store_sections`` (which gives the customers of ``new_keys`` those lookup
        keys in the dataset, or leaves a section alone) keeping the lookups collection a
        superset of the documents' keys: entries for keys a section gains are held
        before it is written, and keys it lost (or a write the guard refused would have
        added) are released after, judged from the documents as they are then."""
        holder = _holder(dataset, staging)
        keys_path = _fields(dataset, staging)[2]
        before = self._held_keys(list(new_keys), keys_path)
        changed: dict[str, set[str]] = {}
        for customer_id, keys in new_keys.items():
            difference = before.get(customer_id, set()) ^ set(keys)
            if difference:
                changed[customer_id] = difference
        gained = [
            (key, customer_id)
            for customer_id, keys in new_keys.items()
            for key in dict.fromkeys(keys)
            if key in changed.get(customer_id, ())
        ]
        self._hold(gained, holder)
        result = store_sections()
        if changed:
            after = self._held_keys(list(changed), keys_path)
            lost = [
                (key, customer_id)
                for customer_id, keys in changed.items()
                for key in sorted(keys)
                if key not in after.get(customer_id, set())
            ]
            self._release(lost, holder)
        return result

    def _held_keys(self, customer_ids: Sequence[str], keys_path: str) -> dict[str, set[str]]:
        """The lookup keys the documents of ``customer_ids`` keep at ``keys_path``."""
        held: dict[str, set[str]] = {}
        for start in range(0, len(customer_ids), _IN_CHUNK):
            chunk = list(customer_ids[start : start + _IN_CHUNK])
            for document in self.profiles.find({"_id": {"$in": chunk}}, {keys_path: 1}):
                keys = _dig(document, keys_path)
                if keys:
                    held[str(document["_id"])] = set(keys)
        return held

    def _hold(self, pairs: Sequence[tuple[str, str]], holder: str) -> None:
        """Entries (key, customer), each held by ``holder`` too: one upsert per entry,
        each addressed by its full shard key."""
        operations = [
            UpdateOne(
                {LOOKUP_KEY: key, LOOKUP_CUSTOMER: customer_id},
                {"$addToSet": {LOOKUP_HOLDERS: holder}},
                upsert=True,
            )
            for key, customer_id in pairs
        ]
        for start in range(0, len(operations), _CHUNK):
            chunk = operations[start : start + _CHUNK]
            try:
                self.lookups.bulk_write(chunk, ordered=False)
            except BulkWriteError as e:
                # Two upserts of one new entry at once: one inserts, the other meets the
                # unique index. Again, the entry exists and the upsert updates it.
                errors = e.details.get("writeErrors", [])
                if any(err.get("code") != DUPLICATE_KEY for err in errors):
                    raise
                self.lookups.bulk_write(chunk, ordered=False)

    def _release(self, pairs: Sequence[tuple[str, str]], holder: str) -> None:
        """``holder`` no longer holds these entries; an entry nobody holds goes (the
        delete tests the emptiness itself, so a hold taken meanwhile keeps it)."""
        for start in range(0, len(pairs), _CHUNK):
            chunk = pairs[start : start + _CHUNK]
            self.lookups.bulk_write(
                [
                    UpdateOne(
                        {LOOKUP_KEY: key, LOOKUP_CUSTOMER: customer_id},
                        {"$pull": {LOOKUP_HOLDERS: holder}},
                    )
                    for key, customer_id in chunk
                ],
                ordered=False,
            )
            self.lookups.bulk_write(
                [
                    DeleteOne({LOOKUP_KEY: key, LOOKUP_CUSTOMER: customer_id, **_HELD_BY_NOBODY})
                    for key, customer_id in chunk
                ],
                ordered=False,
            )

    def _release_all(self, holder: str) -> None:
        """``holder`` holds no entry any more (a dataset-wide step: staging, promotion)."""
        self.lookups.update_many({LOOKUP_HOLDERS: holder}, {"$pull": {LOOKUP_HOLDERS: holder}})
        self.lookups.delete_many(_HELD_BY_NOBODY)

    def backfill_lookups(self) -> int:
        """Hold an entry for every key the documents keep, live and staging, unless done
        before (a marker in the tracking collection says so): how a store written before
        the lookups collection existed (keys in ``_keys`` only) is migrated, on the first
        writable open. Until the marker is there, :meth:`find` reads the documents' keys
        as it used to. Returns how many keys were held (0 when done before)."""
        if self._lookups_usable():
            return 0
        held = 0
        pairs: dict[str, list[tuple[str, str]]] = {}
        shape = {"_keys": 1, "_staging_keys": 1}
        query = {"$or": [{"_keys": {"$exists": True}}, {"_staging_keys": {"$exists": True}}]}
        for document in self.profiles.find(query, shape):
            customer_id = str(document["_id"])
            for field, staging in (("_keys", False), ("_staging_keys", True)):
                for dataset, keys in (document.get(field) or {}).items():
                    holder = _holder(dataset, staging)
                    batch = pairs.setdefault(holder, [])
                    batch += [(key, customer_id) for key in dict.fromkeys(keys)]
                    if len(batch) >= _CHUNK:
                        self._hold(batch, holder)
                        held += len(batch)
                        batch.clear()
        for holder, batch in pairs.items():
            self._hold(batch, holder)
            held += len(batch)
        self.tracking_records.update_one(
            {"_id": _LOOKUPS_BACKFILLED}, {"$set": {"held": held}}, upsert=True
        )
        self._lookups_ready = True
        return held

    def _section_update(
        self, w: SectionWrite, paths: tuple[str, str, str], keyed: bool, refreshed_at: dt.datetime
    ) -> dict[str, Any]:
        """The ``$set`` storing a write's section, meta and (keyed dataset) lookup keys."""
        section_path, meta_path, keys_path = paths
        meta = {"position": w.position, "refreshed_at": refreshed_at}
        fields: dict[str, Any] = {section_path: self._encode(w.section)}
        if meta_path:
            fields[meta_path] = meta
        else:  # a derived dataset's own collection: the meta beside the section
            fields |= meta
        if keyed:
            fields[keys_path] = list(w.lookup_keys)
        return {"$set": fields}

    def advance(
        self, dataset: str, position: int, *, refreshed_at: dt.datetime, staging: bool = False
    ) -> None:
        self.tracking_records.update_one(
            {"_id": _tracking_id(dataset, staging)},
            {"$max": {"position": position}, "$set": {"refreshed_at": refreshed_at}},
            upsert=True,
        )

    def start_staging(self, dataset: str, *, reuse: bool = False) -> None:
        self.check_dataset(dataset)
        if dataset in self._derived:
            # The generation the last promotion replaced. Dropping a collection frees its
            # files at once: nothing to reuse.
            self._sections(dataset, staging=True).drop()
            self.tracking_records.delete_one({"_id": _tracking_id(dataset, True)})
            return
        section_path, meta_path, keys_path = _fields(dataset, staging=True)
        self.profiles.update_many(
            {meta_path: {"$exists": True}},
            {"$unset": {section_path: "", meta_path: "", keys_path: ""}},
        )
        if self.schemas[dataset].keyed:  # released after the keys left the documents
            self._release_all(_holder(dataset, staging=True))
        self.tracking_records.delete_one({"_id": _tracking_id(dataset, True)})

    def promote_staging(self, *datasets: str) -> None:
        # One dataset after another: each is its own sequence of multi-document writes
        # (no transaction spans them on a sharded cluster), ordered to be safe to crash in.
        staged: dict[str, Mapping[str, Any]] = {}
        for dataset in datasets:
            self.check_dataset(dataset)
            found = self.tracking_records.find_one({"_id": _tracking_id(dataset, True)})
            if found is None:
                raise RuntimeError(f"no staging area to promote for dataset {dataset!r}")
            staged[dataset] = found
        for dataset, tracking in staged.items():
            self._promote(dataset, tracking)

    def _promote(self, dataset: str, staged: Mapping[str, Any]) -> None:
        if dataset in self._derived:
            # The swap: one document written, whatever the number of customers.
            self.tracking_records.replace_one(
                {"_id": f"{dataset}:generation"},
                {"generation": self._generation(dataset) ^ 1},
                upsert=True,
            )
            self._promoted(dataset, staged)
            return
        live = _fields(dataset, staging=False)
        staging = _fields(dataset, staging=True)
        keyed = self.schemas[dataset].keyed
        live_holder, staging_holder = _holder(dataset, False), _holder(dataset, True)
        if keyed:  # entries first: every staged key is held as live before it is live
            self.lookups.update_many(
                {LOOKUP_HOLDERS: staging_holder}, {"$addToSet": {LOOKUP_HOLDERS: live_holder}}
            )
        # Order matters: unset first, or the unset would remove what the rename brought in.
        self.profiles.update_many(
            {staging[1]: {"$exists": False}, live[1]: {"$exists": True}},
            {"$unset": {live[0]: "", live[1]: "", live[2]: ""}},
        )
        renames = {staging[0]: live[0], staging[1]: live[1]}
        if self.schemas[dataset].keyed:
            renames[staging[2]] = live[2]
        self.profiles.update_many({staging[1]: {"$exists": True}}, {"$rename": renames})
        if keyed:  # then the old live keys the rebuild did not produce are released
            self.lookups.update_many(
                {
                    "$and": [
                        {LOOKUP_HOLDERS: live_holder},
                        {LOOKUP_HOLDERS: {"$ne": staging_holder}},
                    ]
                },
                {"$pull": {LOOKUP_HOLDERS: live_holder}},
            )
            self._release_all(staging_holder)
        self._promoted(dataset, staged)

    def _promoted(self, dataset: str, staged: Mapping[str, Any]) -> None:
        """The live tracking becomes exactly what the staging area covered."""
        self.tracking_records.replace_one(
            {"_id": _tracking_id(dataset, False)},
            {"position": staged["position"], "refreshed_at": staged["refreshed_at"]},
            upsert=True,
        )
        self.tracking_records.delete_one({"_id": _tracking_id(dataset, True)})

    # --- records ------------------------------------------------------------------------

    def put_record(self, kind: str, key: str, value: Mapping[str, Any]) -> None:
        self.records.replace_one(
            {"_id": _record_id(kind, key)}, _record(kind, key, value), upsert=True
        )

    def put_records(self, records: Sequence[tuple[str, str, Mapping[str, Any]]]) -> None:
        if not records:
            return  # pymongo refuses an empty bulk write
        # Ordered: the server applies them in turn and stops at the first failure, so a
        # failure (or a crash) leaves a prefix stored; no transaction spans the records.
        self.records.bulk_write(
            [
                ReplaceOne({"_id": _record_id(kind, key)}, _record(kind, key, value), upsert=True)
                for kind, key, value in records
            ],
            ordered=True,
        )

    def insert_record_if_absent(self, kind: str, key: str, value: Mapping[str, Any]) -> bool:
        # The unique _id makes the insert the atomic test: a second one is a duplicate key.
        try:
            self.records.insert_one({"_id": _record_id(kind, key), **_record(kind, key, value)})
        except DuplicateKeyError:
            return False
        return True

    def get_records(self, kind: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        # A range of _id (kind/key), which its index answers: no scan of other kinds.
        # "kind0" is the first id past every "kind/..." ('0' follows '/').
        upper = _record_id(kind, prefix) + "\U0010ffff" if prefix else f"{kind}0"
        query = {"_id": {"$gte": _record_id(kind, prefix), "$lt": upper}}
        found = {
            str(r["key"]): dict(r["value"])
            for r in self.records.find(query)
            if str(r["key"]).startswith(prefix)
        }
        return dict(sorted(found.items()))

    def get_records_after(
        self, kind: str, after: str, *, until: str | None = None, limit: int | None = None
    ) -> dict[str, dict[str, Any]]:
        # On _id (kind/key), which its index answers: "kind0" is the first id past every
        # "kind/..." ('0' follows '/'), so the range holds this kind's keys after `after`.
        # Strings compare by their UTF-8 bytes: the order of code points, as on SQLite.
        bounds: dict[str, str] = {"$gt": _record_id(kind, after), "$lt": f"{kind}0"}
        if until is not None:
            bounds["$lte"] = _record_id(kind, until)
        cursor = self.records.find({"_id": bounds}).sort("_id", 1)
        if limit is not None:
            cursor = cursor.limit(limit)
        return {str(r["key"]): dict(r["value"]) for r in cursor}

    def get_records_for(self, kind: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = [_record_id(kind, key) for key in dict.fromkeys(keys)]
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            # By _id, not by the kind and key fields: the _id index answers it.
            for r in self.records.find({"_id": {"$in": ids[start : start + _IN_CHUNK]}}):
                found[str(r["key"])] = dict(r["value"])
        return found

    def delete_record(self, kind: str, key: str) -> None:
        self.records.delete_one({"_id": _record_id(kind, key)})

    # --- erasure ------------------------------------------------------------------------

    def erase(self, customer_ids: Sequence[str], terms: Sequence[str] = ()) -> dict[str, int]:
        # Not atomic: documents first (each deleted whole, with every dataset's live and
        # staging sections and keys), then records, each on its own; a repeat completes
        # what a failure interrupted, and counts only what was still there.
        erasure = Erasure.of(customer_ids, terms)
        counts = dict.fromkeys(ERASED_ALWAYS, 0)
        ids = list(erasure.customer_ids)
        shape = {"_meta": 1, "_staging_meta": 1, "_keys": 1, "_staging_keys": 1}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            for document in self.profiles.find({"_id": {"$in": chunk}}, shape):
                counts["sections"] += len(document.get("_meta") or {})
                counts["sections:staging"] += len(document.get("_staging_meta") or {})
                for field, name in _KEY_FIELDS:
                    for keys in (document.get(field) or {}).values():
                        counts[name] += len(set(keys))
            self.profiles.delete_many({"_id": {"$in": chunk}})
            for name in sorted(self._derived):
                for staging in (False, True):
                    result = self._sections(name, staging).delete_many({"_id": {"$in": chunk}})
                    counts["sections:staging" if staging else "sections"] += result.deleted_count
            # By customer, not by key: this also finds entries a crash left without their
            # section. The one write that goes to every shard (the index on c serves it).
            self.lookups.delete_many({LOOKUP_CUSTOMER: {"$in": chunk}})
        self._erase_records(erasure, counts)
        return counts

    def _erase_records(self, erasure: Erasure, counts: dict[str, int]) -> None:
        # No query finds a value at any depth of a record: every record is read and
        # judged here (one pass over the collection, in batches).
        deleted: list[str] = []
        redacted: list[ReplaceOne[dict[str, Any]]] = []
        for record in self.records.find({}, {"kind": 1, "key": 1, "value": 1}):
            kind, key = str(record["kind"]), str(record["key"])
            verdict, value = erasure.judge(key, record["value"])
            if verdict is Verdict.DELETE:
                deleted.append(record["_id"])
            elif verdict is Verdict.REDACT:
                redacted.append(ReplaceOne({"_id": record["_id"]}, _record(kind, key, value)))
            else:
                continue
            name = f"records:{kind}" if verdict is Verdict.DELETE else f"redacted:{kind}"
            counts[name] = counts.get(name, 0) + 1
        for start in range(0, len(deleted), _IN_CHUNK):
            self.records.delete_many({"_id": {"$in": deleted[start : start + _IN_CHUNK]}})
        for start in range(0, len(redacted), _CHUNK):
            self.records.bulk_write(redacted[start : start + _CHUNK], ordered=False)

    def scrub(self, *, compact: bool = False) -> bool:
        # Nothing this client can do: WiredTiger reuses freed space inside its files and
        # returns it to the disk on `compact`; journal, oplog and backups are the
        # operator's. False says so to the caller (an erasure receipt records it).
        return False

    def delete_records(self, kind: str, keys: Iterable[str]) -> None:
        ids = [_record_id(kind, key) for key in dict.fromkeys(keys)]
        if ids:  # one request; each removal is atomic, the set is not
            self.records.delete_many({"_id": {"$in": ids}})

    # --- leases -------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl: dt.timedelta, now: dt.datetime) -> bool:
        try:
            self.leases.find_one_and_update(
                {"_id": name, "$or": [{"expires_at": {"$lte": now}}, {"holder": holder}]},
                {"$set": {"holder": holder, "expires_at": now + ttl}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # a live lease of another holder: the upsert could not insert
        return True

    def release_lease(self, name: str, holder: str) -> None:
        self.leases.delete_one({"_id": name, "holder": holder})

    def lease_holder(self, name: str, now: dt.datetime) -> str | None:
        record = self.leases.find_one({"_id": name})
        if record is None or utc(record["expires_at"]) <= now:
            return None
        holder: str = record["holder"]
        return holder


def _record_id(kind: str, key: str) -> str:
    return f"{kind}/{key}"


def _record(kind: str, key: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """A record's stored fields but its ``_id``."""
    return {"kind": kind, "key": key, "value": msgspec.to_builtins(value)}


_HOLDS_NO_SECTION = {
    "$and": [
        {"$or": [{meta: {"$exists": False}}, {meta: {}}]} for meta in ("_meta", "_staging_meta")
    ]
}
"""Documents with no section of any dataset, live or staging: every section is written
with its meta, and an ``$unset`` of the last one leaves the meta map empty."""


_KEY_FIELDS = (("_keys", "lookup_keys"), ("_staging_keys", "lookup_keys:staging"))
"""Where a document keeps its lookup keys, and what :meth:`erase` counts them as."""


def _derived_meta(document: Mapping[str, Any]) -> SectionMeta:
    return SectionMeta(position=document["position"], refreshed_at=utc(document["refreshed_at"]))


_HELD_BY_NOBODY = {LOOKUP_HOLDERS: {"$size": 0}}

_LOOKUPS_BACKFILLED = "layout:lookups"
"""The tracking record saying every document's keys are in the lookups collection."""

R = TypeVar("R")


def _holder(dataset: str, staging: bool) -> str:
    """Who holds a lookup entry: a dataset's live or staging sections."""
    return f"{dataset}:staging" if staging else dataset


def _tracking_id(dataset: str, staging: bool) -> str:
    return f"{dataset}:staging" if staging else dataset


def _dig(document: Mapping[str, Any], path: str) -> Any:
    node: Any = document
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def open_documents(
    url: str,
    schemas: Mapping[str, DatasetSchema],
    settings: DocumentSettings,
    *,
    read_only: bool = False,
) -> MongoDocumentStore:
    """The MongoDB store at ``url`` (its database, else ``profilestore``)."""
    return MongoDocumentStore.connect(
        url, schemas, collection=settings.collection, read_only=read_only
    )
