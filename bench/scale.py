"""Scale-out benchmark of profilestore: partitioned workers (issue 17).

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/scale.py            # full run (~5 minutes on 2 cores)
    .venv/bin/python bench/scale.py --quick    # smaller log, ~2 minutes

Prints one JSON object on stdout (progress on stderr) and writes it to
``bench/results/scale.json`` (``--output`` to change).

The log is PostgreSQL (a fresh schema, dropped at the end), as in a deployment where
several worker processes share it; the documents are the embedded store (one SQLite file
per configuration, shared by that configuration's processes). Every process is a real OS
process (``spawn``); they agree on time through ``CLOCK_MONOTONIC``.

1. **Rebuild** with 1, 2 and 4 processes: the first half of the log folded into empty
   documents, every dataset, ``k`` processes each refreshing one of ``k`` partitions
   (``k = 1`` is today's unpartitioned refresh: the baseline). The identity graph is
   built before the clock starts (one process keeps it, whatever ``k``).
2. **Real time** with 1, 2 and 4 workers: each configuration's documents are current with
   the first half; the second half is appended as a backlog, then ``k`` partitioned
   workers (``Worker(store, REALTIME, partitioned=True)``, what ``profilestore worker
   --partitions auto`` runs) start together and the clock stops when every partition of
   every real-time dataset has reached the head.
3. **Failover**: four workers on four partitions follow a steady load (the writer appends
   a batch every few milliseconds); one is SIGKILLed. Reported: the lag (age of the
   oldest event some partition has not applied) before and after, how long until every
   partition is held again (``lease_ttl_s`` = 5 s, the least allowed, plus a heartbeat),
   and how long until the lag is back under its level before the kill.

The full run times each worker count three times (rounds in alternating order; each
round of real time from a copy of the same documents) and reports the median round; a
speed-up is the median of each round's own ratio, measured seconds apart.

After each append the log's tables are vacuumed and analysed (as autovacuum would some
time later), so the configuration timed first does not pay alone for reading rows no one
has read yet (PostgreSQL sets their hint bits on that first read).

On a 2-core machine shared with other work, 4 processes compete for 2 cores: the
speed-up at 2 is the figure that says whether partitions parallelise. Load averages
before and after are recorded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "src", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench.core import (  # noqa: E402
    PostgresSchemas,
    info,
    machine_info,
    postgres_url,
    run_and_write,
    source_state,
    stage,
)
from profilestore.config import Settings, load_settings  # noqa: E402
from profilestore.events import Event  # noqa: E402
from profilestore.population import generate  # noqa: E402
from profilestore.store import ProfileStore, open_store  # noqa: E402

SEED = 7
REALTIME = ["identities", "attributes", "consents", "carts"]
PROCESSES = (1, 2, 4)
SPAWN = multiprocessing.get_context("spawn")
WAIT_S = 600.0
APPEND_BATCH = 500

MODES: dict[str, dict[str, Any]] = {
    "quick": {"customers": 1_500, "events_per_customer": 40, "failover_s": 14.0, "rounds": 1},
    "full": {"customers": 20_000, "events_per_customer": 40, "failover_s": 20.0, "rounds": 3},
}
"""``rounds``: how many times each worker count is timed, in alternating order; a speed-up
is the median of each round's own ratio (k processes over one, seconds apart), as the
machine's speed drifts by more than a single run can tell from a change."""
LOAD_BATCH = 20
LOAD_PERIOD_S = 0.05
"""The failover load: 20 events every 50 ms (400 events/s offered)."""


def scale_settings(home: str, url: str, schema: str, documents: str, partitions: int) -> Settings:
    return load_settings(
        environ={
            "PROFILESTORE_EVENT_LOG__URL": url,
            "PROFILESTORE_EVENT_LOG__POSTGRES_SCHEMA": schema,
            "PROFILESTORE_DOCUMENTS__URL": f"sqlite:///{documents}",
            "PROFILESTORE_SCHEDULE__PARTITIONS": str(partitions),
            "PROFILESTORE_SCHEDULE__LEASE_TTL_S": "5",
            "PROFILESTORE_SCHEDULE__HEARTBEAT_S": "1",
            "PROFILESTORE_SCHEDULE__REBUILD_OUTDATED": "false",
        },
        home=home,
    )


# --- the children -------------------------------------------------------------------------


def refresh_child(
    where: tuple[str, str, str, str, int], index: int, barrier: Any, out: Any
) -> None:
    """Refresh one partition (every customer when there is one) once the barrier opens."""
    try:
        with open_store(scale_settings(*where)) as store:
            barrier.wait(WAIT_S)
            started = time.monotonic()
            report = store.refresh(partitions=None if where[4] == 1 else [index])
            out.put(("ok", started, time.monotonic(), sum(report.events_applied.values())))
    except BaseException:
        out.put(("error", traceback.format_exc(), 0.0, 0))


def worker_child(
    where: tuple[str, str, str, str, int], opened: Any, counted: Any, out: Any
) -> None:
    """A partitioned worker of the real-time datasets, started once the barrier opens;
    runs until killed or TERMed."""
    from profilestore.worker import Worker

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with open_store(scale_settings(*where)) as store:
            opened.wait(WAIT_S)
            store.heartbeat([])  # counted by the others before anyone takes a share
            counted.wait(WAIT_S)
            started = time.monotonic()
            with Worker(store, REALTIME, partitioned=True) as worker:
                assert worker.share is not None
                out.put(("started", started, os.getpid(), worker.share.held()))
                stop.wait(WAIT_S)
    except BaseException:
        out.put(("error", traceback.format_exc(), 0, []))


# --- helpers ------------------------------------------------------------------------------


def append_all(store: ProfileStore, events: Sequence[Event]) -> None:
    for start in range(0, len(events), APPEND_BATCH):
        store.append(events[start : start + APPEND_BATCH])


def behind(store: ProfileStore, head: int) -> int:
    """The lowest position of a real-time dataset over every partition (its plain row on
    an unpartitioned store)."""
    rows = store.partition_status()
    if not rows:
        return min(f.position for f in store.freshness(REALTIME).values())
    return min(min(r.positions[d] for d in REALTIME) for r in rows)


def start_workers(where: tuple[str, str, str, str, int], count: int) -> tuple[list[Any], Any]:
    opened, counted = SPAWN.Barrier(count + 1), SPAWN.Barrier(count + 1)
    out = SPAWN.Queue()
    children = [
        SPAWN.Process(target=worker_child, args=(where, opened, counted, out)) for _ in range(count)
    ]
    for child in children:
        child.start()
    opened.wait(WAIT_S)
    counted.wait(WAIT_S)
    return children, out


def stop_workers(children: Sequence[Any]) -> None:
    for child in children:
        if child.is_alive():
            os.kill(child.pid, signal.SIGTERM)
    for child in children:
        child.join(60)
        if child.is_alive():
            child.kill()
            child.join()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the measures -------------------------------------------------------------------------


def summary(rounds: list[dict[str, Any]], events: int) -> dict[str, Any]:
    """One worker count's rounds: the last round's row, timed by the median round."""
    seconds = [r["seconds"] for r in rounds]
    middle = statistics.median(seconds)
    return {
        **rounds[-1],
        "seconds": round(middle, 3),
        "events_per_s": round(events / middle),
        "rounds_seconds": seconds,
    }


def copied(where: tuple[str, str, str, str, int], name: str) -> tuple[str, str, str, str, int]:
    """``where`` with a copy of its documents file (closed: no process has it open)."""
    documents = Path(where[3])
    target = documents.with_name(f"documents-{name}.sqlite")
    for suffix in ("", "-wal"):
        source = Path(f"{documents}{suffix}")
        if source.exists():
            shutil.copyfile(source, f"{target}{suffix}")
    return (*where[:3], str(target), where[4])


def rebuild(where: tuple[str, str, str, str, int], events: int) -> dict[str, Any]:
    count = where[4]
    with open_store(scale_settings(*where)) as store:
        store.resolve_identity(trigger="rebuild")  # the graph, before the clock starts
    barrier = SPAWN.Barrier(count)
    out = SPAWN.Queue()
    children = [
        SPAWN.Process(target=refresh_child, args=(where, i, barrier, out)) for i in range(count)
    ]
    for child in children:
        child.start()
    results = [out.get(timeout=WAIT_S) for _ in children]
    for child in children:
        child.join(WAIT_S)
    errors = [r[1] for r in results if r[0] == "error"]
    if errors:
        raise RuntimeError(errors[0])
    seconds = max(r[2] for r in results) - min(r[1] for r in results)
    return {
        "processes": count,
        "partitions": count,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds),
        "events_applied": sum(r[3] for r in results),
    }


def realtime(where: tuple[str, str, str, str, int], backlog: int) -> dict[str, Any]:
    count = where[4]
    with open_store(scale_settings(*where)) as store:
        head = store.head()
        children, out = start_workers(where, count)
        try:
            started = [out.get(timeout=WAIT_S) for _ in children]
            errors = [s[1] for s in started if s[0] == "error"]
            if errors:
                raise RuntimeError(errors[0])
            clock = min(s[1] for s in started)
            deadline = time.monotonic() + WAIT_S
            while behind(store, head) < head:
                if time.monotonic() > deadline:
                    raise RuntimeError("the workers never caught up")
                time.sleep(0.05)
            seconds = time.monotonic() - clock
            shares = sorted(len(s[3]) for s in started)
        finally:
            stop_workers(children)
    return {
        "processes": count,
        "partitions": count,
        "seconds": round(seconds, 3),
        "events_per_s": round(backlog / seconds),
        "partitions_per_worker_at_start": shares,
    }


def failover(where: tuple[str, str, str, str, int], seconds: float) -> dict[str, Any]:
    """Four workers under a steady load; one killed a third of the way in."""
    count = where[4]
    stamps: list[tuple[int, float]] = []  # (head after an append, when)
    stop = threading.Event()
    with open_store(scale_settings(*where)) as store:
        # The documents should be current: the lag measured is the load's, not a backlog's.
        head = store.head()
        behind_at_start = head - behind(store, head)
        children, out = start_workers(where, count)
        started = [out.get(timeout=WAIT_S) for _ in children]
        if any(s[0] == "error" for s in started):
            stop_workers(children)
            raise RuntimeError(next(s[1] for s in started if s[0] == "error"))
        number = 0

        def write() -> None:
            nonlocal number
            with open_store(scale_settings(*where)) as writer:
                while not stop.is_set():
                    at = dt.datetime(2026, 6, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=number)
                    batch = [
                        {
                            "type": "cart.item_added",
                            "event_id": f"load-{number}-{i}",
                            "customer_id": f"load-{(number * LOAD_BATCH + i) % 2000}",
                            "occurred_at": at.isoformat(),
                            "cart_id": "cart",
                            "sku": f"S{i}",
                            "unit_price": "1.00",
                            "currency": "EUR",
                        }
                        for i in range(LOAD_BATCH)
                    ]
                    writer.append(batch)
                    stamps.append((writer.head(), time.monotonic()))
                    number += 1
                    stop.wait(LOAD_PERIOD_S)

        writer_thread = threading.Thread(target=write)
        samples: list[tuple[float, float, int]] = []  # (when, lag s, partitions held)
        try:
            writer_thread.start()
            began = time.monotonic()
            killed_at = None
            victim = None
            while time.monotonic() - began < seconds:
                now = time.monotonic()
                if killed_at is None and now - began >= seconds / 3:
                    victim = children[0]
                    os.kill(victim.pid, signal.SIGKILL)
                    killed_at = now
                position = behind(store, 0)
                # The oldest event not applied: the first append whose head passed it.
                pending = [t for h, t in list(stamps) if h > position]
                lag = now - pending[0] if pending else 0.0
                # Held by a worker alive: the victim's leases name it until they lapse.
                held = sum(
                    1
                    for r in store.partition_status()
                    if r.holder is not None
                    and (victim is None or r.holder.split(":")[1] != str(victim.pid))
                )
                samples.append((now, lag, held))
                time.sleep(0.1)
        finally:
            stop.set()
            writer_thread.join(60)
            stop_workers(children)
    assert killed_at is not None and victim is not None
    before = [lag for t, lag, _ in samples if t < killed_at]
    after = [(t, lag, held) for t, lag, held in samples if t >= killed_at]
    normal = percentile(before, 0.99)
    lost_until = next((t for t, _, held in after if held == count), None)
    peak_at, peak = max(((t, lag) for t, lag, _ in after), key=lambda item: item[1])
    recovered = next((t for t, lag, _ in after if t > peak_at and lag <= max(normal, 0.5)), None)
    return {
        "workers": count,
        "partitions": count,
        "events_behind_at_start": behind_at_start,
        "offered_events_per_s": round(LOAD_BATCH / LOAD_PERIOD_S),
        "appended_events": number * LOAD_BATCH,
        "appended_events_per_s": round(number * LOAD_BATCH / seconds),
        "lag_p50_s_before_kill": round(percentile(before, 0.5), 3),
        "lag_p99_s_before_kill": round(normal, 3),
        "lag_max_s_after_kill": round(peak, 3),
        "partitions_held_again_after_s": (
            round(lost_until - killed_at, 3) if lost_until is not None else None
        ),
        "lag_back_under_before_level_after_s": (
            round(recovered - killed_at, 3) if recovered is not None else None
        ),
        "lease_ttl_s": 5,
        "heartbeat_s": 1,
    }


def run(mode_name: str, work: Path) -> dict[str, Any]:
    mode = MODES[mode_name]
    began = time.perf_counter()
    result: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode_name,
        "seed": SEED,
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }
    url = postgres_url()
    schemas = PostgresSchemas(url)
    try:
        result["machine"] = machine_info(schemas.server_version())
        result["source"] = source_state()
        schema = schemas.new("scale")
        home = str(work / "home")
        with stage(f"generate {mode['customers']} customers"):
            events = list(
                generate(
                    mode["customers"], seed=SEED, events_per_customer=mode["events_per_customer"]
                )
            )
        half = len(events) // 2
        first, backlog = events[:half], events[half:]
        result["events_rebuilt"] = len(first)
        result["events_backlog"] = len(backlog)
        with (
            stage(f"append {len(first)} events"),
            open_store(scale_settings(home, url, schema, str(work / "append.sqlite"), 1)) as store,
        ):
            append_all(store, first)
        schemas.settle(schema)

        rounds = mode["rounds"]

        def where_of(k: int, name: str) -> tuple[str, str, str, str, int]:
            return (home, url, schema, str(work / f"documents-{name}.sqlite"), k)

        timed: dict[int, list[dict[str, Any]]] = {k: [] for k in PROCESSES}
        for n in range(rounds):
            for k in PROCESSES if n % 2 == 0 else PROCESSES[::-1]:
                with stage(f"rebuild with {k} process(es), round {n + 1} of {rounds}"):
                    timed[k].append(rebuild(where_of(k, f"{k}-{n}"), len(first)))
                    info(f"{timed[k][-1]}")
        result["rebuild"] = [summary(timed[k], len(first)) for k in PROCESSES]
        built = {k: where_of(k, f"{k}-{rounds - 1}") for k in PROCESSES}  # the first half

        with (
            stage(f"append a backlog of {len(backlog)} events"),
            open_store(scale_settings(home, url, schema, str(work / "append.sqlite"), 1)) as store,
        ):
            append_all(store, backlog)
        schemas.settle(schema)
        timed = {k: [] for k in PROCESSES}
        current = {}  # per worker count, documents that have caught up with the backlog
        for n in range(rounds):
            for k in PROCESSES if n % 2 == 0 else PROCESSES[::-1]:
                # Every round from the same documents: a copy of those the first half built.
                current[k] = copied(built[k], f"{k}-{n}-rt")
                with stage(f"real time with {k} worker(s), round {n + 1} of {rounds}"):
                    timed[k].append(realtime(current[k], len(backlog)))
                    info(f"{timed[k][-1]}")
        result["realtime"] = [summary(timed[k], len(backlog)) for k in PROCESSES]

        with stage("failover: 4 workers, one killed"):
            result["failover"] = failover(current[4], mode["failover_s"])
            info(f"{result['failover']}")
    finally:
        schemas.close()

    def speedup(rows: list[dict[str, Any]], k: int) -> float:
        """The median over rounds of k processes' rate over one process's, same round."""
        base = next(r for r in rows if r["processes"] == 1)["rounds_seconds"]
        mine = next(r for r in rows if r["processes"] == k)["rounds_seconds"]
        return round(statistics.median(b / m for b, m in zip(base, mine, strict=True)), 2)

    result["rebuild_speedup_2"] = speedup(result["rebuild"], 2)
    result["rebuild_speedup_4"] = speedup(result["rebuild"], 4)
    result["realtime_speedup_2"] = speedup(result["realtime"], 2)
    result["realtime_speedup_4"] = speedup(result["realtime"], 4)
    result["targets"] = {
        "rebuild_speedup_2": {
            "target": "approaches 2x",
            "value": result["rebuild_speedup_2"],
            "pass": result["rebuild_speedup_2"] >= 1.6,
        },
        "realtime_speedup_2": {
            "target": "approaches 2x",
            "value": result["realtime_speedup_2"],
            "pass": result["realtime_speedup_2"] >= 1.6,
        },
    }
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    result["elapsed_s"] = round(time.perf_counter() - began, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller log (~2 minutes)")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "bench" / "results" / "scale.json",
        help="where to write the JSON (default: bench/results/scale.json)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the stores here (default: a temp dir)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    return run_and_write(lambda work: run(mode, work), mode, args, "profilestore-bench-scale-")


if __name__ == "__main__":
    sys.exit(main())
