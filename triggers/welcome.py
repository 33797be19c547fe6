"""Welcome (seed item 1, "Acknowledge me"): a customer who signs up, or first agrees to
hear from us, is welcomed once.

Signing up is asserting an email address (``identifier.linked``, kind ``email``); a
first consent is ``consent.given`` for marketing on the trigger's channel. Either fires
the one welcome of the customer (every key of a merged customer shares it): a sign-up
without consent is suppressed by the contact policy, and the consent that follows
welcomes them then.
"""

from __future__ import annotations

import datetime as dt

from profilestore.events import ConsentGiven, Event, IdentifierLinked
from profilestore.trigger import Decision, Fire, NoSettings, ProfileView, Trigger

CHANNEL = "email"


def decide(event: Event, profile: ProfileView, now: dt.datetime, settings: NoSettings) -> Decision:
    if isinstance(event, IdentifierLinked):
        if event.kind != "email":
            return None
        occasion = "signed_up"
    elif isinstance(event, ConsentGiven):
        if event.channel != CHANNEL or event.purpose != "marketing":
            return None
        occasion = "consented"
    else:
        return None
    attributes = profile.sections.get("attributes")
    return Fire(
        payload={"first_name": getattr(attributes, "first_name", None), "occasion": occasion},
        dedupe_key="welcome",
    )


TRIGGER = Trigger(
    name="welcome",
    reads=(IdentifierLinked, ConsentGiven),
    channel=CHANNEL,
    purpose="marketing",
    transactional=False,
    decide=decide,
    description="one welcome when a customer signs up or first consents to marketing email",
    needs=("attributes",),
)
