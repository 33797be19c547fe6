"""Benchmark report: profile documents against normalised tables and fold-on-read, by scale.

The seeds claim that array-shaped documents serve a 360-degree profile faster than rows
and records, and that a pre-folded profile is "ready at the instant". This measures both
claims side by side, in one run, at growing population sizes::

    .venv/bin/python bench/report.py                  # 10k, 100k, 500k: ~30 minutes
    .venv/bin/python bench/report.py --sizes 10000,100000,1000000     # ~55 minutes
    .venv/bin/python bench/report.py --quick          # 2k and 10k customers, ~2 minutes

For each size, in a fresh work directory: the demo generator's population is written to a
file, ingested by a child process (``store.append`` in batches; events/s and peak RSS),
every dataset rebuilt by another (events/s, peak RSS), the documents copied into
normalised tables (``bench/normalised.py``) in SQLite and PostgreSQL, and then the same
random customers are read, interleaved, by every method:

- ``documents``: ``store.profile(id)`` / ``store.find("email", ...)``, the embedded store;
- ``mongodb``: the same over MongoDB, when ``PROFILESTORE_BENCH_MONGO_URI`` is set;
- ``normalised_sqlite`` / ``normalised_postgres``: the profile assembled from one table per
  dataset and per nested array (28 tables), by id, or by identifier through a key table;
- ``fold_on_read``: the customer's events read from the log and folded at request time
  (by identifier: the key resolved through the documents' key table, then folded).

Writes ``bench/results/report.json``, ``BENCHMARKS.md`` (with ``bench/report-notes.md``, the
hand-written reading of the figures, appended) and two plots in ``bench/results/``. See the
"Report" section of ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import random
import shutil
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "src", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import msgspec  # noqa: E402

from bench.audit import calibrate  # noqa: E402
from bench.core import (  # noqa: E402
    COMPARE,
    PeakAnonymous,
    PostgresSchemas,
    Sampler,
    info,
    latency_summary,
    machine_info,
    memory_status,
    postgres_url,
    run_child,
    run_rebuild_child,
    source_state,
    sqlite_settings,
    stage,
)
from bench.normalised import NormalisedPostgres, NormalisedSQLite, assert_same, stored_profiles  # noqa: E402
from profilestore.config import load_settings  # noqa: E402
from profilestore.events import AnyEvent, Event  # noqa: E402
from profilestore.population import generate  # noqa: E402
from profilestore.replay import fold_stream  # noqa: E402
from profilestore.store import ProfileStore, open_store  # noqa: E402

SEED = 7
BATCH = 500
EVENTS_PER_CUSTOMER = 20
"""The generator's ``events_per_customer`` (``--events-per-customer``; the demo's is 40):
20 keeps the default sizes within about 30 minutes on 2 cores. Every size uses the same,
so a profile's size does not change with the population, only the population does."""
SAMPLES = 2_000
ROUNDS = 2
"""Calls per method = ``ROUNDS`` x the sample, in blocks of ``BLOCK``."""
BLOCK = 100
CHECKED = 100
"""Customers whose profile every method must give identically before anything is timed."""

QUICK_SIZES = [2_000, 10_000]
DEFAULT_SIZES = [10_000, 100_000, 500_000]

CPU_FAST_MS = 17.5
""":func:`calibrate` on this VM at its fastest, for reading the CPU checks."""

RESULTS = REPO / "bench" / "results"
NOTES = REPO / "bench" / "report-notes.md"
MARKDOWN = REPO / "BENCHMARKS.md"

METHODS = (
    "documents",
    "python_api",
    "mongodb",
    "normalised_sqlite",
    "normalised_postgres",
    "fold_on_read",
)
LABELS = {
    "documents": "documents (embedded SQLite)",
    "python_api": "documents, decoded (`store.profile`)",
    "mongodb": "documents (MongoDB)",
    "normalised_sqlite": "normalised tables, SQLite",
    "normalised_postgres": "normalised tables, PostgreSQL",
    "fold_on_read": "fold on read (SQLite log)",
}
GOALS = {
    "documents_vs_normalised": (">=", 3.0),
    "documents_vs_fold_on_read": (">=", 10.0),
    "lookup_largest_vs_smallest": ("<=", 1.5),
    "rebuild_smallest_vs_largest": ("<=", 1.5),
}


# --- the population -----------------------------------------------------------------------


def write_population(path: Path, customers: int, per_customer: float) -> int:
    """The generator's events in length-prefixed msgpack batches; returns the count."""
    encoder = msgspec.msgpack.Encoder(decimal_format="string")
    events = 0
    batch: list[Event] = []
    with path.open("wb") as out:

        def flush() -> None:
            body = encoder.encode(batch)
            out.write(struct.pack("<I", len(body)))
            out.write(body)
            batch.clear()

        for event in generate(customers, seed=SEED, events_per_customer=per_customer):
            batch.append(event)
            events += 1
            if len(batch) == BATCH:
                flush()
        if batch:
            flush()
    return events


def read_population(path: Path) -> Iterator[list[Event]]:
    decoder = msgspec.msgpack.Decoder(list[AnyEvent])  # type: ignore[valid-type]
    with path.open("rb") as source:
        while header := source.read(4):
            (size,) = struct.unpack("<I", header)
            yield decoder.decode(source.read(size))


def ingest_child(home: str, population: str) -> None:
    """Runs in a subprocess: append the population file, report on stdout."""
    store = open_store(sqlite_settings(Path(home)))
    try:
        gc.collect()
        baseline = memory_status()
        events = 0
        seconds = 0.0
        with PeakAnonymous() as anonymous:
            for batch in read_population(Path(population)):
                started = time.perf_counter()
                store.append(batch)  # validated, as every caller's events are
                seconds += time.perf_counter() - started
                events += len(batch)
        print(
            json.dumps(
                {
                    "events": events,
                    "seconds": seconds,
                    "baseline_rss_mb": baseline["VmRSS"],
                    "peak_rss_mb": memory_status()["VmHWM"],
                    "peak_anon_mb": anonymous.peak_mb,
                }
            )
        )
    finally:
        store.close()


class CpuSpeed(Sampler):
    """How fast the CPU ran while a child process worked: :func:`calibrate` (ms of a fixed
    loop) every 5 s on a thread of this otherwise idle process, on the other core.

    This VM's speed moves by up to 2x for minutes at a time; a throughput is read with
    the speed it was measured at.
    """

    interval = 5.0

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(calibrate())

    def summary(self) -> dict[str, float]:
        return {"median_ms": statistics.median(self.samples), "max_ms": max(self.samples)}


# --- lookups ------------------------------------------------------------------------------


_JSON = msgspec.json.Encoder(decimal_format="string")


class Readers:
    """Every way of reading a profile, by id and by identifier, over the same customers.

    Each gives the profile as a service receives it over HTTP: the JSON of its sections,
    ``{dataset: section}``. That is the one output every method can produce, so the
    comparison measures where the data lives, not what shape a method hands back. The
    Python API's typed read (``store.profile``: sections decoded into Structs) is timed
    beside them as ``python_api``.
    """

    def __init__(self, store: ProfileStore) -> None:
        self.by_id: dict[str, Callable[[str], Any]] = {}
        self.by_identifier: dict[str, Callable[[str, str], Any]] = {}
        # Derived datasets (scores) are computed by their job, not folded at read time.
        projections = {n: p for n, p in store.projections.items() if not p.derived}
        log = store._log
        documents = store._documents
        encode = _JSON.encode

        self.add_documents("documents", store)
        self.add("python_api", store.profile, lambda email, _key: store.find("email", email))

        def fold_on_read(customer_id: str) -> bytes:
            folded = fold_stream(projections, log.customer_changes(customer_id))
            return encode({name: section for name, (section, _) in folded.items()})

        # By identifier, the key is resolved through the documents' key table: a log
        # alone has no index of identifiers.
        self.add("fold_on_read", fold_on_read, lambda _e, key: fold_on_read(documents.find(key)[0]))

    def add(
        self, name: str, by_id: Callable[[str], Any], by_identifier: Callable[[str, str], Any]
    ) -> None:
        self.by_id[name] = by_id
        self.by_identifier[name] = by_identifier

    def add_normalised(self, name: str, normalised: NormalisedSQLite | NormalisedPostgres) -> None:
        encode = _JSON.encode

        def by_id(customer_id: str) -> bytes:
            return encode(normalised.profile(customer_id))

        def by_key(_email: str, key: str) -> bytes:
            return by_id(normalised.find(key) or "")

        self.add(name, by_id, by_key)

    def add_documents(self, name: str, store: ProfileStore) -> None:
        """The stored JSON of a document store, as the HTTP API serves it."""
        documents = store._documents
        encode = _JSON.encode

        def by_id(customer_id: str) -> bytes:
            raw = documents.get_raw(customer_id)
            return encode(raw.sections if raw else None)

        self.add(name, by_id, lambda _email, key: by_id(documents.find(key)[0]))


def pick_customers(store: ProfileStore, count: int) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """A random sample of customers, and for those with an email only they hold, the
    email as a client would send it and its lookup key."""
    everyone = store._log.customers()
    sample = random.Random(SEED).sample(everyone, min(count, len(everyone)))
    emails: dict[str, tuple[str, str]] = {}
    for customer_id in sample:
        identities = store.profile(customer_id, ["identities"]).sections.get("identities")
        for identifier in identities.identifiers if identities else ():
            if identifier.kind != "email":
                continue
            if store._documents.find(identifier.key) == [customer_id]:
                emails[customer_id] = (identifier.value, identifier.key)
                break
    return sample, emails


def check_readers(
    store: ProfileStore,
    readers: Readers,
    normalised: dict[str, NormalisedSQLite | NormalisedPostgres],
    sample: Sequence[str],
    emails: dict[str, tuple[str, str]],
) -> None:
    """Before timing: every method gives the same profile for the same customers."""
    checked = list(sample[:CHECKED])
    for table in normalised.values():
        assert_same(store, table, checked)  # value for value, type for type
    for customer_id in checked:
        typed = store.profile(customer_id).sections
        expected = msgspec.json.decode(_JSON.encode(typed))
        answers = [(name, call(customer_id)) for name, call in readers.by_id.items()]
        if customer_id in emails:
            answers += [
                (f"{name} by email", call(*emails[customer_id]))
                for name, call in readers.by_identifier.items()
            ]
        for name, got in answers:
            body = got if isinstance(got, bytes) else _JSON.encode(got.sections)  # a Profile
            if msgspec.json.decode(body) != expected:
                raise AssertionError(f"{name} differs from the documents for {customer_id}")


def time_readers(
    readers: Readers, sample: Sequence[str], emails: dict[str, tuple[str, str]]
) -> dict[str, dict[str, Any]]:
    """p50/p99 of every method, in blocks of ``BLOCK`` consecutive calls over random
    customers, the blocks of all methods interleaved in rotating order.

    A block keeps one method's code hot, as in a service that only does that; calls
    interleaved one by one with the others (folds, a PostgreSQL driver) made the fastest
    method pay for everyone's evicted caches, up to 4x its own time. Interleaving the
    blocks makes drift on the machine hit every method alike. Each block reads customers
    shuffled anew, so no call finds the rows of the call before it in a cache.
    """
    calls: list[tuple[str, str, Callable[..., Any]]] = []
    for name, by_id in readers.by_id.items():
        calls.append((name, "by_id", by_id))
        calls.append((name, "by_identifier", readers.by_identifier[name]))
    arguments: dict[str, list[tuple[str, ...]]] = {
        "by_id": [(c,) for c in sample],
        "by_identifier": [emails[c] for c in sample if c in emails],
    }
    samples: dict[tuple[str, str], list[int]] = {(n, k): [] for n, k, _ in calls}
    perf = time.perf_counter_ns
    for _, kind, call in calls:  # warm-up: statements, caches
        for args in arguments[kind][:BLOCK]:
            call(*args)
    # A long-running server's heap is mostly long-lived: freeze it, so the collector
    # scans what the reads allocate, not the stores' caches (collections stay on).
    gc.collect()
    gc.freeze()
    try:
        rng = random.Random(SEED + 1)
        blocks = ROUNDS * max(1, len(sample) // BLOCK)
        for block in range(blocks):
            shift = block % len(calls)
            for name, kind, call in calls[shift:] + calls[:shift]:
                chosen = rng.sample(arguments[kind], min(BLOCK, len(arguments[kind])))
                times = samples[(name, kind)]
                for args in chosen:
                    t0 = perf()
                    call(*args)
                    times.append(perf() - t0)
    finally:
        gc.unfreeze()
    result: dict[str, dict[str, Any]] = {}
    for (name, kind), values in samples.items():
        result.setdefault(name, {})[kind] = latency_summary(values)
    return result


# --- one size -----------------------------------------------------------------------------


def child_figures(child: dict[str, Any]) -> dict[str, float]:
    """A child's rate and memory, as the report gives them."""
    return {
        "events_per_s": round(child["events"] / child["seconds"]),
        "seconds": round(child["seconds"], 2),
        "peak_rss_mb": round(child["peak_rss_mb"], 1),
        "peak_anon_mb": round(child["peak_anon_mb"], 1),
        "baseline_rss_mb": round(child["baseline_rss_mb"], 1),
    }


def mongo_settings(home: Path, uri: str, database: str) -> Any:
    base, _, _ = uri.partition("?")
    environ = {"PROFILESTORE_DOCUMENTS__URL": f"{base.rstrip('/')}/{database}"}
    return load_settings(environ=environ, home=home)


def files_mb(*paths: Path) -> float:
    """Bytes on disk, the write-ahead logs included."""
    total = 0
    for path in paths:
        for candidate in (path, Path(f"{path}-wal")):
            if candidate.exists():
                total += candidate.stat().st_size
    return round(total / 2**20, 1)


def used_mb(path: Path) -> float:
    """The pages an SQLite file uses: a rebuild's promotion frees the staging tables'
    pages, which SQLite keeps in the file for reuse rather than return (no VACUUM)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    return round((pages - free) * size / 2**20, 1)


def measure_size(
    customers: int,
    per_customer: float,
    work: Path,
    schemas: PostgresSchemas | None,
    mongo_uri: str | None,
) -> dict[str, Any]:
    home = work / f"size-{customers}"
    home.mkdir()
    result: dict[str, Any] = {"customers": customers, "events_per_customer": per_customer}
    population = home / "population.msgpack"
    with stage(f"{customers}: generate the population"):
        result["events"] = write_population(population, customers, per_customer)
    with stage(f"{customers}: ingest {result['events']} events in a subprocess"), CpuSpeed() as cpu:
        ingest = run_child(Path(__file__).resolve(), "--ingest-child", str(home), str(population))
    speed = {"ingest": cpu.summary()}
    population.unlink()
    result["ingest"] = {**child_figures(ingest), "batch": BATCH}
    with stage(f"{customers}: rebuild every dataset in a subprocess"), CpuSpeed() as cpu:
        rebuild = run_rebuild_child(home)
    speed["rebuild"] = cpu.summary()
    result["rebuild"] = {
        **child_figures(rebuild),
        "sections_written": rebuild["sections_written"],
    }
    info(f"  ingest {result['ingest']}, rebuild {result['rebuild']}")

    store = open_store(sqlite_settings(home))
    opened: list[Any] = [store]
    try:
        readers = Readers(store)
        normalised: dict[str, NormalisedSQLite | NormalisedPostgres] = {}
        loads: dict[str, float] = {}
        files = {
            "log": files_mb(home / "events.sqlite"),
            "documents": files_mb(home / "documents.sqlite"),
        }
        sizes = {
            "log": used_mb(home / "events.sqlite"),
            "documents": used_mb(home / "documents.sqlite"),
        }
        tables = NormalisedSQLite(store.projections, home / "normalised.sqlite")
        opened.append(tables)
        normalised["normalised_sqlite"] = tables
        if schemas is not None:
            pg = NormalisedPostgres(store.projections, schemas.url, schemas.new(f"n{customers}"))
            opened.append(pg)
            normalised["normalised_postgres"] = pg
        for name, table in normalised.items():
            with stage(f"{customers}: load the documents into {LABELS[name]}"):
                started = time.perf_counter()
                table.create()
                table.load(stored_profiles(store))
                loads[name] = round(time.perf_counter() - started, 1)
            if isinstance(table, NormalisedSQLite):
                files[name] = files_mb(table.path)
                sizes[name] = used_mb(table.path)
            else:
                sizes[name] = files[name] = round(table.size_mb(), 1)
            readers.add_normalised(name, table)
        if mongo_uri:
            database = f"profilestore_report_{os.getpid()}_{customers}"
            mongo = open_store(mongo_settings(home, mongo_uri, database))
            opened.append(mongo)
            with stage(f"{customers}: rebuild into MongoDB ({database})"):
                started = time.perf_counter()
                mongo.rebuild()
                loads["mongodb"] = round(time.perf_counter() - started, 1)
            readers.add("mongodb", mongo.profile, lambda email, _key: mongo.find("email", email))
        sample, emails = pick_customers(store, SAMPLES)
        with stage(f"{customers}: check every method gives the same profiles"):
            check_readers(store, readers, normalised, sample, emails)
        with stage(f"{customers}: time {len(readers.by_id)} methods x {len(sample)} customers"):
            before = calibrate()
            lookups = time_readers(readers, sample, emails)  # no sampling thread: same process
            after = calibrate()
            speed["lookups"] = {"median_ms": (before + after) / 2, "max_ms": max(before, after)}
        if mongo_uri:
            drop_mongo(mongo_uri, database)
    finally:
        for item in reversed(opened):
            item.close()
    result["lookups"] = lookups
    result["sample_customers"] = len(sample)
    result["sample_emails"] = len(emails)
    result["load_seconds"] = loads
    result["sizes_mb"] = sizes
    result["files_mb"] = files
    result["cpu_check_ms"] = speed
    for name, figures in lookups.items():
        info(
            f"  {name}: by id p50 {figures['by_id']['p50_us']} us, p99 "
            f"{figures['by_id']['p99_us']} us; by identifier p50 "
            f"{figures['by_identifier']['p50_us']} us"
        )
    shutil.rmtree(home, ignore_errors=True)
    return result


def drop_mongo(uri: str, database: str) -> None:
    import pymongo

    client: pymongo.MongoClient[Any] = pymongo.MongoClient(uri)
    try:
        client.drop_database(database)
    finally:
        client.close()


def ratios(lookups: dict[str, dict[str, Any]]) -> dict[str, float]:
    """How many times slower each method is than the embedded documents at p50 and p99
    (``<method>_<kind>_<q>``), and the alternatives against the decoded Python API read
    too (``..._vs_python_api``)."""
    out: dict[str, float] = {}
    for name, figures in lookups.items():
        for base, suffix in (("documents", ""), ("python_api", "_vs_python_api")):
            if name in ("documents", base) or (suffix and name in ("mongodb",)):
                continue
            for kind in ("by_id", "by_identifier"):
                for q in ("p50_us", "p99_us"):
                    value = figures[kind][q] / lookups[base][kind][q]
                    out[f"{name}_{kind}_{q[:3]}{suffix}"] = round(value, 2)
    return out


# --- goals, the report, plots -------------------------------------------------------------


def judge(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    smallest, largest = sizes[0], sizes[-1]
    worst: dict[str, tuple[float, str]] = {}
    for size in sizes:
        for key, value in size["ratios"].items():
            if key.endswith("_vs_python_api") or not key.endswith("_p50"):
                continue  # judged at p50 against the JSON documents; the rest is shown
            name, _, rest = key.partition("_by_")
            kind, _, q = rest.rpartition("_")
            goal = "documents_vs_fold_on_read" if name == "fold_on_read" else None
            if name.startswith("normalised_"):
                goal = "documents_vs_normalised"
            if goal is None:
                continue
            by = "email" if kind == "identifier" else kind
            where = f"{LABELS[name]}, by {by}, {q}, at {size['customers']:,} customers"
            if goal not in worst or value < worst[goal][0]:
                worst[goal] = (value, where)
    flat = {
        f"{kind.replace('_', ' ').replace('identifier', 'email')}, {q[:3]}": round(
            largest["lookups"]["documents"][kind][q] / smallest["lookups"]["documents"][kind][q],
            2,
        )
        for kind in ("by_id", "by_identifier")
        for q in ("p50_us", "p99_us")
    }
    flat_worst = max(((k, v) for k, v in flat.items() if k.endswith("p50")), key=lambda kv: kv[1])
    values = {
        **{goal: worst[goal] for goal in worst},
        "lookup_largest_vs_smallest": (flat_worst[1], f"documents {flat_worst[0]}"),
        "rebuild_smallest_vs_largest": (
            round(smallest["rebuild"]["events_per_s"] / largest["rebuild"]["events_per_s"], 2),
            f"{smallest['customers']:,} vs {largest['customers']:,} customers",
        ),
    }
    goals = {}
    for name, (op, limit) in GOALS.items():
        if name not in values:
            continue
        value, where = values[name]
        goals[name] = {
            "goal": f"{op} {limit}",
            "value": value,
            "where": where,
            "pass": COMPARE[op](value, limit),
        }
    goals["lookup_largest_vs_smallest"]["each"] = flat
    return goals


def shown(path: Path | str) -> str:
    """A path as the report records it: from the repository root when inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)


def plot(report: dict[str, Any], directory: Path) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        info("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = report["sizes"]
    customers = [s["customers"] for s in sizes]
    names = [n for n in METHODS if n in sizes[0]["lookups"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, kind, title in zip(
        axes, ("by_id", "by_identifier"), ("by customer id", "by email"), strict=True
    ):
        for name in names:
            p50 = [s["lookups"][name][kind]["p50_us"] / 1000 for s in sizes]
            p99 = [s["lookups"][name][kind]["p99_us"] / 1000 for s in sizes]
            (line,) = ax.plot(customers, p50, marker="o", label=f"{LABELS[name]} p50")
            ax.plot(customers, p99, marker="x", linestyle="--", color=line.get_color(), alpha=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("customers")
        ax.set_title(f"Profile lookup {title} (solid p50, dashed p99)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency, ms")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    latency = directory / "report-latency.png"
    fig.savefig(latency, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("ingest", "ingest"), ("rebuild", "rebuild")):
        ax.plot(customers, [s[key]["events_per_s"] for s in sizes], marker="o", label=f"{label}")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("customers")
    ax.set_ylabel("events/s")
    ax.set_title("Ingest and rebuild throughput (embedded stores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    throughput = directory / "report-throughput.png"
    fig.savefig(throughput, dpi=110)
    plt.close(fig)
    return [str(latency), str(throughput)]


def markdown(report: dict[str, Any], where: Path) -> str:
    """The report as Markdown, for a file in the directory ``where`` (links are relative)."""

    def link(path: Path | str) -> str:
        return os.path.relpath(REPO / path, where)

    machine = report["machine"]
    lines = [
        "# Benchmarks: documents vs normalised tables vs fold-on-read",
        "",
        "Generated by `python bench/report.py "
        f"--sizes {','.join(str(s['customers']) for s in report['sizes'])}` "
        f"on {report['generated_at']} at commit `{(report['source']['commit'] or '?')[:10]}` "
        f"in {report['elapsed_s'] / 60:.0f} minutes; the figures are in "
        f"[`report.json`]({link(report['output'])}), the method in "
        f"[`bench/README.md`]({link(REPO / 'bench' / 'README.md')}#report-benchreportpy).",
        "",
        f"**Machine**: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_mb']:,} MB, {machine['platform']}; Python {machine['python']}, "
        f"SQLite {machine['sqlite']}, PostgreSQL {machine['postgres_server'] or '(not run)'}, "
        f"eventsourcing {machine['eventsourcing']}, msgspec {machine['msgspec']}.",
        "",
        f"**Data**: the demo generator (`seed={SEED}`, `events_per_customer="
        f"{report['events_per_customer']}`), the same profile shape at every size. Lookups: "
        f"{SAMPLES:,} random customers (fewer at small sizes), {ROUNDS} calls each per "
        f"method, in blocks of {BLOCK} calls, the methods' blocks interleaved; by identifier "
        "= by an email only that customer holds.",
        "",
        "## Goals",
        "",
        "| goal | target | measured | where (worst case) | |",
        "|---|---|---|---|---|",
    ]
    descriptions = {
        "documents_vs_normalised": "documents faster than normalised tables (x)",
        "documents_vs_fold_on_read": "documents faster than fold-on-read (x)",
        "lookup_largest_vs_smallest": "lookup latency flat: largest / smallest size",
        "rebuild_smallest_vs_largest": "rebuild throughput flat: smallest / largest size",
    }
    for name, goal in report["goals"].items():
        mark = "met" if goal["pass"] else "**missed**"
        lines.append(
            f"| {descriptions[name]} | {goal['goal']} | {goal['value']} | {goal['where']} "
            f"| {mark} |"
        )
    for size in report["sizes"]:
        lines += [
            "",
            f"## {size['customers']:,} customers ({size['events']:,} events)",
            "",
            "| method | by id p50 | by id p99 | by email p50 | by email p99 | "
            "p50 vs documents (id / email) | p50 vs decoded |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in METHODS:
            if name not in size["lookups"]:
                continue
            by_id = size["lookups"][name]["by_id"]
            by_email = size["lookups"][name]["by_identifier"]
            r = size["ratios"]
            versus = decoded = "-"
            if name != "documents":
                versus = f"{r[f'{name}_by_id_p50']}x / {r[f'{name}_by_identifier_p50']}x"
            if f"{name}_by_id_p50_vs_python_api" in r:
                decoded = f"{r[f'{name}_by_id_p50_vs_python_api']}x"
            lines.append(
                f"| {LABELS[name]} | {by_id['p50_us']:,.0f} us | {by_id['p99_us']:,.0f} us "
                f"| {by_email['p50_us']:,.0f} us | {by_email['p99_us']:,.0f} us | {versus} "
                f"| {decoded} |"
            )
        ingest, rebuild = size["ingest"], size["rebuild"]
        disk = ", ".join(f"{k} {v:,} MB" for k, v in size["sizes_mb"].items())
        if "files_mb" in size:
            disk += f" (in use; files on disk: {size['files_mb']['documents']:,} MB documents)"
        loads = ", ".join(f"{k} {v} s" for k, v in size["load_seconds"].items())
        lines += [
            "",
            f"Ingest **{ingest['events_per_s']:,} events/s** (peak heap "
            f"{ingest['peak_anon_mb']:,} MB, peak RSS {ingest['peak_rss_mb']:,} MB); rebuild "
            f"**{rebuild['events_per_s']:,} events/s** (peak heap {rebuild['peak_anon_mb']:,} "
            f"MB, peak RSS {rebuild['peak_rss_mb']:,} MB: with the file pages the memory map "
            f"touched). On disk: {disk}. Loading the normalised copies: {loads}.",
        ]
        if "cpu_check_ms" in size:
            check = ", ".join(
                f"{stage} {v['median_ms']:.1f} ms" for stage, v in size["cpu_check_ms"].items()
            )
            lines += [
                "",
                f"CPU check while measuring (a fixed loop, lower is faster; {CPU_FAST_MS} ms "
                f"on this VM at full speed): {check}.",
            ]
    if report["plots"]:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({link(p)})" for p in report["plots"]]
    if NOTES.exists():
        lines += ["", NOTES.read_text(encoding="utf-8").strip()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", help="customers per size, comma-separated")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}")
    parser.add_argument("--output", type=Path, default=RESULTS / "report.json")
    parser.add_argument("--markdown", type=Path, default=MARKDOWN, help="where to write the report")
    parser.add_argument(
        "--events-per-customer",
        type=float,
        default=EVENTS_PER_CUSTOMER,
        help=f"the generator's mean events per customer (default {EVENTS_PER_CUSTOMER})",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip normalised PostgreSQL")
    parser.add_argument("--workdir", type=Path, help="work here (default: a temp dir)")
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: judge, plot and write the report again from --output's JSON",
    )
    parser.add_argument("--ingest-child", nargs=2, metavar=("HOME", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ingest_child:
        ingest_child(*args.ingest_child)
        return 0
    os.chdir(REPO)  # the default settings file and projections are found from here
    if args.render:
        report = json.loads(args.output.read_text(encoding="utf-8"))
        return publish(report, args.output, args.markdown)
    if args.sizes:
        sizes = sorted(int(s.replace("_", "")) for s in args.sizes.split(","))
    else:
        sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    if len(sizes) < 2 or sizes[0] < 100:
        parser.error("--sizes needs at least two sizes of 100 customers or more")
    mongo_uri = os.environ.get("PROFILESTORE_BENCH_MONGO_URI") or None
    if mongo_uri is None:
        info("PROFILESTORE_BENCH_MONGO_URI is not set: MongoDB is not measured")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="profilestore-report-"))
    work.mkdir(parents=True, exist_ok=True)
    schemas = None if args.no_postgres else PostgresSchemas(postgres_url())
    started = time.perf_counter()
    report: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(schemas.server_version() if schemas else None),
        "source": source_state(),
        "events_per_customer": args.events_per_customer,
        "samples": SAMPLES,
        "rounds": ROUNDS,
        "mongodb": bool(mongo_uri),
        "sizes": [],
    }
    try:
        for customers in sizes:
            report["sizes"].append(
                measure_size(customers, args.events_per_customer, work, schemas, mongo_uri)
            )
            info(f"{customers} done, {time.perf_counter() - started:.0f}s so far")
            # Saved after every size: a run stopped at a larger one keeps what it measured
            # (--render writes the report from it).
            report["elapsed_s"] = round(time.perf_counter() - started, 1)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    finally:
        if schemas is not None:
            schemas.close()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    return publish(report, args.output, args.markdown)


def publish(report: dict[str, Any], output: Path, markdown_path: Path) -> int:
    """Judge the goals, plot, and write the JSON and the Markdown report."""
    for size in report["sizes"]:
        size["ratios"] = ratios(size["lookups"])
    report["goals"] = judge(report["sizes"])
    output.parent.mkdir(parents=True, exist_ok=True)
    report["output"] = shown(output)
    report["plots"] = [shown(p) for p in plot(report, output.parent)]
    text = json.dumps(report, indent=2)
    output.write_text(text + "\n", encoding="utf-8")
    markdown_path.write_text(markdown(report, markdown_path.parent), encoding="utf-8")
    print(text)
    missed = [name for name, goal in report["goals"].items() if not goal["pass"]]
    info(f"done in {report['elapsed_s']:.0f}s; goals missed: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
