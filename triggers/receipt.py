"""Receipt (seed item 3, "Where's my receipt?"): every order placed gets its receipt.

Transactional: the customer expects it because of what they did, so it needs no
marketing consent and ignores quiet hours and caps; a withdrawal of ``transactional``
email stops it (see ``profilestore.contact``). Once per order id and customer: the same
order sent twice under two event ids gets one receipt.
"""

from __future__ import annotations

import datetime as dt

from profilestore.events import OrderPlaced
from profilestore.trigger import Decision, Fire, NoSettings, ProfileView, Trigger


def decide(
    event: OrderPlaced, profile: ProfileView, now: dt.datetime, settings: NoSettings
) -> Decision:
    attributes = profile.sections.get("attributes")
    return Fire(
        payload={
            "first_name": getattr(attributes, "first_name", None),
            "order_id": event.order_id,
            "placed_at": event.occurred_at,
            "items": [
                {
                    "sku": line.sku,
                    "name": line.name,
                    "quantity": line.quantity,
                    "unit_price": line.unit_price,
                    "category": line.category,
                }
                for line in event.items
            ],
            "total": event.total,
            "currency": event.currency,
        },
        dedupe_key=f"order:{event.order_id}",
    )


TRIGGER = Trigger(
    name="receipt",
    reads=(OrderPlaced,),
    channel="email",
    purpose="transactional",
    transactional=True,
    decide=decide,
    description="the receipt of every order, at once",
)
