"""Paired significance tests between two runs evaluated on the same test cases.

A run is a (model, feature_set) pair in a results table (see ``metrics.check_results``). Two runs
are compared case by case (the same user, day and target item), or over their per-day means, with
a paired t-test; every delta a report prints comes with the p-value from here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from evaluate.metrics import CASE_KEY, METRICS, check_results

Run = tuple[str, str]
"""A run of a results table: (model, feature_set)."""


@dataclass(frozen=True)
class PairedTest:
    """Result of a paired t-test of b against a (``delta = mean_b - mean_a``)."""

    mean_a: float
    mean_b: float
    delta: float
    rel_delta: float
    """delta / mean_a; NaN when mean_a is 0 (a relative change from nothing is undefined)."""
    t: float
    """t statistic, positive when b is better than a."""
    p: float
    """Two-sided p-value; NaN when it is undefined (see ``reason``)."""
    n: int
    """Number of pairs (cases, or days)."""
    reason: str = ""
    """Why t and p take a special value (fewer than 2 pairs, identical or constant differences)."""


def paired_ttest(a: np.ndarray, b: np.ndarray) -> PairedTest:
    """Paired t-test of ``b`` against ``a`` (scipy.stats.ttest_rel) with defined edge cases.

    - fewer than 2 pairs: t = p = NaN (the variance of the differences is undefined);
    - every difference zero (identical arrays): t = 0, p = 1 (there is no evidence of a difference,
      where scipy would return NaN from 0/0);
    - every difference the same nonzero value: t = ±inf, p = 0 (zero variance, certain sign).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"paired_ttest: expected two 1-D arrays of equal length, got {a.shape} and {b.shape}"
        )
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("paired_ttest: inputs contain NaN")
    n = len(a)
    mean_a = float(a.mean()) if n else float("nan")
    mean_b = float(b.mean()) if n else float("nan")
    delta = mean_b - mean_a
    rel = delta / mean_a if n and mean_a != 0 else float("nan")
    if n < 2:
        return PairedTest(mean_a, mean_b, delta, rel, float("nan"), float("nan"), n, "fewer than 2 pairs")
    d = b - a
    if (d == d[0]).all():
        if d[0] == 0:
            return PairedTest(mean_a, mean_b, delta, rel, 0.0, 1.0, n, "identical: every difference is 0")
        t = float(np.inf if d[0] > 0 else -np.inf)
        return PairedTest(mean_a, mean_b, delta, rel, t, 0.0, n, "every difference is the same nonzero value")
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(b, a)
    return PairedTest(mean_a, mean_b, delta, rel, float(res.statistic), float(res.pvalue), n)


def bh_qvalues(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of one family of tests.

    A table of Table 1 runs dozens of paired tests; the q-value of a test is the smallest false
    discovery rate at which it would be called significant (scipy.stats.false_discovery_control,
    method "bh"). Undefined p-values (NaN) are not tests: they stay NaN and do not enlarge the family.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"bh_qvalues: expected a 1-D array of p-values, got shape {p.shape}")
    defined = ~np.isnan(p)
    if ((p[defined] < 0) | (p[defined] > 1)).any():
        raise ValueError(f"bh_qvalues: p-values must lie in [0, 1], got {p[defined].tolist()[:20]}")
    q = np.full(p.shape, np.nan)
    if defined.any():
        from scipy import stats

        q[defined] = stats.false_discovery_control(p[defined], method="bh")
    return q


def _run_rows(cases: pd.DataFrame, run: Run) -> pd.DataFrame:
    model, feature_set = run
    rows = cases[(cases["model"] == model) & (cases["feature_set"] == feature_set)]
    if rows.empty:
        runs = sorted(set(zip(cases["model"], cases["feature_set"])))
        raise ValueError(
            f"cases: no rows for run (model={model!r}, feature_set={feature_set!r}); runs: {runs}"
        )
    # A user may hit the same item twice on a day: number the repeats so pairs stay one-to-one.
    key = rows[CASE_KEY].copy()
    key["occurrence"] = key.groupby(CASE_KEY, sort=False).cumcount()
    key["rank"] = rows["rank"].to_numpy()
    return key


def align_runs(cases: pd.DataFrame, baseline: Run, other: Run) -> pd.DataFrame:
    """Pair the test cases of two runs: columns ``day, user_id, item_id, rank_a, rank_b``.

    Raises ValueError when the runs do not cover exactly the same cases (a comparison on
    different cases would be meaningless), with counts and an example of a missing case.
    """
    check_results(cases)
    a, b = _run_rows(cases, baseline), _run_rows(cases, other)
    key = [*CASE_KEY, "occurrence"]
    m = a.merge(b, on=key, how="outer", suffixes=("_a", "_b"), indicator=True, sort=True)
    only_a, only_b = m["_merge"] == "left_only", m["_merge"] == "right_only"
    if only_a.any() or only_b.any():
        example = m.loc[only_a | only_b, CASE_KEY].iloc[0].to_dict()
        raise ValueError(
            f"cases: runs {baseline} and {other} do not cover the same test cases: "
            f"{int(only_a.sum())} only in the first, {int(only_b.sum())} only in the second "
            f"(e.g. {example}); compare runs evaluated on the same split"
        )
    m["rank_a"], m["rank_b"] = m["rank_a"].astype(np.int64), m["rank_b"].astype(np.int64)
    return m[[*CASE_KEY, "rank_a", "rank_b"]]


def paired_on(
    aligned: pd.DataFrame,
    k: int,
    metric: Literal["hr", "ndcg"] = "hr",
    over: Literal["cases", "days"] = "cases",
) -> PairedTest:
    """Paired t-test of ``metric@k`` on aligned runs (see ``align_runs``), per case or per-day mean."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(METRICS)}")
    fn = METRICS[metric]
    va, vb = fn(aligned["rank_a"].to_numpy(), k), fn(aligned["rank_b"].to_numpy(), k)
    if over == "cases":
        return paired_ttest(va, vb)
    if over == "days":
        per_day = pd.DataFrame({"day": aligned["day"].to_numpy(), "a": va, "b": vb}).groupby("day").mean()
        return paired_ttest(per_day["a"].to_numpy(), per_day["b"].to_numpy())
    raise ValueError(f"unknown over={over!r}; expected 'cases' or 'days'")


def compare(
    cases: pd.DataFrame,
    baseline: Run,
    other: Run,
    k: int,
    metric: Literal["hr", "ndcg"] = "hr",
    over: Literal["cases", "days"] = "cases",
) -> PairedTest:
    """Paired t-test of run ``other`` against run ``baseline`` on ``metric@k`` over the same cases.

    ``over="cases"`` pairs individual test cases; ``over="days"`` pairs the per-day means (fewer,
    coarser pairs: robust to correlation between cases of the same day).
    """
    return paired_on(align_runs(cases, baseline, other), k, metric, over)
