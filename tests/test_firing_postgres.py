"""The trigger engine on a PostgreSQL event log: decided once, fired once, through a
replay, a crash between the claim and its outcome, a SIGKILL mid-run and a second
engine; and woken in real time by the log's subscription (LISTEN/NOTIFY)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_firing import order, records, signed_up, statuses

from profilestore.config import Settings, load_settings
from profilestore.firing import FIRED, OUTCOME, TARGET, read_firings
from profilestore.pipeline import LEASE_TTL
from profilestore.store import ProfileStore, open_store

pytestmark = pytest.mark.postgres


def environ(url: str, schema: str) -> dict[str, str]:
    return {
        "PROFILESTORE_EVENT_LOG__URL": url,
        "PROFILESTORE_EVENT_LOG__POSTGRES_SCHEMA": schema,
        "PROFILESTORE_TRIGGERS__RECEIPT__ENABLED": "true",
        "PROFILESTORE_TRIGGERS__WELCOME__ENABLED": "true",
    }


@pytest.fixture
def settings(tmp_path: Path, postgres_schema: tuple[str, str]) -> Settings:
    return load_settings(environ=environ(*postgres_schema), home=tmp_path / "home")


@pytest.fixture
def store(settings: Settings) -> Iterator[ProfileStore]:
    with open_store(settings) as opened:
        assert type(opened._log.recorder).__name__.startswith("Postgres")
        opened.run_triggers()  # enabled before the events of each test
        yield opened


def test_each_order_fires_once_and_a_replay_before_the_advance_changes_nothing(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append([order(f"o{i}", f"c{i % 4}", f"N-{i}") for i in range(12)])
    store.append([order("o0-again", "c0", "N-0"), signed_up("s1", "c2")])
    advance = store._documents.advance

    def crash(name: str, *args: Any, **kwargs: Any) -> None:
        if name == TARGET:
            raise RuntimeError("killed before advancing")
        advance(name, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(store._documents, "advance", crash)
        with pytest.raises(RuntimeError):
            store.run_triggers()
    before = (records(store, FIRED), records(store, OUTCOME))
    assert store.run_triggers().outcomes == {}  # every event read again, none decided again
    assert (records(store, FIRED), records(store, OUTCOME)) == before
    assert sorted(f.dedupe_key for f in read_firings(store._documents)) == sorted(
        f"order:N-{i}" for i in range(12)
    )
    assert statuses(store, "c0")[-1] == ("receipt", "duplicate")
    assert statuses(store, "c2") == [
        ("receipt", "fired"),
        ("receipt", "fired"),
        ("receipt", "fired"),
        ("welcome", "suppressed"),  # no consent
    ]
    assert store.run_triggers().events_read == 0


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
    assert store.run_triggers().outcomes == {"fired": 1}
    assert statuses(store, "ann") == [("receipt", "fired")]
    assert len(records(store, FIRED)) == 1


KILLED_ENGINE = textwrap.dedent(
    """
    import json, sys, time
    from profilestore.config import load_settings
    from profilestore.store import open_store

    store = open_store(load_settings(environ=json.loads(sys.argv[2]), home=sys.argv[1]))
    store._consumer.page_size = 10

    def progress(done, total):
        print(done, flush=True)
        time.sleep(0.02)  # slow enough to be killed in the middle

    store.run_triggers(progress=progress)
    print("finished", flush=True)
    """
)


def test_an_engine_killed_with_sigkill_then_another_fires_each_receipt_once(
    store: ProfileStore, settings: Settings, postgres_schema: tuple[str, str]
) -> None:
    import json

    store.append([order(f"o{i}", f"c{i % 7}", f"N-{i}") for i in range(120)])
    head = store.head()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_ENGINE,
            str(settings.home),
            json.dumps(environ(*postgres_schema)),
        ],
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
    assert tracked is not None and tracked.position < head, "killed mid-run"
    assert 0 < len(records(store, FIRED)) < 120
    assert store.run_triggers().skipped_locked == [TARGET]  # the dead engine's lease
    later = dt.datetime.now(dt.UTC) + 2 * LEASE_TTL
    store._leases.clock = lambda: later
    assert store.run_triggers().skipped_locked == []
    firings = read_firings(store._documents)
    assert sorted(f.dedupe_key for f in firings) == sorted(f"order:N-{i}" for i in range(120))
    fired = [o for c in range(7) for o in store.trigger_log(f"c{c}") if o.status == "fired"]
    assert len(fired) == 120


def test_two_engines_at_once_fire_each_receipt_once(
    store: ProfileStore, settings: Settings
) -> None:
    import threading

    store.append([order(f"o{i}", f"c{i % 5}", f"N-{i}") for i in range(60)])
    with open_store(settings) as other:
        reports: list[Any] = []
        runs = [
            threading.Thread(target=lambda s=s: reports.append(s.run_triggers()))  # type: ignore[misc]
            for s in (store, other)
        ]
        for run in runs:
            run.start()
        for run in runs:
            run.join(60)
        assert len(reports) == 2
        # Whichever took the lease decided; the other skipped, or found nothing left.
        assert sum(r.outcomes.get("fired", 0) for r in reports) == 60
        assert other.run_triggers().outcomes == store.run_triggers().outcomes == {}
    assert len(records(store, FIRED)) == 60


def test_the_worker_is_woken_by_the_logs_subscription_and_fires_once(
    store: ProfileStore,
) -> None:
    from profilestore.worker import Worker

    with Worker(store) as worker:
        assert worker.follower is not None
        deadline = time.monotonic() + 20
        while store.triggers_running() is None:
            assert time.monotonic() < deadline, "the engine never started"
            time.sleep(0.01)
        store.append([order("o1", "ann", "A-1"), order("o1-again", "ann", "A-1")])
        while len(store.trigger_log("ann")) < 2:
            assert time.monotonic() < deadline, "no receipt within 20 s"
            time.sleep(0.01)
        assert worker.follower._subscription is not None  # LISTEN/NOTIFY, not polling
    assert statuses(store, "ann") == [("receipt", "fired"), ("receipt", "duplicate")]
    assert len(records(store, FIRED)) == 1
