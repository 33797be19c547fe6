"""The port's own machinery: choosing a backend by URL, and the adapter boundary.

What every backend does with documents is in ``test_documents_contract.py``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from profilestore.config import DocumentSettings, load_settings
from profilestore.documents import (
    DOCUMENT_BACKENDS,
    DatasetSchema,
    mask_password,
    open_document_store,
)
from profilestore.errors import DocumentsUnavailable, InvalidSetting
from profilestore.sqlite_documents import SQLiteDocumentStore
from profilestore.store import load_projections, open_documents


def open_url(url: str, schemas: dict[str, DatasetSchema]) -> Any:
    return open_document_store(url, schemas, DocumentSettings())


# --- choosing a backend ----------------------------------------------------------------------


def test_every_scheme_maps_to_a_module_with_a_factory() -> None:
    import importlib

    assert set(DOCUMENT_BACKENDS) == {"sqlite", "mongodb", "mongodb+srv"}
    for module in set(DOCUMENT_BACKENDS.values()):
        assert callable(importlib.import_module(module).open_documents)


def test_the_settings_url_opens_the_embedded_store_creating_its_directory(
    tmp_path: Path,
) -> None:
    settings = load_settings(environ={}, home=tmp_path / "home")
    store = open_documents(settings, load_projections(settings))
    try:
        assert isinstance(store, SQLiteDocumentStore)
        assert (tmp_path / "home" / "documents.sqlite").exists()
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://u:secret@cache:6379/0", "the scheme 'redis' names no document store"),
        ("REDIS://u:secret@cache/0", "the scheme 'redis' names no document store"),
        ("{home}/documents.sqlite", "a URL without a scheme names no document store"),
        ("u:secret@db/x", "the scheme 'u' names no document store"),
        ("sqlite://", "the SQLite URL names no file"),
        ("sqlite:///", "the SQLite URL names no file"),
        ("sqlite:documents.sqlite", "an SQLite URL starts with sqlite://"),
    ],
)
def test_an_unusable_url_is_a_config_error_and_creates_nothing(
    tmp_path: Path, url: str, reason: str
) -> None:
    settings = load_settings(environ={"PROFILESTORE_DOCUMENTS__URL": url}, home=tmp_path / "home")
    projections = load_projections(settings)

    with pytest.raises(InvalidSetting) as raised:
        open_documents(settings, projections)

    assert str(raised.value).startswith(f"documents.url: {reason}")
    assert raised.value.setting == "documents.url"
    assert reason in raised.value.reason
    assert "sqlite:///" in raised.value.reason and "mongodb://" in raised.value.reason
    assert "secret" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://u:secret@host:badport/",
        "mongodb://u:se%2Fcret@host:99999/db",
        "mongodb+srv://u:secret@host:27017/db",
        "mongodb://u:secret@/db",
    ],
)
def test_a_malformed_mongodb_url_is_a_config_error_without_the_password(
    schemas: dict[str, DatasetSchema], url: str
) -> None:
    with pytest.raises(InvalidSetting, match="not a usable MongoDB URL") as raised:
        open_url(url, schemas)

    assert str(raised.value).startswith("documents.url: not a usable MongoDB URL")
    assert "; use sqlite:///" in str(raised.value)
    assert "secret" not in str(raised.value) and "cret" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_mask_password_hides_the_password_as_written_and_decoded() -> None:
    url = "mongodb://ann:p%40ss@db/x"
    assert mask_password("bad p%40ss and p@ss for ann", url) == "bad *** and *** for ann"
    assert mask_password("nothing to hide", "mongodb://db/x") == "nothing to hide"
    assert mask_password("user only: ann", "mongodb://ann@db/x") == "user only: ann"


# --- driver errors at the adapter boundary ------------------------------------------------------


def test_a_documents_file_of_garbage_is_documents_unavailable(
    tmp_path: Path, schemas: dict[str, DatasetSchema]
) -> None:
    path = tmp_path / "documents.sqlite"
    path.write_bytes(b"email:ann@example.com " * 512)

    with pytest.raises(DocumentsUnavailable) as raised:
        open_url(f"sqlite:///{path}", schemas)

    assert (raised.value.backend, raised.value.operation) == ("sqlite", "open")
    assert raised.value.error == "DatabaseError"
    assert "ann@example.com" not in str(raised.value)
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)


def test_a_driver_error_on_an_open_store_names_the_operation(
    tmp_path: Path, schemas: dict[str, DatasetSchema]
) -> None:
    path = tmp_path / "documents.sqlite"
    store = SQLiteDocumentStore(str(path), schemas)
    try:
        assert store.get("c1") is None
        assert store.find("email:ann@example.com") == []
        with sqlite3.connect(path) as other:  # another process breaks the file's schema
            other.execute("DROP TABLE sections")
            other.execute("DROP TABLE k_identities")
            other.execute("DROP TABLE records")

        for operation, call in [
            ("get", lambda: store.get("c1")),
            ("get_raw", lambda: store.get_raw("c1")),
            ("find", lambda: store.find("email:ann@example.com")),
            ("customer_ids", lambda: list(store.customer_ids("carts"))),
            ("insert_record_if_absent", lambda: store.insert_record_if_absent("k", "ann", {})),
        ]:
            with pytest.raises(DocumentsUnavailable) as raised:
                call()
            assert raised.value.operation == operation
            assert raised.value.error == "OperationalError"
            assert "ann" not in str(raised.value)
    finally:
        store.close()


def test_an_unreachable_mongodb_is_documents_unavailable_without_the_password(
    schemas: dict[str, DatasetSchema],
) -> None:
    url = "mongodb://ann:secret@127.0.0.1:9/profiles?serverSelectionTimeoutMS=200"

    with pytest.raises(DocumentsUnavailable) as raised:
        open_url(url, schemas)

    assert (raised.value.backend, raised.value.operation) == ("mongodb", "open")
    assert raised.value.error == "ServerSelectionTimeoutError"
    assert "secret" not in str(raised.value)
