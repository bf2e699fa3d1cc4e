"""Full-ranking ranks vs a brute-force argsort with the pessimistic tie rule; HR/nDCG by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from evaluate import metrics
from evaluate.metrics import KS, check_results, hit_rate, metrics_from_ranks, ndcg, rank_targets


def brute_rank(scores: np.ndarray, target: int, exclude: list[int]) -> int:
    """Sort all unmasked items by score, the target last among its ties; rank = its 1-based position."""
    masked = {e for e in exclude if e >= 0} - {target}
    items = [j for j in range(len(scores)) if j not in masked]
    order = sorted(items, key=lambda j: (-scores[j], j == target))
    return order.index(target) + 1


@pytest.mark.parametrize("seed", range(5))
def test_rank_targets_matches_brute_force(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(seed)
    n, n_items, length = 40, 23, 6
    # Few distinct values: most comparisons are ties.
    scores = torch.randint(0, 4, (n, n_items), generator=gen).float()
    targets = torch.randint(0, n_items, (n,), generator=gen)
    exclude = torch.randint(-1, n_items, (n, length), generator=gen)
    exclude[::3, 0] = targets[::3]  # the target in its own history (a re-watch)
    exclude[::4, 1] = exclude[::4, 2]  # an item twice in the history
    want = [brute_rank(scores[i].numpy(), int(targets[i]), exclude[i].tolist()) for i in range(n)]
    assert rank_targets(scores, targets, exclude).tolist() == want
    # Chunking must not change anything: force chunks of 2 rows.
    monkeypatch.setattr(metrics, "_CHUNK_BYTES", 2 * n_items)
    assert rank_targets(scores, targets, exclude).tolist() == want
    no_ex = [brute_rank(scores[i].numpy(), int(targets[i]), []) for i in range(n)]
    assert rank_targets(scores, targets).tolist() == no_ex


def test_rank_targets_edge_cases() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [1.0, 1.0, 1.0, 1.0]])
    targets = torch.tensor([2, 0])
    assert rank_targets(scores, targets).tolist() == [3, 4]  # constant scores: worst rank
    # Masking items 1 and 3 that outrank the target; padding ignored; the target never masked.
    exclude = torch.tensor([[-1, 1, 3, 2], [-1, -1, -1, 0]])
    assert rank_targets(scores, targets, exclude).tolist() == [1, 4]
    exclude = torch.tensor([[-1, -1, -1, -1], [1, 2, 3, -1]])
    assert rank_targets(scores, targets, exclude).tolist() == [3, 1]
    # Masked items below the target do not change its rank.
    assert rank_targets(scores, targets, torch.tensor([[0], [0]])).tolist() == [3, 4]
    # Empty history (L=0) and zero cases.
    assert rank_targets(scores, targets, torch.zeros((2, 0), dtype=torch.long)).tolist() == [3, 4]
    assert rank_targets(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long)).tolist() == []
    # Infinite scores are legal (e.g. a model that hard-masks items with -inf).
    inf = torch.tensor([[float("inf"), -float("inf"), 0.0], [-float("inf"), -float("inf"), -float("inf")]])
    assert rank_targets(inf, torch.tensor([2, 1])).tolist() == [2, 3]
    # numpy input and a float16 model are accepted.
    assert rank_targets(scores.numpy(), targets.numpy()).tolist() == [3, 4]
    assert rank_targets(scores.half(), targets).dtype == torch.int64


def test_rank_targets_rejects_bad_input() -> None:
    scores = torch.rand(3, 5)
    scores[1, 2] = float("nan")
    with pytest.raises(ValueError, match="scores: row 1 contains NaN"):
        rank_targets(scores, torch.tensor([0, 0, 0]))
    scores = torch.rand(3, 5)
    with pytest.raises(ValueError, match=r"targets: row 2: expected an item index in \[0, 5\), got 5"):
        rank_targets(scores, torch.tensor([0, 1, 5]))
    with pytest.raises(
        ValueError, match=r"exclude: row 1 column 0: expected an item index in \[-1, 5\), got -2"
    ):
        rank_targets(scores, torch.tensor([0, 1, 2]), torch.tensor([[0], [-2], [1]]))
    with pytest.raises(ValueError, match=r"targets: expected shape \[3\]"):
        rank_targets(scores, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer tensor"):
        rank_targets(scores, torch.tensor([0.0, 1.0, 2.0]))


def test_hit_rate_and_ndcg_by_hand() -> None:
    ranks = np.array([1, 5, 10, 11, 30, 31])
    assert hit_rate(ranks, 10).tolist() == [1, 1, 1, 0, 0, 0]
    want = [1.0, 1 / math.log2(6), 1 / math.log2(11), 0, 0, 0]
    np.testing.assert_allclose(ndcg(ranks, 10), want)
    got = metrics_from_ranks(torch.tensor(ranks))
    assert list(got) == ["hr@10", "ndcg@10", "hr@20", "ndcg@20", "hr@30", "ndcg@30"]
    assert got["hr@10"] == pytest.approx(3 / 6)
    assert got["hr@30"] == pytest.approx(5 / 6)
    assert got["ndcg@30"] == pytest.approx((sum(want[:3]) + 1 / math.log2(12) + 1 / math.log2(31)) / 6)
    assert math.isnan(metrics_from_ranks(np.array([], dtype=np.int64))["hr@10"])
    with pytest.raises(ValueError, match="ranks >= 1"):
        hit_rate(np.array([0, 1]), 10)
    assert KS == (10, 20, 30)


def test_results_table_checks() -> None:
    cases = pd.DataFrame(
        {
            "model": ["m"],
            "feature_set": ["id"],
            "day": ["2021-06-15"],
            "user_id": [1],
            "item_id": [2],
            "rank": [3],
        }
    )
    check_results(cases)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['rank'\]"):
        check_results(cases.drop(columns="rank"))
    with pytest.raises(ValueError, match="column 'rank' row 0: expected a rank >= 1, got 0"):
        check_results(cases.assign(rank=0))
    with pytest.raises(ValueError, match="column 'stand_in': expected booleans"):
        check_results(cases.assign(stand_in="yes"))
