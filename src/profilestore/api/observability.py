"""Metrics, the access log, structured logging and the freshness snapshot.

The access log and metrics name the route template, never the path, the query string,
a body or an identifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import anyio
import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from profilestore.api.bodies import DatasetFreshness
from profilestore.documents import SectionMeta
from profilestore.store import DatasetStatus, Freshness, ProfileStore
from profilestore.tally import Tally

access_log = logging.getLogger("profilestore.access")
log = logging.getLogger(__name__)


# --- metrics and the access log --------------------------------------------------------------


class TriggerCollector(Collector):
    """The trigger engine's and the courier's counts in this process, read at each scrape."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def collect(self) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            "profilestore_trigger_outcomes",
            "Trigger decisions by trigger, status (fired, deferred, suppressed, ...) and reason",
            labels=["trigger", "status", "reason"],
        )
        for (trigger, status, reason), count in sorted(self.tally.outcomes().items()):
            outcomes.add_metric([trigger, status, reason], count)
        yield outcomes
        deliveries = CounterMetricFamily(
            "profilestore_trigger_deliveries",
            "Delivery attempts by trigger and result (delivered, retried, dead)",
            labels=["trigger", "result"],
        )
        for (trigger, result), count in sorted(self.tally.deliveries().items()):
            deliveries.add_metric([trigger, result], count)
        yield deliveries


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "profilestore_http_request_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5),
        )
        self.ingested = Counter(
            "profilestore_events_ingested", "Events appended", registry=self.registry
        )
        self.duplicates = Counter(
            "profilestore_events_duplicate", "Events already stored", registry=self.registry
        )
        self.rejected = Counter(
            "profilestore_events_rejected", "Events in rejected batches", registry=self.registry
        )
        self.segment_messages = Counter(
            "profilestore_segment_messages",
            "Segment calls received, by type (unknown: not a call we know)",
            ["type"],
            registry=self.registry,
        )
        self.segment_rejected = Counter(
            "profilestore_segment_rejected",
            "Segment messages, or parts of them, not stored (each entry of an answer's "
            "`rejected`), by type",
            ["type"],
            registry=self.registry,
        )
        self.lag_events = Gauge(
            "profilestore_projection_lag_events",
            "Log positions behind",
            ["dataset"],
            registry=self.registry,
        )
        self.lag_seconds = Gauge(
            "profilestore_projection_lag_seconds",
            "Age of the oldest unapplied event",
            ["dataset"],
            registry=self.registry,
        )
        self.run_seconds = Gauge(
            "profilestore_refresh_last_duration_seconds",
            "Duration of the last refresh run",
            ["dataset", "trigger"],
            registry=self.registry,
        )
        self.run_failed = Gauge(
            "profilestore_refresh_last_failed",
            "1 if the last refresh run failed",
            ["dataset"],
            registry=self.registry,
        )
        self.outdated = Gauge(
            "profilestore_projection_outdated",
            "1 if the dataset's documents were built by another projection version",
            ["dataset"],
            registry=self.registry,
        )
        self.dead_letters = Gauge(
            "profilestore_dead_letters",
            "Events parked by failing folds",
            ["dataset"],
            registry=self.registry,
        )

    def observe_status(self, rows: list[DatasetStatus]) -> None:
        for row in rows:
            self.lag_events.labels(row.dataset).set(row.lag.events_behind)
            self.lag_seconds.labels(row.dataset).set(row.lag.seconds_behind)
            self.dead_letters.labels(row.dataset).set(row.dead_letters)
            self.outdated.labels(row.dataset).set(1 if row.outdated else 0)
            last = row.last_run
            if last is not None:
                self.run_failed.labels(row.dataset).set(1 if last.status == "failed" else 0)
                if last.seconds is not None:
                    self.run_seconds.labels(row.dataset, last.trigger).set(last.seconds)


def access_middleware(app: ASGIApp) -> ASGIApp:
    """Times every request and logs method, route template, status and duration."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("path_template") or "unmatched"
            method = scope.get("method", "")
            metrics: Metrics = scope["app"].state.metrics
            metrics.latency.labels(method, route, str(status)).observe(elapsed)
            access_log.info(
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "client": scope.get("state", {}).get("client"),
                },
            )

    return middleware


# --- the freshness snapshot --------------------------------------------------------------


class FreshnessSnapshot:
    """Each dataset's lag, refreshed in the background; read by every profile request."""

    def __init__(self, store: ProfileStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self.datasets: dict[str, Freshness] = {}
        self.outdated: frozenset[str] = frozenset()
        self.updated = 0.0

    def refresh(self) -> None:
        self.datasets = self.store.freshness()
        self.updated = time.monotonic()

    def refresh_status(self) -> None:
        rows = self.store.status()
        self.outdated = frozenset(row.dataset for row in rows if row.outdated)
        self.metrics.observe_status(rows)

    async def run(self, interval: float, stopping: asyncio.Event) -> None:
        """Refresh every ``interval`` seconds until ``stopping`` is set.

        Stopping waits for a refresh in progress: a worker thread cannot be cancelled, and
        one abandoned inside the store while the store closes was a crash.
        """
        ticks = 1  # the lifespan took the first status snapshot
        while not stopping.is_set():
            try:
                await anyio.to_thread.run_sync(self.refresh)
                if ticks % max(1, int(5 / interval)) == 0:
                    await anyio.to_thread.run_sync(self.refresh_status)
            except Exception:  # keep serving with the last snapshot
                log.exception("freshness refresh failed")
            ticks += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)

    def block(self, dataset: str, meta: SectionMeta) -> DatasetFreshness:
        lag = self.datasets.get(dataset)
        return DatasetFreshness(
            position=meta.position,
            refreshed_at=meta.refreshed_at.isoformat(),
            dataset_position=lag.position if lag else meta.position,
            events_behind=lag.events_behind if lag else 0,
            seconds_behind=lag.seconds_behind if lag else 0.0,
            outdated=dataset in self.outdated,
        )


# --- logging --------------------------------------------------------------------------------


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extras."""

    _standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in self._standard)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


def configure_logging(level: int = logging.INFO) -> None:
    """Structured logs on stderr; uvicorn's access log stays off (it prints query strings)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
