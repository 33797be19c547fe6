"""Experiments on triggers (seed 003, "Test & Learn"): variants, a holdout, a report.

An experiment (``[experiments]`` in the config) splits the customers a trigger fires for
into variants by weight, and a *holdout* share that is never sent the message: the
baseline a variant is measured against.

**Assignment** is deterministic and stable. A customer key is placed by a hash of the
experiment's name and the key (the same on every restart and every machine), and the
assignment is recorded the first time the customer is met. A merged customer keeps the
arm one of its keys was given first (the records of every key are read), so a merge
never moves anyone to another arm; a new key joining later adopts it.

A held-out firing is claimed like a sent one (so it is decided once) but queued nowhere;
its outcome is ``held_out``. Sent firings carry the experiment and variant to the
receiver (``data.experiment``, ``data.variant``), which picks the content.

**The report** counts, per arm, the customers the trigger fired (or held out) for, and
those who *converted*: placed an order within ``window_days`` after it, on any of their
keys. The rate comes with a 95% Wilson score interval (sound for small counts and rates
near 0 or 1, unlike the normal approximation).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from profilestore.config import ExperimentSettings
from profilestore.documents import DocumentStore
from profilestore.eventlog import EventLog
from profilestore.events import OrderPlaced
from profilestore.mapper import topics_for

ASSIGNMENT = "experiment.assignment"
HOLDOUT = "holdout"
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Experiment:
    name: str
    trigger: str
    arms: tuple[tuple[str, float], ...]
    """(arm, share) in config order, the holdout first; shares add up to 1."""
    window: dt.timedelta

    @classmethod
    def from_settings(cls, name: str, settings: ExperimentSettings) -> Experiment:
        total = sum(settings.variants.values())
        variants = tuple(
            (variant, (1 - settings.holdout) * weight / total)
            for variant, weight in settings.variants.items()
        )
        return cls(
            name=name,
            trigger=settings.trigger,
            arms=((HOLDOUT, settings.holdout), *variants),
            window=dt.timedelta(days=settings.window_days),
        )

    def draw(self, customer_id: str) -> str:
        """The arm a hash of the key places it in (before any record says otherwise)."""
        digest = hashlib.sha256(f"{self.name}\x1f{customer_id}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
        edge = 0.0
        for arm, share in self.arms:
            edge += share
            if point < edge:
                return arm
        return self.arms[-1][0]


class Assignment(msgspec.Struct, frozen=True, kw_only=True):
    arm: str
    at: dt.datetime


def assign(
    documents: DocumentStore,
    experiment: Experiment,
    members: Sequence[str],
    customer_id: str,
    now: dt.datetime,
) -> str:
    """The customer's arm: the first one recorded for any key of the profile, else the
    draw of ``customer_id``, recorded under it (insert-if-absent: a race keeps one)."""
    keys = {f"{experiment.name}\x1f{m}": m for m in members}
    recorded = [
        msgspec.convert(v, Assignment) for v in documents.get_records_for(ASSIGNMENT, keys).values()
    ]
    if recorded:
        return min(recorded, key=lambda a: (a.at, a.arm)).arm
    key = f"{experiment.name}\x1f{customer_id}"
    drawn = Assignment(arm=experiment.draw(customer_id), at=now)
    if documents.insert_record_if_absent(ASSIGNMENT, key, msgspec.to_builtins(drawn)):
        return drawn.arm
    return str(documents.get_records_for(ASSIGNMENT, [key])[key]["arm"])


class ArmReport(msgspec.Struct, frozen=True, kw_only=True):
    arm: str
    customers: int
    conversions: int
    rate: float
    low: float
    """The 95% Wilson interval of the rate."""
    high: float


class ExperimentReport(msgspec.Struct, frozen=True, kw_only=True):
    experiment: str
    trigger: str
    window_days: int
    arms: list[ArmReport]


def wilson(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    if trials == 0:
        return 0.0, 0.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - margin), min(1.0, centre + margin)


@dataclass(frozen=True)
class Exposure:
    """A customer the experiment's trigger fired (or held out) for."""

    customer_id: str
    arm: str
    at: dt.datetime


def report(
    log: EventLog,
    experiment: Experiment,
    exposures: Sequence[Exposure],
    members_of: Callable[[str], Sequence[str]],
) -> ExperimentReport:
    """Per arm: customers exposed (each counted once, at their first exposure), those who
    ordered within the window after it, the rate and its interval."""
    first: dict[str, Exposure] = {}
    for exposure in sorted(exposures, key=lambda e: e.at):
        first.setdefault(exposure.customer_id, exposure)
    topics = topics_for(OrderPlaced)
    counts: Mapping[str, list[int]] = {arm: [0, 0] for arm, _ in experiment.arms}
    for customer_id, exposure in first.items():
        tally = counts.get(exposure.arm)
        if tally is None:
            continue  # an arm removed from the config since
        tally[0] += 1
        end = exposure.at + experiment.window
        converted = any(
            exposure.at < n.event.occurred_at <= end
            for key in members_of(customer_id)
            for n in log.customer_changes(key, topics=topics)
        )
        tally[1] += converted
    arms = []
    for arm, (customers, conversions) in counts.items():
        low, high = wilson(conversions, customers)
        rate = conversions / customers if customers else 0.0
        arms.append(
            ArmReport(
                arm=arm,
                customers=customers,
                conversions=conversions,
                rate=round(rate, 4),
                low=round(low, 4),
                high=round(high, 4),
            )
        )
    return ExperimentReport(
        experiment=experiment.name,
        trigger=experiment.trigger,
        window_days=experiment.window.days,
        arms=arms,
    )
