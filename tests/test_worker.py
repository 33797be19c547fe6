"""Scheduled and real-time refreshes: runs, locks, catch-up, poison events, the follower."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from poisoning import poison

from profilestore.config import Settings
from profilestore.errors import CustomerNotFound, LeaseHeld
from profilestore.follower import Follower
from profilestore.identity import TARGET
from profilestore.population import generate
from profilestore.store import ProfileStore, open_store
from profilestore.worker import Worker

T0 = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


def cart_added(event_id: str, customer_id: str, sku: str = "S1") -> dict[str, Any]:
    return {
        "type": "cart.item_added",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": "2026-11-01T10:00:00Z",
        "cart_id": f"k-{customer_id}",
        "sku": sku,
        "unit_price": "5.00",
        "currency": "EUR",
    }


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def _has(store: ProfileStore, customer_id: str) -> bool:
    # Until the follower's first write the customer has no document at all.
    try:
        return "carts" in store.profile(customer_id, ["carts"]).sections
    except CustomerNotFound:
        return False


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(settings: Settings, clock: Clock) -> Iterator[ProfileStore]:
    with open_store(settings, clock=clock) as opened:
        yield opened


# --- runs and poison events -------------------------------------------------------------


def test_a_refresh_records_its_run_per_dataset(store: ProfileStore, clock: Clock) -> None:
    store.append([cart_added("e1", "ann")])
    store.refresh(["carts", "orders"])
    run = store._journal.last_run("carts")
    assert run is not None
    assert (run.status, run.trigger, run.events_applied, run.high_water) == (
        "succeeded",
        "manual",
        1,
        1,
    )
    assert run.started_at == run.finished_at == T0
    assert store._journal.last_success("orders") is not None
    assert store._journal.last_run("social") is None


def test_a_poison_event_is_dead_lettered_and_does_not_stop_other_work(
    store: ProfileStore,
) -> None:
    store.append(
        [
            cart_added("a1", "ann"),
            cart_added("b1", "bob"),
            cart_added("a2", "ann", "S2"),
            cart_added("b2", "bob", "S2"),
            {
                **cart_added("i1", "ann"),
                "type": "identifier.seen",
                "kind": "email",
                "value": "ann@example.com",
                "cart_id": None,
                "sku": None,
                "unit_price": None,
                "currency": None,
            }
            and {
                "type": "identifier.seen",
                "event_id": "i1",
                "customer_id": "ann",
                "occurred_at": "2026-11-01T10:00:00Z",
                "kind": "email",
                "value": "ann@example.com",
            },
        ]
    )
    poison(store, "carts", {"a1"})
    report = store.refresh()
    assert report.dead_letters["carts"] == 1
    (letter,) = store._journal.dead_letters("carts")
    assert (letter.customer_id, letter.event_id, letter.attempts) == ("ann", "a1", 1)
    assert "ValueError: cannot fold a1" in letter.error
    # Bob's carts and Ann's other datasets went on; Ann's later cart event waits behind a1.
    assert [line.sku for line in store.profile("bob").sections["carts"].open[0].lines] == [
        "S1",
        "S2",
    ]
    assert "carts" not in store.profile("ann").sections
    assert store.find("email", "ann@example.com").customer_id == "ann"
    (row,) = [r for r in store.status() if r.dataset == "carts"]
    assert row.dead_letters == 1 and "cannot fold a1" in (row.dead_letter_error or "")
    # Still poisonous: another refresh counts another attempt on the same event.
    assert store.retry_dead_letters("carts") == (0, 1)
    assert store._journal.dead_letters("carts")[0].attempts == 2


def test_retrying_dead_letters_after_a_fix_refolds_the_parked_customer_in_order(
    store: ProfileStore, tmp_path: Path
) -> None:
    store.append([cart_added("a1", "ann"), cart_added("a2", "ann", "S2")])
    cure = poison(store, "carts", {"a1"})
    store.refresh()
    store.append([cart_added("a3", "ann", "S3")])
    store.refresh()  # a3 waits too: ann is parked
    assert not _has(store, "ann")
    cure()
    assert store.retry_dead_letters("carts") == (1, 0)
    assert store._journal.dead_letters("carts") == []
    lines = store.profile("ann").sections["carts"].open[0].lines
    assert [line.sku for line in lines] == ["S1", "S2", "S3"]
    assert store.profile("ann").freshness["carts"].position == 3


def test_a_rebuild_finishes_past_a_poison_event_and_keeps_its_dead_letter(
    store: ProfileStore,
) -> None:
    store.append([cart_added("a1", "ann"), cart_added("b1", "bob"), cart_added("b2", "bob")])
    store.refresh()
    ann = store.profile("ann")
    cure = poison(store, "carts", {"b1"})
    report = store.rebuild(["carts"])
    assert report.dead_letters == {"carts": 1}
    assert store.profile("ann") == ann  # everyone else rebuilt as before
    # bob is parked at his last good state in the new documents: none, b1 was his first.
    with pytest.raises(CustomerNotFound):
        store.profile("bob")
    (letter,) = store.dead_letters("carts")
    assert (letter.customer_id, letter.event_id, letter.topic) == ("bob", "b1", "cart.item_added")
    assert "ValueError: cannot fold b1" in letter.error
    assert next(s for s in store.status() if s.dataset == "carts").dead_letters == 1
    store.append([cart_added("b3", "bob", "S3")])
    store.refresh()  # bob's later events wait behind his letter
    assert store.dead_letters("carts") == [letter]
    cure()
    assert store.retry_dead_letters("carts") == (1, 0)
    lines = store.profile("bob").sections["carts"].open[0].lines
    assert [(line.sku, line.quantity) for line in lines] == [("S1", 2), ("S3", 1)]


def test_a_rebuild_releases_the_live_letters_of_events_it_folded(store: ProfileStore) -> None:
    store.append([cart_added("a1", "ann")])
    cure = poison(store, "carts", {"a1"})
    store.refresh()
    assert [d.customer_id for d in store.dead_letters("carts")] == ["ann"]
    cure()
    assert store.rebuild(["carts"]).dead_letters == {"carts": 0}
    assert store.dead_letters("carts") == []
    assert _has(store, "ann")


def test_a_background_rebuilds_letters_wait_apart_until_promoted(store: ProfileStore) -> None:
    store.append([cart_added("a1", "ann"), cart_added("b1", "bob")])
    store.refresh()
    poison(store, "carts", {"b1"})
    assert store.build_staging(["carts"]).dead_letters == {"carts": 1}
    # Staged letters describe the staging area: the live bob is not parked meanwhile.
    assert store.dead_letters("carts") == []
    store.append([cart_added("b2", "bob", "S2")])
    store.refresh(["carts"])
    assert len(store.profile("bob").sections["carts"].open[0].lines) == 2
    store.promote(["carts"])
    assert [(d.customer_id, d.event_id) for d in store.dead_letters("carts")] == [("bob", "b1")]
    assert store._journal.dead_letters("carts", staged=True) == []
    with pytest.raises(CustomerNotFound):
        store.profile("bob")  # the rebuilt documents, where b1 could not fold (b2 waits)


# --- locks --------------------------------------------------------------------------------


def test_a_lock_held_by_a_dead_process_expires(store: ProfileStore, clock: Clock) -> None:
    store.append([cart_added("a1", "ann")])
    ttl = store._leases.ttl
    assert store._documents.acquire_lease("dataset:carts", "gone-host:4242:x", ttl, clock())
    assert store.refresh(["carts"]).skipped_locked == ["carts"]
    with pytest.raises(LeaseHeld, match="gone-host"):
        store.retry_dead_letters("carts")
    clock.advance(seconds=ttl.total_seconds() - 1)
    assert store.refresh(["carts"]).skipped_locked == ["carts"]
    clock.advance(seconds=2)
    report = store.refresh(["carts"])
    assert report.skipped_locked == []
    assert report.events_applied["carts"] == 1


def test_two_schedulers_racing_for_a_dataset_apply_it_once(
    settings: Settings, tmp_path: Path
) -> None:
    events = list(generate(30, seed=5, events_per_customer=20))
    with open_store(settings) as first, open_store(settings) as second:
        first.append(events)
        gate = threading.Barrier(2)
        for racer in (first, second):
            slow = racer._projections["browsing"]

            def slowed(section: Any, event: Any, fold: Any = slow.fold) -> Any:
                time.sleep(0.0005)
                return fold(section, event)

            racer._projections["browsing"] = dataclasses.replace(slow, fold=slowed)
        outcomes: dict[str, Any] = {}

        def run(name: str, racer: ProfileStore) -> None:
            gate.wait()
            outcomes[name] = racer.refresh(["browsing"], trigger="schedule")

        threads = [
            threading.Thread(target=run, args=(n, s))
            for n, s in (("first", first), ("second", second))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        applied = sorted(r.events_applied.get("browsing", 0) for r in outcomes.values())
        skipped = [r.skipped_locked for r in outcomes.values()]
        assert applied[0] == 0 and applied[1] > 0
        assert sorted(skipped) == [[], ["browsing"]]
        snapshot = {
            c: first.profile(c, ["browsing"]) for c in first._documents.customer_ids("browsing")
        }
        first.rebuild(["browsing"])
        assert {c: first.profile(c, ["browsing"]).sections for c in snapshot} == {
            c: p.sections for c, p in snapshot.items()
        }


# --- the scheduler --------------------------------------------------------------------------


def test_jobs_are_built_from_config_and_catch_up_missed_runs(
    store: ProfileStore, clock: Clock
) -> None:
    worker = Worker(store)
    assert worker.realtime == ["identities", "attributes", "consents", "carts", "interests"]
    assert set(worker.scheduled) == {
        *("browsing", "email", "orders", "service", "social", "engagement", "scores")
    }
    never_ran = {j["dataset"]: j for j in worker.jobs(clock())}
    assert all(j["first_run"] == T0 and j["catch_up"] for j in never_ran.values())
    store.append([cart_added("a1", "ann")])
    store.refresh(["orders", "social", "browsing"])  # at T0, a Monday
    clock.advance(minutes=20)
    planned = {j["dataset"]: j for j in worker.jobs(clock())}
    assert planned["orders"]["first_run"] == T0 + dt.timedelta(hours=1)
    assert not planned["orders"]["catch_up"]
    assert planned["social"]["first_run"] == dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.UTC)
    assert planned["browsing"]["catch_up"]  # every 5m: missed while down
    assert planned["email"]["catch_up"]  # never ran


def test_the_worker_runs_due_datasets_and_keeps_regular_ones_waiting(
    settings: Settings,
) -> None:
    with open_store(settings) as opened:
        opened.append([cart_added("a1", "ann")])
        opened.refresh(["orders"])  # just ran: next run in an hour
        with Worker(opened, ["orders", "service", "carts"]) as worker:
            wait_until(lambda: any(d == "service" for d, _, _ in worker.reports))
            jobs = {job.id: job for job in worker.scheduler.get_jobs()}
            assert set(jobs) == {"orders", "service", "rebuild-outdated"}
            assert jobs["orders"].next_run_time > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=55)
            assert jobs["orders"].coalesce is True and jobs["orders"].max_instances == 1
            wait_until(lambda: _has(opened, "ann"))
        service_runs = [(d, t) for d, t, _ in worker.reports]
        assert service_runs == [("service", "catch-up")]
        run = opened._journal.last_run("service")
        assert run is not None and (run.trigger, run.status) == ("catch-up", "succeeded")


# --- the real-time follower -----------------------------------------------------------------


def follower_settings(settings: Settings, log_backend: dict[str, Any]) -> Settings:
    if log_backend["name"] == "sqlite":
        return settings
    return msgspec.structs.replace(
        settings,
        event_log=msgspec.structs.replace(
            settings.event_log, url=log_backend["url"], postgres_schema=log_backend["schema"]
        ),
    )


def test_the_follower_shows_new_events_in_lookups_quickly(
    settings: Settings, log_backend: dict[str, Any]
) -> None:
    with open_store(follower_settings(settings, log_backend)) as opened:
        with Follower(opened, ["carts", "identities"], poll_s=0.002) as follower:
            wait_until(lambda: follower.leased)
            for n in range(5):
                started = time.monotonic()
                opened.append([cart_added(f"e{n}", "ann", f"S{n}")])
                wait_until(
                    lambda n=n: (
                        len(opened.profile("ann").sections["carts"].open[0].lines) == n + 1
                        if _has(opened, "ann")
                        else False
                    ),
                    timeout=5.0,
                )
                assert time.monotonic() - started < 5.0
            assert follower.lag()["carts"].events_behind == 0
            # On PostgreSQL new events arrive through the library's LISTEN/NOTIFY subscription.
            assert (follower._subscription is not None) == (log_backend["name"] == "postgres")
        assert not follower.live
        run = opened._journal.last_run("carts")
        assert run is not None and (run.trigger, run.status) == ("follower", "succeeded")
        # It gave its leases back: a manual refresh is not skipped.
        assert opened.refresh(["carts"]).skipped_locked == []


def test_the_follower_catches_up_a_backlog_in_batches_and_equals_a_rebuild(
    settings: Settings, log_backend: dict[str, Any]
) -> None:
    with open_store(follower_settings(settings, log_backend)) as opened:
        opened.append(list(generate(40, seed=9, events_per_customer=25)))
        follower = Follower(opened, ["carts", "identities", "consents"], poll_s=0.002, batch=97)
        head = opened._log.head()
        lag = opened.freshness(["carts"])["carts"]
        assert lag.events_behind > 0 and lag.seconds_behind >= 0
        with follower:
            wait_until(
                lambda: all(
                    (t := opened._documents.tracking(n)) is not None and t.position == head
                    for n in follower.datasets
                )
            )
        assert follower.applied >= 1 and follower.lag()["carts"].events_behind == 0
        followed = {
            c: opened.profile(c, ["carts"]).sections
            for c in opened._documents.customer_ids("carts")
        }
        opened.rebuild(["carts"])
        assert {c: opened.profile(c, ["carts"]).sections for c in followed} == followed


def test_a_second_follower_stands_by_until_the_first_stops(settings: Settings) -> None:
    with open_store(settings) as first_store, open_store(settings) as second_store:
        first = Follower(first_store, ["carts"], poll_s=0.002)
        second = Follower(second_store, ["carts"], poll_s=0.002)
        first.start()
        wait_until(lambda: first.leased)
        second.start()
        time.sleep(0.1)
        assert not second.leased
        first.stop()
        second_store.append([cart_added("x1", "zoe")])
        wait_until(lambda: second.leased, timeout=20)
        wait_until(lambda: _has(second_store, "zoe"))
        second.stop()


def test_the_live_consumer_reads_tracking_once_per_lease_hold(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = store.live(["carts", "identities"], batch=50)
    assert live.take()
    reads: list[str] = []
    tracking = store._documents.tracking
    monkeypatch.setattr(
        store._documents, "tracking", lambda name, **kw: reads.append(name) or tracking(name, **kw)
    )
    for n in range(5):
        store.append([cart_added(f"t{n}", "ann")])
        report = live.step()
        assert report is not None and report.events_applied["carts"] == 1
    # Only the identity graph's position is read per step (is a merge waiting?).
    assert set(reads) <= {TARGET}
    reads.clear()
    live.release()
    assert live.take()
    assert [r for r in reads if r != TARGET] == ["carts", "identities"]  # a new hold reads them
    live.release()
    assert _has(store, "ann")
