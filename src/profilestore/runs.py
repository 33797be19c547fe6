"""What refreshes did: run history and dead letters, kept in the document store.

Every refresh of a dataset (scheduled, caught up, manual, or by the real-time follower)
is a :class:`RunRecord`: the last one, the last success and the last failure are kept per
dataset, which is what ``status`` shows and what catch-up after downtime reads.

A fold that raises on an event (a poison event) must not stop other datasets or other
customers. The event, the error and the attempt count become a :class:`DeadLetter`, and
the customer is *parked* for that dataset: its section stays at its last good state and
its later events wait, rather than being folded out of order around the failed one.
Retrying refolds the customer's stream from that state.

A rebuild is as lenient, into letters of its own (``staged`` ones): they describe the
staging documents, not the live ones, so a rebuild running beside live refreshes neither
parks a live customer nor releases one. Promoting the staging area makes its letters the
live ones (:meth:`Journal.promote_letters`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import msgspec

from profilestore.documents import DocumentStore

if TYPE_CHECKING:
    from profilestore.pipeline import PassReport

RUNS = "run"
DEAD_LETTERS = "dead_letter"
STAGED_DEAD_LETTERS = "staged_dead_letter"
VERSIONS = "projection_version"

Trigger = Literal["schedule", "catch-up", "manual", "follower", "rebuild"]
Status = Literal["running", "succeeded", "failed", "skipped"]


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    dataset: str
    trigger: Trigger
    holder: str
    started_at: dt.datetime
    status: Status = "running"
    finished_at: dt.datetime | None = None
    error: str | None = None
    high_water: int = 0
    events_applied: int = 0
    sections_written: int = 0
    dead_letters: int = 0

    @property
    def seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    dataset: str
    customer_id: str
    notification_id: int
    event_id: str
    topic: str
    error: str
    attempts: int = 1
    first_failed_at: dt.datetime
    last_failed_at: dt.datetime


class Journal:
    """Run history and dead letters of every dataset."""

    def __init__(self, documents: DocumentStore) -> None:
        self.documents = documents

    # --- runs ---------------------------------------------------------------------------
    # Run records are built here and nowhere else: started, then succeeded or failed, for
    # bounded runs; noted, for the live consumer's periodic records.

    def started(
        self, datasets: Sequence[str], trigger: Trigger, holder: str, now: dt.datetime
    ) -> dict[str, RunRecord]:
        runs = {
            name: RunRecord(dataset=name, trigger=trigger, holder=holder, started_at=now)
            for name in datasets
        }
        for run in runs.values():
            self.record(run)
        return runs

    def failed(self, runs: Mapping[str, RunRecord], error: BaseException, now: dt.datetime) -> None:
        for run in runs.values():
            self.record(
                msgspec.structs.replace(run, status="failed", finished_at=now, error=repr(error))
            )

    def succeeded(
        self, runs: Mapping[str, RunRecord], report: PassReport, now: dt.datetime
    ) -> None:
        for name, run in runs.items():
            self.record(
                msgspec.structs.replace(
                    run,
                    status="succeeded",
                    finished_at=now,
                    high_water=report.high_water,
                    events_applied=report.events_applied.get(name, 0),
                    sections_written=report.sections_written.get(name, 0),
                    dead_letters=report.dead_letters.get(name, 0),
                )
            )

    def noted(
        self,
        datasets: Sequence[str],
        trigger: Trigger,
        holder: str,
        now: dt.datetime,
        *,
        failed: bool,
        error: BaseException | None,
        high_water: int,
        events_applied: int,
    ) -> None:
        """A finished run record for work done continuously (the live consumer)."""
        for name in datasets:
            self.record(
                RunRecord(
                    dataset=name,
                    trigger=trigger,
                    holder=holder,
                    started_at=now,
                    finished_at=now,
                    status="failed" if failed else "succeeded",
                    error=repr(error) if error is not None else None,
                    high_water=high_water,
                    events_applied=events_applied,
                )
            )

    def record(self, run: RunRecord) -> None:
        """Store ``run`` as the dataset's last run (and last success or failure)."""
        value = msgspec.to_builtins(run)
        self.documents.put_record(RUNS, f"{run.dataset}/last", value)
        if run.status == "succeeded":
            self.documents.put_record(RUNS, f"{run.dataset}/success", value)
        elif run.status == "failed":
            self.documents.put_record(RUNS, f"{run.dataset}/failure", value)

    def _run(self, dataset: str, which: str) -> RunRecord | None:
        found = self.documents.get_records(RUNS, f"{dataset}/{which}").get(f"{dataset}/{which}")
        return msgspec.convert(found, RunRecord) if found else None

    def last_run(self, dataset: str) -> RunRecord | None:
        return self._run(dataset, "last")

    def last_success(self, dataset: str) -> RunRecord | None:
        return self._run(dataset, "success")

    def last_failure(self, dataset: str) -> RunRecord | None:
        return self._run(dataset, "failure")

    # --- projection versions ------------------------------------------------------------

    def built_by(self, dataset: str, version: int, now: dt.datetime) -> None:
        """Record that ``dataset``'s live documents were built by projection ``version``."""
        self.documents.put_record(
            VERSIONS, dataset, {"version": version, "built_at": now.isoformat()}
        )

    def built_versions(self) -> dict[str, int]:
        """The projection version that built each dataset with a record of one."""
        return {k: int(v["version"]) for k, v in self.documents.get_records(VERSIONS).items()}

    # --- dead letters -------------------------------------------------------------------

    def park(self, letter: DeadLetter, *, staged: bool = False) -> DeadLetter:
        """Record a failed event; a repeated failure of the same event counts an attempt."""
        kind = STAGED_DEAD_LETTERS if staged else DEAD_LETTERS
        key = f"{letter.dataset}/{letter.customer_id}"
        existing = self.documents.get_records(kind, key).get(key)
        if existing is not None:
            previous = msgspec.convert(existing, DeadLetter)
            if previous.notification_id == letter.notification_id:
                letter = msgspec.structs.replace(
                    letter,
                    attempts=previous.attempts + 1,
                    first_failed_at=previous.first_failed_at,
                )
        self.documents.put_record(kind, key, msgspec.to_builtins(letter))
        return letter

    def dead_letters(self, dataset: str, *, staged: bool = False) -> list[DeadLetter]:
        kind = STAGED_DEAD_LETTERS if staged else DEAD_LETTERS
        records = self.documents.get_records(kind, f"{dataset}/")
        return [msgspec.convert(r, DeadLetter) for r in records.values()]

    def parked(self, dataset: str) -> set[str]:
        return {letter.customer_id for letter in self.dead_letters(dataset)}

    def release(self, dataset: str, customer_id: str, *, staged: bool = False) -> None:
        kind = STAGED_DEAD_LETTERS if staged else DEAD_LETTERS
        self.documents.delete_record(kind, f"{dataset}/{customer_id}")

    def clear_staged(self, dataset: str) -> None:
        """Forget a previous rebuild's letters: a new staging area is being built."""
        for letter in self.dead_letters(dataset, staged=True):
            self.release(dataset, letter.customer_id, staged=True)

    def promote_letters(self, datasets: Sequence[str], swap: Callable[[], None]) -> None:
        """Make the staging areas' letters the live ones around ``swap`` (the promotion
        of ``datasets``).

        The staged letters are added to the live ones first, then the documents are
        swapped, then the live letters the rebuild did not confirm are released (its
        documents folded those events). A crash in between leaves extra customers parked,
        which waits (a retry releases them), never a parked customer unparked.
        """
        staged = {name: self.dead_letters(name, staged=True) for name in datasets}
        self.documents.put_records(
            [
                (DEAD_LETTERS, f"{name}/{letter.customer_id}", msgspec.to_builtins(letter))
                for name, letters in staged.items()
                for letter in letters
            ]
        )
        swap()
        for name, letters in staged.items():
            kept = {letter.customer_id for letter in letters}
            for letter in self.dead_letters(name):
                if letter.customer_id not in kept:
                    self.release(name, letter.customer_id)
            for letter in letters:
                self.release(name, letter.customer_id, staged=True)
