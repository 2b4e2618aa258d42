"""Hypothesis strategies that draw problems from a law's scope (:class:`attnspec.requirements.Scope`).

Hypothesis draws the structure (shapes, flags, masks, dtype, a seed); tensor values come from the
seed (:mod:`attnspec.inputs`). :func:`problems` composes the small strategies below, each drawing
one part of a problem within the scope. The draws reach the configurations that hide classic bugs:
H=1 and H>1, groups of more than two query heads over several key/value heads, B=1 and B>1, L != S,
head_dim=1, per-sample and per-head masks, unbatched input, large magnitudes, RoPE widths that rotate
several pairs; biases are always random and non-zero. Examples shrink towards one head, one batch
item, short sequences, no masks and seed 0.

Each strategy validates its arguments when it is called and raises ``InvalidArgument`` naming the
argument and its value.
"""
from __future__ import annotations

import functools

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from . import tolerances
from .config import Config, Problem
from .kernel.scope import KernelScope
from .requirements import Scope

# Draw weights: float64 most often (tight checks), then float32, then low precision.
DTYPE_ORDER = (torch.float64, torch.float64, torch.float32, torch.bfloat16, torch.float16)
# Occasionally long sequences, to cross kernel block thresholds (pytorch#127055).
LENGTHS = st.one_of(*[st.integers(1, 5)] * 7, st.sampled_from([7, 16, 33]))
# In low precision the bound grows with sqrt(S) and 33 keys put it near the output's range (attnspec.tolerances);
# below 3 positions the output spans too little for the bound. Long rows come up more often than in
# LENGTHS: low-precision kernels change code paths there, and the range drawn is narrower anyway.
LOW_PRECISION_LENGTHS = st.one_of(*[st.integers(1, 5)] * 3, st.sampled_from([7, 16]))
WINDOW_SIDE = st.one_of(st.none(), st.integers(0, 3))
POSITION_OFFSETS = (0, 0, 1, 5, 37)
SEEDS = st.integers(0, 2**31 - 1)
BOOLEANS = st.booleans()


@functools.lru_cache(maxsize=None)
def _integers(low: int, high: int):
    return st.integers(low, high)


def _sampled(options):
    """``st.sampled_from(options)``, made once for each distinct sequence of options (types included:
    ``(True,) == (1,)``, but a flag is not a head count). A strategy made anew is validated anew."""
    options = tuple(options)
    if not options:
        raise InvalidArgument("nothing to draw from: an empty scope dimension (attnspec.requirements.decide "
                              "should have reported the law not claimed)")
    return _sampled_from(options, tuple(type(o) for o in options))


@functools.lru_cache(maxsize=None)
def _sampled_from(options: tuple, types: tuple):
    return st.sampled_from(options)


def _check_scope(scope) -> None:
    if not isinstance(scope, (Scope, KernelScope)):
        raise InvalidArgument(f"scope={scope!r}, but should be an attnspec.requirements.Scope (or a kernel's "
                              "attnspec.kernel.scope.KernelScope)")
    if scope.empty() is not None:
        raise InvalidArgument(f"scope has no value left for {scope.empty()!r} ({scope.short()}): nothing to draw")


def _part(draws):
    """One part of a problem, ``draws(draw, scope, **kwargs)``, as a strategy ``name(scope, **kwargs)`` whose scope
    is validated when it is called, made once for the same arguments (a strategy made anew is validated anew).

    :func:`problems` calls ``name.drawn(draw, scope, ...)`` itself, with its own ``draw``: a strategy drawn inside
    another adds a layer of Hypothesis's bookkeeping to every draw, which cost more than the draws."""
    made = functools.lru_cache(maxsize=4096)(st.composite(draws))

    @functools.wraps(draws)
    def strategy(scope, **kwargs):
        _check_scope(scope)
        return made(scope, **kwargs)

    strategy.drawn = draws
    return strategy


def _low(dtype: torch.dtype) -> bool:
    return dtype in tolerances.LOW_PRECISION


@_part
def head_counts(draw, scope: Scope):
    """(num_heads, num_kv_heads): mostly 1 to 4 heads, a quarter of the draws 6 or 8 (groups of 3 and 4 over
    2 key/value heads), with every key/value head count the capabilities declare; num_kv_heads is None
    (not passed) where the scope draws no grouping at all. Shrinks towards one head."""
    low, high = scope.least["num_heads"], scope.max_heads
    grouped = scope.allowed("grouped")
    low = max(low, 2) if grouped == (True,) else low
    large = [h for h in (6, 8) if low <= h <= high]
    if low <= min(4, high) and (not large or draw(_integers(0, 3), label="many heads") < 3):
        H = draw(_integers(low, min(4, high)), label="num_heads")
    else:
        H = draw(_sampled(large), label="num_heads")
    if grouped == (False,) and scope.caps.grouping != "multi-query":
        return H, None
    options = [d for d in scope.caps.kv_head_counts(H) if (d != H) in grouped]
    return H, draw(_sampled(options), label="num_kv_heads")


@_part
def head_widths(draw, scope: Scope, *, dtype: torch.dtype):
    """The width of one head: a multiple of the declared ``head_dim_multiple``, 1 to 4 of them (at least 3 wide
    in low precision, where a single feature is mostly its bias); with RoPE, the smallest widths rotating 1, 2
    and 3 pairs."""
    step, rope = scope.caps.head_dim_multiple, scope.caps.rope
    if rope is None:
        return step * draw(_integers(3 if _low(dtype) and step == 1 else 1, 4), label="head_dim")
    fits = [d for d in range(step, 257, step) if rope.fits(d) and not (_low(dtype) and d < 3)]
    by_pairs = {rope.rotated(d) // 2: d for d in reversed(fits)}  # pairs rotated -> the smallest width rotating them
    widths = [by_pairs[n] for n in sorted(by_pairs)][:3]
    if not widths:
        raise InvalidArgument(f"no head_dim up to 256 rotates an even number of features with {rope.short()}")
    return draw(_sampled(widths), label="head_dim")


@_part
def layouts(draw, scope: Scope):
    """(layout, batch, batch_first): a layout allowed; a batch of 1 to 3 (None unbatched); torch ignores
    batch_first for unbatched input, so it is drawn there too."""
    allowed = [lay for lay in scope.allowed("layout") if not (scope.least["batch"] > 1 and lay == "unbatched")]
    layout = draw(_sampled(sorted(allowed)), label="layout")
    if layout == "unbatched":
        flags = sorted({lay == "batch_first" for lay in scope.caps.layouts if lay != "unbatched"} or {False})
        return layout, None, draw(_sampled(flags), label="batch_first")
    return layout, draw(_integers(scope.least["batch"], 3), label="batch"), layout == "batch_first"


@_part
def lengths(draw, scope: Scope, *, dtype: torch.dtype, same: bool, positional: bool):
    """(L, S), each at least the scope's least length (3 in low precision); ``same``: S = L (self-attention, a
    causal mask); ``positional``: keys are hidden by position, so S >= L and every query keeps its own key."""
    least = max(scope.least["length"], 3 if _low(dtype) else 1)
    drawn = LOW_PRECISION_LENGTHS if _low(dtype) else LENGTHS
    L = max(least, draw(drawn, label="L"))
    S = L if same else max(least, draw(drawn, label="S"))
    return L, max(S, L) if positional else S


@_part
def windows(draw, scope: Scope):
    """A sliding window ``(left, right)`` of the declared kind (each side 0 to 3, None unbounded), or None."""
    kind = scope.caps.window_kind
    if not draw(_sampled(scope.allowed("window")), label="window"):
        return None
    if kind == "left":  # a look-back window: bounded on the left only
        return draw(_integers(0, 3), label="window left"), None
    if kind == "symmetric":
        width = draw(_integers(0, 3), label="window width")
        return width, width
    window = (draw(WINDOW_SIDE, label="window left"), draw(WINDOW_SIDE, label="window right"))
    return window if window != (None, None) else (draw(_integers(0, 3), label="window left"), None)


@_part
def widths(draw, scope: Scope, *, embed_dim: int, self_attention: bool):
    """(qdim, kdim, vdim): other input widths in cross-attention where claimed (kdim = vdim when one tensor is
    both keys and values), one width for all three in self-attention with a distinct qdim."""
    caps = scope.caps
    cross_dims = not self_attention and caps.kdim_vdim
    kdim = draw(_sampled([None, embed_dim + 1, 2]), label="kdim") if cross_dims else None
    vdim = kdim if not self_attention and caps.shared_key_value else (
        draw(_sampled([None, embed_dim + 2, 3]), label="vdim") if cross_dims else None)
    qdim = draw(_sampled([None, embed_dim + 3]), label="qdim") if True in scope.allowed("distinct_qdim") else None
    if self_attention and qdim is not None:  # one tensor is query, key and value: all of width qdim
        return (qdim,) * 3 if caps.kdim_vdim else (None, None, None)
    return qdim, kdim, vdim


@_part
def extra_keys(draw, scope: Scope):
    """(add_bias_kv, add_zero_attn) where claimed; at least one of them where the scope requires extra keys."""
    allowed = scope.allowed("extra_keys")
    caps = scope.caps
    bias_kv = caps.bias_kv and True in allowed and draw(BOOLEANS, label="add_bias_kv")
    zero_attn = caps.zero_attn and True in allowed and draw(BOOLEANS, label="add_zero_attn")
    if allowed == (True,) and not (bias_kv or zero_attn):
        bias_kv, zero_attn = caps.bias_kv, not caps.bias_kv
    return bool(bias_kv), bool(zero_attn)


@_part
def mask_kinds(draw, scope: Scope, *, is_causal: bool, L: int, S: int, causal_attn_mask: bool):
    """(key_padding_mask_kind, attn_mask_kind, mask_3d, causal_attn_mask): the masks drawn together; a causal
    attention mask a quarter of the time where L == S and no flag is passed (always, if the scope says so)."""
    kpm, am = draw(_sampled(scope.mask_options(is_causal)), label="masks")  # no mask first: it shrinks there
    mask_3d = am is not None and draw(_sampled(scope.allowed("mask_3d")), label="mask_3d")
    if am is not None and not causal_attn_mask and not is_causal and L == S and True in scope.allowed("causal_attn_mask"):
        causal_attn_mask = draw(_integers(0, 3), label="causal") == 0
    return kpm, am, bool(mask_3d), bool(causal_attn_mask and am is not None)


@_part
def fully_masked_modes(draw, scope: Scope, *, key_padding_mask_kind, attn_mask_kind, mask_3d: bool,
                       causal_attn_mask: bool):
    """Which rows are fully masked on purpose: a whole batch item (by key padding), a query row or one head's
    row (by the attention mask), or none; None where the scope draws none."""
    allowed = [m for m in scope.allowed("fully_masked") if m is not None]
    if not allowed or (None in scope.allowed("fully_masked") and not draw(BOOLEANS, label="fully masked")):
        return None
    modes = (["batch"] if key_padding_mask_kind else []) + \
        (["row"] if attn_mask_kind and not causal_attn_mask else []) + \
        (["head"] if attn_mask_kind and mask_3d and not causal_attn_mask else [])
    modes = [m for m in modes if m in allowed] or (["batch"] if key_padding_mask_kind else [])
    return draw(_sampled(modes), label="fully_masked") if modes else None


@_part
def weight_flags(draw, scope: Scope):
    """(need_weights, average_attn_weights) as the scope allows."""
    need = draw(_sampled(scope.allowed("need_weights")), label="need_weights")
    average = draw(_sampled(scope.allowed("average_attn_weights")), label="average_attn_weights") if need else True
    return need, average


@_part
def input_scales(draw, scope: Scope, *, dtype: torch.dtype):
    """How large queries and keys are: drawn per dtype (mostly 1), 1, or the large scale of the dtype."""
    kind = scope.allowed("inputs")[0]
    if kind == "large":
        return tolerances.LARGE_SCALE[dtype]
    return 1.0 if kind == "unit" else draw(_sampled(tolerances.SCALES[dtype]), label="input_scale")


@_part
def problems(draw, scope: Scope):
    """A :class:`~attnspec.config.Problem` within ``scope`` (see :func:`attnspec.requirements.decide`)."""
    caps = scope.caps
    dtype = draw(_sampled([d for d in DTYPE_ORDER if d in scope.allowed("dtype")]), label="dtype")
    is_causal = draw(_sampled(scope.allowed("is_causal")), label="is_causal")
    scale = input_scales.drawn(draw, scope, dtype=dtype)
    H, kv_heads = head_counts.drawn(draw, scope)
    hd = head_widths.drawn(draw, scope, dtype=dtype)
    layout, batch, batch_first = layouts.drawn(draw, scope)
    self_attention = draw(_sampled(scope.allowed("self_attention")), label="self_attention")
    window = windows.drawn(draw, scope)
    forced_causal_mask = scope.allowed("causal_attn_mask") == (True,)
    L, S = lengths.drawn(draw, scope, dtype=dtype, same=self_attention or forced_causal_mask,
                         positional=is_causal or window is not None)
    qdim, kdim, vdim = widths.drawn(draw, scope, embed_dim=H * hd, self_attention=self_attention)
    bias_kv, zero_attn = extra_keys.drawn(draw, scope)
    config = Config(embed_dim=H * hd, num_heads=H, bias=draw(_sampled(sorted(caps.bias_values, reverse=True)),
                                                              label="bias"),
                    kdim=kdim, vdim=vdim, qdim=qdim, add_bias_kv=bias_kv, add_zero_attn=zero_attn,
                    dropout=0.5 if scope.allowed("dropout") == (True,) else 0.0, batch_first=batch_first,
                    num_kv_heads=kv_heads, window=window)
    kpm, am, mask_3d, causal_mask = mask_kinds.drawn(draw, scope, is_causal=is_causal, L=L, S=S,
                                                     causal_attn_mask=forced_causal_mask)
    fully = fully_masked_modes.drawn(draw, scope, key_padding_mask_kind=kpm, attn_mask_kind=am, mask_3d=mask_3d,
                                     causal_attn_mask=causal_mask)
    need_weights, average = weight_flags.drawn(draw, scope)
    return Problem(
        config=config, batch=batch, L=L, S=S, dtype=dtype, self_attention=self_attention,
        key_is_value=not self_attention and caps.shared_key_value, key_padding_mask_kind=kpm,
        suffix_padding=caps.padding_suffix_only, attn_mask_kind=am, mask_3d=mask_3d, causal_attn_mask=causal_mask,
        fully_masked=fully, need_weights=need_weights, average_attn_weights=average,
        training=scope.allowed("training") == (True,), input_scale=float(scale), is_causal=is_causal,
        causal_alignment=caps.causal_alignment, rope=caps.rope,
        position_offset=draw(_sampled(POSITION_OFFSETS), label="position_offset") if caps.rope is not None else 0,
        seed=draw(SEEDS, label="seed"))


def problems_for(caps, device: str = "cpu", *, dtype: torch.dtype | None = None, **constraints):
    """Problems the capabilities ``caps`` claim on ``device`` (in ``dtype``, else every claimed dtype), narrowed by
    ``constraints`` as a requirement's draw narrows them (:meth:`attnspec.requirements.Scope.narrowed`)."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InvalidArgument(f"dtype={dtype!r}, but should be a floating torch.dtype or None")
    return problems(Scope.of(caps, device, None if dtype is None else (dtype,)).narrowed(**constraints))
