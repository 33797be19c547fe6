"""Lifetime-value model benchmark: fit and score a million customers, and rank them.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/ltv.py            # full run: 250k and 1M customers, ~2 minutes
    .venv/bin/python bench/ltv.py --quick    # 50k and 200k customers, ~30 seconds

Prints one JSON object on stdout (progress on stderr) and writes it to
``bench/results/ltv.json`` (``--output`` to change). See the "Lifetime value" section of
``bench/README.md`` for what every figure means.

Customers are drawn from the BG/NBD and Gamma-Gamma processes with known parameters
(:mod:`profilestore.ltv_simulation`), so the fit can be checked against the truth, and each
is followed for a held-out year, so the predictions can be ranked against what customers
went on to spend, next to the naive predictor "past spend" in the same run. Every size is
fitted and scored in a child process of its own, so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "src", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import msgspec  # noqa: E402
import numpy as np  # noqa: E402

from bench.core import (  # noqa: E402
    COMPARE,
    PeakAnonymous,
    info,
    judge,
    machine_info,
    memory_status,
    ratio,
    run_and_write,
    run_child,
    source_state,
    stage,
)
from profilestore import ltv  # noqa: E402
from profilestore.ltv_simulation import SimulatedCustomers, simulate  # noqa: E402

SEED = 7
# A population like CDNOW's (r, a, b as the paper's fit; alpha in days) and its spend.
TRUTH_PURCHASES = ltv.BgNbdParams(r=0.25, alpha=30.0, a=0.8, b=2.5)
TRUTH_SPEND = ltv.GammaGammaParams(p=6.0, q=3.5, gamma=15.0)
HELD_OUT_DAYS = ltv.DEFAULT_HORIZON_DAYS
# The same number of customers buying 4x as often and staying ~4x as long (alpha / 4,
# b x 4): several times the events behind the same number of summaries, to show that
# memory follows customers, not events.
BUSIER = 4

MODES: dict[str, dict[str, Any]] = {
    "quick": {"sizes": [50_000, 200_000]},
    "full": {"sizes": [250_000, 1_000_000]},
}

TARGETS = {
    "fit_s": ("<=", 60.0),
    "score_s": ("<=", 10.0),
    "parameters_max_relative_error": ("<=", 0.02),
    "spearman_vs_naive": (">=", 1.0),
    "working_busier_vs_base": ("<=", 1.1),
}


# --- one size, in a child process --------------------------------------------------------


def spearman(predicted: np.ndarray, actual: np.ndarray) -> float:
    from scipy import stats

    return float(stats.spearmanr(predicted, actual).statistic)


def top_decile_share(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Share of the held-out spend that the 10% of customers ranked highest made."""
    top = np.argsort(-predicted, kind="stable")[: max(1, predicted.size // 10)]
    return float(actual[top].sum() / actual.sum())


def relative_errors(fitted: msgspec.Struct, truth: msgspec.Struct) -> dict[str, float]:
    found, true = msgspec.structs.asdict(fitted), msgspec.structs.asdict(truth)
    return {name: round(abs(found[name] / true[name] - 1), 5) for name in true}


def ranking(customers: SimulatedCustomers, scores: ltv.LtvScores) -> dict[str, Any]:
    actual = customers.future_spend
    naive_rate = customers.past_spend / customers.age
    return {
        "held_out_days": customers.horizon_days,
        "spearman": {
            "ours": round(spearman(scores.expected_spend, actual), 4),
            "naive_past_spend": round(spearman(customers.past_spend, actual), 4),
            "naive_past_spend_per_day": round(spearman(naive_rate, actual), 4),
            "purchases_ours": round(
                spearman(scores.expected_purchases, customers.future_purchases), 4
            ),
            "purchases_naive_past_frequency": round(
                spearman(customers.frequency, customers.future_purchases), 4
            ),
        },
        "top_decile_share_of_spend": {
            "ours": round(top_decile_share(scores.expected_spend, actual), 4),
            "naive_past_spend": round(top_decile_share(customers.past_spend, actual), 4),
        },
        "totals": {
            "predicted_spend": round(float(scores.expected_spend.sum()), 1),
            "actual_spend": round(float(actual.sum()), 1),
            "predicted_purchases": round(float(scores.expected_purchases.sum()), 1),
            "actual_purchases": float(customers.future_purchases.sum()),
            "mean_p_alive": round(float(scores.p_alive.mean()), 4),
            "share_alive": round(float(customers.alive.mean()), 4),
        },
    }


INPUTS = ("frequency", "recency", "age", "mean_spend")

# Runs in the interpreter given by --pymc-python (a virtualenv with pymc-marketing, which is
# not a dependency): the same inputs, its BetaGeoModel and GammaGammaModel with flat priors
# (so that MAP is the maximum likelihood, as ours), fitted by MAP, its fastest method.
PYMC_MARKETING_FIT = """
import json, sys, time
started = time.perf_counter()
import numpy as np, pandas as pd
from pymc_extras.prior import Prior
from pymc_marketing.clv import BetaGeoModel, GammaGammaModel
import pymc_marketing
import_s = time.perf_counter() - started
with np.load(sys.argv[1]) as arrays:
    x, t_x, age, m = (arrays[k] for k in ("frequency", "recency", "age", "mean_spend"))
ids = np.arange(x.size)
flat = {k: Prior("HalfFlat") for k in ("r", "alpha", "a", "b")}
purchases = BetaGeoModel(
    data=pd.DataFrame({"customer_id": ids, "frequency": x, "recency": t_x, "T": age}),
    model_config=flat,
)
started = time.perf_counter()
purchases.fit(method="map", progressbar=False)
fit_purchases_s = time.perf_counter() - started
repeat = x > 0
spend = GammaGammaModel(
    data=pd.DataFrame(
        {"customer_id": ids[repeat], "frequency": x[repeat], "monetary_value": m[repeat]}
    )
)
started = time.perf_counter()
spend.fit(method="map", progressbar=False)
fit_spend_s = time.perf_counter() - started
params = {k: float(purchases.fit_result[k].values.squeeze()) for k in ("r", "alpha", "a", "b")}
params |= {k: float(spend.fit_result[k].values.squeeze()) for k in ("p", "q", "v")}
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({
    "version": pymc_marketing.__version__,
    "import_s": round(import_s, 2),
    "fit_s": round(fit_purchases_s + fit_spend_s, 2),
    "fit_purchases_s": round(fit_purchases_s, 2),
    "fit_spend_s": round(fit_spend_s, 2),
    "peak_rss_mb": round(int(peak) / 1024, 1),
    "params": params,
}))
"""


def child(inputs: Path, scores_path: Path) -> None:
    """Runs in a subprocess: load the summaries, fit, score; report on stdout, write the
    scores. Loaded from a file rather than simulated here, so that the baseline is the
    imports and the inputs alone and the peak is what fitting and scoring add."""
    with np.load(inputs) as arrays:
        frequency, recency, age, mean_spend = (arrays[name] for name in INPUTS)
    gc.collect()
    baseline = memory_status()
    with PeakAnonymous() as anonymous:
        started = time.perf_counter()
        model = ltv.fit(frequency, recency, age, mean_spend)
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        scores = ltv.score(model, frequency, recency, age, mean_spend, horizon_days=HELD_OUT_DAYS)
        score_s = time.perf_counter() - started
        started = time.perf_counter()
        ltv.score(
            model,
            frequency,
            recency,
            age,
            mean_spend,
            horizon_days=HELD_OUT_DAYS,
            annual_discount_rate=0.1,
        )
        score_discounted_s = time.perf_counter() - started
    after = memory_status()
    np.savez(
        scores_path,
        p_alive=scores.p_alive,
        expected_purchases=scores.expected_purchases,
        expected_spend=scores.expected_spend,
    )
    report = {
        "fit_s": round(fit_s, 2),
        "fit_purchases_s": round(model.purchases.diagnostics.fit_seconds, 2),
        "fit_spend_s": round(model.spend.diagnostics.fit_seconds, 2),
        "score_s": round(score_s, 2),
        "score_discounted_s": round(score_discounted_s, 2),
        "baseline_rss_mb": round(baseline["VmRSS"], 1),
        "peak_rss_mb": round(after["VmHWM"], 1),
        "working_mb": round(after["VmHWM"] - baseline["VmRSS"], 1),
        "peak_anon_mb": round(anonymous.peak_mb, 1),
        "fit": msgspec.to_builtins(model),
    }
    print(json.dumps(report))


# --- the run -----------------------------------------------------------------------------


def measure_pymc_marketing(python: Path, inputs: Path) -> dict[str, Any]:
    with stage(f"pymc-marketing MAP fit on the same inputs ({python})"):
        out = subprocess.run(
            [str(python), "-c", PYMC_MARKETING_FIT, str(inputs)],
            check=True,
            capture_output=True,
            text=True,
        )
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    info(f"pymc-marketing: import {report['import_s']}s, fit {report['fit_s']}s")
    return report


def measure(
    work: Path, size: int, busier: int = 1, pymc_python: Path | None = None
) -> dict[str, Any]:
    label = f"{size:,} customers{', busier buyers' if busier > 1 else ''}"
    truth = msgspec.structs.replace(
        TRUTH_PURCHASES, alpha=TRUTH_PURCHASES.alpha / busier, b=TRUTH_PURCHASES.b * busier
    )
    with stage(f"simulate {label}"):
        started = time.perf_counter()
        customers = simulate(truth, TRUTH_SPEND, size, horizon_days=HELD_OUT_DAYS, seed=SEED)
        simulate_s = time.perf_counter() - started
        inputs, scores_path = (
            work / f"inputs-{size}-{busier}.npz",
            work / f"scores-{size}-{busier}.npz",
        )
        np.savez(inputs, **{name: getattr(customers, name) for name in INPUTS})
    with stage(f"fit and score {label} (child process)"):
        report = run_child(Path(__file__).resolve(), "--child", str(inputs), str(scores_path))
    with np.load(scores_path) as arrays:
        scores = ltv.LtvScores(
            p_alive=arrays["p_alive"],
            expected_purchases=arrays["expected_purchases"],
            expected_average_spend=np.zeros(0),
            expected_spend=arrays["expected_spend"],
            horizon_days=HELD_OUT_DAYS,
            annual_discount_rate=0.0,
        )
    fitted = msgspec.convert(report["fit"], ltv.LtvModel)
    report = {
        "customers": size,
        "purchases_per_customer": round(float(customers.frequency.mean()) + 1, 3),
        "simulate_s": round(simulate_s, 2),
        **report,
        "working_bytes_per_customer": round(report["working_mb"] * 2**20 / size),
        "truth": {
            "purchases": msgspec.to_builtins(truth),
            "spend": msgspec.to_builtins(TRUTH_SPEND),
        },
        "relative_errors": {
            **relative_errors(fitted.purchases.params, truth),
            **relative_errors(fitted.spend.params, TRUTH_SPEND),
        },
        "ranking": ranking(customers, scores),
    }
    if pymc_python:
        report["pymc_marketing"] = measure_pymc_marketing(pymc_python, inputs)
    info(
        f"fit {report['fit_s']}s, score {report['score_s']}s "
        f"(discounted {report['score_discounted_s']}s), working memory {report['working_mb']} "
        f"MB, spearman ours {report['ranking']['spearman']['ours']} vs naive "
        f"{report['ranking']['spearman']['naive_past_spend']}"
    )
    return report


def run(mode_name: str, work: Path, pymc_python: Path | None) -> dict[str, Any]:
    import scipy

    started = time.perf_counter()
    machine = machine_info(None)
    machine |= {"numpy": np.__version__, "scipy": scipy.__version__}
    result: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": mode_name,
        "seed": SEED,
        "machine": machine,
        "source": source_state(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }
    sizes = MODES[mode_name]["sizes"]
    by_size = {str(size): measure(work, size) for size in sizes[:-1]}
    by_size[str(sizes[-1])] = measure(work, sizes[-1], pymc_python=pymc_python)
    largest = by_size[str(sizes[-1])]
    busier = measure(work, sizes[-1], BUSIER)
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    spearman_ours = largest["ranking"]["spearman"]["ours"]
    spearman_naive = largest["ranking"]["spearman"]["naive_past_spend"]
    smaller = by_size[str(sizes[0])]
    figures = {
        "customers": sizes[-1],
        "fit_s": largest["fit_s"],
        "score_s": largest["score_s"],
        "score_discounted_s": largest["score_discounted_s"],
        "parameters_max_relative_error": max(largest["relative_errors"].values()),
        "spearman_ours": spearman_ours,
        "spearman_naive_past_spend": spearman_naive,
        "spearman_vs_naive": ratio(spearman_ours, spearman_naive),
        "top_decile_share_ours": largest["ranking"]["top_decile_share_of_spend"]["ours"],
        "top_decile_share_naive": largest["ranking"]["top_decile_share_of_spend"][
            "naive_past_spend"
        ],
        "peak_rss_mb": largest["peak_rss_mb"],
        "working_mb": largest["working_mb"],
        "working_bytes_per_customer": largest["working_bytes_per_customer"],
        "working_larger_vs_smaller": ratio(largest["working_mb"], smaller["working_mb"]),
        "customers_larger_vs_smaller": ratio(sizes[-1], sizes[0]),
        "working_busier_vs_base": ratio(busier["working_mb"], largest["working_mb"]),
        "purchases_busier_vs_base": ratio(
            busier["purchases_per_customer"], largest["purchases_per_customer"]
        ),
    }
    alternative = largest.get("pymc_marketing")
    if alternative:
        figures["pymc_marketing_fit_s"] = alternative["fit_s"]
        figures["pymc_marketing_import_s"] = alternative["import_s"]
        figures["pymc_marketing_peak_rss_mb"] = alternative["peak_rss_mb"]
        figures["fit_vs_pymc_marketing"] = ratio(largest["fit_s"], alternative["fit_s"])
        ours = {**largest["fit"]["purchases"]["params"], **largest["fit"]["spend"]["params"]}
        theirs = {**alternative["params"], "gamma": alternative["params"]["v"]}
        figures["pymc_marketing_params_max_relative_difference"] = max(
            abs(theirs[name] / value - 1) for name, value in ours.items()
        )
    result |= figures
    result["targets"] = judge(figures, TARGETS, COMPARE)
    result["details"] = {"sizes": by_size, "busier": busier}
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (~30 seconds)")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "bench" / "results" / "ltv.json",
        help="where to write the JSON (default: bench/results/ltv.json)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the simulated inputs here")
    parser.add_argument(
        "--pymc-python",
        type=Path,
        help="a Python with pymc-marketing installed: also fit its models on the largest size",
    )
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    mode = "quick" if args.quick else "full"
    return run_and_write(
        lambda work: run(mode, work, args.pymc_python), mode, args, "profilestore-bench-ltv-"
    )


if __name__ == "__main__":
    sys.exit(main())
