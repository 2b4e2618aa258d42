"""The README's adapter example, for real: a timm-style attention with a fused qkv projection."""
import torch
from torch import nn

from attnspec import Adapter, Capabilities, from_linears, to_linears


class MyAttention(nn.Module):
    """Self-attention on (B, L, E) with one fused qkv projection, as vision transformers write it."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, L, E = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, E // self.num_heads)  # (B, L, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, hd)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # (B, H, L, hd)
        return self.proj(y.transpose(1, 2).reshape(B, L, E))  # (B, L, E): heads side by side


class FusedQKV(Adapter):
    name = "my-fused-attention"
    capabilities = Capabilities(
        cross_attention=False, layouts=("batch_first",), key_padding_mask_kinds=(), attn_mask_kinds=(),
        returns_weights=False, kdim_vdim=False, bias_kv=False, zero_attn=False,
        bias_values=(True,), attention_dropout=False)

    def build(self, config, *, dtype, device):
        return MyAttention(config.embed_dim, config.num_heads).to(device=device, dtype=dtype)

    def call(self, module, query, key, value, **masks_and_flags):
        return module(query), None

    def get_weights(self, m):
        return from_linears(qkv=m.qkv, out=m.proj)  # qkv's rows: [Wq; Wk; Wv]

    def set_weights(self, m, w):
        to_linears(w, qkv=m.qkv, out=m.proj)


ADAPTER = FusedQKV()


class ScaledByWidth(MyAttention):
    """The classic bug: scale by sqrt(E) instead of sqrt(head_dim) (lucidrains/vit-pytorch#65)."""

    def forward(self, x):
        B, L, E = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, E // self.num_heads)  # (B, L, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, hd)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=E ** -0.5)  # (B, H, L, hd)
        return self.proj(y.transpose(1, 2).reshape(B, L, E))  # (B, L, E)


class BrokenAdapter(FusedQKV):
    name = "my-fused-attention-scaled-by-width"

    def build(self, config, *, dtype, device):
        return ScaledByWidth(config.embed_dim, config.num_heads).to(device=device, dtype=dtype)


BROKEN = BrokenAdapter()


class PartialDropIn(nn.MultiheadAttention):
    """A drop-in that declares, in one place, the parts of the API it does not support."""

    attnspec_capabilities = {"bias_kv": False, "kdim_vdim": False, "returns_per_head_weights": False}
