"""The HTTP API: Litestar with msgspec Structs end to end.

Thin edge: handlers parse, call :class:`~profilestore.store.ProfileStore`, render. HTTP
status codes are mapped from profilestore's errors here and nowhere else.

- Profiles are served from the stored section JSON as is (``msgspec.Raw``): a lookup is
  one document-store read and no decode/encode of the sections. The freshness block
  comes from a snapshot of each dataset's lag that a background task refreshes every
  ``api.freshness_interval_ms``, so it costs the request nothing.
- Blocking work (appends, status, history) runs on worker threads; embedded lookups run
  inline (tens of microseconds); MongoDB lookups use pymongo's async client.
- API keys are configured as SHA-256 digests with scopes (ingest, read, audit, admin);
  a key is never logged or echoed. The access log and metrics name the route template,
  never the path, the query string, a body or an identifier.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
from litestar import Litestar
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from profilestore.api.bodies import JsonRequest
from profilestore.api.errors import (
    handle_ambiguous,
    handle_http,
    handle_invalid_event,
    handle_not_found,
    handle_profilestore,
    handle_unexpected,
    handle_validation,
)
from profilestore.api.observability import (
    FreshnessSnapshot,
    JsonLogFormatter,
    Metrics,
    TriggerCollector,
    access_middleware,
    configure_logging,
)
from profilestore.api.routes import (
    append_events,
    delete_link,
    delete_profile,
    find_profile_route,
    get_consent,
    get_erasures,
    get_history,
    get_identity,
    get_outbox,
    get_partition_status,
    get_profile,
    get_scores_summary,
    get_status,
    get_trigger_log,
    get_triggers,
    live,
    metrics,
    post_link,
    post_outbox_retry,
    ready,
)
from profilestore.api.security import API_KEY_HEADER, Keys
from profilestore.api.segment import SEGMENT_ROUTES, CorsPolicy, segment_cors
from profilestore.errors import AmbiguousIdentifier, InvalidEvent, NotFound, ProfileStoreError
from profilestore.store import ProfileStore

__all__ = ["JsonLogFormatter", "configure_logging", "create_app", "openapi_document"]

# --- the app --------------------------------------------------------------------------------


def openapi_document(app: Litestar) -> dict[str, Any]:
    """The app's OpenAPI schema as committed in ``openapi.json`` (CI checks for drift)."""
    document: dict[str, Any] = app.openapi_schema.to_schema()
    return document


def create_app(store: ProfileStore) -> Litestar:
    """The API over ``store``, and the web UI; the caller closes the store after the app
    stops."""
    # The web UI renders the API's errors and freshness: imported here, not at the top,
    # so that either package can be imported first.
    from profilestore.web import ROUTER as WEB_UI
    from profilestore.web import Sessions

    settings = store.settings.api
    metrics_ = Metrics()
    metrics_.registry.register(TriggerCollector(store.tally))
    snapshot = FreshnessSnapshot(store, metrics_)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # The first snapshot is whole (lag, status, outdated datasets) before any request.
        await anyio.to_thread.run_sync(snapshot.refresh)
        await anyio.to_thread.run_sync(snapshot.refresh_status)
        stopping = asyncio.Event()
        task = asyncio.create_task(snapshot.run(settings.freshness_interval_ms / 1000, stopping))
        try:
            yield
        finally:
            stopping.set()
            await task  # returns once a refresh in progress has finished
            await store.aclose()

    app = Litestar(
        route_handlers=[
            append_events,
            get_profile,
            find_profile_route,
            get_history,
            get_identity,
            get_consent,
            delete_profile,
            get_erasures,
            post_link,
            delete_link,
            get_triggers,
            get_trigger_log,
            get_outbox,
            post_outbox_retry,
            get_status,
            get_partition_status,
            get_scores_summary,
            live,
            ready,
            metrics,
            *SEGMENT_ROUTES,
            WEB_UI,
        ],
        lifespan=[lifespan],
        middleware=[access_middleware, segment_cors],
        request_max_body_size=settings.max_body_bytes,
        request_class=JsonRequest,
        exception_handlers={
            InvalidEvent: handle_invalid_event,
            ValidationException: handle_validation,
            NotFoundException: handle_not_found,
            NotFound: handle_not_found,
            AmbiguousIdentifier: handle_ambiguous,
            ProfileStoreError: handle_profilestore,
            HTTPException: handle_http,
            Exception: handle_unexpected,
        },
        openapi_config=OpenAPIConfig(
            title="profilestore",
            version="1",
            description="An event-sourced customer-profile store.",
            path="/schema",
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(
                        type="apiKey", name=API_KEY_HEADER, security_scheme_in="header"
                    ),
                    "writeKey": SecurityScheme(
                        type="http",
                        scheme="basic",
                        description="Segment's form: an API key as the user name, no password.",
                    ),
                }
            ),
            security=[{"apiKey": []}],
        ),
        logging_config=None,
        debug=False,
    )
    app.state.store = store
    app.state.api_keys = Keys(settings.keys, list(settings.anonymous_scopes))
    app.state.metrics = metrics_
    app.state.segment_cors = CorsPolicy(store.settings.segment)
    app.state.freshness = snapshot
    app.state.web_sessions = Sessions(
        settings.session_secret, settings.session_minutes, app.state.api_keys
    )
    return app
