"""Reminders (seed item 7, "Get me excited"): before an occasion the customer showed
interest in, a reminder at each of ``days_before``.

Showing interest (``interest.shown``) sets a timer for the first reminder still to come;
when it is due the occasion is read again from the ``interests`` dataset: withdrawn, the
reminders stop; moved, they follow it. Each reminder is sent once per occasion and offset,
and sets the timer for the next. A reminder whose moment passed more than
``grace_hours`` ago (interest shown three days before: no "a week to go") is skipped for
the next one. It plans ahead: interest shown before the trigger was enabled is reminded.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

from profilestore.events import Event, InterestShown, InterestWithdrawn
from profilestore.trigger import Decision, Fire, ProfileView, Trigger, Wait


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    days_before: list[Annotated[int, msgspec.Meta(ge=0, le=365)]] = msgspec.field(
        default_factory=lambda: [7, 1]
    )
    grace_hours: Annotated[int, msgspec.Meta(ge=1, le=168)] = 12


def decide(event: Event, profile: ProfileView, now: dt.datetime, settings: Settings) -> Decision:
    if not isinstance(event, InterestShown | InterestWithdrawn):
        return None
    occasion = next(
        (o for o in profile.section("interests").occasions if o.occasion_id == event.occasion_id),
        None,
    )
    if occasion is None or now >= occasion.starts_at:
        return None
    moments = sorted(
        ((occasion.starts_at - dt.timedelta(days=d), d) for d in set(settings.days_before)),
        reverse=True,
    )  # latest first: the one closest to the start
    grace = dt.timedelta(hours=settings.grace_hours)
    due = next(((at, d) for at, d in moments if at <= now), None)
    coming = [(at, d) for at, d in moments if at > now]
    following = (
        Wait(until=coming[-1][0], dedupe_key=f"{occasion.occasion_id}:{coming[-1][1]}d")
        if coming
        else None
    )
    if due is not None and now - due[0] <= grace:
        return Fire(
            payload={
                "first_name": profile.section("attributes").first_name,
                "event_key": occasion.occasion_id,
                "title": occasion.title,
                "starts_at": occasion.starts_at,
                "url": occasion.url,
                "days_before": due[1],
            },
            dedupe_key=f"{occasion.occasion_id}:{due[1]}d",
            then=following,
        )
    return following


TRIGGER = Trigger(
    name="reminders",
    reads=(InterestShown, InterestWithdrawn),
    channel="email",
    purpose="marketing",
    transactional=False,
    decide=decide,
    description="reminders days_before an occasion the customer showed interest in",
    needs=("interests", "attributes"),
    settings=Settings,
    warm_up="plan",
)
