"""The HTTP API in process: every route, every error, keys and scopes, logs, metrics."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from litestar.testing import TestClient
from poisoning import poison

from profilestore.api import create_app, openapi_document
from profilestore.config import ApiKey, ApiSettings, Settings
from profilestore.errors import DocumentsUnavailable, LogUnavailable
from profilestore.store import ProfileStore, open_store

REPO = Path(__file__).parent.parent
KEYS = {
    "all": "key-all",
    "reader": "key-reader",
    "ingester": "key-ingester",
    "eraser": "key-eraser",
}
SCOPES = {
    "all": ["ingest", "read", "audit", "admin", "identity"],
    "eraser": ["erasure"],
    "reader": ["read"],
    "ingester": ["ingest"],
}


def headers(who: str = "all") -> dict[str, str]:
    return {"X-API-Key": KEYS[who]}


def event(event_id: str, customer_id: str = "ann", **fields: Any) -> dict[str, Any]:
    return {
        "type": "cart.item_added",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": "2026-05-01T12:00:00Z",
        "cart_id": "k1",
        "sku": "S1",
        "unit_price": "12.50",
        "currency": "EUR",
    } | fields


def seen(event_id: str, customer_id: str, kind: str, value: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "identifier.seen",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": "2026-05-01T12:00:00Z",
        "kind": kind,
        "value": value,
    } | fields


def api_settings(settings: Settings, **changes: Any) -> Settings:
    keys = [
        ApiKey(name=who, sha256=hashlib.sha256(key.encode()).hexdigest(), scopes=SCOPES[who])  # type: ignore[arg-type]
        for who, key in KEYS.items()
    ]
    api = msgspec.structs.replace(ApiSettings(), keys=keys, **changes)
    return msgspec.structs.replace(settings, api=api)


@pytest.fixture
def store(settings: Settings) -> Iterator[ProfileStore]:
    with open_store(api_settings(settings, max_batch=5, max_body_bytes=20_000)) as opened:
        yield opened


@pytest.fixture
def client(store: ProfileStore) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(store)) as test_client:
        yield test_client


def post_events(client: TestClient[Any], events: list[Any], who: str = "all") -> Any:
    return client.post("/v1/events", json={"events": events}, headers=headers(who))


# --- keys and scopes ------------------------------------------------------------------------

PROTECTED = [
    ("POST", "/v1/events", "ingest"),
    ("GET", "/v1/profiles/ann", "read"),
    ("GET", "/v1/profiles?email=ann@example.com", "read"),
    ("GET", "/v1/history/ann", "audit"),
    ("GET", "/v1/status", "admin"),
    ("GET", "/v1/status/partitions", "admin"),
]


@pytest.mark.parametrize(("method", "path", "scope"), PROTECTED)
def test_every_data_route_needs_a_key_with_its_scope(
    client: TestClient[Any], method: str, path: str, scope: str
) -> None:
    body = {"json": {"events": []}} if method == "POST" else {}
    missing = client.request(method, path, **body)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("ApiKey")
    unknown = client.request(method, path, headers={"X-API-Key": "nope"}, **body)
    assert unknown.status_code == 401
    lacking = "reader" if scope != "read" else "ingester"
    forbidden = client.request(method, path, headers=headers(lacking), **body)
    assert forbidden.status_code == 403
    assert scope in forbidden.json()["error"]["message"]
    bearer = client.request(
        method, path, headers={"Authorization": f"Bearer {KEYS['all']}"}, **body
    )
    assert bearer.status_code not in (401, 403)


def test_anonymous_scopes_open_routes_without_a_key(settings: Settings) -> None:
    with (
        open_store(api_settings(settings, anonymous_scopes=["read"])) as opened,
        TestClient(create_app(opened)) as client,
    ):
        assert client.get("/v1/profiles/ann").status_code == 404  # allowed, just absent
        assert client.post("/v1/events", json={"events": []}).status_code == 401
        assert client.get("/v1/profiles/ann", headers={"X-API-Key": "nope"}).status_code == 401


def test_health_and_metrics_need_no_key(client: TestClient[Any]) -> None:
    assert client.get("/health/live").json() == {"status": "ok"}
    assert client.get("/health/ready").json() == {"status": "ready", "outdated": []}
    assert client.get("/metrics").status_code == 200


# --- events ---------------------------------------------------------------------------------


def test_appending_says_what_was_new_and_what_was_a_duplicate(
    client: TestClient[Any], store: ProfileStore
) -> None:
    first = post_events(client, [event("e1"), event("e2")])
    assert first.status_code == 200
    assert first.json() == {"appended": 2, "duplicates": 0, "duplicate_event_ids": []}
    again = post_events(client, [event("e2"), event("e3")])
    assert again.json() == {"appended": 1, "duplicates": 1, "duplicate_event_ids": ["e2"]}
    assert store.head() == 3


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        ({"quantity": 0}, "events[2].quantity", "Expected `int` >= 1"),
        ({"unit_price": "-1"}, "events[2].unit_price", "must be an amount from 0 to"),
        ({"unit_price": "1E+1000000"}, "events[2].unit_price", "must be an amount from 0 to"),
        ({"unit_price": "0.00001"}, "events[2].unit_price", "at most 4 decimal places"),
        ({"currency": "euro"}, "events[2].currency", "regex"),
        ({"type": "cart.exploded"}, "events[2].type", "Invalid value"),
        ({"quantity": "2"}, "events[2].quantity", "Expected `int`, got `str`"),
        ({"customer_id": "ann\u0000"}, "events[2].customer_id", "regex"),
        ({"cart_id": "k\t1"}, "events[2].cart_id", "regex"),
    ],
)
def test_an_invalid_event_rejects_the_batch_with_422_naming_the_field(
    client: TestClient[Any], store: ProfileStore, bad: dict[str, Any], field: str, reason: str
) -> None:
    response = post_events(client, [event("ok1"), event("ok2"), event("bad", **bad)])
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"], error["index"]) == ("invalid_event", field, 2)
    assert reason in error["reason"]
    assert "nothing of it was appended" in error["message"]
    assert store.head() == 0


def test_batches_over_the_limit_get_422_and_bodies_over_it_413(
    client: TestClient[Any], store: ProfileStore
) -> None:
    too_many = post_events(client, [event(f"e{i}") for i in range(6)])
    assert too_many.status_code == 422
    assert too_many.json()["error"] == too_many.json()["error"] | {
        "code": "batch_too_large",
        "field": "events",
    }
    huge = client.post(
        "/v1/events",
        headers=headers() | {"Content-Type": "application/json"},
        content=b'{"events": [' + b" " * 30_000 + b"]}",
    )
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "body_too_large"
    assert store.head() == 0


def test_a_number_literal_out_of_range_is_refused_as_by_the_cli(
    client: TestClient[Any], store: ProfileStore
) -> None:
    # The CLI refuses `1e400` (an amount over the maximum); the API's JSON parser refuses it
    # before validation (400 "Number out of range"): neither stores it.
    body = json.dumps({"events": [event("e1")]}).replace('"12.50"', "1e400")
    response = client.post(
        "/v1/events",
        headers=headers() | {"Content-Type": "application/json"},
        content=body.encode(),
    )
    assert response.status_code in (400, 422)
    assert store.head() == 0


MALFORMED_BODIES = [
    b"{not json",
    b"",
    b"null",
    b"[]",
    b'{"events": 3}',
    b'{"evnts": []}',
    b'{"events": [\xff]}',
    b'{"events": ["\\ud800"]}',
    b'{"events": [' + b"[" * 1000 + b"]" * 1000 + b"]}",  # 2 KB: was a 500 (RecursionError)
    b"[" * 9000 + b"]" * 9000,
    b'{"events": [{"metadata": ' + b'{"a": ' * 2000 + b"1" + b"}" * 2001 + b"]}",
]


@pytest.mark.parametrize("body", MALFORMED_BODIES, ids=lambda body: repr(body[:24]))
def test_every_malformed_body_gets_a_json_error_and_appends_nothing(
    client: TestClient[Any], store: ProfileStore, body: bytes
) -> None:
    response = client.post(
        "/v1/events", headers=headers() | {"Content-Type": "application/json"}, content=body
    )
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] in ("invalid_request", "invalid_event")
    assert error["message"]
    assert store.head() == 0


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "text/json"]
)
def test_events_must_be_sent_as_application_json(
    client: TestClient[Any], store: ProfileStore, content_type: str | None
) -> None:
    body = json.dumps({"events": [event("e1")]}).encode()
    sent = {} if content_type is None else {"Content-Type": content_type}
    response = client.post("/v1/events", headers=headers() | sent, content=body)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert store.head() == 0
    anonymous = client.post("/v1/events", headers=sent, content=body)
    assert anonymous.status_code == 401  # who may ingest is checked first
    charset = {"Content-Type": "application/json; charset=utf-8"}
    assert client.post("/v1/events", headers=headers() | charset, content=body).status_code == 200


# --- profiles -------------------------------------------------------------------------------


def test_a_profile_by_id_has_sections_and_a_freshness_block_per_dataset(
    client: TestClient[Any], store: ProfileStore
) -> None:
    post_events(client, [event("e1"), seen("i1", "ann", "email", "Ann@Example.com")])
    store.refresh()
    client.app.state.freshness.refresh()
    post_events(client, [event("e2", sku="S2")])  # not refreshed yet
    client.app.state.freshness.refresh()
    response = client.get("/v1/profiles/ann", headers=headers("reader"))
    assert response.status_code == 200
    body = response.json()
    assert set(body["sections"]) == {"carts", "identities"}
    assert body["sections"]["carts"]["open"][0]["value"] == "12.50"
    carts = body["freshness"]["carts"]
    assert (carts["position"], carts["dataset_position"], carts["events_behind"]) == (1, 2, 1)
    assert carts["seconds_behind"] >= 0
    assert body["freshness"]["identities"]["events_behind"] == 0
    only = client.get("/v1/profiles/ann?datasets=identities", headers=headers())
    assert set(only.json()["sections"]) == {"identities"}


def test_unknown_customers_and_datasets_get_json_errors(
    client: TestClient[Any], store: ProfileStore
) -> None:
    missing = client.get("/v1/profiles/nobody", headers=headers())
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"code": "not_found", "message": "no profile for customer 'nobody'"}
    }
    bad = client.get("/v1/profiles/ann?datasets=cart", headers=headers())
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "unknown_dataset"


@pytest.mark.parametrize("selection", [",,,", "", " , ", ","])
def test_a_dataset_selection_naming_none_is_400_naming_the_parameter(
    client: TestClient[Any], store: ProfileStore, selection: str
) -> None:
    post_events(client, [event("e1"), seen("i1", "ann", "email", "ann@example.com")])
    store.refresh()
    for path, query in (("/v1/profiles/ann", {}), ("/v1/profiles", {"email": "ann@example.com"})):
        response = client.get(path, params={**query, "datasets": selection}, headers=headers())
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert (error["code"], error["field"]) == ("invalid_request", "datasets")
        assert "`datasets` names no dataset" in error["message"]
    unknown = client.get("/v1/profiles/ann", params={"datasets": "carts,nope"}, headers=headers())
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "unknown_dataset"
    spaced = client.get("/v1/profiles/ann", params={"datasets": " carts,,"}, headers=headers())
    assert set(spaced.json()["sections"]) == {"carts"}


def test_profiles_are_found_by_any_identifier_normalised(
    client: TestClient[Any], store: ProfileStore
) -> None:
    post_events(
        client,
        [
            seen("1", "ann", "email", "Ann@Example.com"),
            seen("2", "ann", "phone", "+33 1 23 45 67 89"),
            seen("3", "ann", "handle", "@AnnLee", network="instagram"),
            seen("4", "ann", "device", "dev-9"),
        ],
    )
    family = ["bob", "cat", "dan", "eve", "fay", "gus"]  # more than shared_after.email: shared
    for half in (family[:3], family[3:]):  # max_batch is 5 here
        post_events(client, [seen(f"5{who}", who, "email", "family@example.com") for who in half])
    post_events(
        client,
        [
            seen("8", "hal", "email", "hal@example.com"),
            seen("9", "ivy", "email", "hal@example.com"),
        ],
    )
    store.refresh()
    pair = client.get("/v1/profiles?email=hal@example.com", headers=headers())
    assert pair.status_code == 200  # two keys sharing an email: linked into one profile
    assert pair.json()["canonical_id"].startswith("~")
    member = client.get("/v1/profiles/ivy", headers=headers()).json()
    assert (member["customer_id"], member["canonical_id"]) == ("ivy", pair.json()["canonical_id"])
    for query in (
        "email=ANN@example.com",
        "phone=%2B33123456789",
        "handle=instagram:annlee",
        "device=dev-9",
    ):
        found = client.get(f"/v1/profiles?{query}&datasets=identities", headers=headers())
        assert found.status_code == 200, query
        assert found.json()["customer_id"] == "ann"
    shared = client.get("/v1/profiles?email=family@example.com", headers=headers())
    assert shared.status_code == 409, shared.text
    assert shared.json()["error"]["code"] == "ambiguous_identifier"
    assert "customer id" in shared.json()["error"]["message"]
    assert not any(who in shared.text for who in family)  # no other customers' ids
    assert "family@example.com" not in shared.text
    assert client.get("/v1/profiles?email=x@example.com", headers=headers()).status_code == 404
    post_events(client, [seen("7", "ann", "device", "null")])  # a placeholder: valid, kept by none
    store.refresh()
    assert client.get("/v1/profiles?device=null", headers=headers()).status_code == 404
    assert client.get("/v1/profiles?email=not-an-email", headers=headers()).status_code == 400
    assert client.get("/v1/profiles", headers=headers()).status_code == 400
    two = client.get("/v1/profiles?email=a@b.co&device=d", headers=headers())
    assert two.status_code == 400


def test_handles_whose_network_and_handle_concatenate_alike_are_two_identifiers(
    client: TestClient[Any], store: ProfileStore
) -> None:
    post_events(
        client,
        [
            seen("1", "ann", "handle", "ann", network="twit:ter"),
            seen("2", "bob", "handle", "ter:ann", network="twit"),
        ],
    )
    store.refresh()
    for written, holder in (("twit%3Ater:ann", "ann"), ("twit:ter:ann", "bob")):
        found = client.get("/v1/profiles", params={"handle": written}, headers=headers())
        assert found.status_code == 200, found.text
        assert found.json()["customer_id"] == holder


ODD_IDS = [
    "a/b",
    "a/",
    "/a",
    "a//b",
    "100%",
    "a%2Fb",
    "with space ",
    "é ü 漢字 🙂",
    "..",
    ".",
    "a/../b",
    "x?y#z;w",
    "victim/history",
    "history",
]


def encoded(customer_id: str) -> str:
    """A path segment naming ``customer_id`` as any client should send it."""
    return quote(customer_id, safe="").replace(".", "%2E")


def test_every_id_accepted_at_ingest_addresses_its_profile_and_history_and_nothing_else(
    client: TestClient[Any], store: ProfileStore
) -> None:
    ids = ["victim", *ODD_IDS]
    for n, customer_id in enumerate(ids):  # one by one: the fixture's batches hold 5
        assert post_events(client, [event(f"e{n}", customer_id)]).status_code == 200
    store.refresh()
    for customer_id in ids:
        profile = client.get(f"/v1/profiles/{encoded(customer_id)}", headers=headers())
        assert profile.status_code == 200, (customer_id, profile.text)
        assert profile.json()["customer_id"] == customer_id
        history = client.get(f"/v1/history/{encoded(customer_id)}", headers=headers())
        assert history.status_code == 200, (customer_id, history.text)
        assert [e["customer_id"] for e in history.json()["events"]] == [customer_id]
    # The old history path is now a profile path: of customer "victim/history".
    shadow = client.get("/v1/profiles/victim%2Fhistory", headers=headers("reader"))
    assert shadow.json()["customer_id"] == "victim/history"
    assert "events" not in shadow.json()


# --- history and status ---------------------------------------------------------------------


def test_history_pages_through_a_customers_events_oldest_first(
    client: TestClient[Any],
) -> None:
    post_events(client, [event(f"e{i}", metadata={"actor": "pos-7"}) for i in range(5)])
    first = client.get("/v1/history/ann?limit=2", headers=headers()).json()
    assert [e["event_id"] for e in first["events"]] == ["e0", "e1"]
    assert first["events"][0]["metadata"] == {
        "correlation_id": None,
        "causation_id": None,
        "actor": "pos-7",
    }
    assert first["events"][0]["recorded_at"] is not None
    assert first["next_after"] == 2
    last = client.get("/v1/history/ann?after=4&limit=2", headers=headers()).json()
    assert [e["event_id"] for e in last["events"]] == ["e4"]
    assert last["next_after"] is None
    assert client.get("/v1/history/nobody", headers=headers()).status_code == 404
    assert client.get("/v1/history/ann?limit=0", headers=headers()).status_code == 400


def test_status_has_the_same_facts_as_the_cli(client: TestClient[Any], store: ProfileStore) -> None:
    post_events(client, [event("e1")])
    store.refresh(["carts"])
    rows = {r["dataset"]: r for r in client.get("/v1/status", headers=headers()).json()}
    assert rows["carts"]["last_run"]["status"] == "succeeded"
    assert rows["carts"]["cadence"] == "realtime"
    assert rows["orders"]["lag"]["events_behind"] == 0


def test_ready_fails_when_a_store_does_not_answer(
    client: TestClient[Any], store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> int:
        raise ConnectionError("down")

    monkeypatch.setattr(store._log, "head", broken)
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "reason": "ConnectionError"}


def test_an_unavailable_document_store_is_503_with_retry_after_and_no_driver_details(
    client: TestClient[Any], store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> Any:
        raise DocumentsUnavailable("sqlite", "aget_raw", "OperationalError")

    monkeypatch.setattr(store._documents, "aget_raw", broken)
    response = client.get("/v1/profiles/ann", headers=headers())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    body = response.json()["error"]
    assert body["code"] == "unavailable"
    assert "document store" in body["message"]
    assert "sqlite" not in body["message"] and "OperationalError" not in body["message"]


def test_an_unavailable_event_log_is_503_with_retry_after_and_no_driver_details(
    client: TestClient[Any], store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise LogUnavailable("PostgreSQL", "read", ConnectionError("password=s3cret"))

    monkeypatch.setattr(store._log, "customer_changes", broken)
    response = client.get("/v1/history/ann", headers=headers())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    body = response.json()["error"]
    assert body["code"] == "unavailable"
    assert "event log" in body["message"]
    assert "PostgreSQL" not in body["message"] and "ConnectionError" not in body["message"]
    assert "s3cret" not in response.text


# --- observability --------------------------------------------------------------------------


def test_metrics_count_events_and_requests_by_route_template(
    client: TestClient[Any], store: ProfileStore
) -> None:
    post_events(client, [event("e1"), event("e2")])
    post_events(client, [event("e2")])
    post_events(client, [event("bad", quantity=0)])
    client.get("/v1/profiles/ann", headers=headers())
    client.app.state.freshness.refresh_status()
    text = client.get("/metrics").text
    assert "profilestore_events_ingested_total 2.0" in text
    assert "profilestore_events_duplicate_total 1.0" in text
    assert 'route="/v1/profiles/{customer_id}"' in text
    assert 'profilestore_projection_lag_events{dataset="carts"} 2.0' in text
    assert "ann" not in text


def test_logs_name_routes_never_identifiers_keys_or_bodies(
    client: TestClient[Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="profilestore.access"):
        post_events(client, [seen("s1", "cust-secret", "email", "secret@example.com")])
        client.get("/v1/profiles?email=secret@example.com", headers=headers())
        client.get("/v1/profiles/cust-secret", headers=headers())
    records = [r for r in caplog.records if r.name == "profilestore.access"]
    assert [(r.method, r.route, r.status) for r in records] == [  # type: ignore[attr-defined]
        ("POST", "/v1/events", 200),
        ("GET", "/v1/profiles", 404),
        ("GET", "/v1/profiles/{customer_id}", 404),
    ]
    logged = json.dumps([vars(r) for r in caplog.records], default=str)
    for secret in ("secret@example.com", "cust-secret", KEYS["all"]):
        assert secret not in logged


def test_committed_openapi_schema_matches_the_app(store: ProfileStore) -> None:
    committed = json.loads((REPO / "openapi.json").read_text())
    current = json.loads(msgspec.json.encode(openapi_document(create_app(store))))
    assert current == committed, (
        "the API changed: if intended, run `profilestore openapi > openapi.json` and commit it"
    )


@pytest.mark.mongo_wire
def test_profiles_are_served_from_mongodb_through_the_async_client(
    settings: Settings, mongo_wire_uri: str
) -> None:
    import uuid

    from pymongo import MongoClient

    database = f"profilestore_api_{uuid.uuid4().hex[:8]}"
    on_mongo = msgspec.structs.replace(
        api_settings(settings),
        documents=msgspec.structs.replace(
            settings.documents, url=f"{mongo_wire_uri.rstrip('/')}/{database}"
        ),
    )
    try:
        with open_store(on_mongo) as opened, TestClient(create_app(opened)) as client:
            post_events(client, [event("e1"), seen("i1", "ann", "email", "Ann@Example.com")])
            opened.refresh(["carts", "identities"])
            by_id = client.get("/v1/profiles/ann", headers=headers())
            assert by_id.status_code == 200
            assert by_id.json()["sections"]["carts"]["open"][0]["value"] == "12.50"
            by_email = client.get("/v1/profiles?email=ann@example.com", headers=headers())
            assert by_email.json()["customer_id"] == "ann"
            assert opened._documents._async_client is not None  # the async path served it
    finally:
        cleanup: MongoClient[dict[str, Any]] = MongoClient(mongo_wire_uri)
        cleanup.drop_database(database)
        cleanup.close()


def test_a_profile_as_of_a_time_is_refolded_from_the_events_known_then(
    client: TestClient[Any], store: ProfileStore
) -> None:
    post_events(client, [event("e1")])
    store.refresh()
    (first,) = store.history("ann")
    assert first.recorded_at is not None
    then = first.recorded_at.isoformat()
    post_events(client, [event("e2", sku="S2")])
    store.refresh()
    now = client.get("/v1/profiles/ann?datasets=carts", headers=headers()).json()
    assert len(now["sections"]["carts"]["open"][0]["lines"]) == 2
    past = client.get(
        "/v1/profiles/ann", params={"datasets": "carts", "as_of": then}, headers=headers()
    )
    assert past.status_code == 200
    assert len(past.json()["sections"]["carts"]["open"][0]["lines"]) == 1
    assert past.json()["freshness"]["carts"]["position"] == 1
    before = client.get(
        "/v1/profiles/ann", params={"as_of": "2000-01-01T00:00:00Z"}, headers=headers()
    )
    assert before.status_code == 404
    naive = client.get(
        "/v1/profiles/ann", params={"as_of": "2026-01-01T00:00:00"}, headers=headers()
    )
    assert naive.status_code == 400


def test_a_profile_as_of_with_an_event_the_fold_refuses_is_409_naming_it_not_500(
    client: TestClient[Any], store: ProfileStore
) -> None:
    post_events(client, [event("e1"), seen("i1", "ann", "email", "ann@example.com")])
    poison(store, "carts", {"e1"})
    as_of = {"as_of": "2100-01-01T00:00:00Z"}
    response = client.get("/v1/profiles/ann", params=as_of, headers=headers())
    assert response.status_code == 409
    error = response.json()["error"]
    assert (error["code"], error["reason"]) == ("fold_failed", "ValueError")
    assert all(part in error["message"] for part in ("'ann'", "'carts'", "'e1'", "cart.item_added"))
    others = client.get(
        "/v1/profiles/ann", params=as_of | {"datasets": "identities"}, headers=headers()
    )
    assert others.status_code == 200


# --- identity -------------------------------------------------------------------------------


def test_links_are_made_undone_and_explained_with_the_identity_scope(
    client: TestClient[Any], store: ProfileStore
) -> None:
    post_events(client, [event("1", "web-7"), event("2", "pos/7", cart_id="k2")])
    store.refresh()
    body = {"key": "web-7", "other": "pos/7", "reason": "same card"}
    refused = client.post("/v1/identity/links", json=body, headers=headers("reader"))
    assert refused.status_code == 403
    made = client.post("/v1/identity/links", json=body, headers=headers())
    assert made.status_code == 200, made.text
    profile_id = made.json()["profile_id"]
    assert made.json()["appended"] == 1 and profile_id.startswith("~")
    again = client.post("/v1/identity/links", json=body, headers=headers())
    assert again.json() == {"profile_id": profile_id, "appended": 0}

    merged = client.get("/v1/profiles/pos%2F7", headers=headers("reader")).json()
    assert (merged["customer_id"], merged["canonical_id"]) == ("pos/7", profile_id)
    explained = client.get("/v1/identity/profiles/pos%2F7", headers=headers("reader"))
    assert explained.status_code == 200
    explanation = explained.json()
    assert explanation["canonical_id"] == profile_id
    assert sorted(explanation["keys"]) == ["pos/7", "web-7"]
    (link,) = explanation["links"]
    assert (link["actor"], link["reason"], link["status"]) == ("api:all", "same card", "active")

    undone = client.delete(
        "/v1/identity/links",
        params={"key": "web-7", "other": "pos/7", "reason": "two people"},
        headers=headers(),
    )
    assert undone.status_code == 200 and undone.json() == {"profile_id": "web-7", "appended": 1}
    alone = client.get("/v1/profiles/web-7", headers=headers()).json()
    assert alone["canonical_id"] == "web-7"
    missing = client.delete(
        "/v1/identity/links", params={"key": "web-7", "other": "nobody"}, headers=headers()
    )
    assert missing.status_code == 400
    assert missing.json()["error"] == {
        "code": "invalid_link",
        "message": "`other` no event names this customer key",
        "field": "other",
        "reason": "no event names this customer key",
    }
    self_link = client.post(
        "/v1/identity/links", json={"key": "web-7", "other": "web-7"}, headers=headers()
    )
    assert self_link.status_code == 400 and self_link.json()["error"]["field"] == "other"


def test_consent_answers_may_we_contact_with_the_deciding_event(
    client: TestClient[Any], store: ProfileStore
) -> None:
    consent = {
        "type": "consent.given",
        "event_id": "c-9",
        "customer_id": "a/b",
        "occurred_at": "2026-05-01T12:00:00Z",
        "channel": "sms",
        "purpose": "service",
    }
    post_events(client, [consent])
    store.refresh()
    answer = client.get(
        "/v1/consent/a%2Fb", params={"channel": "sms", "purpose": "service"}, headers=headers()
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["allowed"], body["reason"], body["decided_by"]) == (True, "granted", "c-9")
    unknown = client.get("/v1/consent/a%2Fb", params={"channel": "email"}, headers=headers())
    assert unknown.json()["allowed"] is False
    assert unknown.json()["reason"] == "no decision recorded"
    bad = client.get("/v1/consent/a%2Fb", params={"channel": "fax"}, headers=headers())
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "channel"


def test_metrics_count_trigger_outcomes_by_reason_and_deliveries(
    store: ProfileStore, client: TestClient[Any]
) -> None:
    store.tally.outcome("welcome", "suppressed", "no_consent")
    store.tally.outcome("welcome", "suppressed", "no_consent")
    store.tally.outcome("receipt", "fired", None)
    store.tally.delivery("receipt", "retried")
    text = client.get("/metrics").text
    assert (
        'profilestore_trigger_outcomes_total{reason="no_consent",status="suppressed",'
        'trigger="welcome"} 2.0'
    ) in text
    assert (
        'profilestore_trigger_outcomes_total{reason="",status="fired",trigger="receipt"} 1.0'
        in text
    )
    assert 'profilestore_trigger_deliveries_total{result="retried",trigger="receipt"} 1.0' in text


# --- erasure --------------------------------------------------------------------------------


def test_delete_forgets_a_customer_with_the_erasure_scope_only(client: TestClient[Any]) -> None:
    assert (
        post_events(
            client, [event("e1"), seen("i1", "ann", "email", "ann@example.com")]
        ).status_code
        == 200
    )
    assert post_events(client, [event("e2", "bob")]).status_code == 200
    # The erasure scope is its own: every other key is refused.
    refused = client.delete("/v1/profiles/ann?request_id=R1", headers=headers("all"))
    assert refused.status_code == 403
    missing = client.delete("/v1/profiles/ann", headers=headers("eraser"))
    assert missing.status_code == 400
    done = client.delete("/v1/profiles/ann?request_id=R1", headers=headers("eraser"))
    assert done.status_code == 200, done.text
    receipt = done.json()
    assert receipt["request_id"] == "R1" and receipt["data_keys_destroyed"] == 1
    assert "ann@example.com" not in done.text
    again = client.delete("/v1/profiles/ann?request_id=R1", headers=headers("eraser"))
    assert again.json() == receipt  # the same request, the same receipt
    gone = client.get("/v1/profiles/ann", headers=headers())
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "erased"
    retried = post_events(client, [event("e3"), event("e4", "bob")])
    assert retried.status_code == 409
    assert retried.json()["error"]["field"] == "events[0].customer_id"
    listed = client.get("/v1/erasures", headers=headers())
    assert [r["request_id"] for r in listed.json()] == ["R1"]
    assert client.get("/v1/erasures", headers=headers("reader")).status_code == 403
