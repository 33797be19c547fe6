"""The real-time follower: decides when to wake the live consumer of real-time datasets.

It reads nothing itself. A :meth:`ProfileStore.live <profilestore.store.ProfileStore.live>`
consumer holds the datasets' leases for as long as the follower runs (renewing them), so
scheduled or manual refreshes of those datasets in other processes skip rather than race
it; a second follower waits on standby until the first one's leases lapse. Each step of
the consumer reads the log after its position up to the head (at most
``follower_batch`` events), folds, writes and advances: the same loop as every refresh.

After the datasets it steps the trigger engine (:mod:`profilestore.firing`), when a
trigger is enabled and no other process runs it: events are decided as they arrive, and
timers as they fall due.

The follower also keeps the identity graph (:mod:`profilestore.identity`) when no other
process does: each wake-up first applies new links (and runs the linking rules), then
steps the datasets, whose passes regroup merged profiles before folding; datasets it does
not follow (refreshed on a schedule) are regrouped at once too, so a merge shows in the
whole profile within moments, not at their next refresh.

What the follower decides is *when*. On PostgreSQL, the ``eventsourcing`` library's
subscription (LISTEN/NOTIFY) wakes it as soon as an event of its datasets commits, with
a read of the log every :data:`LOG_READ_EVERY_S` as a safety net; on SQLite, which has no
subscription, it polls every ``follower_poll_ms``. Either way it runs on its own thread
and connections, so ingest never waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from profilestore.errors import LeaseHeld, StoreClosed
from profilestore.identity import TARGET
from profilestore.pipeline import PassReport
from profilestore.store import Freshness, ProfileStore

log = logging.getLogger(__name__)

LOG_READ_EVERY_S = 0.5
"""With a subscription, how often the log is read anyway: to move tracking past events of
datasets not followed, and as a safety net should the subscription miss a wake-up."""


GRAPH_RETRY_S = 2.0
"""How often a follower tries for the identity graph's lease while another process has it."""


class Follower:
    def __init__(
        self,
        store: ProfileStore,
        datasets: Sequence[str],
        *,
        poll_s: float | None = None,
        batch: int | None = None,
        partition: int | None = None,
    ) -> None:
        self.store = store
        self.partition = partition
        """The partition whose customers it follows (None: every customer)."""
        self.datasets = store.datasets(datasets)
        settings = store.settings.schedule
        self.poll_s = poll_s if poll_s is not None else settings.follower_poll_ms / 1000
        self.batch = batch or settings.follower_batch
        self.consumer = store.live(self.datasets, batch=self.batch, partition=partition)
        self.graph = store.live_identity(batch=self.batch)
        """Not partitioned: one follower of the process keeps it (its lease is counted)."""
        self.triggers = store.live_triggers(batch=self.batch, partition=partition)
        """The trigger engine, stepped after the datasets (None: no trigger enabled)."""
        self._triggers_retry_at = 0.0
        self.others = [n for n in store.projections if n not in self.datasets]
        """Datasets this follower does not fold: regrouped when the graph changes."""
        self._regroup_others = False
        self._graph_retry_at = 0.0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._woken = threading.Event()
        self._thread: threading.Thread | None = None
        self._pause = threading.Event()
        self._paused = threading.Event()
        self._subscription: Any = None
        self._subscription_thread: threading.Thread | None = None

    @property
    def leased(self) -> bool:
        return self.consumer.leased

    @property
    def position(self) -> int:
        return self.consumer.position

    @property
    def applied(self) -> int:
        return self.consumer.applied

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        name = "profilestore-follower"
        if self.partition is not None:
            name += f"-{self.partition}"
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop at a batch boundary and give the leases back."""
        self._stop.set()
        self._woken.set()
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
        consumer = self.consumer
        try:
            while not self._stop.is_set():
                if self._pause.is_set():
                    self._hold_off()
                    continue
                if not consumer.leased:
                    if consumer.take():
                        self._subscribe()
                    else:  # another follower holds them: stand by
                        self._stop.wait(min(5.0, consumer.lease_ttl.total_seconds() / 4))
                    continue
                try:
                    consumer.renew_if_due()
                    stepped = self.step()
                    # A short page reached the head: nothing more until the next wake-up.
                    if stepped is None or stepped.events_read < self.batch:
                        self._wait()
                except LeaseHeld:
                    log.warning("follower lost its leases; standing by")
                except StoreClosed:
                    return
                except Exception as error:  # keep following; report it
                    self.last_error = repr(error)
                    log.exception("follower pass failed; retrying")
                    consumer.record("failed", error)
                    self._stop.wait(1.0)
        except StoreClosed:
            return
        finally:
            try:
                consumer.release()
                self.graph.release()
                if self.triggers is not None:
                    self.triggers.release()
            except StoreClosed:  # the store closed under us: its leases lapse by themselves
                log.warning("follower stopped after its store was closed")

    @contextlib.contextmanager
    def paused(self, timeout: float = 30.0) -> Iterator[None]:
        """Give the datasets' leases up for the duration (a promotion needs them)."""
        self._paused.clear()
        self._pause.set()
        self._woken.set()
        try:
            if self.live and not self._paused.wait(timeout):
                raise TimeoutError("the follower did not pause")
            yield
        finally:
            self._pause.clear()

    def _hold_off(self) -> None:
        self.consumer.release()
        self._paused.set()
        while self._pause.is_set() and not self._stop.is_set():
            self._stop.wait(0.005)

    def _subscribe(self) -> None:
        if self._subscription is not None:
            return
        self._subscription = self.store.subscribe(self.datasets, triggers=self.triggers is not None)
        if self._subscription is None:
            return
        self._subscription_thread = threading.Thread(
            target=self._listen, name="profilestore-follower-subscription", daemon=True
        )
        self._subscription_thread.start()

    def _listen(self) -> None:
        try:
            for _ in self._subscription.positions():
                self._woken.set()
        except Exception as error:  # the loop falls back to reading the log
            self.last_error = repr(error)

    def _wait(self) -> None:
        if self._subscription is None:
            self._stop.wait(self.poll_s)
        else:
            self._woken.wait(LOG_READ_EVERY_S)

    def step(self) -> PassReport | None:
        """Apply one batch of new events, if there are any; the thread calls this."""
        # Cleared before the log is read: a notification that arrives meanwhile wakes
        # the next wait at once.
        self._woken.clear()
        self._step_graph()
        stepped = self.consumer.step() if self.datasets else None
        decided = self._step_triggers()
        if decided is not None and decided.events_read >= self.batch:
            return decided  # the engine is behind: step again before waiting
        return stepped

    def _step_triggers(self) -> PassReport | None:
        """Decide the triggers on the new events (and the timers due), after the datasets
        so their sections are fresh; another process may run the engine."""
        engine = self.triggers
        if engine is None:
            return None
        if not engine.leased:
            if time.monotonic() < self._triggers_retry_at:
                return None
            if not engine.take():
                self._triggers_retry_at = time.monotonic() + GRAPH_RETRY_S
                return None
        engine.renew_if_due()
        return engine.step()

    def _step_graph(self) -> None:
        """Apply new links first, if this follower keeps the graph (another may)."""
        graph = self.graph
        if not graph.leased:
            # Another process keeps the graph: try for it now and then, not every poll.
            if time.monotonic() < self._graph_retry_at:
                return
            if not graph.take():
                self._graph_retry_at = time.monotonic() + GRAPH_RETRY_S
                return
        graph.renew_if_due()
        stepped = graph.step()
        if stepped is not None and stepped.sections_written.get(TARGET):
            self._regroup_others = bool(self.others)
        if self._regroup_others:
            # A dataset another process holds regroups in its own pass: not waited for.
            self.store.apply_identity(self.others)
            self._regroup_others = False

    # --- lag ----------------------------------------------------------------------------

    def lag(self) -> dict[str, Freshness]:
        """How far behind the log head each followed dataset is."""
        return self.store.freshness(self.datasets)
