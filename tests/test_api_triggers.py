"""The HTTP API of the trigger engine and the outbox: the configured triggers, a
customer's decisions through identity resolution, deliveries by status, redrive; and
the engine's and the courier's counts on /metrics."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from test_api import KEYS, api_settings, headers

from profilestore.api import create_app
from profilestore.config import load_settings
from profilestore.store import ProfileStore, open_store


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: every delivery to it fails."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ProfileStore]:
    config = tmp_path / "profilestore.toml"
    config.write_text(
        "[delivery.endpoints.crm]\n"
        f'url = "http://127.0.0.1:{closed_port()}/hooks"\n'
        'secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]\n'
        "timeout_s = 1.0\n"
    )
    environ = {
        "PROFILESTORE_TRIGGERS__RECEIPT__ENABLED": "true",
        "PROFILESTORE_TRIGGERS__WELCOME__ENABLED": "true",
        "PROFILESTORE_DELIVERY__FILE": "{home}/outbox.jsonl",
        "PROFILESTORE_DELIVERY__RETRY_HORIZON_S": "0",  # the first failure is final
    }
    settings = load_settings(config, environ=environ, home=tmp_path / "home")
    with open_store(api_settings(settings)) as opened:
        opened.run_triggers()  # enabled before the events below
        yield opened


@pytest.fixture
def client(store: ProfileStore) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(store)) as test_client:
        yield test_client


def order(event_id: str, customer_id: str, order_id: str) -> dict[str, Any]:
    return {
        "type": "order.placed",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": "2026-03-02T11:00:00Z",
        "order_id": order_id,
        "items": [{"sku": "S1", "unit_price": "9.99"}],
        "total": "9.99",
        "currency": "EUR",
    }


def signed_up(event_id: str, customer_id: str) -> dict[str, Any]:
    return {
        "type": "identifier.linked",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": "2026-03-02T11:00:00Z",
        "kind": "email",
        "value": "ann@example.com",
    }


@pytest.fixture
def decided(store: ProfileStore) -> str:
    """A receipt fired for ``web-7`` (delivered to the file, dead at the webhook) and a
    welcome suppressed for ``pos/7`` (no consent), the two keys one profile; returns the
    receipt's message id."""
    store.append([order("o1", "web-7", "A-1"), signed_up("s1", "pos/7")])
    store.link("web-7", "pos/7", actor="test")
    store.run_triggers()
    report = store.deliver()
    assert report is not None and (report.delivered, report.dead) == (1, 1)
    [dead] = store.outbox("dead")
    return dead.message_id


PROTECTED = [
    ("GET", "/v1/triggers", "read"),
    ("GET", "/v1/triggers/outcomes/ann", "read"),
    ("GET", "/v1/outbox", "read"),
    ("POST", "/v1/outbox/msg_1/retry", "admin"),
]


@pytest.mark.parametrize(("method", "path", "scope"), PROTECTED)
def test_every_trigger_route_needs_a_key_with_its_scope(
    client: TestClient[Any], method: str, path: str, scope: str
) -> None:
    assert client.request(method, path).status_code == 401
    assert client.request(method, path, headers={"X-API-Key": "nope"}).status_code == 401
    lacking = "reader" if scope != "read" else "ingester"
    forbidden = client.request(method, path, headers=headers(lacking))
    assert forbidden.status_code == 403 and scope in forbidden.json()["error"]["message"]
    allowed = client.request(method, path, headers={"Authorization": f"Bearer {KEYS['all']}"})
    assert allowed.status_code not in (401, 403)


def test_the_configured_triggers_are_listed_enabled_or_not(client: TestClient[Any]) -> None:
    listed = client.get("/v1/triggers", headers=headers("reader"))
    assert listed.status_code == 200
    catalogue = {t["trigger"]: t for t in listed.json()}
    assert catalogue["receipt"]["enabled"] and catalogue["welcome"]["enabled"]
    assert not catalogue["birthday"]["enabled"]
    assert catalogue["receipt"]["transactional"] is True
    assert catalogue["receipt"]["reads"] == ["order.placed"]
    assert catalogue["welcome"]["purpose"] == "marketing"


def test_a_customers_decisions_are_read_through_identity_resolution(
    client: TestClient[Any], decided: str
) -> None:
    for key in ("pos%2F7", "web-7"):  # either key of the merged profile
        answer = client.get(f"/v1/triggers/outcomes/{key}", headers=headers("reader"))
        assert answer.status_code == 200
        outcomes = [(o["trigger"], o["customer_id"], o["status"]) for o in answer.json()]
        assert outcomes == [("receipt", "web-7", "fired"), ("welcome", "pos/7", "suppressed")]
    [fired, suppressed] = answer.json()
    assert fired["message_id"] == decided
    assert suppressed["code"] == "no_consent"
    nobody = client.get("/v1/triggers/outcomes/nobody", headers=headers("reader"))
    assert nobody.status_code == 200 and nobody.json() == []


def test_the_outbox_is_listed_by_status_and_a_dead_letter_redriven_once(
    client: TestClient[Any], store: ProfileStore, decided: str
) -> None:
    dead = client.get("/v1/outbox", params={"status": "dead"}, headers=headers("reader"))
    assert dead.status_code == 200
    [letter] = dead.json()
    assert (letter["message_id"], letter["destination"]) == (decided, "webhook:crm")
    assert letter["attempts"] == 1 and letter["last_error"].endswith("(retried until the horizon)")
    delivered = client.get("/v1/outbox", params={"status": "delivered"}, headers=headers())
    assert [d["destination"] for d in delivered.json()] == ["file"]
    assert client.get("/v1/outbox", headers=headers()).json() == []  # pending by default
    bad = client.get("/v1/outbox", params={"status": "lost"}, headers=headers())
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "status"
    too_many = client.get("/v1/outbox", params={"limit": 1001}, headers=headers())
    assert too_many.status_code == 400 and too_many.json()["error"]["field"] == "limit"

    retried = client.post(f"/v1/outbox/{decided}/retry", headers=headers())
    assert retried.status_code == 200
    assert retried.json() == {"message_id": decided, "redriven": 1}
    [pending] = client.get("/v1/outbox", headers=headers()).json()
    assert (pending["message_id"], pending["attempts"]) == (decided, 0)
    assert not store.outbox("dead")
    again = client.post(f"/v1/outbox/{decided}/retry", headers=headers())
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"


def test_metrics_count_the_engines_outcomes_and_the_couriers_deliveries(
    client: TestClient[Any], decided: str
) -> None:
    text = client.get("/metrics").text
    for line in (
        'profilestore_trigger_outcomes_total{reason="",status="fired",trigger="receipt"} 1.0',
        'profilestore_trigger_outcomes_total{reason="no_consent",status="suppressed",'
        'trigger="welcome"} 1.0',
        'profilestore_trigger_deliveries_total{result="delivered",trigger="receipt"} 1.0',
        'profilestore_trigger_deliveries_total{result="dead",trigger="receipt"} 1.0',
    ):
        assert line in text, line
    # Labels name triggers, statuses and reason codes: never a customer or a message.
    assert "web-7" not in text and "pos/7" not in text and decided not in text
