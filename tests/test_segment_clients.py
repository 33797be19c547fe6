"""The real Segment-compatible SDKs against `profilestore serve` on 127.0.0.1.

`segment-analytics-python` and `rudder-sdk-python` (PyPI, in the test extras) and
`@segment/analytics-node` (npm: `tests/segment_node/`, installed by the fixture below into
a cache keyed by its lockfile) send identify, track, page, alias and a 500-event burst,
unmodified, pointed at the server's address. Every event must be stored exactly once,
also when a proxy in front of the server answers 503 (once before the request reaches the
server, once after the server stored it) and the SDK retries.

What is stored is read back over the API (`GET /v1/history/{key}`): each event's
`metadata.correlation_id` is the Segment `messageId` it came from.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import unavailable
from test_serve import free_port

WRITE_KEY = "segment-write-key"
AUDIT_KEY = "segment-audit-key"
NODE_PACKAGE = Path(__file__).parent / "segment_node"
NODE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "profilestore"

pytestmark = pytest.mark.slow


# --- the server, and a proxy that fails on purpose ------------------------------------------


class Server:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, headers={"X-API-Key": AUDIT_KEY}, timeout=10)

    def events(self, key: str) -> list[dict[str, Any]]:
        """Every event stored under one customer key, oldest first."""
        found: list[dict[str, Any]] = []
        after = 0
        while True:
            answer = self.http.get(f"/v1/history/{key}", params={"after": after, "limit": 1000})
            if answer.status_code == 404:
                return found
            assert answer.status_code == 200, answer.text
            page = answer.json()
            found += page["events"]
            if page["next_after"] is None:
                return found
            after = page["next_after"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`profilestore serve --role api`: the API alone, as it runs behind a load balancer."""
    port = free_port()
    keys = [("sdk", WRITE_KEY, '["ingest"]'), ("auditor", AUDIT_KEY, '["audit", "read"]')]
    entries = ", ".join(
        f'{{name="{name}", sha256="{hashlib.sha256(key.encode()).hexdigest()}", scopes={scopes}}}'
        for name, key, scopes in keys
    )
    script = Path(sys.executable).parent / "profilestore"
    home = tmp_path_factory.mktemp("segment-clients") / "home"
    process = subprocess.Popen(
        [str(script), "--home", str(home), "serve", "--role", "api", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PROFILESTORE_API__KEYS": f"[{entries}]"},
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
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.05)
        running = Server(base)
        yield running
        running.http.close()
    finally:
        # The SDKs keep one HTTP session per process: closed here, not left to exit.
        from rudderstack.analytics import request as rudder_request
        from segment.analytics import request as segment_request

        segment_request._session.close()
        rudder_request._session.close()
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=30)
    assert process.returncode == 0, log[-3000:]
    # Personal data never reaches the log: the identify traits sent below are not in it.
    assert "@example.com" not in log and "Xiomara" not in log and WRITE_KEY not in log


class FailingProxy:
    """Forwards to the server, but answers the first requests with 503 as a load
    balancer would: ``refuse`` without forwarding, ``lose`` after forwarding (the server
    stored the batch; its answer is lost)."""

    def __init__(self, upstream: str, plan: list[str]) -> None:
        self.upstream = upstream
        self.plan = list(plan)
        self.seen: list[str] = []
        self.answers: list[dict[str, Any]] = []
        """The server's answers to the requests forwarded (``lose`` and ``pass``)."""
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    action = proxy.plan.pop(0) if proxy.plan else "pass"
                    proxy.seen.append(action)
                if action != "refuse":
                    forwarded = httpx.post(
                        proxy.upstream + self.path,
                        content=body,
                        headers={
                            k: v
                            for k, v in self.headers.items()
                            if k.lower() in ("authorization", "content-type", "content-encoding")
                        },
                        timeout=30,
                    )
                    with proxy.lock:
                        proxy.answers.append(forwarded.json())
                    if action == "pass":
                        self._answer(forwarded.status_code, forwarded.content)
                        return
                self._answer(503, b"upstream unavailable")

            def _answer(self, status: int, content: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self) -> FailingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join()


# --- what every SDK sends ---------------------------------------------------------------------


def scenario(tag: str) -> list[tuple[str, dict[str, Any]]]:
    """A visitor browses anonymously, signs up, buys, aliases an old id: (call, arguments)
    in Segment's names; each SDK spells them its own way."""
    user, anonymous = f"{tag}-user", f"{tag}-device"
    return [
        (
            "page",
            {
                "anonymousId": anonymous,
                "name": "Home",
                "properties": {"url": "https://shop.example/", "title": "Home"},
                "messageId": f"{tag}-m1",
            },
        ),
        (
            "track",
            {
                "anonymousId": anonymous,
                "event": "Product Viewed",
                "properties": {"product_id": "P1", "name": "Mug", "price": 19.99},
                "messageId": f"{tag}-m2",
            },
        ),
        (
            "identify",
            {
                "userId": user,
                "anonymousId": anonymous,
                "traits": {"email": f"{tag}@example.com", "firstName": "Xiomara", "plan": "pro"},
                "messageId": f"{tag}-m3",
            },
        ),
        (
            "track",
            {
                "userId": user,
                "event": "Order Completed",
                "properties": {
                    "order_id": f"{tag}-o1",
                    "total": 19.99,
                    "currency": "EUR",
                    "products": [{"product_id": "P1", "price": 19.99, "quantity": 1}],
                },
                "messageId": f"{tag}-m4",
            },
        ),
        (
            "track",
            {
                "userId": user,
                "event": "Video Played",
                "properties": {"video": {"id": "v1", "seconds": 42}},
                "messageId": f"{tag}-m5",
            },
        ),
        ("alias", {"previousId": f"{tag}-legacy", "userId": user, "messageId": f"{tag}-m6"}),
    ]


def check_scenario(server: Server, tag: str) -> None:
    """Each message stored once, as its events (README: the mapping table)."""
    user = server.events(f"{tag}-user")
    anonymous = server.events(f"anon:{tag}-device")
    assert Counter(e["type"] for e in anonymous) == {
        "browse.page_viewed": 1,
        "browse.product_viewed": 1,
        "identifier.seen": 1,  # the device, once for two messages
    }
    assert Counter(e["type"] for e in user) == {
        "identifier.seen": 2,  # the email, the device
        "profile.name_set": 1,
        "profile.preference_set": 1,
        "order.placed": 1,
        "activity.tracked": 1,
        "identity.linked": 2,  # previousId read as a user id and as an anonymous id
    }
    order = next(e for e in user if e["type"] == "order.placed")
    assert (order["order_id"], order["total"], order["currency"]) == (f"{tag}-o1", "19.99", "EUR")
    tracked = next(e for e in user if e["type"] == "activity.tracked")
    assert tracked["properties"] == {"video.id": "v1", "video.seconds": 42}
    links = {e["other"] for e in user if e["type"] == "identity.linked"}
    assert links == {f"{tag}-legacy", f"anon:{tag}-legacy"}
    assert all(e["metadata"]["actor"] == "segment:sdk" for e in user + anonymous)
    assert len({e["event_id"] for e in user + anonymous}) == len(user) + len(anonymous)


def burst(tag: str, customers: int = 5, count: int = 500) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            "track",
            {
                "userId": f"{tag}-c{n % customers}",
                "event": "Button Clicked",
                "properties": {"n": n},
                "messageId": f"{tag}-b{n}",
            },
        )
        for n in range(count)
    ]


def check_exactly_once(server: Server, calls: list[tuple[str, dict[str, Any]]]) -> None:
    keys = {args["userId"] for _, args in calls}
    stored = [e for key in sorted(keys) for e in server.events(key)]
    sent = Counter(args["messageId"] for _, args in calls)
    assert Counter(e["metadata"]["correlation_id"] for e in stored) == sent


# --- the Python SDKs ------------------------------------------------------------------------------


def python_client(kind: str, host: str, errors: list[Any]) -> Any:
    if kind == "segment":
        from segment.analytics import Client
    else:
        from rudderstack.analytics import Client
    return Client(
        WRITE_KEY,
        host=host,
        on_error=lambda error, batch: errors.append(error),
        upload_interval=0.05,
        max_retries=5,
    )


SNAKE = {
    "userId": "user_id",
    "anonymousId": "anonymous_id",
    "messageId": "message_id",
    "previousId": "previous_id",
}


def send_python(kind: str, host: str, calls: list[tuple[str, dict[str, Any]]]) -> None:
    errors: list[Any] = []
    client = python_client(kind, host, errors)
    try:
        for method, args in calls:
            getattr(client, method)(**{SNAKE.get(k, k): v for k, v in args.items()})
        client.flush()
    finally:
        client.shutdown()
    assert errors == []


# --- @segment/analytics-node ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_sdk() -> Path:
    """tests/segment_node with its node_modules, installed once per lockfile (`npm ci`)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("the Node SDK test needs node (>= 20) and npm on PATH")
    assert node is not None and npm is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    if int(version.stdout.strip().lstrip("v").split(".")[0]) < 20:
        unavailable(f"@segment/analytics-node needs node >= 20, found {version.stdout.strip()}")
    lock = (NODE_PACKAGE / "package-lock.json").read_bytes()
    target = NODE_CACHE / f"segment-node-{hashlib.sha256(lock).hexdigest()[:12]}"
    if not (target / "node_modules" / "@segment" / "analytics-node").is_dir():
        staging = target.with_name(target.name + f".{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(NODE_PACKAGE / name, staging / name)
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if installed.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            unavailable(f"npm ci of @segment/analytics-node failed: {installed.stderr[-500:]}")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    shutil.copy(NODE_PACKAGE / "send.mjs", target / "send.mjs")
    return target


def send_node(node_sdk: Path, host: str, calls: list[tuple[str, dict[str, Any]]]) -> None:
    plan = {
        "host": host,
        "writeKey": WRITE_KEY,
        "flushAt": 100,
        "calls": [{"method": method, "args": args} for method, args in calls],
    }
    ran = subprocess.run(
        ["node", str(node_sdk / "send.mjs")],
        input=json.dumps(plan),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=node_sdk,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout) == {"delivered": len(calls), "failures": []}


# --- every SDK, the same checks ---------------------------------------------------------------

Send = Callable[[str, list[tuple[str, dict[str, Any]]]], None]
"""Sends calls with one SDK to a host, waiting until each is delivered."""


@pytest.fixture(params=["segment-python", "rudder-python", "segment-node"])
def sdk(request: pytest.FixtureRequest) -> tuple[str, Send]:
    name: str = request.param
    if name == "segment-node":
        installed: Path = request.getfixturevalue("node_sdk")
        return name, lambda host, calls: send_node(installed, host, calls)
    kind = name.removesuffix("-python")
    return name, lambda host, calls: send_python(kind, host, calls)


def test_sdk_calls_are_stored_once_as_their_events(server: Server, sdk: tuple[str, Send]) -> None:
    name, send = sdk
    send(server.base, scenario(name))
    check_scenario(server, name)


def test_sdk_burst_of_500_is_stored_exactly_once(server: Server, sdk: tuple[str, Send]) -> None:
    name, send = sdk
    calls = burst(f"{name}-burst")
    send(server.base, calls)
    check_exactly_once(server, calls)


def test_sdk_retries_a_503_and_nothing_is_stored_twice(
    server: Server, sdk: tuple[str, Send]
) -> None:
    name, send = sdk
    calls = burst(f"{name}-retry", customers=2, count=40)
    with FailingProxy(server.base, ["refuse", "lose"]) as proxy:
        send(proxy.base, calls)
    assert proxy.seen[:3] == ["refuse", "lose", "pass"]
    # The lost answer's batch was stored; its retry found every event already there.
    assert proxy.answers[0]["appended"] > 0
    assert proxy.answers[1]["duplicates"] >= proxy.answers[0]["appended"]
    check_exactly_once(server, calls)
