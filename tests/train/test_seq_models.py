"""GRU4Rec and BiMamba: registry, shapes, causality, left-padding invariance, the O(L) prefix-pooled
backward scan against a naive per-prefix scan, gradients to every parameter, and learning a toy task."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from train.config import ModelConfig, TrainConfig
from train.registry import MODELS, build_item_encoder, build_model
from train.seq_models import prefix_pooled_reverse_scan, selective_scan
from train.steps import rank_cases, train_epoch

SEQ = ["gru4rec", "bimamba"]
N = 30
CFG = ModelConfig(dim=32, n_layers=2, dropout=0.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a loaded 2-core machine (60x here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(name: str, history_len: int = 8, cfg: ModelConfig = CFG):
    torch.manual_seed(0)
    return build_model(name, build_item_encoder("id", N, cfg.dim, None), cfg, history_len).eval()


def test_registry_lists_every_model_without_import_side_effects():
    assert {"two-tower", "sasrec", "gru4rec", "bimamba"} == set(MODELS)
    # Importing a model module registers nothing by itself: the registry is the one list.
    code = "import train.models, train.seq_models, sys; assert 'train.registry' not in sys.modules"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


@pytest.mark.parametrize("name", SEQ)
def test_shapes_and_finite(name):
    m = _model(name)
    hist = torch.randint(1, N + 1, (4, 7))
    hist[0, :3] = 0
    hist[1] = 0  # an empty history still gives a finite state
    states = m.encode_sequence(hist)
    assert states.shape == (4, 7, CFG.dim) and torch.isfinite(states).all()
    assert m.encode_users(hist).shape == (4, CFG.dim)
    assert m.score(m.encode_users(hist), m.encode_items(torch.arange(1, N + 1))).shape == (4, N)


@pytest.mark.parametrize("name", SEQ)
def test_causal_every_position(name):
    m = _model(name)
    torch.manual_seed(1)
    hist = torch.randint(1, N + 1, (3, 9))
    hist[0, :4] = 0
    with torch.no_grad():
        base = m.encode_sequence(hist)
        for t in range(4, 9):  # change item t: states before t are unchanged, the state at t is not
            changed = hist.clone()
            changed[:, t] = changed[:, t] % N + 1
            out = m.encode_sequence(changed)
            assert torch.allclose(out[:, :t], base[:, :t], atol=1e-5), t
            assert not torch.allclose(out[:, t], base[:, t], atol=1e-4), t


@pytest.mark.parametrize("name", SEQ)
def test_left_padding_does_not_change_states(name):
    m = _model(name, history_len=5)
    short = torch.tensor([[0, 0, 7, 3, 12]])
    long = torch.tensor([[0, 0, 0, 0, 0, 7, 3, 12]])  # longer L than the model was built for
    with torch.no_grad():
        a, b = m.encode_sequence(short), m.encode_sequence(long)
    assert torch.allclose(a[0, 2:], b[0, 5:], atol=1e-5)
    assert torch.allclose(m.encode_users(short), m.encode_users(long), atol=1e-5)


def test_gru4rec_matches_unpadded_gru():
    m = _model("gru4rec")
    items = torch.tensor([[4, 9, 2]])
    with torch.no_grad():
        direct = m.proj(m.gru(m.encode_items(items))[0])
        padded = m.encode_sequence(torch.tensor([[0, 0, 0, 4, 9, 2]]))
    assert torch.allclose(padded[0, 3:], direct[0], atol=1e-6)


def _naive_pooled_reverse(dA, dBx, C, mask):
    """The definition: for every prefix [.., t], run the backward scan from t down and sum h_s C_s."""
    B, L, D, _ = dBx.shape
    out = torch.zeros(B, L, D, dtype=dBx.dtype)
    for t in range(L):
        h = torch.zeros_like(dBx[:, 0])
        for s in range(t, -1, -1):
            h = dBx[:, s] + (dA[:, s] * h if s < t else 0)
            out[:, t] += mask[:, s, None] * (h * C[:, s, None, :]).sum(-1)
    return out


def test_scans_equal_their_definitions():
    g = torch.Generator().manual_seed(0)
    B, L, D, Ns = 3, 7, 5, 4
    dt = torch.rand(B, L, D, generator=g, dtype=torch.float64)
    A = -torch.rand(D, Ns, generator=g, dtype=torch.float64) * 3
    dA = torch.exp(dt.unsqueeze(-1) * A)
    u = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    Bm = torch.randn(B, L, Ns, generator=g, dtype=torch.float64)
    C = torch.randn(B, L, Ns, generator=g, dtype=torch.float64)
    dBx = u.unsqueeze(-1) * Bm.unsqueeze(2)
    mask = torch.ones(B, L, dtype=torch.float64)
    mask[0, :3] = 0
    # the O(L) transposed recurrence equals a backward scan over every prefix (O(L²))
    fast = prefix_pooled_reverse_scan(dt, A, u, Bm, C, mask)
    assert torch.allclose(fast, _naive_pooled_reverse(dA, dBx, C, mask), atol=1e-10)
    # and the forward scan is the plain recurrence
    h, ys = torch.zeros(B, D, Ns, dtype=torch.float64), []
    for t in range(L):
        h = dA[:, t] * h + dBx[:, t]
        ys.append((h * C[:, t, None]).sum(-1))
    assert torch.allclose(selective_scan(dt, A, u, Bm, C), torch.stack(ys, 1), atol=1e-10)


def test_bimamba_backward_branch_sees_the_whole_prefix():
    """The backward branch contributes: zeroing its C projection changes the last user state."""
    m = _model("bimamba")
    hist = torch.tensor([[0, 3, 8, 1, 6, 2, 9, 4]])
    with torch.no_grad():
        before = m.encode_users(hist)
        for block in m.blocks:
            block.bwd.x_proj.weight[-block.bwd.d_state :] = 0  # C = 0: backward scan outputs vanish
            block.bwd.D.zero_()
        assert not torch.allclose(before, m.encode_users(hist), atol=1e-4)


@pytest.mark.parametrize("name", SEQ)
def test_gradients_reach_every_parameter(name):
    cfg = ModelConfig(dim=16, n_layers=2, dropout=0.1)
    m = _model(name, cfg=cfg).train()
    hist = torch.randint(1, N + 1, (6, 8))
    hist[:2, :3] = 0
    states, items = m(hist, torch.arange(1, N + 1))
    (states[hist != 0] @ items.T).logsumexp(-1).sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def _chains(n_users: int, L: int, rng) -> np.ndarray:
    """Deterministic successor structure: item i is always followed by item i % N + 1."""
    start = rng.integers(1, N + 1, n_users)
    return ((start[:, None] + np.arange(L + 1)[None, :] - 1) % N + 1).astype(np.int64)


@pytest.mark.parametrize("name", SEQ)
def test_learns_successor_structure(name):
    L = 5
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, dropout=0.0)
    tcfg = TrainConfig(batch_size=64, lr=3e-3, n_negatives=16)
    model = build_model(name, build_item_encoder("id", N, cfg.dim, None), cfg, L)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    gen = torch.Generator().manual_seed(0)
    data = torch.from_numpy(_chains(512, L, rng))
    data[::3, :2] = 0  # some left-padded windows, as sequence_windows produces
    first, _ = train_epoch(model, data.split(64), opt, tcfg, N, gen)
    for _ in range(10):
        last, _ = train_epoch(model, data.split(64), opt, tcfg, N, gen)
    assert last < first * 0.5
    test = _chains(200, L, rng)
    test[::2, :3] = 0
    ranks = rank_cases(model, test[:, :-1], test[:, -1])
    assert (ranks <= 1).mean() > 0.9  # near-perfect next-item prediction
