"""Properties of the lifetime-value predictions, for any parameters and histories.

Parameters range over what fits of real customer bases give and beyond (r 0.01-20, alpha
0.1-10,000 days, a and b 0.05-50, some on the formula's singular points), histories over
up to 30 years and a million purchases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profilestore import ltv

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def positive(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


@st.composite
def purchase_params(draw: st.DrawFn) -> ltv.BgNbdParams:
    """Any parameters, a share of them on a removable singularity of the expected purchases
    (r - a whole, a = 1, a + b = 1)."""
    r, alpha = draw(positive(0.01, 20)), draw(positive(0.1, 10_000))
    a, b = draw(positive(0.05, 50)), draw(positive(0.05, 50))
    singular = draw(st.sampled_from(["none", "none", "r - a whole", "a = 1", "a + b = 1"]))
    if singular == "r - a whole":
        r = a + draw(st.integers(math.ceil(0.01 - a), 20))
    elif singular == "a = 1":
        a = 1.0
    elif singular == "a + b = 1" and a < 0.95:
        b = 1.0 - a
    return ltv.BgNbdParams(r=r, alpha=alpha, a=a, b=b)


@st.composite
def histories(draw: st.DrawFn) -> tuple[float, float, float]:
    """(x, t_x, T) in days: T up to 30 years, x up to a million, t_x in [0, T]."""
    age = draw(positive(0.01, 11_000))
    frequency = float(draw(st.one_of(st.integers(0, 50), st.integers(0, 1_000_000))))
    recency = 0.0 if frequency == 0 else age * draw(positive(0, 1))
    return frequency, recency, age


HORIZON = positive(0, 3_650)


@PROPERTY
@given(purchase_params(), histories(), HORIZON)
def test_p_alive_is_a_probability_and_purchases_are_finite_and_not_negative(
    params: ltv.BgNbdParams, history: tuple[float, float, float], horizon: float
) -> None:
    p_alive = float(ltv.probability_alive(params, *history))
    purchases = float(ltv.expected_purchases(params, horizon, *history))
    assert 0.0 <= p_alive <= 1.0
    assert math.isfinite(purchases) and purchases >= 0.0


@PROPERTY
@given(purchase_params(), histories(), positive(0, 1), positive(0, 1))
def test_a_more_recent_last_purchase_means_more_likely_alive(
    params: ltv.BgNbdParams, history: tuple[float, float, float], one: float, other: float
) -> None:
    frequency, _, age = history
    earlier, later = sorted((one * age, other * age))
    if frequency == 0:
        earlier = later = 0.0
    p_earlier, p_later = ltv.probability_alive(
        params, [frequency, frequency], [earlier, later], [age, age]
    )
    assert p_earlier <= p_later


@PROPERTY
@given(purchase_params(), histories(), HORIZON, HORIZON)
def test_a_longer_horizon_means_more_expected_purchases(
    params: ltv.BgNbdParams, history: tuple[float, float, float], one: float, other: float
) -> None:
    shorter, longer = sorted((one, other))
    expected = ltv.expected_purchases(params, np.array([shorter, longer]), *history)
    # Equal horizons may round apart in the last bits.
    assert expected[0] <= expected[1] * (1 + 1e-12) + 1e-300


@PROPERTY
@given(purchase_params(), st.lists(histories(), min_size=1, max_size=20), HORIZON)
def test_scoring_customers_together_equals_scoring_each_alone(
    params: ltv.BgNbdParams, customers: list[tuple[float, float, float]], horizon: float
) -> None:
    frequency, recency, age = (np.array(column) for column in zip(*customers, strict=True))
    together = ltv.probability_alive(params, frequency, recency, age)
    purchases = ltv.expected_purchases(params, horizon, frequency, recency, age)
    for index, customer in enumerate(customers):
        alone = ltv.probability_alive(params, *customer)
        assert alone.shape == ()
        assert float(alone) == pytest.approx(together[index], rel=1e-12, abs=0)
        assert float(ltv.expected_purchases(params, horizon, *customer)) == pytest.approx(
            purchases[index], rel=1e-12, abs=1e-300
        )


@PROPERTY
@given(
    positive(0.05, 50),
    positive(1.05, 50),
    positive(0.01, 1_000),
    st.integers(1, 1_000_000),
    positive(0, 10_000),
)
def test_average_spend_lies_between_the_population_mean_and_the_customers_own(
    p: float, q: float, gamma: float, frequency: int, mean_spend: float
) -> None:
    params = ltv.GammaGammaParams(p=p, q=q, gamma=gamma)
    population = p * gamma / (q - 1)
    average = float(ltv.expected_average_spend(params, frequency, mean_spend))
    low, high = sorted((population, mean_spend))
    assert low * (1 - 1e-12) <= average <= high * (1 + 1e-12)
