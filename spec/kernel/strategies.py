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

from .. import tolerances
from ..strategies import SEEDS, _check_scope, _integers, _part, _sampled
from .problem import KernelProblem
from .scope import KernelScope

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


@_part
def kernel_problems(draw, scope: KernelScope):
    """A :class:`~attnspec.kernel.problem.KernelProblem` within ``scope`` (see :func:`attnspec.requirements.decide`)."""
    caps = scope.caps
    dtype = draw(_sampled([d for d in DTYPE_ORDER if d in scope.allowed("dtype")]), label="dtype")
    causal = draw(_sampled(scope.allowed("causal")), label="causal")
    window = kernel_windows.drawn(draw, scope)
    if scope.allowed("empty_rows") == (True,) and not causal and window is None:  # the scope needs such rows
        causal = caps.causal and caps.causal_alignment == "bottom-right"
        window = None if causal else (draw(_integers(0, 2), label="window left"), draw(_integers(0, 2), label="right"))
    Lq, Lk = kernel_lengths.drawn(draw, scope, dtype=dtype, causal=causal, window=window)
    large = max(Lq, Lk) > LONG
    Hq, Hkv = kernel_head_counts.drawn(draw, scope, large=large)
    D, Dv = kernel_head_widths.drawn(draw, scope, dtype=dtype, large=large)
    values = [v for v in ("gaussian", "gaussian", "low-rank", "shared-mean", "large") if v in scope.allowed("values")
              and not (v == "large" and dtype in tolerances.LOW_PRECISION)]
    problem = KernelProblem(
        B=1 if large else draw(_integers(scope.least["batch"], 3), label="B"), Lq=Lq, Lk=Lk, Hq=Hq, Hkv=Hkv, D=D,
        Dv=Dv, dtype=dtype, causal=causal, window=window,
        softcap=draw(_sampled((1.0, 2.5, 7.0)), label="softcap") if draw(_sampled(scope.allowed("softcap")),
                                                                          label="softcap on") else 0.0,
        scale=draw(_sampled((0.5, 1.7)), label="scale factor") * D ** -0.5
        if draw(_sampled(scope.allowed("scale")), label="scale on") else None,
        alibi=draw(_sampled(scope.allowed("alibi")), label="alibi"),
        return_lse=draw(_sampled(scope.allowed("lse")), label="return_lse"),
        values=draw(_sampled(values or ["gaussian"]), label="values"), alignment=caps.causal_alignment,
        seed=draw(SEEDS, label="seed"))
    if True not in scope.allowed("empty_rows"):
        assume(not problem.empty_rows().any())
    return problem


def problems(scope: KernelScope):
    """The strategy of kernel problems within ``scope`` (validated now: InvalidArgument naming what is wrong)."""
    _check_scope(scope)
    return kernel_problems(scope)

