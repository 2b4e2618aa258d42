"""flash-attn 2's own ``flash_attn_func``, ``flash_attn_varlen_func`` and ``flash_attn_with_kvcache``, certified as
they are through adapters (a GPU with flash-attn installed; skipped, saying why, elsewhere).

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
from attnspec.kernel.entries import CacheStepAdapter, VarlenAdapter


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


class FlashAttnVarlenFunc(VarlenAdapter):
    """``flash_attn.flash_attn_varlen_func`` (flash-attn 2) in the canonical varlen call: q, k, v packed (T, H, D),
    ``dropout_p`` positional after ``max_seqlen_k``; with ``return_attn_probs=True`` it returns ``(out, softmax_lse,
    S_dmask)``, the LSE (Hq, Tq) float32, natural log. No ``seqused_k`` or ``num_splits`` (flash-attn 3 has them)."""

    name = "flash_attn_varlen_func (flash-attn 2)"
    capabilities = KernelCapabilities(entry="varlen", devices=("cuda",), dtypes=(torch.float16, torch.bfloat16),
                                      head_dims=range(1, 257), distinct_value_dim=False, seqused_k=False,
                                      num_splits=False)

    def unavailable(self, device: str) -> str | None:
        return FLASH_ATTN_FUNC.unavailable(device)

    def attend_varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                      softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, return_lse=False):
        from flash_attn import flash_attn_varlen_func
        result = flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, 0.0,
                                        softmax_scale, causal, tuple(window_size), softcap, alibi_slopes, False,
                                        return_lse)  # dropout_p, ..., deterministic, return_attn_probs
        return result[:2] if return_lse else result


class FlashAttnWithKvcache(CacheStepAdapter):
    """``flash_attn.flash_attn_with_kvcache`` (flash-attn 2), its own signature but for ``return_softmax_lse``. Its
    pages are multiples of 256 rows; with rotary and neither causal nor a window it turns every query at
    ``cache_seqlens`` (flash-attn #1752): declared ``rotary_queries="flash-attn"``."""

    name = "flash_attn_with_kvcache (flash-attn 2)"
    capabilities = KernelCapabilities(entry="kvcache", devices=("cuda",), dtypes=(torch.float16, torch.bfloat16),
                                      head_dims=range(1, 257), distinct_value_dim=False, backward=False,
                                      page_sizes=range(256, 2 ** 16, 256), rotary_queries="flash-attn")

    def unavailable(self, device: str) -> str | None:
        return FLASH_ATTN_FUNC.unavailable(device)

    def attend_cache(self, q, k_cache, v_cache, *, return_lse=False, **options):
        from flash_attn import flash_attn_with_kvcache
        return flash_attn_with_kvcache(q, k_cache, v_cache, return_softmax_lse=return_lse, **options)


FLASH_ATTN_VARLEN = FlashAttnVarlenFunc()
FLASH_ATTN_KVCACHE = FlashAttnWithKvcache()
