"""The real-time follower: applies real-time datasets as events arrive.

It holds the leases of its datasets for as long as it runs (renewing them), so scheduled
or manual refreshes of those datasets in other processes skip rather than race it; a
second follower waits on standby until the first one's leases lapse.

New events reach it two ways. On PostgreSQL, through the ``eventsourcing`` library's
subscription (LISTEN/NOTIFY: the library's insert notifies, its subscription thread pulls
the new notifications); on SQLite, whose recorder has no subscription, by polling the
notification log every ``follower_poll_ms``. Either way it reads only, on its own thread
and connections, so ingest never waits for it. When it falls behind it catches up in
batches of ``follower_batch`` events, writing after each batch, and :meth:`lag` reports
how far behind it is.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from profilestore.errors import LeaseHeld
from profilestore.eventlog import Notified
from profilestore.projector import PassReport
from profilestore.runs import RunRecord, Status
from profilestore.store import Freshness, ProfileStore

log = logging.getLogger(__name__)

LOG_READ_EVERY_S = 0.5
"""With a subscription, how often the log itself is read: to move tracking past events of
datasets not followed, and as a safety net should the subscription miss a wake-up."""

RECORD_EVERY_S = 5.0
"""How often the follower writes a run record per dataset (not per batch: too costly)."""


class Follower:
    def __init__(
        self,
        store: ProfileStore,
        datasets: Sequence[str],
        *,
        poll_s: float | None = None,
        batch: int | None = None,
    ) -> None:
        self.store = store
        self.datasets = store.datasets(datasets)
        settings = store.settings.schedule
        self.poll_s = poll_s if poll_s is not None else settings.follower_poll_ms / 1000
        self.batch = batch or settings.follower_batch
        self.topics = sorted({t for n in self.datasets for t in store.projections[n].topics})
        self.position = 0
        self.leased = False
        self.applied = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wakeups: queue.Queue[Notified] = queue.Queue()
        self._subscription: Any = None
        self._subscription_thread: threading.Thread | None = None
        self._pending: list[Notified] = []
        self._renewed = 0.0
        self._recorded = 0.0
        self._since_record = 0
        self._read_log_at = 0.0

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="profilestore-follower")
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop at a batch boundary and give the leases back."""
        self._stop.set()
        if self._subscription is not None:
            self._subscription.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._subscription_thread is not None:
            self._subscription_thread.join(timeout)

    def __enter__(self) -> Follower:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def live(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        projector = self.store.projector
        renew_every = projector.lease_ttl.total_seconds() / 3
        try:
            while not self._stop.is_set():
                if not self.leased:
                    self._take_leases()
                    continue
                try:
                    if time.monotonic() - self._renewed >= renew_every:
                        projector.renew(self.datasets)
                        self._renewed = time.monotonic()
                    if not self.step():
                        self._wait()
                except LeaseHeld:
                    log.warning("follower lost its leases; standing by")
                    self.leased = False
                except Exception as error:  # keep following; report it
                    self.last_error = repr(error)
                    log.exception("follower pass failed; retrying")
                    self._record("failed", repr(error))
                    self._stop.wait(1.0)
        finally:
            if self.leased:
                if self._since_record:
                    self._record("succeeded")
                projector.release(self.datasets)
                self.leased = False

    def _take_leases(self) -> None:
        projector = self.store.projector
        if projector.acquire(self.datasets, required=False):
            projector.release(self.datasets)  # all or none: another follower is running
            self._stop.wait(min(5.0, projector.lease_ttl.total_seconds() / 4))
            return
        self.leased = True
        self._renewed = time.monotonic()
        tracked = [self.store.documents.tracking(n) for n in self.datasets]
        self.position = min((t.position if t else 0) for t in tracked)
        self._subscribe()

    def _subscribe(self) -> None:
        if self._subscription is not None:
            return
        self._subscription = self.store.log.subscribe(self.position, self.topics)
        if self._subscription is None:
            return  # the backend has none (SQLite): poll
        self._subscription_thread = threading.Thread(
            target=self._listen, name="profilestore-follower-subscription", daemon=True
        )
        self._subscription_thread.start()

    def _listen(self) -> None:
        try:
            for notified in self._subscription:
                self._wakeups.put(notified)
        except Exception as error:  # the loop falls back to reading the log
            self.last_error = repr(error)

    def _wait(self) -> None:
        if self._subscription is None:
            self._stop.wait(self.poll_s)
            return
        try:
            first = self._wakeups.get(timeout=0.5)
        except queue.Empty:
            return
        self._pending = [first]

    def _next_page(self) -> tuple[list[Notified], int]:
        """New events of the followed datasets, and the log position they cover."""
        if self._subscription is not None:
            page = [n for n in self._pending if n.notification_id > self.position]
            self._pending = []
            while len(page) < self.batch:
                try:
                    item = self._wakeups.get_nowait()
                except queue.Empty:
                    break
                if item.notification_id > self.position:
                    page.append(item)
            if page:
                return page, page[-1].notification_id
            if time.monotonic() - self._read_log_at < LOG_READ_EVERY_S:
                return [], self.position  # the subscription is the source; idle
        self._read_log_at = time.monotonic()
        # The head is read first: a short page then covers everything up to it, events
        # of datasets not followed included, so tracking can say "current".
        head = self.store.log.head()
        page = self.store.log.changes(self.position, self.batch, until=head, topics=self.topics)
        if len(page) < self.batch:
            return page, head
        return page, page[-1].notification_id

    def step(self) -> PassReport | None:
        """Apply one batch of new events, if there are any; the thread calls this."""
        page, through = self._next_page()
        if through <= self.position:
            return None
        report = self.store.projector.apply(self.datasets, page, through)
        self.position = through
        self.applied += len(page)
        self._since_record += len(page)
        if time.monotonic() - self._recorded >= RECORD_EVERY_S:
            self._record("succeeded")
        return report

    def _record(self, status: Status, error: str | None = None) -> None:
        """A run record per dataset, at most every few seconds: what ``status`` shows."""
        now = self.store.clock()
        for name in self.datasets:
            self.store.journal.record(
                RunRecord(
                    dataset=name,
                    trigger="follower",
                    holder=self.store.projector.holder,
                    started_at=now,
                    finished_at=now,
                    status=status,
                    error=error,
                    high_water=self.position,
                    events_applied=self._since_record,
                )
            )
        self._since_record = 0
        self._recorded = time.monotonic()

    # --- lag ----------------------------------------------------------------------------

    def lag(self) -> dict[str, Freshness]:
        """How far behind the log head each followed dataset is."""
        return self.store.freshness(self.datasets)
