"""What erasure costs the embedded document store: ``secure_delete`` on every write, one
``erase`` + ``scrub``, and the byte search that proves nothing is left.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/document_erasure.py --quick   # 3k customers, about a minute
    .venv/bin/python bench/document_erasure.py           # 10k customers, a few minutes

Prints one JSON object on stdout (progress on stderr) and writes it to
``bench/results/document_erasure.json`` (``--output`` to change).

What runs:

1. **Sections** (not timed): a population (``generate(customers, seed=7)``) is appended
   and refreshed in a reference store at half its events, then at all of them; both
   states' sections (with their lookup keys) are kept in memory.
2. **Writes under each ``secure_delete`` setting** (``OFF``, SQLite's default; ``FAST``;
   ``ON``, what the store uses): into a fresh store, the half-way sections are written
   (inserts), then the final ones over them (updates: each old cell is freed, and zeroed
   under ``ON``/``FAST``), per dataset in batches of 500 as a refresh writes them. The
   settings are interleaved round by round (rotating which goes first), so disk jitter
   and other processes land on all of them alike. ``*_vs_off`` = time / ``OFF`` time.
3. **Erasure** in the reference store (identity graph records included): ``erase`` of
   one customer (its key and identifiers) and ``scrub`` (WAL checkpoint, truncate), each
   timed per customer; then ``find_plaintext`` over the store's files, in MB/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "src", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench.core import (  # noqa: E402
    info,
    judge,
    machine_info,
    ratio,
    run_and_write,
    source_state,
    sqlite_settings,
    stage,
)
from profilestore.documents import DatasetSchema, SectionWrite  # noqa: E402
from profilestore.population import generate  # noqa: E402
from profilestore.sqlite_documents import SQLiteDocumentStore  # noqa: E402
from profilestore.sqlite_files import find_plaintext, store_files  # noqa: E402
from profilestore.store import ProfileStore, open_store  # noqa: E402

SEED = 7
BATCH = 500
SETTINGS = ("OFF", "FAST", "ON")
MODES: dict[str, dict[str, int]] = {
    "quick": {"customers": 3_000, "events_per_customer": 20, "rounds": 3, "erasures": 20},
    "full": {"customers": 10_000, "events_per_customer": 30, "rounds": 5, "erasures": 50},
}
TARGETS: dict[str, tuple[str, float]] = {
    "update_on_vs_off": ("<=", 1.15),
    "erase_p50_ms": ("<=", 250.0),
}
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)

Sections = dict[str, list[SectionWrite]]


class _Tuned(SQLiteDocumentStore):
    """The embedded store with ``secure_delete`` set to one setting on every connection."""

    secure_delete = "ON"

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        conn.execute(f"PRAGMA secure_delete={self.secure_delete}")
        return conn


def tuned(path: Path, schemas: dict[str, DatasetSchema], setting: str) -> SQLiteDocumentStore:
    store = type(f"_Tuned{setting}", (_Tuned,), {"secure_delete": setting})
    opened: SQLiteDocumentStore = store(str(path), schemas)
    return opened


def snapshot(store: ProfileStore) -> Sections:
    """Every live section of the store, as the writes that would store it again."""
    documents = store._documents
    found: Sections = {}
    for name, projection in store.projections.items():
        keys = projection.lookup_keys
        ids = sorted(documents.customer_ids(name))
        found[name] = [
            SectionWrite(cid, s.section, s.position, tuple(keys(s.section)) if keys else ())
            for cid, s in documents.load(name, ids).items()
        ]
    return found


def write_all(documents: SQLiteDocumentStore, sections: Sections, shift: int) -> float:
    """Seconds to write every section (positions moved up by ``shift``), in batches."""
    started = time.perf_counter()
    for name, writes in sections.items():
        for i in range(0, len(writes), BATCH):
            batch = [w._replace(position=w.position + shift) for w in writes[i : i + BATCH]]
            documents.write(name, batch, refreshed_at=T0)
    return time.perf_counter() - started


def measure(mode_name: str, work: Path) -> dict[str, Any]:
    mode = MODES[mode_name]
    started = time.perf_counter()
    result: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode_name,
        "seed": SEED,
        "machine": machine_info(None),
        "source": source_state(),
    }
    settings = sqlite_settings(work / "reference")
    with stage(f"generate {mode['customers']} customers x ~{mode['events_per_customer']}"):
        events = list(
            generate(mode["customers"], seed=SEED, events_per_customer=mode["events_per_customer"])
        )
    half = len(events) // 2
    reference = open_store(settings)
    try:
        with stage(f"reference store: {len(events)} events, refreshed at half and at all"):
            for i in range(0, half, BATCH):
                reference.append(events[i : i + BATCH])
            reference.refresh()
            early = snapshot(reference)
            for i in range(half, len(events), BATCH):
                reference.append(events[i : i + BATCH])
            reference.refresh()
            final = snapshot(reference)
        schemas = dict(reference._documents.schemas)
        shift = max(w.position for ws in early.values() for w in ws)
        result["sections"] = {
            "early": sum(len(ws) for ws in early.values()),
            "final": sum(len(ws) for ws in final.values()),
        }
        result["writes"] = writes(work, schemas, early, final, shift, mode["rounds"])
        result["erasure"] = erasures(reference, final, mode["erasures"])
    finally:
        reference.close()
    figures = {
        "insert_on_vs_off": result["writes"]["insert_on_vs_off"],
        "update_on_vs_off": result["writes"]["update_on_vs_off"],
        "erase_p50_ms": result["erasure"]["erase_ms"]["p50"],
    }
    result["targets"] = judge(figures, TARGETS)
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def writes(
    work: Path,
    schemas: dict[str, DatasetSchema],
    early: Sections,
    final: Sections,
    shift: int,
    rounds: int,
) -> dict[str, Any]:
    times: dict[str, dict[str, list[float]]] = {s: {"insert": [], "update": []} for s in SETTINGS}
    sizes: dict[str, int] = {}
    for round_ in range(rounds):
        order = SETTINGS[round_ % 3 :] + SETTINGS[: round_ % 3]
        with stage(f"writes, round {round_ + 1}/{rounds} ({', '.join(order)})"):
            for setting in order:
                path = work / f"writes-{setting}-{round_}.sqlite"
                documents = tuned(path, schemas, setting)
                try:
                    times[setting]["insert"].append(write_all(documents, early, 0))
                    times[setting]["update"].append(write_all(documents, final, shift))
                    documents.scrub()
                finally:
                    documents.close()
                sizes[setting] = path.stat().st_size
                for file in store_files(path):
                    file.unlink()
    median = {s: {k: statistics.median(v) for k, v in t.items()} for s, t in times.items()}
    found: dict[str, Any] = {
        f"{phase}_{s.lower()}_s": round(median[s][phase], 3)
        for s in SETTINGS
        for phase in ("insert", "update")
    }
    for phase in ("insert", "update"):
        for s in ("FAST", "ON"):
            found[f"{phase}_{s.lower()}_vs_off"] = ratio(median[s][phase], median["OFF"][phase])
    found["rounds"] = rounds
    found["file_mb"] = {s: round(size / 2**20, 1) for s, size in sizes.items()}
    return found


def erasures(reference: ProfileStore, final: Sections, count: int) -> dict[str, Any]:
    documents = reference._documents
    assert isinstance(documents, SQLiteDocumentStore)
    identities = {w.customer_id: w.lookup_keys for w in final["identities"]}
    chosen = sorted(identities)[:: max(1, len(identities) // count)][:count]
    erase_ns: list[int] = []
    scrub_ns: list[int] = []
    counted: dict[str, int] = {}
    with stage(f"erase and scrub {len(chosen)} customers one at a time"):
        for customer in chosen:
            members = reference.members(reference.resolve(customer)) or (customer,)
            keys = identities[customer]
            terms = [*keys, *(k.split(":", 1)[1] for k in keys)]
            begun = time.perf_counter_ns()
            counts = documents.erase([reference.resolve(customer), *members], terms)
            erased = time.perf_counter_ns()
            assert documents.scrub()
            erase_ns.append(erased - begun)
            scrub_ns.append(time.perf_counter_ns() - erased)
            for kind, n in counts.items():
                counted[kind] = counted.get(kind, 0) + n
    files = store_files(documents.path)
    total = sum(f.stat().st_size for f in files)
    probes = [f"probe-{i}-not-stored".encode() for i in range(5)]
    with stage(f"find_plaintext: 5 probes over {total / 2**20:.1f} MB"):
        begun = time.perf_counter()
        assert find_plaintext(files, probes) == []
        seconds = time.perf_counter() - begun
    records = documents._connection().execute("SELECT count(*) FROM records").fetchone()[0]
    return {
        "customers": len(chosen),
        "records_in_store": records,
        "erase_ms": summary(erase_ns),
        "scrub_ms": summary(scrub_ns),
        "erased_per_customer": {k: round(n / len(chosen), 2) for k, n in sorted(counted.items())},
        "find_plaintext": {
            "files_mb": round(total / 2**20, 1),
            "seconds": round(seconds, 3),
            "mb_per_s": round(total / 2**20 / seconds, 1) if seconds else None,
        },
    }


def summary(samples_ns: Sequence[int]) -> dict[str, float]:
    values = sorted(samples_ns)
    return {
        "p50": round(values[len(values) // 2] / 1e6, 2),
        "max": round(values[-1] / 1e6, 2),
        "mean": round(sum(values) / len(values) / 1e6, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3k customers (about a minute)")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "bench" / "results" / "document_erasure.json",
        help="where to write the JSON (default: bench/results/document_erasure.json)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the stores here (default: a temp dir)")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    mode = "quick" if args.quick else "full"
    info(f"secure_delete settings compared: {', '.join(SETTINGS)}")
    return run_and_write(lambda work: measure(mode, work), mode, args, "profilestore-erasure-")


if __name__ == "__main__":
    sys.exit(main())
