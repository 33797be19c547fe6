"""The PostgreSQL log adapter: what its connections do under contention."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from profilestore.events import PageViewed
from profilestore.postgres_log import open_postgres_log

pytestmark = pytest.mark.postgres

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def page_view(event_id: str, customer_id: str) -> PageViewed:
    return PageViewed(
        event_id=event_id, customer_id=customer_id, occurred_at=T0, url="https://shop.example/"
    )


def test_appends_leave_no_prepared_statement_on_the_connection(
    postgres_schema: tuple[str, str],
) -> None:
    # A statement prepared inside an append's pipelined transaction could be lost when a
    # concurrent writer made it fail, and the connection's next append would then fail with
    # 'prepared statement "_pg3_N" does not exist'. Nothing is prepared, so nothing is lost.
    url, schema = postgres_schema
    log = open_postgres_log(url, schema=schema, pool_size=1)
    try:
        for batch in range(8):  # past psycopg's default threshold (5 runs) too
            log.append([page_view(f"p-{batch}-{i}", f"c{i}") for i in range(3)])
        datastore: Any = log.recorder.datastore  # type: ignore[attr-defined]
        with datastore.get_connection() as conn, conn.cursor() as curs:
            assert conn.prepare_threshold is None
            curs.execute("SELECT name, statement FROM pg_prepared_statements")
            assert curs.fetchall() == []
    finally:
        log.close()


def test_a_batch_whose_event_id_was_taken_meanwhile_is_planned_again(
    postgres_schema: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another writer stores one of the batch's event ids between our check and our insert:
    # the insert fails in the pipeline, and the retry on the same connection must work.
    url, schema = postgres_schema
    other = open_postgres_log(url, schema=schema)
    log = open_postgres_log(url, schema=schema, pool_size=1)
    try:
        other.append([page_view("taken", "bob")])
        real = log.recorder.existing_event_ids
        checks: list[int] = []

        def raced(event_ids: Any) -> set[str]:
            checks.append(1)
            return set() if len(checks) == 1 else real(event_ids)

        monkeypatch.setattr(log.recorder, "existing_event_ids", raced)
        result = log.append([page_view("taken", "bob"), page_view("new", "ann")])
        assert (result.appended, result.duplicate_event_ids, result.attempts) == (1, ["taken"], 2)
        assert log.append([page_view("after", "ann")]).appended == 1
    finally:
        log.close()
        other.close()
