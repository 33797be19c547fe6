"""Core benchmarks of profilestore: ingest, lookup and rebuild, each against a baseline.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/core.py            # full run (~2-5 minutes on 2 cores)
    .venv/bin/python bench/core.py --quick    # smaller sizes, under 2 minutes

Prints one JSON object on stdout (progress goes to stderr) and writes it to
``bench/results/core.json`` (``--output`` to change). See ``bench/README.md`` for what
every figure means and how the targets are judged.

PostgreSQL: ``PROFILESTORE_BENCH_POSTGRES_URL``, else ``PROFILESTORE_TEST_POSTGRES_URL``,
else ``scripts/postgres-up`` is run to start the private test cluster. Every run works in
fresh schemas that are dropped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "src", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import msgspec  # noqa: E402
from eventsourcing.persistence import StoredEvent  # noqa: E402
from eventsourcing.postgres import PostgresApplicationRecorder  # noqa: E402
from eventsourcing.sqlite import SQLiteApplicationRecorder  # noqa: E402

from profilestore.config import Settings, load_settings  # noqa: E402
from profilestore.eventlog import stream_id  # noqa: E402
from profilestore.events import Event, IdentifierLinked, IdentifierSeen  # noqa: E402
from profilestore.mapper import EventMapper  # noqa: E402
from profilestore.population import generate  # noqa: E402
from profilestore.postgres_log import postgres_datastore  # noqa: E402
from profilestore.sqlite_log import sqlite_datastore  # noqa: E402
from profilestore.store import ProfileStore, open_store  # noqa: E402

BATCH = 200
SEED = 7
RECORDED_AT = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)

MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "lookup_customers": 10_000,
        "lookup_events_per_customer": 10,
        "postgres_events": 40_000,
        "lookup_samples": 2_000,
        "lookup_rounds": 2,
        "rebuild_sizes": [(5_000, 20), (10_000, 20)],
        "as_of_customers": 1_000,
        "as_of_calls": 100,
    },
    "full": {
        "lookup_customers": 10_000,
        "lookup_events_per_customer": 40,
        "postgres_events": 200_000,
        "lookup_samples": 5_000,
        "lookup_rounds": 3,
        # Memory is judged on the first two (the same customers, twice the events: flat in
        # events); throughput on the last, the throughput issue's 100k customers.
        "rebuild_sizes": [(10_000, 20), (10_000, 40), (100_000, 20)],
        "as_of_customers": 2_000,
        "as_of_calls": 400,
    },
}

TARGETS = {
    "ingest_sqlite_events_per_s": (">=", 20_000),
    "ingest_postgres_events_per_s": (">=", 10_000),
    "ingest_vs_library_sqlite": (">=", 0.6),
    "ingest_vs_library_postgres": (">=", 0.6),
    "lookup_id_vs_raw": ("<=", 1.5),
    "lookup_identifier_vs_id": ("<=", 2.0),
    "rebuild_events_per_s": (">=", 60_000),
    "refresh_events_per_s": (">=", 60_000),
    "rebuild_rss_larger_vs_smaller": ("<=", 1.3),
    "verify_customers_per_s": (">=", 5_000),
    "as_of_p50_ms": ("<=", 5.0),
}


COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, limit: value >= limit,
    "<=": lambda value, limit: value <= limit,
}


def info(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def stage(name: str) -> Iterator[None]:
    info(f"{name} ...")
    started = time.perf_counter()
    yield
    info(f"{name} done in {time.perf_counter() - started:.1f}s")


# --- environment ------------------------------------------------------------------------


def sqlite_settings(home: Path) -> Settings:
    return load_settings(environ={}, home=home)


def postgres_settings(home: Path, url: str, schema: str) -> Settings:
    environ = {
        "PROFILESTORE_EVENT_LOG__URL": url,
        "PROFILESTORE_EVENT_LOG__POSTGRES_SCHEMA": schema,
    }
    return load_settings(environ=environ, home=home)


def postgres_url() -> str:
    for name in ("PROFILESTORE_BENCH_POSTGRES_URL", "PROFILESTORE_TEST_POSTGRES_URL"):
        url = os.environ.get(name)
        if url:
            info(f"PostgreSQL from {name}")
            return url
    info("no PostgreSQL URL set: starting scripts/postgres-up")
    out = subprocess.run(
        [str(REPO / "scripts" / "postgres-up")], check=True, capture_output=True, text=True
    )
    line = out.stdout.strip().splitlines()[-1]
    name, _, url = line.partition("=")
    if name != "PROFILESTORE_TEST_POSTGRES_URL" or not url:
        raise RuntimeError(f"unexpected output of scripts/postgres-up: {out.stdout!r}")
    return url


class PostgresSchemas:
    """Creates fresh schemas for this run and drops them all at the end."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        self.created: list[str] = []
        self.run = uuid.uuid4().hex[:8]

    def new(self, purpose: str) -> str:
        from psycopg.sql import SQL, Identifier

        name = f"bench_{self.run}_{purpose}"
        self.conn.execute(SQL("CREATE SCHEMA {}").format(Identifier(name)))
        self.created.append(name)
        return name

    def settle(self, name: str) -> None:
        """VACUUM (ANALYZE) every table of schema ``name``, as autovacuum does some time
        after a bulk insert: the first reader of new rows otherwise pays for setting their
        hint bits (and timing it would charge whichever configuration reads first)."""
        from psycopg.sql import SQL, Identifier

        tables = self.conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (name,)
        ).fetchall()
        for (table,) in tables:
            self.conn.execute(
                SQL("VACUUM (ANALYZE) {}.{}").format(Identifier(name), Identifier(table))
            )

    def server_version(self) -> str:
        row = self.conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"

    def close(self) -> None:
        from psycopg.sql import SQL, Identifier

        for name in self.created:
            self.conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(name)))
        self.created.clear()
        self.conn.close()


def source_state() -> dict[str, Any]:
    """The commit measured, and which source files differed from it (others edit too)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], check=False, cwd=REPO, capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "src", "projections")
    return {
        "commit": git("rev-parse", "HEAD").strip() or None,
        "changed": [line[3:] for line in changed.splitlines() if line.strip()],
    }


def machine_info(postgres_version: str | None) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    memory_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = round(int(line.split()[1]) / 1024)
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    def package(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mb": memory_mb,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgres_server": postgres_version,
        "eventsourcing": package("eventsourcing"),
        "msgspec": package("msgspec"),
        "psycopg": package("psycopg"),
        "platform": platform.platform(),
    }


# --- helpers ----------------------------------------------------------------------------


def events_for(customers: int, events_per_customer: int) -> list[Event]:
    return list(generate(customers, seed=SEED, events_per_customer=events_per_customer))


def batches(items: Sequence[Any], size: int = BATCH) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def stored_events(events: Sequence[Event]) -> list[StoredEvent]:
    """The StoredEvents our log would write for ``events`` (into an empty log)."""
    mapper = EventMapper()
    heads: dict[str, int] = {}
    streams: dict[str, uuid.UUID] = {}
    out = []
    for event in events:
        customer = event.customer_id
        version = heads.get(customer, 0) + 1
        heads[customer] = version
        oid = streams.get(customer)
        if oid is None:
            oid = streams[customer] = stream_id(customer)
        stamped = msgspec.structs.replace(event, recorded_at=RECORDED_AT)
        out.append(mapper.to_stored(oid, version, stamped))
    return out


def percentile(sorted_values: Sequence[int], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def latency_summary(samples_ns: list[int]) -> dict[str, float]:
    values = sorted(samples_ns)
    return {
        "n": len(values),
        "p50_us": round(percentile(values, 0.50) / 1000, 2),
        "p90_us": round(percentile(values, 0.90) / 1000, 2),
        "p99_us": round(percentile(values, 0.99) / 1000, 2),
        "mean_us": round(sum(values) / len(values) / 1000, 2),
    }


def append_all(store: ProfileStore, events: Sequence[Event]) -> None:
    for chunk in batches(events):
        store.append(chunk)


# --- ingest -----------------------------------------------------------------------------


def interleaved_ingest(
    ours: Callable[[Sequence[Any]], Any],
    library: Callable[[Sequence[Any]], Any],
    events: Sequence[Event],
    prepared: Sequence[StoredEvent],
) -> dict[str, Any]:
    """Time our append and the library's insert batch by batch, alternating.

    Both write the same events to fresh logs of their own, so drift (disk flush times
    on a VM, other processes) lands on both alike; which goes first alternates.
    """
    ours_ns: list[int] = []
    library_ns: list[int] = []
    perf = time.perf_counter_ns
    gc.collect()
    for i, (chunk, stored) in enumerate(zip(batches(events), batches(prepared), strict=True)):
        steps = [(ours_ns, ours, chunk), (library_ns, library, stored)]
        for samples, insert, batch in steps if i % 2 == 0 else steps[::-1]:
            t0 = perf()
            insert(batch)
            samples.append(perf() - t0)
    ours_s, library_s = sum(ours_ns) / 1e9, sum(library_ns) / 1e9
    return {
        "events": len(events),
        "batches": len(ours_ns),
        "seconds": round(ours_s, 3),
        "library_seconds": round(library_s, 3),
        "events_per_s": round(len(events) / ours_s),
        "library_events_per_s": round(len(events) / library_s),
        "batch_ms": batch_summary(ours_ns),
        "library_batch_ms": batch_summary(library_ns),
    }


def batch_summary(samples_ns: list[int]) -> dict[str, float]:
    values = sorted(samples_ns)
    return {
        "p50": round(percentile(values, 0.5) / 1e6, 3),
        "p99": round(percentile(values, 0.99) / 1e6, 3),
        "max": round(values[-1] / 1e6, 3),
    }


def library_sqlite_recorder(path: Path) -> SQLiteApplicationRecorder:
    # The datastore as the log configures it, with the library's own recorder.
    recorder = SQLiteApplicationRecorder(sqlite_datastore(str(path)))
    recorder.create_table()
    return recorder


def library_postgres_recorder(url: str, schema: str) -> PostgresApplicationRecorder:
    recorder = PostgresApplicationRecorder(postgres_datastore(url, schema=schema))
    recorder.create_table()
    return recorder


def bench_postgres(
    work: Path, schemas: PostgresSchemas, events: list[Event], prepared: list[StoredEvent]
) -> dict[str, Any]:
    store = open_store(postgres_settings(work / "pg-home", schemas.url, schemas.new("ours")))
    recorder = library_postgres_recorder(schemas.url, schemas.new("library"))
    try:
        with stage(f"ingest PostgreSQL: {len(events)} events, ours and library interleaved"):
            return interleaved_ingest(store.append, recorder.insert_events, events, prepared)
    finally:
        store.close()
        recorder.datastore.close()


# --- lookups ----------------------------------------------------------------------------


def email_of_customers(events: Sequence[Event]) -> dict[str, str]:
    """The last email each customer was seen with (as the client would send it)."""
    emails: dict[str, str] = {}
    for event in events:
        if isinstance(event, IdentifierSeen | IdentifierLinked) and event.kind == "email":
            emails[event.customer_id] = event.value
    return emails


def bench_lookups(
    store: ProfileStore, documents_path: Path, events: Sequence[Event], mode: dict[str, Any]
) -> dict[str, Any]:
    rng = random.Random(SEED)
    customers = sorted({e.customer_id for e in events})
    sample = rng.sample(customers, min(mode["lookup_samples"], len(customers)))
    emails = email_of_customers(events)
    email_of: dict[str, str] = {}
    for customer in sample:
        email = emails.get(customer)
        if email is None:
            continue
        try:
            if store.find("email", email).customer_id == customer:
                email_of[customer] = email
        except LookupError:
            continue  # shared or evicted identifier: not a fair single-profile lookup

    names = store.datasets()
    decoders = {n: msgspec.json.Decoder(store.projections[n].section) for n in names}
    raw_sql = "SELECT dataset, body FROM sections WHERE customer_id = ?"
    raw = sqlite3.connect(str(documents_path), isolation_level=None, cached_statements=256)
    # Read as the store reads: through the same memory map.
    raw.execute(f"PRAGMA mmap_size={store.settings.documents.sqlite_mmap_mb * 2**20}")

    def raw_fetch(customer: str) -> dict[str, Any]:
        rows = raw.execute(raw_sql, (customer,)).fetchall()
        return {name: decoders[name].decode(body) for name, body in rows}

    # Same bytes, same Structs: the baseline must see what the store sees.
    check = sample[0]
    assert raw_fetch(check) == store.profile(check).sections, "raw baseline differs"

    profile = store.profile
    find = store.find
    perf = time.perf_counter_ns
    by_id: list[int] = []
    by_raw: list[int] = []
    by_email: list[int] = []
    for customer in sample:  # warm-up: caches, statements, page cache
        profile(customer)
        raw_fetch(customer)
    for email in email_of.values():
        find("email", email)
    # Interleaved in time, rotating which call goes first, so that drift (other
    # processes, CPU frequency) hits the store and the baseline alike; but each call of
    # a step reads a different customer, far apart in the order, so no call finds the
    # rows another one just read in the connection's page cache.
    gc.collect()
    gc.disable()
    try:
        for round_ in range(mode["lookup_rounds"]):
            order = sample[:]
            rng.shuffle(order)
            n = len(order)
            for i in range(n):
                by_email_customer = order[(i + 2 * n // 3) % n]
                calls: list[tuple[list[int], Callable[..., Any], tuple[str, ...]]] = [
                    (by_id, profile, (order[i],)),
                    (by_raw, raw_fetch, (order[(i + n // 3) % n],)),
                ]
                if by_email_customer in email_of:
                    calls.append((by_email, find, ("email", email_of[by_email_customer])))
                shift = (i + round_) % len(calls)
                for samples, call, call_args in calls[shift:] + calls[:shift]:
                    t0 = perf()
                    call(*call_args)
                    samples.append(perf() - t0)
    finally:
        gc.enable()
        raw.close()
    section_bytes = sum(
        len(msgspec.json.encode(s)) for s in store.profile(sample[0]).sections.values()
    )
    return {
        "customers": len(customers),
        "datasets": names,
        "sample_customers": len(sample),
        "sample_emails": len(email_of),
        "rounds": mode["lookup_rounds"],
        "example_profile_bytes": section_bytes,
        "by_id": latency_summary(by_id),
        "by_identifier": latency_summary(by_email),
        "raw_fetch_decode": latency_summary(by_raw),
    }


# --- rebuild ----------------------------------------------------------------------------


def memory_status() -> dict[str, float]:
    """VmRSS, VmHWM (peak RSS) and RssAnon (anonymous memory) of this process in MB.

    VmHWM belongs to the address space, which ``exec`` replaces: unlike ``ru_maxrss``
    (kept across exec on Linux, so a child would report its parent's peak), it is the
    child's own peak.
    """
    found: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                found[key] = int(value.split()[0]) / 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        found = {"VmRSS": peak, "VmHWM": peak}
    return found


class Sampler:
    """Calls :meth:`sample` every ``interval`` seconds on a thread while the block runs."""

    interval = 0.01

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PeakAnonymous(Sampler):
    """The peak of this process's anonymous memory (``RssAnon``: heap, not file pages),
    sampled every 10 ms while the block runs.

    ``VmHWM`` counts every resident page, file pages included: with the document store's
    memory map, the pages of the file a rebuild touched count in it, though they are page
    cache the kernel takes back at will. The heap is what the projector's cache bounds.
    """

    def __init__(self) -> None:
        super().__init__()
        self.peak_mb = 0.0

    def sample(self) -> None:
        self.peak_mb = max(self.peak_mb, memory_status().get("RssAnon", 0.0))


def log_order_rebuild(store: ProfileStore) -> float:
    """The rebuild as it was before it read streams: pages in log order, sections kept
    in the bounded cache, written, loaded and written again as customers come back.
    The natural alternative to the stream-order rebuild, measured in the same run."""
    from profilestore.projector import RebuildHandler, _RebuildPass

    class LogOrderPass(_RebuildPass):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.load_stored = True
            self.read_all = True

        def pages(self, high_water: int) -> None:
            return None

    class LogOrderRebuild(RebuildHandler):
        def opened(self, runs: Any) -> LogOrderPass:
            return LogOrderPass(self, runs)

    names = store._folded(store.datasets())
    store._leases.acquire(names, required=True, kind="rebuild")
    try:
        started = time.perf_counter()
        store._consumer.run(
            store._handler(LogOrderRebuild), names, trigger="rebuild", required=True
        )
        return time.perf_counter() - started
    finally:
        store._leases.release(names, kind="rebuild")


def rebuild_child(home: str) -> None:
    """Runs in a subprocess: open the store, rebuild every dataset (streams), then again
    in log order (the alternative), report on stdout."""
    store = open_store(sqlite_settings(Path(home)))
    try:
        events = store._log.head()
        gc.collect()
        baseline = memory_status()
        with PeakAnonymous() as anonymous:
            started = time.perf_counter()
            report = store.rebuild()
            seconds = time.perf_counter() - started
        after = memory_status()
        gc.collect()
        with PeakAnonymous() as log_order_anonymous:
            log_order_seconds = log_order_rebuild(store)
        print(
            json.dumps(
                {
                    "events": events,
                    "events_read": report.events_read,
                    "seconds": seconds,
                    "log_order_seconds": log_order_seconds,
                    "baseline_rss_mb": baseline["VmRSS"],
                    "peak_rss_mb": after["VmHWM"],
                    "peak_anon_mb": anonymous.peak_mb,
                    "log_order_peak_anon_mb": log_order_anonymous.peak_mb,
                    "sections_written": sum(report.sections_written.values()),
                }
            )
        )
    finally:
        store.close()


def bench_verify(store: ProfileStore) -> dict[str, Any]:
    """verify over every customer with every core, and in one process (the alternative)."""
    runs = {}
    for name, workers in (("every_core", os.cpu_count()), ("one_process", 1)):
        gc.collect()
        with stage(f"verify every customer, {name}"):
            started = time.perf_counter()
            report = store.verify(workers=workers)
            seconds = time.perf_counter() - started
        assert report.ok, f"verify found drift: {report.drift_by_dataset}"
        runs[name] = {
            "customers": report.customers_checked,
            "seconds": round(seconds, 3),
            "customers_per_s": round(report.customers_checked / seconds),
        }
    runs["workers"] = os.cpu_count()
    return runs


def bench_as_of_customer(work: Path, mode: dict[str, Any]) -> dict[str, Any]:
    """profile(as_of=T) of a customer with 500 events (bench/audit.py's), against reading
    and decoding all its events (what as-of started with before it read only the cut)."""
    from bench.audit import (
        START,
        TICK,
        BenchClock,
        as_of_customer_events,
        bench_as_of,
        planned_batches,
    )

    population = events_for(mode["as_of_customers"], 20)
    customer, mine = as_of_customer_events()
    clock = BenchClock(START)
    store = open_store(sqlite_settings(work / "as-of-home"), clock=clock)
    try:
        with stage(f"ingest {len(population)} + {len(mine)} events for as-of"):
            for i, batch in enumerate(planned_batches(population, mine)):
                clock.now = START + i * TICK
                store.append(batch)
        return bench_as_of(store, customer, mode["as_of_calls"])
    finally:
        store.close()


def run_child(script: Path, *args: str) -> dict[str, Any]:
    """Run ``script`` in a child Python; its last stdout line is its JSON report."""
    out = subprocess.run(
        [sys.executable, str(script), *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if out.stderr.strip():
        info(f"{script.name} {args[0]} stderr: {out.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_rebuild_child(home: Path) -> dict[str, Any]:
    return run_child(Path(__file__).resolve(), "--rebuild-child", str(home))


def prepared_store(home: Path, customers: int, per_customer: int) -> int:
    events = events_for(customers, per_customer)
    store = open_store(sqlite_settings(home))
    try:
        append_all(store, events)
    finally:
        store.close()
    return len(events)


# --- main -------------------------------------------------------------------------------


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else float("nan")


def judge(
    figures: dict[str, Any],
    targets: dict[str, tuple[str, float]] = TARGETS,
    comparisons: dict[str, Callable[[float, float], bool]] = COMPARE,
) -> dict[str, Any]:
    """Each target with the figure's value and whether it passes (None: not measured)."""
    judged = {}
    for name, (op, limit) in targets.items():
        value = figures.get(name)
        passed = None if value is None else comparisons[op](value, limit)
        judged[name] = {"target": f"{op} {limit}", "value": value, "pass": passed}
    return judged


def run(mode_name: str, work: Path) -> dict[str, Any]:
    mode = MODES[mode_name]
    started = time.perf_counter()
    result: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode_name,
        "batch_size": BATCH,
        "seed": SEED,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    result["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    url = postgres_url()
    schemas = PostgresSchemas(url)
    try:
        result["machine"] = machine_info(schemas.server_version())
        result["source"] = source_state()

        # --- ingest into the embedded store, which then serves the lookups -------------
        customers = mode["lookup_customers"]
        per_customer = mode["lookup_events_per_customer"]
        with stage(f"generate {customers} customers x ~{per_customer} events"):
            events = events_for(customers, per_customer)
            prepared = stored_events(events)
        info(f"{len(events)} events")
        home = work / "lookup-home"
        store = open_store(sqlite_settings(home))
        library = library_sqlite_recorder(work / "library.sqlite")
        try:
            with stage("ingest SQLite: ours and library interleaved"):
                sqlite_ingest = interleaved_ingest(
                    store.append, library.insert_events, events, prepared
                )
        finally:
            library.datastore.close()
        with stage("refresh"):
            started_refresh = time.perf_counter()
            store.refresh()
            refresh_seconds = time.perf_counter() - started_refresh
        with stage("lookups"):
            lookups = bench_lookups(store, home / "documents.sqlite", events, mode)
        verify = bench_verify(store)
        info(f"verify: {verify}")
        store.close()
        as_of = bench_as_of_customer(work, mode)
        info(f"as of: {as_of['as_of_ms']}")

        # --- ingest into PostgreSQL -----------------------------------------------------
        n = min(mode["postgres_events"], len(events))
        postgres = bench_postgres(work, schemas, events[:n], prepared[:n])
        del prepared

        # --- rebuild, one subprocess per size --------------------------------------------
        rebuilds = []
        for size_customers, size_per_customer in mode["rebuild_sizes"]:
            if (size_customers, size_per_customer) == (customers, per_customer):
                size_home = home  # the lookup store is exactly this size: reuse it
            else:
                size_home = work / f"rebuild-{size_customers}x{size_per_customer}"
                with stage(f"prepare {size_customers} x ~{size_per_customer} for rebuild"):
                    prepared_store(size_home, size_customers, size_per_customer)
            with stage(f"rebuild {size_customers} x ~{size_per_customer} in a subprocess"):
                child = run_rebuild_child(size_home)
            rebuilds.append(
                {
                    "customers": size_customers,
                    "events_per_customer": size_per_customer,
                    "events": child["events"],
                    "seconds": round(child["seconds"], 3),
                    "events_per_s": round(child["events"] / child["seconds"]),
                    "log_order_seconds": round(child["log_order_seconds"], 3),
                    "log_order_events_per_s": round(child["events"] / child["log_order_seconds"]),
                    "log_order_peak_anon_mb": round(child["log_order_peak_anon_mb"], 1),
                    "peak_rss_mb": round(child["peak_rss_mb"], 1),
                    "peak_anon_mb": round(child["peak_anon_mb"], 1),
                    "baseline_rss_mb": round(child["baseline_rss_mb"], 1),
                    "sections_written": child["sections_written"],
                }
            )
            info(f"rebuild: {rebuilds[-1]}")
    finally:
        schemas.close()

    sqlite_rate = sqlite_ingest["events_per_s"]
    library_sqlite_rate = sqlite_ingest["library_events_per_s"]
    pg_rate = postgres["events_per_s"]
    library_pg_rate = postgres["library_events_per_s"]
    larger = rebuilds[-1]  # throughput: the largest size
    fewer, more = rebuilds[0], rebuilds[1]  # memory: more events (and customers, in quick)
    figures: dict[str, Any] = {
        "ingest_sqlite_events_per_s": round(sqlite_rate),
        "library_save_sqlite_events_per_s": round(library_sqlite_rate),
        "ingest_vs_library_sqlite": ratio(sqlite_rate, library_sqlite_rate),
        "ingest_postgres_events_per_s": round(pg_rate),
        "library_save_postgres_events_per_s": round(library_pg_rate),
        "ingest_vs_library_postgres": ratio(pg_rate, library_pg_rate),
        "lookup_id_p50_us": lookups["by_id"]["p50_us"],
        "lookup_id_p99_us": lookups["by_id"]["p99_us"],
        "lookup_identifier_p50_us": lookups["by_identifier"]["p50_us"],
        "lookup_identifier_p99_us": lookups["by_identifier"]["p99_us"],
        "raw_fetch_decode_p50_us": lookups["raw_fetch_decode"]["p50_us"],
        "raw_fetch_decode_p99_us": lookups["raw_fetch_decode"]["p99_us"],
        "lookup_id_vs_raw": ratio(
            lookups["by_id"]["p50_us"], lookups["raw_fetch_decode"]["p50_us"]
        ),
        "lookup_identifier_vs_id": ratio(
            lookups["by_identifier"]["p50_us"], lookups["by_id"]["p50_us"]
        ),
        "refresh_events_per_s": round(len(events) / refresh_seconds),
        "rebuild_events_per_s": larger["events_per_s"],
        "rebuild_log_order_events_per_s": larger["log_order_events_per_s"],
        "rebuild_vs_log_order": ratio(larger["events_per_s"], larger["log_order_events_per_s"]),
        "verify_customers_per_s": verify["every_core"]["customers_per_s"],
        "verify_one_process_customers_per_s": verify["one_process"]["customers_per_s"],
        "verify_every_core_vs_one": ratio(
            verify["every_core"]["customers_per_s"], verify["one_process"]["customers_per_s"]
        ),
        "as_of_p50_ms": as_of["as_of_ms"]["p50"],
        "as_of_read_decode_all_p50_ms": as_of["read_decode_ms"]["p50"],
        "rebuild_peak_rss_mb": larger["peak_rss_mb"],
        "rebuild_peak_anon_mb": larger["peak_anon_mb"],
        "rebuild_rss_larger_vs_smaller": ratio(more["peak_anon_mb"], fewer["peak_anon_mb"]),
    }
    result.update(figures)
    result["targets"] = judge(figures)
    result["details"] = {
        "ingest_sqlite": {
            "customers": customers,
            "events_per_customer": per_customer,
            **sqlite_ingest,
        },
        "ingest_postgres": postgres,
        "refresh": {"events": len(events), "seconds": round(refresh_seconds, 3)},
        "lookups": lookups,
        "verify": verify,
        "as_of": as_of,
    }
    result["rebuild"] = rebuilds
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def run_and_write(
    measure: Callable[[Path], dict[str, Any]],
    mode: str,
    args: argparse.Namespace,
    prefix: str,
) -> int:
    """Run a bench in ``args.workdir`` (kept) or a temporary directory (removed), then
    write its JSON to ``args.output``, print it, and say which targets were missed."""
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=False)
        work = args.workdir
    else:
        work = Path(tempfile.mkdtemp(prefix=prefix))
    info(f"mode {mode}, work dir {work}")
    try:
        result = measure(work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2, default=str)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n", encoding="utf-8")
    print(text)
    failed = [name for name, t in result["targets"].items() if t["pass"] is False]
    info(f"done in {result['elapsed_s']}s; targets missed: {', '.join(failed) or 'none'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (< 2 minutes)")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "bench" / "results" / "core.json",
        help="where to write the JSON (default: bench/results/core.json)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the stores here (default: a temp dir)")
    parser.add_argument("--rebuild-child", metavar="HOME", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rebuild_child:
        rebuild_child(args.rebuild_child)
        return 0
    os.chdir(REPO)  # the default settings file and projections are found from here
    mode = "quick" if args.quick else "full"
    return run_and_write(lambda work: run(mode, work), mode, args, "profilestore-bench-")


if __name__ == "__main__":
    sys.exit(main())
