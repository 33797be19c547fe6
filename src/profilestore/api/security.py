"""API keys and scopes: who may call which route; keys are compared by digest."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException
from litestar.handlers import BaseRouteHandler

from profilestore.config import ApiKey, Scope

API_KEY_HEADER = "X-API-Key"


# --- authentication ---------------------------------------------------------------------------


class Keys:
    """API keys by digest; comparison is constant-time."""

    def __init__(self, keys: list[ApiKey], anonymous: list[Scope]) -> None:
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


def presented_key(
    connection: ASGIConnection[Any, Any, Any, Any], *, basic: bool = False
) -> str | None:
    """The key in ``X-API-Key`` or ``Authorization: Bearer``; with ``basic``, also the user
    name (else the password) of ``Authorization: Basic``, as Segment's SDKs send a write key."""
    key = connection.headers.get(API_KEY_HEADER)
    if key:
        return key
    authorization = connection.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    if basic and scheme.lower() == "basic" and token:
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user or password or None
    return None


def authorize(
    connection: ASGIConnection[Any, Any, Any, Any], presented: str | None, scope: Scope
) -> str | None:
    """The client's name for a presented key (None: anonymous access): 401 without a valid
    key (when one is needed), 403 without ``scope``."""
    keys: Keys = connection.app.state.api_keys
    granted = keys.scopes(presented)
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
    return name


def require(
    scope: Scope,
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]:
    """A guard: 401 without a valid key (when one is needed), 403 without ``scope``."""

    # async: Litestar runs a sync guard on a thread pool, a round trip per request.
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        authorize(connection, presented_key(connection), scope)

    return guard
