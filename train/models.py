"""Recommenders sharing one interface: ``encode_items``, ``encode_users``, ``score``.

Every model encodes a left-padded history ``[B, L]`` of item indices (0 = padding, most recent last)
into a user state after each position (``encode_sequence``, causal, used for training on every
prefix at once) and into one user vector (``encode_users``: the state at the last position).
Scores are dot products with item embeddings, so evaluation needs nothing model-specific.
Every model is listed by name in ``train.registry``.
"""

from __future__ import annotations

import torch
from torch import nn

from train.config import ModelConfig


class Recommender(nn.Module):
    """Base class: an item encoder plus a user encoder over histories."""

    def __init__(self, item_encoder: nn.Module) -> None:
        super().__init__()
        self.item_encoder = item_encoder
        self.n_items: int = item_encoder.n_items

    def encode_items(self, idx: torch.Tensor) -> torch.Tensor:
        return self.item_encoder(idx)

    def encode_sequence(self, hist: torch.Tensor) -> torch.Tensor:
        """User state after each position of ``hist`` [B, L] -> [B, L, d] (causal)."""
        raise NotImplementedError

    def encode_users(self, hist: torch.Tensor) -> torch.Tensor:
        """One vector per user from the history [B, L] -> [B, d]."""
        return self.encode_sequence(hist)[:, -1]

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Dot-product scores [B, d] x [M, d] -> [B, M]."""
        return users @ items.T

    def forward(self, hist: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One call for DDP: user states for every prefix and embeddings of the candidate items."""
        return self.encode_sequence(hist), self.encode_items(candidates)


class TwoTower(Recommender):
    """YouTube DNN two-tower: the user is the mean embedding of the items in the history."""

    def __init__(self, item_encoder: nn.Module, cfg: ModelConfig, history_len: int) -> None:
        super().__init__(item_encoder)

    def encode_sequence(self, hist: torch.Tensor) -> torch.Tensor:
        e = self.encode_items(hist)  # padding encodes to zero
        count = (hist != 0).cumsum(dim=1).clamp(min=1).unsqueeze(-1)
        return e.cumsum(dim=1) / count


class ResidualMLP(nn.Module):
    """PinnerFormer-style head: x + MLP(LayerNorm(x))."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class SASRec(Recommender):
    """Decoder-only Transformer over the history, then a residual MLP head (PinnerFormer)."""

    def __init__(self, item_encoder: nn.Module, cfg: ModelConfig, history_len: int) -> None:
        super().__init__(item_encoder)
        self.pos = nn.Embedding(history_len, cfg.dim)
        # Same scale as the ID embeddings: N(0, 1) positions would drown the item signal at the start.
        nn.init.normal_(self.pos.weight, std=cfg.dim**-0.5)
        layer = nn.TransformerEncoderLayer(
            cfg.dim,
            cfg.n_heads,
            4 * cfg.dim,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = ResidualMLP(cfg.dim, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.n_heads = cfg.n_heads

    def encode_sequence(self, hist: torch.Tensor) -> torch.Tensor:
        length = hist.shape[1]
        if length > self.pos.num_embeddings:  # keep the most recent items
            hist = hist[:, -self.pos.num_embeddings :]
            length = hist.shape[1]
        pad = hist == 0
        pos = self.pos.weight[self.pos.num_embeddings - length :]  # right-aligned positions
        x = self.drop(self.encode_items(hist) + pos * (~pad).unsqueeze(-1))
        # Causal mask plus masked padding keys; a query may always see itself, so no row is empty.
        causal = torch.ones(length, length, dtype=torch.bool, device=hist.device).triu(1)
        mask = causal.unsqueeze(0) | pad.unsqueeze(1)
        mask = mask & ~torch.eye(length, dtype=torch.bool, device=hist.device).unsqueeze(0)
        mask = mask.repeat_interleave(self.n_heads, dim=0)
        x = self.blocks(x, mask=mask)
        return self.head(self.norm(x))
