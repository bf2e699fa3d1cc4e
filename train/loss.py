"""Training losses of next-item prediction; the choice is configuration (``TrainConfig.loss``), not code.

Every loss works on the user states of a batch's valid positions ``users`` [R, d], their targets
[R] (item indices 1..n_items) and the embeddings of the candidate items the loss asks for. A loss
declares its candidates (``candidates``: all items, or targets plus sampled negatives) so that the
model is called once per step for states and candidates together (one forward for DDP).

- ``ce``: softmax cross-entropy over the whole catalogue (SASRec+, Klenitskiy & Vasilev 2023),
  chunked over items by ``ChunkedSoftmaxCE`` so that no [R, n_items] matrix exists at once.
- ``gbce``: generalised binary cross-entropy over sampled negatives (gSASRec, Petrov & Macdonald
  2023), calibrated by ``gbce_t``.
- ``inbatch+sampled``: softmax over the batch's targets plus sampled negatives.
- ``sampled``: softmax over each target and the sampled negatives only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:
    from train.config import TrainConfig


def sample_negatives(
    n_items: int, n_negatives: int, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    """``n_negatives`` uniform item indices in 1..n_items (with replacement), shared by the batch."""
    return torch.randint(1, n_items + 1, (n_negatives,), generator=gen, device="cpu").to(device)


def candidates_for(
    targets: torch.Tensor, n_items: int, n_negatives: int, gen: torch.Generator
) -> torch.Tensor:
    """Sorted unique candidate items: the batch's targets plus uniformly sampled negatives (1..n_items)."""
    neg = sample_negatives(n_items, n_negatives, gen, targets.device)
    return torch.unique(torch.cat([targets, neg]))


class ChunkedSoftmaxCE(torch.autograd.Function):
    """Mean softmax cross-entropy of ``logits = users @ items.T``, computed ``chunk`` items at a time.

    Forward keeps only the per-row log-sum-exp; backward recomputes each chunk's logits, so the
    largest temporary is [R, chunk] whatever the catalogue size. The gradient is the usual
    ``(softmax - onehot) / R`` pushed through both factors. With a single chunk the softmax of the
    forward is kept instead of recomputed (same cost as ``F.cross_entropy``).
    """

    @staticmethod
    def forward(
        ctx, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        n = items.shape[0]
        kept = None
        if n <= chunk:
            logits = users @ items.T
            lse = torch.logsumexp(logits, dim=1)
            kept = logits.sub_(lse[:, None]).exp_()
        else:
            lse = torch.stack(
                [torch.logsumexp(users @ items[a : a + chunk].T, dim=1) for a in range(0, n, chunk)], dim=1
            ).logsumexp(dim=1)
        target_logit = (users * items[labels]).sum(dim=1)
        ctx.chunk = chunk
        ctx.save_for_backward(users, items, labels, lse, kept if kept is not None else torch.empty(0))
        ctx.single = kept is not None
        return (lse - target_logit).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        users, items, labels, lse, kept = ctx.saved_tensors
        scale = grad_out / users.shape[0]
        grad_users = torch.zeros_like(users)
        grad_items = torch.zeros_like(items)
        chunk = items.shape[0] if ctx.single else ctx.chunk
        for a in range(0, items.shape[0], chunk):
            e = items[a : a + chunk]
            p = kept if ctx.single else (users @ e.T).sub_(lse[:, None]).exp_()
            grad_users.addmm_(p, e)
            grad_items[a : a + chunk] = p.T @ users
        grad_users.sub_(items[labels])
        grad_items.index_add_(0, labels, users, alpha=-1.0)
        return grad_users * scale, grad_items * scale, None, None


def chunked_softmax_ce(
    users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Mean cross-entropy of each row of ``users`` against every row of ``items`` (label = row index)."""
    return ChunkedSoftmaxCE.apply(users, items, labels, chunk)


class Loss:
    """A training loss: which candidate items it scores, and the loss given their embeddings."""

    def candidates(
        self, targets: torch.Tensor, n_items: int, cfg: TrainConfig, gen: torch.Generator
    ) -> torch.Tensor:
        """Item indices whose embeddings the loss needs (passed back to ``__call__`` as ``cand``)."""
        return candidates_for(targets, n_items, cfg.n_negatives, gen)

    def __call__(
        self,
        users: torch.Tensor,
        targets: torch.Tensor,
        cand: torch.Tensor,
        cand_emb: torch.Tensor,
        cfg: TrainConfig,
        n_items: int,
    ) -> torch.Tensor:
        raise NotImplementedError


class InBatchSampled(Loss):
    """Cross-entropy of each target against every candidate (other targets act as in-batch negatives)."""

    def __call__(self, users, targets, cand, cand_emb, cfg, n_items):
        logits = users @ cand_emb.T / cfg.temperature
        return F.cross_entropy(logits, torch.searchsorted(cand, targets))


class SampledOnly(Loss):
    """Cross-entropy of each target against the sampled negatives only (other targets are masked out).

    ``cand`` holds targets and negatives; a candidate that is some other row's target (and was not also
    sampled) is masked, so only the row's own target and sampled items compete.
    """

    def __call__(self, users, targets, cand, cand_emb, cfg, n_items):
        logits = users @ cand_emb.T / cfg.temperature
        labels = torch.searchsorted(cand, targets)
        is_target = torch.zeros(len(cand), dtype=torch.bool, device=cand.device)
        is_target[labels] = True
        mask = is_target.unsqueeze(0).expand_as(logits).clone()
        mask[torch.arange(len(labels)), labels] = False
        return F.cross_entropy(logits.masked_fill(mask, float("-inf")), labels)


class FullSoftmax(Loss):
    """Softmax cross-entropy over the whole catalogue, ``cfg.ce_chunk`` items at a time."""

    def candidates(self, targets, n_items, cfg, gen):
        return torch.arange(1, n_items + 1, device=targets.device)

    def __call__(self, users, targets, cand, cand_emb, cfg, n_items):
        return chunked_softmax_ce(users / cfg.temperature, cand_emb, targets - 1, cfg.ce_chunk)


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """gSASRec's positive-term exponent: beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = k / (n - 1)."""
    alpha = n_negatives / max(n_items - 1, 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


class GBCE(Loss):
    """Generalised BCE: -beta log sigmoid(s+) - sum log(1 - sigmoid(s-)) over k sampled negatives.

    Candidates are the batch's unique targets followed by the ``n_negatives`` sampled items (shared by
    the batch; a negative equal to the row's own target is dropped for that row). The mean is over the
    1 + k terms of each row, then over rows, as in gSASRec. ``gbce_t = 0`` is plain BCE; ``t -> 1``
    makes the sigmoid of a score estimate the probability of the item under the full softmax.
    """

    def candidates(self, targets, n_items, cfg, gen):
        if cfg.n_negatives < 1:
            raise ValueError("train.loss 'gbce' needs train.n_negatives >= 1")
        neg = sample_negatives(n_items, cfg.n_negatives, gen, targets.device)
        return torch.cat([torch.unique(targets), neg])

    def __call__(self, users, targets, cand, cand_emb, cfg, n_items):
        k = cfg.n_negatives
        logits = users @ cand_emb.T / cfg.temperature
        uniq = cand[: len(cand) - k]
        pos = logits[torch.arange(len(targets)), torch.searchsorted(uniq, targets)]
        neg = logits[:, len(uniq) :]
        hit = cand[len(uniq) :].unsqueeze(0) == targets.unsqueeze(1)  # accidental hits are not negatives
        beta = gbce_beta(k, n_items, cfg.gbce_t)
        per_row = -beta * F.logsigmoid(pos) - F.logsigmoid(-neg).masked_fill(hit, 0.0).sum(dim=1)
        return (per_row / (1 + k)).mean()


LOSSES: dict[str, Loss] = {
    "ce": FullSoftmax(),
    "gbce": GBCE(),
    "inbatch+sampled": InBatchSampled(),
    "sampled": SampledOnly(),
}
"""Every training loss by its ``train.loss`` name."""
