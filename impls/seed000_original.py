"""Seed 000 ("Multi-Head Self-Attention") as written: a known-bad implementation.

``einsum('nci, ncj -> nc', q, k)`` is ``(sum_i q[n,c,i]) * (sum_j k[n,c,j])``:
one number per token, not a (query, key) score matrix. The softmax then runs
over the sequence axis and ``v * score[:, :, None]`` scales each token's own
value, so no token attends to another. The corrected version is
:mod:`attnspec.impls.seed000_heads_list`; this file keeps the seed's code (``pt`` for
``torch`` included) so the suite can show the bug.
"""
from __future__ import annotations

import torch as pt
from torch import nn

from .seed000_heads_list import HeadsListAdapter


class SelfAttention(nn.Module):
    def __init__(self, d_m, d_k) -> None:
        super(SelfAttention, self).__init__()
        self.d_m = d_m
        self.d_k = d_k
        self.Wq = nn.Linear(in_features=self.d_m, out_features=self.d_k)
        self.Wk = nn.Linear(in_features=self.d_m, out_features=self.d_k)
        self.Wv = nn.Linear(in_features=self.d_m, out_features=self.d_k)

    def forward(self, x):
        q, k, v = self.Wq(x), self.Wk(x), self.Wv(x)
        score = pt.einsum('nci, ncj -> nc', q, k)  # (B, L): one number per token (the bug)
        score /= pt.sqrt(pt.tensor(self.d_k))
        score = nn.functional.softmax(score, dim=-1)  # over the sequence, not over keys
        out = v * score[:, :, None]  # (B, L, d_k): each token scales its own value
        return out


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, embed_dim, num_heads) -> None:
        super(MultiHeadSelfAttention, self).__init__()
        assert embed_dim % num_heads == 0, 'embed_dim must be divided by num_heads'
        self.heads = nn.ModuleList([SelfAttention(d_m=embed_dim, d_k=embed_dim//num_heads)
                                    for _ in range(num_heads)])
        self.Wo = nn.Linear(in_features=embed_dim, out_features=embed_dim)

    def forward(self, x):
        Z = pt.cat([head(x) for head in self.heads], dim=-1)
        return self.Wo(Z)


class OriginalHeadsListAdapter(HeadsListAdapter):
    """Same parameters as the fixed version; only batch-first input (the einsum needs 3-D)."""

    name = "seed000.original"
    capabilities = HeadsListAdapter.capabilities.replace(layouts=("batch_first",))
    module_class = MultiHeadSelfAttention


ADAPTER = OriginalHeadsListAdapter()
