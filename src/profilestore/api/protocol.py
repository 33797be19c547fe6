"""The HTTP/1.1 protocol ``serve`` runs uvicorn with: uvicorn's own, answering in the API's
JSON error shape when it refuses a request before the app sees it.

uvicorn's parser refuses malformed HTTP and a request line with headers over its limit
(about 64 KiB with httptools; the h11 fallback is given the same limit) with a plain-text
400. Subclassing its two protocols is the only hook for that answer: it is written on the
socket by the protocol itself, below ASGI, so no middleware or handler ever runs.
"""

from __future__ import annotations

import asyncio

import h11
import msgspec
from uvicorn.protocols.http.h11_impl import H11Protocol

from profilestore.api.bodies import ErrorBody, ErrorResponse

MAX_REQUEST_HEAD_BYTES = 64 * 1024
"""The request line and headers together: what httptools accepts, set on h11 to match."""

REFUSED = msgspec.json.encode(
    ErrorResponse(
        ErrorBody(
            code="invalid_request",
            message="the request is not valid HTTP/1.1, or its request line and headers "
            f"exceed {MAX_REQUEST_HEAD_BYTES // 1024} KiB; nothing was done",
        )
    )
)


class JsonH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=REFUSED),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")


def protocol_class() -> type[asyncio.Protocol]:
    """httptools when installed (as uvicorn's ``auto``), else h11; both answer JSON."""
    try:
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a dependency where it builds
        return JsonH11Protocol

    class JsonHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            head = [STATUS_LINE[400]]
            for name, value in self.server_state.default_headers:
                head.extend([name, b": ", value, b"\r\n"])
            head.append(
                b"content-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % len(REFUSED)
            )
            self.transport.write(b"".join(head) + REFUSED)
            self.transport.close()

    return JsonHttpToolsProtocol
