"""Scores: the engagement fold, the stage rules on hand-made customers, 4I, RFM, tiers,
channel preference, lifetime value against a population's known future, and the scoring
job on a real store (atomic switch of fits while reads and writes race)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from profilestore import scoring
from profilestore.cli import main
from profilestore.config import ScoreSettings, Settings, load_settings
from profilestore.errors import ConfigError, ScoringUnavailable
from profilestore.events import (
    ConsentGiven,
    ConsentWithdrawn,
    EmailClicked,
    EmailOpened,
    EmailSent,
    Event,
    MessageReplied,
    OrderLine,
    OrderPlaced,
    PageViewed,
    ProductViewed,
    ReferralMade,
    SurveyAnswered,
)
from profilestore.ltv import BgNbdParams, GammaGammaParams
from profilestore.ltv_simulation import engagement_sections, order_events, simulate
from profilestore.scorer import FIT
from profilestore.scoring import ScoreFit
from profilestore.store import ProfileStore, open_store
from projections import engagement
from projections.engagement import Engagement
from projections.scores import Scores

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
SETTINGS = ScoreSettings()
_ids = iter(range(10**9))


def ev(cls: type[Event], customer: str, days_ago: float, **payload: Any) -> Any:
    return cls(
        event_id=f"e-{next(_ids)}",
        customer_id=customer,
        occurred_at=NOW - dt.timedelta(days=days_ago),
        **payload,
    )


def order(customer: str, days_ago: float, order_id: str, total: str = "20.00", **kw: Any) -> Any:
    line = OrderLine(sku="s1", unit_price=Decimal(total))
    return ev(
        OrderPlaced,
        customer,
        days_ago,
        order_id=order_id,
        items=(line,),
        total=Decimal(total),
        currency="USD",
        **kw,
    )


def folded(events: Iterable[Event]) -> Engagement:
    section = Engagement()
    for event in events:
        section = engagement.fold(section, event)
    return section


def score_all(
    customers: dict[str, Engagement], settings: ScoreSettings = SETTINGS
) -> tuple[dict[str, Scores], ScoreFit]:
    ids = list(customers)
    sections = [customers[c] for c in ids]
    columns = scoring.facts(ids, sections, NOW, settings, settings.lifecycle.window_days)
    fitted = scoring.fit(columns, NOW, settings, 0.0)
    scored = scoring.apply(ids, sections, fitted, NOW, settings)
    return dict(zip(ids, scored, strict=True)), fitted


def hand_made() -> dict[str, Engagement]:
    return {
        "nobody": folded([ev(ConsentGiven, "nobody", 3, channel="email")]),
        "browser": folded([ev(PageViewed, "browser", 2, url="https://s/", session_id="s1")]),
        "engaged": folded(
            [
                *(
                    ev(EmailClicked, "engaged", d, message_id=f"m{d}", url="https://s/")
                    for d in (1, 5, 20)
                ),
                *(ev(ProductViewed, "engaged", d, sku="s1", session_id="v") for d in (2, 3)),
            ]
        ),
        "stale": folded(
            [
                ev(EmailClicked, "stale", d, message_id=f"m{d}", url="https://s/")
                for d in (40, 50, 60)
            ]
        ),
        "buyer": folded([order("buyer", 10, "b1")]),
        "loyal": folded(
            [order("loyal", 300, "l1"), order("loyal", 100, "l2"), order("loyal", 30, "l3")]
        ),
        "lapsed": folded(
            [order("lapsed", 700, "x1"), order("lapsed", 600, "x2"), order("lapsed", 400, "x3")]
        ),
        "promoter": folded(
            [
                order("promoter", 200, "p1"),
                order("promoter", 90, "p2"),
                ev(SurveyAnswered, "promoter", 5, survey_id="n1", nps=10, comment="great"),
                ev(ReferralMade, "promoter", 4, referral_id="r1"),
            ]
        ),
    }


# --- the engagement fold ----------------------------------------------------------------


def test_engagement_counts_orders_once_keeps_first_and_last_and_spend() -> None:
    section = folded(
        [
            order("c", 10, "o2", "30.00"),
            order("c", 20, "o1", "10.00"),
            order("c", 10, "o2", "30.00"),  # the same order again
        ]
    )
    assert section.orders == 2
    assert section.first_order_at == NOW - dt.timedelta(days=20)
    assert section.last_order_at == NOW - dt.timedelta(days=10)
    assert section.first_order_total == Decimal("10.00")
    assert section.spend[0].total == Decimal("40.00")


def test_engagement_keeps_day_buckets_of_the_window_only() -> None:
    events = [
        ev(EmailClicked, "c", d, message_id=f"m{d}", url="https://s/") for d in (200, 100, 5, 1)
    ]
    section = folded(events)
    assert section.email_clicks == 4
    assert [d.clicks for d in section.days] == [1, 1]
    assert section.days[0].day == (NOW - dt.timedelta(days=5)).date()


def test_engagement_channels_count_responses_and_the_latest_consent() -> None:
    section = folded(
        [
            ev(ConsentGiven, "c", 10, channel="email"),
            ev(ConsentGiven, "c", 10, channel="sms"),
            ev(ConsentWithdrawn, "c", 12, channel="sms"),  # older than the grant: stands
            ev(EmailSent, "c", 9, message_id="m1", campaign="x"),
            ev(EmailOpened, "c", 8, message_id="m1"),
            ev(MessageReplied, "c", 7, channel="sms"),
        ]
    )
    channels = {c.channel: c for c in section.channels}
    assert channels["email"].sent == 1 and channels["email"].opened == 1
    assert channels["sms"].replied == 1 and channels["sms"].consent is True


# --- stages -----------------------------------------------------------------------------


def test_stages_of_hand_made_customers_with_the_rule_and_its_facts() -> None:
    scores, _ = score_all(hand_made())
    lifecycle = {c: s.lifecycle.stage for c, s in scores.items() if s.lifecycle}
    journey = {c: s.journey.stage for c, s in scores.items() if s.journey}
    assert lifecycle == {
        "nobody": "Discover",
        "browser": "Explore",
        "engaged": "Engage",
        "stale": "Discover",
        "buyer": "Buy",
        "loyal": "Buy",
        "lapsed": "Buy",
        "promoter": "Buy",
    }
    assert journey == {
        "nobody": "awareness",
        "browser": "awareness",
        "engaged": "consideration",
        "stale": "awareness",
        "buyer": "purchase",
        "loyal": "loyalty",
        "lapsed": "purchase",  # three orders, but none in 180 days
        "promoter": "loyalty",
    }
    engaged = scores["engaged"].lifecycle
    assert engaged is not None
    assert engaged.because == (
        "Engage: clicks_recent 3 >= 3, product_views_recent 2 >= 2 (last 30 days)"
    )
    assert [(f.name, f.value) for f in engaged.facts] == [
        ("clicks_recent", 3.0),
        ("product_views_recent", 2.0),
    ]


def test_a_threshold_changed_in_config_moves_customers_and_the_rules_version() -> None:
    path_settings = load_settings(environ={"PROFILESTORE_SCORES__LIFECYCLE__WINDOW_DAYS": "90"})
    scores, _ = score_all(hand_made(), path_settings.scores)
    before, _ = score_all(hand_made())
    assert scores["stale"].lifecycle is not None and before["stale"].lifecycle is not None
    assert scores["stale"].lifecycle.stage == "Explore"  # three clicks 40-60 days ago count
    assert scores["stale"].lifecycle.rules_version != before["stale"].lifecycle.rules_version


def test_rules_in_config_are_checked_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[scores.lifecycle]\nrules = [{ stage = "Buy", at_least = { order = 1 } }, '
        '{ stage = "Discover" }]\n'
    )
    with pytest.raises(ConfigError, match=r"scores\.lifecycle\.rules\[0\]\.at_least"):
        load_settings(config, environ={})
    config.write_text('[scores.journey]\nrules = [{ stage = "x", at_least = { orders = 1 } }]\n')
    with pytest.raises(ConfigError, match="the last rule must have no condition"):
        load_settings(config, environ={})


# --- 4I, RFM, tiers, channels -----------------------------------------------------------


def test_4i_components_and_points() -> None:
    busy = Engagement(
        visits=50, page_views=200, product_views=100, last_active_at=NOW, email_clicks=50
    )
    scores, _ = score_all({"busy": busy, "idle": Engagement()})
    involvement = scores["busy"].involvement
    assert involvement is not None and involvement.score == 100.0
    assert involvement.percentile > scores["idle"].involvement.percentile  # type: ignore[union-attr]
    assert [c.name for c in involvement.components] == [
        "visits",
        "page_views",
        "product_views",
        "days_since_active",
    ]
    interaction = scores["busy"].interaction
    assert interaction is not None and interaction.score == 25.0  # clicks alone: one of four
    intimacy = scores["idle"].intimacy
    assert intimacy is not None and intimacy.score == 50.0  # nothing known: neutral
    promoter = score_all(hand_made())[0]["promoter"].influence
    assert promoter is not None
    assert {c.name: c.points for c in promoter.components}["nps"] == 100.0


def test_rfm_quintiles_over_buyers_and_value_tiers() -> None:
    customers = {
        f"c{i:03}": folded(
            [
                order(f"c{i:03}", 400 - 3 * i - k, f"o{i}-{k}", str(10 + i))
                for k in range(1 + i // 10)
            ]
        )
        for i in range(100)
    }
    customers["prospect"] = Engagement(visits=3)
    scores, fitted = score_all(customers)
    assert scores["prospect"].rfm is None and scores["prospect"].value_tier == "prospect"
    best, worst = scores["c099"].rfm, scores["c000"].rfm
    assert best is not None and worst is not None
    assert (best.recency, best.frequency, best.monetary) == (5, 5, 5)
    assert (worst.recency, worst.frequency, worst.monetary) == (1, 1, 1)
    tiers = [scores[c].value_tier for c in customers if c != "prospect"]
    assert tiers.count("platinum") == 5
    assert tiers.count("gold") == 15
    assert len(fitted.recency_bounds) == 4


def test_channel_preference_is_ranked_by_rate_within_consent() -> None:
    section = folded(
        [
            ev(ConsentGiven, "c", 30, channel="email"),
            ev(ConsentGiven, "c", 30, channel="push"),
            *(ev(EmailSent, "c", 20 - i, message_id=f"m{i}", campaign="x") for i in range(4)),
            ev(EmailOpened, "c", 10, message_id="m1"),
            ev(EmailClicked, "c", 10, message_id="m1", url="https://s/"),
            ev(MessageReplied, "c", 5, channel="push"),
            ev(MessageReplied, "c", 5, channel="sms"),  # no consent to sms: not a preference
        ]
    )
    scores, _ = score_all({"c": section})
    assert [(r.channel, r.responses, r.rate) for r in scores["c"].channels] == [
        ("email", 2, 0.5),
        ("push", 1, None),
    ]


# --- lifetime value ---------------------------------------------------------------------


def test_predicted_value_ranks_a_known_population_better_than_past_spend() -> None:
    truth = simulate(
        BgNbdParams(r=0.25, alpha=30.0, a=0.8, b=2.5),
        GammaGammaParams(p=6.0, q=3.5, gamma=15.0),
        20_000,
        seed=5,
    )
    sections = list(engagement_sections(truth, NOW))
    ids = [f"c{i}" for i in range(len(sections))]
    columns = scoring.facts(ids, sections, NOW, SETTINGS, 30)
    fitted = scoring.fit(columns, NOW, SETTINGS, 0.0)
    assert fitted.ltv is not None and fitted.ltv_note is None
    assert fitted.ltv.purchases.params.r == pytest.approx(0.25, rel=0.15)
    scored = scoring.apply(ids, sections, fitted, NOW, SETTINGS)
    predicted = np.array([s.lifetime.expected_spend for s in scored])  # type: ignore[union-attr]
    model = stats.spearmanr(predicted, truth.future_spend).statistic
    naive = stats.spearmanr(truth.past_spend, truth.future_spend).statistic
    assert model > naive + 0.1, (model, naive)
    assert model > 0.4
    alive = np.array([s.lifetime.p_alive for s in scored])  # type: ignore[union-attr]
    assert alive[truth.alive].mean() > alive[~truth.alive].mean()


def test_from_the_log_predicted_value_ranks_a_known_population_better_than_past_spend(
    settings: Settings,
) -> None:
    """The whole shipped path: a population with a hidden purchase rate, dropout and spend
    per customer, as order events; folded, fitted, scored, read from the profiles, and
    ranked against what each goes on to spend in the held-out year."""
    truth = simulate(
        BgNbdParams(r=0.25, alpha=30.0, a=0.8, b=2.5),
        GammaGammaParams(p=6.0, q=3.5, gamma=15.0),
        1_500,
        seed=9,
    )
    with open_store(settings, clock=lambda: NOW) as store:
        events = list(order_events(truth, NOW))
        assert store.append(events).appended == len(events) == truth.frequency.sum() + 1_500
        store.fit_scores()
        fitted = store.score_fit()
        predicted = np.array(
            [
                store.profile(f"sim-{i}", ["scores"]).sections["scores"].lifetime.expected_spend
                for i in range(truth.frequency.size)
            ]
        )
    assert fitted is not None and fitted.ltv is not None, fitted
    model = stats.spearmanr(predicted, truth.future_spend).statistic
    naive = stats.spearmanr(truth.past_spend, truth.future_spend).statistic
    assert model > naive + 0.1, (model, naive)


def test_no_repeat_buyer_scores_without_lifetime_value_and_says_why() -> None:
    scores, fitted = score_all({"a": folded([order("a", 10, "a1")]), "b": Engagement()})
    assert fitted.ltv is None and fitted.ltv_note is not None
    assert scores["a"].lifetime is None and scores["a"].value_tier is not None


# --- on a store -------------------------------------------------------------------------


def population(customers: int) -> list[Any]:
    events: list[Any] = []
    for i in range(customers):
        c = f"cust-{i:04}"
        events.append(ev(ConsentGiven, c, 300, channel="email"))
        for k in range(i % 4):
            events.append(order(c, 250 - 60 * k - i % 50, f"{c}-o{k}", str(10 + i % 37)))
        for k in range(i % 7):
            events.append(ev(ProductViewed, c, k * 3 + 1, sku="s", session_id=f"{c}-{k}"))
        if i % 5 == 0:
            events.append(ev(EmailClicked, c, 2, message_id=f"{c}-m", url="https://s/"))
    return events


@pytest.fixture
def scored_store(settings: Settings) -> Any:
    with open_store(settings, clock=lambda: NOW) as store:
        store.append(population(60))
        store.refresh()
        yield store


def test_scores_are_a_section_of_the_profile_with_freshness_and_explained(
    scored_store: ProfileStore,
) -> None:
    store = scored_store
    with pytest.raises(ScoringUnavailable):
        store.scores_summary()
    report = store.fit_scores()
    assert report.sections_written["scores"] == 60
    profile = store.profile("cust-0003")
    scores = profile.sections["scores"]
    assert scores.fit_version == store.score_fit().version  # type: ignore[union-attr]
    assert scores.computed_at == NOW
    assert profile.freshness["scores"].position == profile.freshness["engagement"].position
    assert store.freshness(["scores"])["scores"].events_behind == 0
    explained = store.explain_scores("cust-0003")
    assert explained.fit is not None and explained.fit.version == scores.fit_version
    assert explained.facts["orders"] == 3
    assert set(explained.rules) == {"lifecycle", "journey"}
    summary = store.scores_summary()
    assert summary.customers == 60 and sum(summary.lifecycle.values()) == 60
    # A run of the daily scoring is recorded like any refresh, and moves nothing.
    store.refresh(["scores"], trigger="schedule")
    last = store.last_success("scores")
    assert last is not None and last.trigger == "schedule"
    assert store.scores_summary().movement["lifecycle"] == dict.fromkeys(summary.lifecycle, 0)
    # A refresh of everything folds; it does not score (scores have their own schedule).
    assert store.refresh().sections_written["scores"] == 0


@pytest.mark.parametrize("swap", [True, False], ids=["swap", "in-place"])
def test_a_refit_racing_reads_writes_and_daily_scoring_never_mixes_two_fits(
    settings: Settings, swap: bool
) -> None:
    settings = msgspec.structs.replace(
        settings, scores=msgspec.structs.replace(settings.scores, swap=swap)
    )
    with open_store(settings, clock=lambda: NOW) as store:
        store.append(population(60))
        store.refresh()
        store.fit_scores()
        _race(store)


def _race(store: ProfileStore) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []
    fits_seen: set[str] = set()
    tables: set[tuple[float, ...]] = set()
    reads = 0

    def forever(step: Any) -> None:
        try:
            while not stop.is_set():
                step()
        except BaseException as error:  # reported by the main thread
            errors.append(error)
            stop.set()

    counter = iter(range(10**6))

    def write() -> None:
        # Orders, views and clicks move every part of the next fit (the 4I tables too).
        n = next(counter)
        customer = f"cust-{n % 60:04}"
        store.append(
            [
                order(customer, 1, f"race-{n}", str(5 + n % 90)),
                ev(ProductViewed, customer, 0.5, sku="s", session_id=f"race-{n}"),
                ev(EmailClicked, customer, 0.5, message_id=f"race-{n}", url="https://s/"),
            ]
        )

    def check_one() -> None:
        nonlocal reads
        for i in range(0, 60, 7):
            scores = store.profile(f"cust-{i:04}", ["scores"]).sections["scores"]
            fitted = store.score_fit(scores.fit_version)
            assert fitted is not None, "a profile names a fit that is not stored"
            fits_seen.add(fitted.version)
            tables.add(tuple(fitted.four_i["involvement"].quantiles))
            # Every part was computed with the fit the section names.
            for name in scoring.FOUR_I:
                part = getattr(scores, name)
                expected = scoring._percentile(fitted.four_i[name], np.array([part.score]))[0]
                assert part.percentile == expected, (name, scores.fit_version)
            reads += 1

    threads = [
        threading.Thread(target=forever, args=(write,)),
        threading.Thread(target=forever, args=(check_one,)),
        threading.Thread(target=forever, args=(check_one,)),
        threading.Thread(target=forever, args=(lambda: store.fit_scores(required=False),)),
        threading.Thread(target=forever, args=(lambda: store.score(trigger="schedule"),)),
    ]
    for thread in threads:
        thread.start()
    deadline = threading.Event()
    deadline.wait(6.0)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[0]
    assert reads > 0
    assert len(fits_seen) >= 2, "the race never saw a refit"
    assert len(tables) >= 2, "the fits seen did not differ: the check above proved nothing"
    # Every fit a live section names is kept.
    assert {s.fit_version for s in _all_scores(store)} <= set(store._documents.get_records(FIT))


def _all_scores(store: ProfileStore) -> list[Scores]:
    return [store.profile(f"cust-{i:04}", ["scores"]).sections["scores"] for i in range(60)]


def test_cli_scores_commands(settings: Settings, tmp_path: Path) -> None:
    home = tmp_path / "cli"
    with open_store(load_settings(environ={}, home=home)) as store:
        store.append(population(30))
        store.refresh()
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(main, ["--home", str(home), *args], catch_exceptions=False)

    assert run("scores", "summary").exit_code == 1
    fitted = run("scores", "fit")
    assert fitted.exit_code == 0, fitted.stderr
    assert msgspec.json.decode(fitted.stdout)["sections_written"] == 30
    summary = msgspec.json.decode(run("scores", "summary").stdout)
    assert summary["customers"] == 30
    explained = msgspec.json.decode(run("scores", "explain", "cust-0001").stdout)
    assert explained["scores"]["fit_version"] == explained["fit"]["version"]
    refreshed = run("scores", "refresh")
    assert refreshed.exit_code == 0
    report = run("scores", "report", "--out", str(tmp_path / "plots"))
    assert report.exit_code == 0, report.stderr
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["engagement_4i.png", "movement.png", "stages.png"]
    assert all((tmp_path / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_http_scores_summary(settings: Settings) -> None:
    from litestar.testing import TestClient

    from profilestore.api import create_app
    from profilestore.config import ApiSettings

    opened = msgspec.structs.replace(
        settings, api=msgspec.structs.replace(ApiSettings(), anonymous_scopes=["read"])
    )
    with open_store(opened, clock=lambda: NOW) as store:
        store.append(population(20))
        store.refresh()
        with TestClient(create_app(store)) as client:
            assert client.get("/v1/scores/summary").status_code == 404
            store.score()
            answer = client.get("/v1/scores/summary")
            assert answer.status_code == 200
            body = answer.json()
            assert body["customers"] == 20
            assert set(body["four_i"]) == set(scoring.FOUR_I)
            assert body["transitions"] == {}  # the first run: nothing to move from
            profile = client.get("/v1/profiles/cust-0002").json()
            assert profile["sections"]["scores"]["fit_version"] == body["fit_version"]
            assert "scores" in profile["freshness"]


# --- how customers moved between runs ----------------------------------------------------


class _Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def test_the_summary_counts_transitions_between_runs_of_hand_made_customers(
    settings: Settings,
) -> None:
    clock = _Clock(NOW)
    with open_store(settings, clock=clock) as store:
        store.append(
            [
                ev(ConsentGiven, "nobody", 3, channel="email"),
                ev(PageViewed, "browser", 2, url="https://s/", session_id="s1"),
                *(
                    ev(EmailClicked, "engaged", d, message_id=f"m{d}", url="https://s/")
                    for d in (1, 5, 20)
                ),
                *(ev(ProductViewed, "engaged", d, sku="s1", session_id="v") for d in (2, 3)),
                order("loyal", 300, "l1"),
                order("loyal", 100, "l2"),
                order("loyal", 30, "l3"),
            ]
        )
        store.fit_scores()
        first = store.scores_summary()
        assert first.transitions == {} and first.previous_computed_at is None
        assert first.lifecycle == {"Buy": 1, "Discover": 1, "Engage": 1, "Explore": 1}

        # The next day the browser buys, the engaged customer cools off (all their
        # activity is more than 30 days old by then) and a newcomer browses.
        clock.now = NOW + dt.timedelta(days=31)
        store.append(
            [
                order("browser", -30.5, "b1"),
                ev(PageViewed, "newbie", -30.5, url="https://s/", session_id="n1"),
            ]
        )
        store.score()
        second = store.scores_summary()

    assert second.previous_computed_at == NOW
    assert second.transitions["lifecycle"] == {
        "Engage": {"Discover": 1},
        "Explore": {"Buy": 1},
        "new": {"Explore": 1},
    }
    assert second.transitions["journey"] == {
        "awareness": {"purchase": 1},
        "consideration": {"awareness": 1},
        "new": {"awareness": 1},
    }
    tiers = second.transitions["value_tier"]
    assert tiers["new"] == {"prospect": 1}
    assert sum(tiers["prospect"].values()) == 1 and "prospect" not in tiers["prospect"]
    # Net movement agrees with the transitions: in minus out, stage by stage.
    for group, moved in second.transitions.items():
        net: dict[str, int] = {}
        for was, to in moved.items():
            for stage, count in to.items():
                net[stage] = net.get(stage, 0) + count
                net[was] = net.get(was, 0) - count
        net.pop("new", None)
        assert {k: v for k, v in second.movement[group].items() if v} == {
            k: v for k, v in net.items() if v
        }


# --- a trigger that reads the scores ------------------------------------------------------

THANKS_TRIGGER = """
from profilestore.events import OrderPlaced
from profilestore.trigger import Fire, Trigger


def decide(event, profile, now, settings):
    scores = profile.section("scores")
    if scores.computed_at is None:
        return None  # not scored yet: nothing to go on
    return Fire(
        payload={
            "lifecycle": scores.lifecycle.stage,
            "value_tier": scores.value_tier,
            "fit_version": scores.fit_version,
            "computed_at": scores.computed_at.isoformat(),
        },
        dedupe_key=f"order:{event.order_id}",
    )


TRIGGER = Trigger(
    name="tier_thanks",
    reads=(OrderPlaced,),
    channel="email",
    purpose="marketing",
    transactional=False,
    decide=decide,
    description="thanks a buyer in the words of their value tier",
    needs=("scores",),
)
"""


def test_a_trigger_that_needs_scores_sees_them_as_last_computed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from profilestore.firing import read_firings

    module = f"tier_thanks_{tmp_path.name[-6:]}".replace("-", "_")
    (tmp_path / f"{module}.py").write_text(THANKS_TRIGGER)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "profilestore.toml"
    path.write_text(
        f'[triggers]\ntier_thanks = {{ trigger = "{module}", enabled = true }}\n'
        # Scores are not in the default payload allowlist (a message says nothing of how
        # a customer was profiled unless the operator allows it): this test allows them.
        '[contact]\npayload_fields = ["lifecycle", "value_tier", "fit_version", "computed_at"]\n'
    )
    clock = _Clock(NOW)
    with open_store(load_settings(path, environ={}, home=tmp_path / "home"), clock=clock) as store:
        store.run_triggers()  # enabled from now on
        clock.now = NOW + dt.timedelta(minutes=1)
        store.append(
            [
                ev(ConsentGiven, "ann", 10, channel="email"),
                order("ann", 9, "a1", "80.00"),
                order("ann", 5, "a2", "90.00"),
            ]
        )
        store.fit_scores()
        scored_at = clock.now
        fitted = store.score_fit()
        assert fitted is not None
        ann = store.profile("ann", ["scores", "engagement"])
        # Bob buys after the scoring: his decision sees an empty (unscored) section.
        clock.now = NOW + dt.timedelta(minutes=2)
        store.append([ev(ConsentGiven, "bob", 1, channel="email"), order("bob", 0.5, "b1")])
        store.run_triggers()
        firings = {f.dedupe_key: f for f in read_firings(store._documents)}

    scores = ann.sections["scores"]
    # The freshness block of a profile read, as for any section.
    assert ann.freshness["scores"].position == ann.freshness["engagement"].position > 0
    assert ann.freshness["scores"].refreshed_at == scored_at
    assert set(firings) == {"order:a1", "order:a2"}  # none for bob: not scored
    for firing in firings.values():
        assert firing.payload == {
            "lifecycle": "Buy",
            "value_tier": scores.value_tier,
            "fit_version": fitted.version,
            "computed_at": scored_at.isoformat(),
        }
