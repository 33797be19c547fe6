"""The outbox: fired messages delivered to a real HTTP receiver on 127.0.0.1, signed per
Standard Webhooks, retried, dead-lettered, redriven; and the JSON Lines file."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from profilestore.config import load_settings
from profilestore.store import ProfileStore, open_store

SECRET = "whsec_" + base64.b64encode(b"a secret of the receiver, 32 byt").decode()
TIMEOUT_S = 1.0
"""The endpoint's timeout: generous, as a loaded machine serves 8 requests at once slowly."""
HANG_S = 1.5
"""How long a hung answer takes (past the timeout)."""
OLD_SECRET = "whsec_" + base64.b64encode(b"the receiver's previous secret!!").decode()


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 64  # a backlog for every connection the courier opens at once
    daemon_threads = True


class Receiver:
    """A webhook receiver on 127.0.0.1: verifies every signature with standardwebhooks,
    counts deliveries by webhook-id, and answers from a script (then 200)."""

    def __init__(self, secret: str = SECRET) -> None:
        self.verifier = Webhook(secret)
        self.script: list[int | str] = []
        """Answers to give first: a status code, or "hang" (answer after the timeout)."""
        self.received: Counter[str] = Counter()
        self.bodies: dict[str, Any] = {}
        self.rejected = 0
        self.attempts = 0
        self.delay_s = 0.0
        """How long each answer takes."""
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                try:
                    self.answer(body)
                finally:
                    with receiver.lock:
                        receiver.in_flight -= 1

            def answer(self, body: bytes) -> None:
                with receiver.lock:
                    receiver.attempts += 1
                    answer = receiver.script.pop(0) if receiver.script else 200
                time.sleep(receiver.delay_s)
                if answer == "hang":
                    time.sleep(HANG_S)
                    answer = 200
                try:
                    payload = receiver.verifier.verify(body, dict(self.headers))
                except WebhookVerificationError:
                    with receiver.lock:
                        receiver.rejected += 1
                    answer = 400
                else:
                    if answer == 200:
                        message_id = self.headers["webhook-id"]
                        with receiver.lock:
                            receiver.received[message_id] += 1
                            receiver.bodies[message_id] = payload
                self.send_response(int(answer))
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


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


def shop(tmp_path: Path, receiver: Receiver, clock: Clock, **delivery: str) -> ProfileStore:
    environ = {
        "PROFILESTORE_TRIGGERS__RECEIPT__ENABLED": "true",
        "PROFILESTORE_DELIVERY__FILE": "{home}/outbox.jsonl",
        "PROFILESTORE_DELIVERY__RETRY_BASE_S": "0.01",
        "PROFILESTORE_DELIVERY__RETRY_MAX_S": "1",
        **{f"PROFILESTORE_DELIVERY__{k.upper()}": v for k, v in delivery.items()},
    }
    path = tmp_path / "profilestore.toml"
    path.write_text(
        "[delivery.endpoints.crm]\n"
        f'url = "{receiver.url}"\n'
        f'secrets = ["{SECRET}", "{OLD_SECRET}"]\n'
        f"timeout_s = {TIMEOUT_S}\n"
    )
    store = open_store(load_settings(path, environ=environ, home=tmp_path / "home"), clock=clock)
    store.run_triggers()
    clock.now += dt.timedelta(seconds=1)
    return store


def test_every_message_reaches_the_receiver_once_signed_and_the_file(
    tmp_path: Path, receiver: Receiver
) -> None:
    clock = Clock()
    with shop(tmp_path, receiver, clock) as store:
        store.append([order(f"o{i}", f"c{i % 3}", f"N-{i}") for i in range(20)])
        store.run_triggers()
        assert len(store.outbox("pending")) == 40  # the endpoint and the file
        report = store.deliver()
        assert report is not None and (report.delivered, report.retried) == (40, 0)
        assert store.deliver() is not None and not store.outbox("pending")
        assert receiver.rejected == 0
        assert len(receiver.received) == 20 and set(receiver.received.values()) == {1}
        assert store.tally.deliveries() == {("receipt", "delivered"): 40}
        lines = [
            json.loads(x) for x in (tmp_path / "home" / "outbox.jsonl").read_text().split("\n") if x
        ]
        assert {x["data"]["message_id"] for x in lines} == set(receiver.received)
        body = next(iter(receiver.bodies.values()))
        assert body["type"] == "trigger.receipt"
        assert body["data"]["payload"]["currency"] == "EUR"
        assert body["data"]["channel"] == "email" and body["data"]["transactional"] is True


@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_page_of_webhooks_is_sent_concurrency_at_a_time_each_once(
    tmp_path: Path, receiver: Receiver, concurrency: int
) -> None:
    receiver.delay_s = 0.05  # each answer takes a while: requests in flight overlap
    clock = Clock()
    with shop(tmp_path, receiver, clock, concurrency=str(concurrency), file="") as store:
        store.append([order(f"o{i}", f"c{i % 5}", f"N-{i}") for i in range(24)])
        store.run_triggers()
        report = store.deliver()
        assert report is not None and (report.delivered, report.retried) == (24, 0)
        assert not store.outbox("pending") and len(store.outbox("delivered")) == 24
    assert len(receiver.received) == 24 and set(receiver.received.values()) == {1}
    if concurrency == 1:
        assert receiver.most_in_flight == 1
    else:
        assert 1 < receiver.most_in_flight <= concurrency


def test_a_receiver_with_the_previous_secret_still_verifies(tmp_path: Path) -> None:
    old = Receiver(OLD_SECRET)
    try:
        with shop(tmp_path, old, Clock()) as store:
            store.append([order("o1", "ann", "A-1")])
            store.run_triggers()
            store.deliver()
            assert old.rejected == 0 and sum(old.received.values()) == 1
    finally:
        old.close()


def test_a_receiver_that_fails_times_out_and_recovers_gets_the_message_once_same_id(
    tmp_path: Path, receiver: Receiver
) -> None:
    clock = Clock()
    receiver.script = [500, "hang", 503]
    with shop(tmp_path, receiver, clock) as store:
        store.append([order("o1", "ann", "A-1")])
        store.run_triggers()
        errors = []
        for _ in range(3):
            store.deliver()
            [pending] = [d for d in store.outbox("pending") if d.destination == "webhook:crm"]
            errors.append(pending.last_error)
            assert pending.next_attempt_at > clock.now  # backs off
            clock.now = pending.next_attempt_at
        assert errors == ["500 Internal Server Error", "timed out", "503 Service Unavailable"]
        store.deliver()
        assert not store.outbox("pending")
        [delivered] = [d for d in store.outbox("delivered") if d.destination == "webhook:crm"]
        assert delivered.attempts == 4
        time.sleep(HANG_S - TIMEOUT_S + 0.5)  # the hung request has been answered, too late
        assert receiver.attempts == 4
        # The receiver took the hung request after the sender gave up on it, and the
        # retry: the same webhook-id both times, so deduping by it leaves one message.
        assert dict(receiver.received) == {delivered.message_id: 2}


def test_a_message_failing_past_the_horizon_is_a_dead_letter_and_can_be_redriven(
    tmp_path: Path, receiver: Receiver
) -> None:
    clock = Clock()
    receiver.script = [500] * 50
    with shop(tmp_path, receiver, clock, retry_horizon_s="5") as store:
        store.append([order("o1", "ann", "A-1")])
        store.run_triggers()
        for _ in range(50):
            store.deliver()
            pending = [d for d in store.outbox("pending") if d.destination == "webhook:crm"]
            if not pending:
                break
            clock.now = pending[0].next_attempt_at
        [dead] = store.outbox("dead")
        assert dead.last_error is not None and "retried until the horizon" in dead.last_error
        receiver.script = []
        assert store.redrive() == 1
        store.deliver()
        assert not store.outbox("dead") and list(receiver.received.values()) == [1]


def test_410_gone_disables_the_endpoint_until_a_redrive(tmp_path: Path, receiver: Receiver) -> None:
    clock = Clock()
    receiver.script = [410]
    with shop(tmp_path, receiver, clock) as store:
        store.append([order("o1", "ann", "A-1")])
        store.run_triggers()
        store.deliver()
        store.append([order("o2", "ann", "A-2")])
        store.run_triggers()
        store.deliver()
        dead = store.outbox("dead")
        assert len(dead) == 2 and receiver.attempts == 1
        assert dead[0].last_error is not None and "410" in dead[0].last_error
        assert dead[1].last_error is not None and dead[1].last_error.startswith("disabled")
        assert store.redrive() == 2
        store.deliver()
        assert len(receiver.received) == 2 and not store.outbox("dead")


def test_the_worker_delivers_in_real_time(tmp_path: Path, receiver: Receiver) -> None:
    from profilestore.worker import Worker

    with shop(tmp_path, receiver, Clock()) as store:
        store.clock = lambda: dt.datetime.now(dt.UTC)
        with Worker(store):
            store.append([order("o1", "ann", "A-1")])
            deadline = time.monotonic() + 10
            while not receiver.received:
                assert time.monotonic() < deadline, "not delivered within 10 s"
                time.sleep(0.01)
        assert list(receiver.received.values()) == [1]


def test_outbox_list_and_retry_on_the_command_line(tmp_path: Path, receiver: Receiver) -> None:
    from click.testing import CliRunner

    from profilestore.cli import main

    receiver.script = [410]
    with shop(tmp_path, receiver, Clock()) as store:
        store.append([order("o1", "ann", "A-1")])
        store.run_triggers()
        store.deliver()
        settings = store.settings
    config = str(tmp_path / "profilestore.toml")
    environ = {
        "PROFILESTORE_TRIGGERS__RECEIPT__ENABLED": "true",
        "PROFILESTORE_DELIVERY__FILE": "{home}/outbox.jsonl",
    }
    base = ["--config", config, "--home", str(settings.home), "outbox"]
    runner = CliRunner()
    listed = runner.invoke(main, [*base, "list", "--status", "dead"], env=environ)
    assert listed.exit_code == 0, listed.output
    [dead] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert dead["destination"] == "webhook:crm" and "410" in dead["last_error"]
    retried = runner.invoke(main, [*base, "retry", dead["message_id"]], env=environ)
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.stdout) == {"redriven": 1}
    missing = runner.invoke(main, [*base, "retry", "msg_nope"], env=environ)
    assert missing.exit_code == 1
