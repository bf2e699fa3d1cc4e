"""Softmax losses over candidate items; the choice is configuration (``TrainConfig.loss``), not code."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def candidates_for(
    targets: torch.Tensor, n_items: int, n_negatives: int, gen: torch.Generator
) -> torch.Tensor:
    """Sorted unique candidate items: the batch's targets plus uniformly sampled negatives (1..n_items)."""
    neg = torch.randint(1, n_items + 1, (n_negatives,), generator=gen, device="cpu").to(targets.device)
    return torch.unique(torch.cat([targets, neg]))


def inbatch_sampled(
    users: torch.Tensor, targets: torch.Tensor, cand: torch.Tensor, cand_emb: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy of each target against every candidate (other targets act as in-batch negatives)."""
    logits = users @ cand_emb.T / temperature
    labels = torch.searchsorted(cand, targets)
    return F.cross_entropy(logits, labels)


def sampled_only(
    users: torch.Tensor, targets: torch.Tensor, cand: torch.Tensor, cand_emb: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy of each target against the sampled negatives only (other targets are masked out).

    ``cand`` holds targets and negatives; a candidate that is some other row's target (and was not also
    sampled) is masked, so only the row's own target and sampled items compete.
    """
    logits = users @ cand_emb.T / temperature
    labels = torch.searchsorted(cand, targets)
    is_target = torch.zeros(len(cand), dtype=torch.bool, device=cand.device)
    is_target[labels] = True
    mask = is_target.unsqueeze(0).expand_as(logits).clone()
    mask[torch.arange(len(labels)), labels] = False
    return F.cross_entropy(logits.masked_fill(mask, float("-inf")), labels)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"inbatch+sampled": inbatch_sampled, "sampled": sampled_only}
