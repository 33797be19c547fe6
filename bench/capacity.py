"""Figures for the capacity model (docs/scaling.md): bytes per profile and per event, and
how the PostgreSQL log's appends scale with concurrent writers.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/capacity.py            # full run (~10 minutes on 2 cores)
    .venv/bin/python bench/capacity.py --quick    # smaller, ~3 minutes

Prints one JSON object on stdout (progress on stderr) and writes it to
``bench/results/capacity.json`` (``--output`` to change).

1. **Bytes.** A synthetic population (the demo generator) is appended to a PostgreSQL log
   (encrypted per customer, as shipped) and folded into the MongoDB document store (every
   dataset; mongomock-ng in process: the documents are the ones a server stores, sized
   as BSON, before WiredTiger's compression and without indexes). Reported: the log's
   bytes per event (``pg_total_relation_size`` of its tables: rows, TOAST, indexes), the
   BSON bytes per profile document, per lookup entry and of the records per customer;
   the ratio is a profile's bytes over the log bytes of the events folded into it.
2. **Writers.** 1, 2 and 4 processes append batches of ``BATCH`` events (each its own
   customers) for a fixed time, into **one** log (the library serialises appends with
   a table lock, so notification ids commit in order), and, as the natural alternative
   in the same run, each into **its own** log (a schema each, the same server): the
   shape of "several logs by customer partition". The ratio one/own at the same number
   of writers is what the lock costs; a sampler counts how often a writer waits for
   a lock on the shared log's tables (``pg_locks``, not granted).

PostgreSQL: ``PROFILESTORE_BENCH_POSTGRES_URL``, else ``PROFILESTORE_TEST_POSTGRES_URL``,
else ``scripts/postgres-up``; every schema made here is dropped at the end.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "src", REPO, REPO / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import msgspec  # noqa: E402
from core import PostgresSchemas, info, machine_info, postgres_url, source_state, stage  # noqa: E402

from profilestore.config import Settings, load_settings  # noqa: E402
from profilestore.events import Event  # noqa: E402
from profilestore.population import generate  # noqa: E402

SEED = 7
BATCH = 200
KEK = "base64:" + base64.b64encode(b"profilestore-bench-capacity-kek!").decode()
MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "customers": 500,
        "per_customer": 40,
        "writer_customers": 200,
        "library_rounds": 6,
        "seconds": 6,
        "rounds": 1,
    },
    "full": {
        "customers": 800,
        "per_customer": 40,
        "writer_customers": 300,
        "library_rounds": 10,
        "seconds": 10,
        "rounds": 3,
    },
}
WRITERS = (1, 2, 4)


def settings_for(home: Path, url: str, schema: str) -> Settings:
    return load_settings(
        environ={
            "PROFILESTORE_EVENT_LOG__URL": url,
            "PROFILESTORE_EVENT_LOG__POSTGRES_SCHEMA": schema,
            "PROFILESTORE_PRIVACY__KEY_ENCRYPTION_KEY": KEK,
        },
        home=home,
    )


def schema_bytes(schemas: PostgresSchemas, schema: str) -> int:
    row = schemas.conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'm')",
        (schema,),
    ).fetchone()
    return int(row[0]) if row else 0


def spread(values: Sequence[int]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(ordered), 1),
        "p50": float(ordered[len(ordered) // 2]),
        "p99": float(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]),
        "max": float(ordered[-1]),
    }


# --- 1. bytes ---------------------------------------------------------------------------------


def measure_bytes(url: str, schemas: PostgresSchemas, mode: dict[str, Any]) -> dict[str, Any]:
    import bson
    import mongomock_ng

    from profilestore.mongo_documents import MongoDocumentStore
    from profilestore.store import ProfileStore, load_projections, load_triggers, open_log

    schema = schemas.new("bytes")
    events = list(generate(mode["customers"], seed=SEED, events_per_customer=mode["per_customer"]))
    with tempfile.TemporaryDirectory() as home:
        settings = settings_for(Path(home), url, schema)
        projections = load_projections(settings)
        client: Any = mongomock_ng.MongoClient(tz_aware=True)
        documents = MongoDocumentStore(
            client["profilestore"],
            {name: _schema(projection) for name, projection in projections.items()},
            client=client,
        )
        store = ProfileStore(
            settings, open_log(settings), documents, projections, triggers=load_triggers(settings)
        )
        with store, stage(f"bytes: {len(events):,} events into PostgreSQL and MongoDB"):
            for start in range(0, len(events), BATCH):
                store.append(events[start : start + BATCH])
            store.refresh()
            log_bytes = schema_bytes(schemas, schema)
            per_customer_events: dict[str, int] = {}
            for event in events:
                per_customer_events[event.customer_id] = (
                    per_customer_events.get(event.customer_id, 0) + 1
                )
            profiles = [len(bson.encode(d)) for d in documents.profiles.find({})]
            lookups = [len(bson.encode(d)) for d in documents.lookups.find({})]
            records = [len(bson.encode(d)) for d in documents.records.find({})]
            sections = {
                name: statistics.fmean(
                    len(bson.encode({name: d[name]}))
                    for d in documents.profiles.find({name: {"$exists": True}}, {name: 1})
                )
                for name in projections
                if documents.profiles.count_documents({name: {"$exists": True}})
            }
    bytes_per_event = log_bytes / len(events)
    profile = spread(profiles)
    events_per_profile = len(events) / len(profiles)
    return {
        "customers": mode["customers"],
        "events": len(events),
        "events_per_profile": round(events_per_profile, 1),
        "log_postgres_bytes": log_bytes,
        "log_postgres_bytes_per_event": round(bytes_per_event, 1),
        "profiles": len(profiles),
        "profile_bson_bytes": profile,
        "section_bson_bytes_mean": {k: round(v, 1) for k, v in sorted(sections.items())},
        "lookup_entries": len(lookups),
        "lookup_entries_per_profile": round(len(lookups) / len(profiles), 2),
        "lookup_entry_bson_bytes": spread(lookups) if lookups else None,
        "records": len(records),
        "record_bson_bytes_per_profile": round(sum(records) / len(profiles), 1),
        "profile_vs_its_log_bytes": round(
            profile["mean"] / (bytes_per_event * events_per_profile), 3
        ),
    }


def _schema(projection: Any) -> Any:
    from profilestore.documents import DatasetSchema

    return DatasetSchema(projection.section, keyed=projection.lookup_keys is not None)


# --- 2. concurrent writers --------------------------------------------------------------------


def writer(
    kind: str,
    index: int,
    url: str,
    schema: str,
    mode: dict[str, Any],
    start: Any,
    results: Any,
) -> None:
    """Append batches for ``mode["seconds"]`` once ``start`` is set; report the count.

    ``ours``: ``store.append`` (validation, duplicate checks, encryption, the chain);
    ``library``: the library's own insert of events mapped beforehand, so little but
    the database's work (and its lock) is timed."""
    from core import stored_events
    from eventsourcing.postgres import PostgresApplicationRecorder

    from profilestore.postgres_log import postgres_datastore
    from profilestore.store import open_store

    base = list(generate(mode["writer_customers"], seed=SEED + index, events_per_customer=20))
    deadline_s = mode["seconds"]
    with tempfile.TemporaryDirectory() as home:
        if kind == "ours":
            store = open_store(settings_for(Path(home), url, schema))
            append = store.append
            close = store.close
            batches: Any = None
        else:
            # Its table was made before the writers started: a CREATE in each would race.
            recorder = PostgresApplicationRecorder(postgres_datastore(url, schema=schema))
            append = recorder.insert_events
            close = recorder.datastore.close
            # Each round its own customers (streams from version 1): mapped before timing.
            mapped = stored_events(
                [_renamed(e, index, r) for r in range(mode["library_rounds"]) for e in base]
            )
            batches = [mapped[i : i + BATCH] for i in range(0, len(mapped), BATCH)]
        try:
            results.put(("ready", index, 0, 0.0))
            start.wait()
            began = time.perf_counter()
            appended = 0
            round_ = 0
            while time.perf_counter() - began < deadline_s:
                if batches is not None:  # the library: each mapped batch once
                    if round_ == len(batches):
                        break
                    append(batches[round_])
                    appended += len(batches[round_])
                else:
                    chunk = base[(round_ * BATCH) % len(base) :][:BATCH]
                    lap = (round_ * BATCH) // len(base)
                    batch = [_renamed(e, index, lap, same_customers=True) for e in chunk]
                    appended += append(batch).appended
                round_ += 1
            results.put(("done", index, appended, time.perf_counter() - began))
        finally:
            close()


def _renamed(event: Event, index: int, round_: int, *, same_customers: bool = False) -> Event:
    """The event for writer ``index``'s own customers, with an id new in each round.
    ``same_customers``: the customers stay across rounds (their streams grow, as a live
    log's do); else each round has its own (the library's rows, mapped from version 1)."""
    customer = f"w{index}-{event.customer_id}"
    if not same_customers:
        customer = f"w{index}-r{round_}-{event.customer_id}"
    return msgspec.structs.replace(
        event, customer_id=customer, event_id=f"w{index}-r{round_}-{event.event_id}"
    )


def lock_waits(url: str, schemas: Sequence[str], stop: threading.Event, out: list[int]) -> None:
    """Sample every 20 ms how many lock requests on ``schemas``' tables wait."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.wait(0.02):
            row = conn.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE NOT l.granted AND n.nspname = ANY(%s)",
                (list(schemas),),
            ).fetchone()
            out.append(int(row[0]) if row else 0)


def run_writers(
    kind: str, url: str, schemas: PostgresSchemas, mode: dict[str, Any], count: int, shared: bool
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    label = f"{kind}_w{count}_{'one' if shared else 'own'}_{len(schemas.created)}"
    names = [schemas.new(f"{label}_{i}") for i in range(1 if shared else count)]
    if kind == "library":
        from core import library_postgres_recorder

        for name in names:  # the table made before the writers start (no DDL race)
            library_postgres_recorder(url, name).datastore.close()
    start = context.Event()
    results = context.Queue()
    processes = [
        context.Process(
            target=writer,
            args=(kind, i, url, names[0 if shared else i], mode, start, results),
        )
        for i in range(count)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        kind, *_ = results.get(timeout=600)
        assert kind == "ready"
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=lock_waits, args=(url, names, stop, samples), daemon=True)
    load_before = os.getloadavg()[0]
    sampler.start()
    start.set()
    done = [results.get(timeout=600) for _ in processes]
    stop.set()
    sampler.join()
    for process in processes:
        process.join()
    events = sum(d[2] for d in done)
    seconds = max(d[3] for d in done)
    return {
        "writers": count,
        "logs": 1 if shared else count,
        "events": events,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds),
        "samples": len(samples),
        "share_of_samples_with_a_writer_waiting": round(
            sum(1 for s in samples if s) / max(1, len(samples)), 3
        ),
        "mean_writers_waiting": round(statistics.fmean(samples), 3) if samples else 0.0,
        "load_average_1m_before": round(load_before, 2),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }


def scaling(rounds: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Median aggregate events/s by number of writers: one log against a log each."""

    def median(label: str) -> float:
        return statistics.median(r[f"{kind}_{label}"]["events_per_s"] for r in rounds)

    def waiting(label: str) -> float:
        return statistics.median(
            r[f"{kind}_{label}"]["share_of_samples_with_a_writer_waiting"] for r in rounds
        )

    one = median("1_writers_one_log")
    table: dict[str, Any] = {}
    for n in WRITERS:
        shared = median(f"{n}_writers_one_log")
        own = one if n == 1 else median(f"{n}_writers_own_logs")
        table[f"{n}_writers"] = {
            "one_log_events_per_s": round(shared),
            "own_logs_events_per_s": round(own),
            "one_log_vs_1_writer": round(shared / one, 3),
            "one_log_vs_own_logs": round(shared / own, 3),
            "one_log_share_of_samples_with_a_writer_waiting": waiting(f"{n}_writers_one_log"),
        }
    return table


def commit_latency(url: str, schemas: PostgresSchemas) -> dict[str, float]:
    """How long a one-row commit takes on the server now (the disk's flush, mostly):
    the least time the log's lock is held per append."""
    import psycopg

    schema = schemas.new(f"commit_{len(schemas.created)}")
    times: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {schema}.probe (n int)")
        for n in range(50):
            began = time.perf_counter()
            with conn.transaction():
                conn.execute(f"INSERT INTO {schema}.probe VALUES (%s)", (n,))
            times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return {"p50": round(times[25], 2), "p90": round(times[45], 2), "max": round(times[-1], 2)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "capacity.json")
    args = parser.parse_args(argv)
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    url = postgres_url()
    schemas = PostgresSchemas(url)
    result: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode_name,
        "machine": machine_info(schemas.server_version()),
        "source": source_state(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "batch_size": BATCH,
    }
    try:
        result["bytes"] = measure_bytes(url, schemas, mode)
        # Rounds interleave the configurations, so a change of the machine's load (other
        # processes share its 2 cores and its disk) spreads over all of them alike.
        rounds: list[dict[str, Any]] = []
        for round_ in range(mode["rounds"]):
            runs: dict[str, Any] = {"commit_ms": commit_latency(url, schemas)}
            info(f"round {round_ + 1}: commit p50 {runs['commit_ms']['p50']} ms")
            for kind in ("ours", "library"):
                for count in WRITERS:
                    for shared in (True, False):
                        if count == 1 and not shared:
                            continue  # one writer into one log is the same run
                        label = f"{kind}_{count}_writers_{'one_log' if shared else 'own_logs'}"
                        with stage(f"round {round_ + 1}: {label}"):
                            runs[label] = run_writers(kind, url, schemas, mode, count, shared)
                        info(f"  {runs[label]['events_per_s']:,} events/s")
            rounds.append(runs)
        result["rounds"] = rounds
        for kind in ("ours", "library"):
            result[f"scaling_{kind}"] = scaling(rounds, kind)
        hold = result["scaling_library"]["4_writers"]
        result["lock_bound"] = {
            "why": (
                "with 4 library writers on one log a writer waits for the lock in nearly "
                "every sample, so the log is held all the time: events/s = batch / hold"
            ),
            "lock_held_ms_per_batch": round(BATCH / hold["one_log_events_per_s"] * 1000, 1),
            "commit_ms_p50_median": statistics.median(r["commit_ms"]["p50"] for r in rounds),
        }
    finally:
        schemas.close()
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
