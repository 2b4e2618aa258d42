"""A CPU stand-in with xformers' ``memory_efficient_attention`` signature, so that the xformers-style adapter
(:class:`attnspec.kernel.XformersStyle`: a dense additive ``attn_bias`` for the mask and ALiBi) is certified
where xformers cannot run (its kernels are GPU-only). Inside, ``F.scaled_dot_product_attention``'s math backend."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnspec.kernel import XformersStyle


def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
    """xformers' call: (B, M, H, K) tensors, ``attn_bias`` added to the scores (B, H, M, N), dropout ``p``."""
    if p:
        raise ValueError("dropout is not supported here")
    qh, kh, vh = (t.transpose(1, 2) for t in (query, key, value))  # (B, H, L, K)
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_bias, scale=scale)  # (B, H, M, Kv)
    if attn_bias is not None:  # a row whose bias is -inf everywhere attends to nothing: 0, as the contract says
        out = torch.where(torch.isneginf(attn_bias).all(-1, keepdim=True), torch.zeros_like(out), out)
    return out.transpose(1, 2)  # (B, M, H, Kv)


XFORMERS_STYLE_CPU = XformersStyle("xformers-style attn_bias (kernel)",
                                   fn="attnspec.impls.kernels.xformers_like:memory_efficient_attention",
                                   devices=("cpu",), dtypes=(torch.float64, torch.float32, torch.bfloat16))
XFORMERS = XformersStyle("xformers memory_efficient_attention (kernel)")  # the real one: GPU, xformers installed
