"""Browsing: recent page views, product views and searches, with lifetime counters."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from profilestore.events import Event, PageViewed, ProductViewed, Searched, Timestamp
from profilestore.projection import Projection, keep_last

CAP_PAGE_VIEWS = 100
CAP_PRODUCT_VIEWS = 50
CAP_SEARCHES = 20


class PageView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    url: str
    title: str | None = None
    at: Timestamp


class ProductView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    sku: str
    name: str | None = None
    category: str | None = None
    price: Decimal | None = None
    at: Timestamp


class Search(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    query: str
    results: int | None = None
    at: Timestamp


class Browsing(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    page_views: tuple[PageView, ...] = ()
    product_views: tuple[ProductView, ...] = ()
    searches: tuple[Search, ...] = ()
    page_view_count: int = 0
    product_view_count: int = 0
    search_count: int = 0
    session_count: int = 0
    last_session_id: str | None = None
    first_seen_at: Timestamp | None = None
    last_seen_at: Timestamp | None = None


def fold(section: Browsing, event: Event) -> Browsing:
    if not isinstance(event, PageViewed | ProductViewed | Searched):
        return section
    at = event.occurred_at
    sessions = section.session_count
    if event.session_id is not None and event.session_id != section.last_session_id:
        sessions += 1
    section = msgspec.structs.replace(
        section,
        session_count=sessions,
        last_session_id=event.session_id or section.last_session_id,
        first_seen_at=at if section.first_seen_at is None else min(section.first_seen_at, at),
        last_seen_at=at if section.last_seen_at is None else max(section.last_seen_at, at),
    )
    if isinstance(event, PageViewed):
        view = PageView(url=event.url, title=event.title, at=at)
        return msgspec.structs.replace(
            section,
            page_views=keep_last(section.page_views, view, CAP_PAGE_VIEWS),
            page_view_count=section.page_view_count + 1,
        )
    if isinstance(event, ProductViewed):
        product = ProductView(
            sku=event.sku, name=event.name, category=event.category, price=event.price, at=at
        )
        return msgspec.structs.replace(
            section,
            product_views=keep_last(section.product_views, product, CAP_PRODUCT_VIEWS),
            product_view_count=section.product_view_count + 1,
        )
    search = Search(query=event.query, results=event.results, at=at)
    return msgspec.structs.replace(
        section,
        searches=keep_last(section.searches, search, CAP_SEARCHES),
        search_count=section.search_count + 1,
    )


PROJECTION = Projection(
    dataset="browsing",
    reads=(PageViewed, ProductViewed, Searched),
    section=Browsing,
    fold=fold,
    default_refresh="every 5m",
    retention=(
        f"last {CAP_PAGE_VIEWS} page views, {CAP_PRODUCT_VIEWS} product views, "
        f"{CAP_SEARCHES} searches"
    ),
)
