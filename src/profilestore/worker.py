"""The worker: the real-time follower, every scheduled refresh and the courier, in one
process.

The follower also runs the trigger engine when a trigger is enabled; the courier thread
delivers the outbox (:mod:`profilestore.outbox`) when a destination is configured.

Jobs are built from the config when the worker starts (config is the source of truth:
nothing about jobs is stored but their run records). Each scheduled dataset gets an
APScheduler 3 job with ``coalesce`` (missed fires collapse into one), ``max_instances=1``
and a misfire grace time. Its first run is due when :func:`~profilestore.schedule.next_due`
says: immediately if the dataset never ran or missed a run while no worker was up
(caught up from the stored last successful run), else at its next regular time.

A run refreshes up to the log head as it is when the run starts, under the dataset's
lease, so two workers on the same stores never refresh one dataset at the same time:
the second one's run is recorded as skipped. Running a dataset twice changes nothing.

**Partitioned** (``profilestore worker --partitions auto``, :mod:`profilestore.partitions`):
the worker shares the partitions with the other workers on the same stores, with nothing
else to configure. Every ``heartbeat_s`` it writes its heartbeat, renews its partitions'
leases, counts the workers alive and keeps at most ``ceil(count / alive)`` partitions:
it gives back the excess (highest indexes first) when a worker appears, and takes free
ones (a dead worker's, once their leases lapsed) up to its share. Each partition it holds
gets a follower of its own (the real-time datasets and the trigger engine, for that
partition's customers), and its scheduled refreshes cover the partitions it holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from profilestore.errors import LeaseHeld, StoreClosed
from profilestore.follower import Follower
from profilestore.partitions import excess, wanted
from profilestore.pipeline import PassReport
from profilestore.runs import Trigger
from profilestore.schedule import next_due, parse_cadence, trigger
from profilestore.store import ProfileStore

log = logging.getLogger(__name__)

PROMOTE_ATTEMPTS = 10


SKIPPED_RETRIES = 10
SKIPPED_RETRY_S = 0.1


class Worker:
    def __init__(
        self,
        store: ProfileStore,
        datasets: Sequence[str] | None = None,
        *,
        partitioned: bool = False,
    ) -> None:
        self.store = store
        names = store.datasets(datasets)
        self.cadences = {n: parse_cadence(store.cadence(n)) for n in names}
        self.realtime = [n for n, c in self.cadences.items() if c.kind == "realtime"]
        self.scheduled = [n for n, c in self.cadences.items() if c.scheduled]
        self.follows = bool(self.realtime or store.triggers)
        # A partitioned store is worked on by partition only, flag or not.
        partitioned = partitioned or store.partition_count() > 1
        self.share = Share(self) if partitioned else None
        """The partitions this worker holds, shared with the others (None: every customer)."""
        self.follower = Follower(store, self.realtime) if self.follows and not partitioned else None
        """Follows the real-time datasets, and runs the trigger engine if one is enabled."""
        settings = store.settings.schedule
        self.scheduler = BackgroundScheduler(
            timezone=store.timezone,
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": settings.misfire_grace_s,
            },
        )
        self.reports: list[tuple[str, Trigger, PassReport | None]] = []
        delivery = store.settings.delivery
        self.delivers = bool(delivery.endpoints or delivery.file)
        """Whether it runs the courier (a destination is configured)."""
        self._stop_delivery = threading.Event()
        self._courier: threading.Thread | None = None

    def jobs(self, now: dt.datetime) -> list[dict[str, Any]]:
        """The jobs the config asks for: dataset, trigger and first run (catch-up aware)."""
        planned = []
        for name in self.scheduled:
            cadence = self.cadences[name]
            success = self.store.last_success(name)
            last = success.finished_at if success else None
            first = next_due(cadence, self.store.timezone, last, now)
            planned.append(
                {
                    "dataset": name,
                    "trigger": trigger(cadence, self.store.timezone, last or now),
                    "first_run": first,
                    "catch_up": first is not None and first <= now,
                }
            )
        return planned

    def fit_job(self, now: dt.datetime) -> dict[str, Any] | None:
        """The scores' refit (``[scores] fit``), when scores are among this worker's
        datasets and it is not manual: first due from the current fit's time (at once if
        there is none, or one was missed while no worker was up)."""
        if "scores" not in self.cadences:
            return None
        cadence = parse_cadence(self.store.settings.scores.fit)
        if not cadence.scheduled:
            return None
        fitted = self.store.score_fit()
        last = fitted.fitted_at if fitted is not None else None
        return {
            "trigger": trigger(cadence, self.store.timezone, last or now),
            "first_run": next_due(cadence, self.store.timezone, last, now),
        }

    def refit_scores(self) -> PassReport | None:
        """The scheduled refit: fit, then score every profile with it (the profiles switch
        together). Skipped while another process scores; failures are logged."""
        try:
            report = self.store.fit_scores(trigger="schedule", required=False)
        except Exception:
            log.exception("scheduled refit of the scores failed")
            self.reports.append(("scores-fit", "schedule", None))
            return None
        self.reports.append(("scores-fit", "schedule", report))
        return report

    def start(self) -> None:
        now = self.store.clock()
        for job in self.jobs(now):
            self.scheduler.add_job(
                self.run_dataset,
                trigger=job["trigger"],
                args=[job["dataset"], "catch-up" if job["catch_up"] else "schedule"],
                id=job["dataset"],
                name=f"refresh {job['dataset']}",
                next_run_time=job["first_run"],
            )
        fit = self.fit_job(now)
        if fit is not None:
            self.scheduler.add_job(
                self.refit_scores,
                trigger=fit["trigger"],
                id="scores-fit",  # not a dataset name: those have no hyphen
                name="refit the scores' population-wide parts",
                next_run_time=fit["first_run"],
            )
        if self.store.settings.schedule.rebuild_outdated:
            self.scheduler.add_job(
                self.rebuild_outdated,
                trigger="interval",
                seconds=self.store.settings.schedule.version_check_s,
                id="rebuild-outdated",  # not a dataset name: those have no hyphen
                name="rebuild datasets built by another projection version",
                next_run_time=now,
            )
        self.scheduler.start()
        if self.follower is not None:
            self.follower.start()
        if self.share is not None:
            self.share.start()
        if self.delivers:
            self._courier = threading.Thread(target=self._deliver, name="profilestore-courier")
            self._courier.start()

    def stop(self) -> None:
        """Let a running refresh finish, stop the follower at a batch boundary."""
        self.scheduler.shutdown(wait=True)
        if self.follower is not None:
            self.follower.stop()
        if self.share is not None:
            self.share.stop()
        self._stop_delivery.set()
        if self._courier is not None:
            self._courier.join(30)

    def _deliver(self) -> None:
        """Deliver due messages until stopped; failures are logged and retried."""
        poll = self.store.settings.delivery.poll_ms / 1000
        while not self._stop_delivery.is_set():
            try:
                report = self.store.deliver()
            except StoreClosed:
                return
            except Exception:
                log.exception("delivering the outbox failed; retrying")
                report = None
            busy = report is not None and (report.delivered or report.retried or report.dead)
            if not busy:
                self._stop_delivery.wait(poll)

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rebuild_outdated(self) -> list[str]:
        """Rebuild, blue/green, this worker's datasets that another projection version
        built: staging first (live documents keep being refreshed and read), then the
        swap and catch-up under the live lease (the follower pauses for it). Returns the
        datasets rebuilt; failures are logged and retried at the next check."""
        rebuilt = []
        for name in self.store.outdated():
            if name not in self.cadences:
                continue
            try:
                self.store.build_staging([name])
                self._promote(name)
            except Exception:
                log.exception("background rebuild of %s failed; retrying later", name)
                continue
            log.info(
                "rebuilt %s with projection version %s", name, self.store.projections[name].version
            )
            rebuilt.append(name)
        return rebuilt

    def _promote(self, name: str) -> None:
        for attempt in range(PROMOTE_ATTEMPTS):
            try:
                if self.share is not None:
                    with self.share.paused():
                        self.store.promote([name])
                elif self.follower is not None and name in self.follower.datasets:
                    with self.follower.paused():
                        self.store.promote([name])
                else:
                    self.store.promote([name])
                return
            except LeaseHeld:  # a scheduled refresh is running: it ends soon
                if attempt == PROMOTE_ATTEMPTS - 1:
                    raise
                time.sleep(1.0)

    def run_dataset(self, dataset: str, trigger: Trigger = "schedule") -> PassReport | None:
        """One scheduled run; the scheduler calls this. Failures are recorded, not raised."""
        if trigger == "catch-up":
            job = self.scheduler.get_job(dataset)
            if job is not None:
                job.modify(args=[dataset, "schedule"])  # later fires are regular runs
        try:
            held = None if self.share is None else self.share.held()
            if held == []:
                return None  # no partition here: the workers holding them run it
            report = self.store.refresh([dataset], trigger=trigger, partitions=held)
            for _ in range(SKIPPED_RETRIES):
                # A merge regrouping the dataset holds its lease for moments only: a
                # scheduled run waits for it rather than skip a whole period.
                if not report.skipped_locked:
                    break
                time.sleep(SKIPPED_RETRY_S)
                report = self.store.refresh([dataset], trigger=trigger, partitions=held)
        except Exception:
            log.exception("scheduled refresh of %s failed", dataset)
            self.reports.append((dataset, trigger, None))
            return None
        if report.skipped_locked:
            log.info("%s is being refreshed by another process; skipped", dataset)
        self.reports.append((dataset, trigger, report))
        return report


class Share:
    """A partitioned worker's share of the partitions; see the module docstring."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.store = worker.store
        self.count = self.store.partition_count()
        self.every_s = self.store.settings.schedule.heartbeat_s
        self.followers: dict[int, Follower] = {}
        """Partition -> its follower (only when the worker follows anything)."""
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def held(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    def start(self) -> None:
        self.balance()  # a share at once, not a heartbeat later
        self._thread = threading.Thread(target=self._run, name="profilestore-partitions")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for index in self.held():
            self._give_back(index)
        with contextlib.suppress(StoreClosed):
            self.store.leave()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.balance()
            except StoreClosed:
                return
            except Exception:
                log.exception("sharing the partitions failed; retrying")

    def balance(self) -> None:
        """One round: renew, beat, give back the excess, take up to the share."""
        store = self.store
        for index in store.renew_partitions(self.held()):
            log.warning("partition %s was taken over; giving it up", index)
            self._give_back(index, lost=True)
        store.heartbeat(self.held())
        alive = max(1, len(store.workers()))
        for index in excess(self.held(), self.count, alive):
            self._give_back(index)
        more = wanted(self.held(), self.count, alive)
        if more:
            # Start from a different place per worker, so workers starting together try
            # different partitions first.
            offset = hash(store.holder) % self.count
            for step in range(self.count):
                index = (offset + step) % self.count
                if more == 0:
                    break
                if index in self._held or not store.take_partition(index):
                    continue
                self._take(index)
                more -= 1
            store.heartbeat(self.held())

    def _take(self, index: int) -> None:
        with self._lock:
            self._held.add(index)
        log.info("took partition %s of %s", index, self.count)
        if self.worker.follows:
            follower = Follower(self.store, self.worker.realtime, partition=index)
            self.followers[index] = follower
            follower.start()

    def _give_back(self, index: int, *, lost: bool = False) -> None:
        follower = self.followers.pop(index, None)
        if follower is not None:
            follower.stop()
        with self._lock:
            self._held.discard(index)
        if not lost:
            with contextlib.suppress(StoreClosed):
                self.store.release_partition(index)
        log.info("gave back partition %s of %s", index, self.count)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Every follower of this worker paused (a promotion needs every partition)."""
        with contextlib.ExitStack() as stack:
            for follower in list(self.followers.values()):
                stack.enter_context(follower.paused())
            yield
