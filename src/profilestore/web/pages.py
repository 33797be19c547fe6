"""The web UI's pages: log in, find a customer, the customer-360 page, the timeline, audit.

A thin edge like the API: each handler parses, calls :class:`ProfileStore`, renders. The
scopes are the API's (``read`` for profiles, ``audit`` for a customer's raw events and the
audit page, as ``GET /v1/history`` needs), held by a session cookie
(:mod:`profilestore.web.session`). Without a session a page redirects to the login form
and an htmx request gets 401; without the scope, 403. Customer ids travel as a query
parameter, so every id accepted at ingest is addressable as it is. Identifiers searched
for travel in a POST body, never in a URL a proxy would log.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlencode

import anyio
import msgspec
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from profilestore.api.errors import handle_profilestore
from profilestore.api.observability import FreshnessSnapshot
from profilestore.errors import (
    AmbiguousIdentifier,
    CustomerErased,
    InvalidArgument,
    InvalidIdentifier,
    NotFound,
    ProfileStoreError,
)
from profilestore.events import EVENT_TYPES, ConsentChannel
from profilestore.store import ProfileStore
from profilestore.web.render import SEARCH_KINDS, page
from profilestore.web.session import COOKIE, LOGIN_COOKIE, LOGIN_MINUTES, Session, Sessions
from profilestore.web.views import Timeline, TimelineQuery, profile_view

UI = "/ui"
STATIC = Path(__file__).parent / "static"

EVENT_TYPE_NAMES = sorted(EVENT_TYPES)


# --- who is asking ----------------------------------------------------------------------------


def _sessions(connection: ASGIConnection[Any, Any, Any, Any]) -> Sessions:
    sessions: Sessions = connection.app.state.web_sessions
    return sessions


def _store(request: Request[Any, Any, Any]) -> ProfileStore:
    store: ProfileStore = request.app.state.store
    return store


def needs(scope: str) -> Any:
    """A guard: the session's key must hold ``scope`` (401 without a session, else 403)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        sessions = _sessions(connection)
        session = sessions.read(connection.cookies.get(COOKIE))
        scopes = sessions.scopes(session)
        state = connection.scope["state"]
        state["web_session"], state["web_scopes"] = session, scopes
        if session is not None:
            state["client"] = session.name  # the access log names the client, as the API's
        if scope in scopes:
            return
        if session is None:
            raise NotAuthorizedException(detail="log in with an API key")
        raise PermissionDeniedException(detail=f"this key lacks the {scope!r} scope")

    return guard


def _who(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """What every page is rendered with: the session, its CSRF token and its scopes."""
    session: Session | None = request.scope["state"].get("web_session")
    return {
        "session": session,
        "csrf": _sessions(request).csrf(session) if session else "",
        "scopes": request.scope["state"].get("web_scopes", set()),
    }


def _local(target: str | None) -> str:
    """Where to go after logging in: a page of the UI, never another site."""
    if target and target.startswith(UI) and not target.startswith("//"):
        return target
    return UI


# --- errors as pages --------------------------------------------------------------------------


def _is_htmx(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("HX-Request") == "true"


def not_logged_in(request: Request[Any, Any, Any], _: NotAuthorizedException) -> Response[str]:
    if _is_htmx(request):
        return page("partial_error.html", status=401, message="Your session ended: log in again.")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = UI
    return Redirect(f"{UI}/login?{urlencode({'next': target})}", status_code=303)


def forbidden(request: Request[Any, Any, Any], error: PermissionDeniedException) -> Response[str]:
    who = _who(request)
    return page("error.html", status=403, title="Not allowed", message=error.detail, **who)


def store_error(request: Request[Any, Any, Any], error: ProfileStoreError) -> Response[str]:
    # The status comes from the API's one mapping; a 5xx shows no detail, as the API's.
    status = handle_profilestore(request, error).status_code or 500
    message = str(error) if status < 500 else "The store is unavailable; try again in a moment."
    title = "Forgotten" if isinstance(error, CustomerErased) else "Error"
    return page("error.html", status=status, title=title, message=message, **_who(request))


# --- login ------------------------------------------------------------------------------------


def _login_page(
    request: Request[Any, Any, Any], *, status: int = 200, message: str = "", target: str = UI
) -> Response[str]:
    sessions = _sessions(request)
    nonce = sessions.login_nonce()
    response = page(
        "login.html",
        status=status,
        message=message,
        login_csrf=sessions.login_csrf(nonce),
        target=_local(target),
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=LOGIN_MINUTES * 60,
        path=f"{UI}/login",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@get(f"{UI}/login", include_in_schema=False)
async def login_form(request: Request[Any, Any, Any]) -> Response[str]:
    return _login_page(request, target=request.query_params.get("next") or UI)


@post(f"{UI}/login", include_in_schema=False, status_code=303)
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    """Trade an API key with the ``read`` scope for a session cookie."""
    sessions = _sessions(request)
    form = await request.form()
    target = str(form.get("next") or UI)
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or not sessions.matches(sessions.login_csrf(nonce), form.get("csrf")):
        return _login_page(
            request, status=403, message="The form expired; try again.", target=target
        )
    issued = sessions.issue(str(form.get("key") or ""))
    if issued is None:
        return _login_page(request, status=401, message="Unknown API key.", target=target)
    cookie, session, scopes = issued
    if "read" not in scopes:
        return _login_page(
            request,
            status=403,
            message="This key lacks the 'read' scope the customer pages need.",
            target=target,
        )
    response: Response[Any] = Redirect(_local(target), status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=session.expires - int(dt.datetime.now(dt.UTC).timestamp()),
        path=UI,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_COOKIE, path=f"{UI}/login")
    return response


@post(f"{UI}/logout", include_in_schema=False, status_code=303, guards=[needs("read")])
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    who = _who(request)
    form = await request.form()
    if not _sessions(request).matches(who["csrf"], form.get("csrf")):
        return page("error.html", status=403, title="Not allowed", message="Bad form token.", **who)
    response: Response[Any] = Redirect(f"{UI}/login", status_code=303)
    response.delete_cookie(COOKIE, path=UI)
    return response


# --- search -----------------------------------------------------------------------------------


def _search_page(
    request: Request[Any, Any, Any], *, status: int = 200, message: str = "", kind: str = "id"
) -> Response[str]:
    return page("search.html", status=status, message=message, kind=kind, **_who(request))


@get(UI, include_in_schema=False, guards=[needs("read")])
async def search_form(request: Request[Any, Any, Any]) -> Response[str]:
    return _search_page(request)


@post(f"{UI}/find", include_in_schema=False, status_code=303, guards=[needs("read")])
async def find(request: Request[Any, Any, Any]) -> Response[Any]:
    """Find a customer by id or any identifier; the value stays out of every URL."""
    who = _who(request)
    form = await request.form()
    if not _sessions(request).matches(who["csrf"], form.get("csrf")):
        return _search_page(request, status=403, message="The form expired; try again.")
    kind = str(form.get("kind") or "id")
    value = str(form.get("value") or "").strip()
    if kind not in dict(SEARCH_KINDS):
        return _search_page(request, status=400, message="Choose what to search by.")
    if not value:
        return _search_page(request, status=400, message="Type what to search for.", kind=kind)
    store = _store(request)
    try:
        if kind == "id":
            found = await store.aprofile_raw(value)
        else:
            found = await store.afind_raw(kind, value)
    except InvalidIdentifier as error:
        return _search_page(request, status=400, message=f"Not a valid {kind}: {error.reason}.")
    except AmbiguousIdentifier:
        return _search_page(
            request,
            status=409,
            message=f"Several customers hold this {kind}; search by customer id.",
            kind=kind,
        )
    except NotFound:
        what = "customer id" if kind == "id" else kind
        return _search_page(request, status=404, message=f"No customer has this {what}.", kind=kind)
    customer_id = found.customer_id if kind == "id" else (found.canonical_id or found.customer_id)
    return Redirect(f"{UI}/profile?{urlencode({'id': customer_id})}", status_code=303)


# --- the customer-360 page --------------------------------------------------------------------


def _query(request: Request[Any, Any, Any]) -> tuple[str, TimelineQuery]:
    customer_id = request.query_params.get("id")
    if not customer_id:
        raise InvalidArgument("id", "is required: the customer id")
    return customer_id, TimelineQuery.parse(request.query_params)


def _as_of(text: str | None) -> dt.datetime | None:
    if not text or not text.strip():
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip().replace(" ", "T"))
    except ValueError:
        raise InvalidArgument(
            "as_of", "is not a time: give it as 2026-03-01T09:00:00Z (UTC without a zone)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@get(f"{UI}/profile", include_in_schema=False, guards=[needs("read")])
async def profile(request: Request[Any, Any, Any]) -> Response[str]:
    """The profile with every section and its freshness, identity, triggers, consent; the
    timeline's first page (``audit``); with ``as_of``, the profile as it was then."""
    customer_id, query = _query(request)
    as_of = _as_of(request.query_params.get("as_of"))
    who = _who(request)
    store = _store(request)
    snapshot: FreshnessSnapshot = request.app.state.freshness
    show_timeline = "audit" in who["scopes"]
    try:
        view = await anyio.to_thread.run_sync(
            lambda: profile_view(
                store,
                customer_id,
                as_of=as_of,
                freshness=snapshot.block,
                timeline=query if show_timeline else None,
                channels=get_args(ConsentChannel),
            )
        )
    except NotFound:
        when = f" as of {as_of.isoformat()}" if as_of else ""
        return page(
            "error.html",
            status=404,
            title="Not found",
            message=f"No customer has the id {customer_id!r}{when}.",
            **who,
        )
    return page(
        "profile.html",
        view=view,
        as_of=request.query_params.get("as_of") or "",
        event_types=EVENT_TYPE_NAMES,
        **who,
    )


@get(f"{UI}/timeline", include_in_schema=False, guards=[needs("audit")])
async def timeline(request: Request[Any, Any, Any]) -> Response[str]:
    """One page of the customer's events, filtered: the partial htmx swaps in."""
    customer_id, query = _query(request)
    if not _is_htmx(request):  # a link opened in a new tab: the page showing that timeline
        return Redirect(f"{UI}/profile?{urlencode(query.params(customer_id))}", status_code=303)
    store = _store(request)
    try:
        found = await anyio.to_thread.run_sync(lambda: Timeline.read(store, customer_id, query))
    except NotFound:
        found = Timeline(customer_id=customer_id, query=query, events=[], next_after=None)
    return page("timeline.html", timeline=found, event_types=EVENT_TYPE_NAMES, **_who(request))


# --- audit ------------------------------------------------------------------------------------


@get(f"{UI}/audit", include_in_schema=False, guards=[needs("audit")])
async def audit(request: Request[Any, Any, Any]) -> Response[str]:
    """Refold the customer from the log and compare with the stored documents."""
    customer_id = request.query_params.get("id")
    if not customer_id:
        raise InvalidArgument("id", "is required: the customer id")
    store = _store(request)
    report = await anyio.to_thread.run_sync(lambda: store.verify(customer_ids=[customer_id]))
    return page(
        "audit.html",
        customer_id=customer_id,
        report=msgspec.to_builtins(report),
        ok=report.ok,
        **_who(request),
    )


ROUTER = Router(
    path="/",
    route_handlers=[
        login_form,
        login,
        logout,
        search_form,
        find,
        profile,
        timeline,
        audit,
        create_static_files_router(
            path=f"{UI}/static",
            directories=[STATIC],
            name="ui-static",
        ),
    ],
    include_in_schema=False,
    exception_handlers={
        NotAuthorizedException: not_logged_in,
        PermissionDeniedException: forbidden,
        ProfileStoreError: store_error,
    },
)
