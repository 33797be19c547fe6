"""End to end: `profilestore serve` as a real process on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

KEY = "e2e-key"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_serve_ingests_over_http_and_shows_real_time_datasets(tmp_path: Path) -> None:
    port = free_port()
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    env = os.environ | {
        "PROFILESTORE_API__KEYS": f'[{{name="e2e", sha256="{digest}", '
        'scopes=["ingest", "read", "admin"]}]',
    }
    script = Path(sys.executable).parent / "profilestore"
    server = subprocess.Popen(
        [str(script), "--home", str(tmp_path / "home"), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"X-API-Key": KEY}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not become ready"
                time.sleep(0.05)
            appended = client.post(
                "/v1/events",
                json={
                    "events": [
                        {
                            "type": "identifier.seen",
                            "event_id": "e1",
                            "customer_id": "c-1",
                            "occurred_at": "2026-05-01T12:00:00Z",
                            "kind": "email",
                            "value": "E@x.co",
                        },
                        {
                            "type": "cart.item_added",
                            "event_id": "e2",
                            "customer_id": "c-1",
                            "occurred_at": "2026-05-01T12:01:00Z",
                            "cart_id": "k",
                            "sku": "S",
                            "unit_price": "3.00",
                            "currency": "USD",
                        },
                    ]
                },
            )
            assert appended.json() == {"appended": 2, "duplicates": 0, "duplicate_event_ids": []}
            deadline = time.monotonic() + 10
            while True:  # the follower applies carts and identities in real time
                found = client.get("/v1/profiles", params={"email": "e@x.co"})
                if found.status_code == 200 and "carts" in found.json()["sections"]:
                    break
                assert time.monotonic() < deadline, found.text
                time.sleep(0.02)
            profile = client.get("/v1/profiles/c-1").json()
            assert profile["sections"]["carts"]["open"][0]["value"] == "3.00"
            assert profile["freshness"]["carts"]["position"] == 2
            status = {r["dataset"]: r for r in client.get("/v1/status").json()}
            assert status["carts"]["running_holder"] is not None  # the follower holds it
    finally:
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=30)
    assert server.returncode == 0, log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry.get("logger") == "profilestore.access"]
    assert {entry["route"] for entry in access} >= {
        "/v1/events",
        "/v1/profiles",
        "/v1/profiles/{customer_id}",
    }
    assert "e@x.co" not in log and KEY not in log
    assert any("Application shutdown complete" in entry.get("message", "") for entry in lines)
