"""``verify`` with every core: worker processes, each refolding a share of the customers.

A refold is pure Python, so one process checks customers on one core. Over many customers
:func:`verify_in_processes` cuts the (sorted) list into tasks of a few thousand; each
worker process opens the stores read-only (its own connections, as an auditor opens a
copy) once, and checks its tasks with the same code as a check in one process
(:meth:`ProfileStore.verify` on the task's customers). The reports are merged in the
order of the tasks, so drift is listed as one process would list it. The calling process
is one of the workers (``local``): it checks tasks from the end of the list from the
start, while the others are still starting.

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
    *,
    local: Callable[[Sequence[str]], VerifyReport] | None = None,
) -> VerifyReport:
    """Check ``customer_ids`` (profile ids) in ``workers`` processes; one merged report.

    With ``local`` (the caller's own check, in this process), this process is one of the
    ``workers``: it starts one fewer and checks tasks from the end of the list while the
    others start (a second or so each, to import and open the stores) and work from the
    front, until they meet: a task a worker has not taken is cancelled and checked here.
    """
    from profilestore.replay import VerifyReport

    size = task_size(len(customer_ids), workers)
    tasks = [customer_ids[i : i + size] for i in range(0, len(customer_ids), size)]
    context = multiprocessing.get_context("spawn")
    started = max(1, workers - 1) if local is not None else workers
    reports: dict[int, VerifyReport] = {}
    done = 0

    def record(index: int, report: VerifyReport) -> None:
        nonlocal done
        reports[index] = report
        done += report.customers_checked
        if progress:
            progress(done, len(customer_ids))

    with ProcessPoolExecutor(
        max_workers=min(started, len(tasks)),
        mp_context=context,
        initializer=_open,
        initargs=(settings,),
    ) as pool:
        futures: list[Future[VerifyReport]] = [pool.submit(_check, task) for task in tasks]
        if local is not None:
            for index in reversed(range(len(tasks))):
                if not futures[index].cancel():
                    break  # a worker has it: the workers have reached this far
                record(index, local(tasks[index]))
        for index, future in enumerate(futures):
            if index not in reports:
                record(index, future.result())
    ordered = [reports[index] for index in range(len(tasks))]
    counts: dict[str, int] = {}
    for report in ordered:
        for name, count in report.drift_by_dataset.items():
            counts[name] = counts.get(name, 0) + count
    return VerifyReport(
        customers_checked=sum(r.customers_checked for r in ordered),
        sections_checked=sum(r.sections_checked for r in ordered),
        drift=[d for r in ordered for d in r.drift],
        drift_by_dataset=counts,
        failures=[f for r in ordered for f in r.failures],
    )
