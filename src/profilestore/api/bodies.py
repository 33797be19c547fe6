"""Request and response bodies of the HTTP API, and the JSON error shape."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import ClientException, HTTPException

from profilestore.events import AnyEvent

log = logging.getLogger(__name__)


# --- bodies ---------------------------------------------------------------------------------


class EventBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A batch of events: all are appended, or none."""

    events: list[AnyEvent]


class _RawBatch(msgspec.Struct, frozen=True):
    events: list[msgspec.Raw]


class RedriveResponse(msgspec.Struct, frozen=True):
    """What a redrive did: the message's dead deliveries queued again."""

    message_id: str
    redriven: int


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
    outdated: bool = False
    """The section was built by another projection version than the server runs; a
    background rebuild replaces it (see ``GET /v1/status``)."""


class ProfileResponse(msgspec.Struct, frozen=True):
    customer_id: str
    """The key (or id) asked for."""
    canonical_id: str | None
    """The profile's id: the canonical id of a merged profile (``~...``), else the key."""
    sections: dict[str, Any]
    freshness: dict[str, DatasetFreshness]


class LinkRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Two customer keys to make one profile."""

    key: str
    other: str
    reason: str | None = None


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


class JsonRequest(Request[Any, Any, Any]):
    """A request whose body is read as JSON only when it says it is JSON, and whose
    decoding fails as the client's mistake however the body is malformed.

    msgspec decodes an untyped body recursively: an array nested ~1,000 deep (2 KB)
    raises RecursionError, which is no less a malformed body than a missing bracket.
    """

    async def json(self) -> Any:
        media_type, _ = self.content_type
        if media_type != "application/json":
            raise HTTPException(
                status_code=415,
                detail="send the body as application/json (Content-Type: application/json)",
            )
        if not await self.body():
            raise ClientException(detail='the body is empty; send {"events": [...]}')
        try:
            return await super().json()
        except RecursionError:
            raise ClientException(detail="the JSON body is nested too deeply") from None
