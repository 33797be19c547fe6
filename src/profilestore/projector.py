"""Folds the log into documents: incremental refreshes, full rebuilds, live following.

One pass serves any set of datasets. It folds pages of events (read from the log after
the lowest tracked position of those datasets, up to a high-water mark fixed when the
pass starts, so a run has a defined end; or handed over by the real-time follower),
decodes each event once, and routes it to the datasets that read its type. Per customer
it folds only events newer than the position its stored section records, so events
already applied are skipped, never applied twice.

Sections being folded are kept in a bounded in-memory cache; they are written (guarded by
position) when the cache is full and at the end, and only then does the dataset's tracking
advance. A crash anywhere leaves tracking at or behind every stored section, so a restart
re-reads a little and skips what was already written: the result equals a rebuild.
Memory is bounded by the cache size, not by the number of events.

Refreshes are lenient about poison events (see :mod:`profilestore.runs`): the failing
event is dead-lettered and its customer parked for that dataset, and everything else
goes on. Rebuilds are strict: any failure aborts the rebuild and the live dataset stays.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from profilestore.documents import DocumentStore, SectionWrite, StoredSection
from profilestore.errors import LeaseHeld
from profilestore.eventlog import EventLog, Notified
from profilestore.projection import Projection
from profilestore.runs import DeadLetter, Journal

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
    dead_letters: dict[str, int] = field(default_factory=dict)
    skipped_locked: list[str] = field(default_factory=list)


@dataclass
class _DatasetRun:
    projection: Projection[Any]
    position: int
    parked: set[str] = field(default_factory=set)
    cache: dict[str, StoredSection] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    applied: int = 0
    written: int = 0
    dead_letters: int = 0


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
        lease_ttl: dt.timedelta = LEASE_TTL,
    ) -> None:
        self.log = log
        self.documents = documents
        self.journal = Journal(documents)
        self.projections = dict(projections)
        self.clock = clock
        self.page_size = page_size
        self.cache_sections = cache_sections
        self.lease_ttl = lease_ttl
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
        locked = self.acquire(names, required=False)
        held = [n for n in names if n not in locked]
        try:
            report = self.run_pass(held, until=until, progress=progress)
            report.skipped_locked = locked
            return report
        finally:
            self.release(held)

    def rebuild(
        self, datasets: Sequence[str] | None = None, *, progress: Progress | None = None
    ) -> PassReport:
        """Rebuild datasets from the whole log into staging, then swap them in.

        Lookups keep reading the old sections until the swap. The new sections cover the
        log up to the head as it was when the rebuild started; call :meth:`refresh`
        afterwards to catch up with events appended meanwhile. Strict: a fold that fails
        aborts the rebuild and leaves the live datasets as they were.
        """
        names = list(datasets) if datasets is not None else list(self.projections)
        self.acquire(names, required=True)
        try:
            for name in names:
                self.documents.start_staging(name)
            report = self.run_pass(names, staging=True, progress=progress, strict=True)
            for name in names:
                # An empty log still records a (zero) position, so promotion has a source.
                self.documents.advance(
                    name, report.high_water, refreshed_at=self.clock(), staging=True
                )
                self.documents.promote_staging(name)
                # Every event folded cleanly: nothing is parked any more.
                for letter in self.journal.dead_letters(name):
                    self.journal.release(name, letter.customer_id)
            return report
        finally:
            self.release(names)

    def retry_dead_letters(self, dataset: str) -> tuple[int, int]:
        """Refold each parked customer of ``dataset``; returns (released, still failing)."""
        self.acquire([dataset], required=True)
        try:
            projection = self.projections[dataset]
            tracked = self.documents.tracking(dataset)
            until = tracked.position if tracked else 0
            released = failing = 0
            for letter in self.journal.dead_letters(dataset):
                customer_id = letter.customer_id
                stored = self.documents.load(dataset, [customer_id]).get(customer_id)
                section, position = stored if stored else (projection.empty(), 0)
                events = self.log.customer_changes(
                    customer_id, after=position, until=until, topics=projection.topics
                )
                current: Notified | None = None
                try:
                    for current in events:
                        section = projection.fold(section, current.event)
                        position = current.notification_id
                except Exception as error:  # a poison event, again
                    failing += 1
                    assert current is not None
                    self.journal.park(self._letter(dataset, customer_id, current, error))
                    continue
                if events:
                    keys = projection.lookup_keys
                    lookup = tuple(keys(section)) if keys else ()
                    self.documents.write(
                        dataset,
                        [SectionWrite(customer_id, section, position, lookup)],
                        refreshed_at=self.clock(),
                    )
                self.journal.release(dataset, customer_id)
                released += 1
            return released, failing
        finally:
            self.release([dataset])

    # --- leases -------------------------------------------------------------------------

    def acquire(self, names: Sequence[str], *, required: bool) -> list[str]:
        """Take the leases of ``names``; returns those another process holds.

        With ``required``, raises :class:`LeaseHeld` (holding none) if any is held.
        """
        locked: list[str] = []
        for name in names:
            if name not in self.projections:
                raise KeyError(name)
            lease = f"dataset:{name}"
            if not self.documents.acquire_lease(lease, self.holder, self.lease_ttl, self.clock()):
                locked.append(name)
        if locked and required:
            self.release([n for n in names if n not in locked])
            holder = self.documents.lease_holder(f"dataset:{locked[0]}", self.clock())
            raise LeaseHeld(f"dataset {locked[0]!r}", holder or "another process")
        return locked

    def renew(self, names: Sequence[str]) -> None:
        for name in names:
            if not self.documents.acquire_lease(
                f"dataset:{name}", self.holder, self.lease_ttl, self.clock()
            ):
                raise LeaseHeld(f"dataset {name!r}", "another process (our lease expired)")

    def release(self, names: Sequence[str]) -> None:
        for name in names:
            self.documents.release_lease(f"dataset:{name}", self.holder)

    # --- passes -------------------------------------------------------------------------

    def run_pass(
        self,
        names: Sequence[str],
        *,
        staging: bool = False,
        until: int | None = None,
        progress: Progress | None = None,
        strict: bool = False,
    ) -> PassReport:
        """Fold the log up to ``until`` (default: the head now) into ``names``.

        The caller holds the datasets' leases.
        """
        head = self.log.head()
        high_water = head if until is None else min(until, head)
        runs = self._start(names, staging=staging, strict=strict)
        start = min((r.position for r in runs.values()), default=high_water)
        topics = sorted(
            {t for r in runs.values() if r.position < high_water for t in r.projection.topics}
        )

        def pages() -> Iterable[Sequence[Notified]]:
            after = start
            while topics and after < high_water:
                page = self.log.changes(after, self.page_size, until=high_water, topics=topics)
                if not page:
                    return
                yield page
                after = page[-1].notification_id
                if progress:
                    progress(after - start, high_water - start)

        report = self._fold_pages(runs, pages(), staging=staging, strict=strict)
        self._flush(runs, high_water, staging)
        report.start, report.high_water = start, high_water
        return self._report(report, runs)

    def apply(self, names: Sequence[str], page: Sequence[Notified], through: int) -> PassReport:
        """Fold one page of events (in notification order) into live ``names`` and write it.

        ``through`` is the log position the page covers (every event of ``names`` up to
        it is in the page), which tracking advances to. For the real-time follower, which
        holds the leases and hands over what it read.
        """
        runs = self._start(names, staging=False, strict=False)
        report = self._fold_pages(runs, [page] if page else [], staging=False, strict=False)
        self._flush(runs, through, staging=False)
        report.start = page[0].notification_id if page else through
        report.high_water = through
        return self._report(report, runs)

    def _start(
        self, names: Sequence[str], *, staging: bool, strict: bool
    ) -> dict[str, _DatasetRun]:
        runs: dict[str, _DatasetRun] = {}
        for name in names:
            tracked = self.documents.tracking(name, staging=staging)
            parked = set() if strict or staging else self.journal.parked(name)
            runs[name] = _DatasetRun(
                self.projections[name], tracked.position if tracked else 0, parked
            )
        return runs

    @staticmethod
    def _report(report: PassReport, runs: Mapping[str, _DatasetRun]) -> PassReport:
        report.events_applied = {n: r.applied for n, r in runs.items()}
        report.sections_written = {n: r.written for n, r in runs.items()}
        report.dead_letters = {n: r.dead_letters for n, r in runs.items()}
        return report

    def _fold_pages(
        self,
        runs: Mapping[str, _DatasetRun],
        pages: Iterable[Sequence[Notified]],
        *,
        staging: bool,
        strict: bool,
    ) -> PassReport:
        routes: dict[str, list[_DatasetRun]] = {}
        for run in runs.values():
            for topic in run.projection.topics:
                routes.setdefault(topic, []).append(run)
        report = PassReport(list(runs), 0, 0)
        last_renewal = self.clock()
        for page in pages:
            self._fold_page(page, routes, staging, strict)
            report.events_read += len(page)
            if sum(len(r.cache) for r in runs.values()) >= self.cache_sections:
                self._flush(runs, page[-1].notification_id, staging)
            if self.clock() - last_renewal > self.lease_ttl / 3:
                self.renew(list(runs))
                last_renewal = self.clock()
        return report

    def _fold_page(
        self,
        page: Sequence[Notified],
        routes: Mapping[str, list[_DatasetRun]],
        staging: bool,
        strict: bool,
    ) -> None:
        # Group per dataset and customer first, so each dataset loads its sections once.
        grouped: dict[int, tuple[_DatasetRun, dict[str, list[Notified]]]] = {}
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
                if customer_id in run.parked:
                    continue  # waits behind its dead letter, in order
                stored = run.cache.get(customer_id)
                section, position = stored if stored else (empty(), 0)
                applied = 0
                for logged in events:
                    if logged.notification_id <= position:
                        continue  # already folded into the stored section
                    if strict:
                        section = fold(section, logged.event)
                    else:
                        try:
                            section = fold(section, logged.event)
                        except Exception as error:
                            self.journal.park(self._letter(name, customer_id, logged, error))
                            run.parked.add(customer_id)
                            run.dead_letters += 1
                            break
                    position = logged.notification_id
                    applied += 1
                if applied:
                    run.cache[customer_id] = StoredSection(section, position)
                    run.dirty.add(customer_id)
                    run.applied += applied

    def _letter(
        self, dataset: str, customer_id: str, logged: Notified, error: BaseException
    ) -> DeadLetter:
        now = self.clock()
        summary = traceback.format_exception_only(type(error), error)[-1].strip()
        return DeadLetter(
            dataset=dataset,
            customer_id=customer_id,
            notification_id=logged.notification_id,
            event_id=logged.event.event_id,
            topic=logged.topic,
            error=summary,
            first_failed_at=now,
            last_failed_at=now,
        )

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
