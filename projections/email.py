"""Email engagement: recent messages with opens and clicks, and lifetime counters.

Counters are unique per message (a message opened three times counts one open), which is
what open and click rates are computed from.
"""

from __future__ import annotations

import msgspec

from profilestore.events import (
    EmailClicked,
    EmailOpened,
    EmailSent,
    EmailUnsubscribed,
    Event,
    Timestamp,
)
from profilestore.projection import Projection, keep_last

CAP_MESSAGES = 50


class Message(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    message_id: str
    campaign: str | None = None
    subject: str | None = None
    sent_at: Timestamp | None = None
    opened_at: Timestamp | None = None
    clicked_at: Timestamp | None = None
    opens: int = 0
    clicks: int = 0


class Email(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    messages: tuple[Message, ...] = ()
    sent: int = 0
    opened: int = 0
    clicked: int = 0
    unsubscribed: bool = False
    unsubscribed_at: Timestamp | None = None
    last_opened_at: Timestamp | None = None
    last_clicked_at: Timestamp | None = None


def fold(section: Email, event: Event) -> Email:
    if isinstance(event, EmailSent):
        known = next((m for m in section.messages if m.message_id == event.message_id), None)
        if known is not None and known.sent_at is not None:
            return section  # the same message sent twice under two event ids
        # A send arriving after its opens or clicks keeps them, so they stay counted once.
        sent_message = msgspec.structs.replace(
            known or Message(message_id=event.message_id),
            campaign=event.campaign,
            subject=event.subject,
            sent_at=event.occurred_at,
        )
        kept = tuple(m for m in section.messages if m.message_id != event.message_id)
        return msgspec.structs.replace(
            section, messages=keep_last(kept, sent_message, CAP_MESSAGES), sent=section.sent + 1
        )
    if isinstance(event, EmailUnsubscribed):
        return msgspec.structs.replace(
            section, unsubscribed=True, unsubscribed_at=event.occurred_at
        )
    if not isinstance(event, EmailOpened | EmailClicked):
        return section
    at = event.occurred_at
    message = next((m for m in section.messages if m.message_id == event.message_id), None)
    if message is None:
        # Engagement with a message sent before our window: count it, keep no detail.
        message = Message(message_id=event.message_id)
        section = msgspec.structs.replace(
            section, messages=keep_last(section.messages, message, CAP_MESSAGES)
        )
    # A click implies the message was opened, even if the open pixel was blocked.
    first_open = message.opened_at is None
    changed = msgspec.structs.replace(
        message,
        opened_at=message.opened_at or at,
        opens=message.opens + (1 if isinstance(event, EmailOpened) else 0),
    )
    first_click = False
    if isinstance(event, EmailClicked):
        first_click = message.clicked_at is None
        changed = msgspec.structs.replace(
            changed, clicked_at=message.clicked_at or at, clicks=message.clicks + 1
        )
    return msgspec.structs.replace(
        section,
        messages=tuple(
            changed if m.message_id == message.message_id else m for m in section.messages
        ),
        opened=section.opened + first_open,
        clicked=section.clicked + first_click,
        last_opened_at=max(section.last_opened_at or at, at),
        last_clicked_at=(
            max(section.last_clicked_at or at, at)
            if isinstance(event, EmailClicked)
            else section.last_clicked_at
        ),
    )


PROJECTION = Projection(
    dataset="email",
    reads=(EmailSent, EmailOpened, EmailClicked, EmailUnsubscribed),
    section=Email,
    fold=fold,
    default_refresh="every 5m",
    retention=f"last {CAP_MESSAGES} messages, lifetime unique counts",
)
