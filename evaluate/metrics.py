"""Full-ranking metrics: the rank of each target among all items, and HR@K / nDCG@K derived from it.

Ranks are computed once (``rank_targets``) and every metric at every K is a function of the rank
(``METRICS``), so no metric is ever written out per K. This module also owns the schema of a
run's results table (one row per test case with its rank), shared by significance tests and reports.

torch is imported inside ``rank_targets`` only, so reports and tests of results tables stay light.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

KS = (10, 20, 30)
_CHUNK_BYTES = 128 * 1024**2
"""Budget per chunk for each [rows, n_items] temporary (a comparison mask and a NaN mask)."""


def rank_targets(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """1-based rank of each row's target among all items (full ranking), as a CPU int64 tensor.

    ``scores`` is [n, n_items] (higher is better), ``targets`` [n] item indices, ``exclude`` an
    optional [n, L] of item indices to mask out (typically the user's history), -1 = padding.

    Masked items cannot outrank the target, except the target itself, which is never masked: a
    user who re-watches an item of their history must still be able to hit it.

    Ties are broken pessimistically and deterministically::

        rank = 1 + #{j not masked, j != target : score_j >= score_target}

    so a model that gives every item the same score ranks every target last (among unmasked
    items): a collapsed model is visible in the metrics instead of scoring by luck.

    NaN scores raise ValueError (naming the row). Rows are processed in chunks so the temporaries
    stay within a few hundred MB whatever the number of cases.
    """
    import torch

    scores = torch.as_tensor(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected shape [n, n_items], got {tuple(scores.shape)}")
    n, n_items = scores.shape
    targets = _as_index(targets, "targets", (n,), n_items, allow_pad=False).to(scores.device)
    if exclude is not None:
        exclude = _as_index(exclude, "exclude", (n, None), n_items, allow_pad=True).to(scores.device)
    chunk = max(1, _CHUNK_BYTES // max(1, n_items))
    ranks = torch.empty(n, dtype=torch.int64)
    with torch.no_grad():
        for a in range(0, n, chunk):
            s, t = scores[a : a + chunk], targets[a : a + chunk, None]
            # A row sum is finite unless the row holds NaN (or inf / overflow): check exactly only then.
            if s.is_floating_point() and not bool(torch.isfinite(s.sum(dim=1)).all()):
                bad = torch.isnan(s).any(dim=1)
                if bool(bad.any()):
                    row = a + int(bad.nonzero()[0, 0])
                    raise ValueError(f"scores: row {row} contains NaN; cannot rank (is the model diverging?)")
            st = s.gather(1, t)
            # Counts the target itself (st >= st), which turns "1 + #others" into "#all".
            # int32 accumulation: several times faster than the default int64 sum of a bool mask.
            rank = (s >= st).sum(dim=1, dtype=torch.int32).long()
            if exclude is not None and exclude.shape[1] > 0:
                ex, _ = exclude[a : a + chunk].sort(dim=1)
                # An item repeated in the history is masked once, so count it once.
                first = torch.ones_like(ex, dtype=torch.bool)
                first[:, 1:] = ex[:, 1:] != ex[:, :-1]
                masked = first & (ex >= 0) & (ex != t)
                outranks = s.gather(1, ex.clamp(min=0)) >= st
                rank -= (masked & outranks).sum(dim=1)
            ranks[a : a + chunk] = rank.cpu()
    return ranks


def _as_index(
    x: torch.Tensor, name: str, shape: tuple[int | None, ...], n_items: int, allow_pad: bool
) -> torch.Tensor:
    """Validate an integer index tensor (shape, range); name the first bad entry in the error."""
    import torch

    x = torch.as_tensor(x)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer tensor of item indices, got dtype {x.dtype}")
    if x.ndim != len(shape) or any(want is not None and got != want for got, want in zip(x.shape, shape)):
        want = ", ".join("L" if s is None else str(s) for s in shape)
        raise ValueError(f"{name}: expected shape [{want}], got {list(x.shape)}")
    x = x.long()
    low = -1 if allow_pad else 0
    bad = (x < low) | (x >= n_items)
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        pos = f"row {where[0]}" + (f" column {where[1]}" if len(where) > 1 else "")
        raise ValueError(f"{name}: {pos}: expected an item index in [{low}, {n_items}), got {int(x[where])}")
    return x


def _ranks_array(ranks: object) -> np.ndarray:
    r = ranks.detach().cpu().numpy() if hasattr(ranks, "detach") else np.asarray(ranks)
    if r.size and (not np.issubdtype(r.dtype, np.integer) or r.min() < 1):
        raise ValueError(f"ranks: expected integer ranks >= 1, got dtype {r.dtype}, min {r.min()}")
    return r


def hit_rate(ranks: object, k: int) -> np.ndarray:
    """Per-case HR@k: 1.0 where the target is in the top k, else 0.0."""
    return (_ranks_array(ranks) <= k).astype(np.float64)


def ndcg(ranks: object, k: int) -> np.ndarray:
    """Per-case nDCG@k with one relevant item: 1 / log2(rank + 1) if rank <= k, else 0."""
    r = _ranks_array(ranks).astype(np.float64)
    return np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)


METRICS: dict[str, Callable[[object, int], np.ndarray]] = {"hr": hit_rate, "ndcg": ndcg}
"""Per-case metric functions of (ranks, k), by the short name used in keys ("hr@10") and tables."""


def metrics_from_ranks(ranks: object, ks: Iterable[int] = KS) -> dict[str, float]:
    """Mean of every metric at every K, e.g. {"hr@10": .., "ndcg@10": .., "hr@20": ..}.

    Empty ``ranks`` give NaN (no cases is not a score of zero).
    """
    r = _ranks_array(ranks)
    return {
        f"{name}@{k}": float(fn(r, k).mean()) if r.size else float("nan")
        for k in ks
        for name, fn in METRICS.items()
    }


RESULT_COLUMNS = {"model": "str", "feature_set": "str", "day": "str", "user_id": "int64", "item_id": "int64"}
"""Required columns of a results table besides ``rank`` (optional: ``cold_start``, ``stand_in``)."""
CASE_KEY = ["day", "user_id", "item_id"]
"""What identifies a test case across runs."""


def check_results(cases: pd.DataFrame, name: str = "cases") -> pd.DataFrame:
    """Validate a results table (one row per test case of a run); raise ValueError naming row/column.

    Columns: ``model, feature_set, day`` (ISO date string), ``user_id, item_id``
    (integers), ``rank`` (integer >= 1); optional boolean ``cold_start`` and ``stand_in``.
    """
    if not isinstance(cases, pd.DataFrame):
        raise TypeError(f"{name}: expected a pandas DataFrame, got {type(cases).__name__}")
    missing = [c for c in [*RESULT_COLUMNS, "rank"] if c not in cases.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; expected {[*RESULT_COLUMNS, 'rank']}")
    for col in [*RESULT_COLUMNS, "rank"]:
        nulls = cases[col].isna().to_numpy()
        if nulls.any():
            raise ValueError(f"{name}: column '{col}' row {int(np.flatnonzero(nulls)[0])}: unexpected null")
    for col in ("user_id", "item_id", "rank"):
        if not pd.api.types.is_integer_dtype(cases[col].dtype):
            raise ValueError(f"{name}: column '{col}': expected integers, got dtype {cases[col].dtype}")
    low = cases["rank"].to_numpy() < 1
    if low.any():
        row = int(np.flatnonzero(low)[0])
        raise ValueError(
            f"{name}: column 'rank' row {row}: expected a rank >= 1, got {cases['rank'].iloc[row]}"
        )
    for col in ("cold_start", "stand_in"):
        if col in cases.columns and not pd.api.types.is_bool_dtype(cases[col].dtype):
            raise ValueError(f"{name}: column '{col}': expected booleans, got dtype {cases[col].dtype}")
    return cases
