"""Web UI benchmark: render time of the customer-360 page for a customer with 1,000 events.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/web.py            # full run: 600 requests per variant
    .venv/bin/python bench/web.py --quick    # 150 per variant, well under a minute

One ``profilestore serve --role api`` process on 127.0.0.1 over an embedded store holding
a synthetic population (2,000 customers, fixed seed) plus one customer with exactly 1,000
events (page views, product views, carts, orders, e-mails, identifiers, consents) whose
every dataset is refreshed. A keep-alive client logged in through the form times, in
interleaved rounds and the same process:

- ``page_50``: ``GET /ui/profile`` (every section, identity, consent, triggers, and the
  timeline's first page of 50 events), HTML;
- ``page_1000``: the same with ``limit=1000``: the whole history on the page;
- baselines, the API's JSON for the same reads: ``GET /v1/profiles/{id}`` plus
  ``GET /v1/history/{id}?limit=50`` (``api_50``) or ``limit=1000`` (``api_1000``), two
  requests, as a client-side page would make them.

The target (issue 16) is a p95 under 100 ms. The ratio page/API says what the page's
extra reads (identity, triggers, consent per channel) and the HTML rendering cost beyond
the data. Prints one JSON object (progress on stderr) and writes it to
``bench/results/web.json`` (``--output`` to change).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/ holds http.py: this directory must not shadow the standard library's `http`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
REPO = _HERE.parent
sys.path.insert(0, str(REPO / "src"))

import httpx  # noqa: E402

from profilestore import load_settings, open_store  # noqa: E402
from profilestore.population import generate  # noqa: E402

KEY = "bench-web-key"
CUSTOMER = "bench-1000"
EVENTS = 1000


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def customer_events() -> list[dict[str, Any]]:
    """Exactly 1,000 events of one customer, spread over a year, of most kinds."""
    start = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    base = {"customer_id": CUSTOMER, "source": "bench"}
    events: list[dict[str, Any]] = [
        {**base, "type": "identifier.seen", "kind": "email", "value": "bench@example.com"},
        {**base, "type": "identifier.seen", "kind": "phone", "value": "+14155550199"},
        {**base, "type": "identifier.seen", "kind": "device", "value": "bench-device"},
        {**base, "type": "profile.name_set", "first_name": "Bench", "last_name": "Mark"},
        {**base, "type": "consent.given", "channel": "email", "purpose": "marketing"},
    ]
    i = 0
    while len(events) < EVENTS:
        kind = i % 10
        if kind < 5:
            events.append({**base, "type": "browse.page_viewed", "url": f"/p/{i}", "title": "P"})
        elif kind < 7:
            events.append(
                {**base, "type": "browse.product_viewed", "sku": f"S{i % 40}", "price": "9.99"}
            )
        elif kind == 7:
            events.append(
                {
                    **base,
                    "type": "cart.item_added",
                    "cart_id": f"k{i // 50}",
                    "sku": f"S{i}",
                    "unit_price": "9.99",
                    "currency": "EUR",
                }
            )
        elif kind == 8 and i % 50 == 8:
            events.append(
                {
                    **base,
                    "type": "order.placed",
                    "order_id": f"O{i}",
                    "cart_id": f"k{i // 50}",
                    "items": [{"sku": f"S{i}", "unit_price": "9.99"}],
                    "total": "9.99",
                    "currency": "EUR",
                }
            )
        else:
            events.append(
                {**base, "type": "email.sent", "message_id": f"m{i}", "campaign": "weekly"}
            )
        i += 1
    for n, event in enumerate(events):
        event["event_id"] = f"bench-{n:04d}"
        event["occurred_at"] = (start + dt.timedelta(hours=8 * n)).isoformat()
    return events[:EVENTS]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples, 0.50) * 1000, 2),
        "p95_ms": round(percentile(samples, 0.95) * 1000, 2),
        "p99_ms": round(percentile(samples, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(samples) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="customer-360 page render time")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "web.json")
    args = parser.parse_args()
    per_variant = 150 if args.quick else 600
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    env = os.environ | {
        "PROFILESTORE_API__KEYS": f'[{{name="bench", sha256="{digest}", scopes=["read", "audit"]}}]'
    }
    with tempfile.TemporaryDirectory() as workdir:
        home = Path(workdir) / "home"
        _log("building the store (2,000 customers and one with 1,000 events)")
        with open_store(load_settings(home=home, environ=env)) as store:
            population = list(generate(2000, seed=7, events_per_customer=20))
            for at in range(0, len(population), 1000):
                store.append(population[at : at + 1000])
            store.append(customer_events())
            store.refresh()
            assert len(store.history(CUSTOMER)) == EVENTS
        port = _free_port()
        script = Path(sys.executable).parent / "profilestore"
        server = subprocess.Popen(
            [str(script), "--home", str(home), "serve", "--role", "api", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not become ready"
                time.sleep(0.05)
            results = measure(base, per_variant)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    report = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": {
            "cpu": _cpu(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "customer_events": EVENTS,
        "requests_per_variant": per_variant,
        "client": "httpx, one keep-alive connection, sequential, same machine",
        **results,
        "target_p95_ms": 100,
        "target_met": results["page_50"]["p95_ms"] < 100,
    }
    text = json.dumps(report, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")


def measure(base: str, per_variant: int) -> dict[str, Any]:
    with httpx.Client(base_url=base, timeout=30) as client:
        form = client.get("/ui/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        logged = client.post("/ui/login", data={"key": KEY, "csrf": token.group(1), "next": "/ui"})
        assert logged.status_code == 303, logged.text
        api = {"X-API-Key": KEY}

        def page(limit: int) -> None:
            answer = client.get("/ui/profile", params={"id": CUSTOMER, "limit": str(limit)})
            assert answer.status_code == 200 and answer.text.count('class="event"') == min(
                limit, EVENTS
            ), answer.status_code

        def api_reads(limit: int) -> None:
            profile = client.get(f"/v1/profiles/{CUSTOMER}", headers=api)
            history = client.get(f"/v1/history/{CUSTOMER}?limit={limit}", headers=api)
            assert profile.status_code == 200 and len(history.json()["events"]) == limit

        variants = {
            "page_50": lambda: page(50),
            "api_50": lambda: api_reads(50),
            "page_1000": lambda: page(1000),
            "api_1000": lambda: api_reads(1000),
        }
        for run in variants.values():  # warm up every path
            for _ in range(10):
                run()
        samples: dict[str, list[float]] = {name: [] for name in variants}
        rounds = 10
        for r in range(rounds):
            for name, run in variants.items():
                for _ in range(per_variant // rounds):
                    started = time.perf_counter()
                    run()
                    samples[name].append(time.perf_counter() - started)
            _log(f"round {r + 1}/{rounds}")
        size = len(client.get("/ui/profile", params={"id": CUSTOMER}).content)
    found: dict[str, Any] = {name: summary(s) for name, s in samples.items()}
    found["page_50"]["bytes"] = size
    found["ratio_p95_page_over_api_50"] = round(
        found["page_50"]["p95_ms"] / found["api_50"]["p95_ms"], 2
    )
    found["ratio_p95_page_over_api_1000"] = round(
        found["page_1000"]["p95_ms"] / found["api_1000"]["p95_ms"], 2
    )
    return found


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
