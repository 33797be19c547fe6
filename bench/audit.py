"""Audit benchmarks of profilestore: verify, the tamper-evidence audit, profiles as of T.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/audit.py            # full run: 10k customers, ~1.5 minutes
    .venv/bin/python bench/audit.py --quick    # 2k customers, ~20 seconds

Prints one JSON object on stdout (progress goes to stderr) and writes it to
``bench/results/audit.json`` (``--output`` to change). See the "Audit" section of
``bench/README.md`` for what every figure means. Embedded (SQLite) store only.

Where a target is missed, the workload is run again under cProfile and what bounds it is
reported in ``limits`` (short text) and ``details.profiles`` (top functions).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import os
import pstats
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "src", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import msgspec  # noqa: E402

from bench.core import (  # noqa: E402
    COMPARE,
    info,
    judge,
    machine_info,
    percentile,
    run_and_write,
    source_state,
    sqlite_settings,
    stage,
)
from profilestore.events import Event  # noqa: E402
from profilestore.population import generate  # noqa: E402
from profilestore.store import ProfileStore, open_store  # noqa: E402

BATCH = 200
SEED = 7
AS_OF_SEED = 8
AS_OF_EVENTS = 500
START = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
TICK = dt.timedelta(minutes=1)
"""The store's clock advances by this much per appended batch, so ``recorded_at``
(which ``as_of`` filters on) differs from batch to batch."""

MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "customers": 2_000,
        "events_per_customer": 40,
        "as_of_calls": 200,
        "rounds": 3,
        "profile_verify_customers": 500,
        "profile_as_of_calls": 50,
    },
    "full": {
        "customers": 10_000,
        "events_per_customer": 40,
        "as_of_calls": 400,
        "rounds": 3,
        "profile_verify_customers": 1_000,
        "profile_as_of_calls": 100,
    },
}

TARGETS = {
    "verify_customers_per_s": (">=", 5_000),
    "audit_verify_events_per_s": (">=", 100_000),
    "as_of_p50_ms": ("<", 5.0),
}
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    **COMPARE,
    "<": lambda value, limit: value < limit,
}


class BenchClock:
    """The store's clock: a fixed time the bench moves forward between batches."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


# --- building the log -------------------------------------------------------------------


def as_of_customer_events() -> tuple[str, list[Event]]:
    """One customer with exactly AS_OF_EVENTS events, under a key of its own.

    The population generator gives a few customers a large budget; the first
    AS_OF_EVENTS events of one that has at least that many are re-keyed (customer id and
    event ids) so they cannot collide with the main population's.
    """
    events = list(generate(20, seed=AS_OF_SEED, events_per_customer=600))
    counts = Counter(e.customer_id for e in events)
    chosen = min((c for c, n in counts.items() if n >= AS_OF_EVENTS), key=lambda c: counts[c])
    customer = f"asof-{chosen}"
    mine = [e for e in events if e.customer_id == chosen][:AS_OF_EVENTS]
    return customer, [
        msgspec.structs.replace(e, customer_id=customer, event_id=f"asof-{e.event_id}")
        for e in mine
    ]


def planned_batches(population: list[Event], extra: list[Event]) -> list[list[Event]]:
    """The population in batches of BATCH, with ``extra`` spread evenly across them."""
    batches = [population[i : i + BATCH] for i in range(0, len(population), BATCH)]
    for j, event in enumerate(extra):
        batches[j * len(batches) // len(extra)].append(event)
    return batches


def build_store(
    home: Path, batches: list[list[Event]], clock: BenchClock
) -> tuple[ProfileStore, dict[str, Any]]:
    store = open_store(sqlite_settings(home), clock=clock)
    events = sum(len(b) for b in batches)
    with stage(f"ingest {events} events in {len(batches)} batches (not timed)"):
        started = time.perf_counter()
        for i, batch in enumerate(batches):
            clock.now = START + i * TICK
            store.append(batch)
        ingest_s = time.perf_counter() - started
    clock.now = START + len(batches) * TICK + dt.timedelta(hours=1)
    with stage("refresh every dataset"):
        started = time.perf_counter()
        store.refresh()
        refresh_s = time.perf_counter() - started
    files = {f.name: round(f.stat().st_size / 2**20, 1) for f in sorted(home.iterdir())}
    info(f"store files (MB): {files}")
    return store, {
        "events": events,
        "files_mb": files,
        "batches": len(batches),
        "ingest_seconds": round(ingest_s, 2),
        "refresh_seconds": round(refresh_s, 2),
    }


# --- measurements -----------------------------------------------------------------------


def calibrate() -> float:
    """Milliseconds of a fixed pure-Python workload: how fast the CPU was just now."""
    started = time.perf_counter()
    sum(i * i for i in range(300_000))
    return round((time.perf_counter() - started) * 1000, 2)


def bench_verify(store: ProfileStore, rounds: int) -> dict[str, Any]:
    runs: list[float] = []
    calibration: list[float] = []
    report = None
    for round_ in range(1, rounds + 1):
        calibration.append(calibrate())
        gc.collect()
        with stage(f"store.verify() over every customer, round {round_}/{rounds}"):
            started = time.perf_counter()
            report = store.verify()
            runs.append(time.perf_counter() - started)
    assert report is not None
    seconds = statistics.median(runs)
    return {
        "customers": report.customers_checked,
        "sections_checked": report.sections_checked,
        "drift": len(report.drift),
        "drift_by_dataset": report.drift_by_dataset,
        "ok": report.ok,
        "rounds": rounds,
        "seconds": round(seconds, 3),
        "seconds_each": [round(r, 3) for r in runs],
        "calibration_ms_each": calibration,
        "customers_per_s": round(report.customers_checked / seconds),
        "ms_per_customer": round(seconds * 1000 / report.customers_checked, 3),
    }


def bench_audit(store: ProfileStore, rounds: int) -> dict[str, Any]:
    auditor = store.auditor()
    digest_runs: list[float] = []
    verify_runs: list[float] = []
    calibration: list[float] = []
    digest = report = None
    for round_ in range(1, rounds + 1):
        calibration.append(calibrate())
        gc.collect()
        with stage(f"auditor.digest(), round {round_}/{rounds}"):
            started = time.perf_counter()
            digest = auditor.digest()
            digest_runs.append(time.perf_counter() - started)
        gc.collect()
        with stage(f"auditor.verify(digest), round {round_}/{rounds}"):
            started = time.perf_counter()
            report = auditor.verify(digest)
            verify_runs.append(time.perf_counter() - started)
    assert digest is not None and report is not None
    digest_s = statistics.median(digest_runs)
    verify_s = statistics.median(verify_runs)
    return {
        "streams": digest.streams,
        "events": digest.events,
        "rounds": rounds,
        "digest_seconds": round(digest_s, 3),
        "digest_seconds_each": [round(r, 3) for r in digest_runs],
        "verify_seconds": round(verify_s, 3),
        "verify_seconds_each": [round(r, 3) for r in verify_runs],
        "calibration_ms_each": calibration,
        "events_checked": report.events_checked,
        "verify_events_per_s": round(report.events_checked / verify_s),
        "digest_events_per_s": round(digest.events / digest_s),
        "ok": report.ok,
        "findings": len(report.findings),
    }


def as_of_times(store: ProfileStore, customer: str, calls: int) -> list[dt.datetime]:
    """``calls`` times spread over the customer's history (each sees >= 1 event)."""
    recorded = sorted(e.recorded_at for e in store.history(customer) if e.recorded_at is not None)
    first, last = recorded[0], recorded[-1] + TICK
    span = (last - first).total_seconds()
    rng = random.Random(SEED)
    return [first + dt.timedelta(seconds=rng.uniform(0, span)) for _ in range(calls)]


def bench_as_of(store: ProfileStore, customer: str, calls: int) -> dict[str, Any]:
    times = as_of_times(store, customer, calls)
    profile = store.profile
    read = store._log.customer_changes
    for t in times[:20]:  # warm-up: statements, decoders, page cache
        profile(customer, as_of=t)
    perf = time.perf_counter_ns
    as_of_ns: list[int] = []
    read_ns: list[int] = []
    calibration = [calibrate()]
    gc.collect()
    with stage(f"profile(as_of=T) x {calls}, a customer of {AS_OF_EVENTS} events"):
        for i, t in enumerate(times):
            # Interleaved with the bare read + decode of the same stream, alternating
            # which goes first, so drift lands on both alike.
            steps: list[tuple[list[int], Callable[[], Any]]] = [
                (as_of_ns, lambda t=t: profile(customer, as_of=t)),
                (read_ns, lambda: read(customer)),
            ]
            for samples, call in steps if i % 2 == 0 else steps[::-1]:
                t0 = perf()
                call()
                samples.append(perf() - t0)
    calibration.append(calibrate())
    recorded = [e.recorded_at for e in store.history(customer) if e.recorded_at is not None]
    events_seen = [sum(1 for r in recorded if r <= t) for t in times]
    return {
        "customer": customer,
        "customer_events": AS_OF_EVENTS,
        "calls": len(as_of_ns),
        "events_recorded_by_T": {
            "min": min(events_seen),
            "p50": int(percentile(sorted(events_seen), 0.5)),
            "max": max(events_seen),
        },
        "as_of_ms": ms_summary(as_of_ns),
        "read_decode_ms": ms_summary(read_ns),
        "calibration_ms_before_after": calibration,
        "note": "read_decode_ms = log.customer_changes(customer) alone: the one SQL "
        "query and decoding of all the customer's events that as_of starts with",
    }


def ms_summary(samples_ns: list[int]) -> dict[str, float]:
    values = sorted(samples_ns)
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.50) / 1e6, 3),
        "p90": round(percentile(values, 0.90) / 1e6, 3),
        "p99": round(percentile(values, 0.99) / 1e6, 3),
        "max": round(values[-1] / 1e6, 3),
        "mean": round(sum(values) / len(values) / 1e6, 3),
    }


# --- profiling a missed target ----------------------------------------------------------

# Cumulative-time buckets: (label, file suffix, function name). Nested buckets overlap.
BUCKETS: dict[str, list[tuple[str, str, str]]] = {
    "verify_customers_per_s": [
        ("choose_customers (list every customer)", "replay.py", "choose_customers"),
        ("documents.load (stored sections)", "sqlite_documents.py", "load"),
        ("log.customer_changes (SQL + decode)", "eventlog.py", "customer_changes"),
        ("  select_stream_states (SQL per customer)", "sqlite_log.py", "select_stream_states"),
        ("  _decoded (msgspec decode)", "eventlog.py", "_decoded"),
        ("fold_stream (projection folds)", "replay.py", "fold_stream"),
        ("first_difference (diff)", "replay.py", "first_difference"),
        ("msgspec.to_builtins", "~", "<built-in method msgspec._core.to_builtins>"),
    ],
    "audit_verify_events_per_s": [
        ("scan_chain (SQL read + row conversion)", "sqlite_log.py", "scan_chain"),
        ("chain_hash (sha256 per event)", "eventlog.py", "chain_hash"),
        ("directory_heads", "sqlite_log.py", "directory_heads"),
        ("merkle root", "audit.py", "root"),
    ],
    "as_of_p50_ms": [
        ("log.customer_changes (SQL + decode, all events)", "eventlog.py", "customer_changes"),
        ("  select_stream_states (SQL)", "sqlite_log.py", "select_stream_states"),
        ("  _decoded (msgspec decode)", "eventlog.py", "_decoded"),
        ("fold_stream (projection folds)", "replay.py", "fold_stream"),
    ],
}


def profiled(name: str, call: Callable[[], Any]) -> dict[str, Any]:
    """Run ``call`` under cProfile: total, named buckets and top self-time functions."""
    profiler = cProfile.Profile()
    gc.collect()
    profiler.enable()
    call()
    profiler.disable()
    stats = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in raw.values())

    def where(key: tuple[str, int, str]) -> str:
        filename, line, function = key
        if filename == "~":
            return function
        short = "/".join(Path(filename).parts[-2:])
        return f"{short}:{line}({function})"

    buckets = []
    for label, suffix, function in BUCKETS.get(name, []):
        cumulative = sum(
            ct
            for (filename, _line, func), (_cc, _nc, _tt, ct, _callers) in raw.items()
            if func == function and filename.endswith(suffix)
        )
        calls = sum(
            nc
            for (filename, _line, func), (_cc, nc, _tt, _ct, _callers) in raw.items()
            if func == function and filename.endswith(suffix)
        )
        if cumulative:
            buckets.append(
                {
                    "what": label,
                    "calls": calls,
                    "seconds": round(cumulative, 3),
                    "share": round(cumulative / total, 3),
                }
            )
    top = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:12]
    return {
        "profiled_seconds": round(total, 3),
        "buckets": buckets,
        "top_self_time": [
            {
                "function": where(key),
                "calls": nc,
                "self_s": round(tt, 3),
                "share": round(tt / total, 3),
                "cumulative_s": round(ct, 3),
            }
            for key, (_cc, nc, tt, ct, _callers) in top
        ],
    }


def limit_text(name: str, profile: dict[str, Any], unit: str) -> str:
    buckets = ", ".join(
        f"{b['what'].strip()} {b['share']:.0%}" for b in profile["buckets"] if b["share"] >= 0.03
    )
    top = ", ".join(
        f"{t['function'].split('(')[-1].rstrip(')')} {t['share']:.0%}"
        for t in profile["top_self_time"][:4]
    )
    return f"cProfile of {unit}: {buckets}; top self time: {top}"


def profile_misses(
    store: ProfileStore,
    targets: dict[str, Any],
    mode: dict[str, Any],
    as_of: dict[str, Any],
    times: list[dt.datetime],
) -> tuple[dict[str, str], dict[str, Any]]:
    limits: dict[str, str] = {}
    profiles: dict[str, Any] = {}
    if targets["verify_customers_per_s"]["pass"] is False:
        ids = store._log.customers()[: mode["profile_verify_customers"]]
        with stage(f"cProfile: verify of {len(ids)} customers"):
            profiles["verify"] = profiled(
                "verify_customers_per_s", lambda: store.verify(customer_ids=ids)
            )
        limits["verify_customers_per_s"] = limit_text(
            "verify_customers_per_s", profiles["verify"], f"verify(customer_ids=<{len(ids)}>)"
        )
    if targets["audit_verify_events_per_s"]["pass"] is False:
        auditor = store.auditor()
        digest = auditor.digest()
        with stage("cProfile: auditor.verify(digest)"):
            profiles["audit_verify"] = profiled(
                "audit_verify_events_per_s", lambda: auditor.verify(digest)
            )
        limits["audit_verify_events_per_s"] = limit_text(
            "audit_verify_events_per_s", profiles["audit_verify"], "auditor.verify(digest)"
        )
    if targets["as_of_p50_ms"]["pass"] is False:
        customer = as_of["customer"]
        chosen = times[: mode["profile_as_of_calls"]]

        def calls() -> None:
            for t in chosen:
                store.profile(customer, as_of=t)

        with stage(f"cProfile: profile(as_of=T) x {len(chosen)}"):
            profiles["as_of"] = profiled("as_of_p50_ms", calls)
        limits["as_of_p50_ms"] = limit_text(
            "as_of_p50_ms", profiles["as_of"], f"{len(chosen)} profile(as_of=T) calls"
        )
    return limits, profiles


# --- main -------------------------------------------------------------------------------


def run(mode_name: str, work: Path) -> dict[str, Any]:
    mode = MODES[mode_name]
    started = time.perf_counter()
    result: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode_name,
        "batch_size": BATCH,
        "seed": SEED,
        "machine": machine_info(None),
        "source": source_state(),
    }
    customers, per_customer = mode["customers"], mode["events_per_customer"]
    with stage(f"generate {customers} customers x ~{per_customer} events"):
        population = list(generate(customers, seed=SEED, events_per_customer=per_customer))
        as_of_customer, as_of_events = as_of_customer_events()
        batches = planned_batches(population, as_of_events)
    info(f"{len(population)} population events + {len(as_of_events)} for {as_of_customer}")
    clock = BenchClock(START)
    store, build = build_store(work / "home", batches, clock)
    del population, batches
    try:
        verify = bench_verify(store, mode["rounds"])
        info(f"verify: {verify}")
        audit = bench_audit(store, mode["rounds"])
        info(f"audit: {audit}")
        as_of = bench_as_of(store, as_of_customer, mode["as_of_calls"])
        info(f"as_of: {as_of['as_of_ms']}")
        figures: dict[str, Any] = {
            "verify_customers_per_s": verify["customers_per_s"],
            "audit_verify_events_per_s": audit["verify_events_per_s"],
            "audit_digest_seconds": audit["digest_seconds"],
            "audit_verify_seconds": audit["verify_seconds"],
            "as_of_p50_ms": as_of["as_of_ms"]["p50"],
            "as_of_p99_ms": as_of["as_of_ms"]["p99"],
            "as_of_read_decode_p50_ms": as_of["read_decode_ms"]["p50"],
        }
        result.update(figures)
        result["targets"] = judge(figures, TARGETS, COMPARISONS)
        times = as_of_times(store, as_of_customer, mode["as_of_calls"])
        limits, profiles = profile_misses(store, result["targets"], mode, as_of, times)
    finally:
        store.close()
    result["limits"] = limits
    result["details"] = {
        "log": {
            "customers": customers + 1,
            "population_customers": customers,
            "events_per_customer": per_customer,
            **build,
        },
        "verify": verify,
        "audit": audit,
        "as_of": as_of,
        "profiles": profiles,
    }
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (< 2 minutes)")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "bench" / "results" / "audit.json",
        help="where to write the JSON (default: bench/results/audit.json)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the store here (default: a temp dir)")
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the default settings file and projections are found from here
    mode = "quick" if args.quick else "full"
    return run_and_write(lambda work: run(mode, work), mode, args, "profilestore-bench-audit-")


if __name__ == "__main__":
    sys.exit(main())
