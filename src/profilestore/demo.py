"""``profilestore demo``: the product working end to end in a couple of minutes.

Generates a synthetic population (:mod:`profilestore.population`, fixed seed), ingests it
in batches through the same path as ``ingest``, refreshes every dataset, then times
lookups by customer id and by email, and shows one profile. Running it again is safe:
every event is a duplicate the second time, so nothing changes.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from profilestore.events import Event
from profilestore.population import generate
from profilestore.store import ProfileStore

T = TypeVar("T")
LOOKUPS = 2000


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_demo(
    store: ProfileStore,
    *,
    customers: int,
    seed: int,
    events_per_customer: float,
    console: Console,
    emit: Callable[[Any], None],
) -> dict[str, Any]:
    expected = int(customers * events_per_customer)
    progress = Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    appended = duplicates = 0
    with progress:
        task = progress.add_task("ingest", total=expected)
        started = time.perf_counter()
        population: Iterable[Event] = generate(
            customers, seed=seed, events_per_customer=events_per_customer
        )
        for batch in _batched(population, store.settings.projector.ingest_batch):
            result = store.append(batch)
            appended += result.appended
            duplicates += result.duplicates
            progress.update(task, advance=len(batch), total=max(expected, appended + duplicates))
        ingest_s = time.perf_counter() - started
        progress.update(task, total=appended + duplicates, completed=appended + duplicates)

        refresh_task = progress.add_task("refresh", total=None)
        started = time.perf_counter()
        report = store.refresh(
            progress=lambda done, total: progress.update(refresh_task, completed=done, total=total)
        )
        refresh_s = time.perf_counter() - started
        progress.update(refresh_task, total=report.events_read, completed=report.events_read)

        score_task = progress.add_task("score", total=1)
        started = time.perf_counter()
        # Every profile scored (lifecycle, journey, 4I, RFM, value, lifetime value): a fit
        # is made on this population first, as the weekly refit would.
        scored = store.score() if "scores" in store.projections else None
        score_s = time.perf_counter() - started
        progress.update(score_task, completed=1)

    ids = [f"cust-{n:07d}" for n in range(1, customers + 1)]
    sample_ids = random.Random(seed).sample(ids, min(LOOKUPS, len(ids)))
    by_id: list[float] = []
    emails: list[str] = []
    for customer_id in sample_ids:
        started = time.perf_counter()
        found = store.profile(customer_id)
        by_id.append((time.perf_counter() - started) * 1e6)
        identities = found.sections.get("identities")
        for identifier in identities.identifiers if identities else ():
            if identifier.kind == "email":
                emails.append(identifier.value)
                break
    by_email: list[float] = []
    for email in emails:
        started = time.perf_counter()
        store.find("email", email)
        by_email.append((time.perf_counter() - started) * 1e6)

    sample = store.profile(_interesting_customer(store, sample_ids))
    figures = {
        "customers": customers,
        "events_appended": appended,
        "events_duplicate": duplicates,
        "ingest_events_per_s": round((appended + duplicates) / ingest_s),
        "refresh_events_per_s": round(report.events_read / refresh_s) if refresh_s else None,
        "refresh_events_read": report.events_read,
        "scored_profiles": scored.sections_written.get("scores", 0) if scored else 0,
        "score_s": round(score_s, 2),
        "lookup_id_p50_us": round(statistics.median(by_id), 1),
        "lookup_id_p99_us": round(_percentile(by_id, 0.99), 1),
        "lookup_email_p50_us": round(statistics.median(by_email), 1) if by_email else None,
        "lookup_email_p99_us": round(_percentile(by_email, 0.99), 1) if by_email else None,
        "home": str(store.settings.home),
    }
    emit({"sample_profile": sample, "figures": figures})
    table = Table(title="profilestore demo", show_header=False)
    for key, value in figures.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
    console.print(f"Try: profilestore --home {store.settings.home} profile {sample.customer_id}")
    if scored:
        console.print(
            f"     profilestore --home {store.settings.home} scores explain {sample.customer_id}"
        )
    return figures


def _interesting_customer(store: ProfileStore, candidates: Sequence[str]) -> str:
    """A customer whose profile shows off several datasets (an abandoned cart, an order)."""
    for customer_id in candidates[:200]:
        profile = store.profile(customer_id)
        carts = profile.sections.get("carts")
        orders = profile.sections.get("orders")
        if (
            carts
            and carts.abandoned
            and orders
            and orders.order_count
            and len(profile.sections) >= 7
        ):
            return customer_id
    return candidates[0]
