"""Tamper evidence: chains, digests and signatures catch every kind of rewrite."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from profilestore.audit import Auditor, Digest, load_private_key, new_key_pair
from profilestore.errors import AuditFailed
from profilestore.eventlog import (
    EVENT_IDS_TABLE,
    EVENTS_TABLE,
    STREAMS_TABLE,
    EventLog,
    stream_id,
)
from profilestore.population import generate
from profilestore.sqlite_log import open_sqlite_log

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite"


@pytest.fixture
def log(path: Path) -> Iterator[EventLog]:
    opened = open_sqlite_log(str(path))
    opened.append(list(generate(12, seed=11, events_per_customer=15)))
    yield opened
    opened.close()


def auditor(log: EventLog) -> Auditor:
    return Auditor(log, clock=lambda: NOW)


def sql(path: Path, statement: str, *params: Any) -> list[Any]:
    with sqlite3.connect(path) as conn:
        return conn.execute(statement, params).fetchall()


def a_stream(path: Path, customer: str = "cust-0000003") -> str:
    return stream_id(customer).hex


def kinds(report: Any) -> set[str]:
    return {finding.kind for finding in report.findings}


def test_an_untouched_log_passes_and_matches_its_digest(log: EventLog) -> None:
    digest = auditor(log).digest()
    assert (digest.position, digest.events) == (log.head(), log.head())
    assert digest.streams == 12
    report = auditor(log).verify(digest)
    assert report.ok and report.digest_checked and not report.signature_checked
    assert (report.events_checked, report.streams_checked) == (log.head(), 12)
    assert report.root == digest.root


def test_a_flipped_byte_in_a_stored_event_is_detected(log: EventLog, path: Path) -> None:
    stream = a_stream(path)
    (state,) = sql(
        path,
        f"SELECT state FROM {EVENTS_TABLE} WHERE originator_id = ? AND originator_version = 4",
        stream,
    )[0]
    flipped = bytearray(state)
    flipped[len(flipped) // 2] ^= 0x01
    sql(
        path,
        f"UPDATE {EVENTS_TABLE} SET state = ? WHERE originator_id = ? AND originator_version = 4",
        bytes(flipped),
        stream,
    )
    report = auditor(log).verify()
    assert not report.ok
    first = report.findings[0]
    assert (first.kind, first.stream, first.version) == (
        "modified",
        str(stream_id("cust-0000003")),
        4,
    )
    with pytest.raises(AuditFailed):
        auditor(log).digest()


def test_a_deleted_event_is_detected(log: EventLog, path: Path) -> None:
    stream = a_stream(path)
    sql(
        path,
        f"DELETE FROM {EVENTS_TABLE} WHERE originator_id = ? AND originator_version = 3",
        stream,
    )
    report = auditor(log).verify()
    assert "gap" in kinds(report)
    assert any(f.kind == "gap" and f.version == 3 for f in report.findings)


def test_two_swapped_events_are_detected(log: EventLog, path: Path) -> None:
    stream = a_stream(path)
    rows = dict(
        sql(
            path,
            f"SELECT originator_version, state FROM {EVENTS_TABLE} "
            "WHERE originator_id = ? AND originator_version IN (5, 6)",
            stream,
        )
    )
    for version, other in ((5, 6), (6, 5)):
        sql(
            path,
            f"UPDATE {EVENTS_TABLE} SET state = ? WHERE originator_id = ? "
            "AND originator_version = ?",
            rows[other],
            stream,
            version,
        )
    report = auditor(log).verify()
    assert [(f.kind, f.version) for f in report.findings][:1] == [("modified", 5)]


def test_a_stream_truncated_after_the_digest_is_detected(log: EventLog, path: Path) -> None:
    digest = auditor(log).digest()
    stream = a_stream(path)
    (last,) = sql(
        path, f"SELECT MAX(originator_version) FROM {EVENTS_TABLE} WHERE originator_id = ?", stream
    )[0]
    # A careful rewrite: drop the last two events and fix every table that chains them.
    for table in (EVENTS_TABLE, EVENT_IDS_TABLE):
        sql(
            path,
            f"DELETE FROM {table} WHERE originator_id = ? AND originator_version > ?",
            stream,
            last - 2,
        )
    (new_head,) = sql(
        path,
        f"SELECT hash FROM {EVENT_IDS_TABLE} WHERE originator_id = ? AND originator_version = ?",
        stream,
        last - 2,
    )[0]
    sql(
        path,
        f"UPDATE {STREAMS_TABLE} SET head_version = ?, head_hash = ? WHERE originator_id = ?",
        last - 2,
        new_head,
        stream,
    )
    assert auditor(log).verify().ok  # consistent on its own...
    report = auditor(log).verify(digest)  # ...but not with what was digested
    assert kinds(report) == {"root_mismatch", "count"}


def test_a_forged_signed_digest_is_detected(log: EventLog) -> None:
    private_pem, public_pem = new_key_pair()
    from profilestore.audit import load_public_key

    signed = auditor(log).digest(load_private_key(private_pem))
    public = load_public_key(public_pem)
    assert auditor(log).verify(signed, public).signature_checked
    assert auditor(log).verify(signed, public).ok
    forged = msgspec.structs.replace(signed, events=signed.events + 1)
    report = auditor(log).verify(forged, public)
    assert "signature" in kinds(report)
    _, other_public = new_key_pair()
    assert "signature" in kinds(auditor(log).verify(signed, load_public_key(other_public)))


def test_digests_round_trip_through_json(log: EventLog) -> None:
    digest = auditor(log).digest()
    assert msgspec.json.decode(msgspec.json.encode(digest), type=Digest) == digest


def test_the_chain_is_kept_on_postgresql_too(log_backend: dict[str, Any]) -> None:
    opened: EventLog = log_backend["open"]()
    try:
        opened.append(list(generate(5, seed=2, events_per_customer=14)))
        opened.append(list(generate(5, seed=3, events_per_customer=14))[:0])
        digest = auditor(opened).digest()
        assert auditor(opened).verify(digest).ok
        assert digest.streams == 5
    finally:
        opened.close()


def test_a_row_rewritten_as_text_is_reported_not_a_crash(log: EventLog, path: Path) -> None:
    # SQL string functions turn a BLOB into TEXT: the verifier must still compare it.
    sql(path, f"UPDATE {EVENTS_TABLE} SET state = replace(state, 'type', 'tipe') WHERE rowid = 7")
    (kind,) = sql(path, f"SELECT typeof(state) FROM {EVENTS_TABLE} WHERE rowid = 7")[0]
    assert kind == "text"
    report = auditor(log).verify()
    assert [f.kind for f in report.findings] == ["modified"]
