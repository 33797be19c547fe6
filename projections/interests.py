"""Interests: the upcoming occasions the customer showed interest in.

An occasion shown again (the same ``occasion_id``) replaces the one kept: it moved, or
was renamed. A withdrawal removes it. The newest ``CAP_OCCASIONS`` are kept; the fold
does not drop past occasions (it cannot know the time), readers compare ``starts_at``
with theirs.
"""

from __future__ import annotations

import msgspec

from profilestore.events import Event, InterestShown, InterestWithdrawn, Timestamp
from profilestore.projection import Projection, keep_last

CAP_OCCASIONS = 50


class Occasion(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    occasion_id: str
    title: str
    starts_at: Timestamp
    url: str | None = None
    shown_at: Timestamp


class Interests(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    occasions: tuple[Occasion, ...] = ()


def fold(section: Interests, event: Event) -> Interests:
    if isinstance(event, InterestShown):
        others = tuple(o for o in section.occasions if o.occasion_id != event.occasion_id)
        occasion = Occasion(
            occasion_id=event.occasion_id,
            title=event.title,
            starts_at=event.starts_at,
            url=event.url,
            shown_at=event.occurred_at,
        )
        return Interests(occasions=keep_last(others, occasion, CAP_OCCASIONS))
    if isinstance(event, InterestWithdrawn):
        return Interests(
            occasions=tuple(o for o in section.occasions if o.occasion_id != event.occasion_id)
        )
    return section


PROJECTION = Projection(
    dataset="interests",
    reads=(InterestShown, InterestWithdrawn),
    section=Interests,
    fold=fold,
    default_refresh="realtime",
    retention=f"the last {CAP_OCCASIONS} occasions shown interest in, less those withdrawn",
)
