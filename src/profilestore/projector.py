"""Folds the log into documents: incremental refreshes and full rebuilds.

One pass serves any set of datasets. It reads the notification log after the lowest
tracked position of those datasets, up to a high-water mark fixed when the pass starts
(so a run has a defined end), decodes each event once, and routes it to the datasets
that read its type. Per customer it folds only events newer than the position its stored
section records, so events already applied are skipped, never applied twice.

Sections being folded are kept in a bounded in-memory cache; they are written (guarded by
position) when the cache is full and at the end, and only then does the dataset's tracking
advance. A crash anywhere leaves tracking at or behind every stored section, so a restart
re-reads a little and skips what was already written: the result equals a rebuild.
Memory is bounded by the cache size, not by the number of events.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from profilestore.documents import DocumentStore, SectionWrite, StoredSection
from profilestore.errors import LeaseHeld
from profilestore.eventlog import EventLog
from profilestore.projection import Projection

Clock = Callable[[], dt.datetime]
Progress = Callable[[int, int], None]
"""Called with (events read so far, events to read in this pass)."""

LEASE_TTL = dt.timedelta(seconds=60)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class PassReport:
    """What a refresh or rebuild pass did."""

    datasets: list[str]
    start: int
    high_water: int
    events_read: int = 0
    events_applied: dict[str, int] = field(default_factory=dict)
    sections_written: dict[str, int] = field(default_factory=dict)
    skipped_locked: list[str] = field(default_factory=list)


@dataclass
class _DatasetRun:
    projection: Projection[Any]
    position: int
    cache: dict[str, StoredSection] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    applied: int = 0
    written: int = 0


class Projector:
    def __init__(
        self,
        log: EventLog,
        documents: DocumentStore,
        projections: Mapping[str, Projection[Any]],
        *,
        clock: Clock = utcnow,
        page_size: int = 5000,
        cache_sections: int = 50_000,
    ) -> None:
        self.log = log
        self.documents = documents
        self.projections = dict(projections)
        self.clock = clock
        self.page_size = page_size
        self.cache_sections = cache_sections
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # --- public operations -------------------------------------------------------------

    def refresh(
        self,
        datasets: Sequence[str] | None = None,
        *,
        until: int | None = None,
        progress: Progress | None = None,
    ) -> PassReport:
        """Fold new events into the live documents of ``datasets`` (default: all).

        Datasets whose lease another process holds are skipped and listed in the report.
        """
        names = list(datasets) if datasets is not None else list(self.projections)
        locked = self._acquire(names, required=False)
        try:
            held = [n for n in names if n not in locked]
            report = self._run_pass(held, staging=False, until=until, progress=progress)
            report.skipped_locked = locked
            return report
        finally:
            self._release([n for n in names if n not in locked])

    def rebuild(
        self, datasets: Sequence[str] | None = None, *, progress: Progress | None = None
    ) -> PassReport:
        """Rebuild datasets from the whole log into staging, then swap them in.

        Lookups keep reading the old sections until the swap. The new sections cover the
        log up to the head as it was when the rebuild started; call :meth:`refresh`
        afterwards to catch up with events appended meanwhile.
        """
        names = list(datasets) if datasets is not None else list(self.projections)
        self._acquire(names, required=True)
        try:
            for name in names:
                self.documents.start_staging(name)
            report = self._run_pass(names, staging=True, until=None, progress=progress)
            for name in names:
                # An empty log still records a (zero) position, so promotion has a source.
                self.documents.advance(
                    name, report.high_water, refreshed_at=self.clock(), staging=True
                )
                self.documents.promote_staging(name)
            return report
        finally:
            self._release(names)

    # --- leases -------------------------------------------------------------------------

    def _acquire(self, names: Sequence[str], *, required: bool) -> list[str]:
        locked: list[str] = []
        for name in names:
            if name not in self.projections:
                raise KeyError(name)
            lease = f"dataset:{name}"
            if not self.documents.acquire_lease(lease, self.holder, LEASE_TTL, self.clock()):
                locked.append(name)
        if locked and required:
            self._release([n for n in names if n not in locked])
            holder = self.documents.lease_holder(f"dataset:{locked[0]}", self.clock())
            raise LeaseHeld(f"dataset {locked[0]!r}", holder or "another process")
        return locked

    def _renew(self, names: Sequence[str]) -> None:
        for name in names:
            if not self.documents.acquire_lease(
                f"dataset:{name}", self.holder, LEASE_TTL, self.clock()
            ):
                raise LeaseHeld(f"dataset {name!r}", "another process (our lease expired)")

    def _release(self, names: Sequence[str]) -> None:
        for name in names:
            self.documents.release_lease(f"dataset:{name}", self.holder)

    # --- the pass -------------------------------------------------------------------------

    def _run_pass(
        self,
        names: Sequence[str],
        *,
        staging: bool,
        until: int | None,
        progress: Progress | None,
    ) -> PassReport:
        head = self.log.head()
        high_water = head if until is None else min(until, head)
        runs: dict[str, _DatasetRun] = {}
        for name in names:
            tracked = self.documents.tracking(name, staging=staging)
            runs[name] = _DatasetRun(self.projections[name], tracked.position if tracked else 0)
        start = min((r.position for r in runs.values()), default=high_water)
        report = PassReport(list(names), start, high_water)
        pending = {n: r for n, r in runs.items() if r.position < high_water}
        routes: dict[str, list[_DatasetRun]] = {}
        for run in pending.values():
            for topic in run.projection.topics:
                routes.setdefault(topic, []).append(run)
        after = start
        last_renewal = self.clock()
        while pending and after < high_water:
            page = self.log.changes(after, self.page_size, until=high_water, topics=list(routes))
            if not page:
                break
            self._fold_page(page, routes, staging)
            after = page[-1].notification_id
            report.events_read += len(page)
            if progress:
                progress(report.events_read, high_water - start)
            if sum(len(r.cache) for r in pending.values()) >= self.cache_sections:
                self._flush(pending, after, staging)
            if self.clock() - last_renewal > LEASE_TTL / 3:
                self._renew(list(pending))
                last_renewal = self.clock()
        self._flush(runs, high_water, staging)
        report.events_applied = {n: r.applied for n, r in runs.items()}
        report.sections_written = {n: r.written for n, r in runs.items()}
        return report

    def _fold_page(
        self, page: Sequence[Any], routes: Mapping[str, list[_DatasetRun]], staging: bool
    ) -> None:
        # Group per dataset and customer first, so each dataset loads its sections once.
        grouped: dict[int, tuple[_DatasetRun, dict[str, list[Any]]]] = {}
        for logged in page:
            for run in routes.get(logged.topic, ()):
                if logged.notification_id <= run.position:
                    continue
                _, by_customer = grouped.setdefault(id(run), (run, {}))
                by_customer.setdefault(logged.event.customer_id, []).append(logged)
        for run, by_customer in grouped.values():
            name = run.projection.dataset
            missing = [c for c in by_customer if c not in run.cache]
            if missing:
                run.cache.update(self.documents.load(name, missing, staging=staging))
            fold = run.projection.fold
            empty = run.projection.empty
            for customer_id, events in by_customer.items():
                stored = run.cache.get(customer_id)
                section, position = stored if stored else (empty(), 0)
                applied = 0
                for logged in events:
                    if logged.notification_id <= position:
                        continue  # already folded into the stored section
                    section = fold(section, logged.event)
                    position = logged.notification_id
                    applied += 1
                if applied:
                    run.cache[customer_id] = StoredSection(section, position)
                    run.dirty.add(customer_id)
                    run.applied += applied

    def _flush(self, runs: Mapping[str, _DatasetRun], position: int, staging: bool) -> None:
        # Every dataset's sections are written before any tracking advances, so a failure
        # in between leaves all of them replayable from their previous positions.
        now = self.clock()
        for name, run in runs.items():
            if not run.dirty:
                continue
            keys = run.projection.lookup_keys
            writes = []
            for customer_id in run.dirty:
                stored = run.cache[customer_id]
                lookup = tuple(keys(stored.section)) if keys else ()
                writes.append(SectionWrite(customer_id, stored.section, stored.position, lookup))
            run.written += self.documents.write(name, writes, refreshed_at=now, staging=staging)
        for name, run in runs.items():
            if position > run.position:
                self.documents.advance(name, position, refreshed_at=now, staging=staging)
                run.position = position
            run.dirty.clear()
            run.cache.clear()
