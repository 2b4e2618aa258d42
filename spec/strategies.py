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
from .masks import position_mask
from .kernel.scope import KernelScope
from .requirements import Scope

# Draw weights: float64 most often (tight checks), then float32, then low precision.
DTYPE_ORDER = (torch.float64, torch.float64, torch.float32, torch.bfloat16, torch.float16)
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


MANY_HEADS = (6, 8, 12, 16, 24, 32, 48, 64)


@_part
def head_counts(draw, scope: Scope):
    """(num_heads, num_kv_heads): 1 to 4 heads, or (a quarter of the draws; half where key/value heads may be
    grouped) 6, 8 and more up to the reach, with every key/value head count the capabilities declare, and
    half the time two: groups of 3 and 4 over 2 key/value heads. num_kv_heads is None (not passed) where the
    scope draws no grouping at all. Shrinks towards one head."""
    low, high = scope.least["num_heads"], scope.max_heads
    grouped = scope.allowed("grouped")
    low = max(low, 2) if grouped == (True,) else low
    many = [h for h in MANY_HEADS if low <= h <= high] + ([high] if high > 8 and high not in MANY_HEADS else [])
    odds = 1 if True in grouped and scope.caps.grouping in ("any", "one-or-all") else 3  # 1 in (odds + 1)
    if low <= min(4, high) and (not many or draw(_integers(0, odds), label="many heads") < odds):
        H = draw(_integers(low, min(4, high)), label="num_heads")
    else:
        H = draw(_sampled(many), label="num_heads")
    if grouped == (False,) and scope.caps.grouping != "multi-query":
        return H, None
    options = [d for d in scope.caps.kv_head_counts(H) if (d != H) in grouped]
    if H > 4 and 2 in options and draw(BOOLEANS, label="two key/value heads"):  # groups of H/2 > 2, half the time
        return H, 2
    return H, draw(_sampled(options), label="num_kv_heads")


@_part
def head_widths(draw, scope: Scope, *, dtype: torch.dtype):
    """The width of one head: a multiple of the declared ``head_dim_multiple``, 1 to 4 of them (at least 3 wide
    in low precision where values are compared, since a single feature is mostly its bias), and now and then a
    wider one up to the reach; with RoPE, the smallest widths rotating 1, 2 and 3 pairs (and wider ones)."""
    step, rope, reach = scope.caps.head_dim_multiple, scope.caps.rope, scope.caps.reach.head_dim
    narrow = 3 if _low(dtype) and not scope.has("compares_no_values") else 1
    if rope is None:
        wide = [w for w in (8, 16, 32, 64, 128, 256, reach) if 4 * step < w <= reach and w % step == 0]
        if wide and draw(_integers(0, 3), label="wide head") == 0:
            return draw(_sampled(sorted(set(wide))), label="head_dim")
        return step * draw(_integers(narrow if step == 1 else 1, 4), label="head_dim")
    fits = [d for d in range(step, max(257, reach + 1), step) if rope.fits(d) and d >= narrow]
    by_pairs = {rope.rotated(d) // 2: d for d in reversed(fits)}  # pairs rotated -> the smallest width rotating them
    widths = [by_pairs[n] for n in sorted(by_pairs)]
    widths = widths[:3] + [w for w in widths[3:] if w <= reach]
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
def lengths(draw, scope: Scope, *, dtype: torch.dtype, same: bool, hidden_by_position):
    """(L, S), each at least the scope's least length (3 in low precision where values are compared), now and
    then up to the reach; ``same``: S = L (self-attention, a causal mask). ``hidden_by_position(L, S)``: the
    (L, S) keys the causal flag and a window hide, or None; where they would hide every key of a row, S is
    raised to L (which never does), unless the law asks for more queries than keys (then S < L)."""
    low = _low(dtype) and not scope.has("compares_no_values")
    least = max(scope.least["length"], 3 if low else 1)
    drawn = _lengths(scope.caps.reach.length, low)
    L = max(least, draw(drawn, label="L"))
    if same:
        return L, L
    S = max(least, draw(drawn, label="S"))
    if scope.has("more_queries_than_keys"):
        return max(L, S + 1), min(L, S)
    hidden = hidden_by_position(L, S)
    return (L, max(S, L)) if hidden is not None and bool(hidden.all(-1).any()) else (L, S)


@functools.lru_cache(maxsize=None)
def _lengths(reach: int, low: bool):
    """Mostly 1 to 5, sometimes 7, 16 and 33 (kernel block thresholds, pytorch#127055), and lengths up to the
    reach beyond 33. In low precision the bound grows with sqrt(S) and 33 keys put it near the output's range
    (attnspec.tolerances), so 33 is left out there, and long rows come up more often than in float64."""
    long = [n for n in (7, 16) + (() if low else (33,)) if n <= reach] + [n for n in (64, 128, 256, reach) if 33 < n <= reach]
    return st.one_of(*[st.integers(1, min(5, reach))] * (3 if low else 7), st.sampled_from(sorted(set(long)) or [1]))


@_part
def windows(draw, scope: Scope):
    """A sliding window ``(left, right)`` of the declared kind (each side 0 to 3, None unbounded), or None."""
    kind = scope.caps.window_kind
    if not draw(_sampled(scope.allowed("windowed")), label="window"):
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


# Scales n ** -0.5 for n = 4 head_dim and 2 head_dim + 1: never the default head_dim ** -0.5, and an integer n
# as configurations that take the scalar rather than the scale want it (Gemma's query_pre_attn_scalar).
# A cap of 1 bends every logit, one of 30 only the large ones.
SCALARS = ((4, 0), (2, 1))  # n = a * head_dim + b
SOFTCAPS = (1.0, 5.0, 30.0)


@_part
def logit_options(draw, scope: Scope, *, head_dim: int):
    """(softmax_scale, softcap): each None, or (where the scope draws it) a scale of SCALARS / a cap of SOFTCAPS."""
    scaled = draw(_sampled(scope.allowed("scaled")), label="scaled")
    capped = draw(_sampled(scope.allowed("softcapped")), label="softcapped")
    a, b = draw(_sampled(SCALARS), label="softmax_scale") if scaled else (0, 0)
    return ((a * head_dim + b) ** -0.5 if scaled else None,
            draw(_sampled(SOFTCAPS), label="softcap") if capped else None)


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
    hidden = functools.partial(position_mask, is_causal=is_causal, window=window, alignment=caps.causal_alignment)
    L, S = lengths.drawn(draw, scope, dtype=dtype, same=self_attention or forced_causal_mask, hidden_by_position=hidden)
    qdim, kdim, vdim = widths.drawn(draw, scope, embed_dim=H * hd, self_attention=self_attention)
    bias_kv, zero_attn = extra_keys.drawn(draw, scope)
    softmax_scale, softcap = logit_options.drawn(draw, scope, head_dim=hd)
    config = Config(embed_dim=H * hd, num_heads=H, bias=draw(_sampled(sorted(caps.bias_values, reverse=True)),
                                                              label="bias"),
                    kdim=kdim, vdim=vdim, qdim=qdim, add_bias_kv=bias_kv, add_zero_attn=zero_attn,
                    dropout=0.5 if scope.allowed("dropout_active") == (True,) else 0.0, batch_first=batch_first,
                    num_kv_heads=kv_heads, window=window, softmax_scale=softmax_scale, softcap=softcap)
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
        causal_alignment=caps.causal_alignment, rope=caps.rope, qk_norm=caps.qk_norm,
        position_offset=draw(_sampled(POSITION_OFFSETS), label="position_offset") if caps.rope is not None else 0,
        seed=draw(SEEDS, label="seed"))


def problems_for(caps, device: str = "cpu", *, dtype: torch.dtype | None = None, **constraints):
    """Problems the capabilities ``caps`` claim on ``device`` (in ``dtype``, else every claimed dtype), narrowed by
    ``constraints`` as a requirement's draw narrows them (:meth:`attnspec.requirements.Scope.narrowed`)."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InvalidArgument(f"dtype={dtype!r}, but should be a floating torch.dtype or None")
    return problems(Scope.of(caps, device, None if dtype is None else (dtype,)).narrowed(**constraints))
