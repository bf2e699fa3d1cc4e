"""Every model and every item encoder seewhy trains, by name: one line each, and their builders.

Adding a model (or an item encoder) is one class in its module plus one line here plus its test.
An unknown name is an error that lists the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from train.config import ModelConfig
from train.encoders import DFFEncoder, DFFFusion, FeatureEncoder, GatedFusion, IDEncoder
from train.models import SASRec, TwoTower
from train.representation import MULTI_LAYER
from train.seq_models import BiMamba, GRU4Rec

ModelBuilder = Callable[[nn.Module, ModelConfig, int], nn.Module]

MODELS: dict[str, ModelBuilder] = {
    "two-tower": TwoTower,
    "sasrec": SASRec,
    "gru4rec": GRU4Rec,
    "bimamba": BiMamba,
}
"""Model name (``experiment.models``) -> class taking (item encoder, ModelConfig, history_len)."""


def _id(n_items: int, dim: int, features: torch.Tensor | None, dropout: float, n_layers: int) -> nn.Module:
    return IDEncoder(n_items, dim)


def _feature(n_items: int, dim: int, features: torch.Tensor, dropout: float, n_layers: int) -> nn.Module:
    return FeatureEncoder(features, dim, dropout)


def _fusion(n_items: int, dim: int, features: torch.Tensor, dropout: float, n_layers: int) -> nn.Module:
    return GatedFusion(IDEncoder(n_items, dim), FeatureEncoder(features, dim, dropout), dim)


def _dff(n_items: int, dim: int, features: torch.Tensor, dropout: float, n_layers: int) -> nn.Module:
    return DFFEncoder(features, dim, n_layers, dropout)


def _dff_fusion(n_items: int, dim: int, features: torch.Tensor, dropout: float, n_layers: int) -> nn.Module:
    return DFFFusion(IDEncoder(n_items, dim), features, dim, n_layers, dropout)


ITEM_ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "id": _id,
    "feature": _feature,
    "fusion": _fusion,
    "dff": _dff,
    "dff-fusion": _dff_fusion,
}
"""Item encoder kind (``train.representation.Representation.item_encoder``) -> builder."""

NEEDS_FEATURES = frozenset(ITEM_ENCODERS) - {"id"}


def build_model(name: str, item_encoder: nn.Module, cfg: ModelConfig, history_len: int) -> nn.Module:
    """Build a registered model over histories of ``history_len`` items; an unknown name lists the valid ones."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}") from None
    return builder(item_encoder, cfg, history_len)


def build_item_encoder(
    kind: str,
    n_items: int,
    dim: int,
    features: torch.Tensor | None,
    dropout: float = 0.0,
    n_layers: int = 1,
) -> nn.Module:
    """``id``, ``feature`` (needs ``features``), ``fusion`` (ID + features, gated), or over a multi-layer
    feature of ``n_layers`` equal slices: ``dff`` (replacement) and ``dff-fusion`` (with the ID embedding)."""
    if kind not in ITEM_ENCODERS:
        raise ValueError(f"unknown item encoder {kind!r}; valid: {', '.join(ITEM_ENCODERS)}")
    if kind in NEEDS_FEATURES:
        if features is None:
            raise ValueError(f"item encoder {kind!r} needs a feature matrix")
        if features.shape[0] != n_items + 1:
            raise ValueError(
                f"feature matrix has {features.shape[0]} rows; expected n_items + 1 = {n_items + 1}"
            )
    if kind in MULTI_LAYER and (n_layers < 1 or features.shape[1] % n_layers):
        raise ValueError(
            f"item encoder {kind!r}: a feature of width {features.shape[1]} cannot be split into "
            f"n_layers={n_layers} equal layers"
        )
    return ITEM_ENCODERS[kind](n_items, dim, features, dropout, n_layers)
