"""Partitions on one store, in one process: the split, the stored count, per-partition
positions (an upgrade from one position, a change of count), and the workers' share.

Partitioned refreshes are compared with an unpartitioned rebuild of the same log (a fresh
documents store, refreshed): the same sections at the same positions. The processes case
(four workers, one killed at random moments) is ``test_partitions_processes.py``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from litestar.testing import TestClient
from test_api import api_settings, headers
from test_firing import Clock, cart_added, consent, order, signed_up
from test_identity_concurrency import differences, rebuilt, snapshot

from profilestore.api import create_app
from profilestore.cli import main
from profilestore.config import Settings, load_settings
from profilestore.errors import InvalidArgument, LeaseHeld, PartitionCountChanged
from profilestore.firing import TARGET as TRIGGERS
from profilestore.firing import read_firings
from profilestore.partitions import (
    Partition,
    excess,
    partition_of,
    share,
    tracked_name,
    wanted,
)
from profilestore.store import ProfileStore, open_store
from profilestore.worker import Worker

T0 = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)


def environ(count: int) -> dict[str, str]:
    return {
        "PROFILESTORE_SCHEDULE__PARTITIONS": str(count),
        "PROFILESTORE_TRIGGERS__RECEIPT__ENABLED": "true",
    }


def settings_for(home: Path, count: int) -> Settings:
    return load_settings(environ=environ(count), home=home)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> Iterator[ProfileStore]:
    with open_store(settings_for(home, 4)) as opened:
        opened.run_triggers()  # the receipt is enabled before the events
        yield opened


def views(customers: int, number: int) -> list[dict[str, Any]]:
    at = (T0 + dt.timedelta(seconds=number)).isoformat()
    return [
        {
            "type": "browse.page_viewed",
            "event_id": f"view-{number}-{c}",
            "customer_id": f"c{c}",
            "occurred_at": at,
            "url": f"https://shop.example/{number}",
        }
        for c in range(customers)
    ]


def link(event_id: str, customer_id: str, email: str) -> dict[str, Any]:
    return {**signed_up(event_id, customer_id), "value": email}


def two_keys_in_different_partitions(store: ProfileStore) -> tuple[str, str]:
    first = "c0"
    other = next(
        f"c{i}" for i in range(1, 100) if store.partition_of(f"c{i}") != store.partition_of(first)
    )
    return first, other


# --- the split --------------------------------------------------------------------------


def test_a_key_has_the_same_partition_everywhere_and_keys_spread_evenly() -> None:
    # Fixed values (BLAKE2b of the key's stream id, not Python's per-process hash): a
    # change here would move customers between partitions under running workers.
    assert [partition_of(f"c{i}", 8) for i in range(8)] == [4, 6, 6, 5, 2, 6, 1, 4]
    assert partition_of("cust-0000042", 8) == 3
    assert all(partition_of(f"c{i}", 1) == 0 for i in range(50))
    spread = Counter(partition_of(f"cust-{i:07d}", 8) for i in range(8000))
    assert len(spread) == 8 and min(spread.values()) > 850 and max(spread.values()) < 1150


def test_a_worker_keeps_its_fair_share_and_gives_back_its_highest_partitions() -> None:
    assert [share(8, n) for n in (1, 2, 3, 4, 8, 9)] == [8, 4, 3, 2, 1, 1]
    assert excess([0, 1, 2, 3, 4, 5, 6, 7], 8, 3) == [3, 4, 5, 6, 7]
    assert excess([5, 1, 3], 8, 3) == []  # at its share: nothing moves (no flapping)
    assert wanted([5, 1], 8, 3) == 1 and wanted([], 8, 4) == 2


# --- the count --------------------------------------------------------------------------


def test_the_count_is_stored_and_another_one_is_refused_until_set(home: Path) -> None:
    with open_store(settings_for(home, 1)) as plain:
        plain.refresh()
        assert plain.partition_count() == 1
        assert plain.partition_status() == []
    with open_store(settings_for(home, 4)) as split:
        split.refresh()
        assert split.partition_count() == 4
    with open_store(settings_for(home, 8)) as other, pytest.raises(PartitionCountChanged) as e:
        other.refresh()
    assert "schedule.partitions" in str(e.value) and "partitions set 8" in str(e.value)
    with open_store(settings_for(home, 4)) as split:
        assert split.take_partition(2)
        with pytest.raises(InvalidArgument, match="stop every worker"):
            split.set_partition_count(8)
        split.release_partition(2)
        assert split.set_partition_count(8) == 4
    with open_store(settings_for(home, 8)) as other:
        assert other.refresh().events_read == 0
        assert len(other.partition_status()) == 8


# --- partitioned refreshes equal a rebuild -------------------------------------------------


def test_partitions_refreshed_at_different_moments_equal_a_rebuild(
    store: ProfileStore, tmp_path: Path
) -> None:
    first, other = two_keys_in_different_partitions(store)
    store.append([*views(12, 0), order("o1", first, "N-1"), order("o2", other, "N-2")])
    store.refresh(partitions=[0, 1])
    store.append(views(12, 1))
    store.refresh(partitions=[2])
    # A link merging customers of two partitions: the merged profile is in one of them.
    store.append([link("l1", first, "same@example.com"), link("l2", other, "same@example.com")])
    store.append([*views(12, 2), order("o3", other, "N-3")])
    store.refresh(partitions=[3, 1])
    store.refresh()
    store.run_triggers()
    rows = store.partition_status()
    assert [r.events_behind for r in rows] == [0, 0, 0, 0]
    live, expected = snapshot(store._documents), rebuilt(store, tmp_path)
    assert live == expected, differences(live, expected)
    merged = store.resolve(other)
    assert store.resolve(first) == merged
    assert store.profile(merged).sections["orders"].order_count == 3
    alone = [f"c{c}" for c in range(12) if f"c{c}" not in (first, other)]
    assert {store.profile(c).sections["browsing"].page_view_count for c in alone} == {3}


def test_each_partition_decides_its_own_customers_triggers_once(store: ProfileStore) -> None:
    store.append([order(f"o{i}", f"c{i}", f"N-{i}") for i in range(20)])
    decided = store.run_triggers()
    assert decided.outcomes == {"fired": 20}
    assert store.run_triggers().outcomes == {}
    fired = sorted(f.dedupe_key for f in read_firings(store._documents))
    assert fired == sorted(f"order:N-{i}" for i in range(20))
    for row in store.partition_status():
        assert row.positions[TRIGGERS] == store.head()


def test_a_store_with_one_position_is_split_from_that_position(home: Path, tmp_path: Path) -> None:
    with open_store(settings_for(home, 1)) as plain:
        plain.append(views(10, 0))
        plain.refresh()
        before = plain.head()
        plain.append(views(10, 1))
    with open_store(settings_for(home, 4)) as split:
        rows = split.partition_status()
        assert {r.positions["browsing"] for r in rows} == {before}
        documents = split._documents
        assert documents.tracking(tracked_name("browsing", Partition(0, 4))) is None
        report = split.refresh()
        assert report.events_applied["browsing"] == 10  # only the new events, once
        live, expected = snapshot(split._documents), rebuilt(split, tmp_path)
        assert live == expected, differences(live, expected)
        # The plain row is the least partition's: an unpartitioned reader starts there.
        tracked = documents.tracking("browsing")
        assert tracked is not None and tracked.position == split.head()


# --- the workers' share -------------------------------------------------------------------


def test_two_workers_share_the_partitions_and_one_takes_over_when_the_other_stops(
    home: Path,
) -> None:
    settings = settings_for(home, 8)
    settings = msgspec.structs.replace(
        settings,
        schedule=msgspec.structs.replace(settings.schedule, heartbeat_s=3600),
        triggers={},
    )
    with open_store(settings) as one, open_store(settings) as two:
        first, second = Worker(one, partitioned=True), Worker(two, partitioned=True)
        assert first.share is not None and second.share is not None
        first.share.balance()
        assert len(first.share.held()) == 8  # alone: every partition
        second.share.balance()  # sees two workers, but every partition is held
        assert second.share.held() == []
        first.share.balance()  # gives back its excess
        second.share.balance()
        assert len(first.share.held()) == 4 and len(second.share.held()) == 4
        assert set(first.share.held()).isdisjoint(second.share.held())
        holders = {r.partition: r.holder for r in one.partition_status()}
        assert {holders[i] for i in first.share.held()} == {one.holder}
        for _ in range(3):  # balanced: nothing moves any more
            first.share.balance()
            second.share.balance()
        assert len(first.share.held()) == 4 and len(second.share.held()) == 4
        second.share.stop()  # gives its partitions back and leaves
        first.share.balance()
        assert first.share.held() == list(range(8))
        assert [w.holder for w in one.workers()] == [one.holder]
        first.share.stop()


# --- where it shows ---------------------------------------------------------------------


def test_status_and_the_api_show_who_holds_each_partition_and_its_lag(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environ(4).items():
        monkeypatch.setenv(name, value)
    with open_store(api_settings(settings_for(home, 4))) as store:
        store.append(views(6, 0))
        store.refresh(partitions=[0, 1, 2])
        assert store.take_partition(1)
        store.heartbeat([1])
        with TestClient(create_app(store)) as client:
            body = client.get("/v1/status/partitions", headers=headers()).json()
        behind = {p["partition"]: p["events_behind"] for p in body["partitions"]}
        assert behind[3] == store.head() and behind[0] == store.head()  # the trigger engine
        assert [p["holder"] for p in body["partitions"]] == [None, store.holder, None, None]
        assert [w["holder"] for w in body["workers"]] == [store.holder]
        assert body["partitions"][3]["positions"]["browsing"] == 0
        assert body["partitions"][2]["positions"]["browsing"] == store.head()
        table = CliRunner().invoke(main, ["--home", str(home), "status"])
        assert table.exit_code == 0, table.output
        assert "partitions (4; 1 worker(s) alive)" in table.stdout
        assert "nobody" in table.stdout and store.holder in table.stdout
        shown = CliRunner().invoke(main, ["--home", str(home), "partitions", "show", "--json"])
        assert [p["partition"] for p in json.loads(shown.stdout)["partitions"]] == [0, 1, 2, 3]
        store.release_partition(1)
        store.leave()
    changed = CliRunner().invoke(main, ["--home", str(home), "partitions", "set", "2"])
    assert changed.exit_code == 0 and "partitions: 4 -> 2" in changed.stderr
    refused = CliRunner().invoke(main, ["--home", str(home), "refresh"])
    assert refused.exit_code == 2 and "partitions set 4" in refused.stderr
    # Reading is not refused: it shows the store as it is split.
    shown = CliRunner().invoke(main, ["--home", str(home), "partitions", "show", "--json"])
    assert len(json.loads(shown.stdout)["partitions"]) == 2


def test_a_merge_regroups_each_partition_under_its_own_lease(store: ProfileStore) -> None:
    first, other = two_keys_in_different_partitions(store)
    store.append([order("o1", first, "N-1"), order("o2", other, "N-2")])
    store.refresh()
    store.append([link("l1", first, "same@example.com"), link("l2", other, "same@example.com")])
    store.resolve_identity()
    merged = store.resolve(first)
    assert store.resolve(other) == merged and merged not in (first, other)
    report = store.apply_identity(["orders"])  # no refresh: the regroup alone
    assert report.skipped_locked == []
    assert store.profile(merged, datasets=["orders"]).sections["orders"].order_count == 2
    assert store._documents.load("orders", [first, other]) == {}


def test_retrying_dead_letters_waits_for_every_partition_of_the_dataset(
    home: Path, store: ProfileStore
) -> None:
    with open_store(settings_for(home, 4)) as worker:
        assert worker.take_partition(0)  # a worker's hold is not a writer's lease
        assert store.retry_dead_letters("orders") == (0, 0)
        follower = worker.live(["orders"], batch=100, partition=2)
        assert follower.take()
        with pytest.raises(LeaseHeld):
            store.retry_dead_letters("orders")
        follower.release()
        assert store.retry_dead_letters("orders") == (0, 0)
        worker.release_partition(0)


def test_each_partition_decides_only_its_own_due_timers(home: Path) -> None:
    # The timers' index by due time is one for every partition: a partition's engine
    # passes over the others' entries (leaves them), and is pending only for its own.
    clock = Clock(T0)
    environ = {
        "PROFILESTORE_SCHEDULE__PARTITIONS": "4",
        "PROFILESTORE_TRIGGERS__ABANDONED_CART__ENABLED": "true",
    }
    with open_store(load_settings(environ=environ, home=home), clock=clock) as store:
        store.run_triggers()
        clock.advance(seconds=1)
        customers = [f"c{i}" for i in range(12)]
        store.append([consent(f"k{c}", c) for c in customers])
        store.append([cart_added(f"a{c}", c, f"cart-{c}", clock.now) for c in customers])
        assert store.run_triggers().outcomes == {"waiting": 12}
        clock.advance(minutes=61)
        partitions = store._partitions(None)
        owned = Counter(store.partition_of(c) for c in customers)
        assert len(owned) > 1  # the test can fail: timers of several partitions

        for partition in partitions:
            assert partition is not None
            handler = store._trigger_handler(partition)
            opened = handler.begin([TRIGGERS])
            assert opened.pending() == (owned[partition.index] > 0)
            ran = store._consumer.run(handler, [TRIGGERS], trigger="manual")
            assert ran.outcomes == (
                {"fired": owned[partition.index]} if owned[partition.index] else {}
            )

        fired = sorted(f.dedupe_key for f in read_firings(store._documents))
        assert fired == sorted(f"cart:cart-{c}" for c in customers)
        assert store.run_triggers().outcomes == {}
