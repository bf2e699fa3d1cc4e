"""Item encoders: a learned ID embedding, a residual MLP over a frozen content feature, or a gated fusion.

Items are contiguous indices 1..n; index 0 is padding and always encodes to the zero vector.
"""

from __future__ import annotations

import torch
from torch import nn


class IDEncoder(nn.Module):
    """A learned embedding per item id (the collaborative baseline)."""

    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.emb.weight, std=dim**-0.5)
        with torch.no_grad():
            self.emb.weight[0].zero_()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb(idx)


class FeatureEncoder(nn.Module):
    """A 1-layer residual MLP (ReLU) projecting a frozen feature vector, as in the paper's item encoder.

    The feature matrix is a buffer, not a parameter: content features stay frozen; items without a
    feature (error rows in the store) hold zeros, and so does padding row 0.
    """

    def __init__(self, features: torch.Tensor, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_items = features.shape[0] - 1
        self.register_buffer("features", features.float(), persistent=False)
        f = features.shape[1]
        self.proj = nn.Linear(f, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.drop(self.features[idx]))
        x = x + self.mlp(x)
        return x * (idx != 0).unsqueeze(-1)


class GatedFusion(nn.Module):
    """Per-dimension gate between the ID embedding and the content projection (fusion, not replacement)."""

    def __init__(self, id_enc: IDEncoder, feat_enc: FeatureEncoder, dim: int) -> None:
        super().__init__()
        self.id_enc, self.feat_enc = id_enc, feat_enc
        self.n_items = id_enc.n_items
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        a, b = self.id_enc(idx), self.feat_enc(idx)
        g = torch.sigmoid(self.gate(torch.cat([a, b], dim=-1)))
        return g * a + (1 - g) * b


def build_item_encoder(
    kind: str, n_items: int, dim: int, features: torch.Tensor | None, dropout: float = 0.0
) -> nn.Module:
    """``id``, ``feature`` (needs ``features``) or ``fusion`` (ID + features, gated)."""
    if kind not in ("id", "feature", "fusion"):
        raise ValueError(f"unknown item encoder {kind!r}; valid: id, feature, fusion")
    if kind == "id":
        return IDEncoder(n_items, dim)
    if features is None:
        raise ValueError(f"item encoder {kind!r} needs a feature matrix")
    if features.shape[0] != n_items + 1:
        raise ValueError(f"feature matrix has {features.shape[0]} rows; expected n_items + 1 = {n_items + 1}")
    if kind == "feature":
        return FeatureEncoder(features, dim, dropout)
    return GatedFusion(IDEncoder(n_items, dim), FeatureEncoder(features, dim, dropout), dim)
