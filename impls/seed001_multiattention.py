"""Seed 001 ("多头Attention 和 自注意力机制"): ``MultiAttention`` with d2l-style length masking.

Fixed (see :mod:`attnspec.impls.seed001_original`): the seed could not be constructed. It
called ``nn.MultiheadAttention()`` with no arguments, wrote ``emded_dim`` for
``embed_dim``, and built ``nn.Linear(None, ...)`` when ``qdim``/``kdim``/``vdim``
were left at their default, which now is ``embed_dim``. It also imported d2l for
``DotProductAttention``: that is written out here. Masking takes valid lengths
per batch item and fills the rest with ``-inf`` (d2l uses ``-1e6``); an item with
valid length 0 gets attention weights 0, so its output rows are ``W_o``'s bias.
``forward`` returns the per-head weights too, post-dropout as in ``nn.MultiheadAttention``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from attnspec import masks
from attnspec.adapter import Adapter
from attnspec.capabilities import Capabilities
from attnspec.weights import CanonicalWeights, from_linears, to_linears


def masked_softmax(scores: torch.Tensor, valid_lens: torch.Tensor | None) -> torch.Tensor:
    """Softmax over keys ``j < valid_lens[i]`` of row block i; a block with no valid key gets 0."""
    if valid_lens is None:
        return torch.softmax(scores, dim=-1)
    S = scores.shape[-1]
    # The module under test masks by length itself, on purpose: attnspec.masks is for adapters.
    masked = torch.arange(S, device=scores.device)[None, None, :] >= valid_lens[:, None, None]  # (BH, 1, S)
    empty = masked.all(dim=-1, keepdim=True)  # (BH, 1, 1): no valid key at all
    scores = scores.masked_fill(masked, float("-inf")).masked_fill(empty, 0.0)
    return torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)


class DotProductAttention(nn.Module):
    """Scaled dot-product attention with dropout on the weights (d2l's, with weights returned)."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries, keys, values, valid_lens=None):
        d = queries.shape[-1]
        scores = queries @ keys.transpose(1, 2) / math.sqrt(d)  # (BH, L, S)
        weights = self.dropout(masked_softmax(scores, valid_lens))  # (BH, L, S)
        return weights @ values, weights  # (BH, L, hd), (BH, L, S)


class MultiAttention(nn.Module):
    def __init__(self, embed_dim, num_heads, qdim=None, kdim=None, vdim=None, dropout=0.0) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim={embed_dim} and num_heads={num_heads} should be positive")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.attention = DotProductAttention(dropout)
        qdim, kdim, vdim = (embed_dim if d is None else d for d in (qdim, kdim, vdim))
        # project Q, K and V of any widths to embed_dim
        self.W_q = nn.Linear(qdim, embed_dim)
        self.W_k = nn.Linear(kdim, embed_dim)
        self.W_v = nn.Linear(vdim, embed_dim)
        self.W_o = nn.Linear(embed_dim, embed_dim)

    def forward(self, Q, K, V, valid_lens=None):
        """Q (B, L, qdim), K (B, S, kdim), V (B, S, vdim); valid_lens (B,): keys j < valid_lens[b] count."""
        if K.shape[:2] != V.shape[:2]:
            raise ValueError(f"key {tuple(K.shape)} and value {tuple(V.shape)} should have the "
                             "same batch size and length")
        B, L, H = Q.shape[0], Q.shape[1], self.num_heads
        Q, K, V = (self.trans(W(X)) for W, X in ((self.W_q, Q), (self.W_k, K), (self.W_v, V)))
        if valid_lens is not None:
            valid_lens = valid_lens.repeat_interleave(H, dim=0)  # (B*H,): row b*H + h
        output, weights = self.attention(Q, K, V, valid_lens)  # (B*H, L, hd), (B*H, L, S)
        output = self.retrans(output)  # (B, L, E)
        return self.W_o(output), weights.reshape(B, H, L, K.shape[1])  # (B, L, E), (B, H, L, S)

    # Every size is named, never -1: with an empty sequence (n = 0) a -1 is ambiguous.
    def trans(self, X):
        B, n, E = X.shape
        H = self.num_heads
        X = X.reshape(B, n, H, E // H)  # (B, n, H, hd)
        X = X.permute(0, 2, 1, 3)  # (B, H, n, hd)
        return X.reshape(B * H, n, E // H)  # (B*H, n, hd)

    def retrans(self, X):
        BH, n, hd = X.shape
        H = self.num_heads
        X = X.reshape(BH // H, H, n, hd)  # (B, H, n, hd)
        X = X.permute(0, 2, 1, 3)  # (B, n, H, hd)
        return X.reshape(BH // H, n, H * hd)  # (B, n, E)


def valid_lengths(key_padding_mask: torch.Tensor, B: int, S: int) -> torch.Tensor:
    """(B, S) bool trailing padding (True = padded) -> (B,) valid lengths; ValueError otherwise.

    The module takes lengths and never sees the mask, so its dtype and shape are checked here, for
    the module (the adapter claims it rejects bad masks); :func:`attnspec.masks.lengths_from_padding`
    converts it, and rejects padding that is not at the end (MaskError, a ValueError)."""
    if key_padding_mask.dtype != torch.bool:
        raise ValueError(f"key_padding_mask has dtype {key_padding_mask.dtype}, but only bool "
                         "(True = padded) is supported")
    if tuple(key_padding_mask.shape) != (B, S):
        raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, but should be {(B, S)}")
    return masks.lengths_from_padding(key_padding_mask, batch=B, keys=S)  # (B,)


class MultiAttentionAdapter(Adapter):
    """Key padding becomes valid lengths; per-head weights are averaged here when asked."""

    name = "seed001.multiattention"
    capabilities = Capabilities(
        distinct_qdim=True, bias_values=(True,), bias_kv=False, zero_attn=False, layouts=("batch_first",),
        key_padding_mask_kinds=("bool",), padding_suffix_only=True, attn_mask_kinds=(), attn_mask_3d=False)

    def build(self, config, *, dtype, device):
        module = MultiAttention(config.embed_dim, config.num_heads, qdim=config.qdim,
                                kdim=config.kdim, vdim=config.vdim, dropout=config.dropout)
        return module.to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None,
             need_weights=True, average_attn_weights=True):
        if attn_mask is not None:
            raise ValueError(f"{self.name} takes no attn_mask, but got one of shape {tuple(attn_mask.shape)}")
        lengths = None
        if key_padding_mask is not None:
            lengths = valid_lengths(key_padding_mask, key.shape[0], key.shape[1])
        output, weights = module(query, key, value, lengths)
        if not need_weights:
            return output, None
        return output, weights.mean(dim=1) if average_attn_weights else weights  # (B, L, S) or (B, H, L, S)

    def get_weights(self, module) -> CanonicalWeights:
        return from_linears(module.W_q, module.W_k, module.W_v, module.W_o)  # Wk (E, kdim), Wv (E, vdim)

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        to_linears(weights, module.W_q, module.W_k, module.W_v, module.W_o)


ADAPTER = MultiAttentionAdapter()
