"""The scoring job: a handler of the consumer loop that writes every profile's scores.

It reads the folded ``engagement`` sections, never the log (its pass has no pages of
events), under the ``scores`` dataset's lease, and its runs are recorded in the run
journal like every refresh (``status``, catch-up after downtime). One run:

1. with ``refit`` (weekly by default, ``profilestore scores fit``) or when no fit exists,
   fit the population-wide parts (:func:`profilestore.scoring.fit`) and store the fit
   under its version, with its diagnostics;
2. score every customer, chunk by chunk, under that one fit, into the ``scores``
   dataset's **staging area** (the live scores keep answering reads), each section
   written whole and unguarded over whatever the staging area kept from before
   (``start_staging(reuse=True)``: on SQLite the generation the last swap replaced, which
   costs nothing to keep and as much as writing it to empty), then the staged sections
   of customers no longer scored removed;
3. promote the staging area in one step (on SQLite three table renames in one
   transaction, whatever the number of profiles), then point the *current fit* record
   at the fit and store the run's summary.

The summary counts customers per stage and tier, and **transitions**: for each customer,
the stage of the live scores before the run against the new one (``new`` where there was
none), counted per pair that changed, read chunk by chunk beside the inputs.

So a refit never leaves a profile half-scored, nor the population split between two fits:
reads see the old scores, all of them, until the swap, and the new ones, all of them,
after it. Each section names its fit (``fit_version``) and a fit is kept by version, so a
profile read at any moment is explained by the fit it names.

With ``[scores] swap = false`` step 2 writes each profile's section in place instead
(unguarded, as identity regroups do) and there is no copy to swap in: half the writing.
A profile is still never half-scored (its scores are one section, written whole, naming
its fit), but while a run is under way some profiles are on the new fit and others on the
old; the current-fit pointer and the summary move when all are written. Two runs never overlap (the
lease): a refit started during a daily scoring is skipped, or waits, and runs after it.

Memory: a chunk of sections at a time when scoring; a fit holds the columns of every
customer (a few dozen floats each), never their events.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from profilestore import scoring
from profilestore.config import ScoreSettings
from profilestore.documents import DocumentStore, SectionWrite
from profilestore.eventlog import Notified
from profilestore.pipeline import Clock, Handler, Pass, PassReport
from profilestore.scoring import ScoreFit, Stages, Summary, Tally

TARGET = "scores"
SOURCE = "engagement"
FIT = "score_fit"
"""Records: every fit by version (the fits live sections may name)."""
CURRENT = "score_fit_current"
"""Record ``current``: the version of the fit the live scores were computed with."""
SUMMARY = "score_summary"
"""Records: each run's summary, keyed by the run's number (zero-padded: sorted by key)."""
KEEP_FITS = 5
"""Fits kept: those the last few runs used (and the current one), for explanations."""


def current_fit(documents: DocumentStore) -> ScoreFit | None:
    pointer = documents.get_record(CURRENT, "current")
    if pointer is None:
        return None
    return fit_of(documents, str(pointer["version"]))


def fit_of(documents: DocumentStore, version: str) -> ScoreFit | None:
    found = documents.get_record(FIT, version)
    return None if found is None else msgspec.convert(found, ScoreFit)


def summaries(documents: DocumentStore) -> list[Summary]:
    return [msgspec.convert(v, Summary) for v in documents.get_records(SUMMARY).values()]


class ScoreHandler(Handler):
    """Score every profile (see the module docstring); ``refit``: fit first."""

    def __init__(
        self,
        documents: DocumentStore,
        settings: ScoreSettings,
        *,
        clock: Clock,
        refit: bool = False,
    ) -> None:
        self.documents = documents
        self.settings = settings
        self.clock = clock
        self.refit = refit

    def begin(self, targets: Sequence[str]) -> _ScorePass:
        assert list(targets) == [TARGET], targets
        return _ScorePass(self)


class _ScorePass(Pass):
    topics: Sequence[str] = ()

    def __init__(self, handler: ScoreHandler) -> None:
        self.handler = handler
        self.start = 0
        self.written = 0
        self.fitted: ScoreFit | None = None
        self.summary: Summary | None = None
        self.done = False
        self.number = 0

    def pages(self, high_water: int) -> Iterable[Sequence[Notified]]:
        return ()  # reads documents, not the log

    def handle(self, page: Sequence[Notified]) -> None:
        raise AssertionError("the scoring pass reads no events")

    def should_commit(self) -> bool:
        return False

    def _customers(self) -> list[str]:
        return sorted(self.handler.documents.customer_ids(SOURCE))

    def _chunks(self, customers: list[str]) -> Iterable[tuple[list[str], list[Any], list[int]]]:
        documents = self.handler.documents
        size = self.handler.settings.chunk
        for start in range(0, len(customers), size):
            ids = customers[start : start + size]
            stored = documents.load(SOURCE, ids)
            kept = [c for c in ids if c in stored]
            yield kept, [stored[c].section for c in kept], [stored[c].position for c in kept]

    def _previous(self, ids: list[str]) -> list[Any]:
        """The live scores of ``ids`` (None where none): what the run's transitions start
        from."""
        stored = self.handler.documents.load(TARGET, ids, shape=Stages)
        return [stored[c].section if c in stored else None for c in ids]

    def _fit(self, customers: list[str], now: dt.datetime) -> ScoreFit:
        started = time.perf_counter()
        settings = self.handler.settings
        window = settings.lifecycle.window_days
        chunks = [
            scoring.facts(ids, sections, now, settings, window)
            for ids, sections, _ in self._chunks(customers)
        ]
        for chunk in chunks:
            chunk.sections = []  # the fit needs columns only
        columns = scoring.concatenate(chunks)
        del chunks
        fitted = scoring.fit(columns, now, settings, time.perf_counter() - started)
        documents = self.handler.documents
        documents.put_record(FIT, fitted.version, msgspec.to_builtins(fitted))
        return fitted

    def commit(self, through: int) -> None:
        if self.done:
            return
        handler = self.handler
        documents = handler.documents
        now = handler.clock()
        source = documents.tracking(SOURCE)
        position = source.position if source else 0
        customers = self._customers()
        if not customers and not handler.refit:
            self.done = True  # nobody to score yet: a scheduled run does nothing
            return
        fitted = None if handler.refit else current_fit(documents)
        if fitted is None:
            fitted = self._fit(customers, now)
        self.fitted = fitted
        swap = handler.settings.swap
        if swap:
            documents.start_staging(TARGET, reuse=True)
        tally = Tally()
        for ids, sections, positions in self._chunks(customers):
            scored = scoring.apply(ids, sections, fitted, now, handler.settings)
            tally.add(scored, self._previous(ids))
            writes = [
                SectionWrite(c, s, max(p, 1))
                for c, s, p in zip(ids, scored, positions, strict=True)
            ]
            # Unguarded (a rescore at the same position replaces the section), one
            # section per profile: each profile switches whole.
            documents.regroup(TARGET, writes, (), refreshed_at=now, staging=swap)
            self.written += len(writes)
        if swap:
            # What the reused staging area held of customers no longer scored (merged).
            left = set(documents.customer_ids(TARGET, staging=True)).difference(customers)
            documents.regroup(TARGET, [], sorted(left), refreshed_at=now, staging=True)
            documents.advance(TARGET, max(position, 1), refreshed_at=now, staging=True)
        else:
            # Profiles no longer in engagement (merged into another) lose their scores.
            gone = set(documents.customer_ids(TARGET)).difference(customers)
            documents.regroup(TARGET, [], sorted(gone), refreshed_at=now)
            documents.advance(TARGET, max(position, 1), refreshed_at=now)
        runs = documents.get_records(SUMMARY)
        last = next(reversed(runs), None)
        self.number = int(last) + 1 if last is not None else 1
        previous = msgspec.convert(runs[last], Summary) if last is not None else None
        self.summary = tally.summary(now, fitted.version, previous)
        self.done = True

    def finish(self, through: int) -> None:
        documents = self.handler.documents
        if self.fitted is None or self.summary is None:
            return  # nothing was scored
        if self.handler.settings.swap:
            documents.promote_staging(TARGET)
        documents.put_records(
            [
                (CURRENT, "current", {"version": self.fitted.version}),
                (SUMMARY, f"{self.number:012d}", msgspec.to_builtins(self.summary)),
            ]
        )
        # Fits no live section names any more: keep those of the last few runs, so a
        # section read just before a swap is still explained by its fit.
        recent = list(documents.get_records(SUMMARY).values())[-KEEP_FITS:]
        kept = {str(r["fit_version"]) for r in recent} | {self.fitted.version}
        for version in documents.get_records(FIT):
            if version not in kept:
                documents.delete_record(FIT, version)

    def report(self, report: PassReport) -> PassReport:
        report.sections_written[TARGET] = self.written
        return report
