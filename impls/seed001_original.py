"""Seed 001 ("多头Attention 和 自注意力机制") as written: a known-bad implementation.

It cannot be constructed. ``nn.MultiheadAttention()`` is called with no
arguments, which raises TypeError. Past that line, ``nn.Linear(None, embed_dim)``
fails for a default ``qdim``/``kdim``/``vdim``, and ``emded_dim`` is a NameError.
The seed imports ``DotProductAttention`` from d2l; a stand-in with d2l's
interface (the output only) replaces the import, and the rest is the seed's code.
The corrected version is :mod:`attnspec.impls.seed001_multiattention`.
"""
from __future__ import annotations

from types import SimpleNamespace

from torch import nn

from .seed001_multiattention import DotProductAttention, MultiAttentionAdapter


class _D2lDotProductAttention(DotProductAttention):
    """d2l.DotProductAttention's interface: returns the output only."""

    def forward(self, queries, keys, values, valid_lens=None):
        return super().forward(queries, keys, values, valid_lens)[0]


d2l = SimpleNamespace(DotProductAttention=_D2lDotProductAttention)  # for `from d2l import torch as d2l`


class MultiAttention(nn.Module):
    def __init__(self, embed_dim, num_heads, qdim=None, kdim=None, vdim=None, hdim=256, dropout=0.0) -> None:
        super(MultiAttention, self).__init__()
        self.attention = d2l.DotProductAttention(dropout)
        self.num_heads = num_heads
        nn.MultiheadAttention()  # TypeError: embed_dim and num_heads are required
        # 先做一个全连接层好把Q、K、V不同维度转为同一维度
        self.W_q = nn.Linear(qdim, embed_dim)
        self.W_k = nn.Linear(kdim, embed_dim)
        self.W_v = nn.Linear(vdim, embed_dim)
        self.W_o = nn.Linear(embed_dim, emded_dim)  # noqa: F821 (the seed's typo)

    def forward(self, Q, K, V):
        # 注意这里的Q 的shape (batchsize, qn, qdim)
        # K (batchsize, kvn, kdim)
        # V (batchsize, kvn, vdim)
        Q = self.trans(self.W_q(Q), self.num_heads)
        K = self.trans(self.W_k(K), self.num_heads)
        V = self.trans(self.W_v(V), self.num_heads)
        # Q (batchsize *numheads, qn, embed_dim/num_heads)
        output = self.attention(Q, K, V)
        output = self.retrans(output, self.num_heads)
        return self.W_o(output)

    def trans(self, X, num_heads):
        X = X.reshape(X.shape[0], X.shape[1], num_heads, -1)  # (B, n, H, hd)
        X = X.permute(0, 2, 1, 3)  # (B, H, n, hd)
        X = X.reshape(-1, X.shape[2], X.shape[3])  # (B*H, n, hd)
        return X

    def retrans(self, X, num_heads):
        X = X.reshape(-1, num_heads, X.shape[1], X.shape[2])  # (B, H, n, hd)
        X = X.permute(0, 2, 1, 3)  # (B, n, H, hd)
        X = X.reshape(X.shape[0], X.shape[1], -1)  # (B, n, E)
        return X


class OriginalMultiAttentionAdapter(MultiAttentionAdapter):
    """What the seed meant to offer: cross-attention with q/k/v widths, no masks, no weights."""

    name = "seed001.original"
    capabilities = MultiAttentionAdapter.capabilities.replace(
        key_padding_mask_kinds=(), padding_suffix_only=False, returns_weights=False, returns_per_head_weights=False)

    def build(self, config, *, dtype, device):
        module = MultiAttention(config.embed_dim, config.num_heads, qdim=config.qdim,
                                kdim=config.kdim, vdim=config.vdim, dropout=config.dropout)
        return module.to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None,
             need_weights=True, average_attn_weights=True):
        for arg, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            if mask is not None:
                raise ValueError(f"{self.name} takes no masks, but got {arg} of shape {tuple(mask.shape)}")
        return module(query, key, value), None


ADAPTER = OriginalMultiAttentionAdapter()
