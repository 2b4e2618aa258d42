"""Seed 003 ("即插即用卷积之TalkingHeadAttn"): talking-heads self-attention.

The seed's computation is kept: a fused ``qkv`` projection (rows ``[q; k; v]``,
head-major within each), ``q`` scaled by ``head_dim ** -0.5``, logits mixed
across heads by ``proj_l`` before the softmax, weights mixed by ``proj_w`` after
it, ``attn_drop``, then ``proj``. Fixed: a ``dim`` that ``num_heads`` does not
divide raises ValueError instead of a reshape error at the first call.

Canonical weights: ``Wq/Wk/Wv`` are the three row blocks of ``qkv``, ``Wo/bo`` is
``proj``, ``mix_pre`` is ``proj_l`` and ``mix_post`` is ``proj_w``. ``Config.bias``
maps to ``qkv_bias`` (``proj`` always has a bias) and ``Config.dropout`` to
``attn_drop``. Self-attention on batch-first ``(B, N, C)`` input; no masks, no
returned weights.
"""
from __future__ import annotations

from torch import nn

from attnspec.weights import CanonicalWeights, from_linears, to_linears

from ._self_attention import CAPABILITIES, SelfAttentionAdapter


class TalkingHeadAttn(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, attn_drop=0., proj_drop=0.):
        super().__init__()
        if dim <= 0 or num_heads <= 0:
            raise ValueError(f"dim={dim} and num_heads={num_heads} should be positive")
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_l = nn.Linear(num_heads, num_heads)  # mixes logits across heads
        self.proj_w = nn.Linear(num_heads, num_heads)  # mixes weights across heads
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        H = self.num_heads
        qkv = self.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # (B, H, N, hd) each
        attn = q @ k.transpose(-2, -1)  # (B, H, N, N)
        attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # heads last, mixed, back: (B, H, N, N)
        attn = attn.softmax(dim=-1)  # over the keys
        attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, H, N, N)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)  # (B, H, N, hd) -> (B, N, H, hd) -> (B, N, C)
        x = self.proj(x)
        return self.proj_drop(x)  # (B, N, C)


class TalkingHeadsAdapter(SelfAttentionAdapter):
    name = "seed003.talking_heads"
    capabilities = CAPABILITIES.replace(bias_values=(True, False), attention_dropout=True, head_mixing=True)

    def build(self, config, *, dtype, device):
        module = TalkingHeadAttn(config.embed_dim, config.num_heads, qkv_bias=config.bias,
                                 attn_drop=config.dropout)
        return module.to(device=device, dtype=dtype)

    @staticmethod
    def _linears(module):
        """``qkv`` (rows [q; k; v], (E, E) each), ``proj``, and the (H, H) head mixers as from_linears takes them."""
        return dict(qkv=module.qkv, out=module.proj, mix_pre=module.proj_l, mix_post=module.proj_w)

    def get_weights(self, module) -> CanonicalWeights:
        return from_linears(**self._linears(module))

    def set_weights(self, module, weights: CanonicalWeights) -> None:
        to_linears(weights, **self._linears(module))


ADAPTER = TalkingHeadsAdapter()
