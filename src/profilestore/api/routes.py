"""The route handlers: parse, call the ProfileStore, render."""

from __future__ import annotations

import datetime as dt
import inspect
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

import anyio
import msgspec
from litestar import MediaType, Request, Response, delete, get, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromQuery, JSONBody, Parameter, PathParameter, QueryParameter
from prometheus_client import generate_latest

from profilestore.api.bodies import (
    AppendResponse,
    EventBatch,
    HistoryPage,
    LinkRequest,
    ProfileResponse,
    RedriveResponse,
    _RawBatch,
)
from profilestore.api.observability import FreshnessSnapshot, Metrics
from profilestore.api.security import require
from profilestore.documents import RawProfile
from profilestore.errors import BatchTooLarge, InvalidEvent, InvalidIdentifier, NotFound
from profilestore.events import ErasureReceipt
from profilestore.firing import Outcome
from profilestore.identifiers import KIND_NAMES, LOOKUP_KINDS, one_identifier
from profilestore.outbox import Delivery
from profilestore.outbox import Status as DeliveryStatus
from profilestore.scoring import Summary
from profilestore.store import (
    ContactDecision,
    DatasetStatus,
    IdentityExplanation,
    LinkResult,
    PartitionStatus,
    ProfileStore,
    TriggerListing,
    WorkerStatus,
)

MAX_VERSION = 2**53
"""Largest stream version a client may name (well inside every store's integers)."""

# --- handlers -------------------------------------------------------------------------------


def _store(request: Request[Any, Any, Any]) -> ProfileStore:
    store: ProfileStore = request.app.state.store
    return store


def _datasets(datasets: str | None) -> list[str] | None:
    # Given but naming nothing (``?datasets=,,,``) stays an empty selection: the store
    # refuses it (400) rather than serve every dataset or none.
    if datasets is None:
        return None
    return [d.strip() for d in datasets.split(",") if d.strip()]


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
        raise BatchTooLarge(len(data.events), limit)
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


def _profile_response(request: Request[Any, Any, Any], raw: RawProfile) -> ProfileResponse:
    snapshot: FreshnessSnapshot = request.app.state.freshness
    return ProfileResponse(
        customer_id=raw.customer_id,
        canonical_id=raw.canonical_id,
        sections=raw.sections,
        freshness={name: snapshot.block(name, meta) for name, meta in raw.freshness.items()},
    )


PROFILES = "/v1/profiles/"
HISTORY = "/v1/history/"


def _customer_id(request: Request[Any, Any, Any], prefix: str, routed: str) -> str:
    """The customer id a path names, exactly: everything after ``prefix``, percent-decoded
    once, so any id accepted at ingest is addressable (``a/b`` as ``a%2Fb``, ``100%`` as
    ``100%25``, ``..`` as ``%2E%2E``).

    It is read from the raw path: the decoded one the router matched (``routed``) has lost
    what routing normalises away, a leading, trailing or doubled ``/``, which an id may hold.
    A path that is not UTF-8 once decoded names no customer.
    """
    raw = request.scope.get("raw_path")
    if not raw:
        return routed.removeprefix("/")
    path = raw.partition(b"?")[0]  # ASGI excludes the query; some test transports do not
    if not path.startswith(prefix.encode()):
        return routed.removeprefix("/")
    try:
        return unquote_to_bytes(path[len(prefix) :]).decode("utf-8")
    except UnicodeDecodeError:
        raise NotFoundException(detail="no customer has this id (not UTF-8)") from None


@get(
    PROFILES + "{customer_id:path}",
    guards=[require("read")],
    summary="A profile by id",
)
async def get_profile(
    request: Request[Any, Any, Any],
    customer_id: Annotated[
        str, Parameter(description="The customer id, percent-encoded (`/` as `%2F`).")
    ],
    datasets: FromQuery[str | None] = None,
    as_of: FromQuery[dt.datetime | None] = None,
) -> ProfileResponse:
    """The customer's profile (only `datasets`, comma-separated, if given) with a
    freshness block per dataset. With `as_of` (an ISO time with a zone), the profile as it
    was then: the customer's events recorded up to that time, refolded."""
    customer_id = _customer_id(request, PROFILES, customer_id)
    store = _store(request)
    names = _datasets(datasets)
    if as_of is None:
        raw = await store.aprofile_raw(customer_id, names)
    elif as_of.tzinfo is None:
        raise ValidationException(detail="as_of needs a time zone, e.g. 2026-03-01T09:00Z")
    else:
        try:
            raw = await anyio.to_thread.run_sync(
                lambda: store.profile_raw(customer_id, names, as_of=as_of)
            )
        except NotFound:
            raise NotFoundException(
                detail=f"no profile for customer {customer_id!r} as of {as_of.isoformat()}"
            ) from None
    return _profile_response(request, raw)


async def find_profile(
    request: Request[Any, Any, Any],
    datasets: FromQuery[str | None] = None,
    **identifiers: str | None,
) -> ProfileResponse:
    try:
        kind, value = one_identifier(identifiers)
    except InvalidIdentifier as e:
        raise ValidationException(detail=e.reason) from None
    raw = await _store(request).afind_raw(kind, value, _datasets(datasets))
    return _profile_response(request, raw)


def _with_identifier_parameters(handler: Any) -> Any:
    """One optional query parameter per identifier kind, from their one declaration."""
    signature = inspect.signature(handler)
    kept = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    added = [
        inspect.Parameter(
            kind.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[str | None, QueryParameter(description=kind.help)],
        )
        for kind in LOOKUP_KINDS
    ]
    handler.__signature__ = signature.replace(parameters=[*kept, *added])
    handler.__annotations__ = {
        **{p.name: p.annotation for p in [*kept, *added]},
        "return": ProfileResponse,
    }
    return handler


find_profile.__doc__ = (
    f"The profile holding one identifier: one of {', '.join(KIND_NAMES)} "
    "(a handle as network:handle). Values are normalised as on ingest. 409 if several "
    "customers hold it."
)
find_profile_route = get(
    "/v1/profiles", guards=[require("read")], summary="A profile by identifier"
)(_with_identifier_parameters(find_profile))


@get(HISTORY + "{customer_id:path}", guards=[require("audit")], summary="A customer's events")
async def get_history(
    request: Request[Any, Any, Any],
    customer_id: Annotated[
        str, Parameter(description="The customer id, percent-encoded (`/` as `%2F`).")
    ],
    after: Annotated[int, QueryParameter(ge=0, le=MAX_VERSION)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> HistoryPage:
    """The customer's events, oldest first, with envelope and metadata, `limit` (1-1000)
    per page after log position `after` (a merged profile: every key's events, each
    naming its key in `customer_id`). (Not under `/v1/profiles/{id}/`: a customer id
    may end in `/history`, and every id must address its own profile.)"""
    customer_id = _customer_id(request, HISTORY, customer_id)
    store = _store(request)
    try:
        events, next_after = await anyio.to_thread.run_sync(
            lambda: store.history_page(customer_id, after=after, limit=limit)
        )
    except NotFound:
        raise NotFoundException(detail=f"no events for customer {customer_id!r}") from None
    return HistoryPage(customer_id=customer_id, events=events, next_after=next_after)


IDENTITY = "/v1/identity/profiles/"


@get(
    IDENTITY + "{customer_id:path}",
    guards=[require("read")],
    summary="Who a customer is: keys and links",
)
async def get_identity(
    request: Request[Any, Any, Any],
    customer_id: Annotated[
        str, Parameter(description="A customer key or profile id, percent-encoded.")
    ],
) -> IdentityExplanation:
    """The profile the key belongs to: its canonical id, its keys, its identifiers, and
    every link naming one of its keys (active, retracted, refused) with the rule or
    operator that made it, its evidence, time and log position. (Not under
    `/v1/profiles/{id}/`: a customer id may end in `/identity`.)"""
    customer_id = _customer_id(request, IDENTITY, customer_id)
    store = _store(request)
    return await anyio.to_thread.run_sync(store.explain, customer_id)


def _actor(request: Request[Any, Any, Any]) -> str:
    client = request.scope.get("state", {}).get("client")
    return f"api:{client}" if client else "api:anonymous"


@post("/v1/identity/links", guards=[require("identity")], status_code=200, summary="Merge")
async def post_link(request: Request[Any, Any, Any], data: JSONBody[LinkRequest]) -> LinkResult:
    """Make two customer keys one profile; idempotent (`appended` 0: they already were).
    The link is an event in the log naming this API key as its actor."""
    store = _store(request)
    return await anyio.to_thread.run_sync(
        lambda: store.link(data.key, data.other, actor=_actor(request), reason=data.reason)
    )


@delete("/v1/identity/links", guards=[require("identity")], status_code=200, summary="Unmerge")
async def delete_link(
    request: Request[Any, Any, Any],
    key: Annotated[str, QueryParameter(description="A customer key.")],
    other: Annotated[
        str | None,
        QueryParameter(description="The other key; absent: split `key` out of its profile."),
    ] = None,
    reason: FromQuery[str | None] = None,
) -> LinkResult:
    """Retract the links between `key` and `other` (or every link of `key`); the profiles
    become what they would be without them, and rules do not link them again.
    Idempotent; 404 if no link ever joined them."""
    store = _store(request)
    return await anyio.to_thread.run_sync(
        lambda: store.unlink(key, other, actor=_actor(request), reason=reason)
    )


@delete(
    PROFILES + "{customer_id:path}",
    guards=[require("erasure")],
    status_code=200,
    summary="Forget a customer (erasure)",
)
async def delete_profile(
    request: Request[Any, Any, Any],
    customer_id: Annotated[
        str, Parameter(description="A customer key or profile id, percent-encoded.")
    ],
    request_id: Annotated[
        str, QueryParameter(description="The erasure request's id: the same id is done once.")
    ],
) -> ErasureReceipt:
    """Erase the customer on request: every key of their profile has its data key
    destroyed (their events stay in the log, unreadable), everything derived is deleted,
    and their events are refused from now on. Answers the erasure receipt (no personal
    data); the same `request_id` again answers the same receipt."""
    customer_id = _customer_id(request, PROFILES, customer_id)
    store = _store(request)
    return await anyio.to_thread.run_sync(lambda: store.forget(customer_id, request_id=request_id))


@get("/v1/erasures", guards=[require("audit")], summary="Erasure receipts")
async def get_erasures(request: Request[Any, Any, Any]) -> list[ErasureReceipt]:
    """Every erasure receipt, oldest first (kept in the log's `~erasures` stream)."""
    store = _store(request)
    return await anyio.to_thread.run_sync(store.erasures)


CONSENT = "/v1/consent/"


@get(CONSENT + "{customer_id:path}", guards=[require("read")], summary="May we contact them?")
async def get_consent(
    request: Request[Any, Any, Any],
    customer_id: Annotated[
        str, Parameter(description="A customer key or profile id, percent-encoded.")
    ],
    channel: Annotated[str, QueryParameter(description="email, sms, phone, push, post, ...")],
    purpose: Annotated[str, QueryParameter(description="e.g. marketing")] = "marketing",
) -> ContactDecision:
    """May we contact the customer on `channel` for `purpose` now: `allowed`, the
    `reason`, and the event that decided it. Unknown means no (a customer with no
    decision, or no profile, is `allowed: false`). (Not under `/v1/profiles/{id}/`: a
    customer id may end in `/consent`.)"""
    customer_id = _customer_id(request, CONSENT, customer_id)
    store = _store(request)
    return await anyio.to_thread.run_sync(lambda: store.may_contact(customer_id, channel, purpose))


# --- triggers and the outbox -------------------------------------------------------------------


@get("/v1/triggers", guards=[require("read")], summary="The configured triggers")
async def get_triggers(request: Request[Any, Any, Any]) -> list[TriggerListing]:
    """Every trigger in the config, enabled or not: its channel, purpose, whether it is
    transactional, the events it reads, its warm-up cut-off and settings."""
    return await anyio.to_thread.run_sync(_store(request).trigger_catalogue)


TRIGGER_LOG = "/v1/triggers/outcomes/"


@get(
    TRIGGER_LOG + "{customer_id:path}",
    guards=[require("read")],
    summary="A customer's trigger decisions",
)
async def get_trigger_log(
    request: Request[Any, Any, Any],
    customer_id: Annotated[
        str, Parameter(description="A customer key or profile id, percent-encoded.")
    ],
) -> list[Outcome]:
    """Every trigger decision about the customer (every key of a merged profile), oldest
    first: fired (with the message id and experiment arm), duplicate, deferred or waiting
    until when, suppressed and why (a reason and its code), cancelled, failed. A customer
    nothing was decided about has none. (Not under `/v1/profiles/{id}/`: a customer id may
    end in `/triggers`.)"""
    customer_id = _customer_id(request, TRIGGER_LOG, customer_id)
    store = _store(request)
    return await anyio.to_thread.run_sync(store.trigger_log, customer_id)


@get("/v1/outbox", guards=[require("read")], summary="Deliveries of fired messages")
async def get_outbox(
    request: Request[Any, Any, Any],
    status: Annotated[
        DeliveryStatus,
        QueryParameter(description="pending (with their attempts), delivered or dead."),
    ] = "pending",
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> list[Delivery]:
    """The outbox's deliveries of one `status`, oldest first, at most `limit` (1-1000):
    per message and destination, its attempts, next attempt and last error."""
    store = _store(request)
    found = await anyio.to_thread.run_sync(lambda: store.outbox(status))
    return found[:limit]


@post(
    "/v1/outbox/{message_id:str}/retry",
    guards=[require("admin")],
    status_code=200,
    summary="Redrive a dead letter",
)
async def post_outbox_retry(
    request: Request[Any, Any, Any],
    message_id: Annotated[str, PathParameter(description="The message's id (`msg_...`).")],
) -> RedriveResponse:
    """Queue the message's dead deliveries again (attempts start afresh, under the same
    webhook-id) and enable their endpoints again; 404 if the message has no dead
    delivery."""
    store = _store(request)
    redriven = await anyio.to_thread.run_sync(lambda: store.redrive([message_id]))
    if not redriven:
        raise NotFoundException(detail=f"message {message_id!r} has no dead delivery")
    return RedriveResponse(message_id=message_id, redriven=redriven)


@get("/v1/status", guards=[require("admin")], summary="Datasets' refresh status")
async def get_status(request: Request[Any, Any, Any]) -> list[DatasetStatus]:
    """Per dataset: cadence, last and next run, lag, running or failed, dead letters."""
    return await anyio.to_thread.run_sync(_store(request).status)


class PartitionsResponse(msgspec.Struct, frozen=True, kw_only=True):
    partitions: list[PartitionStatus]
    """Empty when the store is not partitioned (``schedule.partitions = 1``)."""
    workers: list[WorkerStatus]


@get("/v1/status/partitions", guards=[require("admin")], summary="Partitions' workers and lag")
async def get_partition_status(request: Request[Any, Any, Any]) -> PartitionsResponse:
    """Per partition: the worker holding it and how far behind the log head it is; and the
    partitioned workers alive (a heartbeat within the lease time to live)."""
    store = _store(request)

    def read() -> PartitionsResponse:
        return PartitionsResponse(partitions=store.partition_status(), workers=store.workers())

    return await anyio.to_thread.run_sync(read)


@get("/v1/scores/summary", guards=[require("read")], summary="Where customers are")
async def get_scores_summary(request: Request[Any, Any, Any]) -> Summary:
    """The last scoring run: customers per lifecycle stage, journey stage and value tier,
    the distribution of each 4I score and of predicted value, and how the counts moved
    since the previous run (404 until something was scored)."""
    return await anyio.to_thread.run_sync(_store(request).scores_summary)


@get("/health/live", summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", summary="The stores answer")
async def ready(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """503 unless both stores answer. Ready lists `outdated` datasets (built by another
    projection version): they still answer, from the old documents, until the worker's
    background rebuild swaps the new ones in, so they do not make the server unready."""
    store = _store(request)
    try:
        with anyio.fail_after(5):
            outdated = await anyio.to_thread.run_sync(store.ready)
    except Exception as error:
        return Response({"status": "unavailable", "reason": type(error).__name__}, status_code=503)
    return Response({"status": "ready", "outdated": outdated})


@get("/metrics", summary="Prometheus metrics", media_type=MediaType.TEXT)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")
