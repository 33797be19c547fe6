"""Engagement: the per-customer facts the scores are computed from, kept up to date by a fold.

Scoring reads this one section per customer and never the log: order count, first and last
order, spend per currency, visits and views, e-mail opens and clicks, replies, tickets,
survey answers (NPS), social posts and their sentiment, referrals, each channel's sends and
responses, the latest marketing consent per channel, and daily buckets of the last
``WINDOW_DAYS`` days (what rules such as "3 clicks in 30 days" count).

Why a dataset of its own rather than reading ``orders``, ``browsing``, ``email``, ...: those
keep recent detail with their own caps and cadences; scores need lifetime counters and
day buckets from all of them, and a million customers are scored from one section each
(one read, one decode) instead of six. The fold is bounded: at most ``WINDOW_DAYS``
buckets and one entry per consent channel, whatever the number of events.

Rules of the fold:

- an order counts once per ``order_id`` among the last ``CAP_ORDER_IDS`` orders; spend is
  the placed total, gross (returns and cancellations are the ``orders`` dataset's);
- the mean of the *repeat* orders (the lifetime-value spend model's input) is the spend
  less the first order's, over the orders after the first;
- a visit is a new ``session_id`` (as in ``browsing``); e-mail opens and clicks count each
  event (a click also counts as a response on the e-mail channel);
- a bucket is a UTC day; buckets older than ``WINDOW_DAYS`` before the newest are dropped
  (events arriving out of order into a dropped day count in the lifetime counters only).
"""

from __future__ import annotations

import datetime as dt
import typing
from decimal import Decimal

import msgspec

from profilestore.events import (
    ConsentChannel,
    ConsentGiven,
    ConsentWithdrawn,
    EmailClicked,
    EmailOpened,
    EmailSent,
    EmailUnsubscribed,
    Event,
    MessageReplied,
    OrderPlaced,
    PageViewed,
    ProductViewed,
    ReferralMade,
    Searched,
    SocialPostObserved,
    SurveyAnswered,
    TicketOpened,
    Timestamp,
)
from profilestore.projection import Projection, keep_last

WINDOW_DAYS = 90
"""Days of buckets kept: the longest window a rule may count over."""
CAP_ORDER_IDS = 50
POSITIVE_SENTIMENT = 0.3
"""A post at least this positive is advocacy (a post about the brand, speaking well of it)."""


class Day(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    day: dt.date
    visits: int = 0
    page_views: int = 0
    product_views: int = 0
    searches: int = 0
    opens: int = 0
    clicks: int = 0
    replies: int = 0
    tickets: int = 0
    orders: int = 0


class Channel(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Sends and responses on one channel (a consent channel: email, sms, push, ...)."""

    channel: str
    sent: int = 0
    opened: int = 0
    clicked: int = 0
    replied: int = 0
    purchased: int = 0
    consent: bool | None = None
    """The latest marketing decision on this channel (None: never asked)."""
    consent_at: Timestamp | None = None


class Spend(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    currency: str
    total: Decimal


class Engagement(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    orders: int = 0
    order_ids: tuple[str, ...] = ()
    first_order_at: Timestamp | None = None
    last_order_at: Timestamp | None = None
    spend: tuple[Spend, ...] = ()
    first_order_total: Decimal | None = None
    first_order_currency: str | None = None
    visits: int = 0
    last_session_id: str | None = None
    page_views: int = 0
    product_views: int = 0
    searches: int = 0
    email_opens: int = 0
    email_clicks: int = 0
    replies: int = 0
    tickets: int = 0
    comments: int = 0
    """Survey answers with a comment."""
    surveys: int = 0
    survey_score_sum: float = 0.0
    survey_score_count: int = 0
    last_nps: int | None = None
    posts: int = 0
    positive_posts: int = 0
    sentiment_sum: float = 0.0
    sentiment_count: int = 0
    referrals: int = 0
    first_seen_at: Timestamp | None = None
    last_active_at: Timestamp | None = None
    channels: tuple[Channel, ...] = ()
    days: tuple[Day, ...] = ()


def _bucket(days: tuple[Day, ...], at: dt.datetime, counts: dict[str, int]) -> tuple[Day, ...]:
    """``days`` with ``counts`` added to ``at``'s day. Buckets stay sorted by day, one per
    day, none ``WINDOW_DAYS`` or more before the newest: every section the fold returns
    holds to that, which is what lets the common case (the newest day again) replace the
    last bucket alone."""
    day = at.astimezone(dt.UTC).date()
    if days:
        last = days[-1]
        # Day numbers, not date arithmetic: an event dated in year 1 must not overflow.
        if day.toordinal() <= last.day.toordinal() - WINDOW_DAYS:
            return days  # older than the window: lifetime counters only
        if last.day == day:
            changed = msgspec.structs.replace(
                last, **{k: getattr(last, k) + v for k, v in counts.items()}
            )
            return (*days[:-1], changed)
    found = next((d for d in days if d.day == day), None)
    if found is None:
        added = Day(day=day, **counts)
        kept = tuple(sorted((*days, added), key=lambda d: d.day))
    else:
        changed = msgspec.structs.replace(
            found, **{k: getattr(found, k) + v for k, v in counts.items()}
        )
        kept = tuple(changed if d is found else d for d in days)
    horizon = kept[-1].day.toordinal() - WINDOW_DAYS
    return tuple(d for d in kept if d.day.toordinal() > horizon)


def _channel(section: Engagement, name: str, **changes: object) -> tuple[Channel, ...]:
    """``section.channels`` with ``name``'s counters incremented (int values) or set."""
    found = next((c for c in section.channels if c.channel == name), None)
    base = found or Channel(channel=name)
    updates = {
        k: getattr(base, k) + v if isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in changes.items()
    }
    changed = msgspec.structs.replace(base, **updates)
    if found is None:
        return tuple(sorted((*section.channels, changed), key=lambda c: c.channel))
    return tuple(changed if c is found else c for c in section.channels)


def _add_spend(spend: tuple[Spend, ...], currency: str, amount: Decimal) -> tuple[Spend, ...]:
    if any(s.currency == currency for s in spend):
        return tuple(
            Spend(currency=s.currency, total=s.total + amount) if s.currency == currency else s
            for s in spend
        )
    return (*spend, Spend(currency=currency, total=amount))


def _consent(section: Engagement, event: ConsentGiven | ConsentWithdrawn) -> Engagement:
    found = next((c for c in section.channels if c.channel == event.channel), None)
    if found is not None and found.consent_at is not None and found.consent_at > event.occurred_at:
        return section  # a later decision stands (as in the consents dataset)
    allowed = isinstance(event, ConsentGiven)
    return msgspec.structs.replace(
        section,
        channels=_channel(section, event.channel, consent=allowed, consent_at=event.occurred_at),
    )


def fold(section: Engagement, event: Event) -> Engagement:
    # Each kind of event gathers its changes, applied in one replace (a section has
    # thirty fields: copying it once per event, not three or four times, is most of the
    # fold's cost), with the day bucket it counts in.
    at = event.occurred_at
    changes: dict[str, object]
    counted: dict[str, int]
    if isinstance(event, PageViewed | ProductViewed | Searched):
        visit = event.session_id is not None and event.session_id != section.last_session_id
        viewed = isinstance(event, PageViewed)
        product = isinstance(event, ProductViewed)
        searched = isinstance(event, Searched)
        changes = {
            "visits": section.visits + visit,
            "last_session_id": event.session_id or section.last_session_id,
            "page_views": section.page_views + viewed,
            "product_views": section.product_views + product,
            "searches": section.searches + searched,
        }
        name = "page_views" if viewed else "product_views" if product else "searches"
        counted = {"visits": 1, name: 1} if visit else {name: 1}
    elif isinstance(event, EmailOpened | EmailClicked):
        click = isinstance(event, EmailClicked)
        changes = {
            "email_opens": section.email_opens + (not click),
            "email_clicks": section.email_clicks + click,
            "channels": _channel(section, "email", **({"clicked": 1} if click else {"opened": 1})),
        }
        counted = {"clicks": 1} if click else {"opens": 1}
    elif isinstance(event, EmailSent):
        return msgspec.structs.replace(section, channels=_channel(section, "email", sent=1))
    elif isinstance(event, ConsentGiven | ConsentWithdrawn):
        return _consent(section, event) if event.purpose == "marketing" else section
    elif isinstance(event, EmailUnsubscribed):
        found = next((c for c in section.channels if c.channel == "email"), None)
        if found is not None and found.consent_at is not None and found.consent_at > at:
            return section
        return msgspec.structs.replace(
            section, channels=_channel(section, "email", consent=False, consent_at=at)
        )
    elif isinstance(event, OrderPlaced):
        if event.order_id in section.order_ids:
            return section  # the same order sent twice under two event ids
        first = section.first_order_at is None or at < section.first_order_at
        changes = {
            "orders": section.orders + 1,
            "order_ids": keep_last(section.order_ids, event.order_id, CAP_ORDER_IDS),
            "first_order_at": at if first else section.first_order_at,
            "last_order_at": max(section.last_order_at or at, at),
            "spend": _add_spend(section.spend, event.currency, event.total),
            "first_order_total": event.total if first else section.first_order_total,
            "first_order_currency": event.currency if first else section.first_order_currency,
        }
        if event.channel is not None and event.channel in CONSENT_CHANNELS:
            changes["channels"] = _channel(section, event.channel, purchased=1)
        counted = {"orders": 1}
    elif isinstance(event, MessageReplied):
        changes = {
            "replies": section.replies + 1,
            "channels": _channel(section, event.channel, replied=1),
        }
        counted = {"replies": 1}
    elif isinstance(event, TicketOpened):
        changes = {"tickets": section.tickets + 1}
        counted = {"tickets": 1}
    elif isinstance(event, SurveyAnswered):
        scored = event.score is not None
        changes = {
            "surveys": section.surveys + 1,
            "comments": section.comments + bool(event.comment),
            "survey_score_sum": section.survey_score_sum + (event.score or 0.0),
            "survey_score_count": section.survey_score_count + scored,
            "last_nps": event.nps if event.nps is not None else section.last_nps,
        }
        counted = {}
    elif isinstance(event, SocialPostObserved):
        sentiment = event.sentiment
        changes = {
            "posts": section.posts + 1,
            "positive_posts": section.positive_posts
            + (sentiment is not None and sentiment >= POSITIVE_SENTIMENT),
            "sentiment_sum": section.sentiment_sum + (sentiment or 0.0),
            "sentiment_count": section.sentiment_count + (sentiment is not None),
        }
        counted = {}
    elif isinstance(event, ReferralMade):
        changes = {"referrals": section.referrals + 1}
        counted = {}
    else:
        return section
    if counted:
        changes["days"] = _bucket(section.days, at, counted)
    first_seen, last_active = section.first_seen_at, section.last_active_at
    changes["first_seen_at"] = at if first_seen is None or at < first_seen else first_seen
    changes["last_active_at"] = at if last_active is None or at > last_active else last_active
    return msgspec.structs.replace(section, **changes)


CONSENT_CHANNELS = frozenset(typing.get_args(ConsentChannel))
"""Channels a preference is ranked over: those a customer can consent to (the catalogue's
``ConsentChannel``); an order's ``channel`` counts as a purchase on it when it is one."""

READS = (
    OrderPlaced,
    PageViewed,
    ProductViewed,
    Searched,
    EmailSent,
    EmailOpened,
    EmailClicked,
    EmailUnsubscribed,
    MessageReplied,
    TicketOpened,
    SurveyAnswered,
    SocialPostObserved,
    ReferralMade,
    ConsentGiven,
    ConsentWithdrawn,
)

PROJECTION = Projection(
    dataset="engagement",
    reads=READS,
    section=Engagement,
    fold=fold,
    default_refresh="every 15m",
    retention=f"lifetime counters, {WINDOW_DAYS} days of daily buckets, channels and consent",
)
