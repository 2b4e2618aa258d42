"""flash-attn 2's own ``flash_attn_func``, certified as it is through an adapter (a GPU with flash-attn installed;
skipped, saying why, elsewhere).

Its signature (flash_attn/flash_attn_interface.py)::

    flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False)

q (B, Lq, Hq, D), k and v (B, Lk, Hkv, D): the canonical layout. ``dropout_p`` comes second, positionally,
and is always 0 here; with ``return_attn_probs=True`` it returns ``(out, softmax_lse, S_dmask)``, the LSE
(B, Hq, Lq) float32, natural log. fp16 and bf16 only; head widths up to 256; Dv = D.
"""
from __future__ import annotations

import importlib.util

import torch

from attnspec.kernel import KernelAdapter, KernelCapabilities


class FlashAttnFunc(KernelAdapter):
    """``flash_attn.flash_attn_func`` in the canonical call (see the module docstring)."""

    name = "flash_attn_func (flash-attn 2)"
    capabilities = KernelCapabilities(devices=("cuda",), dtypes=(torch.float16, torch.bfloat16),
                                      head_dims=range(1, 257), distinct_value_dim=False)

    def unavailable(self, device: str) -> str | None:
        if importlib.util.find_spec("flash_attn") is None:
            return "flash-attn is not installed (pip install flash-attn needs a CUDA toolkit)"
        return None

    def attend(self, q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0,
               alibi_slopes=None, return_lse=False):
        from flash_attn import flash_attn_func
        result = flash_attn_func(q, k, v, 0.0, softmax_scale, causal, tuple(window_size), softcap, alibi_slopes,
                                 False, return_lse)  # dropout_p, ..., deterministic, return_attn_probs
        if not return_lse:
            return result
        out, lse, _ = result  # (out, softmax_lse, S_dmask)
        return out, lse


FLASH_ATTN_FUNC = FlashAttnFunc()
