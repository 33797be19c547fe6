"""Scores benchmark: fit and score a million profiles, write every profile's scores.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/scores.py            # full run: 250k and 1M customers
    .venv/bin/python bench/scores.py --quick    # 20k and 100k customers

Prints one JSON object on stdout (progress on stderr) and writes it to
``bench/results/scores.json`` (``--output`` to change). ``bench/README.md`` ("Scores")
says what every figure means.

The population is drawn from the BG/NBD and Gamma-Gamma processes with a known future
(:func:`profilestore.ltv_simulation.simulate`), as in ``bench/ltv.py``. Building a million
full profiles from events would take the log hours on this machine, so each customer's
**score inputs** (the ``engagement`` section the fold would have made of their orders,
visits and clicks: :func:`~profilestore.ltv_simulation.engagement_sections`) are written
directly into the embedded document store through its port; everything after that is the
shipped path: ``ProfileStore.fit_scores()`` (the weekly refit: fit, then score every
profile into staging and swap it in) and ``ProfileStore.score()`` (the daily re-score),
each a run of the scoring handler under the consumer loop; then the daily re-score again
with ``[scores] swap = false`` (written in place), the alternative, in the same run. The
held-out ranking reads the written ``scores`` sections back. Every size runs in a child
process of its own, so its peak memory is its own; the largest size runs again with a
busier population (customers buying ``BUSIER`` times as often) to show memory follows
customers, not events.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "src", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import msgspec  # noqa: E402
import numpy as np  # noqa: E402

from bench.core import (  # noqa: E402
    COMPARE,
    PeakAnonymous,
    info,
    judge,
    machine_info,
    memory_status,
    ratio,
    run_and_write,
    run_child,
    source_state,
    stage,
)
from bench.ltv import HELD_OUT_DAYS, SEED, TRUTH_PURCHASES, TRUTH_SPEND, spearman  # noqa: E402
from profilestore.config import load_settings  # noqa: E402
from profilestore.documents import SectionWrite  # noqa: E402
from profilestore.ltv_simulation import engagement_sections, simulate  # noqa: E402
from profilestore.sqlite_documents import sqlite_path  # noqa: E402
from profilestore.store import load_projections, open_documents, open_store  # noqa: E402

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
BUSIER = 4
WRITE_BATCH = 20_000

MODES: dict[str, dict[str, Any]] = {
    "quick": {"sizes": [20_000, 100_000]},
    "full": {"sizes": [250_000, 1_000_000]},
}

TARGETS = {
    "fit_s": ("<=", 60.0),
    "rescore_s": ("<=", 120.0),
    "spearman_vs_naive": (">=", 1.0),
    "working_busier_vs_base": ("<=", 1.1),
}


def child(home: Path, size: int, busier: int, copy: bool) -> None:
    """Runs in a subprocess: build the inputs, refit (fit + score), re-score, rank, and
    time the promotion alone (``copy``: and copying the rows, its alternative)."""
    settings = load_settings(environ={}, home=home)
    truth = msgspec.structs.replace(
        TRUTH_PURCHASES, alpha=TRUTH_PURCHASES.alpha / busier, b=TRUTH_PURCHASES.b * busier
    )
    customers = simulate(truth, TRUTH_SPEND, size, horizon_days=HELD_OUT_DAYS, seed=SEED)
    ids = [f"c{i:07d}" for i in range(size)]
    started = time.perf_counter()
    documents = open_documents(settings, load_projections(settings))
    batch: list[SectionWrite] = []
    for customer_id, section in zip(ids, engagement_sections(customers, NOW), strict=True):
        batch.append(SectionWrite(customer_id, section, 1))
        if len(batch) == WRITE_BATCH:
            documents.write("engagement", batch, refreshed_at=NOW)
            batch = []
    documents.write("engagement", batch, refreshed_at=NOW)
    documents.advance("engagement", 1, refreshed_at=NOW)
    documents.close()
    build_s = time.perf_counter() - started
    future = customers.future_spend
    past = customers.past_spend
    orders_per_customer = float(customers.frequency.mean()) + 1
    del customers
    gc.collect()
    baseline = memory_status()
    with open_store(settings, clock=lambda: NOW) as store, PeakAnonymous() as anonymous:
        started, cpu = time.perf_counter(), time.process_time()
        refit = store.fit_scores()
        refit_s = time.perf_counter() - started
        refit_cpu_s = time.process_time() - cpu
        fitted = store.score_fit()
        assert fitted is not None and refit.sections_written["scores"] == size
        started, cpu = time.perf_counter(), time.process_time()
        rescored = store.score(required=True)
        rescore_s = time.perf_counter() - started
        rescore_cpu_s = time.process_time() - cpu
        assert rescored.sections_written["scores"] == size
        summary = store.scores_summary()
    after = memory_status()
    # The alternative, in the same run: the daily re-score written in place (no swap).
    in_place = msgspec.structs.replace(
        settings, scores=msgspec.structs.replace(settings.scores, swap=False)
    )
    with open_store(in_place, clock=lambda: NOW) as store:
        started, cpu = time.perf_counter(), time.process_time()
        rescored = store.score(required=True)
        in_place_s = time.perf_counter() - started
        in_place_cpu_s = time.process_time() - cpu
        assert rescored.sections_written["scores"] == size
    # Read the written sections back (the port, in chunks) for the held-out ranking.
    documents = open_documents(settings, load_projections(settings), read_only=True)
    predicted = np.zeros(size)
    for start in range(0, size, WRITE_BATCH):
        chunk = ids[start : start + WRITE_BATCH]
        stored = documents.load("scores", chunk)
        for i, customer_id in enumerate(chunk, start):
            lifetime = stored[customer_id].section.lifetime
            predicted[i] = lifetime.expected_spend if lifetime is not None else 0.0
    documents.close()
    swap_s, copy_s = promotion(settings, copy=copy)
    report = {
        "customers": size,
        "orders_per_customer": round(orders_per_customer, 3),
        "build_inputs_s": round(build_s, 2),
        "fit_s": round(fitted.fit_seconds, 2),
        "refit_and_score_s": round(refit_s, 2),
        "rescore_s": round(rescore_s, 2),
        "rescore_customers_per_s": round(size / rescore_s),
        "rescore_in_place_s": round(in_place_s, 2),
        "refit_and_score_cpu_s": round(refit_cpu_s, 2),
        "rescore_cpu_s": round(rescore_cpu_s, 2),
        "rescore_in_place_cpu_s": round(in_place_cpu_s, 2),
        "promote_swap_s": round(swap_s, 4),
        "promote_copy_s": round(copy_s, 2) if copy_s is not None else None,
        "baseline_rss_mb": round(baseline["VmRSS"], 1),
        "peak_rss_mb": round(after["VmHWM"], 1),
        "working_mb": round(after["VmHWM"] - baseline["VmRSS"], 1),
        "peak_anon_mb": round(anonymous.peak_mb, 1),
        "fit_version": fitted.version,
        "ltv_note": fitted.ltv_note,
        "ltv": msgspec.to_builtins(fitted.ltv) if fitted.ltv else None,
        "summary": {
            "lifecycle": summary.lifecycle,
            "journey": summary.journey,
            "value_tier": summary.value_tier,
            "predicted_value": summary.predicted_value,
            "transitions": summary.transitions,
        },
        "spearman_ours": round(spearman(predicted, future), 4),
        "spearman_naive_past_spend": round(spearman(past, future), 4),
        "documents_mb": round(
            sum(p.stat().st_size for p in home.glob("documents.sqlite*")) / 2**20, 1
        ),
    }
    print(msgspec.json.encode(report).decode())


def promotion(settings: Any, *, copy: bool) -> tuple[float, float | None]:
    """The swap alone (promoting a full staging area: renames), and with ``copy`` its
    alternative, what promotion did before: copying every staged row into ``sections``
    (into a scratch table of its shape, dropped after)."""
    documents = open_documents(settings, load_projections(settings))
    documents.start_staging("scores", reuse=True)  # the spare: every customer's sections
    documents.advance("scores", 1, refreshed_at=NOW, staging=True)
    started = time.perf_counter()
    documents.promote_staging("scores")
    swap_s = time.perf_counter() - started
    documents.close()
    if not copy:
        return swap_s, None
    import sqlite3

    with sqlite3.connect(sqlite_path(settings.url(settings.documents.url))) as conn:
        conn.execute(
            "CREATE TABLE copied (customer_id TEXT NOT NULL, dataset TEXT NOT NULL, "
            "position INTEGER NOT NULL, refreshed_at TEXT NOT NULL, body BLOB NOT NULL, "
            "PRIMARY KEY (customer_id, dataset)) WITHOUT ROWID"
        )
        started = time.perf_counter()
        conn.execute(
            "INSERT INTO copied SELECT customer_id, 'scores', position, refreshed_at, body "
            "FROM d_scores ORDER BY customer_id"
        )
        conn.commit()
        copy_s = time.perf_counter() - started
        conn.execute("DROP TABLE copied")
    return swap_s, copy_s


def measure(work: Path, size: int, busier: int = 1, *, copy: bool = False) -> dict[str, Any]:
    label = f"{size:,} customers{', busier buyers' if busier > 1 else ''}"
    home = work / f"home-{size}-{busier}"
    with stage(f"build inputs, fit and score {label} (child process)"):
        report = run_child(
            Path(__file__).resolve(), "--child", str(home), str(size), str(busier), str(int(copy))
        )
    info(
        f"{label}: fit {report['fit_s']}s, refit+score {report['refit_and_score_s']}s, "
        f"re-score {report['rescore_s']}s (in place {report['rescore_in_place_s']}s, "
        f"cpu {report['rescore_cpu_s']}s), promote {report['promote_swap_s']}s, "
        f"peak RSS {report['peak_rss_mb']} MB, spearman "
        f"{report['spearman_ours']} vs naive {report['spearman_naive_past_spend']}"
    )
    for path in home.glob("*.sqlite*"):
        path.unlink()
    return report


def run(mode_name: str, work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode_name,
        "seed": SEED,
        "machine": machine_info(None),
        "source": source_state(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }
    sizes = MODES[mode_name]["sizes"]
    # The copying promotion (the alternative) is timed at the smaller size only: at a
    # million it alone takes minutes on this machine.
    by_size = {str(size): measure(work, size, copy=size == sizes[0]) for size in sizes}
    largest, smaller = by_size[str(sizes[-1])], by_size[str(sizes[0])]
    busier = measure(work, sizes[-1], BUSIER)
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    figures = {
        "customers": sizes[-1],
        "fit_s": largest["fit_s"],
        "refit_and_score_s": largest["refit_and_score_s"],
        "rescore_s": largest["rescore_s"],
        "rescore_customers_per_s": largest["rescore_customers_per_s"],
        "rescore_in_place_s": largest["rescore_in_place_s"],
        "rescore_swap_vs_in_place": ratio(largest["rescore_s"], largest["rescore_in_place_s"]),
        "rescore_cpu_s": largest["rescore_cpu_s"],
        "rescore_in_place_cpu_s": largest["rescore_in_place_cpu_s"],
        "promote_swap_s": largest["promote_swap_s"],
        "promote_swap_smaller_s": smaller["promote_swap_s"],
        "promote_copy_smaller_s": smaller["promote_copy_s"],
        "promote_copy_vs_swap_smaller": ratio(smaller["promote_copy_s"], smaller["promote_swap_s"]),
        "peak_rss_mb": largest["peak_rss_mb"],
        "peak_anon_mb": largest["peak_anon_mb"],
        "working_mb": largest["working_mb"],
        "working_larger_vs_smaller": ratio(largest["working_mb"], smaller["working_mb"]),
        "customers_larger_vs_smaller": ratio(sizes[-1], sizes[0]),
        "working_busier_vs_base": ratio(busier["working_mb"], largest["working_mb"]),
        "orders_busier_vs_base": ratio(
            busier["orders_per_customer"], largest["orders_per_customer"]
        ),
        "spearman_ours": largest["spearman_ours"],
        "spearman_naive_past_spend": largest["spearman_naive_past_spend"],
        "spearman_vs_naive": ratio(largest["spearman_ours"], largest["spearman_naive_past_spend"]),
    }
    result |= figures
    result["targets"] = judge(figures, TARGETS, COMPARE)
    result["details"] = {"sizes": by_size, "busier": busier}
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "bench" / "results" / "scores.json",
        help="where to write the JSON (default: bench/results/scores.json)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the stores here")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        home, size, busier, copy = args.child
        child(Path(home), int(size), int(busier), copy == "1")
        return 0
    mode = "quick" if args.quick else "full"
    return run_and_write(lambda work: run(mode, work), mode, args, "profilestore-bench-scores-")


if __name__ == "__main__":
    sys.exit(main())
