"""Seed 002 (MHA "step 3") as written: a known-bad implementation.

``F.softmax(aattn_scores, dim=-1)`` names a variable that does not exist, so every
call raises NameError. Nothing checks that ``n_head`` divides ``hidden_size``
either. The corrected version is :mod:`attnspec.impls.seed002_view_transpose`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .seed002_view_transpose import ViewTransposeAdapter


class MyMultiHeadAttention(nn.Module):
    def __init__(self, hidden_size, n_head):
        super().__init__()
        # 跟之前一樣
        self.linear_q = nn.Linear(hidden_size, hidden_size)
        self.linear_k = nn.Linear(hidden_size, hidden_size)
        self.linear_v = nn.Linear(hidden_size, hidden_size)
        # 多宣告及小地方不一樣
        self.linear_o = nn.Linear(hidden_size, hidden_size)
        self.head_dim = hidden_size // n_head
        self.scaling = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor):
        B, L, D = x.shape
        query = self.linear_q(x)
        key = self.linear_k(x)
        value = self.linear_v(x)
        # (B, L, D) -> (B, L, n_head, head_dim) -> (B, n_head, L, head_dim)
        query = query.view(B, L, -1, self.head_dim).transpose(1, 2)
        key = key.view(B, L, -1, self.head_dim).transpose(1, 2)
        value = value.view(B, L, -1, self.head_dim).transpose(1, 2)
        # (B, n_head, L, head_dim) dot (B, n_head, head_dim, L) = (B, n_head, L, L)
        attn_scores = torch.matmul(query, key.transpose(2, 3)) * self.scaling  # noqa: F841
        attn_weights = F.softmax(aattn_scores, dim=-1)  # noqa: F821 (the seed's typo)
        # (B, n_head, L, L) dot (B, n_head, L, head_dim) = (B, n_head, L, head_dim)
        attn_output = torch.matmul(attn_weights, value)
        # (B, n_head, L, head_dim) -> (B, L, n_head, head_dim) -> (B, L, D)
        attn_output = attn_output.transpose(1, 2).contiguous().view(B, L, -1)
        attn_output = self.linear_o(attn_output)
        return attn_output


class OriginalViewTransposeAdapter(ViewTransposeAdapter):
    name = "seed002.original"
    module_class = MyMultiHeadAttention


ADAPTER = OriginalViewTransposeAdapter()
