"""One consumer loop for every reader of the log.

Refresh, rebuild, dead-letter retry, the real-time follower and the scheduler all read the
log the same way, through :class:`Consumer`:

1. take the leases of the targets (datasets), named by :func:`lease_name` only;
2. read pages of events after the handler's tracked position, up to a high-water mark
   fixed when the run starts (so a run has a defined end), decoded without the
   catalogue's checks (they ran at append; see ``EventMapper.decode_unchecked``); a pass
   may read pages of its own instead (a rebuild reads whole streams, a retry one);
3. hand each page to the handler's :class:`Pass`, which folds and buffers;
4. let the pass write what it buffered and advance its tracked position (when its buffer
   is full, and at the end);
5. record the run (:class:`~profilestore.runs.RunRecord`, built by the journal only).

The follower does not read the log itself: it decides *when* to wake a :class:`Live`
consumer (a subscription's notification, or a poll interval), which takes the same steps
while holding its leases across wake-ups.

The handler contract, which the projections (:mod:`profilestore.projector`) and the
trigger engine (:mod:`profilestore.firing`) implement:

- :meth:`Handler.begin` opens a pass over the targets: it reports the lowest tracked
  position (``start``) and the event topics it reads. Each target tracks its own position;
  the pass skips events a target has already applied.
- :meth:`Pass.handle` gets pages in notification order. It may buffer, and must not move
  tracking. An error confined to one customer's event is the handler's to contain (a
  dead letter); anything it raises aborts the run: nothing is advanced past the last
  commit, the leases are released, and the run is recorded as failed.
- :meth:`Pass.commit` writes the buffer, every effect guarded by the position it covers
  (or a unique key), *then* advances tracking to ``through``. A crash between the two
  leaves tracking behind the writes, so a restart re-reads a little and the guards skip
  what was written: replays change nothing.
- :meth:`Pass.finish` runs once after the last commit (a rebuild promotes its staging
  area there).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from uuid import UUID

from profilestore.collection import bulk_collection
from profilestore.documents import DocumentStore
from profilestore.errors import LeaseHeld
from profilestore.eventlog import EventLog, Notified, Page
from profilestore.mapper import Forgotten
from profilestore.runs import Journal, Trigger

Clock = Callable[[], dt.datetime]
Progress = Callable[[int, int], None]
"""Called with (events read so far, events to read in this pass)."""

LEASE_TTL = dt.timedelta(seconds=60)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def lease_name(target: str, kind: str = "dataset") -> str:
    """The lease of a target: ``dataset:<name>`` guards a dataset's live documents (one
    writer at a time), ``rebuild:<name>`` its staging area during a background rebuild."""
    return f"{kind}:{target}"


def new_holder() -> str:
    """Who holds a lease: host, process and a random suffix (several stores per process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class PassReport:
    """What a run did, per target."""

    datasets: list[str]
    start: int
    high_water: int
    events_read: int = 0
    events_applied: dict[str, int] = field(default_factory=dict)
    sections_written: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)
    """Dead-lettered customers that folded again (a retry)."""
    skipped_locked: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    """The trigger engine's outcomes by status (fired, deferred, suppressed, ...)."""


class Pass(ABC):
    """One run of a handler over some targets; see the module docstring for the contract."""

    start: int
    """The lowest position its targets have applied: pages are read after it."""
    topics: Sequence[str]
    """The event topics it reads (empty: nothing to read)."""
    keep: Callable[[UUID], bool] | None = None
    """Which streams' events it handles (a partition's customers): the others are read
    through without being decoded. None: every stream."""

    def pages(self, high_water: int) -> Iterable[Sequence[Notified]] | None:
        """Pages of its own to handle instead of the log's (a retry reads streams)."""
        return None

    @abstractmethod
    def handle(self, page: Sequence[Notified]) -> None: ...

    @abstractmethod
    def should_commit(self) -> bool:
        """Whether the buffer is full and should be written before the next page."""

    @abstractmethod
    def commit(self, through: int) -> None: ...

    def finish(self, through: int) -> None:  # noqa: B027 - optional hook
        """After the last commit of a run that completed."""

    def resume(self) -> None:  # noqa: B027 - optional hook
        """Before the pass is used for another step of a live consumer (counts restart)."""

    def pending(self) -> bool:
        """Work waiting that is not a new event (an identity change to apply): a live
        consumer steps for it even when the log has not moved."""
        return False

    @abstractmethod
    def report(self, report: PassReport) -> PassReport:
        """``report`` with the per-target counts filled in."""


class Handler(ABC):
    """What a reader of the log does with what it reads."""

    lease_kind = "dataset"
    """Which of its targets' leases a run holds (see :func:`lease_name`)."""
    records_runs = True
    """Whether its runs are recorded (a run that only regroups profiles is not a refresh:
    it must not count as one for the schedule)."""

    @abstractmethod
    def begin(self, targets: Sequence[str]) -> Pass: ...


class Leases:
    """The targets' leases, taken all together or per target.

    A lease names the process (its holder) and keeps other processes out; within the
    process, the leases held are also counted here, so two runs in one process (the
    follower's, and a merge regrouping datasets from an API thread) cannot both hold one:
    the database alone would let the second in, the holder being the same.
    """

    def __init__(
        self, documents: DocumentStore, holder: str, ttl: dt.timedelta, clock: Clock
    ) -> None:
        self.documents = documents
        self.holder = holder
        self.ttl = ttl
        self.clock = clock
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def _take(self, name: str, now: dt.datetime) -> bool:
        with self._lock:
            if name in self._held:
                return False
            if not self.documents.acquire_lease(name, self.holder, self.ttl, now):
                return False
            self._held.add(name)
            return True

    def acquire(
        self, targets: Sequence[str], *, required: bool, kind: str = "dataset"
    ) -> list[str]:
        """Take the leases of ``targets``; returns those another process holds.

        With ``required``, raises :class:`LeaseHeld` (holding none) if any is held.
        """
        now = self.clock()
        locked = [t for t in targets if not self._take(lease_name(t, kind), now)]
        if locked and required:
            self.release([t for t in targets if t not in locked], kind=kind)
            holder = self.holder_of(locked[0], kind=kind)
            raise LeaseHeld(f"{kind} {locked[0]!r}", holder or "another process")
        return locked

    def renew(self, targets: Sequence[str], *, kind: str = "dataset") -> None:
        now = self.clock()
        for target in targets:
            name = lease_name(target, kind)
            if not self.documents.acquire_lease(name, self.holder, self.ttl, now):
                with self._lock:
                    self._held.discard(name)
                raise LeaseHeld(f"{kind} {target!r}", "another process (our lease expired)")

    def release(self, targets: Sequence[str], *, kind: str = "dataset") -> None:
        for target in targets:
            name = lease_name(target, kind)
            with self._lock:
                self._held.discard(name)
            self.documents.release_lease(name, self.holder)

    def holder_of(self, target: str, *, kind: str = "dataset") -> str | None:
        return self.documents.lease_holder(lease_name(target, kind), self.clock())


class Consumer:
    """The loop: lease, read after the tracked position, handle, write, advance, record."""

    def __init__(
        self,
        log: EventLog,
        leases: Leases,
        journal: Journal,
        *,
        clock: Clock = utcnow,
        page_size: int = 5000,
    ) -> None:
        self.log = log
        self.leases = leases
        self.journal = journal
        self.clock = clock
        self.page_size = page_size

    def run(
        self,
        handler: Handler,
        targets: Sequence[str],
        *,
        trigger: Trigger,
        required: bool = False,
        until: int | None = None,
        progress: Progress | None = None,
    ) -> PassReport:
        """One bounded run up to ``until`` (default: the log head now).

        Targets whose lease another process holds are skipped and listed in the report
        (with ``required``, :class:`LeaseHeld` is raised instead and nothing runs).
        """
        kind = handler.lease_kind
        locked = self.leases.acquire(targets, required=required, kind=kind)
        held = [t for t in targets if t not in locked]
        recorded = held if handler.records_runs else []
        runs = self.journal.started(recorded, trigger, self.leases.holder, self.clock())
        try:
            with bulk_collection():
                report = self._run(handler, held, until, progress)
        except Exception as error:
            self.journal.failed(runs, error, self.clock())
            raise
        finally:
            self.leases.release(held, kind=kind)
        self.journal.succeeded(runs, report, self.clock())
        report.skipped_locked = locked
        return report

    def _run(
        self,
        handler: Handler,
        targets: Sequence[str],
        until: int | None,
        progress: Progress | None,
    ) -> PassReport:
        head = self.log.head()
        high_water = head if until is None else min(until, head)
        if not targets:
            return PassReport([], high_water, high_water)
        opened = handler.begin(targets)
        start = min(opened.start, high_water)
        report = PassReport(list(targets), start, high_water)
        own = opened.pages(high_water)
        if own is None:
            pages: Iterable[Page] = self._pages(start, high_water, opened, progress)
        else:
            pages = (Page(list(p), len(p), p[-1].notification_id if p else None) for p in own)
        renewed = time.monotonic()
        for page in pages:
            # A forgotten customer's events (their key destroyed) are read, never handled.
            readable = [n for n in page.events if type(n.event) is not Forgotten]
            if readable:
                opened.handle(readable)
            report.events_read += page.rows
            if page.through is not None and opened.should_commit():
                opened.commit(page.through)
            if time.monotonic() - renewed > self.leases.ttl.total_seconds() / 3:
                self.leases.renew(targets, kind=handler.lease_kind)
                renewed = time.monotonic()
            if own and progress:
                # Pages of its own (streams) are not in log order: count the events.
                progress(min(report.events_read, high_water - start), high_water - start)
        opened.commit(high_water)
        opened.finish(high_water)
        return opened.report(report)

    def _pages(
        self, start: int, high_water: int, opened: Pass, progress: Progress | None
    ) -> Iterator[Page]:
        after = start
        topics = opened.topics
        while topics and after < high_water:
            page = self.log.page(
                after,
                self.page_size,
                until=high_water,
                topics=topics,
                keep=opened.keep,
                checked=False,
            )
            if page.through is None:
                return
            yield page
            after = page.through
            if progress:
                progress(after - start, high_water - start)

    def live(
        self,
        handler: Handler,
        targets: Sequence[str],
        *,
        batch: int,
        guard: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> Live:
        return Live(self, handler, list(targets), batch=batch, guard=guard)


RECORD_EVERY_S = 5.0
"""How often a live consumer writes a run record per target (not per batch: too costly)."""


class Live:
    """A consumer kept running: it holds its leases and takes a step when woken.

    All the targets' leases are taken together or not at all, so a second live consumer
    of the same targets waits on standby until the first one's leases lapse.
    """

    def __init__(
        self,
        consumer: Consumer,
        handler: Handler,
        targets: list[str],
        *,
        batch: int,
        guard: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.consumer = consumer
        self.guard = guard
        """Held around every step: the store's gate, so closing waits for a step."""
        self.handler = handler
        self.targets = targets
        self.batch = batch
        self.leased = False
        self.position = 0
        self.applied = 0
        self._pass: Pass | None = None
        self._renewed = 0.0
        self._recorded = 0.0
        self._since_record = 0

    @property
    def lease_ttl(self) -> dt.timedelta:
        return self.consumer.leases.ttl

    def take(self) -> bool:
        """Take every lease, or none; True when held."""
        leases = self.consumer.leases
        kind = self.handler.lease_kind
        with self.guard():
            locked = leases.acquire(self.targets, required=False, kind=kind)
            if locked:
                # Only ours: a lease another run of this process holds stays held.
                leases.release([t for t in self.targets if t not in locked], kind=kind)
                return False
            self.leased = True
            self._renewed = time.monotonic()
            self._open()
            return True

    def _open(self) -> Pass:
        # One pass for as long as the leases are held: nobody else moves the targets'
        # tracking or dead letters meanwhile, so they are read once, not every step.
        self._pass = self.handler.begin(self.targets)
        self.position = self._pass.start
        return self._pass

    def renew_if_due(self) -> None:
        """Renew the leases every third of their time to live; LeaseHeld if lost."""
        if time.monotonic() - self._renewed >= self.lease_ttl.total_seconds() / 3:
            try:
                with self.guard():
                    self.consumer.leases.renew(self.targets, kind=self.handler.lease_kind)
            except LeaseHeld:
                self.leased = False
                raise
            self._renewed = time.monotonic()

    def step(self) -> PassReport | None:
        """Apply one batch of new events, if there are any; None when there were none."""
        with self.guard():
            return self._step()

    def _step(self) -> PassReport | None:
        log = self.consumer.log
        # The head is read first: a short page then covers everything up to it, events of
        # other targets included, so tracking can say "current".
        head = log.head()
        opened = self._pass or self._open()
        pending = opened.pending()
        if head <= self.position and not pending:
            return None
        opened.resume()
        read = log.page(
            self.position,
            self.batch,
            until=head,
            topics=opened.topics,
            keep=opened.keep,
            checked=False,
        )
        page = read.events
        through = head if read.rows < self.batch or read.through is None else read.through
        report = PassReport(list(self.targets), self.position, through, events_read=read.rows)
        try:
            if page or pending:
                opened.handle(page)
            opened.commit(through)
        except BaseException:
            self._pass = None  # its buffer is in doubt: the next step starts afresh
            raise
        self.position = through
        self.applied += len(page)
        self._since_record += len(page)
        if time.monotonic() - self._recorded >= RECORD_EVERY_S:
            self._record("succeeded", None)
        return opened.report(report)

    def record(self, status: str = "succeeded", error: BaseException | None = None) -> None:
        """A run record per target, at most every few seconds: what ``status`` shows."""
        with self.guard():
            self._record(status, error)

    def _record(self, status: str, error: BaseException | None) -> None:
        self.consumer.journal.noted(
            self.targets,
            "follower",
            self.consumer.leases.holder,
            self.consumer.clock(),
            failed=status == "failed",
            error=error,
            high_water=self.position,
            events_applied=self._since_record,
        )
        self._since_record = 0
        self._recorded = time.monotonic()

    def release(self) -> None:
        """Record what was applied since the last record and give the leases back."""
        if not self.leased:
            return
        with self.guard():
            if self._since_record:
                self._record("succeeded", None)
            self.consumer.leases.release(self.targets, kind=self.handler.lease_kind)
        self.leased = False
        self._pass = None
