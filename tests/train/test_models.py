"""Item encoders, Two-Tower and SASRec: shapes, padding, causality, the shared interface, losses."""

import pytest
import torch

from train.config import ModelConfig, TrainConfig
from train.registry import MODELS, build_item_encoder, build_model

N, F, L = 40, 12, 6
CFG = ModelConfig(dim=32, n_layers=2, n_heads=2, dropout=0.0)


def _model(name, kind="id"):
    torch.manual_seed(0)
    feats = torch.randn(N + 1, F)
    feats[0] = 0
    return build_model(
        name, build_item_encoder(kind, N, CFG.dim, feats if kind != "id" else None), CFG, L
    ).eval()


@pytest.mark.parametrize("kind", ["id", "feature", "fusion"])
def test_item_encoders_zero_padding_and_shape(kind):
    enc = build_item_encoder(kind, N, 16, torch.randn(N + 1, F))
    out = enc(torch.tensor([[0, 1, 2], [3, 0, 0]]))
    assert out.shape == (2, 3, 16)
    if kind != "fusion":  # fusion of two zero vectors is zero too
        assert torch.all(out[0, 0] == 0) and torch.all(out[1, 1:] == 0)
    assert enc.n_items == N


def test_feature_encoder_keeps_features_frozen():
    feats = torch.randn(N + 1, F)
    enc = build_item_encoder("feature", N, 16, feats)
    assert all(p.shape != feats.shape for p in enc.parameters())
    assert "features" not in dict(enc.named_parameters())


def test_bad_encoder_and_model_names_list_valid_ones():
    with pytest.raises(ValueError, match="valid: id, feature, fusion"):
        build_item_encoder("clip", N, 16, None)
    with pytest.raises(ValueError, match="two-tower"):
        build_model("gru5rec", build_item_encoder("id", N, 16, None), CFG, L)
    with pytest.raises(ValueError, match="n_items \\+ 1"):
        build_item_encoder("feature", N, 16, torch.randn(N, F))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_interface_shapes(name):
    m = _model(name, "fusion")
    hist = torch.randint(1, N + 1, (5, L))
    hist[:, :2] = 0
    users = m.encode_users(hist)
    items = m.encode_items(torch.arange(1, N + 1))
    assert users.shape == (5, CFG.dim) and items.shape == (N, CFG.dim)
    assert m.score(users, items).shape == (5, N)
    assert torch.isfinite(users).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_causal_and_padding_invariant(name):
    m = _model(name)
    hist = torch.tensor([[0, 0, 3, 4, 5, 6]])
    states = m.encode_sequence(hist)
    changed = hist.clone()
    changed[0, -1] = 9  # a later item must not change earlier states
    assert torch.allclose(states[0, :-1], m.encode_sequence(changed)[0, :-1], atol=1e-5)
    assert not torch.allclose(states[0, -1], m.encode_sequence(changed)[0, -1])
    if name == "two-tower":  # padding never counts in the mean
        shorter = torch.tensor([[0, 0, 0, 0, 3, 4]])
        direct = m.encode_items(torch.tensor([3, 4])).mean(0)
        assert torch.allclose(m.encode_users(shorter)[0], direct, atol=1e-6)


def test_two_tower_is_mean_of_history():
    m = _model("two-tower")
    hist = torch.tensor([[0, 1, 2, 3, 4, 5]])
    assert torch.allclose(m.encode_users(hist)[0], m.encode_items(torch.arange(1, 6)).mean(0), atol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="must divide"):
        ModelConfig(dim=30, n_heads=4)
    with pytest.raises(ValueError, match="hr@K"):
        TrainConfig(valid_metric="recall@10")
