"""The per-worker computations shared by the Ray Train loop and the benchmarks: one epoch, ranking."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from evaluate.metrics import rank_targets
from train.config import TrainConfig
from train.loss import LOSSES


def train_epoch(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    n_items: int,
    gen: torch.Generator,
) -> tuple[float, int]:
    """One pass over window batches ``[B, L+1]``; returns (mean loss, training targets seen)."""
    loss_fn = LOSSES[cfg.loss]
    model.train()
    total, n_targets, n_steps = 0.0, 0, 0
    for seq in batches:
        inputs, targets = seq[:, :-1], seq[:, 1:]
        valid = (inputs != 0) & (targets != 0)
        if not valid.any():
            continue
        tgt = targets[valid]
        cand = loss_fn.candidates(tgt, n_items, cfg, gen)
        states, cand_emb = model(inputs, cand)
        loss = loss_fn(states[valid], tgt, cand, cand_emb, cfg, n_items)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        n_targets += int(tgt.numel())
        n_steps += 1
    return total / max(n_steps, 1), n_targets


@torch.no_grad()
def rank_cases(
    model: nn.Module, histories: np.ndarray, targets: np.ndarray, batch_size: int = 1024
) -> np.ndarray:
    """1-based full-ranking ranks of ``targets`` (indices 1..n) given 0-padded ``histories`` [n, L].

    The whole catalogue is scored, the history items are masked (see ``evaluate.metrics.rank_targets``
    for the tie rule), and padding index 0 is not an item.
    """
    core = getattr(model, "module", model)
    core.eval()
    device = next(core.parameters()).device
    items = core.encode_items(torch.arange(1, core.n_items + 1, device=device))
    out = np.empty(len(targets), dtype=np.int64)
    for lo in range(0, len(targets), batch_size):
        h = torch.tensor(histories[lo : lo + batch_size], dtype=torch.long, device=device)
        t = torch.tensor(targets[lo : lo + batch_size], dtype=torch.long, device=device)
        scores = core.score(core.encode_users(h), items)
        out[lo : lo + len(t)] = rank_targets(scores, t - 1, h - 1).cpu().numpy()
    return out
