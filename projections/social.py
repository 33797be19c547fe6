"""Social: recent posts with sentiment, and detected life events."""

from __future__ import annotations

import msgspec

from profilestore.events import Event, LifeEventDetected, SocialPostObserved, Timestamp
from profilestore.projection import Projection, keep_last

CAP_POSTS = 20
CAP_LIFE_EVENTS = 20
POST_TEXT_CHARS = 500


class Post(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    network: str
    handle: str
    post_id: str
    text: str
    sentiment: float | None = None
    at: Timestamp


class LifeEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    kind: str
    detail: str | None = None
    confidence: float
    detected_at: Timestamp
    network: str | None = None


class Social(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    posts: tuple[Post, ...] = ()
    life_events: tuple[LifeEvent, ...] = ()
    post_count: int = 0
    sentiment_sum: float = 0.0
    sentiment_count: int = 0
    last_post_at: Timestamp | None = None


def fold(section: Social, event: Event) -> Social:
    if isinstance(event, SocialPostObserved):
        if any(p.post_id == event.post_id and p.network == event.network for p in section.posts):
            return section
        post = Post(
            network=event.network,
            handle=event.handle,
            post_id=event.post_id,
            text=event.text[:POST_TEXT_CHARS],
            sentiment=event.sentiment,
            at=event.occurred_at,
        )
        scored = event.sentiment is not None
        return msgspec.structs.replace(
            section,
            posts=keep_last(section.posts, post, CAP_POSTS),
            post_count=section.post_count + 1,
            sentiment_sum=section.sentiment_sum + (event.sentiment or 0.0),
            sentiment_count=section.sentiment_count + scored,
            last_post_at=max(section.last_post_at or event.occurred_at, event.occurred_at),
        )
    if isinstance(event, LifeEventDetected):
        life_event = LifeEvent(
            kind=event.kind,
            detail=event.detail,
            confidence=event.confidence,
            detected_at=event.occurred_at,
            network=event.network,
        )
        return msgspec.structs.replace(
            section, life_events=keep_last(section.life_events, life_event, CAP_LIFE_EVENTS)
        )
    return section


PROJECTION = Projection(
    dataset="social",
    reads=(SocialPostObserved, LifeEventDetected),
    section=Social,
    fold=fold,
    default_refresh="cron 0 3 * * sun",
    retention=f"last {CAP_POSTS} posts and {CAP_LIFE_EVENTS} life events",
)
