"""The varlen and cache-step entry points: how the suite calls them, and the dense call each one also answers.

A varlen kernel is reached through :meth:`VarlenAdapter.attend_varlen`, a cache step through
:meth:`CacheStepAdapter.attend_cache`, each with the canonical call (docs/kernels_varlen.md)::

    attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **options)
    attend_cache(q, k_cache, v_cache, *, cache_seqlens, k=None, v=None, cache_batch_idx=None, block_table=None,
                 rotary_cos=None, rotary_sin=None, rotary_interleaved=True, **options)

Each also answers the dense call (:meth:`KernelAdapter.attend`), so that every dense law certifies it too: a
dense batch (B, L, H, D) is B segments of one length (packed by a view where strides allow), or a cache of
``cache_seqlens = Lk`` rows and no new ones (the keys themselves: their strides reach the kernel).

* :class:`CanonicalVarlen`, :class:`CanonicalCacheStep`: functions with the canonical signatures
  (:data:`attnspec.kernel.declaration.SIGNATURES`), certified as they are; :func:`canonical` picks by signature.
* :class:`FlashInferStyle`: a cache step whose pages are in FlashInfer's CSR form (``kv_indptr``, ``kv_indices``,
  ``kv_last_page_len``), converted exactly from the block table and the lengths.
"""
from __future__ import annotations

import inspect

import torch

from .adapters import CanonicalKernel, KernelAdapter, _resolve, abstract
from .declaration import DeclarationError, KernelCapabilities, capabilities_of, entry_of

DENSE_VIEW_PAGE = 16  # the page size a paged-only cache step's dense call uses


def _out_dense(out, B: int, L: int):
    """A packed output (B * L, Hq, Dv) as the dense call's (B, L, Hq, Dv)."""
    if isinstance(out, torch.Tensor) and out.dim() == 3 and out.shape[0] == B * L:
        return out.view(B, L, *out.shape[1:])
    return out


def _lse_dense(lse, B: int, L: int, layout: str):
    """A packed LSE, (Hq, B * L) or (B * L, Hq), as the dense call's layout (B, Hq, L) or (B, L, Hq)."""
    if not isinstance(lse, torch.Tensor) or lse.dim() != 2:
        return lse  # the case says what is wrong with it
    if layout == "BHL" and lse.shape[1] == B * L:
        return lse.view(lse.shape[0], B, L).transpose(0, 1)  # (Hq, B, L) -> (B, Hq, L)
    if layout == "BLH" and lse.shape[0] == B * L:
        return lse.view(B, L, lse.shape[1])  # (B * L, Hq) -> (B, L, Hq)
    return lse


class VarlenAdapter(KernelAdapter):
    """Base class of a varlen kernel: implement :meth:`attend_varlen`; the dense call packs B equal segments."""

    capabilities = KernelCapabilities(entry="varlen")

    @abstract
    def attend_varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **options):
        raise NotImplementedError

    def attend(self, q, k, v, **options):
        B, Lq = q.shape[:2]
        Bk, Lk = k.shape[:2]
        ints = dict(dtype=torch.int32, device=q.device)
        cu_q, cu_k = torch.arange(B + 1, **ints) * Lq, torch.arange(Bk + 1, **ints) * Lk  # a batch of one length
        packed = [t.flatten(0, 1) for t in (q, k, v)]  # (B * L, H, ·): a view where the strides allow one
        result = self.attend_varlen(*packed, cu_q, cu_k, Lq, Lk, **options)
        if isinstance(result, tuple) and len(result) == 2:
            return _out_dense(result[0], B, Lq), _lse_dense(result[1], B, Lq, self.capabilities.lse_layout)
        return _out_dense(result, B, Lq)  # anything else comes back as it is: the case says what is wrong


class CacheStepAdapter(KernelAdapter):
    """Base class of a cache step: implement :meth:`attend_cache`; the dense call is a cache of Lk rows, no new ones
    (in pages of :data:`DENSE_VIEW_PAGE` rows where only a paged cache is claimed)."""

    capabilities = KernelCapabilities(entry="kvcache", backward=False)

    @abstract
    def attend_cache(self, q, k_cache, v_cache, *, cache_seqlens, **options):
        raise NotImplementedError

    def attend(self, q, k, v, **options):
        Lk = k.shape[1]
        seqlens = torch.full((q.shape[0],), Lk, dtype=torch.int32, device=q.device)
        if self.capabilities.contiguous_cache:
            return self.attend_cache(q, k, v, cache_seqlens=seqlens, **options)
        B, pages = k.shape[0], max(1, -(-Lk // DENSE_VIEW_PAGE))
        table = torch.arange(B * pages, dtype=torch.int32, device=q.device).view(B, pages)  # (B, pages)

        def pool(t):  # (B, Lk, Hkv, ·) -> (B * pages, page, Hkv, ·), the rows past Lk zero
            padded = t.new_zeros(B, pages * DENSE_VIEW_PAGE, *t.shape[2:])
            padded[:, :Lk] = t
            return padded.view(B * pages, DENSE_VIEW_PAGE, *t.shape[2:])

        return self.attend_cache(q, pool(k), pool(v), cache_seqlens=seqlens, block_table=table, **options)


class CanonicalVarlen(VarlenAdapter):
    """A function with the canonical varlen signature, certified as it is (q, k, v by position, the rest by keyword)."""

    def __init__(self, fn, *, name: str | None = None, capabilities: KernelCapabilities | None = None):
        if not callable(fn):
            raise DeclarationError(f"CanonicalVarlen(fn={fn!r}): fn should be a function")
        self.fn = fn
        self.name = name or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
        self.capabilities = capabilities or capabilities_of(fn, self.name)

    def attend_varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **options):
        return self.fn(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                       max_seqlen_k=max_seqlen_k, **options)


class CanonicalCacheStep(CacheStepAdapter):
    """A function with the canonical cache-step signature, certified as it is (q, k_cache, v_cache by position)."""

    def __init__(self, fn, *, name: str | None = None, capabilities: KernelCapabilities | None = None):
        if not callable(fn):
            raise DeclarationError(f"CanonicalCacheStep(fn={fn!r}): fn should be a function")
        self.fn = fn
        self.name = name or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
        self.capabilities = capabilities or capabilities_of(fn, self.name)
        params = inspect.signature(fn).parameters
        self._interleaved_keyword = "rotary_interleaved" in params or any(
            p.kind == p.VAR_KEYWORD for p in params.values())

    def attend_cache(self, q, k_cache, v_cache, **options):
        if not self._interleaved_keyword and options.get("rotary_interleaved", True):
            options.pop("rotary_interleaved", None)  # it has no such keyword: interleaved, its only claim
        return self.fn(q, k_cache, v_cache, **options)


def canonical(fn, *, name: str | None = None) -> KernelAdapter:
    """The adapter of a function with one of the canonical signatures (dense, varlen or the cache step)."""
    try:
        names = set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        names = set()
    cls = {"dense": CanonicalKernel, "varlen": CanonicalVarlen, "kvcache": CanonicalCacheStep}[entry_of(names)]
    return cls(fn, name=name)


def to_csr(block_table: torch.Tensor, lengths: torch.Tensor, page_size: int) -> tuple:
    """FlashInfer's CSR pages from a block table (B, max_pages) and each item's rows (B,): ``kv_indptr`` (B + 1,),
    ``kv_indices`` (the pages each item uses, in order), ``kv_last_page_len`` (B,), in [1, page_size] for an item
    with rows, 0 for one without; all int32."""
    pages = (lengths.long() + page_size - 1) // page_size  # (B,)
    if bool((pages > block_table.shape[1]).any()):
        raise ValueError(f"lengths {lengths.tolist()} need more than the block table's {block_table.shape[1]} pages "
                         f"of {page_size} rows")
    indptr = torch.cat([pages.new_zeros(1), pages.cumsum(0)])  # (B + 1,)
    indices = torch.cat([block_table[b, :int(n)] for b, n in enumerate(pages)]) if len(pages) else \
        block_table.new_zeros(0)
    last = torch.where(pages > 0, lengths.long() - (pages - 1) * page_size, torch.zeros_like(pages))
    as32 = lambda t: t.to(dtype=torch.int32, device=block_table.device)  # noqa: E731
    return as32(indptr), as32(indices), as32(last)


class FlashInferStyle(CacheStepAdapter):
    """A paged cache step in FlashInfer's form: an ``append(k, v, k_pages, v_pages, kv_indptr, kv_indices,
    kv_last_page_len, positions)`` that writes the new rows, then ``attend(q, k_pages, v_pages, kv_indptr,
    kv_indices, kv_last_page_len, *, causal, sm_scale, window_left, logits_soft_cap, return_lse)`` (FlashInfer's
    paged prefill/decode wrappers' arguments, planned and run at once). Pages are (num_pages, page_size, Hkv, D)
    (FlashInfer's "NHD"); its LSE is base 2, (B, Lq, Hq) per call, which the adapter declares.

    ``append`` and ``attend``: callables or ``"pkg.module:name"``. The block table and lengths become the CSR
    arrays exactly (:func:`to_csr`); a window becomes ``window_left`` (FlashInfer's windows are causal)."""

    def __init__(self, name: str, *, append, attend, devices=("cpu",),
                 dtypes=(torch.float64, torch.float32, torch.bfloat16)):
        self.name, self.append, self.attend_csr = name, append, attend
        self.capabilities = KernelCapabilities(
            entry="kvcache", devices=devices, dtypes=dtypes, backward=False, contiguous_cache=False,
            cache_batch_idx=False, rotary=False, num_splits=False, alibi=False, lse_base="2", lse_layout="BLH",
            window=False, longer_queries=True)

    def attend_cache(self, q, k_cache, v_cache, *, cache_seqlens, block_table=None, k=None, v=None, causal=False,
                     softmax_scale=None, softcap=0.0, return_lse=False):
        if block_table is None:
            raise ValueError("FlashInfer's layout is paged: a block_table is required")
        if block_table.dim() != 2 or block_table.shape[0] != q.shape[0] or tuple(cache_seqlens.shape) != q.shape[:1]:
            raise ValueError(f"block_table {tuple(block_table.shape)} and cache_seqlens {tuple(cache_seqlens.shape)} "
                             f"should have one row per item of q's batch of {q.shape[0]}")
        lengths = cache_seqlens.long() + (0 if k is None else k.shape[1])  # the rows each item has after the append
        indptr, indices, last = to_csr(block_table, lengths, k_cache.shape[1])
        if k is not None:
            positions = cache_seqlens.long()[:, None] + torch.arange(k.shape[1], device=k.device)  # (B, Ln)
            _resolve(self.append)(k, v, k_cache, v_cache, indptr, indices, last, positions)
        return _resolve(self.attend_csr)(q, k_cache, v_cache, indptr, indices, last, causal=causal,
                                         sm_scale=softmax_scale, logits_soft_cap=softcap, return_lse=return_lse)
