"""Projection versions: a changed fold is noticed, reported, and rebuilt blue/green."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from profilestore.api import create_app
from profilestore.config import ApiSettings, Settings
from profilestore.errors import LeaseHeld, StagingMissing
from profilestore.population import generate
from profilestore.store import ProfileStore, open_documents, open_store
from profilestore.worker import Worker

EVENTS = list(generate(40, seed=11, events_per_customer=15))


@pytest.fixture
def store(settings: Settings) -> Iterator[ProfileStore]:
    api = msgspec.structs.replace(ApiSettings(), anonymous_scopes=["read", "admin"])
    with open_store(msgspec.structs.replace(settings, api=api)) as opened:
        opened.append(EVENTS)
        opened.refresh()
        yield opened


def change_fold(store: ProfileStore, dataset: str, keep: int = 1) -> None:
    """Version 2 of a dataset's projection: keeps ``keep`` entries of its first list."""
    projection = store._projections[dataset]
    field = next(f for f in msgspec.structs.fields(projection.section) if f.default == ()).name

    def fold(section: Any, event: Any) -> Any:
        folded = projection.fold(section, event)
        return msgspec.structs.replace(folded, **{field: getattr(folded, field)[-keep:]})

    store._projections[dataset] = dataclasses.replace(projection, fold=fold, version=2)


def sections(store: ProfileStore, dataset: str) -> dict[str, Any]:
    ids = sorted(store._documents.customer_ids(dataset))
    return {c: store.profile(c, [dataset]).sections[dataset] for c in ids}


def rebuilt_elsewhere(store: ProfileStore, tmp_path: Path, dataset: str) -> dict[str, Any]:
    """The dataset as a store with the same code, built from scratch, holds it."""
    documents = msgspec.structs.replace(
        store.settings.documents, url=f"sqlite:///{tmp_path}/fresh.sqlite"
    )
    fresh = ProfileStore(
        store.settings,
        store._log,
        open_documents(
            msgspec.structs.replace(store.settings, documents=documents), store.projections
        ),
        store.projections,
    )
    fresh.refresh([dataset])
    return sections(fresh, dataset)


def test_every_dataset_records_the_version_that_built_it(store: ProfileStore) -> None:
    assert store.built_versions() == {
        name: None if projection.derived else projection.version  # scores: not scored yet
        for name, projection in store.projections.items()
    }
    assert store.outdated() == []
    assert not any(row.outdated for row in store.status())


def test_a_changed_fold_is_reported_by_status_ready_and_the_profile(store: ProfileStore) -> None:
    change_fold(store, "browsing")
    assert store.outdated() == ["browsing"]
    (row,) = [r for r in store.status() if r.dataset == "browsing"]
    assert (row.version, row.built_version, row.outdated) == (2, 1, True)
    with TestClient(create_app(store)) as client:
        assert client.get("/health/ready").json() == {"status": "ready", "outdated": ["browsing"]}
        customer_id = next(iter(store._documents.customer_ids("browsing")))
        freshness = client.get(f"/v1/profiles/{customer_id}").json()["freshness"]
        assert freshness["browsing"]["outdated"] is True
        assert freshness["identities"]["outdated"] is False
        metrics = client.get("/metrics").text
        assert 'profilestore_projection_outdated{dataset="browsing"} 1.0' in metrics


def test_a_background_rebuild_keeps_serving_and_refreshing_then_swaps(
    store: ProfileStore, tmp_path: Path
) -> None:
    before = sections(store, "browsing")
    change_fold(store, "browsing")
    seen: list[dict[str, Any]] = []
    late = [
        msgspec.structs.replace(e, event_id=f"late-{e.event_id}")
        for e in generate(45, seed=12, events_per_customer=6)
    ]

    def during(done: int, total: int) -> None:
        if not seen:  # the live dataset still answers and still refreshes meanwhile
            store.append(late)
            store.refresh(["browsing"])
        seen.append(sections(store, "browsing"))

    store._consumer.page_size = 50
    store.build_staging(["browsing"], progress=during)
    assert seen and all(len(s) >= len(before) for s in seen)
    assert store.outdated() == ["browsing"]  # nothing swapped yet
    store.promote(["browsing"])
    assert store.outdated() == []
    assert store.built_versions()["browsing"] == 2
    # The swap folded the late events too: as if built from scratch by version 2.
    assert sections(store, "browsing") == rebuilt_elsewhere(store, tmp_path, "browsing")
    with pytest.raises(StagingMissing):
        store.promote(["browsing"])


def test_a_store_built_before_versions_counts_as_version_1(store: ProfileStore) -> None:
    store._documents.delete_record("projection_version", "carts")
    assert store.built_versions()["carts"] == 1
    store._documents.delete_record("projection_version", "social")
    change_fold(store, "social")
    assert "social" in store.outdated()


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_worker_rebuilds_an_outdated_real_time_dataset_while_following(
    store: ProfileStore, tmp_path: Path
) -> None:
    change_fold(store, "carts")
    worker = Worker(store, ["carts", "identities"])
    assert worker.follower is not None
    stop = threading.Event()
    appended: list[int] = []

    def keep_appending() -> None:  # events keep arriving during the rebuild
        batch = 0
        while not stop.is_set():
            events = [
                msgspec.structs.replace(e, event_id=f"w{batch}-{e.event_id}")
                for e in generate(5, seed=100 + batch, events_per_customer=4)
            ]
            appended.append(store.append(events).appended)
            batch += 1
            time.sleep(0.01)

    writer = threading.Thread(target=keep_appending)
    with worker:
        writer.start()
        wait_until(lambda: store.outdated() == [])
        stop.set()
        writer.join()
        wait_until(lambda: store.freshness(["carts"])["carts"].events_behind == 0)
    assert sum(appended) > 0
    assert store.built_versions()["carts"] == 2
    assert sections(store, "carts") == rebuilt_elsewhere(store, tmp_path, "carts")


def test_a_rebuild_waits_for_a_background_rebuild_of_the_same_dataset(
    store: ProfileStore,
) -> None:
    clashes: list[Exception] = []

    def during(done: int, total: int) -> None:
        if not clashes:  # another process (its own holder) asks for a rebuild meanwhile
            with open_store(store.settings) as other, pytest.raises(LeaseHeld) as raised:
                other.rebuild(["browsing"])
            assert "rebuild 'browsing'" in str(raised.value)
            clashes.append(raised.value)

    store._consumer.page_size = 50
    store.build_staging(["browsing"], progress=during)
    assert clashes
    store.promote(["browsing"])
    assert store.outdated() == []
