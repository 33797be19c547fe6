"""What privacy costs: per-customer encryption of the log on ingest, one ``forget``, and
rebuilding and verifying over a log with forgotten customers.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/privacy.py --quick   # small sizes, about 2 minutes
    .venv/bin/python bench/privacy.py           # 2,000 customers / 100k events, ~10 minutes

Prints one JSON object on stdout (progress on stderr) and writes it to
``bench/results/privacy.json`` (``--output`` to change). PostgreSQL is measured when
``PROFILESTORE_BENCH_POSTGRES_URL`` or ``PROFILESTORE_TEST_POSTGRES_URL`` is set (fresh
``bench_<run>_*`` schemas, dropped at the end).

What runs, each against its natural alternative in the same run:

1. **Ingest, encrypted vs plain**: the same events (``generate(..., seed=7)``) appended
   with ``ProfileStore.append`` in batches of 500 into two fresh stores, one with
   ``privacy.encryption`` on and one with it off, batch by batch, alternating which goes
   first; a new pair of stores every round. ``encrypted_vs_plain`` = plain time /
   encrypted time (1.0 = free), over all rounds. ``ingest_sqlite_uuid_ids``: the same,
   for the first half of the events with random UUIDs as event ids (see
   :func:`with_uuid_ids`; reported, not judged).
2. **Forget**: a store of many customers (the population) plus a few "whales" of 1,000
   events each (identifiers, a name, orders), refreshed so their documents exist; each
   whale is forgotten with ``ProfileStore.forget`` and timed whole. For the split, one
   more whale is erased by the same calls ``forget`` makes, each timed (gather events and
   probes, destroy keys, settle, erase documents, scrub key store, scrub documents,
   plaintext search, chain check, receipt append); their sum is checked against the
   whole. The receipt gives the files and bytes searched.
3. **Rebuild and verify with erasures**: two encrypted stores with the same events;
   in one, 10% of the customers are forgotten (``forget``, after a refresh). Then, in
   interleaved rounds (alternating which store goes first), ``rebuild()`` of every dataset
   and ``verify()`` of every customer on each. ``*_forgotten_vs_intact`` = time with
   erasures / time without.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import datetime as dt
import gc
import os
import pstats
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "src", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import msgspec  # noqa: E402

from bench.core import (  # noqa: E402
    PostgresSchemas,
    info,
    judge,
    machine_info,
    ratio,
    run_and_write,
    source_state,
    stage,
)
from profilestore.config import Settings, load_settings  # noqa: E402
from profilestore.events import ErasureRecorded  # noqa: E402
from profilestore.identity import is_canonical, profile_of  # noqa: E402
from profilestore.population import generate  # noqa: E402
from profilestore.privacy import (  # noqa: E402
    RECEIPTS,
    ErasureReceipt,
    chain_intact,
    events_in,
    probes_of,
    search_files,
)
from profilestore.store import ProfileStore, open_store  # noqa: E402

SEED = 7
BATCH = 500
WHALE_EVENTS = 1_000
KEK = "base64:" + base64.b64encode(b"profilestore-bench-privacy-kek!!").decode()
MODES: dict[str, dict[str, int]] = {
    "quick": {
        "ingest_customers": 1_000,
        "ingest_per_customer": 20,
        "ingest_rounds": 2,
        "postgres_customers": 300,
        "store_customers": 400,
        "store_per_customer": 25,
        "whales": 2,
        "rebuild_customers": 400,
        "rebuild_per_customer": 20,
        "rebuild_rounds": 2,
    },
    "full": {
        "ingest_customers": 2_000,
        "ingest_per_customer": 50,
        "ingest_rounds": 3,
        "postgres_customers": 1_000,
        "store_customers": 2_000,
        "store_per_customer": 50,
        "whales": 3,
        "rebuild_customers": 2_000,
        "rebuild_per_customer": 25,
        "rebuild_rounds": 3,
    },
}
FORGOTTEN_SHARE = 0.10
TARGETS: dict[str, tuple[str, float]] = {
    "ingest_sqlite_encrypted_vs_plain": (">=", 0.85),
    "ingest_postgres_encrypted_vs_plain": (">=", 0.85),
    "forget_whale_s": ("<", 1.0),
    "rebuild_forgotten_vs_intact": ("<=", 1.1),
    "verify_forgotten_vs_intact": ("<=", 1.1),
}
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def settings_for(
    home: Path, *, encryption: bool, postgres: tuple[str, str] | None = None
) -> Settings:
    environ = {
        "PROFILESTORE_PRIVACY__ENCRYPTION": "true" if encryption else "false",
        "PROFILESTORE_PRIVACY__KEY_ENCRYPTION_KEY": KEK,
    }
    if postgres is not None:
        environ["PROFILESTORE_EVENT_LOG__URL"] = postgres[0]
        environ["PROFILESTORE_EVENT_LOG__POSTGRES_SCHEMA"] = postgres[1]
    home.mkdir(parents=True, exist_ok=True)
    return load_settings(environ=environ, home=home)


def population(customers: int, per_customer: int) -> list[Any]:
    return list(generate(customers, seed=SEED, events_per_customer=per_customer))


def whale(customer: str) -> list[dict[str, Any]]:
    """A customer with :data:`WHALE_EVENTS` events: two identifiers, a name, a consent,
    orders."""
    base: dict[str, Any] = {"customer_id": customer, "occurred_at": "2026-03-01T10:00:00Z"}
    # Every value the whale's own: one another customer shares would be found by the
    # plaintext search of forget.
    number = f"{int(customer.rsplit('-', 1)[1]):04d}"
    head: list[dict[str, Any]] = [
        {
            **base,
            "type": "identifier.seen",
            "event_id": f"{customer}-e",
            "kind": "email",
            "value": f"{customer}.whale@example.org",
        },
        {
            **base,
            "type": "identifier.seen",
            "event_id": f"{customer}-p",
            "kind": "phone",
            "value": f"+1415555{number}",
        },
        {
            **base,
            "type": "profile.name_set",
            "event_id": f"{customer}-n",
            "first_name": f"Moby{number}",
        },
        {**base, "type": "consent.given", "event_id": f"{customer}-c", "channel": "email"},
    ]
    orders = [
        {
            **base,
            "occurred_at": (T0 + dt.timedelta(minutes=i)).isoformat(),
            "type": "order.placed",
            "event_id": f"{customer}-o{i}",
            "order_id": f"{customer}-o{i}",
            "total": "10.00",
            "currency": "USD",
            "items": [{"sku": f"S{i % 40}", "quantity": 1, "unit_price": "10.00"}],
        }
        for i in range(WHALE_EVENTS - len(head))
    ]
    return head + orders


def with_uuid_ids(events: Sequence[Any]) -> list[Any]:
    """The same events with random (seeded) UUIDs as event ids, as most sources send
    them: the generator's ids (``cust-0000001-1``, ...) arrive in order, which lets the
    plain log's event-id index grow at its end while the encrypted log's keyed hashes of
    them land anywhere in theirs; with UUIDs both land anywhere."""
    rng = random.Random(SEED)
    return [
        msgspec.structs.replace(e, event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)))
        for e in events
    ]


def append_all(store: ProfileStore, events: Sequence[Any]) -> None:
    for i in range(0, len(events), BATCH):
        store.append(events[i : i + BATCH])


# --- 1. ingest ------------------------------------------------------------------------


def ingest(
    events: Sequence[Any],
    rounds: int,
    open_pair: Callable[[int], tuple[ProfileStore, ProfileStore]],
) -> dict[str, Any]:
    """Append ``events`` to a fresh encrypted and a fresh plain store, batch by batch,
    alternating which goes first, ``rounds`` times."""
    times: dict[str, list[float]] = {"encrypted": [], "plain": []}
    cpu: dict[str, float] = {"encrypted": 0.0, "plain": 0.0}
    perf, process = time.perf_counter_ns, time.process_time
    for round_ in range(rounds):
        encrypted, plain = open_pair(round_)
        spent = {"encrypted": 0, "plain": 0}
        try:
            gc.collect()
            for n, i in enumerate(range(0, len(events), BATCH)):
                batch = events[i : i + BATCH]
                order = [("encrypted", encrypted), ("plain", plain)]
                for name, store in order if (n + round_) % 2 == 0 else order[::-1]:
                    c0, t0 = process(), perf()
                    store.append(batch)
                    spent[name] += perf() - t0
                    cpu[name] += process() - c0
        finally:
            encrypted.close()
            plain.close()
        for name, ns in spent.items():
            times[name].append(ns / 1e9)
        info(
            f"  round {round_ + 1}/{rounds}: encrypted {spent['encrypted'] / 1e9:.2f}s, "
            f"plain {spent['plain'] / 1e9:.2f}s"
        )
    total = {name: sum(t) for name, t in times.items()}
    return {
        "events": len(events),
        "rounds": rounds,
        "encrypted_s": [round(t, 3) for t in times["encrypted"]],
        "plain_s": [round(t, 3) for t in times["plain"]],
        "encrypted_events_per_s": round(len(events) * rounds / total["encrypted"]),
        "plain_events_per_s": round(len(events) * rounds / total["plain"]),
        "encrypted_vs_plain": ratio(total["plain"], total["encrypted"]),
        # CPU seconds of this process in append (wall minus waiting for disk and cores):
        "encrypted_cpu_s": round(cpu["encrypted"], 3),
        "plain_cpu_s": round(cpu["plain"], 3),
        "encrypted_vs_plain_cpu": ratio(cpu["plain"], cpu["encrypted"]),
    }


def ingest_sqlite(work: Path, events: Sequence[Any], rounds: int) -> dict[str, Any]:
    def pair(round_: int) -> tuple[ProfileStore, ProfileStore]:
        return (
            open_store(settings_for(work / f"ingest-enc-{round_}", encryption=True)),
            open_store(settings_for(work / f"ingest-plain-{round_}", encryption=False)),
        )

    return ingest(events, rounds, pair)


def ingest_postgres(
    work: Path, url: str, events: Sequence[Any], rounds: int
) -> tuple[dict[str, Any], str]:
    schemas = PostgresSchemas(url)
    try:
        version = schemas.server_version()

        def pair(round_: int) -> tuple[ProfileStore, ProfileStore]:
            return (
                open_store(
                    settings_for(
                        work / f"pg-enc-{round_}",
                        encryption=True,
                        postgres=(url, schemas.new(f"enc{round_}")),
                    )
                ),
                open_store(
                    settings_for(
                        work / f"pg-plain-{round_}",
                        encryption=False,
                        postgres=(url, schemas.new(f"plain{round_}")),
                    )
                ),
            )

        return ingest(events, rounds, pair), version
    finally:
        schemas.close()


# --- 2. forget --------------------------------------------------------------------------


def forget_whales(work: Path, mode: dict[str, int]) -> dict[str, Any]:
    events = population(mode["store_customers"], mode["store_per_customer"])
    whales = [f"whale-{i:04d}" for i in range(mode["whales"] + 2)]
    store = open_store(settings_for(work / "forget", encryption=True))
    try:
        with stage(
            f"forget store: {len(events)} events of {mode['store_customers']} customers "
            f"+ {len(whales)} whales x {WHALE_EVENTS}"
        ):
            append_all(store, events)
            for name in whales:
                append_all(store, whale(name))
            store.refresh()
        whole: list[float] = []
        receipts: list[ErasureReceipt] = []
        for i, name in enumerate(whales[: mode["whales"]]):
            gc.collect()
            t0 = time.perf_counter()
            receipt = store.forget(name, request_id=f"bench-whale-{i}")
            whole.append(time.perf_counter() - t0)
            receipts.append(receipt)
            info(f"  forget {name}: {whole[-1]:.3f}s")
        with stage("forget split (the same calls, each timed)"):
            split = forget_split(store, whales[-2], "bench-split")
        with stage("forget under cProfile"):
            profile = profiled_forget(store, whales[-1], "bench-profiled")
        receipt = receipts[-1]
        files = [*store._log.recorder.local_files(), *store._documents.local_files()]
        sizes = {Path(f).name: Path(f).stat().st_size for f in files if Path(f).exists()}
    finally:
        store.close()
    return {
        "customers": mode["store_customers"] + len(whales),
        "events": len(events) + len(whales) * WHALE_EVENTS,
        "whale_events": WHALE_EVENTS,
        "forget_s": [round(t, 3) for t in whole],
        "forget_median_s": round(statistics.median(whole), 3),
        "receipt": {
            "data_keys_destroyed": receipt.data_keys_destroyed,
            "events_forgotten": receipt.events_forgotten,
            "deleted": dict(receipt.deleted),
            "files_searched": receipt.plaintext.files,
            "bytes_searched": receipt.plaintext.bytes_scanned,
            "values_searched": receipt.plaintext.values,
            "found": receipt.plaintext.found,
            "chain_intact": receipt.chain_intact,
        },
        "files_mb": {name: round(size / 2**20, 2) for name, size in sorted(sizes.items())},
        "split_s": split,
        "profile_cumulative_s": profile,
    }


def forget_split(store: ProfileStore, customer: str, request_id: str) -> dict[str, float]:
    """``forget``'s steps, in its order and with its calls, each timed (keep in step with
    ``ProfileStore.forget``)."""
    log, documents = store._log, store._documents
    times: dict[str, float] = {}
    perf = time.perf_counter

    t0 = perf()
    received = store.clock()
    profile_id = profile_of(documents, customer)
    members = set(store._graph().members(profile_id)) | {customer, profile_id}
    keys = sorted(m for m in members if not is_canonical(m))
    events = [e for key in keys for e in log.stream(key)]
    probes = probes_of(keys, events)
    position = log.head()
    times["gather_events_and_probes"] = perf() - t0

    t0 = perf()
    destroyed = log.destroy_keys(keys, received)
    times["destroy_keys"] = perf() - t0
    t0 = perf()
    store._settle(position)
    times["settle"] = perf() - t0
    t0 = perf()
    terms = sorted({p.decode() for p in probes} | set(keys))
    deleted = documents.erase(sorted(members), terms)
    times["erase_documents"] = perf() - t0
    t0 = perf()
    log.scrub_keys()
    times["scrub_key_store"] = perf() - t0
    t0 = perf()
    files = [*log.recorder.local_files(), *documents.local_files()]
    for _ in range(100):
        if documents.scrub() or not documents.local_files():
            break
        time.sleep(0.02)
    times["scrub_documents"] = perf() - t0
    t0 = perf()
    check = search_files(files, probes)
    times["plaintext_search"] = perf() - t0
    t0 = perf()
    compacted = bool(check.found)
    if compacted:
        # forget's fallback: a copy a page split once left where secure_delete never
        # looked. Settle, erase again, rebuild the file, then look again.
        store._settle(log.head())
        documents.erase(sorted(members), terms)
        for compact in (True, *[False] * 99):
            if documents.scrub(compact=compact) or not documents.local_files():
                break
            time.sleep(0.02)
        check = search_files(files, probes)
    times["compact_if_found"] = perf() - t0
    t0 = perf()
    intact = chain_intact(log, keys)
    times["chain_check"] = perf() - t0
    t0 = perf()
    completed = store.clock()
    receipt = ErasureReceipt(
        request_id=request_id,
        received_at=received,
        completed_at=completed,
        keys=len(keys),
        data_keys_destroyed=destroyed,
        events_forgotten=events_in(log, keys),
        deleted={k: v for k, v in sorted(deleted.items()) if v},
        plaintext=msgspec.structs.replace(check, compacted=compacted),
        chain_intact=intact,
        log_position=position,
    )
    log.append(
        [
            ErasureRecorded(
                event_id=f"erasure:{request_id}",
                customer_id=RECEIPTS,
                occurred_at=completed,
                recorded_at=completed,
                source="profilestore",
                receipt=receipt,
            )
        ]
    )
    times["receipt"] = perf() - t0
    assert check.found == 0, f"{check.found} of the probes found"
    assert intact and destroyed >= 1, (intact, destroyed)
    total = sum(times.values())
    return {**{k: round(v, 4) for k, v in times.items()}, "sum": round(total, 3)}


PROFILED = (
    "forget",
    "stream",
    "destroy_keys",
    "_settle",
    "erase",
    "scrub_keys",
    "scrub",
    "search_files",
    "chain_intact",
    "append",
    "_receipt",
)


def profiled_forget(store: ProfileStore, customer: str, request_id: str) -> dict[str, float]:
    """One ``forget`` under cProfile: cumulative seconds of its steps (inflated by the
    profiler, most in Python-heavy steps) and of the five costliest functions."""
    profiler = cProfile.Profile()
    profiler.enable()
    store.forget(customer, request_id=request_id)
    profiler.disable()
    stats = pstats.Stats(profiler)
    table: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    found: dict[str, float] = {}
    for (file, _line, function), (_cc, _nc, _tt, cumulative, _callers) in table.items():
        if "profilestore" not in file:
            continue
        if function in PROFILED:
            label = f"{Path(file).stem}.{function}"
            found[label] = round(found.get(label, 0.0) + cumulative, 4)
    own = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:5]
    for (file, line, function), (_cc, _nc, own_s, _ct, _callers) in own:
        found[f"own: {Path(file).name}:{line}({function})"] = round(own_s, 4)
    return found


# --- 3. rebuild and verify ----------------------------------------------------------------


def rebuild_and_verify(work: Path, mode: dict[str, int]) -> dict[str, Any]:
    events = population(mode["rebuild_customers"], mode["rebuild_per_customer"])
    stores = {
        "intact": open_store(settings_for(work / "rebuild-intact", encryption=True)),
        "forgotten": open_store(settings_for(work / "rebuild-forgotten", encryption=True)),
    }
    try:
        with stage(f"rebuild stores: {len(events)} events each, refreshed"):
            for store in stores.values():
                append_all(store, events)
                store.refresh()
        customers = sorted(stores["forgotten"]._log.customers())
        chosen = customers[:: round(1 / FORGOTTEN_SHARE)]
        with stage(f"forget {len(chosen)} of {len(customers)} customers"):
            begun = time.perf_counter()
            forgotten_events = 0
            for i, customer in enumerate(chosen):
                receipt = stores["forgotten"].forget(customer, request_id=f"bench-{i}")
                forgotten_events += receipt.events_forgotten
            forget_each = (time.perf_counter() - begun) / len(chosen)
        times: dict[str, dict[str, list[float]]] = {
            name: {"rebuild": [], "verify": []} for name in stores
        }
        checked: dict[str, int] = {}
        for round_ in range(mode["rebuild_rounds"]):
            order = list(stores) if round_ % 2 == 0 else list(stores)[::-1]
            with stage(f"rebuild + verify, round {round_ + 1} ({', '.join(order)})"):
                for name in order:
                    store = stores[name]
                    gc.collect()
                    t0 = time.perf_counter()
                    store.rebuild()
                    times[name]["rebuild"].append(time.perf_counter() - t0)
                    gc.collect()
                    t0 = time.perf_counter()
                    report = store.verify()
                    times[name]["verify"].append(time.perf_counter() - t0)
                    checked[name] = report.customers_checked
                    assert report.ok, f"{name}: verify found drift or failures"
    finally:
        for store in stores.values():
            store.close()
    median = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    return {
        "events": len(events),
        "customers": len(customers),
        "forgotten_customers": len(chosen),
        "forgotten_events": forgotten_events,
        "forget_each_s": round(forget_each, 3),
        "rounds": mode["rebuild_rounds"],
        **{
            f"{phase}_{name}_s": round(median[name][phase], 3)
            for name in stores
            for phase in ("rebuild", "verify")
        },
        "rebuild_forgotten_vs_intact": ratio(
            median["forgotten"]["rebuild"], median["intact"]["rebuild"]
        ),
        "verify_forgotten_vs_intact": ratio(
            median["forgotten"]["verify"], median["intact"]["verify"]
        ),
        "verify_checked": checked,
    }


# --- run ----------------------------------------------------------------------------------


def measure(mode_name: str, work: Path) -> dict[str, Any]:
    mode = MODES[mode_name]
    started = time.perf_counter()
    url = os.environ.get("PROFILESTORE_BENCH_POSTGRES_URL") or os.environ.get(
        "PROFILESTORE_TEST_POSTGRES_URL"
    )
    result: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode_name,
        "seed": SEED,
        "batch_size": BATCH,
        "source": source_state(),
    }
    result["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    events = population(mode["ingest_customers"], mode["ingest_per_customer"])
    with stage(f"ingest SQLite: {len(events)} events x {mode['ingest_rounds']} rounds"):
        result["ingest_sqlite"] = ingest_sqlite(work, events, mode["ingest_rounds"])
    uuid_events = with_uuid_ids(events[: len(events) // 2])
    with stage(f"ingest SQLite, UUID event ids: {len(uuid_events)} events x 2 rounds"):
        result["ingest_sqlite_uuid_ids"] = ingest_sqlite(work / "uuid", uuid_events, 2)
    postgres_version = None
    if url:
        pg_events = population(mode["postgres_customers"], mode["ingest_per_customer"])
        with stage(f"ingest PostgreSQL: {len(pg_events)} events x {mode['ingest_rounds']}"):
            result["ingest_postgres"], postgres_version = ingest_postgres(
                work, url, pg_events, mode["ingest_rounds"]
            )
    else:
        info("no PostgreSQL URL set: PostgreSQL ingest not measured")
        result["ingest_postgres"] = None
    result["machine"] = machine_info(postgres_version)
    result["forget"] = forget_whales(work, mode)
    result["rebuild"] = rebuild_and_verify(work, mode)
    figures = {
        "ingest_sqlite_encrypted_vs_plain": result["ingest_sqlite"]["encrypted_vs_plain"],
        "ingest_postgres_encrypted_vs_plain": (result["ingest_postgres"] or {}).get(
            "encrypted_vs_plain"
        ),
        "forget_whale_s": result["forget"]["forget_median_s"],
        "rebuild_forgotten_vs_intact": result["rebuild"]["rebuild_forgotten_vs_intact"],
        "verify_forgotten_vs_intact": result["rebuild"]["verify_forgotten_vs_intact"],
    }
    result["targets"] = judge(figures, TARGETS, COMPARE)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, limit: value >= limit,
    "<=": lambda value, limit: value <= limit,
    "<": lambda value, limit: value < limit,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes)")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "bench" / "results" / "privacy.json",
        help="where to write the JSON (default: bench/results/privacy.json)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the stores here (default: a temp dir)")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    mode = "quick" if args.quick else "full"
    return run_and_write(lambda work: measure(mode, work), mode, args, "profilestore-privacy-")


if __name__ == "__main__":
    sys.exit(main())
