"""Small attention modules shaped like real ones, each behind an adapter written from the README.

``SmallAttention`` is batch-first, with separate q/k/v/o projections whose biases can each be
absent, an optional output projection, keys and values from one ``context`` tensor or two,
an additive mask of shape (B, H, L, S), and an optional softmax dtype. The adapters below
declare what each variant is; tests/test_real_modules.py states the verdict each must get.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnspec import Adapter, Capabilities, from_linears, to_linears
from attnspec.masks import combined

PROJECTIONS = ("q", "k", "v", "o")


class SmallAttention(nn.Module):
    def __init__(self, embed_dim, num_heads, *, biases=PROJECTIONS, out_proj=True, softmax_dtype=None,
                 value_from_query=False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        E, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.q, self.k, self.v = (nn.Linear(E, E, bias=n in biases) for n in "qkv")
        self.o = nn.Linear(E, E, bias="o" in biases) if out_proj else None
        self.softmax_dtype, self.value_from_query = softmax_dtype, value_from_query

    def forward(self, x, key=None, value=None, mask=None):
        """x (B, L, E); key, value (B, S, E) default to x and key; mask additive, broadcasting to (B, H, L, S)."""
        key = x if key is None else key
        value = key if value is None else value
        B, L, E = x.shape
        S, H, hd = key.shape[1], self.num_heads, self.head_dim
        q = self.q(x).view(B, L, H, hd).transpose(1, 2)  # (B, H, L, hd)
        k = self.k(key).view(B, S, H, hd).transpose(1, 2)  # (B, H, S, hd)
        v = self.v(x if self.value_from_query else value).view(B, -1, H, hd).transpose(1, 2)  # (B, H, S, hd)
        logits = (q @ k.transpose(-2, -1)) * hd ** -0.5  # (B, H, L, S)
        if mask is not None:
            logits = logits + mask
        attn = F.softmax(logits.to(self.softmax_dtype or logits.dtype), dim=-1).to(logits.dtype)
        out = (attn @ v).transpose(1, 2).reshape(B, L, E)  # (B, L, E): heads side by side
        return (out if self.o is None else self.o(out)), attn


class SmallAdapter(Adapter):
    """One adapter for every variant: ``variant`` holds SmallAttention's keyword arguments."""

    def __init__(self, name, capabilities, *, one_head_no_out_proj=False, **variant):
        self.name, self.capabilities, self.variant = name, capabilities, variant
        self.one_head_no_out_proj = one_head_no_out_proj

    def build(self, config, *, dtype, device):
        no_out = self.one_head_no_out_proj and config.num_heads == 1
        module = SmallAttention(config.embed_dim, config.num_heads, **{**self.variant, **({"out_proj": False}
                                                                                          if no_out else {})})
        return module.to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None, need_weights=True,
             average_attn_weights=True):
        B, L, S = query.shape[0], query.shape[1], key.shape[1]
        mask = combined(key_padding_mask, attn_mask, batch=B, num_heads=module.num_heads, queries=L, keys=S,
                        dtype=query.dtype)  # (B|1, H|1, L|1, S) additive
        out, attn = module(query, None if key is query else key,
                           None if value is key or value is query else value, mask=mask)
        if not need_weights:
            return out, None
        return out, attn.mean(dim=1) if average_attn_weights else attn

    def get_weights(self, m):
        return from_linears(m.q, m.k, m.v, m.o)  # a missing bias is None, a missing m.o is Wo=None

    def set_weights(self, m, w):
        to_linears(w, m.q, m.k, m.v, m.o)


# What these modules are: batch-first, additive masks through attnspec.masks (so the adapter, not
# the module, sees nn.MultiheadAttention's masks: validates_mask_shapes=False); a fully masked row softmaxes
# to NaN, and its NaN reaches every gradient: that edge case is declared unsupported.
BASE = Capabilities(layouts=("batch_first",), kdim_vdim=False, bias_kv=False, zero_attn=False,
                    attention_dropout=False, bias_values=(True,), fully_masked_rows="unspecified", validates_mask_shapes=False, validates_mask_dtypes=False,
                    edge_cases=("empty sequences", "large inputs"))

# Whisper-style: the key projection has no bias
PARTIAL_BIASES = SmallAdapter("small.partial_biases", BASE, biases=("q", "v", "o"))
# only the output projection has a bias
OUTPUT_BIAS_ONLY = SmallAdapter("small.output_bias_only", BASE, biases=("o",))
# no output projection when there is a single head (by the module's own documentation)
NO_OUT_PROJ_AT_ONE_HEAD = SmallAdapter("small.no_out_proj_at_one_head", BASE.replace(out_projection="multi-head"),
                                       one_head_no_out_proj=True)
# the same, declared as always having one: get_weights contradicts the declaration
NO_OUT_PROJ_UNDECLARED = SmallAdapter("small.no_out_proj_undeclared", BASE, one_head_no_out_proj=True)
# cross-attention taking one context tensor as keys and values
SHARED_KV = SmallAdapter("small.shared_kv", BASE.replace(shared_key_value=True))
# ... with the values projected from the query instead of the context
SHARED_KV_BROKEN = SmallAdapter("small.shared_kv_value_from_query", BASE.replace(shared_key_value=True),
                                value_from_query=True)
# softmax always in float32, declared
FLOAT32_SOFTMAX = SmallAdapter("small.float32_softmax", BASE.replace(compute_dtype=torch.float32),
                               softmax_dtype=torch.float32)
# softmax always in float32, not declared
FLOAT32_SOFTMAX_UNDECLARED = SmallAdapter("small.float32_softmax_undeclared", BASE, softmax_dtype=torch.float32)
# claims its masks are checked by the module, but the adapter's attnspec.masks helper rejects them first
HELPER_REJECTS = SmallAdapter("small.helper_rejects", BASE.replace(validates_mask_shapes=True, validates_mask_dtypes=True))
