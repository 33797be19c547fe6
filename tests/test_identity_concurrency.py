"""Identity resolution under concurrency: links racing ingest, each other, and crashes.

Issue 12 asks that a merge racing with ingest to either key, two merges racing on
overlapping clusters, merge chains and a link that would form a cycle lose nothing, fold
nothing twice and leave documents equal to a rebuild. Each case runs real OS processes
(multiprocessing, spawn) on one store, on an SQLite log and on a PostgreSQL one (the
documents are the embedded store, shared by every process): one appends, others link and
unlink as an operator would, another keeps the documents (a follower, repeated refreshes,
or the worker, killed and restarted). The processes only act and say what they did; the
checks run in the test process once they are done (:func:`check_store`):

- after a final refresh the documents equal a rebuild (a fresh documents store over the
  same log, refreshed: the same sections at the same positions) and ``verify()`` is ok;
- nothing lost, nothing folded twice: each profile's counters (orders, page views, how
  often each key's email was seen) equal the events appended to its keys;
- the graph says what the operators said: no call failed, every call appended its fact,
  and keys whose last word was a link are one profile, keys split apart are apart.

Timing decides the interleaving only, never an assertion; plans (pauses, kill moments)
come from seeded generators. A killed worker's leases are released by the test at once
(:func:`release_leases_of`) instead of lapsing after their time to live. Three
deterministic cases at the end pin down the races the process cases found, with the
other process's move made at the exact moment it hurts. The slow variant of the kills is
marked ``stress`` (outside the default run, as in ``test_stress.py``).
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import random
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier
from multiprocessing.synchronize import Event as Flag
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest

from profilestore.config import load_settings
from profilestore.documents import DocumentStore
from profilestore.identity import TARGET
from profilestore.pipeline import lease_name
from profilestore.store import ProfileStore, open_store

T0 = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
SPAWN = multiprocessing.get_context("spawn")  # no fork of a threaded test process
WAIT_S = 120.0
"""The longest a test waits on a process or a barrier: a hang fails, it does not stall."""


# --- the store every process opens ------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where the store is: its home (documents, and an SQLite log) and, for PostgreSQL,
    the log's URL and schema. Picklable, so every process opens the same store."""

    home: str
    log_url: str = ""
    schema: str = ""

    def environ(self) -> dict[str, str]:
        if not self.log_url:
            return {}
        return {
            "PROFILESTORE_EVENT_LOG__URL": self.log_url,
            "PROFILESTORE_EVENT_LOG__POSTGRES_SCHEMA": self.schema,
        }

    def open(self) -> ProfileStore:
        return open_store(load_settings(environ=self.environ(), home=self.home))


@pytest.fixture
def target(log_backend: dict[str, Any], tmp_path: Path) -> Target:
    """The store of a test, on each log backend (see ``log_backend`` in conftest)."""
    home = str(tmp_path / "home")
    if log_backend["name"] == "sqlite":
        return Target(home)
    return Target(home, log_backend["url"], log_backend["schema"])


# --- what the processes do --------------------------------------------------------------


def batch(keys: Sequence[str], number: int) -> list[dict[str, Any]]:
    """Per key: an order, a page view and the key's own email seen again (an identifier
    no other key holds: no rule links anyone, only operators do)."""
    at = (T0 + dt.timedelta(seconds=number)).isoformat()
    events: list[dict[str, Any]] = []
    for key in keys:
        prefix = f"{key}-{number}"
        common = {"customer_id": key, "occurred_at": at}
        events += [
            {
                **common,
                "type": "order.placed",
                "event_id": f"{prefix}-order",
                "order_id": f"{prefix}-order",
                "items": [{"sku": "S1", "unit_price": "10.00"}],
                "total": "10.00",
                "currency": "USD",
            },
            {
                **common,
                "type": "browse.page_viewed",
                "event_id": f"{prefix}-view",
                "url": f"https://shop.example/{number}",
            },
            {
                **common,
                "type": "identifier.seen",
                "event_id": f"{prefix}-seen",
                "kind": "email",
                "value": f"{key}@example.com",
            },
        ]
    return events


EVENTS_PER_KEY = 3
"""Events :func:`batch` appends per key."""

Verb = Literal["link", "unlink"]


@dataclass(frozen=True)
class Op:
    """An operator's call: link or unlink two keys, after a pause."""

    verb: Verb
    key: str
    other: str
    pause_s: float = 0.0


@dataclass
class Said:
    """What the processes reported."""

    errors: list[str] = field(default_factory=list)
    batches: dict[tuple[str, ...], int] = field(default_factory=dict)
    """Batches appended, per key group."""
    appended: int = 0
    outcomes: list[tuple[Op, int]] = field(default_factory=list)
    """Every operator call made, with the number of events it appended."""


def ingest(
    target: Target,
    rounds: list[list[str]],
    batches: int,
    start: Barrier | None,
    stop: Flag | None,
    pause_s: float,
    said: Any,
) -> None:
    """Per round (after the barrier, if any): append ``batches`` batches for its keys,
    numbered from 1 (the test appended batch 0), ``pause_s`` apart; stop early when
    told."""
    try:
        with target.open() as store:
            for keys in rounds:
                if start is not None:
                    start.wait(WAIT_S)
                done = 0
                for number in range(1, batches + 1):
                    if stop is not None and stop.is_set():
                        break
                    said.put(("appended", store.append(batch(keys, number)).appended))
                    done = number
                    time.sleep(pause_s)
                said.put(("batches", (tuple(keys), done)))
    except Exception:
        said.put(("error", "ingest: " + traceback.format_exc()))
    said.put(("done", "ingest"))


def operate(
    target: Target, rounds: list[list[Op]], start: Barrier | None, stop: Flag | None, said: Any
) -> None:
    """Link and unlink as an operator would (``profilestore identity merge``): per round,
    after the barrier, its calls in order; stop early when told."""
    try:
        with target.open() as store:
            for ops in rounds:
                if start is not None:
                    start.wait(WAIT_S)
                for op in ops:
                    if stop is not None and stop.is_set():
                        break
                    time.sleep(op.pause_s)
                    call = store.link if op.verb == "link" else store.unlink
                    try:
                        result = call(op.key, op.other, actor="ops")
                    except Exception:
                        said.put(("error", f"{op}: " + traceback.format_exc()))
                        continue
                    said.put(("outcome", (op, result.appended)))
    except Exception:
        said.put(("error", "operate: " + traceback.format_exc()))
    said.put(("done", "operate"))


Keeper = Literal["follower", "refresh", "worker"]


def keep(target: Target, how: Keeper, stop: Flag, said: Any) -> None:
    """Keep the documents until told to stop: a follower of the real-time datasets, a
    loop of refreshes, or the worker (a follower plus the scheduled refreshes)."""
    from profilestore.follower import Follower
    from profilestore.worker import Worker

    try:
        with target.open() as store:
            said.put(("started", how))
            if how == "refresh":
                while not stop.is_set():
                    store.refresh()
            else:
                realtime = [n for n in store.projections if store.cadence(n) == "realtime"]
                worker = Worker(store) if how == "worker" else None
                follower = worker.follower if worker else Follower(store, realtime, poll_s=0.005)
                assert follower is not None
                with worker or follower:
                    stop.wait(WAIT_S)
                if follower.last_error is not None:
                    said.put(("error", f"{how}: the follower failed: {follower.last_error}"))
                failed = (
                    [name for name, _, report in worker.reports if report is None] if worker else []
                )
                if failed:
                    said.put(("error", f"{how}: scheduled refreshes failed: {failed}"))
    except Exception:
        said.put(("error", f"{how}: " + traceback.format_exc()))
    said.put(("done", how))


class Processes:
    """The processes of a case: started, awaited, and their reports gathered."""

    def __init__(self) -> None:
        self.said: Any = SPAWN.Queue()
        self.running: list[BaseProcess] = []
        self.keepers: dict[BaseProcess, Flag] = {}
        """Each keeper with its own stop flag: a process killed while it waits on a flag
        leaves the flag's lock state behind, so a killed keeper's flag is never set."""
        self.reports = Said()

    def start(self, function: Any, *args: Any) -> BaseProcess:
        process = SPAWN.Process(target=function, args=(*args, self.said), name=function.__name__)
        process.start()
        self.running.append(process)
        return process

    def keeper(self, target: Target, how: Keeper) -> BaseProcess:
        """Start a keeper; returns once it has opened the store (so a kill lands in work)."""
        stop = SPAWN.Event()
        process = self.start(keep, target, how, stop)
        self.keepers[process] = stop
        self.gather(until="started")
        return process

    def gather(self, *, until: str, count: int = 1) -> None:
        """Read reports until ``count`` of kind ``until`` arrived."""
        seen = 0
        while seen < count:
            kind, value = self.said.get(timeout=WAIT_S)
            if kind == until:
                seen += 1
            elif kind == "error":
                self.reports.errors.append(value)
            elif kind == "appended":
                self.reports.appended += value
            elif kind == "batches":
                keys, number = value
                self.reports.batches[keys] = number
            elif kind == "outcome":
                self.reports.outcomes.append(value)

    def finish(self, actors: int) -> Said:
        """Wait for ``actors`` processes to be done, then stop the keepers; returns what
        was reported, and starts afresh for another round."""
        self.gather(until="done", count=actors)
        for stop in self.keepers.values():
            stop.set()
        self.gather(until="done", count=len(self.keepers))
        for process in self.running:
            process.join(WAIT_S)
            assert process.exitcode == 0, f"{process.name} exited with {process.exitcode}"
        reports = self.reports
        self.reports, self.running, self.keepers = Said(), [], {}
        return reports

    def kill(self, process: BaseProcess) -> None:
        process.kill()  # SIGKILL: no finally, no lease given back
        process.join(WAIT_S)
        self.running.remove(process)
        del self.keepers[process]

    def close(self) -> None:
        for process in self.running:
            if process.exitcode is None:
                process.kill()
                process.join(WAIT_S)


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    try:
        yield started
    finally:
        started.close()


# --- the checks -------------------------------------------------------------------------


def snapshot(documents: DocumentStore) -> dict[tuple[str, str], Any]:
    """Every live section, decoded to builtins, with its position (but the scores: computed
    by the worker's scoring job from the folded ones, never by a refresh)."""
    found = {}
    for dataset in documents.schemas:
        if dataset == "scores":
            continue
        ids = list(documents.customer_ids(dataset))
        for customer_id, stored in documents.load(dataset, ids).items():
            found[(dataset, customer_id)] = (msgspec.to_builtins(stored.section), stored.position)
    return found


def rebuilt(store: ProfileStore, tmp_path: Path) -> dict[tuple[str, str], Any]:
    """The documents a fresh documents store over the same log holds once refreshed."""
    fresh = msgspec.structs.replace(
        store.settings,
        documents=msgspec.structs.replace(
            store.settings.documents,
            url=f"sqlite:///{tmp_path}/rebuilt-{uuid.uuid4().hex[:8]}.sqlite",
        ),
    )
    with open_store(fresh) as rebuilding:
        rebuilding.refresh()
        return snapshot(rebuilding._documents)


def differences(live: dict[Any, Any], expected: dict[Any, Any]) -> list[str]:
    """Where the live documents and a rebuild differ: the failure message."""
    return [
        f"{key}: live at {live[key][1] if key in live else None}, "
        f"rebuilt at {expected[key][1] if key in expected else None}"
        for key in sorted(set(live) | set(expected))
        if live.get(key) != expected.get(key)
    ]


def clusters(keys: Sequence[str], ops: Sequence[Op]) -> list[frozenset[str]]:
    """The profiles the operators' last words make: each pair's last call decides
    whether it is linked (every pair is worked by one process, so its calls are ordered)."""
    linked: dict[frozenset[str], bool] = {}
    for op in ops:
        linked[frozenset((op.key, op.other))] = op.verb == "link"
    groups = [{key} for key in keys]
    for pair, on in linked.items():
        if on and pair <= set(keys):
            joining = [g for g in groups if g & pair]
            groups = [g for g in groups if not g & pair] + [set().union(*joining)]
    return [frozenset(g) for g in groups]


def check_store(
    target: Target,
    tmp_path: Path,
    *,
    batches: dict[str, int],
    expected: Sequence[frozenset[str]],
) -> None:
    """Refresh once more, then: documents equal a rebuild, verify is ok, and each profile
    of ``expected`` holds exactly its keys and each of their events once (``batches``:
    per key, how many batches were appended)."""
    with target.open() as store:
        store.refresh()
        live, expected_documents = snapshot(store._documents), rebuilt(store, tmp_path)
        assert live == expected_documents, differences(live, expected_documents)
        verified = store.verify()
        assert verified.ok, verified.drift[:3]
        for cluster in expected:
            profiles = {store.resolve(key) for key in cluster}
            assert len(profiles) == 1, f"{sorted(cluster)} are in {len(profiles)} profiles"
            (profile_id,) = profiles
            assert set(store.members(profile_id) or (profile_id,)) == cluster
            sections = store.profile(profile_id).sections
            total = sum(batches[key] for key in cluster)
            assert sections["orders"].order_count == total
            assert sections["browsing"].page_view_count == total
            seen = {i.value: i.times_seen for i in sections["identities"].identifiers}
            assert seen == {f"{key}@example.com": batches[key] for key in cluster}


def appended_per_call(said: Said) -> list[int]:
    return [appended for _, appended in said.outcomes]


def release_leases_of(target: Target, pid: int) -> None:
    """Let a killed process's leases lapse now rather than after ``lease_ttl_s`` (at
    least 5 s, too long for ten kills): what the time to live does, without the wait.
    Only that process's leases: live processes keep theirs."""
    with target.open() as store:
        documents = store._documents
        names = [lease_name(TARGET, "graph")]
        for dataset in store.projections:
            names += [lease_name(dataset, "dataset"), lease_name(dataset, "rebuild")]
        now = dt.datetime.now(dt.UTC)
        for name in names:
            holder = documents.lease_holder(name, now)
            if holder is not None and holder.split(":")[1] == str(pid):
                documents.release_lease(name, holder)


# --- 1. a merge racing with ingest to either key ------------------------------------------


def flapping(pairs: Sequence[tuple[str, str]], calls: int, seed: int) -> list[Op]:
    """Link and unlink each pair in turn, ``calls`` calls in all, each after a short
    seeded pause: a pair's calls alternate, starting with a link."""
    rng = random.Random(seed)
    linked: set[tuple[str, str]] = set()
    ops = []
    for number in range(calls):
        pair = pairs[number % len(pairs)]
        verb: Verb = "unlink" if pair in linked else "link"
        linked ^= {pair}
        ops.append(Op(verb, *pair, pause_s=rng.uniform(0.0, 0.1)))
    return ops


@pytest.mark.parametrize("keeper", ["follower", "refresh"])
def test_a_merge_racing_with_ingest_to_either_key_equals_a_rebuild(
    target: Target, keeper: Keeper, processes: Processes, tmp_path: Path
) -> None:
    # One process appends batches for both keys without a pause, another links them,
    # unlinks them and links them again, while a third keeps the documents.
    keys = ["ann", "bob"]
    ops = flapping([("ann", "bob")], calls=5, seed=1)
    with target.open() as store:
        store.append(batch(keys, 0))  # a key must exist to be linked
    start = SPAWN.Barrier(2)
    processes.keeper(target, keeper)
    processes.start(ingest, target, [keys], 40, start, None, 0.0)
    processes.start(operate, target, [ops], start, None)
    said = processes.finish(actors=2)
    assert said.errors == []
    assert said.appended == EVENTS_PER_KEY * len(keys) * 40
    assert appended_per_call(said) == [1] * len(ops)  # a relink is a new link
    check_store(target, tmp_path, batches=dict.fromkeys(keys, 41), expected=clusters(keys, ops))


# --- 2. merges racing on overlapping clusters, chains, cycles ------------------------------

SHAPES: dict[str, list[list[tuple[Verb, str, str]]]] = {
    # Per operator process, its calls; all processes start a trial at once.
    "overlapping": [[("link", "a", "b")], [("link", "b", "c")], []],
    "chain": [[("link", "a", "b"), ("link", "b", "c")], [("link", "c", "d")], [("link", "d", "e")]],
    "cycle": [
        [("link", "a", "b"), ("unlink", "a", "b")],
        [("link", "b", "c")],
        [("link", "c", "a")],
    ],
}
"""Overlapping: A-B and B-C at once. Chain: A into B, then B into C, while C joins D and
D joins E. Cycle: A-B, B-C and C-A at once (then A-B retracted: C still joins them)."""


def trial_keys(trial: int) -> list[str]:
    return [f"t{trial}-{letter}" for letter in "abcde"]


def test_merges_racing_on_overlapping_clusters_chains_and_cycles_make_one_profile(
    target: Target, processes: Processes, tmp_path: Path
) -> None:
    # Three operator processes start each trial at a barrier with an ingest process; a
    # follower keeps the documents throughout. Trials cycle through the shapes.
    trials = 6
    shapes = [list(SHAPES)[trial % len(SHAPES)] for trial in range(trials)]
    every_key = [key for trial in range(trials) for key in trial_keys(trial)]
    with target.open() as store:
        store.append(batch(every_key, 0))
    plans: list[list[list[Op]]] = [[] for _ in range(3)]
    for trial, shape in enumerate(shapes):
        key = dict(zip("abcde", trial_keys(trial), strict=True))
        for operator, calls in enumerate(SHAPES[shape]):
            plans[operator].append([Op(verb, key[a], key[b]) for verb, a, b in calls])
    start = SPAWN.Barrier(len(plans) + 1)
    processes.keeper(target, "follower")
    rounds = [trial_keys(trial) for trial in range(trials)]
    processes.start(ingest, target, rounds, 3, start, None, 0.0)
    for plan in plans:
        processes.start(operate, target, plan, start, None)
    said = processes.finish(actors=1 + len(plans))
    assert said.errors == []
    planned = [op for plan in plans for ops in plan for op in ops]
    assert appended_per_call(said) == [1] * len(planned)
    expected = [c for trial in range(trials) for c in clusters(trial_keys(trial), planned)]
    check_store(target, tmp_path, batches=dict.fromkeys(every_key, 4), expected=expected)


# --- 3. the worker killed at random moments, restarted -------------------------------------


def kill_and_restart(
    target: Target,
    processes: Processes,
    tmp_path: Path,
    *,
    kills: int,
    checks: int,
    seed: int,
) -> None:
    """Links and events flow (one ingest, one operator process) while the worker is
    killed ``kills`` times at seeded random moments and restarted; ``checks`` times
    everything stops for a check, then flows again on new keys."""
    rng = random.Random(seed)
    for round_number in range(checks):
        keys = [f"r{round_number}-{letter}" for letter in "abcd"]
        pairs = [(keys[0], keys[1]), (keys[1], keys[2]), (keys[2], keys[3])]
        ops = flapping(pairs, calls=200, seed=rng.randrange(1000))
        with target.open() as store:
            store.append(batch(keys, 0))
        stop = SPAWN.Event()
        worker = processes.keeper(target, "worker")
        processes.start(ingest, target, [keys], 100_000, None, stop, 0.02)
        processes.start(operate, target, [ops], None, stop)
        for _ in range(kills // checks):
            time.sleep(rng.uniform(0.05, 0.5))
            processes.kill(worker)
            release_leases_of(target, worker.pid or 0)
            worker = processes.keeper(target, "worker")
        stop.set()
        said = processes.finish(actors=2)
        assert said.errors == []
        assert all(appended == 1 for appended in appended_per_call(said))
        batches = {key: 1 + said.batches[tuple(keys)] for key in keys}
        check_store(
            target,
            tmp_path,
            batches=batches,
            expected=clusters(keys, [op for op, _ in said.outcomes]),
        )


def test_a_worker_killed_while_links_and_events_flow_then_restarted_equals_a_rebuild(
    target: Target, processes: Processes, tmp_path: Path
) -> None:
    kill_and_restart(target, processes, tmp_path, kills=10, checks=1, seed=3)


@pytest.mark.stress
def test_a_worker_killed_many_times_with_a_check_after_every_few_equals_a_rebuild(
    target: Target, processes: Processes, tmp_path: Path
) -> None:
    kill_and_restart(target, processes, tmp_path, kills=30, checks=5, seed=4)


# --- the races the process cases found, made deterministic ---------------------------------


def test_an_operators_calls_hold_while_another_process_keeps_the_graph(tmp_path: Path) -> None:
    # A follower (here a thread over a second store: another lease holder, as another
    # process would be) keeps the graph and applies new links when it next polls, so an
    # operator's call finds the graph behind its previous call. Each call must still see
    # that call: an unlink right after a link retracts it, a relink after an unlink
    # appends a new link, and the keys end as the last call left them.
    from profilestore.follower import Follower

    target = Target(str(tmp_path / "home"))
    verbs: list[Verb] = ["link", "unlink", "link", "unlink", "link"]
    with target.open() as operator, target.open() as keeper:
        operator.append(batch(["ann", "bob"], 0))
        realtime = [n for n in keeper.projections if keeper.cadence(n) == "realtime"]
        with Follower(keeper, realtime, poll_s=0.2) as follower:
            for _ in range(int(WAIT_S / 0.01)):  # it keeps the graph from its first step
                if follower.graph.leased:
                    break
                time.sleep(0.01)
            assert follower.graph.leased, "the follower never took the graph"
            appended = []
            for verb in verbs:
                call = operator.link if verb == "link" else operator.unlink
                appended.append(call("ann", "bob", actor="ops").appended)
        assert follower.last_error is None
        assert appended == [1] * len(verbs)
        operator.resolve_identity()
        assert operator.resolve("ann") == operator.resolve("bob") != "ann"


def test_a_batch_appended_while_a_merged_profile_is_refolded_is_folded_once(
    tmp_path: Path,
) -> None:
    # A merge refolds the profile from its keys' streams, one query per key. Another
    # process's batch for both keys commits between the two reads (made to happen here
    # by appending from inside the first read): the refold must not see it for one key
    # only, or the section's position would hide the other key's event for good.
    target = Target(str(tmp_path / "home"))
    with target.open() as store:
        store.append(batch(["ann", "bob"], 0))
        store.refresh()
        log: Any = store._log
        read_stream = log.customer_changes
        reads: list[str] = []

        def read_while_another_process_appends(customer_id: str, **kwargs: Any) -> Any:
            found = read_stream(customer_id, **kwargs)
            reads.append(customer_id)
            if len(reads) == 1:
                store.append(batch(["ann", "bob"], 1))
            return found

        log.customer_changes = read_while_another_process_appends
        try:
            store.link("ann", "bob", actor="ops")
        finally:
            log.customer_changes = read_stream
    check_store(
        target,
        tmp_path,
        batches={"ann": 2, "bob": 2},
        expected=[frozenset({"ann", "bob"})],
    )


def test_regrouping_datasets_never_built_writes_nothing_while_the_graph_moves(
    tmp_path: Path,
) -> None:
    # Nobody has refreshed the datasets yet, so a regroup (a merge reaching scheduled
    # datasets at once) has nothing to refold: their first refresh folds every profile
    # from the log. Another process's graph consumer applies a link while the regroup
    # opens (made to happen here from inside the regroup's first write); the regroup
    # must still write no section, or that section, kept by no later regroup, would be
    # read by the first refresh as if it were current.
    target = Target(str(tmp_path / "home"))
    with target.open() as operator, target.open() as keeper:
        operator.append(batch(["ann", "bob"], 0))
        keeper.resolve_identity()
        assert not keeper._leases.acquire([TARGET], required=False, kind="graph")
        operator.link("ann", "bob", actor="ops")  # appended; the keeper applies it later
        documents: Any = operator._documents
        put_records = documents.put_records

        def keeper_applies_the_link_meanwhile(records: Any) -> None:
            put_records(records)
            if keeper._leases.holder_of(TARGET, kind="graph") == keeper.holder:
                keeper._leases.release([TARGET], kind="graph")
                keeper.resolve_identity()

        documents.put_records = keeper_applies_the_link_meanwhile
        try:
            operator.apply_identity()
        finally:
            documents.put_records = put_records
        assert operator.resolve("ann") == operator.resolve("bob") != "ann"
        assert snapshot(documents) == {}
        operator.unlink("ann", "bob", actor="ops")
    check_store(
        target,
        tmp_path,
        batches={"ann": 1, "bob": 1},
        expected=[frozenset({"ann"}), frozenset({"bob"})],
    )
