"""Smoke tests for the wire-server fixture in conftest (real socket, real pymongo)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo.errors import DuplicateKeyError

pytestmark = pytest.mark.mongo_wire


@pytest.fixture
def mongo_client(mongo_wire_uri: str) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongo_wire_uri, serverSelectionTimeoutMS=5000
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def db_name(mongo_client: pymongo.MongoClient[dict[str, Any]]) -> Iterator[str]:
    name = f"profilestore_smoke_{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        mongo_client.drop_database(name)


def test_ping(mongo_client: pymongo.MongoClient[dict[str, Any]]) -> None:
    assert mongo_client.admin.command("ping")["ok"] == 1


def test_insert_and_find(mongo_client: pymongo.MongoClient[dict[str, Any]], db_name: str) -> None:
    profiles = mongo_client[db_name]["profiles"]
    profiles.insert_one(
        {"_id": "c1", "carts": {"total": 3}, "_lookup": {"identities": ["email:a@b.c"]}}
    )
    assert profiles.find_one({"_id": "c1"}) == {
        "_id": "c1",
        "carts": {"total": 3},
        "_lookup": {"identities": ["email:a@b.c"]},
    }
    assert profiles.find_one({"_lookup.identities": "email:a@b.c"}, {"_id": 1}) == {"_id": "c1"}
    assert profiles.find_one({"_id": "missing"}) is None


def test_upsert_and_duplicate_key(
    mongo_client: pymongo.MongoClient[dict[str, Any]], db_name: str
) -> None:
    profiles = mongo_client[db_name]["profiles"]
    result = profiles.update_one({"_id": "c2"}, {"$set": {"orders": {"n": 1}}}, upsert=True)
    assert result.upserted_id == "c2"
    with pytest.raises(DuplicateKeyError):
        profiles.insert_one({"_id": "c2"})
    assert profiles.count_documents({}) == 1
