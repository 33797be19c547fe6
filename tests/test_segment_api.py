"""The Segment-compatible endpoints in process: write keys, gzip, CORS, answer codes,
per-message rejection, metrics, logs, and identity through the store."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import zlib
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from profilestore.api import create_app
from profilestore.config import ApiKey, ApiSettings, SegmentSettings, Settings, load_settings
from profilestore.errors import ConfigError, LogUnavailable
from profilestore.store import ProfileStore, open_store

WRITE_KEY = "write-key"
READ_KEY = "read-key"
LIMIT = 20_000
ORIGIN = "https://shop.example"


def settings_with(settings: Settings, origins: list[str] | None = None, **api: Any) -> Settings:
    keys = [
        ApiKey(
            name="web", sha256=hashlib.sha256(WRITE_KEY.encode()).hexdigest(), scopes=["ingest"]
        ),
        ApiKey(
            name="reader", sha256=hashlib.sha256(READ_KEY.encode()).hexdigest(), scopes=["read"]
        ),
    ]
    return msgspec.structs.replace(
        settings,
        api=msgspec.structs.replace(ApiSettings(), keys=keys, max_body_bytes=LIMIT, **api),
        segment=SegmentSettings(cors_origins=[ORIGIN] if origins is None else origins),
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[ProfileStore]:
    with open_store(settings_with(settings)) as opened:
        yield opened


@pytest.fixture
def client(store: ProfileStore) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(store)) as test_client:
        yield test_client


def basic(user: str, password: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def track(message_id: str, user: str = "u-1", **fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": "Clicked", "messageId": message_id} | fields


def post_batch(client: TestClient[Any], messages: list[Any], **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", basic(WRITE_KEY))
    return client.post(
        "/v1/batch", content=json.dumps({"batch": messages}), headers=headers, **kwargs
    )


def stored(store: ProfileStore, key: str) -> list[str]:
    return [e.type_name for e in store.history(key)]


# --- write keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        basic(WRITE_KEY),  # the SDKs: the write key as the user name, no password
        basic("", WRITE_KEY),
        {"X-API-Key": WRITE_KEY},
        {"Authorization": f"Bearer {WRITE_KEY}"},
    ],
    ids=["basic-user", "basic-password", "x-api-key", "bearer"],
)
def test_a_write_key_in_a_header_is_an_api_key_with_the_ingest_scope(
    client: TestClient[Any], store: ProfileStore, headers: dict[str, str]
) -> None:
    answer = post_batch(client, [track("m-1")], headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"success": True, "appended": 1, "duplicates": 0, "rejected": []}
    assert store.history("u-1")[0].metadata.actor == "segment:web"  # type: ignore[union-attr]


def test_a_write_key_in_the_body_is_read_when_no_header_has_one(
    client: TestClient[Any], store: ProfileStore
) -> None:
    body = {"batch": [track("m-1")], "writeKey": WRITE_KEY}
    assert client.post("/v1/batch", content=json.dumps(body)).status_code == 200
    # A header key wins: the SDKs send both, and one given on purpose is the one meant.
    refused = client.post("/v1/batch", content=json.dumps(body), headers={"X-API-Key": "not-a-key"})
    assert refused.status_code == 401
    assert stored(store, "u-1") == ["activity.tracked"]


@pytest.mark.parametrize(
    ("headers", "body_key", "status", "code"),
    [
        ({}, None, 401, "unauthorized"),
        (basic("nope"), None, 401, "unauthorized"),
        ({}, "nope", 401, "unauthorized"),
        (basic(READ_KEY), None, 403, "forbidden"),
        ({"Authorization": "Basic not-base64!"}, None, 401, "unauthorized"),
    ],
)
def test_without_a_valid_ingest_key_nothing_is_stored_and_the_sdk_is_told_why(
    client: TestClient[Any],
    store: ProfileStore,
    headers: dict[str, str],
    body_key: str | None,
    status: int,
    code: str,
) -> None:
    body: dict[str, Any] = {"batch": [track("m-1")]}
    if body_key:
        body["writeKey"] = body_key
    answer = client.post("/v1/batch", content=json.dumps(body), headers=headers)
    assert answer.status_code == status
    # code and message on top, as the SDKs read them; the API's error object beside them
    assert answer.json()["code"] == answer.json()["error"]["code"] == code
    assert answer.json()["message"]
    assert stored(store, "u-1") == []


def test_anonymous_ingest_needs_no_key(settings: Settings) -> None:
    opened = open_store(settings_with(settings, anonymous_scopes=["ingest"]))
    with opened, TestClient(create_app(opened)) as client:
        assert post_batch(client, [track("m-1")], headers={}).status_code == 200
        assert opened.history("u-1")[0].metadata.actor == "segment:anonymous"  # type: ignore[union-attr]


# --- the endpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message", "made"),
    [
        (
            "/v1/track",
            {"userId": "u", "event": "Product Viewed", "properties": {"sku": "S"}},
            "browse.product_viewed",
        ),
        ("/v1/identify", {"userId": "u", "traits": {"firstName": "Ann"}}, "profile.name_set"),
        ("/v1/page", {"userId": "u", "properties": {"url": "https://x/"}}, "browse.page_viewed"),
        ("/v1/screen", {"userId": "u", "name": "Home"}, "browse.page_viewed"),
        ("/v1/group", {"userId": "u", "groupId": "g"}, "activity.tracked"),
        ("/v1/alias", {"userId": "u", "previousId": "p"}, "identity.linked"),
    ],
)
def test_each_single_call_endpoint_implies_its_call(
    client: TestClient[Any], store: ProfileStore, path: str, message: dict[str, Any], made: str
) -> None:
    answer = client.post(path, content=json.dumps(message), headers=basic(WRITE_KEY))
    assert answer.status_code == 200 and answer.json()["rejected"] == []
    assert made in stored(store, "u")


def test_any_content_type_is_read_as_json_as_browsers_send_text_plain(
    client: TestClient[Any], store: ProfileStore
) -> None:
    answer = post_batch(
        client, [track("m-1")], headers=basic(WRITE_KEY) | {"Content-Type": "text/plain"}
    )
    assert answer.status_code == 200
    assert stored(store, "u-1") == ["activity.tracked"]


def test_a_retried_batch_stores_nothing_twice(client: TestClient[Any], store: ProfileStore) -> None:
    messages = [track("m-1"), track("m-2", anonymousId="a-1")]
    first = post_batch(client, messages).json()
    again = post_batch(client, messages).json()
    assert (first["appended"], first["duplicates"]) == (3, 0)  # two tracks, one device
    assert (again["appended"], again["duplicates"]) == (0, 3)
    assert len(store.history("u-1")) == 3


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[1, 2]", b'{"batch": {"type": "track"}}', b"\xff\xfe", b"[" * 5000],
    ids=["empty", "not-json", "array", "batch-not-a-list", "not-utf8", "too-deep"],
)
def test_a_body_that_is_no_batch_is_400_and_dropped_by_the_sdk(
    client: TestClient[Any], content: bytes
) -> None:
    answer = client.post("/v1/batch", content=content, headers=basic(WRITE_KEY))
    assert answer.status_code == 400
    assert answer.json()["code"] == "invalid_request"


# --- per-message validation -----------------------------------------------------------------


def test_one_bad_message_does_not_fail_its_valid_siblings(
    client: TestClient[Any], store: ProfileStore
) -> None:
    messages = [
        track("m-0"),
        {"type": "identify", "userId": "u-1", "messageId": "m-1", "traits": {"phone": "12"}},
        track("m-2", event="Product Added", properties={"sku": "S", "price": -5}),
        "not a message",
        {"type": "identify", "userId": "u-1", "messageId": "m-4", "traits": {"email": "a@b.co"}},
    ]
    answer = post_batch(client, messages)
    assert answer.status_code == 200
    body = answer.json()
    assert body["appended"] == 2
    assert [(r["index"], r["type"], r["field"]) for r in body["rejected"]] == [
        (1, "identify", "traits.phone"),
        (2, "track", "properties.price"),
        (3, "unknown", "$"),
    ]
    assert all(r["reason"] for r in body["rejected"])
    assert stored(store, "u-1") == ["activity.tracked", "identifier.seen"]
    metrics = client.get("/metrics").text
    assert 'profilestore_segment_rejected_total{type="identify"} 1.0' in metrics
    assert 'profilestore_segment_rejected_total{type="track"} 1.0' in metrics
    assert 'profilestore_segment_rejected_total{type="unknown"} 1.0' in metrics
    assert 'profilestore_segment_messages_total{type="track"} 2.0' in metrics


def test_personal_data_is_never_in_an_answer_or_a_log(
    client: TestClient[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    messages = [
        {
            "type": "identify",
            "userId": "person-7",
            "traits": {"phone": "private-555", "email": "x@"},
        },
        {"type": "track", "userId": "anon:person-8", "event": "E"},
    ]
    answer = post_batch(client, messages)
    assert len(answer.json()["rejected"]) == 3
    logged = "\n".join(r.getMessage() + json.dumps(vars(r), default=str) for r in caplog.records)
    for secret in ("private-555", "x@", "person-7", "person-8", WRITE_KEY):
        assert secret not in answer.text
        assert secret not in logged


# --- gzip -------------------------------------------------------------------------------------


def gzipped(messages: list[Any]) -> bytes:
    return gzip.compress(json.dumps({"batch": messages}).encode())


def test_a_gzip_body_is_read(client: TestClient[Any], store: ProfileStore) -> None:
    answer = client.post(
        "/v1/batch",
        content=gzipped([track("m-1")]),
        headers=basic(WRITE_KEY) | {"Content-Encoding": "gzip"},
    )
    assert answer.status_code == 200
    assert stored(store, "u-1") == ["activity.tracked"]


def test_gzip_members_one_after_another_are_one_body(
    client: TestClient[Any], store: ProfileStore
) -> None:
    document = json.dumps({"batch": [track("m-1")]}).encode()
    half = len(document) // 2
    content = gzip.compress(document[:half]) + gzip.compress(document[half:])
    answer = client.post(
        "/v1/batch", content=content, headers=basic(WRITE_KEY) | {"Content-Encoding": "gzip"}
    )
    assert answer.status_code == 200
    assert stored(store, "u-1") == ["activity.tracked"]


def test_the_size_limit_holds_once_decompressed_and_a_gzip_bomb_is_refused(
    client: TestClient[Any], store: ProfileStore
) -> None:
    padding = LIMIT - len(json.dumps({"batch": [track("m-1")]}))
    at_limit = json.dumps({"batch": [track("m-1")]}).encode()[:-1] + b" " * padding + b"}"
    assert len(at_limit) == LIMIT
    headers = basic(WRITE_KEY) | {"Content-Encoding": "gzip"}
    assert (
        client.post("/v1/batch", content=gzip.compress(at_limit), headers=headers).status_code
        == 200
    )
    over = at_limit[:-1] + b" }"
    answer = client.post("/v1/batch", content=gzip.compress(over), headers=headers)
    assert (answer.status_code, answer.json()["code"]) == (413, "body_too_large")
    bomb = gzip.compress(b"{" + b" " * 15_000_000 + b"}", compresslevel=9)
    assert len(bomb) < LIMIT  # small on the wire: only inflating shows what it is
    answer = client.post("/v1/batch", content=bomb, headers=headers)
    assert (answer.status_code, answer.json()["code"]) == (413, "body_too_large")
    assert len(store.history("u-1")) == 1


@pytest.mark.parametrize(
    ("content", "encoding", "status"),
    [
        (b"not gzip at all", "gzip", 400),
        (gzip.compress(b'{"batch": []}')[:-9], "gzip", 400),  # truncated
        (gzip.compress(b'{"batch": []}') + b"trailing", "gzip", 400),
        (zlib.compress(b'{"batch": []}'), "br", 415),
    ],
    ids=["not-gzip", "truncated", "trailing-garbage", "unknown-encoding"],
)
def test_a_body_that_does_not_decode_is_refused(
    client: TestClient[Any], content: bytes, encoding: str, status: int
) -> None:
    answer = client.post(
        "/v1/batch", content=content, headers=basic(WRITE_KEY) | {"Content-Encoding": encoding}
    )
    assert answer.status_code == status
    assert answer.json()["error"]["code"] in ("invalid_request", "unsupported_media_type")


# --- CORS -------------------------------------------------------------------------------------


def preflight(client: TestClient[Any], origin: str, path: str = "/v1/batch") -> Any:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_a_preflight_from_an_allowed_origin_is_answered(client: TestClient[Any]) -> None:
    for path in ("/v1/batch", "/v1/track", "/v1/identify"):
        answer = preflight(client, ORIGIN, path)
        assert answer.status_code == 204
        assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "POST" in answer.headers["Access-Control-Allow-Methods"]
        allowed = answer.headers["Access-Control-Allow-Headers"]
        assert "authorization" in allowed and "content-encoding" in allowed
        assert answer.headers["Vary"] == "Origin"


def test_an_allowed_origins_answers_name_it(client: TestClient[Any]) -> None:
    answer = post_batch(client, [track("m-1")], headers=basic(WRITE_KEY) | {"Origin": ORIGIN})
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    refused = post_batch(client, [], headers={"Origin": ORIGIN})  # errors too: readable
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_another_origin_is_refused_even_for_a_simple_post(
    client: TestClient[Any], store: ProfileStore
) -> None:
    assert preflight(client, "https://evil.example").status_code == 403
    # text/plain posts are not preflighted by browsers: refused here all the same.
    answer = post_batch(
        client,
        [track("m-1")],
        headers=basic(WRITE_KEY) | {"Origin": "https://evil.example", "Content-Type": "text/plain"},
    )
    assert (answer.status_code, answer.json()["code"]) == (403, "origin_not_allowed")
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert stored(store, "u-1") == []


def test_no_origin_is_allowed_by_default_and_star_allows_any(settings: Settings) -> None:
    default = open_store(
        msgspec.structs.replace(settings_with(settings), segment=SegmentSettings())
    )
    with default, TestClient(create_app(default)) as client:
        assert preflight(client, ORIGIN).status_code == 403
        assert post_batch(client, [track("m-1")]).status_code == 200  # servers send no Origin
    opened = open_store(settings_with(settings, origins=["*"]))
    with opened, TestClient(create_app(opened)) as client:
        assert preflight(client, "https://anywhere.example").status_code == 204


def test_cors_is_for_the_segment_endpoints_only(client: TestClient[Any]) -> None:
    answer = client.options("/v1/events", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_a_cors_origin_that_is_not_one_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"cors_origins\[1\].*segment"):
        load_settings(
            environ={"PROFILESTORE_SEGMENT__CORS_ORIGINS": '["https://a.example", "a.example/x"]'}
        )


# --- failures the SDKs retry ------------------------------------------------------------------


def test_an_unavailable_log_is_503_with_retry_after_and_the_retry_stores_once(
    client: TestClient[Any], store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store._log.append

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise LogUnavailable("PostgreSQL", "append", ConnectionError("password=s3cret"))

    monkeypatch.setattr(store._log, "append", broken)
    answer = post_batch(client, [track("m-1")])
    assert answer.status_code == 503  # retried by every SDK
    assert answer.headers["Retry-After"] == "1"
    assert answer.json()["code"] == "unavailable"
    assert "s3cret" not in answer.text and "PostgreSQL" not in answer.text
    monkeypatch.setattr(store._log, "append", real)
    assert post_batch(client, [track("m-1")]).json()["appended"] == 1
    assert post_batch(client, [track("m-1")]).json()["duplicates"] == 1


def test_a_failure_of_ours_is_500_which_the_sdks_retry(
    client: TestClient[Any], store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(store._log, "append", broken)
    answer = post_batch(client, [track("m-1")])
    assert (answer.status_code, answer.json()["code"]) == (500, "internal_error")
    assert "bug" not in answer.text


# --- identity -----------------------------------------------------------------------------------


def test_a_visitor_who_signs_up_is_one_profile_and_an_alias_names_the_write_key(
    client: TestClient[Any], store: ProfileStore
) -> None:
    messages = [
        {"type": "page", "anonymousId": "a-9", "properties": {"url": "https://x/"}},
        {
            "type": "identify",
            "userId": "u-9",
            "anonymousId": "a-9",
            "traits": {"email": "ann@example.com"},
        },
        {"type": "alias", "userId": "u-9", "previousId": "crm-9"},
    ]
    assert post_batch(client, messages).json()["rejected"] == []
    store.refresh()
    anonymous = client.get("/v1/profiles/anon:a-9", headers={"X-API-Key": READ_KEY}).json()
    known = client.get("/v1/profiles/u-9", headers={"X-API-Key": READ_KEY}).json()
    assert anonymous["canonical_id"] == known["canonical_id"] != "u-9"
    assert known["sections"]["browsing"]["page_views"][0]["url"] == "https://x/"
    links = store.explain("u-9").links
    assert {(link.rule, link.actor) for link in links if link.status == "active"} == {
        ("shared-device", None),
        (None, "segment:web"),
    }
