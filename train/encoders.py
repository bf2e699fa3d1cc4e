"""Item encoders: a learned ID embedding, a residual MLP over a frozen content feature, or a gated fusion.

Multi-layer features (DFF: ``n_layers`` hidden-state vectors of a frozen VLM concatenated per item,
``featurize.dff``) get two encoders of their own, after *Frozen LVLMs for Micro-Video Recommendation*
(DFF): ``dff`` replaces the ID embedding by a learned softmax mixture of per-layer projections, and
``dff-fusion`` fuses the ID embedding with the per-layer projections through a per-item softmax gate.

Items are contiguous indices 1..n; index 0 is padding and always encodes to the zero vector.
Every encoder is listed by name in ``train.registry``.
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


class LayerProjections(nn.Module):
    """Per-layer LayerNorm + linear projection of a frozen ``[n+1, n_layers * layer_dim]`` feature.

    Hidden states of different decoder layers differ in scale by orders of magnitude, hence a norm per
    layer before its projection. Returns ``[..., n_layers, dim]``.
    """

    def __init__(self, features: torch.Tensor, dim: int, n_layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_items = features.shape[0] - 1
        self.n_layers, self.layer_dim = n_layers, features.shape[1] // n_layers
        self.register_buffer("features", features.float(), persistent=False)
        self.norm = nn.ModuleList(nn.LayerNorm(self.layer_dim) for _ in range(n_layers))
        self.proj = nn.ModuleList(nn.Linear(self.layer_dim, dim) for _ in range(n_layers))
        self.drop = nn.Dropout(dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.features[idx]).unflatten(-1, (self.n_layers, self.layer_dim))
        return torch.stack([p(n(x[..., i, :])) for i, (n, p) in enumerate(zip(self.norm, self.proj))], dim=-2)


class DFFEncoder(nn.Module):
    """Replacement: learned softmax weights over the projected layers, then a residual MLP (no ID)."""

    def __init__(self, features: torch.Tensor, dim: int, n_layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = LayerProjections(features, dim, n_layers, dropout)
        self.n_items = self.layers.n_items
        self.logits = nn.Parameter(torch.zeros(n_layers))
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def layer_weights(self) -> torch.Tensor:
        """The mixture weight of each layer (sums to 1)."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = (self.layers(idx) * self.layer_weights().unsqueeze(-1)).sum(dim=-2)
        x = x + self.mlp(x)
        return x * (idx != 0).unsqueeze(-1)


class DFFFusion(nn.Module):
    """Fusion: a per-item softmax gate over the ID embedding and every projected layer, then a residual MLP.

    The gate reads all sources at once, so each item decides how much it trusts its collaborative
    signal against each layer's content (an item rarely seen in training can lean on content).
    """

    def __init__(
        self, id_enc: IDEncoder, features: torch.Tensor, dim: int, n_layers: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.id_enc = id_enc
        self.layers = LayerProjections(features, dim, n_layers, dropout)
        self.n_items = id_enc.n_items
        self.gate = nn.Linear((n_layers + 1) * dim, n_layers + 1)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def source_weights(self, idx: torch.Tensor) -> torch.Tensor:
        """Per item, the gate over ``[ID, layer 1, …, layer n]`` ([..., n_layers + 1], sums to 1)."""
        return torch.softmax(self.gate(self._sources(idx).flatten(-2)), dim=-1)

    def _sources(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.id_enc(idx).unsqueeze(-2), self.layers(idx)], dim=-2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        s = self._sources(idx)
        g = torch.softmax(self.gate(s.flatten(-2)), dim=-1)
        x = (s * g.unsqueeze(-1)).sum(dim=-2)
        x = x + self.mlp(x)
        return x * (idx != 0).unsqueeze(-1)
