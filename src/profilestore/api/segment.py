"""The Segment-compatible endpoints: what an analytics SDK pointed at profilestore calls.

Thin edge: it reads the body (gzip allowed, bounded once decompressed too), finds the
write key, hands the messages to :meth:`~profilestore.store.ProfileStore.append_segment`
(the mapping is :mod:`profilestore.segment`) and renders the answer.

**Answer codes.** The SDKs retry 429 and 5xx (but 501, 505) and drop a batch on any other
4xx, so: a batch is answered 200 whenever it could be read, its invalid messages (or
parts) listed in ``rejected`` while their valid siblings are stored; 4xx only for a
request nothing of which could be stored (not JSON, not gzip, too large, no valid key,
an origin not allowed); 503 with ``Retry-After`` while a store is unavailable and 500 on
a failure of ours, both retried, and safe to retry since event ids derive from each
message's ``messageId`` (an append is all or nothing, and a retry's events are
duplicates). Errors carry ``code`` and ``message`` at the top as the SDKs read them, and
the API's usual ``error`` object.

**Write keys** are the API keys (scope ``ingest``), presented as the Basic-auth user name
(as the SDKs send them), in ``X-API-Key`` or ``Authorization: Bearer``, or as the body's
``writeKey`` (read only when no header carries a key). Any ``Content-Type`` is read as
JSON: analytics.js sends ``text/plain`` so that browsers skip the CORS preflight.

**CORS** (:func:`segment_cors`): only these paths, only the configured origins
(``[segment] cors_origins``); a request with another ``Origin`` is refused, a preflight
too, so the list also stops the simple posts that browsers send without asking.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import anyio
import msgspec
from litestar import Request, Response, post
from litestar.enums import ScopeType
from litestar.exceptions import ClientException, HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.types import (
    ASGIApp,
    ExceptionHandlersMap,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from profilestore.api.bodies import ErrorBody, ErrorResponse
from profilestore.api.errors import (
    handle_http,
    handle_profilestore,
    handle_unexpected,
    handle_validation,
)
from profilestore.api.observability import Metrics
from profilestore.api.security import authorize, presented_key
from profilestore.config import SegmentSettings
from profilestore.errors import ProfileStoreError
from profilestore.segment import CALLS, Call, Received, SegmentResult
from profilestore.store import ProfileStore

SEGMENT_PATHS: dict[str, Call | None] = {"/v1/batch": None} | {f"/v1/{c}": c for c in CALLS}
"""Each endpoint and the call it implies (``/v1/batch``: each message's ``type``)."""

ALLOWED_HEADERS = "content-type, content-encoding, authorization, x-api-key"


class SegmentError(msgspec.Struct, frozen=True):
    """An error as the SDKs read it (``code``, ``message``), with the API's usual object."""

    code: str
    message: str
    error: ErrorBody


# --- errors ---------------------------------------------------------------------------------


def _segment_shaped(
    handler: Callable[[Request[Any, Any, Any], Any], Response[ErrorResponse]],
) -> Callable[[Request[Any, Any, Any], Any], Response[SegmentError]]:
    def handle(request: Request[Any, Any, Any], error: Any) -> Response[SegmentError]:
        response = handler(request, error)
        body = response.content.error
        return Response(
            SegmentError(code=body.code, message=body.message, error=body),
            status_code=response.status_code,
            headers=dict(response.headers),
        )

    return handle


# Every kind the app's own handlers name that can reach these routes, each in this shape
# (handlers are looked up by the error's class, the route's before the app's).
SEGMENT_ERRORS: ExceptionHandlersMap = {
    ValidationException: _segment_shaped(handle_validation),
    HTTPException: _segment_shaped(handle_http),
    ProfileStoreError: _segment_shaped(handle_profilestore),
    Exception: _segment_shaped(handle_unexpected),
}


# --- the body -------------------------------------------------------------------------------


def decompressed(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before ``Content-Encoding``, refused (413) past ``limit`` bytes
    however small it came: inflating stops one byte past the limit, so a gzip bomb costs
    ``limit`` bytes of memory, not what it would expand to."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name not in ("gzip", "x-gzip"):
        raise HTTPException(
            status_code=415, detail="Content-Encoding must be gzip (or none); nothing was stored"
        )
    parts: list[bytes] = []
    size = 0
    rest = body
    while rest:  # gzip allows several members, one after the other
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = inflater.decompress(rest, limit - size + 1)
        except zlib.error:
            raise ClientException(detail="the body is not valid gzip; nothing was stored") from None
        size += len(chunk)
        if size > limit or inflater.unconsumed_tail:
            raise HTTPException(
                status_code=413,
                detail=f"the body exceeds {limit} bytes once decompressed; nothing was stored",
            )
        if not inflater.eof:
            raise ClientException(detail="the gzip body is truncated; nothing was stored")
        parts.append(chunk)
        rest = inflater.unused_data
    return b"".join(parts)


def _document(raw: bytes) -> Any:
    if not raw:
        raise ClientException(detail="the body is empty; send a Segment call as JSON")
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise ClientException(detail="the body is not JSON; nothing was stored") from None
    except RecursionError:
        raise ClientException(detail="the JSON body is nested too deeply") from None


# --- the endpoints --------------------------------------------------------------------------


async def _ingest(request: Request[Any, Any, Any], call: Call | None) -> SegmentResult:
    store: ProfileStore = request.app.state.store
    received_at = store.clock()
    header_key = presented_key(request, basic=True)
    client = authorize(request, header_key, "ingest") if header_key is not None else None
    raw = decompressed(
        await request.body(),
        request.headers.get("Content-Encoding"),
        store.settings.api.max_body_bytes,
    )
    document = _document(raw)
    if not isinstance(document, dict):
        raise ClientException(detail="the body must be a JSON object; nothing was stored")
    if header_key is None:
        body_key = document.get("writeKey")
        client = authorize(request, body_key if isinstance(body_key, str) else None, "ingest")
    if call is None:
        messages = document.get("batch")
        if not isinstance(messages, list):
            raise ClientException(detail='send {"batch": [...]}; nothing was stored')
        context = document.get("context")
        received = Received(
            at=received_at,
            actor=f"segment:{client or 'anonymous'}",
            sent_at=document.get("sentAt"),
            context=context if isinstance(context, dict) else {},
        )
    else:
        messages = [document]
        received = Received(at=received_at, actor=f"segment:{client or 'anonymous'}")
    answer, calls = await anyio.to_thread.run_sync(store.append_segment, messages, received, call)
    metrics: Metrics = request.app.state.metrics
    for name in calls:
        metrics.segment_messages.labels(name).inc()
    for rejection in answer.rejected:
        metrics.segment_rejected.labels(rejection.type).inc()
    metrics.ingested.inc(answer.appended)
    metrics.duplicates.inc(answer.duplicates)
    return answer


def _endpoint(path: str, call: Call | None) -> HTTPRouteHandler:
    async def segment_call(request: Request[Any, Any, Any]) -> SegmentResult:
        return await _ingest(request, call)

    what = f"a `{call}` call" if call else 'a batch of calls (`{"batch": [...]}`)'
    description = (
        f"Segment-compatible: {what}, mapped to events (README: Segment-compatible "
        "ingestion). 200 lists the messages or parts not stored in `rejected`, with index, "
        "field and reason; the others are stored once (ids derive from `messageId`). The "
        "write key is an API key with the `ingest` scope: Basic-auth user name, X-API-Key, "
        "Bearer, or the body's `writeKey`. Body JSON (any Content-Type), optionally gzip."
    )
    return post(
        path,
        status_code=200,
        summary=f"Segment {call or 'batch'}",
        description=description,
        operation_id=f"segment_{call or 'batch'}",
        tags=["segment"],
        exception_handlers=SEGMENT_ERRORS,
        security=[{"writeKey": []}, {"apiKey": []}],
    )(segment_call)


SEGMENT_ROUTES = [_endpoint(path, call) for path, call in SEGMENT_PATHS.items()]


# --- CORS -----------------------------------------------------------------------------------


class CorsPolicy:
    """Which browser origins may call the Segment endpoints."""

    def __init__(self, settings: SegmentSettings) -> None:
        self.any = "*" in settings.cors_origins
        self.origins = {o.lower() for o in settings.cors_origins}

    def allows(self, origin: str) -> bool:
        return self.any or origin.lower() in self.origins


def segment_cors(app: ASGIApp) -> ASGIApp:
    """CORS for the Segment endpoints only: a preflight from an allowed origin is answered
    here (204); every answer to an allowed origin names it; another origin is refused (403)
    before the endpoint runs. Requests without ``Origin`` (servers, SDKs) pass untouched."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"] not in SEGMENT_PATHS:
            await app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        if origin is None:
            await app(scope, receive, send)
            return
        policy: CorsPolicy = scope["app"].state.segment_cors
        allowed = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        if not policy.allows(origin.decode("latin-1")):
            await _refuse_origin(send)
            return
        if scope.get("method") == "OPTIONS":
            preflight: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    *allowed,
                    (b"access-control-allow-methods", b"POST, OPTIONS"),
                    (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                    (b"access-control-max-age", b"600"),
                ],
            }
            await send(preflight)
            await send(_body(b""))
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *allowed]}
            await send(message)

        await app(scope, receive, sending)

    return middleware


async def _refuse_origin(send: Send) -> None:
    body = ErrorBody(
        code="origin_not_allowed",
        message="this origin may not call the Segment endpoints (`[segment] cors_origins`); "
        "nothing was stored",
    )
    content = msgspec.json.encode(SegmentError(code=body.code, message=body.message, error=body))
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 403,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
        ],
    }
    await send(start)
    await send(_body(content))


def _body(content: bytes) -> HTTPResponseBodyEvent:
    return {"type": "http.response.body", "body": content, "more_body": False}
