"""Varlen attention, a paged KV cache and the cache step, in pure torch, on the tiled FlashAttention-2 kernel.

Two functions with the canonical signatures of docs/kernels_varlen.md:

* ``attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, seqused_k, ...)``: each
  segment is one call of the tiled kernel (impls/kernels/tiled.py) on its own rows, so gradients flow through the
  tiled kernel's hand-written backward; rows past ``cu_seqlens[-1]`` are never read and get output 0.
* ``attn_with_kvcache(q, k_cache, v_cache, k, v, *, cache_seqlens, cache_batch_idx, block_table, rotary_cos,
  rotary_sin, rotary_interleaved, ...)``: rotates the new keys and the queries, writes the new rows in place at
  ``[cache_seqlens, cache_seqlens + Ln)``, gathers each item's rows (from its cache row, or its pages in table
  order) and attends over them, bottom-right.

``num_splits`` cuts each call's key range into that many parts (0: one part per 64 keys), each an online softmax
of its own, merged through their LSEs as split-KV decoding does. Every argument is checked first: bad offsets,
lengths past the allocation and pages outside the pool raise ValueError, naming the value. Names: B items or
segments, Lq/Lk lengths, Hq/Hkv heads, D/Dv widths, T packed rows; each step is a method, so a variant (or a bug,
tests/zoo/varlen.py) overrides one step.
"""
from __future__ import annotations

import math

import torch

from attnspec.kernel.adapters import check_canonical
from .tiled import TiledAttention

AUTO_SPLIT = 64  # num_splits=0: one part per this many keys


class SplitTiled(TiledAttention):
    """The tiled kernel with its key range cut into ``o["splits"]`` parts, merged through their LSEs."""

    def splits(self, Lk: int, n: int) -> list:
        """``(lo, hi)`` of each part of ``Lk`` keys cut in ``n`` (0: one part per :data:`AUTO_SPLIT` keys)."""
        n = 1 + Lk // AUTO_SPLIT if n == 0 else n
        n = max(1, min(n, Lk))
        edges = [round(i * Lk / n) for i in range(n + 1)]
        return list(zip(edges[:-1], edges[1:]))

    def accumulate(self, q, k, v, o):
        parts = self.splits(k.shape[1], o.get("splits", 1))
        if len(parts) <= 1:
            return super().accumulate(q, k, v, o)
        return self.merge([super(SplitTiled, self).accumulate(q, k, v, {**o, "keys": part}) for part in parts])

    def merge(self, parts: list):
        """One (out, lse) from the parts' (out (B, Hq, Lq, Dv), lse (B, Hq, Lq)): each weighted by exp(lse_i - lse)."""
        lses = torch.stack([lse for _, lse in parts])  # (n, B, Hq, Lq)
        lse = torch.logsumexp(lses, dim=0)  # (B, Hq, Lq): -inf where no part saw a key
        seen = torch.isfinite(lse)
        weights = torch.where(seen, torch.exp(lses - torch.where(seen, lse, torch.zeros_like(lse))),
                              torch.zeros_like(lses))  # (n, B, Hq, Lq)
        out = sum(w[..., None] * part for w, (part, _) in zip(weights, parts))  # (B, Hq, Lq, Dv)
        return out, lse


class PagedAttention:
    """The varlen and cache-step entry points (see the module docstring) on a :class:`SplitTiled` kernel."""

    def __init__(self, tiled: SplitTiled | None = None):
        self.tiled = tiled or SplitTiled()

    # -- checks: every offset and length against the tensors it indexes --------------------------------------
    def check_slopes(self, slopes, B: int, Hq: int) -> None:
        if slopes is not None and tuple(slopes.shape) not in ((Hq,), (B, Hq)):
            raise ValueError(f"alibi_slopes has shape {tuple(slopes.shape)}, but should be ({Hq},) or ({B}, {Hq})")

    def check_offsets(self, cu, rows: int, name: str, B: int) -> list:
        """``cu`` as a list after checking it: int32 (B + 1,), from 0, never decreasing, within ``rows``."""
        if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or tuple(cu.shape) != (B + 1,):
            raise ValueError(f"{name} should be an int32 tensor of shape ({B + 1},), got {getattr(cu, 'shape', cu)}")
        values = cu.tolist()
        if values[0] != 0 or any(b < a for a, b in zip(values, values[1:])) or values[-1] > rows:
            raise ValueError(f"{name}={values}, but should start at 0, never decrease and end within the {rows} rows")
        return values

    def check_varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k):
        """The segments ``[(q0, q1, k0, k1)]`` after checking every argument."""
        if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
            raise ValueError(f"q, k, v should be packed (T, H, D), got {tuple(q.shape)}, {tuple(k.shape)}, "
                             f"{tuple(v.shape)}")
        check_canonical(q[None], k[None], v[None])
        B = cu_seqlens_q.shape[0] - 1 if isinstance(cu_seqlens_q, torch.Tensor) and cu_seqlens_q.dim() == 1 else -1
        if B < 1 or not isinstance(cu_seqlens_k, torch.Tensor) or tuple(cu_seqlens_k.shape) != (B + 1,):
            raise ValueError(f"cu_seqlens_q {getattr(cu_seqlens_q, 'shape', None)} and cu_seqlens_k "
                             f"{getattr(cu_seqlens_k, 'shape', None)} should both be (B + 1,), B >= 1")
        cu_q = self.check_offsets(cu_seqlens_q, q.shape[0], "cu_seqlens_q", B)
        cu_k = self.check_offsets(cu_seqlens_k, k.shape[0], "cu_seqlens_k", B)
        used = [b - a for a, b in zip(cu_k, cu_k[1:])]
        if seqused_k is not None:
            given = seqused_k.tolist() if isinstance(seqused_k, torch.Tensor) and seqused_k.dim() == 1 else None
            if given is None or len(given) != B or any(not 0 <= u <= n for u, n in zip(given, used)):
                raise ValueError(f"seqused_k={given or seqused_k!r}, but should be (B,) = ({B},), each within its "
                                 f"segment's {used} keys")
            used = given
        return [(cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b] + used[b]) for b in range(B)]

    def check_cache(self, q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table, rotary_cos):
        """Each item's cache length (a list) after checking the lengths, the new rows, the rows and the pages."""
        if q.dim() != 4 or k_cache.dim() != 4 or v_cache.dim() != 4:
            raise ValueError("q (B, Lq, Hq, D) and the caches (B_cache, S, Hkv, D) or pools (pages, page_size, "
                             "Hkv, D) should be 4-D")
        if (k is None) != (v is None):
            raise ValueError("k and v (the new rows) come together: one is None and the other is not")
        B = q.shape[0]
        if not isinstance(cache_seqlens, torch.Tensor) or tuple(cache_seqlens.shape) != (B,) or \
                cache_seqlens.dtype != torch.int32:
            raise ValueError(f"cache_seqlens should be an int32 tensor of shape ({B},), got "
                             f"{getattr(cache_seqlens, 'shape', cache_seqlens)}")
        lengths = cache_seqlens.tolist()
        Ln = 0 if k is None else k.shape[1]
        if k is not None and (k.shape[0] != B or v.shape[:2] != k.shape[:2]):
            raise ValueError(f"the new rows k {tuple(k.shape)} and v {tuple(v.shape)} should be (B={B}, Ln, Hkv, ·)")
        check_canonical(q[:1], k_cache[:1], v_cache[:1])
        if block_table is not None:
            pages = k_cache.shape[0]
            capacity = block_table.shape[1] * k_cache.shape[1]
            if cache_batch_idx is not None:
                raise ValueError("cache_batch_idx selects rows of a contiguous cache: not with a block_table")
            if tuple(block_table.shape[:1]) != (B,) or block_table.dim() != 2:
                raise ValueError(f"block_table should be (B={B}, max_pages), got {tuple(block_table.shape)}")
            needed = [math.ceil((n + Ln) / k_cache.shape[1]) for n in lengths]
            listed = torch.cat([block_table[b, :m] for b, m in enumerate(needed)]).tolist() if B else []
            if any(not 0 <= page < pages for page in listed):
                raise ValueError(f"block_table lists pages {sorted(set(listed))}, but the pool has {pages}")
        else:
            rows = torch.arange(B) if cache_batch_idx is None else cache_batch_idx
            if cache_batch_idx is None and k_cache.shape[0] != B:
                raise ValueError(f"the cache has {k_cache.shape[0]} items for a batch of {B}: pass cache_batch_idx")
            if cache_batch_idx is not None and (tuple(rows.shape) != (B,) or not all(
                    0 <= r < k_cache.shape[0] for r in rows.tolist())):
                raise ValueError(f"cache_batch_idx={rows.tolist()}, but should pick {B} of the cache's "
                                 f"{k_cache.shape[0]} items")
            capacity = k_cache.shape[1]
        if any(n < 0 or n + Ln > capacity for n in lengths):
            raise ValueError(f"cache_seqlens={lengths} with {Ln} new rows, but each item holds {capacity} rows")
        if rotary_cos is not None and rotary_cos.shape[0] < max(lengths, default=0) + max(Ln, q.shape[1]):
            raise ValueError(f"rotary_cos has {rotary_cos.shape[0]} positions, fewer than the call reaches")
        return lengths

    # -- the steps --------------------------------------------------------------------------------------
    def attend(self, q, k, v, slopes, options: dict, num_splits: int):
        """One dense call of the tiled kernel: ``(out (1, Lq, Hq, Dv), lse (1, Hq, Lq))``."""
        check_canonical(q, k, v, window_size=options["window_size"], alibi_slopes=slopes)
        scale = q.shape[-1] ** -0.5 if options["softmax_scale"] is None else float(options["softmax_scale"])
        left, right = options["window_size"]
        o = dict(scale=scale, left=left, right=0 if options["causal"] else right, softcap=float(options["softcap"]),
                 slopes=slopes, splits=int(num_splits))
        return self.tiled.run(q, k, v, o)

    def rotate(self, x, cos, sin, positions, interleaved: bool):
        """``x`` (B, L, H, D) with its first 2 * cos.shape[1] features turned at ``positions`` (B, L)."""
        r = 2 * cos.shape[1]
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        c, s = cos[positions][:, :, None].to(work), sin[positions][:, :, None].to(work)  # (B, L, 1, r/2)
        rot = x[..., :r].to(work)
        if interleaved:
            a, b = rot[..., 0::2], rot[..., 1::2]  # (B, L, H, r/2): features 2i and 2i + 1
            turned = torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)  # (B, L, H, r)
        else:
            a, b = rot[..., : r // 2], rot[..., r // 2:]  # feature i with i + r/2
            turned = torch.cat([a * c - b * s, a * s + b * c], dim=-1)
        return torch.cat([turned.to(x.dtype), x[..., r:]], dim=-1)

    def positions(self, starts, L: int):
        """(B, L): the rows ``starts + i`` (B, 1) where a call's queries or new keys sit, and turn under rotary."""
        return starts + torch.arange(L, device=starts.device)

    def places(self, k_cache, b: int, positions: torch.Tensor, cache_batch_idx, block_table):
        """Where item b's rows ``positions`` lie: (first index, second index) into the cache or the pool."""
        if block_table is not None:
            ps = k_cache.shape[1]
            return block_table[b].long()[positions // ps], positions % ps
        row = b if cache_batch_idx is None else int(cache_batch_idx[b])
        return torch.full_like(positions, row), positions

    def append(self, k_cache, v_cache, k, v, lengths, cache_batch_idx, block_table):
        """Write item b's new rows at its rows [lengths[b], lengths[b] + Ln), in place."""
        for b, n in enumerate(lengths):
            at = self.places(k_cache, b, torch.arange(n, n + k.shape[1], device=k.device), cache_batch_idx, block_table)
            k_cache[at] = k[b].to(k_cache.dtype)
            v_cache[at] = v[b].to(v_cache.dtype)

    def rows(self, cache, b: int, n: int, cache_batch_idx, block_table):
        """Item b's first ``n`` rows, (1, n, Hkv, ·)."""
        at = self.places(cache, b, torch.arange(n, device=cache.device), cache_batch_idx, block_table)
        return cache[at][None]

    # -- the entry points ---------------------------------------------------------------------------------
    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, seqused_k=None,
               causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, num_splits=0,
               return_lse=False):
        segments = self.check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k)
        self.check_slopes(alibi_slopes, len(segments), q.shape[1])
        options = dict(causal=causal, softmax_scale=softmax_scale, window_size=tuple(window_size), softcap=softcap)
        outs, lses = [], []
        for b, (q0, q1, k0, k1) in enumerate(segments):
            slopes = alibi_slopes if alibi_slopes is None or alibi_slopes.dim() == 1 else alibi_slopes[b:b + 1]
            out, lse = self.attend(q[q0:q1][None], k[k0:k1][None], v[k0:k1][None], slopes, options, num_splits)
            outs.append(out[0])  # (Lq_b, Hq, Dv)
            lses.append(lse[0])  # (Hq, Lq_b)
        tail = q.shape[0] - segments[-1][1]  # rows past cu_seqlens_q[-1]: never read, output 0
        out = torch.cat(outs + [q.new_zeros(tail, q.shape[1], v.shape[-1])])  # (Tq, Hq, Dv)
        lse = torch.cat(lses + [lses[0].new_full((q.shape[1], tail), float("-inf"))], dim=1)  # (Hq, Tq)
        return (out, lse) if return_lse else out

    def with_kvcache(self, q, k_cache, v_cache, k=None, v=None, *, cache_seqlens, cache_batch_idx=None,
                     block_table=None, rotary_cos=None, rotary_sin=None, rotary_interleaved=True, causal=False,
                     softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, num_splits=0,
                     return_lse=False):
        lengths = self.check_cache(q, k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table, rotary_cos)
        B, Lq = q.shape[:2]
        self.check_slopes(alibi_slopes, B, q.shape[2])
        Ln = 0 if k is None else k.shape[1]
        if rotary_cos is not None:
            starts = cache_seqlens.long()[:, None].to(q.device)  # (B, 1)
            q = self.rotate(q, rotary_cos, rotary_sin, self.positions(starts, Lq), rotary_interleaved)
            if k is not None:
                k = self.rotate(k, rotary_cos, rotary_sin, self.positions(starts, Ln), rotary_interleaved)
        if k is not None:
            with torch.no_grad():
                self.append(k_cache, v_cache, k, v, lengths, cache_batch_idx, block_table)
        options = dict(causal=causal, softmax_scale=softmax_scale, window_size=tuple(window_size), softcap=softcap)
        outs, lses = [], []
        for b, n in enumerate(lengths):
            keys = self.rows(k_cache, b, n + Ln, cache_batch_idx, block_table)  # (1, n + Ln, Hkv, D)
            values = self.rows(v_cache, b, n + Ln, cache_batch_idx, block_table)
            slopes = alibi_slopes if alibi_slopes is None or alibi_slopes.dim() == 1 else alibi_slopes[b:b + 1]
            out, lse = self.attend(q[b:b + 1], keys, values, slopes, options, num_splits)
            outs.append(out)
            lses.append(lse)
        out, lse = torch.cat(outs), torch.cat(lses)  # (B, Lq, Hq, Dv), (B, Hq, Lq)
        return (out, lse) if return_lse else out


DEFAULT = PagedAttention()
# What it declares beyond its signature: max_seqlen_* and the allocated cache length change no bit of the result
# (num_splits may: the merge rounds differently).
DECLARED = {"bitwise_hints": ("max_seqlen", "cache_length")}


def attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, seqused_k=None, causal=False,
                softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, num_splits=0,
                return_lse=False):
    """Varlen attention on the tiled kernel, one segment at a time (see the module docstring)."""
    return DEFAULT.varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_k=seqused_k,
                          causal=causal, softmax_scale=softmax_scale, window_size=window_size, softcap=softcap,
                          alibi_slopes=alibi_slopes, num_splits=num_splits, return_lse=return_lse)


def attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens, cache_batch_idx=None, block_table=None,
                      rotary_cos=None, rotary_sin=None, rotary_interleaved=True, causal=False, softmax_scale=None,
                      window_size=(-1, -1), softcap=0.0, alibi_slopes=None, num_splits=0, return_lse=False):
    """The cache step on the tiled kernel: rotate, append in place, attend over each item's rows (module docstring)."""
    return DEFAULT.with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=cache_seqlens, cache_batch_idx=cache_batch_idx,
                                block_table=block_table, rotary_cos=rotary_cos, rotary_sin=rotary_sin,
                                rotary_interleaved=rotary_interleaved, causal=causal, softmax_scale=softmax_scale,
                                window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes,
                                num_splits=num_splits, return_lse=return_lse)


attn_varlen.attnspec_kernel = dict(DECLARED)
attn_with_kvcache.attnspec_kernel = dict(DECLARED)
