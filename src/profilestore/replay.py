"""Replaying history: profiles as of any time, and stored documents checked against the log.

Both fold a customer's own stream with the same projection code (and so the same caps and
retention) that builds the live documents; nothing here reads or writes the documents'
folding state.

- *As of T*: the customer's events recorded at or before T, every dataset folded: the
  profile the store would have served at T had every dataset been fresh.
- *Verify*: each stored section is compared with a fold of the customer's events up to
  the log position that section records (a dataset refreshed weekly is not "drift" for
  lacking this week's events). A customer with events but no section, up to the
  dataset's tracked position, is drift too; so is a section with no events behind it.

A fold that raises on one of a customer's events (a poison event: stored before today's
bounds, or refused by a changed fold) fails that dataset for that customer only, as a
refresh parks it: *verify* reports a :class:`FoldFailure` (the customer, dataset, event id,
type and error class) and goes on; *as of* raises :class:`~profilestore.errors.FoldFailed`
naming the same, which the CLI prints as one line and the API answers with 409.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from profilestore.documents import Profile, SectionMeta
from profilestore.errors import FoldFailed
from profilestore.eventlog import EventLog, Notified
from profilestore.projection import Projection


class Drift(msgspec.Struct, frozen=True, kw_only=True):
    dataset: str
    customer_id: str
    path: str
    """Where the stored section first differs, e.g. ``$.open[0].value``."""
    stored: Any = None
    expected: Any = None


class FoldFailure(msgspec.Struct, frozen=True, kw_only=True):
    """A customer's event a dataset's fold raised on: the dataset is not folded past it."""

    dataset: str
    customer_id: str
    notification_id: int
    event_id: str
    event_type: str
    error: str
    """The exception's class (its message may quote customer data, so it is left out)."""


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    customers_checked: int
    sections_checked: int
    drift: list[Drift]
    drift_by_dataset: dict[str, int]
    failures: list[FoldFailure] = msgspec.field(default_factory=list)
    """Sections that could not be checked: the fold raised on one of their events."""

    @property
    def ok(self) -> bool:
        return not self.drift and not self.failures


Routes = dict[str, list[Projection[Any]]]
"""The projections that read each event topic."""


def routes_for(projections: Mapping[str, Projection[Any]]) -> Routes:
    routes: Routes = {}
    for projection in projections.values():
        for topic in projection.topics:
            routes.setdefault(topic, []).append(projection)
    return routes


def fold_stream(
    projections: Mapping[str, Projection[Any]],
    events: Iterable[Notified],
    *,
    until: Mapping[str, int] | None = None,
    routes: Routes | None = None,
    failures: list[FoldFailure] | None = None,
) -> dict[str, tuple[Any, int]]:
    """Each dataset's section folded from ``events``, with the last position folded;
    ``until`` caps the positions per dataset. ``routes`` (from :func:`routes_for`) saves
    a caller folding many streams from building them each time. With ``failures``, a fold
    that raises is appended there and its dataset stops at its last good state (as a
    parked customer's); without, the error propagates."""
    if routes is None:
        routes = routes_for(projections)
    folded: dict[str, tuple[Any, int]] = {}
    failed: set[str] = set()
    for notified in events:
        for projection in routes.get(notified.topic, ()):
            name = projection.dataset
            if until is not None and notified.notification_id > until.get(name, 0):
                continue
            if name in failed:
                continue
            current = folded.get(name)
            section = projection.empty() if current is None else current[0]
            try:
                section = projection.fold(section, notified.event)
            except Exception as error:
                if failures is None:
                    raise
                failures.append(_failure(name, notified, error))
                failed.add(name)
                continue
            folded[name] = (section, notified.notification_id)
    return folded


def _failure(dataset: str, notified: Notified, error: BaseException) -> FoldFailure:
    cause = type(error)
    return FoldFailure(
        dataset=dataset,
        customer_id=notified.event.customer_id,
        notification_id=notified.notification_id,
        event_id=notified.event.event_id,
        event_type=notified.event.type_name,
        error=cause.__name__
        if cause.__module__ == "builtins"
        else f"{cause.__module__}.{cause.__name__}",
    )


def profile_as_of(
    log: EventLog,
    projections: Mapping[str, Projection[Any]],
    members: Sequence[str],
    as_of: dt.datetime,
) -> Profile | None:
    """The profile from the events of ``members`` (the keys of the profile as it was then)
    recorded at or before ``as_of``, in log order.

    Only what the cut needs is read: the events of the topics these projections fold
    (filtered by the query), and of those only the ones recorded by ``as_of`` decoded in
    full; all the keys' streams in one query, so one snapshot of the log.
    """
    routes = routes_for(projections)
    streams = log.streams_changes(members, topics=sorted(routes), recorded_by=as_of)
    known = _merged([streams[key] for key in members])
    customer_id = members[0]
    failures: list[FoldFailure] = []
    folded = fold_stream(projections, known, routes=routes, failures=failures)
    if failures:
        raise FoldFailed(failures[0])
    if not folded:
        return None
    return Profile(
        customer_id=customer_id,
        sections={name: section for name, (section, _) in folded.items()},
        freshness={
            name: SectionMeta(position=position, refreshed_at=as_of)
            for name, (_, position) in folded.items()
        },
    )


def first_difference(stored: Any, expected: Any, path: str = "$") -> tuple[str, Any, Any] | None:
    """The first path at which two JSON-shaped values differ, with both values there."""
    if isinstance(stored, dict) and isinstance(expected, dict):
        for key in sorted(set(stored) | set(expected)):
            found = first_difference(stored.get(key), expected.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(stored, list) and isinstance(expected, list):
        for index, (a, b) in enumerate(zip(stored, expected, strict=False)):
            found = first_difference(a, b, f"{path}[{index}]")
            if found:
                return found
        if len(stored) != len(expected):
            return f"{path}.length", len(stored), len(expected)
        return None
    return None if stored == expected else (path, stored, expected)


def verify_profiles(
    log: EventLog,
    documents: Any,
    projections: Mapping[str, Projection[Any]],
    customer_ids: Sequence[str],
    *,
    members_of: Callable[[str], Sequence[str]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 200,
) -> VerifyReport:
    """Refold ``customer_ids`` and compare them with the stored documents.

    ``members_of`` names the keys whose events make a profile (a merged profile's keys;
    none for a key merged into another profile, which should hold no section)."""
    tracked = {name: (t.position if (t := documents.tracking(name)) else 0) for name in projections}
    routes = routes_for(projections)
    topics = sorted(routes)
    drift: list[Drift] = []
    failures: list[FoldFailure] = []
    sections = 0
    for start in range(0, len(customer_ids), chunk):
        ids = customer_ids[start : start + chunk]
        stored = {name: documents.load(name, ids) for name in projections}
        members = {c: tuple(members_of(c)) if members_of else (c,) for c in ids}
        # Every key of the chunk in one query per few hundred, as of one cut: a merged
        # profile's keys must be read at the same moment (see merged_changes).
        streams = log.streams_changes(
            sorted({key for keys in members.values() for key in keys}),
            until=log.head(),
            topics=topics,
        )
        for customer_id in ids:
            events = _merged([streams[key] for key in members[customer_id]])
            limits = {
                name: (
                    stored[name][customer_id].position
                    if customer_id in stored[name]
                    else tracked[name]
                )
                for name in projections
            }
            failed = len(failures)
            folded = fold_stream(
                projections, events, until=limits, routes=routes, failures=failures
            )
            unchecked = {f.dataset for f in failures[failed:]}
            for name in projections:
                if name in unchecked:
                    continue  # reported as a failure: the fold cannot say what is right
                have = stored[name].get(customer_id)
                want = folded.get(name)
                sections += have is not None
                if have is None and want is None:
                    continue
                if have is None:
                    drift.append(
                        Drift(
                            dataset=name,
                            customer_id=customer_id,
                            path="$",
                            stored=None,
                            expected="a section",
                        )
                    )
                    continue
                if want is None:
                    drift.append(
                        Drift(
                            dataset=name,
                            customer_id=customer_id,
                            path="$",
                            stored="a section",
                            expected=None,
                        )
                    )
                    continue
                if have.position == want[1] and have.section == want[0]:
                    continue  # equal Structs: the common case needs no diff
                a, b = msgspec.to_builtins(have.section), msgspec.to_builtins(want[0])
                found = first_difference(a, b)
                if found is None and have.position != want[1]:
                    found = ("position", have.position, want[1])
                if found is not None:
                    drift.append(
                        Drift(
                            dataset=name,
                            customer_id=customer_id,
                            path=found[0],
                            stored=found[1],
                            expected=found[2],
                        )
                    )
        if progress:
            progress(min(start + chunk, len(customer_ids)), len(customer_ids))
    counts: dict[str, int] = {}
    for item in drift:
        counts[item.dataset] = counts.get(item.dataset, 0) + 1
    return VerifyReport(
        customers_checked=len(customer_ids),
        sections_checked=sections,
        drift=drift,
        drift_by_dataset=counts,
        failures=failures,
    )


def _merged(streams: Sequence[list[Notified]]) -> list[Notified]:
    """Several keys' events as one profile's: in log order."""
    if len(streams) == 1:
        return streams[0]
    return sorted((n for stream in streams for n in stream), key=lambda n: n.notification_id)


def choose_customers(
    log: EventLog,
    documents: Any,
    datasets: Iterable[str],
    sample: int | None,
    seed: int | None = None,
) -> list[str]:
    """Every customer with a stream or a stored section; or a random sample of them."""
    everyone = set(log.customers())
    for name in datasets:
        everyone.update(documents.customer_ids(name))
    ordered = sorted(everyone)
    if sample is None or sample >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, sample))
