"""FlashAttention-2, tile by tile, in pure torch: an online softmax forward and a backward recomputed from the LSE.

Names: B batch, Lq queries, Lk keys, Hq query heads, Hkv kv heads (query head h reads kv head h // G,
G = Hq // Hkv), D the q/k width, Dv the v width; a query tile holds ``block_q`` rows, a key tile ``block_k``
columns. Query i sits at key position ``i + Lk - Lq`` (bottom-right): the causal flag and the window
(left, right) show it the keys from ``pos - left`` to ``pos + right`` (-1: unbounded; causal: right = 0).

Forward, per query tile: a running row max ``m``, a running sum ``l`` of exp(s - m) and an accumulator
``acc`` of exp(s - m) @ v, each rescaled by exp(m_old - m_new) when the max grows; key tiles that no
query of the tile can see are skipped. The LSE is ``m + log(l)``. Backward recomputes each tile's weights
as exp(s - lse), never storing the (Lq, Lk) matrix. Each step is a method, so that a variant (or a bug,
tests/zoo/kernels.py) overrides one step. Work runs in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch

from attnspec.kernel.adapters import check_canonical


class TiledAttention:
    """The canonical kernel ``attn(q, k, v, *, causal, softmax_scale, window_size, softcap, alibi_slopes,
    return_lse)``, FlashAttention-2 style, with block sizes ``block_q`` and ``block_k``."""

    def __init__(self, block_q: int = 32, block_k: int = 16):
        if not (isinstance(block_q, int) and isinstance(block_k, int) and block_q >= 1 and block_k >= 1):
            raise ValueError(f"block_q={block_q!r} and block_k={block_k!r}, but both should be positive ints")
        self.block_q, self.block_k = block_q, block_k

    def __call__(self, q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0,
                 alibi_slopes=None, return_lse=False):
        check_canonical(q, k, v, window_size=window_size, alibi_slopes=alibi_slopes)
        scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
        left, right = window_size
        options = dict(scale=scale, left=left, right=0 if causal else right, softcap=float(softcap),
                       slopes=alibi_slopes)
        out, lse = self.run(q, k, v, options)
        return (out, lse) if return_lse else out

    def run(self, q, k, v, options: dict):
        """``(out, lse float32)`` through the hand-written autograd function, for options already checked."""
        return _Tiled.apply(q, k, v, self, options)

    # -- the steps -----------------------------------------------------------------------------------
    def work_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.float64 if dtype == torch.float64 else torch.float32

    def heads(self, q, k, v):
        """(B, L, H, ·) -> (B, H, L, ·) in the work dtype, kv heads repeated for their groups."""
        G, work = q.shape[2] // k.shape[2], self.work_dtype(q.dtype)
        qh = q.transpose(1, 2).to(work)  # (B, Hq, Lq, D)
        kh = k.transpose(1, 2).to(work).repeat_interleave(G, dim=1)  # (B, Hq, Lk, D): head h reads kv head h // G
        vh = v.transpose(1, 2).to(work).repeat_interleave(G, dim=1)  # (B, Hq, Lk, Dv)
        return qh, kh, vh

    def key_tiles(self, i0: int, i1: int, Lq: int, Lk: int, o) -> range:
        """The starts of the key tiles that queries i0..i1-1 may see (the others are skipped)."""
        first, last = 0, Lk - 1
        if o["left"] >= 0:
            first = max(0, i0 + Lk - Lq - o["left"])
        if o["right"] >= 0:
            last = min(Lk - 1, i1 - 1 + Lk - Lq + o["right"])
        if last < first:
            return range(0)
        return range(first - first % self.block_k, last + 1, self.block_k)

    def tile_bounds(self, i0: int, i1: int, Lq: int, Lk: int, o):
        """``(j0, j1)`` of each key tile queries i0..i1-1 may see, cut to the keys ``o["keys"]`` where a split of the
        key range (impls/kernels/paged.py) gives them (default: all)."""
        lo, hi = o.get("keys", (0, Lk))
        for j0 in self.key_tiles(i0, i1, Lq, Lk, o):
            a, b = max(j0, lo), min(j0 + self.block_k, Lk, hi)
            if a < b:
                yield a, b

    def raw_scores(self, qt, kt, o):
        """scale * q @ kᵀ of one tile: (B, Hq, bq, bk)."""
        return (qt @ kt.transpose(-2, -1)) * o["scale"]

    def capped(self, s, o):
        return o["softcap"] * torch.tanh(s / o["softcap"]) if o["softcap"] > 0 else s

    def biased(self, s, rows, cols, Lq, Lk, o):
        """ALiBi: -slope * |pos_i - j|, slopes (Hq,) or (B, Hq)."""
        if o["slopes"] is None:
            return s
        slopes = o["slopes"].to(s.dtype)
        slopes = slopes.view(1, -1, 1, 1) if slopes.dim() == 1 else slopes[:, :, None, None]  # (B|1, Hq, 1, 1)
        distance = (rows[:, None] + Lk - Lq - cols[None, :]).abs().to(s.dtype)  # (bq, bk)
        return s - slopes * distance

    def hidden(self, rows, cols, Lq, Lk, o):
        """bool (bq, bk): True where key j is outside query i's window (or past the diagonal)."""
        pos = rows[:, None] + Lk - Lq  # (bq, 1)
        hidden = torch.zeros(len(rows), len(cols), dtype=torch.bool, device=rows.device)
        if o["left"] >= 0:
            hidden |= cols[None, :] < pos - o["left"]
        if o["right"] >= 0:
            hidden |= cols[None, :] > pos + o["right"]
        return hidden

    def scores(self, qt, kt, rows, cols, Lq, Lk, o):
        """The final scores of one tile: scaled, capped, biased, then -inf where hidden."""
        s = self.biased(self.capped(self.raw_scores(qt, kt, o), o), rows, cols, Lq, Lk, o)
        return s.masked_fill(self.hidden(rows, cols, Lq, Lk, o), float("-inf"))

    def update(self, m, l, acc, s, vt):
        """One key tile into the running max ``m``, sum ``l`` and accumulator ``acc``."""
        m_new = torch.maximum(m, s.amax(dim=-1))  # (B, Hq, bq)
        shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)  # nothing seen yet: no shift
        rescale = torch.exp(m - shift)  # exp(m_old - m_new): 0 where nothing was seen before
        p = torch.exp(s - shift[..., None])  # (B, Hq, bq, bk)
        return m_new, rescale * l + p.sum(dim=-1), rescale[..., None] * acc + p @ vt

    def finish(self, m, l, acc):
        """(out, lse) of a query tile; a query that saw no key gets output 0 and LSE -inf."""
        seen = l > 0
        out = torch.where(seen[..., None], acc / torch.where(seen, l, torch.ones_like(l))[..., None], torch.zeros_like(acc))
        lse = torch.where(seen, m + torch.log(torch.where(seen, l, torch.ones_like(l))), torch.full_like(l, float("-inf")))
        return out, lse

    def forward(self, q, k, v, o):
        """(out (B, Lq, Hq, Dv) in q's dtype, lse (B, Hq, Lq) in the work dtype: the backward needs it unrounded)."""
        out, lse = self.accumulate(q, k, v, o)
        return out.transpose(1, 2).to(q.dtype), lse  # (B, Lq, Hq, Dv), (B, Hq, Lq)

    def accumulate(self, q, k, v, o):
        """(out (B, Hq, Lq, Dv), lse (B, Hq, Lq)), both in the work dtype: the online softmax over the key tiles."""
        B, Lq, Hq, _ = q.shape
        Lk, Dv = k.shape[1], v.shape[-1]
        qh, kh, vh = self.heads(q, k, v)
        out = qh.new_zeros(B, Hq, Lq, Dv)
        lse = qh.new_full((B, Hq, Lq), float("-inf"))
        for i0 in range(0, Lq, self.block_q):
            i1 = min(i0 + self.block_q, Lq)
            rows = torch.arange(i0, i1, device=q.device)
            m = qh.new_full((B, Hq, i1 - i0), float("-inf"))
            l, acc = qh.new_zeros(B, Hq, i1 - i0), qh.new_zeros(B, Hq, i1 - i0, Dv)
            for j0, j1 in self.tile_bounds(i0, i1, Lq, Lk, o):
                s = self.scores(qh[:, :, i0:i1], kh[:, :, j0:j1], rows, torch.arange(j0, j1, device=q.device), Lq, Lk, o)
                m, l, acc = self.update(m, l, acc, s, vh[:, :, j0:j1])
            out[:, :, i0:i1], lse[:, :, i0:i1] = self.finish(m, l, acc)
        return out, lse

    def backward(self, q, k, v, out, lse, dout, o):
        """(dq, dk, dv), each tile's weights recomputed as exp(s - lse); kv gradients summed over each group."""
        B, Lq, Hq, D = q.shape
        Lk, Hkv = k.shape[1], k.shape[2]
        qh, kh, vh = self.heads(q, k, v)
        do = dout.transpose(1, 2).to(qh.dtype)  # (B, Hq, Lq, Dv)
        oh = out.transpose(1, 2).to(qh.dtype)
        delta = (do * oh).sum(dim=-1)  # (B, Hq, Lq): rowsum(dO * O)
        lse = lse.to(qh.dtype)
        dq, dk, dv = torch.zeros_like(qh), torch.zeros_like(kh), torch.zeros_like(vh)
        for i0 in range(0, Lq, self.block_q):
            i1 = min(i0 + self.block_q, Lq)
            rows = torch.arange(i0, i1, device=q.device)
            row_lse = lse[:, :, i0:i1, None]  # (B, Hq, bq, 1)
            for j0, j1 in self.tile_bounds(i0, i1, Lq, Lk, {**o, "keys": (0, Lk)}):
                qt, kt, vt = qh[:, :, i0:i1], kh[:, :, j0:j1], vh[:, :, j0:j1]
                s = self.scores(qt, kt, rows, torch.arange(j0, j1, device=q.device), Lq, Lk, o)
                p = torch.where(torch.isneginf(row_lse), torch.zeros_like(s), torch.exp(s - row_lse))  # (B, Hq, bq, bk)
                dv[:, :, j0:j1] += p.transpose(-2, -1) @ do[:, :, i0:i1]
                ds = p * (do[:, :, i0:i1] @ vt.transpose(-2, -1) - delta[:, :, i0:i1, None])
                ds = self.capped_grad(ds, qt, kt, o)
                dq[:, :, i0:i1] += (ds @ kt) * o["scale"]
                dk[:, :, j0:j1] += (ds.transpose(-2, -1) @ qt) * o["scale"]
        G = Hq // Hkv
        dk = self.group_sum(dk, Hkv, G)  # (B, Hkv, Lk, D)
        dv = self.group_sum(dv, Hkv, G)
        return (dq.transpose(1, 2).to(q.dtype), dk.transpose(1, 2).to(k.dtype), dv.transpose(1, 2).to(v.dtype))

    def capped_grad(self, ds, qt, kt, o):
        """The gradient through the soft-cap: d/ds of cap * tanh(s / cap) is 1 - tanh(s / cap)^2."""
        if o["softcap"] <= 0:
            return ds
        return ds * (1 - torch.tanh(self.raw_scores(qt, kt, o) / o["softcap"]) ** 2)

    def group_sum(self, grad, Hkv: int, G: int):
        """(B, Hq, Lk, ·) -> (B, Hkv, Lk, ·): a kv head's gradient is the sum over the G query heads reading it."""
        B, _, Lk, width = grad.shape
        return grad.view(B, Hkv, G, Lk, width).sum(dim=2)  # (B, Hkv, G, Lk, ·) summed over G


class _Tiled(torch.autograd.Function):
    """The kernel's forward and its hand-written backward (recomputed from the LSE)."""

    @staticmethod
    def forward(ctx, q, k, v, kernel, options):
        out, lse = kernel.forward(q, k, v, options)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.kernel, ctx.options = kernel, options
        lse32 = lse.float()  # the contract's LSE; the backward keeps the work dtype's (float64 for float64 inputs)
        ctx.mark_non_differentiable(lse32)
        return out, lse32

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.kernel.backward(q, k, v, out, lse, dout, ctx.options)
        return dq, dk, dv, None, None


DEFAULT = TiledAttention()
SMALL_TILES = TiledAttention(block_q=4, block_k=3)  # tiles smaller than most draws: every tail and skip exercised


def attn(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
         return_lse=False):
    """FlashAttention-2-style tiled attention (32 x 16 tiles); see the module docstring."""
    return DEFAULT(q, k, v, causal=causal, softmax_scale=softmax_scale, window_size=window_size, softcap=softcap,
                   alibi_slopes=alibi_slopes, return_lse=return_lse)
