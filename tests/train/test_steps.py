"""The worker computations: an epoch learns a learnable sequence; ranking equals a brute-force loop."""

import numpy as np
import torch

from train.config import ModelConfig, TrainConfig
from train.registry import build_item_encoder, build_model
from train.steps import rank_cases, train_epoch

N, L = 30, 5


def _chains(n_users: int, rng) -> np.ndarray:
    """Deterministic successor structure: item i is always followed by item i % N + 1."""
    start = rng.integers(1, N + 1, n_users)
    seq = (start[:, None] + np.arange(L + 1)[None, :] - 1) % N + 1
    return seq.astype(np.int64)


def test_sasrec_learns_successor_structure():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, dropout=0.0)
    tcfg = TrainConfig(batch_size=64, lr=3e-3, n_negatives=16)
    model = build_model("sasrec", build_item_encoder("id", N, cfg.dim, None), cfg, L)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    gen = torch.Generator().manual_seed(0)
    data = torch.from_numpy(_chains(512, rng))
    first, _ = train_epoch(model, data.split(64), opt, tcfg, N, gen)
    for _ in range(15):
        last, n = train_epoch(model, data.split(64), opt, tcfg, N, gen)
    assert n == 512 * L and last < first * 0.5
    test = _chains(200, rng)
    ranks = rank_cases(model, test[:, :-1], test[:, -1])
    assert (ranks <= 1).mean() > 0.9  # near-perfect next-item prediction


def test_rank_cases_matches_brute_force():
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    cfg = ModelConfig(dim=16)
    model = build_model("two-tower", build_item_encoder("id", N, cfg.dim, None), cfg, L).eval()
    hist = rng.integers(0, N + 1, (50, L))
    tgt = rng.integers(1, N + 1, 50)
    ranks = rank_cases(model, hist, tgt, batch_size=7)
    with torch.no_grad():
        items = model.encode_items(torch.arange(1, N + 1))
        scores = model.score(model.encode_users(torch.from_numpy(hist)), items).numpy()
    for r, h, t, s in zip(ranks, hist, tgt, scores):
        masked = {int(x) for x in h if x != 0} - {int(t)}
        better = sum(1 for j in range(1, N + 1) if j != t and j not in masked and s[j - 1] >= s[t - 1])
        assert r == better + 1
