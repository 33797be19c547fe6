"""The transactional outbox: every fired message delivered, at least once, under one id.

When the engine claims a firing (:mod:`profilestore.firing`) it also writes one pending
*delivery* per destination of the message's channel: each configured webhook endpoint
(``webhook:NAME``) and the JSON Lines file (``file``). The claim and its deliveries are
written before the engine's position moves, and a replay of the claim writes only the
deliveries that are missing (never one already delivered or dead), so nothing fired is
lost and nothing is queued twice.

:class:`Courier` drains the pending deliveries that are due (the worker runs it, one
process at a time under the ``delivery`` lease):

- **Webhooks** are signed per the Standard Webhooks specification with the
  ``standardwebhooks`` package: ``webhook-id`` is the message id (the same on every
  retry, so a receiver dedupes by it), ``webhook-timestamp`` the attempt's time, and
  ``webhook-signature`` one ``v1,`` signature per configured secret (the first is the
  current one; more let a receiver rotate). The body is the same on every attempt.
- A 2xx answer delivers. **410 Gone** disables the endpoint (its messages become dead
  letters until an operator redrives them, which enables it again). Anything else (an
  error status, a timeout, a refused connection) is retried with exponential backoff and
  full jitter (``tenacity``'s ``wait_random_exponential``) until ``retry_horizon_s``
  after the first attempt, then the delivery is a **dead letter**:
  ``profilestore outbox list --dead`` shows it, ``outbox retry`` redrives it.
- The **file** sink appends one JSON line per message and fsyncs. A crash between the
  write and the record of it writes the line again on the next drain: readers dedupe by
  ``message_id``, as webhook receivers do by ``webhook-id``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import tenacity
from standardwebhooks.webhooks import Webhook

from profilestore.config import DeliverySettings, Endpoint
from profilestore.documents import DocumentStore
from profilestore.tally import Tally

if TYPE_CHECKING:
    import httpx

PENDING = "outbox.pending"
DELIVERED = "outbox.delivered"
DEAD = "outbox.dead"
DISABLED = "outbox.disabled"
FIRED = "trigger.fired"
"""The claims: each is a fired message (written by :mod:`profilestore.firing`)."""
FILE = "file"

Status = Literal["pending", "delivered", "dead"]


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One message to one destination, and how its attempts went."""

    message_id: str
    destination: str
    """``webhook:NAME`` or ``file``."""
    claim: str
    """The key of the firing's claim (its message)."""
    trigger: str
    customer_id: str
    status: Status = "pending"
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    attempts: int = 0
    first_attempt_at: dt.datetime | None = None
    last_attempt_at: dt.datetime | None = None
    last_error: str | None = None
    delivered_at: dt.datetime | None = None


def delivery_key(message_id: str, destination: str) -> str:
    return f"{message_id}\x1f{destination}"


def destinations(settings: DeliverySettings, channel: str) -> list[str]:
    """Where a message on ``channel`` goes."""
    found = [f"webhook:{n}" for n, e in settings.endpoints.items() if channel in e.channels]
    if settings.file:
        found.append(FILE)
    return found


def pending_deliveries(
    *, claim: str, firing: Mapping[str, Any], routes: Sequence[str], now: dt.datetime
) -> list[tuple[str, str, dict[str, Any]]]:
    """The pending delivery records of a claimed firing, one per destination: what a
    new claim queues (written with the page's other records)."""
    written = []
    for destination in routes:
        delivery = Delivery(
            message_id=str(firing["message_id"]),
            destination=destination,
            claim=claim,
            trigger=str(firing["trigger"]),
            customer_id=str(firing["customer_id"]),
            created_at=now,
            next_attempt_at=now,
        )
        key = delivery_key(delivery.message_id, destination)
        written.append((PENDING, key, msgspec.to_builtins(delivery)))
    return written


def enqueue(
    documents: DocumentStore,
    *,
    claim: str,
    firing: Mapping[str, Any],
    routes: Sequence[str],
    now: dt.datetime,
) -> int:
    """Write the pending deliveries of a claimed firing that are not yet anywhere
    (pending, delivered or dead): a replay of a claim queues only what is missing;
    returns how many were written."""
    keys = [delivery_key(str(firing["message_id"]), d) for d in routes]
    known: set[str] = set()
    for kind in (PENDING, DELIVERED, DEAD):
        known.update(documents.get_records_for(kind, keys))
    written = 0
    for kind, key, value in pending_deliveries(claim=claim, firing=firing, routes=routes, now=now):
        if key not in known:
            written += documents.insert_record_if_absent(kind, key, value)
    return written


def message_body(firing: Mapping[str, Any]) -> bytes:
    """What is delivered: the Standard Webhooks envelope (``type``, ``timestamp``,
    ``data``), the same bytes on every attempt."""
    data = {
        "message_id": firing["message_id"],
        "trigger": firing["trigger"],
        "customer_id": firing["customer_id"],
        "profile_id": firing["profile_id"],
        "channel": firing["channel"],
        "purpose": firing["purpose"],
        "transactional": firing["transactional"],
        "dedupe_key": firing["dedupe_key"],
        "fired_at": firing["fired_at"],
        "payload": firing["payload"],
    }
    if firing.get("experiment"):
        data["experiment"] = firing["experiment"]
        data["variant"] = firing["variant"]
    envelope = {
        "type": f"trigger.{firing['trigger']}",
        "timestamp": firing["fired_at"],
        "data": data,
    }
    return msgspec.json.encode(envelope)


def signature_headers(
    endpoint: Endpoint, message_id: str, body: bytes, now: dt.datetime
) -> dict[str, str]:
    """The Standard Webhooks headers: id, timestamp, one signature per secret."""
    at = now.astimezone(dt.UTC)
    text = body.decode()
    signatures = " ".join(Webhook(s).sign(message_id, at, text) for s in endpoint.secrets)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
    }


@dataclass
class DrainReport:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    by_destination: dict[str, int] = field(default_factory=dict)


class _Retry(tenacity.RetryCallState):
    """The attempt count a wait strategy reads: the retries here are durable (records
    in the store, across restarts), not a loop in memory, so only tenacity's timing is
    used."""

    def __init__(self, attempts: int) -> None:
        super().__init__(None, None, (), {})  # type: ignore[arg-type]
        self.attempt_number = attempts


class Courier:
    """Delivers due messages; see the module docstring."""

    def __init__(
        self,
        documents: DocumentStore,
        settings: DeliverySettings,
        *,
        file: Path | None,
        clock: Callable[[], dt.datetime],
        transport: httpx.BaseTransport | None = None,
        tally: Tally | None = None,
    ) -> None:
        self.tally = tally or Tally()
        self.documents = documents
        self.settings = settings
        self.file = file
        self.clock = clock
        self.wait = tenacity.wait_random_exponential(
            multiplier=settings.retry_base_s, max=settings.retry_max_s
        )
        # Imported here: a store that delivers nothing never loads an HTTP client (and
        # bench/'s http.py, first on its path there, does not shadow the standard one).
        import httpx

        self._httpx = httpx
        concurrency = settings.concurrency
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx.Client(transport=transport, follow_redirects=False, limits=limits)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="profilestore-courier")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    def drain(self, limit: int = 1000) -> DrainReport:
        """Attempt every pending delivery that is due (at most ``limit``), oldest first.

        The page's webhooks are sent in parallel (``concurrency`` at once), its file
        lines written and fsynced once; then what came of every attempt is written in
        one batch (delivered, retried, dead), and the settled ones leave the queue in a
        second: a crash before either sends the page again (receivers dedupe by id).
        """
        now = self.clock()
        due = sorted(
            (
                d
                for d in (
                    msgspec.convert(v, Delivery)
                    for v in self.documents.get_records(PENDING).values()
                )
                if d.next_attempt_at <= now
            ),
            key=lambda d: (d.next_attempt_at, d.message_id, d.destination),
        )[:limit]
        report = DrainReport()
        if not due:
            return report
        claims = self.documents.get_records_for(FIRED, {d.claim for d in due})
        disabled = self.documents.get_records(DISABLED)
        keys = [delivery_key(d.message_id, d.destination) for d in due]
        settled = self.documents.get_records_for(DELIVERED, keys)
        page = _Page()
        # Delivered before a crash left it queued too: it only leaves the queue.
        page.leave.extend(k for k in keys if k in settled)
        todo = [
            (d, claims.get(d.claim)) for d, k in zip(due, keys, strict=True) if k not in settled
        ]
        errors = self._send(todo, disabled, now)
        for (delivery, firing), error in zip(todo, errors, strict=True):
            if firing is None:  # cannot happen: the claim is written first
                self._dead(page, delivery, "its message is missing", now, report)
            elif error is None:
                self._delivered(page, delivery, now, report)
            elif error.startswith("410"):
                name = delivery.destination.removeprefix("webhook:")
                record = {"since": now.isoformat(), "message_id": delivery.message_id}
                page.put.append((DISABLED, name, record))
                disabled[name] = record
                gone = f"{error}: the endpoint is disabled"
                self._dead(page, delivery, gone, now, report, tried=True)
            elif error.startswith("disabled") or error.startswith("unknown"):
                self._dead(page, delivery, error, now, report)
            else:
                self._retry(page, delivery, error, now, report)
        # Recorded as delivered (or dead) before they leave the queue: a crash in between
        # leaves them in both, and the next drain finds them settled rather than send again.
        self.documents.put_records(page.put)
        self.documents.delete_records(PENDING, page.leave)
        for trigger, result in page.counted:
            self.tally.delivery(trigger, result)
        return report

    def _send(
        self,
        todo: Sequence[tuple[Delivery, Mapping[str, Any] | None]],
        disabled: Mapping[str, Any],
        now: dt.datetime,
    ) -> list[str | None]:
        """Attempt each once: None where delivered, else why not (in ``todo``'s order)."""
        errors: list[str | None] = [None] * len(todo)
        lines: list[tuple[int, bytes]] = []
        posts: list[tuple[int, Endpoint, Delivery, bytes]] = []
        for i, (delivery, firing) in enumerate(todo):
            if firing is None:
                continue
            body = message_body(firing)
            if delivery.destination == FILE:
                if self.file is None:
                    errors[i] = "unknown destination: no file is configured"
                else:
                    lines.append((i, body))
                continue
            name = delivery.destination.removeprefix("webhook:")
            endpoint = self.settings.endpoints.get(name)
            if endpoint is None:
                errors[i] = f"unknown destination: endpoint {name!r} is no longer configured"
            elif name in disabled:
                errors[i] = (
                    f"disabled: endpoint {name!r} answered 410 Gone; `outbox retry` enables it"
                )
            else:
                posts.append((i, endpoint, delivery, body))
        if lines:
            failed = self._append_lines([body for _, body in lines])
            for i, _ in lines:
                errors[i] = failed
        if len(posts) == 1:
            i, endpoint, delivery, body = posts[0]
            errors[i] = self._post(endpoint, delivery, body, now)
        elif posts:
            answers = self._pool.map(lambda p: self._post(p[1], p[2], p[3], now), posts)
            for (i, *_), error in zip(posts, answers, strict=True):
                errors[i] = error
        return errors

    def _append_lines(self, bodies: Sequence[bytes]) -> str | None:
        """Append one line per message and fsync once: durable before any is recorded
        as delivered."""
        assert self.file is not None
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with self.file.open("ab") as out:
                out.write(b"".join(body + b"\n" for body in bodies))
                out.flush()
                os.fsync(out.fileno())
        except OSError as error:
            return f"the file sink failed: {type(error).__name__}"
        return None

    def _post(
        self, endpoint: Endpoint, delivery: Delivery, body: bytes, now: dt.datetime
    ) -> str | None:
        """Send once: None when delivered, else why not."""
        headers = signature_headers(endpoint, delivery.message_id, body, now)
        try:
            answer = self._client.post(
                endpoint.url, content=body, headers=headers, timeout=endpoint.timeout_s
            )
        except self._httpx.TimeoutException:
            return "timed out"
        except self._httpx.HTTPError as error:
            return f"{type(error).__name__}"
        if 200 <= answer.status_code < 300:
            return None
        return f"{answer.status_code} {answer.reason_phrase}".strip()

    def _attempted(self, delivery: Delivery, now: dt.datetime, error: str | None) -> Delivery:
        return msgspec.structs.replace(
            delivery,
            attempts=delivery.attempts + 1,
            first_attempt_at=delivery.first_attempt_at or now,
            last_attempt_at=now,
            last_error=error,
        )

    def _delivered(
        self, page: _Page, delivery: Delivery, now: dt.datetime, report: DrainReport
    ) -> None:
        done = msgspec.structs.replace(
            self._attempted(delivery, now, None), status="delivered", delivered_at=now
        )
        key = delivery_key(delivery.message_id, delivery.destination)
        page.put.append((DELIVERED, key, msgspec.to_builtins(done)))
        page.leave.append(key)
        page.counted.append((delivery.trigger, "delivered"))
        report.delivered += 1
        report.by_destination[delivery.destination] = (
            report.by_destination.get(delivery.destination, 0) + 1
        )

    def _retry(
        self, page: _Page, delivery: Delivery, error: str, now: dt.datetime, report: DrainReport
    ) -> None:
        tried = self._attempted(delivery, now, error)
        assert tried.first_attempt_at is not None
        horizon = tried.first_attempt_at + dt.timedelta(seconds=self.settings.retry_horizon_s)
        delay = dt.timedelta(seconds=self.wait(_Retry(tried.attempts)))
        if now + delay > horizon:
            error = f"{error} (retried until the horizon)"
            self._dead(page, delivery, error, now, report, tried=True)
            return
        later = msgspec.structs.replace(tried, next_attempt_at=now + delay)
        key = delivery_key(delivery.message_id, delivery.destination)
        page.put.append((PENDING, key, msgspec.to_builtins(later)))
        page.counted.append((delivery.trigger, "retried"))
        report.retried += 1

    def _dead(
        self,
        page: _Page,
        delivery: Delivery,
        error: str,
        now: dt.datetime,
        report: DrainReport,
        *,
        tried: bool = False,
    ) -> None:
        base = self._attempted(delivery, now, error) if tried else delivery
        dead = msgspec.structs.replace(base, status="dead", last_error=error)
        key = delivery_key(delivery.message_id, delivery.destination)
        page.put.append((DEAD, key, msgspec.to_builtins(dead)))
        page.leave.append(key)
        page.counted.append((delivery.trigger, "dead"))
        report.dead += 1


@dataclass
class _Page:
    """What came of a page of attempts, written together at its end."""

    put: list[tuple[str, str, Mapping[str, Any]]] = field(default_factory=list)
    leave: list[str] = field(default_factory=list)
    """Pending keys that leave the queue (delivered, dead)."""
    counted: list[tuple[str, str]] = field(default_factory=list)
    """(trigger, result) for the tally, counted once the page is written."""


def list_deliveries(documents: DocumentStore, status: Status) -> list[Delivery]:
    kind = {"pending": PENDING, "delivered": DELIVERED, "dead": DEAD}[status]
    found = [msgspec.convert(v, Delivery) for v in documents.get_records(kind).values()]
    return sorted(found, key=lambda d: (d.created_at, d.message_id, d.destination))


def redrive(documents: DocumentStore, message_ids: Sequence[str] | None, now: dt.datetime) -> int:
    """Queue dead letters again (all, or those of ``message_ids``) as new deliveries, and
    enable their endpoints again; returns how many."""
    wanted = set(message_ids) if message_ids is not None else None
    moved = 0
    for key, value in documents.get_records(DEAD).items():
        dead = msgspec.convert(value, Delivery)
        if wanted is not None and dead.message_id not in wanted:
            continue
        again = msgspec.structs.replace(
            dead,
            status="pending",
            attempts=0,
            first_attempt_at=None,
            next_attempt_at=now,
            last_error=f"redriven after: {dead.last_error}",
        )
        documents.put_record(PENDING, key, msgspec.to_builtins(again))
        documents.delete_record(DEAD, key)
        if dead.destination.startswith("webhook:"):
            documents.delete_record(DISABLED, dead.destination.removeprefix("webhook:"))
        moved += 1
    return moved
