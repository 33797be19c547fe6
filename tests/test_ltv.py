"""The lifetime-value model against the authors' published fit and the ``lifetimes`` library.

The CDNOW sample (tests/data/README.md) is the data of Fader, Hardie and Lee's papers: 2,357
customers observed for 39 weeks, summarised as (x, t_x, T) in weeks and the mean value of
the repeat orders. profilestore.ltv works in days, so the weeks are multiplied by 7: r, a,
b, p, q and gamma are unit-free, alpha (a rate) is in days, 7 x its value in weeks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import pytest

from profilestore import ltv
from profilestore.errors import InvalidCustomerSummary, UnusableLtvModel
from profilestore.ltv_simulation import simulate

WEEK = 7.0
CDNOW = np.genfromtxt(
    Path(__file__).parent / "data" / "cdnow_summary.csv", delimiter=",", names=True
)

# Published: BG/NBD, Fader, Hardie and Lee (2005), "Counting Your Customers the Easy Way",
# section 5 (alpha in weeks, log-likelihood -9582.4); Gamma-Gamma, the same authors (2005),
# "RFM and CLV: Using Iso-Value Curves", fitted on the 946 repeat buyers.
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_BGNBD_LOG_LIKELIHOOD = -9582.4
PUBLISHED_GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "gamma": 15.44}

# Computed once by tests/data/make_lifetimes_reference.py with lifetimes 0.11.3 (numpy 2.4.6,
# scipy 1.17.1, pandas 3.1.1) in a throwaway virtualenv: its BetaGeoFitter and
# GammaGammaFitter fitted on the same file, in weeks.
LIFETIMES_BGNBD_WEEKS = {
    "r": 0.24259292827982148,
    "alpha": 4.413532265271809,
    "a": 0.7928859664406578,
    "b": 2.4257523826257374,
}
LIFETIMES_GAMMA_GAMMA = {
    "p": 6.24880249607099,
    "q": 3.7445884609237634,
    "gamma": 15.447748064943575,
}
# (x, t_x, T) in weeks: CDNOW customers 1, 2, 3, 18, 22, 157, 1516 and 1993, then made-up
# histories with a huge frequency (where lifetimes' hyp2f1 overflows and it switches branch).
CASES_WEEKS = [
    (2, 30.43, 38.86),
    (1, 1.71, 38.86),
    (0, 0.0, 38.86),
    (1, 4.86, 38.86),
    (0, 0.0, 38.71),
    (29, 37.71, 38.0),
    (26, 30.86, 31.0),
    (0, 0.0, 28.86),
    (400, 38.0, 38.86),
    (5000, 38.99, 39.0),
    (100_000, 38.9999, 39.0),
]
MEAN_SPEND = [22.35, 11.77, 0.0, 9.99, 0.0, 26.26, 39.97, 0.0, 20.0, 35.0, 50.0]
# BetaGeoFitter.conditional_probability_alive
LIFETIMES_P_ALIVE = [
    0.7266091367990596,
    0.21222738807220765,
    1.0,
    0.31091528096614635,
    1.0,
    0.9691335940044058,
    0.9689197159692114,
    1.0,
    0.1409699099872817,
    0.9994986231261521,
    0.9999900175481735,
]
# BetaGeoFitter.conditional_expected_number_of_purchases_up_to_time(39 and 52 weeks, ...)
LIFETIMES_PURCHASES_39_WEEKS = [
    1.2259104241744068,
    0.20325062425618798,
    0.19478085793947836,
    0.2977642307205725,
    0.19539146745496752,
    20.05366531949664,
    20.750570498762993,
    0.2462084913062385,
    38.81478976888992,
    3426.095008178465,
    68546.98484021581,
]
LIFETIMES_PURCHASES_52_WEEKS = [
    1.5585837617716805,
    0.25990707940849045,
    0.25166572540726884,
    0.38076651347132934,
    0.25243517793070913,
    25.06142252726201,
    25.75947471712361,
    0.31615299268283914,
    48.43443437394394,
    4274.987570276999,
    85529.82200567253,
]
# GammaGammaFitter.customer_lifetime_value(time=12, discount_rate=0.01, freq="M"), with the
# histories in months of 365.25 / 12 days (our month): 12 months, 1% a month.
LIFETIMES_CLV_12_MONTHS_1PCT_MONTHLY = [
    36.30053615472908,
    4.640356951334679,
    8.349531857874004,
    6.353579952731122,
    8.37511231037008,
    625.7012881478391,
    972.6546747853037,
    10.494379188902055,
    917.2355068093459,
    141560.01129458268,
    4045992.7989084087,
]


def cdnow_days() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return CDNOW["x"], CDNOW["t_x"] * WEEK, CDNOW["T"] * WEEK, CDNOW["zbar"]


def cases_days() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, t_x, age = (np.array(column, dtype=float) for column in zip(*CASES_WEEKS, strict=True))
    return x, t_x * WEEK, age * WEEK


def lifetimes_model() -> ltv.LtvModel:
    weeks = LIFETIMES_BGNBD_WEEKS
    return model_with(
        ltv.BgNbdParams(r=weeks["r"], alpha=weeks["alpha"] * WEEK, a=weeks["a"], b=weeks["b"]),
        ltv.GammaGammaParams(**LIFETIMES_GAMMA_GAMMA),
    )


def model_with(purchases: ltv.BgNbdParams, spend: ltv.GammaGammaParams) -> ltv.LtvModel:
    diagnostics = ltv.FitDiagnostics(
        log_likelihood=0.0,
        iterations=0,
        function_evaluations=0,
        converged=True,
        message="given",
        customers=0,
        fit_seconds=0.0,
    )
    return ltv.LtvModel(
        purchases=ltv.BgNbdFit(params=purchases, diagnostics=diagnostics),
        spend=ltv.GammaGammaFit(params=spend, diagnostics=diagnostics),
    )


@pytest.fixture(scope="module")
def cdnow_fit() -> ltv.LtvModel:
    x, t_x, age, mean_spend = cdnow_days()
    return ltv.fit(x, t_x, age, mean_spend)


# --- the published fit -------------------------------------------------------------------


def test_the_cdnow_sample_is_the_papers(cdnow_fit: ltv.LtvModel) -> None:
    x = CDNOW["x"]
    assert x.size == 2357
    assert int(x.sum()) == 2457  # repeat transactions in the 39-week calibration period
    assert int((x > 0).sum()) == 946 == cdnow_fit.spend.diagnostics.customers
    assert cdnow_fit.purchases.diagnostics.customers == 2357


def test_bgnbd_fit_reproduces_the_published_parameters_to_their_three_decimals(
    cdnow_fit: ltv.LtvModel,
) -> None:
    params = cdnow_fit.purchases.params
    fitted = {"r": params.r, "alpha": params.alpha / WEEK, "a": params.a, "b": params.b}
    assert {name: round(value, 3) for name, value in fitted.items()} == PUBLISHED_BGNBD
    assert cdnow_fit.purchases.diagnostics.converged


def test_bgnbd_log_likelihood_is_the_published_one_once_converted_to_weeks(
    cdnow_fit: ltv.LtvModel,
) -> None:
    # The likelihood has units of time ** -x per customer: days to weeks adds sum(x) log 7.
    in_weeks = cdnow_fit.purchases.diagnostics.log_likelihood + CDNOW["x"].sum() * np.log(WEEK)
    assert round(in_weeks, 1) == PUBLISHED_BGNBD_LOG_LIKELIHOOD


def test_gamma_gamma_fit_reproduces_the_published_parameters(cdnow_fit: ltv.LtvModel) -> None:
    params = cdnow_fit.spend.params
    fitted = {"p": params.p, "q": params.q, "gamma": params.gamma}
    # p and q round to the published two decimals (1.3e-3 relative); gamma is 15.448 here
    # and in lifetimes, 15.44 in the paper: 5e-4 apart.
    assert (round(params.p, 2), round(params.q, 2)) == (6.25, 3.74)
    assert fitted == pytest.approx(PUBLISHED_GAMMA_GAMMA, rel=1.3e-3)
    assert cdnow_fit.spend.diagnostics.converged


def test_the_fits_match_the_lifetimes_library_to_a_millionth(cdnow_fit: ltv.LtvModel) -> None:
    purchases, spend = cdnow_fit.purchases.params, cdnow_fit.spend.params
    assert {
        "r": purchases.r,
        "alpha": purchases.alpha / WEEK,
        "a": purchases.a,
        "b": purchases.b,
    } == pytest.approx(LIFETIMES_BGNBD_WEEKS, rel=1e-6)
    assert {"p": spend.p, "q": spend.q, "gamma": spend.gamma} == pytest.approx(
        LIFETIMES_GAMMA_GAMMA, rel=1e-6
    )


# --- predictions against the library ------------------------------------------------------


def test_p_alive_matches_lifetimes() -> None:
    x, t_x, age = cases_days()
    p_alive = ltv.probability_alive(lifetimes_model().purchases.params, x, t_x, age)
    assert p_alive == pytest.approx(LIFETIMES_P_ALIVE, rel=1e-12)


@pytest.mark.parametrize(
    ("weeks", "expected"),
    [(39, LIFETIMES_PURCHASES_39_WEEKS), (52, LIFETIMES_PURCHASES_52_WEEKS)],
)
def test_expected_purchases_match_lifetimes_even_for_huge_frequencies(
    weeks: int, expected: list[float]
) -> None:
    x, t_x, age = cases_days()
    purchases = ltv.expected_purchases(
        lifetimes_model().purchases.params, weeks * WEEK, x, t_x, age
    )
    # 1e-13 for CDNOW's customers; the 100,000-purchase history differs by 2e-10, within
    # the precision of lifetimes' own log-space branch there.
    assert purchases == pytest.approx(expected, rel=1e-9)


def test_discounted_lifetime_value_matches_lifetimes() -> None:
    x, t_x, age = cases_days()
    scores = ltv.score(
        lifetimes_model(), x, t_x, age, MEAN_SPEND, annual_discount_rate=1.01**12 - 1
    )
    assert scores.horizon_days == ltv.DEFAULT_HORIZON_DAYS == 365.25
    assert scores.expected_spend == pytest.approx(LIFETIMES_CLV_12_MONTHS_1PCT_MONTHLY, rel=1e-9)


# At the formula's removable singularities scipy's hyp2f1 returns NaN (r - a a whole
# number, large x), a wrong finite value (r - a whole, x = 0, a long horizon: 34.6 for
# 7.88) or 0 / 0 (a = 1; a + b = 1 with x = 0). Reference values from mpmath's hyp2f1 at 50
# digits (mpmath 1.4.1, the limits taken 1e-30 away), computed once outside the suite.
SINGULAR_CASES = [
    # (r, alpha, a, b), horizon, (x, t_x, T), expected purchases
    ((2.0, 3.0, 3.0, 5.0), 365.0, (1000, 0.999, 1.0), 501.51504827836052),
    ((0.3, 20.0, 1.3, 4.0), 36500.0, (0, 0.0, 1.0), 7.8801649014931822),
    ((3.0, 50.0, 0.5, 0.5), 36500.0, (0, 0.0, 1.0), 50.153576507717932),
    ((0.5, 10.0, 1.0, 2.0), 365.0, (3, 100.0, 200.0), 1.1520659836133561),
    ((1.5, 5.0, 1.5, 1.5), 3650.0, (20, 300.0, 365.0), 5.391519612524064),
]


@pytest.mark.parametrize(("params", "horizon", "history", "expected"), SINGULAR_CASES)
def test_expected_purchases_at_the_formulas_singular_points(
    params: tuple[float, float, float, float],
    horizon: float,
    history: tuple[float, float, float],
    expected: float,
) -> None:
    r, alpha, a, b = params
    purchases = ltv.BgNbdParams(r=r, alpha=alpha, a=a, b=b)
    assert float(ltv.expected_purchases(purchases, horizon, *history)) == pytest.approx(
        expected, rel=1e-8
    )


# --- scoring -------------------------------------------------------------------------------


def test_undiscounted_spend_is_purchases_times_average_spend() -> None:
    x, t_x, age = cases_days()
    scores = ltv.score(lifetimes_model(), x, t_x, age, MEAN_SPEND)
    assert np.array_equal(
        scores.expected_spend, scores.expected_purchases * scores.expected_average_spend
    )
    discounted = ltv.score(lifetimes_model(), x, t_x, age, MEAN_SPEND, annual_discount_rate=0.1)
    assert np.all(discounted.expected_spend <= scores.expected_spend)
    assert np.array_equal(discounted.expected_purchases, scores.expected_purchases)


def test_average_spend_is_the_population_mean_without_a_repeat_purchase() -> None:
    spend = ltv.GammaGammaParams(p=6.25, q=3.74, gamma=15.44)
    population_mean = 6.25 * 15.44 / (3.74 - 1)
    averages = ltv.expected_average_spend(spend, [0, 0, 1, 10_000], [np.nan, 0.0, 100.0, 100.0])
    assert averages[:2] == pytest.approx([population_mean] * 2)
    assert population_mean < averages[2] < 100.0  # shrunk towards the population
    assert averages[3] == pytest.approx(100.0, rel=1e-3)  # its own mean dominates


def test_no_repeat_purchase_means_alive() -> None:
    params = lifetimes_model().purchases.params
    assert ltv.probability_alive(params, [0, 0], [0, 0], [1, 1e6]).tolist() == [1.0, 1.0]


def test_extreme_histories_give_finite_scores() -> None:
    x = np.array([0, 1, 1e6, 1e7, 1e7, 3])
    t_x = np.array([0, 0, 1e5 - 1e-3, 1e5, 5e4, 1.0])
    age = np.array([1e6, 1e-3, 1e5, 1e5, 1e5, 1e6])
    scores = ltv.score(lifetimes_model(), x, t_x, age, np.full(6, 25.0), horizon_days=3650)
    for values in (scores.p_alive, scores.expected_purchases, scores.expected_spend):
        assert np.all(np.isfinite(values)) and np.all(values >= 0)
    assert scores.p_alive[4] == 0.0  # 10 million purchases, then silent for 137 years


# --- the stored value -----------------------------------------------------------------------


def test_a_fitted_model_round_trips_through_json(cdnow_fit: ltv.LtvModel) -> None:
    encoded = msgspec.json.encode(cdnow_fit)
    assert msgspec.json.decode(encoded, type=ltv.LtvModel) == cdnow_fit
    stored = msgspec.json.decode(encoded)
    assert stored["purchases"]["model_version"] == ltv.MODEL_VERSION
    assert stored["purchases"]["time_unit"] == "day"
    assert set(stored["purchases"]["diagnostics"]) == {
        "log_likelihood",
        "iterations",
        "function_evaluations",
        "converged",
        "message",
        "customers",
        "fit_seconds",
    }


def test_a_stored_model_with_an_unknown_field_is_refused(cdnow_fit: ltv.LtvModel) -> None:
    stored = msgspec.json.decode(msgspec.json.encode(cdnow_fit))
    stored["spend"]["params"]["delta"] = 1.0
    with pytest.raises(msgspec.ValidationError, match=r"\$\.spend\.params"):
        msgspec.json.decode(msgspec.json.encode(stored), type=ltv.LtvModel)


def test_a_model_fitted_by_other_model_code_is_refused(cdnow_fit: ltv.LtvModel) -> None:
    older = msgspec.structs.replace(
        cdnow_fit, purchases=msgspec.structs.replace(cdnow_fit.purchases, model_version="0")
    )
    with pytest.raises(UnusableLtvModel, match="refit"):
        ltv.score(older, [1], [1.0], [2.0], [10.0])


def test_a_spend_model_without_a_finite_mean_is_refused() -> None:
    model = model_with(
        lifetimes_model().purchases.params, ltv.GammaGammaParams(p=1, q=0.9, gamma=1)
    )
    with pytest.raises(UnusableLtvModel, match=r"q = 0\.9 <= 1"):
        ltv.score(model, [1], [1.0], [2.0], [10.0])


# --- inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frequency", "recency", "age", "field", "reason"),
    [
        ([1, 2], [3.0, 5.0], [4.0, 4.0], "recency", "larger than age"),
        ([1, -1], [1.0, 0.0], [2.0, 2.0], "frequency", "whole number"),
        ([1, 1.5], [1.0, 0.0], [2.0, 2.0], "frequency", "whole number"),
        ([0, 0], [0.0, 1.0], [2.0, 2.0], "recency", "no repeat purchase"),
        ([0, 0], [0.0, 0.0], [2.0, 0.0], "age", "> 0"),
        ([0, 1], [0.0, np.nan], [2.0, 2.0], "recency", "finite"),
    ],
)
def test_an_unusable_history_names_the_input_and_the_first_customer(
    frequency: list[float], recency: list[float], age: list[float], field: str, reason: str
) -> None:
    with pytest.raises(InvalidCustomerSummary, match=reason) as raised:
        ltv.fit_bgnbd(frequency, recency, age)
    assert (raised.value.field, raised.value.count, raised.value.first_index) == (field, 1, 1)


@pytest.mark.parametrize(
    "fit",
    [
        lambda: ltv.fit_bgnbd([0, 0, 0], [0.0, 0.0, 0.0], [10.0, 20.0, 30.0]),
        lambda: ltv.fit_gamma_gamma([0, 0, 0], [np.nan, 0.0, 0.0]),
    ],
    ids=["purchases", "spend"],
)
def test_a_population_without_a_repeat_buyer_cannot_be_fitted(fit: Callable[[], object]) -> None:
    with pytest.raises(InvalidCustomerSummary, match="no repeat buyer"):
        fit()


def test_a_repeat_buyer_without_a_positive_mean_spend_is_refused_by_the_spend_fit() -> None:
    with pytest.raises(InvalidCustomerSummary, match="mean_spend"):
        ltv.fit_gamma_gamma([0, 2, 3], [0.0, 10.0, 0.0])


def test_weights_stand_for_repeated_rows() -> None:
    x, t_x, age, mean_spend = cdnow_days()
    rows = np.stack([x, t_x, age, mean_spend])
    patterns, counts = np.unique(rows, axis=1, return_counts=True)
    assert patterns.shape[1] < x.size  # many CDNOW customers share a history
    weighted = ltv.fit(*patterns, weights=counts)
    plain = ltv.fit(x, t_x, age, mean_spend)
    assert msgspec.structs.asdict(weighted.purchases.params) == pytest.approx(
        msgspec.structs.asdict(plain.purchases.params), rel=1e-6
    )
    assert weighted.purchases.diagnostics.log_likelihood == pytest.approx(
        plain.purchases.diagnostics.log_likelihood, rel=1e-9
    )
    assert weighted.purchases.diagnostics.customers == 2357


# --- a population with a known truth --------------------------------------------------------


def test_the_fit_recovers_the_parameters_a_population_was_drawn_with() -> None:
    purchases = ltv.BgNbdParams(r=0.25, alpha=30.0, a=0.8, b=2.5)
    spend = ltv.GammaGammaParams(p=6.0, q=3.5, gamma=15.0)
    customers = simulate(purchases, spend, 200_000, seed=11)
    model = ltv.fit(customers.frequency, customers.recency, customers.age, customers.mean_spend)
    assert msgspec.structs.asdict(model.purchases.params) == pytest.approx(
        msgspec.structs.asdict(purchases), rel=0.05
    )
    assert msgspec.structs.asdict(model.spend.params) == pytest.approx(
        msgspec.structs.asdict(spend), rel=0.05
    )
    scores = ltv.score(
        model,
        customers.frequency,
        customers.recency,
        customers.age,
        customers.mean_spend,
        horizon_days=customers.horizon_days,
    )
    # In aggregate the predictions are the held-out truth, within a percent.
    assert scores.expected_purchases.sum() == pytest.approx(
        customers.future_purchases.sum(), rel=0.01
    )
    assert scores.expected_spend.sum() == pytest.approx(customers.future_spend.sum(), rel=0.02)
    assert scores.p_alive.mean() == pytest.approx(customers.alive.mean(), rel=0.01)
