"""The MongoDB layout for a sharded cluster: collections, shard keys and indexes.

The MongoDB document store (``mongo_documents.py``) creates the indexes this plan lists
when it opens a store it may write; an operator shards the collections with the script
:func:`mongosh_script` prints (``profilestore documents shard-plan``;
``deploy/mongo/shard-collections.js`` is that script for the shipped names, and a test
keeps the two equal). Every collection a store uses is here, sharded or not:

- ``profiles``: one document per customer, ``_id`` the customer id, sharded on a hashed
  ``_id``: customers spread evenly whatever their ids look like, and every read and
  write of a customer names its ``_id``, so it goes to one shard.
- ``profiles_lookups``: one entry per (lookup key, customer), sharded on
  ``{k: 1, c: 1}`` (ranged: a find names ``k``, a prefix of the shard key, so it goes to
  the shard holding that range, usually one). The shard key is the unique index: a
  unique index on a sharded collection must begin with the shard key.
- ``profiles_records``: run history, dead letters, fired triggers, sharded on a ranged
  ``_id`` (``kind/key``): reads by kind and key prefix are ranges of ``_id``, so they
  stay targeted.
- ``profiles_tracking`` and ``profiles_leases``: a few documents per dataset, left
  unsharded (they live on the database's primary shard).

No transaction spans documents anywhere: each write names its document's shard key, so
a sharded cluster never runs a distributed transaction for us.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

IndexKey = tuple[tuple[str, int | str], ...]
"""An index or shard key as ordered (field, 1 | "hashed") pairs."""


@dataclass(frozen=True)
class Index:
    keys: IndexKey
    unique: bool = False

    @property
    def name(self) -> str:
        """MongoDB's default name for the index (``k_1_c_1``)."""
        return "_".join(f"{field}_{kind}" for field, kind in self.keys)


@dataclass(frozen=True)
class CollectionPlan:
    name: str
    shard_key: IndexKey | None
    """None: the collection stays unsharded."""
    indexes: tuple[Index, ...]
    """Secondary indexes the store creates (never ``_id``'s, which MongoDB makes)."""
    why: str


LOOKUP_KEY = "k"
LOOKUP_CUSTOMER = "c"
LOOKUP_HOLDERS = "h"
"""Fields of a lookup entry: the key, the customer, and which sections hold the key (a
dataset name, ``<dataset>:staging`` for a rebuild's)."""


def shard_plan(
    collection: str = "profiles", derived: Sequence[str] = ()
) -> tuple[CollectionPlan, ...]:
    """Every collection of a store whose profiles collection is ``collection``, with the
    two generation collections of each ``derived`` dataset (the scores: see
    :mod:`profilestore.mongo_documents`)."""
    generations = tuple(
        CollectionPlan(
            name=f"{collection}__{name}__{generation}",
            shard_key=(("_id", "hashed"),),
            indexes=(),
            why=f"generation {generation} of the derived {name} sections, by customer _id",
        )
        for name in sorted(derived)
        for generation in (0, 1)
    )
    return (
        *generations,
        CollectionPlan(
            name=collection,
            shard_key=(("_id", "hashed"),),
            indexes=(),
            why="one document per customer; every operation names _id",
        ),
        CollectionPlan(
            name=f"{collection}_lookups",
            shard_key=((LOOKUP_KEY, 1), (LOOKUP_CUSTOMER, 1)),
            indexes=(
                Index(((LOOKUP_KEY, 1), (LOOKUP_CUSTOMER, 1)), unique=True),
                # Erasure finds a customer's entries by customer (a broadcast, rare).
                Index(((LOOKUP_CUSTOMER, 1),)),
                # Staging and promotion find a dataset's entries by holder.
                Index(((LOOKUP_HOLDERS, 1),)),
            ),
            why="find by identifier: k is the shard key's prefix, one targeted read",
        ),
        CollectionPlan(
            name=f"{collection}_records",
            shard_key=(("_id", 1),),
            indexes=(),
            why="records by kind/key; prefix reads are ranges of _id",
        ),
        CollectionPlan(
            name=f"{collection}_tracking",
            shard_key=None,
            indexes=(),
            why="a few documents per dataset",
        ),
        CollectionPlan(
            name=f"{collection}_leases",
            shard_key=None,
            indexes=(),
            why="a few documents per dataset",
        ),
    )


def _key_js(keys: IndexKey) -> str:
    fields = ", ".join(
        f"{field}: {kind!r}".replace("'", '"') if isinstance(kind, str) else f"{field}: {kind}"
        for field, kind in keys
    )
    return "{" + fields + "}"


def mongosh_script(
    database: str = "profilestore", collection: str = "profiles", derived: Sequence[str] = ()
) -> str:
    """A mongosh script that shards ``database`` per :func:`shard_plan` (run on mongos)."""
    lines = [
        "// Generated by `profilestore documents shard-plan`: the layout of",
        "// src/profilestore/mongo_layout.py. Run against mongos, once, before the first",
        "// profilestore process opens the store: the store then finds its indexes made.",
        f'const database = "{database}";',
        "sh.enableSharding(database);",
        "const db_ = db.getSiblingDB(database);",
    ]
    for plan in shard_plan(collection, derived):
        lines.append(f"// {plan.name}: {plan.why}")
        for index in plan.indexes:
            options = ", {unique: true}" if index.unique else ""
            lines.append(
                f'db_.getCollection("{plan.name}").createIndex({_key_js(index.keys)}{options});'
            )
        if plan.shard_key is None:
            lines.append(f"// {plan.name} stays unsharded.")
            continue
        unique = plan.shard_key in {i.keys for i in plan.indexes if i.unique}
        options = ", {unique: true}" if unique else ""
        lines.append(
            f'sh.shardCollection(database + ".{plan.name}", {_key_js(plan.shard_key)}{options});'
        )
    return "\n".join(lines) + "\n"
