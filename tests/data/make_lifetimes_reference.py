"""Computes the reference numbers in tests/test_ltv.py with the ``lifetimes`` library.

Run once in a throwaway virtualenv (``pip install lifetimes==0.11.3``; it is not a
dependency of profilestore) from the repository root:

    python tests/data/make_lifetimes_reference.py

It fits ``BetaGeoFitter`` and ``GammaGammaFitter`` on tests/data/cdnow_summary.csv (in
weeks, as the library's own example does) and prints the fitted parameters, P(alive),
conditional expected purchases and discounted lifetime value for a few customers, which
the tests compare with profilestore.ltv (in days).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter

MONTH_WEEKS = 365.25 / 12 / 7
data = pd.read_csv(Path(__file__).parent / "cdnow_summary.csv", index_col="ID")
bgf = BetaGeoFitter().fit(data["x"], data["t_x"], data["T"])
repeat = data[data["x"] > 0]
ggf = GammaGammaFitter().fit(repeat["x"], repeat["zbar"])

# A few CDNOW customers (x = 0, recent and lapsed buyers, the heaviest buyer) and two
# made-up histories with a huge frequency, where the library takes its overflow branch.
rows = [1, 2, 3, 18, 22, 157, 1516, 1993]
cases = [(int(data.loc[i, "x"]), float(data.loc[i, "t_x"]), float(data.loc[i, "T"])) for i in rows]
cases += [(400, 38.0, 38.86), (5000, 38.99, 39.0), (100_000, 38.9999, 39.0)]
x, t_x, T = (np.array(column, dtype=float) for column in zip(*cases, strict=True))
reference = {
    "bgnbd_weeks": dict(bgf.params_),
    "gamma_gamma": dict(ggf.params_),
    "cases_weeks": cases,
    "p_alive": list(bgf.conditional_probability_alive(x, t_x, T)),
}
for weeks in (39, 52):
    expected = bgf.conditional_expected_number_of_purchases_up_to_time(weeks, x, t_x, T)
    reference[f"purchases_{weeks}_weeks"] = list(expected)

# Lifetime value over 12 months discounted monthly at 1%, in months so that the library's
# month is 365.25 / 12 days as ours is (its "W" month is 4.345 weeks).
monthly = BetaGeoFitter()
r, alpha, a, b = bgf.params_
monthly.params_ = pd.Series({"r": r, "alpha": alpha / MONTH_WEEKS, "a": a, "b": b})
monthly.predict = monthly.conditional_expected_number_of_purchases_up_to_time
spend = [float(data.loc[i, "zbar"]) for i in rows] + [20.0, 35.0, 50.0]
index = pd.RangeIndex(len(cases))
clv = ggf.customer_lifetime_value(
    monthly,
    pd.Series(x, index=index),
    pd.Series(t_x / MONTH_WEEKS, index=index),
    pd.Series(T / MONTH_WEEKS, index=index),
    pd.Series(spend, index=index),
    time=12,
    discount_rate=0.01,
    freq="M",
)
reference["mean_spend"] = spend
reference["clv_12_months_1pct_monthly"] = list(clv)
print(json.dumps(reference, indent=1, default=float))
