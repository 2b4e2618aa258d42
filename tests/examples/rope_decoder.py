"""The README's decoder example, for real: Llama-style self-attention with RoPE and a (keys, values) cache."""
import torch
import torch.nn.functional as F
from torch import nn

from attnspec import Adapter, Capabilities, Rope, from_linears, to_linears


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class RotaryDecoderAttention(nn.Module):
    """q/k/v/o projections without bias, rotate_half RoPE (base 10000), the cache passed in and out as (k, v)."""

    def __init__(self, dim: int, n_heads: int, base: float = 10000.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim={dim} is not divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.v_proj, self.o_proj = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.register_buffer("inv_freq", base ** (-torch.arange(0, self.head_dim, 2).double() / self.head_dim),
                             persistent=False)

    def rope(self, x, position_ids):  # x (B, nh, T, hd), position_ids (B, T) or (T,)
        angles = position_ids.double()[..., None] * self.inv_freq  # (B, T, hd/2) or (T, hd/2)
        angles = torch.cat([angles, angles], dim=-1).to(x.dtype)  # (.., T, hd)
        cos, sin = angles.cos(), angles.sin()
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd)
        return x * cos + rotate_half(x) * sin

    def forward(self, x, position_ids, past=None, padding_mask=None):
        """x (B, T, C) at position_ids; past (k, v) of earlier tokens; padding_mask (B, S) True = padding."""
        B, T, C = x.shape
        split = lambda t: t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # noqa: E731  (B, nh, T, hd)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        q, k = self.rope(q, position_ids), self.rope(k, position_ids)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, nh, S, hd)
        S = k.shape[2]
        # The module under test merges its masks itself, on purpose: attnspec.masks is for adapters.
        visible = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)  # bottom-right causal
        if padding_mask is not None:
            visible = visible & ~padding_mask[:, None, None, :]  # (B, 1, T, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C)), (k, v)  # (B, T, C): heads side by side


class RotaryDecoder(Adapter):
    name = "my-rotary-decoder"
    capabilities = Capabilities(                 # always causal self-attention, no masks but decoding's padding
        causality="always", masks_with_causality=(), cross_attention=False, layouts=("batch_first",), bias_values=(False,),
        key_padding_mask_kinds=(), attn_mask_kinds=(), returns_weights=False, kdim_vdim=False, bias_kv=False,
        zero_attn=False, attention_dropout=False,
        rope=Rope("rotate_half", base=10000.0),  # the convention, base and rotated fraction (1: whole head)
        decoding=True)                           # new_cache and decode below

    def build(self, config, *, dtype, device):
        return RotaryDecoderAttention(config.embed_dim, config.num_heads).to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, positions, key_positions=None, **masks_and_flags):
        return module(query, positions)[0], None  # self-attention: key positions are the query's

    def new_cache(self, module, batch_size, max_length):
        return None                               # no past yet

    def decode(self, module, cache, x, *, positions, key_padding_mask=None):
        return module(x, positions, past=cache, padding_mask=key_padding_mask)  # (output, new past)

    def get_weights(self, m):
        return from_linears(m.q_proj, m.k_proj, m.v_proj, m.o_proj)  # bias=False: no biases

    def set_weights(self, m, w):
        to_linears(w, m.q_proj, m.k_proj, m.v_proj, m.o_proj)


ADAPTER = RotaryDecoder()


class RestartsPositions(RotaryDecoderAttention):
    """The classic decoding bug: each call numbers its tokens from 0, ignoring the tokens in the cache."""

    def forward(self, x, position_ids, past=None, padding_mask=None):
        return super().forward(x, torch.arange(x.shape[1], device=x.device), past, padding_mask)


class BrokenAdapter(RotaryDecoder):
    name = "my-rotary-decoder-restarting-positions"

    def build(self, config, *, dtype, device):
        return RestartsPositions(config.embed_dim, config.num_heads).to(device=device, dtype=dtype)


BROKEN = BrokenAdapter()
