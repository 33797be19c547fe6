"""``verify`` with every core: worker processes, each refolding a share of the customers.

A refold is pure Python, so one process checks customers on one core. Over many customers
:func:`verify_in_processes` cuts the (sorted) list into tasks of a few thousand; each
worker process opens the stores read-only (its own connections, as an auditor opens a
copy) once, and checks its tasks with the same code as a check in one process
(:meth:`ProfileStore.verify` on the task's customers). The reports are merged in the
order of the tasks, so drift is listed as one process would list it.

Workers are started with ``spawn``: the calling process may hold threads and open
connections, which a forked child must not inherit.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from profilestore.config import Settings
    from profilestore.replay import VerifyReport
    from profilestore.store import ProfileStore

TASK = 2_000
"""Most customers per task: enough that a task's start is noise."""
TASKS_PER_WORKER = 8
"""At least this many tasks per worker (down to :data:`SMALLEST_TASK` customers), so no
worker is left with one more large task than the others at the end."""
SMALLEST_TASK = 200


def task_size(customers: int, workers: int) -> int:
    """Customers per task for ``customers`` over ``workers``."""
    wanted = -(-customers // (max(1, workers) * TASKS_PER_WORKER))
    return min(TASK, max(SMALLEST_TASK, wanted))


_store: ProfileStore | None = None


def _open(settings: Settings) -> None:
    """In a worker: open the stores once, read-only."""
    global _store  # noqa: PLW0603 - one store per worker process
    from profilestore.store import open_store

    _store = open_store(settings, read_only=True)


def _check(customer_ids: Sequence[str]) -> VerifyReport:
    assert _store is not None, "the worker's store is opened by its initializer"
    return _store._verify(customer_ids)


def verify_in_processes(
    settings: Settings,
    customer_ids: Sequence[str],
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Check ``customer_ids`` (profile ids) in ``workers`` processes; one merged report."""
    from profilestore.replay import VerifyReport

    size = task_size(len(customer_ids), workers)
    tasks = [customer_ids[i : i + size] for i in range(0, len(customer_ids), size)]
    context = multiprocessing.get_context("spawn")
    done = 0
    with ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=context,
        initializer=_open,
        initargs=(settings,),
    ) as pool:
        futures: list[Future[VerifyReport]] = [pool.submit(_check, task) for task in tasks]
        reports = []
        for future in futures:
            reports.append(future.result())
            done += reports[-1].customers_checked
            if progress:
                progress(done, len(customer_ids))
    counts: dict[str, int] = {}
    for report in reports:
        for name, count in report.drift_by_dataset.items():
            counts[name] = counts.get(name, 0) + count
    return VerifyReport(
        customers_checked=sum(r.customers_checked for r in reports),
        sections_checked=sum(r.sections_checked for r in reports),
        drift=[d for r in reports for d in r.drift],
        drift_by_dataset=counts,
        failures=[f for r in reports for f in r.failures],
    )
