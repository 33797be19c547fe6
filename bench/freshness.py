"""Freshness benchmarks of profilestore: real-time lag under load, scheduled-run throughput.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/freshness.py            # full run (~1 minute on 2 cores)
    .venv/bin/python bench/freshness.py --quick    # shorter windows, ~30 s

Prints one JSON object on stdout (progress goes to stderr) and writes it to
``bench/results/freshness.json`` (``--output`` to change). See ``bench/README.md`` for
what every figure means and how the targets are judged.

Three processes per real-time scenario, as in production: this one appends (the writer),
a follower child runs ``Follower(store, REALTIME)`` (what ``profilestore worker`` runs for
the real-time datasets), and a sampler child reads profiles the way the API does. Their
clocks agree: all use ``CLOCK_MONOTONIC`` (``time.monotonic_ns``), which is system-wide.

PostgreSQL: ``PROFILESTORE_BENCH_POSTGRES_URL``, else ``PROFILESTORE_TEST_POSTGRES_URL``,
else ``scripts/postgres-up`` is run to start the private test cluster. Every run works in
fresh schemas that are dropped at the end.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import gc
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "src", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import msgspec  # noqa: E402

from bench.core import (  # noqa: E402
    PostgresSchemas,
    info,
    machine_info,
    percentile,
    postgres_settings,
    postgres_url,
    run_and_write,
    source_state,
    sqlite_settings,
    stage,
)
from profilestore.config import Settings  # noqa: E402
from profilestore.errors import CustomerNotFound  # noqa: E402
from profilestore.events import CartItemAdded, Event  # noqa: E402
from profilestore.follower import Follower  # noqa: E402
from profilestore.population import generate  # noqa: E402
from profilestore.projector import ProjectionHandler, _ProjectionPass  # noqa: E402
from profilestore.store import ProfileStore, open_store  # noqa: E402

SEED = 7
REALTIME = ["identities", "attributes", "consents", "carts"]
BATCH_EVENTS = 20  # population events per writer batch, plus one probe
PERIOD_S = 0.020  # one batch every 20 ms: 21 events / 20 ms = 1,050 events/s offered
PROBE_CUSTOMERS = 200  # probes rotate over these, so no probe cart grows large
SAMPLER_SLEEP_S = 0.0005
UNRESOLVED_AFTER_S = 10.0  # a probe not visible this long after the window is "unresolved"
BACKLOG_BATCH = 200

now_ns = time.monotonic_ns  # CLOCK_MONOTONIC on Linux: comparable across processes

MODES: dict[str, dict[str, Any]] = {
    "quick": {"warmup_s": 2.0, "window_s": 8.0, "backlog_events": 30_000},
    "full": {"warmup_s": 3.0, "window_s": 20.0, "backlog_events": 100_000},
}

TARGETS = {
    "realtime_lag_p99_ms_sqlite": ("<", 50),
    "realtime_lag_p99_ms_postgres": ("<", 20),
    "realtime_load_events_per_s_sqlite": (">=", 1_000),
    "realtime_load_events_per_s_postgres": (">=", 1_000),
}

COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, limit: value >= limit,
    "<": lambda value, limit: value < limit,
}


# --- settings shared with the children ----------------------------------------------------


def settings_for(spec: dict[str, Any]) -> Settings:
    """Settings from a JSON-able spec, so the children open exactly the writer's store."""
    home = Path(spec["home"])
    if spec.get("url"):
        return postgres_settings(home, spec["url"], spec["schema"])
    return sqlite_settings(home)


def spawn(role: str, spec: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), f"--{role}-child", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def read_json_line(child: subprocess.Popen[str], what: str) -> dict[str, Any]:
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"{what} exited (code {child.wait()}) without reporting")
    result: dict[str, Any] = json.loads(line)
    return result


def ms(values_ns: Sequence[int]) -> dict[str, float | int]:
    values = sorted(values_ns)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.50) / 1e6, 3),
        "p90": round(percentile(values, 0.90) / 1e6, 3),
        "p99": round(percentile(values, 0.99) / 1e6, 3),
        "max": round(values[-1] / 1e6, 3),
        "mean": round(sum(values) / len(values) / 1e6, 3),
    }


# --- the follower child -------------------------------------------------------------------


class Profiler:
    """Counts and times calls by wrapping methods on instances (src is left untouched)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[int]] = {}  # name -> [count, total ns, max ns]

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        inner = getattr(obj, attr)
        stats = self.calls.setdefault(name, [0, 0, 0])

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = now_ns()
            try:
                return inner(*args, **kwargs)
            finally:
                took = now_ns() - started
                stats[0] += 1
                stats[1] += took
                stats[2] = max(stats[2], took)

        setattr(obj, attr, timed)

    def summary(self, passes: int) -> dict[str, Any]:
        return {
            name: {
                "calls": count,
                "per_pass": round(count / passes, 2) if passes else None,
                "mean_us": round(total / count / 1e3, 1) if count else None,
                "max_ms": round(worst / 1e6, 3),
                "total_s": round(total / 1e9, 3),
            }
            for name, (count, total, worst) in self.calls.items()
        }


def follower_child(spec_json: str) -> None:
    """Open the store, follow the real-time datasets until stdin closes, then report.

    Per pass it records when the read of new events started and ended and when the
    write finished, with the log position covered, so the parent can split each probe's
    lag into waiting, reading, applying and being noticed by the sampler.
    """
    spec = json.loads(spec_json)
    store = open_store(settings_for(spec))
    poll_ms = spec.get("poll_ms")
    follower = Follower(store, REALTIME, poll_s=None if poll_ms is None else poll_ms / 1000)
    profiler = Profiler()
    documents, log = store._documents, store._log
    for obj, attr, name in [
        (ProjectionHandler, "begin", "handler.begin (tracking + parked reads)"),
        (_ProjectionPass, "handle", "pass.handle (section loads + folds)"),
        (_ProjectionPass, "commit", "pass.commit (section writes + tracking advance)"),
        (documents, "tracking", "documents.tracking"),
        (documents, "get_records", "documents.get_records (dead letters)"),
        (documents, "load", "documents.load"),
        (documents, "write", "documents.write (1 write transaction)"),
        (documents, "advance", "documents.advance (1 write transaction)"),
        (documents, "acquire_lease", "documents.acquire_lease (1 write transaction)"),
        (log, "head", "log.head"),
        (log, "changes", "log.changes"),
    ]:
        profiler.wrap(obj, attr, name)

    passes: list[tuple[int, int, int, int, int]] = []  # read start, read end, done, through, n
    last_read = [0, 0]
    changes = log.changes
    step = follower.consumer.step

    def timed_changes(*args: Any, **kwargs: Any) -> Any:
        started = now_ns()
        result = changes(*args, **kwargs)
        last_read[0], last_read[1] = started, now_ns()
        return result

    def timed_step() -> Any:
        report = step()
        if report is not None:
            passes.append(
                (last_read[0], last_read[1], now_ns(), report.high_water, report.events_read)
            )
        return report

    log.changes = timed_changes  # type: ignore[method-assign]
    follower.consumer.step = timed_step  # type: ignore[method-assign]
    follower.start()
    try:
        deadline = time.monotonic() + 30
        while not follower.leased:
            if time.monotonic() > deadline or not follower.live:
                raise RuntimeError(f"follower never took its leases: {follower.last_error}")
            time.sleep(0.01)
        print(json.dumps({"ready": True, "holder": store.holder}), flush=True)
        sys.stdin.readline()  # the parent writes a line (or closes stdin) to stop us
    finally:
        follower.stop()
    print(
        json.dumps(
            {
                "passes": passes,
                "applied": follower.applied,
                "subscription": follower._subscription is not None,
                "last_error": follower.last_error,
                "poll_ms": follower.poll_s * 1000,
                "batch": follower.batch,
                "calls": profiler.summary(len(passes)),
            }
        ),
        flush=True,
    )
    store.close()


# --- the sampler child --------------------------------------------------------------------


def sampler_child(spec_json: str) -> None:
    """Poll probes until their effect is visible in a profile lookup; report latencies.

    Reads ``t_ns customer notification_id`` lines from stdin (non-blocking, between
    polls) and ``end`` when the window is over. Each pending probe is checked every
    loop (``store.profile(customer, ["carts"])`` at position >= the probe's id), with a
    0.5 ms sleep between loops. The time taken is the moment the read that saw it
    returned, minus the moment ``append`` returned in the writer.
    """
    spec = json.loads(spec_json)
    store = open_store(settings_for(spec))
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    buffer = b""
    pending: list[tuple[int, str, int]] = []
    seen: list[tuple[int, int, int]] = []  # (notification id, appended at, visible at)
    lookups = 0
    lookup_ns = 0
    ended_at: float | None = None
    unresolved: list[tuple[int, str, int]] = []
    print(json.dumps({"ready": True}), flush=True)
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            ended_at = ended_at or time.monotonic()
        elif chunk:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line == b"end":
                    ended_at = time.monotonic()
                elif line:
                    t, customer, nid = line.decode().split()
                    pending.append((int(t), customer, int(nid)))
        still = []
        for probe in pending:
            appended_at, customer, nid = probe
            started = now_ns()
            try:
                meta = store.profile(customer, ["carts"]).freshness.get("carts")
            except CustomerNotFound:
                meta = None
            done = now_ns()
            lookups += 1
            lookup_ns += done - started
            if meta is not None and meta.position >= nid:
                seen.append((nid, appended_at, done))
            else:
                still.append(probe)
        pending = still
        if ended_at is not None:
            if not pending:
                break
            if time.monotonic() - ended_at > UNRESOLVED_AFTER_S:
                unresolved = pending
                break
        time.sleep(SAMPLER_SLEEP_S)
    print(
        json.dumps(
            {
                "seen": seen,
                "unresolved": [[nid, t] for t, _, nid in unresolved],
                "lookups": lookups,
                "lookup_mean_us": round(lookup_ns / lookups / 1e3, 1) if lookups else None,
            }
        ),
        flush=True,
    )
    store.close()


# --- the writer (this process) --------------------------------------------------------------


def population(count: int, tag: str) -> list[Event]:
    """``count`` mixed population events, their event ids re-keyed unique to ``tag``."""
    source = generate(max(100, count // 15), seed=SEED, events_per_customer=20)
    return [
        msgspec.structs.replace(event, event_id=f"{tag}-{i}")
        for i, event in enumerate(itertools.islice(source, count))
    ]


def probe_event(n: int, tag: str) -> CartItemAdded:
    customer = f"probe-{n % PROBE_CUSTOMERS:04d}"
    return CartItemAdded(
        event_id=f"{tag}-probe-{n}",
        customer_id=customer,
        occurred_at=dt.datetime.now(dt.UTC),
        source="bench",
        cart_id=f"cart-{customer}",
        sku=f"SKU-{n % 5}",
        unit_price=Decimal("5.00"),
        currency="EUR",
    )


def write_load(
    store: ProfileStore,
    events: list[Event],
    tag: str,
    seconds: float,
    sampler: IO[str] | None,
) -> dict[str, Any]:
    """Append a batch every PERIOD_S for ``seconds``; send each probe to the sampler."""
    append_ns: list[int] = []
    probes: list[tuple[int, int]] = []  # (notification id, appended at)
    appended = 0
    late = 0
    started = time.monotonic()
    due = started
    n = 0
    while due - started < seconds:
        batch: list[Event] = events[n * BATCH_EVENTS : (n + 1) * BATCH_EVENTS]
        if len(batch) < BATCH_EVENTS:
            raise RuntimeError("population exhausted: generate more events")
        batch.append(probe_event(n, tag))
        t0 = now_ns()
        result = store.append(batch)
        t1 = now_ns()
        if result.appended != len(batch):
            raise RuntimeError(f"expected {len(batch)} new events, appended {result.appended}")
        append_ns.append(t1 - t0)
        appended += result.appended
        nid = result.notification_ids[-1]
        probes.append((nid, t1))
        if sampler is not None:
            sampler.write(f"{t1} probe-{n % PROBE_CUSTOMERS:04d} {nid}\n")
            sampler.flush()
        n += 1
        due += PERIOD_S
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            late += 1
    elapsed = time.monotonic() - started
    return {
        "batches": n,
        "events": appended,
        "seconds": round(elapsed, 3),
        "events_per_s": round(appended / elapsed),
        "batches_behind_schedule": late,
        "append_ms": ms(append_ns),
        "probes": probes,
        "next_batch": n,
    }


def split_lag(
    probes: list[tuple[int, int, int]], passes: list[list[int]]
) -> dict[str, dict[str, float | int]]:
    """Where each probe's time went, from the follower's pass log.

    ``wait``: append returned -> the follower began the read that picked the probe up
    (poll sleep, or NOTIFY -> pull -> decode on PostgreSQL); ``read``: that read;
    ``apply``: projector.apply (tracking/dead-letter reads, folds, write transactions);
    ``notice``: the write committed -> the sampler's lookup saw it (sampling overhead).
    """
    throughs = [p[3] for p in passes]
    parts: dict[str, list[int]] = {"wait": [], "read": [], "apply": [], "notice": []}
    for nid, appended_at, visible_at in probes:
        i = bisect.bisect_left(throughs, nid)
        if i == len(passes):
            continue
        read_start, read_end, done, _, _ = passes[i]
        parts["wait"].append(max(0, read_start - appended_at))
        parts["read"].append(read_end - max(read_start, appended_at))
        parts["apply"].append(done - read_end)
        parts["notice"].append(max(0, visible_at - done))
    return {name: ms(values) for name, values in parts.items()}


def realtime(
    name: str, spec: dict[str, Any], mode: dict[str, Any], events: list[Event]
) -> dict[str, Any]:
    settings = settings_for(spec)
    store = open_store(settings)  # creates the tables before the children open them
    follower = spawn("follower", spec)
    sampler = spawn("sampler", spec)
    try:
        ready = read_json_line(follower, "follower child")
        read_json_line(sampler, "sampler child")
        info(f"{name}: follower {ready['holder']} ready; warm-up {mode['warmup_s']}s")
        gc.collect()
        warm = write_load(store, events, f"{name}-w", mode["warmup_s"], None)
        rest = events[warm["next_batch"] * BATCH_EVENTS :]
        with stage(f"{name}: {mode['window_s']}s at ~{BATCH_EVENTS + 1}/{PERIOD_S * 1000:g}ms"):
            load = write_load(store, rest, f"{name}-m", mode["window_s"], sampler.stdin)
        assert sampler.stdin is not None
        sampler.stdin.write("end\n")
        sampler.stdin.flush()
        sampled = read_json_line(sampler, "sampler child")
        lag = store.freshness(REALTIME)
        assert follower.stdin is not None
        follower.stdin.write("stop\n")
        follower.stdin.flush()
        followed = read_json_line(follower, "follower child")
    finally:
        for child in (sampler, follower):
            if child.stdin is not None and not child.stdin.closed:
                child.stdin.close()
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
        store.close()

    appended_at = dict(load.pop("probes"))
    seen = [(nid, t, v) for nid, t, v in sampled["seen"] if nid in appended_at]
    lags = [visible - t for _, t, visible in seen]
    unresolved = len(sampled["unresolved"])
    # An unresolved probe counts with the longest wait it could have had (a lower bound).
    lags += [int(UNRESOLVED_AFTER_S * 1e9)] * unresolved
    passes = followed.pop("passes")
    first = min(appended_at.values())
    window_passes = [p for p in passes if p[2] >= first]
    per_pass = sorted(p[4] for p in window_passes)
    summary = ms(lags)
    load.pop("next_batch")
    return {
        "realtime_lag_p50_ms": summary.get("p50"),
        "realtime_lag_p99_ms": summary.get("p99"),
        "samples": len(lags),
        "unresolved": unresolved,
        "load_events_per_s": load["events_per_s"],
        "lag_ms": summary,
        "lag_parts_ms": split_lag(seen, window_passes),
        "load": load,
        "warmup": {k: warm[k] for k in ("events", "seconds", "events_per_s")},
        "follower": {
            **followed,
            "passes_in_window": len(window_passes),
            "events_per_pass": {
                "p50": percentile(per_pass, 0.5) if per_pass else None,
                "max": per_pass[-1] if per_pass else None,
            },
            "apply_ms": ms([p[2] - p[1] for p in window_passes]),
            "read_ms": ms([p[1] - p[0] for p in window_passes]),
            "events_behind_after": {n: f.events_behind for n, f in lag.items()},
        },
        "sampler": {k: sampled[k] for k in ("lookups", "lookup_mean_us")},
    }


# --- scheduled runs -------------------------------------------------------------------------


def scheduled(name: str, spec: dict[str, Any], count: int) -> dict[str, Any]:
    """Pre-ingest ``count`` events (not timed), then time one refresh of the scheduled sets."""
    events = population(count, f"{name}-backlog")
    store = open_store(settings_for(spec))
    try:
        names = [n for n in store.datasets() if store.cadence(n) != "realtime"]
        with stage(f"{name}: ingest backlog of {count} events"):
            started = time.perf_counter()
            for i in range(0, len(events), BACKLOG_BATCH):
                store.append(events[i : i + BACKLOG_BATCH])
            ingest_s = time.perf_counter() - started
        gc.collect()
        with stage(f"{name}: refresh {', '.join(names)}"):
            started = time.perf_counter()
            report = store.refresh(names, trigger="schedule")
            seconds = time.perf_counter() - started
    finally:
        store.close()
    return {
        "datasets": names,
        "events": count,
        "events_read": report.events_read,
        "events_applied": sum(report.events_applied.values()),
        "sections_written": sum(report.sections_written.values()),
        "seconds": round(seconds, 3),
        "events_per_s": round(count / seconds),
        "events_read_per_s": round(report.events_read / seconds),
        "backlog_ingest_events_per_s": round(count / ingest_s),
    }


# --- main -----------------------------------------------------------------------------------


def judge(figures: dict[str, Any]) -> dict[str, Any]:
    targets = {}
    for name, (op, limit) in TARGETS.items():
        value = figures.get(name)
        passed = None if value is None else COMPARE[op](value, limit)
        targets[name] = {"target": f"{op} {limit}", "value": value, "pass": passed}
    return targets


def run(mode_name: str, work: Path, poll_ms: int | None = None) -> dict[str, Any]:
    mode = MODES[mode_name]
    started = time.perf_counter()
    result: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode_name,
        "seed": SEED,
    }
    url = postgres_url()
    schemas = PostgresSchemas(url)
    try:
        result["machine"] = machine_info(schemas.server_version())
        result["source"] = source_state()
        needed = int((mode["warmup_s"] + mode["window_s"]) / PERIOD_S * 1.2 + 50)
        with stage(f"generate {needed * BATCH_EVENTS} population events"):
            events = population(needed * BATCH_EVENTS, "rt")
        backends: dict[str, dict[str, Any]] = {
            "sqlite": {"home": str(work / "rt-sqlite"), "poll_ms": poll_ms},
            "postgres": {
                "home": str(work / "rt-pg"),
                "url": url,
                "schema": schemas.new("rt"),
                "poll_ms": poll_ms,
            },
        }
        realtimes = {}
        for name, spec in backends.items():
            # Fresh logs each: the same event ids are fine, re-keyed by scenario anyway.
            realtimes[name] = realtime(name, spec, mode, [*events])
            r = realtimes[name]
            info(
                f"{name}: lag p50 {r['realtime_lag_p50_ms']} ms, p99 {r['realtime_lag_p99_ms']}"
                f" ms over {r['samples']} probes at {r['load_events_per_s']} events/s"
            )
        del events
        backlog = mode["backlog_events"]
        refresh = {
            "sqlite": scheduled("sqlite", {"home": str(work / "sched-sqlite")}, backlog),
            "postgres": scheduled(
                "postgres",
                {"home": str(work / "sched-pg"), "url": url, "schema": schemas.new("sched")},
                backlog,
            ),
        }
    finally:
        schemas.close()

    figures: dict[str, Any] = {}
    for name, r in realtimes.items():
        figures[f"realtime_lag_p50_ms_{name}"] = r["realtime_lag_p50_ms"]
        figures[f"realtime_lag_p99_ms_{name}"] = r["realtime_lag_p99_ms"]
        figures[f"realtime_load_events_per_s_{name}"] = r["load_events_per_s"]
        figures[f"realtime_samples_{name}"] = r["samples"]
    figures["scheduled_refresh_events_per_s"] = refresh["sqlite"]["events_per_s"]
    figures["scheduled_refresh_events_read_per_s"] = refresh["sqlite"]["events_read_per_s"]
    figures["scheduled_refresh_events_per_s_postgres"] = refresh["postgres"]["events_per_s"]
    result.update(figures)
    result["targets"] = judge(figures)
    result.update(realtimes)
    result["scheduled_refresh"] = refresh
    result["settings"] = {
        "follower_datasets": REALTIME,
        "batch": f"{BATCH_EVENTS} population events + 1 probe every {PERIOD_S * 1000:g} ms",
        "warmup_s": mode["warmup_s"],
        "window_s": mode["window_s"],
        "probe_customers": PROBE_CUSTOMERS,
        "follower_poll_ms": realtimes["sqlite"]["follower"]["poll_ms"],
        "sampler_sleep_ms": SAMPLER_SLEEP_S * 1000,
        "documents": "embedded SQLite (both cases)",
    }
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows (< 2 minutes)")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "bench" / "results" / "freshness.json",
        help="where to write the JSON (default: bench/results/freshness.json)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the stores here (default: a temp dir)")
    parser.add_argument(
        "--follower-poll-ms",
        type=int,
        help="override [schedule] follower_poll_ms for the follower (default: the setting)",
    )
    parser.add_argument("--follower-child", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--sampler-child", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.follower_child:
        follower_child(args.follower_child)
        return 0
    if args.sampler_child:
        sampler_child(args.sampler_child)
        return 0
    os.chdir(REPO)  # the default settings file and projections are found from here
    mode = "quick" if args.quick else "full"
    return run_and_write(
        lambda work: run(mode, work, args.follower_poll_ms), mode, args, "profilestore-freshness-"
    )


if __name__ == "__main__":
    sys.exit(main())
