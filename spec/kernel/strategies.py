"""Hypothesis strategies that draw kernel problems from a :class:`~attnspec.kernel.scope.KernelScope`.

Lengths come mostly short (1 to 6), sometimes at a tile boundary (15-17, 31-33, 63-65) and now and
then long (113, 127-129, 203, 255-257): the tails of 16-, 32-, 64- and 128-wide tiles, where kernels
mask or forget to. A long draw takes one batch item and at most two heads, so that certifying a kernel
stays within seconds. Head widths are small, or now and then 16 to 128 and the odd 59 and 111 (in the
declared set, if any); Dv differs from D where claimed. Every option claimed is drawn on and off, with
queries and keys from the value families of :mod:`attnspec.kernel.problem`. Examples shrink towards
one item, one head, one query and one key, D=1, no options and seed 0.
"""
from __future__ import annotations

import torch
from hypothesis import assume
from hypothesis import strategies as st

from .. import tolerances
from ..strategies import SEEDS, _check_scope, _integers, _part, _sampled
from .cache import CacheProblem
from .problem import KernelProblem
from .scope import KernelScope
from .varlen import VarlenProblem

DTYPE_ORDER = (torch.float64, torch.float64, torch.float32, torch.bfloat16, torch.float16)
TILE_LENGTHS = (15, 16, 17, 31, 32, 33, 63, 64, 65)
LONG_LENGTHS = (113, 127, 128, 129, 203, 255, 256, 257)
LONG = 100  # a draw with a length beyond this is kept small elsewhere
WIDE_HEADS = (16, 32, 59, 64, 111, 128)
WINDOW_SIDES = (-1, 0, 1, 2, 3, 5)


def _length(draw, label: str, least: int, most: int | None) -> int:
    kind = draw(_integers(0, 19), label=f"{label} kind")  # 0-15 short, 16-18 a tile boundary, 19 long
    if kind < 16:
        n = draw(_integers(1, 6), label=label)
    else:
        n = draw(_sampled(TILE_LENGTHS if kind < 19 else LONG_LENGTHS), label=label)
    n = max(n, least)
    return n if most is None else min(n, most)


def _widths(caps, low: bool, large: bool) -> list:
    """Head widths to draw from, smallest first: 1 to 8 (3 to 8 in low precision) and the wide ones, as declared."""
    small = list(range(3 if low else 1, 9))
    wide = [d for d in WIDE_HEADS if not large or d <= 64]
    if caps.head_dims is None:
        return small + wide
    declared = [d for d in caps.head_dims if d <= 256][:64]
    return sorted(d for d in declared if not large or d <= 128) or declared[:1]


@_part
def kernel_head_widths(draw, scope: KernelScope, *, dtype: torch.dtype, large: bool):
    """(D, Dv or None): mostly small widths, a quarter of the time a wide one; Dv != D where drawn."""
    widths = _widths(scope.caps, dtype in tolerances.LOW_PRECISION, large)
    small = [d for d in widths if d <= 8] or widths[:1]
    pool = small if draw(_integers(0, 3), label="wide head") < 3 else widths
    D = draw(_sampled(pool), label="D")
    if not draw(_sampled(scope.allowed("distinct_dv")), label="Dv != D"):
        return D, None
    others = [d for d in pool if d != D] or [d for d in widths if d != D]
    return (D, draw(_sampled(others), label="Dv")) if others else (D, None)


@_part
def kernel_head_counts(draw, scope: KernelScope, *, large: bool):
    """(Hq, Hkv): Hkv of 1 or 2 (1 with long sequences), Hq a multiple, in groups of 2 or 3 where grouped."""
    grouped = draw(_sampled(scope.allowed("grouped")), label="grouped")
    Hkv = 1 if large else draw(_integers(1, 2), label="Hkv")
    G = draw(_integers(2, 2 if large else 3), label="group") if grouped else 1
    least = scope.least["heads"]
    while Hkv * G < least:
        Hkv += 1
    return Hkv * G, Hkv


@_part
def kernel_windows(draw, scope: KernelScope):
    """``window_size`` (left, right), each -1 (unbounded) or 0 to 5, never both -1; or None (not passed)."""
    if not draw(_sampled(scope.allowed("window")), label="window"):
        return None
    window = (draw(_sampled(WINDOW_SIDES), label="window left"), draw(_sampled(WINDOW_SIDES), label="window right"))
    return window if window != (-1, -1) else (draw(_integers(0, 3), label="window left"), -1)


@_part
def kernel_lengths(draw, scope: KernelScope, *, dtype: torch.dtype, causal: bool, window):
    """(Lq, Lk) within the declared maxima: Lq > Lk only where claimed; rows that see no key as the scope says."""
    caps = scope.caps
    least = max(scope.least["length"], 3 if dtype in tolerances.LOW_PRECISION else 1)
    Lq = _length(draw, "Lq", least, caps.max_seqlen_q)
    Lk = _length(draw, "Lk", least, caps.max_seqlen_k)
    if scope.allowed("empty_rows") == (True,):  # queries beyond the keys, so that the first ones see none
        extra = draw(_integers(1, 3), label="queries beyond the keys")
        reach = 0 if causal else max(window[0] if caps.causal_alignment == "top-left" else window[1], 0)
        Lq = Lk + reach + extra
        if caps.max_seqlen_q is not None:
            assume(Lq <= caps.max_seqlen_q)
    if Lq > Lk and True not in scope.allowed("longer"):
        Lq, Lk = Lk, Lq
    if scope.allowed("unequal") == (True,) and Lq == Lk:
        Lk, Lq = (Lk + 1, Lq) if caps.max_seqlen_k is None or Lk < caps.max_seqlen_k else (Lk, Lq - 1)
        assume(Lq >= 1)
    return Lq, Lk


def _common(draw, scope: KernelScope) -> dict:
    """What every form of call draws alike: the dtype and the options (the lengths come after)."""
    caps = scope.caps
    dtype = draw(_sampled([d for d in DTYPE_ORDER if d in scope.allowed("dtype")]), label="dtype")
    causal = draw(_sampled(scope.allowed("causal")), label="causal")
    window = kernel_windows.drawn(draw, scope)
    if scope.allowed("empty_rows") == (True,) and not causal and window is None:  # the scope needs such rows
        causal = caps.causal and caps.causal_alignment == "bottom-right"
        window = None if causal else (draw(_integers(0, 2), label="window left"), draw(_integers(0, 2), label="right"))
    return dict(dtype=dtype, causal=causal, window=window)


def _rest(draw, scope: KernelScope, *, dtype, large: bool) -> dict:
    """Heads, widths, options and values: what a problem draws after its lengths (``large``: a long sequence)."""
    caps = scope.caps
    Hq, Hkv = kernel_head_counts.drawn(draw, scope, large=large)
    D, Dv = kernel_head_widths.drawn(draw, scope, dtype=dtype, large=large)
    values = [v for v in ("gaussian", "gaussian", "low-rank", "shared-mean", "large") if v in scope.allowed("values")
              and not (v == "large" and dtype in tolerances.LOW_PRECISION)]
    return dict(
        Hq=Hq, Hkv=Hkv, D=D, Dv=Dv,
        softcap=draw(_sampled((1.0, 2.5, 7.0)), label="softcap") if draw(_sampled(scope.allowed("softcap")),
                                                                          label="softcap on") else 0.0,
        scale=draw(_sampled((0.5, 1.7)), label="scale factor") * D ** -0.5
        if draw(_sampled(scope.allowed("scale")), label="scale on") else None,
        alibi=draw(_sampled(scope.allowed("alibi")), label="alibi"),
        return_lse=draw(_sampled(scope.allowed("lse")), label="return_lse"),
        values=draw(_sampled(values or ["gaussian"]), label="values"), alignment=caps.causal_alignment)


@_part
def kernel_problems(draw, scope: KernelScope):
    """A :class:`~attnspec.kernel.problem.KernelProblem` within ``scope`` (see :func:`attnspec.requirements.decide`),
    or, where the scope's form is a varlen call or a cache step, a :class:`VarlenProblem` or :class:`CacheProblem`."""
    form = scope.allowed("form")
    if form == ("varlen",):
        return varlen_problems.drawn(draw, scope)
    if form == ("kvcache",):
        return cache_problems.drawn(draw, scope)
    common = _common(draw, scope)
    Lq, Lk = kernel_lengths.drawn(draw, scope, dtype=common["dtype"], causal=common["causal"], window=common["window"])
    large = max(Lq, Lk) > LONG
    rest = _rest(draw, scope, dtype=common["dtype"], large=large)
    B = 1 if large else draw(_integers(scope.least["batch"], 3), label="B")
    problem = KernelProblem(B=B, Lq=Lq, Lk=Lk, **common, **rest, seed=draw(SEEDS, label="seed"))
    if True not in scope.allowed("empty_rows"):
        assume(not problem.empty_rows().any())
    return problem


def _segment_length(draw, label: str, least: int, most, *, zero: bool, long: bool) -> int:
    """A segment's length: 0 now and then (where zero-length segments are claimed), else as :func:`_length`
    draws, long ones only where ``long``."""
    if zero and draw(_integers(0, 5), label=f"{label} empty") == 5:
        return 0
    n = _length(draw, label, least, most)
    return n if long or n <= LONG else draw(_integers(max(least, 1), 6), label=f"{label} short")


@_part
def varlen_problems(draw, scope: KernelScope):
    """A :class:`~attnspec.kernel.varlen.VarlenProblem`: 1 to 4 segments (shrinking towards one), each of its own
    lengths (0 now and then, tile tails sometimes, one long one at most), seqused_k shorter than some segments,
    rows past ``cu_seqlens[-1]``, ``max_seqlen_*`` above the longest and ``num_splits``, each where claimed and
    sometimes. Where no query may see no key, each segment has at least as many used keys as queries."""
    caps = scope.caps
    common = _common(draw, scope)
    dtype = common["dtype"]
    least = max(scope.least["length"], 3 if dtype in tolerances.LOW_PRECISION else 1)
    zero = True in scope.allowed("zero_segments")
    empty_ok = True in scope.allowed("empty_rows")
    B = draw(_integers(scope.least["batch"], 4), label="segments")
    seqlens_q, seqlens_k, long = [], [], True
    for b in range(B):
        Lq = _segment_length(draw, f"Lq {b}", least, caps.max_seqlen_q, zero=zero, long=long)
        Lk = _segment_length(draw, f"Lk {b}", least, caps.max_seqlen_k, zero=zero and empty_ok, long=long)
        if not empty_ok and Lq > Lk:
            Lq, Lk = Lk, Lq
            if Lq > (caps.max_seqlen_q or Lq) or Lk > (caps.max_seqlen_k or Lk):
                Lq = Lk = min(Lq, caps.max_seqlen_q or Lq, caps.max_seqlen_k or Lk)
        long = long and max(Lq, Lk) <= LONG
        seqlens_q.append(Lq)
        seqlens_k.append(Lk)
    used = None
    if scope.allowed("seqused") == (True,) or (True in scope.allowed("seqused") and draw(_integers(0, 3),
                                                                                      label="seqused_k") == 3):
        short = [draw(_integers(0, min(3, n)), label=f"seqused short {b}") for b, n in enumerate(seqlens_k)]
        if not empty_ok:  # no fewer used keys than queries
            short = [min(s, n - q) for s, n, q in zip(short, seqlens_k, seqlens_q)]
        used = [n - s for n, s in zip(seqlens_k, short)]
    tails = True in scope.allowed("tails") and draw(_integers(0, 3), label="tails") == 3
    tail_q = draw(_integers(0, 3), label="tail q") if tails else 0
    tail_k = draw(_integers(0, 3), label="tail k") if tails else 0
    if scope.allowed("unread") == (True,) and tail_k == 0 and (used is None or used == seqlens_k):
        if True in scope.allowed("tails"):
            tail_q, tail_k = tail_q, 1 + draw(_integers(0, 2), label="tail k")
        else:  # seqused_k is claimed: one segment uses a key less than it has
            seqlens_k[0] += 1
            used = list(used or seqlens_k)
            used[0] = seqlens_k[0] - 1
    if scope.allowed("seqused") == (True,) and used == seqlens_k:  # the law needs a segment truncated
        seqlens_k[0] += 1
    extra = draw(_integers(1, 40), label="max_seqlen extra") if True in scope.allowed("spare") and draw(
        _integers(0, 4), label="max_seqlen above") == 4 else 0
    splits = draw(_sampled((None, None, 1, 2, 3, 0)), label="num_splits") if True in scope.allowed("splits") else None
    large = max(seqlens_q + seqlens_k) > LONG
    rest = _rest(draw, scope, dtype=dtype, large=large)
    problem = VarlenProblem(seqlens_q=tuple(seqlens_q), seqlens_k=tuple(seqlens_k),
                            seqused_k=None if used is None else tuple(used), tail_q=tail_q, tail_k=tail_k,
                            max_seqlen_extra=extra, num_splits=splits, **common, **rest, seed=draw(SEEDS, label="seed"))
    if not empty_ok:
        assume(not problem.empty_rows().any())
    return problem


PAGE_SIZES = (1, 3, 5, 16, "whole")  # 1, odd, a tile, and one page holding an item's every row


def _page_size(draw, scope: KernelScope, rows: int) -> int | None:
    caps = scope.caps
    if not draw(_sampled(scope.allowed("paged")), label="paged"):
        return None
    sizes = [rows if s == "whole" else s for s in PAGE_SIZES]
    allowed = [s for s in sizes if s >= 1 and caps.allows_page_size(s)]
    if not allowed and caps.page_sizes is not None:  # a kernel of large pages only (flash-attn 2: multiples of 256)
        allowed = [s for s in list(caps.page_sizes)[:3]]
    return draw(_sampled(allowed), label="page size")


@_part
def cache_problems(draw, scope: KernelScope):
    """A :class:`~attnspec.kernel.cache.CacheProblem`: 1 to 3 items (shrinking towards one), each with a cache
    length of its own (0 now and then), new rows (often as many as queries), rows allocated beyond the longest, and,
    each where claimed and sometimes, cache_batch_idx, pages (sizes 1, odd, 16 and the whole length, a partly
    filled last page, pages no table lists), rotary (half or all features) and num_splits."""
    caps = scope.caps
    common = _common(draw, scope)
    dtype = common["dtype"]
    least = max(scope.least["length"], 3 if dtype in tolerances.LOW_PRECISION else 1)
    empty_ok = True in scope.allowed("empty_rows")
    B = draw(_integers(scope.least["batch"], 3), label="items")
    Lq = _length(draw, "Lq", least, caps.max_seqlen_q)
    new = draw(_sampled(scope.allowed("new_rows")), label="new rows")
    Ln = 0 if not new else Lq if draw(_integers(0, 2), label="new rows as queries") < 2 else \
        draw(_integers(1, 6), label="Ln")
    long = max(Lq, Ln) <= LONG
    lengths = []
    for b in range(B):
        n = _segment_length(draw, f"cache_seqlens {b}", 1, caps.max_seqlen_k, zero=True, long=long)
        long = long and n <= LONG
        if not empty_ok:  # every query sees a key: no more queries than keys, bottom-right
            n = max(n, Lq - Ln)
        if n + Ln and n + Ln < least:
            n = least - Ln
        lengths.append(max(n, 0))
    spare = draw(_integers(1, 5), label="spare rows") if True in scope.allowed("spare") and draw(
        _integers(0, 3), label="spare") == 3 else 0
    if scope.allowed("unread") == (True,):
        spare = max(spare, 1)
    rows = max(lengths) + Ln + spare
    page = _page_size(draw, scope, rows)
    spare_pages = draw(_integers(0, 2), label="unlisted pages") if page else 0
    idx, spare_items = None, 0
    if page is None and draw(_sampled(scope.allowed("batch_idx")), label="cache_batch_idx"):
        spare_items = draw(_integers(0, 2), label="spare cache items")
        idx = tuple(draw(st.permutations(range(B + spare_items)), label="cache rows")[:B])
    large = max([Lq, Ln] + lengths) > LONG
    rest = _rest(draw, scope, dtype=dtype, large=large)
    rotary = draw(_sampled(scope.allowed("rotary")), label="rotary")
    rotary_dim = None
    if rotary is not None:
        assume(rest["D"] >= 2 and rest["D"] % 2 == 0)
        half = rest["D"] // 2
        rotary_dim = half if half % 2 == 0 and half >= 2 and draw(_integers(0, 2), label="rotary half") == 2 else None
    splits = draw(_sampled((None, None, 1, 2, 3, 0)), label="num_splits") if True in scope.allowed("splits") else None
    problem = CacheProblem(Lq=Lq, cache_seqlens=tuple(lengths), Ln=Ln, spare_rows=spare, batch_idx=idx,
                           spare_items=spare_items, page_size=page, spare_pages=spare_pages, rotary=rotary,
                           rotary_dim=rotary_dim, rotary_queries=caps.rotary_queries, num_splits=splits, **common,
                           **rest, seed=draw(SEEDS, label="seed"))
    if not empty_ok:
        assume(not problem.empty_rows().any())
    return problem


def problems(scope: KernelScope):
    """The strategy of kernel problems within ``scope`` (validated now: InvalidArgument naming what is wrong)."""
    _check_scope(scope)
    return kernel_problems(scope)
