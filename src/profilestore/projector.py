"""The projections' handler: folds pages of the log into documents.

The first kind of :class:`~profilestore.pipeline.Handler` (the consumer loop reads, this
folds). One pass serves any set of datasets: it decodes each event once (the log did) and
routes it to the datasets that read its type. Per customer it folds only events newer than
the position its stored section records, so events already applied are skipped, never
applied twice.

Sections being folded are kept in a bounded in-memory cache; they are written (guarded by
position) when the cache is full and at the end, and only then does the dataset's tracking
advance. A crash anywhere leaves tracking at or behind every stored section, so a restart
re-reads a little and skips what was already written: the result equals a rebuild.
Memory is bounded by the cache size, not by the number of events.

Three modes, one fold, and every one lenient about poison events (see
:mod:`profilestore.runs`): the failing event is dead-lettered, its customer parked for that
dataset (its section stays at its last good state, its later events wait), and everything
else goes on.

- *refresh* (:class:`ProjectionHandler`): the live documents; letters are live ones.
- *rebuild* (:class:`RebuildHandler`): into a staging area, promoted when complete; lookups
  read the old sections until then. In the background (:class:`StagingHandler` then
  :class:`PromoteHandler`) the staging area is built under a lease of its own while the
  live dataset keeps being refreshed, and the swap plus the catch-up run under the live
  lease. A rebuild finishes even when an event can no longer be folded (an event stored
  before today's bounds, a fold changed since): strictness would let one event block every
  rebuild for as long as it is in the log. Its letters are *staged*, beside the live ones
  and apart from them, and promotion makes them the live letters: the live letters of
  customers it folded are released (the new documents hold those events), its own stay,
  so ``status`` shows them and ``refresh --retry-dead-letters`` refolds them.
- *retry* (:class:`RetryHandler`): the parked customers of one dataset, refolded from
  their own streams up to the dataset's tracked position; released when they fold.

Each promotion, and a dataset's first build, records the projection's ``version``
(:meth:`~profilestore.runs.Journal.built_by`), so a changed fold is noticed.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from profilestore import partitions
from profilestore.documents import DocumentStore, SectionWrite, StoredSection
from profilestore.errors import StagingMissing
from profilestore.eventlog import EventLog, Notified
from profilestore.identity import (
    APPLIED,
    Change,
    Routing,
    applied_key,
    changes_between,
    combine,
    graph_position,
    merged_changes,
    route,
)
from profilestore.partitions import Membership, Partition
from profilestore.pipeline import Clock, Handler, Pass, PassReport
from profilestore.projection import Projection
from profilestore.runs import DeadLetter, Journal


@dataclass
class _DatasetRun:
    projection: Projection[Any]
    position: int
    """The dataset's tracked position: events at or before it were applied by a pass."""
    parked: set[str] = field(default_factory=set)
    first_build: bool = False
    """Never refreshed before: the first commit records the projection version."""
    fresh: bool = False
    """No section stored yet (a first build, a staging area): nothing to regroup."""
    cache: dict[str, StoredSection] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    applied: int = 0
    written: int = 0
    dead_letters: int = 0


class ProjectionHandler(Handler):
    """Refresh: fold new events into the live documents of the datasets."""

    staging = False
    lease_kind = "dataset"

    def __init__(
        self,
        log: EventLog,
        documents: DocumentStore,
        journal: Journal,
        projections: Mapping[str, Projection[Any]],
        *,
        clock: Clock,
        cache_sections: int = 50_000,
        routing: Routing | None = None,
        partition: Partition | None = None,
        page_size: int = 5000,
    ) -> None:
        self.partition = partition
        """Only this partition's profiles, tracked per partition (None: every profile)."""
        if partition is not None:
            if self.staging or type(self) not in (ProjectionHandler, RegroupHandler):
                raise ValueError(f"{type(self).__name__} does not run per partition")
            # Each partition's run holds a lease of its own: partitions run side by side.
            self.lease_kind = f"{type(self).lease_kind}#{partition.label}"
        self.log = log
        self.documents = documents
        self.journal = journal
        self.projections = projections
        self.clock = clock
        self.cache_sections = cache_sections
        self.page_size = page_size
        """Events per page where a pass reads pages of its own (a rebuild's streams)."""
        self.routing = routing or Routing()
        """Where customer keys' events go; a store shares one between its passes."""

    def begin(self, targets: Sequence[str]) -> _ProjectionPass:
        # One pass per run: opening one regroups its datasets (a write), so a subclass
        # opens its own pass over these runs rather than one built on a base pass.
        return self.opened(self._runs(targets))

    def opened(self, runs: dict[str, _DatasetRun]) -> _ProjectionPass:
        """The pass this handler runs (one per run: opening one regroups, see
        :meth:`_ProjectionPass._regroup_all`)."""
        return _ProjectionPass(self, runs)

    def _runs(self, targets: Sequence[str]) -> dict[str, _DatasetRun]:
        runs: dict[str, _DatasetRun] = {}
        for name in targets:
            if self.partition is None:
                tracked = self.documents.tracking(name, staging=self.staging)
                found = tracked.position if tracked else None
            else:
                found = partitions.position(self.documents, name, self.partition)
            # A staging area starts empty, so do its letters (cleared by StagingHandler).
            parked = set() if self.staging else self.journal.parked(name)
            runs[name] = _DatasetRun(
                self.projections[name],
                found or 0,
                parked,
                first_build=found is None and not self.staging,
                fresh=found is None,
            )
        return runs

    def letter(
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


class StagingHandler(ProjectionHandler):
    """The first half of a background rebuild: the whole log into staging.

    It holds the ``rebuild`` lease of its datasets, not their live one, so the follower
    and scheduled refreshes keep the live documents fresh meanwhile; promoting
    (:class:`PromoteHandler`) takes the live lease.
    """

    staging = True
    lease_kind = "rebuild"

    def begin(self, targets: Sequence[str]) -> _ProjectionPass:
        for name in targets:
            self.documents.start_staging(name)
            self.journal.clear_staged(name)
        return super().begin(targets)

    def opened(self, runs: dict[str, _DatasetRun]) -> _ProjectionPass:
        return _StagingPass(self, runs)


class RebuildHandler(StagingHandler):
    """Rebuild: the whole log into staging, promoted once complete, under the live lease."""

    lease_kind = "dataset"

    def opened(self, runs: dict[str, _DatasetRun]) -> _ProjectionPass:
        return _RebuildPass(self, runs)


class PromoteHandler(ProjectionHandler):
    """Make a built staging area live, then fold what the live dataset had meanwhile.

    Runs under the live lease: the swap and the catch-up are one run, so no other writer
    of the dataset can slip a section folded by the old code in between.
    """

    def begin(self, targets: Sequence[str]) -> _ProjectionPass:
        for name in targets:
            if self.documents.tracking(name, staging=True) is None:
                raise StagingMissing(name)
        promote(self, targets)
        return super().begin(targets)


def promote(handler: ProjectionHandler, datasets: Sequence[str]) -> None:
    """Swap the datasets' staging areas in, together where the documents allow it (see
    :meth:`~profilestore.documents.DocumentStore.promote_staging`), with their dead
    letters (they replace the live ones), and record the projection version that built
    each."""
    documents = handler.documents
    staged = documents.get_records_for(APPLIED, [applied_key(name, True) for name in datasets])
    if staged:
        # Set before the swap: a crash after it leaves the live mark at or behind what the
        # promoted sections hold, and applying a change again is harmless.
        documents.put_records(
            [
                (APPLIED, name, staged[applied_key(name, True)])
                for name in datasets
                if applied_key(name, True) in staged
            ]
        )
    handler.journal.promote_letters(datasets, lambda: documents.promote_staging(*datasets))
    now = handler.clock()
    for name in datasets:
        handler.journal.built_by(name, handler.projections[name].version, now)


class RegroupHandler(ProjectionHandler):
    """Apply identity changes to datasets now, between their refreshes: the profiles a
    link regrouped are refolded; nothing else is read, and tracking does not move."""

    records_runs = False

    def opened(self, runs: dict[str, _DatasetRun]) -> _ProjectionPass:
        return _RegroupPass(self, runs)


class RetryHandler(ProjectionHandler):
    """Retry: refold each parked customer of a dataset from its own stream."""

    def opened(self, runs: dict[str, _DatasetRun]) -> _ProjectionPass:
        return _RetryPass(self, runs)


class _ProjectionPass(Pass):
    def __init__(self, handler: ProjectionHandler, runs: dict[str, _DatasetRun]) -> None:
        self.handler = handler
        self.runs = runs
        self.start = min((r.position for r in runs.values()), default=0)
        self.topics = sorted({t for r in runs.values() for t in r.projection.topics})
        self.routes: dict[str, list[_DatasetRun]] = {}
        for run in runs.values():
            for topic in run.projection.topics:
                self.routes.setdefault(topic, []).append(run)
        self.through = self.start
        """Every event up to here was handled: what an early commit may advance to."""
        self.identity = -1
        """The last identity change applied to every dataset of the pass (-1: not yet)."""
        self.profiles: dict[str, str] = {}
        self.membership: Membership
        """The partition's streams and profiles (a partitioned pass only)."""
        """Customer key -> the profile its events fold into, for keys not alone."""
        self.load_stored = True
        """Whether a profile first met in a page may have a stored section to fold onto
        (a pass in stream order knows it has none, see :class:`_StagingPass`)."""
        self._regroup_all()

    # --- identity ---------------------------------------------------------------------

    def pending(self) -> bool:
        return graph_position(self.handler.documents) > self.identity

    def _regroup_all(self) -> None:
        """Bring every dataset to the identity graph as it is now (see
        :mod:`profilestore.identity`), then route events as of it."""
        handler = self.handler
        documents = handler.documents
        position = graph_position(documents)
        opening = self.identity < 0
        if self.runs and position > self.identity:
            names = {self._applied_key(n): n for n in self.runs}
            applied = documents.get_records_for(
                APPLIED, [*names, *(applied_key(n, handler.staging) for n in self.runs)]
            )
            # A partition that never regrouped starts from its dataset's mark.
            done = {
                name: int(
                    applied.get(key, applied.get(applied_key(name, handler.staging), {})).get(
                        "position", 0
                    )
                )
                for key, name in names.items()
            }
            # From what the least advanced reader (a dataset, or this pass's routing) has.
            since = min(*done.values(), position if opening else self.identity)
            changes = changes_between(documents, since, position)
            # Each profile's streams are read once, whatever number of datasets refold it.
            streams: dict[str, list[Notified]] = {}
            marks = []
            for key, name in names.items():
                run = self.runs[name]
                if not run.fresh:
                    self._regroup(run, [c for p, c in changes if p > done[name]], streams)
                if done[name] != position:
                    marks.append((APPLIED, key, {"position": position}))
            documents.put_records(marks)
            if not opening:
                # Routing follows the changes just applied: no need to read every key.
                route(self.profiles, (c for p, c in changes if p > self.identity))
        for run in self.runs.values():
            run.fresh = False  # only when the pass opens: it folds from here on
        if opening:
            self.profiles = handler.routing.at(documents, position)
        self.identity = position
        if handler.partition is not None:
            # Which streams are the partition's follows the routing: pages are read
            # through it, so only the partition's events are decoded.
            self.membership = Membership(handler.partition, self.profiles)
            self.keep = self.membership.keeps

    def _applied_key(self, dataset: str) -> str:
        """Where the identity changes applied to the dataset are marked (per partition)."""
        key = applied_key(dataset, self.handler.staging)
        partition = self.handler.partition
        return key if partition is None else partitions.tracked_name(key, partition)

    def _regroup(
        self, run: _DatasetRun, changes: Sequence[Change], streams: dict[str, list[Notified]]
    ) -> None:
        """Refold the profiles ``changes`` regrouped from their keys' streams; remove the
        profiles they dropped. Idempotent: a replay refolds the same events."""
        if not changes:
            return
        handler = self.handler
        name = run.projection.dataset
        profiles, dropped = combine(changes)
        partition = handler.partition
        if partition is not None:  # the other partitions regroup their own profiles
            profiles = {p: m for p, m in profiles.items() if partition.owns(p)}
            dropped = {p for p in dropped if partition.owns(p)}
        keys = run.projection.lookup_keys
        topics = set(run.projection.topics)
        writes: list[SectionWrite] = []
        removed = set(dropped)
        for profile, members in profiles.items():
            if profile in run.parked:
                handler.journal.release(name, profile, staged=handler.staging)
                run.parked.discard(profile)
            if profile not in streams:
                streams[profile] = merged_changes(handler.log, members)
            events = [n for n in streams[profile] if n.topic in topics]
            section, position, _ = self._fold_into(run, profile, run.projection.empty(), 0, events)
            if position:
                lookup = tuple(keys(section)) if keys else ()
                writes.append(SectionWrite(profile, section, position, lookup))
            else:
                removed.add(profile)
        for profile in dropped:
            if profile in run.parked:
                handler.journal.release(name, profile, staged=handler.staging)
                run.parked.discard(profile)
        handler.documents.regroup(
            name,
            writes,
            sorted(removed - {w.customer_id for w in writes}),
            refreshed_at=handler.clock(),
            staging=handler.staging,
        )
        run.written += len(writes)

    def handle(self, page: Sequence[Notified]) -> None:
        if self.pending():
            if any(r.dirty for r in self.runs.values()):
                self.commit(self.through)
            self._regroup_all()
        self._fold(page, skip_applied=True)
        if page:
            self.through = max(self.through, page[-1].notification_id)

    def _fold(self, page: Sequence[Notified], *, skip_applied: bool) -> None:
        handler = self.handler
        # Group per dataset and customer first, so each dataset loads its sections once.
        # (Per event and dataset: no tuple, dict or list made unless one is new; setdefault
        # would build its default every time: 7% of a rebuild at 100k customers.)
        grouped: dict[str, tuple[_DatasetRun, dict[str, list[Notified]]]] = {}
        profiles = self.profiles
        routes = self.routes
        membership = self.membership if handler.partition is not None else None
        for logged in page:
            key = logged.event.customer_id
            profile = profiles.get(key, key)
            if membership is not None and not membership.owns(profile):
                continue  # another partition's customer (read before a regroup moved it)
            for run in routes.get(logged.topic, ()):
                if skip_applied and logged.notification_id <= run.position:
                    continue
                found = grouped.get(run.projection.dataset)
                if found is None:
                    found = grouped[run.projection.dataset] = (run, {})
                events = found[1].get(profile)
                if events is None:
                    found[1][profile] = [logged]
                else:
                    events.append(logged)
        for run, by_customer in grouped.values():
            name = run.projection.dataset
            missing = [c for c in by_customer if c not in run.cache] if self.load_stored else []
            if missing:
                run.cache.update(handler.documents.load(name, missing, staging=handler.staging))
            empty = run.projection.empty
            for customer_id, events in by_customer.items():
                if customer_id in run.parked:
                    continue  # waits behind its dead letter, in order
                stored = run.cache.get(customer_id)
                section, position = stored if stored else (empty(), 0)
                section, position, applied = self._fold_into(
                    run, customer_id, section, position, events
                )
                if applied:
                    run.cache[customer_id] = StoredSection(section, position)
                    run.dirty.add(customer_id)
                    run.applied += applied

    def _fold_into(
        self,
        run: _DatasetRun,
        profile: str,
        section: Any,
        position: int,
        events: Iterable[Notified],
    ) -> tuple[Any, int, int]:
        """Fold the events newer than ``position`` into a profile's section: (section,
        its position, events applied). An event the fold raises on is dead-lettered and
        parks the profile: its section stays at its last good state, its later events wait."""
        handler = self.handler
        fold = run.projection.fold
        applied = 0
        for logged in events:
            if logged.notification_id <= position:
                continue  # already folded into the stored section
            try:
                section = fold(section, logged.event)
            except Exception as error:
                letter = handler.letter(run.projection.dataset, profile, logged, error)
                handler.journal.park(letter, staged=handler.staging)
                run.parked.add(profile)
                run.dead_letters += 1
                break
            position = logged.notification_id
            applied += 1
        return section, position, applied

    def resume(self) -> None:
        for run in self.runs.values():
            run.applied = run.written = run.dead_letters = 0

    def should_commit(self) -> bool:
        return sum(len(r.cache) for r in self.runs.values()) >= self.handler.cache_sections

    def commit(self, through: int) -> None:
        # Every dataset's sections are written before any tracking advances, so a failure
        # in between leaves all of them replayable from their previous positions.
        handler = self.handler
        documents = handler.documents
        now = handler.clock()
        for name, run in self.runs.items():
            if not run.dirty:
                continue
            keys = run.projection.lookup_keys
            writes = []
            for customer_id in run.dirty:
                stored = run.cache[customer_id]
                lookup = tuple(keys(stored.section)) if keys else ()
                writes.append(SectionWrite(customer_id, stored.section, stored.position, lookup))
            run.written += documents.write(name, writes, refreshed_at=now, staging=handler.staging)
        for name, run in self.runs.items():
            if through > run.position or run.first_build:
                if handler.partition is None:
                    documents.advance(name, through, refreshed_at=now, staging=handler.staging)
                else:
                    partitions.advance(documents, name, handler.partition, through, now)
                run.position = through
            if run.first_build:
                handler.journal.built_by(name, run.projection.version, now)
                run.first_build = False
            run.dirty.clear()
            run.cache.clear()
        self.through = max(self.through, through)

    def report(self, report: PassReport) -> PassReport:
        report.events_applied = {n: r.applied for n, r in self.runs.items()}
        report.sections_written = {n: r.written for n, r in self.runs.items()}
        report.dead_letters = {n: r.dead_letters for n, r in self.runs.items()}
        return report


class _StagingPass(_ProjectionPass):
    """A whole refold into an empty staging area, read in stream order, not log order.

    Pages hold whole streams (many customers' per query, see
    :meth:`~profilestore.eventlog.EventLog.stream_pages`), so each profile is folded at
    once from its events in order and its section written once: in log order, at more
    customers than the section cache holds, sections were written, loaded and written
    again all along, and each load was a query. The profiles of several keys come first,
    each from its keys' streams merged in log order (as any refold reads them); their
    keys' streams are then skipped.

    The staging area is complete only once every stream was read, so its tracking moves
    only then (commits before that write sections and advance nothing): a crash leaves it
    where it was, and the next rebuild starts it again.
    """

    def __init__(self, handler: ProjectionHandler, runs: dict[str, _DatasetRun]) -> None:
        super().__init__(handler, runs)
        # Nothing is stored in a new staging area: a profile first met in a page has no
        # section to load (until a regroup in the middle of the pass writes some).
        self.load_stored = False
        self.read_all = False

    def pages(self, high_water: int) -> Iterable[Sequence[Notified]]:
        handler = self.handler
        log = handler.log
        if not self.topics:
            self.read_all = True
            return
        members: dict[str, list[str]] = {}
        for key, profile in self.profiles.items():
            members.setdefault(profile, []).append(key)
        page: list[Notified] = []
        for profile in sorted(members):
            page.extend(merged_changes(log, sorted(members[profile]), until=high_water))
            if len(page) >= handler.page_size:
                yield page
                page = []
        if page:
            yield page
        skip = {log.stream_of(key) for key in self.profiles}
        yield from log.stream_pages(
            handler.page_size, until=high_water, topics=self.topics, skip=skip
        )
        self.read_all = True

    def handle(self, page: Sequence[Notified]) -> None:
        if self.pending():
            if any(r.dirty for r in self.runs.values()):
                self.commit(0)
            self._regroup_all()
            self.load_stored = True  # the regroup wrote sections that later pages extend
        self._fold(page, skip_applied=True)

    def commit(self, through: int) -> None:
        super().commit(through if self.read_all else 0)

    def finish(self, through: int) -> None:
        handler = self.handler
        for name in self.runs:
            # An empty log still records a (zero) position, so promotion has a source.
            handler.documents.advance(name, through, refreshed_at=handler.clock(), staging=True)


class _RebuildPass(_StagingPass):
    def finish(self, through: int) -> None:
        super().finish(through)
        promote(self.handler, list(self.runs))


class _RegroupPass(_ProjectionPass):
    """Regroups when opened (as every pass does), then reads nothing."""

    def __init__(self, handler: ProjectionHandler, runs: dict[str, _DatasetRun]) -> None:
        super().__init__(handler, runs)
        self.topics = ()

    def commit(self, through: int) -> None:
        pass  # nothing was folded: tracking stays where the dataset's refreshes left it


class _RetryPass(_ProjectionPass):
    """Pages are the parked customers' own streams, up to the dataset's position; tracking
    does not move (commit's advance is guarded), customers that fold are released."""

    def __init__(self, handler: RetryHandler, runs: dict[str, _DatasetRun]) -> None:
        super().__init__(handler, runs)
        self.log = handler.log
        self.retried = {name: set(run.parked) for name, run in runs.items()}
        for run in runs.values():
            run.parked.clear()

    def pages(self, high_water: int) -> Iterable[Sequence[Notified]]:
        for name, run in self.runs.items():
            for customer_id in sorted(self.retried[name]):
                stored = self.handler.documents.load(name, [customer_id]).get(customer_id)
                members = [k for k, p in self.profiles.items() if p == customer_id]
                yield merged_changes(
                    self.log,
                    members or [customer_id],
                    after=stored.position if stored else 0,
                    until=run.position,
                    topics=run.projection.topics,
                )

    def handle(self, page: Sequence[Notified]) -> None:
        self._fold(page, skip_applied=False)

    def commit(self, through: int) -> None:
        super().commit(0)  # write the refolded sections; tracking stays where it is

    def finish(self, through: int) -> None:
        journal = self.handler.journal
        for name, run in self.runs.items():
            for customer_id in self.retried[name] - run.parked:
                journal.release(name, customer_id)

    def report(self, report: PassReport) -> PassReport:
        super().report(report)
        report.released = {n: len(self.retried[n] - r.parked) for n, r in self.runs.items()}
        return report
