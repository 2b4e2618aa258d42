"""The kernel zoo: mutants of :class:`attnspec.impls.kernels.tiled.TiledAttention`, one realistic kernel bug each.

Each mutant overrides one step of the tiled FlashAttention-2-style kernel; the comment above it names the
bug (most from the kernel trackers in shared/research/kernel_anchors.md) and the configurations that hide
it. ``KERNEL_MUTANTS`` and ``KERNEL_CORRECT`` pair names with kernels; :func:`kernel_adapter` wraps one as
``--impl`` would (its signature read, nothing declared). Names: B batch, Hq/Hkv heads, G = Hq // Hkv,
Lq/Lk lengths, bq/bk the tile sizes.
"""
from __future__ import annotations

import inspect
import math

import torch

from attnspec.impls.kernels import reference
from attnspec.impls.kernels.tiled import TiledAttention
from attnspec.kernel import CanonicalKernel


# ============================================================== the online softmax

# the accumulator is not rescaled when a later key tile raises the row max (l is); hidden when one key tile holds every key (Lk <= 16)
class NoAccumulatorRescale(TiledAttention):
    def update(self, m, l, acc, s, vt):
        m_new, l_new, _ = super().update(m, l, acc, s, vt)
        shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        return m_new, l_new, acc + torch.exp(s - shift[..., None]) @ vt


# exp(s) without subtracting the running max: overflows to inf (then NaN) once logits pass ~88 in float32; hidden with small logits
class NoMaxSubtraction(TiledAttention):
    def update(self, m, l, acc, s, vt):
        p = torch.exp(s)
        return torch.maximum(m, s.amax(dim=-1)), l + p.sum(dim=-1), acc + p @ vt

    def finish(self, m, l, acc):
        out, _ = super().finish(m, l, acc)
        return out, torch.log(l)


# the running max starts at a finite -1e4, not -inf (FlashInfer #4267): rows whose logits all lie below it get 0; hidden unless a row lies below -1e4
class FiniteMaxSentinel(TiledAttention):
    def update(self, m, l, acc, s, vt):
        return super().update(torch.clamp(m, min=-1e4), l, acc, s, vt)


# the normaliser gets an epsilon, acc / (l + 1e-6), "to avoid dividing by zero": every output a little small; hidden in low precision
class EpsilonInDenominator(TiledAttention):
    def finish(self, m, l, acc):
        out, lse = super().finish(m, l, acc)
        return out * (l / (l + 1e-6))[..., None], lse


# a query that sees no key divides 0 by 0 (no guard for l == 0): NaN rows; hidden unless a row is fully masked
class EmptyRowNaN(TiledAttention):
    def finish(self, m, l, acc):
        _, lse = super().finish(m, l, acc)
        return acc / l[..., None], lse


# ============================================================== tiles and tails

# the last key tile is zero-padded to the tile size and the padding is not masked (FlashInfer PR #5090): score 0 counts; hidden when Lk is a multiple of 16
class UnmaskedTailTile(TiledAttention):
    def scores(self, qt, kt, rows, cols, Lq, Lk, o):
        short = self.block_k - kt.shape[2]
        if short:
            kt = torch.cat([kt, kt.new_zeros(*kt.shape[:2], short, kt.shape[3])], dim=2)  # (B, Hq, bk, D)
            cols = torch.cat([cols, torch.full((short,), -10**9, device=cols.device)])  # padded: never "hidden"
        s = self.biased(self.capped(self.raw_scores(qt, kt, o), o), rows, cols.clamp_min(0), Lq, Lk, o)
        return s.masked_fill(self.hidden(rows, cols.clamp_min(0), Lq, Lk, o), float("-inf"))

    def update(self, m, l, acc, s, vt):
        short = s.shape[-1] - vt.shape[2]
        if short:
            vt = torch.cat([vt, vt.new_zeros(*vt.shape[:2], short, vt.shape[3])], dim=2)  # (B, Hq, bk, Dv)
        return super().update(m, l, acc, s, vt)


# the key tiles are counted as Lk // bk, not ceil(Lk / bk): the tail tile is never read; hidden when Lk is a multiple of 16
class TailKeyTileDropped(TiledAttention):
    def key_tiles(self, i0, i1, Lq, Lk, o):
        return range(0, Lk // self.block_k * self.block_k, self.block_k)


# the key tiles to skip are computed top-left (i1 - 1 + right) with a bottom-right mask: visible tiles skipped; hidden when Lq >= Lk or without causal/window
class TileSkipTopLeft(TiledAttention):
    def key_tiles(self, i0, i1, Lq, Lk, o):
        return super().key_tiles(i0, i1, Lk, Lk, o)


# a tile pads the key tail in place, in k's own storage, past the view (free room when k sits in a larger buffer); hidden unless k is a view with room after it
class WritesPastTheView(TiledAttention):
    def __call__(self, q, k, v, **options):
        pad = -k.shape[1] % self.block_k
        room = k.untyped_storage().nbytes() // k.element_size() - (k.storage_offset() + k.numel())
        if pad and k.is_contiguous() and room >= pad * k.shape[2] * k.shape[3] and k.shape[0] == 1:
            tail = torch.as_strided(k, (1, pad, k.shape[2], k.shape[3]), k.stride(),
                                    k.storage_offset() + k.numel())  # the elements right after k
            tail.zero_()
        return super().__call__(q, k, v, **options)


# ============================================================== masks and positions

# the causal diagonal is top-left (query i sees keys <= i) where bottom-right is claimed (flash-attn #282 before v2.1, SageAttention #372); hidden when Lq == Lk
class TopLeftCausal(TiledAttention):
    def hidden(self, rows, cols, Lq, Lk, o):
        return super().hidden(rows, cols, Lk, Lk, o)

    def key_tiles(self, i0, i1, Lq, Lk, o):
        return range(0, Lk, self.block_k)


# masked scores get a finite -1e4 instead of -inf (lattice #361): hidden keys win over visible logits far below it; hidden at ordinary logits, empty rows aside
class FiniteMaskSentinel(TiledAttention):
    def scores(self, qt, kt, rows, cols, Lq, Lk, o):
        s = self.biased(self.capped(self.raw_scores(qt, kt, o), o), rows, cols, Lq, Lk, o)
        return s.masked_fill(self.hidden(rows, cols, Lq, Lk, o), -1e4)

    def key_tiles(self, i0, i1, Lq, Lk, o):
        return range(0, Lk, self.block_k)


# the window's left edge is exclusive (j > pos - left instead of >=): one key too few; hidden without a bounded left side
class WindowOffByOne(TiledAttention):
    def hidden(self, rows, cols, Lq, Lk, o):
        pos = rows[:, None] + Lk - Lq
        hidden = super().hidden(rows, cols, Lq, Lk, o)
        return hidden | (cols[None, :] == pos - o["left"]) if o["left"] >= 0 else hidden


# softcap applied after the mask (flash-attn PR #1025 review): -inf becomes -softcap and hidden keys leak back; hidden without softcap or without a mask
class KernelSoftcapAfterMask(TiledAttention):
    def scores(self, qt, kt, rows, cols, Lq, Lk, o):
        s = self.biased(self.raw_scores(qt, kt, o), rows, cols, Lq, Lk, o)
        return self.capped(s.masked_fill(self.hidden(rows, cols, Lq, Lk, o), float("-inf")), o)


# softcap accepted and dropped (sglang #33915: passed to a path that ignores it); hidden without softcap
class SoftcapIgnored(TiledAttention):
    def capped(self, s, o):
        return s


# ALiBi distances measured top-left, |i - j|, where the contract's are bottom-right, |i + Lk - Lq - j|; hidden when Lq == Lk
class AlibiTopLeft(TiledAttention):
    def biased(self, s, rows, cols, Lq, Lk, o):
        return super().biased(s, rows, cols, Lk, Lk, o)


# ============================================================== heads, scale, LSE

# kv heads expanded with repeat (query head h reads kv head h % Hkv) instead of repeat_interleave; hidden when Hkv is 1 or Hq
class GqaModulo(TiledAttention):
    def heads(self, q, k, v):
        G, work = q.shape[2] // k.shape[2], self.work_dtype(q.dtype)
        return (q.transpose(1, 2).to(work), k.transpose(1, 2).to(work).repeat(1, G, 1, 1),
                v.transpose(1, 2).to(work).repeat(1, G, 1, 1))  # (B, Hq, L, ·), heads in the wrong order


# the kv gradient takes the first query head of each group instead of their sum; hidden without grouped heads or without backward
class GqaBackwardNotSummed(TiledAttention):
    def group_sum(self, grad, Hkv, G):
        B, _, Lk, width = grad.shape
        return grad.view(B, Hkv, G, Lk, width)[:, :, 0]  # (B, Hkv, Lk, ·): one head of G


# softmax_scale accepted and ignored: always D ** -0.5; hidden unless softmax_scale is passed
class ScaleIgnored(TiledAttention):
    def __call__(self, q, k, v, *, softmax_scale=None, **options):
        return super().__call__(q, k, v, **options)


# the queries are scaled in place (q.mul_(scale)): the caller's q changes unless a cast copies it; hidden in low precision and when the scale is 1
class QueriesScaledInPlace(TiledAttention):
    def heads(self, q, k, v):
        qh, kh, vh = super().heads(q, k, v)
        return qh.mul_(self._scale), kh, vh

    def forward(self, q, k, v, o):
        self._scale = o["scale"]
        return super().forward(q, k, v, {**o, "scale": 1.0})

    def backward(self, q, k, v, out, lse, dout, o):
        self._scale = 1.0
        return super().backward(q, k, v, out, lse, dout, o)


# the LSE is returned in base 2, log2(sum 2^x) (FlashInfer #2113, vLLM PR #43919); hidden unless the LSE is asked for
class LseBase2(TiledAttention):
    def __call__(self, q, k, v, *, return_lse=False, **options):
        if not return_lse:
            return super().__call__(q, k, v, **options)
        out, lse = super().__call__(q, k, v, return_lse=True, **options)
        return out, lse / math.log(2)


# the LSE leaves out the softmax scale (it is that of q.k, divided by the scale); hidden unless the LSE is asked for, or when the scale is 1
class LseWithoutScale(TiledAttention):
    def __call__(self, q, k, v, *, return_lse=False, softmax_scale=None, **options):
        scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
        result = super().__call__(q, k, v, return_lse=return_lse, softmax_scale=softmax_scale, **options)
        return (result[0], result[1] / scale) if return_lse else result


# the backward leaves out the derivative of softcap's tanh; hidden without softcap or without backward
class SoftcapBackwardChainMissing(TiledAttention):
    def capped_grad(self, ds, qt, kt, o):
        return ds


# ============================================================== a fast path

# a decode fast path for Lq == 1 attends to every key: right for bottom-right causal, not under a window or ALiBi; hidden unless Lq == 1 with a window or ALiBi
class DecodeFastPathIgnoresWindow(TiledAttention):
    def forward(self, q, k, v, o):
        if q.shape[1] == 1:
            o = {**o, "left": -1, "right": -1, "slopes": None}
        return super().forward(q, k, v, o)


def _instances(classes) -> list:
    return [(cls.__name__, cls()) for cls in classes]


KERNEL_MUTANTS = _instances([
    NoAccumulatorRescale, NoMaxSubtraction, FiniteMaxSentinel, EpsilonInDenominator, EmptyRowNaN,
    UnmaskedTailTile, TailKeyTileDropped, TileSkipTopLeft, WritesPastTheView, TopLeftCausal, FiniteMaskSentinel,
    WindowOffByOne, KernelSoftcapAfterMask, SoftcapIgnored, AlibiTopLeft, GqaModulo, GqaBackwardNotSummed, ScaleIgnored,
    QueriesScaledInPlace, LseBase2, LseWithoutScale, SoftcapBackwardChainMissing, DecodeFastPathIgnoresWindow,
])


# the same kernel with tiles of 4 x 3: every length is a tail, every skip exercised
class SmallTiles(TiledAttention):
    def __init__(self):
        super().__init__(block_q=4, block_k=3)


# one tile for everything up to 64 x 64 keys: no rescaling at all on most draws
class LargeTiles(TiledAttention):
    def __init__(self):
        super().__init__(block_q=64, block_k=64)


# exp2 with log2(e) folded into the scale, as FlashAttention computes it; the LSE converted back to natural log
class Exp2Softmax(TiledAttention):
    def update(self, m, l, acc, s, vt):
        log2e = 1 / math.log(2)
        m_new = torch.maximum(m, s.amax(dim=-1))
        shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        rescale = torch.exp2((m - shift) * log2e)
        p = torch.exp2((s - shift[..., None]) * log2e)
        return m_new, rescale * l + p.sum(dim=-1), rescale[..., None] * acc + p @ vt


def _reference_kernel(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0,
                      alibi_slopes=None, return_lse=False):
    return reference.attn(q, k, v, causal=causal, softmax_scale=softmax_scale, window_size=window_size,
                          softcap=softcap, alibi_slopes=alibi_slopes, return_lse=return_lse)


KERNEL_CORRECT = [("TiledAttention", TiledAttention()), ("reference", _reference_kernel),
                  *_instances([SmallTiles, LargeTiles, Exp2Softmax])]


def kernel_adapter(name: str, kernel):
    """``kernel`` as ``--impl`` certifies a canonical function: its signature read, nothing declared."""
    return CanonicalKernel(kernel, name=name)


def describe(obj) -> str:
    """The comment above a mutant's class: '<bug>; hidden when <configs>'."""
    cls = obj if inspect.isclass(obj) else type(obj)
    comment = inspect.getcomments(cls) or ""  # every line of the comment block right above the class
    return " ".join(line.lstrip("# ").strip() for line in comment.splitlines())
