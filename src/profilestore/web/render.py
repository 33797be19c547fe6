"""Rendering the web UI: one Jinja environment over the package's templates.

Autoescaping is on for every template (pages and htmx partials alike: none of them ends in
``.html`` by accident), and an undefined name is an error rather than an empty string, so
a template cannot silently drop a field. Every answer forbids caching (profiles are
personal data), framing and a Referer (customer ids are in the URLs), and allows scripts
and styles from this server only.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import jinja2
from litestar import Response

from profilestore.identifiers import LOOKUP_KINDS
from profilestore.web.session import Session

ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("profilestore.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _when(value: Any) -> str:
    """A time as the page shows it: UTC, to the second."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if isinstance(value, dt.datetime):
        zoned = value.tzinfo is not None
        shown = value.astimezone(dt.UTC) if zoned else value
        return shown.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if zoned else "")
    return "" if value is None else str(value)


def _columns(rows: list[Any]) -> list[str]:
    """The keys of a list of objects, in first-seen order: a table's columns."""
    seen: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            seen.update(dict.fromkeys(row))
    return list(seen)


SEARCH_KINDS = [("id", "Customer id")] + [(k.name, k.name.capitalize()) for k in LOOKUP_KINDS]
"""What a customer can be found by: an id, or any identifier kind (declared once)."""

ENVIRONMENT.globals["search_kinds"] = SEARCH_KINDS
ENVIRONMENT.filters["when"] = _when
ENVIRONMENT.filters["columns"] = _columns


def page(
    template: str,
    *,
    status: int = 200,
    session: Session | None = None,
    csrf: str = "",
    scopes: set[str] | None = None,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response[str]:
    """An HTML answer from ``template``; every page knows who is logged in."""
    html = ENVIRONMENT.get_template(template).render(
        session=session, csrf=csrf, scopes=scopes or set(), **context
    )
    return Response(
        html,
        status_code=status,
        media_type="text/html; charset=utf-8",
        headers=HEADERS | (headers or {}),
    )
