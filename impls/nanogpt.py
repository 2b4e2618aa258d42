"""nanoGPT's ``CausalSelfAttention``: always causal, one fused ``c_attn`` projection, ``c_proj`` out.

As Karpathy's nanoGPT (model.py) writes it: the flash path hands causality to
``F.scaled_dot_product_attention(..., is_causal=True)``; the manual path masks with a lower
triangular buffer ``bias`` of ``block_size`` rows. There is no way to turn causality off and no
mask argument: its adapter declares ``causality="always"`` and ``masks_with_causality=()``. Dropout (on the
weights and on the output, "resid_dropout") is left at 0: the residual dropout is not attention's.
Names: B batch, T tokens, C embed_dim, nh heads, hs = C // nh.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnspec import Adapter, Capabilities, from_linears, to_linears


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int = 64, bias: bool = True, flash: bool = True):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # key, query, value projections for all heads
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.n_head, self.n_embd, self.flash = n_head, n_embd, flash
        if not flash:  # causal mask to ensure that attention is only applied to the left in the input sequence
            self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size))
                                 .view(1, 1, block_size, block_size))  # (1, 1, block_size, block_size)

    def forward(self, x):
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        else:
            if T > self.bias.shape[-1]:
                raise ValueError(f"sequence of {T} tokens, but block_size={self.bias.shape[-1]}")
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
            # The module under test masks the future itself, on purpose: attnspec.masks is for adapters.
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            y = att @ v  # (B, nh, T, T) x (B, nh, T, hs) -> (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): re-assemble all head outputs side by side
        return self.c_proj(y)


class NanoGPTAdapter(Adapter):
    capabilities = Capabilities(
        cross_attention=False, kdim_vdim=False, bias_kv=False, zero_attn=False, attention_dropout=False,
        layouts=("batch_first",), key_padding_mask_kinds=(), attn_mask_kinds=(), attn_mask_3d=False, returns_weights=False,
        returns_per_head_weights=False, causality="always", masks_with_causality=(), edge_cases=("large inputs",))

    def __init__(self, name: str, flash: bool):
        self.name, self.flash = name, flash

    def build(self, config, *, dtype, device):
        module = CausalSelfAttention(config.embed_dim, config.num_heads, bias=config.bias, flash=self.flash)
        return module.to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, key_padding_mask=None, attn_mask=None, need_weights=False,
             average_attn_weights=True, is_causal=True):
        if not is_causal:
            raise ValueError(f"{self.name} is always causal: is_causal=False cannot be honoured")
        if key is not query or value is not query or key_padding_mask is not None or attn_mask is not None:
            raise ValueError(f"{self.name} is self-attention without masks: one tensor, no key_padding_mask/attn_mask")
        return module(query), None

    def get_weights(self, m):
        return from_linears(qkv=m.c_attn, out=m.c_proj)  # c_attn rows [q; k; v], each (C, C)

    def set_weights(self, m, w):
        to_linears(w, qkv=m.c_attn, out=m.c_proj)


FLASH = NanoGPTAdapter("nanogpt", flash=True)
MANUAL = NanoGPTAdapter("nanogpt.manual", flash=False)
ADAPTERS = [FLASH, MANUAL]
