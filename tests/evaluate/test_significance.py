"""Paired t-tests: agreement with scipy, defined edge cases, alignment of runs on the same cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from evaluate.metrics import hit_rate, ndcg
from evaluate.significance import align_runs, bh_qvalues, compare, paired_ttest

DAYS = ["2021-06-13", "2021-06-14", "2021-06-15"]


def results(ranks: dict[tuple[str, str], np.ndarray], seed: int = 0) -> pd.DataFrame:
    """A results table: every run ranks the same cases (user u, item u % 7, spread over DAYS)."""
    n = len(next(iter(ranks.values())))
    frames = [
        pd.DataFrame(
            {
                "model": model,
                "feature_set": fs,
                "day": [DAYS[i % len(DAYS)] for i in range(n)],
                "user_id": np.arange(n, dtype=np.int64),
                "item_id": np.arange(n, dtype=np.int64) % 7,
                "rank": np.asarray(r, dtype=np.int64),
            }
        )
        for (model, fs), r in ranks.items()
    ]
    return pd.concat(frames, ignore_index=True)


def test_paired_ttest_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(50), rng.random(50) + 0.1
    res = paired_ttest(a, b)
    want = stats.ttest_rel(b, a)
    assert res.t == pytest.approx(want.statistic) and res.t > 0
    assert res.p == pytest.approx(want.pvalue)
    assert res.delta == pytest.approx(b.mean() - a.mean())
    assert res.rel_delta == pytest.approx((b.mean() - a.mean()) / a.mean())
    assert res.n == 50 and res.reason == ""


def test_paired_ttest_edge_cases() -> None:
    same = paired_ttest([0.0, 1.0, 1.0], [0.0, 1.0, 1.0])
    assert (same.t, same.p, same.delta) == (0.0, 1.0, 0.0)
    one = paired_ttest([1.0], [0.0])
    assert math.isnan(one.p) and math.isnan(one.t) and one.n == 1 and "fewer than 2" in one.reason
    shifted = paired_ttest([0.0, 1.0], [0.5, 1.5])
    assert shifted.p == 0.0 and shifted.t == math.inf
    zero = paired_ttest([0.0, 0.0], [1.0, 0.0])
    assert math.isnan(zero.rel_delta) and zero.delta == 0.5
    with pytest.raises(ValueError, match="equal length"):
        paired_ttest([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        paired_ttest([1.0, float("nan")], [1.0, 2.0])


def test_compare_over_cases_and_days() -> None:
    rng = np.random.default_rng(1)
    ra, rb = rng.integers(1, 40, 60), rng.integers(1, 25, 60)
    cases = results({("tt", "id"): ra, ("tt", "mllm"): rb})
    # The order of rows must not matter: alignment is by (day, user_id, item_id).
    cases = cases.sample(frac=1.0, random_state=0).reset_index(drop=True)
    res = compare(cases, ("tt", "id"), ("tt", "mllm"), k=10, metric="hr", over="cases")
    want = stats.ttest_rel(hit_rate(rb, 10), hit_rate(ra, 10))
    assert res.p == pytest.approx(want.pvalue) and res.n == 60
    assert res.mean_a == pytest.approx(hit_rate(ra, 10).mean())
    days = np.array([DAYS[i % 3] for i in range(60)])
    per_day_a = [ndcg(ra, 20)[days == d].mean() for d in DAYS]
    per_day_b = [ndcg(rb, 20)[days == d].mean() for d in DAYS]
    res = compare(cases, ("tt", "id"), ("tt", "mllm"), k=20, metric="ndcg", over="days")
    assert res.n == 3
    assert res.p == pytest.approx(stats.ttest_rel(per_day_b, per_day_a).pvalue)
    with pytest.raises(ValueError, match="unknown over"):
        compare(cases, ("tt", "id"), ("tt", "mllm"), k=10, over="users")


def test_compare_rejects_different_coverage() -> None:
    cases = results({("tt", "id"): np.arange(1, 11), ("tt", "mllm"): np.arange(1, 11)})
    dropped = cases.drop(index=12)  # one case missing from the second run
    with pytest.raises(
        ValueError, match="do not cover the same test cases: 1 only in the first, 0 only in the second"
    ):
        compare(dropped, ("tt", "id"), ("tt", "mllm"), k=10)
    with pytest.raises(ValueError, match=r"no rows for run \(model='tt', feature_set='video'\)"):
        compare(cases, ("tt", "id"), ("tt", "video"), k=10)


def test_repeated_case_pairs_one_to_one() -> None:
    """A user who interacts twice with the same item on a day gives two cases, paired in order."""
    cases = results({("tt", "id"): [1, 2, 3], ("tt", "mllm"): [4, 5, 6]})
    cases["user_id"], cases["item_id"], cases["day"] = 1, 1, DAYS[0]
    aligned = align_runs(cases, ("tt", "id"), ("tt", "mllm"))
    assert aligned[["rank_a", "rank_b"]].values.tolist() == [[1, 4], [2, 5], [3, 6]]


def test_bh_qvalues_by_hand() -> None:
    # Sorted p_(i) * m / i, then the running minimum from the largest p down.
    p = [0.01, 0.04, 0.03, 0.5]
    assert bh_qvalues(p).tolist() == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    np.testing.assert_allclose(bh_qvalues(p), stats.false_discovery_control(p))
    # Undefined p-values are not tests: they stay NaN and the family is the other two.
    q = bh_qvalues([0.02, float("nan"), 0.04])
    assert math.isnan(q[1]) and q[[0, 2]].tolist() == pytest.approx([0.04, 0.04])
    assert bh_qvalues([]).tolist() == [] and math.isnan(bh_qvalues([float("nan")])[0])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        bh_qvalues([0.2, 1.5])
