"""Customers drawn from the BG/NBD and Gamma-Gamma generative processes, with their future.

The population whose latent truth is known: the tests check that :mod:`profilestore.ltv`
recovers the parameters it was drawn with, and the benchmark ranks customers by predicted
spend against what they go on to spend in a held-out period. Vectorised, with no loop over
customers or purchases, so a million customers take about a second:

- purchases while alive follow a Poisson process, so the count in (0, T] is
  N ~ Poisson(lambda T), and given N = n the time of the k-th purchase is the k-th of n
  uniform order statistics, T * Beta(k, n - k + 1);
- a customer drops out right after repeat purchase J ~ Geometric(p) (J >= 1), so she made
  x = min(N, J) repeat purchases by T and is alive at T when J > N; alive, she buys
  min(Poisson(lambda h), J - N) times in the next h days;
- order values are Gamma(p, rate nu): the mean of x of them is Gamma(p x, rate x nu), the sum
  of k is Gamma(p k, rate nu).

:func:`engagement_sections` gives each customer as the ``engagement`` section the fold
would make (the benchmark's million customers, without a log); :func:`order_events` as
the ``order.placed`` events themselves, for a test of the whole path from the log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from profilestore.events import OrderLine, OrderPlaced
from profilestore.ltv import BgNbdParams, GammaGammaParams
from projections.engagement import Engagement, Spend

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SimulatedCustomers:
    """Observed summaries up to T, the latent truth, and the held-out period after T."""

    frequency: Floats
    recency: Floats
    age: Floats
    mean_spend: Floats  # of the repeat orders; 0 where frequency is 0
    past_spend: Floats  # every order up to T, the first included
    purchase_rate: Floats  # lambda, per day
    dropout: Floats  # p
    alive: npt.NDArray[np.bool_]
    future_purchases: Floats
    future_spend: Floats
    horizon_days: float


def simulate(
    purchases: BgNbdParams,
    spend: GammaGammaParams,
    customers: int,
    *,
    min_age_days: float = 30.0,
    max_age_days: float = 730.0,
    horizon_days: float = 365.25,
    seed: int = 7,
) -> SimulatedCustomers:
    """``customers`` drawn with ages uniform in [min_age_days, max_age_days] (first orders
    spread over the past two years by default), observed to now and followed for
    ``horizon_days`` more."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(min_age_days, max_age_days, customers)
    rate = rng.gamma(purchases.r, 1.0 / purchases.alpha, customers)
    dropout = rng.beta(purchases.a, purchases.b, customers)
    in_window = rng.poisson(rate * age).astype(np.float64)
    dropout_after = rng.geometric(dropout).astype(np.float64)
    frequency = np.minimum(in_window, dropout_after)
    repeat = frequency > 0
    # Beta's parameters must be > 0: the x = 0 rows draw a dummy that is then zeroed.
    last = rng.beta(np.maximum(frequency, 1.0), np.maximum(in_window - frequency + 1.0, 1.0))
    recency = np.where(repeat, age * last, 0.0)
    alive = dropout_after > in_window

    value_rate = rng.gamma(spend.q, 1.0 / spend.gamma, customers)  # nu, per customer
    shape = spend.p * np.maximum(frequency, 1.0)
    mean_spend = np.where(
        repeat, rng.gamma(shape, 1.0 / (value_rate * np.maximum(frequency, 1))), 0.0
    )
    first_order = rng.gamma(spend.p, 1.0 / value_rate)
    past_spend = first_order + frequency * mean_spend

    later = rng.poisson(rate * horizon_days).astype(np.float64)
    future_purchases = np.where(alive, np.minimum(later, dropout_after - in_window), 0.0)
    future_shape = spend.p * np.maximum(future_purchases, 1.0)
    future_spend = np.where(future_purchases > 0, rng.gamma(future_shape, 1.0 / value_rate), 0.0)
    return SimulatedCustomers(
        frequency=frequency,
        recency=recency,
        age=age,
        mean_spend=mean_spend,
        past_spend=past_spend,
        purchase_rate=rate,
        dropout=dropout,
        alive=alive,
        future_purchases=future_purchases,
        future_spend=future_spend,
        horizon_days=horizon_days,
    )


def engagement_sections(
    customers: SimulatedCustomers,
    now: dt.datetime,
    *,
    currency: str = "USD",
    seed: int = 11,
) -> Iterator[Engagement]:
    """Each simulated customer as the ``engagement`` section the fold would have made of
    their orders up to ``now`` (their first order ``age`` days ago, the last ``recency``
    days after it, the first order's value and the repeat orders' mean as drawn), with
    browsing and e-mail counts that grow with their hidden purchase rate: the scores
    pipeline's input, for a population whose future is known."""
    rng = np.random.default_rng(seed)
    count = customers.frequency.size
    # Engagement that tracks propensity, with noise: visits ~ Poisson(rate * 200 + 1).
    visits = rng.poisson(customers.purchase_rate * 200 + 1).astype(np.int64)
    clicks = rng.poisson(customers.purchase_rate * 60).astype(np.int64)
    first_total = customers.past_spend - customers.frequency * customers.mean_spend
    for i in range(count):
        first_at = now - dt.timedelta(days=float(customers.age[i]))
        last_at = first_at + dt.timedelta(days=float(customers.recency[i]))
        orders = int(customers.frequency[i]) + 1
        yield Engagement(
            orders=orders,
            first_order_at=first_at,
            last_order_at=last_at,
            spend=(Spend(currency=currency, total=Decimal(f"{customers.past_spend[i]:.2f}")),),
            first_order_total=Decimal(f"{max(first_total[i], 0.0):.2f}"),
            first_order_currency=currency,
            visits=int(visits[i]),
            page_views=int(visits[i]) * 3,
            product_views=int(visits[i]) * 2,
            email_clicks=int(clicks[i]),
            first_seen_at=first_at,
            last_active_at=last_at,
        )


def order_events(
    customers: SimulatedCustomers,
    now: dt.datetime,
    *,
    currency: str = "USD",
    seed: int = 13,
) -> Iterator[OrderPlaced]:
    """Each simulated customer's orders up to ``now`` as events (customer ``sim-<i>``):
    the first ``age`` days ago at the first order's value, the last ``recency`` days after
    it, the other repeat orders at uniform times between, every repeat order at the drawn
    mean (to the cent). Folded, they make the section :func:`engagement_sections` gives
    (without its browsing and e-mail counts)."""
    rng = np.random.default_rng(seed)
    first_total = customers.past_spend - customers.frequency * customers.mean_spend
    for i in range(customers.frequency.size):
        first_at = now - dt.timedelta(days=float(customers.age[i]))
        repeats = int(customers.frequency[i])
        offsets = [0.0]
        if repeats:
            between = sorted(rng.uniform(0.0, float(customers.recency[i]), repeats - 1))
            offsets += [*between, float(customers.recency[i])]
        for k, offset in enumerate(offsets):
            value = max(first_total[i], 0.01) if k == 0 else max(customers.mean_spend[i], 0.01)
            total = Decimal(f"{value:.2f}")
            yield OrderPlaced(
                event_id=f"sim-{i}-o{k}",
                customer_id=f"sim-{i}",
                occurred_at=first_at + dt.timedelta(days=offset),
                order_id=f"sim-{i}-{k}",
                items=(OrderLine(sku="sim", unit_price=total),),
                total=total,
                currency=currency,
            )
