"""Errors to HTTP answers: the one place status codes are chosen."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from profilestore.api.bodies import ErrorResponse, _error
from profilestore.api.security import API_KEY_HEADER
from profilestore.errors import (
    AmbiguousIdentifier,
    BatchTooLarge,
    CustomerErased,
    DocumentsUnavailable,
    FoldFailed,
    InvalidArgument,
    InvalidEvent,
    InvalidIdentifier,
    InvalidLink,
    LeaseHeld,
    LogUnavailable,
    NoDatasetSelected,
    NotEncrypted,
    ProfileStoreError,
    StoreClosed,
    UnknownDataset,
)

log = logging.getLogger(__name__)
_ITEM = re.compile(r"^events\[(\d+)\](.*)$")
_LEADING_FIELD = re.compile(r"^`(\w+)`")

# --- errors ---------------------------------------------------------------------------------


def handle_invalid_event(_: Request[Any, Any, Any], error: InvalidEvent) -> Response[ErrorResponse]:
    return _error(
        422, "invalid_event", str(error), field=error.field, index=error.index, reason=error.reason
    )


def handle_validation(
    _: Request[Any, Any, Any], error: ValidationException
) -> Response[ErrorResponse]:
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


def handle_not_found(_: Request[Any, Any, Any], error: Exception) -> Response[ErrorResponse]:
    detail = error.detail if isinstance(error, HTTPException) else str(error)
    return _error(404, "not_found", detail)


def handle_ambiguous(
    _: Request[Any, Any, Any], error: AmbiguousIdentifier
) -> Response[ErrorResponse]:
    return _error(409, "ambiguous_identifier", str(error))


def handle_profilestore(
    _: Request[Any, Any, Any], error: ProfileStoreError
) -> Response[ErrorResponse]:
    if isinstance(error, BatchTooLarge):
        return _error(422, "batch_too_large", str(error), field="events")
    if isinstance(error, NoDatasetSelected):
        return _error(400, "invalid_request", str(error), field="datasets")
    if isinstance(error, UnknownDataset):
        return _error(400, "unknown_dataset", str(error), field="datasets")
    if isinstance(error, InvalidIdentifier):
        return _error(400, "invalid_request", str(error), field=error.kind, reason=error.reason)
    if isinstance(error, InvalidArgument):
        code = "invalid_link" if isinstance(error, InvalidLink) else "invalid_request"
        return _error(400, code, str(error), field=error.field, reason=error.reason)
    if isinstance(error, StoreClosed):
        return _error(503, "unavailable", str(error))
    if isinstance(error, CustomerErased):
        if error.index is not None:
            field = f"events[{error.index}].customer_id"
            return _error(409, "customer_erased", str(error), field=field, index=error.index)
        return _error(410, "erased", str(error))
    if isinstance(error, NotEncrypted):
        return _error(409, "not_encrypted", str(error))
    if isinstance(error, LeaseHeld):
        # Another process is busy with what the request needs (the identity graph):
        # transient, so retrying is right.
        response = _error(503, "busy", "the store is busy with this request's data; retry")
        response.headers["Retry-After"] = "1"
        return response
    if isinstance(error, FoldFailed):
        # The request is fine; the customer's history holds an event the fold refuses.
        return _error(409, "fold_failed", str(error), reason=error.failure.error)
    if isinstance(error, (LogUnavailable, DocumentsUnavailable)):
        return handle_unavailable(error)
    return _error(500, "internal_error", "the request failed; see the server log")


def handle_unavailable(error: LogUnavailable | DocumentsUnavailable) -> Response[ErrorResponse]:
    # The backend, operation and driver class go to the operator's log only: a client needs
    # to know that retrying is right, not which database failed or how.
    log.warning("%s", error)
    store = "event log" if isinstance(error, LogUnavailable) else "document store"
    response = _error(503, "unavailable", f"the {store} is unavailable; retry in a moment")
    response.headers["Retry-After"] = "1"
    return response


def handle_http(_: Request[Any, Any, Any], error: HTTPException) -> Response[ErrorResponse]:
    codes = {
        400: "invalid_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "body_too_large",
        415: "unsupported_media_type",
    }
    response = _error(error.status_code, codes.get(error.status_code, "http_error"), error.detail)
    if error.status_code == 401:
        response.headers["WWW-Authenticate"] = f'ApiKey header="{API_KEY_HEADER}"'
    return response


def handle_unexpected(_: Request[Any, Any, Any], error: Exception) -> Response[ErrorResponse]:
    log.error("unhandled %s", type(error).__name__, exc_info=error)
    return _error(500, "internal_error", "the request failed; see the server log")
