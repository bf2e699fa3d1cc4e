"""Training losses: the chunked full softmax equals a brute-force softmax (values, gradients, gradcheck),
gBCE equals gSASRec's formulation, and every loss trains every model of the shared interface."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.gradcheck import GradcheckError

from train.config import ModelConfig, TrainConfig
from train.loss import LOSSES, ChunkedSoftmaxCE, candidates_for, chunked_softmax_ce, gbce_beta
from train.registry import MODELS, build_item_encoder, build_model

N = 23


def _brute_ce(users, items, labels):
    return F.cross_entropy(users @ items.T, labels)


@pytest.mark.parametrize("chunk", [1, 5, 23, 100])
def test_chunked_ce_matches_brute_force_softmax(chunk):
    gen = torch.Generator().manual_seed(0)
    users = torch.randn(17, 8, generator=gen, requires_grad=True)
    items = torch.randn(N, 8, generator=gen, requires_grad=True)
    labels = torch.randint(0, N, (17,), generator=gen)
    labels[:3] = labels[0]  # a repeated label accumulates into one item row
    got = chunked_softmax_ce(users, items, labels, chunk)
    gu, gi = torch.autograd.grad(got, (users, items))
    want = _brute_ce(users, items, labels)
    wu, wi = torch.autograd.grad(want, (users, items))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gu, wu)
    torch.testing.assert_close(gi, wi)


def test_chunked_ce_gradcheck():
    gen = torch.Generator().manual_seed(1)
    users = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    items = torch.randn(11, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 3, 10, 7, 5])
    for chunk in (3, 11):  # several chunks (recomputed softmax) and one (kept softmax)
        assert torch.autograd.gradcheck(
            lambda u, e, c=chunk: chunked_softmax_ce(u, e, labels, c), (users, items)
        )


class _WrongTargetTerm(ChunkedSoftmaxCE):
    """The same forward with a deliberately wrong backward: the target's -1 is left out of the item gradient."""

    @staticmethod
    def backward(ctx, grad_out):
        gu, gi, _, _ = ChunkedSoftmaxCE.backward(ctx, grad_out)
        users, _, labels, _, _ = ctx.saved_tensors
        return gu, gi.index_add(0, labels, users * grad_out / users.shape[0]), None, None


def test_gradcheck_catches_a_wrong_gradient():
    """The checks above can fail: gradcheck and the brute-force comparison reject a wrong backward."""
    gen = torch.Generator().manual_seed(2)
    users = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    items = torch.randn(11, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 3, 10, 7, 5])
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(lambda u, e: _WrongTargetTerm.apply(u, e, labels, 3), (users, items))
    _, gi = torch.autograd.grad(_WrongTargetTerm.apply(users, items, labels, 3), (users, items))
    _, wi = torch.autograd.grad(_brute_ce(users, items, labels), (users, items))
    assert not torch.allclose(gi, wi)


def test_chunked_ce_never_holds_the_full_logits(monkeypatch):
    """No matrix product of the loss is wider than ce_chunk items."""
    seen = []
    real = torch.Tensor.__matmul__

    def spy(a, b):
        out = real(a, b)
        seen.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    users = torch.randn(9, 4, requires_grad=True)
    items = torch.randn(1000, 4, requires_grad=True)
    chunked_softmax_ce(users, items, torch.arange(9), 64).backward()
    assert seen and max(s[0] * s[1] for s in seen) <= 64 * 9


def _gsasrec_gbce(pos, neg, beta):
    """gSASRec's formulation (positive logit transformed so that BCE on it is -beta log sigmoid)."""
    eps = 1e-10
    p = torch.sigmoid(pos.double()).clamp(eps, 1 - eps)
    adjusted = p.pow(-beta).clamp(min=1 + eps)
    pos_t = (1.0 / (adjusted - 1)).clamp(min=eps).log()
    logits = torch.cat([pos_t[:, None], neg.double()], dim=1)
    gt = torch.zeros_like(logits)
    gt[:, 0] = 1
    return F.binary_cross_entropy_with_logits(logits, gt)


def test_gbce_matches_gsasrec_formulation():
    gen = torch.Generator().manual_seed(3)
    cfg = TrainConfig(loss="gbce", n_negatives=7, gbce_t=0.75)
    targets = torch.tensor([4, 9, 4, 17])
    loss = LOSSES["gbce"]
    cand = loss.candidates(targets, N, cfg, gen)
    negs = cand[-7:]
    targets_hit = targets.clone()
    targets_hit[1] = negs[0]  # one accidental hit: that negative is dropped for that row only
    cand = loss.candidates(targets_hit, N, cfg, torch.Generator().manual_seed(3))
    users = torch.randn(4, 8, generator=gen)
    emb_table = torch.randn(N + 1, 8, generator=gen)
    got = loss(users, targets_hit, cand, emb_table[cand], cfg, N)
    beta = gbce_beta(7, N, 0.75)
    assert beta == pytest.approx(1 - 0.75 * (1 - 7 / (N - 1)))
    scores = users @ emb_table.T
    negs = cand[-7:]
    rows = []
    for r, t in enumerate(targets_hit.tolist()):
        keep = negs[negs != t]
        rows.append(_gsasrec_gbce(scores[r, t][None], scores[r, keep][None], beta) * (1 + len(keep)) / 8)
    torch.testing.assert_close(got.double(), torch.stack(rows).mean(), rtol=1e-5, atol=1e-6)
    assert gbce_beta(7, N, 0.0) == pytest.approx(1.0)  # t = 0: plain BCE


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_prefers_the_target(name):
    gen = torch.Generator().manual_seed(0)
    cfg = TrainConfig(loss=name, n_negatives=8)
    targets = torch.tensor([3, 7, 3])
    cand = LOSSES[name].candidates(targets, N, cfg, gen)
    table = torch.eye(N + 1)
    good = table[targets] * 20
    bad = table[targets % N + 1] * 20
    fn = LOSSES[name]
    assert fn(good, targets, cand, table[cand], cfg, N) < fn(bad, targets, cand, table[cand], cfg, N)


def test_sampled_candidates_are_sorted_and_hold_the_targets():
    targets = torch.tensor([3, 7, 3])
    cand = candidates_for(targets, N, 8, torch.Generator().manual_seed(0))
    assert torch.equal(cand, cand.unique()) and set(targets.tolist()) <= set(cand.tolist())


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("name", ["ce", "gbce"])
def test_new_losses_train_every_model(model, name):
    """One step of every model on the shared interface lowers the loss on the same batch."""
    from train.steps import train_epoch

    torch.manual_seed(0)
    mcfg = ModelConfig(dim=16, dropout=0.0)
    tcfg = TrainConfig(loss=name, n_negatives=8, ce_chunk=7, lr=1e-2)
    m = build_model(model, build_item_encoder("id", N, mcfg.dim, None), mcfg, 5)
    opt = torch.optim.Adam(m.parameters(), lr=tcfg.lr)
    batch = torch.randint(1, N + 1, (16, 6), generator=torch.Generator().manual_seed(0))
    losses = [train_epoch(m, [batch], opt, tcfg, N, torch.Generator().manual_seed(0))[0] for _ in range(5)]
    assert losses[-1] < losses[0]
