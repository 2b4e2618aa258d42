"""Seed 000 ("Multi-Head Self-Attention"): one ``SelfAttention`` module per head, in a ModuleList.

Fixed: the seed's ``einsum('nci, ncj -> nc', q, k)`` summed each query and key
over features and multiplied the two sums, one number per token, then took the
softmax over the sequence and scaled ``v`` by it, so no token attended to another
(see :mod:`attnspec.impls.seed000_original`). Here each head computes
``softmax(q @ k^T / sqrt(d_k)) @ v`` over the keys, the heads are concatenated
in order and projected by ``Wo``. A bad ``embed_dim``/``num_heads`` raises
ValueError instead of an ``assert``.

Self-attention only, on batch-first ``(B, L, E)`` or unbatched ``(L, E)`` input;
no masks, no returned weights, no dropout.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from attnspec.weights import CanonicalWeights, from_linears, to_linears

from ._self_attention import CAPABILITIES, SelfAttentionAdapter


class SelfAttention(nn.Module):
    """One head: project ``x`` to width ``d_k`` and attend over its own tokens."""

    def __init__(self, d_m: int, d_k: int) -> None:
        super().__init__()
        self.d_k = d_k
        self.Wq = nn.Linear(d_m, d_k)
        self.Wk = nn.Linear(d_m, d_k)
        self.Wv = nn.Linear(d_m, d_k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.Wq(x), self.Wk(x), self.Wv(x)  # (B, L, d_k) each
        score = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)  # (B, L, L): query i, key j
        score = torch.softmax(score, dim=-1)  # over the keys
        return score @ v  # (B, L, d_k)


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim={embed_dim} and num_heads={num_heads} should be positive")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.heads = nn.ModuleList([SelfAttention(embed_dim, embed_dim // num_heads)
                                    for _ in range(num_heads)])
        self.Wo = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Z = torch.cat([head(x) for head in self.heads], dim=-1)  # (B, L, E): head h in block h
        return self.Wo(Z)  # (B, L, E)


class HeadsListAdapter(SelfAttentionAdapter):
    """Head h's ``Wq``/``Wk``/``Wv`` are rows ``[h*hd, (h+1)*hd)`` of the canonical ones."""

    name = "seed000.heads_list"
    capabilities = CAPABILITIES.replace(layouts=("batch_first", "unbatched"))
    module_class = MultiHeadSelfAttention

    @staticmethod
    def _projections(module):
        """Each of q, k, v as its heads' Linears, in head order (head h's rows are block h), and ``Wo``."""
        return (*([getattr(head, name) for head in module.heads] for name in ("Wq", "Wk", "Wv")), module.Wo)

    def get_weights(self, module) -> CanonicalWeights:
        return from_linears(*self._projections(module))

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        to_linears(weights, *self._projections(module))


ADAPTER = HeadsListAdapter()
