"""The varlen and cache-step zoo: mutants of :class:`attnspec.impls.kernels.paged.PagedAttention`, one realistic bug each.

Each mutant overrides one step of the bundled varlen + paged + cache-step kernel (built on the tiled FlashAttention-2
kernel); the comment above it names the bug (most from the trackers in shared/research/kernel_anchors.md) and the
configurations that hide it. ``ENTRY`` says which entry point a mutant is certified through (its bug's).
``VARLEN_MUTANTS`` and ``VARLEN_CORRECT`` pair names with kernels; :func:`varlen_adapter` wraps one as ``--impl``
would, with the bundled kernel's declaration. Names: B segments or items, T packed rows, S rows allocated, ps the
page size, n an item's rows after the append.
"""
from __future__ import annotations

import inspect
import math

import torch

from attnspec.impls.kernels import paged as bundled
from attnspec.impls.kernels.paged import PagedAttention, SplitTiled
from attnspec.kernel.declaration import capabilities_of
from attnspec.kernel.entries import CanonicalCacheStep, CanonicalVarlen


class Varlen(PagedAttention):
    """Certified through its varlen entry point."""
    ENTRY = "varlen"


class Cache(PagedAttention):
    """Certified through its cache step."""
    ENTRY = "kvcache"


# ============================================================== varlen offsets and segments

# segment b > 0 reads its keys one row late (cu_seqlens_k[b] + 1): an offset off by one; hidden with one segment
class SegmentKeysOneLate(Varlen):
    def check_varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k):
        return [(q0, q1, k0 + (b > 0), k1 + (b > 0))
                for b, (q0, q1, k0, k1) in enumerate(super().check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k))]


# the block-diagonal mask is one block too wide: segment b also sees segment b - 1's keys (cross-talk); hidden with one segment
class PreviousSegmentLeaks(Varlen):
    def check_varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k):
        segments = super().check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k)
        return [(q0, q1, segments[b - 1][2] if b else k0, k1) for b, (q0, q1, k0, k1) in enumerate(segments)]


# a segment without keys (or queries) crashes instead of giving output 0 / no rows (flash-attn #1537, #2562); hidden without zero-length segments
class ZeroLengthSegmentCrash(Varlen):
    def attend(self, q, k, v, slopes, options, num_splits):
        if q.shape[1] == 0 or k.shape[1] == 0:
            raise RuntimeError(f"cannot reshape tensor of 0 elements into shape [-1, {q.shape[2]}, {q.shape[3]}]")
        return super().attend(q, k, v, slopes, options, num_splits)


# the keys are right-aligned to max_seqlen_k, not to each segment's length: the causal diagonal, window and ALiBi move with
# max_seqlen_k; hidden when every segment has max_seqlen_k keys, or without causal, window and ALiBi
class MaxSeqlenAlignment(Varlen):
    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **options):
        self._max_k = max_seqlen_k
        return super().varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **options)

    def attend(self, q, k, v, slopes, options, num_splits):
        pad = max(self._max_k - k.shape[1], 0)  # zero keys past the segment, never read: only their positions count
        padded = [torch.cat([t, t.new_zeros(1, pad, *t.shape[2:])], dim=1) for t in (k, v)]  # (1, max_k, Hkv, ·)
        o = dict(scale=q.shape[-1] ** -0.5 if options["softmax_scale"] is None else float(options["softmax_scale"]),
                 left=options["window_size"][0], right=0 if options["causal"] else options["window_size"][1],
                 softcap=float(options["softcap"]), slopes=slopes, splits=1, keys=(0, k.shape[1]))
        return self.tiled.run(q, *padded, o)


# seqused_k is accepted and ignored: every key of the segment is used; hidden unless seqused_k is shorter than a segment
class SequsedIgnored(Varlen):
    def check_varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k):
        return super().check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, None)


# the gradient rows of tokens no segment uses are left uninitialised (torch.empty: NaN here) (flash-attn PR #2324, pytorch
# #176793); hidden without rows past cu_seqlens[-1] or seqused_k, or without backward
class GradRowsUninitialised(Varlen):
    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **options):
        used = self.check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, options.get("seqused_k"))
        rows_q = torch.zeros(q.shape[0], dtype=torch.bool)
        rows_k = torch.zeros(k.shape[0], dtype=torch.bool)
        for q0, q1, k0, k1 in used:
            rows_q[q0:q1], rows_k[k0:k1] = True, True
        q, k, v = Uninitialised.apply(q, rows_q), Uninitialised.apply(k, rows_k), Uninitialised.apply(v, rows_k)
        return super().varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **options)


class Uninitialised(torch.autograd.Function):
    """Identity forward; backward leaves the rows not in ``used`` as garbage (NaN), as an unwritten torch.empty would."""

    @staticmethod
    def forward(ctx, x, used):
        ctx.used = used
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.masked_fill(~ctx.used.to(grad.device)[:, None, None], float("nan")), None


# cu_seqlens are taken as they come: no check that they start at 0, never decrease and stay within the tensor (slicing
# then truncates silently; xformers #1122); hidden unless such cu_seqlens are passed
class CuSeqlensUnchecked(Varlen):
    def check_offsets(self, cu, rows, name, B):
        return cu.tolist()


# ============================================================== pages

# the last page is read whole: the slots past the item's rows count as keys (FlashInfer #941); hidden unless paged with a
# partly filled last page
class PartialPageReadWhole(Cache):
    def rows(self, cache, b, n, cache_batch_idx, block_table):
        if block_table is None:
            return super().rows(cache, b, n, cache_batch_idx, block_table)
        ps = cache.shape[1]
        return super().rows(cache, b, math.ceil(n / ps) * ps, cache_batch_idx, block_table)


# an item's pages are gathered in the order of their ids in the pool, not in the block table's order; hidden with one page
# per item, or pages listed in increasing order
class PagesInIdOrder(Cache):
    def places(self, k_cache, b, positions, cache_batch_idx, block_table):
        if block_table is None:
            return super().places(k_cache, b, positions, cache_batch_idx, block_table)
        ps = k_cache.shape[1]
        pages = int(math.ceil((int(positions.max()) + 1) / ps)) if positions.numel() else 0
        ordered = block_table[b, :pages].sort().values.long()
        return ordered[positions // ps], positions % ps


# a page index past the table is clamped to its last column (a silent read, flash-attn #2709): no check that the rows fit
# max_pages x page_size; hidden unless cache_seqlens + Ln exceed a paged allocation
class PageIndexClamped(Cache):
    def check_cache(self, q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table, rotary_cos):
        if block_table is None:
            return super().check_cache(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table, rotary_cos)
        return cache_seqlens.tolist()

    def places(self, k_cache, b, positions, cache_batch_idx, block_table):
        if block_table is None:
            return super().places(k_cache, b, positions, cache_batch_idx, block_table)
        ps, last = k_cache.shape[1], block_table.shape[1] - 1
        return block_table[b].long()[(positions // ps).clamp(max=last)], positions % ps


# ============================================================== the cache step

# the causal diagonal, window and ALiBi are aligned to the allocated rows S, not to the item's rows (flash-attn #1417: the
# result changes with the allocated cache length); hidden when every item fills its allocation, or without them
class AllocatedLengthAlignment(Cache):
    def rows(self, cache, b, n, cache_batch_idx, block_table):
        self._n = n
        full = cache.shape[1] if block_table is None else block_table.shape[1] * cache.shape[1]
        return super().rows(cache, b, full, cache_batch_idx, block_table)  # the whole allocation, masked below

    def attend(self, q, k, v, slopes, options, num_splits):
        o = dict(scale=q.shape[-1] ** -0.5 if options["softmax_scale"] is None else float(options["softmax_scale"]),
                 left=options["window_size"][0], right=0 if options["causal"] else options["window_size"][1],
                 softcap=float(options["softcap"]), slopes=slopes, splits=1, keys=(0, self._n))
        return self.tiled.run(q, k, v, o)


# the new rows are written one row late, at [cache_seqlens + 1, cache_seqlens + Ln + 1); hidden without new rows
class AppendOneRowOff(Cache):
    def append(self, k_cache, v_cache, k, v, lengths, cache_batch_idx, block_table):
        super().append(k_cache, v_cache, k, v, [n + 1 for n in lengths], cache_batch_idx, block_table)


# the append ignores cache_batch_idx and writes item b's rows into cache row b (flash-attn #772); hidden without new rows
# or with cache_batch_idx the identity
class AppendIgnoresBatchIdx(Cache):
    def append(self, k_cache, v_cache, k, v, lengths, cache_batch_idx, block_table):
        super().append(k_cache, v_cache, k, v, lengths, None, block_table)


# the new keys (and queries) are rotated from position 0, not from cache_seqlens (their place in the sequence); hidden
# without rotary or with empty caches
class RotaryFromZero(Cache):
    def positions(self, starts, L):
        return super().positions(torch.zeros_like(starts), L)


# rows past an item's length are read to fill a 16-row tile and multiplied by weight 0: 0 x NaN = NaN (flash-attn #1745,
# FlashInfer #3716); hidden while those rows hold finite values
class NaNPaddingLeaks(Cache):
    def rows(self, cache, b, n, cache_batch_idx, block_table):
        full = cache.shape[1] if block_table is None else block_table.shape[1] * cache.shape[1]
        tile = min(-(-n // 16) * 16, full)
        rows = super().rows(cache, b, tile, cache_batch_idx, block_table)
        if cache is self._values:
            self._padding = rows[:, n:]  # (1, tile - n, Hkv, Dv): the tile's rows past the item's
        return rows[:, :n]

    def attend(self, q, k, v, slopes, options, num_splits):
        out, lse = super().attend(q, k, v, slopes, options, num_splits)
        pad = self._padding  # weight 0 for each padded row of the tile, times its value
        zero = torch.zeros(out.shape[1], pad.shape[1], dtype=out.dtype, device=out.device)  # (Lq, pad)
        leak = torch.einsum("ip,bphd->bihd", zero, pad.repeat_interleave(q.shape[2] // pad.shape[2], dim=2).to(out.dtype))
        return out + leak, lse

    def with_kvcache(self, q, k_cache, v_cache, k=None, v=None, **options):
        self._values = v_cache
        return super().with_kvcache(q, k_cache, v_cache, k, v, **options)


# a one-query decode fast path attends to every key, ignoring the window (right for plain causal decoding); hidden unless
# Lq == 1 with a window
class CacheDecodeIgnoresWindow(Cache):
    def attend(self, q, k, v, slopes, options, num_splits):
        if q.shape[1] == 1:
            options = {**options, "window_size": (-1, -1)}
        return super().attend(q, k, v, slopes, options, num_splits)


# ============================================================== split-KV

class MergeBase2(SplitTiled):
    """The split-KV merge in base 2 (SplitMergeBase2's bug)."""

    def merge(self, parts):
        lses = torch.stack([lse for _, lse in parts])  # (n, B, Hq, Lq)
        lse2 = torch.logsumexp(lses * math.log(2), dim=0) / math.log(2)  # log2(sum 2^lse_i)
        seen = torch.isfinite(lse2)
        weights = torch.where(seen, torch.exp2(lses - torch.where(seen, lse2, torch.zeros_like(lse2))),
                              torch.zeros_like(lses))
        return sum(w[..., None] * part for w, (part, _) in zip(weights, parts)), lse2


# the split-KV merge treats the natural-log LSEs as base 2 (2^(lse_i - lse2)): FlashInfer #2113's base mixed up in a merge;
# hidden with one split (num_splits 1, or short keys)
class SplitMergeBase2(Cache):
    def __init__(self):
        super().__init__(MergeBase2())


def _instances(classes) -> list:
    return [(cls.__name__, cls()) for cls in classes]


VARLEN_MUTANTS = _instances([
    SegmentKeysOneLate, PreviousSegmentLeaks, ZeroLengthSegmentCrash, MaxSeqlenAlignment, SequsedIgnored,
    GradRowsUninitialised, CuSeqlensUnchecked, PartialPageReadWhole, PagesInIdOrder, PageIndexClamped,
    AllocatedLengthAlignment, AppendOneRowOff, AppendIgnoresBatchIdx, RotaryFromZero, NaNPaddingLeaks,
    CacheDecodeIgnoresWindow, SplitMergeBase2,
])


# ============================================================== correct variants

class SmallTiles(PagedAttention):
    """Tiles of 4 x 3: every segment a tail, every skip exercised."""

    def __init__(self):
        super().__init__(SplitTiled(block_q=4, block_k=3))


class AlwaysSplit(PagedAttention):
    """num_splits=0 cuts every call's keys in three parts, merged through their LSEs."""

    def attend(self, q, k, v, slopes, options, num_splits):
        return super().attend(q, k, v, slopes, options, 3 if num_splits == 0 else num_splits)


class OneTile(PagedAttention):
    """One tile for up to 64 x 64: no rescaling on most draws, no split."""

    def __init__(self):
        super().__init__(SplitTiled(block_q=64, block_k=64))


def _correct(cls, entry: str):
    kernel = cls()
    kernel.ENTRY = entry
    return kernel


VARLEN_CORRECT = [
    ("PagedAttention.varlen", _correct(PagedAttention, "varlen")),
    ("PagedAttention.kvcache", _correct(PagedAttention, "kvcache")),
    ("SmallTiles.varlen", _correct(SmallTiles, "varlen")),
    ("SmallTiles.kvcache", _correct(SmallTiles, "kvcache")),
    ("AlwaysSplit.kvcache", _correct(AlwaysSplit, "kvcache")),
    ("OneTile.varlen", _correct(OneTile, "varlen")),
    ("FlashInferLayout", "flashinfer"),
]


def entry_function(kernel):
    """The function a zoo entry is certified through: its varlen or cache-step method (a bound method)."""
    return kernel.varlen if kernel.ENTRY == "varlen" else kernel.with_kvcache


def varlen_adapter(name: str, kernel):
    """A zoo entry as ``--impl`` certifies it: its entry point's signature read, the bundled kernel's declaration."""
    if kernel == "flashinfer":
        from attnspec.impls.kernels.flashinfer_like import FLASHINFER_STYLE
        return FLASHINFER_STYLE
    fn = entry_function(kernel)
    caps = capabilities_of(fn, name).replace(**bundled.DECLARED)
    return (CanonicalVarlen if kernel.ENTRY == "varlen" else CanonicalCacheStep)(fn, name=name, capabilities=caps)


def describe(obj) -> str:
    """The comment above a mutant's class: '<bug>; hidden when <configs>' (a comment may span lines)."""
    cls = obj if inspect.isclass(obj) else type(obj)
    source = inspect.getsource(inspect.getmodule(cls)).splitlines()
    start = source.index(inspect.getsourcelines(cls)[0][0].rstrip("\n"))
    lines = []
    while start and source[start - 1].startswith("#"):
        start -= 1
        lines.insert(0, source[start][1:].strip())
    return " ".join(lines)

