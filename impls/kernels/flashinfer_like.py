"""A CPU stand-in with FlashInfer's paged layout, certified through :class:`attnspec.kernel.entries.FlashInferStyle`.

FlashInfer (GPU only) keeps a batch's pages in CSR form: item b's pages are ``kv_indices[kv_indptr[b]:kv_indptr[b + 1]]``
in order, and its last page holds ``kv_last_page_len[b]`` rows (1 to page_size; 0 for an item with no rows). Pages
are (num_pages, page_size, Hkv, D) ("NHD"). Its attention returns the LSE in base 2, as (B, Lq, Hq) here. These two
functions take that layout, on the tiled kernel of impls/kernels/tiled.py, so that the adapter's conversion (block
table and lengths to CSR, base 2 to natural log) is certified on the CPU.
"""
from __future__ import annotations

import math

import torch

from attnspec.kernel.entries import FlashInferStyle

from .tiled import TiledAttention

TILED = TiledAttention()


def _rows(pages, kv_indptr, kv_indices, kv_last_page_len, b: int):
    """Item b's rows, (n, Hkv, ·): its pages in order, the last one cut to its length."""
    ids = kv_indices[kv_indptr[b]:kv_indptr[b + 1]].long()
    n = 0 if len(ids) == 0 else (len(ids) - 1) * pages.shape[1] + int(kv_last_page_len[b])
    return pages[ids].flatten(0, 1)[:n]  # (pages_b * page_size, Hkv, ·) cut to n


def append_paged_kv_cache(k, v, k_pages, v_pages, kv_indptr, kv_indices, kv_last_page_len, positions):
    """Write item b's new rows k[b], v[b] (Ln, Hkv, ·) at its rows ``positions[b]`` (Ln,), in place."""
    ps = k_pages.shape[1]
    for b in range(k.shape[0]):
        ids = kv_indices[kv_indptr[b]:kv_indptr[b + 1]].long()
        at = (ids[positions[b] // ps], positions[b] % ps)
        k_pages[at], v_pages[at] = k[b].to(k_pages.dtype), v[b].to(v_pages.dtype)


def batch_attention_with_paged_kv_cache(q, k_pages, v_pages, kv_indptr, kv_indices, kv_last_page_len, *,
                                        causal=False, sm_scale=None, logits_soft_cap=0.0, return_lse=False):
    """q (B, Lq, Hq, D) over each item's rows, bottom-right; ``(out, lse)`` with lse (B, Lq, Hq), base 2."""
    if kv_indptr.shape[0] != q.shape[0] + 1:
        raise ValueError(f"kv_indptr has {kv_indptr.shape[0]} entries for a batch of {q.shape[0]}")
    outs, lses = [], []
    for b in range(q.shape[0]):
        k, v = (_rows(t, kv_indptr, kv_indices, kv_last_page_len, b)[None] for t in (k_pages, v_pages))
        out, lse = TILED(q[b:b + 1], k, v, causal=causal, softmax_scale=sm_scale, softcap=logits_soft_cap,
                         return_lse=True)
        outs.append(out)
        lses.append(lse.transpose(1, 2) / math.log(2))  # (1, Lq, Hq), log2-sum-exp2
    out, lse = torch.cat(outs), torch.cat(lses)
    return (out, lse) if return_lse else out


FLASHINFER_STYLE = FlashInferStyle(
    "flashinfer-style pages (CPU stand-in)",
    append="attnspec.impls.kernels.flashinfer_like:append_paged_kv_cache",
    attend="attnspec.impls.kernels.flashinfer_like:batch_attention_with_paged_kv_cache")
FLASHINFER_STYLE.origin = "attnspec.impls.kernels.flashinfer_like:FLASHINFER_STYLE"
