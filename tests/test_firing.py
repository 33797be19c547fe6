"""The trigger engine: decided once, fired once, every outcome recorded, warm-up respected."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from profilestore import firing
from profilestore.config import Settings, load_settings
from profilestore.documents import DocumentStore
from profilestore.firing import (
    FIRED,
    META,
    OUTCOME,
    TARGET,
    TIMER,
    TIMER_DUE,
    TIMERS_INDEXED,
    read_firings,
)
from profilestore.pipeline import LEASE_TTL
from profilestore.store import ProfileStore, open_store

T0 = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)  # a Monday, noon UTC


class Clock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


def trigger_settings(home: Path, *names: str, **overrides: str) -> Settings:
    environ = {f"PROFILESTORE_TRIGGERS__{n.upper()}__ENABLED": "true" for n in names}
    environ.update({f"PROFILESTORE_{k.upper()}": v for k, v in overrides.items()})
    return load_settings(environ=environ, home=home)


def order(event_id: str, customer_id: str, order_id: str, total: str = "9.99") -> dict[str, Any]:
    return {
        "type": "order.placed",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": "2026-03-02T11:00:00Z",
        "order_id": order_id,
        "items": [{"sku": "S1", "name": "socks", "unit_price": total}],
        "total": total,
        "currency": "EUR",
    }


def consent(
    event_id: str, customer_id: str, *, given: bool = True, purpose: str = "marketing"
) -> dict[str, Any]:
    return {
        "type": "consent.given" if given else "consent.withdrawn",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": "2026-03-02T11:00:00Z",
        "channel": "email",
        "purpose": purpose,
    }


def signed_up(event_id: str, customer_id: str) -> dict[str, Any]:
    return {
        "type": "identifier.linked",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": "2026-03-02T11:00:00Z",
        "kind": "email",
        "value": f"{customer_id}@example.com",
    }


def statuses(store: ProfileStore, customer_id: str) -> list[tuple[str, str]]:
    return [(o.trigger, o.status) for o in store.trigger_log(customer_id)]


def records(store: ProfileStore, kind: str) -> dict[str, dict[str, Any]]:
    return store._documents.get_records(kind)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[ProfileStore]:
    settings = trigger_settings(tmp_path / "home", "receipt", "welcome")
    with open_store(settings, clock=clock) as opened:
        opened.run_triggers()  # the triggers are enabled from now on
        clock.advance(seconds=1)
        yield opened


# --- once -------------------------------------------------------------------------------


def test_every_order_gets_one_receipt_and_a_second_run_decides_nothing(
    store: ProfileStore,
) -> None:
    store.append([order("o1", "ann", "A-1"), order("o2", "ann", "A-2"), order("o3", "bob", "B-1")])
    report = store.run_triggers()
    assert report.outcomes == {"fired": 3}
    firings = {f.dedupe_key: f for f in read_firings(store._documents)}
    assert set(firings) == {"order:A-1", "order:A-2", "order:B-1"}
    receipt = firings["order:A-1"]
    assert (receipt.channel, receipt.purpose, receipt.transactional) == (
        "email",
        "transactional",
        True,
    )
    assert receipt.payload["total"] == "9.99"
    assert receipt.payload["items"] == [
        {"sku": "S1", "name": "socks", "quantity": 1, "unit_price": "9.99", "category": None}
    ]
    assert receipt.message_id.startswith("msg_")
    again = store.run_triggers()
    assert (again.events_read, again.outcomes) == (0, {})
    assert store.tally.outcomes() == {("receipt", "fired", ""): 3}  # what /metrics shows
    assert statuses(store, "ann") == [("receipt", "fired"), ("receipt", "fired")]


def test_the_same_order_sent_twice_gets_one_receipt(store: ProfileStore) -> None:
    store.append([order("o1", "ann", "A-1"), order("o1-again", "ann", "A-1")])
    assert store.run_triggers().outcomes == {"fired": 1, "duplicate": 1}
    assert len(records(store, FIRED)) == 1


def test_replaying_events_already_decided_changes_nothing(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first run records every outcome but dies before advancing its position, so
    # the second run reads every event again.
    store.append([order("o1", "ann", "A-1"), consent("c1", "ann"), signed_up("s1", "bob")])
    advance = store._documents.advance

    def crash(name: str, *args: Any, **kwargs: Any) -> None:
        if name == TARGET:
            raise RuntimeError("killed before advancing")
        advance(name, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(store._documents, "advance", crash)
        with pytest.raises(RuntimeError):
            store.run_triggers()
    counted = store.tally.outcomes()
    before = (records(store, FIRED), records(store, OUTCOME))
    assert len(before[0]) == 2  # the receipt and ann's welcome; bob has no consent
    replay = store.run_triggers()
    assert replay.events_read == 3
    assert replay.outcomes == {}
    assert (records(store, FIRED), records(store, OUTCOME)) == before
    assert store.tally.outcomes() == counted  # a replay counts nothing twice


def test_a_crash_between_the_claim_and_its_outcome_records_the_firing_once(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append([order("o1", "ann", "A-1")])
    put_records = store._documents.put_records

    def crash(written: Any) -> None:
        if any(kind == OUTCOME for kind, _, _ in written):
            raise RuntimeError("killed after the claim, before the page's records")
        put_records(written)

    with monkeypatch.context() as patch:
        patch.setattr(store._documents, "put_records", crash)
        with pytest.raises(RuntimeError):
            store.run_triggers()
    assert len(records(store, FIRED)) == 1 and not records(store, OUTCOME)
    assert store.run_triggers().outcomes == {"fired": 1}
    assert statuses(store, "ann") == [("receipt", "fired")]
    assert len(records(store, FIRED)) == 1


KILLED_ENGINE = textwrap.dedent(
    """
    import sys, time
    from profilestore.config import load_settings
    from profilestore.store import open_store

    environ = {"PROFILESTORE_TRIGGERS__RECEIPT__ENABLED": "true"}
    store = open_store(load_settings(environ=environ, home=sys.argv[1]))
    store._consumer.page_size = 10

    def progress(done, total):
        print(done, flush=True)
        time.sleep(0.02)  # slow enough to be killed in the middle

    store.run_triggers(progress=progress)
    print("finished", flush=True)
    """
)


def test_an_engine_killed_with_sigkill_then_restarted_fires_each_receipt_once(
    tmp_path: Path,
) -> None:
    settings = trigger_settings(tmp_path / "home", "receipt")
    with open_store(settings) as store:
        store.run_triggers()  # enabled before the orders arrive
        store.append([order(f"o{i}", f"c{i % 7}", f"N-{i}") for i in range(120)])
        head = store.head()
        process = subprocess.Popen(
            [sys.executable, "-c", KILLED_ENGINE, str(settings.home)],
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
        tracked = store._documents.tracking(TARGET)
        assert tracked is not None and 0 < tracked.position < head, "killed mid-run"
        assert 0 < len(records(store, FIRED)) < 120
        # The dead engine's lease lapses before another takes over.
        assert store.run_triggers().skipped_locked == [TARGET]
        later = dt.datetime.now(dt.UTC) + 2 * LEASE_TTL
        store._leases.clock = lambda: later
        assert store.run_triggers().skipped_locked == []
        firings = read_firings(store._documents)
        assert sorted(f.dedupe_key for f in firings) == sorted(f"order:N-{i}" for i in range(120))
        fired = [o for c in range(7) for o in store.trigger_log(f"c{c}") if o.status == "fired"]
        assert len(fired) == 120


# --- warm-up ------------------------------------------------------------------------------


def test_enabling_a_trigger_on_a_store_with_history_fires_nothing_old(
    tmp_path: Path, clock: Clock
) -> None:
    home = tmp_path / "home"
    with open_store(trigger_settings(home), clock=clock) as plain:
        plain.append([order("o1", "ann", "A-1"), consent("c1", "ann")])
    clock.advance(hours=1)
    with open_store(trigger_settings(home, "receipt", "welcome"), clock=clock) as store:
        assert store.run_triggers().outcomes == {}
        clock.advance(seconds=1)
        store.append([order("o2", "ann", "A-2")])
        assert store.run_triggers().outcomes == {"fired": 1}
        assert [f.dedupe_key for f in read_firings(store._documents)] == ["order:A-2"]
    # Disabled and enabled again later: its cut-off stays when it was first enabled.
    clock.advance(days=1)
    with open_store(trigger_settings(home, "receipt"), clock=clock) as store:
        store.append([order("o3", "ann", "A-3")])
        assert store.run_triggers().outcomes == {"fired": 1}


def test_since_sets_the_cut_off(tmp_path: Path, clock: Clock) -> None:
    home = tmp_path / "home"
    with open_store(trigger_settings(home), clock=clock) as plain:
        plain.append([order("o1", "ann", "A-1")])
        clock.advance(hours=2)
        plain.append([order("o2", "ann", "A-2")])
    since = (T0 + dt.timedelta(hours=1)).isoformat()
    settings = trigger_settings(home, "receipt", triggers__receipt__since=since)
    with open_store(settings, clock=clock) as store:
        assert store.run_triggers().outcomes == {"fired": 1}
        assert [f.dedupe_key for f in read_firings(store._documents)] == ["order:A-2"]


# --- consent and merged customers ---------------------------------------------------------


def test_a_sign_up_without_consent_is_suppressed_and_the_consent_welcomes(
    store: ProfileStore,
) -> None:
    store.append([signed_up("s1", "ann")])
    store.run_triggers()
    [suppressed] = store.trigger_log("ann")
    assert (suppressed.status, suppressed.reason) == (
        "suppressed",
        "no consent on record for marketing on email",
    )
    store.append([consent("c1", "ann")])
    store.run_triggers()
    assert statuses(store, "ann") == [("welcome", "suppressed"), ("welcome", "fired")]
    [welcome] = read_firings(store._documents)
    assert welcome.payload == {"first_name": None, "occasion": "consented"}


def test_a_merged_customer_is_welcomed_once(store: ProfileStore) -> None:
    store.append([consent("c1", "ann"), signed_up("s1", "web-7")])
    store.run_triggers()
    store.link("ann", "web-7", actor="test", reason="same person")
    store.refresh()
    store.append([consent("c2", "web-7")])
    store.run_triggers()
    log = store.trigger_log("web-7")
    assert [(o.customer_id, o.status) for o in log] == [
        ("ann", "fired"),
        ("web-7", "suppressed"),
        ("web-7", "duplicate"),
    ]
    assert log[-1].profile_id == store.resolve("ann") != "ann"
    assert log[-1].message_id == log[0].message_id


def test_a_receipt_ignores_a_marketing_unsubscribe_but_not_a_transactional_withdrawal(
    store: ProfileStore,
) -> None:
    store.append([consent("c1", "ann", given=False), order("o1", "ann", "A-1")])
    store.append([consent("c2", "bob", given=False, purpose="transactional")])
    store.append([order("o2", "bob", "B-1")])
    store.run_triggers()
    assert statuses(store, "ann") == [("receipt", "fired")]
    [(_, status)] = statuses(store, "bob")
    assert status == "suppressed"
    assert store.trigger_log("bob")[0].reason == "the customer withdrew transactional on email"


def test_a_decision_that_raises_is_recorded_and_the_engine_goes_on(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    entry = store.triggers["welcome"]

    def broken(*args: Any) -> None:
        raise ZeroDivisionError("oops")

    monkeypatch.setitem(
        store._triggers,
        "welcome",
        dataclasses.replace(entry, trigger=dataclasses.replace(entry.trigger, decide=broken)),
    )
    store.append([consent("c1", "ann"), order("o1", "ann", "A-1")])
    assert store.run_triggers().outcomes == {"failed": 1, "fired": 1}
    failed = store.trigger_log("ann")[0]
    assert (failed.trigger, failed.status, failed.reason) == (
        "welcome",
        "failed",
        "ZeroDivisionError: oops",
    )
    assert not records(store, TIMER)


def test_outcomes_are_json_a_reader_can_decode(store: ProfileStore) -> None:
    store.append([order("o1", "ann", "A-1")])
    store.run_triggers()
    [outcome] = store.trigger_log("ann")
    decoded = msgspec.json.decode(msgspec.json.encode(outcome))
    assert decoded["status"] == "fired" and decoded["channel"] == "email"


# --- the contact policy, through the engine -----------------------------------------------


def test_a_welcome_decided_in_quiet_hours_is_sent_when_they_end(
    tmp_path: Path, clock: Clock
) -> None:
    clock.now = dt.datetime(2026, 3, 2, 22, 30, tzinfo=dt.UTC)  # 22:30 UTC
    with open_store(trigger_settings(tmp_path / "home", "welcome"), clock=clock) as store:
        store.run_triggers()
        store.append([consent("c1", "ann"), signed_up("s1", "ann")])
        assert store.run_triggers().outcomes == {"deferred": 2}
        [deferred, _] = store.trigger_log("ann")
        assert deferred.until == dt.datetime(2026, 3, 3, 8, 0, tzinfo=dt.UTC)
        assert deferred.reason == "quiet hours in the customer's time zone"
        assert len(records(store, TIMER)) == 1  # one timer per trigger, customer and key
        clock.now = dt.datetime(2026, 3, 3, 7, 59, tzinfo=dt.UTC)
        assert store.run_triggers().outcomes == {}
        clock.now = dt.datetime(2026, 3, 3, 8, 0, tzinfo=dt.UTC)
        assert store.run_triggers().outcomes == {"fired": 1}
        assert [o.status for o in store.trigger_log("ann")] == ["deferred", "deferred", "fired"]
        assert not records(store, TIMER)
        assert len(read_firings(store._documents)) == 1
        assert store.run_triggers().outcomes == {}


def test_a_deferred_welcome_is_not_sent_if_consent_was_withdrawn_meanwhile(
    tmp_path: Path, clock: Clock
) -> None:
    clock.now = dt.datetime(2026, 3, 2, 23, 0, tzinfo=dt.UTC)
    with open_store(trigger_settings(tmp_path / "home", "welcome"), clock=clock) as store:
        store.run_triggers()
        store.append([consent("c1", "ann")])
        store.run_triggers()
        store.append([{**consent("c2", "ann", given=False), "occurred_at": "2026-03-03T01:00:00Z"}])
        clock.now = dt.datetime(2026, 3, 3, 9, 0, tzinfo=dt.UTC)
        assert store.run_triggers().outcomes == {"suppressed": 1}
        assert store.trigger_log("ann")[-1].reason == "the customer withdrew marketing on email"
        assert not read_firings(store._documents)


def test_marketing_is_capped_per_customer_and_channel(tmp_path: Path, clock: Clock) -> None:
    settings = trigger_settings(tmp_path / "home", "welcome", contact__daily_cap="0")
    with open_store(settings, clock=clock) as store:
        store.run_triggers()
        store.append([consent("c1", "ann")])
        store.run_triggers()
        [capped] = store.trigger_log("ann")
        assert (capped.status, capped.reason) == (
            "suppressed",
            "frequency cap: 0 email message(s) in 24 hours",
        )


def test_triggers_log_lists_every_outcome_as_json_lines(store: ProfileStore) -> None:
    from click.testing import CliRunner

    from profilestore.cli import main

    store.append([order("o1", "ann", "A-1"), signed_up("s1", "ann")])
    store.run_triggers()
    home = str(store.settings.home)
    environ = {"PROFILESTORE_TRIGGERS__RECEIPT__ENABLED": "true"}
    result = CliRunner().invoke(main, ["--home", home, "triggers", "log", "ann"], env=environ)
    assert result.exit_code == 0, result.output
    lines = [msgspec.json.decode(line) for line in result.stdout.splitlines()]
    assert [(o["trigger"], o["status"]) for o in lines] == [
        ("receipt", "fired"),
        ("welcome", "suppressed"),
    ]
    listed = CliRunner().invoke(main, ["--home", home, "triggers", "list"], env=environ)
    assert listed.exit_code == 0, listed.output
    catalogue = {t["trigger"]: t for t in msgspec.json.decode(listed.stdout)}
    assert catalogue["receipt"]["enabled"] and not catalogue["welcome"]["enabled"]
    assert catalogue["receipt"]["reads"] == ["order.placed"]


def test_the_worker_fires_in_real_time(tmp_path: Path) -> None:
    import time

    from profilestore.worker import Worker

    with open_store(trigger_settings(tmp_path / "home", "receipt")) as store:
        with Worker(store):
            deadline = time.monotonic() + 10
            while store.triggers_running() is None:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            store.append([order("o1", "ann", "A-1")])
            while not read_firings(store._documents):
                assert time.monotonic() < deadline, "no receipt within 10 s"
                time.sleep(0.005)
        assert [o.status for o in store.trigger_log("ann")] == ["fired"]


# --- timers: abandoned carts and birthdays ------------------------------------------------


def cart_added(event_id: str, customer_id: str, cart_id: str, at: dt.datetime) -> dict[str, Any]:
    return {
        "type": "cart.item_added",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": at.isoformat(),
        "cart_id": cart_id,
        "sku": "S1",
        "name": "socks",
        "unit_price": "5.00",
        "currency": "EUR",
    }


@pytest.fixture
def carts(tmp_path: Path, clock: Clock) -> Iterator[ProfileStore]:
    settings = trigger_settings(tmp_path / "home", "abandoned_cart", "receipt")
    with open_store(settings, clock=clock) as opened:
        opened.append([consent("c0", "ann"), consent("c1", "bob")])
        opened.run_triggers()
        clock.advance(seconds=1)
        yield opened


def test_an_idle_cart_is_recalled_once_when_its_timer_is_due(
    carts: ProfileStore, clock: Clock
) -> None:
    carts.append([cart_added("a1", "ann", "k1", clock.now)])
    assert carts.run_triggers().outcomes == {"waiting": 1}
    [waiting] = carts.trigger_log("ann")
    assert waiting.until == clock.now + dt.timedelta(minutes=60)
    clock.advance(minutes=30)
    carts.append([cart_added("a2", "ann", "k1", clock.now)])  # the timer moves
    carts.run_triggers()
    clock.advance(minutes=45)
    assert carts.run_triggers().outcomes == {}
    clock.advance(minutes=15)
    assert carts.run_triggers().outcomes == {"fired": 1}
    [recall] = read_firings(carts._documents)
    assert recall.dedupe_key == "cart:k1"
    assert recall.payload == {
        "cart_id": "k1",
        "items": [{"sku": "S1", "name": "socks", "quantity": 2}],
        "value": "10.00",
        "currency": "EUR",
    }
    clock.advance(hours=5)
    assert carts.run_triggers().outcomes == {}
    assert not records(carts, TIMER)


def test_a_cart_ordered_or_emptied_before_its_timer_is_not_recalled(
    carts: ProfileStore, clock: Clock
) -> None:
    carts.append(
        [cart_added("a1", "ann", "k1", clock.now), cart_added("b1", "bob", "k2", clock.now)]
    )
    carts.run_triggers()
    clock.advance(minutes=10)
    ordered = {**order("o1", "ann", "A-1"), "cart_id": "k1", "occurred_at": clock.now.isoformat()}
    emptied = {
        "type": "cart.cleared",
        "event_id": "b2",
        "customer_id": "bob",
        "occurred_at": clock.now.isoformat(),
        "cart_id": "k2",
    }
    carts.append([ordered, emptied])
    carts.run_triggers()
    clock.advance(hours=2)
    assert carts.run_triggers().outcomes == {"cancelled": 2}
    assert [f.trigger for f in read_firings(carts._documents)] == ["receipt"]
    assert [o.status for o in carts.trigger_log("bob")] == ["waiting", "cancelled"]
    assert not records(carts, TIMER)


class _CountingReads:
    """Counts the document reads the engine makes of the timers (wraps the store's)."""

    def __init__(self, documents: DocumentStore) -> None:
        self.read_all = documents.get_records
        self.read_after = documents.get_records_after
        self.whole: list[str] = []
        self.ranges: list[int | None] = []

    def get_records(self, kind: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        self.whole.append(kind)
        return self.read_all(kind, prefix)

    def get_records_after(
        self, kind: str, after: str, *, until: str | None = None, limit: int | None = None
    ) -> dict[str, dict[str, Any]]:
        if kind == TIMER_DUE:
            self.ranges.append(limit)
        return self.read_after(kind, after, until=until, limit=limit)


def test_the_engine_reads_timers_by_due_time_never_all_of_them(
    carts: ProfileStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40 carts left a minute apart: 40 timers, one falling due each minute.
    for n in range(40):
        carts.append(
            [consent(f"c-{n}", f"cust{n}"), cart_added(f"a{n}", f"cust{n}", f"k{n}", clock.now)]
        )
        assert carts.run_triggers().outcomes == {"waiting": 1}
        clock.advance(minutes=1)
    assert len(records(carts, TIMER)) == len(records(carts, TIMER_DUE)) == 40
    documents = carts._documents
    counting = _CountingReads(documents)
    monkeypatch.setattr(documents, "get_records", counting.get_records)
    monkeypatch.setattr(documents, "get_records_after", counting.get_records_after)
    monkeypatch.setattr(firing, "DUE_BATCH", 3)  # read 3 entries of a trigger at a time

    clock.now = T0 + dt.timedelta(seconds=1, minutes=66)  # the first 7 are due
    report = carts.run_triggers()

    assert report.outcomes == {"fired": 7}
    assert TIMER not in counting.whole  # no pass read every timer
    assert counting.ranges and set(counting.ranges) <= {1, 3}  # the first, or a batch
    assert len(records(carts, TIMER)) == len(records(carts, TIMER_DUE)) == 33
    assert sorted(f.dedupe_key for f in read_firings(documents)) == sorted(
        f"cart:k{n}" for n in range(7)
    )


def test_a_dropped_or_moved_timers_old_entry_is_removed_when_it_falls_due(
    carts: ProfileStore, clock: Clock
) -> None:
    carts.append(
        [cart_added("a1", "ann", "k1", clock.now), cart_added("b1", "bob", "k2", clock.now)]
    )
    carts.run_triggers()
    first_due = sorted(records(carts, TIMER_DUE))
    clock.advance(minutes=10)
    ordered = {**order("o1", "ann", "A-1"), "cart_id": "k1", "occurred_at": clock.now.isoformat()}
    carts.append([ordered, cart_added("b2", "bob", "k2", clock.now)])  # dropped; moved
    carts.run_triggers()
    # The entries by due time are not read when a timer is dropped or moved: they stay.
    assert set(first_due) < set(records(carts, TIMER_DUE))
    assert len(records(carts, TIMER)) == 2  # ann's cart waits for its recall to be cancelled

    clock.advance(minutes=50)  # the first entries fall due: ann's is decided, bob's moved
    assert carts.run_triggers().outcomes == {"cancelled": 1}
    [moved] = records(carts, TIMER_DUE)
    assert moved not in first_due and "\x1fbob\x1f" in moved
    clock.advance(minutes=10)
    assert carts.run_triggers().outcomes == {"fired": 1}
    assert not records(carts, TIMER) and not records(carts, TIMER_DUE)


def test_a_store_whose_timers_predate_the_index_has_them_indexed_once(
    carts: ProfileStore, clock: Clock
) -> None:
    carts.append(
        [cart_added("a1", "ann", "k1", clock.now), cart_added("b1", "bob", "k2", clock.now)]
    )
    carts.run_triggers()
    documents = carts._documents
    # As an older version left it: timers, no index, no record of having built one.
    documents.delete_records(TIMER_DUE, list(records(carts, TIMER_DUE)))
    documents.delete_record(META, TIMERS_INDEXED)

    clock.advance(minutes=61)
    assert carts.run_triggers().outcomes == {"fired": 2}

    assert documents.get_record(META, TIMERS_INDEXED) == {"version": 1}
    assert not records(carts, TIMER) and not records(carts, TIMER_DUE)


def test_a_disabled_triggers_timers_wait_for_it_in_the_index(tmp_path: Path, clock: Clock) -> None:
    home = tmp_path / "home"
    with open_store(trigger_settings(home, "abandoned_cart"), clock=clock) as store:
        store.append([consent("c0", "ann")])
        store.run_triggers()
        store.append([cart_added("a1", "ann", "k1", clock.now)])
        store.run_triggers()
    clock.advance(hours=2)
    with open_store(trigger_settings(home, "receipt"), clock=clock) as store:
        assert store.run_triggers().outcomes == {}
        assert len(records(store, TIMER)) == len(records(store, TIMER_DUE)) == 1
    clock.advance(minutes=1)
    with open_store(trigger_settings(home, "abandoned_cart"), clock=clock) as store:
        assert store.run_triggers().outcomes == {"fired": 1}


def test_a_cart_found_long_after_it_was_left_is_not_recalled(
    carts: ProfileStore, clock: Clock
) -> None:
    carts.append([cart_added("a1", "ann", "k1", clock.now - dt.timedelta(days=5))])
    assert carts.run_triggers().outcomes == {}
    assert not records(carts, TIMER)


@pytest.fixture
def birthdays(tmp_path: Path, clock: Clock) -> Iterator[ProfileStore]:
    settings = trigger_settings(tmp_path / "home", "birthday")
    with open_store(settings, clock=clock) as opened:
        yield opened


def born(event_id: str, customer_id: str, day: str) -> dict[str, Any]:
    return {
        "type": "profile.birthday_set",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": "2026-01-01T00:00:00Z",
        "birthday": day,
    }


def lives_in(event_id: str, customer_id: str, zone: str) -> dict[str, Any]:
    return {
        "type": "profile.location_set",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": "2026-01-01T00:00:00Z",
        "location": {"timezone": zone},
    }


def test_a_birthday_set_before_the_trigger_was_enabled_is_still_greeted_on_the_day(
    birthdays: ProfileStore, clock: Clock, tmp_path: Path
) -> None:
    # Set before the trigger runs for the first time: it plans ahead from history.
    birthdays.append(
        [
            consent("c0", "ann"),
            lives_in("l0", "ann", "Asia/Tokyo"),
            born("b0", "ann", "1990-03-05"),
        ]
    )
    clock.advance(minutes=1)
    assert birthdays.run_triggers().outcomes == {"waiting": 1}
    [waiting] = birthdays.trigger_log("ann")
    # 09:00 on 5 March in Tokyo is midnight UTC.
    assert waiting.until == dt.datetime(2026, 3, 5, 0, 0, tzinfo=dt.UTC)
    clock.now = dt.datetime(2026, 3, 5, 0, 0, tzinfo=dt.UTC)
    assert birthdays.run_triggers().outcomes == {"fired": 1}
    [greeting] = read_firings(birthdays._documents)
    assert greeting.dedupe_key == "birthday:2026"
    [next_year] = records(birthdays, TIMER).values()
    assert (next_year["dedupe_key"], next_year["due"]) == ("birthday:2027", "2027-03-05T00:00:00Z")
    clock.now = dt.datetime(2027, 3, 5, 0, 0, tzinfo=dt.UTC)
    assert birthdays.run_triggers().outcomes == {"fired": 1}
    assert len(read_firings(birthdays._documents)) == 2


def test_a_changed_birthday_moves_the_greeting(birthdays: ProfileStore, clock: Clock) -> None:
    birthdays.run_triggers()
    clock.advance(seconds=1)
    birthdays.append([consent("c0", "ann"), born("b1", "ann", "1990-03-10")])
    birthdays.run_triggers()
    birthdays.append([born("b2", "ann", "1990-04-01")])
    birthdays.run_triggers()
    clock.now = dt.datetime(2026, 3, 10, 9, 0, tzinfo=dt.UTC)
    assert birthdays.run_triggers().outcomes == {}  # its one timer moved to April
    clock.now = dt.datetime(2026, 4, 1, 9, 0, tzinfo=dt.UTC)
    assert birthdays.run_triggers().outcomes == {"fired": 1}
    assert [f.dedupe_key for f in read_firings(birthdays._documents)] == ["birthday:2026"]


def test_a_leap_day_birthday_is_greeted_on_the_28th_in_common_years() -> None:
    from triggers.birthday import occurrence

    assert occurrence(dt.date(2000, 2, 29), 2027) == dt.date(2027, 2, 28)
    assert occurrence(dt.date(2000, 2, 29), 2028) == dt.date(2028, 2, 29)


def test_the_engine_on_a_mongodb_document_store_fires_once_too(
    store: ProfileStore, clock: Clock
) -> None:
    import mongomock_ng

    from profilestore.mongo_documents import MongoDocumentStore

    client: Any = mongomock_ng.MongoClient(tz_aware=True)
    mongo = MongoDocumentStore(client["triggers"], store._documents.schemas, client=client)
    # A second door onto the same log (not closed: it would close the shared log).
    other = ProfileStore(
        store.settings, store._log, mongo, store.projections, clock=clock, triggers=store.triggers
    )
    other.run_triggers()
    clock.advance(seconds=1)
    other.append([order("o1", "ann", "A-1"), order("o2", "ann", "A-1"), consent("c1", "ann")])
    assert other.run_triggers().outcomes == {"fired": 2, "duplicate": 1}
    assert other.run_triggers().outcomes == {}
    assert sorted(f.dedupe_key for f in read_firings(mongo)) == ["order:A-1", "welcome"]
    mongo.close()


def test_a_message_decided_days_after_its_event_is_too_late_to_send(
    store: ProfileStore, clock: Clock
) -> None:
    store.append([order("o1", "ann", "A-1")])
    clock.advance(hours=73)  # the engine was down meanwhile
    store.append([order("o2", "ann", "A-2")])
    assert store.run_triggers().outcomes == {"suppressed": 1, "fired": 1}
    late = store.trigger_log("ann")[0]
    assert (late.status, late.reason) == (
        "suppressed",
        "decided 73 hours after the moment: too late to send",
    )


def test_a_subject_access_export_and_status_show_the_engines_work(store: ProfileStore) -> None:
    from click.testing import CliRunner

    from profilestore.cli import main

    store.append([order("o1", "ann", "A-1"), signed_up("s1", "ann")])
    store.run_triggers()
    export = store.export("ann")
    assert [(o.trigger, o.status) for o in export.trigger_outcomes] == [
        ("receipt", "fired"),
        ("welcome", "suppressed"),
    ]
    [message] = export.messages
    assert message.payload["order_id"] == "A-1"
    status = store.trigger_status()
    assert (status.enabled, status.events_behind, status.timers) == (["welcome", "receipt"], 0, 0)
    environ = {
        "PROFILESTORE_TRIGGERS__RECEIPT__ENABLED": "true",
        "PROFILESTORE_TRIGGERS__WELCOME__ENABLED": "true",
    }
    shown = CliRunner().invoke(main, ["--home", str(store.settings.home), "status"], env=environ)
    assert shown.exit_code == 0, shown.output
    assert "trigger engine (welcome, receipt): at position 2" in " ".join(shown.stdout.split())
