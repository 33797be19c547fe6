"""PNG plots of where customers are (``profilestore scores report``), with matplotlib.

Drawn from the stored run summaries only (:class:`~profilestore.scoring.Summary`): customers
per lifecycle stage, journey stage and value tier, each 4I score's histogram, predicted
value percentiles, and the stage counts over the runs. The Agg backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from profilestore.scoring import FOUR_I, Summary


def render(summaries: list[Summary], directory: Path) -> list[Path]:
    """Write the plots of the latest run (and the history of runs) into ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    latest = summaries[-1]
    written = []

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (title, counts) in zip(
        axes,
        (
            ("lifecycle stage", latest.lifecycle),
            ("journey stage", latest.journey),
            ("value tier", latest.value_tier),
        ),
        strict=True,
    ):
        ax.bar(list(counts), list(counts.values()), color="#4C72B0")
        ax.set_title(f"customers per {title}")
        ax.tick_params(axis="x", rotation=30)
    figure.suptitle(f"scores of {latest.computed_at:%Y-%m-%d %H:%M} UTC ({latest.fit_version})")
    figure.tight_layout()
    written.append(_save(figure, directory / "stages.png", plt))

    figure, axes = plt.subplots(1, 4, figsize=(16, 4), sharey=True)
    for ax, name in zip(axes, FOUR_I, strict=True):
        entry = latest.four_i[name]
        bins = [entry[f"bin_{i}"] for i in range(10)]
        ax.bar([f"{i * 10}" for i in range(10)], bins, color="#55A868")
        ax.set_title(f"{name} (mean {entry['mean']:.1f})")
        ax.set_xlabel("score, 10-point bins")
    axes[0].set_ylabel("customers")
    figure.tight_layout()
    written.append(_save(figure, directory / "engagement_4i.png", plt))

    value = latest.predicted_value
    marks = [k for k in ("p10", "p25", "p50", "p75", "p90", "p99") if k in value]
    if marks:
        figure, ax = plt.subplots(figsize=(7, 4))
        ax.bar(marks, [value[k] for k in marks], color="#C44E52")
        ax.set_title("predicted spend over the horizon, percentiles among buyers")
        figure.tight_layout()
        written.append(_save(figure, directory / "predicted_value.png", plt))

    if len(summaries) > 1:
        figure, ax = plt.subplots(figsize=(9, 4.5))
        stages = sorted({s for run in summaries for s in run.lifecycle})
        for stage in stages:
            ax.plot(
                list(range(len(summaries))),
                [run.lifecycle.get(stage, 0) for run in summaries],
                marker="o",
                label=stage,
            )
        ax.set_xticks(list(range(len(summaries))))
        ax.set_xticklabels([f"{run.computed_at:%m-%d %H:%M}" for run in summaries])
        ax.set_title("customers per lifecycle stage, run by run")
        ax.legend()
        figure.autofmt_xdate()
        figure.tight_layout()
        written.append(_save(figure, directory / "movement.png", plt))
    return written


def _save(figure: Any, path: Path, plt: Any) -> Path:
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
