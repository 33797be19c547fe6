"""Shared fixtures: real stores for every backend this machine can run.

- PostgreSQL: ``PROFILESTORE_TEST_POSTGRES_URL`` (``scripts/postgres-up`` starts a server
  and prints it). Each test gets its own schema, dropped afterwards. Without the variable
  the PostgreSQL cases skip, saying how to enable them; under CI they fail instead, so a
  missing server can never pass as green.
- MongoDB: mongomock-ng in-process for units; a real socket through pymongo to mongoeco's
  wire server (or ``PROFILESTORE_TEST_MONGO_URI``, a real MongoDB) for the contract suite.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mongo_wire import MongoWireUnavailable, run_mongoeco_server

from profilestore.config import DocumentSettings, Settings, load_settings
from profilestore.documents import DatasetSchema, DocumentStore
from profilestore.eventlog import EventLog
from profilestore.normalise import configure, current_policy
from profilestore.sqlite_log import open_sqlite_log
from profilestore.store import load_projections

IN_CI = os.environ.get("CI", "").lower() == "true"

# Stores opened by tests (and the processes they start) encrypt with this key-encryption
# key, so no test writes a key file into the user's config directory.
os.environ.setdefault("PROFILESTORE_KEK", "base64:" + "QUJD" * 10 + "QUI=")
POSTGRES_URL = os.environ.get("PROFILESTORE_TEST_POSTGRES_URL")
MONGO_URI = os.environ.get("PROFILESTORE_TEST_MONGO_URI")

ENABLE_POSTGRES = (
    "PostgreSQL tests need a server: run `scripts/postgres-up` and export the "
    "PROFILESTORE_TEST_POSTGRES_URL=... line it prints (bash .ci/run does both)"
)


def unavailable(message: str) -> None:
    """Skip with ``message`` on a developer machine; fail under CI."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def run_bench_quick(
    main: Callable[[list[str]], int], tmp_path: Path, name: str, *extra: str
) -> dict[str, Any]:
    """Run a benchmark's ``main`` in its quick mode, writing into ``tmp_path``; its JSON
    report (``main`` works from the repository root: the working directory is restored)."""
    output = tmp_path / f"{name}.json"
    args = ["--quick", "--output", str(output), "--workdir", str(tmp_path / "work"), *extra]
    cwd = Path.cwd()
    try:
        assert main(args) == 0
    finally:
        os.chdir(cwd)
    report: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))
    return report


@pytest.fixture(autouse=True)
def _identifier_policy_stays_with_its_test() -> Iterator[None]:
    """``open_store`` sets the process-wide identifier policy from its settings: a test
    that opens a store with its own ``[identity]`` must not change the next test's."""
    before = current_policy()
    yield
    configure(before)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(environ={}, home=tmp_path / "home")


@pytest.fixture(scope="session")
def schemas() -> dict[str, DatasetSchema]:
    projections = load_projections(load_settings(environ={}))
    return {
        name: DatasetSchema(p.section, keyed=p.lookup_keys is not None, derived=p.derived)
        for name, p in projections.items()
    }


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture
def postgres_schema() -> Iterator[tuple[str, str]]:
    """(url, schema): a fresh schema on the test server, dropped after the test."""
    if not POSTGRES_URL:
        unavailable(ENABLE_POSTGRES)
    assert POSTGRES_URL
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield POSTGRES_URL, schema
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def log_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """How to open an event log on each backend: ``{"name", "open"}``; opens share data."""
    if request.param == "sqlite":
        path = str(tmp_path / "events.sqlite")
        yield {
            "name": "sqlite",
            "url": f"sqlite:///{path}",
            "schema": "",
            "open": lambda: open_sqlite_log(path),
        }
    else:
        from profilestore.postgres_log import open_postgres_log

        url, schema = request.getfixturevalue("postgres_schema")
        yield {
            "name": "postgres",
            "url": url,
            "schema": schema,
            "open": lambda: open_postgres_log(url, schema=schema),
        }


@pytest.fixture
def event_log(log_backend: dict[str, Any]) -> Iterator[EventLog]:
    log: EventLog = log_backend["open"]()
    try:
        yield log
    finally:
        log.close()


# --- MongoDB --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mongo_wire_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB wire endpoint: PROFILESTORE_TEST_MONGO_URI, else a mongoeco server."""
    if MONGO_URI:
        yield MONGO_URI
        return
    try:
        with run_mongoeco_server(tmp_path_factory.mktemp("mongoeco")) as uri:
            yield uri
    except MongoWireUnavailable as e:
        unavailable(str(e))


def _mongo_database_name() -> str:
    return f"profilestore_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture(
    params=[
        "sqlite",
        "mongomock",
        pytest.param("mongo_wire", marks=pytest.mark.mongo_wire),
    ]
)
def document_store(
    request: pytest.FixtureRequest, tmp_path: Path, schemas: dict[str, DatasetSchema]
) -> Iterator[DocumentStore]:
    """Every document-store adapter, for the contract suite."""
    store = make_document_store(request.param, request, tmp_path, schemas)
    try:
        yield store
    finally:
        store.close()


def make_document_store(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    schemas: dict[str, DatasetSchema],
) -> DocumentStore:
    from profilestore.mongo_documents import MongoDocumentStore
    from profilestore.sqlite_documents import SQLiteDocumentStore

    if kind == "sqlite":
        return SQLiteDocumentStore(
            str(tmp_path / f"documents-{uuid.uuid4().hex[:6]}.sqlite"),
            schemas,
            mmap_bytes=DocumentSettings().sqlite_mmap_mb * 2**20,  # as shipped
        )
    if kind == "mongomock":
        import mongomock_ng

        client: Any = mongomock_ng.MongoClient(tz_aware=True)
        return MongoDocumentStore(client[_mongo_database_name()], schemas, client=client)
    uri = request.getfixturevalue("mongo_wire_uri")
    name = _mongo_database_name()
    store = MongoDocumentStore.connect(uri.rstrip("/") + f"/{name}", schemas)
    request.addfinalizer(lambda: _drop_database(uri, name))
    return store


def _drop_database(uri: str, name: str) -> None:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        client.drop_database(name)
    finally:
        client.close()
