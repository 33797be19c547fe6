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
import hashlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal

import anyio
import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.handlers import BaseRouteHandler
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from profilestore.config import ApiKey
from profilestore.documents import SectionMeta
from profilestore.errors import (
    AmbiguousIdentifier,
    InvalidEvent,
    NotFound,
    ProfileStoreError,
    UnknownDataset,
)
from profilestore.eventlog import event_json
from profilestore.events import AnyEvent, normalise_identifier
from profilestore.store import DatasetStatus, Freshness, ProfileStore

access_log = logging.getLogger("profilestore.access")
log = logging.getLogger(__name__)

Scope_ = Literal["ingest", "read", "audit", "admin"]
API_KEY_HEADER = "X-API-Key"
_ITEM = re.compile(r"^events\[(\d+)\](.*)$")
_LEADING_FIELD = re.compile(r"^`(\w+)`")


# --- bodies ---------------------------------------------------------------------------------


class EventBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A batch of events: all are appended, or none."""

    events: list[AnyEvent]


class _RawBatch(msgspec.Struct, frozen=True):
    events: list[msgspec.Raw]


class AppendResponse(msgspec.Struct, frozen=True):
    appended: int
    duplicates: int
    duplicate_event_ids: list[str]


class DatasetFreshness(msgspec.Struct, frozen=True):
    """How fresh one section is: what it covers, and how far the log has moved on."""

    position: int
    """Log position of the last event folded into this section."""
    refreshed_at: str
    dataset_position: int
    """How far the dataset as a whole has been refreshed through the log."""
    events_behind: int
    seconds_behind: float


class ProfileResponse(msgspec.Struct, frozen=True):
    customer_id: str
    sections: dict[str, Any]
    freshness: dict[str, DatasetFreshness]


class HistoryPage(msgspec.Struct, frozen=True):
    customer_id: str
    events: list[Any]
    next_after: int | None
    """Pass as ``after`` for the next page; null on the last page."""


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    code: str
    message: str
    field: str | None = None
    index: int | None = None
    reason: str | None = None


class ErrorResponse(msgspec.Struct, frozen=True):
    error: ErrorBody


def _error(status: int, code: str, message: str, **extra: Any) -> Response[ErrorResponse]:
    return Response(
        ErrorResponse(ErrorBody(code=code, message=message, **extra)), status_code=status
    )


# --- authentication ---------------------------------------------------------------------------


class Keys:
    """API keys by digest; comparison is constant-time."""

    def __init__(self, keys: list[ApiKey], anonymous: list[Scope_]) -> None:
        self.keys = {key.sha256: key for key in keys}
        self.anonymous = set(anonymous)

    @staticmethod
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def scopes(self, presented: str | None) -> tuple[str | None, set[str]] | None:
        """(client name, scopes) for a presented key; None for an unknown key."""
        if presented is None:
            return None, set(self.anonymous)
        digest = self.digest(presented)
        for known, key in self.keys.items():
            if hmac.compare_digest(known, digest):
                return key.name, set(key.scopes) | self.anonymous
        return None


def _presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    key = connection.headers.get(API_KEY_HEADER)
    if key:
        return key
    authorization = connection.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require(
    scope: Scope_,
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]:
    """A guard: 401 without a valid key (when one is needed), 403 without ``scope``."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        keys: Keys = connection.app.state.api_keys
        granted = keys.scopes(_presented_key(connection))
        if granted is None:
            raise HTTPException(status_code=401, detail="unknown API key")
        name, scopes = granted
        connection.scope["state"]["client"] = name
        if scope not in scopes:
            if name is None:  # no key presented: presenting one may help
                raise HTTPException(
                    status_code=401,
                    detail=f"an API key is required ({API_KEY_HEADER} or Authorization: Bearer)",
                )
            raise HTTPException(status_code=403, detail=f"this key lacks the {scope!r} scope")

    return guard


# --- metrics and the access log --------------------------------------------------------------


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "profilestore_http_request_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5),
        )
        self.ingested = Counter(
            "profilestore_events_ingested", "Events appended", registry=self.registry
        )
        self.duplicates = Counter(
            "profilestore_events_duplicate", "Events already stored", registry=self.registry
        )
        self.rejected = Counter(
            "profilestore_events_rejected", "Events in rejected batches", registry=self.registry
        )
        self.lag_events = Gauge(
            "profilestore_projection_lag_events",
            "Log positions behind",
            ["dataset"],
            registry=self.registry,
        )
        self.lag_seconds = Gauge(
            "profilestore_projection_lag_seconds",
            "Age of the oldest unapplied event",
            ["dataset"],
            registry=self.registry,
        )
        self.run_seconds = Gauge(
            "profilestore_refresh_last_duration_seconds",
            "Duration of the last refresh run",
            ["dataset", "trigger"],
            registry=self.registry,
        )
        self.run_failed = Gauge(
            "profilestore_refresh_last_failed",
            "1 if the last refresh run failed",
            ["dataset"],
            registry=self.registry,
        )
        self.dead_letters = Gauge(
            "profilestore_dead_letters",
            "Events parked by failing folds",
            ["dataset"],
            registry=self.registry,
        )

    def observe_status(self, rows: list[DatasetStatus]) -> None:
        for row in rows:
            self.lag_events.labels(row.dataset).set(row.lag.events_behind)
            self.lag_seconds.labels(row.dataset).set(row.lag.seconds_behind)
            self.dead_letters.labels(row.dataset).set(row.dead_letters)
            last = row.last_run
            if last is not None:
                self.run_failed.labels(row.dataset).set(1 if last.status == "failed" else 0)
                if last.seconds is not None:
                    self.run_seconds.labels(row.dataset, last.trigger).set(last.seconds)


def access_middleware(app: ASGIApp) -> ASGIApp:
    """Times every request and logs method, route template, status and duration."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("path_template") or "unmatched"
            method = scope.get("method", "")
            metrics: Metrics = scope["app"].state.metrics
            metrics.latency.labels(method, route, str(status)).observe(elapsed)
            access_log.info(
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "client": scope.get("state", {}).get("client"),
                },
            )

    return middleware


# --- the freshness snapshot --------------------------------------------------------------


class FreshnessSnapshot:
    """Each dataset's lag, refreshed in the background; read by every profile request."""

    def __init__(self, store: ProfileStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self.datasets: dict[str, Freshness] = {}
        self.updated = 0.0

    def refresh(self) -> None:
        self.datasets = self.store.freshness()
        self.updated = time.monotonic()

    def refresh_status(self) -> None:
        self.metrics.observe_status(self.store.status())

    async def run(self, interval: float) -> None:
        ticks = 0
        while True:
            try:
                await anyio.to_thread.run_sync(self.refresh)
                if ticks % max(1, int(5 / interval)) == 0:
                    await anyio.to_thread.run_sync(self.refresh_status)
            except Exception:  # keep serving with the last snapshot
                log.exception("freshness refresh failed")
            ticks += 1
            await asyncio.sleep(interval)

    def block(self, dataset: str, meta: SectionMeta) -> DatasetFreshness:
        lag = self.datasets.get(dataset)
        return DatasetFreshness(
            position=meta.position,
            refreshed_at=meta.refreshed_at.isoformat(),
            dataset_position=lag.position if lag else meta.position,
            events_behind=lag.events_behind if lag else 0,
            seconds_behind=lag.seconds_behind if lag else 0.0,
        )


# --- handlers -------------------------------------------------------------------------------


def _store(request: Request[Any, Any, Any]) -> ProfileStore:
    store: ProfileStore = request.app.state.store
    return store


def _datasets(store: ProfileStore, datasets: str | None) -> list[str] | None:
    if not datasets:
        return None
    return store.datasets([d.strip() for d in datasets.split(",") if d.strip()])


@post("/v1/events", guards=[require("ingest")], status_code=200, summary="Append a batch")
async def append_events(
    request: Request[Any, Any, Any], data: JSONBody[EventBatch]
) -> AppendResponse:
    """Append a batch of events, all or nothing; events already stored count as duplicates.

    An invalid event rejects the whole batch with 422 naming `events[i].field` and the
    reason; nothing of the batch is appended. Retrying a batch is always safe.
    """
    store = _store(request)
    metrics: Metrics = request.app.state.metrics
    limit = store.settings.api.max_batch
    if len(data.events) > limit:
        metrics.rejected.inc(len(data.events))
        raise _BatchTooLarge(len(data.events), limit)
    # Litestar converts bodies leniently ("2" passes for 2): validate the raw events
    # exactly as the Python API and the CLI do, so all three reject the same input.
    raw = msgspec.json.decode(await request.body(), type=_RawBatch)
    try:
        result = await anyio.to_thread.run_sync(store.append, raw.events)
    except InvalidEvent:
        metrics.rejected.inc(len(data.events))
        raise
    metrics.ingested.inc(result.appended)
    metrics.duplicates.inc(result.duplicates)
    return AppendResponse(result.appended, result.duplicates, result.duplicate_event_ids)


class _BatchTooLarge(ProfileStoreError):
    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        super().__init__(f"the batch has {size} events; at most {limit} are accepted")


def _profile_response(
    request: Request[Any, Any, Any], customer_id: str, raw: Any
) -> ProfileResponse:
    snapshot: FreshnessSnapshot = request.app.state.freshness
    return ProfileResponse(
        customer_id=customer_id,
        sections=raw.sections,
        freshness={name: snapshot.block(name, meta) for name, meta in raw.freshness.items()},
    )


@get("/v1/profiles/{customer_id:str}", guards=[require("read")], summary="A profile by id")
async def get_profile(
    request: Request[Any, Any, Any],
    customer_id: FromPath[str],
    datasets: FromQuery[str | None] = None,
) -> ProfileResponse:
    """The customer's profile (only `datasets`, comma-separated, if given) with a
    freshness block per dataset."""
    store = _store(request)
    raw = await store.documents.aget_raw(customer_id, _datasets(store, datasets))
    if raw is None:
        raise NotFoundException(detail=f"no profile for customer {customer_id!r}")
    return _profile_response(request, customer_id, raw)


@get("/v1/profiles", guards=[require("read")], summary="A profile by identifier")
async def find_profile(
    request: Request[Any, Any, Any],
    email: FromQuery[str | None] = None,
    phone: FromQuery[str | None] = None,
    handle: FromQuery[str | None] = None,
    device: FromQuery[str | None] = None,
    datasets: FromQuery[str | None] = None,
) -> ProfileResponse:
    """The profile holding one identifier: `email`, `phone`, `handle` (network:handle)
    or `device`. Values are normalised as on ingest. 409 if several customers hold it."""
    given = {
        k: v
        for k, v in {"email": email, "phone": phone, "handle": handle, "device": device}.items()
        if v is not None
    }
    if len(given) != 1:
        raise ValidationException(detail="give exactly one of email, phone, handle, device")
    ((kind, value),) = given.items()
    store = _store(request)
    names = _datasets(store, datasets)
    network, handle_value = None, value
    if kind == "handle":
        network, _, handle_value = value.partition(":")
    try:
        key = normalise_identifier(kind, handle_value, network or None)
    except ValueError as e:
        raise ValidationException(detail=f"{kind}: {e}") from None
    customer_ids = await store.documents.afind(key)
    if not customer_ids:
        raise NotFoundException(detail=f"no profile has this {kind}")
    if len(customer_ids) > 1:
        raise AmbiguousIdentifier(kind, "(value withheld)", customer_ids)
    raw = await store.documents.aget_raw(customer_ids[0], names)
    if raw is None:
        raise NotFoundException(detail=f"no profile has this {kind}")
    return _profile_response(request, customer_ids[0], raw)


@get(
    "/v1/profiles/{customer_id:str}/history",
    guards=[require("audit")],
    summary="A customer's events",
)
async def get_history(
    request: Request[Any, Any, Any],
    customer_id: FromPath[str],
    after: FromQuery[int] = 0,
    limit: FromQuery[int] = 100,
) -> HistoryPage:
    """The customer's events, oldest first, with envelope and metadata, `limit` (1-1000)
    per page after stream version `after`."""
    if not 1 <= limit <= 1000:
        raise ValidationException(detail="limit must be between 1 and 1000")
    if after < 0:
        raise ValidationException(detail="after must be >= 0")
    store = _store(request)
    events = await anyio.to_thread.run_sync(
        lambda: store.log.stream(customer_id, after_version=after, limit=limit + 1)
    )
    if not events and after == 0:
        raise NotFoundException(detail=f"no events for customer {customer_id!r}")
    page = events[:limit]
    return HistoryPage(
        customer_id=customer_id,
        events=[msgspec.Raw(event_json(e)) for e in page],
        next_after=after + limit if len(events) > limit else None,
    )


@get("/v1/status", guards=[require("admin")], summary="Datasets' refresh status")
async def get_status(request: Request[Any, Any, Any]) -> list[DatasetStatus]:
    """Per dataset: cadence, last and next run, lag, running or failed, dead letters."""
    return await anyio.to_thread.run_sync(_store(request).status)


@get("/health/live", summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", summary="The stores answer")
async def ready(request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
    store = _store(request)

    def check() -> None:
        store.log.head()
        store.documents.tracking(next(iter(store.projections)))

    try:
        with anyio.fail_after(5):
            await anyio.to_thread.run_sync(check)
    except Exception as error:
        return Response({"status": "unavailable", "reason": type(error).__name__}, status_code=503)
    return Response({"status": "ready"})


@get("/metrics", summary="Prometheus metrics", media_type=MediaType.TEXT)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


# --- errors ---------------------------------------------------------------------------------


def _invalid_event(_: Request[Any, Any, Any], error: InvalidEvent) -> Response[ErrorResponse]:
    return _error(
        422, "invalid_event", str(error), field=error.field, index=error.index, reason=error.reason
    )


def _validation(_: Request[Any, Any, Any], error: ValidationException) -> Response[ErrorResponse]:
    # A body that does not decode into events: name the event and field, as the Python API.
    for item in error.extra if isinstance(error.extra, list) else []:
        key = str(item.get("key", "")) if isinstance(item, Mapping) else ""
        message = str(item.get("message", "")) if isinstance(item, Mapping) else ""
        matched = _ITEM.match(key)
        if matched:
            index = int(matched.group(1))
            field = key
            named = _LEADING_FIELD.match(message)
            if not matched.group(2) and named:
                field = f"{key}.{named.group(1)}"
            return _error(
                422,
                "invalid_event",
                f"event {index} is invalid at `{field}`: {message}; the batch was rejected "
                "and nothing of it was appended",
                field=field,
                index=index,
                reason=message,
            )
        if key:
            return _error(400, "invalid_request", f"{key}: {message}", field=key, reason=message)
    return _error(400, "invalid_request", error.detail)


def _not_found(_: Request[Any, Any, Any], error: Exception) -> Response[ErrorResponse]:
    detail = error.detail if isinstance(error, HTTPException) else str(error)
    return _error(404, "not_found", detail)


def _ambiguous(_: Request[Any, Any, Any], error: AmbiguousIdentifier) -> Response[ErrorResponse]:
    return _error(
        409,
        "ambiguous_identifier",
        f"{len(error.customer_ids)} customers hold this {error.kind}: "
        f"{', '.join(error.customer_ids[:20])}",
    )


def _profilestore(_: Request[Any, Any, Any], error: ProfileStoreError) -> Response[ErrorResponse]:
    if isinstance(error, _BatchTooLarge):
        return _error(422, "batch_too_large", str(error), field="events")
    if isinstance(error, UnknownDataset):
        return _error(400, "unknown_dataset", str(error), field="datasets")
    return _error(500, "internal_error", "the request failed; see the server log")


def _http(_: Request[Any, Any, Any], error: HTTPException) -> Response[ErrorResponse]:
    codes = {
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "body_too_large",
    }
    response = _error(error.status_code, codes.get(error.status_code, "http_error"), error.detail)
    if error.status_code == 401:
        response.headers["WWW-Authenticate"] = f'ApiKey header="{API_KEY_HEADER}"'
    return response


def _unexpected(_: Request[Any, Any, Any], error: Exception) -> Response[ErrorResponse]:
    log.error("unhandled %s", type(error).__name__, exc_info=error)
    return _error(500, "internal_error", "the request failed; see the server log")


# --- logging --------------------------------------------------------------------------------


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extras."""

    _standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in self._standard)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


def configure_logging(level: int = logging.INFO) -> None:
    """Structured logs on stderr; uvicorn's access log stays off (it prints query strings)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


# --- the app --------------------------------------------------------------------------------


def openapi_document(app: Litestar) -> dict[str, Any]:
    """The app's OpenAPI schema as committed in ``openapi.json`` (CI checks for drift)."""
    document: dict[str, Any] = app.openapi_schema.to_schema()
    return document


def create_app(store: ProfileStore) -> Litestar:
    """The API over ``store``; the caller closes the store after the app stops."""
    settings = store.settings.api
    metrics_ = Metrics()
    snapshot = FreshnessSnapshot(store, metrics_)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(snapshot.refresh)
        task = asyncio.create_task(snapshot.run(settings.freshness_interval_ms / 1000))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.documents.aclose()

    app = Litestar(
        route_handlers=[
            append_events,
            get_profile,
            find_profile,
            get_history,
            get_status,
            live,
            ready,
            metrics,
        ],
        lifespan=[lifespan],
        middleware=[access_middleware],
        request_max_body_size=settings.max_body_bytes,
        exception_handlers={
            InvalidEvent: _invalid_event,
            ValidationException: _validation,
            NotFoundException: _not_found,
            NotFound: _not_found,
            AmbiguousIdentifier: _ambiguous,
            ProfileStoreError: _profilestore,
            HTTPException: _http,
            Exception: _unexpected,
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
    app.state.freshness = snapshot
    return app
