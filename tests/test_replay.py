"""Auditors' replays: history, profiles as of a time, verification, subject export."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from poisoning import poison

from profilestore.cli import main
from profilestore.config import Settings
from profilestore.errors import CustomerNotFound, FoldFailed
from profilestore.population import generate
from profilestore.replay import FoldFailure
from profilestore.store import ProfileStore, open_store

T1 = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
T2 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T1

    def __call__(self) -> dt.datetime:
        return self.now


def population(seed: int, customers: int = 15) -> list[Any]:
    return list(generate(customers, seed=seed, events_per_customer=20))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(settings: Settings, clock: Clock) -> Iterator[ProfileStore]:
    with open_store(settings, clock=clock) as opened:
        opened.append(population(1))  # recorded at T1
        clock.now = T2
        opened.append(
            [msgspec.structs.replace(e, event_id=f"later-{e.event_id}") for e in population(2)]
        )  # recorded at T2, same customers
        opened.refresh()
        yield opened


def test_as_of_now_equals_the_refreshed_stored_document(store: ProfileStore) -> None:
    for customer_id in ("cust-0000001", "cust-0000007", "cust-0000015"):
        stored = store.profile(customer_id)
        replayed = store.profile(customer_id, as_of=T2 + dt.timedelta(hours=1))
        assert replayed.sections == stored.sections
        assert {k: v.position for k, v in replayed.freshness.items()} == {
            k: v.position for k, v in stored.freshness.items()
        }


def test_as_of_a_past_time_equals_a_store_built_from_the_events_before_it(
    store: ProfileStore, settings: Settings, tmp_path: Path
) -> None:
    earlier = msgspec.structs.replace(
        settings, store=msgspec.structs.replace(settings.store, home=str(tmp_path / "then"))
    )
    with open_store(earlier) as then:
        then.append(population(1))
        then.refresh()
        for customer_id in ("cust-0000002", "cust-0000009"):
            expected = then.profile(customer_id).sections
            replayed = store.profile(customer_id, as_of=T1 + dt.timedelta(minutes=5))
            assert replayed.sections == expected
            assert replayed.sections != store.profile(customer_id).sections
    with pytest.raises(CustomerNotFound):
        store.profile("cust-0000002", as_of=T1 - dt.timedelta(days=1))
    only = store.profile("cust-0000002", ["carts"], as_of=T2)
    assert set(only.sections) <= {"carts"}


def test_verify_passes_on_documents_that_equal_a_fold_of_the_log(store: ProfileStore) -> None:
    report = store.verify()
    assert report.ok
    assert report.customers_checked == 15
    assert report.sections_checked > 15 * 5
    assert store.verify(sample=5).customers_checked == 5


def test_verify_reports_drift_with_the_first_differing_path(
    store: ProfileStore, settings: Settings
) -> None:
    documents = Path(settings.home) / "documents.sqlite"
    with sqlite3.connect(documents) as conn:
        customer, body = conn.execute(
            "SELECT customer_id, body FROM sections WHERE dataset = 'orders' "
            "ORDER BY customer_id LIMIT 1"
        ).fetchone()
        orders = json.loads(body)
        orders["order_count"] += 1
        conn.execute(
            "UPDATE sections SET body = ? WHERE dataset = 'orders' AND customer_id = ?",
            (json.dumps(orders), customer),
        )
        conn.execute(
            "DELETE FROM sections WHERE dataset = 'browsing' AND customer_id = 'cust-0000004'"
        )
    report = store.verify()
    assert not report.ok
    assert report.drift_by_dataset == {"orders": 1, "browsing": 1}
    changed = next(d for d in report.drift if d.dataset == "orders")
    assert (changed.customer_id, changed.path) == (customer, "$.order_count")
    assert changed.stored == changed.expected + 1
    missing = next(d for d in report.drift if d.dataset == "browsing")
    assert (missing.customer_id, missing.stored) == ("cust-0000004", None)


def test_verify_in_worker_processes_reports_what_one_process_does(
    store: ProfileStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import profilestore.store
    import profilestore.verification

    # Tasks of 4 customers: 15 customers make 4 tasks for 2 processes.
    monkeypatch.setattr(profilestore.verification, "TASK", 4)
    monkeypatch.setattr(profilestore.store, "VERIFY_TASK", 4)
    with sqlite3.connect(Path(settings.home) / "documents.sqlite") as conn:
        conn.execute(
            "DELETE FROM sections WHERE dataset = 'browsing' AND customer_id = 'cust-0000004'"
        )
    # The calling process is one of the two: it checks tasks from the end while the
    # worker process starts (about a second) and takes them from the front.
    here: list[str] = []
    verify_here = store._verify

    def recording(chosen: Sequence[str], progress: Any = None) -> Any:
        here.extend(chosen)
        return verify_here(chosen, progress)

    monkeypatch.setattr(store, "_verify", recording)
    done: list[int] = []
    shared = store.verify(workers=2, progress=lambda n, total: done.append(n))
    checked_here = list(here)
    alone = store.verify(workers=1)
    assert shared == alone
    assert shared.drift_by_dataset == {"browsing": 1}
    assert done[-1] == 15 and len(done) == 4
    everyone = here[len(checked_here) :]  # what the one-process check covered, in order
    assert len(everyone) == 15
    # The last task at least is checked here (the worker takes none for its first half
    # second); how many more depends on when the worker's first task is queued.
    assert len(checked_here) > 0
    assert set(checked_here) == set(everyone[-len(checked_here) :])


def test_verify_cuts_every_worker_several_tasks_so_none_ends_alone() -> None:
    from profilestore.verification import SMALLEST_TASK, TASK, task_size

    # 10,000 customers on 2 workers: 16 tasks of 625, not 5 of 2,000 (3 for one, 2 for
    # the other: the last task ran alone on one core).
    assert task_size(10_000, 2) == 625
    assert task_size(1_000_000, 2) == TASK  # large runs: tasks of at most TASK
    assert task_size(500, 2) == SMALLEST_TASK  # small runs: a task's start stays noise
    for customers, workers in ((10_000, 2), (12_345, 3), (999, 8)):
        size = task_size(customers, workers)
        tasks = -(-customers // size)
        assert tasks >= min(workers * 8, customers // SMALLEST_TASK)


def test_a_dataset_not_refreshed_yet_is_not_drift(settings: Settings) -> None:
    with open_store(settings) as opened:
        opened.append(population(3, customers=6))
        opened.refresh(["carts", "identities"])  # the others lag, as on a weekly cadence
        opened.append(
            [
                msgspec.structs.replace(e, event_id=f"new-{e.event_id}")
                for e in population(4, customers=6)
            ]
        )  # carts lags too now
        report = opened.verify()
        assert report.ok, report.drift[:3]


def test_history_filters_by_type_and_recording_time(store: ProfileStore) -> None:
    everything = store.history("cust-0000005")
    carts = store.history("cust-0000005", types=["cart.item_added"])
    assert carts and all(e.type_name == "cart.item_added" for e in carts)
    later = store.history("cust-0000005", since=T2)
    assert later and all(e.event_id.startswith("later-") for e in later)
    assert len(store.history("cust-0000005", until=T1)) == len(everything) - len(later)


def test_export_holds_every_event_and_the_profile(store: ProfileStore) -> None:
    export = store.export("cust-0000006")
    assert export.profile == store.profile("cust-0000006")
    events = [json.loads(bytes(raw)) for raw in export.events]
    assert [e["event_id"] for e in events] == [e.event_id for e in store.history("cust-0000006")]
    with pytest.raises(CustomerNotFound):
        store.export("nobody")


def test_audit_and_verify_commands_exit_1_on_tampering(
    store: ProfileStore, settings: Settings, tmp_path: Path
) -> None:
    home = ["--home", str(settings.home)]
    runner = CliRunner()
    keygen = runner.invoke(main, ["audit", "keygen", str(tmp_path / "signer")])
    assert keygen.exit_code == 0
    digest = runner.invoke(main, [*home, "audit", "digest", "--key", str(tmp_path / "signer.key")])
    assert digest.exit_code == 0
    (tmp_path / "digest.json").write_text(digest.stdout)
    check = [
        *home,
        "audit",
        "verify",
        "--digest",
        str(tmp_path / "digest.json"),
        "--public-key",
        str(tmp_path / "signer.pub"),
    ]
    passed = runner.invoke(main, check)
    assert passed.exit_code == 0 and json.loads(passed.stdout)["ok"] is True
    assert "signature checked" in passed.stderr
    assert runner.invoke(main, [*home, "verify"]).exit_code == 0
    with sqlite3.connect(Path(settings.home) / "events.sqlite") as conn:
        (state,) = conn.execute("SELECT state FROM profilestore_events WHERE rowid = 3").fetchone()
        tampered = bytearray(state)
        tampered[-2] ^= 0x01
        conn.execute("UPDATE profilestore_events SET state = ? WHERE rowid = 3", (bytes(tampered),))
    failed = runner.invoke(main, check)
    assert failed.exit_code == 1
    assert "TAMPERED" in failed.stderr


# --- poison events ------------------------------------------------------------------------


def _first_event_of(store: ProfileStore, customer_id: str, topic_prefix: str) -> Any:
    return next(e for e in store.history(customer_id) if e.type_name.startswith(topic_prefix))


def test_verify_reports_an_event_a_fold_raises_on_and_checks_the_rest(
    store: ProfileStore,
) -> None:
    victim = _first_event_of(store, "cust-0000003", "browse.")
    poison(store, "browsing", {victim.event_id})
    report = store.verify()
    assert not report.ok
    assert report.drift == []
    (failure,) = report.failures
    assert failure == FoldFailure(
        dataset="browsing",
        customer_id="cust-0000003",
        notification_id=failure.notification_id,
        event_id=victim.event_id,
        event_type=victim.type_name,
        error="ValueError",
    )
    assert report.customers_checked == 15
    assert report.sections_checked > 15 * 3  # every other section was compared


def test_as_of_names_the_customer_and_event_a_fold_raises_on(store: ProfileStore) -> None:
    victim = _first_event_of(store, "cust-0000003", "browse.")
    poison(store, "browsing", {victim.event_id})
    with pytest.raises(FoldFailed) as raised:
        store.profile("cust-0000003", as_of=T2)
    assert raised.value.failure.event_id == victim.event_id
    message = str(raised.value)
    for part in ("cust-0000003", "'browsing'", victim.event_id, victim.type_name, "ValueError"):
        assert part in message
    # The other datasets replay; other customers too.
    others = [n for n in store.projections if n != "browsing"]
    assert store.profile("cust-0000003", others, as_of=T2).sections
    assert store.profile("cust-0000004", as_of=T2).sections["browsing"]
