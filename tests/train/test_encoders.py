"""Multi-layer (DFF) item encoders: shapes, padding, frozen features, replacement vs fusion, layer weights."""

import pytest
import torch

from train.encoders import DFFEncoder, DFFFusion
from train.registry import build_item_encoder

N, LAYERS, D, DIM = 30, 3, 8, 16


def feats(n_layers: int = LAYERS, layer_dim: int = D) -> torch.Tensor:
    torch.manual_seed(0)
    f = torch.randn(N + 1, n_layers * layer_dim)
    f[0] = 0
    return f


@pytest.mark.parametrize("kind", ["dff", "dff-fusion"])
def test_dff_shapes_padding_and_frozen_features(kind):
    f = feats()
    enc = build_item_encoder(kind, N, DIM, f, 0.0, n_layers=LAYERS)
    out = enc(torch.tensor([[0, 1, 2], [3, 0, 0]]))
    assert out.shape == (2, 3, DIM)
    assert torch.all(out[0, 0] == 0) and torch.all(out[1, 1:] == 0)
    assert enc.n_items == N
    assert "features" not in dict(enc.named_parameters())
    assert all(p.shape != f.shape for p in enc.parameters())
    out.sum().backward()
    assert all(
        p.grad is not None for n, p in enc.named_parameters() if "id_enc" not in n or kind == "dff-fusion"
    )


def test_replacement_has_no_id_and_fusion_does():
    f = feats()
    f[2] = f[1]  # two items with the same content
    rep = build_item_encoder("dff", N, DIM, f, n_layers=LAYERS)
    fus = build_item_encoder("dff-fusion", N, DIM, f, n_layers=LAYERS)
    assert isinstance(rep, DFFEncoder) and isinstance(fus, DFFFusion)
    assert not any("emb" in n for n, _ in rep.named_parameters())
    idx = torch.tensor([1, 2])
    assert torch.allclose(rep(idx)[0], rep(idx)[1])
    assert not torch.allclose(fus(idx)[0], fus(idx)[1])
    w = rep.layer_weights()
    assert w.shape == (LAYERS,) and torch.isclose(w.sum(), torch.tensor(1.0))
    g = fus.source_weights(torch.tensor([[1, 2, 3]]))
    assert g.shape == (1, 3, LAYERS + 1) and torch.allclose(g.sum(-1), torch.ones(1, 3))


def test_layer_weights_learn_the_informative_layer():
    """Only layer 2 of 3 determines the target (noise elsewhere): training moves the weight onto it."""
    torch.manual_seed(1)
    n = 200  # too many items for the noise layers to memorise
    target = torch.randn(n + 1, DIM)
    f = torch.cat([torch.randn(n + 1, DIM), target, torch.randn(n + 1, DIM)], dim=1)
    enc = build_item_encoder("dff", n, DIM, f, n_layers=3)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-2)
    idx = torch.arange(1, n + 1)
    before = enc.layer_weights().detach().clone()
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.mse_loss(enc(idx), target[1:]).backward()
        opt.step()
    after = enc.layer_weights().detach()
    assert torch.allclose(before, torch.full((3,), 1 / 3))
    assert int(after.argmax()) == 1 and after[1] > 0.5, after


def test_build_errors_and_existing_callers():
    f = feats()
    with pytest.raises(ValueError, match="cannot be split into n_layers=5"):
        build_item_encoder("dff", N, DIM, f, n_layers=5)
    with pytest.raises(ValueError, match="needs a feature matrix"):
        build_item_encoder("dff-fusion", N, DIM, None, n_layers=LAYERS)
    with pytest.raises(ValueError, match="valid: id, feature, fusion, dff, dff-fusion"):
        build_item_encoder("dff-concat", N, DIM, f)
    with pytest.raises(ValueError, match="expected n_items"):
        build_item_encoder("dff", N + 1, DIM, f, n_layers=LAYERS)
    # Old positional calls (kind, n_items, dim, features, dropout) keep working.
    for kind in ("id", "feature", "fusion"):
        assert build_item_encoder(kind, N, DIM, f, 0.1)(torch.tensor([1])).shape == (1, DIM)
    # One layer: dff is a softmax over a single projection (weight 1).
    one = build_item_encoder("dff", N, DIM, f, 0.0)
    assert torch.equal(one.layer_weights(), torch.ones(1))
