"""Many processes opening one store and appending conflicting batches at once.

Marked ``stress``: outside the default run (``-m "not stress"`` in pyproject's addopts),
run by ``scripts/test`` as a second pytest invocation, so CI runs it. Each case starts its
processes once (their imports would dwarf a trial) and runs the trials in lockstep behind
a barrier: every process opens the trial's store (a new one, or one that exists), appends
batches whose streams and event ids overlap the other processes', and closes it. Then the
trial's log is read back: no process may fail to open or to append, and every event id is
stored exactly once, with gap-free versions per customer.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import time
import traceback
import uuid
from collections import Counter
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from conftest import ENABLE_POSTGRES, POSTGRES_URL, unavailable
from log_history import read_log

pytestmark = pytest.mark.stress

TRIALS = int(os.environ.get("PROFILESTORE_TEST_STRESS_TRIALS", "40"))
BATCHES = 3
BATCH = 6
CUSTOMERS = 4
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def environ(target: dict[str, str]) -> dict[str, str]:
    if target["backend"] == "sqlite":
        return {}
    return {
        "PROFILESTORE_EVENT_LOG__URL": target["url"],
        "PROFILESTORE_EVENT_LOG__POSTGRES_SCHEMA": target["schema"],
    }


def batch(trial: int, worker: int, number: int) -> list[dict[str, Any]]:
    """Events on shared customers; half of them are sent by every process too (the same
    event id for the same customer: on an encrypted log an id is unique per customer)."""
    return [
        {
            "type": "browse.page_viewed",
            "event_id": f"t{trial}-b{number}-{i}" if i % 2 else f"t{trial}-w{worker}-b{number}-{i}",
            "customer_id": f"c{i % CUSTOMERS}" if i % 2 else f"c{(worker + i) % CUSTOMERS}",
            "occurred_at": (T0 + dt.timedelta(seconds=i)).isoformat(),
            "url": "https://shop.example/",
        }
        for i in range(BATCH)
    ]


def expected_event_ids(trial: int, workers: int) -> set[str]:
    return {
        e["event_id"] for w in range(workers) for b in range(BATCHES) for e in batch(trial, w, b)
    }


def worker(number: int, targets: list[dict[str, str]], barrier: Barrier, results: Any) -> None:
    from profilestore.config import load_settings
    from profilestore.store import open_store

    for trial, target in enumerate(targets):
        barrier.wait(timeout=120)
        settings = load_settings(environ=environ(target), home=target["home"])
        try:
            store = open_store(settings)
        except Exception:
            results.put(("open", trial, traceback.format_exc(limit=3)))
            continue
        try:
            for b in range(BATCHES):
                store.append(batch(trial, number, b))
        except Exception:
            results.put(("append", trial, traceback.format_exc(limit=3)))
        finally:
            store.close()
    results.put(("done", number, ""))


def check_trial(target: dict[str, str], trial: int, workers: int) -> list[str]:
    from profilestore.config import load_settings
    from profilestore.store import open_log

    settings = load_settings(environ=environ(target), home=target["home"])
    log = open_log(settings)
    try:
        events = read_log(log, 0, 1_000_000)
    finally:
        log.close()
    problems = []
    ids = Counter(e.event.event_id for e in events)
    if set(ids) != expected_event_ids(trial, workers):
        problems.append(f"trial {trial}: lost {len(expected_event_ids(trial, workers) - set(ids))}")
    if any(count > 1 for count in ids.values()):
        problems.append(f"trial {trial}: duplicated {[i for i, c in ids.items() if c > 1][:5]}")
    versions: dict[Any, list[int]] = {}
    for e in events:
        versions.setdefault(e.stream_id, []).append(e.version)
    if any(sorted(v) != list(range(1, len(v) + 1)) for v in versions.values()):
        problems.append(f"trial {trial}: a stream's versions have gaps")
    return problems


def make_targets(
    backend: str, existing: bool, tmp_path: Path, schemas: list[str]
) -> list[dict[str, str]]:
    from profilestore.config import load_settings
    from profilestore.store import open_store

    targets = []
    for trial in range(TRIALS):
        target = {"backend": backend, "home": str(tmp_path / f"home-{trial}")}
        if backend == "postgres":
            assert POSTGRES_URL
            target |= {"url": POSTGRES_URL, "schema": schemas[trial]}
        if existing:  # created (and closed) before the processes start
            open_store(load_settings(environ=environ(target), home=target["home"])).close()
        targets.append(target)
    return targets


@pytest.fixture
def postgres_schemas() -> Any:
    """TRIALS fresh schemas on the test server, dropped afterwards."""
    if not POSTGRES_URL:
        unavailable(ENABLE_POSTGRES)
    import psycopg

    names = [f"s_{uuid.uuid4().hex[:12]}" for _ in range(TRIALS)]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f"CREATE SCHEMA {name}")
    yield names
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.mark.parametrize("workers", [4, 8])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_processes_open_and_append_conflicting_batches_without_a_failure_or_a_lost_event(
    backend: str, existing: bool, workers: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    schemas = request.getfixturevalue("postgres_schemas") if backend == "postgres" else []
    targets = make_targets(backend, existing, tmp_path, schemas)
    context = multiprocessing.get_context("spawn")  # no fork of a threaded test process
    barrier = context.Barrier(workers)
    results = context.Queue()
    processes = [
        context.Process(target=worker, args=(w, targets, barrier, results)) for w in range(workers)
    ]
    started = time.monotonic()
    for p in processes:
        p.start()
    failures: list[tuple[str, int, str]] = []
    done = 0
    while done < workers:
        kind, number, detail = results.get(timeout=300)
        if kind == "done":
            done += 1
        else:
            failures.append((kind, number, detail))
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    elapsed = time.monotonic() - started
    assert failures == [], f"{len(failures)} failed: " + failures[0][2]
    problems = [p for trial, t in enumerate(targets) for p in check_trial(t, trial, workers)]
    assert problems == []
    print(f"{TRIALS} trials of {workers} processes in {elapsed:.1f}s")
