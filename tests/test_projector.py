"""The projector: replays change nothing, interrupted runs converge to a rebuild."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from profilestore.config import Settings
from profilestore.documents import DocumentStore
from profilestore.errors import LeaseHeld
from profilestore.identity import TARGET
from profilestore.pipeline import LEASE_TTL
from profilestore.population import generate
from profilestore.store import ProfileStore, open_store

CUSTOMERS = 40


def snapshot(documents: DocumentStore) -> dict[tuple[str, str], tuple[bytes, int]]:
    """Every live section of every dataset, encoded, with its position."""
    found = {}
    for dataset in documents.schemas:
        ids = list(documents.customer_ids(dataset))
        for customer_id, stored in documents.load(dataset, ids).items():
            found[(dataset, customer_id)] = (msgspec.json.encode(stored.section), stored.position)
    return found


def tracked(documents: DocumentStore) -> dict[str, int]:
    return {
        name: (t.position if (t := documents.tracking(name)) else 0)
        for name in documents.schemas
        if name != "scores"  # computed by the scoring job, not folded by a refresh
    }


@pytest.fixture
def store(settings: Settings) -> Any:
    with open_store(settings) as opened:
        opened.append(list(generate(CUSTOMERS, seed=3, events_per_customer=30)))
        yield opened


def rebuilt(store: ProfileStore, tmp_path: Path) -> dict[tuple[str, str], tuple[bytes, int]]:
    """The documents a from-scratch fold of the same log produces, in a fresh store."""
    fresh_settings = msgspec.structs.replace(
        store.settings,
        documents=msgspec.structs.replace(
            store.settings.documents, url=f"sqlite:///{tmp_path}/fresh-documents.sqlite"
        ),
    )
    with open_store(fresh_settings) as fresh:
        fresh.rebuild()
        return snapshot(fresh._documents)


def test_refresh_folds_every_event_into_its_datasets(store: ProfileStore) -> None:
    report = store.refresh()
    head = store.head()
    assert report.high_water == head
    assert report.events_read == head
    assert sum(report.events_applied.values()) >= head  # some events feed two datasets
    assert set(tracked(store._documents).values()) == {head}
    assert len(list(store._documents.customer_ids("identities"))) == CUSTOMERS


def test_refreshing_again_changes_nothing(store: ProfileStore) -> None:
    store.refresh()
    before = snapshot(store._documents)
    again = store.refresh()
    assert again.events_read == 0
    assert sum(again.sections_written.values()) == 0
    assert snapshot(store._documents) == before


def test_replaying_events_already_written_changes_nothing(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first run writes every section but dies before recording its position, so the
    # second run replays the whole log over documents that already contain it.
    advance = store._documents.advance

    def crash(name: str, *args: Any, **kwargs: Any) -> None:
        if name == TARGET:  # the identity graph is not what this test kills
            return advance(name, *args, **kwargs)
        raise RuntimeError("killed before advancing")

    with monkeypatch.context() as patch:
        patch.setattr(store._documents, "advance", crash)
        with pytest.raises(RuntimeError):
            store.refresh()
    assert set(tracked(store._documents).values()) == {0}
    written = snapshot(store._documents)
    replay = store.refresh()
    assert replay.events_read == store.head()
    assert sum(replay.events_applied.values()) == 0
    assert snapshot(store._documents) == written


def test_projector_stopped_part_way_and_restarted_equals_a_rebuild(
    store: ProfileStore, tmp_path: Path
) -> None:
    store._consumer.page_size = 37  # many pages, with flushes in between
    store._cache_sections = 25
    head = store.head()
    for stop in (head // 5, head // 2, head - 3):
        report = store.refresh(until=stop)
        assert report.high_water == stop
        assert set(tracked(store._documents).values()) == {stop}
    store.refresh()
    assert snapshot(store._documents) == rebuilt(store, tmp_path)


def test_events_appended_after_a_refresh_are_folded_by_the_next(
    store: ProfileStore, tmp_path: Path
) -> None:
    store.refresh()
    more = list(generate(CUSTOMERS + 10, seed=4, events_per_customer=10))
    store.append([msgspec.structs.replace(e, event_id=f"late-{e.event_id}") for e in more])
    store.refresh()
    assert snapshot(store._documents) == rebuilt(store, tmp_path)


KILLED_PROJECTOR = textwrap.dedent(
    """
    import sys, time
    from profilestore.config import load_settings
    from profilestore.store import open_store
    store = open_store(load_settings(environ={}, home=sys.argv[1]))
    store._consumer.page_size = 20
    store._cache_sections = 10

    def progress(done, total):
        print(done, flush=True)
        time.sleep(0.01)  # slow enough to be killed in the middle

    store.refresh(progress=progress)
    print("finished", flush=True)
    """
)


def test_projector_killed_with_sigkill_then_restarted_equals_a_rebuild(
    store: ProfileStore, tmp_path: Path
) -> None:
    head = store.head()
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_PROJECTOR, str(store.settings.home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip() == b"finished" or int(line) >= head // 2:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    positions = tracked(store._documents)
    assert 0 < min(positions.values()) < head, "the kill should land mid-run"
    # The dead process still holds its dataset leases: nothing runs until they expire.
    folded = [n for n, p in store.projections.items() if not p.derived]
    assert store.refresh().skipped_locked == folded
    later = dt.datetime.now(dt.UTC) + 2 * LEASE_TTL
    store._leases.clock = lambda: later
    assert store.refresh().skipped_locked == []
    assert snapshot(store._documents) == rebuilt(store, tmp_path)


def test_rebuild_keeps_lookups_answering_from_the_old_documents(store: ProfileStore) -> None:
    store.refresh()
    customer_id = "cust-0000001"
    before = store.profile(customer_id)
    seen_during: list[Any] = []

    def look(done: int, total: int) -> None:
        seen_during.append(store.profile(customer_id).sections)

    store._consumer.page_size = 50
    store._cache_sections = 10
    store.rebuild(progress=look)
    assert len(seen_during) > 5
    assert all(sections == before.sections for sections in seen_during)
    after = store.profile(customer_id)
    assert after.sections == before.sections
    assert {k: v.position for k, v in after.freshness.items()} == {
        k: v.position for k, v in before.freshness.items()
    }


def test_rebuild_in_stream_order_equals_refreshes_in_log_order(store: ProfileStore) -> None:
    # Pages shorter than a customer's stream, a cache smaller than the customers: the
    # refresh writes sections many times over, the rebuild reads streams cut by pages.
    store._consumer.page_size = 7
    store._cache_sections = 5
    store.refresh()
    refreshed = snapshot(store._documents)
    report = store.rebuild()
    assert report.events_read == store.head()
    assert snapshot(store._documents) == refreshed


def test_a_rebuild_stopped_part_way_leaves_the_documents_and_no_staging_position(
    store: ProfileStore,
) -> None:
    store.refresh()
    before = snapshot(store._documents)
    store._consumer.page_size = 50
    store._cache_sections = 10  # sections are written to staging before the stop

    def stop(done: int, total: int) -> None:
        if done > total // 2:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        store.rebuild(progress=stop)
    # Staging is complete only when every stream was read: nothing says otherwise, so
    # no promotion can take a half-built staging area for a built one.
    assert all(
        store._documents.tracking(n, staging=True) is None for n in tracked(store._documents)
    )
    assert snapshot(store._documents) == before
    store.rebuild()
    assert snapshot(store._documents) == before


def test_rebuild_after_a_fold_change_replaces_the_dataset(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.refresh()
    projection = store.projections["browsing"]

    def keep_one_view(section: Any, event: Any) -> Any:
        folded = projection.fold(section, event)
        return msgspec.structs.replace(folded, page_views=folded.page_views[-1:])

    monkeypatch.setitem(
        store._projections,
        "browsing",
        dataclasses.replace(projection, fold=keep_one_view, retention="last page view"),
    )
    store.rebuild(["browsing"])
    for customer_id in store._documents.customer_ids("browsing"):
        assert len(store.profile(customer_id, ["browsing"]).sections["browsing"].page_views) <= 1


def test_a_dataset_leased_by_another_process_is_skipped_by_refresh(store: ProfileStore) -> None:
    now = dt.datetime.now(dt.UTC)
    assert store._documents.acquire_lease("dataset:carts", "other-host:1", dt.timedelta(60), now)
    report = store.refresh()
    assert report.skipped_locked == ["carts"]
    assert store._documents.tracking("carts") is None
    assert store._documents.tracking("orders") is not None
    with pytest.raises(LeaseHeld, match="other-host:1"):
        store.rebuild(["carts"])


def test_mongodb_and_embedded_stores_hold_equal_documents(
    store: ProfileStore, tmp_path: Path
) -> None:
    import mongomock_ng

    from profilestore.mongo_documents import MongoDocumentStore

    client: Any = mongomock_ng.MongoClient(tz_aware=True)
    mongo = MongoDocumentStore(client["equal"], store._documents.schemas, client=client)
    # A second door onto the same log (not closed: it would close the shared log).
    ProfileStore(store.settings, store._log, mongo, store.projections).refresh()
    store.refresh()
    assert snapshot(mongo) == snapshot(store._documents)
    mongo.close()


def test_a_dataset_a_live_consumer_of_this_process_holds_is_skipped_by_refresh(
    store: ProfileStore,
) -> None:
    # The leases name the process; within it, a second run must be kept out too (a
    # merge regrouping datasets from an API thread while the follower folds them).
    live = store.live(["carts"], batch=100)
    assert live.take()
    try:
        report = store.refresh(["carts", "orders"])
        assert report.skipped_locked == ["carts"]
        assert not store.live(["carts"], batch=100).take()
    finally:
        live.release()
    assert store.refresh(["carts"]).skipped_locked == []
