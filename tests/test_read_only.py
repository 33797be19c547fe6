"""Stores an operator or an auditor cannot write: reading commands open them read-only,
and a store that fails (read-only, corrupt) is one line naming it, with exit code 3.

Tests run as root here, where ``chmod`` stops no write: a directory is made read-only by
a read-only bind mount when we are root (it fails like a read-only disk or snapshot),
and by ``chmod`` otherwise; a test that gets neither skips (fails under CI).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import unavailable

from profilestore.cli import main
from profilestore.config import load_settings
from profilestore.errors import ReadOnlyStore, StoreMissing
from profilestore.store import open_store


def line(event_id: str, customer_id: str, **fields: object) -> str:
    base = {"event_id": event_id, "customer_id": customer_id, "occurred_at": "2026-02-01T09:00:00Z"}
    return json.dumps(base | fields)


EVENTS = [
    line("e1", "ann", type="identifier.seen", kind="email", value="ann@example.com"),
    line("e2", "ann", type="browse.page_viewed", url="https://shop.example/"),
    line("e3", "bob", type="identifier.seen", kind="email", value="bob@example.com"),
]


def cli(home: Path, *args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--home", str(home), *args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a failure of these tests
    return result.exit_code, result.stdout, result.stderr


def built_home(path: Path) -> Path:
    """A home with events ingested and every dataset refreshed."""
    code, _, err = cli(path, "ingest", "-", input="\n".join(EVENTS) + "\n")
    assert code == 0, err
    assert cli(path, "refresh")[0] == 0
    return path


def fingerprint(home: Path) -> dict[str, str]:
    """The stores' database files and their content's hash (what must not change).

    A reader of a WAL file where it may write creates an empty ``-wal`` and a ``-shm``
    (its shared index, not data): SQLite's read path, so those are not compared."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(home.glob("*.sqlite"))
    }


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[object]:
    """``read_only(path)`` makes a directory (or a file) unwritable until the test ends."""
    undo: list[list[str] | Path] = []

    def make(path: Path) -> Path:
        if os.geteuid() == 0:
            try:
                subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
                undo.append(["umount", str(path)])
                subprocess.run(
                    ["mount", "-o", "remount,bind,ro", str(path)], check=True, capture_output=True
                )
            except (OSError, subprocess.CalledProcessError):
                unavailable("cannot make a read-only bind mount here (root without mount)")
        else:
            for target in [path, *path.iterdir()] if path.is_dir() else [path]:
                target.chmod(target.stat().st_mode & 0o555)
            undo.append(path)
        if os.access(path, os.W_OK):
            unavailable(f"{path} stays writable: cannot test a read-only store here")
        return path

    yield make
    for step in reversed(undo):
        if isinstance(step, list):
            subprocess.run(step, check=False)
        else:
            step.chmod(0o755)


READING = [
    ("profile", "ann"),
    ("profile", "ann", "--as-of", "2030-01-01T00:00:00"),
    ("find", "--email", "bob@example.com"),
    ("history", "ann"),
    ("export", "ann"),
    ("status", "--json"),
    ("datasets",),
    ("schedule", "list"),
    ("verify",),
    ("audit", "verify"),
    ("audit", "digest"),
]


def test_reading_commands_work_on_a_home_nobody_may_write(tmp_path: Path, read_only: Any) -> None:
    home = built_home(tmp_path / "home")
    before = fingerprint(home)
    read_only(home)
    for args in READING:
        code, out, err = cli(home, *args)
        assert code == 0, (args, err)
        assert out.strip(), args
    assert json.loads(cli(home, "profile", "ann")[1])["customer_id"] == "ann"
    assert fingerprint(home) == before


def test_writing_commands_on_a_read_only_home_exit_3_naming_the_store(
    tmp_path: Path, read_only: Any
) -> None:
    home = built_home(tmp_path / "home")
    before = fingerprint(home)
    read_only(home)
    for args in (("refresh",), ("ingest", "-"), ("rebuild",)):
        code, _, err = cli(home, *args, input=EVENTS[0].replace("e1", "e9") + "\n")
        assert code == 3, (args, err)
        assert "Traceback" not in err
        assert str(home) in err  # names the store
        assert "unavailable:" in err
    assert fingerprint(home) == before


def test_a_read_only_documents_file_fails_a_refresh_with_exit_3_and_keeps_the_data(
    tmp_path: Path, read_only: Any
) -> None:
    home = built_home(tmp_path / "home")
    cli(home, "ingest", "-", input=EVENTS[0].replace("e1", "e9").replace("ann", "cy") + "\n")
    documents = home / "documents.sqlite"
    kept = documents.read_bytes()
    read_only(documents)
    code, _, err = cli(home, "refresh")
    assert code == 3
    assert f"document store at {documents}" in err
    assert "Traceback" not in err
    assert [x for x in err.splitlines() if x.startswith("unavailable:")] == [err.splitlines()[-1]]
    assert documents.read_bytes() == kept
    assert cli(home, "history", "cy")[0] == 0  # the log is intact


def test_a_log_replaced_by_garbage_exits_3_naming_the_file(tmp_path: Path) -> None:
    home = built_home(tmp_path / "home")
    log = home / "events.sqlite"
    log.write_bytes(b"not a database " * 1000)
    for args in (("status",), ("profile", "ann"), ("ingest", "-")):
        code, _, err = cli(home, *args, input=EVENTS[0] + "\n")
        assert code == 3, (args, err)
        assert f"SQLite event log at {log} could not open" in err
        assert "Traceback" not in err


def test_open_store_read_only_writes_nothing_and_refuses_writes(tmp_path: Path) -> None:
    home = built_home(tmp_path / "home")
    for sidecar in home.glob("*-*"):  # a copy as a backup tool makes it: main files only
        sidecar.unlink()
    before = fingerprint(home)
    settings = load_settings(environ={}, home=home)
    with open_store(settings, read_only=True) as store:
        assert store.profile("ann").customer_id == "ann"
        assert store.verify().ok
        assert store.auditor().verify().ok
        store.status()
        with pytest.raises(ReadOnlyStore, match=r"event log at .* is open read-only"):
            store.append([json.loads(EVENTS[0].replace("e1", "e9"))])
        with pytest.raises(ReadOnlyStore, match=r"document store at .* is open read-only"):
            store.refresh()
    assert fingerprint(home) == before
    for path in (home / "events.sqlite", home / "documents.sqlite"):
        with sqlite3.connect(path) as conn:  # still in WAL mode, nothing switched
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_open_store_read_only_creates_nothing_where_no_store_is(tmp_path: Path) -> None:
    home = tmp_path / "empty"
    home.mkdir()
    with pytest.raises(StoreMissing, match="a read-only open creates none"):
        open_store(load_settings(environ={}, home=home), read_only=True)
    assert list(home.iterdir()) == []


def test_a_copy_of_a_home_is_readable_read_only(tmp_path: Path, read_only: Any) -> None:
    # A backup: the files copied while no process had them open (no -wal, no -shm).
    home = built_home(tmp_path / "home")
    copy = tmp_path / "copy"
    copy.mkdir()
    # The key store is backed up with the log (README: Privacy): without it, nothing reads.
    for name in ("events.sqlite", "events.sqlite.keys", "documents.sqlite"):
        shutil.copy(home / name, copy / name)
    read_only(copy)
    code, out, err = cli(copy, "audit", "verify")
    assert code == 0, err
    assert json.loads(out)["ok"] is True


@pytest.mark.postgres
def test_a_read_only_postgres_log_runs_no_ddl_and_refuses_appends(
    postgres_schema: tuple[str, str],
) -> None:
    import psycopg

    from profilestore.postgres_log import open_postgres_log

    url, schema = postgres_schema
    with pytest.raises(StoreMissing, match=f"schema {schema}"):
        open_postgres_log(url, schema=schema, read_only=True)
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchone()
    assert tables == (0,)
    open_postgres_log(url, schema=schema).close()  # a writer creates the log
    log = open_postgres_log(url, schema=schema, read_only=True)
    try:
        assert log.head() == 0
        with pytest.raises(ReadOnlyStore, match=r"PostgreSQL event log at .* is open read-only"):
            log.append([])
        with (
            pytest.raises(Exception, match="read-only transaction"),
            log.recorder.datastore.transaction(commit=True) as curs,  # type: ignore[attr-defined]
        ):
            curs.execute(f"CREATE TABLE {schema}.sneaky (x int)")
    finally:
        log.close()
