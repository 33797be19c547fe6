"""Property-based requests generated from the OpenAPI schema: the API never answers 5xx.

Schemathesis reads the schema the app serves and generates valid and edge-case requests
for every operation (bodies, path and query parameters), sent in process over ASGI, with
a key that has every scope so the handlers themselves are exercised.
"""

from __future__ import annotations

import atexit
import hashlib
import tempfile
from typing import Any

import hypothesis
import msgspec
import schemathesis

from profilestore.api import create_app
from profilestore.config import ApiKey, ApiSettings, load_settings
from profilestore.store import open_store

KEY = "fuzz-key"

_home = tempfile.TemporaryDirectory()
atexit.register(_home.cleanup)
_settings = load_settings(environ={}, home=_home.name)
_settings = msgspec.structs.replace(
    _settings,
    api=msgspec.structs.replace(
        ApiSettings(),
        keys=[
            ApiKey(
                name="fuzz",
                sha256=hashlib.sha256(KEY.encode()).hexdigest(),
                scopes=["ingest", "read", "audit", "admin"],
            )
        ],
        max_batch=50,
    ),
)
_store = open_store(_settings)
atexit.register(_store.close)
_store.append(
    [
        {
            "type": "identifier.seen",
            "event_id": "seed-1",
            "customer_id": "ann",
            "occurred_at": "2026-05-01T12:00:00Z",
            "kind": "email",
            "value": "ann@example.com",
        },
    ]
)
_store.refresh()
app = create_app(_store)
schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app)


@schema.parametrize()
@hypothesis.settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_no_request_the_schema_allows_gets_a_server_error(case: Any) -> None:
    response = case.call(headers={"X-API-Key": KEY})
    assert response.status_code < 500, (response.status_code, response.text[:500])
