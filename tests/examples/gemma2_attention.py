"""A Gemma-2-style attention written by hand: grouped-query heads, RoPE, a softmax scale from
``query_pre_attn_scalar``, logits soft-capped by tanh before the masks, always causal with a look-back window."""
import torch
from torch import nn

from attnspec import Adapter, Capabilities, Rope, from_linears, to_linears
from attnspec.masks import keep


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Gemma2Attention(nn.Module):
    """x (B, T, C) -> (B, T, C); projections without bias; ``sliding_window`` w: token i sees tokens i - w + 1 to i."""

    def __init__(self, dim, n_heads, n_kv_heads, query_pre_attn_scalar, softcap=None, sliding_window=None,
                 base=10000.0):
        super().__init__()
        if dim % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"dim={dim}, n_heads={n_heads}, n_kv_heads={n_kv_heads}: heads must divide evenly")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.scaling = query_pre_attn_scalar ** -0.5
        self.softcap, self.sliding_window = softcap, sliding_window
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.register_buffer("inv_freq", base ** (-torch.arange(0, self.head_dim, 2).double() / self.head_dim),
                             persistent=False)

    def rope(self, x, position_ids):  # x (B, h, T, hd), position_ids (T,)
        angles = position_ids.double()[:, None] * self.inv_freq  # (T, hd/2)
        angles = torch.cat([angles, angles], dim=-1).to(x.dtype)  # (T, hd)
        return x * angles.cos() + rotate_half(x) * angles.sin()

    def forward(self, x, position_ids, padding_mask=None):
        """x (B, T, C) at position_ids (T,); padding_mask (B, T) bool, True = a real token (Hugging Face's polarity)."""
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = self.rope(q, position_ids), self.rope(k, position_ids)
        group = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, nh, T, hd)
        # The module under test builds its mask itself, on purpose: attnspec.masks is for adapters.
        i, j = torch.arange(T, device=x.device)[:, None], torch.arange(T, device=x.device)[None, :]
        visible = j <= i  # (T, T): causal
        if self.sliding_window is not None:
            visible = visible & (j > i - self.sliding_window)
        if padding_mask is not None:
            visible = visible & padding_mask[:, None, None, :]  # (B, 1, T, T)
        scores = self.logits(q, k, visible)  # (B, nh, T, T)
        empty = ~visible.any(dim=-1, keepdim=True)  # rows that see no token (all of it padding): attention 0
        weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
        y = weights @ v  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C): heads side by side

    def logits(self, q, k, visible):
        """Scaled, soft-capped, then masked scores (B, nh, T, T)."""
        scores = (q @ k.transpose(-2, -1)) * self.scaling
        if self.softcap is not None:  # before the mask: a capped -inf would let a hidden key back in
            scores = torch.tanh(scores / self.softcap) * self.softcap
        return scores.masked_fill(~visible, float("-inf"))


class Gemma2Adapter(Adapter):
    name = "my-gemma2-attention"
    module_class = Gemma2Attention
    capabilities = Capabilities(
        causality="always", window_kind="left",   # always causal, a look-back window (Gemma-2's sliding_window)
        grouping="any", rope=Rope("rotate_half", 10000.0),
        takes_softmax_scale=True, takes_softcap=True,         # build gets config.softmax_scale and config.softcap
        key_padding_mask_kinds=("bool",), masks_with_causality=("key_padding_mask",), attn_mask_kinds=(),
        validates_mask_shapes=False, validates_mask_dtypes=False,  # the adapter converts the padding mask
        cross_attention=False, layouts=("batch_first",), bias_values=(False,), returns_weights=False,
        kdim_vdim=False, bias_kv=False, zero_attn=False, attention_dropout=False)

    def build(self, config, *, dtype, device):
        scale = config.softmax_scale if config.softmax_scale is not None else config.head_dim ** -0.5
        window = None if config.window is None else config.window[0] + 1  # (left, None): keys i - left to i
        module = self.module_class(config.embed_dim, config.num_heads, config.kv_heads,
                                   query_pre_attn_scalar=scale ** -2, softcap=config.softcap,
                                   sliding_window=window)
        return module.to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, positions, key_padding_mask=None, **flags):
        return module(query, positions, padding_mask=keep(key_padding_mask)), None  # keep: True = attend

    def get_weights(self, m):
        return from_linears(m.q_proj, m.k_proj, m.v_proj, m.o_proj)  # Wk, Wv: (n_kv_heads * hd, C)

    def set_weights(self, m, w):
        to_linears(w, m.q_proj, m.k_proj, m.v_proj, m.o_proj)


ADAPTER = Gemma2Adapter()


class CappedAfterTheMask(Gemma2Attention):
    """The twin: the soft cap applied after the mask, which turns each hidden key's -inf into -softcap."""

    def logits(self, q, k, visible):
        scores = ((q @ k.transpose(-2, -1)) * self.scaling).masked_fill(~visible, float("-inf"))
        return scores if self.softcap is None else torch.tanh(scores / self.softcap) * self.softcap


class CappedAfterTheMaskAdapter(Gemma2Adapter):
    name = "my-gemma2-attention-capped-after-the-mask"
    module_class = CappedAfterTheMask


BROKEN = CappedAfterTheMaskAdapter()
