"""Rendering the web UI: one Jinja environment over the package's templates.

Autoescaping is on for every template (pages and htmx partials alike: none of them ends in
``.html`` by accident), and an undefined name is an error rather than an empty string, so
a template cannot silently drop a field. Every answer forbids caching (profiles are
personal data), framing and a Referer (customer ids are in the URLs), and allows scripts
and styles from this server only.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

import jinja2
import msgspec
from litestar import Response
from markupsafe import Markup

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


def escape(text: Any) -> str:
    """``&``, ``<``, ``>``, ``"`` and ``'`` as entities: safe in text and in quoted
    attributes (the stdlib's, a fraction of markupsafe's cost per call, which counts at
    tens of thousands of values a page)."""
    return html.escape(str(text), quote=True)


MAX_ROWS = 50
"""Rows of a list shown in a section (the rest are counted)."""


def _columns(rows: list[Any]) -> list[str]:
    """The keys of a list of objects, in first-seen order: a table's columns."""
    seen: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            seen.update(dict.fromkeys(row))
    return list(seen)


def _value(out: list[str], value: Any) -> None:
    """Append the HTML of a section's value, whatever its shape, every text escaped:
    objects as definition lists, lists of objects as tables, other lists inline.

    In Python rather than a recursive Jinja macro: a profile holds thousands of values,
    and a macro call per value cost most of a page's render time (bench/web.py).
    """
    if value is None:
        out.append('<span class="muted">—</span>')
    elif value is True or value is False:
        out.append("yes" if value else "no")
    elif isinstance(value, str):
        out.append(escape(value))
    elif isinstance(value, dict):
        if not value:
            out.append('<span class="muted">—</span>')
            return
        out.append('<dl class="kv">')
        for key, item in value.items():
            out.append(f"<dt>{escape(key)}</dt><dd>")
            _value(out, item)
            out.append("</dd>")
        out.append("</dl>")
    elif isinstance(value, list):
        if not value:
            out.append('<span class="muted">none</span>')
        elif isinstance(value[0], dict):
            columns = _columns(value[:MAX_ROWS])
            out.append('<div class="scroll"><table class="rows"><thead><tr>')
            out.extend(f"<th>{escape(c)}</th>" for c in columns)
            out.append("</tr></thead><tbody>")
            for row in value[:MAX_ROWS]:
                out.append("<tr>")
                for column in columns:
                    out.append("<td>")
                    _value(out, row.get(column) if isinstance(row, dict) else None)
                    out.append("</td>")
                out.append("</tr>")
            out.append("</tbody></table></div>")
            if len(value) > MAX_ROWS:
                out.append(f'<p class="muted">and {len(value) - MAX_ROWS} more</p>')
        else:
            for index, item in enumerate(value):
                if index:
                    out.append(", ")
                _value(out, item)
    elif isinstance(value, (int, float)):
        out.append(str(value))
    else:
        out.append(escape(msgspec.json.encode(value).decode()))


def render_events(events: list[Any]) -> Markup:
    """The timeline's rows (:class:`~profilestore.web.views.TimelineEvent`), escaped; in
    Python for the same reason as :func:`_value` (a page may hold 1,000 events)."""
    out: list[str] = []
    for e in events:
        out.append(
            f'<tr class="event" data-type="{escape(e.type)}" data-event-id="{escape(e.event_id)}"'
            f' data-occurred="{escape(e.occurred_at)}"><td>{escape(_when(e.occurred_at))}</td>'
            f"<td><code>{escape(e.type)}</code></td><td>{escape(e.customer_id)}</td>"
            f'<td>{escape(e.source)}</td><td class="details">'
        )
        out.extend(
            f'<span class="detail"><b>{escape(k)}</b> {escape(v)}</span>' for k, v in e.details
        )
        out.append(f"</td><td><code>{escape(e.event_id)}</code></td></tr>")
    return Markup("".join(out))


def render_value(value: Any) -> Markup:
    out: list[str] = []
    _value(out, value)
    return Markup("".join(out))


SEARCH_KINDS = [("id", "Customer id")] + [(k.name, k.name.capitalize()) for k in LOOKUP_KINDS]
"""What a customer can be found by: an id, or any identifier kind (declared once)."""

ENVIRONMENT.globals["search_kinds"] = SEARCH_KINDS
ENVIRONMENT.filters["when"] = _when
ENVIRONMENT.filters["value"] = render_value
ENVIRONMENT.filters["events"] = render_events


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
