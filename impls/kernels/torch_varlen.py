"""torch's own varlen attention (``torch.nn.attention.varlen.varlen_attn``, torch >= 2.10, CUDA only), certified
through a varlen adapter; skipped, saying why, without CUDA.

Its signature: ``varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None)``: causal is the window
``(-1, 0)`` (a window and the causal flag combine as ``(left, 0)``), grouped heads need ``enable_gqa``, the LSE comes
with ``return_aux=AuxRequest(lse=True)`` as (Tq, Hq) (declared ``lse_layout="BLH"``). No softcap or ALiBi.
``seqused_k`` is inference-only there (no backward): it is not claimed, so that the backward is certified.
"""
from __future__ import annotations

import importlib.util

import torch

from attnspec.kernel import KernelCapabilities
from attnspec.kernel.entries import VarlenAdapter


class TorchVarlen(VarlenAdapter):
    """``varlen_attn`` in the canonical varlen call (see the module docstring)."""

    name = "varlen_attn (torch)"
    capabilities = KernelCapabilities(entry="varlen", devices=("cuda",), dtypes=(torch.float16, torch.bfloat16),
                                      head_dims=range(8, 257, 8), distinct_value_dim=False, softcap=False, alibi=False,
                                      seqused_k=False, lse_layout="BLH")

    def unavailable(self, device: str) -> str | None:
        if importlib.util.find_spec("torch.nn.attention.varlen") is None:
            return f"torch {torch.__version__} has no torch.nn.attention.varlen"
        return None

    def attend_varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                      softmax_scale=None, window_size=(-1, -1), num_splits=0, return_lse=False):
        from torch.nn.attention.varlen import AuxRequest, varlen_attn
        left, right = window_size
        result = varlen_attn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                             return_aux=AuxRequest(lse=True) if return_lse else None, scale=softmax_scale,
                             window_size=(left, 0 if causal else right), enable_gqa=q.shape[1] != k.shape[1],
                             num_splits=None if num_splits == 0 else num_splits)
        return tuple(result) if return_lse else result


TORCH_VARLEN = TorchVarlen()
