"""Identity benchmarks of profilestore: merge latency, lookups after merges, resolving a
population with realistic link patterns.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/identity.py            # full run: 100k customers, ~8-9 minutes
    .venv/bin/python bench/identity.py --quick    # 10k customers, ~1.5-2.5 minutes

Prints one JSON object on stdout (progress goes to stderr) and writes it to
``bench/results/identity.json`` (``--output`` to change). See the "Identity" section of
``bench/README.md`` for what every figure means. Embedded (SQLite) store only.

What runs, in order:

1. **Population** (not timed): ``generate(customers, seed=7)`` plus the link patterns of
   :func:`synthetic_population` merged in by ``occurred_at``, appended to a log of its own.
2. **Resolve from scratch**: copies of that log, each with fresh documents, get
   ``store.resolve_identity()`` then ``store.refresh()`` with the default rules and with
   ``auto_link = []`` (rules off), alternating which goes first. The graph it made is
   summarised: clusters by size, links per rule, refusals per reason, each pattern's fate.
3. **Lookups after merges** in the resolved store: ``profile_raw``, ``find`` and
   ``afind_raw`` of merged member keys against unmerged keys, interleaved, with the
   redirect (``resolve``) and the document read (``documents.get_raw``) timed apart.
4. **Merges**: pairs of 1,000-event customers appended to that store and refreshed, then
   ``store.link`` (timed to the merged profile's first read), and with a running
   ``Follower`` an ``identity.linked`` event appended and polled for; the same ``link``
   in a store holding only the pairs, to show what the population's graph adds. Each merge
   is interleaved with the read and fold of the same 2,000 events (the refold floor).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import heapq
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "src", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import msgspec  # noqa: E402

from bench.audit import calibrate  # noqa: E402
from bench.core import (  # noqa: E402
    COMPARE,
    info,
    judge,
    machine_info,
    percentile,
    ratio,
    run_and_write,
    source_state,
    sqlite_settings,
    stage,
)
from profilestore import identity, projector  # noqa: E402
from profilestore.config import Settings  # noqa: E402
from profilestore.errors import CustomerNotFound  # noqa: E402
from profilestore.events import (  # noqa: E402
    Event,
    IdentifierLinked,
    IdentifierSeen,
    IdentifierUnlinked,
    IdentityLinked,
    NameSet,
    PageViewed,
)
from profilestore.follower import Follower  # noqa: E402
from profilestore.identity import (  # noqa: E402
    CHANGE,
    CLUSTER,
    IDENTIFIER,
    KEY,
    LINK,
    changes_between,
    graph_position,
    merged_changes,
    profiles_at,
)
from profilestore.normalise import is_blocked  # noqa: E402
from profilestore.population import DEFAULT_START, generate  # noqa: E402
from profilestore.replay import fold_stream, routes_for  # noqa: E402
from profilestore.store import ProfileStore, open_store  # noqa: E402

BATCH = 500
SEED = 7
PAIR_SEED = 11
PAIR_EVENTS = 1_000
PLACEHOLDERS = ("null", "undefined", "0", "anonymous")
POLL_S = 0.0005
"""How long the follower case's reader sleeps between two reads of the merged profile."""

MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "customers": 10_000,
        "events_per_customer": 10,
        "merges": 30,
        "lookup_samples": 2_000,
        "lookup_rounds": 2,
        "resolve_rounds": 2,
    },
    "full": {
        "customers": 100_000,
        "events_per_customer": 10,
        "merges": 30,
        "lookup_samples": 5_000,
        "lookup_rounds": 3,
        "resolve_rounds": 1,
    },
}

TARGETS = {
    "merge_link_p99_ms": ("<", 100.0),
    "merge_follower_p99_ms": ("<", 100.0),
    "lookup_merged_vs_unmerged": ("<=", 1.2),
}
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    **COMPARE,
    "<": lambda value, limit: value < limit,
}

SHARES = {
    "anonymous_then_login": 0.030,
    "second_key": 0.015,
    "anonymous_and_second_key": 0.005,
    "anonymous_before_signup": 0.005,
    "household_device": 0.010,
    "family_email": 0.0012,
    "placeholder_device": 0.050,
    "anonymous_placeholder_key": 0.010,
}
"""Share of the population's customers each pattern touches (see synthetic_population)."""

LOOKUPS = ("id", "get_raw", "resolve", "find", "afind_raw")
"""The timed reads: ``profile_raw(key)``; ``documents.get_raw(profile id)``, the same read
without the redirect (what a lookup cost before identity); ``resolve(key)`` alone (the
redirect); ``find("email", ...)`` and ``afind_raw("email", ...)`` (the HTTP path)."""

CHAINS = 2
CHAIN_KEYS = 24
"""Chains of keys each sharing a phone with the next: longer than ``max_cluster_keys``
(20), so the cap refuses the rest."""


# --- the population ---------------------------------------------------------------------


@dataclass
class Customer:
    """What the patterns need to know of a generated customer."""

    key: str
    first: str = ""
    last: str = ""
    email: str | None = None
    signup: dt.datetime | None = None
    first_touch: dt.datetime | None = None
    phone: str | None = None
    phone_since: dt.datetime | None = None
    last_seen: dt.datetime | None = None


@dataclass
class Population:
    events: list[Event]
    customers: list[str]
    """The generated customers' keys."""
    patterns: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    """Pattern -> its groups of keys (the generated customers first, then added keys)."""
    emails: dict[str, str] = field(default_factory=dict)
    """Generated customer -> its signup email."""
    added_events: int = 0


class Patterns:
    """Builds the events of the link patterns, each at a time the customer lives."""

    def __init__(self, rng: random.Random, end: dt.datetime) -> None:
        self.rng = rng
        self.end = end
        self.events: list[Event] = []
        self.count = 0

    def at(self, after: dt.datetime, low_h: float, high_h: float) -> dt.datetime:
        hours = low_h + self.rng.random() * (high_h - low_h)
        moment = after + dt.timedelta(hours=hours)
        return min(moment, self.end - dt.timedelta(minutes=1))

    def add(self, cls: type[Event], key: str, when: dt.datetime, **payload: Any) -> None:
        self.count += 1
        self.events.append(
            cls(
                event_id=f"{key}-x{self.count}",
                customer_id=key,
                occurred_at=when,
                source=payload.pop("source", "web"),
                **payload,
            )
        )

    def browse(self, key: str, when: dt.datetime, device: str) -> None:
        """An anonymous visit: the device, then a couple of pages."""
        self.add(IdentifierSeen, key, when, kind="device", value=device)
        for i, page in enumerate(("/", "/c/shoes")):
            self.add(
                PageViewed,
                key,
                when + dt.timedelta(seconds=20 * (i + 1)),
                url=f"https://shop.example.com{page}",
                session_id=f"sess-{key}",
            )


def customers_of(events: Iterable[Event]) -> dict[str, Customer]:
    found: dict[str, Customer] = {}
    for event in events:
        key = event.customer_id
        customer = found.get(key)
        if customer is None:
            customer = found[key] = Customer(key=key, first_touch=event.occurred_at)
        customer.last_seen = event.occurred_at
        if isinstance(event, IdentifierSeen) and event.kind == "email" and not customer.email:
            customer.email, customer.signup = event.value, event.occurred_at
        elif isinstance(event, NameSet) and not customer.first:
            customer.first, customer.last = event.first_name or "", event.last_name or ""
        elif isinstance(event, IdentifierLinked) and event.kind == "phone":
            customer.phone, customer.phone_since = event.value, event.occurred_at
        elif isinstance(event, IdentifierUnlinked) and event.kind == "phone":
            customer.phone = customer.phone_since = None
    return found


def synthetic_population(customers: int, per_customer: int, seed: int = SEED) -> Population:
    """``generate(customers)`` plus link patterns, merged in ``occurred_at`` order.

    Each generated customer has its own email and devices (nothing links by itself); the
    patterns add, each for a share of them (:data:`SHARES`):

    - ``anonymous_then_login``: an anonymous key ``anon-C`` browses on a new device, and
      days later customer C (known: it gave an email at signup) is seen on that device.
      The device rule links them: a profile of 2 keys.
    - ``second_key``: C reaches us through another system as ``pos-C``, which presents C's
      email (or, for a third with a phone, C's phone written without spaces): 2 keys.
    - ``anonymous_and_second_key``: both of the above: 3 keys.
    - ``anonymous_before_signup``: ``anon-C`` browses on the device C signs up with, before
      C's first visit; C presents the device before its email (as every generated signup
      does), when neither key is known.
    - ``household_device``: a tablet ``house-N`` used by 4-5 known customers; in half the
      households an anonymous key ``anon-house-N`` used it first.
    - ``family_email``: 6 customers present one family address.
    - ``placeholder_device``: customers seen with device ``null``, ``undefined``, ``0`` or
      ``anonymous`` (``identify(null)``), and ``anonymous_placeholder_key``: anonymous keys
      with only such a device.
    - :data:`CHAINS` chains of :data:`CHAIN_KEYS` keys, each sharing a phone with the next.
    """
    base = list(generate(customers, seed=seed, events_per_customer=per_customer))
    known = customers_of(base)
    keys = sorted(known)
    rng = random.Random(seed)
    end = DEFAULT_START + dt.timedelta(days=365)
    patterns = Patterns(rng, end)
    groups: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    pool = [k for k in keys if known[k].signup is not None]
    rng.shuffle(pool)
    taken = 0

    def draw(share: float, size: int = 1) -> list[list[Customer]]:
        nonlocal taken
        count = max(1, round(len(keys) * share / size))
        chosen = pool[taken : taken + count * size]
        taken += len(chosen)
        return [[known[k] for k in chosen[i : i + size]] for i in range(0, len(chosen), size)]

    def anonymous_then_login(customer: Customer) -> str:
        assert customer.signup is not None
        anon, device = f"anon-{customer.key}", f"dev-{customer.key}-web"
        visit = patterns.at(customer.signup, 1, 24 * 20)
        patterns.browse(anon, visit, device)
        login = patterns.at(visit, 1, 72)
        patterns.add(IdentifierSeen, customer.key, login, kind="device", value=device)
        return anon

    def second_key(customer: Customer) -> str:
        assert customer.signup is not None and customer.email is not None
        other = f"pos-{customer.key}"
        if customer.phone and customer.phone_since and rng.random() < 1 / 3:
            when = patterns.at(customer.phone_since, 1, 24 * 10)
            value = customer.phone.replace(" ", "")  # one number, written another way
            patterns.add(IdentifierSeen, other, when, kind="phone", value=value, source="pos")
        else:
            when = patterns.at(customer.signup, 1, 24 * 30)
            patterns.add(
                IdentifierSeen, other, when, kind="email", value=customer.email, source="pos"
            )
        patterns.add(
            NameSet,
            other,
            when + dt.timedelta(seconds=1),
            first_name=customer.first or None,
            last_name=customer.last or None,
            source="pos",
        )
        return other

    for (customer,) in draw(SHARES["anonymous_then_login"]):
        groups["anonymous_then_login"].append((customer.key, anonymous_then_login(customer)))
    for (customer,) in draw(SHARES["second_key"]):
        groups["second_key"].append((customer.key, second_key(customer)))
    for (customer,) in draw(SHARES["anonymous_and_second_key"]):
        anon = anonymous_then_login(customer)
        groups["anonymous_and_second_key"].append((customer.key, anon, second_key(customer)))
    for (customer,) in draw(SHARES["anonymous_before_signup"]):
        assert customer.first_touch is not None
        anon = f"anon-{customer.key}"
        earlier = customer.first_touch - dt.timedelta(hours=1 + rng.random() * 24 * 5)
        patterns.browse(anon, max(earlier, DEFAULT_START), f"dev-{customer.key}-1")
        groups["anonymous_before_signup"].append((customer.key, anon))
    for n, household in enumerate(draw(SHARES["household_device"], 5)):
        members = household[: 4 + n % 2]
        device = f"house-{n}"
        group = [c.key for c in members]
        first_use = min(c.signup for c in members if c.signup is not None)
        if n % 2 == 0:
            anon = f"anon-house-{n}"
            patterns.browse(anon, first_use - dt.timedelta(days=1), device)
            group.append(anon)
        for c in members:
            assert c.signup is not None
            when = patterns.at(max(c.signup, first_use), 1, 24 * 30)
            patterns.add(IdentifierSeen, c.key, when, kind="device", value=device)
        groups["household_device"].append(tuple(group))
    for n, family in enumerate(draw(SHARES["family_email"], 6)):
        for c in family:
            assert c.signup is not None
            when = patterns.at(c.signup, 1, 24 * 30)
            patterns.add(IdentifierSeen, c.key, when, kind="email", value=f"family.{n}@example.com")
        groups["family_email"].append(tuple(c.key for c in family))
    for (customer,) in draw(SHARES["placeholder_device"]):
        assert customer.signup is not None
        when = patterns.at(customer.signup, 1, 24 * 60)
        value = rng.choice(PLACEHOLDERS)
        patterns.add(IdentifierSeen, customer.key, when, kind="device", value=value)
        groups["placeholder_device"].append((customer.key,))
    for n in range(max(1, round(len(keys) * SHARES["anonymous_placeholder_key"]))):
        anon = f"anon-null-{n}"
        when = patterns.at(DEFAULT_START, 24, 24 * 300)
        patterns.browse(anon, when, PLACEHOLDERS[n % len(PLACEHOLDERS)])
        groups["anonymous_placeholder_key"].append((anon,))
    for j in range(CHAINS):
        chain = [f"chain-{j}-{i:02d}" for i in range(CHAIN_KEYS)]
        when = DEFAULT_START + dt.timedelta(days=30 + j)
        for i, key in enumerate(chain):
            for number in sorted({max(i - 1, 0), i}):
                phone = f"+1 650 9{j:02d} {number:04d}"
                when += dt.timedelta(minutes=5)
                patterns.add(IdentifierSeen, key, when, kind="phone", value=phone)
        groups["chain"].append(tuple(chain))
    added = sorted(patterns.events, key=lambda e: e.occurred_at)
    events = list(heapq.merge(base, added, key=lambda e: e.occurred_at))
    return Population(
        events=events,
        customers=keys,
        patterns=dict(groups),
        emails={k: c.email for k, c in known.items() if c.email},
        added_events=len(added),
    )


# --- pairs of 1,000-event customers -----------------------------------------------------

_PHONE = re.compile(r"^(\+\d+) 7(\d{7})(\d*)$")


def rekeyed_identifier(kind: str, value: str, old: str, new: str, number: int) -> str:
    """An identifier of the source customer ``old`` made ``new``'s own (nothing shared)."""
    if kind == "email":
        local, _, domain = value.partition("@")
        return f"{new}.{local}@{domain}"
    if kind == "phone":
        match = _PHONE.match(value)
        assert match, value
        return f"{match[1]} 7{9_000_000 + number:07d}{match[3]}"
    if kind == "handle":
        return "@" + new.replace("-", "") + value.lstrip("@")
    return value.replace(old, new) if old in value else f"{new}-{value}"


def rekeyed(events: Sequence[Event], new: str, number: int) -> list[Event]:
    """The events of one customer under the key ``new``, with identifiers of its own."""
    out = []
    for event in events:
        changes: dict[str, Any] = {"customer_id": new, "event_id": f"{new}-{event.event_id}"}
        if isinstance(event, IdentifierSeen | IdentifierLinked | IdentifierUnlinked):
            changes["value"] = rekeyed_identifier(
                event.kind, event.value, event.customer_id, new, number
            )
        out.append(msgspec.structs.replace(event, **changes))
    return out


def pair_sources() -> list[list[Event]]:
    """The first PAIR_EVENTS events of each generated customer that has that many."""
    events = list(generate(16, seed=PAIR_SEED, events_per_customer=1500))
    by_customer: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_customer[event.customer_id].append(event)
    sources = [
        evs[:PAIR_EVENTS] for _, evs in sorted(by_customer.items()) if len(evs) >= PAIR_EVENTS
    ]
    assert len(sources) >= 2, "the pair generator found too few busy customers"
    return sources


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    marks: tuple[str, str]
    """One identifier lookup key of each (an email), to see both in the merged profile."""


def pairs_of(label: str, count: int, sources: list[list[Event]]) -> tuple[list[Pair], list[Event]]:
    """``count`` pairs of customers of PAIR_EVENTS events each (from different sources),
    their events interleaved by ``occurred_at``."""
    pairs, streams = [], []
    for i in range(count):
        keys = []
        for side in (0, 1):
            n = 2 * i + side
            key = f"{label}-{n:03d}"
            streams.append(rekeyed(sources[n % len(sources)], key, copy_number(label, n)))
            keys.append(key)
        marks = tuple(email_mark(stream) for stream in streams[-2:])
        pairs.append(Pair(keys[0], keys[1], (marks[0], marks[1])))
    events = list(heapq.merge(*streams, key=lambda e: e.occurred_at))
    return pairs, events


def copy_number(label: str, n: int) -> int:
    """A number for phones, unique across labels and copies."""
    return {"small": 0, "link": 1, "follow": 2}.get(label, 3) * 10_000 + n


def email_mark(events: Sequence[Event]) -> str:
    for event in events:
        if isinstance(event, IdentifierSeen) and event.kind == "email":
            return event.lookup_key
    raise AssertionError("a pair customer without an email")


# --- helpers ----------------------------------------------------------------------------


def append_all(store: ProfileStore, events: Sequence[Event]) -> float:
    started = time.perf_counter()
    for i in range(0, len(events), BATCH):
        store.append(events[i : i + BATCH])
    return time.perf_counter() - started


def without_rules(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, identity=msgspec.structs.replace(settings.identity, auto_link=[])
    )


def ms_summary(samples_ns: Sequence[int]) -> dict[str, float]:
    values = sorted(samples_ns)
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.50) / 1e6, 3),
        "p90": round(percentile(values, 0.90) / 1e6, 3),
        "p99": round(percentile(values, 0.99) / 1e6, 3),
        "max": round(values[-1] / 1e6, 3),
        "mean": round(sum(values) / len(values) / 1e6, 3),
    }


def us_summary(samples_ns: Sequence[int]) -> dict[str, float]:
    values = sorted(samples_ns)
    return {
        "n": len(values),
        "p50_us": round(percentile(values, 0.50) / 1000, 2),
        "p90_us": round(percentile(values, 0.90) / 1000, 2),
        "p99_us": round(percentile(values, 0.99) / 1000, 2),
        "mean_us": round(sum(values) / len(values) / 1000, 2),
    }


class CallTimes:
    """Counts and times calls of chosen functions while active (the bench wraps them; src
    is not changed), to say where a merge's time goes."""

    def __init__(self, targets: dict[str, tuple[Any, str]]) -> None:
        self.targets = targets
        self.calls: dict[str, list[float]] = {name: [] for name in targets}
        self.active = True
        """Off while the baseline runs, which reads through some of the same functions."""
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> CallTimes:
        for name, (owner, attribute) in self.targets.items():
            original = getattr(owner, attribute)
            self._saved.append((owner, attribute, original))
            setattr(owner, attribute, self._wrap(name, original))
        return self

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        samples = self.calls[name]

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(*args, **kwargs)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                samples.append(time.perf_counter() - started)

        return timed

    def __exit__(self, *exc: object) -> None:
        for owner, attribute, original in reversed(self._saved):
            setattr(owner, attribute, original)
        self._saved.clear()

    def totals(self) -> dict[str, tuple[int, float]]:
        return {name: (len(samples), sum(samples)) for name, samples in self.calls.items()}


def per_merge(totals: dict[str, Any], merges: int) -> dict[str, dict[str, float]]:
    """Calls and milliseconds per merge, and the mean time of one call."""
    return {
        name: {
            "calls": round(calls / merges, 2),
            "ms": round(seconds * 1000 / merges, 3),
            "ms_per_call": round(seconds * 1000 / calls, 3) if calls else 0.0,
        }
        for name, (calls, seconds) in totals.items()
    }


def merge_instruments(store: ProfileStore) -> CallTimes:
    documents, log = store._documents, store._log
    return CallTimes(
        {
            "resolve_identity (graph passes)": (ProfileStore, "resolve_identity"),
            "apply_identity (regroup passes)": (ProfileStore, "apply_identity"),
            "profiles_at (reads every KEY record)": (identity, "profiles_at"),
            "changes_between (reads the changes after a position)": (projector, "changes_between"),
            "merged_changes (refold reads)": (projector, "merged_changes"),
            "  select_stream_states (SQL)": (log.recorder, "select_stream_states"),
            "  _decoded (msgspec decode)": (log, "_decoded"),
            "documents.regroup (section writes)": (documents, "regroup"),
            "documents.get_records (whole kinds)": (documents, "get_records"),
        }
    )


def record_counts(store: ProfileStore) -> dict[str, int]:
    documents = store._documents
    return {kind: len(documents.get_records(kind)) for kind in (KEY, LINK, CLUSTER, CHANGE)}


def graph_reads(store: ProfileStore, calls: int = 7) -> dict[str, Any]:
    """One call of each whole-kind read a merge makes, timed alone (median of ``calls``),
    with the number of records it reads: what each merge pays per pass or per dataset."""
    documents = store._documents
    position = graph_position(documents)

    def median_ms(call: Callable[[], Any]) -> float:
        runs = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            runs.append(time.perf_counter() - started)
        return round(statistics.median(runs) * 1000, 3)

    return {
        "records": record_counts(store),
        "profiles_at_ms": median_ms(lambda: profiles_at(documents, position)),
        # The range a merge asks for: the last change only.
        "changes_between_ms": median_ms(lambda: changes_between(documents, position - 1, position)),
    }


# --- 3. resolving a population from scratch ---------------------------------------------


def copy_log(source: Path, home: Path) -> None:
    home.mkdir(parents=True)
    for path in source.glob("events.sqlite*"):
        shutil.copy2(path, home / path.name)


def resolve_from_scratch(settings: Settings) -> dict[str, Any]:
    """``resolve_identity()`` then ``refresh()`` on a log with fresh documents, timed in
    wall time and in this process's CPU time (which other processes on the machine do
    not inflate)."""
    store = open_store(settings)
    try:
        events = store.head()
        gc.collect()
        started, started_cpu = time.perf_counter(), time.process_time()
        report = store.resolve_identity()
        resolved, resolved_cpu = time.perf_counter(), time.process_time()
        store.refresh()
        finished, finished_cpu = time.perf_counter(), time.process_time()
        head = store.head()
    finally:
        store.close()
    seconds = finished - started
    return {
        "events": events,
        "links_appended": head - events,
        "resolve_identity_seconds": round(resolved - started, 3),
        "refresh_seconds": round(finished - resolved, 3),
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds),
        "resolve_identity_cpu_seconds": round(resolved_cpu - started_cpu, 3),
        "refresh_cpu_seconds": round(finished_cpu - resolved_cpu, 3),
        "cpu_seconds": round(finished_cpu - started_cpu, 3),
        "graph_applied": report.events_applied,
    }


def bench_resolve(work: Path, log_home: Path, rounds: int) -> tuple[dict[str, Any], Path]:
    """Rules on and off over copies of one log, alternating which goes first; returns the
    figures and the home of the first resolved (rules on) store."""
    runs: dict[str, list[dict[str, Any]]] = {"rules": [], "no_rules": []}
    kept: Path | None = None
    for round_ in range(rounds):
        order = ["rules", "no_rules"] if round_ % 2 == 0 else ["no_rules", "rules"]
        for label in order:
            home = work / f"{label}-{round_}"
            copy_log(log_home, home)
            settings = sqlite_settings(home)
            if label == "no_rules":
                settings = without_rules(settings)
            with stage(f"resolve + refresh from scratch, {label}, round {round_ + 1}/{rounds}"):
                result = resolve_from_scratch(settings)
            info(f"{label}: {result}")
            runs[label].append(result)
            if label == "rules" and kept is None:
                kept = home
            else:
                shutil.rmtree(home, ignore_errors=True)
    assert kept is not None

    def median(label: str, name: str) -> float:
        return float(statistics.median(r[name] for r in runs[label]))

    rules_s, plain_s = median("rules", "seconds"), median("no_rules", "seconds")
    rules_cpu, plain_cpu = median("rules", "cpu_seconds"), median("no_rules", "cpu_seconds")
    events = runs["rules"][0]["events"]
    return {
        "events": events,
        "rounds": rounds,
        "rules_seconds": round(rules_s, 3),
        "no_rules_seconds": round(plain_s, 3),
        "rules_events_per_s": round(events / rules_s),
        "no_rules_events_per_s": round(events / plain_s),
        "rules_vs_no_rules_time": ratio(rules_s, plain_s),
        "rules_cpu_seconds": round(rules_cpu, 3),
        "no_rules_cpu_seconds": round(plain_cpu, 3),
        "rules_events_per_cpu_s": round(events / rules_cpu),
        "rules_vs_no_rules_cpu": ratio(rules_cpu, plain_cpu),
        "rules_resolve_identity_seconds": median("rules", "resolve_identity_seconds"),
        "no_rules_resolve_identity_seconds": median("no_rules", "resolve_identity_seconds"),
        "rules_resolve_identity_cpu_seconds": median("rules", "resolve_identity_cpu_seconds"),
        "no_rules_resolve_identity_cpu_seconds": median("no_rules", "resolve_identity_cpu_seconds"),
        "runs": runs,
    }, kept


def graph_summary(store: ProfileStore, population: Population) -> dict[str, Any]:
    """What the graph made of the population: from its records, and pattern by pattern."""
    documents = store._documents
    clusters = Counter(
        len(value["members"])
        for value in documents.get_records(CLUSTER).values()
        if value.get("members")
    )
    made: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    retracted = 0
    for value in documents.get_records(LINK).values():
        status = value.get("status", "active")
        if status == "active":
            made[value.get("rule") or "operator"] += 1
        elif status == "refused":
            refused[f"{value.get('rule')}: {value.get('refused')}"] += 1
        else:
            retracted += 1
    placeholder_keys = {f"device:{p}" for p in PLACEHOLDERS}
    in_graph = documents.get_records_for(IDENTIFIER, placeholder_keys)
    placeholder_links = sum(
        1
        for value in documents.get_records(LINK).values()
        if str(value.get("evidence")) in placeholder_keys
    )
    blocked = sum(
        1
        for event in population.events
        if isinstance(event, IdentifierSeen | IdentifierLinked)
        and is_blocked(event.kind, event.lookup_key)
    )
    fates: dict[str, Any] = {}
    for name, groups in population.patterns.items():
        profiles: Counter[int] = Counter()
        for group in groups:
            profiles[len({store.resolve(k) for k in group})] += 1
        fates[name] = {
            "groups": len(groups),
            "keys": sum(len(g) for g in groups),
            "groups_by_profiles_they_form": dict(sorted(profiles.items())),
        }
    return {
        "clusters_by_size": dict(sorted(clusters.items())),
        "clusters": sum(clusters.values()),
        "keys_in_clusters": sum(size * n for size, n in clusters.items()),
        "links_made_by_rule": dict(made.most_common()),
        "links_refused_by_reason": dict(refused.most_common()),
        "links_retracted": retracted,
        "placeholder_identifier_events": blocked,
        "placeholder_identifiers_in_graph": len(in_graph),
        "links_on_placeholder_evidence": placeholder_links,
        "patterns": fates,
    }


# --- 2. lookups after merges ------------------------------------------------------------


def lookup_samples(
    store: ProfileStore, population: Population, samples: int, rng: random.Random
) -> tuple[list[str], list[str], list[str], list[str]]:
    """Member keys of merged profiles of 2-3 keys and unmerged keys, with an email each
    that finds them (checked: exactly one profile holds it)."""
    merged: list[tuple[str, str]] = []  # (member key, email of the profile)
    for name in ("anonymous_then_login", "second_key", "anonymous_and_second_key"):
        for group in population.patterns.get(name, []):
            profile = store.resolve(group[0])
            members = store.members(profile)
            if len(members) in (2, 3) and set(group) <= set(members):
                email = population.emails[group[0]]
                merged.extend((key, email) for key in group)
    in_patterns = {k for groups in population.patterns.values() for g in groups for k in g}
    alone = [
        (k, population.emails[k])
        for k in population.customers
        if k not in in_patterns and k in population.emails
    ]
    merged = rng.sample(merged, min(samples, len(merged)))
    alone = rng.sample(alone, min(samples, len(alone)))
    n = min(len(merged), len(alone))
    for key, email in merged[:n] + alone[:n]:
        found = store.find("email", email)
        assert found.canonical_id == store.resolve(key), (key, email, found.canonical_id)
    return (
        [k for k, _ in merged[:n]],
        [k for k, _ in alone[:n]],
        [e for _, e in merged[:n]],
        [e for _, e in alone[:n]],
    )


def bench_lookups(
    store: ProfileStore, population: Population, mode: dict[str, Any]
) -> dict[str, Any]:
    rng = random.Random(SEED)
    merged, alone, merged_emails, alone_emails = lookup_samples(
        store, population, mode["lookup_samples"], rng
    )
    assert all(store.resolve(k).startswith("~") for k in merged)
    assert all(store.resolve(k) == k for k in alone)
    n = len(merged)
    names = [f"{what}_{group}" for what in LOOKUPS for group in ("merged", "unmerged")]
    samples: dict[str, list[int]] = {name: [] for name in names}
    profile_raw, find, afind_raw, resolve = (
        store.profile_raw,
        store.find,
        store.afind_raw,
        store.resolve,
    )
    keys = {"merged": merged, "unmerged": alone}
    profile_ids = {group: [resolve(k) for k in found] for group, found in keys.items()}
    get_raw = store._documents.get_raw
    emails = {"merged": merged_emails, "unmerged": alone_emails}
    perf = time.perf_counter_ns

    def call(what: str, group: str, i: int) -> Any:
        if what == "id":
            return profile_raw(keys[group][i])
        if what == "get_raw":
            return get_raw(profile_ids[group][i])
        if what == "resolve":
            return resolve(keys[group][i])
        if what == "find":
            return find("email", emails[group][i])
        return afind_raw("email", emails[group][i])  # a coroutine, awaited by the caller

    async def measure() -> None:
        for i in range(n):  # warm-up: statements, page cache
            for group in ("merged", "unmerged"):
                profile_raw(keys[group][i])
                find("email", emails[group][i])
        gc.collect()
        gc.disable()
        try:
            for round_ in range(mode["lookup_rounds"]):
                order = list(range(n))
                rng.shuffle(order)
                for step in range(n):
                    # Every kind of call for both groups, rotating which goes first, each
                    # kind reading another profile (far apart in the order), so drift
                    # lands on all alike and no call finds the rows another just read.
                    calls = [
                        (what, group, order[(step + w * n // len(LOOKUPS)) % n])
                        for w, what in enumerate(LOOKUPS)
                        for group in ("merged", "unmerged")
                    ]
                    shift = (step + round_) % len(calls)
                    for what, group, i in calls[shift:] + calls[:shift]:
                        t0 = perf()
                        if what == "afind_raw":
                            await call(what, group, i)
                        else:
                            call(what, group, i)
                        samples[f"{what}_{group}"].append(perf() - t0)
        finally:
            gc.enable()

    with stage(f"lookups: {n} merged member keys and {n} unmerged keys, interleaved"):
        asyncio.run(measure())

    def mean_bytes(keys: Sequence[str]) -> int:
        sizes = [
            sum(len(bytes(s)) for s in profile_raw(key).sections.values()) for key in keys[:200]
        ]
        return round(sum(sizes) / len(sizes))

    sizes = Counter(len(store.members(store.resolve(k))) for k in merged)
    return {
        "samples": n,
        "rounds": mode["lookup_rounds"],
        "merged_profile_keys": dict(sorted(sizes.items())),
        "merged_profile_bytes_mean": mean_bytes(merged),
        "unmerged_profile_bytes_mean": mean_bytes(alone),
        **{name: us_summary(values) for name, values in samples.items()},
    }


# --- 1. merges --------------------------------------------------------------------------


class RefoldFloor:
    """The read and fold of a pair's 2,000 events into every dataset: the work a merge
    cannot avoid (the baseline), without the graph, the writes or the passes."""

    def __init__(self, store: ProfileStore) -> None:
        self.log = store._log
        # Derived datasets (scores) are computed by their job, not folded on a merge.
        self.projections = {n: p for n, p in store.projections.items() if not p.derived}
        self.routes = routes_for(self.projections)

    def __call__(self, pair: Pair) -> dict[str, tuple[Any, int]]:
        events = merged_changes(self.log, [pair.a, pair.b])
        return fold_stream(self.projections, events, routes=self.routes)


def ingest_pairs(store: ProfileStore, pairs_events: list[Event]) -> dict[str, float]:
    with stage(f"ingest {len(pairs_events)} pair events, refresh"):
        ingest_s = append_all(store, pairs_events)
        started = time.perf_counter()
        store.refresh()
        refresh_s = time.perf_counter() - started
    return {
        "events": len(pairs_events),
        "ingest_seconds": round(ingest_s, 2),
        "refresh_seconds": round(refresh_s, 2),
    }


def check_merged(store: ProfileStore, pair: Pair, canonical: str) -> None:
    """Both keys read the one merged profile, holding both keys' identifiers."""
    for key in (pair.a, pair.b):
        raw = store.profile_raw(key)
        assert raw.canonical_id == canonical, (key, raw.canonical_id, canonical)
        identities = bytes(raw.sections["identities"])
        assert all(mark.encode() in identities for mark in pair.marks), key


def bench_link_merges(store: ProfileStore, pairs: list[Pair], label: str) -> dict[str, Any]:
    """``store.link`` of each pair, timed to the merged profile's first read, interleaved
    with the refold floor of the same pair (alternating which goes first)."""
    floor = RefoldFloor(store)
    perf = time.perf_counter_ns
    merge_ns: list[int] = []
    link_ns: list[int] = []
    floor_ns: list[int] = []
    before = graph_reads(store)
    with merge_instruments(store) as instruments, stage(f"{len(pairs)} link merges ({label})"):
        instruments.active = False  # on only inside merge(): the floor reads the log too
        for i, pair in enumerate(pairs):
            gc.collect()

            def merge(pair: Pair = pair) -> None:
                instruments.active = True
                t0 = perf()
                result = store.link(pair.a, pair.b, actor="bench")
                t1 = perf()
                raw = store.profile_raw(pair.a)
                t2 = perf()
                instruments.active = False
                assert raw.canonical_id == result.profile_id and "identities" in raw.sections
                link_ns.append(t1 - t0)
                merge_ns.append(t2 - t0)

            def refold(pair: Pair = pair) -> None:
                t0 = perf()
                floor(pair)
                floor_ns.append(perf() - t0)

            for step in [refold, merge] if i % 2 == 0 else [merge, refold]:
                step()
            check_merged(store, pair, store.resolve(pair.a))
    # The baseline does the same work: its sections are the merged profile's.
    folded = floor(pairs[0])
    merged = store.profile(pairs[0].a)
    assert {n: s for n, (s, _) in folded.items()} == merged.sections, "baseline differs"
    return {
        "store": label,
        "merges": len(pairs),
        "graph_before": before,
        "merge_to_readable_ms": ms_summary(merge_ns),
        "link_call_ms": ms_summary(link_ns),
        "refold_floor_ms": ms_summary(floor_ns),
        "per_merge": per_merge(instruments.totals(), len(pairs)),
    }


def realtime_datasets(store: ProfileStore) -> list[str]:
    return [n for n in store.projections if store.cadence(n) == "realtime"]


def follower_child(home: str) -> None:
    """Follow the real-time datasets of the store at ``home`` (as ``profilestore worker``
    does) until stdin closes, then print where its time went, as one JSON line."""
    store = open_store(sqlite_settings(Path(home)))
    follower = Follower(store, realtime_datasets(store))
    with merge_instruments(store) as instruments:
        follower.start()
        try:
            deadline = time.monotonic() + 30
            while not (follower.leased and follower.graph.leased):
                if time.monotonic() > deadline or not follower.live:
                    raise RuntimeError(f"the follower never took its leases: {follower.last_error}")
                time.sleep(0.01)
            print(json.dumps({"ready": True}), flush=True)
            sys.stdin.readline()  # the parent writes a line (or closes stdin) to stop us
        finally:
            follower.stop()
    print(
        json.dumps(
            {
                "calls": instruments.totals(),
                "poll_ms": follower.poll_s * 1000,
                "last_error": follower.last_error,
            }
        ),
        flush=True,
    )
    store.close()


def read_json_line(child: subprocess.Popen[str], what: str) -> dict[str, Any]:
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"{what} exited (code {child.wait()}) without reporting")
    found: dict[str, Any] = json.loads(line)
    return found


def wait_idle(store: ProfileStore, followed: Sequence[str], timeout: float = 30.0) -> None:
    """Until the follower has applied the whole log: graph and followed datasets."""
    documents = store._documents
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head = store.head()
        tracked = [documents.tracking(n) for n in followed]
        if graph_position(documents) >= head and all(
            t is not None and t.position >= head for t in tracked
        ):
            return
        time.sleep(0.005)
    raise TimeoutError("the follower did not catch up")


def time_into(samples: list[int], call: Callable[[], Any]) -> None:
    started = time.perf_counter_ns()
    call()
    samples.append(time.perf_counter_ns() - started)


def follow_one(
    store: ProfileStore, pair: Pair, datasets: set[str], merge_ns: list[int], reads: list[int]
) -> None:
    """Append the link and read the profile every POLL_S until it is the merged one: the
    canonical id, every dataset either key had, both keys' identifiers."""
    link = IdentityLinked(
        event_id=f"bench-link-{pair.a}-{pair.b}",
        customer_id=pair.a,
        other=pair.b,
        occurred_at=dt.datetime.now(dt.UTC),
        source="bench",
        actor="bench",
    )
    marks = [m.encode() for m in pair.marks]
    perf = time.perf_counter_ns
    n = 0
    t0 = perf()
    store.append([link])
    while True:
        n += 1
        try:
            raw = store.profile_raw(pair.a)
        except CustomerNotFound:
            raw = None  # between the graph's step and the regroup
        if (
            raw is not None
            and raw.canonical_id is not None
            and raw.canonical_id.startswith("~")
            and set(raw.sections) >= datasets
            and all(m in bytes(raw.sections["identities"]) for m in marks)
        ):
            break
        if perf() - t0 > 30e9:
            raise TimeoutError(f"{pair} not merged 30 s after the link was appended")
        time.sleep(POLL_S)
    merge_ns.append(perf() - t0)
    reads.append(n)


def bench_follower_merges(store: ProfileStore, home: Path, pairs: list[Pair]) -> dict[str, Any]:
    """With a Follower on the real-time datasets in a child process (as the worker runs
    it): append an ``identity.linked`` event, then read the profile every POLL_S until it
    is the merged one in every dataset."""
    floor = RefoldFloor(store)
    followed = realtime_datasets(store)
    merge_ns: list[int] = []
    floor_ns: list[int] = []
    reads: list[int] = []
    expected = {
        pair: set(store.profile_raw(pair.a).sections) | set(store.profile_raw(pair.b).sections)
        for pair in pairs
    }
    before = graph_reads(store)
    command = [sys.executable, str(Path(__file__).resolve()), "--follower-child", str(home)]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
    ) as child:
        assert child.stdin is not None
        try:
            read_json_line(child, "the follower")
            with stage(f"{len(pairs)} merges through the follower"):
                for i, pair in enumerate(pairs):
                    wait_idle(store, followed)
                    gc.collect()
                    steps: list[Callable[[], None]] = [
                        partial(time_into, floor_ns, partial(floor, pair)),
                        partial(follow_one, store, pair, expected[pair], merge_ns, reads),
                    ]
                    for step in steps if i % 2 == 0 else steps[::-1]:
                        step()
                wait_idle(store, followed)
        finally:
            child.stdin.close()  # the follower stops and reports
        report = read_json_line(child, "the follower")
    assert report["last_error"] is None, report["last_error"]
    for pair in pairs:
        check_merged(store, pair, store.resolve(pair.a))
    return {
        "merges": len(pairs),
        "followed": followed,
        "poll_ms": report["poll_ms"],
        "graph_before": before,
        "append_to_merged_ms": ms_summary(merge_ns),
        "refold_floor_ms": ms_summary(floor_ns),
        "reads_until_merged_median": statistics.median(reads),
        "per_merge": per_merge(report["calls"], len(pairs)),
    }


# --- ingest cost of resolve() on append -------------------------------------------------


@contextmanager
def resolve_timer(store: ProfileStore) -> Iterator[list[float]]:
    """Time ``ProfileStore.resolve`` inside ``append`` (it looks each batch's keys up)."""
    spent: list[float] = []
    original = ProfileStore.resolve

    def timed(self: ProfileStore, customer_id: str) -> str:
        started = time.perf_counter()
        try:
            return original(self, customer_id)
        finally:
            spent.append(time.perf_counter() - started)

    ProfileStore.resolve = timed  # type: ignore[method-assign]
    try:
        yield spent
    finally:
        ProfileStore.resolve = original  # type: ignore[method-assign]


# --- main -------------------------------------------------------------------------------


def run(mode_name: str, work: Path) -> dict[str, Any]:
    mode = MODES[mode_name]
    started = time.perf_counter()
    result: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode_name,
        "batch_size": BATCH,
        "seed": SEED,
        "machine": machine_info(None),
        "source": source_state(),
    }
    conditions: dict[str, dict[str, float]] = {}

    def note(phase: str) -> None:
        """How fast the CPU was and how loaded the machine, as each phase starts."""
        conditions[phase] = {
            "calibration_ms": calibrate(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        }

    customers, per_customer = mode["customers"], mode["events_per_customer"]
    with stage(f"generate {customers} customers x ~{per_customer} events + link patterns"):
        population = synthetic_population(customers, per_customer)
        sources = pair_sources()
        merges = mode["merges"]
        small_pairs, small_events = pairs_of("small", merges, sources)
        link_pairs, link_events = pairs_of("link", merges, sources)
        follow_pairs, follow_events = pairs_of("follow", merges, sources)
    keys = len({e.customer_id for e in population.events})
    added = population.added_events
    info(f"{len(population.events)} events ({added} from the patterns), {keys} keys")

    # --- the log, ingested once (not timed beyond the figure) --------------------------
    log_home = work / "log"
    note("ingest")
    store = open_store(sqlite_settings(log_home))
    try:
        with stage(f"ingest {len(population.events)} events"), resolve_timer(store) as spent:
            ingest_s = append_all(store, population.events)
    finally:
        store.close()
    ingest = {
        "events": len(population.events),
        "seconds": round(ingest_s, 2),
        "events_per_s": round(len(population.events) / ingest_s),
        "resolve_calls": len(spent),
        "resolve_seconds": round(sum(spent), 2),
    }
    info(f"ingest: {ingest}")

    # --- 3. resolve from scratch, rules on and off ---------------------------------------
    note("resolve")
    resolve, home = bench_resolve(work, log_home, mode["resolve_rounds"])
    shutil.rmtree(log_home, ignore_errors=True)
    store = open_store(sqlite_settings(home))
    try:
        with stage("graph summary"):
            graph = graph_summary(store, population)
        info(f"graph: {graph}")
        # --- 2. lookups after merges ------------------------------------------------------
        note("lookups")
        lookups = bench_lookups(store, population, mode)
        info(f"lookups: {lookups}")
        # The merges do not need the population: a long-running process would not hold
        # 1.3M events on its heap either (every collection walks it).
        del population
        gc.collect()
        # --- 1. merges in the population's store -------------------------------------------
        pairs_ingest = ingest_pairs(store, link_events + follow_events)
        note("link_merges_population")
        link = bench_link_merges(store, link_pairs, "population")
        info(f"link merges: {link}")
        note("follower_merges")
        follow = bench_follower_merges(store, home, follow_pairs)
        info(f"follower merges: {follow}")
    finally:
        store.close()
    # --- 1. merges in a store holding only the pairs ---------------------------------------
    small = open_store(sqlite_settings(work / "pairs-only"))
    try:
        small_ingest = ingest_pairs(small, small_events)
        note("link_merges_pairs_only")
        small_link = bench_link_merges(small, small_pairs, "pairs only")
        info(f"link merges, pairs only: {small_link}")
    finally:
        small.close()

    note("end")
    figures: dict[str, Any] = {
        "merge_link_p50_ms": link["merge_to_readable_ms"]["p50"],
        "merge_link_p99_ms": link["merge_to_readable_ms"]["p99"],
        "merge_refold_floor_p50_ms": link["refold_floor_ms"]["p50"],
        "merge_link_vs_refold_floor": ratio(
            link["merge_to_readable_ms"]["p50"], link["refold_floor_ms"]["p50"]
        ),
        "merge_profiles_at_ms": link["graph_before"]["profiles_at_ms"],
        "merge_changes_between_ms": link["graph_before"]["changes_between_ms"],
        "merge_link_pairs_only_p50_ms": small_link["merge_to_readable_ms"]["p50"],
        "merge_link_pairs_only_p99_ms": small_link["merge_to_readable_ms"]["p99"],
        "merge_link_population_vs_pairs_only": ratio(
            link["merge_to_readable_ms"]["p50"], small_link["merge_to_readable_ms"]["p50"]
        ),
        "merge_follower_p50_ms": follow["append_to_merged_ms"]["p50"],
        "merge_follower_p99_ms": follow["append_to_merged_ms"]["p99"],
        "merge_follower_vs_refold_floor": ratio(
            follow["append_to_merged_ms"]["p50"], follow["refold_floor_ms"]["p50"]
        ),
        "lookup_merged_p50_us": lookups["id_merged"]["p50_us"],
        "lookup_merged_p99_us": lookups["id_merged"]["p99_us"],
        "lookup_unmerged_p50_us": lookups["id_unmerged"]["p50_us"],
        "lookup_unmerged_p99_us": lookups["id_unmerged"]["p99_us"],
        "lookup_merged_vs_unmerged": ratio(
            lookups["id_merged"]["p50_us"], lookups["id_unmerged"]["p50_us"]
        ),
        "get_raw_unmerged_p50_us": lookups["get_raw_unmerged"]["p50_us"],
        "lookup_unmerged_vs_get_raw": ratio(
            lookups["id_unmerged"]["p50_us"], lookups["get_raw_unmerged"]["p50_us"]
        ),
        "find_merged_p50_us": lookups["find_merged"]["p50_us"],
        "find_unmerged_p50_us": lookups["find_unmerged"]["p50_us"],
        "find_merged_vs_unmerged": ratio(
            lookups["find_merged"]["p50_us"], lookups["find_unmerged"]["p50_us"]
        ),
        "afind_raw_merged_vs_unmerged": ratio(
            lookups["afind_raw_merged"]["p50_us"], lookups["afind_raw_unmerged"]["p50_us"]
        ),
        "resolve_events_per_s": resolve["rules_events_per_s"],
        "resolve_no_rules_events_per_s": resolve["no_rules_events_per_s"],
        "resolve_vs_no_rules_time": resolve["rules_vs_no_rules_time"],
        "resolve_events_per_cpu_s": resolve["rules_events_per_cpu_s"],
        "resolve_vs_no_rules_cpu": resolve["rules_vs_no_rules_cpu"],
        "clusters": graph["clusters"],
        "clusters_by_size": graph["clusters_by_size"],
        "links_made_by_rule": graph["links_made_by_rule"],
        "links_refused_by_reason": graph["links_refused_by_reason"],
        "placeholder_identifier_events": graph["placeholder_identifier_events"],
        "placeholder_identifiers_in_graph": graph["placeholder_identifiers_in_graph"],
    }
    result.update(figures)
    result["targets"] = judge(figures, TARGETS, COMPARISONS)
    result["details"] = {
        "conditions": conditions,
        "population": {
            "customers": customers,
            "events_per_customer": per_customer,
            "keys": keys,
            "events_from_patterns": added,
            "ingest": ingest,
        },
        "resolve": resolve,
        "graph": graph,
        "lookups": lookups,
        "merges": {
            "pair_events": PAIR_EVENTS,
            "pairs_ingest_population": pairs_ingest,
            "pairs_ingest_pairs_only": small_ingest,
            "link_population": link,
            "link_pairs_only": small_link,
            "follower_population": follow,
        },
    }
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k customers (~2 minutes)")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "bench" / "results" / "identity.json",
        help="where to write the JSON (default: bench/results/identity.json)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the stores here (default: a temp dir)")
    parser.add_argument("--follower-child", metavar="HOME", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.follower_child:
        follower_child(args.follower_child)
        return 0
    os.chdir(REPO)  # the default settings file and projections are found from here
    mode = "quick" if args.quick else "full"
    return run_and_write(lambda work: run(mode, work), mode, args, "profilestore-bench-identity-")


if __name__ == "__main__":
    sys.exit(main())
