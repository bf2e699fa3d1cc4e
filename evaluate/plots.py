"""Plots of a run's results table: bars per representation with 95% CIs, and per-day lines.

matplotlib is imported inside the functions and drives an Agg canvas directly (no pyplot), so
plotting neither needs a display nor changes the process-wide backend of the caller.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from evaluate.metrics import METRICS, check_results

Z95 = 1.959963984540054
"""Two-sided 95% quantile of the standard normal (CIs use the normal approximation over cases)."""
LABELS = {"hr": "HR", "ndcg": "nDCG"}


def run_order(cases: pd.DataFrame) -> list[tuple[str, str]]:
    """(model, feature_set) runs grouped by model; models and, within each, feature sets in order of first
    appearance: the caller's order sets the layout."""
    runs = list(dict.fromkeys(zip(cases["model"].astype(str), cases["feature_set"].astype(str))))
    models = list(dict.fromkeys(m for m, _ in runs))
    return sorted(runs, key=lambda r: models.index(r[0]))


def stand_in_runs(cases: pd.DataFrame) -> set[tuple[str, str]]:
    """Runs with any row flagged ``stand_in`` (features from tiny stand-in models)."""
    if "stand_in" not in cases.columns:
        return set()
    flagged = cases[cases["stand_in"].to_numpy(dtype=bool)]
    return set(zip(flagged["model"].astype(str), flagged["feature_set"].astype(str)))


def _new_figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def plot_bars(cases: pd.DataFrame, path: str | Path, k: int = 10) -> Path:
    """Bars of HR@k and nDCG@k per representation, grouped (and coloured) by model, with 95% CIs.

    CI half-width = 1.96 * sd / sqrt(n) over the run's cases. Stand-in runs are hatched.
    """
    check_results(cases)
    runs = run_order(cases)
    stand_ins = stand_in_runs(cases)
    models = list(dict.fromkeys(m for m, _ in runs))
    # One slot per run, a blank slot between models so the groups read apart.
    x, pos = [], 0.0
    for i, (model, _) in enumerate(runs):
        if i and model != runs[i - 1][0]:
            pos += 1.0
        x.append(pos)
        pos += 1.0
    groups = cases.groupby([cases["model"].astype(str), cases["feature_set"].astype(str)], sort=False)
    fig, axes = _new_figure(max(6.0, 0.9 * len(runs) + 3.0), 4.5, ncols=len(METRICS))
    colors = {m: f"C{i % 10}" for i, m in enumerate(models)}
    for ax, (name, fn) in zip(axes, METRICS.items()):
        means, halfs = [], []
        for run in runs:
            v = fn(groups.get_group(run)["rank"].to_numpy(), k)
            means.append(v.mean())
            halfs.append(Z95 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0)
        means, halfs = np.array(means), np.array(halfs)
        # Metrics live in [0, 1]: draw the normal-approximation interval clipped to that range.
        err = [means - np.clip(means - halfs, 0, 1), np.clip(means + halfs, 0, 1) - means]
        bars = ax.bar(x, means, yerr=err, capsize=3, color=[colors[m] for m, _ in runs])
        for bar, run in zip(bars, runs):
            if run in stand_ins:
                bar.set_hatch("//")
        ax.set_xticks(
            x, [f + (" †" if (m, f) in stand_ins else "") for m, f in runs], rotation=45, ha="right"
        )
        ax.set_ylabel(f"{LABELS[name]}@{k}")
        ax.set_title(f"{LABELS[name]}@{k} (95% CI)")
    from matplotlib.patches import Patch

    handles = [Patch(color=colors[m], label=m) for m in models]
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(models), 5), fontsize=8)
    return _save(fig, path)


def plot_days(cases: pd.DataFrame, path: str | Path, k: int = 10) -> Path:
    """HR@k per evaluated day, one line per (model, feature_set)."""
    check_results(cases)
    days = sorted(cases["day"].astype(str).unique())
    fig, axes = _new_figure(max(8.0, 0.8 * len(days) + 6.0), 4.5)
    ax = axes[0]
    per_day = (
        cases.assign(hit=METRICS["hr"](cases["rank"].to_numpy(), k))
        .groupby([cases["model"].astype(str), cases["feature_set"].astype(str), cases["day"].astype(str)])[
            "hit"
        ]
        .mean()
    )
    xs = np.arange(len(days))
    models = list(dict.fromkeys(m for m, _ in run_order(cases)))
    styles, markers = ["-", "--", ":", "-."], "osD^v<>pX*"
    for i, (model, feature_set) in enumerate(run_order(cases)):
        y = per_day.loc[(model, feature_set)].reindex(days).to_numpy()
        # Line style per model, marker per run: runs with equal values stay distinguishable.
        style = styles[models.index(model) % len(styles)]
        ax.plot(xs, y, style, marker=markers[i % len(markers)], label=f"{model} / {feature_set}", alpha=0.85)
    ax.set_xticks(xs, days, rotation=45, ha="right")
    ax.set_ylabel(f"HR@{k}")
    ax.set_title(f"HR@{k} per day")
    fig.legend(loc="outside right upper", fontsize=7)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path
