"""Consents: the current grant per channel and purpose, with its history length.

The decision with the latest ``occurred_at`` wins, whatever order events arrive in: an
older "given" delivered late never overrides a newer "withdrawn". An unsubscribe from an
email (``email.unsubscribed``) withdraws email marketing: the customer said no, in the one
place the law says must work. Each grant names the event that decided it, so
``ProfileStore.may_contact`` can say why.
"""

from __future__ import annotations

import msgspec

from profilestore.events import (
    ConsentGiven,
    ConsentWithdrawn,
    EmailUnsubscribed,
    Event,
    Timestamp,
)
from profilestore.projection import Projection


class Consent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    channel: str
    purpose: str
    granted: bool
    changed_at: Timestamp
    source: str
    changes: int = 1
    event_id: str | None = None
    """The event that made this decision (None in sections folded before version 2)."""


class Consents(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    consents: tuple[Consent, ...] = ()


def fold(section: Consents, event: Event) -> Consents:
    if isinstance(event, ConsentGiven | ConsentWithdrawn):
        channel, purpose = event.channel, event.purpose
    elif isinstance(event, EmailUnsubscribed):
        channel, purpose = "email", "marketing"
    else:
        return section
    granted = isinstance(event, ConsentGiven)
    current = next(
        (c for c in section.consents if c.channel == channel and c.purpose == purpose),
        None,
    )
    if current is not None and event.occurred_at < current.changed_at:
        # A late-arriving older change must not override a newer decision.
        return Consents(
            consents=tuple(
                msgspec.structs.replace(c, changes=c.changes + 1) if c is current else c
                for c in section.consents
            )
        )
    entry = Consent(
        channel=channel,
        purpose=purpose,
        granted=granted,
        changed_at=event.occurred_at,
        source=event.source,
        changes=(current.changes + 1) if current else 1,
        event_id=event.event_id,
    )
    others = tuple(c for c in section.consents if c is not current)
    return Consents(consents=(*others, entry))


PROJECTION = Projection(
    dataset="consents",
    reads=(ConsentGiven, ConsentWithdrawn, EmailUnsubscribed),
    section=Consents,
    fold=fold,
    default_refresh="realtime",
    retention="current state of every channel and purpose",
    # 2: unsubscribes withdraw email marketing; each grant names its deciding event.
    version=2,
)
