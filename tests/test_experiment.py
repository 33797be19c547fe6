"""Experiments: deterministic, stable arms; a holdout never sent; conversions reported."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from profilestore.config import ExperimentSettings, load_settings
from profilestore.errors import ConfigError
from profilestore.experiment import HOLDOUT, Experiment, wilson
from profilestore.firing import read_firings
from profilestore.store import ProfileStore, open_store

T0 = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def order(event_id: str, customer_id: str, order_id: str, at: dt.datetime) -> dict[str, Any]:
    return {
        "type": "order.placed",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": at.isoformat(),
        "order_id": order_id,
        "items": [{"sku": "S1", "unit_price": "5"}],
        "total": "5",
        "currency": "EUR",
    }


def consent(event_id: str, customer_id: str) -> dict[str, Any]:
    return {
        "type": "consent.given",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": T0.isoformat(),
        "channel": "email",
    }


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[ProfileStore]:
    path = tmp_path / "profilestore.toml"
    path.write_text(
        "[triggers]\n"
        'welcome = { trigger = "triggers.welcome", enabled = true }\n'
        "[experiments.welcome_copy]\n"
        'trigger = "welcome"\n'
        "variants = { plain = 1, warm = 1 }\n"
        "holdout = 0.2\n"
        "window_days = 7\n"
        "[contact]\n"
        'quiet_hours = { start = "00:00", end = "00:00" }\n'
        "[delivery]\n"
        'file = "{home}/outbox.jsonl"\n'
    )
    with open_store(load_settings(path, environ={}, home=tmp_path / "home"), clock=clock) as s:
        s.run_triggers()
        clock.now += dt.timedelta(seconds=1)
        yield s


def test_arms_are_drawn_by_a_hash_in_their_shares() -> None:
    experiment = Experiment.from_settings(
        "x", ExperimentSettings(trigger="t", variants={"a": 1, "b": 3}, holdout=0.2)
    )
    drawn = Counter(experiment.draw(f"cust-{i}") for i in range(20_000))
    assert abs(drawn[HOLDOUT] / 20_000 - 0.2) < 0.015
    assert abs(drawn["a"] / 20_000 - 0.2) < 0.015
    assert abs(drawn["b"] / 20_000 - 0.6) < 0.015
    assert experiment.draw("cust-7") == experiment.draw("cust-7")


def test_the_wilson_interval() -> None:
    low, high = wilson(5, 10)
    assert (round(low, 3), round(high, 3)) == (0.237, 0.763)
    assert wilson(0, 0) == (0.0, 0.0)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0


def test_the_holdout_is_decided_once_and_never_queued_and_the_report_counts_conversions(
    store: ProfileStore, clock: Clock
) -> None:
    customers = [f"c{i}" for i in range(40)]
    store.append([consent(f"g-{c}", c) for c in customers])
    store.run_triggers()
    firings = {f.customer_id: f for f in read_firings(store._documents)}
    assert set(firings) == set(customers)
    arms = {c: f.variant for c, f in firings.items()}
    assert set(arms.values()) == {"plain", "warm", HOLDOUT}
    held = [c for c, arm in arms.items() if arm == HOLDOUT]
    statuses = {o.customer_id: o.status for c in customers for o in store.trigger_log(c)}
    assert {c for c, s in statuses.items() if s == "held_out"} == set(held)
    queued = {d.message_id for d in store.outbox("pending")}
    assert queued == {f.message_id for c, f in firings.items() if c not in held}
    # Orders: every held-out customer within the window, no variant customer at all, and
    # one variant customer too late.
    late = next(c for c, arm in arms.items() if arm != HOLDOUT)
    store.append(
        [order(f"o-{c}", c, f"O-{c}", clock.now + dt.timedelta(days=2)) for c in held]
        + [order(f"o-{late}", late, "O-late", clock.now + dt.timedelta(days=8))]
    )
    report = {arm.arm: arm for arm in store.experiment_report("welcome_copy").arms}
    assert report[HOLDOUT].customers == len(held) == report[HOLDOUT].conversions
    assert report[HOLDOUT].rate == 1.0
    assert report["plain"].conversions == report["warm"].conversions == 0
    assert report["plain"].customers + report["warm"].customers == 40 - len(held)


def test_a_merged_customer_keeps_the_arm_its_first_key_was_given(
    store: ProfileStore, clock: Clock
) -> None:
    from profilestore.experiment import assign

    experiment = store.experiments["welcome_copy"]
    # Find two keys the hash places in different arms.
    first = "k-0"
    other = next(
        f"k-{i}" for i in range(1, 100) if experiment.draw(f"k-{i}") != experiment.draw(first)
    )
    documents = store._documents
    arm = assign(documents, experiment, [first], first, clock.now)
    clock.now += dt.timedelta(seconds=1)
    assert assign(documents, experiment, [first, other], other, clock.now) == arm
    assert assign(documents, experiment, [other, first], other, clock.now) == arm


def test_an_experiment_must_name_a_configured_trigger(tmp_path: Path) -> None:
    path = tmp_path / "profilestore.toml"
    path.write_text('[experiments.x]\ntrigger = "nope"\nvariants = { a = 1 }\n')
    with pytest.raises(ConfigError, match="names no trigger") as raised:
        load_settings(path, environ={})
    assert raised.value.path == "experiments.x.trigger"
    path.write_text('[experiments.x]\ntrigger = "welcome"\nvariants = { holdout = 1 }\n')
    with pytest.raises(ConfigError, match="'holdout' is the name"):
        load_settings(path, environ={})


def test_experiments_report_on_the_command_line(store: ProfileStore) -> None:
    import json

    from click.testing import CliRunner

    from profilestore.cli import main

    config = str(Path(store.settings.home).parent / "profilestore.toml")
    home = str(store.settings.home)
    shown = CliRunner().invoke(
        main, ["--config", config, "--home", home, "experiments", "report", "welcome_copy"]
    )
    assert shown.exit_code == 0, shown.output
    assert [a["arm"] for a in json.loads(shown.stdout)["arms"]] == [HOLDOUT, "plain", "warm"]
    missing = CliRunner().invoke(
        main, ["--config", config, "--home", home, "experiments", "report", "nope"]
    )
    assert missing.exit_code == 2
