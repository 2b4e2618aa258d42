"""Seed 002 (MHA "step 3"): ``MyMultiHeadAttention`` with a view + transpose head split.

Fixed: the softmax read ``aattn_scores``, a NameError on every call (see
:mod:`attnspec.impls.seed002_original`). A ``hidden_size`` that ``n_head`` does not divide
raises ValueError instead of producing a wrong head count. The rest is the seed:
separate ``linear_q/k/v/o``, ``* self.scaling`` with ``head_dim ** -0.5``, and
``transpose(1, 2).contiguous().view(B, L, D)`` to merge the heads.

Self-attention on batch-first ``(B, L, D)`` input; no masks, no returned weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnspec.weights import CanonicalWeights, from_linears, to_linears

from ._self_attention import SelfAttentionAdapter


class MyMultiHeadAttention(nn.Module):
    def __init__(self, hidden_size: int, n_head: int) -> None:
        super().__init__()
        if hidden_size <= 0 or n_head <= 0:
            raise ValueError(f"hidden_size={hidden_size} and n_head={n_head} should be positive")
        if hidden_size % n_head != 0:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by n_head={n_head}")
        self.linear_q = nn.Linear(hidden_size, hidden_size)
        self.linear_k = nn.Linear(hidden_size, hidden_size)
        self.linear_v = nn.Linear(hidden_size, hidden_size)
        self.linear_o = nn.Linear(hidden_size, hidden_size)
        self.n_head, self.head_dim = n_head, hidden_size // n_head
        self.scaling = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        query = self.linear_q(x).view(B, L, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, L, head_dim)
        key = self.linear_k(x).view(B, L, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, L, head_dim)
        value = self.linear_v(x).view(B, L, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, L, head_dim)
        attn_scores = torch.matmul(query, key.transpose(2, 3)) * self.scaling  # (B, n_head, L, L)
        attn_weights = F.softmax(attn_scores, dim=-1)  # (B, n_head, L, L)
        attn_output = torch.matmul(attn_weights, value)  # (B, n_head, L, head_dim)
        attn_output = attn_output.transpose(1, 2).contiguous().view(B, L, D)  # (B, L, D); named sizes: L may be 0
        return self.linear_o(attn_output)  # (B, L, D)


class ViewTransposeAdapter(SelfAttentionAdapter):
    name = "seed002.view_transpose"
    module_class = MyMultiHeadAttention

    def get_weights(self, module) -> CanonicalWeights:
        return from_linears(module.linear_q, module.linear_k, module.linear_v, module.linear_o)

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        to_linears(weights, module.linear_q, module.linear_k, module.linear_v, module.linear_o)


ADAPTER = ViewTransposeAdapter()
