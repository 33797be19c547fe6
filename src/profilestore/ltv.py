"""Predicted lifetime value: the BG/NBD purchase model and the Gamma-Gamma spend model.

A pure module: it fits the two models on the population's per-customer summary statistics
and scores customers with the fitted parameters. It reads no store and keeps no state; the
scores pipeline folds the summaries, stores the fitted :class:`LtvModel` (a frozen msgspec
value) and applies it later.

Per customer, in **days** throughout (``alpha`` is a rate in days too):

- ``frequency`` x: repeat purchases (orders after the first), an integer >= 0;
- ``recency`` t_x: days from the first order to the last (0 when x = 0);
- ``age`` T: days from the first order to the end of observation (T >= t_x);
- ``mean_spend`` m: the mean value of the *repeat* orders (the first order left out, as the
  authors do); unused where x = 0.

The models (Fader, Hardie and Lee):

- **BG/NBD**, "Counting Your Customers the Easy Way: An Alternative to the Pareto/NBD
  Model", Marketing Science 24(2), 2005: while active a customer buys at a Poisson rate
  lambda ~ Gamma(r, alpha); after each repeat purchase she drops out with probability
  p ~ Beta(a, b). The log-likelihood is the paper's eq. (6) written in log space (the
  rearrangement of Fader and Hardie's note 027, "Overcoming the BG/NBD Model's #NUM! Error
  Problem", 2013, taken one step further: a ``logaddexp`` of the two branches, so no
  power of (alpha + T) is ever formed). P(alive) is Fader, Hardie and Lee's note 021,
  "Computing P(alive) Using the BG/NBD Model" (2008), as a logistic of a log-odds.
  Expected purchases in (T, T + t] is the paper's eq. (10) with its Gauss hypergeometric
  term put through Euler's transformation (see :func:`expected_purchases`).
- **Gamma-Gamma**, "RFM and CLV: Using Iso-Value Curves for Customer Base Analysis",
  Journal of Marketing Research 42(4), 2005, and Fader and Hardie's note 025, "The
  Gamma-Gamma Model of Monetary Value" (2013): order values ~ Gamma(p, nu) with
  nu ~ Gamma(q, gamma); the likelihood of a customer's mean spend is note 025's eq. (1a)
  and the expected mean spend its eq. (5), a weighted average of the population mean
  p * gamma / (q - 1) and the customer's own mean.

Expected spend over a horizon is expected purchases x expected mean spend (the spend model
assumes order values independent of the purchase process). It is undiscounted by default;
with ``annual_discount_rate`` the horizon is cut into calendar months (365.25 / 12 days)
and each month's expected purchases are discounted at the month's end, as the ``lifetimes``
and ``pymc-marketing`` libraries do (``customer_lifetime_value``), which makes the two
comparable.

Fitting maximises the log-likelihood over log-parameters with L-BFGS-B and the analytic
gradient. Terms that depend on a customer only through the integer x (the gamma functions)
are evaluated once per distinct x, weighted by how many customers share it, so a fit on a
million customers costs a few vector passes per iteration; ``weights`` lets a caller pass
one row per distinct (x, t_x, T) pattern with its count instead of one row per customer.

Why numpy/scipy and not ``pymc-marketing`` (which has both models): on a million customers
here its MAP fit, with flat priors so that it is the same maximum likelihood, took 13 s
(92 s on a first run, compiling) and 690 MB against ~2 s and 270 MB, it adds 790 MB of
dependencies and 4.5 s of import, and its ``expected_purchases`` returns NaN for a customer
with 5,000 purchases; ``bench/README.md`` ("Lifetime value") has the measurements. The
formulas are those of ``lifetimes`` (``BetaGeoFitter``, ``GammaGammaFitter``) and
pymc-marketing (``BetaGeoModel``, ``GammaGammaModel``), and ``tests/test_ltv.py`` checks
our numbers against ``lifetimes``' on the authors' CDNOW sample.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt
from scipy import optimize, special

from profilestore.errors import InvalidCustomerSummary, UnusableLtvModel

#: Version of the model code; a stored fit of another version is refused by :func:`score`.
#: Bump it when a formula, a unit or the meaning of a parameter changes.
MODEL_VERSION = "bgnbd-gg/1"
DAYS_PER_YEAR = 365.25
MONTH_DAYS = DAYS_PER_YEAR / 12
DEFAULT_HORIZON_DAYS = 12 * MONTH_DAYS

Floats = npt.NDArray[np.float64]

# Log-parameters stay inside +-20 (a factor of ~5e8 either way) so that no trial point of
# the optimiser overflows a gamma function; a fit that ends on a bound is not converged.
_LOG_BOUND = 20.0
# Distance from a removable singularity of the expected-purchases formula within which
# it is interpolated (see _purchases_if_alive).
_NEAR = 1e-5


class _Value(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the stored values: immutable, keyword-only, strict when decoded."""


class BgNbdParams(_Value, frozen=True, kw_only=True):
    """Purchase rate lambda ~ Gamma(shape r, rate alpha) per day; dropout p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float


class GammaGammaParams(_Value, frozen=True, kw_only=True):
    """Order value ~ Gamma(shape p, rate nu) with nu ~ Gamma(shape q, rate gamma)."""

    p: float
    q: float
    gamma: float


class FitDiagnostics(_Value, frozen=True, kw_only=True):
    """How a fit went. ``log_likelihood`` is the total over the customers. The BG/NBD's has
    units of time ** -x per customer: in days it is a fit in weeks' minus sum(x) log 7."""

    log_likelihood: float
    iterations: int
    function_evaluations: int
    converged: bool
    message: str
    customers: int
    fit_seconds: float


class BgNbdFit(_Value, frozen=True, kw_only=True):
    params: BgNbdParams
    diagnostics: FitDiagnostics
    model_version: str = MODEL_VERSION
    time_unit: Literal["day"] = "day"


class GammaGammaFit(_Value, frozen=True, kw_only=True):
    params: GammaGammaParams
    diagnostics: FitDiagnostics
    model_version: str = MODEL_VERSION


class LtvModel(_Value, frozen=True, kw_only=True):
    """Both fits, stored together and applied together by :func:`score`."""

    purchases: BgNbdFit
    spend: GammaGammaFit


@dataclass(frozen=True)
class LtvScores:
    """Per-customer predictions, in the order of the inputs."""

    p_alive: Floats
    expected_purchases: Floats
    expected_average_spend: Floats
    expected_spend: Floats
    horizon_days: float
    annual_discount_rate: float


# --- inputs ------------------------------------------------------------------------------


def _floats(name: str, values: npt.ArrayLike) -> Floats:
    array = np.asarray(values, dtype=np.float64)
    _refuse(name, "is not a finite number", ~np.isfinite(array))
    return array


def _refuse(field: str, reason: str, bad: npt.NDArray[np.bool_]) -> None:
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InvalidCustomerSummary(field, reason, int(bad.sum()), first)


def _history(
    frequency: npt.ArrayLike, recency: npt.ArrayLike, age: npt.ArrayLike
) -> tuple[Floats, Floats, Floats]:
    x = _floats("frequency", frequency)
    t_x = _floats("recency", recency)
    age_ = _floats("age", age)
    x, t_x, age_ = np.broadcast_arrays(x, t_x, age_)
    _refuse("frequency", "is not a whole number >= 0", (x < 0) | (x != np.floor(x)))
    _refuse("recency", "is negative", t_x < 0)
    _refuse("recency", "is not 0 for a customer with no repeat purchase", (x == 0) & (t_x != 0))
    _refuse("age", "is not > 0", age_ <= 0)
    _refuse("recency", "is larger than age", t_x > age_)
    return x, t_x, age_


def _weights(weights: npt.ArrayLike | None, size: int) -> Floats:
    if weights is None:
        return np.ones(size)
    w = _floats("weights", weights).reshape(-1)
    if w.size != size:
        raise InvalidCustomerSummary("weights", f"has {w.size} values for {size} rows", 0, 0)
    _refuse("weights", "is negative", w < 0)
    return w


# --- fitting -----------------------------------------------------------------------------


Objective = Callable[[Floats], tuple[float, Floats]]


def _maximise(
    objective: Objective, start: Floats, total_weight: float, started: float
) -> tuple[Floats, FitDiagnostics]:
    """Minimises the mean negative log-likelihood over log-parameters."""
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * start.size
    result = optimize.minimize(
        objective,
        np.clip(start, -_LOG_BOUND + 1, _LOG_BOUND - 1),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-9},
    )
    log_params = np.asarray(result.x, dtype=np.float64)
    on_bound = bool(np.any(np.abs(log_params) >= _LOG_BOUND - 1e-6))
    message = str(result.message)
    if on_bound:
        message = f"a parameter reached its bound exp(+-{_LOG_BOUND:g}); {message}"
    converged = bool(result.success) and not on_bound and bool(np.isfinite(result.fun))
    diagnostics = FitDiagnostics(
        log_likelihood=-float(result.fun) * total_weight,
        iterations=int(result.nit),
        function_evaluations=int(result.nfev),
        converged=converged,
        message=message,
        customers=round(total_weight),
        fit_seconds=time.perf_counter() - started,
    )
    return log_params, diagnostics


def _dot(weights: Floats, values: Floats) -> float:
    # Not ``weights @ values``: BLAS's ddot measured 15-30x slower than this on
    # this 2-core machine (a million customers: 17 ms against 0.5 ms).
    return float(np.multiply(weights, values).sum())


class _Counts:
    """Customers grouped by their frequency, for the terms that depend on x alone."""

    def __init__(self, x: Floats, w: Floats) -> None:
        distinct, index = np.unique(x, return_inverse=True)
        self.index: npt.NDArray[np.intp] = index
        self.x: Floats = distinct.astype(np.float64)
        weight = np.bincount(self.index, weights=w, minlength=distinct.size)
        self.weight: Floats = weight.astype(np.float64)
        self.total = float(w.sum())


def _bgnbd_objective(x: Floats, t_x: Floats, age: Floats, w: Floats) -> Objective:
    counts = _Counts(x, w)
    repeat = x > 0
    # Customers with no repeat purchase contribute -r log(alpha + T) only.
    age0, w0 = age[~repeat], w[~repeat]
    x1, t_x1, age1, w1 = x[repeat], t_x[repeat], age[repeat], w[repeat]
    index1 = counts.index[repeat]
    total = counts.total

    def objective(log_params: Floats) -> tuple[float, Floats]:
        r, alpha, a, b = np.exp(log_params)
        ux, cw = counts.x, counts.weight
        # Terms of x alone, once per distinct x: log B(a, b + x) / B(a, b) and
        # log Gamma(r + x) / Gamma(r) + r log alpha (eq. 6).
        ll = _dot(
            cw, special.gammaln(r + ux) + special.gammaln(b + ux) - special.gammaln(a + b + ux)
        ) + total * (
            -special.gammaln(r) + r * math.log(alpha) + special.gammaln(a + b) - special.gammaln(b)
        )
        dr = _dot(cw, special.digamma(r + ux)) + total * (-special.digamma(r) + math.log(alpha))
        dalpha = total * r / alpha
        da = _dot(cw, -special.digamma(a + b + ux)) + total * special.digamma(a + b)
        db = _dot(cw, (special.digamma(b + ux) - special.digamma(a + b + ux))) + total * (
            special.digamma(a + b) - special.digamma(b)
        )

        log_age0 = np.log(alpha + age0)
        ll -= r * _dot(w0, log_age0)
        dr -= _dot(w0, log_age0)
        dalpha -= r * _dot(w0, (1.0 / (alpha + age0)))

        # Repeat buyers: alive at T (A3) or dropped out just after t_x (A4), in log space.
        rx = r + x1
        log_age1 = np.log(alpha + age1)
        log_rec1 = np.log(alpha + t_x1)
        log_b = np.log(b + ux - 1.0, where=ux > 0, out=np.zeros_like(ux))[index1]
        a3 = -rx * log_age1
        a4 = math.log(a) - log_b - rx * log_rec1
        high = np.maximum(a3, a4)
        both = high + np.log1p(np.exp(np.minimum(a3, a4) - high))  # logaddexp, 5x faster
        dropped = np.exp(a4 - both)
        alive = 1.0 - dropped
        ll += _dot(w1, both)
        dr -= _dot(w1, (alive * log_age1 + dropped * log_rec1))
        dalpha -= _dot(w1, (rx * (alive / (alpha + age1) + dropped / (alpha + t_x1))))
        da += _dot(w1, dropped) / a
        db -= _dot(w1, (dropped / (b + x1 - 1.0)))

        gradient = -np.array([dr * r, dalpha * alpha, da * a, db * b]) / total
        return -ll / total, gradient

    return objective


def fit_bgnbd(
    frequency: npt.ArrayLike,
    recency: npt.ArrayLike,
    age: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
) -> BgNbdFit:
    """Maximum-likelihood BG/NBD parameters for the population (times in days).

    ``weights`` counts the customers a row stands for (default 1 each). The fit is
    returned whether or not it converged: read ``diagnostics.converged`` before storing.
    """
    started = time.perf_counter()
    x, t_x, age_ = (v.reshape(-1) for v in _history(frequency, recency, age))
    w = _weights(weights, x.size)
    if not (w * x).sum() > 0:
        # Without one repeat purchase the likelihood only falls towards 0 as r / alpha does,
        # and says nothing of a and b: any "fit" would be arbitrary.
        raise InvalidCustomerSummary(
            "frequency", "has no repeat buyer: the purchase model needs some", 0, 0
        )
    # Start where the mean purchase rate r / alpha matches the observed repeat rate.
    rate = max(_dot(w, x) / _dot(w, age_), 1e-6)
    start = np.log(np.array([1.0, 1.0 / rate, 1.0, 1.0]))
    log_params, diagnostics = _maximise(
        _bgnbd_objective(x, t_x, age_, w), start, float(w.sum()), started
    )
    r, alpha, a, b = (float(v) for v in np.exp(log_params))
    return BgNbdFit(params=BgNbdParams(r=r, alpha=alpha, a=a, b=b), diagnostics=diagnostics)


def _gamma_gamma_objective(x: Floats, m: Floats, w: Floats) -> Objective:
    counts = _Counts(x, w)
    total = counts.total
    # (p x - 1) log m + p x log x is linear in p: two sums, computed once.
    x_log_mx = _dot(w, (x * np.log(m * x)))
    log_m = _dot(w, np.log(m))

    def objective(log_params: Floats) -> tuple[float, Floats]:
        p, q, gamma = np.exp(log_params)
        ux, cw = counts.x, counts.weight
        px = p * ux
        log_total = np.log(x * m + gamma)
        ll = (
            _dot(cw, (special.gammaln(px + q) - special.gammaln(px)))
            + total * (q * math.log(gamma) - special.gammaln(q))
            + p * x_log_mx
            - log_m
            - _dot(w, ((p * x + q) * log_total))
        )
        dp = (
            _dot(cw, (ux * (special.digamma(px + q) - special.digamma(px))))
            + x_log_mx
            - _dot(w, (x * log_total))
        )
        dq = (
            _dot(cw, special.digamma(px + q))
            + total * (math.log(gamma) - special.digamma(q))
            - _dot(w, log_total)
        )
        dgamma = total * q / gamma - _dot(w, ((p * x + q) / (x * m + gamma)))
        gradient = -np.array([dp * p, dq * q, dgamma * gamma]) / total
        return -ll / total, gradient

    return objective


def fit_gamma_gamma(
    frequency: npt.ArrayLike,
    mean_spend: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
) -> GammaGammaFit:
    """Maximum-likelihood Gamma-Gamma parameters, fitted on the customers with at least
    one repeat purchase (a mean repeat spend exists only for them; the others are ignored,
    and ``diagnostics.customers`` counts those used)."""
    started = time.perf_counter()
    x = _floats("frequency", frequency).reshape(-1)
    m = np.asarray(mean_spend, dtype=np.float64).reshape(-1)
    if m.size != x.size:
        raise InvalidCustomerSummary("mean_spend", f"has {m.size} values for {x.size} rows", 0, 0)
    w = _weights(weights, x.size)
    _refuse("frequency", "is not a whole number >= 0", (x < 0) | (x != np.floor(x)))
    repeat = x > 0
    bad_spend = repeat & ~((m > 0) & np.isfinite(m))
    _refuse("mean_spend", "is not a finite number > 0 for a repeat buyer", bad_spend)
    x, m, w = x[repeat], m[repeat], w[repeat]
    if w.sum() <= 0:
        raise InvalidCustomerSummary(
            "frequency", "has no repeat buyer: the spend model needs some", 0, 0
        )
    start = np.log(np.array([1.0, 2.0, _dot(w, m) / float(w.sum())]))
    log_params, diagnostics = _maximise(
        _gamma_gamma_objective(x, m, w), start, float(w.sum()), started
    )
    p, q, gamma = (float(v) for v in np.exp(log_params))
    if q <= 1:
        diagnostics = msgspec.structs.replace(
            diagnostics,
            converged=False,
            message=f"q = {q:.4g} <= 1: the population mean spend is infinite; "
            + diagnostics.message,
        )
    return GammaGammaFit(params=GammaGammaParams(p=p, q=q, gamma=gamma), diagnostics=diagnostics)


def fit(
    frequency: npt.ArrayLike,
    recency: npt.ArrayLike,
    age: npt.ArrayLike,
    mean_spend: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
) -> LtvModel:
    """Fits both models on the same customers."""
    return LtvModel(
        purchases=fit_bgnbd(frequency, recency, age, weights=weights),
        spend=fit_gamma_gamma(frequency, mean_spend, weights=weights),
    )


# --- scoring -----------------------------------------------------------------------------


def probability_alive(
    params: BgNbdParams, frequency: npt.ArrayLike, recency: npt.ArrayLike, age: npt.ArrayLike
) -> Floats:
    """P(alive at T | x, t_x, T), note 021: 1 / (1 + a / (b + x - 1) * ((alpha + T) /
    (alpha + t_x)) ** (r + x)) for x > 0, and 1 for x = 0 (no dropout before a repeat
    purchase). Computed as a logistic of the log-odds, so it neither overflows for a huge x
    or T nor loses a tiny probability to rounding."""
    x, t_x, age_ = _history(frequency, recency, age)
    return _p_alive(params, x, t_x, age_)


def _p_alive(params: BgNbdParams, x: Floats, t_x: Floats, age: Floats) -> Floats:
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    repeat = x > 0
    log_odds_dead = (
        math.log(a)
        - np.log(np.where(repeat, b + x - 1.0, 1.0))
        + (r + x) * (np.log(alpha + age) - np.log(alpha + t_x))
    )
    return np.where(repeat, special.expit(-log_odds_dead), 1.0)


def expected_purchases(
    params: BgNbdParams,
    horizon_days: npt.ArrayLike,
    frequency: npt.ArrayLike,
    recency: npt.ArrayLike,
    age: npt.ArrayLike,
) -> Floats:
    """Expected purchases in (T, T + t] given the history (x, t_x, T), eq. (10).

    The paper writes it with 2F1(r + x, b + x; a + b + x - 1; z), z = t / (alpha + T + t),
    times ((alpha + T) / (alpha + T + t)) ** (r + x) = (1 - z) ** (r + x). For a large x
    the 2F1 overflows while the power underflows (``lifetimes`` retries such customers
    with Euler's transformation in log space; ``pymc-marketing`` does not). Applying
    Euler's transformation, 2F1(A, B; C; z) = (1 - z) ** (C - A - B) 2F1(C - A, C - B; C; z),
    once and for all folds the two into

        (1 - z) ** (a - 1) * 2F1(a + b - 1 - r, a - 1; a + b + x - 1; z),

    whose upper parameters do not grow with x (the series converges faster as x grows)
    and whose power does not depend on x. So

        E = P(alive) * (a + b + x - 1) / (a - 1) * [1 - (1 - z) ** (a - 1) * 2F1(...)].
    """
    x, t_x, age_ = _history(frequency, recency, age)
    t = _floats("horizon_days", horizon_days)
    _refuse("horizon_days", "is negative", t < 0)
    return _p_alive(params, x, t_x, age_) * _purchases_if_alive(params, t, x, age_)


def _purchases_if_alive(params: BgNbdParams, t: Floats, x: Floats, age: Floats) -> Floats:
    """E[purchases in (T, T + t] | alive at T]: the bracket of :func:`expected_purchases`.

    The formula has removable singularities: a = 1 (0 / 0), a + b = 1 with x = 0 (a pole of
    2F1 times a zero), and r - a a whole number, where 2F1's z -> 1 - z transformation is
    degenerate and scipy's hyp2f1 returns NaN or, worse, a wrong finite value (an error of
    ~1e-16 / d at a distance d from it). Within ``_NEAR`` of one, the value is interpolated
    linearly between two points ``2 _NEAR`` either side, where both errors are ~1e-10.
    """
    r, a, b = params.r, params.a, params.b
    if abs(a - 1.0) < _NEAR:
        return _interpolate(lambda v: msgspec.structs.replace(params, a=v), a, 1.0, t, x, age)
    if abs(a + b - 1.0) < _NEAR:
        return _interpolate(lambda v: msgspec.structs.replace(params, b=v), b, 1.0 - a, t, x, age)
    whole = round(r - a)
    if abs(r - a - whole) < _NEAR:
        return _interpolate(lambda v: msgspec.structs.replace(params, r=v), r, a + whole, t, x, age)
    return _purchases_if_alive_regular(params, t, x, age)


def _interpolate(
    at: Callable[[float], BgNbdParams],
    value: float,
    singular: float,
    t: Floats,
    x: Floats,
    age: Floats,
) -> Floats:
    # Points 2 _NEAR away, so that rounding cannot bring them back within _NEAR; both on
    # the positive side when the lower one would not be a valid parameter.
    low = singular - 2 * _NEAR if singular - 2 * _NEAR > 0 else singular + 2 * _NEAR
    high = low + 4 * _NEAR
    at_low = _purchases_if_alive(at(low), t, x, age)
    at_high = _purchases_if_alive(at(high), t, x, age)
    return at_low + (at_high - at_low) * ((value - low) / (high - low))


def _purchases_if_alive_regular(params: BgNbdParams, t: Floats, x: Floats, age: Floats) -> Floats:
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    log_one_minus_z = np.log(alpha + age) - np.log(alpha + age + t)
    z = t / (alpha + age + t)
    c = a + b + x - 1.0
    hyp = special.hyp2f1(a + b - 1.0 - r, a - 1.0, c, z)
    # 1 - (1-z)^(a-1) F, with the power's own 1 - e^u taken by expm1 for small horizons.
    power = np.exp((a - 1.0) * log_one_minus_z)
    bracket = -np.expm1((a - 1.0) * log_one_minus_z) - power * (hyp - 1.0)
    # max: a horizon of 0 gives -0.0, and rounding may leave -1e-17 for a tiny one.
    return np.asarray(np.maximum(c / (a - 1.0) * bracket, 0.0), dtype=np.float64)


def expected_average_spend(
    params: GammaGammaParams, frequency: npt.ArrayLike, mean_spend: npt.ArrayLike
) -> Floats:
    """E(M | x, m), note 025 eq. (5): p (gamma + x m) / (p x + q - 1), the population mean
    p gamma / (q - 1) shrunk towards the customer's own mean as x grows; the population
    mean where x = 0 (``mean_spend`` is then ignored, NaN allowed)."""
    x = _floats("frequency", frequency)
    m = np.asarray(mean_spend, dtype=np.float64)
    x, m = np.broadcast_arrays(x, m)
    _refuse("frequency", "is not a whole number >= 0", (x < 0) | (x != np.floor(x)))
    _check_spend_model(params)
    repeat = x > 0
    bad_spend = repeat & ~((m >= 0) & np.isfinite(m))
    _refuse("mean_spend", "is not a finite number >= 0 for a repeat buyer", bad_spend)
    m = np.where(repeat, m, 0.0)
    p, q, gamma = params.p, params.q, params.gamma
    return np.asarray(p * (gamma + x * m) / (p * x + q - 1.0), dtype=np.float64)


def _check_spend_model(params: GammaGammaParams) -> None:
    if params.q <= 1:
        raise UnusableLtvModel(
            f"spend model has q = {params.q:.4g} <= 1, so no finite mean spend",
            "refit on more repeat buyers, or leave predicted spend out",
        )


def score(
    model: LtvModel,
    frequency: npt.ArrayLike,
    recency: npt.ArrayLike,
    age: npt.ArrayLike,
    mean_spend: npt.ArrayLike,
    *,
    horizon_days: float = DEFAULT_HORIZON_DAYS,
    annual_discount_rate: float = 0.0,
) -> LtvScores:
    """P(alive), expected purchases, expected mean spend and expected spend over the next
    ``horizon_days`` (12 months by default) for each customer, with a stored model.

    With ``annual_discount_rate`` d, the purchases expected in each month k of the horizon
    are valued at (1 + d) ** -(end of month k in years); the last month may be partial.
    """
    for fitted in (model.purchases, model.spend):
        if fitted.model_version != MODEL_VERSION:
            raise UnusableLtvModel(
                f"was fitted by model code {fitted.model_version!r}, this is {MODEL_VERSION!r}",
                "refit it",
            )
    if not (math.isfinite(horizon_days) and horizon_days >= 0):
        raise InvalidCustomerSummary("horizon_days", "is not a finite number >= 0", 0, 0)
    if not (math.isfinite(annual_discount_rate) and annual_discount_rate > -1):
        raise InvalidCustomerSummary("annual_discount_rate", "is not a number > -1", 0, 0)
    purchases = model.purchases.params
    x, t_x, age_ = _history(frequency, recency, age)
    average_spend = expected_average_spend(model.spend.params, x, mean_spend)
    p_alive = _p_alive(purchases, x, t_x, age_)
    expected = p_alive * _purchases_if_alive(purchases, np.asarray(horizon_days), x, age_)
    if annual_discount_rate == 0 or horizon_days == 0:
        value = expected * average_spend
    else:
        value = np.zeros_like(expected)
        before = np.zeros_like(expected)
        months = math.ceil(horizon_days / MONTH_DAYS - 1e-9)
        for month in range(1, months + 1):
            end = min(month * MONTH_DAYS, horizon_days)
            upto = p_alive * _purchases_if_alive(purchases, np.asarray(end), x, age_)
            value += (upto - before) * (1.0 + annual_discount_rate) ** (-end / DAYS_PER_YEAR)
            before = upto
        value *= average_spend
    return LtvScores(
        p_alive=p_alive,
        expected_purchases=expected,
        expected_average_spend=average_spend,
        expected_spend=value,
        horizon_days=horizon_days,
        annual_discount_rate=annual_discount_rate,
    )
