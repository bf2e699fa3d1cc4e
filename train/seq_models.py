"""Recurrent and state-space user encoders on the shared model interface: GRU4Rec and BiMamba.

Both take a left-padded history ``[B, L]`` (0 = padding, most recent last) and return a CAUSAL user
state after every position, so ``train.steps.train_epoch`` trains on every prefix at once and
``encode_users`` reads the last position. Neither uses positions, so ``history_len`` does not bound L.

GRU4Rec: real items are moved to the front of each row (a stable sort, so order is kept; for left
padding a rotation), the GRU runs over the rows, and outputs are moved back. Padding then only comes
after the real items and never enters their states, so the state after a real item is exactly that of
the same items without padding (zero embeddings alone would not do: a GRU with biases drifts on zero
inputs). Packed sequences would give the same states but their backward on CPU is ~20x slower here.

BiMamba: Mamba blocks (input projection to (x, z), causal depthwise conv, SiLU, input-dependent Δ, B,
C, diagonal A = -exp(A_log), ZOH discretisation Ā = exp(ΔA), B̄ = ΔB, a sequential selective scan,
gate SiLU(z), output projection, pre-norm residual) with a forward and a backward scan with separate
parameters, as in Vision Mamba (Vim). Vim scans a whole sequence both ways; a user state at t may only
see items <= t, so here the backward scan at t runs over the prefix [.., t] only:

- the block output at t is the forward scan's output at t plus the MEAN over the prefix's real
  positions s <= t of the backward scan's outputs y_b[s | prefix t] (what a mean-pooled Vim block
  reads of the backward direction when the sequence ends at t). The next block sees at s what was
  computed from the prefix [.., s], so this is a causal variant of Vim, not Vim on each prefix (whose
  lower layers would re-read position s in the light of items after s);
- computed naively that is O(L^2) (a backward scan per prefix). It is linear in the backward scan's
  inputs, so with G_t = Ā_{t-1} * G_{t-1} + m_t C_t (the transposed recurrence) the pooled sum grows
  by sum_n G_t B̄_t x_t at step t: one forward-in-time loop, O(L), exactly equal to the naive
  per-prefix computation (``tests/train/test_seq_models.py`` checks it against the naive loop);
- the backward branch's short conv looks back in time like the forward one: Vim's backward conv
  would read positions after s, which for the last positions of a prefix lie in the future.

Cost per layer: two sequential loops over L on [B, 2·dim, d_state] states, O(B·L·dim·d_state) time;
Ā and B̄x are formed step by step, never as [B, L, 2·dim, d_state] tensors, but training still keeps
every step's state for autograd (about 2·B·L·2·dim·d_state floats per direction). Not chosen: running
Vim on every prefix (exact Vim semantics at every layer) needs B·L²/2 tokens per layer — at L=200,
B=256 about 5M tokens and tens of GB of activations to back-propagate through; reading only the last
position would train on 1 of L targets per window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train.config import ModelConfig
from train.models import Recommender, ResidualMLP


class GRU4Rec(Recommender):
    """GRU over the item embeddings of the history (padding moved behind the items), then a projection."""

    def __init__(self, item_encoder: nn.Module, cfg: ModelConfig, history_len: int) -> None:
        super().__init__(item_encoder)
        self.gru = nn.GRU(
            cfg.dim,
            cfg.dim,
            num_layers=cfg.n_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0,  # nn.GRU warns on dropout with one layer
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def encode_sequence(self, hist: torch.Tensor) -> torch.Tensor:
        # Real items first, order kept: trailing padding cannot change the states of the real items.
        order = torch.argsort((hist == 0).to(torch.int8), dim=1, stable=True)
        out, _ = self.gru(self.drop(self.encode_items(hist.gather(1, order))))
        back = torch.argsort(order, dim=1).unsqueeze(-1).expand(-1, -1, out.shape[-1])
        # Outputs at padding ran on after the real items (they saw the future): zero them, keeping causality.
        out = out.gather(1, back) * (hist != 0).unsqueeze(-1)
        return self.proj(self.drop(out))


@dataclass(frozen=True)
class SSMConfig:
    """Shape of a BiMamba block beyond ``ModelConfig`` (Mamba's defaults)."""

    d_state: int = 16
    """State size N per channel of the selective scan."""
    expand: int = 2
    """Inner width = expand · dim (the x and z branches)."""
    d_conv: int = 4
    """Kernel of the causal depthwise conv before the scan."""
    dt_min: float = 1e-3
    """Smallest initial step Δ (log-uniform init of the Δ bias, as in Mamba)."""
    dt_max: float = 0.1
    """Largest initial step Δ."""


def selective_scan(
    dt: torch.Tensor, A: torch.Tensor, u: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """Forward scan h_t = Ā_t h_{t-1} + u_t ⊗ B_t, y_t = h_t C_t, with Ā_t = exp(Δ_t A) (ZOH).

    ``dt`` (Δ) and ``u`` (Δx, so u_t ⊗ B_t = B̄_t x_t with B̄ ≈ ΔB) are [B, L, D], ``A`` [D, N] (negative),
    ``B``/``C`` [B, L, N]. Returns y [B, L, D].
    """
    h = u.new_zeros(u.shape[0], *A.shape)
    ys = []
    # Ā and B̄x are formed per step, never as [B, L, D, N] tensors (2-4x faster on CPU: they stay in
    # cache), and the inputs are unbound rather than indexed: each dt[:, t]'s backward would fill a
    # whole zero tensor of the input's size, O(L²) in all.
    for dtt, ut, bt, ct in zip(dt.unbind(1), u.unbind(1), B.unbind(1), C.unbind(1)):
        h = torch.baddbmm(torch.exp(dtt.unsqueeze(-1) * A) * h, ut.unsqueeze(-1), bt.unsqueeze(1))
        ys.append(torch.bmm(h, ct.unsqueeze(-1)).squeeze(-1))
    return torch.stack(ys, dim=1)


def prefix_pooled_reverse_scan(
    dt: torch.Tensor, A: torch.Tensor, u: torch.Tensor, B: torch.Tensor, C: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """For every t: sum over real s <= t of h_s C_s, where h is the backward scan over the prefix [.., t].

    The backward scan over the prefix ending at t is h_s = Ā_s h_{s+1} + B̄_s x_s from s = t down, so
    h_s = sum_{s<=j<=t} (Ā_s ··· Ā_{j-1}) B̄_j x_j; summing h_s C_s over s and stepping t forward gives
    the transposed recurrence G_t = Ā_{t-1} G_{t-1} + m_t C_t and the increment (G_t B_t) u_t.
    Arguments as in ``selective_scan``; ``mask`` [B, L] is 1 at real positions. Returns [B, L, D].
    """
    mc = (mask.unsqueeze(-1) * C).unsqueeze(1)  # [B, 1, L, N]: broadcast over channels
    g = u.new_zeros(u.shape[0], *A.shape)
    total = torch.zeros_like(u[:, 0])
    out, prev = [], None
    for dtt, ut, bt, ct in zip(dt.unbind(1), u.unbind(1), B.unbind(1), mc.unbind(2)):
        g = ct + torch.exp(prev.unsqueeze(-1) * A) * g if prev is not None else ct.expand_as(g)
        total = total + torch.bmm(g, bt.unsqueeze(-1)).squeeze(-1) * ut
        out.append(total)
        prev = dtt
    return torch.stack(out, dim=1)


class _Selective(nn.Module):
    """One scan direction's parameters: causal depthwise conv, Δ/B/C projections, A_log and D."""

    def __init__(self, d_inner: int, dt_rank: int, ssm: SSMConfig) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d_inner, d_inner, ssm.d_conv, groups=d_inner, padding=ssm.d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * ssm.d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        self.dt_rank, self.d_state = dt_rank, ssm.d_state
        # Mamba's init: Δ log-uniform in [dt_min, dt_max] through the softplus bias; A = -(1..N) per channel.
        nn.init.uniform_(self.dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
        dt = torch.exp(torch.rand(d_inner) * math.log(ssm.dt_max / ssm.dt_min) + math.log(ssm.dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        a = torch.arange(1, ssm.d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(d_inner))

    def discretise(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, L, D] (zero at padding) -> (x after conv+SiLU, Δ, A, Δx, B, C) for the scans."""
        length = x.shape[1]
        x = self.conv(x.transpose(1, 2))[..., :length].transpose(1, 2)  # causal: output t sees <= t
        x = F.silu(x) * mask.unsqueeze(-1)  # padding carries no input into either scan
        dt, b, c = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))  # [B, L, D], > 0
        # A < 0, so 0 < Ā = exp(ΔA) < 1; B̄ ≈ ΔB, so B̄x = (Δx) ⊗ B
        return x, dt, -torch.exp(self.A_log), dt * x, b, c


class BiMambaBlock(nn.Module):
    """Pre-norm residual Mamba block with a forward scan and a prefix-pooled backward scan."""

    def __init__(self, dim: int, dropout: float, ssm: SSMConfig) -> None:
        super().__init__()
        d_inner = ssm.expand * dim
        self.norm = nn.RMSNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.fwd = _Selective(d_inner, math.ceil(dim / 16), ssm)
        self.bwd = _Selective(d_inner, math.ceil(dim / 16), ssm)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1)
        x, z = self.in_proj(self.norm(h)).chunk(2, dim=-1)
        x = x * m  # zero before the convs, so left padding looks like the convs' own zero padding
        xf, *scan = self.fwd.discretise(x, mask)
        y = selective_scan(*scan) + self.fwd.D * xf
        xb, *scan = self.bwd.discretise(x, mask)
        count = mask.cumsum(1).clamp(min=1).unsqueeze(-1)
        pooled = prefix_pooled_reverse_scan(*scan, mask) + self.bwd.D * xb.cumsum(1)
        y = (y + pooled / count) * F.silu(z)
        return (h + self.drop(self.out_proj(y))) * m


class BiMamba(Recommender):
    """Bidirectional selective state-space (Vision-Mamba-style) user encoder, causal per position."""

    def __init__(
        self, item_encoder: nn.Module, cfg: ModelConfig, history_len: int, ssm: SSMConfig | None = None
    ) -> None:
        super().__init__(item_encoder)
        ssm = ssm or SSMConfig()
        self.blocks = nn.ModuleList(BiMambaBlock(cfg.dim, cfg.dropout, ssm) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim)
        self.head = ResidualMLP(cfg.dim, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def encode_sequence(self, hist: torch.Tensor) -> torch.Tensor:
        mask = (hist != 0).to(self.norm.weight.dtype)
        h = self.drop(self.encode_items(hist)) * mask.unsqueeze(-1)
        for block in self.blocks:
            h = block(h, mask)
        return self.head(self.norm(h))
