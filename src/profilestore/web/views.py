"""What the pages show, read through :class:`ProfileStore`'s public methods only.

Sections are rendered generically (whatever a dataset holds, nested values included), so
a dataset added to the config, such as scores, shows up with no change here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from profilestore.documents import SectionMeta
from profilestore.errors import InvalidArgument, NotFound
from profilestore.events import EVENT_TYPES
from profilestore.firing import Outcome
from profilestore.store import ContactDecision, GraphStatus, IdentityExplanation, ProfileStore

ENVELOPE = ("type", "event_id", "customer_id", "occurred_at", "recorded_at", "source", "metadata")
SLOTS = ("erasure", "scores")
"""Sections the page points at by name when a dataset provides them."""
DETAIL_CHARS = 200
MAX_OUTCOMES = 100
DEFAULT_PAGE = 50
MAX_PAGE = 1000
"""Most events on one timeline page (as ``GET /v1/history``)."""


# --- the timeline -----------------------------------------------------------------------------


def _date(params: Mapping[str, str], name: str) -> dt.date | None:
    text = (params.get(name) or "").strip()
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(name, "is not a date: give it as 2026-03-01") from None


@dataclass(frozen=True)
class TimelineQuery:
    """A timeline page: after which log position, of which type, in which days (UTC)."""

    after: int = 0
    event_type: str | None = None
    since: dt.date | None = None
    until: dt.date | None = None
    limit: int = DEFAULT_PAGE

    @classmethod
    def parse(cls, params: Mapping[str, str], *, page_size: int = DEFAULT_PAGE) -> TimelineQuery:
        after_text = (params.get("after") or "0").strip()
        if not after_text.isdigit() or len(after_text) > 16:
            raise InvalidArgument("after", "is not a log position (a whole number)")
        event_type = (params.get("type") or "").strip() or None
        if event_type is not None and event_type not in EVENT_TYPES:
            raise InvalidArgument("type", "is not an event type of the catalogue")
        since, until = _date(params, "since"), _date(params, "until")
        if since and until and since > until:
            raise InvalidArgument("until", "is before `since`")
        limit_text = (params.get("limit") or str(page_size)).strip()
        if not limit_text.isdigit() or len(limit_text) > 4 or not 1 <= int(limit_text) <= MAX_PAGE:
            raise InvalidArgument("limit", f"is not a page size from 1 to {MAX_PAGE}")
        return cls(int(after_text), event_type, since, until, int(limit_text))

    def params(self, customer_id: str, *, after: int | None = None) -> dict[str, str]:
        """The query string naming this page (or the one ``after`` another position)."""
        found = {"id": customer_id}
        position = self.after if after is None else after
        if position:
            found["after"] = str(position)
        if self.event_type:
            found["type"] = self.event_type
        if self.since:
            found["since"] = self.since.isoformat()
        if self.until:
            found["until"] = self.until.isoformat()
        if self.limit != DEFAULT_PAGE:
            found["limit"] = str(self.limit)
        return found

    @property
    def filtered(self) -> bool:
        return bool(self.event_type or self.since or self.until)


@dataclass(frozen=True)
class TimelineEvent:
    type: str
    event_id: str
    customer_id: str
    occurred_at: str
    recorded_at: str
    source: str
    details: list[tuple[str, str]]


def _detail(value: Any) -> str:
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 1] + "…"


def timeline_event(raw: msgspec.Raw) -> TimelineEvent:
    event = msgspec.json.decode(raw)
    return TimelineEvent(
        type=event["type"],
        event_id=event["event_id"],
        customer_id=event["customer_id"],
        occurred_at=event["occurred_at"],
        recorded_at=event.get("recorded_at") or "",
        source=event.get("source") or "",
        details=[(k, _detail(v)) for k, v in event.items() if k not in ENVELOPE and v is not None],
    )


@dataclass(frozen=True)
class Timeline:
    customer_id: str
    query: TimelineQuery
    events: list[TimelineEvent]
    next_after: int | None

    @classmethod
    def read(cls, store: ProfileStore, customer_id: str, query: TimelineQuery) -> Timeline:
        events, next_after = store.history_page(
            customer_id,
            after=query.after,
            limit=query.limit,
            types=[query.event_type] if query.event_type else None,
            occurred_since=(
                dt.datetime.combine(query.since, dt.time(), dt.UTC) if query.since else None
            ),
            occurred_until=(
                dt.datetime.combine(query.until, dt.time.max, dt.UTC) if query.until else None
            ),
        )
        return cls(customer_id, query, [timeline_event(e) for e in events], next_after)


# --- the profile ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    name: str
    content: Any
    position: int
    refreshed_at: dt.datetime
    lag: Any = None
    """The dataset's lag (events and seconds behind, outdated) from the API's snapshot."""


@dataclass(frozen=True)
class ProfileView:
    customer_id: str
    canonical_id: str
    as_of: dt.datetime | None
    sections: list[Section]
    empty: list[str]
    """Configured datasets with nothing for this customer."""
    identity: IdentityExplanation | None
    identifiers: list[Any]
    """The identity's identifiers as plain values (for the generic rendering)."""
    graph: GraphStatus
    """How far the identity graph has applied the log (links still to come)."""
    outcomes: list[Outcome]
    consent: list[ContactDecision]
    timeline: Timeline | None
    slots: dict[str, bool] = field(default_factory=dict)
    """Erasure and scores: whether the profile has that section."""


def profile_view(
    store: ProfileStore,
    customer_id: str,
    *,
    as_of: dt.datetime | None,
    freshness: Callable[[str, SectionMeta], Any],
    timeline: TimelineQuery | None,
    channels: Sequence[str],
) -> ProfileView:
    """Everything the customer-360 page shows; :class:`NotFound` if there is no profile."""
    raw = store.profile_raw(customer_id, as_of=as_of)
    order = [*store.projections, *sorted(set(raw.sections) - set(store.projections))]
    sections = [
        Section(
            name=name,
            content=msgspec.json.decode(raw.sections[name]),
            position=raw.freshness[name].position,
            refreshed_at=raw.freshness[name].refreshed_at,
            lag=None if as_of else freshness(name, raw.freshness[name]),
        )
        for name in order
        if name in raw.sections
    ]
    try:
        identity: IdentityExplanation | None = store.explain(customer_id)
    except NotFound:
        identity = None
    outcomes = list(reversed(store.trigger_log(customer_id)))[:MAX_OUTCOMES]
    consent = (
        [store.may_contact(customer_id, channel) for channel in channels]
        if "consents" in store.projections
        else []
    )
    found_timeline = None
    if timeline is not None:
        try:
            found_timeline = Timeline.read(store, customer_id, timeline)
        except NotFound:
            found_timeline = Timeline(customer_id, timeline, [], None)
    return ProfileView(
        customer_id=customer_id,
        canonical_id=raw.canonical_id or customer_id,
        as_of=as_of,
        sections=sections,
        empty=[name for name in store.projections if name not in raw.sections],
        identity=identity,
        identifiers=msgspec.to_builtins(identity.identifiers) if identity else [],
        graph=store.identity_status(),
        outcomes=outcomes,
        consent=consent,
        timeline=found_timeline,
        slots={name: name in raw.sections for name in SLOTS},
    )
