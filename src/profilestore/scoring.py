"""Scores from the folded ``engagement`` sections: facts, the population fit, and each
customer's scores under it. Pure: no store, no clock (callers pass ``now``).

Three steps, each over columns (numpy arrays, one value per customer), so a million
customers cost a few vector passes and one Python loop that builds the sections:

1. :func:`facts` turns a chunk of ``engagement`` sections into :class:`Columns`: the facts
   a rule may test (``config.SCORE_FACTS``) and the lifetime-value model's summaries;
2. :func:`fit` fits the population-wide parts on every customer's columns: the BG/NBD and
   Gamma-Gamma models (:mod:`profilestore.ltv`), the RFM quintile boundaries among buyers,
   each 4I score's percentile table and the value tiers' thresholds; the result, a
   :class:`ScoreFit`, is stored with its version and diagnostics;
3. :func:`apply` scores a chunk with a fit: the ``scores`` section of each customer.

The 4I scores (seed 002) are the mean of their components' points, each 0-100:
a count ``x`` gets ``100 * min(1, log(1 + x) / log(1 + cap))`` (the cap earns full points;
the logarithm keeps one heavy user from flattening everyone else), recency
``100 * exp(-days / 30)``, sentiment (-1 to 1) ``50 * (1 + mean)``, a survey score
(0-100) itself and NPS (0-10) ten times itself; what is unknown is neutral (50) for
Intimacy and nothing (0) elsewhere. :data:`COMPONENTS` lists them with their caps.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from profilestore import ltv
from profilestore.config import SCORE_FACTS, ScoreSettings, StageRules
from profilestore.errors import ScoringUnavailable
from profilestore.ltv import DEFAULT_HORIZON_DAYS
from projections.engagement import Engagement
from projections.scores import (
    ChannelRank,
    Component,
    Engagement4I,
    Fact,
    Lifetime,
    Placement,
    Rfm,
    Scores,
)

Floats = npt.NDArray[np.float64]
NEVER = 1e9
"""``days_since_*`` of something that never happened."""
SCORING_VERSION = "scores/1"
"""Version of this module's formulas (4I points, RFM, tiers): part of every fit version."""
FOUR_I = ("involvement", "interaction", "intimacy", "influence")
COMPONENTS: dict[str, tuple[tuple[str, str, float], ...]] = {
    # score -> (component, how its points are computed, cap)
    "involvement": (
        ("visits", "count", 50),
        ("page_views", "count", 200),
        ("product_views", "count", 100),
        ("days_since_active", "recency", 30),
    ),
    "interaction": (
        ("email_clicks", "count", 50),
        ("replies", "count", 20),
        ("tickets", "count", 10),
        ("comments", "count", 10),
    ),
    "intimacy": (
        ("sentiment", "sentiment", 1),
        ("survey_score", "survey", 100),
    ),
    "influence": (
        ("nps", "nps", 10),
        ("positive_posts", "count", 10),
        ("referrals", "count", 5),
    ),
}
PERCENTILES = np.linspace(0.0, 1.0, 101)


# --- facts ------------------------------------------------------------------------------


@dataclass
class Columns:
    """One chunk of customers as columns, in the order of ``customer_ids``."""

    customer_ids: list[str]
    sections: list[Engagement]
    facts: dict[str, Floats]
    survey_score: Floats
    positive_posts: Floats
    sentiment_known: npt.NDArray[np.bool_]
    survey_known: npt.NDArray[np.bool_]
    frequency: Floats
    recency: Floats
    age: Floats
    mean_spend: Floats


_FIXED = (
    *("orders", "visits", "page_views", "product_views", "searches", "email_opens"),
    *("email_clicks", "replies", "tickets", "comments", "surveys", "posts", "referrals"),
)
_RECENT = ("visits", "page_views", "product_views", "searches", "opens", "clicks", "replies")
_RECENT_TOO = ("tickets", "orders")


def _days(now: dt.datetime, then: dt.datetime | None) -> float:
    return NEVER if then is None else max(0.0, (now - then).total_seconds() / 86400)


def _money(amount: Any, currency: str, settings: ScoreSettings) -> float:
    if currency == settings.currency:
        return float(amount)
    return float(amount) * settings.exchange_rates.get(currency, 1.0)


def facts(
    customer_ids: Sequence[str],
    sections: Sequence[Engagement],
    now: dt.datetime,
    settings: ScoreSettings,
    window_days: int,
) -> Columns:
    """The facts of a chunk of customers at ``now``; ``*_recent`` over ``window_days``."""
    since = (now - dt.timedelta(days=window_days)).date()
    rows = []
    for s in sections:
        spend = sum(_money(p.total, p.currency, settings) for p in s.spend)
        first = (
            _money(s.first_order_total, s.first_order_currency or settings.currency, settings)
            if s.first_order_total is not None
            else 0.0
        )
        recent = [0] * (len(_RECENT) + len(_RECENT_TOO))
        for day in s.days:
            if day.day > since:
                recent[0] += day.visits
                recent[1] += day.page_views
                recent[2] += day.product_views
                recent[3] += day.searches
                recent[4] += day.opens
                recent[5] += day.clicks
                recent[6] += day.replies
                recent[7] += day.tickets
                recent[8] += day.orders
        first_at, last_at = s.first_order_at, s.last_order_at
        t_x = (last_at - first_at).total_seconds() / 86400 if first_at and last_at else 0.0
        age = (now - first_at).total_seconds() / 86400 if first_at else 0.0
        rows.append(
            (
                s.orders,
                s.visits,
                s.page_views,
                s.product_views,
                s.searches,
                s.email_opens,
                s.email_clicks,
                s.replies,
                s.tickets,
                s.comments,
                s.surveys,
                s.posts,
                s.referrals,
                spend,
                _days(now, last_at),
                _days(now, s.last_active_at),
                -1.0 if s.last_nps is None else float(s.last_nps),
                s.sentiment_sum / s.sentiment_count if s.sentiment_count else 0.0,
                s.survey_score_sum / s.survey_score_count if s.survey_score_count else 50.0,
                s.positive_posts,
                float(s.sentiment_count > 0),
                float(s.survey_score_count > 0),
                t_x,
                age,
                (spend - first) / (s.orders - 1) if s.orders > 1 else 0.0,
                *recent,
            )
        )
    table = np.array(rows, dtype=np.float64).reshape(len(rows), 25 + len(recent_names()))
    columns = {name: table[:, i] for i, name in enumerate(_FIXED)}
    columns["spend"] = table[:, 13]
    columns["days_since_order"] = table[:, 14]
    columns["days_since_active"] = table[:, 15]
    columns["nps"] = table[:, 16]
    columns["sentiment"] = table[:, 17]
    for i, name in enumerate(recent_names()):
        columns[name] = table[:, 25 + i]
    orders = columns["orders"]
    frequency = np.maximum(orders - 1, 0)
    span = np.asarray(np.where(frequency > 0, table[:, 22], 0.0), dtype=np.float64)
    # An order placed moments ago: an age of at least an hour keeps T > 0 (the model's).
    observed = np.asarray(np.maximum(np.maximum(table[:, 23], span), 1 / 24), dtype=np.float64)
    return Columns(
        customer_ids=list(customer_ids),
        sections=list(sections),
        facts=columns,
        survey_score=table[:, 18],
        positive_posts=table[:, 19],
        sentiment_known=table[:, 20] > 0,
        survey_known=table[:, 21] > 0,
        frequency=frequency,
        recency=span,
        age=observed,
        mean_spend=np.maximum(table[:, 24], 0.0),
    )


def concatenate(chunks: Sequence[Columns]) -> Columns:
    """Chunks as one set of columns, without their sections (what a fit needs)."""

    def joined(get: Any) -> Any:
        return np.concatenate([get(c) for c in chunks]) if chunks else np.zeros(0)

    names = list(chunks[0].facts) if chunks else []
    return Columns(
        customer_ids=[c for chunk in chunks for c in chunk.customer_ids],
        sections=[],
        facts={n: joined(lambda c, n=n: c.facts[n]) for n in names},
        survey_score=joined(lambda c: c.survey_score),
        positive_posts=joined(lambda c: c.positive_posts),
        sentiment_known=joined(lambda c: c.sentiment_known),
        survey_known=joined(lambda c: c.survey_known),
        frequency=joined(lambda c: c.frequency),
        recency=joined(lambda c: c.recency),
        age=joined(lambda c: c.age),
        mean_spend=joined(lambda c: c.mean_spend),
    )


def recent_names() -> tuple[str, ...]:
    return tuple(f"{n}_recent" for n in (*_RECENT, *_RECENT_TOO))


# --- 4I ---------------------------------------------------------------------------------


def _points(kind: str, value: Floats, cap: float) -> Floats:
    if kind == "count":
        return np.asarray(100 * np.minimum(1.0, np.log1p(np.maximum(value, 0)) / math.log1p(cap)))
    if kind == "recency":
        return np.asarray(np.where(value >= NEVER, 0.0, 100 * np.exp(-value / cap)))
    if kind == "sentiment":
        return np.asarray(50 * (1 + np.clip(value, -1, 1)))
    if kind == "survey":
        return np.asarray(np.clip(value, 0, 100))
    if kind == "nps":
        return np.asarray(np.where(value < 0, 0.0, value * 10))
    raise ValueError(kind)


def four_i(columns: Columns) -> dict[str, tuple[Floats, list[tuple[str, Floats, Floats]]]]:
    """Each 4I score (0-100) with its components' (name, values, points)."""
    values = {
        **columns.facts,
        "survey_score": columns.survey_score,
        "positive_posts": columns.positive_posts,
    }
    scored = {}
    for name, parts in COMPONENTS.items():
        components = []
        for component, kind, cap in parts:
            value = values[component]
            points = _points(kind, value, cap)
            if component == "sentiment":
                points = np.where(columns.sentiment_known, points, 50.0)
            components.append((component, value, points))
        score = np.asarray(np.mean([p for _, _, p in components], axis=0), dtype=np.float64)
        scored[name] = (np.round(score, 1), components)
    return scored


# --- the fit ----------------------------------------------------------------------------


class Distribution(msgspec.Struct, frozen=True, kw_only=True):
    """Population quantiles 0, 1, ..., 100 percent of a score."""

    quantiles: list[float]


class ScoreFit(msgspec.Struct, frozen=True, kw_only=True):
    """The population-wide parts, fitted together and applied together."""

    version: str
    fitted_at: dt.datetime
    scoring_version: str = SCORING_VERSION
    customers: int
    buyers: int
    repeat_buyers: int
    currency: str
    recency_bounds: list[float]
    """Quintile boundaries of days since the last order, among buyers (4 values)."""
    frequency_bounds: list[float]
    monetary_bounds: list[float]
    four_i: dict[str, Distribution]
    value_thresholds: list[float]
    """Predicted value at or above which a buyer is in each tier (as ``[scores] tiers``)."""
    tiers: list[str]
    ltv: ltv.LtvModel | None = None
    ltv_note: str | None = None
    """Why there is no lifetime-value model, when there is none."""
    horizon_days: float = DEFAULT_HORIZON_DAYS
    annual_discount_rate: float = 0.0
    fit_seconds: float = 0.0


def _quintiles(values: Floats) -> list[float]:
    if values.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(v) for v in np.quantile(values, [0.2, 0.4, 0.6, 0.8])]


def _horizon(settings: ScoreSettings) -> float:
    return settings.horizon_months * ltv.MONTH_DAYS


def fit(columns: Columns, now: dt.datetime, settings: ScoreSettings, seconds: float) -> ScoreFit:
    """The population fit over every customer's columns."""
    started = dt.datetime.now(dt.UTC)
    if not columns.customer_ids:
        raise ScoringUnavailable("no customer has an engagement section yet (refresh first)")
    orders = columns.facts["orders"]
    buyers = orders >= 1
    model: ltv.LtvModel | None = None
    note = None
    if (columns.frequency[buyers] > 0).any():
        model = ltv.fit(
            columns.frequency[buyers],
            columns.recency[buyers],
            columns.age[buyers],
            columns.mean_spend[buyers],
        )
        # A parameter on its bound (a population with no sign of dropout sends the Beta
        # parameters to infinity) predicts nothing sound: tiers fall back to past spend.
        # An optimiser that stopped without its convergence test (L-BFGS-B's "ABNORMAL"
        # line search, common at the optimum in floating point) is kept, and said.
        messages = (model.purchases.diagnostics.message, model.spend.diagnostics.message)
        converged = model.purchases.diagnostics.converged and model.spend.diagnostics.converged
        if not converged:
            note = f"no convergence reported: purchases: {messages[0]}; spend: {messages[1]}"
        if any("reached its bound" in m for m in messages):
            note = f"the lifetime-value fit ran to a parameter's bound: {'; '.join(messages)}"
            model = None
        elif model.spend.params.q <= 1:
            note = "the spend model has no finite mean (q <= 1): no lifetime value"
            model = None
        else:
            check = _lifetime(columns, model, settings)
            if check is not None and not np.isfinite(check.expected_spend[buyers]).all():
                note = "the lifetime-value model predicts no finite value for some buyers"
                model = None
    else:
        note = "no repeat buyer yet: the purchase model is not identified"
    value = _value(columns, model, settings)
    shares = [t.top_share for t in settings.tiers]
    buyer_values = value[buyers]
    thresholds = (
        [float(np.quantile(buyer_values, 1 - s)) for s in shares]
        if buyer_values.size
        else [0.0] * len(shares)
    )
    scored = four_i(columns)
    distributions = {
        name: Distribution(quantiles=[float(q) for q in np.quantile(score, PERCENTILES)])
        for name, (score, _) in scored.items()
    }
    fitted = ScoreFit(
        version="",
        fitted_at=now,
        customers=len(columns.customer_ids),
        buyers=int(buyers.sum()),
        repeat_buyers=int((columns.frequency > 0).sum()),
        currency=settings.currency,
        recency_bounds=_quintiles(columns.facts["days_since_order"][buyers]),
        frequency_bounds=_quintiles(orders[buyers]),
        monetary_bounds=_quintiles(columns.facts["spend"][buyers]),
        four_i=distributions,
        value_thresholds=thresholds,
        tiers=[t.name for t in settings.tiers],
        ltv=model,
        ltv_note=note,
        horizon_days=_horizon(settings),
        annual_discount_rate=settings.annual_discount_rate,
        fit_seconds=seconds + (dt.datetime.now(dt.UTC) - started).total_seconds(),
    )
    digest = hashlib.sha256(msgspec.json.encode(fitted)).hexdigest()[:8]
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return msgspec.structs.replace(fitted, version=f"fit-{stamp}-{digest}")


def _lifetime(
    columns: Columns, model: ltv.LtvModel | None, settings: ScoreSettings
) -> ltv.LtvScores | None:
    if model is None:
        return None
    with np.errstate(invalid="ignore", over="ignore"):  # checked by the fit, see fit()
        return ltv.score(
            model,
            columns.frequency,
            columns.recency,
            columns.age,
            columns.mean_spend,
            horizon_days=_horizon(settings),
            annual_discount_rate=settings.annual_discount_rate,
        )


def _value(columns: Columns, model: ltv.LtvModel | None, settings: ScoreSettings) -> Floats:
    """What a customer is worth, for the tiers: predicted spend over the horizon, or past
    spend where there is no lifetime-value model."""
    predicted = _lifetime(columns, model, settings)
    if predicted is None:
        return columns.facts["spend"]
    return np.where(columns.facts["orders"] >= 1, predicted.expected_spend, 0.0)


# --- rules ------------------------------------------------------------------------------


def rules_version(rules: StageRules) -> str:
    """A digest of the rules as configured: any edit of a threshold is a new version."""
    return "rules-" + hashlib.sha256(msgspec.json.encode(rules)).hexdigest()[:8]


def place(rules: StageRules, values: Mapping[str, Floats], count: int) -> npt.NDArray[np.int64]:
    """The index of the first rule each customer matches."""
    placed = np.full(count, -1, dtype=np.int64)
    for index, rule in enumerate(rules.rules):
        match = placed < 0
        for name, threshold in rule.at_least.items():
            match &= values[name] >= threshold
        for name, threshold in rule.at_most.items():
            match &= values[name] <= threshold
        placed[match] = index
    return placed


def _explained(
    rules: StageRules, index: int, values: Mapping[str, Any], row: int, version: str
) -> Placement:
    rule = rules.rules[index]
    tested = [
        Fact(name=n, value=float(values[n][row]), test="at_least", threshold=t)
        for n, t in rule.at_least.items()
    ] + [
        Fact(name=n, value=float(values[n][row]), test="at_most", threshold=t)
        for n, t in rule.at_most.items()
    ]
    if tested:
        said = ", ".join(
            f"{f.name} {_number(f.value)} {'>=' if f.test == 'at_least' else '<='} "
            f"{_number(f.threshold)}"
            for f in tested
        )
        window = any(f.name.endswith("_recent") for f in tested)
        because = f"{rule.stage}: {said}" + (f" (last {rules.window_days} days)" if window else "")
    else:
        because = f"{rule.stage}: no earlier rule matched"
    return Placement(
        stage=rule.stage,
        rule=index,
        because=because,
        facts=tuple(tested),
        rules_version=version,
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


# --- applying a fit ---------------------------------------------------------------------


def _percentile(table: Distribution, scores: Floats) -> Floats:
    """The share of the fitted population scoring below each score, in percent."""
    quantiles = np.asarray(table.quantiles)
    below = np.searchsorted(quantiles, scores, side="left")
    return np.asarray(np.round(100 * below / quantiles.size, 1))


def _channels(section: Engagement) -> tuple[ChannelRank, ...]:
    ranked = []
    for c in section.channels:
        if c.consent is not True:
            continue  # within consent: a channel they did not agree to is not a preference
        responses = c.opened + c.clicked + c.replied + c.purchased
        rate = round(responses / c.sent, 4) if c.sent else None
        ranked.append(ChannelRank(channel=c.channel, responses=responses, sent=c.sent, rate=rate))
    ranked.sort(key=lambda r: (-(r.rate or 0.0), -r.responses, r.channel))
    return tuple(ranked)


def apply(
    chunk: Sequence[str],
    sections: Sequence[Engagement],
    scoring_fit: ScoreFit,
    now: dt.datetime,
    settings: ScoreSettings,
) -> list[Scores]:
    """The ``scores`` section of each customer of a chunk, under ``scoring_fit``."""
    if scoring_fit.scoring_version != SCORING_VERSION:
        raise ScoringUnavailable(
            f"the fit was made by {scoring_fit.scoring_version!r}, this is {SCORING_VERSION!r}: "
            "refit (profilestore scores fit)"
        )
    windows = {settings.lifecycle.window_days, settings.journey.window_days}
    by_window = {w: facts(chunk, sections, now, settings, w) for w in sorted(windows)}
    columns = by_window[settings.lifecycle.window_days]
    count = len(columns.customer_ids)
    orders = columns.facts["orders"]
    buyers = orders >= 1
    model = scoring_fit.ltv
    predicted = _lifetime(columns, model, settings)
    p_alive = np.where(buyers, predicted.p_alive, 0.0) if predicted is not None else np.zeros(count)
    value = (
        np.where(buyers, predicted.expected_spend, 0.0)
        if predicted is not None
        else columns.facts["spend"]
    )
    placements = {}
    for name, rules in (("lifecycle", settings.lifecycle), ("journey", settings.journey)):
        values = {**by_window[rules.window_days].facts, "p_alive": p_alive}
        placements[name] = (rules, values, place(rules, values, count))
    scored = four_i(columns)
    percentiles = {n: _percentile(scoring_fit.four_i[n], s) for n, (s, _) in scored.items()}
    recency = 5 - np.searchsorted(
        scoring_fit.recency_bounds, columns.facts["days_since_order"], side="left"
    )
    frequency = 1 + np.searchsorted(scoring_fit.frequency_bounds, orders, side="left")
    monetary = 1 + np.searchsorted(scoring_fit.monetary_bounds, columns.facts["spend"], side="left")
    thresholds = np.asarray(scoring_fit.value_thresholds, dtype=np.float64)
    thresholds[-1] = -np.inf  # the last tier takes every buyer left, below the fit's least too
    # The first tier whose threshold the value reaches (thresholds fall tier by tier).
    tier_index = np.argmax(value[:, None] >= thresholds[None, :], axis=1)
    horizon = settings.horizon_months
    model_version = model.purchases.model_version if model is not None else ""
    # The loop below builds the sections from plain Python lists (numpy scalars cost ~10x
    # as much to index) and shares what many customers have in common: a placement is
    # the same object for the same rule and facts, an RFM cell for the same quintiles.
    # The 4I parts column by column: one list comprehension per component and zip (in C)
    # to gather each customer's, instead of a generator per customer and score.
    four_columns = []
    for name in FOUR_I:
        score, components = scored[name]
        parts = [
            [
                Component(name=c, value=v, points=p)
                for v, p in zip(
                    np.round(values, 3).tolist(), np.round(points, 1).tolist(), strict=True
                )
            ]
            for c, values, points in components
        ]
        four_columns.append(
            [
                Engagement4I(score=s, percentile=q, components=t)
                for s, q, t in zip(
                    score.tolist(),
                    percentiles[name].tolist(),
                    zip(*parts, strict=True),
                    strict=True,
                )
            ]
        )
    four_rows = list(zip(*four_columns, strict=True))
    placement_lists = []
    for name, (rules, values, index) in placements.items():
        version = rules_version(rules)
        tested = {
            n: values[n].tolist() for rule in rules.rules for n in (*rule.at_least, *rule.at_most)
        }
        placement_lists.append((name, rules, version, tested, index.tolist()))
    placed_cache: dict[tuple[Any, ...], Placement] = {}
    rfm_cache: dict[tuple[int, int, int], Rfm] = {}
    buyer_list = buyers.tolist()
    cells = list(zip(recency.tolist(), frequency.tolist(), monetary.tolist(), strict=True))
    tiers = [scoring_fit.tiers[i] for i in tier_index.tolist()]
    if predicted is not None:
        alive_list = np.round(predicted.p_alive, 4).tolist()
        orders_list = np.round(predicted.expected_purchases, 4).tolist()
        spend_list = np.round(predicted.expected_spend, 2).tolist()
    result = []
    for row in range(count):
        is_buyer = buyer_list[row]
        involvement, interaction, intimacy, influence = four_rows[row]
        placed = {}
        for name, rules, version, tested, index in placement_lists:
            rule_index = index[row]
            rule = rules.rules[rule_index]
            key = (
                name,
                rule_index,
                *(tested[n][row] for n in rule.at_least),
                *(tested[n][row] for n in rule.at_most),
            )
            found = placed_cache.get(key)
            if found is None:
                found = placed_cache[key] = _explained(rules, rule_index, tested, row, version)
            placed[name] = found
        rfm = None
        if is_buyer:
            rfm = rfm_cache.get(cells[row])
            if rfm is None:
                rfm = rfm_cache[cells[row]] = _rfm(*cells[row])
        result.append(
            Scores(
                computed_at=now,
                fit_version=scoring_fit.version,
                lifecycle=placed["lifecycle"],
                journey=placed["journey"],
                involvement=involvement,
                interaction=interaction,
                intimacy=intimacy,
                influence=influence,
                rfm=rfm,
                value_tier=tiers[row] if is_buyer else "prospect",
                channels=_channels(columns.sections[row]),
                lifetime=Lifetime(
                    p_alive=alive_list[row],
                    expected_orders=orders_list[row],
                    expected_spend=spend_list[row],
                    horizon_months=horizon,
                    currency=settings.currency,
                    model_version=model_version,
                )
                if predicted is not None and is_buyer
                else None,
            )
        )
    return result


class _Stage(msgspec.Struct, frozen=True, gc=False):
    stage: str


class Stages(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Of a ``scores`` section, the stages a summary counts: what the transitions compare
    (decoding only these is a fraction of decoding the section)."""

    lifecycle: _Stage | None = None
    journey: _Stage | None = None
    value_tier: str | None = None


def _stages(scores: Scores | Stages) -> dict[str, str]:
    """The groupings a summary counts, and the customer's stage in each."""
    return {
        "lifecycle": scores.lifecycle.stage if scores.lifecycle else "unscored",
        "journey": scores.journey.stage if scores.journey else "unscored",
        "value_tier": scores.value_tier or "unscored",
    }


def _rfm(recency: int, frequency: int, monetary: int) -> Rfm:
    return Rfm(
        recency=recency,
        frequency=frequency,
        monetary=monetary,
        cell=f"{recency}{frequency}{monetary}",
    )


# --- the summary ------------------------------------------------------------------------


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """Where customers are after a scoring run, and how that moved since the previous."""

    computed_at: dt.datetime
    fit_version: str
    customers: int
    lifecycle: dict[str, int]
    journey: dict[str, int]
    value_tier: dict[str, int]
    four_i: dict[str, dict[str, float]]
    """Per score: mean, p10, p50, p90 and a 10-bin histogram as ``bin_0`` ... ``bin_9``."""
    predicted_value: dict[str, float]
    """Sum, mean and percentiles of expected spend over the horizon, among buyers."""
    movement: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    """Per grouping and stage: the change in customers since the previous run."""
    transitions: dict[str, dict[str, dict[str, int]]] = msgspec.field(default_factory=dict)
    """Per grouping: customers whose stage changed since the previous run, by stage
    before (``new``: not scored before) and stage now; customers who stayed are not
    listed. Customers scored before but not now (merged into another) show only in
    ``movement``."""
    previous_computed_at: dt.datetime | None = None


class Tally:
    """What a scoring run adds up, chunk by chunk (bounded memory: a histogram per score,
    and predicted values, which a million customers hold in 8 MB)."""

    def __init__(self) -> None:
        self.customers = 0
        self.groups: dict[str, dict[str, int]] = {"lifecycle": {}, "journey": {}, "value_tier": {}}
        self.histograms = {name: np.zeros(101, dtype=np.int64) for name in FOUR_I}
        self.sums = dict.fromkeys(FOUR_I, 0.0)
        self.values: list[Floats] = []
        self.transitions: dict[str, dict[tuple[str, str], int]] = {g: {} for g in self.groups}

    def add(
        self, scores: Sequence[Scores], previous: Sequence[Scores | Stages | None] = ()
    ) -> None:
        """Count ``scores``; ``previous``: each customer's scores before the run (None
        where none), for the transitions."""
        self.customers += len(scores)
        before: Sequence[Scores | Stages | None] = previous or [None] * len(scores)
        for s, old in zip(scores, before, strict=True):
            was = _stages(old) if old is not None else None
            for group, stage in _stages(s).items():
                counts = self.groups[group]
                counts[stage] = counts.get(stage, 0) + 1
                pair = ("new" if was is None else was[group], stage)
                if pair[0] != stage:
                    moved = self.transitions[group]
                    moved[pair] = moved.get(pair, 0) + 1
        for name in FOUR_I:
            points = np.array([getattr(s, name).score for s in scores if getattr(s, name)])
            self.sums[name] += float(points.sum())
            self.histograms[name] += np.bincount(
                np.clip(points.astype(np.int64), 0, 100), minlength=101
            )
        self.values.append(
            np.array([s.lifetime.expected_spend for s in scores if s.lifetime is not None])
        )

    def summary(
        self, computed_at: dt.datetime, fit_version: str, previous: Summary | None
    ) -> Summary:
        four = {}
        for name in FOUR_I:
            histogram = self.histograms[name]
            total = max(1, int(histogram.sum()))
            cumulative = np.cumsum(histogram) / total
            entry = {"mean": round(self.sums[name] / total, 2)}
            for q in (10, 50, 90):
                entry[f"p{q}"] = float(np.searchsorted(cumulative, q / 100))
            bins = [int(histogram[i * 10 : i * 10 + 10].sum()) for i in range(10)]
            bins[-1] += int(histogram[100])
            entry.update({f"bin_{i}": float(b) for i, b in enumerate(bins)})
            four[name] = entry
        values = np.concatenate(self.values) if self.values else np.zeros(0)
        predicted = {"buyers_scored": float(values.size)}
        if values.size:
            predicted.update(
                sum=round(float(values.sum()), 2),
                mean=round(float(values.mean()), 2),
                **{
                    f"p{q}": round(float(np.percentile(values, q)), 2)
                    for q in (10, 25, 50, 75, 90, 99)
                },
            )
        movement = {}
        if previous is not None:
            for group, counts in self.groups.items():
                before: dict[str, int] = getattr(previous, group)
                movement[group] = {
                    stage: counts.get(stage, 0) - before.get(stage, 0)
                    for stage in sorted(set(counts) | set(before))
                }
        transitions: dict[str, dict[str, dict[str, int]]] = {}
        if previous is not None:
            for group, moved in self.transitions.items():
                nested: dict[str, dict[str, int]] = {}
                for (was, now), count in sorted(moved.items()):
                    nested.setdefault(was, {})[now] = count
                transitions[group] = nested
        return Summary(
            computed_at=computed_at,
            fit_version=fit_version,
            customers=self.customers,
            lifecycle=dict(sorted(self.groups["lifecycle"].items())),
            journey=dict(sorted(self.groups["journey"].items())),
            value_tier=dict(sorted(self.groups["value_tier"].items())),
            four_i=four,
            predicted_value=predicted,
            movement=movement,
            transitions=transitions,
            previous_computed_at=previous.computed_at if previous else None,
        )


__all__ = ["SCORE_FACTS", "ScoreFit", "Scores", "Stages", "Summary", "apply", "facts", "fit"]
