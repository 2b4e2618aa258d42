"""The README's always-causal example, for real: a decoder self-attention with a fused qkv projection."""
import torch
import torch.nn.functional as F
from torch import nn

from attnspec import Adapter, Capabilities, from_linears, to_linears


class CausalAttention(nn.Module):
    """GPT-style self-attention on (B, T, C): always causal, fused ``c_attn``, output ``c_proj``."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        qkv = self.c_attn(x).reshape(B, T, 3, self.n_head, C // self.n_head)  # (B, T, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C): heads side by side


class AlwaysCausal(Adapter):
    name = "my-causal-attention"
    capabilities = Capabilities(               # always causal: no flag to pass, no masks beside it
        causality="always", masks_with_causality=(), cross_attention=False, layouts=("batch_first",),
        key_padding_mask_kinds=(), attn_mask_kinds=(), returns_weights=False, kdim_vdim=False, bias_kv=False,
        zero_attn=False, attention_dropout=False)

    def build(self, config, *, dtype, device):
        return CausalAttention(config.embed_dim, config.num_heads).to(device=device, dtype=dtype)

    def call(self, module, query, key, value, *, is_causal=True, **masks_and_flags):
        return module(query), None             # always is_causal=True here; query is key is value

    def get_weights(self, m):
        return from_linears(qkv=m.c_attn, out=m.c_proj)  # c_attn's rows: [Wq; Wk; Wv]

    def set_weights(self, m, w):
        to_linears(w, qkv=m.c_attn, out=m.c_proj)


ADAPTER = AlwaysCausal()


class SeesItsNeighbour(CausalAttention):
    """The classic off-by-one: the mask built with ``triu(2)`` instead of ``triu(1)`` lets token i see token i + 1."""

    def forward(self, x):
        B, T, C = x.shape
        qkv = self.c_attn(x).reshape(B, T, 3, self.n_head, C // self.n_head)  # (B, T, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        # The module under test builds its mask itself, on purpose: attnspec.masks is for adapters.
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(2)  # (T, T): True = hidden
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=~future)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class BrokenAdapter(AlwaysCausal):
    name = "my-causal-attention-sees-its-neighbour"

    def build(self, config, *, dtype, device):
        return SeesItsNeighbour(config.embed_dim, config.num_heads).to(device=device, dtype=dtype)


BROKEN = BrokenAdapter()
