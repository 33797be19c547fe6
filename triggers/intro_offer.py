"""Introductory offer (seed item 2, "Entice me a little"): a modest offer, once, to a new
customer who has not ordered within ``after_days`` of signing up.

Signing up (``identifier.linked`` with an email) starts a timer. When it is due, the
customer's orders are read again: none yet, and the offer goes out, once in the
customer's life (every key of a merged customer shares it); any order, and it does not.
"Modest" is enforced: the discount is at most 20 percent.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

from profilestore.events import Event, IdentifierLinked
from profilestore.trigger import Decision, Fire, ProfileView, Trigger, Wait


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    after_days: Annotated[int, msgspec.Meta(ge=1, le=365)] = 7
    discount_percent: Annotated[int, msgspec.Meta(ge=1, le=20)] = 10
    offer: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "10% off your first order"


def decide(event: Event, profile: ProfileView, now: dt.datetime, settings: Settings) -> Decision:
    if not isinstance(event, IdentifierLinked) or event.kind != "email":
        return None
    if profile.section("orders").order_count:
        return None  # a customer already: no introduction needed
    due = event.occurred_at + dt.timedelta(days=settings.after_days)
    if now < due:
        return Wait(until=due, dedupe_key="intro")
    return Fire(
        payload={
            "first_name": profile.section("attributes").first_name,
            "offer": settings.offer,
            "discount_percent": settings.discount_percent,
        },
        dedupe_key="intro",
    )


TRIGGER = Trigger(
    name="intro_offer",
    reads=(IdentifierLinked,),
    channel="email",
    purpose="marketing",
    transactional=False,
    decide=decide,
    description="a modest offer, once, to a customer without an order after_days after sign-up",
    needs=("orders", "attributes"),
    settings=Settings,
)
